"""Who is calling: an API key today, a JWT user where a family allows it.

``Caller`` is what ``request.user`` holds on every authenticated route, and it
is what selectors take to scope every read to the caller's own objects.
"""

from __future__ import annotations

from dataclasses import dataclass

from django.db.models import Q
from rest_framework import authentication, exceptions

from apikeys.models import ApiKey
from apikeys.services import KEY_PREFIX, api_key_authenticate


@dataclass(frozen=True)
class Caller:
    api_key: ApiKey | None = None
    user_id: int | None = None

    is_authenticated = True
    is_anonymous = False

    @property
    def tool_policy(self) -> str:
        from django.conf import settings

        return self.api_key.tool_policy if self.api_key else settings.JOB_TOOL_POLICY_DEFAULT

    @property
    def label(self) -> str:
        """A non-secret name for logs and the ``userId`` fields of the seeds."""
        if self.api_key:
            return f"key:{self.api_key.prefix}"
        return f"user:{self.user_id}"

    def owns(self) -> Q:
        """Filter for rows owned by this caller (rows carry ``api_key`` and ``user``)."""
        if self.api_key:
            return Q(api_key=self.api_key)
        return Q(user_id=self.user_id, api_key__isnull=True)

    def owner_fields(self) -> dict:
        return {"api_key": self.api_key, "user_id": None if self.api_key else self.user_id}


def credentials_from_headers(headers) -> str | None:
    """The presented credential: ``X-API-Key`` or ``Authorization: Bearer``."""
    key = headers.get("X-API-Key") or headers.get("x-api-key")
    if key:
        return key.strip()
    auth = headers.get("Authorization", "")
    scheme, _, token = auth.partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        return token.strip()
    return None


def caller_for_credential(credential: str | None) -> Caller | None:
    if not credential:
        return None
    if credential.startswith(KEY_PREFIX):
        key = api_key_authenticate(credential)
        return Caller(api_key=key) if key else None
    return None


class ApiKeyAuthentication(authentication.BaseAuthentication):
    """``X-API-Key: csk_…`` or ``Authorization: Bearer csk_…``."""

    def authenticate(self, request):
        credential = credentials_from_headers(request.headers)
        if credential is None:
            return None
        caller = caller_for_credential(credential)
        if caller is None:
            raise exceptions.AuthenticationFailed("Invalid or revoked API key.")
        return caller, credential

    def authenticate_header(self, request) -> str:
        # Without a challenge DRF would answer 403 instead of 401.
        return 'Bearer realm="claudesvc"'
