"""The console in a real browser: Playwright drives Debian's chromium (no
browser download) against the real server, worker and CLI of ``tests/e2e``."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.conftest import ROOT, jobs_settled_before_the_flush, running_service  # noqa: F401 - autouse here too

CHROMIUM = os.environ.get("CHROMIUM_PATH") or shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
SCREENSHOTS = ROOT / "docs" / "screenshots"


@pytest.fixture(scope="session")
def service_extra_env(voxtral_server, tmp_path_factory) -> dict[str, str]:
    """The e2e service's environment, plus collected static files (the server
    serves them from the manifest, as after ``make run``) and short
    transcription chunks (a one-minute recording makes several)."""
    static = tmp_path_factory.mktemp("static")
    env = {**os.environ, "STATIC_ROOT": str(static)}
    subprocess.run(
        [sys.executable, "manage.py", "collectstatic", "--noinput", "-v0"], cwd=ROOT, env=env, check=True
    )
    return {
        "VOXTRAL_BASE_URL": voxtral_server.url,
        "MISTRAL_API_KEY": voxtral_server.api_key,
        "STATIC_ROOT": str(static),
        "TRANSCRIPTION_CHUNK_SECONDS": "20",
        "TRANSCRIPTION_SILENCE_SEARCH_SECONDS": "8",
    }


@pytest.fixture(scope="package")
def service(django_db_setup, django_db_blocker, upstream, service_extra_env, tmp_path_factory) -> Iterator:
    """The console's own live service (static files collected, short transcription
    chunks), stopped when the console's tests are done: every worker on the test
    database serves the one queue, so it must not outlive them and run the jobs of
    ``tests/e2e``, whose service has settings of its own."""
    with (
        django_db_blocker.unblock(),
        running_service(tmp_path_factory.mktemp("console-service"), service_extra_env) as svc,
    ):
        yield svc


@pytest.fixture
def browser_page(console_user) -> Iterator:
    """A fresh chromium page (the user exists before the browser starts: the
    ORM is not used while Playwright's loop runs). Set CONSOLE_SCREENSHOTS=1 to
    rewrite docs/screenshots/."""
    if not Path(CHROMIUM).exists():
        pytest.skip(f"chromium not found at {CHROMIUM} (scripts/system-deps --test installs it)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        context = browser.new_context(viewport={"width": 1100, "height": 800}, locale="en-US")
        context.set_default_timeout(30_000)
        page = context.new_page()
        # Nothing may leave the machine: every request must go to the service itself.
        page.outside = []
        page.on(
            "request",
            lambda r: None if r.url.startswith(("http://127.0.0.1", "data:")) else page.outside.append(r.url),
        )
        yield page
        context.close()
        browser.close()


def screenshot(page, name: str) -> None:
    if os.environ.get("CONSOLE_SCREENSHOTS"):
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(SCREENSHOTS / f"{name}.png"), full_page=True)
