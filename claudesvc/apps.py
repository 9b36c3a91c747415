from django.apps import AppConfig


class ClaudesvcConfig(AppConfig):
    name = "claudesvc"
    verbose_name = "claudesvc"

    def ready(self) -> None:
        from claudesvc import checks, schema  # noqa: F401 - register the system checks, the OpenAPI auth extensions
        from claudesvc.logcontext import connect_task_signals

        connect_task_signals()
