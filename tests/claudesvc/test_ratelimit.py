"""Rate limits: headers, 429 bodies, per-key overrides, isolation between keys."""

import pytest
from django.core.cache import cache

from apikeys.models import RateLimitOverride

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def _fresh_counters():
    cache.clear()
    yield
    cache.clear()


def limit(key, group="jobs", requests=3, window=3600):
    RateLimitOverride.objects.create(api_key=key.row, group=group, requests=requests, window_seconds=window)


def test_limited_responses_carry_the_standard_headers(client_for, owner_key, settings):
    response = client_for(owner_key).get("/jobs")
    assert response["RateLimit-Policy"] == "120;w=60"
    assert response["RateLimit-Limit"] == "120"
    assert response["RateLimit-Remaining"] == "119"
    assert 0 <= int(response["RateLimit-Reset"]) <= 60
    # Seed 002's headers belong to the process API only.
    assert "X-RateLimit-Limit" not in response


def test_health_is_not_limited(client_for):
    assert "RateLimit-Limit" not in client_for(None).get("/health")


def test_the_request_past_the_limit_gets_429_with_retry_after(client_for, owner_key):
    limit(owner_key, requests=2)
    client = client_for(owner_key)
    assert [client.get("/jobs").status_code for _ in range(3)] == [200, 200, 429]
    refused = client.get("/jobs")
    assert refused.status_code == 429
    assert refused.json()["success"] is False
    assert refused.json()["error"]["code"] == "rate_limited"
    assert int(refused["Retry-After"]) >= 1
    assert refused["RateLimit-Remaining"] == "0"


def test_a_keys_override_replaces_the_default(client_for, owner_key):
    limit(owner_key, requests=7, window=120)
    response = client_for(owner_key).get("/jobs")
    assert response["RateLimit-Policy"] == "7;w=120"
    assert response["RateLimit-Remaining"] == "6"


def test_one_keys_traffic_never_uses_another_keys_budget(client_for, owner_key, other_key):
    limit(owner_key, requests=1)
    limit(other_key, requests=1)
    assert client_for(owner_key).get("/jobs").status_code == 200
    assert client_for(owner_key).get("/jobs").status_code == 429
    assert client_for(other_key).get("/jobs").status_code == 200


def test_failed_authentication_does_not_count(client, client_for, owner_key):
    limit(owner_key, requests=1)
    for _ in range(5):
        assert client.get("/jobs", HTTP_X_API_KEY=owner_key.secret[:-2] + "zz").status_code == 401
    assert client_for(owner_key).get("/jobs").status_code == 200


def test_overrides_are_edited_in_the_admin(admin_client, owner_key):
    key = owner_key.row
    form = {
        "name": key.name,
        "tool_policy": key.tool_policy,
        "owner": "",
        "rate_limits-TOTAL_FORMS": "1",
        "rate_limits-INITIAL_FORMS": "0",
        "rate_limits-MIN_NUM_FORMS": "0",
        "rate_limits-MAX_NUM_FORMS": "1000",
        "rate_limits-0-group": "compat",
        "rate_limits-0-requests": "500",
        "rate_limits-0-window_seconds": "60",
    }
    response = admin_client.post(f"/admin/apikeys/apikey/{key.pk}/change/", form)
    assert response.status_code == 302, response.content.decode()[:2000]
    override = RateLimitOverride.objects.get(api_key=key)
    assert (override.group, override.requests, override.window_seconds) == ("compat", 500, 60)


def test_a_bad_rate_setting_stops_start_up(monkeypatch):
    import importlib

    from django.core.exceptions import ImproperlyConfigured

    import claudesvc.settings as service_settings

    monkeypatch.setenv("RATE_LIMIT_COMPAT", "lots")
    with pytest.raises(ImproperlyConfigured, match="RATE_LIMIT_COMPAT"):
        importlib.reload(service_settings)
    monkeypatch.delenv("RATE_LIMIT_COMPAT")
    importlib.reload(service_settings)
