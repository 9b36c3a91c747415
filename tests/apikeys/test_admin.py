import re

import pytest
from django.contrib.auth import get_user_model

from apikeys.models import ApiKey
from apikeys.services import api_key_authenticate

pytestmark = pytest.mark.django_db


@pytest.fixture
def admin_client(client):
    user = get_user_model().objects.create_superuser("admin", "admin@example.com", "pw-123456")
    client.force_login(user)
    return client


def test_the_changelist_renders(admin_client, owner_key):
    response = admin_client.get("/admin/apikeys/apikey/")
    assert response.status_code == 200
    assert owner_key.row.prefix in response.content.decode()


def test_adding_a_key_shows_its_secret_once(admin_client):
    form = {
        "name": "from-admin",
        "tool_policy": "safe",
        "rate_limits-TOTAL_FORMS": "0",
        "rate_limits-INITIAL_FORMS": "0",
        "rate_limits-MIN_NUM_FORMS": "0",
        "rate_limits-MAX_NUM_FORMS": "1000",
    }
    response = admin_client.post("/admin/apikeys/apikey/add/", form, follow=True)
    assert response.status_code == 200
    page = response.content.decode()
    secret = re.search(r"csk_live_[A-Za-z0-9]{32}", page).group(0)
    assert api_key_authenticate(secret).name == "from-admin"
    # Shown once: the next page does not repeat it.
    assert secret not in admin_client.get("/admin/apikeys/apikey/").content.decode()


def test_the_revoke_action_revokes(admin_client, owner_key):
    admin_client.post("/admin/apikeys/apikey/", {"action": "revoke", "_selected_action": [owner_key.row.pk]})
    assert ApiKey.objects.get(pk=owner_key.row.pk).revoked_at is not None
    assert api_key_authenticate(owner_key.secret) is None
