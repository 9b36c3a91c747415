"""WebSocket routes of the Process API."""

from django.urls import path

from jobs.process_api.consumers import ProcessConsumer

websocket_urlpatterns = [path("api/v1/claude/ws", ProcessConsumer.as_asgi())]
