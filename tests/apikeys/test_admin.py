import re

import pytest

from apikeys.models import ApiKey
from apikeys.services import api_key_authenticate

pytestmark = pytest.mark.django_db


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


def test_the_revoke_action_says_what_it_will_do_then_revokes(admin_client, owner_key):
    from claudesvc.auth import Caller
    from jobs.models import Job, JobStatus
    from jobs.queue import job_claim_next
    from jobs.services import job_create

    for i in range(3):
        job_create(caller=Caller(api_key=owner_key.row), prompt=f"j{i}", enqueue=False)
    job_claim_next()
    form = {"action": "revoke", "_selected_action": [owner_key.row.pk]}
    asked = admin_client.post("/admin/apikeys/apikey/", form)
    page = asked.content.decode()
    # First a confirmation page that names what happens to the key's jobs; nothing done yet.
    assert asked.status_code == 200
    assert "cancels its\n2 pending jobs" in page and "stops its\n1 running job" in page
    assert ApiKey.objects.get(pk=owner_key.row.pk).revoked_at is None
    done = admin_client.post("/admin/apikeys/apikey/", {**form, "post": "yes"}, follow=True)
    assert "2 pending job(s) cancelled, 1 running job(s) stopped" in done.content.decode()
    assert ApiKey.objects.get(pk=owner_key.row.pk).revoked_at is not None
    assert api_key_authenticate(owner_key.secret) is None
    assert Job.objects.filter(api_key=owner_key.row, status=JobStatus.CANCELLED).count() == 2
    assert Job.objects.get(api_key=owner_key.row, status=JobStatus.RUNNING).cancel_requested_at is not None


def test_the_spend_page_totals_and_sorts_per_key(admin_client, owner_key, other_key):
    import datetime as dt

    from django.utils import timezone

    from jobs.models import UsageDaily

    today = timezone.localdate(timezone.now(), dt.UTC)
    UsageDaily.objects.create(
        api_key=owner_key.row, day=today, model="haiku", source="jobs", jobs=2, cost_usd=1.5
    )
    UsageDaily.objects.create(
        api_key=owner_key.row,
        day=today - dt.timedelta(days=40),
        model="haiku",
        source="jobs",
        jobs=1,
        cost_usd=4,
    )
    UsageDaily.objects.create(
        api_key=other_key.row,
        day=today,
        model="opus",
        source="compat",
        jobs=1,
        cost_usd=0.5,
        provider_cost_usd=0.25,
    )
    page = admin_client.get("/admin/apikeys/keyspend/").content.decode()
    assert "$1.5000" in page and "$5.5000" in page and "$0.7500" in page
    # Sortable by each column: by today's spend ascending the outsider comes first.
    for column in range(3, 8):
        assert admin_client.get(f"/admin/apikeys/keyspend/?o={column}").status_code == 200
    ascending = admin_client.get("/admin/apikeys/keyspend/?o=3").content.decode()
    assert ascending.index(other_key.row.prefix) < ascending.index(owner_key.row.prefix)
    descending = admin_client.get("/admin/apikeys/keyspend/?o=-3").content.decode()
    assert descending.index(owner_key.row.prefix) < descending.index(other_key.row.prefix)


def test_limits_and_budgets_are_edited_on_the_key_page(admin_client, owner_key):
    page = admin_client.get(f"/admin/apikeys/apikey/{owner_key.row.pk}/change/").content.decode()
    for field in [
        "max_active_jobs",
        "max_running_jobs",
        "priority_across_keys",
        "budget_daily_usd",
        "budget_monthly_usd",
    ]:
        assert f'name="{field}"' in page
