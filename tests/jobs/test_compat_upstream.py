"""Reading the upstream status out of the CLI's failed results (jobs/upstream.py),
from what the bundled CLI really printed against the fake upstream."""

from __future__ import annotations

import pytest
from claude_agent_sdk import ResultMessage

from jobs.upstream import upstream_answer, upstream_status_of


def result(text: str, *, status=None, is_error=True) -> dict:
    return {
        "type": "result",
        "subtype": "success",
        "is_error": is_error,
        "result": text,
        "api_error_status": status,
    }


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("API Error: Request rejected (429) · fake upstream 429", 429),
        ("API Error: 529 fake upstream 529. This is a server-side issue, usually temporary", 529),
        ("API Error: 400 fake upstream 400", 400),
        ("Failed to authenticate. API Error: 401 fake upstream 401", 401),
        ('API Error: {"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}', 529),
        ("The CLI crashed", None),
    ],
)
def test_it_reads_the_status_from_the_text_of_older_clis(text, expected):
    assert upstream_status_of(result(text)) == expected


def test_it_prefers_the_status_field_and_reads_sdk_messages():
    assert upstream_status_of(result("API Error: 400 x", status=429)) == 429
    message = ResultMessage(
        subtype="success",
        duration_ms=1,
        duration_api_ms=0,
        is_error=True,
        num_turns=1,
        session_id="s",
        result="API Error: 529 overloaded",
        api_error_status=529,
    )
    assert upstream_status_of(message) == 529


def test_a_successful_answer_quoting_an_error_is_not_one():
    assert upstream_status_of(result("The log says API Error: 400", is_error=False)) is None
    assert upstream_status_of(None) is None


def test_the_mapping_and_retry_semantics(settings):
    settings.COMPAT_UPSTREAM_RETRY_AFTER_SECONDS = 7
    limited = upstream_answer(429, "slow down")
    assert (limited.status, limited.retryable, limited.headers) == (
        429,
        True,
        {"x-should-retry": "true", "retry-after": "7"},
    )
    assert upstream_answer(529, "x").status == 529
    assert upstream_answer(500, "x").status == 502
    refused = upstream_answer(400, "bad")
    assert refused.status == 400 and refused.headers == {"x-should-retry": "false"}
    auth = upstream_answer(401, "nope")
    assert auth.status == 401 and "your API key was accepted" in auth.message
