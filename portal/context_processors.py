"""What every page of the shell needs: the bell's unread count and recent notifications,
and whether to offer user management."""

from portal import access
from portal.models import Notification


def shell(request):
    user = getattr(request, "user", None)
    if user is None or not user.is_authenticated:
        return {}
    recent = list(Notification.objects.filter(user=user)[:20])
    unread = Notification.objects.filter(user=user, read_at__isnull=True).count()
    return {
        "notifications": recent,
        "unread_count": unread,
        "can_manage_users": access.can_manage_users(user),
    }
