"""OpenAPI descriptions of the authentication schemes (drf-spectacular extensions)."""

from drf_spectacular.extensions import OpenApiAuthenticationExtension


class ApiKeyScheme(OpenApiAuthenticationExtension):
    target_class = "claudesvc.auth.ApiKeyAuthentication"
    name = ["ApiKeyHeader", "ApiKeyBearer"]

    def get_security_definition(self, auto_schema):
        return [
            {
                "type": "apiKey",
                "in": "header",
                "name": "X-API-Key",
                "description": "An API key `csk_live_…` (manage.py createapikey, or the admin).",
            },
            {"type": "http", "scheme": "bearer", "description": "`Authorization: Bearer csk_live_…`"},
        ]

    def get_security_requirement(self, auto_schema):
        # Either header works: two requirements (OR), not one with both (AND).
        return [{"ApiKeyHeader": []}, {"ApiKeyBearer": []}]


class JwtScheme(OpenApiAuthenticationExtension):
    target_class = "claudesvc.auth.JwtAuthentication"
    name = "JwtBearer"

    def get_security_definition(self, auto_schema):
        return {
            "type": "http",
            "scheme": "bearer",
            "bearerFormat": "JWT",
            "description": "`Authorization: Bearer <token>` with the token from `POST /auth/login`.",
        }


class SessionCallerScheme(OpenApiAuthenticationExtension):
    target_class = "claudesvc.auth.SessionCallerAuthentication"
    name = "SessionCookie"

    def get_security_definition(self, auto_schema):
        from django.conf import settings

        return {
            "type": "apiKey",
            "in": "cookie",
            "name": settings.SESSION_COOKIE_NAME,
            "description": (
                "Pages of this origin: the session of a console sign-in (`/console/login`). "
                "Writes also need the CSRF token in `X-CSRFToken`."
            ),
        }
