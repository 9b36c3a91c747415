"""jobs/sse.py: the bytes every SSE response sends (the SDKs and browsers read exactly these)."""

from __future__ import annotations

from jobs.sse import KEEPALIVE, compact_json, frame, retry, sse_response


def test_frames_are_id_event_then_one_data_line_and_a_blank_line():
    assert frame(compact_json({"a": [1, 2]}), event="assistant", id=7) == (
        'id: 7\nevent: assistant\ndata: {"a":[1,2]}\n\n'
    )
    assert frame("[DONE]") == "data: [DONE]\n\n"
    assert frame("{}", event="ping") == "event: ping\ndata: {}\n\n"
    assert frame("{}", id=0) == "id: 0\ndata: {}\n\n"


def test_keepalive_and_retry_are_what_clients_skip_and_obey():
    assert KEEPALIVE == ": keep-alive\n\n"
    assert retry(2000) == "retry: 2000\n\n"


def test_an_sse_response_is_neither_cached_nor_buffered():
    response = sse_response(iter(["data: x\n\n"]))
    assert response["Content-Type"] == "text/event-stream"
    assert response["Cache-Control"] == "no-cache" and response["X-Accel-Buffering"] == "no"
    assert sse_response(iter([]), charset="utf-8")["Content-Type"] == "text/event-stream; charset=utf-8"
    assert b"".join(response.streaming_content) == b"data: x\n\n"
