"""What the apikeys app tells the apps above it (``jobs`` stops a revoked key's work).

``apikeys`` sits below the job core (the auth that every API uses reads keys),
so it never imports ``jobs``: it sends these signals and ``jobs`` receives them
(``jobs/receivers.py``, connected in ``JobsConfig.ready()``).
"""

from __future__ import annotations

from django.dispatch import Signal

# Sent with ``key`` (an ApiKey) once it no longer authenticates. A receiver
# returns counts of what it stopped, e.g. ``{"pending": 2, "running": 1}``.
api_key_revoked = Signal()
