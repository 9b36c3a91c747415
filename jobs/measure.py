"""The CLI's process tree measured (memory, processes, CPU) and its limits worded."""

from __future__ import annotations

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
            root = psutil.Process(root_pid)
            procs = [root, *root.children(recursive=True)]
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
