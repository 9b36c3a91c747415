"""Contract tests: released clients and frameworks, with their defaults, against
the live server, worker and CLI (fake upstream). What a new user would try:
openai's ``parse`` and stream helpers, anthropic's ``messages.stream``,
``count_tokens`` and model list, LangChain's ChatOpenAI and ChatAnthropic
(plain, streamed, ``with_structured_output``), LiteLLM's ``openai/`` and
``anthropic/`` providers with full model ids, and an EventSource-style SSE
reader. LiteLLM is kept local-only: its cost map from the package, no
telemetry, no network call of its own."""

from __future__ import annotations

import json
import socket
import uuid

import anthropic
import httpx
import openai
import pytest
from pydantic import BaseModel

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]

FULL_SONNET = "claude-sonnet-4-5-20250929"
FULL_HAIKU = "claude-haiku-4-5-20251001"


class City(BaseModel):
    name: str
    population: int


def marker() -> str:
    return f"m{uuid.uuid4().hex[:10]}"


def job_with(mark: str):
    from jobs.models import Job

    return Job.objects.get(prompt__contains=mark)


def upstream_max_tokens(upstream, mark: str) -> int:
    for request in reversed(upstream.main_requests()):
        if mark in json.dumps(request["body"]["messages"]):
            return request["body"]["max_tokens"]
    raise AssertionError(f"no upstream request carried {mark}")


PARIS = '[[structured:{"name": "Paris", "population": 2100000}]]'


# -- a client that hangs up ------------------------------------------------------------------------


def test_a_client_that_hangs_up_on_a_plain_answer_cancels_its_job(service, owner_key):
    """Nobody is left to read the answer: the job stops instead of running to its end (the
    request's thread waits in the view; the disconnect has to reach it through the middleware)."""
    import time

    from tests.e2e.test_compat_sdks import wait_final

    mark = marker()
    body = {
        "model": "haiku",
        "messages": [
            {"role": "user", "content": f"[[slow:1]] {mark} one two three four five six seven eight"}
        ],
    }
    with pytest.raises(httpx.TimeoutException):
        httpx.post(
            f"{service.url}/v1/chat/completions",
            json=body,
            headers={"Authorization": f"Bearer {owner_key.secret}"},
            timeout=httpx.Timeout(10, read=2.5),
        )
    hung_up = time.monotonic()
    job = wait_final(str(job_with(mark).pk), timeout=20)
    assert job.status == "cancelled" and job.error_message == "Cancelled by the caller"
    assert time.monotonic() - hung_up < 6, "it stopped well before its 8 s answer would have ended"


# -- openai --------------------------------------------------------------------------------------


def test_openai_parse_returns_the_model_instance(service, owner_key):
    client = openai.OpenAI(base_url=f"{service.url}/v1", api_key=owner_key.secret, max_retries=0, timeout=60)
    completion = client.chat.completions.parse(
        model="haiku",
        messages=[{"role": "user", "content": f"Biggest city of France? {PARIS}"}],
        response_format=City,
    )
    parsed = completion.choices[0].message.parsed
    assert parsed == City(name="Paris", population=2100000)
    assert json.loads(completion.choices[0].message.content) == {"name": "Paris", "population": 2100000}


def test_openai_json_object_answers_json(service, owner_key):
    client = openai.OpenAI(base_url=f"{service.url}/v1", api_key=owner_key.secret, max_retries=0, timeout=60)
    completion = client.chat.completions.create(
        model="haiku",
        messages=[{"role": "user", "content": "Answer in JSON"}],
        response_format={"type": "json_object"},
    )
    assert isinstance(json.loads(completion.choices[0].message.content), dict)


def test_structured_output_the_model_does_not_give_is_a_clear_error(service, owner_key):
    client = openai.OpenAI(base_url=f"{service.url}/v1", api_key=owner_key.secret, max_retries=0, timeout=60)
    with pytest.raises(openai.InternalServerError, match="did not return structured output") as failed:
        client.chat.completions.parse(
            model="haiku",
            messages=[{"role": "user", "content": "No [[structured:none]]"}],
            response_format=City,
        )
    assert failed.value.body["code"] == "structured_output_failed"


def test_openai_stream_helper(service, owner_key):
    client = openai.OpenAI(base_url=f"{service.url}/v1", api_key=owner_key.secret, max_retries=0, timeout=60)
    with client.chat.completions.stream(
        model="haiku", messages=[{"role": "user", "content": "[[reply:one two three]]"}]
    ) as stream:
        deltas = [event.delta for event in stream if event.type == "content.delta"]
        final = stream.get_final_completion()
    assert "".join(deltas) == "one two three"
    assert final.choices[0].message.content == "one two three"


def test_openai_stream_helper_with_a_schema(service, owner_key):
    client = openai.OpenAI(base_url=f"{service.url}/v1", api_key=owner_key.secret, max_retries=0, timeout=60)
    with client.chat.completions.stream(
        model="haiku", messages=[{"role": "user", "content": f"City {PARIS}"}], response_format=City
    ) as stream:
        for _ in stream:
            pass
        final = stream.get_final_completion()
    assert final.choices[0].message.parsed == City(name="Paris", population=2100000)


# -- anthropic -----------------------------------------------------------------------------------


def test_anthropic_stream_count_tokens_and_models(service, owner_key, upstream):
    client = anthropic.Anthropic(base_url=service.url, api_key=owner_key.secret, max_retries=0, timeout=60)
    with client.messages.stream(
        model=FULL_HAIKU, max_tokens=64000, messages=[{"role": "user", "content": "[[reply:streamed words]]"}]
    ) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text == "streamed words" and final.stop_reason == "end_turn"

    counted = client.messages.count_tokens(model=FULL_HAIKU, messages=[{"role": "user", "content": "Hello"}])
    assert counted.input_tokens == 10  # the fake upstream's count endpoint answered
    raw = client.messages.with_raw_response.count_tokens(
        model="haiku", messages=[{"role": "user", "content": "x"}]
    )
    assert raw.headers["x-token-count-source"] == "upstream"

    models = client.models.list()
    assert [m.id for m in models.data] == ["haiku", "sonnet", "opus"]
    assert models.data[0].display_name and models.data[0].type == "model"
    assert client.models.retrieve("sonnet").created_at.year >= 2023


def test_anthropic_parse_with_output_format(service, owner_key):
    client = anthropic.Anthropic(base_url=service.url, api_key=owner_key.secret, max_retries=0, timeout=60)
    message = client.messages.parse(
        model=FULL_HAIKU,
        max_tokens=1024,
        messages=[{"role": "user", "content": f"City {PARIS}"}],
        output_format=City,
    )
    assert message.parsed_output == City(name="Paris", population=2100000)


# -- LangChain ------------------------------------------------------------------------------------


def test_langchain_chat_openai_with_defaults(service, owner_key):
    from langchain_openai import ChatOpenAI

    llm = ChatOpenAI(model=FULL_HAIKU, base_url=f"{service.url}/v1", api_key=owner_key.secret, max_retries=0)
    assert llm.invoke("[[reply:hello from langchain]]").content == "hello from langchain"
    assert "".join(chunk.content for chunk in llm.stream("[[reply:a b c]]")) == "a b c"
    structured = llm.with_structured_output(City, method="json_schema")
    assert structured.invoke(f"City {PARIS}") == City(name="Paris", population=2100000)


def test_langchain_chat_anthropic_with_defaults(service, owner_key, upstream):
    from langchain_anthropic import ChatAnthropic
    from langchain_core.messages import HumanMessage

    mark = marker()
    llm = ChatAnthropic(model=FULL_SONNET, base_url=service.url, api_key=owner_key.secret, max_retries=0)
    assert llm.max_tokens == 64000  # its default for current models, which the service used to refuse
    answer = llm.invoke(f"{mark} [[reply:hello from claude]]")
    assert answer.content == "hello from claude"
    assert job_with(mark).options["max_tokens"] == 64000
    assert upstream_max_tokens(upstream, mark) <= 64000
    assert "".join(chunk.text for chunk in llm.stream("[[reply:x y z]]")) == "x y z"
    structured = llm.with_structured_output(City, method="json_schema")
    assert structured.invoke(f"City {PARIS}") == City(name="Paris", population=2100000)
    assert llm.get_num_tokens_from_messages([HumanMessage("Hello there")]) == 10  # counted upstream


# -- LiteLLM ----------------------------------------------------------------------------------------


LOCAL_HOSTS = {"127.0.0.1", "localhost", "::1"}


@pytest.fixture
def outside_lookups(monkeypatch):
    """Host names looked up that are not this machine; any such lookup is refused."""
    looked_up: list[str] = []
    real = socket.getaddrinfo

    def getaddrinfo(host, *args, **kwargs):
        if host not in LOCAL_HOSTS:
            looked_up.append(str(host))
            raise OSError(f"test: no network beyond this machine ({host})")
        return real(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    return looked_up


@pytest.fixture
def litellm(monkeypatch, outside_lookups):
    # Local only: the cost map shipped with the package, no telemetry or callbacks that call out.
    monkeypatch.setenv("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    monkeypatch.setenv("LITELLM_TELEMETRY", "False")
    import litellm

    litellm.telemetry = False
    return litellm


def test_litellm_openai_and_anthropic_providers_with_full_model_ids(
    service, owner_key, litellm, outside_lookups
):
    answer = litellm.completion(
        model=f"openai/{FULL_HAIKU}",
        api_base=f"{service.url}/v1",
        api_key=owner_key.secret,
        messages=[{"role": "user", "content": "[[reply:via litellm openai]]"}],
        num_retries=0,
    )
    assert answer.choices[0].message.content == "via litellm openai"
    answer = litellm.completion(
        model=f"anthropic/{FULL_SONNET}",
        api_base=service.url,
        api_key=owner_key.secret,
        messages=[{"role": "user", "content": "[[reply:via litellm anthropic]]"}],
        num_retries=0,
    )
    assert answer.choices[0].message.content == "via litellm anthropic"
    chunks = litellm.completion(
        model=f"anthropic/{FULL_SONNET}",
        api_base=service.url,
        api_key=owner_key.secret,
        messages=[{"role": "user", "content": "[[reply:p q r]]"}],
        stream=True,
        num_retries=0,
    )
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == "p q r"
    assert outside_lookups == []  # LiteLLM called nothing but the service


# -- EventSource ---------------------------------------------------------------------------------------


def test_an_eventsource_style_reader_follows_and_resumes_a_job(service, owner_key):
    client = service.client(owner_key)
    job_id = client.post("/jobs", json={"prompt": "[[reply:one two three four]]", "model": "haiku"}).json()[
        "data"
    ]["id"]
    headers = {"Accept": "text/event-stream", "Cache-Control": "no-cache"}

    def read(extra: dict[str, str]) -> list[tuple[str | None, str | None]]:
        frames, event_id, name = [], None, None
        with client.stream(
            "GET", f"/jobs/{job_id}/events", headers={**headers, **extra}, timeout=60
        ) as response:
            assert response.status_code == 200
            assert response.headers["content-type"].startswith("text/event-stream")
            for line in response.iter_lines():
                if line.startswith("id:"):
                    event_id = line[3:].strip()
                elif line.startswith("event:"):
                    name = line[6:].strip()
                elif line == "":
                    if event_id is not None or name is not None:
                        frames.append((event_id, name))
                    event_id, name = None, None
        return frames

    first = read({})
    assert first[-1][1] == "done"
    ids = [int(i) for i, _ in first if i is not None]
    resumed = read({"Last-Event-ID": str(ids[1])})
    assert [int(i) for i, _ in resumed if i is not None] == ids[2:]
    # A browser's EventSource cannot set headers: the query parameter does the same.
    response = httpx.get(
        f"{service.url}/jobs/{job_id}/events?last_event_id={ids[-1]}",
        headers={**headers, "X-API-Key": owner_key.secret},
        timeout=60,
    )
    assert "event: done" in response.text
