"""The middleware chain as the ASGI server runs it: a request switches between the event loop
and a thread a few times, not twice for each of Django's middlewares (``SyncChainMiddleware``)."""

from __future__ import annotations

import asgiref.sync
import pytest
from django.test import AsyncClient


@pytest.mark.django_db(transaction=True)
async def test_a_request_switches_to_a_thread_a_few_times_not_for_each_middleware(owner_key, monkeypatch):
    switches: list[str] = []
    switch = asgiref.sync.SyncToAsync.__call__

    def counted(self, *args, **kwargs):
        switches.append(getattr(self.func, "__qualname__", repr(self.func)))
        return switch(self, *args, **kwargs)

    monkeypatch.setattr(asgiref.sync.SyncToAsync, "__call__", counted)
    response = await AsyncClient().get("/v1/models", headers={"X-API-Key": owner_key.secret})
    assert response.status_code == 200
    # request_started, the chain, the middlewares' view hooks and the view (Django's dispatch
    # calls each on its own), request_finished: 8. Before, 22: also two for each middleware inside
    # WhiteNoise (sessions, locale, common, CSRF, auth, messages, frames, metrics).
    assert len(switches) <= 10, switches
