"""Request-wide rules of the portal: a one-time password is changed before anything else,
and every response carries the Content-Security-Policy."""

from __future__ import annotations

from django.conf import settings
from django.http import HttpResponse
from django.shortcuts import redirect
from django.urls import reverse

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
