# syntax=docker/dockerfile:1
FROM python:3.11-slim-bookworm AS build
WORKDIR /app
RUN python -m venv /venv
COPY pyproject.toml README.md ./
COPY claudesvc claudesvc
COPY apikeys apikeys
COPY jobs jobs
COPY transcription transcription
RUN /venv/bin/pip install --no-cache-dir .

FROM python:3.11-slim-bookworm
RUN apt-get update \
    && apt-get install -y --no-install-recommends ffmpeg libpango-1.0-0 libpangoft2-1.0-0 libharfbuzz-subset0 fonts-dejavu-core curl \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --create-home --uid 10001 claudesvc
COPY --from=build /venv /venv
WORKDIR /app
COPY --chown=claudesvc:claudesvc . .
ENV PATH=/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    CLAUDESVC_VAR_DIR=/data \
    STATIC_ROOT=/app/staticfiles \
    HOST=0.0.0.0 \
    PORT=8000 \
    DJANGO_SECRET_KEY=build-only-not-used-at-runtime
RUN mkdir -p /data \
    && python manage.py collectstatic --noinput -v0 \
    && rm -f /data/secret_key \
    && chown -R claudesvc:claudesvc /data
ENV DJANGO_SECRET_KEY=
USER claudesvc
VOLUME /data
EXPOSE 8000
HEALTHCHECK --interval=30s --timeout=5s --start-period=20s \
    CMD curl -fsS "http://127.0.0.1:${PORT}/health" || exit 1
CMD ["sh", "-c", "python manage.py migrate --noinput && exec python manage.py serve"]
