"""Pre-started CLIs for new jobs (issue 18, item 5).

Starting the CLI is most of a short job's time: the process, its runtime, the
sandbox, the SDK's ``initialize`` handshake (about 0.3 s of a 0.45 s bare run
here). Each worker process therefore keeps up to ``CLI_SPARES_PER_WORKER``
CLIs started and initialised, waiting for a first prompt, and a job it claims
whose CLI would be started exactly like one of them takes it over instead of
starting its own.

Exactly like: a spare is started by ``cli_options.build_options`` for a
*template* job (the model, tool policy, system prompt, output limit, schema
and streaming of the last job this worker ran, or the defaults at the
worker's start) in a folder of its own (``JOBS_ROOT/spares/<pid>-<token>``,
laid out as a job's; for a compat turn with a ``cwd`` folder inside standing
for its session's). A job takes it only if ``build_options`` for the job,
with the spare's folders, gives the same options (every argument, the whole
environment, the sandbox's mounts, the limits): so a changed setting, another
model or policy, a key's budget cap (``--max-budget-usd``), a resumed or live
session turn or a Process API working directory never run on a spare. A compat
turn that starts its session's conversation does (a one-off call): its files
are copied where its CLI works, and its transcript goes to its session's store
(``DatabaseSessionStore.bind``), from which the session's next turn resumes
on any host, as after a cold start.

Taking over (``adopt``): the spare's folder is renamed to the job's
(``JOBS_ROOT/<job id>``) before anything of the job is placed there, so every
later step (attachments, outputs, the transcript's owner, cleanup, deletion)
works on the job's folder as for any job. The CLI keeps seeing its folder
under the spare's name: inside the sandbox that is where it is mounted, and
without a sandbox a symbolic link from the old name to the job's folder
stands in until the job ends. A spare serves one job and is never reused: the
next job gets a fresh one (started when this one ended), so nothing of one
job's CLI — memory, files, conversation — reaches another's.

Bounds: a spare that waited ``SPARE_MAX_AGE_SECONDS`` is replaced (its CPU
rlimit counts from its start); spares are closed when the worker stops, and a
SIGKILLed worker takes them with it (PR_SET_PDEATHSIG, ``--die-with-parent``;
they are forked by the process's loop thread, which lives as long as it).
Only worker processes keep spares (``worker.state.agent``): a web server or a
test process never does.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import dataclasses
import json
import logging
import os
import shutil
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from django.conf import settings

from jobs import loop as job_loop
from jobs.models import Job, ToolPolicy
from jobs.sandbox import KeptCli
from jobs.workspace import OUTPUT_DIR_NAME, JobPaths, home_prepare, job_paths

logger = logging.getLogger(__name__)

# A spare older than this is replaced by a fresh one: its rlimits (CPU seconds) count from its start.
SPARE_MAX_AGE_SECONDS = 300
# A spare for the next job starts this long after a job ended, once its end was pushed to its readers.
REPLENISH_DELAY_SECONDS = 0.05
# How long a claimed job waits for a spare that is still starting (it would start its own CLI otherwise).
READY_WAIT_SECONDS = 10

# The fields of a job that ``build_options`` reads besides its folders, kept for a template.
_TEMPLATE_OPTIONS = ("max_tokens", "partial_messages", "json_schema")


# A spare's layout: a job's own folder (Jobs API, Process API without a working directory),
# or a compat turn's, whose CLI runs in its session's folder (``cwd``) beside the job's.
JOB_LAYOUT = "job"
SESSION_LAYOUT = "session"


@dataclass(eq=False)
class Spare(KeptCli):
    """One pre-started CLI, waiting for its job's first prompt."""

    paths: JobPaths
    template: Job
    layout: str = JOB_LAYOUT
    key: str = ""
    kind: str = ""  # its options in a fixed folder: what spares for the same jobs share
    client: Any = None
    store: Any = None
    pid: int | None = None
    started: float = field(default_factory=time.monotonic)
    ready: concurrent.futures.Future | None = None  # the connect, on the loop
    sink: Callable[[str], None] | None = None
    closed: bool = False

    @property
    def cwd(self) -> Path:
        """The CLI's working directory as the CLI sees it (the spare's name, also after adoption)."""
        return _cwd(self.paths, self.layout)


def _cwd(paths: JobPaths, layout: str) -> Path:
    # In the session layout the folder standing for the session's sits inside the spare's.
    return paths.root / "cwd" if layout == SESSION_LAYOUT else paths.work


_lock = threading.Lock()
_pool: list[Spare] = []
_background = False


def enabled() -> bool:
    """Spares are kept in worker processes only, and only if ``CLI_SPARES_PER_WORKER`` > 0."""
    from jobs import worker

    return settings.CLI_SPARES_PER_WORKER > 0 and worker.state.agent is not None and not worker.stopping()


def layout_of(job: Job) -> str | None:
    """The spare layout ``job`` could run on, or None if none (its options decide the rest, ``take``).

    A job of its own folder; or a compat turn that starts its session's conversation
    (no resume) in the session's folder, not on a live CLI (``jobs.live`` keeps those):
    a one-off call, or a session's first turn with live sessions off. Never a job
    with a spending cap, a resume or another working directory."""
    from jobs import live
    from jobs.sessions import session_workdir

    opts = job.options or {}
    if job.max_budget_usd is not None or opts.get("resume") or live.serves(job):
        return None
    if job.session_id is None:
        return None if opts.get("cwd") else JOB_LAYOUT
    if opts.get("cwd") == str(session_workdir(job.session_id)):
        return SESSION_LAYOUT
    return None


def options_key(options) -> str:
    """The options a CLI is started with, as text; callbacks and the session store left out."""
    values = {}
    for f in dataclasses.fields(options):
        value = getattr(options, f.name)
        if f.name in ("stderr", "session_store") or callable(value):
            continue
        values[f.name] = value
    return json.dumps(values, sort_keys=True, default=str)


def _key_for(job: Job, paths: JobPaths, layout: str) -> str:
    """The options ``job``'s CLI would get in a spare's folder ``paths`` (``build_options``
    reads nothing of a job but what ``template_of`` keeps, besides the folders)."""
    from jobs.cli_options import build_options

    template = template_of(job)
    if layout == SESSION_LAYOUT:
        template.options["cwd"] = str(_cwd(paths, layout))
    return options_key(build_options(template, paths, stderr_sink=None))


def template_of(job: Job | None) -> Job:
    """An unsaved job whose CLI options are those of ``job`` (or the defaults), its folders left out."""
    if job is None:
        return Job(
            model=settings.CLAUDE_DEFAULT_MODEL, tool_policy=ToolPolicy.SAFE, system_prompt="", options={}
        )
    opts = job.options or {}
    return Job(
        model=job.model,
        tool_policy=job.tool_policy,
        system_prompt=job.system_prompt,
        options={k: opts[k] for k in _TEMPLATE_OPTIONS if k in opts},
    )


def _spare_root() -> Path:
    return Path(settings.JOBS_ROOT) / "spares" / f"{os.getpid()}-{uuid.uuid4().hex[:12]}"


# -- starting and closing (on the process's loop) ----------------------------------------------


async def _start(spare: Spare, template: Job) -> None:
    from claude_agent_sdk import ClaudeSDKClient

    from jobs import worker
    from jobs.cli_options import build_options
    from jobs.session_store import DatabaseSessionStore

    paths = spare.paths
    paths.output.mkdir(parents=True, exist_ok=True)
    paths.tmp.mkdir(parents=True, exist_ok=True)
    home_prepare(paths.home)
    template = template_of(template)
    if spare.layout == SESSION_LAYOUT:
        (spare.cwd / OUTPUT_DIR_NAME).mkdir(parents=True, exist_ok=True)
        template.options["cwd"] = str(spare.cwd)
    options = build_options(template, paths, stderr_sink=spare.stderr)
    # What session_store_options gives a job without a session; its owner is set on adoption.
    spare.store = DatabaseSessionStore(job_id=uuid.uuid4(), workdir=options.cwd)
    env = dict(options.env)
    allowed = json.loads(env.get("CLAUDESVC_ENV_ALLOW") or "[]")
    if "CLAUDE_CONFIG_DIR" not in allowed:
        env["CLAUDESVC_ENV_ALLOW"] = json.dumps([*allowed, "CLAUDE_CONFIG_DIR"])
    options = dataclasses.replace(options, session_store=spare.store, session_store_flush="batched", env=env)
    spare.client = ClaudeSDKClient(options)
    await spare.client.connect()
    spare.pid = int(paths.pidfile.read_text())
    if worker.stopping():
        raise RuntimeError("the worker stops")
    logger.info("spare CLI %s ready (pid %s)", paths.root.name, spare.pid)


async def close(spare: Spare, reason: str) -> None:
    """End a spare nobody took: its process group, its client, its folder."""
    with _lock:
        if spare in _pool:
            _pool.remove(spare)
    if not spare.closed:
        logger.info("spare CLI %s closed (%s)", spare.paths.root.name, reason)
    spare.kill_group()
    if spare.client is not None:
        with contextlib.suppress(BaseException):
            await asyncio.wait_for(spare.client.disconnect(), 5)
        spare.client = None
    shutil.rmtree(spare.paths.root, ignore_errors=True)


def _launch(template: Job, layout: str, kind: str) -> None:
    """Start a spare like ``template`` on the loop (not waiting for it)."""
    spare = Spare(paths=JobPaths(root=_spare_root()), template=template, layout=layout, kind=kind)
    try:
        spare.key = _key_for(template, spare.paths, layout)
    except Exception:
        logger.warning("spare CLI: the options of %s could not be built", template, exc_info=True)
        return
    with _lock:
        _pool.append(spare)

    async def start() -> None:
        try:
            await _start(spare, template)
        except BaseException:
            logger.warning("a spare CLI could not start", exc_info=True)
            await close(spare, "its start failed")
            raise

    spare.ready = job_loop.submit(start())
    _ensure_background()


# How much of a kind's demand is left after each later job (its weight halves in ~7 jobs).
DEMAND_DECAY = 0.9
# Kind of spare (its options, wherever its folder) -> how many jobs of that kind ended lately.
_demand: dict[str, float] = {}


def room_for(kind: str, pool: list[Spare], demand: dict[str, float], limit: int) -> tuple[bool, Spare | None]:
    """Whether to start a spare of ``kind``, and which spare of ``pool`` to close first for it."""
    if any(s.kind == kind for s in pool):
        return False, None
    if len(pool) < limit:
        return True, None
    weakest = min(pool, key=lambda s: (demand.get(s.kind, 0.0), s.started))
    if demand.get(weakest.kind, 0.0) >= demand.get(kind, 0.0):
        return False, None
    return True, weakest


def _kind(template: Job, layout: str) -> str:
    """What spares for jobs like ``template`` have in common: their options, in one fixed folder."""
    return _key_for(template, JobPaths(root=Path(settings.JOBS_ROOT) / "spares" / "kind"), layout)


def replenish(like: Job | None) -> None:
    """Have a spare ready for a job like ``like`` (the one that just ended, or None at the
    worker's start: the defaults).

    When all ``CLI_SPARES_PER_WORKER`` are taken by other kinds, the kind with the least
    demand lately (jobs of it that ended, decayed by ``DEMAND_DECAY`` per job) gives up its
    spare, if it has less than this one: a worker serving three kinds of jobs with room for
    two keeps spares for the two it runs most, rather than replacing one by the next in turn."""
    if not enabled():
        return
    layout = JOB_LAYOUT if like is None else layout_of(like)
    if layout is None or (like is not None and like.parent_id is not None):
        return
    template = template_of(like)

    async def later() -> None:
        # After the job's end reached its readers (the caller pushes it next): not before.
        await asyncio.sleep(REPLENISH_DELAY_SECONDS)
        try:
            kind = _kind(template, layout)
        except Exception:
            logger.warning("spare CLI: the options of %s could not be built", template, exc_info=True)
            return
        with _lock:
            if like is not None:
                for other in _demand:
                    _demand[other] *= DEMAND_DECAY
                _demand[kind] = _demand.get(kind, 0.0) + 1
            pool = [s for s in _pool if not s.closed]
            demand = dict(_demand)
        launch, evict = room_for(kind, pool, demand, settings.CLI_SPARES_PER_WORKER)
        if evict is not None:
            await close(evict, "a kind of job in more demand needs the room")
        if launch and enabled():
            _launch(template, layout, kind)

    job_loop.submit(later())


def _same(spare: Spare, job: Job, layout: str) -> bool:
    if spare.layout != layout:
        return False
    try:
        return _key_for(job, spare.paths, layout) == spare.key
    except Exception:
        return False


def take(job: Job) -> Spare | None:
    """A spare started exactly as ``job``'s CLI would be, taken out of the pool, ready; or None."""
    layout = layout_of(job) if enabled() else None
    if layout is None:
        return None
    with _lock:
        candidates = [s for s in _pool if not s.closed]
    for spare in candidates:
        if not _same(spare, job, layout):
            continue
        with _lock:
            if spare not in _pool:
                continue  # taken or closed meanwhile
            _pool.remove(spare)
        try:
            if spare.ready is not None:
                spare.ready.result(timeout=READY_WAIT_SECONDS)
        except BaseException:
            job_loop.submit(close(spare, "it did not become ready"))
            continue
        if not spare.alive():
            job_loop.submit(close(spare, "its process ended"))
            continue
        return spare
    return None


def adopt(spare: Spare, job: Job) -> bool:
    """Make ``spare``'s folder ``job``'s folder; False (spare closed) if it cannot be."""
    target = job_paths(job.pk).root
    try:
        if target.exists():
            raise FileExistsError(target)
        os.rename(spare.paths.root, target)
    except OSError:
        logger.warning(
            "job %s: could not take over spare CLI %s", job.pk, spare.paths.root.name, exc_info=True
        )
        job_loop.submit(close(spare, "its folder could not become the job's"))
        return False
    if spare.layout == SESSION_LAYOUT:
        # The turn's files (session_job_start wrote them into the session's folder) go where
        # its CLI works; the session's folder keeps them for its later turns, as for any turn.
        workdir = Path(job.options["cwd"])
        here = target / spare.cwd.relative_to(spare.paths.root)
        try:
            for entry in job.options.get("inline_files") or []:
                dest = here / entry["name"]
                dest.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(workdir / entry["name"], dest)
        except (OSError, KeyError):
            logger.warning(
                "job %s: its files could not be placed for spare CLI %s", job.pk, spare.pid, exc_info=True
            )
            spare.kill_group()
            shutil.rmtree(target, ignore_errors=True)
            return False
        spare.store.bind(session_id=job.session_id, writer_id=job.pk)
    else:
        spare.store.bind(job_id=job.pk, writer_id=job.pk)
    with contextlib.suppress(OSError):
        # Without a sandbox the CLI opens its folder by the spare's name: keep that name working.
        spare.paths.root.symlink_to(target, target_is_directory=True)
    logger.info("job %s: runs on spare CLI %s (pid %s)", job.pk, spare.paths.root.name, spare.pid)
    return True


def finished(spare: Spare) -> None:
    """The job that took ``spare`` ended: whatever is left of its process group goes
    (the runner killed it already), and so does the link from the spare's name."""
    spare.kill_group()
    with contextlib.suppress(OSError):
        if spare.paths.root.is_symlink():
            spare.paths.root.unlink()


# -- background: replacing old spares, closing them at the worker's exit --------------------------


def _ensure_background() -> None:
    global _background
    with _lock:
        if _background:
            return
        _background = True
    job_loop.submit(_retire_old())
    from jobs import worker

    worker.state.at_leave.append(shutdown)
    import multiprocessing.util

    # django-q2 recycles a worker process by letting it return: close the spares then.
    multiprocessing.util.Finalize(None, shutdown, exitpriority=40)


async def _retire_old() -> None:
    while True:
        await asyncio.sleep(5)
        with _lock:
            pool = list(_pool)
        for spare in pool:
            if spare.ready is not None and not spare.ready.done():
                continue
            if not spare.alive():
                await close(spare, "its process ended")
            elif time.monotonic() - spare.started > SPARE_MAX_AGE_SECONDS:
                await close(spare, f"older than {SPARE_MAX_AGE_SECONDS} s")
                with _lock:
                    room = len(_pool) < settings.CLI_SPARES_PER_WORKER
                if room and enabled():
                    _launch(spare.template, spare.layout, spare.kind)  # the same settings, a fresh folder


def shutdown() -> None:
    """Kill every spare of this process and remove their folders (the worker stops or exits)."""
    with _lock:
        pool = list(_pool)
        _pool.clear()
    for spare in pool:
        spare.kill_group()
        shutil.rmtree(spare.paths.root, ignore_errors=True)


def spares_sweep() -> int:
    """Remove what spares of dead processes of this host left (a killed worker); how many."""
    root = Path(settings.JOBS_ROOT) / "spares"
    removed = 0
    try:
        entries = list(os.scandir(root))
    except OSError:
        return 0
    for entry in entries:
        pid = entry.name.split("-", 1)[0]
        if pid.isdigit() and int(pid) != os.getpid() and _pid_alive(int(pid)):
            continue
        if entry.is_symlink():
            with contextlib.suppress(OSError):
                os.unlink(entry.path)
        else:
            shutil.rmtree(entry.path, ignore_errors=True)
        removed += 1
    return removed


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
