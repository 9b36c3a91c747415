"""Creating, checking and revoking API keys.

A key reads ``csk_live_<prefix><secret>``: the 8-character prefix finds the
row, the whole key is compared by its HMAC-SHA256 under ``API_KEY_PEPPER`` in
constant time. The clear key exists only in the return value of
``api_key_create``.
"""

from __future__ import annotations

import collections
import hashlib
import hmac
import secrets
import string
from datetime import timedelta

from django.conf import settings
from django.contrib.auth.models import AbstractBaseUser
from django.db import models
from django.utils import timezone

from apikeys.models import ApiKey, ToolPolicy
from apikeys.signals import api_key_revoked

KEY_PREFIX = "csk_live_"
_ALPHABET = string.ascii_letters + string.digits
_PREFIX_LEN = 8
_SECRET_LEN = 32
# last_used_at is written at most this often per key, not on every request.
_LAST_USED_RESOLUTION = timedelta(minutes=1)


def _hash(raw_key: str) -> str:
    return hmac.new(settings.API_KEY_PEPPER.encode(), raw_key.encode(), hashlib.sha256).hexdigest()


def _random(length: int) -> str:
    return "".join(secrets.choice(_ALPHABET) for _ in range(length))


def api_key_create(
    *, name: str, owner: AbstractBaseUser | None = None, tool_policy: str = ""
) -> tuple[ApiKey, str]:
    """Create a key; returns the row and the clear key, which is never stored."""
    while True:
        prefix = _random(_PREFIX_LEN)
        if not ApiKey.objects.filter(prefix=prefix).exists():
            break
    raw = f"{KEY_PREFIX}{prefix}{_random(_SECRET_LEN - _PREFIX_LEN)}"
    key = ApiKey.objects.create(
        name=name,
        prefix=prefix,
        secret_hash=_hash(raw),
        owner=owner,
        tool_policy=tool_policy or settings.JOB_TOOL_POLICY_DEFAULT or ToolPolicy.SAFE,
    )
    return key, raw


def api_key_authenticate(raw_key: str) -> ApiKey | None:
    """The active key for ``raw_key``, or None. Records when it was last used."""
    if not raw_key.startswith(KEY_PREFIX) or len(raw_key) != len(KEY_PREFIX) + _SECRET_LEN:
        return None
    prefix = raw_key[len(KEY_PREFIX) : len(KEY_PREFIX) + _PREFIX_LEN]
    key = ApiKey.objects.filter(prefix=prefix, revoked_at__isnull=True).first()
    if key is None or not hmac.compare_digest(key.secret_hash, _hash(raw_key)):
        return None
    now = timezone.now()
    if key.last_used_at is None or now - key.last_used_at > _LAST_USED_RESOLUTION:
        ApiKey.objects.filter(pk=key.pk).update(last_used_at=now)
        key.last_used_at = now
    return key


def api_key_revoke(*, key: ApiKey) -> dict[str, int]:
    """Revoke a key: it stops authenticating at once; the apps above are told
    (``api_key_revoked``: the job core cancels its pending jobs and stops its
    running ones). Returns what they report stopped, summed."""
    ApiKey.objects.filter(pk=key.pk, revoked_at__isnull=True).update(revoked_at=timezone.now())
    key.refresh_from_db()
    stopped: collections.Counter[str] = collections.Counter()
    for _receiver, counts in api_key_revoked.send(sender=ApiKey, key=key):
        stopped.update(counts or {})
    return {"pending": stopped["pending"], "running": stopped["running"], **stopped}


def api_key_active_jobs(*, key: ApiKey) -> dict[str, int]:
    """How many jobs of the key a revocation would cancel (pending) and stop (running)."""
    from jobs.models import Job, JobStatus

    counts = dict(
        Job.objects.filter(api_key=key, status__in=[JobStatus.PENDING, JobStatus.RUNNING])
        .order_by()
        .values_list("status")
        .annotate(n=models.Count("pk"))
    )
    return {"pending": counts.get(JobStatus.PENDING, 0), "running": counts.get(JobStatus.RUNNING, 0)}
