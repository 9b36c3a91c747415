"""Who is calling: an API key, or a Django user who logged in for a JWT.

``Caller`` is what ``request.user`` holds on every authenticated route, and it
is what selectors take to scope every read to the caller's own objects.
Both credentials arrive the same ways: an API key as ``X-API-Key`` or
``Authorization: Bearer csk_…``, a JWT (``POST /auth/login``) as
``Authorization: Bearer <jwt>``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import jwt
from django.conf import settings
from django.contrib.auth import get_user_model
from django.db.models import Q
from rest_framework import authentication, exceptions

from apikeys.models import ApiKey
from apikeys.services import KEY_PREFIX, api_key_authenticate
from claudesvc.logcontext import bind_key_prefix


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
        """A non-secret, never-changing name for logs and rate-limit buckets (no
        query: a user by id). What callers are shown is ``public_id``."""
        if self.api_key:
            return f"key:{self.api_key.prefix}"
        return f"user:{self.user_id}"

    def public_id(self) -> str:
        """This caller's ``userId`` (see ``owner_label``); reads the user's name."""
        user = None if self.api_key else get_user_model().objects.filter(pk=self.user_id).first()
        return owner_label(api_key=self.api_key, user=user)

    def owns(self) -> Q:
        """Filter for rows owned by this caller (rows carry ``api_key`` and ``user``)."""
        if self.api_key:
            return Q(api_key=self.api_key)
        return Q(user_id=self.user_id, api_key__isnull=True)

    def owner_fields(self) -> dict:
        return {"api_key": self.api_key, "user_id": None if self.api_key else self.user_id}


def owner_label(*, api_key: ApiKey | None, user) -> str:
    """The ``userId`` the seeds show for whoever owns a job, a session or a
    connection; the one definition every API family uses.

    A Django user is named as ``POST /auth/login`` names them (``user.id``:
    the username, seed 001's ``"userId": "demo"``); seed 002's ``"user-id"``
    is that same id, as its routes take the same JWT. An API key has no user:
    it is ``key:<prefix>`` (the prefix is not secret), which no username the
    admin accepts can imitate (Django's usernames have no colon).
    """
    if api_key is not None:
        return f"key:{api_key.prefix}"
    return user.get_username() if user is not None else ""


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


# -- JWT ------------------------------------------------------------------------------

JWT_ALGORITHM = "HS256"
JWT_ISSUER = "claudesvc"


def looks_like_jwt(credential: str) -> bool:
    return not credential.startswith(KEY_PREFIX) and credential.count(".") == 2


def jwt_issue(user) -> str:
    """A signed token for ``user``, valid for ``JWT_EXPIRY_SECONDS``."""
    now = int(time.time())
    claims = {"sub": str(user.pk), "iss": JWT_ISSUER, "iat": now, "exp": now + settings.JWT_EXPIRY_SECONDS}
    return jwt.encode(claims, settings.JWT_SIGNING_KEY, algorithm=JWT_ALGORITHM)


def jwt_user_id(token: str) -> int | None:
    """The id of the active user a valid, unexpired token was issued to, else None."""
    try:
        claims = jwt.decode(
            token,
            settings.JWT_SIGNING_KEY,
            algorithms=[JWT_ALGORITHM],
            issuer=JWT_ISSUER,
            options={"require": ["exp", "iat", "sub", "iss"]},
        )
        user_id = int(claims["sub"])
    except (jwt.InvalidTokenError, ValueError):
        return None
    if not get_user_model().objects.filter(pk=user_id, is_active=True).exists():
        return None
    return user_id


def caller_for_credential(credential: str | None) -> Caller | None:
    """The caller an API key or a JWT stands for (for code outside DRF, e.g. WebSocket)."""
    if not credential:
        return None
    if credential.startswith(KEY_PREFIX):
        key = api_key_authenticate(credential)
        bind_key_prefix(key.prefix if key else None)  # log lines name the key from here on
        return Caller(api_key=key) if key else None
    if looks_like_jwt(credential):
        user_id = jwt_user_id(credential)
        return Caller(user_id=user_id) if user_id is not None else None
    return None


class ApiKeyAuthentication(authentication.BaseAuthentication):
    """``X-API-Key: csk_…`` or ``Authorization: Bearer csk_…``."""

    def authenticate(self, request):
        credential = credentials_from_headers(request.headers)
        if credential is None:
            return None
        if looks_like_jwt(credential) and not request.headers.get("X-API-Key"):
            return None  # a bearer JWT: JwtAuthentication's to judge
        caller = caller_for_credential(credential)
        if caller is None:
            raise exceptions.AuthenticationFailed("Invalid or revoked API key.")
        return caller, credential

    def authenticate_header(self, request) -> str:
        # Without a challenge DRF would answer 403 instead of 401.
        return 'Bearer realm="claudesvc"'


class JwtAuthentication(authentication.BaseAuthentication):
    """``Authorization: Bearer <jwt>`` from ``POST /auth/login``: the caller is that Django user."""

    def authenticate(self, request):
        credential = credentials_from_headers(request.headers)
        if credential is None or request.headers.get("X-API-Key") or not looks_like_jwt(credential):
            return None
        user_id = jwt_user_id(credential)
        if user_id is None:
            raise exceptions.AuthenticationFailed("Invalid or expired token.")
        return Caller(user_id=user_id), credential

    def authenticate_header(self, request) -> str:
        return 'Bearer realm="claudesvc"'


# -- the browser: a signed-in session (the console, /docs, EventSource, WebSocket) --------

# Where the console keeps the id of an API key its visitor pasted (the secret is never stored).
SESSION_API_KEY = "console_api_key_id"


def caller_for_session(user, session) -> Caller | None:
    """The caller a browser session stands for: the signed-in, active Django user
    (like a JWT caller), else the API key pasted into the console for this session
    while it is not revoked. Checked against the database on every call."""
    if user is not None and getattr(user, "is_authenticated", False):
        active = get_user_model().objects.filter(pk=user.pk, is_active=True).exists()
        return Caller(user_id=user.pk) if active else None
    key_id = session.get(SESSION_API_KEY) if session is not None else None
    if key_id is None:
        return None
    key = ApiKey.objects.filter(pk=key_id, revoked_at__isnull=True).first()
    return Caller(api_key=key) if key else None


class SessionCallerAuthentication(authentication.SessionAuthentication):
    """The session cookie of this origin: a signed-in user or a console API key.

    Listed after the header credentials, so a request that presents a key or a
    JWT is judged by that alone. Writes (POST, DELETE …) need the CSRF token,
    as everywhere in Django; reads (SSE, downloads) need only the cookie.
    """

    def authenticate(self, request):
        django_request = request._request
        caller = caller_for_session(
            getattr(django_request, "user", None), getattr(django_request, "session", None)
        )
        if caller is None:
            return None
        self.enforce_csrf(request)
        return caller, None


def caller_for_live_session(user, session) -> Caller | None:
    """``caller_for_session`` for a connection that outlives its request (a
    WebSocket): the session must still be in the store, so signing out (which
    deletes it) ends the connection's rights too."""
    key = getattr(session, "session_key", None)
    if not key or not session.exists(key):
        return None
    return caller_for_session(user, session)
