"""Request-wide rules of the portal, checked before any view runs: a NUL character is a 400,
a session that still owes its second factor reaches only the code page, a one-time password
is changed before anything else, and every response carries the Content-Security-Policy."""

from __future__ import annotations

from django.conf import settings
from django.http import HttpResponse, HttpResponseBadRequest, JsonResponse
from django.shortcuts import redirect
from django.urls import reverse

from portal import two_factor

API_PREFIX = "/api/v1/"
FORM_TYPES = ("application/x-www-form-urlencoded", "multipart/form-data")

# Everything a browser may still do with a one-time password: replace it, or sign out.
_PASSWORD_CHANGE_EXEMPT = (
    "portal:password-change",
    "portal:logout",
    "portal:login",
    "portal:signin-code",
)
# Everything a session that owes its second factor may do: give the code, or sign out. One
# that must enrol may also replace a one-time password first (that page comes first).
_TWO_FACTOR_EXEMPT = {
    two_factor.Step.CODE: ("portal:signin-code", "portal:logout", "portal:login"),
    two_factor.Step.ENROL: (
        "portal:two-factor",
        "portal:password-change",
        "portal:logout",
        "portal:login",
    ),
}


def _refuse(request, target: str, message: str):
    """Send a browser to ``target``; tell the API and fragments in their own terms."""
    if request.path_info.startswith(API_PREFIX):
        # The REST API answers in JSON, as its schema says (portal/api).
        return JsonResponse({"detail": message}, status=403)
    if getattr(request, "htmx", False) or request.headers.get("Accept", "").startswith(
        "application/json"
    ):
        response = HttpResponse(message, status=403, content_type="text/plain")
        response["HX-Redirect"] = target
        return response
    return redirect(target)


class TwoFactorMiddleware:
    """A session signed in with the password alone reaches nothing until the code is given
    (``portal.two_factor``): every page, download, fragment and API call answers with the
    way to the code page, or, where a subscription requires two-factor sign-in and the
    user has not enrolled, to enrolment (websockets are refused in ``portal.consumers``)."""

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        user = getattr(request, "user", None)
        if user is None or not user.is_authenticated or _static(request.path_info):
            return self.get_response(request)
        step = two_factor.pending_step(user, request.session)
        # Pages shown to a pending session open no live socket (it would be refused).
        request.two_factor_step = step
        if step and request.path_info not in {reverse(n) for n in _TWO_FACTOR_EXEMPT[step]}:
            if step == two_factor.Step.CODE:
                return _refuse(
                    request,
                    reverse("portal:signin-code"),
                    "Enter your two-factor sign-in code in the portal first.",
                )
            return _refuse(
                request,
                reverse("portal:two-factor"),
                "Set up two-factor sign-in in the portal first: a subscription requires it.",
            )
        return self.get_response(request)


def _static(path: str) -> bool:
    return path.startswith(settings.STATIC_URL)


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
            return _refuse(
                request,
                reverse("portal:password-change"),
                "Change your one-time password in the portal first.",
            )
        return self.get_response(request)

    @staticmethod
    def _exempt(path: str) -> bool:
        return _static(path) or path in {reverse(name) for name in _PASSWORD_CHANGE_EXEMPT}


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
