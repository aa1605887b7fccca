"""Subscriptions: list, create, overview, rename, delete, and Access control (members)."""

from __future__ import annotations

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied, ValidationError
from django.db.models import Count
from django.http import Http404
from django.shortcuts import redirect, render
from django.urls import reverse
from django.views.decorators.http import require_POST

from portal import access, services, two_factor
from portal.models import Membership, Role, Subscription
from vaults import activity
from vaults.activity import Operation, Outcome


def _errors(exc: ValidationError) -> dict[str, list[str]]:
    """Field errors by field name; errors about the whole form under "form"."""
    if not hasattr(exc, "error_dict"):
        return {"form": exc.messages}
    errors = dict(exc.message_dict)
    if "__all__" in errors:
        errors["form"] = errors.pop("__all__")
    return errors


@login_required
def subscription_list(request):
    subscriptions = (
        access.for_user(request.user, Subscription)
        .annotate(group_count=Count("resource_groups", distinct=True))
        .order_by("name")
    )
    roles = dict(
        Membership.objects.filter(user=request.user).values_list("subscription_id", "role")
    )
    rows = [
        (s, roles.get(s.pk, Role.OWNER if request.user.is_superuser else None))
        for s in subscriptions
    ]
    return render(
        request,
        "portal/subscription_list.html",
        {"rows": rows, "can_create": access.can_create_subscriptions(request.user)},
    )


# The vault create page sends a newcomer here with ``return_to=vault-create``; once the
# subscription exists they go back to the vault form with it selected. A fixed name, not a
# URL, so this can never redirect anywhere else.
RETURN_TO_VAULT_CREATE = "vault-create"


@login_required
def subscription_create(request):
    if not access.can_create_subscriptions(request.user):
        raise PermissionDenied(
            "Creating subscriptions needs the Owner role on a subscription, or an administrator."
        )
    source = request.POST if request.method == "POST" else request.GET
    name = request.POST.get("name", "") if request.method == "POST" else ""
    return_to = RETURN_TO_VAULT_CREATE if source.get("return_to") == RETURN_TO_VAULT_CREATE else ""
    errors: dict[str, list[str]] = {}
    if request.method == "POST":
        if request.htmx and request.POST.get("_validate") == "name":
            errors = {"name": services.subscription_name_check(name=name)} if name else {}
            return render(
                request,
                "portal/subscription_create.html#name-errors",
                {"name": name, "errors": errors},
            )
        try:
            subscription = services.subscription_create(name=name, owner=request.user)
        except ValidationError as exc:
            errors = _errors(exc)
        else:
            messages.success(request, f"Subscription '{subscription.name}' created.")
            if return_to:
                return redirect(f"{reverse('vaults:create')}?subscription={subscription.pk}")
            return redirect("portal:subscription", subscription.pk)
    return render(
        request,
        "portal/subscription_create.html",
        {
            "name": name,
            "errors": errors,
            "rule": services.SUBSCRIPTION_NAME_RULE,
            "return_to": return_to,
        },
        status=400 if errors else 200,
    )


@login_required
def subscription_detail(request, subscription_id):
    subscription = access.subscription_for_user(request.user, subscription_id)
    role = access.role_in(request.user, subscription.pk)
    groups = subscription.resource_groups.all()
    owners = Membership.objects.filter(subscription=subscription, role=Role.OWNER).select_related(
        "user"
    )
    return render(
        request,
        "portal/subscription_detail.html",
        {
            "subscription": subscription,
            "role": role,
            "groups": groups,
            "owners": owners,
            "member_count": subscription.memberships.count(),
            "can_contribute": Role.rank(role) >= Role.rank(Role.CONTRIBUTOR),
            "is_owner": role == Role.OWNER,
            "tab": "overview",
        },
    )


@login_required
def subscription_rename(request, subscription_id):
    subscription = access.subscription_for_user(request.user, subscription_id, role=Role.OWNER)
    name = request.POST.get("name", subscription.name) if request.method == "POST" else ""
    errors: dict[str, list[str]] = {}
    if request.method == "POST":
        if request.htmx and request.POST.get("_validate") == "name":
            problems = services.subscription_name_check(name=name, exclude_id=subscription.pk)
            return render(
                request,
                "portal/subscription_rename.html#name-errors",
                {"name": name, "errors": {"name": problems} if name else {}},
            )
        try:
            services.subscription_rename(subscription=subscription, name=name)
        except ValidationError as exc:
            errors = _errors(exc)
        else:
            messages.success(request, f"Subscription renamed to '{subscription.name}'.")
            return redirect("portal:subscription", subscription.pk)
    return render(
        request,
        "portal/subscription_rename.html",
        {
            "subscription": subscription,
            "name": name or subscription.name,
            "errors": errors,
            "rule": services.SUBSCRIPTION_NAME_RULE,
            "tab": "settings",
            "is_owner": True,
        },
        status=400 if errors else 200,
    )


@login_required
def subscription_delete(request, subscription_id):
    subscription = access.subscription_for_user(request.user, subscription_id, role=Role.OWNER)
    blockers = services.contents_of(subscription, ignore=services._OWNED_BY_SUBSCRIPTION)
    refusal = ""
    if request.method == "POST":
        try:
            services.subscription_delete(subscription=subscription)
        except services.Refused as exc:
            refusal = str(exc)
        else:
            messages.success(request, f"Subscription '{subscription.name}' deleted.")
            return redirect("portal:subscriptions")
    return render(
        request,
        "portal/subscription_delete.html",
        {
            "subscription": subscription,
            "blockers": blockers,
            "refusal": refusal,
            "tab": "settings",
            "is_owner": True,
        },
        status=409 if refusal else 200,
    )


@login_required
def subscription_access(request, subscription_id):
    """Access control (IAM): who has which role; Owners add members."""
    subscription = access.subscription_for_user(request.user, subscription_id)
    role = access.role_in(request.user, subscription.pk)
    errors: dict[str, list[str]] = {}
    form = {"username": "", "role": Role.READER}
    status = 200
    if request.method == "POST":
        form = {"username": request.POST.get("username", ""), "role": request.POST.get("role", "")}
        _owner_only(request, subscription, Operation.ROLE_ADD, detail=dict(form))
        try:
            membership = services.membership_add(
                subscription=subscription, username=form["username"], role=form["role"]
            )
        except ValidationError as exc:
            errors = _errors(exc)
            status = 400
        else:
            activity.record(
                operation=Operation.ROLE_ADD,
                request=request,
                subscription=subscription,
                resource=_assignment(membership),
                detail={"user": membership.user.username, "role": membership.role},
            )
            messages.success(
                request,
                f"{membership.user.username} is now {membership.get_role_display()} of "
                f"{subscription}.",
            )
            return redirect("portal:subscription-access", subscription.pk)
    members = (
        Membership.objects.filter(subscription=subscription)
        .select_related("user")
        .annotate(two_factor=two_factor.enrolled_exists("user"))
        .order_by("user__username")
    )
    return render(
        request,
        "portal/subscription_access.html",
        {
            "subscription": subscription,
            "role": role,
            "members": members,
            "roles": Role.choices,
            "is_owner": role == Role.OWNER,
            "errors": errors,
            "form": form,
            "tab": "access",
        },
        status=status,
    )


@login_required
@require_POST
def subscription_two_factor(request, subscription_id):
    """The Owner requires (or stops requiring) two-factor sign-in of every member."""
    subscription = access.subscription_for_user(request.user, subscription_id)
    required = request.POST.get("require") == "on"
    _owner_only(request, subscription, Operation.TWO_FACTOR_REQUIRE, detail={"required": required})
    try:
        changed = two_factor.subscription_require_set(
            subscription=subscription, required=required, by=request.user
        )
    except ValidationError as exc:
        messages.error(request, " ".join(exc.messages))
        return redirect("portal:subscription-access", subscription.pk)
    if changed:
        activity.record(
            operation=Operation.TWO_FACTOR_REQUIRE,
            request=request,
            subscription=subscription,
            resource=subscription,
            detail={"required": required},
        )
    messages.success(
        request,
        f"Members of {subscription} must now sign in with a second factor; those who have "
        "not set one up are taken to set-up at their next page."
        if required
        else f"Members of {subscription} may sign in with the password alone again.",
    )
    return redirect("portal:subscription-access", subscription.pk)


def _owner_only(request, subscription, operation: str, *, resource=None, detail=None) -> None:
    """Changing role assignments needs the Owner role; a lower role's attempt is refused
    into the subscription's activity log."""
    with activity.refusals_recorded(
        operation=operation,
        refused=(PermissionDenied,),
        request=request,
        subscription=subscription,
        resource=resource,
        detail=detail,
    ):
        access.check_role(request.user, subscription.pk, Role.OWNER)


def _assignment(membership: Membership) -> activity.Resource:
    return activity.Resource(
        kind="role assignment", id=str(membership.pk), name=membership.user.username
    )


def _membership(request, subscription_id, membership_id, operation: str) -> Membership:
    subscription = access.subscription_for_user(request.user, subscription_id)
    try:
        membership = Membership.objects.select_related("user", "subscription").get(
            pk=membership_id, subscription=subscription
        )
    except Membership.DoesNotExist:
        raise Http404("No such role assignment") from None
    _owner_only(request, subscription, operation, resource=_assignment(membership))
    return membership


def _refused(request, membership, operation: str, exc: Exception, detail: dict) -> None:
    activity.record(
        operation=operation,
        request=request,
        subscription=membership.subscription,
        resource=_assignment(membership),
        outcome=Outcome.REFUSED,
        reason=str(exc),
        detail=detail,
    )


@login_required
@require_POST
def membership_role(request, subscription_id, membership_id):
    membership = _membership(request, subscription_id, membership_id, Operation.ROLE_CHANGE)
    before = membership.role
    wanted = request.POST.get("role", "")
    change = {"user": membership.user.username, "from": before, "to": wanted}
    try:
        services.membership_set_role(membership=membership, role=wanted)
    except ValidationError as exc:
        messages.error(request, " ".join(exc.messages))
    except services.Refused as exc:
        _refused(request, membership, Operation.ROLE_CHANGE, exc, change)
        messages.error(request, str(exc))
    else:
        membership.refresh_from_db()
        if membership.role != before:
            activity.record(
                operation=Operation.ROLE_CHANGE,
                request=request,
                subscription=membership.subscription,
                resource=_assignment(membership),
                detail=change,
            )
        messages.success(
            request, f"{membership.user.username} is now {membership.get_role_display()}."
        )
    return redirect("portal:subscription-access", subscription_id)


@login_required
@require_POST
def membership_remove(request, subscription_id, membership_id):
    membership = _membership(request, subscription_id, membership_id, Operation.ROLE_REMOVE)
    removed = {"user": membership.user.username, "role": membership.role}
    try:
        services.membership_remove(membership=membership)
    except services.Refused as exc:
        _refused(request, membership, Operation.ROLE_REMOVE, exc, removed)
        messages.error(request, str(exc))
    else:
        activity.record(
            operation=Operation.ROLE_REMOVE,
            request=request,
            subscription=membership.subscription,
            resource=_assignment(membership),
            detail=removed,
        )
        messages.success(
            request,
            f"{membership.user.username} no longer has access to {membership.subscription}.",
        )
        if membership.user_id == request.user.pk and not access.role_in(
            request.user, membership.subscription_id
        ):
            return redirect("portal:subscriptions")
    return redirect("portal:subscription-access", subscription_id)
