"""The bell: the full list, its dropdown (refetched when the socket reconnects), mark all read."""

from __future__ import annotations

from django.contrib.auth.decorators import login_required
from django.shortcuts import redirect, render
from django.views.decorators.http import require_POST

from portal import services
from portal.models import Notification


@login_required
def notification_list(request):
    return render(
        request,
        "portal/notification_list.html",
        {"all_notifications": Notification.objects.filter(user=request.user)[:200]},
    )


@login_required
def bell(request):
    """The bell as it is in the database; the page refetches it after a socket reconnect."""
    if request.htmx:
        return render(request, "portal/_bell.html")
    return redirect("portal:notifications")


@login_required
@require_POST
def mark_all_read(request):
    services.notifications_mark_read(user=request.user)
    if request.htmx:
        # The push reaches every open page; this response updates the one that asked
        # even when its socket is down.
        # The shell's context processor supplies the bell, read after the update.
        return render(request, "portal/_notifications_push.html")
    return redirect("portal:notifications")
