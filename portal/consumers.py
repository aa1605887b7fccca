"""Websocket consumers of the portal shell."""

from __future__ import annotations

from channels.generic.websocket import AsyncWebsocketConsumer

from portal import realtime


class LiveConsumer(AsyncWebsocketConsumer):
    """One socket per page: the user's own group (notifications) plus the groups the page
    asks for by query string, each checked by the app that owns it (see ``portal.live``)."""

    async def connect(self):
        user = self.scope.get("user")
        if user is None or not user.is_authenticated:
            await self.close(code=4401)
            return
        from portal.live import allowed_groups

        self.groups_joined = [realtime.group_for_user(user.pk)]
        self.groups_joined += await allowed_groups(user, self.scope.get("query_string", b""))
        for group in self.groups_joined:
            await self.channel_layer.group_add(group, self.channel_name)
        await self.accept()

    async def disconnect(self, code):
        for group in getattr(self, "groups_joined", []):
            await self.channel_layer.group_discard(group, self.channel_name)

    async def fragment(self, event):
        await self.send(text_data=event["html"])
