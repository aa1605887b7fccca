"""Websocket consumers of the portal shell."""

from __future__ import annotations

import time

from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncWebsocketConsumer

from portal import live, realtime

# How long a "still allowed" answer is trusted before a push asks the database again.
# Changes to access also arrive at once as an "access.changed" message (portal.signals).
RECHECK_SECONDS = 5.0
CLOSE_UNAUTHENTICATED = 4401
CLOSE_FORBIDDEN = 4403


class LiveConsumer(AsyncWebsocketConsumer):
    """One socket per page: the user's own group (notifications) plus the groups the page
    asks for by query string, each checked by the app that owns it (see ``portal.live``).

    Access is checked on connect and again before a watched group's push is passed on
    (at most every few seconds): a user whose role was removed, who was deactivated or
    signed out stops hearing the vault at once."""

    async def connect(self):
        user = self.scope.get("user")
        if user is None or not user.is_authenticated:
            await self.close(code=CLOSE_UNAUTHENTICATED)
            return
        if not live.may_listen(user):
            await self.close(code=CLOSE_FORBIDDEN)
            return
        self.user_id = user.pk
        session = self.scope.get("session")
        self.session_key = getattr(session, "session_key", None)
        self.watches = await database_sync_to_async(live.resolve_watches)(
            user, self.scope.get("query_string", b"")
        )
        self.checked_at = time.monotonic()
        self.groups_joined = [realtime.group_for_user(user.pk), *self.watches]
        for group in self.groups_joined:
            await self.channel_layer.group_add(group, self.channel_name)
        await self.accept()

    async def disconnect(self, code):
        for group in getattr(self, "groups_joined", []):
            await self.channel_layer.group_discard(group, self.channel_name)
        self.groups_joined = []

    async def fragment(self, event):
        if getattr(self, "ended", False):
            return
        group = event.get("group")
        if group in self.watches and time.monotonic() - self.checked_at > RECHECK_SECONDS:
            await self._recheck()
        if group is not None and group not in self.groups_joined:
            return  # left since the push was queued
        await self.send(text_data=event["html"])

    async def access_changed(self, event):
        """The user's roles or account changed (portal.signals): check every watch now."""
        await self._recheck()

    async def session_ended(self, event):
        """The user signed out (this session, or all of them when no key is given)."""
        key = event.get("session_key")
        if key is None or key == self.session_key:
            await self._end()

    async def _recheck(self):
        allowed = await database_sync_to_async(live.still_allowed)(self.user_id, self.watches)
        self.checked_at = time.monotonic()
        if allowed is None:
            await self._end()
            return
        for group in [g for g in self.watches if g not in allowed]:
            del self.watches[group]
            self.groups_joined.remove(group)
            await self.channel_layer.group_discard(group, self.channel_name)

    async def _end(self):
        if getattr(self, "ended", False):
            return  # a sign-out and a deactivation may both say so
        self.ended = True
        await self.disconnect(CLOSE_FORBIDDEN)
        await self.close(code=CLOSE_FORBIDDEN)
