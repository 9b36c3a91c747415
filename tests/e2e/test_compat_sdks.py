"""The compat API as its users meet it: the official ``openai`` and ``anthropic``
SDKs, unmodified, against the real server, worker and CLI (with the fake
Anthropic upstream), changing only ``base_url`` and the key. And the seed's
curl examples, with a key added, through httpx."""

from __future__ import annotations

import json
import threading
import time
import uuid

import anthropic
import httpx
import openai
import pytest

from tests.fakes.anthropic_upstream import _text_of

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]


def oai(service, secret: str, **kwargs) -> openai.OpenAI:
    kwargs.setdefault("max_retries", 0)
    return openai.OpenAI(base_url=f"{service.url}/v1", api_key=secret, timeout=60, **kwargs)


def ant(service, secret: str | None = None, **kwargs) -> anthropic.Anthropic:
    kwargs.setdefault("max_retries", 0)
    return anthropic.Anthropic(base_url=service.url, api_key=secret, timeout=60, **kwargs)


def marker() -> str:
    return f"m{uuid.uuid4().hex[:10]}"


def upstream_conversations(upstream, mark: str) -> list[list[tuple[str, str]]]:
    """(role, text) of each conversation the CLI sent upstream whose last turn has ``mark``, oldest first."""
    found = []
    for request in upstream.main_requests():
        turns = [
            (m["role"], _text_of(m["content"]))
            for m in request["body"]["messages"]
            if m["role"] in ("user", "assistant")
        ]
        if turns and mark in turns[-1][1]:
            found.append(turns)
    return found


def upstream_turns(upstream, mark: str) -> list[tuple[str, str]]:
    """(role, text) of the conversation the CLI sent upstream in the latest request whose last turn has ``mark``."""
    found = upstream_conversations(upstream, mark)
    if not found:
        raise AssertionError(f"no upstream request carried {mark}")
    return found[-1]


def job_of(job_id: str):
    from jobs.models import Job

    return Job.objects.get(pk=job_id)


def wait_final(job_id: str, timeout: float = 30):
    from jobs.models import Job

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = Job.objects.get(pk=job_id)
        if job.is_final:
            return job
        time.sleep(0.2)
    raise AssertionError(f"job {job_id} did not end")


# -- OpenAI SDK ----------------------------------------------------------------------------------


def test_openai_sdk_completes_with_the_clis_token_counts(service, owner_key, upstream):
    mark = marker()
    raw = oai(service, owner_key.secret).chat.completions.with_raw_response.create(
        model="haiku",
        messages=[
            {"role": "system", "content": f"Answer tersely {mark}."},
            {"role": "user", "content": f"What is 2+2? {mark} [[reply:Four.]]"},
        ],
        max_tokens=100,
        temperature=0.1,
    )
    completion = raw.parse()
    assert completion.object == "chat.completion"
    assert completion.choices[0].message.content == "Four."
    assert completion.choices[0].message.role == "assistant"
    assert completion.choices[0].finish_reason == "stop"
    job = job_of(raw.headers["x-job-id"])
    assert (job.source, job.status, job.model) == ("compat", "completed", "haiku")
    assert completion.usage.completion_tokens == job.usage["output_tokens"] == 1
    assert (
        completion.usage.prompt_tokens
        == job.usage["input_tokens"]
        + job.usage["cache_read_input_tokens"]
        + (job.usage["cache_creation_input_tokens"])
    )
    assert completion.usage.total_tokens == completion.usage.prompt_tokens + 1
    # The system message reached Claude as system prompt, not as a user turn.
    request = next(r for r in reversed(upstream.main_requests()) if mark in json.dumps(r["body"]["messages"]))
    assert f"Answer tersely {mark}." in json.dumps(request["body"]["system"])
    assert upstream_turns(upstream, mark) == [("user", f"What is 2+2? {mark} [[reply:Four.]]")]


def test_openai_sdk_streams_text_as_it_is_generated(service, owner_key):
    words = [f"w{i}" for i in range(25)]
    started = time.monotonic()
    stream = oai(service, owner_key.secret).chat.completions.create(
        model="haiku",
        messages=[{"role": "user", "content": f"Count [[slow:0.3]] [[reply:{' '.join(words)}]]"}],
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks, arrivals = [], []
    for chunk in stream:
        chunks.append(chunk)
        if chunk.choices and chunk.choices[0].delta.content:
            arrivals.append(time.monotonic() - started)
    whole = time.monotonic() - started
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == " ".join(words)
    assert len(arrivals) >= 20, "the text came in one piece, not as it was generated"
    # The first words arrive long before the whole answer (25 words, 0.3 s apart upstream).
    assert arrivals[0] < whole - 4, (arrivals[0], whole)
    finish = [c for c in chunks if c.choices and c.choices[0].finish_reason]
    assert [c.choices[0].finish_reason for c in finish] == ["stop"]
    usage = chunks[-1]
    assert usage.choices == [] and usage.usage.completion_tokens == 25
    assert all(c.usage is None for c in chunks[:-1])


def _cli_alive(pid: int | None) -> bool:
    # A zombie waiting for its adopter to reap it runs nothing: it does not count.
    from jobs.sandbox import group_running

    return pid is not None and group_running(pid)


def test_openai_max_tokens_ends_with_length_and_stops_the_job(service, owner_key, upstream):
    mark = marker()
    client = oai(service, owner_key.secret)
    raw = client.chat.completions.with_raw_response.create(
        model="haiku",
        messages=[{"role": "user", "content": f"Talk {mark} [[reply:a b c d e f g h i j]]"}],
        max_tokens=3,
    )
    completion = raw.parse()
    assert completion.choices[0].message.content == "a b c "
    assert completion.choices[0].finish_reason == "length"
    assert completion.usage.completion_tokens == 3
    # The behaviour, not the CLI's timing: whether this CLI version asks the
    # model to go on (the service then stops it) or ends by itself, the job
    # ends, its CLI is gone, and nothing more is asked of the model afterwards.
    job = wait_final(raw.headers["x-job-id"])
    assert job.status in ("completed", "cancelled", "failed")
    assert not _cli_alive(job.cli_pid)
    asked = len([r for r in upstream.main_requests() if mark in json.dumps(r["body"])])
    assert asked >= 1
    time.sleep(1.5)
    assert len([r for r in upstream.main_requests() if mark in json.dumps(r["body"])]) == asked
    streamed = list(
        client.chat.completions.create(
            model="haiku",
            messages=[{"role": "user", "content": "Talk [[reply:a b c d e f g h i j]]"}],
            max_completion_tokens=2,
            stream=True,
        )
    )
    assert "".join(c.choices[0].delta.content or "" for c in streamed if c.choices) == "a b "
    assert streamed[-1].choices[0].finish_reason == "length"


def test_openai_stop_sequences_cut_the_answer(service, owner_key):
    completion = oai(service, owner_key.secret).chat.completions.create(
        model="haiku",
        messages=[{"role": "user", "content": "List [[reply:one two STOP three]]"}],
        stop=["STOP"],
    )
    assert completion.choices[0].message.content == "one two "
    assert completion.choices[0].finish_reason == "stop"


def test_openai_sdk_sends_an_image_as_a_file_claude_can_read(service, owner_key, upstream):
    mark = marker()
    png = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg=="
    raw = oai(service, owner_key.secret).chat.completions.with_raw_response.create(
        model="haiku",
        messages=[
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": f"Describe {mark}"},
                    {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{png}"}},
                ],
            }
        ],
    )
    job = job_of(raw.headers["x-job-id"])
    [entry] = job.options["inline_files"]
    assert "data" not in entry  # written out, not kept in the database
    from pathlib import Path

    assert (Path(job.options["cwd"]) / entry["name"]).read_bytes().startswith(b"\x89PNG")
    [(_, sent)] = upstream_turns(upstream, mark)
    assert f"{entry['name']} (image/png, 70 bytes)" in sent and "Read tool" in sent


# -- Anthropic SDK --------------------------------------------------------------------------------


def test_anthropic_sdk_creates_a_message(service, owner_key, upstream):
    mark = marker()
    raw = ant(service, owner_key.secret).messages.with_raw_response.create(
        model="haiku",
        max_tokens=1024,
        system=[{"type": "text", "text": f"You are terse {mark}."}],
        messages=[
            {"role": "user", "content": [{"type": "text", "text": f"Hello {mark} [[reply:Hi there!]]"}]}
        ],
    )
    message = raw.parse()
    assert message.type == "message" and message.role == "assistant"
    assert message.content[0].type == "text" and message.content[0].text == "Hi there!"
    assert message.stop_reason == "end_turn" and message.stop_sequence is None
    job = job_of(raw.headers["x-job-id"])
    assert message.usage.output_tokens == job.usage["output_tokens"] == 2
    assert message.usage.input_tokens == job.usage["input_tokens"]
    request = next(r for r in reversed(upstream.main_requests()) if mark in json.dumps(r["body"]["messages"]))
    assert f"You are terse {mark}." in json.dumps(request["body"]["system"])


def test_anthropic_sdk_streams_the_event_sequence(service, owner_key):
    words = [f"v{i}" for i in range(12)]
    client = ant(service, owner_key.secret)
    started = time.monotonic()
    first_text = None
    events = []
    with client.messages.stream(
        model="haiku",
        max_tokens=500,
        messages=[{"role": "user", "content": f"Go [[slow:0.3]] [[reply:{' '.join(words)}]]"}],
    ) as stream:
        for event in stream:
            events.append(event.type)
            if event.type == "text" and first_text is None:
                first_text = time.monotonic() - started
        final = stream.get_final_message()
    whole = time.monotonic() - started
    raw_types = [t for t in events if t != "text"]
    assert raw_types[0] == "message_start" and raw_types[-2:] == ["message_delta", "message_stop"]
    assert raw_types[1] == "content_block_start" and "content_block_stop" in raw_types
    assert raw_types.count("content_block_delta") == len(words)
    assert final.content[0].text == " ".join(words)
    assert final.stop_reason == "end_turn" and final.usage.output_tokens == len(words)
    assert first_text < whole - 2, (first_text, whole)


def test_anthropic_max_tokens_and_stop_sequences(service, owner_key):
    client = ant(service, owner_key.secret)
    cut = client.messages.create(
        model="haiku", max_tokens=2, messages=[{"role": "user", "content": "Go [[reply:a b c d e f]]"}]
    )
    assert (cut.stop_reason, cut.content[0].text, cut.usage.output_tokens) == ("max_tokens", "a b ", 2)
    stopped = client.messages.create(
        model="haiku",
        max_tokens=100,
        stop_sequences=["###"],
        messages=[{"role": "user", "content": "Go [[reply:alpha beta ### gamma]]"}],
    )
    assert (stopped.stop_reason, stopped.stop_sequence, stopped.content[0].text) == (
        "stop_sequence",
        "###",
        "alpha beta ",
    )


def test_anthropic_documents_become_files_the_cli_may_read(service, owner_key, upstream):
    from jobs.models import ClaudeSession

    session = f"docs-{uuid.uuid4().hex[:8]}"
    client = ant(service, owner_key.secret)
    mark = marker()
    document = {
        "type": "document",
        "title": "notes",
        "source": {"type": "text", "media_type": "text/plain", "data": "The secret word is PAPAYA."},
    }
    client.messages.create(
        model="haiku",
        max_tokens=100,
        metadata={"user_id": session},
        messages=[{"role": "user", "content": [document, {"type": "text", "text": f"Keep this {mark}"}]}],
    )
    [(_, sent)] = upstream_turns(upstream, mark)
    name = next(line[2:].split(" (")[0] for line in sent.splitlines() if line.startswith("- attachments/"))
    assert name.endswith("-notes.txt")
    cwd = ClaudeSession.objects.get(external_id=session).cwd
    # Under the safe policy the CLI reads inside its working directory: the file is there for it.
    read = json.dumps({"file_path": f"{cwd}/{name}"})
    answer = client.messages.create(
        model="haiku",
        max_tokens=100,
        metadata={"user_id": session},
        messages=[{"role": "user", "content": f"Read it [[tool:Read {read}]]"}],
    )
    assert "PAPAYA" in answer.content[0].text


# -- sessions -------------------------------------------------------------------------------------


def test_a_session_keeps_context_and_sends_only_the_new_turn(service, owner_key, upstream):
    session, first, second = f"conv-{uuid.uuid4().hex[:8]}", marker(), marker()
    client = oai(service, owner_key.secret)
    headers = {"X-Request-ID": session}
    one = client.chat.completions.with_raw_response.create(
        model="haiku",
        messages=[{"role": "user", "content": f"My name is Ada {first} [[reply:Nice to meet you, Ada.]]"}],
        extra_headers=headers,
    )
    assert one.headers["x-session-id"] == session
    # The OpenAI way: the whole history again, plus the new question.
    two = client.chat.completions.with_raw_response.create(
        model="haiku",
        messages=[
            {"role": "user", "content": f"My name is Ada {first} [[reply:Nice to meet you, Ada.]]"},
            {"role": "assistant", "content": "Nice to meet you, Ada."},
            {"role": "user", "content": f"What is my name? {second}"},
        ],
        extra_headers=headers,
    )
    # Claude got the earlier turns from its own resumed conversation, and the new turn alone.
    assert upstream_turns(upstream, second) == [
        ("user", f"My name is Ada {first} [[reply:Nice to meet you, Ada.]]"),
        ("assistant", "Nice to meet you, Ada."),
        ("user", f"What is my name? {second}"),
    ]
    job_one, job_two = job_of(one.headers["x-job-id"]), job_of(two.headers["x-job-id"])
    assert job_two.options["resume"] == job_one.claude_session_id
    assert job_two.session_id == job_one.session_id
    with service.client(owner_key) as http:
        listed = http.get("/v1/sessions").json()["sessions"]
    assert session in [s["sessionId"] for s in listed]


def test_an_anthropic_session_named_by_metadata_user_id(service, owner_key, upstream):
    session, first, second = f"user-{uuid.uuid4().hex[:8]}", marker(), marker()
    client = ant(service, owner_key.secret)
    for text in [f"Erste Frage {first}", f"Folge-Frage {second}"]:
        client.messages.create(
            model="haiku",
            max_tokens=200,
            metadata={"user_id": session},
            messages=[{"role": "user", "content": text}],
        )
    turns = upstream_turns(upstream, second)
    assert turns[0] == ("user", f"Erste Frage {first}") and turns[-1] == ("user", f"Folge-Frage {second}")
    assert len(turns) == 3


def test_history_without_a_session_is_sent_as_context(service, owner_key, upstream):
    mark = marker()
    oai(service, owner_key.secret).chat.completions.create(
        model="haiku",
        messages=[
            {"role": "user", "content": "Remember: the code is 4711."},
            {"role": "assistant", "content": "Noted, 4711."},
            {"role": "user", "content": f"What is the code? {mark}"},
        ],
    )
    [(role, sent)] = upstream_turns(upstream, mark)
    assert role == "user"
    assert '<message role="user">\nRemember: the code is 4711.\n</message>' in sent
    assert '<message role="assistant">\nNoted, 4711.\n</message>' in sent
    assert sent.endswith(f"What is the code? {mark}")


def test_two_callers_with_the_same_request_id_do_not_share_context(service, owner_key, other_key, upstream):
    session, secret_mark, probe = "shared-name", marker(), marker()
    oai(service, owner_key.secret).chat.completions.create(
        model="haiku",
        messages=[{"role": "user", "content": f"The password is swordfish {secret_mark}"}],
        extra_headers={"X-Request-ID": session},
    )
    raw = oai(service, other_key.secret).chat.completions.with_raw_response.create(
        model="haiku",
        messages=[{"role": "user", "content": f"What is the password? {probe}"}],
        extra_headers={"X-Request-ID": session},
    )
    turns = upstream_turns(upstream, probe)
    assert turns == [("user", f"What is the password? {probe}")]
    assert "swordfish" not in json.dumps(turns)
    assert "resume" not in job_of(raw.headers["x-job-id"]).options


def test_two_calls_on_one_session_run_one_after_the_other(service, owner_key, upstream):
    session, first, second = f"busy-{uuid.uuid4().hex[:8]}", marker(), marker()
    client = oai(service, owner_key.secret)
    results: dict[str, object] = {}

    def call(name: str, content: str) -> None:
        results[name] = client.chat.completions.with_raw_response.create(
            model="haiku",
            messages=[{"role": "user", "content": content}],
            extra_headers={"X-Request-ID": session},
        )

    slow = threading.Thread(target=call, args=("a", f"Slow one {first} [[slow:0.2]] [[reply:{' x' * 12}]]"))
    slow.start()
    # The second call goes once the first one's CLI asks the upstream (its turn surely came first).
    deadline = time.monotonic() + 30
    while not upstream_conversations(upstream, first) and time.monotonic() < deadline:
        time.sleep(0.05)
    fast = threading.Thread(target=call, args=("b", f"Quick one {second} [[reply:done]]"))
    fast.start()
    slow.join(90)
    fast.join(90)
    job_a, job_b = job_of(results["a"].headers["x-job-id"]), job_of(results["b"].headers["x-job-id"])
    assert job_a.status == job_b.status == "completed"
    assert job_b.started_at >= job_a.finished_at, "the second turn ran beside the first"
    # … and it continued the first turn's conversation.
    assert job_b.options["resume"] == job_a.claude_session_id
    assert upstream_turns(upstream, second)[0][1].startswith(f"Slow one {first}")


# -- JWT --------------------------------------------------------------------------------------------


def test_login_then_both_sdks_with_the_token(service, jwt_user, settings):
    # The server checks the password with its own (default) hashers, not the tests' fast one.
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.PBKDF2PasswordHasher"]
    jwt_user.row.set_password(jwt_user.password)
    jwt_user.row.save(update_fields=["password"])
    with service.client() as http:
        login = http.post("/auth/login", json={"username": "demo", "password": jwt_user.password})
    assert login.status_code == 200, login.text
    assert login.json()["user"] == {"id": "demo", "name": "Demo User"}
    token = login.json()["token"]
    raw = oai(service, token).chat.completions.with_raw_response.create(
        model="haiku", messages=[{"role": "user", "content": "Hi [[reply:Hello, Demo]]"}]
    )
    assert raw.parse().choices[0].message.content == "Hello, Demo"
    job = job_of(raw.headers["x-job-id"])
    assert job.user.username == "demo" and job.api_key is None
    message = ant(service, auth_token=token).messages.create(
        model="haiku", max_tokens=50, messages=[{"role": "user", "content": "Hi [[reply:Hello again]]"}]
    )
    assert message.content[0].text == "Hello again"
    with pytest.raises(openai.AuthenticationError):
        oai(service, token[:-4] + "abcd").models.list()


# -- errors as each SDK's typed exceptions -----------------------------------------------------------


def test_each_sdk_raises_its_typed_errors(service, owner_key):
    client, aclient = oai(service, owner_key.secret), ant(service, owner_key.secret)
    with pytest.raises(openai.BadRequestError) as bad:
        client.chat.completions.create(model="haiku", messages=[])
    assert bad.value.code == "missing_messages"
    with pytest.raises(openai.BadRequestError) as bad_model:
        client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "x"}])
    assert bad_model.value.param == "model"
    with pytest.raises(openai.AuthenticationError):
        oai(service, "csk_live_" + "x" * 32).chat.completions.create(
            model="haiku", messages=[{"role": "user", "content": "x"}]
        )
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("gpt-4o")
    with pytest.raises(anthropic.BadRequestError) as bad_role:
        aclient.messages.create(model="haiku", max_tokens=10, messages=[{"role": "system", "content": "x"}])
    assert bad_role.value.body["error"]["type"] == "invalid_request_error"
    with pytest.raises(anthropic.AuthenticationError):
        ant(service, "wrong").messages.create(
            model="haiku", max_tokens=10, messages=[{"role": "user", "content": "x"}]
        )


def test_an_upstream_400_is_a_400_the_sdks_do_not_retry(service, owner_key):
    from jobs.models import Job

    mark = marker()
    # Default retries on: a refused request is not repeated.
    client = oai(service, owner_key.secret, max_retries=2)
    with pytest.raises(openai.BadRequestError) as failed:
        client.chat.completions.create(
            model="haiku", messages=[{"role": "user", "content": f"{mark} [[error:400]]"}]
        )
    assert failed.value.body["type"] == "invalid_request_error"
    assert failed.value.body["code"] == "upstream_invalid_request"
    assert failed.value.response.headers["x-should-retry"] == "false"
    assert "fake upstream 400" in failed.value.message
    assert Job.objects.filter(prompt__contains=mark).count() == 1
    with pytest.raises(anthropic.BadRequestError):
        ant(service, owner_key.secret, max_retries=2).messages.create(
            model="haiku", max_tokens=10, messages=[{"role": "user", "content": f"{mark}b [[error:400]]"}]
        )
    assert Job.objects.filter(prompt__contains=f"{mark}b").count() == 1


def test_a_failure_after_the_stream_started_reaches_each_sdk(service, owner_key):
    with pytest.raises(openai.APIError, match="fake upstream 400"):
        for _ in oai(service, owner_key.secret).chat.completions.create(
            model="haiku", messages=[{"role": "user", "content": "x [[error:400]]"}], stream=True
        ):
            pass
    client = ant(service, owner_key.secret)
    failing = client.messages.stream(
        model="haiku", max_tokens=10, messages=[{"role": "user", "content": "x [[error:400]]"}]
    )
    with pytest.raises(anthropic.APIStatusError, match="fake upstream 400"), failing as stream:
        for _ in stream:
            pass


# -- the seed's curl examples, with a key ------------------------------------------------------------------


def sse_data(response: httpx.Response) -> list[str]:
    return [line[6:] for line in response.iter_lines() if line.startswith("data: ")]


def test_the_seeds_examples_work_as_written(service, owner_key):
    with service.client(owner_key) as http:
        request_id = f"user-123-{int(time.time())}"
        message = http.post(
            "/v1/messages",
            headers={"X-Request-ID": request_id, "anthropic-version": "2023-06-01"},
            json={
                "model": "sonnet",
                "max_tokens": 1024,
                "temperature": 0.7,
                "messages": [{"role": "user", "content": "Erkläre in 2 Sätzen was Docker ist."}],
            },
        )
        assert message.status_code == 200, message.text
        body = message.json()
        assert body["id"].startswith(f"msg-{request_id}-") and body["type"] == "message"
        assert body["content"][0] == {"type": "text", "text": "Echo: Erkläre in 2 Sätzen was Docker ist."}
        assert (
            body["model"] == "sonnet" and body["stop_reason"] == "end_turn" and body["stop_sequence"] is None
        )
        assert body["usage"]["input_tokens"] > 0 and body["usage"]["output_tokens"] > 0

        chat = http.post(
            "/v1/chat/completions",
            json={
                "model": "sonnet",
                "messages": [{"role": "user", "content": "Was ist 2+2?"}],
                "max_tokens": 100,
                "temperature": 0.1,
            },
        ).json()
        assert (
            chat["object"] == "chat.completion"
            and chat["choices"][0]["message"]["content"] == "Echo: Was ist 2+2?"
        )
        assert (
            chat["usage"]["total_tokens"]
            == chat["usage"]["prompt_tokens"] + chat["usage"]["completion_tokens"]
        )

        system = http.post(
            "/v1/chat/completions",
            json={
                "model": "sonnet",
                "messages": [
                    {"role": "system", "content": "Du bist ein hilfsbereiter DevOps-Experte."},
                    {"role": "user", "content": "Wie deploye ich eine Node.js App?"},
                ],
            },
        ).json()
        assert system["choices"][0]["message"]["content"] == "Echo: Wie deploye ich eine Node.js App?"

        with http.stream(
            "POST",
            "/v1/chat/completions",
            json={
                "model": "sonnet",
                "messages": [{"role": "user", "content": "Schreibe eine kurze Geschichte."}],
                "output_format": "stream-json",
            },
            headers={"Accept": "text/event-stream"},
        ) as streamed:
            assert streamed.headers["content-type"].startswith("text/event-stream")
            assert streamed.headers["x-request-id"] and streamed.headers["request-id"]
            frames = sse_data(streamed)
        assert frames[-1] == "[DONE]"
        chunks = [json.loads(f) for f in frames[:-1]]
        assert all(c["object"] == "chat.completion.chunk" for c in chunks)
        assert "".join(c["choices"][0]["delta"].get("content", "") for c in chunks) == (
            "Echo: Schreibe eine kurze Geschichte."
        )

        text = http.post(
            "/v1/chat/completions",
            json={
                "model": "sonnet",
                "messages": [{"role": "user", "content": "Sage Hallo"}],
                "output_format": "text",
            },
        )
        assert text.headers["content-type"].startswith("text/plain") and text.text == "Echo: Sage Hallo"

        rca = http.post(
            "/api/rca",
            json={
                "prompt": "Analysiere folgendes Problem: Webserver antwortet mit 502 Bad Gateway.",
                "model": "sonnet",
                "max_tokens": 1024,
            },
        ).json()
        assert rca["analysis"].startswith("Echo: Analysiere folgendes Problem") and rca["model"] == "sonnet"
        assert (
            rca["id"].startswith("chatcmpl-")
            and isinstance(rca["created"], int)
            and rca["usage"]["total_tokens"]
        )

        assert [m["id"] for m in http.get("/v1/models").json()["data"]] == ["haiku", "sonnet", "opus"]
        health = httpx.get(f"{service.url}/health").json()
        assert health["timestamp"].endswith("Z") and health["uptime"] > 0

        sessions = http.get("/v1/sessions").json()["sessions"]
        assert request_id in [s["sessionId"] for s in sessions]
        assert http.delete(f"/v1/sessions/{request_id}").json() == {"sessionId": request_id, "deleted": True}
        assert http.delete(f"/v1/sessions/{request_id}").status_code == 404

        missing = http.post("/v1/chat/completions", json={"model": "sonnet"})
        assert missing.status_code == 400
        assert missing.json()["error"] == {
            "message": "messages array is required",
            "type": "invalid_request_error",
            "param": "messages",
            "code": "missing_messages",
        }


def test_seed_retry_example_backs_off_on_rate_limit_reset(service, owner_key):
    """Seed 001's Python retry loop (requests swapped for httpx) against a key
    allowed one call per 6 seconds: of three calls (a second or two each), at
    least two fall in one window, so at least one is refused and retried."""
    from apikeys.models import RateLimitOverride

    RateLimitOverride.objects.create(api_key=owner_key.row, group="compat", requests=1, window_seconds=6)
    waits = []

    def call_api_with_retry(url, data, max_retries=3):
        for _attempt in range(max_retries):
            response = httpx.post(url, json=data, headers={"X-API-Key": owner_key.secret}, timeout=60)
            if response.status_code == 429:
                reset_time = int(response.headers.get("RateLimit-Reset", 60))
                waits.append((reset_time, response.json()))
                time.sleep(reset_time)
                continue
            return response
        raise Exception(f"Max retries exceeded: {waits}")

    data = {"model": "sonnet", "messages": [{"role": "user", "content": "Hallo [[reply:Hallo!]]"}]}
    url = f"{service.url}/v1/chat/completions"
    results = [call_api_with_retry(url, data) for _ in range(3)]
    assert [r.status_code for r in results] == [200, 200, 200]
    assert waits and all(0 <= reset <= 6 for reset, _ in waits)
    assert waits[0][1] == {
        "error": {
            "message": "Too many requests, please try again later",
            "type": "rate_limit_error",
            "param": None,
            "code": "rate_limit_exceeded",
        }
    }
