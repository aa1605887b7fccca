"""Websocket consumers of the portal shell."""

from __future__ import annotations

import asyncio
import time

from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncWebsocketConsumer

from portal import live, realtime, two_factor
from portal.pools import db_in_executor

# How long a "still allowed" answer is trusted before a push asks the database again.
# Changes to access also arrive at once as an "access.changed" message (portal.signals).
RECHECK_SECONDS = 5.0
# Once an answer is this old, a push asks again in the background and is passed on under
# the answer it has: a socket waits for the database only when its answer has outlived
# RECHECK_SECONDS (on a busy process the question took 0.5-1.2 s, every pushes of that
# socket held meanwhile).
REFRESH_AFTER_SECONDS = 3.0
CLOSE_UNAUTHENTICATED = 4401
CLOSE_FORBIDDEN = 4403

_still_allowed = db_in_executor(live.still_allowed)
# The process's latest answers, by (user, the groups asked about): the sockets of one user
# watching the same things (a vault open in several tabs, the many watchers of one fleet)
# share one query every RECHECK_SECONDS, and one still under way is awaited, not repeated.
_answers: dict[tuple, tuple[float, set[str] | None]] = {}  # key -> (asked at, answer)
_asking: dict[tuple, asyncio.Future] = {}
# When the answers of a user (None: of everyone) were last forgotten: an answer asked
# before then and arriving after is given to its askers but not kept.
_forgotten_at: dict = {}
ANSWERS_KEPT = 10_000


async def still_allowed(
    user_id, watches: dict, *, fresh: bool = False, max_age: float | None = None
) -> tuple[float, set[str] | None]:
    """``live.still_allowed`` on the event loop's executor (side by side, not queued on
    asgiref's one shared thread behind every socket's database work), with the time it was
    asked (monotonic). The last answer to the same question is given again while it is
    under ``max_age`` (``RECHECK_SECONDS``) old, so no socket trusts one older than that;
    ``fresh`` (access changed) always asks the database."""
    key = (user_id, frozenset(watches))
    if not fresh:
        known = _answers.get(key)
        limit = RECHECK_SECONDS if max_age is None else max_age
        if known is not None and time.monotonic() - known[0] <= limit:
            return known
        under_way = _asking.get(key)
        if under_way is not None:
            return await asyncio.shield(under_way)
    asked = time.monotonic()
    future = asyncio.get_running_loop().create_future()
    _asking[key] = future
    try:
        answer = (asked, await _still_allowed(user_id, dict(watches)))
    except asyncio.CancelledError:
        future.cancel()
        raise
    except Exception as exc:
        future.set_exception(exc)
        future.exception()  # retrieved: no "never retrieved" warning when nobody waited
        raise
    finally:
        if _asking.get(key) is future:
            del _asking[key]
    if len(_answers) >= ANSWERS_KEPT:
        _answers.clear()
    forgotten = max(_forgotten_at.get(user_id, -1.0), _forgotten_at.get(None, -1.0))
    if asked > forgotten:
        _answers[key] = answer
    future.set_result(answer)
    return answer


def forget_answers(user_id=None) -> None:
    """Drop the remembered answers (of one user, or all)."""
    _forgotten_at[user_id] = time.monotonic()
    if len(_forgotten_at) > ANSWERS_KEPT:
        _forgotten_at.clear()
        _forgotten_at[None] = time.monotonic()
    for key in [k for k in _answers if user_id is None or k[0] == user_id]:
        del _answers[key]


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
        session = self.scope.get("session")
        if not live.may_listen(user) or await database_sync_to_async(two_factor.pending_step)(
            user, session
        ):
            # Signed in with the password but not the second factor: nothing live either.
            await self.close(code=CLOSE_FORBIDDEN)
            return
        self.user_id = user.pk
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
        refreshing = getattr(self, "refreshing", None)
        if refreshing is not None:
            refreshing.cancel()
        for group in getattr(self, "groups_joined", []):
            await self.channel_layer.group_discard(group, self.channel_name)
        self.groups_joined = []

    async def fragment(self, event):
        if getattr(self, "ended", False):
            return
        group = event.get("group")
        if group in self.watches:
            age = time.monotonic() - self.checked_at
            if age > RECHECK_SECONDS:
                await self._recheck()
            elif age > REFRESH_AFTER_SECONDS:
                self._refresh_soon()
        if group is not None and group not in self.groups_joined:
            return  # left since the push was queued
        await self.send(text_data=event["html"])

    async def access_changed(self, event):
        """The user's roles or account changed (portal.signals): check every watch now."""
        forget_answers(self.user_id)
        await self._recheck(fresh=True)

    async def session_ended(self, event):
        """The user signed out (this session, or all of them when no key is given)."""
        key = event.get("session_key")
        if key is None or key == self.session_key:
            await self._end()

    def _refresh_soon(self):
        """Ask again in the background (one question at a time per socket)."""
        refreshing = getattr(self, "refreshing", None)
        if refreshing is None or refreshing.done():
            self.refreshing = asyncio.ensure_future(self._recheck(max_age=REFRESH_AFTER_SECONDS))

    async def _recheck(self, *, fresh: bool = False, max_age: float | None = None):
        asked_at, allowed = await still_allowed(
            self.user_id, self.watches, fresh=fresh, max_age=max_age
        )
        self.checked_at = max(self.checked_at, asked_at)
        if allowed is None:
            await self._end()
            return
        for group in [g for g in self.watches if g not in allowed]:
            del self.watches[group]
            if group in self.groups_joined:
                self.groups_joined.remove(group)
            await self.channel_layer.group_discard(group, self.channel_name)

    async def _end(self):
        if getattr(self, "ended", False):
            return  # a sign-out and a deactivation may both say so
        self.ended = True
        await self.disconnect(CLOSE_FORBIDDEN)
        await self.close(code=CLOSE_FORBIDDEN)
