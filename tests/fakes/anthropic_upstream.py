"""A fake Anthropic Messages API on 127.0.0.1 for the real ``claude`` CLI.

The CLI posts ``/v1/messages?beta=true`` with ``stream: true`` and expects
Anthropic's SSE event sequence. Replies are driven by directives in the last
user turn so a test states what it wants in its own prompt:

- ``[[tool:NAME {json input}]]`` answers with a ``tool_use`` block (once; the
  follow-up turn that carries the ``tool_result`` gets a plain text answer);
- ``[[error:STATUS]]`` answers with an HTTP error of that status
  (``[[error:STATUS final]]`` adds ``x-should-retry: false``, which the CLI obeys);
- ``[[slow:SECONDS]]`` streams the answer with that pause between chunks;
- ``[[hold:NAME]]`` sends the answer's start, then waits until the test calls
  ``release(NAME)`` (at most a minute) before the rest: a turn that surely
  still runs while the test does something else;
- ``[[reply:TEXT]]`` answers exactly TEXT;
- when the CLI offers its ``StructuredOutput`` tool (structured output was
  asked for), the fake calls it with a small value that fits the tool's schema,
  or with the JSON of ``[[structured:{…}]]``; ``[[structured:none]]`` never
  calls it (a model that does not comply);
- anything else is answered ``Echo: <prompt>``.

Like the real API, an answer stops at the request's ``max_tokens`` (one token
per streamed word here) with ``stop_reason: "max_tokens"``.

Every request body is recorded in ``requests`` so a test can see what the CLI
sent (files it read, tool results, system prompt, model), with the time it
arrived (``at``, epoch seconds: ``bench/latency.py`` times stages by it).
"""

from __future__ import annotations

import contextlib
import json
import re
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

# What the real CLI needs to talk to this fake and to nothing else.
CLI_ENV = {
    "ANTHROPIC_API_KEY": "test-key",
    "DISABLE_TELEMETRY": "1",
    "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
    "DISABLE_AUTOUPDATER": "1",
    "DISABLE_ERROR_REPORTING": "1",
}

DIRECTIVE = re.compile(r"\[\[(tool|error|slow|hold|reply|structured):(.*?)\]\]", re.DOTALL)
STRUCTURED_TOOL = "StructuredOutput"


def schema_instance(schema: Any, root: Any = None) -> Any:
    """A small value that satisfies ``schema`` (what a model that follows it would write)."""
    root = schema if root is None else root
    if not isinstance(schema, dict):
        return None
    if "$ref" in schema:
        target: Any = root
        for part in schema["$ref"].removeprefix("#/").split("/"):
            target = target.get(part, {}) if isinstance(target, dict) else {}
        return schema_instance(target, root)
    if "const" in schema:
        return schema["const"]
    if schema.get("enum"):
        return schema["enum"][0]
    for combinator in ("anyOf", "oneOf", "allOf"):
        if schema.get(combinator):
            return schema_instance(schema[combinator][0], root)
    kind = schema.get("type", "object")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), "null")
    if kind == "object":
        properties = schema.get("properties") or {}
        return {name: schema_instance(properties.get(name, {}), root) for name in schema.get("required", [])}
    if kind == "array":
        return [schema_instance(schema.get("items", {}), root) for _ in range(schema.get("minItems", 0))]
    if kind == "string":
        return "x" * max(int(schema.get("minLength", 4)), 1) if "format" not in schema else "2024-01-01"
    if kind in ("integer", "number"):
        return schema.get("minimum", 0)
    if kind == "boolean":
        return False
    return None


def _text_of(content: Any) -> str:
    if isinstance(content, str):
        return content
    parts = []
    for block in content or []:
        if block.get("type") == "text":
            parts.append(block.get("text", ""))
        elif block.get("type") == "tool_result":
            inner = block.get("content")
            parts.append(_text_of(inner) if not isinstance(inner, str) else inner)
    return "\n".join(parts)


class FakeAnthropic:
    """Serves the fake API in a background thread; use as a context manager."""

    def __init__(self, port: int = 0) -> None:
        self.requests: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        self._gates: dict[str, threading.Event] = {}
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:  # keep test output quiet
                pass

            def do_POST(self) -> None:
                length = int(self.headers.get("content-length") or 0)
                body = json.loads(self.rfile.read(length) or b"{}")
                record = {"path": self.path, "headers": dict(self.headers), "body": body, "at": time.time()}
                with fake._lock:
                    fake.requests.append(record)
                if self.path.startswith("/v1/messages/count_tokens"):
                    self._json(200, {"input_tokens": 10})
                elif self.path.startswith("/v1/messages"):
                    fake._answer(self, body)
                else:
                    self._json(
                        404, {"type": "error", "error": {"type": "not_found_error", "message": self.path}}
                    )

            def do_GET(self) -> None:
                self._json(404, {"type": "error", "error": {"type": "not_found_error", "message": self.path}})

            def do_HEAD(self) -> None:
                self.send_response(200)
                self.send_header("content-length", "0")
                self.end_headers()

            def _json(
                self, status: int, payload: dict[str, Any], headers: dict[str, str] | None = None
            ) -> None:
                data = json.dumps(payload).encode()
                self.send_response(status)
                for name, value in (headers or {}).items():
                    self.send_header(name, value)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self._server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def __enter__(self) -> FakeAnthropic:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()

    def start(self) -> FakeAnthropic:
        return self.__enter__()

    def stop(self) -> None:
        self.__exit__()

    def release(self, name: str) -> None:
        """Lets the answers held by ``[[hold:NAME]]`` go on (also those that arrive later)."""
        self._gate(name).set()

    def _gate(self, name: str) -> threading.Event:
        with self._lock:
            return self._gates.setdefault(name, threading.Event())

    # -- answering ---------------------------------------------------------

    def main_requests(self) -> list[dict[str, Any]]:
        """Requests of the conversation itself (those that offer tools)."""
        return [r for r in self.requests if r["body"].get("tools")]

    def _answer(self, handler: BaseHTTPRequestHandler, body: dict[str, Any]) -> None:
        # The CLI may append a system-role message after the user turn.
        messages = [m for m in body.get("messages") or [] if m.get("role") in ("user", "assistant")]
        users = [m for m in messages if m.get("role") == "user"]
        last = users[-1] if users else {"content": ""}
        last_text = _text_of(last.get("content"))
        # After a tool result, the directives that asked for the tool are in the
        # latest user turn that is not itself a tool result.
        first_user = next(
            (
                _text_of(m.get("content"))
                for m in reversed(users)
                if not (
                    isinstance(m.get("content"), list)
                    and any(b.get("type") == "tool_result" for b in m["content"])
                )
            ),
            "",
        )
        is_tool_result = isinstance(last.get("content"), list) and any(
            b.get("type") == "tool_result" for b in last["content"]
        )
        directives = DIRECTIVE.findall(first_user if is_tool_result else last_text)
        pause = 0.0
        hold: threading.Event | None = None
        blocks: list[dict[str, Any]] = []
        for kind, arg in directives:
            if kind == "error":
                # "[[error:429 final]]" also says x-should-retry: false, so the CLI gives up at once.
                status_text, _, flag = arg.partition(" ")
                status = int(status_text)
                kind_name = {
                    429: "rate_limit_error",
                    529: "overloaded_error",
                    400: "invalid_request_error",
                    401: "authentication_error",
                    403: "permission_error",
                }.get(status, "api_error")
                headers = {"x-should-retry": "false"} if flag == "final" else {}
                handler._json(
                    status,
                    {"type": "error", "error": {"type": kind_name, "message": f"fake upstream {status}"}},
                    headers,
                )
                return
            if kind == "slow":
                pause = float(arg)
            if kind == "hold":
                hold = self._gate(arg.strip())
            if kind == "reply" and not is_tool_result:
                blocks.append({"type": "text", "text": arg})
            if kind == "tool" and not is_tool_result:
                name, _, raw = arg.partition(" ")
                blocks.append(
                    {
                        "type": "tool_use",
                        "id": f"toolu_{uuid.uuid4().hex[:20]}",
                        "name": name,
                        "input": json.loads(raw or "{}"),
                    }
                )
        structured_tool = next((t for t in body.get("tools") or [] if t.get("name") == STRUCTURED_TOOL), None)
        if (
            structured_tool is not None
            and not is_tool_result
            and not any(b["type"] == "tool_use" for b in blocks)
        ):
            wanted = [arg for kind, arg in DIRECTIVE.findall(json.dumps(messages)) if kind == "structured"]
            if not wanted or wanted[0].strip() != "none":
                value = (
                    json.loads(json.loads(f'"{wanted[0]}"'))
                    if wanted
                    else schema_instance(structured_tool.get("input_schema"))
                )
                blocks = [
                    {
                        "type": "tool_use",
                        "id": f"toolu_{uuid.uuid4().hex[:20]}",
                        "name": STRUCTURED_TOOL,
                        "input": value,
                    }
                ]
        if is_tool_result:
            blocks = [{"type": "text", "text": "Tool finished: " + last_text[:200]}]
        if not blocks:
            prompt = DIRECTIVE.sub("", last_text.split("</system-reminder>")[-1]).strip()
            blocks = [{"type": "text", "text": "Echo: " + prompt[:2000]}]
        self._stream(handler, body, blocks, pause, hold)

    def _stream(
        self,
        handler: BaseHTTPRequestHandler,
        body: dict[str, Any],
        blocks: list[dict[str, Any]],
        pause: float,
        hold: threading.Event | None = None,
    ) -> None:
        handler.send_response(200)
        handler.send_header("content-type", "text/event-stream")
        handler.send_header("cache-control", "no-cache")
        handler.send_header("connection", "close")
        handler.end_headers()

        def send(event: str, data: dict[str, Any]) -> None:
            handler.wfile.write(f"event: {event}\ndata: {json.dumps(data)}\n\n".encode())
            handler.wfile.flush()

        input_tokens = 12 + sum(len(json.dumps(m)) // 40 for m in body.get("messages", []))
        output_tokens = 0
        send(
            "message_start",
            {
                "type": "message_start",
                "message": {
                    "id": f"msg_{uuid.uuid4().hex[:24]}",
                    "type": "message",
                    "role": "assistant",
                    "model": body.get("model", "claude-sonnet"),
                    "content": [],
                    "stop_reason": None,
                    "stop_sequence": None,
                    "usage": {"input_tokens": input_tokens, "output_tokens": 1},
                },
            },
        )
        if hold is not None:
            hold.wait(60)
        stop_reason = "end_turn"
        max_tokens = body.get("max_tokens") or 0
        for index, block in enumerate(blocks):
            if block["type"] == "text":
                send(
                    "content_block_start",
                    {
                        "type": "content_block_start",
                        "index": index,
                        "content_block": {"type": "text", "text": ""},
                    },
                )
                words = re.findall(r"\S+\s*", block["text"]) or [block["text"]]
                for word in words:
                    if max_tokens and output_tokens >= max_tokens:
                        stop_reason = "max_tokens"
                        break
                    if pause:
                        time.sleep(pause)
                    output_tokens += 1
                    send(
                        "content_block_delta",
                        {
                            "type": "content_block_delta",
                            "index": index,
                            "delta": {"type": "text_delta", "text": word},
                        },
                    )
            else:
                stop_reason = "tool_use"
                send(
                    "content_block_start",
                    {
                        "type": "content_block_start",
                        "index": index,
                        "content_block": {
                            "type": "tool_use",
                            "id": block["id"],
                            "name": block["name"],
                            "input": {},
                        },
                    },
                )
                send(
                    "content_block_delta",
                    {
                        "type": "content_block_delta",
                        "index": index,
                        "delta": {"type": "input_json_delta", "partial_json": json.dumps(block["input"])},
                    },
                )
                output_tokens += 5
            send("content_block_stop", {"type": "content_block_stop", "index": index})
        send(
            "message_delta",
            {
                "type": "message_delta",
                "delta": {"stop_reason": stop_reason, "stop_sequence": None},
                "usage": {"output_tokens": output_tokens},
            },
        )
        send("message_stop", {"type": "message_stop"})
        handler.close_connection = True


if __name__ == "__main__":
    # For runs beside other programs (bench/throughput.py's peers): serve until interrupted.
    import argparse

    parser = argparse.ArgumentParser(description="The fake Anthropic Messages API on 127.0.0.1.")
    parser.add_argument("--port", type=int, default=8765)
    with FakeAnthropic(parser.parse_args().port) as fake:
        print(f"fake Anthropic API at {fake.url}; the CLI needs {CLI_ENV}", flush=True)
        with contextlib.suppress(KeyboardInterrupt):
            threading.Event().wait()
