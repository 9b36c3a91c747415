# syntax=docker/dockerfile:1
# claudesvc image: the web server (`manage.py serve`, the default command) or a worker
# (`python manage.py qcluster`); docker-compose.yml runs both. See README "Operations".

# -- build: the locked dependencies (uv.lock, hashes checked) in a virtualenv -------------------
FROM python:3.11-slim-bookworm AS build
ENV UV_PROJECT_ENVIRONMENT=/venv UV_PYTHON_DOWNLOADS=never UV_COMPILE_BYTECODE=1 UV_LINK_MODE=copy
WORKDIR /src
COPY pyproject.toml uv.lock README.md ./
RUN pip install --no-cache-dir uv==0.13.9 \
    && uv sync --locked --no-install-project --no-cache

# -- runtime ---------------------------------------------------------------------------------------
FROM python:3.11-slim-bookworm
# ffmpeg: the audio pipeline; Pango/HarfBuzz/fonts: PDFs (WeasyPrint); bubblewrap: the CLI's sandbox;
# tini: PID 1 that forwards docker stop's SIGTERM and reaps orphans; curl: the health check.
RUN apt-get update \
    && apt-get install -y --no-install-recommends \
       ffmpeg libpango-1.0-0 libpangoft2-1.0-0 libharfbuzz-subset0 fonts-dejavu-core \
       bubblewrap tini curl \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --create-home --uid 10001 claudesvc \
    && mkdir -p /data && chown claudesvc:claudesvc /data
COPY --from=build /venv /venv
WORKDIR /app
# Owned by root and not writable by the runtime user: the code is read-only at run time.
COPY . .
ENV PATH=/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    CLAUDESVC_VAR_DIR=/data \
    STATIC_ROOT=/app/staticfiles \
    HOST=0.0.0.0 \
    PORT=8000
# Static files and bytecode at build time (as root, into the read-only tree); the build-time
# secret only lets settings load and is not kept.
RUN DJANGO_SECRET_KEY=build-only CLAUDESVC_VAR_DIR=/tmp/build-var python manage.py collectstatic --noinput -v0 \
    && python -m compileall -q /app \
    && rm -rf /tmp/build-var \
    && chmod -R a-w /app
USER claudesvc
VOLUME /data
EXPOSE 8000
# DJANGO_ALLOWED_HOSTS must name the host clients use, and localhost for this check.
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
    CMD curl -fsS -H "Host: localhost" "http://127.0.0.1:${PORT}/health" || exit 1
ENTRYPOINT ["/usr/bin/tini", "--"]
CMD ["sh", "-c", "python manage.py migrate --noinput && exec python manage.py serve"]
