"""Compat API views (seed 001): OpenAI chat completions, Anthropic messages, RCA,
models, sessions and login. Thin: validate, make the job, translate its answer.

Every call is a job (``source="compat"``) run by a worker. A non-streaming
view waits for the job's answer; a streaming view returns at once with a
stream that follows the job's events as the worker writes them.
"""

from __future__ import annotations

import time

from asgiref.sync import async_to_sync
from django.contrib.auth import authenticate
from django.db import transaction
from django.http import HttpResponse, StreamingHttpResponse
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, PolymorphicProxySerializer, extend_schema
from rest_framework.permissions import AllowAny
from rest_framework.response import Response

from claudesvc.auth import jwt_issue
from claudesvc.errors import NotFound, ServiceError
from claudesvc.fields import iso_utc
from claudesvc.login_throttle import client_address, login_failed, login_succeeded, login_throttle_check
from claudesvc.negotiation import AnyAcceptNegotiation
from jobs import live
from jobs.compat_api import anthropic_format, catalog, openai_format, structured
from jobs.compat_api import serializers as s
from jobs.compat_api.answers import AnswerTracker, Failure, answer_of, answer_pieces
from jobs.compat_api.catalog import max_tokens_for
from jobs.compat_api.conversation import Conversation, anthropic_conversation, openai_conversation
from jobs.compat_api.errors import AnthropicView, OpenAIView, failure_error
from jobs.compat_api.fingerprint import conversation_fingerprints
from jobs.compat_api.openai_format import Reply
from jobs.compat_api.token_count import count_tokens
from jobs.models import ClaudeSession, Job
from jobs.services import job_create, resolve_model
from jobs.sessions import (
    session_busy_ids,
    session_check_id,
    session_create,
    session_delete,
    session_for_call,
    session_get,
    session_list,
    session_resume_id,
)

RCA_SYSTEM_PROMPT = (
    "You are an experienced site reliability engineer doing a root cause analysis. "
    "From the incident details, give: the most likely root cause and the evidence for it, "
    "how to fix it now, and how to prevent it. Say what information would confirm or rule out your analysis."
)

OPENAI_ERRORS = {
    400: OpenApiResponse(s.OpenAIError, description="Invalid parameters"),
    401: OpenApiResponse(s.OpenAIError, description="API key or token missing or invalid"),
    429: OpenApiResponse(s.OpenAIError, description="Rate limited (this service's, or the model API's)"),
}
# What a call that runs Claude may also answer: the model API's refusals (jobs/upstream.py).
UPSTREAM_STATUSES = {
    403: "The model's API refused the service's credentials",
    404: "Not found (or the model's API did not know the model)",
    413: "Request too large",
    502: "The model's API failed",
    529: "The model's API is overloaded",
}
EXECUTION_ERROR = {
    500: OpenApiResponse(s.OpenAIError, description="Claude did not answer (claude_execution_error)"),
    **{
        status: OpenApiResponse(s.OpenAIError, description=text) for status, text in UPSTREAM_STATUSES.items()
    },
}
ANTHROPIC_ERRORS = {
    400: OpenApiResponse(s.AnthropicError, description="Invalid parameters"),
    401: OpenApiResponse(s.AnthropicError, description="API key or token missing or invalid"),
    429: OpenApiResponse(s.AnthropicError, description="Rate limited (this service's, or the model API's)"),
    500: OpenApiResponse(s.AnthropicError, description="Claude did not answer"),
    **{
        status: OpenApiResponse(s.AnthropicError, description=text)
        for status, text in UPSTREAM_STATUSES.items()
    },
}
ANTHROPIC_VERSION = OpenApiParameter(
    "anthropic-version",
    OpenApiTypes.STR,
    OpenApiParameter.HEADER,
    required=False,
    description="Present (any value, e.g. 2023-06-01): answer in Anthropic's shape",
)
SESSION_HEADER = OpenApiParameter(
    "X-Request-ID",
    OpenApiTypes.STR,
    OpenApiParameter.HEADER,
    required=False,
    description="Names the session: calls with the same id continue one conversation (per caller)",
)


def _require_messages(data) -> None:
    if isinstance(data, dict) and data.get("messages") is None:
        raise ServiceError("messages array is required", field="messages", code="missing_messages")


def _session_key(request, metadata: dict | None = None) -> str | None:
    header = request.headers.get("X-Request-ID")
    if header is not None:
        return session_check_id(header, field="X-Request-ID")
    user_id = (metadata or {}).get("user_id")
    if user_id is not None:
        return session_check_id(user_id, field="metadata.user_id")
    return None


def _start(
    request,
    *,
    conversation: Conversation,
    model: str,
    max_tokens: int | None,
    session_key: str | None,
    extra: dict,
) -> Job:
    """One compat turn as a job of the caller's session (made if new)."""
    with transaction.atomic():
        session = session_for_call(caller=request.user, external_id=session_key, model=model)
        # A session that already has a Claude Code conversation resumes it: only the new turn goes.
        resuming = bool(session_resume_id(session.pk))
        # -- live sessions hook (jobs/live.py): the worker decides between resuming (or the
        # session's live CLI) and a fresh start, by the fingerprint of the history sent; so the
        # job keeps the full prompt (and the history's files) for a fresh start.
        fingerprints = conversation_fingerprints(conversation)
        with_history = not resuming or "history_fp" in fingerprints
        options = {
            "partial_messages": True,
            "max_tokens": max_tokens_for(model, max_tokens).value,
            "cwd": session.cwd,
            "inline_files": [f.as_option() for f in conversation.files(with_history=with_history)],
            **fingerprints,
            # A session the caller named may get a next turn: its CLI may stay alive for it.
            **({"live_session": True} if session_key is not None else {}),
            **extra,
        }
        if conversation.history:
            # Resumed (or continued on its live CLI), the turn sends the new messages alone.
            options["resume_prompt"] = conversation.turn_prompt()
        # -- end hook
        return job_create(
            caller=request.user,
            prompt=conversation.full_prompt(),
            model=model,
            source="compat",
            system_prompt=conversation.system,
            options=options,
            session=session,
            # live sessions hook: the worker holding the session's live CLI polls for its turns.
            enqueue=not live.session_is_held(session),
        )


def _reply(prefix: str, job: Job) -> Reply:
    created = time.time()
    key = job.session.external_id if job.session else job.pk.hex
    return Reply(id=f"{prefix}-{key}-{int(created * 1000)}", created=int(created), model=job.model)


def _answer(job: Job, tracker: AnswerTracker):
    # A client that hangs up while it waits cancels its job: Django cancels the
    # request's task on disconnect and asgiref carries that into answer_of.
    result = async_to_sync(answer_of)(job.pk, tracker, cancel_on_disconnect=True)
    if isinstance(result, Failure):
        raise failure_error(result)
    return result


def _job_headers(response, job: Job):
    response["X-Job-ID"] = str(job.pk)
    if (job.options or {}).get("max_tokens"):
        response["X-Max-Tokens"] = str(job.options["max_tokens"])
    if job.session:
        response["X-Session-ID"] = job.session.external_id
    return response


def _sse(stream) -> StreamingHttpResponse:
    response = StreamingHttpResponse(stream, content_type="text/event-stream; charset=utf-8")
    response["Cache-Control"] = "no-cache"
    response["X-Accel-Buffering"] = "no"
    return response


# -- OpenAI -------------------------------------------------------------------------------------


class ChatCompletionsView(OpenAIView):
    # Streaming clients send Accept: text/event-stream; plain answers and errors stay JSON.
    content_negotiation_class = AnyAcceptNegotiation

    @extend_schema(
        operation_id="chat_completions",
        summary="OpenAI chat completion (plain, streamed as SSE chunks, or plain text)",
        parameters=[SESSION_HEADER],
        request=s.ChatCompletionInput,
        responses={
            200: s.ChatCompletionOutput,
            (200, "text/event-stream"): OpenApiTypes.STR,
            (200, "text/plain"): OpenApiTypes.STR,
            **OPENAI_ERRORS,
            **EXECUTION_ERROR,
        },
    )
    def post(self, request):
        _require_messages(request.data)
        data = s.ChatCompletionInput(data=request.data)
        data.is_valid(raise_exception=True)
        v = data.validated_data
        schema = structured.openai_schema(v.get("response_format"))
        conversation = openai_conversation([dict(m) for m in v["messages"]], input_format=v["input_format"])
        extra = {"end_user": v["user"]} if v.get("user") else {}
        job = _start(
            request,
            conversation=conversation,
            model=v["model"],
            max_tokens=v.get("max_completion_tokens") or v.get("max_tokens"),
            session_key=_session_key(request),
            extra={**extra, "json_schema": schema} if schema else extra,
        )
        tracker = AnswerTracker(stop_sequences=v.get("stop") or [], schema=schema)
        reply = _reply("chatcmpl", job)
        if v["stream"] or v["output_format"] == "stream-json":
            include_usage = bool((v.get("stream_options") or {}).get("include_usage"))
            stream = openai_format.chunks(answer_pieces(job.pk, tracker), reply, include_usage=include_usage)
            return _job_headers(_sse(stream), job)
        finish = _answer(job, tracker)
        if v["output_format"] == "text":
            return _job_headers(HttpResponse(finish.text, content_type="text/plain; charset=utf-8"), job)
        return _job_headers(Response(openai_format.completion(reply, finish)), job)


class RcaView(OpenAIView):
    @extend_schema(
        operation_id="rca",
        summary="Root cause analysis of an incident description",
        request=s.RcaInput,
        responses={200: s.RcaOutput, **OPENAI_ERRORS, **EXECUTION_ERROR},
    )
    def post(self, request):
        if isinstance(request.data, dict) and request.data.get("prompt") is None:
            raise ServiceError("prompt is required", field="prompt", code="missing_prompt")
        data = s.RcaInput(data=request.data)
        data.is_valid(raise_exception=True)
        v = data.validated_data
        job = job_create(
            caller=request.user,
            prompt=v["prompt"],
            model=v["model"],
            source="compat",
            system_prompt=RCA_SYSTEM_PROMPT,
            options={
                "partial_messages": True,
                "max_tokens": max_tokens_for(v["model"], v.get("max_tokens")).value,
            },
        )
        finish = _answer(job, AnswerTracker())
        return _job_headers(Response(openai_format.rca(_reply("chatcmpl-rca", job), finish)), job)


def _anthropic_shape(request) -> bool:
    """The Anthropic SDK (and every Anthropic client) sends anthropic-version."""
    return "anthropic-version" in request.headers


class ModelListView(OpenAIView):
    @extend_schema(
        operation_id="models_list",
        summary="The models this service accepts",
        description="OpenAI's list shape; Anthropic's (`type`, `display_name`, `created_at`, `has_more`, "
        "`first_id`, `last_id`) when the request carries an `anthropic-version` header.",
        parameters=[ANTHROPIC_VERSION],
        responses={
            200: PolymorphicProxySerializer(
                "ModelList", [s.ModelListOutput, s.AnthropicModelListOutput], resource_type_field_name=None
            )
        },
    )
    def get(self, request):
        names = catalog.model_names()
        if _anthropic_shape(request):
            return Response(
                {
                    "data": [catalog.anthropic_model(name) for name in names],
                    "has_more": False,
                    "first_id": names[0] if names else None,
                    "last_id": names[-1] if names else None,
                }
            )
        return Response({"object": "list", "data": [catalog.openai_model(name) for name in names]})


class ModelDetailView(OpenAIView):
    @extend_schema(
        operation_id="models_retrieve",
        summary="One model",
        parameters=[ANTHROPIC_VERSION],
        responses={
            200: PolymorphicProxySerializer(
                "Model", [s.ModelOutput, s.AnthropicModelOutput], resource_type_field_name=None
            ),
            404: OpenApiResponse(s.OpenAIError, description="Unknown model"),
        },
    )
    def get(self, request, model):
        try:
            name = resolve_model(model)
        except ServiceError:
            raise NotFound(
                f"The model {model!r} does not exist", field="model", code="model_not_found"
            ) from None
        if _anthropic_shape(request):
            return Response(catalog.anthropic_model(name))
        return Response(catalog.openai_model(name))


# -- sessions -------------------------------------------------------------------------------


def _session_output(session: ClaudeSession, busy: set) -> dict:
    if session.api_key_id:
        user = f"key:{session.api_key.prefix}"
    else:
        user = session.user.get_username() if session.user else ""
    return {
        "sessionId": session.external_id,
        "userId": user,
        "model": session.model,
        "createdAt": iso_utc(session.created_at),
        "lastActivity": iso_utc(session.last_activity),
        "status": "busy" if session.pk in busy else "active",
    }


class SessionListView(OpenAIView):
    @extend_schema(
        operation_id="sessions_list",
        summary="The caller's sessions, most recently used first",
        responses={200: s.SessionListOutput, **OPENAI_ERRORS},
    )
    def get(self, request):
        sessions = list(session_list(caller=request.user).select_related("api_key", "user"))
        busy = session_busy_ids(sessions)
        return Response({"sessions": [_session_output(x, busy) for x in sessions]})

    @extend_schema(
        operation_id="sessions_create",
        summary="Start a session (calls name it with X-Request-ID or metadata.user_id)",
        request=s.SessionCreateInput,
        responses={201: s.SessionOutput, 409: OpenApiResponse(s.OpenAIError), **OPENAI_ERRORS},
    )
    def post(self, request):
        data = s.SessionCreateInput(data=request.data)
        data.is_valid(raise_exception=True)
        external_id = data.validated_data.get("sessionId")
        if external_id is not None:
            session_check_id(external_id, field="sessionId")
        session = session_create(
            caller=request.user, external_id=external_id, model=data.validated_data["model"]
        )
        session = ClaudeSession.objects.select_related("api_key", "user").get(pk=session.pk)
        return Response(_session_output(session, set()), status=201)


class SessionDetailView(OpenAIView):
    @extend_schema(
        operation_id="sessions_retrieve",
        summary="One session",
        responses={200: s.SessionOutput, 404: OpenApiResponse(s.OpenAIError), **OPENAI_ERRORS},
    )
    def get(self, request, session_id):
        session = session_get(caller=request.user, external_id=session_id)
        return Response(_session_output(session, session_busy_ids([session])))

    @extend_schema(
        operation_id="sessions_delete",
        summary="End a session: stop its turns, forget its conversation and files",
        responses={200: s.SessionDeletedOutput, 404: OpenApiResponse(s.OpenAIError), **OPENAI_ERRORS},
    )
    def delete(self, request, session_id):
        session_delete(session=session_get(caller=request.user, external_id=session_id))
        return Response({"sessionId": session_id, "deleted": True})


# -- login ----------------------------------------------------------------------------------


class LoginView(OpenAIView):
    authentication_classes: list = []
    permission_classes = [AllowAny]

    @extend_schema(
        operation_id="auth_login",
        summary="Log in with a Django user's username and password for a JWT",
        description="Send the token as `Authorization: Bearer <token>` on any authenticated route.",
        request=s.LoginInput,
        responses={200: s.LoginOutput, **OPENAI_ERRORS},
        auth=[],
    )
    def post(self, request):
        data = s.LoginInput(data=request.data)
        data.is_valid(raise_exception=True)
        username, address = data.validated_data["username"], client_address(request)
        login_throttle_check(username=username, address=address)
        user = authenticate(request._request, username=username, password=data.validated_data["password"])
        if user is None:
            login_failed(username=username, address=address)
            raise ServiceError("Invalid username or password", status=401, code="invalid_credentials")
        login_succeeded(username=username, address=address)
        name = user.get_full_name() or user.get_username()
        return Response({"token": jwt_issue(user), "user": {"id": user.get_username(), "name": name}})


# -- Anthropic ------------------------------------------------------------------------------


class MessagesView(AnthropicView):
    # Streaming clients send Accept: text/event-stream; plain answers and errors stay JSON.
    content_negotiation_class = AnyAcceptNegotiation

    @extend_schema(
        operation_id="messages_create",
        summary="Anthropic Messages API (plain, or streamed as Anthropic's SSE events)",
        parameters=[SESSION_HEADER],
        request=s.MessagesInput,
        responses={200: s.MessageOutput, (200, "text/event-stream"): OpenApiTypes.STR, **ANTHROPIC_ERRORS},
    )
    def post(self, request):
        _require_messages(request.data)
        data = s.MessagesInput(data=request.data)
        data.is_valid(raise_exception=True)
        v = data.validated_data
        schema = structured.anthropic_schema(v.get("output_config"), v.get("output_format"))
        conversation = anthropic_conversation([dict(m) for m in v["messages"]], v.get("system"))
        metadata = v.get("metadata") or {}
        job = _start(
            request,
            conversation=conversation,
            model=v["model"],
            max_tokens=v.get("max_tokens"),
            session_key=_session_key(request, metadata),
            extra={"json_schema": schema} if schema else {},
        )
        tracker = AnswerTracker(stop_sequences=v.get("stop_sequences") or [], schema=schema)
        reply = _reply("msg", job)
        if v["stream"]:
            return _job_headers(_sse(anthropic_format.events(answer_pieces(job.pk, tracker), reply)), job)
        finish = _answer(job, tracker)
        return _job_headers(Response(anthropic_format.message(reply, finish)), job)


class CountTokensView(AnthropicView):
    @extend_schema(
        operation_id="messages_count_tokens",
        summary="Count a Messages request's input tokens",
        description="By the model API's count endpoint when the service has an Anthropic key, else a local "
        "estimate; the `X-Token-Count-Source` header says which (`upstream` or `estimate`).",
        request=s.CountTokensInput,
        responses={200: s.CountTokensOutput, **ANTHROPIC_ERRORS},
    )
    def post(self, request):
        _require_messages(request.data)
        data = s.CountTokensInput(data=request.data)
        data.is_valid(raise_exception=True)
        v = data.validated_data
        # The same checks as a real call (content blocks, sizes), so a count never
        # blesses a request /v1/messages would refuse.
        anthropic_conversation([dict(m) for m in v["messages"]], v.get("system"))
        body = {
            "model": v["model"],
            "messages": [dict(m) for m in v["messages"]],
            "system": v.get("system"),
            "tools": v.get("tools") or None,
        }
        counted = count_tokens(body)
        response = Response({"input_tokens": counted.input_tokens})
        response["X-Token-Count-Source"] = counted.source
        return response
