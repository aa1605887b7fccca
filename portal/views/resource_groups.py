"""Resource groups: list, create, overview (what is in them), rename, delete when empty."""

from __future__ import annotations

from django.conf import settings
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import ValidationError
from django.shortcuts import redirect, render

from portal import access, services
from portal.models import ResourceGroup, Role, Subscription


def _errors(exc: ValidationError) -> dict[str, list[str]]:
    """Field errors by field name; errors about the whole form under "form"."""
    if not hasattr(exc, "error_dict"):
        return {"form": exc.messages}
    errors = dict(exc.message_dict)
    if "__all__" in errors:
        errors["form"] = errors.pop("__all__")
    return errors


@login_required
def resource_group_list(request):
    groups = access.for_user(request.user, ResourceGroup).select_related("subscription")
    subscription_id = request.GET.get("subscription", "")
    if subscription_id:
        try:
            groups = groups.filter(subscription_id=subscription_id)
        except ValidationError:
            subscription_id = ""
    return render(
        request,
        "portal/resource_group_list.html",
        {
            "groups": groups.order_by("name"),
            "subscriptions": access.for_user(request.user, Subscription),
            "subscription_id": subscription_id,
            "can_create": access.subscriptions_with_role(request.user, Role.CONTRIBUTOR).exists(),
        },
    )


@login_required
def resource_group_create(request):
    choices = access.subscriptions_with_role(request.user, Role.CONTRIBUTOR).order_by("name")
    data = {
        "subscription": request.POST.get("subscription", request.GET.get("subscription", "")),
        "name": request.POST.get("name", ""),
        "location": request.POST.get("location", settings.HAVEN_REGIONS[0]),
    }
    errors: dict[str, list[str]] = {}
    if request.method == "POST":
        subscription = None
        if data["subscription"]:
            subscription = access.subscription_for_user(
                request.user, data["subscription"], role=Role.CONTRIBUTOR
            )
        if request.htmx and request.POST.get("_validate") == "name":
            problems = (
                services.resource_group_name_check(subscription=subscription, name=data["name"])
                if data["name"]
                else []
            )
            return render(
                request,
                "portal/resource_group_create.html#name-errors",
                {"data": data, "errors": {"name": problems}},
            )
        if subscription is None:
            errors["subscription"] = ["Choose a subscription."]
        elif data["location"] not in settings.HAVEN_REGIONS:
            errors["location"] = ["Choose one of the regions."]
        else:
            try:
                group = services.resource_group_create(
                    subscription=subscription,
                    name=data["name"],
                    location=data["location"],
                    by=request.user,
                )
            except ValidationError as exc:
                errors = _errors(exc)
            else:
                messages.success(request, f"Resource group '{group.name}' created.")
                return redirect("portal:resource-group", group.pk)
    return render(
        request,
        "portal/resource_group_create.html",
        {
            "data": data,
            "errors": errors,
            "choices": choices,
            "regions": settings.HAVEN_REGIONS,
            "rule": services.RESOURCE_GROUP_NAME_RULE,
        },
        status=400 if errors else 200,
    )


@login_required
def resource_group_detail(request, group_id):
    group = access.get_for_user(
        request.user, ResourceGroup.objects.select_related("subscription"), pk=group_id
    )
    role = access.role_in(request.user, group.subscription_id)
    return render(
        request,
        "portal/resource_group_detail.html",
        {
            "group": group,
            "role": role,
            "contents": services.contents_of(group),
            "can_contribute": Role.rank(role) >= Role.rank(Role.CONTRIBUTOR),
            "tab": "overview",
        },
    )


@login_required
def resource_group_rename(request, group_id):
    group = access.get_for_user(
        request.user,
        ResourceGroup.objects.select_related("subscription"),
        role=Role.CONTRIBUTOR,
        pk=group_id,
    )
    name = request.POST.get("name", "") if request.method == "POST" else group.name
    errors: dict[str, list[str]] = {}
    if request.method == "POST":
        if request.htmx and request.POST.get("_validate") == "name":
            problems = []
            if name and name.strip().lower() != group.name.lower():
                problems = services.resource_group_name_check(
                    subscription=group.subscription, name=name
                )
            elif name:
                problems = services.resource_group_name_problems(name.strip())
            return render(
                request,
                "portal/resource_group_rename.html#name-errors",
                {"name": name, "errors": {"name": problems}},
            )
        try:
            services.resource_group_rename(group=group, name=name)
        except ValidationError as exc:
            errors = _errors(exc)
        else:
            messages.success(request, f"Resource group renamed to '{group.name}'.")
            return redirect("portal:resource-group", group.pk)
    return render(
        request,
        "portal/resource_group_rename.html",
        {
            "group": group,
            "name": name,
            "errors": errors,
            "rule": services.RESOURCE_GROUP_NAME_RULE,
            "tab": "settings",
            "can_contribute": True,
        },
        status=400 if errors else 200,
    )


@login_required
def resource_group_delete(request, group_id):
    group = access.get_for_user(
        request.user,
        ResourceGroup.objects.select_related("subscription"),
        role=Role.CONTRIBUTOR,
        pk=group_id,
    )
    refusal = ""
    if request.method == "POST":
        try:
            services.resource_group_delete(group=group)
        except services.Refused as exc:
            refusal = str(exc)
        else:
            messages.success(request, f"Resource group '{group.name}' deleted.")
            return redirect("portal:resource-groups")
    return render(
        request,
        "portal/resource_group_delete.html",
        {
            "group": group,
            "contents": services.contents_of(group),
            "refusal": refusal,
            "tab": "settings",
            "can_contribute": True,
        },
        status=409 if refusal else 200,
    )
