"""System checks (``manage.py check``, and every command that runs them: ``migrate``, ``serve``).

A job's CLI runs in a sandbox that shares the host's network (README, security
model): a ``trusted`` key's shell can connect to whatever the worker can reach.
A database or a Redis there that takes no password is then open to every job.
"""

from __future__ import annotations

from urllib.parse import urlsplit

from django.conf import settings
from django.core.checks import Tags, Warning, register


@register(Tags.security, deploy=False)
def open_services_check(app_configs, **kwargs) -> list[Warning]:
    return open_services(redis_url=settings.REDIS_URL, database=settings.DATABASES["default"])


def open_services(*, redis_url: str, database: dict) -> list[Warning]:
    """Warnings for a Redis URL and a database (``DATABASES`` entry) that carry no password."""
    warnings = []
    # Over TCP only: a Unix socket is a file, and the sandbox's mount namespace has none of the host's.
    redis = urlsplit(redis_url or "")
    if redis.scheme in ("redis", "rediss") and not redis.password:
        warnings.append(
            Warning(
                "REDIS_URL has no password: a trusted key's shell in a job's sandbox shares this "
                "host's network and could use this Redis (drop wake-ups, reset rate limits).",
                hint="Require a password in Redis (requirepass) and put it in REDIS_URL: redis://:PASSWORD@host:6379/0",
                id="claudesvc.W001",
            )
        )
    host = database.get("HOST") or ""
    over_tcp = database["ENGINE"] != "django.db.backends.sqlite3" and host and not host.startswith("/")
    if over_tcp and not database.get("PASSWORD"):
        warnings.append(
            Warning(
                "The database is reached without a password: if it trusts this host, a trusted key's "
                "shell in a job's sandbox, which shares this host's network, could read every tenant's data.",
                hint="Give the database user a password, require it (no 'trust' in pg_hba.conf), and put it "
                "in DATABASE_URL.",
                id="claudesvc.W002",
            )
        )
    return warnings
