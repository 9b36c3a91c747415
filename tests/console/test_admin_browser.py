"""The job admin's live refresh in a real browser (chromium, the console's
fixtures, the real server, worker and CLI against the fake upstream): a staff
user opens the page of a running job and, without reloading, sees new events
appear and the status turn to completed; then the page shows the outcome.

Here, next to the console's browser tests, because their Playwright and
service fixtures live in this folder's conftest."""

from __future__ import annotations

import time

import pytest

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]

WORDS = "one two three four five six seven eight nine ten eleven twelve"


@pytest.fixture
def console_user(staff_user, settings):
    """The shared staff user (``browser_page`` needs it before the browser starts)."""
    # Hashed again as the server checks it (the suite's fast MD5 hasher is not in the server's list).
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.PBKDF2PasswordHasher"]
    staff_user.row.set_password(staff_user.password)
    staff_user.row.save(update_fields=["password"])
    return staff_user.row


def wait_for_status(client, job_id: str, wanted: set[str], timeout: float = 60) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = client.get(f"/jobs/{job_id}").json()["data"]["status"]
        if status in wanted:
            return status
        time.sleep(0.1)
    raise AssertionError(f"job {job_id} did not reach {wanted}; last status {status}")


ROWS = "() => Array.from(document.querySelectorAll('#job-events tr.job-event'))"


def submit_slow_job(service, key) -> str:
    """A job that runs for several seconds, its answer's chunks stored as events one by one
    (partial messages); returned once a worker runs it."""
    with service.client(key) as api:
        created = api.post(
            "/jobs",
            json={
                "prompt": f"Count slowly [[reply:{WORDS}]] [[slow:0.6]]",
                "model": "haiku",
                "partial_messages": True,
            },
        )
        assert created.status_code == 202, created.text
        job_id = created.json()["data"]["id"]
        assert wait_for_status(api, job_id, {"running", "completed", "failed"}) == "running"
    return job_id


def open_job_page(page, service, job_id: str, user) -> None:
    page.goto(f"{service.url}/admin/")
    page.fill("#id_username", user.row.username)
    page.fill("#id_password", user.password)
    page.get_by_role("button", name="Log in").click()
    page.wait_for_url(f"{service.url}/admin/")
    page.goto(f"{service.url}/admin/jobs/job/{job_id}/change/")
    # Set on this document only: a reload (by the page or anyone) loses it.
    page.evaluate("() => { window.notReloaded = true; }")


def test_a_running_jobs_admin_page_shows_new_events_and_the_end_without_a_reload(
    service, owner_key, staff_user, browser_page, upstream
):
    page = browser_page
    job_id = submit_slow_job(service, owner_key)
    open_job_page(page, service, job_id, staff_user)
    assert page.locator("#job-live").text_content() == "running"
    assert page.locator("#job-live-note").text_content() == "(refreshing)"
    shown_at_load = page.locator("#job-events tr.job-event").count()

    # New events appear while the job still runs.
    page.wait_for_function(
        f"() => window.notReloaded && ({ROWS})().length > {shown_at_load}"
        " && document.getElementById('job-live').textContent === 'running'",
        timeout=40_000,
    )
    # The status turns to completed on the same page, with the last events (the result) appended:
    # what the page shows at that moment, taken in the page (it reloads itself shortly after).
    final = page.wait_for_function(
        "() => window.notReloaded && document.getElementById('job-live').textContent === 'completed'"
        f" && {{rows: ({ROWS})().map(r => [Number(r.dataset.seq), r.cells[1].textContent]),"
        " note: document.getElementById('job-live-note').textContent}",
        timeout=40_000,
    ).json_value()
    seqs = [seq for seq, _ in final["rows"]]
    types = [kind for _, kind in final["rows"]]
    assert seqs == list(range(len(seqs))), seqs  # in order, none lost or shown twice
    assert types[0] == "system" and types[-1] == "result", types
    assert "stream_event" in types and "assistant" in types, types
    assert len(seqs) > shown_at_load
    assert final["note"] == "(finished, reloading to show the outcome)"

    # Then the page reloads itself once to show the outcome (result, usage, times), and stops asking.
    page.wait_for_function("() => !window.notReloaded && document.readyState === 'complete'", timeout=30_000)
    assert page.locator("#job-live").count() == 0
    assert page.locator(".field-live_status .readonly").text_content().strip() == "completed"
    assert WORDS in page.locator(".field-result .readonly").text_content()
    assert page.locator("#job-events tr.job-event").count() == len(seqs)
    assert page.locator(".field-usage_table th", has_text="cost_usd").count() == 1
    assert page.outside == []


def test_the_page_stops_refreshing_when_the_job_is_deleted(
    service, owner_key, staff_user, browser_page, upstream
):
    page = browser_page
    job_id = submit_slow_job(service, owner_key)
    open_job_page(page, service, job_id, staff_user)
    assert page.locator("#job-live").text_content() == "running"
    with service.client(owner_key) as api:
        assert api.delete(f"/jobs/{job_id}").status_code in (200, 202, 204)
    page.wait_for_function(
        "() => window.notReloaded && document.getElementById('job-live-note').textContent"
        " === '(refresh stopped: the job no longer exists)'",
        timeout=30_000,
    )
    # It stopped: no further requests to live/ (the next would come within two seconds).
    asked = []
    page.on("request", lambda r: asked.append(r.url) if "/live/" in r.url else None)
    page.wait_for_timeout(4_500)
    assert asked == []
    assert page.outside == []
