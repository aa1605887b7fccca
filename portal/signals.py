"""Sessions follow access: when a user signs out, is signed out, deactivated, or loses a
role, their open live sockets hear it at once (``portal.consumers``) and stop passing on
pushes they may no longer see. Connected in ``PortalConfig.ready``."""

from __future__ import annotations

from django.contrib.auth.signals import user_logged_out
from django.contrib.sessions.models import Session
from django.db.models.signals import post_delete, post_save

from portal import realtime
from portal.models import Membership, User

SESSION_ENDED = "session.ended"
ACCESS_CHANGED = "access.changed"


def _signed_out(sender, request, user, **kwargs):
    if user is not None and request is not None:
        realtime.tell_user_sockets(
            user.pk, {"type": SESSION_ENDED, "session_key": request.session.session_key}
        )


def _session_deleted(sender, instance, **kwargs):
    # How "signed out everywhere" works (services._end_sessions deletes the rows).
    user_id = instance.get_decoded().get("_auth_user_id")
    if user_id:
        realtime.tell_user_sockets(
            user_id, {"type": SESSION_ENDED, "session_key": instance.session_key}
        )


def _user_saved(sender, instance, created, update_fields=None, **kwargs):
    if created or (update_fields is not None and set(update_fields) <= {"last_login"}):
        return
    if not instance.is_active or instance.password_change_required:
        realtime.tell_user_sockets(instance.pk, {"type": SESSION_ENDED, "session_key": None})
    else:
        realtime.tell_user_sockets(instance.pk, {"type": ACCESS_CHANGED})


def _membership_changed(sender, instance, **kwargs):
    realtime.tell_user_sockets(instance.user_id, {"type": ACCESS_CHANGED})


def connect() -> None:
    user_logged_out.connect(_signed_out, dispatch_uid="portal.signed_out")
    post_delete.connect(_session_deleted, sender=Session, dispatch_uid="portal.session_deleted")
    post_save.connect(_user_saved, sender=User, dispatch_uid="portal.user_saved")
    post_save.connect(_membership_changed, sender=Membership, dispatch_uid="portal.role_saved")
    post_delete.connect(_membership_changed, sender=Membership, dispatch_uid="portal.role_deleted")
