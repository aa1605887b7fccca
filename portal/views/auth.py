"""Sign in and out. Failed sign-ins are throttled per account and per address (django-axes)."""

from django.contrib.auth import views as auth_views
from django.contrib.auth.forms import AuthenticationForm
from django.shortcuts import render
from django.urls import reverse
from django.views.decorators.http import require_POST


class SignInForm(AuthenticationForm):
    error_messages = {
        **AuthenticationForm.error_messages,
        "invalid_login": "The user name or password is wrong. Check both and try again.",
    }


class SignInView(auth_views.LoginView):
    template_name = "portal/signin.html"
    authentication_form = SignInForm
    redirect_authenticated_user = True

    def get_success_url(self):
        # A one-time password was seen by whoever created the account: replace it first.
        if getattr(self.request.user, "password_change_required", False):
            return reverse("portal:password-change")
        return super().get_success_url()


signin = SignInView.as_view()


@require_POST
def signout(request):
    return auth_views.LogoutView.as_view()(request)


def signin_locked_out(request, credentials=None, *args, **kwargs):
    """What axes shows once an account or address made too many failed attempts."""
    from django.conf import settings

    minutes = round(settings.AXES_COOLOFF_TIME * 60)
    form = SignInForm(request)
    return render(
        request,
        "portal/signin.html",
        {
            "form": form,
            "locked_out": True,
            "locked_out_message": (
                f"Too many failed sign-in attempts. Sign-in is paused for {minutes} minutes "
                "for this account and address; try again later or ask an Owner to reset your password."
            ),
        },
        status=429,
    )
