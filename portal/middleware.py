"""Request-wide rules of the portal, checked before any view runs: a NUL character is a 400,
a one-time password is changed before anything else, and every response carries the
Content-Security-Policy."""

from __future__ import annotations

from django.conf import settings
from django.http import HttpResponse, HttpResponseBadRequest, JsonResponse
from django.shortcuts import redirect
from django.urls import reverse

API_PREFIX = "/api/v1/"
FORM_TYPES = ("application/x-www-form-urlencoded", "multipart/form-data")

# Everything a browser may still do with a one-time password: replace it, or sign out.
_PASSWORD_CHANGE_EXEMPT = ("portal:password-change", "portal:logout", "portal:login")


class PasswordChangeRequiredMiddleware:
    """Until a user replaces the one-time password someone else saw, every page, download
    and fragment answers with the way to "Change password" instead (websockets are refused
    in ``portal.consumers``): whoever read the password over the Owner's shoulder gets no
    more than the user themself would."""

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        user = getattr(request, "user", None)
        if (
            user is not None
            and user.is_authenticated
            and user.password_change_required
            and not self._exempt(request.path_info)
        ):
            target = reverse("portal:password-change")
            if request.path_info.startswith(API_PREFIX):
                # The REST API answers in JSON, as its schema says (portal/api).
                return JsonResponse(
                    {"detail": "Change your one-time password in the portal first."}, status=403
                )
            if getattr(request, "htmx", False) or request.headers.get("Accept", "").startswith(
                "application/json"
            ):
                response = HttpResponse(
                    "Change your one-time password first.", status=403, content_type="text/plain"
                )
                response["HX-Redirect"] = target
                return response
            return redirect(target)
        return self.get_response(request)

    @staticmethod
    def _exempt(path: str) -> bool:
        if path.startswith(settings.STATIC_URL):
            return True
        return path in {reverse(name) for name in _PASSWORD_CHANGE_EXEMPT}


class ContentSecurityPolicyMiddleware:
    """A strict policy on every response: scripts, styles and connections from this origin
    only, no inline code, no framing (``settings.HAVEN_CSP``)."""

    def __init__(self, get_response):
        self.get_response = get_response
        self.policy = "; ".join(
            f"{directive} {' '.join(sources)}" for directive, sources in settings.HAVEN_CSP.items()
        )

    def __call__(self, request):
        response = self.get_response(request)
        response.headers.setdefault("Content-Security-Policy", self.policy)
        return response


class RefuseNulCharacters:
    """A NUL character is never part of a name, an id or a search in Haven, and PostgreSQL
    refuses it in any text it stores or compares (``DataError`` on every lookup), so a path,
    query string or form value holding one is answered 400 here rather than 500 wherever it
    reaches the database. Raw bodies (blobs, JSON) are the views' own to check."""

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        fields = [request.path, *_items(request.GET)]
        if request.method == "POST" and request.content_type in FORM_TYPES:
            # Read the body first so a view that reads it raw still can (parsing a multipart
            # body straight from the stream would consume it); the portal takes no uploads,
            # and Django refuses a body over DATA_UPLOAD_MAX_MEMORY_SIZE with a 400 here.
            request.body  # noqa: B018
            fields += _items(request.POST)
        if any("\x00" in field for field in fields):
            return HttpResponseBadRequest(
                "A value in this request contains a NUL character (\\0); remove it and try again."
            )
        return self.get_response(request)


def _items(query) -> list[str]:
    return [text for key, values in query.lists() for text in (key, *values)]
