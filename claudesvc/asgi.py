"""ASGI entry point: HTTP through Django, WebSocket through Channels.

WebSocket connections must come from an Origin in DJANGO_ALLOWED_HOSTS
(``AllowedHostsOriginValidator``: a page on another site cannot ride a
visitor's browser into the service); consumers authenticate the caller
themselves (see ``jobs.process_api.consumers``), from a credential or, for a
page of this origin, the session cookie (``AuthMiddlewareStack`` puts the
session and its user into the scope).
"""

import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "claudesvc.settings")
django_asgi_app = get_asgi_application()

# Imported after Django is set up: the routes import models.
from channels.auth import AuthMiddlewareStack  # noqa: E402
from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402
from channels.security.websocket import AllowedHostsOriginValidator  # noqa: E402

from claudesvc.prometheus import ConnectionMetrics  # noqa: E402
from jobs.process_api.routing import websocket_urlpatterns  # noqa: E402
from jobs.uploads import JobsRequestBodyGuard  # noqa: E402

application = ConnectionMetrics(
    ProtocolTypeRouter(
        {
            "http": JobsRequestBodyGuard(django_asgi_app),
            "websocket": AllowedHostsOriginValidator(AuthMiddlewareStack(URLRouter(websocket_urlpatterns))),
        }
    )
)
