"""``manage.py qcluster``: django-q2's worker cluster, with a stop that reaches the workers.

django-q2 stops a cluster by letting each worker finish its current task, and
only the cluster's main process hears SIGTERM. A task here may run a job for
half an hour, so that stop would take as long (or leave the workers behind
when a supervisor gives up and kills the main process). This command (it
replaces django-q2's: ``claudesvc`` comes before ``django_q`` in
INSTALLED_APPS) starts the same cluster, and on SIGTERM or SIGINT first passes
SIGTERM on to the cluster's processes: each worker then claims nothing more,
gives its running job ``SHUTDOWN_GRACE_SECONDS``, stops its CLI and exits
(``jobs.worker``). Every process of the cluster, CLIs included, is gone within
``SHUTDOWN_GRACE_SECONDS + JOB_KILL_GRACE_SECONDS + 3`` seconds.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal

import psutil
from django.conf import settings
from django_q.cluster import Cluster
from django_q.management.commands.qcluster import Command as QClusterCommand


def signal_cluster_processes(cluster: Cluster, sig: int = signal.SIGTERM) -> None:
    """Send ``sig`` to the sentinel's children: the workers (which stop gracefully),
    the pusher and the monitor (which have nothing to finish)."""
    sentinel = getattr(cluster, "sentinel", None)
    if sentinel is None or sentinel.pid is None:
        return
    try:
        children = psutil.Process(sentinel.pid).children()
    except psutil.Error:
        return
    for child in children:
        with contextlib.suppress(OSError):
            os.kill(child.pid, sig)


class Command(QClusterCommand):
    help = "Starts the django-q2 cluster that runs jobs; SIGTERM/Ctrl-C stops it gracefully (see SHUTDOWN_GRACE_SECONDS)."

    def handle(self, *args, **options):
        settings.SECRET_KEY  # noqa: B018 - django-q2 signs tasks with it: fail now if it is missing
        if options.get("cluster_name"):
            os.environ["Q_CLUSTER_NAME"] = options["cluster_name"]
        cluster = Cluster()  # installs django-q2's own handlers, replaced below
        stopping = False

        def stop(signum, _frame):
            nonlocal stopping
            if stopping:
                return
            stopping = True
            if cluster.stop_event is not None:
                # First, so that the sentinel does not bring back what is about to exit.
                cluster.stop_event.set()
            signal_cluster_processes(cluster)
            if cluster.sentinel is not None:
                cluster.stop()
            # The cluster is down (its sentinel joined). Exit now: at interpreter
            # exit the main process was seen to linger for seconds more.
            logging.shutdown()
            os._exit(0)

        signal.signal(signal.SIGTERM, stop)
        signal.signal(signal.SIGINT, stop)
        cluster.start()
        if options.get("run_once", False):
            cluster.stop()
