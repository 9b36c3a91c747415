"""The Process API's WebSocket face: seed 002's ``claude:*`` events.

Framing: every message, both ways, is a JSON object
``{"event": "<name>", "data": <payload>, "requestId": "<optional, echoed>"}``.

Client → server: ``auth`` (``{"token"}``, only when the connection was not
authenticated at connect), ``claude:execute`` (the fields of POST /execute),
``claude:cancel`` and ``claude:status`` (a process id, as a string or as
``{"processId"}``).

Server → client: ``claude:authenticated`` once the caller is known,
``claude:progress`` (``{processId, status, type: "status"|"output", output}``:
status changes and the text as Claude generates it), ``claude:complete``
(``{processId, status, result}`` when a process ends, whatever the outcome),
``claude:status`` (the answer to ``claude:status``: the GET /processes/{id}
shape) and ``claude:error`` (``{code, message, field?, processId?}``).

Authentication, for browsers too (they cannot set headers on a WebSocket):
offer the subprotocols ``claudesvc.v1`` and ``bearer.<API key or JWT>``; the
server selects ``claudesvc.v1`` and never echoes the credential. Clients that
can set headers may send ``X-API-Key`` or ``Authorization: Bearer``. Otherwise
the first message must be ``auth`` within WS_AUTH_TIMEOUT_SECONDS. A bad
credential, a first message that is not ``auth``, or silence past the timeout
closes the connection with 1008 (policy violation, RFC 6455), after a
``claude:error`` saying which it was.

A connection only ever hears about its own processes: a process is followed
only after the caller-scoped selector found it, and every message relayed is
checked against that set.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import uuid
from typing import Any

from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncWebsocketConsumer
from django.utils.datastructures import CaseInsensitiveMapping
from rest_framework import serializers as drf_serializers
from rest_framework.exceptions import Throttled

from claudesvc.auth import Caller, caller_for_credential, caller_for_live_session, credentials_from_headers
from claudesvc.errors import ServiceError
from claudesvc.exceptions import classify, unexpected
from claudesvc.parsers import json_depth_check
from claudesvc.ratelimit import rate_limit_count
from jobs.models import Job, JobEvent
from jobs.process_api import serializers as s
from jobs.process_api.envelope import BAD_CREDENTIALS, error_body
from jobs.process_api.selectors import process_get
from jobs.process_api.services import process_cancel, process_create, process_id, process_status, slots_busy
from jobs.streaming import Ended, follow_job

logger = logging.getLogger(__name__)

SUBPROTOCOL = "claudesvc.v1"
CREDENTIAL_SUBPROTOCOL = "bearer."
UNAUTHORIZED_CLOSE = 1008
AUTH_TIMEOUT_CLOSE = 1008


def _text_deltas(event: JobEvent, *, partial: bool) -> str:
    """New text of a process in one of its events: the partial text deltas when
    the process streams them, else the text blocks of each assistant message."""
    data = event.data
    if partial:
        inner = (data.get("event") or {}) if event.type == "stream_event" else {}
        delta = inner.get("delta") or {}
        if inner.get("type") == "content_block_delta" and delta.get("type") == "text_delta":
            return delta.get("text", "")
        return ""
    if event.type == "assistant":
        blocks = (data.get("message") or {}).get("content") or []
        return "".join(b.get("text", "") for b in blocks if isinstance(b, dict) and b.get("type") == "text")
    return ""


class ProcessConsumer(AsyncWebsocketConsumer):
    # No channel of its own on the channel layer: it follows jobs itself (``follow_job``), and
    # a consumer's channel takes messages from anyone who can publish on the layer, which
    # Channels dispatches to the consumer by their type ("websocket.receive": as if its
    # client had sent them).
    channel_layer_alias = None

    async def connect(self) -> None:
        self.caller: Caller | None = None
        self.credential: str | None = None
        self.owned: set[uuid.UUID] = set()
        self.follows: dict[uuid.UUID, asyncio.Task] = {}
        self.auth_deadline: asyncio.Task | None = None
        offered = self.scope.get("subprotocols") or []
        credential = next(
            (p[len(CREDENTIAL_SUBPROTOCOL) :] for p in offered if p.startswith(CREDENTIAL_SUBPROTOCOL)), None
        )
        if credential is None:
            headers = CaseInsensitiveMapping(
                {k.decode("latin1"): v.decode("latin1") for k, v in self.scope.get("headers", [])}
            )
            credential = credentials_from_headers(headers)
        await self.accept(SUBPROTOCOL if SUBPROTOCOL in offered else None)
        if credential:
            await self._authenticate(credential)
        elif (session_caller := await self._session_caller()) is not None:
            # A browser page of this origin: its session cookie (see asgi.py) stands for the caller.
            self.caller = session_caller
            await self.send_event(
                "claude:authenticated", {"userId": await database_sync_to_async(self.caller.public_id)()}
            )
        else:
            self.auth_deadline = asyncio.create_task(self._close_unless_authenticated())

    async def disconnect(self, code: int) -> None:
        for task in [*self.follows.values(), self.auth_deadline]:
            if task is not None:
                task.cancel()

    # -- auth -------------------------------------------------------------------------

    async def _authenticate(self, credential: str) -> bool:
        caller = await database_sync_to_async(caller_for_credential)(credential)
        if caller is None:
            await self._reject(BAD_CREDENTIALS)
            return False
        self.caller = caller
        self.credential = credential
        if self.auth_deadline is not None:
            self.auth_deadline.cancel()
        await self.send_event(
            "claude:authenticated", {"userId": await database_sync_to_async(caller.public_id)()}
        )
        return True

    async def _session_caller(self) -> Caller | None:
        return await database_sync_to_async(caller_for_live_session)(
            self.scope.get("user"), self.scope.get("session")
        )

    async def _still_valid(self) -> bool:
        if self.credential is None:
            return await self._session_caller() is not None
        return await database_sync_to_async(caller_for_credential)(self.credential) is not None

    async def _close_unless_authenticated(self) -> None:
        from django.conf import settings

        await asyncio.sleep(settings.WS_AUTH_TIMEOUT_SECONDS)
        if self.caller is None:
            await self._reject("No credentials received in time", code=AUTH_TIMEOUT_CLOSE)

    async def _reject(self, message: str, *, code: int = UNAUTHORIZED_CLOSE) -> None:
        await self.send_event("claude:error", {"code": "UNAUTHORIZED", "message": message})
        await self.close(code=code)

    # -- messages -----------------------------------------------------------------------

    async def send_event(self, event: str, data: Any, request_id: str | None = None) -> None:
        message: dict[str, Any] = {"event": event, "data": data}
        if request_id is not None:
            message["requestId"] = request_id
        await self.send(text_data=json.dumps(message))

    async def send_error(self, problem_or_exc, request_id=None, process: str | None = None) -> None:
        if isinstance(problem_or_exc, Exception):
            problem = classify(problem_or_exc) or unexpected(problem_or_exc)
            if problem.code == "not_found":
                problem.message = "Process not found"
        else:
            problem = problem_or_exc
        data = error_body(problem)
        if process:
            data["processId"] = process
        await self.send_event("claude:error", data, request_id)

    async def receive(self, text_data=None, bytes_data=None) -> None:
        try:
            message = json.loads(text_data if text_data is not None else bytes_data)
            json_depth_check(message)  # JsonTooDeep is a ValueError
        except (TypeError, ValueError, RecursionError):
            message = None
        if not isinstance(message, dict) or not isinstance(message.get("event"), str):
            if self.caller is None:
                await self._reject("The first message must be an auth event")
                return
            await self.send_error(
                ServiceError('Send a JSON object {"event": "<name>", "data": …}', field="event")
            )
            return
        event, data = message["event"], message.get("data")
        request_id = message.get("requestId")
        if request_id is not None and not isinstance(request_id, str):
            request_id = str(request_id)
        if self.caller is None:
            token = data.get("token") if isinstance(data, dict) else None
            if event != "auth" or not isinstance(token, str) or not token:
                await self._reject("The first message must be an auth event with a token")
                return
            await self._authenticate(token)
            return
        # The credential is checked again on every request: a key revoked or a
        # token expired while the socket is open stops working at once.
        if not await self._still_valid():
            await self._reject(BAD_CREDENTIALS)
            return
        handler = {
            "claude:execute": self.on_execute,
            "claude:cancel": self.on_cancel,
            "claude:status": self.on_status,
            "claude:resume": self.on_resume,
        }.get(event)
        if handler is None:
            await self.send_error(ServiceError(f"Unknown event {event!r}", field="event"), request_id)
            return
        try:
            await handler(data, request_id)
        except Exception as exc:
            await self.send_error(exc, request_id, process=data if isinstance(data, str) else None)

    # -- events -----------------------------------------------------------------------------

    async def on_execute(self, data, request_id) -> None:
        job, status = await database_sync_to_async(self._create)(data)
        self.owned.add(job.pk)
        await self.send_event(
            "claude:progress",
            {"processId": process_id(job), "status": status, "type": "status", "output": ""},
            request_id,
        )
        self._follow(job.pk, offset=0, partial=True, request_id=request_id)

    def _create(self, data) -> tuple[Job, str]:
        if not isinstance(data, dict):
            raise drf_serializers.ValidationError({"data": ["Expected the fields of POST /execute."]})
        body = s.ExecuteInput(data=data)
        body.is_valid(raise_exception=True)
        # Same budget as POST /execute: the transport is no way around the limit.
        allowed, state = rate_limit_count(self.caller, "process_execute")
        if not allowed:
            raise Throttled(wait=max(1, state.reset_seconds) if state else None)
        busy = slots_busy()
        job = process_create(caller=self.caller, queued=busy, stream=True, **body.create_kwargs())
        return job, process_status(job)

    async def on_cancel(self, data, request_id) -> None:
        job = await self._own(data)
        job = await database_sync_to_async(process_cancel)(job=job)
        await self.send_event(
            "claude:progress",
            {
                "processId": process_id(job),
                "status": process_status(job),
                "type": "status",
                "output": "",
                "message": "Process cancelled successfully",
            },
            request_id,
        )
        if job.pk not in self.follows:
            offset = await JobEvent.objects.filter(job_id=job.pk).acount()
            self._follow(job.pk, offset=offset, partial=False, request_id=request_id)

    async def on_status(self, data, request_id) -> None:
        job = await self._own(data)
        await self.send_event(
            "claude:status",
            await database_sync_to_async(s.process_summary)(job, with_result=True),
            request_id,
        )

    async def on_resume(self, data, request_id) -> None:
        """Follow a process again after a reconnect: its output after the event
        numbered ``after`` (the ``seq`` of the last ``claude:progress`` output
        received; -1 or none for all of it), then ``claude:complete``. Nothing
        is lost or repeated, whichever server answers."""
        job = await self._own(data)
        after = data.get("after", -1) if isinstance(data, dict) else -1
        if isinstance(after, bool) or not isinstance(after, int) or after < -1:
            raise ServiceError("after must be an integer, -1 or more", field="after")
        old = self.follows.pop(job.pk, None)
        if old is not None:
            old.cancel()
        partial = bool((job.options or {}).get("partial_messages"))
        self._follow(job.pk, offset=after + 1, partial=partial, request_id=request_id)

    async def _own(self, data) -> Job:
        """The caller's process named by ``data``; another caller's is simply not found."""
        pid = data.get("processId") if isinstance(data, dict) else data
        if not isinstance(pid, str):
            raise ServiceError("processId is required (a string)", field="processId")
        job = await database_sync_to_async(process_get)(caller=self.caller, id=pid)
        self.owned.add(job.pk)
        return job

    # -- relaying a process ---------------------------------------------------------------

    def _follow(self, job_id: uuid.UUID, *, offset: int, partial: bool, request_id) -> None:
        task = asyncio.create_task(self._relay(job_id, offset=offset, partial=partial, request_id=request_id))
        self.follows[job_id] = task
        # Only its own entry: a resumed follow may have replaced it meanwhile.
        task.add_done_callback(lambda t: self.follows.pop(job_id) if self.follows.get(job_id) is t else None)

    async def _send_owned(self, job_id: uuid.UUID, event: str, data: dict, request_id) -> None:
        # The ownership check every relayed message passes, not only the first.
        if job_id not in self.owned:
            logger.error("refusing to relay process %s to a connection that does not own it", job_id)
            return
        await self.send_event(event, data, request_id)

    async def _relay(self, job_id: uuid.UUID, *, offset: int, partial: bool, request_id) -> None:
        pid = process_id(job_id)
        running_sent = False
        try:
            async for item in follow_job(job_id, offset=offset):
                if isinstance(item, Ended):
                    await self._complete(job_id, request_id)
                    return
                if not isinstance(item, JobEvent):
                    continue
                if not running_sent and item.type in ("system", "stream_event", "assistant"):
                    running_sent = True
                    await self._send_owned(
                        job_id,
                        "claude:progress",
                        {"processId": pid, "status": "running", "type": "status", "output": ""},
                        request_id,
                    )
                text = _text_deltas(item, partial=partial)
                if text:
                    await self._send_owned(
                        job_id,
                        "claude:progress",
                        # seq: where a client that reconnects resumes (claude:resume "after").
                        {
                            "processId": pid,
                            "status": "running",
                            "type": "output",
                            "output": text,
                            "seq": item.seq,
                        },
                        request_id,
                    )
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            logger.exception("relaying process %s failed", job_id)
            with contextlib.suppress(Exception):
                await self.send_error(exc, request_id, process=pid)

    async def _complete(self, job_id: uuid.UUID, request_id) -> None:
        pid = process_id(job_id)
        try:
            job = await database_sync_to_async(process_get)(caller=self.caller, id=pid)
        except ServiceError:
            await self.send_error(
                ServiceError("The process was deleted", status=404, code="not_found"), request_id, process=pid
            )
            return
        result = await database_sync_to_async(s.process_result)(job)
        await self._send_owned(
            job_id,
            "claude:complete",
            {"processId": pid, "status": process_status(job), "result": result},
            request_id,
        )
