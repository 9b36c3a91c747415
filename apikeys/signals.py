"""Where a user's deactivation reaches their jobs.

Django's own admin (and ``manage.py`` or any code) deactivates a user by
saving ``is_active=False``; there is no service of ours in that path, so a
``post_save`` receiver is the one place that sees it. It only hands over to
``apikeys.services.user_deactivated``.
"""

from __future__ import annotations

from django.conf import settings
from django.db import transaction
from django.db.models.signals import post_save


def _on_user_saved(sender, instance, created: bool, **kwargs) -> None:
    if created or getattr(instance, "is_active", True):
        return
    from apikeys.services import user_deactivated

    user_id = instance.pk
    # After the commit: the user's row is really inactive (and JWTs refused) before jobs stop.
    transaction.on_commit(lambda: user_deactivated(user_id=user_id))


def connect() -> None:
    post_save.connect(
        _on_user_saved, sender=settings.AUTH_USER_MODEL, dispatch_uid="apikeys.user_deactivated"
    )
