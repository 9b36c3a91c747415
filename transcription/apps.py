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

        def details(job):
            return getattr(job, "transcription", None)

        def create(**kwargs):
            from transcription.services import transcription_create

            return transcription_create(**kwargs)

        def usage_figures(job) -> dict:
            from django.conf import settings

            from transcription.models import Transcription

            row = Transcription.objects.filter(job_id=job.pk).only("duration_seconds", "chunk_count").first()
            seconds = float(row.duration_seconds or 0) if row else 0.0
            return {
                "audio_seconds": seconds,
                "provider_calls": int(row.chunk_count or 0) if row else 0,
                "provider_cost_usd": seconds / 60 * settings.TRANSCRIPTION_PRICE_PER_MINUTE_USD,
            }

        from transcription.options import TranscriptionOptions
        from transcription.serializers import TranscriptionCreateInput, TranscriptionOutput

        # The kind plugs into the job core, which never imports this app.
        job_kind_register(
            "transcription",
            execute=run,
            cleanup=cleanup,
            options=TranscriptionOptions,
            detail_serializer=TranscriptionOutput,
            detail_of=details,
            create_input=TranscriptionCreateInput,
            create=create,
            usage_figures=usage_figures,
        )
