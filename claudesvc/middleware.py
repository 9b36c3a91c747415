"""Request ids: taken from the caller's ``X-Request-ID`` or made up, echoed back
as ``X-Request-ID`` and ``request-id`` (what the OpenAI and Anthropic SDKs log),
and put on every log line written while the request is handled. And the
innermost middleware, which keeps the chain in one thread (``SyncChainMiddleware``)."""

from __future__ import annotations

import logging
import re
import uuid

from asgiref.sync import iscoroutinefunction, markcoroutinefunction

from claudesvc.logcontext import bind_key_prefix, request_id_var

_SAFE_ID = re.compile(r"^[A-Za-z0-9._:\-]{1,128}$")


def new_request_id() -> str:
    return f"req_{uuid.uuid4().hex[:24]}"


class RequestIdMiddleware:
    sync_capable = True
    async_capable = True

    def __init__(self, get_response):
        self.get_response = get_response
        if iscoroutinefunction(get_response):
            markcoroutinefunction(self)

    def _begin(self, request) -> str:
        incoming = request.headers.get("X-Request-ID", "")
        # A caller's id is reused only if it is safe to echo into headers and logs.
        rid = incoming if _SAFE_ID.match(incoming) else new_request_id()
        request.request_id = rid
        request_id_var.set(rid)

        bind_key_prefix(None)  # until authentication names the key
        return rid

    @staticmethod
    def _finish(response, rid: str):
        response.headers.setdefault("X-Request-ID", rid)
        response.headers.setdefault("request-id", rid)
        return response

    def __call__(self, request):
        if iscoroutinefunction(self):
            return self.__acall__(request)
        rid = self._begin(request)
        return self._finish(self.get_response(request), rid)

    async def __acall__(self, request):
        rid = self._begin(request)
        return self._finish(await self.get_response(request), rid)


class RequestIdLogFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "request_id"):
            record.request_id = request_id_var.get()
        return True


class SyncChainMiddleware:
    """Last in ``MIDDLEWARE``: makes Django run the whole middleware chain in the request's
    thread, as it would under WSGI.

    Every view of the service is synchronous, and so is WhiteNoise's middleware. Under ASGI
    Django runs each middleware in the mode of the one inside it, so the ones inside
    WhiteNoise ran async, and each of Django's own (``MiddlewareMixin``) then moved its
    ``process_request`` and ``process_response`` into a thread and back: 22 switches
    between the event loop and a thread for one request. With a synchronous middleware
    innermost the chain runs in one thread, and 8 are left (Django's dispatch still calls
    the view and each middleware's view hook on its own); a plain request takes ~1.4 ms
    less on scale-out (``tests/claudesvc/test_middleware.py`` counts them).
    """

    sync_capable = True
    async_capable = False

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        return self.get_response(request)
