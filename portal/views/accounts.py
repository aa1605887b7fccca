"""Your own password and access tokens, and user management for Owners and administrators."""

from __future__ import annotations

from django.contrib import messages
from django.contrib.auth import update_session_auth_hash
from django.contrib.auth.decorators import login_required
from django.contrib.auth.forms import PasswordChangeForm
from django.core.exceptions import PermissionDenied, ValidationError
from django.db.models import Prefetch
from django.http import Http404
from django.shortcuts import redirect, render
from django.utils import timezone
from django.views.decorators.http import require_GET, require_POST

from portal import access, services, tokens, two_factor
from portal.models import Membership, PersonalAccessToken, Role
from vaults import activity, selectors
from vaults.activity import Operation


@login_required
def password_change(request):
    form = PasswordChangeForm(request.user, request.POST or None)
    if request.method == "POST" and form.is_valid():
        services.user_password_change(
            user=request.user, password=form.cleaned_data["new_password1"]
        )
        update_session_auth_hash(request, request.user)
        messages.success(request, "Your password was changed.")
        return redirect("portal:home")
    return render(
        request,
        "portal/password_change.html",
        {"form": form},
        status=400 if form.errors else 200,
    )


@login_required
def user_list(request):
    access.require_user_manager(request.user)
    users = (
        access.managed_users(request.user)
        .prefetch_related(
            Prefetch(
                "memberships",
                queryset=Membership.objects.select_related("subscription").order_by(
                    "subscription__name"
                ),
            )
        )
        .annotate(two_factor=two_factor.enrolled_exists("pk"))
        .order_by("username")
    )
    return render(request, "portal/user_list.html", {"users": users})


@login_required
@require_GET
def signin_activity(request):
    """Every sign-in pause of the portal, for its administrators: those of names with no
    account and of guessed access tokens belong to no subscription, so no Owner sees them
    in a subscription's log. Anyone else gets 404."""
    access.require_superuser(request.user)
    filters = selectors.ActivityFilters.from_query(request.GET)
    page = selectors.activity_page(
        selectors.activity_filtered(selectors.signin_pauses(), filters),
        request.GET.get("page", 1),
    )
    return render(
        request,
        "portal/signin_activity.html",
        {
            "page": page,
            "filters": filters,
            "query": filters.as_query(),
            "ranges": [(key, label) for key, (label, _) in selectors.ACTIVITY_RANGES.items()],
            "api_token_name": tokens.THROTTLE_ACCOUNT,
        },
    )


@login_required
def user_create(request):
    access.require_user_manager(request.user)
    owned = access.owned_subscriptions(request.user).order_by("name")
    data = {
        "username": request.POST.get("username", ""),
        "full_name": request.POST.get("full_name", ""),
        "email": request.POST.get("email", ""),
        "subscription": request.POST.get("subscription", ""),
        "role": request.POST.get("role", Role.READER),
    }
    errors: dict[str, list[str]] = {}
    if request.method == "POST":
        subscription = None
        if data["subscription"]:
            subscription = access.subscription_for_user(
                request.user, data["subscription"], role=Role.OWNER
            )
        elif not request.user.is_superuser:
            errors["subscription"] = [
                "Choose one of your subscriptions: the new user starts with a role on it."
            ]
        if not errors:
            try:
                user, password = services.user_create(
                    username=data["username"],
                    full_name=data["full_name"],
                    email=data["email"],
                    subscription=subscription,
                    role=data["role"],
                )
            except ValidationError as exc:
                errors = exc.message_dict
            else:
                # Shown on this response only: never stored, never in a redirect or a message.
                return render(
                    request,
                    "portal/user_password_shown.html",
                    {"target": user, "password": password, "created": True},
                )
    return render(
        request,
        "portal/user_create.html",
        {"data": data, "errors": errors, "owned": owned, "roles": Role.choices},
        status=400 if errors else 200,
    )


@login_required
@require_POST
def user_deactivate(request, user_id):
    target = access.user_for_manager(request.user, user_id)
    try:
        services.user_set_active(user=target, active=False)
    except services.Refused as exc:
        messages.error(request, str(exc))
    else:
        messages.success(request, f"{target.username} is deactivated and signed out everywhere.")
    return redirect("portal:users")


@login_required
@require_POST
def user_activate(request, user_id):
    target = access.user_for_manager(request.user, user_id)
    services.user_set_active(user=target, active=True)
    messages.success(request, f"{target.username} can sign in again.")
    return redirect("portal:users")


@login_required
@require_POST
def user_reset_password(request, user_id):
    target = access.user_for_manager(request.user, user_id)
    if not target.is_active:
        raise PermissionDenied("Activate the account before resetting its password.")
    password = services.user_password_reset(user=target)
    return render(
        request,
        "portal/user_password_shown.html",
        {"target": target, "password": password, "created": False},
    )


@login_required
@require_POST
def user_reset_two_factor(request, user_id):
    """A lost phone: the Owner (or an administrator) removes the user's second factors, so
    they sign in with the password alone and enrol again. Audited in each subscription."""
    target = access.user_for_manager(request.user, user_id)
    two_factor.reset(user=target)
    resource = activity.Resource(kind="user", id=str(target.pk), name=target.username)
    # In each of the user's subscriptions (an administrator's reset of a user with none:
    # one entry outside any subscription).
    for subscription in [
        m.subscription for m in target.memberships.select_related("subscription")
    ] or [None]:
        activity.record(
            operation=Operation.TWO_FACTOR_RESET,
            request=request,
            subscription=subscription,
            resource=resource,
        )
    messages.success(
        request,
        f"Two-factor sign-in of {target.username} is reset: they sign in with the password "
        "and set it up again.",
    )
    return redirect("portal:users")


# --- Two-factor sign-in (portal.two_factor) ------------------------------------------------
@login_required
def two_factor_page(request):
    """Set up, confirm, regenerate recovery codes, or turn off two-factor sign-in. The
    recovery codes are on the confirming (or regenerating) response only."""
    user = request.user
    action = request.POST.get("action", "") if request.method == "POST" else ""
    errors: dict[str, list[str]] = {}
    codes: list[str] = []
    if action == "start" and not two_factor.is_enrolled(user):
        two_factor.enrolment_start(user=user)
    elif action == "confirm":
        device = two_factor.enrolment_pending(user)
        if device is None:
            errors["code"] = ["Start the set-up again: it was finished or cancelled."]
        else:
            try:
                codes = two_factor.enrolment_confirm(
                    request=request, device=device, code=request.POST.get("code", "")
                )
            except two_factor.CodeRefused as exc:
                errors["code"] = [str(exc)]
    elif action == "regenerate" and two_factor.is_enrolled(user):
        codes = two_factor.recovery_codes_regenerate(user=user)
    elif action == "disable" and two_factor.is_enrolled(user):
        try:
            two_factor.disable(
                user=user,
                code=request.POST.get("code", ""),
                password=request.POST.get("password", ""),
            )
        except ValidationError as exc:
            errors = exc.message_dict
        else:
            messages.success(request, "Two-factor sign-in is off.")
            return redirect("portal:two-factor")
    elif action and action not in ("start", "regenerate", "disable"):
        errors["__all__"] = ["Unknown action."]
    enrolled = two_factor.is_enrolled(user)
    pending = None if enrolled else two_factor.enrolment_pending(user)
    context = {
        "enrolled": enrolled,
        "pending": pending,
        "secret": two_factor.secret_text(pending) if pending else "",
        "qr": two_factor.qr_svg(pending) if pending else "",
        "codes": codes,
        "codes_left": two_factor.recovery_codes_left(user) if enrolled else 0,
        "required_by": list(two_factor.requiring_subscriptions(user).order_by("name")),
        "errors": errors,
        "general_errors": errors.get("__all__", []),
    }
    response = render(
        request, "portal/account_two_factor.html", context, status=400 if errors else 200
    )
    # The secret and the recovery codes are on this page: no cache may keep a copy.
    response["Cache-Control"] = "no-store"
    return response


# --- Personal access tokens (the REST API, docs/api.md) --------------------------------------
@login_required
def token_list(request):
    """Your access tokens: create one (shown once, on this response only) and revoke."""
    data = {"name": request.POST.get("name", "")[:200], "days": request.POST.get("days", "")}
    errors: dict[str, list[str]] = {}
    created = None
    if request.method == "POST":
        try:
            created = tokens.token_create(user=request.user, name=data["name"], days=data["days"])
        except ValidationError as exc:
            errors = exc.message_dict
        else:
            data = {"name": "", "days": ""}
    now = timezone.now()
    rows = [(token, token.status(now)) for token in tokens.tokens_of(request.user)]
    response = render(
        request,
        "portal/account_tokens.html",
        {
            "rows": rows,
            "data": data,
            "errors": errors,
            "created": created[0] if created else None,
            "secret": created[1] if created else "",
            "day_choices": tokens.DAY_CHOICES,
            "default_days": tokens.DEFAULT_DAYS,
        },
        status=400 if errors else 200,
    )
    # The token is on this page once: no cache may keep a copy.
    response["Cache-Control"] = "no-store"
    return response


@login_required
@require_POST
def token_revoke(request, token_id):
    try:
        token = tokens.token_revoke(user=request.user, token_id=token_id)
    except PersonalAccessToken.DoesNotExist:
        raise Http404("No such token") from None
    messages.success(request, f"Token {token.name!r} is revoked: it no longer works.")
    return redirect("portal:tokens")
