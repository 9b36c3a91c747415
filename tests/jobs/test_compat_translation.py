"""Translating between the compat formats and the job core, without a server:
conversations to prompts and files, job events to answer pieces, pieces to
OpenAI chunks and Anthropic events."""

from __future__ import annotations

import asyncio
import base64
import json

import pytest

from claudesvc.errors import ServiceError
from jobs.compat_api import anthropic_format, openai_format
from jobs.compat_api.answers import (
    AnswerTracker,
    BlockStart,
    BlockStop,
    Failure,
    Finish,
    MessageStart,
    TextDelta,
    Usage,
    cut_at_stop,
)
from jobs.compat_api.conversation import anthropic_conversation, openai_conversation
from jobs.compat_api.openai_format import Reply
from jobs.streaming import Idle

PNG = base64.b64encode(b"\x89PNG\r\n\x1a\n" + b"\0" * 20).decode()


# -- events as the CLI writes them ---------------------------------------------------------------


def stream(inner: dict, parent: str | None = None) -> dict:
    return {"type": "stream_event", "event": inner, "parent_tool_use_id": parent}


def message_start(input_tokens=10, cache_read=0) -> dict:
    usage = {"input_tokens": input_tokens, "output_tokens": 1, "cache_read_input_tokens": cache_read}
    return stream({"type": "message_start", "message": {"usage": usage}})


def block_start(index=0, kind="text") -> dict:
    return stream({"type": "content_block_start", "index": index, "content_block": {"type": kind}})


def text(t: str, index=0) -> dict:
    return stream({"type": "content_block_delta", "index": index, "delta": {"type": "text_delta", "text": t}})


def block_stop(index=0) -> dict:
    return stream({"type": "content_block_stop", "index": index})


def message_delta(stop_reason="end_turn", output_tokens=5) -> dict:
    return stream(
        {
            "type": "message_delta",
            "delta": {"stop_reason": stop_reason},
            "usage": {"output_tokens": output_tokens},
        }
    )


def feed_all(tracker: AnswerTracker, events: list[dict]) -> list:
    return [piece for event in events for piece in tracker.feed(event)]


class FakeJob:
    """The fields of a finished Job that ``AnswerTracker.end`` reads."""

    def __init__(self, status="completed", result="", usage=None, error_message="", stop_reason="end_turn"):
        self.status, self.result, self.usage, self.error_message = status, result, usage, error_message
        self.upstream_status = None
        self._stop_reason = stop_reason

    @property
    def events(self):
        stop_reason = self._stop_reason

        class Events:
            def filter(self, **kw):
                return self

            def order_by(self, *a):
                return self

            def values_list(self, *a, **kw):
                return self

            def first(self):
                return {"type": "result", "stop_reason": stop_reason}

        return Events()


# -- the tracker ----------------------------------------------------------------------------------


def test_text_arrives_as_it_is_generated_with_block_boundaries():
    tracker = AnswerTracker()
    pieces = feed_all(
        tracker, [message_start(12, cache_read=3), block_start(), text("Hello "), text("world"), block_stop()]
    )
    assert pieces == [
        MessageStart(Usage(input_tokens=12, output_tokens=1, cache_read_input_tokens=3)),
        BlockStart(0),
        TextDelta(0, "Hello "),
        TextDelta(0, "world"),
        BlockStop(0),
    ]


def test_a_completed_job_finishes_with_its_result_and_real_usage():
    tracker = AnswerTracker()
    feed_all(tracker, [message_start(), block_start(), text("Hi"), block_stop(), message_delta()])
    usage = {"input_tokens": 40, "output_tokens": 7, "cache_read_input_tokens": 2}
    [finish] = tracker.end(FakeJob(result="Hi", usage=usage))
    assert finish == Finish("end_turn", "Hi", Usage(40, 7, 0, 2))
    assert finish.finish_reason == "stop"
    assert finish.usage.openai() == {"prompt_tokens": 42, "completion_tokens": 7, "total_tokens": 49}


def test_tool_use_blocks_and_subagent_text_are_not_part_of_the_answer():
    tracker = AnswerTracker()
    pieces = feed_all(
        tracker,
        [
            message_start(),
            block_start(0),
            text("Let me look."),
            block_stop(0),
            block_start(1, kind="tool_use"),
            stream({"type": "content_block_delta", "index": 1, "delta": {"type": "input_json_delta"}}),
            block_stop(1),
            message_delta("tool_use", 9),
            text("from a subagent", index=0) | {"parent_tool_use_id": "toolu_1"},
            # The next step of the model: a new message, its text a new block.
            message_start(30),
            block_start(0),
            text("Found it."),
            block_stop(0),
            message_delta("end_turn", 4),
        ],
    )
    assert [p for p in pieces if isinstance(p, TextDelta)] == [
        TextDelta(0, "Let me look."),
        TextDelta(1, "Found it."),
    ]
    assert [p for p in pieces if isinstance(p, MessageStart)] == [MessageStart(Usage(10, 1))]
    assert not any(isinstance(p, Finish) for p in pieces)


def test_max_tokens_ends_the_answer_at_once_with_the_usage_so_far():
    tracker = AnswerTracker()
    pieces = feed_all(
        tracker,
        [message_start(20), block_start(), text("one "), text("two "), message_delta("max_tokens", 2)],
    )
    assert pieces[-2:] == [
        BlockStop(0),
        Finish("max_tokens", "one two ", Usage(20, 2), truncated=True),
    ]
    assert pieces[-1].finish_reason == "length"
    # What the CLI does next (asks the model to go on) is not part of the answer.
    assert tracker.feed(message_start()) == [] and tracker.end(FakeJob(status="cancelled")) == []


def test_a_stop_sequence_split_across_deltas_cuts_the_text():
    tracker = AnswerTracker(stop_sequences=["END", "###"])
    pieces = feed_all(
        tracker, [message_start(), block_start(), text("alpha E"), text("ND beta"), text("more")]
    )
    assert "".join(p.text for p in pieces if isinstance(p, TextDelta)) == "alpha "
    feed_all(tracker, [block_stop(), message_delta()])
    [finish] = tracker.end(FakeJob(result="alpha END beta more", usage={"output_tokens": 9}))
    assert (finish.stop_reason, finish.stop_sequence, finish.text) == ("stop_sequence", "END", "alpha ")
    assert finish.finish_reason == "stop"


def test_text_held_back_for_a_stop_sequence_is_sent_when_the_block_ends():
    tracker = AnswerTracker(stop_sequences=["STOP"])
    pieces = feed_all(tracker, [message_start(), block_start(), text("abcdef"), block_stop()])
    assert "".join(p.text for p in pieces if isinstance(p, TextDelta)) == "abcdef"
    assert isinstance(pieces[-1], BlockStop)


def test_cut_at_stop_takes_the_earliest():
    assert cut_at_stop("a-b+c", ["+", "-"]) == ("a", "-")
    assert cut_at_stop("abc", ["x"]) == ("abc", None)


@pytest.mark.parametrize("status", ["failed", "timeout", "cancelled"])
def test_a_job_that_did_not_complete_is_a_failure(status):
    tracker = AnswerTracker()
    [failure] = tracker.end(FakeJob(status=status, error_message="exited with code 1"))
    assert failure == Failure(status, "exited with code 1")


def test_a_deleted_job_is_a_failure():
    [failure] = AnswerTracker().end(None)
    assert failure.status is None and "deleted" in failure.message


def test_a_result_that_stopped_at_max_tokens_reads_as_length():
    [finish] = AnswerTracker().end(FakeJob(result="cut", usage={}, stop_reason="max_tokens"))
    assert finish.finish_reason == "length"


# -- encoders -------------------------------------------------------------------------------------

REPLY = Reply(id="chatcmpl-x-1", created=1700000000, model="haiku")


def collect(encoder) -> list[str]:
    async def run():
        return [frame async for frame in encoder]

    return asyncio.run(run())


async def aiter_of(items):
    for item in items:
        yield item


ANSWER = [
    MessageStart(Usage(10, 1)),
    Idle(),
    BlockStart(0),
    TextDelta(0, "Hello"),
    BlockStop(0),
    BlockStart(1),
    TextDelta(1, "again"),
    BlockStop(1),
    Finish("end_turn", "again", Usage(10, 4)),
]


def data_frames(frames: list[str]) -> list:
    return [
        json.loads(f[6:]) if f != "data: [DONE]\n\n" else "[DONE]" for f in frames if f.startswith("data: ")
    ]


def test_openai_chunks_carry_role_first_text_then_finish_usage_and_done():
    frames = collect(openai_format.chunks(aiter_of(ANSWER), REPLY, include_usage=True))
    assert ": keep-alive\n\n" in frames
    chunks = data_frames(frames)
    assert chunks[-1] == "[DONE]"
    first, *texts, finish, usage, _ = chunks
    assert first["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert [c["choices"][0]["delta"]["content"] for c in texts] == ["Hello", "\n\nagain"]
    assert all(c["object"] == "chat.completion.chunk" and c["usage"] is None for c in [first, *texts, finish])
    assert finish["choices"][0] == {"index": 0, "delta": {}, "logprobs": None, "finish_reason": "stop"}
    assert usage["choices"] == [] and usage["usage"] == {
        "prompt_tokens": 10,
        "completion_tokens": 4,
        "total_tokens": 14,
    }


def test_openai_chunks_without_usage_have_no_usage_field():
    chunks = data_frames(collect(openai_format.chunks(aiter_of(ANSWER), REPLY, include_usage=False)))
    assert all("usage" not in c for c in chunks[:-1])
    assert chunks[-2]["choices"][0]["finish_reason"] == "stop"


def test_openai_stream_reports_a_failure_as_an_error_frame():
    frames = collect(openai_format.chunks(aiter_of([Failure("failed", "boom")]), REPLY, include_usage=False))
    error = data_frames(frames)[0]["error"]
    assert (
        error["type"] == "claude_execution_error"
        and error["message"] == "boom"
        and error["code"] == "unknown_error"
    )


def test_anthropic_events_follow_the_message_sequence():
    frames = collect(anthropic_format.events(aiter_of(ANSWER), REPLY))
    named = [f for f in frames if not f.startswith(":")]
    assert all(f.startswith("event: ") for f in named)
    names = [f.split("\n")[0][7:] for f in named]
    assert names == [
        "message_start",
        "content_block_start",
        "content_block_delta",
        "content_block_stop",
        "content_block_start",
        "content_block_delta",
        "content_block_stop",
        "message_delta",
        "message_stop",
    ]
    bodies = [json.loads(f.split("\n")[1][6:]) for f in named]
    assert bodies[0]["message"]["usage"]["input_tokens"] == 10 and bodies[0]["message"]["content"] == []
    assert bodies[2]["delta"] == {"type": "text_delta", "text": "Hello"} and bodies[5]["index"] == 1
    assert bodies[7]["delta"]["stop_reason"] == "end_turn" and bodies[7]["usage"]["output_tokens"] == 4


def test_anthropic_stream_reports_a_failure_as_an_error_event():
    [frame] = collect(anthropic_format.events(aiter_of([Failure("timeout", "too slow")]), REPLY))
    name, data = frame.strip().split("\n")
    assert name == "event: error"
    assert json.loads(data[6:]) == {"type": "error", "error": {"type": "api_error", "message": "too slow"}}


# -- conversations --------------------------------------------------------------------------------


def test_a_single_message_is_the_prompt():
    conv = openai_conversation([{"role": "user", "content": "Hello"}])
    assert conv.full_prompt() == conv.turn_prompt() == "Hello"
    assert conv.system == ""


def test_system_messages_become_the_system_prompt_and_history_becomes_context():
    conv = openai_conversation(
        [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Capital of France?"},
            {"role": "assistant", "content": "Paris."},
            {"role": "developer", "content": "No jokes."},
            {"role": "user", "content": "And of Spain?"},
            {"role": "user", "content": [{"type": "text", "text": "Thanks."}]},
        ]
    )
    assert conv.system == "Be brief.\n\nNo jokes."
    assert conv.turn_prompt() == "And of Spain?\n\nThanks."
    full = conv.full_prompt()
    assert '<message role="user">\nCapital of France?\n</message>' in full
    assert '<message role="assistant">\nParis.\n</message>' in full
    assert full.endswith("And of Spain?\n\nThanks.")


def test_an_image_data_url_becomes_a_file_the_prompt_names():
    conv = openai_conversation(
        [
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "What is this?"},
                    {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG}"}},
                ],
            }
        ]
    )
    [image] = conv.files(with_history=False)
    assert image.media_type == "image/png" and image.data.startswith(b"\x89PNG")
    assert image.name.startswith("attachments/") and image.name.endswith("01-image.png")
    assert f"- {image.name} (image/png, 28 bytes)" in conv.turn_prompt()
    assert conv.turn_prompt().startswith("What is this?")


def test_anthropic_blocks_image_document_and_system_blocks():
    conv = anthropic_conversation(
        [
            {
                "role": "user",
                "content": [
                    {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": PNG}},
                    {
                        "type": "document",
                        "source": {"type": "text", "media_type": "text/plain", "data": "notes"},
                    },
                    {"type": "text", "text": "Compare them."},
                ],
            }
        ],
        [{"type": "text", "text": "You are careful."}, {"type": "text", "text": "Be short."}],
    )
    assert conv.system == "You are careful.\n\nBe short."
    files = conv.files(with_history=True)
    assert [f.media_type for f in files] == ["image/png", "text/plain"]
    assert files[1].data == b"notes" and files[1].name.endswith("02-document.txt")


def test_history_files_are_sent_only_with_the_history():
    conv = anthropic_conversation(
        [
            {
                "role": "user",
                "content": [
                    {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": PNG}},
                    {"type": "text", "text": "Look."},
                ],
            },
            {"role": "assistant", "content": "A square."},
            {"role": "user", "content": "Which colour?"},
        ]
    )
    assert len(conv.files(with_history=True)) == 1 and conv.files(with_history=False) == []


def test_stream_json_input_also_takes_anthropic_blocks():
    block = {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": PNG}}
    with pytest.raises(ServiceError) as refused:
        openai_conversation([{"role": "user", "content": [block]}])
    assert refused.value.field == "messages[0].content[0].type"
    conv = openai_conversation([{"role": "user", "content": [block]}], input_format="stream-json")
    assert len(conv.files(with_history=False)) == 1


@pytest.mark.parametrize(
    ("messages", "field"),
    [
        ([{"role": "assistant", "content": "hi"}], "messages[0].role"),
        ([{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}], "messages[1].role"),
        ([{"role": "system", "content": "only a system message"}], "messages"),
        ([{"role": "user", "content": ""}], "messages[0].content"),
        ([{"role": "user", "content": 42}], "messages[0].content"),
        ([{"role": "user", "content": ["text"]}], "messages[0].content[0]"),
        ([{"role": "user", "content": [{"type": "text", "text": 5}]}], "messages[0].content[0].text"),
        ([{"role": "user", "content": [{"type": "audio"}]}], "messages[0].content[0].type"),
        (
            [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "https://x/y.png"}}]}],
            "messages[0].content[0].image_url.url",
        ),
        (
            [
                {
                    "role": "user",
                    "content": [{"type": "image_url", "image_url": {"url": "data:image/png;base64,@@@"}}],
                }
            ],
            "messages[0].content[0].image_url.url",
        ),
        (
            [
                {
                    "role": "user",
                    "content": [{"type": "image_url", "image_url": {"url": "data:video/mp4;base64,AAAA"}}],
                }
            ],
            "messages[0].content[0].image_url.url",
        ),
        (
            [{"role": "user", "content": [{"type": "file", "file": {"file_id": "file-1"}}]}],
            "messages[0].content[0].file.file_data",
        ),
        (
            [
                {
                    "role": "system",
                    "content": [{"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG}"}}],
                },
                {"role": "user", "content": "hi"},
            ],
            "messages[0].content",
        ),
    ],
)
def test_openai_bad_messages_name_the_field(messages, field):
    with pytest.raises(ServiceError) as refused:
        openai_conversation(messages)
    assert refused.value.field == field
    assert field in refused.value.message or refused.value.code == "missing_messages"


@pytest.mark.parametrize(
    ("content", "field"),
    [
        (
            [{"type": "image", "source": {"type": "url", "url": "https://x"}}],
            "messages[0].content[0].source.type",
        ),
        ([{"type": "image"}], "messages[0].content[0].source"),
        (
            [{"type": "image", "source": {"type": "base64", "media_type": "image/tiff", "data": PNG}}],
            "messages[0].content[0].source.data",
        ),
        (
            [{"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": ""}}],
            "messages[0].content[0].source.data",
        ),
        ([{"type": "tool_result", "content": "x"}], "messages[0].content[0].type"),
        ({"type": "text"}, "messages[0].content"),
    ],
)
def test_anthropic_bad_blocks_name_the_field(content, field):
    with pytest.raises(ServiceError) as refused:
        anthropic_conversation([{"role": "user", "content": content}])
    assert refused.value.field == field


@pytest.mark.parametrize(
    ("system", "field"), [(5, "system"), ([{"type": "image"}], "system[0]"), (["x"], "system[0]")]
)
def test_anthropic_bad_system_names_the_field(system, field):
    with pytest.raises(ServiceError) as refused:
        anthropic_conversation([{"role": "user", "content": "hi"}], system)
    assert refused.value.field == field


def test_inline_files_are_limited_in_size(settings):
    settings.COMPAT_MAX_INLINE_FILE_BYTES = 1024
    big = base64.b64encode(b"x" * 1025).decode()
    with pytest.raises(ServiceError) as refused:
        anthropic_conversation(
            [
                {
                    "role": "user",
                    "content": [
                        {
                            "type": "document",
                            "source": {"type": "base64", "media_type": "application/pdf", "data": big},
                        }
                    ],
                }
            ]
        )
    assert refused.value.status == 413 and refused.value.code == "request_too_large"


def test_a_conversation_longer_than_the_prompt_limit_is_refused(settings):
    settings.MAX_PROMPT_CHARS = 50
    with pytest.raises(ServiceError) as refused:
        openai_conversation([{"role": "user", "content": "x" * 51}])
    assert refused.value.status == 413 and refused.value.field == "messages"
