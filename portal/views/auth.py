"""Sign in and out: the password, then (for a user who enrolled) the second factor.
Failed passwords and failed codes pause per (user name, client address): portal.throttle."""

from urllib.parse import urlencode

from django.contrib.auth import REDIRECT_FIELD_NAME
from django.contrib.auth import views as auth_views
from django.contrib.auth.decorators import login_required
from django.contrib.auth.forms import AuthenticationForm
from django.http import HttpResponseRedirect
from django.shortcuts import redirect, render
from django.urls import reverse
from django.utils.http import url_has_allowed_host_and_scheme
from django.views.decorators.http import require_POST

from portal import throttle, two_factor
from vaults import activity


class SignInForm(AuthenticationForm):
    error_messages = {
        **AuthenticationForm.error_messages,
        "invalid_login": "The user name or password is wrong. Check both and try again.",
    }


class SignInView(auth_views.LoginView):
    template_name = "portal/signin.html"
    authentication_form = SignInForm
    redirect_authenticated_user = True

    def post(self, request, *args, **kwargs):
        self.pair = {
            "username": request.POST.get("username", ""),
            "address": throttle.client_address(request),
        }
        wait = throttle.signin_wait(**self.pair)
        if wait:
            # Paused: the password is not even checked, so guessing gains nothing.
            return signin_paused(request, wait)
        return super().post(request, *args, **kwargs)

    def form_invalid(self, form):
        if any(e.code in ("invalid_login", "inactive") for e in form.non_field_errors().data):
            _failed(**self.pair)
        return super().form_invalid(form)

    def form_valid(self, form):
        self.needs_code = two_factor.is_enrolled(form.get_user())
        if not self.needs_code:
            # With a second factor the pair's failures stay until the code is right: else
            # whoever has the password could sign in again to reset the count of codes.
            throttle.signin_succeeded(**self.pair)
        return super().form_valid(form)

    def get_success_url(self):
        if getattr(self, "needs_code", False):
            url = reverse("portal:signin-code")
            wanted = self.get_redirect_url()
            return f"{url}?{urlencode({REDIRECT_FIELD_NAME: wanted})}" if wanted else url
        # A one-time password was seen by whoever created the account: replace it first.
        if getattr(self.request.user, "password_change_required", False):
            return reverse("portal:password-change")
        return super().get_success_url()


signin = SignInView.as_view()


@require_POST
def signout(request):
    return auth_views.LogoutView.as_view()(request)


@login_required
def signin_code(request):
    """The second step of sign-in: a code from the authenticator app or a recovery code."""
    wanted = request.POST.get(REDIRECT_FIELD_NAME, request.GET.get(REDIRECT_FIELD_NAME, ""))
    if not url_has_allowed_host_and_scheme(
        wanted, allowed_hosts={request.get_host()}, require_https=request.is_secure()
    ):
        wanted = ""
    # A path, never a view name: redirect() would try to reverse whatever was sent.
    onward = HttpResponseRedirect(wanted or reverse("portal:home"))
    if two_factor.pending_step(request.user, request.session) != two_factor.Step.CODE:
        return onward
    error = ""
    if request.method == "POST":
        pair = {"username": request.user.username, "address": throttle.client_address(request)}
        wait = throttle.signin_wait(**pair)
        if wait:
            return _paused(
                request, wait, "portal/signin_code.html", {"next": wanted, "bare_page": True}
            )
        try:
            two_factor.verify(request=request, code=request.POST.get("code", ""))
        except two_factor.CodeRefused as exc:
            _failed(**pair)
            error = str(exc)
        else:
            throttle.signin_succeeded(**pair)
            request.session.cycle_key()
            if request.user.password_change_required:
                return redirect("portal:password-change")
            return onward
    return render(
        request,
        "portal/signin_code.html",
        {"error": error, "next": wanted, "bare_page": True},
        status=400 if error else 200,
    )


def _failed(*, username: str, address: str) -> None:
    """Count the pair's failure; a pause it starts goes in the activity log."""
    failure = throttle.signin_failed(username=username, address=address)
    activity.signin_pause_record(username=username, failure=failure)


def _duration(seconds: int) -> str:
    if seconds < 90:
        return f"{seconds} second{'s' if seconds != 1 else ''}"
    minutes = -(-seconds // 60)
    return f"{minutes} minutes"


def signin_paused(request, wait: int):
    """429 with Retry-After: this account from this address failed too often."""
    form = SignInForm(request, initial={"username": request.POST.get("username", "")})
    return _paused(request, wait, "portal/signin.html", {"form": form})


def _paused(request, wait: int, template: str, context: dict):
    response = render(
        request,
        template,
        {
            **context,
            "locked_out": True,
            "locked_out_message": (
                "Too many failed sign-in attempts for this account from your address. "
                f"Try again in {_duration(wait)}; each further failure doubles the wait. "
                "If you forgot your password, ask an Owner to reset it."
            ),
        },
        status=429,
    )
    response["Retry-After"] = str(wait)
    return response
