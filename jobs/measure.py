"""The CLI's process tree measured (memory, processes, CPU) and its limits worded."""

from __future__ import annotations

import os
import resource
import signal
from dataclasses import dataclass, field

import psutil
from django.conf import settings

from jobs.filetypes import human_size


@dataclass
class Measure:
    """Peak memory and CPU time of the CLI's process tree, sampled while it runs."""

    peak_rss: int = 0
    rss: int = 0
    processes: int = 0
    cpu_by_pid: dict[int, float] = field(default_factory=dict)

    def sample(self, root_pid: int) -> None:
        try:
            procs = [psutil.Process(pid) for pid in tree_pids(root_pid)]
        except psutil.Error:
            return
        rss = 0
        for proc in procs:
            try:
                with proc.oneshot():
                    rss += proc.memory_info().rss
                    times = proc.cpu_times()
                    self.cpu_by_pid[proc.pid] = times.user + times.system
            except psutil.Error:
                continue
        self.rss, self.processes = rss, len(procs)
        self.peak_rss = max(self.peak_rss, rss)

    @property
    def cpu_ms(self) -> int:
        return int(sum(self.cpu_by_pid.values()) * 1000)


def children_cpu_seconds() -> float:
    """CPU time of this process's children that have ended and been waited for
    (their own waited-for children included). A worker runs one job at a time,
    so the difference across a job is exactly its CLI's tree, including the
    part after the last sample and short-lived children the sampler missed."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def tree_pids(root_pid: int) -> list[int]:
    """``root_pid`` and its descendants, from the tree's own ``/proc/<pid>/task/<tid>/children``
    files: the cost grows with the tree, not with every process on the machine as psutil's
    ``children(recursive=True)`` does (it reads each process's ``stat``: 1 to 2 ms on a busy host,
    before a live session's prompt goes out). psutil's walk where the kernel has no such files."""
    if not _PROC_CHILDREN:
        root = psutil.Process(root_pid)
        return [root_pid, *(p.pid for p in root.children(recursive=True))]
    if not os.path.isdir(f"/proc/{root_pid}"):
        raise psutil.NoSuchProcess(root_pid)
    pids: list[int] = []
    todo = [root_pid]
    while todo:
        pid = todo.pop()
        pids.append(pid)
        try:
            threads = os.listdir(f"/proc/{pid}/task")
        except OSError:
            continue  # ended meanwhile
        for tid in threads:
            try:
                with open(f"/proc/{pid}/task/{tid}/children", "rb") as f:
                    todo.extend(int(child) for child in f.read().split())
            except (OSError, ValueError):
                continue
    return pids


_PROC_CHILDREN = os.path.exists(f"/proc/self/task/{os.getpid()}/children")


_LIMIT_SETTINGS = {
    "memory": ("CLAUDE_MEMORY_LIMIT_MB", lambda: f"{settings.CLAUDE_MEMORY_LIMIT_MB} MB"),
    "cpu": ("CLAUDE_CPU_LIMIT_SECONDS", lambda: f"{settings.CLAUDE_CPU_LIMIT_SECONDS} s of CPU time"),
    "processes": ("CLAUDE_PROCESS_LIMIT", lambda: f"{settings.CLAUDE_PROCESS_LIMIT} processes"),
    "open_files": ("CLAUDE_OPEN_FILES_LIMIT", lambda: f"{settings.CLAUDE_OPEN_FILES_LIMIT} open files"),
}


def limit_message(limit: str, seen: int | None = None) -> str:
    """What a job that hit one of the CLI's limits reports: the limit, its value and setting."""
    setting, value = _LIMIT_SETTINGS[limit]
    what = {"memory": "memory limit", "cpu": "CPU time limit", "processes": "process limit"}.get(
        limit, "open files limit"
    )
    detail = ""
    if seen is not None:
        detail = f" (it used {human_size(seen)})" if limit == "memory" else f" (it had {seen})"
    return f"The Claude CLI hit its {what} of {value()}{detail} and was stopped ({setting})."


# How a CLI that hit an rlimit ends: Bun aborts when an allocation fails
# (RLIMIT_DATA), the kernel sends SIGXCPU and then SIGKILL at RLIMIT_CPU, and
# "Too many open files" is EMFILE (RLIMIT_NOFILE). Under bubblewrap a signal
# death reads as 128 + the signal number.
_ABORT = {-signal.SIGABRT, 128 + signal.SIGABRT, -signal.SIGSEGV, 128 + signal.SIGSEGV}
_CPU = {-signal.SIGXCPU, 128 + signal.SIGXCPU}
_KILLED = {-signal.SIGKILL, 128 + signal.SIGKILL}


def rlimit_hit(exit_code: int, stderr: str, *, cpu_ms: int) -> str:
    """The limit message if the CLI's end looks like one of its rlimits, else empty."""
    low = stderr.lower()
    if exit_code in _CPU or (exit_code in _KILLED and cpu_ms >= settings.CLAUDE_CPU_LIMIT_SECONDS * 1000):
        return limit_message("cpu")
    if exit_code in _ABORT or "out of memory" in low or "bun has crashed" in low:
        return limit_message("memory")
    if "emfile" in low or "too many open files" in low:
        return limit_message("open_files")
    return ""
