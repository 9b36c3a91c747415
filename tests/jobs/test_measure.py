"""The CLI's process tree as the runner measures it (``jobs.measure``): every process of
the tree, children forked from any of a process's threads included, and nothing else."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time

import psutil
import pytest

from jobs.measure import Measure, tree_pids

# A parent that starts one child from its main thread and one from another thread; the
# first child starts a grandchild that burns CPU. Each prints nothing; all sleep.
TREE = textwrap.dedent(
    """
    import subprocess, sys, threading, time
    burn = "import time\\nt = time.process_time()\\nwhile time.process_time() - t < 0.3: pass\\ntime.sleep(60)"
    a = subprocess.Popen([sys.executable, "-c", f"import subprocess, sys, time; subprocess.Popen([sys.executable, '-c', {burn!r}]); time.sleep(60)"])
    threading.Thread(target=lambda: subprocess.Popen(["sleep", "60"])).start()
    time.sleep(60)
    """
)


@pytest.fixture
def tree():
    root = subprocess.Popen([sys.executable, "-c", TREE])
    proc = psutil.Process(root.pid)
    deadline = time.monotonic() + 20
    while len(proc.children(recursive=True)) < 3 and time.monotonic() < deadline:
        time.sleep(0.05)
    yield root.pid
    for child in proc.children(recursive=True):
        child.kill()
    root.kill()
    root.wait()


def test_the_tree_is_the_root_and_all_its_descendants(tree):
    expected = {tree, *(p.pid for p in psutil.Process(tree).children(recursive=True))}
    assert len(expected) == 4, "root, two children (one from a second thread), a grandchild"
    assert set(tree_pids(tree)) == expected
    assert tree_pids(tree)[0] == tree


def test_a_sample_counts_the_whole_tree_and_its_cpu(tree):
    # The grandchild burns 0.3 s of CPU before it sleeps.
    deadline = time.monotonic() + 20
    measure = Measure()
    while time.monotonic() < deadline:
        measure.sample(tree)
        if measure.cpu_ms >= 250:
            break
        time.sleep(0.1)
    assert measure.processes == 4
    assert set(measure.cpu_by_pid) == set(tree_pids(tree))
    assert measure.cpu_ms >= 250
    assert measure.peak_rss >= measure.rss > 0


def test_a_process_that_is_gone_leaves_the_measure_as_it_was():
    done = subprocess.Popen(["true"])
    done.wait()
    measure = Measure()
    measure.sample(done.pid)
    assert (measure.processes, measure.cpu_by_pid, measure.peak_rss) == (0, {}, 0)
    with pytest.raises(psutil.NoSuchProcess):
        tree_pids(done.pid)
