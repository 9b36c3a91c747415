"""Where events of the apps below the job core reach jobs (connected in ``JobsConfig.ready()``).

- A revoked API key (``apikeys.signals.api_key_revoked``): its pending jobs are
  cancelled and its running ones stopped.
- A deactivated Django user: Django's own admin (and ``manage.py`` or any code)
  deactivates a user by saving ``is_active=False``; no service of ours is in that
  path, so a ``post_save`` receiver is the one place that sees it. Their JWT jobs
  go the way of a revoked key's, after the commit (the row is really inactive,
  and JWTs refused, before jobs stop).
"""

from __future__ import annotations

from django.conf import settings
from django.db import transaction
from django.db.models.signals import post_save

from apikeys.signals import api_key_revoked
from jobs.services import owner_jobs_cancel

REVOKED_REASON = "Cancelled: the API key was revoked"
DEACTIVATED_REASON = "Cancelled: the user was deactivated"


def _on_key_revoked(sender, key, **kwargs) -> dict[str, int]:
    return owner_jobs_cancel(api_key_id=key.pk, reason=REVOKED_REASON)


def _on_user_saved(sender, instance, created: bool, **kwargs) -> None:
    if created or getattr(instance, "is_active", True):
        return
    user_id = instance.pk
    transaction.on_commit(lambda: owner_jobs_cancel(user_id=user_id, reason=DEACTIVATED_REASON))


def connect() -> None:
    api_key_revoked.connect(_on_key_revoked, dispatch_uid="jobs.receivers.key_revoked")
    post_save.connect(
        _on_user_saved, sender=settings.AUTH_USER_MODEL, dispatch_uid="jobs.receivers.user_deactivated"
    )
