from django.apps import AppConfig


def _preload_tasks(**_kwargs) -> None:
    """In each new worker process, now, not when the first wake-up arrives:
    importing the runner and the pipelines takes seconds on a busy machine, and
    the process counts as idle (and asks for work) until its task has started."""
    import jobs.tasks  # noqa: F401


def _spare_first(**_kwargs) -> None:
    """In each new worker process: tidy what killed workers' spare CLIs left, start one."""
    import logging

    from jobs import spares

    try:
        spares.spares_sweep()
        spares.replenish(None)
    except Exception:
        logging.getLogger(__name__).warning("could not start a spare CLI", exc_info=True)


class JobsConfig(AppConfig):
    name = "jobs"
    verbose_name = "Jobs"

    def ready(self) -> None:
        from django_q.signals import post_spawn

        from jobs import worker
        from jobs.kinds import job_kind_register

        def run_claude(job_id) -> None:
            from jobs import runner

            runner.run_job(job_id)

        from jobs.options import ClaudeOptions

        job_kind_register("claude", execute=run_claude, options=ClaudeOptions)
        # Every django-q2 worker process: heartbeat, sweep, graceful stop (jobs/worker.py).
        post_spawn.connect(worker.on_worker_start, dispatch_uid="jobs.worker.on_worker_start")
        post_spawn.connect(_preload_tasks, dispatch_uid="jobs.apps.preload_tasks")
        # After the two above: a pre-started CLI for the first job (jobs/spares.py).
        post_spawn.connect(_spare_first, dispatch_uid="jobs.apps.spare_first")
        # A revoked key, a deactivated user: their jobs stop (apikeys never imports jobs).
        from jobs import receivers

        receivers.connect()
