"""The console as a new user meets it, in chromium, against the real server,
worker, CLI (fake upstream) and fake Voxtral: sign in, watch an answer being
written, upload a file and download what the job wrote, transcribe a recording
with the progress bar reaching 100 %, cancel a running job, chat two turns."""

from __future__ import annotations

import json
import re

import pytest
from django.contrib.auth import get_user_model

from tests.console.conftest import screenshot
from tests.fakes.voxtral import random_script, tone_audio

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]

PASSWORD = "a long enough password"


@pytest.fixture
def console_user(db, settings):
    # Hashed as the server checks it (the suite's fast MD5 hasher is not in the server's list).
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.PBKDF2PasswordHasher"]
    return get_user_model().objects.create_user("grace", password=PASSWORD)


def sign_in(page, service) -> None:
    page.goto(f"{service.url}/console/")
    assert "/console/login" in page.url
    screenshot(page, "login")
    page.get_by_label("User name").fill("grace")
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_url(f"{service.url}/console/")


def submit_prompt(page, prompt: str) -> str:
    page.get_by_label("Prompt", exact=True).fill(prompt)
    page.get_by_role("button", name="Run").click()
    page.wait_for_url(re.compile(r"/console/jobs/[0-9a-f-]{36}$"))
    return page.url.rsplit("/", 1)[1]


def test_text_appears_while_claude_writes_and_the_result_is_rendered(service, browser_page, upstream):
    page = browser_page
    sign_in(page, service)
    words = "**Docker** packages an app with everything it needs so it runs the same anywhere"
    submit_prompt(page, f"Explain Docker [[reply:{words}]] [[slow:0.4]]")
    live = page.locator("#live")
    # Part of the answer is on screen while the job still runs.
    page.wait_for_function(
        "() => { const t = document.getElementById('live'); return t && t.textContent.includes('packages'); }"
    )
    partial = live.text_content()
    assert "anywhere" not in partial
    assert page.locator("#job").get_attribute("data-finished") == "false"
    screenshot(page, "watch")
    # Then the page shows the finished job: Markdown rendered, usage and cost.
    page.wait_for_selector("#answer", timeout=60_000)
    assert page.locator("#status").text_content() == "completed"
    assert page.locator("#answer strong").text_content() == "Docker"
    assert page.locator("#cost").text_content().startswith("$")
    screenshot(page, "result")
    assert page.outside == []


def test_upload_a_file_and_download_what_the_job_wrote(service, browser_page, upstream, tmp_path):
    page = browser_page
    sign_in(page, service)
    notes = tmp_path / "notes.txt"
    notes.write_text("Meeting on Tuesday.\n")
    page.get_by_label("Prompt", exact=True).fill(
        'Summarise [[tool:Write {"file_path": "out/summary.md", "content": "# Summary\\nTuesday.\\n"}]]'
    )
    page.get_by_label("Files for Claude (up to 10)").set_input_files(str(notes))
    assert "notes.txt" in page.locator("#claude-form .files").text_content()
    screenshot(page, "submit")
    # The upload's progress bar, as the page writes it (the page moves on once the job exists).
    uploaded = []
    page.expose_function("recordUpload", lambda text: uploaded.append(text))
    page.evaluate(
        "() => { const pct = document.querySelector('#claude-form .pct');"
        " new MutationObserver(() => window.recordUpload(pct.textContent))"
        ".observe(pct, {childList: true, characterData: true, subtree: true}); }"
    )
    page.get_by_role("button", name="Run").click()
    page.wait_for_url(re.compile(r"/console/jobs/[0-9a-f-]{36}$"))
    assert uploaded and uploaded[-1] == "100 %", uploaded
    page.wait_for_selector("#files-title", timeout=60_000)
    assert "notes.txt" in page.text_content("article")
    assert "Write" in page.locator("#tools").text_content()
    # Previewed as text, and downloaded under its name.
    assert "Tuesday." in page.locator(".artifacts pre").text_content()
    with page.expect_download() as download:
        page.get_by_role("link", name="summary.md").click()
    saved = tmp_path / "summary.md"
    download.value.save_as(saved)
    assert download.value.suggested_filename == "summary.md"
    assert saved.read_text() == "# Summary\nTuesday.\n"
    assert page.outside == []


def test_transcribe_a_recording_with_the_progress_bar_reaching_100(
    service, browser_page, voxtral_server, tmp_path
):
    voxtral_server.reset()
    audio = tmp_path / "meeting.mp3"
    timeline = tone_audio(audio, random_script(14, 120), args=["-b:a", "24k"])
    assert timeline[-1].end > 45  # several chunks of 20 s
    page = browser_page
    sign_in(page, service)
    page.get_by_role("tab", name="Transcribe audio").click()
    page.get_by_label("Recording (mp3, wav, m4a, ogg, flac, webm)").set_input_files(str(audio))
    page.get_by_label("Language of the recording").select_option("de")
    page.get_by_role("button", name="Transcribe").click()
    page.wait_for_url(re.compile(r"/console/jobs/[0-9a-f-]{36}$"))
    # Watched live: the bar moves through the chunks to 100 % before the page turns into the result.
    seen = []
    page.expose_function("recordProgress", lambda v: seen.append(v))
    page.evaluate(
        "() => { const bar = document.getElementById('tprogress'); let last = -1;"
        " const tick = () => { if (bar.value !== last) { last = bar.value; window.recordProgress(last); }"
        " if (last < 100) requestAnimationFrame(tick); }; tick(); }"
    )
    page.wait_for_function("() => document.getElementById('tprogress').value >= 100", timeout=90_000)
    assert seen[-1] == 100 and any(0 < v < 100 for v in seen), seen
    page.wait_for_selector("#files-title", timeout=60_000)
    assert page.locator("#status").text_content() == "completed"
    names = page.locator(".artifacts a").all_text_contents()
    assert {"transcript.txt", "transcript.srt", "transcript.vtt"} <= set(names)
    screenshot(page, "transcription")
    assert len(voxtral_server.requests) >= 3


def test_cancel_a_running_job(service, browser_page, upstream):
    page = browser_page
    sign_in(page, service)
    submit_prompt(page, "Count slowly [[reply:one two three four five six seven eight nine ten]] [[slow:3]]")
    page.wait_for_function("() => document.getElementById('status').textContent === 'running'")
    page.once("dialog", lambda dialog: dialog.accept())
    page.get_by_role("button", name="Cancel job").click()
    page.wait_for_selector("#status.s-failed", timeout=30_000)
    assert "cancel" in page.locator(".error").text_content().lower()
    # Listed as failed in my jobs, filterable.
    page.get_by_role("link", name="My jobs", exact=True).click()
    page.get_by_label("Status").select_option("failed")
    page.get_by_role("button", name="Filter").click()
    assert "Count slowly" in page.locator("table.jobs").text_content()
    screenshot(page, "jobs")


def test_chat_two_turns_keep_the_context(service, browser_page, upstream):
    page = browser_page
    sign_in(page, service)
    page.get_by_role("link", name="Chat").click()
    message = page.get_by_label("Message")
    message.fill("My name is Grace [[reply:Nice to meet you, Grace.]]")
    page.get_by_role("button", name="Send").click()
    page.wait_for_function(
        "() => document.querySelectorAll('.turn.claude').length === 1 &&"
        " document.querySelector('.turn.claude div').getAttribute('aria-busy') === 'false'"
    )
    assert "Nice to meet you, Grace." in page.locator(".turn.claude").first.text_content()
    session = re.search(r"session=([^&]+)", page.url).group(1)
    message.fill("What is my name?")
    page.get_by_role("button", name="Send").click()
    page.wait_for_function(
        "() => document.querySelectorAll('.turn.claude').length === 2 &&"
        " document.querySelectorAll('.turn.claude div')[1].getAttribute('aria-busy') === 'false'"
    )
    # The second turn resumed the first: the CLI sent the whole conversation upstream.
    sent = json.dumps(upstream.main_requests()[-1]["body"]["messages"])
    assert "My name is Grace" in sent and "Nice to meet you, Grace." in sent and "What is my name?" in sent
    assert re.search(r"session=([^&]+)", page.url).group(1) == session
    # The session is listed with its turns after a reload, and can be deleted.
    page.reload()
    assert page.locator(".turn.user").count() == 2
    screenshot(page, "chat")
    page.once("dialog", lambda dialog: dialog.accept())
    page.locator(".delete-session").first.click()
    page.wait_for_function("() => !location.search.includes('session=')")
    assert page.locator(".sessions li a").count() == 0
