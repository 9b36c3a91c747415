"""Runs one job's Claude Code CLI through claude-agent-sdk.

The only module that starts a job's CLI. It turns a job and its tool policy
into SDK options (``jobs.cli_options``), starts the CLI through
``cli_launcher`` (own process group, allow-listed environment), appends every
message as an event the moment it arrives (``jobs.cli_events``), and watches
the job (``jobs.watch``: heartbeat, cancel requests and deletion from other
processes, the timeout, the worker's shutdown) and the memory/CPU of the CLI's
process tree (``jobs.measure``).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import logging
import os
import signal
import time
from functools import partial
from pathlib import Path
from typing import Any

import claude_agent_sdk
from asgiref.sync import sync_to_async
from claude_agent_sdk import CLIConnectionError, ProcessError, ResultMessage, SystemMessage
from django.conf import settings
from django.db import close_old_connections
from django.db.models import Exists, OuterRef, Subquery

from claudesvc.errors import NotFound
from jobs import fallback, live, spares, worker
from jobs import loop as live_loop
from jobs.artifacts import artifacts_collect
from jobs.attachments import AttachmentUnavailable, attachments_place
from jobs.cli import cli_info, real_cli_path
from jobs.cli_events import init_paths_hidden, message_event
from jobs.cli_options import (
    LAUNCHER,
    TOOL_POLICIES,
    build_options,
    cli_home,
    job_cwd,
    job_prompt,
    timeout_limit,
)
from jobs.measure import Measure, children_cpu_seconds, limit_message, rlimit_hit
from jobs.models import Attachment, Job, JobEvent, JobStatus
from jobs.outcomes import CANCELLED_MESSAGE, error_event, timeout_message
from jobs.progress import JobGone, JobProgress, ajob_ended_push
from jobs.sandbox import cli_limits, group_running
from jobs.services import _next_seq_of, job_requeue, job_transition
from jobs.sessions import session_job_record_final, session_store_options
from jobs.upstream import upstream_status_of
from jobs.watch import JobWatch, StopReason
from jobs.workspace import workspace_finished, workspace_prepare, workspace_remove, workspace_sweep

__all__ = [
    "LAUNCHER",
    "TOOL_POLICIES",
    "JobRun",
    "build_options",
    "cli_home",
    "cli_info",
    "rlimit_hit",
    "run_job",
]

logger = logging.getLogger(__name__)


class JobRun:
    """One execution of one claimed (running) job."""

    def __init__(
        self,
        job: Job,
        spare: spares.Spare | None = None,
        *,
        next_seq: int | None = None,
        has_attachments: bool = True,
    ) -> None:
        self.job = job
        # A pre-started CLI whose folder became this job's (jobs.spares.adopt), or None.
        self.spare = spare
        self.paths = workspace_prepare(job.pk)
        self.progress = JobProgress(job.pk, start_seq=_next_seq_of(job.pk) if next_seq is None else next_seq)
        # False: known to have none, nothing to look up before the prompt goes out (``job_to_run``).
        self.has_attachments = has_attachments
        self.stderr_lines: collections.deque[str] = collections.deque(maxlen=200)
        self.measure = Measure()
        self.pid: int | None = None
        self.stop_reason: StopReason | None = None
        self.limit_message = ""
        # Whether the model said anything yet (any event but the CLI's own "system" ones).
        self.model_answered = False
        self.result: ResultMessage | None = None
        self.session_id: str = ""
        self.error: BaseException | None = None
        self.executed_via = "cli"
        self.fallback_reason = ""
        self.timeout = timeout_limit(job)
        self.watch = JobWatch(job.pk, self.timeout)
        self.started = self.watch.started
        self.children_cpu_at_start = children_cpu_seconds()
        self.prompt = job.prompt
        self._consumer: asyncio.Task | None = None
        # -- live sessions hook (jobs/live.py): set by live.relay_turn --
        self.live: dict[str, Any] | None = None  # pid, reused, turn of the live CLI that ran it
        self.live_kept = False  # its CLI stays alive for the session's next turn: do not kill it
        # -- end hook

    # The main loop --------------------------------------------------------------

    async def run(self) -> None:
        if self.spare is None:
            self.paths.pidfile.unlink(missing_ok=True)
        else:
            self._cli_known(self.spare.pid)
        if settings.JOB_KEEP_WORKDIR_SECONDS:
            await sync_to_async(workspace_sweep)()
        try:
            placed = (
                await sync_to_async(attachments_place)(job_id=self.job.pk, folder=self.paths.attachments)
                if self.has_attachments
                else []
            )
        except AttachmentUnavailable as exc:
            self.error = exc
            await self._finish()
            return
        if self.spare is not None:
            # The spare's CLI sees this folder under the spare's name.
            placed = [
                dataclasses.replace(p, path=self.spare.paths.root / p.path.relative_to(self.paths.root))
                for p in placed
            ]
        self.prompt = job_prompt(self.job, placed)
        self._consumer = asyncio.create_task(self._consume())
        watcher = asyncio.create_task(self._watch())
        try:
            await self._consumer
        except asyncio.CancelledError:
            if self.stop_reason is None:
                raise
        except JobGone:
            self.stop_reason = StopReason.DELETED
        except Exception as exc:
            self.error = exc
        finally:
            watcher.cancel()
            # Whatever the CLI left running in its group (a background shell …) goes too.
            if not self.live_kept:  # live sessions hook: a kept live CLI serves the next turn
                self._signal_group(signal.SIGKILL)
        # Let the killed processes be reaped before the job counts as over (and its loop closes).
        deadline = time.monotonic() + 5
        while not self.live_kept and self._group_alive() and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        await self._finish()

    async def _consume(self) -> None:
        may_fall_back = bool((self.job.options or {}).get("api_fallback")) and fallback.fallback_available()
        if may_fall_back:
            cli = await sync_to_async(cli_info)()
            if not cli.installed:
                await self._consume_api(cli.error or "the Claude CLI is not installed")
                return
        # -- live sessions hook (jobs/live.py): a compat session's turn runs on its live CLI
        if live.serves(self.job):
            await live.relay_turn(self)
            return
        # -- end hook
        if self.spare is not None:
            await self._relay_spare(self.spare)
            return
        first_seq = self.progress.next_seq
        options = build_options(self.job, self.paths, stderr_sink=self.stderr_lines.append)
        # The conversation is mirrored to (and resumed from) the database: any host can run the next turn.
        options = session_store_options(self.job, options)
        try:
            await self._relay(claude_agent_sdk.query(prompt=self.prompt, options=options))
        except (CLIConnectionError, ProcessError) as exc:
            if not (may_fall_back and self.progress.next_seq == first_seq and self._cli_did_not_start(exc)):
                raise
            await self._consume_api(f"the Claude CLI could not start: {self._launch_error() or exc}")

    async def _relay_spare(self, spare: spares.Spare) -> None:
        """The job's prompt to the pre-started CLI it took over, its answer relayed as a cold run's."""
        spare.sink = self.stderr_lines.append
        try:
            await spare.client.query(self.prompt)
            await self._relay(spare.client.receive_response())
        finally:
            spare.sink = None
            client, spare.client = spare.client, None
            # Its input closed, the CLI ends as after a one-shot query (the group is killed after).
            with contextlib.suppress(Exception):
                await asyncio.wait_for(client.disconnect(), settings.JOB_KILL_GRACE_SECONDS + 5)

    async def _relay(self, messages) -> None:
        # Written behind the CLI (one insert for what came meanwhile), all of them before it returns.
        writer = self.progress.writer()
        try:
            async for message in messages:
                event = message_event(message)
                if isinstance(message, SystemMessage) and message.subtype == "init":
                    self.session_id = message.data.get("session_id", "")
                    cwd = self.spare.cwd if self.spare is not None else job_cwd(self.job, self.paths)
                    event = init_paths_hidden(event, cwd=cwd, private=self._private_roots())
                    if not self.measure.peak_rss:
                        # The CLI surely runs (it has yet to answer): one that ends within the first
                        # watch round and is gone by the time its result is read is measured here.
                        self._measure_now()
                if isinstance(message, ResultMessage):
                    self.result = message
                    # Likely still alive: one that ends within the first watch round (an upstream
                    # error, a warm turn) is measured at its end too. (Limits stay the watch's.)
                    self._measure_now()
                if event.get("type") != "system":
                    self.model_answered = True
                await writer.put(event.get("type", "message"), event)
        finally:
            await writer.flush()

    def _private_roots(self) -> list[Path]:
        cli = real_cli_path()
        return [
            Path(settings.JOBS_ROOT),
            Path(settings.CLAUDE_HOME),
            Path(settings.BASE_DIR),
            *([Path(cli).parent] if cli else []),
        ]

    def _launch_error(self) -> str:
        return next((line.strip() for line in self.stderr_lines if "cli_launcher: cannot start" in line), "")

    def _cli_did_not_start(self, exc: BaseException) -> bool:
        # The launcher exits 127 when it cannot exec the CLI; the SDK raises
        # CLINotFoundError (a CLIConnectionError) when it cannot spawn at all.
        if isinstance(exc, CLIConnectionError):
            return True
        return bool(self._launch_error()) or getattr(exc, "exit_code", None) in (126, 127)

    async def _consume_api(self, reason: str) -> None:
        logger.warning("job %s: %s; running it through the Anthropic Messages API", self.job.pk, reason)
        self.executed_via = fallback.EXECUTED_VIA_API
        self.fallback_reason = reason
        self.stderr_lines.clear()
        await self._relay(fallback.query_api(self.job, prompt=self.prompt))

    # Watching ---------------------------------------------------------------------

    async def _watch(self) -> None:
        await self._stop(await self.watch.run(tick=self._sample))

    def _sample(self) -> StopReason | None:
        """Each watch round, first: the CLI's pid once it is known, its tree measured against the limits."""
        self._measure_now()
        if self.pid is not None and self._tree_limit_hit():
            return StopReason.LIMIT
        return None

    def _measure_now(self) -> None:
        """A sample of the CLI's tree (its pid read first if not known yet): each watch round's,
        and the extra ones at the CLI's init and result messages."""
        if self.pid is None:
            self._read_pid()
        if self.pid is not None:
            self.measure.sample(self.pid)

    def _tree_limit_hit(self) -> bool:
        """The CLI's process tree passed its memory, process or CPU limit
        (rlimits bound each process; these bound the whole tree)."""
        limits = cli_limits()
        # The sandbox adds two small bwrap processes to the tree.
        if self.measure.processes > limits.processes + 2:
            self.limit_message = limit_message("processes", self.measure.processes)
        elif self.measure.rss > limits.memory_bytes:
            self.limit_message = limit_message("memory", self.measure.rss)
        elif self.measure.cpu_ms > limits.cpu_seconds * 1000:
            self.limit_message = limit_message("cpu")
        return bool(self.limit_message)

    def _read_pid(self) -> None:
        try:
            pid = int(self.paths.pidfile.read_text())
        except (OSError, ValueError):
            return
        self._cli_known(pid)

    def _cli_known(self, pid: int) -> None:
        self.pid = pid
        self.watch.cli_pid = self.pid
        worker.cli_started(self.pid)
        logger.info("job %s: CLI started with pid %s", self.job.pk, self.pid)

    async def _stop(self, reason: StopReason) -> None:
        self.stop_reason = reason
        logger.info("job %s: stopping the CLI (%s)", self.job.pk, reason)
        self._signal_group(signal.SIGTERM)
        deadline = time.monotonic() + settings.JOB_KILL_GRACE_SECONDS
        while time.monotonic() < deadline and self._group_alive():
            await asyncio.sleep(0.1)
        self._signal_group(signal.SIGKILL)
        # The SDK notices the CLI's end by itself; give it a moment, no more
        # (a graceful stop has JOB_KILL_GRACE_SECONDS + 5 s for all of this).
        deadline = time.monotonic() + 1
        while self._consumer and not self._consumer.done() and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        if self._consumer and not self._consumer.done():
            self._consumer.cancel()

    def _group_alive(self) -> bool:
        # A zombie-only group counts as ended (jobs.sandbox.group_running).
        return self.pid is not None and group_running(self.pid)

    def _signal_group(self, sig: signal.Signals) -> None:
        if self.pid is None:
            self._read_pid()
        if self.pid is None:
            return
        try:
            # The launcher made the CLI a session leader: its pid is its group id.
            os.killpg(self.pid, sig)
        except ProcessLookupError:
            pass
        except PermissionError:
            logger.warning("job %s: not allowed to signal process group %s", self.job.pk, self.pid)

    # Finishing --------------------------------------------------------------------

    def _outcome(self) -> dict[str, Any]:
        fields: dict[str, Any] = {
            "stderr": "".join(line if line.endswith("\n") else line + "\n" for line in self.stderr_lines)[
                -20000:
            ],
            "duration_ms": int((time.monotonic() - self.started) * 1000),
            "claude_session_id": self.session_id,
            "peak_memory_bytes": self.measure.peak_rss or None,
            "cpu_time_ms": self._cpu_ms(),
        }
        if self.executed_via != "cli":
            fields["options"] = {**(self.job.options or {}), "executed_via": self.executed_via}
            note = (
                f"Claude CLI unavailable ({self.fallback_reason}); ran through the Anthropic Messages API.\n"
            )
            fields["stderr"] = note + fields["stderr"]
        fields.update(live.outcome_fields(self, fields))  # live sessions hook: which live CLI ran it
        if self.spare is not None:
            fields["options"] = {**(fields.get("options") or self.job.options or {}), "spare_cli": True}
        res = self.result
        if res is not None:
            fields.update(
                usage=res.usage,
                cost_usd=res.total_cost_usd,
                num_turns=res.num_turns,
                claude_session_id=res.session_id or self.session_id,
                result=res.result or "",
                upstream_status=upstream_status_of(res),
            )
        if self.stop_reason == StopReason.TIMEOUT:
            return {
                **fields,
                "status": JobStatus.TIMEOUT,
                "exit_code": -signal.SIGTERM,
                "error_message": timeout_message(self.timeout),
            }
        if self.stop_reason == StopReason.CANCELLED:
            return {
                **fields,
                "status": JobStatus.CANCELLED,
                "exit_code": -signal.SIGTERM,
                "error_message": CANCELLED_MESSAGE,
            }
        if self.stop_reason == StopReason.SHUTDOWN and res is None:
            if not self.model_answered and self.job.parent_id is None:
                # Nothing of it was seen: it runs again from the start on the next worker.
                # (Not a child job: only its parent runs it, and the parent stops too.)
                return {**fields, "status": JobStatus.PENDING}
            return {
                **fields,
                "status": JobStatus.FAILED,
                "exit_code": -signal.SIGTERM,
                "error_message": worker.shutdown_message(),
            }
        if res is not None and not res.is_error:
            return {**fields, "status": JobStatus.COMPLETED, "exit_code": 0}
        return {
            **fields,
            "status": JobStatus.FAILED,
            "exit_code": self._exit_code(),
            "error_message": self._error_text(),
        }

    def _cpu_ms(self) -> int | None:
        sampled = self.measure.cpu_ms if self.measure.cpu_by_pid else None
        if self.pid is None:
            return sampled
        waited = int((children_cpu_seconds() - self.children_cpu_at_start) * 1000)
        # The rusage figure covers the whole tree once the CLI was waited for;
        # if it was not (yet), the samples are the better figure.
        return max(waited, sampled or 0) or sampled

    def _exit_code(self) -> int:
        if isinstance(self.error, ProcessError) and self.error.exit_code is not None:
            return self.error.exit_code
        return 1

    def _error_text(self) -> str:
        if self.limit_message:
            return self.limit_message
        hit = rlimit_hit(self._exit_code(), "".join(self.stderr_lines), cpu_ms=self._cpu_ms() or 0)
        if hit:
            return hit
        res = self.result
        if res is not None and res.subtype == "error_max_budget_usd":
            return f"budget_exceeded: the job reached its spending cap of ${self.job.max_budget_usd:.4f}, what was left of its key's budget; it was stopped"
        if res is not None:
            parts = [res.result or "", *(res.errors or [])]
            detail = "; ".join(p for p in parts if p) or res.subtype
            status = f" (upstream HTTP {res.api_error_status})" if res.api_error_status else ""
            return f"Claude Code reported an error{status}: {detail}"
        if isinstance(self.error, AttachmentUnavailable):
            return f"The job could not start: {self.error}"
        stderr_tail = "".join(self.stderr_lines).strip()[-2000:]
        base = (
            f"The Claude CLI failed: {self.error}" if self.error else "The Claude CLI ended without a result."
        )
        return f"{base}\n{stderr_tail}".strip() if stderr_tail and stderr_tail not in base else base

    async def _finish(self) -> None:
        if self.stop_reason == StopReason.DELETED:
            logger.info("job %s was deleted while running; CLI stopped", self.job.pk)
            await sync_to_async(workspace_remove)(self.job.pk)
            return
        outcome = self._outcome()
        status = outcome.pop("status")
        if status == JobStatus.PENDING:
            # It starts over from a clean folder wherever it runs next.
            await sync_to_async(workspace_remove)(self.job.pk)
            await sync_to_async(job_requeue)(
                job_id=self.job.pk, reason="worker shut down before the model answered"
            )
            return
        # Before the final status, so a client that sees the job finished also sees its files.
        await sync_to_async(self._collect_artifacts)()
        await sync_to_async(workspace_finished)(self.job.pk)
        if status != JobStatus.COMPLETED and self.result is None:
            try:
                await self.progress.aemit("error", dict(error_event(status, outcome["error_message"])))
            except JobGone:
                return
        # A session's turn is recorded with its final status: a client that sees the turn end may
        # send the next one at once, which must find the conversation this one left.
        record = partial(session_job_record_final, self.job) if self.job.session_id is not None else None
        moved = await sync_to_async(job_transition)(
            job_id=self.job.pk, frm=JobStatus.RUNNING, to=status, then=record, **outcome
        )
        if moved:
            # Its readers end now: what they read next, the final status and a session turn's
            # record, is committed. (``tasks._run`` pushes the end of runs that never got here.)
            await ajob_ended_push(self.job.pk)
        logger.info(
            "job %s finished: %s in %s ms%s",
            self.job.pk,
            status,
            outcome["duration_ms"],
            "" if moved else " (status was changed elsewhere; result not recorded)",
        )

    def _output_written(self) -> bool:
        try:
            with os.scandir(self.paths.output) as entries:
                return next(entries, None) is not None
        except OSError:
            return False

    def _collect_artifacts(self) -> None:
        if not self._output_written():
            return  # nothing to store, nothing to look up
        try:
            artifacts_collect(job_id=self.job.pk)
        except NotFound:
            return  # deleted meanwhile; the delete removes everything
        except Exception:
            # The job's own outcome still gets recorded; its files are what is missing.
            logger.exception("job %s: collecting its output files failed", self.job.pk)


def job_to_run(job_id) -> Job:
    """A claimed job with, in the same query, what its run needs to know before the prompt
    goes out: the number of its last event (``last_event_seq``: a job that ran before, and was
    put back, numbers on) and whether it has attachments to place (``has_attachments``). Most
    jobs have none: no further query, no hop to another thread before the CLI has the prompt."""
    return Job.objects.annotate(
        last_event_seq=Subquery(
            JobEvent.objects.filter(job_id=OuterRef("pk")).order_by("-seq").values("seq")[:1]
        ),
        has_attachments=Exists(Attachment.objects.filter(job_id=OuterRef("pk"))),
    ).get(pk=job_id)


def run_job(job_id) -> None:
    """Run a job that ``queue.job_claim_next`` moved to running. Blocks until it ends.

    On a pre-started CLI (``jobs.spares``) if this worker has one started exactly
    as the job's would be; afterwards a spare like this job is started for the next."""
    job = job_to_run(job_id)
    spare = spares.take(job)
    if spare is not None and not spares.adopt(spare, job):
        spare = None
    next_seq = 0 if job.last_event_seq is None else job.last_event_seq + 1
    try:
        _run_job(JobRun(job, spare, next_seq=next_seq, has_attachments=job.has_attachments))
    finally:
        if spare is not None:
            spares.finished(spare)
        spares.replenish(job)


def _run_job(job_run: JobRun) -> None:

    async def main() -> None:
        try:
            await job_run.run()
        finally:
            # ORM calls ran on the loop's ORM thread: its connection is kept for the
            # next job unless broken or old (settings: a worker's connections).
            await sync_to_async(close_old_connections)()

    if live.serves(job_run.job) or job_run.spare is not None:
        # live sessions hook: on the process's persistent loop, where a live CLI outlives its turn
        # (and where a spare CLI was started).
        live_loop.run(main())
    else:
        asyncio.run(main())
