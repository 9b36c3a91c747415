from django.apps import AppConfig


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
