"""ASGI entry point: HTTP through Django, WebSocket through Channels."""

import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "claudesvc.settings")
django_asgi_app = get_asgi_application()

from channels.routing import ProtocolTypeRouter  # noqa: E402 - needs Django set up first

from jobs.uploads import JobsRequestBodyGuard  # noqa: E402

application = ProtocolTypeRouter({"http": JobsRequestBodyGuard(django_asgi_app)})
