"""Sign in and out. Failed sign-ins pause per (user name, client address): portal.throttle."""

from django.contrib.auth import views as auth_views
from django.contrib.auth.forms import AuthenticationForm
from django.shortcuts import render
from django.urls import reverse
from django.views.decorators.http import require_POST

from portal import throttle


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
            throttle.signin_failed(**self.pair)
        return super().form_invalid(form)

    def form_valid(self, form):
        throttle.signin_succeeded(**self.pair)
        return super().form_valid(form)

    def get_success_url(self):
        # A one-time password was seen by whoever created the account: replace it first.
        if getattr(self.request.user, "password_change_required", False):
            return reverse("portal:password-change")
        return super().get_success_url()


signin = SignInView.as_view()


@require_POST
def signout(request):
    return auth_views.LogoutView.as_view()(request)


def _duration(seconds: int) -> str:
    if seconds < 90:
        return f"{seconds} second{'s' if seconds != 1 else ''}"
    minutes = -(-seconds // 60)
    return f"{minutes} minutes"


def signin_paused(request, wait: int):
    """429 with Retry-After: this account from this address failed too often."""
    form = SignInForm(request, initial={"username": request.POST.get("username", "")})
    response = render(
        request,
        "portal/signin.html",
        {
            "form": form,
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
