from django.apps import AppConfig


class TranscriptionConfig(AppConfig):
    name = "transcription"

    def ready(self) -> None:
        from transcription.kind import register

        # The kind plugs into the job core, which never imports this app.
        register()
