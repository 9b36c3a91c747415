from django.apps import AppConfig


class TranscriptionConfig(AppConfig):
    name = "transcription"

    def ready(self) -> None:
        from jobs.kinds import job_kind_register

        def run(job_id) -> None:
            from transcription.pipeline import run_transcription

            run_transcription(job_id)

        def cleanup(job_id) -> None:
            from transcription.services import transcription_discard

            transcription_discard(job_id=job_id)

        # The kind plugs into the job core, which never imports this app.
        job_kind_register("transcription", execute=run, cleanup=cleanup)
