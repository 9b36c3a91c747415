from io import StringIO

import pytest
from django.core.management import call_command

from apikeys.models import ApiKey
from apikeys.services import KEY_PREFIX, api_key_authenticate, api_key_create, api_key_revoke

pytestmark = pytest.mark.django_db


def test_it_returns_the_secret_once_and_stores_only_a_hash():
    key, raw = api_key_create(name="ci")
    assert raw.startswith(KEY_PREFIX) and len(raw) == len(KEY_PREFIX) + 32
    stored = ApiKey.objects.get(pk=key.pk)
    assert raw not in {stored.secret_hash, stored.prefix}
    assert raw[len(KEY_PREFIX) :][:8] == stored.prefix


def test_it_authenticates_the_right_key_only():
    key, raw = api_key_create(name="ci")
    assert api_key_authenticate(raw) == key
    assert api_key_authenticate(raw[:-1] + ("A" if raw[-1] != "A" else "B")) is None
    assert api_key_authenticate("csk_live_short") is None
    assert api_key_authenticate("") is None


def test_it_records_last_use():
    key, raw = api_key_create(name="ci")
    assert key.last_used_at is None
    api_key_authenticate(raw)
    key.refresh_from_db()
    assert key.last_used_at is not None


def test_revoked_keys_stop_working():
    key, raw = api_key_create(name="ci")
    api_key_revoke(key=key)
    assert api_key_authenticate(raw) is None


def test_createapikey_prints_the_secret_as_its_last_line():
    out = StringIO()
    call_command("createapikey", "deploy-bot", stdout=out)
    last = out.getvalue().strip().splitlines()[-1]
    assert api_key_authenticate(last).name == "deploy-bot"


def test_createapikey_takes_a_tool_policy():
    out = StringIO()
    call_command("createapikey", "reader", "--tool-policy", "read_only", stdout=out)
    assert api_key_authenticate(out.getvalue().strip().splitlines()[-1]).tool_policy == "read_only"
