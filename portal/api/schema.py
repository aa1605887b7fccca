"""The OpenAPI description's parts that drf-spectacular cannot find by itself: the two ways
to authenticate, and the error answers every endpoint may give (``portal.api.errors``)."""

from __future__ import annotations

from drf_spectacular.extensions import OpenApiAuthenticationExtension

DETAIL = {
    "type": "object",
    "properties": {"detail": {"type": "string"}},
    "required": ["detail"],
}
FIELD_ERRORS = {
    "type": "object",
    "description": "Problems by field name (a nested field's under its parent); "
    "problems with the request as a whole under `detail`.",
    "additionalProperties": True,
}
ERRORS = {
    "400": ("The request breaks a rule; each problem is under its field's name.", FIELD_ERRORS),
    "401": ("No credentials, or a wrong, revoked or expired token.", DETAIL),
    "403": ("Your role is too low for this, or CSRF failed (session).", DETAIL),
    "404": ("No such resource, or not one you can see.", DETAIL),
    "405": ("The method is not allowed here.", DETAIL),
    "409": ("The resource's state refuses the request now.", DETAIL),
    "415": ("Send JSON (Content-Type: application/json).", DETAIL),
    "429": ("Too many requests (or wrong tokens); retry after Retry-After seconds.", DETAIL),
    "503": ("The portal is busy (or its database restarting); retry after Retry-After.", DETAIL),
}


class TokenScheme(OpenApiAuthenticationExtension):
    target_class = "portal.api.auth.TokenAuthentication"
    name = "token"

    def get_security_definition(self, auto_schema):
        return {
            "type": "http",
            "scheme": "bearer",
            "description": "A personal access token (hvn_...) from your account page.",
        }


class SessionScheme(OpenApiAuthenticationExtension):
    target_class = "portal.api.auth.SessionAuthentication"
    name = "session"

    def get_security_definition(self, auto_schema):
        return {
            "type": "apiKey",
            "in": "cookie",
            "name": "sessionid",
            "description": "The browser's session; writes need the X-CSRFToken header.",
        }


def add_error_responses(result, generator, request, public):
    """Postprocessing hook: every operation lists the error answers it may give."""
    for path in result.get("paths", {}).values():
        for operation in path.values():
            responses = operation.setdefault("responses", {})
            for code, (description, schema) in ERRORS.items():
                responses.setdefault(
                    code,
                    {
                        "description": description,
                        "content": {"application/json": {"schema": schema}},
                    },
                )
    return result


__all__ = ["SessionScheme", "TokenScheme", "add_error_responses"]
