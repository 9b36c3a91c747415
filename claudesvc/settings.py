"""Settings for claudesvc, read from the environment.

Defaults run the embedded deployment on a laptop (SQLite under ``var/``,
django-q2's ORM broker, local files). ``DATABASE_URL`` and ``REDIS_URL`` switch
to the scale-out deployment. Every variable is listed in the README's
configuration table.
"""

from __future__ import annotations

import ipaddress
import re
import secrets
import sys
from pathlib import Path

import dj_database_url
from django.core.exceptions import ImproperlyConfigured
from pythonjsonlogger.core import RESERVED_ATTRS

from claudesvc.env import env_bool, env_choice, env_float, env_int, env_list, env_str

BASE_DIR = Path(__file__).resolve().parent.parent
VAR_DIR = Path(env_str("CLAUDESVC_VAR_DIR", str(BASE_DIR / "var"))).resolve()
VAR_DIR.mkdir(parents=True, exist_ok=True)

DEBUG = env_bool("DJANGO_DEBUG", False)


def _secret_key() -> str:
    """DJANGO_SECRET_KEY, or one generated once and kept in var/ for a laptop."""
    configured = env_str("DJANGO_SECRET_KEY")
    if configured:
        return configured
    key_file = VAR_DIR / "secret_key"
    if not key_file.exists():
        key_file.write_text(secrets.token_urlsafe(50))
        key_file.chmod(0o600)
    return key_file.read_text().strip()


SECRET_KEY = _secret_key()
# Earlier keys, still accepted while what they signed or encrypted is in flight (a rotation).
SECRET_KEY_FALLBACKS = env_list("DJANGO_SECRET_KEY_FALLBACKS", [])
ALLOWED_HOSTS = env_list("DJANGO_ALLOWED_HOSTS", ["localhost", "127.0.0.1", "[::1]", "testserver"])
CSRF_TRUSTED_ORIGINS = env_list("DJANGO_CSRF_TRUSTED_ORIGINS", [])

INSTALLED_APPS = [
    # Before django_q: its ``qcluster`` command is claudesvc's (a graceful stop that reaches the workers).
    "claudesvc",
    "daphne",
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "rest_framework",
    "drf_spectacular",
    "drf_spectacular_sidecar",
    "django_q",
    "channels",
    "corsheaders",
    "apikeys",
    "jobs",
    "transcription",
    "console",
]

MIDDLEWARE = [
    # First and last: HTTP requests, latencies and responses per view for /metrics.
    "django_prometheus.middleware.PrometheusBeforeMiddleware",
    # Early, so its headers reach every answer (429s and errors too); does nothing
    # while CORS_ALLOWED_ORIGINS is empty.
    "corsheaders.middleware.CorsMiddleware",
    "claudesvc.middleware.RequestIdMiddleware",
    "claudesvc.ratelimit.RateLimitHeadersMiddleware",
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    # After sessions, before CommonMiddleware: on the landing page and the console the
    # browser's Accept-Language picks English or German; the APIs stay English.
    "console.middleware.PageLocaleMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "django_prometheus.middleware.PrometheusAfterMiddleware",
    # Innermost: the chain runs in the request's thread, not switching for each middleware.
    "claudesvc.middleware.SyncChainMiddleware",
]

ROOT_URLCONF = "claudesvc.urls"
ASGI_APPLICATION = "claudesvc.asgi.application"
APPEND_SLASH = False

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

# -- database -----------------------------------------------------------------

DATABASE_URL = env_str("DATABASE_URL", f"sqlite:///{VAR_DIR / 'db.sqlite3'}")
DB_POOL_MAX_SIZE = env_int("DB_POOL_MAX_SIZE", 10, minimum=0)
DATABASES = {"default": dj_database_url.parse(DATABASE_URL)}
# A worker process (``manage.py qcluster``) runs one job at a time; it needs no pool,
# and threads that the job's libraries start would each keep a pooled connection
# checked out until the pool is exhausted and the worker's next claim times out.
_WORKER_PROCESS = sys.argv[1:2] == ["qcluster"]
if (
    DATABASES["default"]["ENGINE"] == "django.db.backends.postgresql"
    and DB_POOL_MAX_SIZE
    and not _WORKER_PROCESS
):
    # Under ASGI every concurrent request runs in a thread of its own and would
    # open a connection of its own: a burst of requests exhausts PostgreSQL's
    # max_connections. A pool per process caps that; requests wait for a free
    # connection (up to DB_POOL_TIMEOUT seconds) instead of failing.
    DATABASES["default"]["OPTIONS"] = {
        "pool": {
            "min_size": 1,
            "max_size": DB_POOL_MAX_SIZE,
            "timeout": env_int("DB_POOL_TIMEOUT", 30, minimum=1),
        }
    }
    # Each pooled connection is checked as it is handed out (Django passes psycopg's
    # check_connection to the pool): after a PostgreSQL restart the pool drops its
    # dead connections instead of failing one request for each.
    DATABASES["default"]["CONN_HEALTH_CHECKS"] = True
elif DATABASES["default"]["ENGINE"] == "django.db.backends.postgresql" and _WORKER_PROCESS:
    # A worker's threads that last (its task loop, the live sessions' poller and
    # runners, the job loop's ORM thread) keep their connection from one job to the
    # next: a new PostgreSQL connection costs a backend process and ~5 ms before its
    # first query, several times per session turn. Each job's end hands them back
    # as the end of a request does (``django.db.close_old_connections``: closed if
    # broken or older than this), and the first query after checks the connection
    # (after a PostgreSQL restart it reconnects instead of failing the job).
    DATABASES["default"]["CONN_MAX_AGE"] = env_int("DB_CONN_MAX_AGE", 300, minimum=0)
    DATABASES["default"]["CONN_HEALTH_CHECKS"] = True
else:
    DATABASES["default"]["CONN_MAX_AGE"] = env_int("DB_CONN_MAX_AGE", 0, minimum=0)
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    # The web server and the workers write at the same time: WAL lets readers
    # go on during a write, IMMEDIATE takes the write lock up front instead of
    # failing half-way, and the timeout waits for it rather than erroring.
    DATABASES["default"]["OPTIONS"] = {
        "timeout": 30,
        "transaction_mode": "IMMEDIATE",
        # secure_delete: a deleted job's prompt and events are overwritten, not left in free pages.
        "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL; PRAGMA secure_delete=ON;",
    }
    DATABASES["default"]["TEST"] = {"NAME": str(VAR_DIR / "test-db.sqlite3")}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# -- cache, channel layer, broker ---------------------------------------------

REDIS_URL = env_str("REDIS_URL")
Q_CLUSTER_NAME = env_str("Q_CLUSTER_NAME", "claudesvc")
JOB_WORKERS = env_int("JOB_WORKERS", 2, minimum=1, maximum=64)
JOB_TIMEOUT_SECONDS = env_int("JOB_TIMEOUT_SECONDS", 1800, minimum=10)
# django-q2 replaces a worker process once it has run this many tasks, or once its
# memory peaked above this many MB (measured after each task). A task is a wake-up,
# often one that finds nothing to do; a recycled process closes its live session
# CLIs and spares (their sessions' next turns resume from the store), so the count
# is high and memory is what recycles a process.
JOB_WORKER_RECYCLE_TASKS = env_int("JOB_WORKER_RECYCLE_TASKS", 5000, minimum=1)
JOB_WORKER_MAX_RSS_MB = env_int("JOB_WORKER_MAX_RSS_MB", 1024, minimum=64)

if REDIS_URL:
    CACHES = {
        "default": {
            "BACKEND": "django_redis.cache.RedisCache",
            "LOCATION": REDIS_URL,
            "KEY_PREFIX": Q_CLUSTER_NAME,
            # JSON, not django-redis' default pickle: whatever reaches Redis can write a value
            # this process reads back, and unpickling runs code (security model: the network).
            "OPTIONS": {"SERIALIZER": "django_redis.serializers.json.JSONSerializer"},
        }
    }
    # The channel layer only wakes streaming readers (the rows are the truth), so
    # pub/sub's at-most-once delivery is enough, and its group_send is one
    # PUBLISH where the core layer's takes three round trips (issue 18: event
    # delivery p99 <= 50 ms).
    CHANNEL_LAYERS = {
        "default": {
            "BACKEND": "channels_redis.pubsub.RedisPubSubChannelLayer",
            "CONFIG": {
                "hosts": [REDIS_URL],
                "prefix": f"{Q_CLUSTER_NAME}:asgi",
                # Pushes carry events (jobs.progress): encrypted and authenticated (Fernet), so
                # another client of this Redis can neither read them nor forge one.
                "symmetric_encryption_keys": [SECRET_KEY, *SECRET_KEY_FALLBACKS],
            },
        }
    }
else:
    CACHES = {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}}
    # Workers run in other processes, so in-memory pushes never reach a web
    # process: streaming readers fall back to polling the event table.
    CHANNEL_LAYERS = {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}}

# -- the queue, workers and shutdown (jobs/tasks.py, jobs/worker.py) ----------------------
#
# The jobs table is the queue; a broker message only wakes a worker up, and a
# worker that wakes runs pending jobs until none is left. So a lost, duplicated
# or never-sent message delays nothing for longer than JOB_SWEEP_SECONDS.

# How often each worker process sweeps: fails jobs whose worker died, and wakes
# an idle worker when pending jobs wait.
JOB_SWEEP_SECONDS = env_int("JOB_SWEEP_SECONDS", 5, minimum=1, maximum=300)
# SIGTERM/Ctrl-C: running jobs get this long to finish; then their CLIs are
# stopped (JOB_KILL_GRACE_SECONDS more at most) and the jobs end with a reason
# naming the shutdown (or go back to pending if the model had not answered yet).
SHUTDOWN_GRACE_SECONDS = env_int("SHUTDOWN_GRACE_SECONDS", 10, minimum=0, maximum=3600)
# /health answers 503 when no worker has sent a heartbeat for this long.
HEALTH_WORKER_MAX_AGE_SECONDS = env_int("HEALTH_WORKER_MAX_AGE_SECONDS", 60, minimum=5)

Q_CLUSTER = {
    "name": Q_CLUSTER_NAME,
    "workers": JOB_WORKERS,
    "recycle": JOB_WORKER_RECYCLE_TASKS,
    "max_rss": JOB_WORKER_MAX_RSS_MB * 1024,  # kB
    # A wake-up task (jobs.tasks.run_pending_jobs) runs jobs one after another
    # and claims no new one once it has run for JOB_TIMEOUT_SECONDS, so it ends
    # within twice that; the runner enforces each job's own timeout. django-q2
    # must never kill a task that is still legitimately running, so its timeout
    # sits above that and retry above the timeout (its docs require timeout <
    # retry). A redelivered or lost message is harmless: it is only a wake-up.
    "timeout": 2 * JOB_TIMEOUT_SECONDS + 120,
    "retry": 2 * JOB_TIMEOUT_SECONDS + 420,
    "max_attempts": 1,
    "ack_failures": True,
    "catch_up": False,
    "save_limit": 1000,
    "poll": 0.2,
    # Prefetch at most one message per worker: what a cluster holds in memory
    # dies with it (harmless now, but an idle cluster elsewhere should get it).
    "queue_limit": JOB_WORKERS,
    "label": "Task queue",
}
if REDIS_URL:
    # The Redis broker's pusher blocks on the list (BRPOP): a message wakes it at once.
    Q_CLUSTER["redis"] = REDIS_URL
else:
    Q_CLUSTER["orm"] = "default"
    # The ORM broker whose pusher is woken by each enqueue (jobs/wakeup.py) instead
    # of finding the message at its next poll; "poll" stays as the fallback.
    Q_CLUSTER["broker_class"] = "jobs.wakeup.BrokerBell"

# -- files ---------------------------------------------------------------------

MEDIA_ROOT = Path(env_str("MEDIA_ROOT", str(VAR_DIR / "media")))
MEDIA_URL = "/media/"
STATIC_ROOT = Path(env_str("STATIC_ROOT", str(VAR_DIR / "static")))
STATIC_URL = "/static/"
STATIC_ROOT.mkdir(parents=True, exist_ok=True)
STORAGES = {
    "default": {"BACKEND": env_str("STORAGE_BACKEND", "django.core.files.storage.FileSystemStorage")},
    # Admin and /docs assets, served by the app itself (WhiteNoise, far-future caching for the
    # hashed names); uncompressed, because gzipping the docs bundles made collectstatic take 25 s.
    "staticfiles": {"BACKEND": "django.contrib.staticfiles.storage.ManifestStaticFilesStorage"},
}
# S3-compatible object storage (AWS S3, MinIO, Ceph, R2 …) through django-storages
# (`uv sync --extra s3`), so worker hosts share no disk: STORAGE_BACKEND=storages.backends.s3.S3Storage.
S3_STORAGE = "storages.backends.s3.S3Storage"
if STORAGES["default"]["BACKEND"] == S3_STORAGE:
    if not env_str("STORAGE_S3_BUCKET"):
        raise ImproperlyConfigured(
            f"STORAGE_BACKEND={S3_STORAGE} needs STORAGE_S3_BUCKET (the bucket's name)"
        )
    _s3_options = {
        "bucket_name": env_str("STORAGE_S3_BUCKET"),
        "endpoint_url": env_str("STORAGE_S3_ENDPOINT_URL"),
        "region_name": env_str("STORAGE_S3_REGION"),
        "access_key": env_str("STORAGE_S3_ACCESS_KEY_ID"),
        "secret_key": env_str("STORAGE_S3_SECRET_ACCESS_KEY"),
        "location": env_str("STORAGE_S3_PREFIX"),
    }
    STORAGES["default"]["OPTIONS"] = {
        **{name: value for name, value in _s3_options.items() if value},
        # Two files of a job with one name must get two objects, as on a local disk.
        "file_overwrite": False,
        # Downloads stream through the service (it checks the caller's key); nothing is public.
        "default_acl": "private",
        "querystring_auth": True,
    }

# Uploads (POST /jobs attachments[]): received into FILE_UPLOAD_TEMP_DIR, then
# moved into storage. On the same filesystem as MEDIA_ROOT the move is a rename.
FILE_UPLOAD_TEMP_DIR = Path(env_str("FILE_UPLOAD_TEMP_DIR", str(VAR_DIR / "uploads")))
FILE_UPLOAD_TEMP_DIR.mkdir(parents=True, exist_ok=True)
ATTACHMENTS_MAX_FILES = env_int("ATTACHMENTS_MAX_FILES", 10, minimum=1, maximum=1000)
ATTACHMENT_MAX_BYTES = env_int("ATTACHMENT_MAX_BYTES", 500 * 1024 * 1024, minimum=1)
# Images with more pixels (width x height x frames) are refused at upload: a
# small file can decode to gigabytes in the CLI (a 250 KB PNG of 16000 x 16000).
IMAGE_MAX_PIXELS = env_int("IMAGE_MAX_PIXELS", 50_000_000, minimum=1)
# Files a job writes to its output folder become downloadable; a job that
# writes more than this many keeps the first ones (by name) and the rest are logged.
ARTIFACTS_MAX_FILES = env_int("ARTIFACTS_MAX_FILES", 200, minimum=1)
# Finished jobs older than this are deleted with their files by a django-q2 schedule; 0 keeps them.
JOB_RETENTION_DAYS = env_int("JOB_RETENTION_DAYS", 30, minimum=0)

# -- the CLI and jobs --------------------------------------------------------------

# Empty: the binary bundled with claude-agent-sdk.
CLAUDE_CLI_PATH = env_str("CLAUDE_CLI_PATH")
# HOME of the CLI: where it keeps its config, login and session transcripts.
CLAUDE_HOME = Path(env_str("CLAUDE_HOME", str(VAR_DIR / "claude-home")))
# Environment variables (shell-style patterns) the CLI may see; nothing else
# of the service's environment reaches it.
CLAUDE_ENV_ALLOW = env_list(
    "CLAUDE_ENV_ALLOW",
    [
        "PATH",
        "LANG",
        "LC_*",
        "TZ",
        "TERM",
        "ANTHROPIC_*",
        "CLAUDE_CODE_*",
        "CLAUDE_AGENT_SDK_*",
        "DISABLE_TELEMETRY",
        "DISABLE_AUTOUPDATER",
        "DISABLE_ERROR_REPORTING",
        "HTTP_PROXY",
        "HTTPS_PROXY",
        "NO_PROXY",
        "http_proxy",
        "https_proxy",
        "no_proxy",
        "AWS_REGION",
        "AWS_PROFILE",
        "CLOUD_ML_REGION",
        "ANTHROPIC_VERTEX_PROJECT_ID",
    ],
)
CLAUDE_DEFAULT_MODEL = env_str("CLAUDE_DEFAULT_MODEL", "sonnet")
JOBS_ROOT = Path(env_str("JOBS_ROOT", str(VAR_DIR / "jobs")))
# -- job isolation (jobs/sandbox.py, jobs/workspace.py) --
# bwrap: the CLI runs under bubblewrap as an unprivileged user in its own mount
# and PID namespace; none: no OS sandbox (logged loudly); unset: bwrap where it
# works, else none with a warning.
CLAUDE_SANDBOX = env_choice("CLAUDE_SANDBOX", "", {"", "bwrap", "none"})
# Per-CLI limits: memory (RLIMIT_DATA of every process, and the resident memory
# of its whole process tree), CPU seconds, processes in its tree, open files per process.
CLAUDE_MEMORY_LIMIT_MB = env_int("CLAUDE_MEMORY_LIMIT_MB", 2048, minimum=256)
CLAUDE_CPU_LIMIT_SECONDS = env_int("CLAUDE_CPU_LIMIT_SECONDS", 1800, minimum=10)
CLAUDE_PROCESS_LIMIT = env_int("CLAUDE_PROCESS_LIMIT", 64, minimum=4)
CLAUDE_OPEN_FILES_LIMIT = env_int("CLAUDE_OPEN_FILES_LIMIT", 1024, minimum=64)
# A finished job's working folder and CLI home are removed at once (0), or this many seconds later.
JOB_KEEP_WORKDIR_SECONDS = env_int("JOB_KEEP_WORKDIR_SECONDS", 0, minimum=0)
JOB_TOOL_POLICY_DEFAULT = env_choice("JOB_TOOL_POLICY_DEFAULT", "safe", {"read_only", "safe", "trusted"})
# How often a running job's worker proves it is alive, and after how long
# without that the reaper declares the job lost.
JOB_HEARTBEAT_SECONDS = env_int("JOB_HEARTBEAT_SECONDS", 5, minimum=1)
JOB_STALE_SECONDS = env_int("JOB_STALE_SECONDS", 30, minimum=3)
# Seconds between SIGTERM and SIGKILL when a job's CLI is stopped.
JOB_KILL_GRACE_SECONDS = env_int("JOB_KILL_GRACE_SECONDS", 3, minimum=0)
# A dead or failing upstream fails a job fast: the CLI tries a request this many
# more times (its default is 10, with backoff) and gives each attempt at most
# CLAUDE_API_TIMEOUT_MS to answer. Worst case about (retries + 1) x timeout plus
# a few seconds of backoff: under 30 s with the defaults. Passed to the CLI as
# CLAUDE_CODE_MAX_RETRIES and API_TIMEOUT_MS.
CLAUDE_API_MAX_RETRIES = env_int("CLAUDE_API_MAX_RETRIES", 2, minimum=0, maximum=20)
CLAUDE_API_TIMEOUT_MS = env_int("CLAUDE_API_TIMEOUT_MS", 8000, minimum=1000, maximum=3_600_000)
MAX_PROMPT_CHARS = env_int("MAX_PROMPT_CHARS", 100_000, minimum=1)
# Streaming readers re-check the event table this often (ms) when no live push arrives.
STREAM_POLL_MS = env_int("STREAM_POLL_MS", 250, minimum=20)
STREAM_KEEPALIVE_SECONDS = env_int("STREAM_KEEPALIVE_SECONDS", 15, minimum=1)

# -- the Process API (seed 002) -------------------------------------------------------

# Execution slots: POST /api/v1/claude/execute answers 202 "queued" instead of
# waiting once this many jobs are running or waiting. Set it to JOB_WORKERS
# times the number of worker hosts.
MAX_CONCURRENT_PROCESSES = env_int("MAX_CONCURRENT_PROCESSES", JOB_WORKERS, minimum=1)
# Directories a process may name as its workingDirectory (it may use any
# directory inside them). Empty: workingDirectory is refused.
PROCESS_ALLOWED_WORKDIRS = [Path(p) for p in env_list("PROCESS_ALLOWED_WORKDIRS", [])]
# A WebSocket client that did not authenticate at connect has this long to send its auth message.
WS_AUTH_TIMEOUT_SECONDS = env_int("WS_AUTH_TIMEOUT_SECONDS", 10, minimum=1, maximum=300)
# When the CLI is missing or cannot start, processes run straight against the
# Anthropic Messages API with this key (the same variable the CLI reads).
CLAUDE_API_FALLBACK = env_bool("CLAUDE_API_FALLBACK", True)
ANTHROPIC_API_KEY = env_str("ANTHROPIC_API_KEY")
ANTHROPIC_BASE_URL = env_str("ANTHROPIC_BASE_URL")
# max_tokens of a fallback request when the process named none.
CLAUDE_API_FALLBACK_MAX_TOKENS = env_int("CLAUDE_API_FALLBACK_MAX_TOKENS", 8192, minimum=1, maximum=128_000)

if JOB_STALE_SECONDS <= 2 * JOB_HEARTBEAT_SECONDS:
    raise ImproperlyConfigured("JOB_STALE_SECONDS must be more than twice JOB_HEARTBEAT_SECONDS")

# -- audio transcription (transcription/) ------------------------------------------------

# The provider: Mistral's Voxtral by default; any server with the OpenAI-style
# ``POST /v1/audio/transcriptions`` (a self-hosted Whisper …) works too.
VOXTRAL_BASE_URL = env_str("VOXTRAL_BASE_URL", "https://api.mistral.ai").rstrip("/")
VOXTRAL_MODEL = env_str("VOXTRAL_MODEL", "voxtral-mini-latest")
MISTRAL_API_KEY = env_str("MISTRAL_API_KEY")
# Empty: not sent (Mistral returns segments when asked through timestamp_granularities);
# OpenAI-compatible servers need "verbose_json" to return segments.
VOXTRAL_RESPONSE_FORMAT = env_choice("VOXTRAL_RESPONSE_FORMAT", "", {"", "json", "verbose_json"})
VOXTRAL_TIMEOUT_SECONDS = env_int("VOXTRAL_TIMEOUT_SECONDS", 300, minimum=5)
# Chunks of one job sent to the provider at the same time.
VOXTRAL_CONCURRENCY = env_int("VOXTRAL_CONCURRENCY", 3, minimum=1, maximum=32)
# Attempts after the first on 429, 5xx and network errors; backoff doubles from
# VOXTRAL_RETRY_BACKOFF_MS up to VOXTRAL_RETRY_MAX_WAIT_SECONDS (also the cap on Retry-After).
VOXTRAL_MAX_RETRIES = env_int("VOXTRAL_MAX_RETRIES", 5, minimum=0, maximum=20)
VOXTRAL_RETRY_BACKOFF_MS = env_int("VOXTRAL_RETRY_BACKOFF_MS", 1000, minimum=0)
VOXTRAL_RETRY_MAX_WAIT_SECONDS = env_int("VOXTRAL_RETRY_MAX_WAIT_SECONDS", 60, minimum=0)
TRANSCRIPTION_MAX_UPLOAD_MB = env_int("TRANSCRIPTION_MAX_UPLOAD_MB", 500, minimum=1)
# Longest piece of audio sent in one request; long audio is cut near this length,
# in a silence when there is one within TRANSCRIPTION_SILENCE_SEARCH_SECONDS
# before the limit, else hard, with TRANSCRIPTION_CHUNK_OVERLAP_SECONDS of overlap.
TRANSCRIPTION_CHUNK_SECONDS = env_int("TRANSCRIPTION_CHUNK_SECONDS", 600, minimum=10)
TRANSCRIPTION_CHUNK_OVERLAP_SECONDS = env_int("TRANSCRIPTION_CHUNK_OVERLAP_SECONDS", 2, minimum=0, maximum=30)
TRANSCRIPTION_SILENCE_SEARCH_SECONDS = env_int("TRANSCRIPTION_SILENCE_SEARCH_SECONDS", 60, minimum=0)
TRANSCRIPTION_SILENCE_DB = env_int("TRANSCRIPTION_SILENCE_DB", -35, minimum=-90, maximum=0)
TRANSCRIPTION_SILENCE_MIN_MS = env_int("TRANSCRIPTION_SILENCE_MIN_MS", 400, minimum=50)
# Longest audio a transcription job takes: refused at upload when the header
# says more; decoding stops there whatever the header said.
TRANSCRIPTION_MAX_DURATION_SECONDS = env_int("TRANSCRIPTION_MAX_DURATION_SECONDS", 4 * 3600, minimum=1)
# Longest one ffmpeg/ffprobe run may take before it is killed.
TRANSCRIPTION_FFMPEG_TIMEOUT_SECONDS = env_int("TRANSCRIPTION_FFMPEG_TIMEOUT_SECONDS", 900, minimum=5)

if TRANSCRIPTION_CHUNK_OVERLAP_SECONDS * 4 > TRANSCRIPTION_CHUNK_SECONDS:
    raise ImproperlyConfigured(
        "TRANSCRIPTION_CHUNK_OVERLAP_SECONDS must be under a quarter of TRANSCRIPTION_CHUNK_SECONDS"
    )

# -- API keys --------------------------------------------------------------------

# Keyed hash of API key secrets; keep it stable, or every key stops working.
API_KEY_PEPPER = env_str("API_KEY_PEPPER") or SECRET_KEY

# -- fair sharing, usage and budgets (issue 12) ---------------------------------------

# Per API key (JWT users get these defaults); a key's own values in the admin replace them.
# Active = pending + running: more is refused with 429 active_jobs_limit at submit.
JOB_MAX_ACTIVE_PER_KEY = env_int("JOB_MAX_ACTIVE_PER_KEY", 50, minimum=1)
# Running at once: the claim leaves a key's further jobs pending (0 = no cap but the workers).
JOB_MAX_RUNNING_PER_KEY = env_int("JOB_MAX_RUNNING_PER_KEY", 0, minimum=0)
# What the transcription provider costs per minute of audio; counts toward usage and budgets.
TRANSCRIPTION_PRICE_PER_MINUTE_USD = env_float("TRANSCRIPTION_PRICE_PER_MINUTE_USD", 0.001, minimum=0)

# -- rate limits --------------------------------------------------------------------

# Per API key (or JWT user) and endpoint group, as "requests/window" (django-ratelimit
# syntax: 60/60s, 5/m, 100/15m). A key's overrides in the admin replace these.
RATELIMIT_ENABLE = env_bool("RATE_LIMIT_ENABLE", True)
RATE_LIMITS = {
    "jobs": env_str("RATE_LIMIT_JOBS", "120/60s"),
    "compat": env_str("RATE_LIMIT_COMPAT", "60/60s"),
    "process_execute": env_str("RATE_LIMIT_PROCESS_EXECUTE", "5/60s"),
    "process_status": env_str("RATE_LIMIT_PROCESS_STATUS", "100/15m"),
}
_RATE = re.compile(r"^[1-9]\d*/\d*[smhd]$")
for _group, _rate in RATE_LIMITS.items():
    if not _RATE.match(_rate):
        raise ImproperlyConfigured(
            f"RATE_LIMIT_{_group.upper()}={_rate!r} is not a rate like 60/60s, 5/m or 100/15m"
        )
# Groups whose responses also carry seed 002's X-RateLimit-* headers.
RATE_LIMIT_LEGACY_HEADER_GROUPS = {"process_execute", "process_status"}
# The counters live in the default cache: Redis, or local memory, which is exact
# only within one process (the embedded deployment runs one server process).
RATELIMIT_USE_CACHE = "default"

# -- compat API (OpenAI / Anthropic formats) and sessions ------------------------------

# A session without a call for this long is removed (with its files) by a schedule.
COMPAT_SESSION_IDLE_MINUTES = env_int("COMPAT_SESSION_IDLE_MINUTES", 30, minimum=1)
# -- live sessions (jobs/live.py, issue 18) --
# A compat session's CLI stays alive this long after its last turn, on the worker
# process that ran it, and serves the session's next turn (no CLI start, no resume).
# 0: no live sessions (every turn starts a CLI and resumes the stored conversation).
SESSION_KEEPALIVE_SECONDS = env_int("SESSION_KEEPALIVE_SECONDS", 300, minimum=0)
# At most this many live CLIs per worker process; the least recently used goes first.
SESSION_LIVE_MAX_PER_WORKER = env_int("SESSION_LIVE_MAX_PER_WORKER", 4, minimum=1)
# How often (ms) a worker holding live sessions looks for their next turns.
SESSION_LIVE_POLL_MS = env_int("SESSION_LIVE_POLL_MS", 250, minimum=5)
# -- end live sessions --
# Pre-started CLIs (jobs/spares.py): each worker process keeps up to this many CLIs started and
# initialised, like the last jobs it ran of as many kinds (~130 MB USS each while they wait); 0: none.
CLI_SPARES_PER_WORKER = env_int("CLI_SPARES_PER_WORKER", 2, minimum=0, maximum=8)
# max_tokens when a request names none, and the operator's ceiling on what a request
# may ask for. A request above its model's output limit (or this ceiling) is lowered
# to it, not refused: clients send their defaults (LangChain's ChatAnthropic 64000).
COMPAT_DEFAULT_MAX_TOKENS = env_int("COMPAT_DEFAULT_MAX_TOKENS", 2048, minimum=1)
COMPAT_MAX_TOKENS_LIMIT = env_int("COMPAT_MAX_TOKENS_LIMIT", 128_000, minimum=1)
# Each model's real output limit (tokens), by id or alias prefix (figures as the
# released SDKs' model profiles give them); the longest prefix that matches wins,
# so a dated id (claude-sonnet-4-5-20250929) finds its family.
# The CLI gets the result as CLAUDE_CODE_MAX_OUTPUT_TOKENS.
MODEL_OUTPUT_TOKEN_LIMITS = {
    "haiku": 64_000,  # Claude Code's aliases name the newest model of each family
    "sonnet": 64_000,
    "opus": 64_000,
    "claude-opus-5": 128_000,  # 5, 5-5 …
    "claude-sonnet-5": 128_000,
    "claude-haiku-5": 128_000,
    "claude-fable-5": 128_000,
    "claude-opus-4-8": 128_000,
    "claude-opus-4-7": 128_000,
    "claude-opus-4-6": 128_000,
    "claude-sonnet-4-6": 128_000,
    "claude-opus-4-5": 64_000,
    "claude-opus-4-1": 32_000,
    "claude-opus-4": 32_000,
    "claude-sonnet-4-5": 64_000,
    "claude-sonnet-4": 64_000,
    "claude-haiku-4-5": 64_000,
    "claude-3-7-sonnet": 64_000,
    "claude-3-5-sonnet": 8_192,
    "claude-3-5-haiku": 8_192,
    "claude-3-opus": 4_096,
    "claude-3-haiku": 4_096,
    "claude-": 8_192,  # an id this table does not know yet
}
# Longest wait for the model API's count endpoint (POST /v1/messages/count_tokens).
COMPAT_COUNT_TOKENS_TIMEOUT_SECONDS = env_int(
    "COMPAT_COUNT_TOKENS_TIMEOUT_SECONDS", 10, minimum=1, maximum=300
)
# Seconds a client is told to wait (retry-after) when the model's API rate limits or is overloaded.
COMPAT_UPSTREAM_RETRY_AFTER_SECONDS = env_int("COMPAT_UPSTREAM_RETRY_AFTER_SECONDS", 5, minimum=0, maximum=60)
# Images and documents sent inline (base64) in one request, decoded, at most.
COMPAT_MAX_INLINE_FILE_BYTES = env_int("COMPAT_MAX_INLINE_FILE_BYTES", 20 * 1024 * 1024, minimum=1024)
if COMPAT_DEFAULT_MAX_TOKENS > COMPAT_MAX_TOKENS_LIMIT:
    raise ImproperlyConfigured("COMPAT_DEFAULT_MAX_TOKENS must not exceed COMPAT_MAX_TOKENS_LIMIT")
# JSON bodies carry inline images and documents as base64 (a third larger than the files).
DATA_UPLOAD_MAX_MEMORY_SIZE = env_int(
    "DATA_UPLOAD_MAX_MEMORY_SIZE", COMPAT_MAX_INLINE_FILE_BYTES * 4 // 3 + 1024 * 1024, minimum=1024
)

# -- JWT (POST /auth/login) ----------------------------------------------------------

JWT_SIGNING_KEY = env_str("JWT_SIGNING_KEY") or SECRET_KEY
JWT_EXPIRY_SECONDS = env_int("JWT_EXPIRY_SECONDS", 24 * 3600, minimum=60)
# Failed logins per username and per client address within the window; past
# either, /auth/login answers 429 (Retry-After) until the window ends.
LOGIN_MAX_FAILURES_PER_USERNAME = env_int("LOGIN_MAX_FAILURES_PER_USERNAME", 5, minimum=1)
LOGIN_MAX_FAILURES_PER_ADDRESS = env_int("LOGIN_MAX_FAILURES_PER_ADDRESS", 20, minimum=1)
LOGIN_FAILURE_WINDOW_SECONDS = env_int("LOGIN_FAILURE_WINDOW_SECONDS", 900, minimum=10)

# -- HTTPS behind a proxy -------------------------------------------------------------

# Cookies (admin session, CSRF) only over HTTPS; turn on when the service is served over TLS.
SESSION_COOKIE_SECURE = env_bool("SESSION_COOKIE_SECURE", False)
CSRF_COOKIE_SECURE = env_bool("CSRF_COOKIE_SECURE", False)
SESSION_COOKIE_HTTPONLY = True
# "HTTP_X_FORWARDED_PROTO,https": a TLS-terminating proxy that sets this header
# (and strips it from clients) makes request.is_secure() true. Empty: not trusted.
_PROXY_SSL = env_str("SECURE_PROXY_SSL_HEADER")
if _PROXY_SSL:
    _header, _, _value = _PROXY_SSL.partition(",")
    if not _header.startswith("HTTP_") or not _value:
        raise ImproperlyConfigured(
            f"SECURE_PROXY_SSL_HEADER={_PROXY_SSL!r} must read like HTTP_X_FORWARDED_PROTO,https"
        )
    SECURE_PROXY_SSL_HEADER = (_header.strip(), _value.strip())
SECURE_SSL_REDIRECT = env_bool("SECURE_SSL_REDIRECT", False)
SECURE_HSTS_SECONDS = env_int("SECURE_HSTS_SECONDS", 0, minimum=0)
SECURE_CONTENT_TYPE_NOSNIFF = True

# -- CORS (django-cors-headers) ---------------------------------------------------------

# Origins (scheme://host[:port]) whose pages may call the APIs from a browser. Empty: none
# (same-origin pages, like the console, need nothing). Credentials are headers (X-API-Key,
# Authorization), never cookies: another origin cannot ride a signed-in session.
CORS_ALLOWED_ORIGINS = env_list("CORS_ALLOWED_ORIGINS", [])
CORS_ALLOW_CREDENTIALS = False
CORS_ALLOW_HEADERS = ["accept", "authorization", "content-type", "x-api-key", "x-request-id", "last-event-id"]
CORS_EXPOSE_HEADERS = [
    "x-request-id",
    "x-session-id",
    "retry-after",
    "ratelimit-limit",
    "ratelimit-remaining",
    "ratelimit-reset",
]

# -- REST framework and schema ------------------------------------------------------

# JSON bodies nested deeper than this are 400 invalid_json (claudesvc/parsers.py).
JSON_MAX_DEPTH = env_int("JSON_MAX_DEPTH", 64, minimum=8, maximum=500)

REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "claudesvc.auth.ApiKeyAuthentication",
        "claudesvc.auth.JwtAuthentication",
        # The browser on this origin (console, EventSource): session cookie, CSRF for writes.
        "claudesvc.auth.SessionCallerAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    "DEFAULT_PARSER_CLASSES": [
        "claudesvc.parsers.BoundedJSONParser",
        "rest_framework.parsers.MultiPartParser",
        "rest_framework.parsers.FormParser",
    ],
    "DEFAULT_RENDERER_CLASSES": ["rest_framework.renderers.JSONRenderer"],
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "DEFAULT_THROTTLE_CLASSES": ["claudesvc.ratelimit.GroupRateThrottle"],
    "UNAUTHENTICATED_USER": None,
}

SPECTACULAR_SETTINGS = {
    "TITLE": "claudesvc",
    "DESCRIPTION": (
        "Claude Code CLI behind HTTP. Authenticate with `X-API-Key: csk_…`, `Authorization: Bearer csk_…` "
        "or `Authorization: Bearer <JWT>` from `POST /auth/login`. "
        "The Process API also speaks WebSocket at `/api/v1/claude/ws`: see the Process API tag."
    ),
    "VERSION": "1.0.0",
    "SERVE_INCLUDE_SCHEMA": False,
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
    "COMPONENT_SPLIT_REQUEST": True,
    "TAGS": [
        {
            "name": "Process API",
            "description": (
                "Seed 002 under `/api/v1/claude`: every body is `{success, data, meta: {timestamp, requestId}}`; "
                "errors carry `VALIDATION_ERROR` (with `field`), `UNAUTHORIZED`, `NOT_FOUND`, "
                "`PROCESS_ALREADY_COMPLETED`, `RATE_LIMIT_EXCEEDED` or `INTERNAL_ERROR`. Process ids read "
                "`claude_<32 hex digits>`.\n\n"
                "**WebSocket** `ws(s)://<host>/api/v1/claude/ws`. Every message, both ways, is JSON "
                '`{"event": "<name>", "data": <payload>, "requestId": "<optional, echoed back>"}`. '
                "Client to server: `claude:execute` (the body of POST /execute), `claude:cancel` and "
                '`claude:status` (a process id, or `{"processId"}`). Server to client: `claude:progress` '
                '(`{processId, status, type: "status"|"output", output}`, the text as it is generated), '
                "`claude:complete` (`{processId, status, result}` when a process ends, whatever the outcome), "
                "`claude:status` (the GET /processes/{id} shape), `claude:error` (`{code, message, field?, "
                "processId?}`) and `claude:authenticated` (`{userId}`). A connection hears only about its "
                "caller's processes.\n\n"
                "**WebSocket authentication** (browsers cannot set headers): offer the subprotocols "
                "`claudesvc.v1` and `bearer.<API key or JWT>` (JavaScript: `new WebSocket(url, "
                "['claudesvc.v1', 'bearer.' + token])`); the server selects `claudesvc.v1`, never the "
                "credential. Other clients may send `X-API-Key` or `Authorization: Bearer` instead. Or "
                'send `{"event": "auth", "data": {"token": "…"}}` first, within WS_AUTH_TIMEOUT_SECONDS. '
                "A bad credential, or none in time, closes the socket with code 1008 (after a "
                "`claude:error` saying why). The `Origin` header must "
                "name a host in DJANGO_ALLOWED_HOSTS."
            ),
        }
    ],
    "ENUM_NAME_OVERRIDES": {
        "ProcessStatusEnum": "jobs.process_api.selectors.PROCESS_STATUSES",
        "TranscriptionTypeEnum": ["transcription"],
        "JobTypeEnum": ["claude", "transcription"],
    },
}

# -- auth, i18n, logging ----------------------------------------------------------------

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
]
LANGUAGE_CODE = "en"
# The landing page and the console speak both; the browser's Accept-Language picks (English otherwise).
LANGUAGES = [("en", "English"), ("de", "Deutsch")]
LOCALE_PATHS = [BASE_DIR / "locale"]
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

LOG_LEVEL = env_choice("LOG_LEVEL", "INFO", {"DEBUG", "INFO", "WARNING", "ERROR"})
# "text" (default, for a terminal) or "json": one JSON object per line (timestamp, level,
# logger, message, request_id, job_id, key_prefix) for a log collector.
LOG_FORMAT = env_choice("LOG_FORMAT", "text", {"text", "json"})
_LOG_FIELDS = {"request_id", "job_id", "key_prefix"}
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "filters": {
        "context": {
            "()": "claudesvc.logcontext.LogContextFilter",
            "empty": None if LOG_FORMAT == "json" else "-",
        },
    },
    "formatters": {
        "text": {
            "format": "%(asctime)s %(levelname)s %(name)s [req=%(request_id)s job=%(job_id)s key=%(key_prefix)s] "
            "%(message)s"
        },
        "json": {
            "()": "pythonjsonlogger.json.JsonFormatter",
            "fmt": ["levelname", "name", "message", *sorted(_LOG_FIELDS)],
            "rename_fields": {"levelname": "level", "name": "logger"},
            "timestamp": True,
            # uvicorn's copy of each message with terminal colours: noise in JSON.
            "reserved_attrs": [*RESERVED_ATTRS, "color_message"],
        },
    },
    "handlers": {
        "console": {"class": "logging.StreamHandler", "formatter": LOG_FORMAT, "filters": ["context"]},
    },
    "root": {"handlers": ["console"], "level": LOG_LEVEL},
    "loggers": {
        "django.db.backends": {"level": "WARNING"},
        "claude_agent_sdk": {"level": "WARNING"},
        # WeasyPrint logs each rendering step, and its font subsetting every glyph, at INFO.
        "fontTools": {"level": "WARNING"},
        "weasyprint.progress": {"level": "WARNING"},
    },
}
if LOG_FORMAT == "json":
    # uvicorn sets up its own text handlers before it imports the application; these
    # replace them, so its access and error lines are JSON objects too.
    LOGGING["loggers"].update(
        {
            name: {"handlers": ["console"], "level": "INFO", "propagate": False}
            for name in ("uvicorn", "uvicorn.error", "uvicorn.access")
        }
    )

SERVICE_VERSION = "1.0.0"

# -- operations: Prometheus at /metrics ----------------------------------------------------

# Who may scrape GET /metrics (never API keys; outside every rate limit): a client
# address inside METRICS_ALLOWED_NETWORKS (REMOTE_ADDR: behind a proxy, the proxy's),
# and, when METRICS_TOKEN is set, "Authorization: Bearer <METRICS_TOKEN>" as well.
METRICS_TOKEN = env_str("METRICS_TOKEN")
METRICS_ALLOWED_NETWORKS = []
for _net in env_list("METRICS_ALLOWED_NETWORKS", ["127.0.0.0/8", "::1/128"]):
    try:
        METRICS_ALLOWED_NETWORKS.append(ipaddress.ip_network(_net, strict=False))
    except ValueError:
        raise ImproperlyConfigured(
            f"METRICS_ALLOWED_NETWORKS: {_net!r} is not an address or network such as 10.0.0.0/8"
        ) from None
if not METRICS_TOKEN and not METRICS_ALLOWED_NETWORKS:
    raise ImproperlyConfigured(
        "METRICS_ALLOWED_NETWORKS is empty and METRICS_TOKEN unset: /metrics would be open to anyone; "
        "set a token, or name the networks (0.0.0.0/0,::/0 for everyone, if that is really meant)"
    )
# django-prometheus' HTTP metrics get the service's prefix (claudesvc_django_http_…).
PROMETHEUS_METRIC_NAMESPACE = "claudesvc"
