from django.apps import AppConfig


class JobsConfig(AppConfig):
    name = "jobs"
    verbose_name = "Jobs"

    def ready(self) -> None:
        from django_q.signals import post_spawn

        from jobs import worker

        # Every django-q2 worker process: heartbeat, sweep, graceful stop (jobs/worker.py).
        post_spawn.connect(worker.on_worker_start, dispatch_uid="jobs.worker.on_worker_start")
