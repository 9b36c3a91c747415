"""What every log line says about where it comes from: request id, job id, API key prefix.

The values live in context variables, so they follow a request through
``sync_to_async`` threads and a job's run through its event loop and executor
threads. The web side sets the request id (``RequestIdMiddleware``) and the key
prefix (authentication); ``job_create`` stores the request id with the job, and
the worker binds the job's ids before it runs the job (``bind_job``), so every
line of the run carries the id of the request that submitted it. django-q2's
``pre_execute``/``post_execute_in_worker`` signals clear the context around
each task, so nothing leaks from one job into the next task's lines.

``LogContextFilter`` copies the values onto each record; the plain and the
JSON formatter (``LOG_FORMAT``) print them.
"""

from __future__ import annotations

import logging
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

# Set by claudesvc.middleware.RequestIdMiddleware for each request.
request_id_var: ContextVar[str] = ContextVar("request_id", default="-")
job_id_var: ContextVar[str | None] = ContextVar("job_id", default=None)
key_prefix_var: ContextVar[str | None] = ContextVar("key_prefix", default=None)

__all__ = ["LogContextFilter", "bind_job", "bind_key_prefix", "job_log_context", "request_id_var"]


def current_request_id() -> str:
    """The id of the request being handled, or "" outside one."""
    value = request_id_var.get()
    return "" if value == "-" else value


def bind_key_prefix(prefix: str | None) -> None:
    key_prefix_var.set(prefix)


def _job_values(job: Any) -> tuple[str, str, str | None]:
    api_key = getattr(job, "api_key", None) if getattr(job, "api_key_id", None) else None
    return str(job.pk), getattr(job, "request_id", "") or "-", api_key.prefix if api_key else None


def bind_job(job: Any) -> None:
    """Make the following lines of this context carry ``job``'s id, its submitting
    request's id and its key's prefix (for a worker about to run the job)."""
    job_id, request_id, prefix = _job_values(job)
    job_id_var.set(job_id)
    request_id_var.set(request_id)
    key_prefix_var.set(prefix)


def clear() -> None:
    job_id_var.set(None)
    request_id_var.set("-")
    key_prefix_var.set(None)


@contextmanager
def job_log_context(job: Any):
    """``bind_job`` for the duration of a ``with`` block, restoring what was there."""
    job_id, request_id, prefix = _job_values(job)
    tokens = (job_id_var.set(job_id), request_id_var.set(request_id), key_prefix_var.set(prefix))
    try:
        yield
    finally:
        for var, token in zip((job_id_var, request_id_var, key_prefix_var), tokens, strict=True):
            var.reset(token)


class LogContextFilter(logging.Filter):
    """Puts ``request_id``, ``job_id`` and ``key_prefix`` on every record.

    ``empty`` stands for a value that is not known: "-" for text, None (JSON
    null) for JSON. A value the caller passed with ``extra=`` wins.
    """

    def __init__(self, empty: str | None = "-") -> None:
        super().__init__()
        self.empty = empty

    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "request_id"):
            rid = request_id_var.get()
            record.request_id = self.empty if rid == "-" else rid
        if not hasattr(record, "job_id"):
            record.job_id = job_id_var.get() or self.empty
        if not hasattr(record, "key_prefix"):
            record.key_prefix = key_prefix_var.get() or self.empty
        return True


def _clear_for_task(**_kwargs) -> None:
    clear()


def connect_task_signals() -> None:
    """Clear the context before and after every django-q2 task (called from ``ready()``)."""
    from django_q.signals import post_execute_in_worker, pre_execute

    pre_execute.connect(_clear_for_task, dispatch_uid="claudesvc.logcontext.pre")
    post_execute_in_worker.connect(_clear_for_task, dispatch_uid="claudesvc.logcontext.post")
