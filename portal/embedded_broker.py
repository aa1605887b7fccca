"""The embedded broker (no ``REDIS_URL``): kombu's filesystem transport, with each message
written whole before it can be seen.

Upstream ``_put`` creates ``<time>_<uuid>.<queue>.msg`` and then writes into it, while a
consumer moves and reads any such file without waiting for the writer's lock: a worker that
polled in between read an empty file, failed to decode it, and stopped (and ``make run``
with it). Here the message is written under a name no consumer picks up (it does not end in
``.<queue>.msg``) and renamed into place, which is atomic within the folder, so a consumer
sees either nothing or the whole message. Consumers are unchanged, so an agent reading the
same folder with plain ``filesystem://`` reads these files as before.
"""

from __future__ import annotations

import os
import uuid
from time import monotonic

from kombu.exceptions import ChannelError
from kombu.transport import TRANSPORT_ALIASES, filesystem
from kombu.utils.encoding import str_to_bytes
from kombu.utils.json import dumps

PARTIAL_SUFFIX = ".partial"
SCHEME = "haven-filesystem"  # settings: CELERY_BROKER_URL = "haven-filesystem://localhost//"


class Channel(filesystem.Channel):
    def _put(self, queue, payload, **kwargs):
        name = f"{round(monotonic() * 1000)}_{uuid.uuid4()}.{queue}.msg"
        final = os.path.join(self.data_folder_out, name)
        partial = final + PARTIAL_SUFFIX
        try:
            with open(partial, "wb") as f:
                f.write(str_to_bytes(dumps(payload)))
            os.replace(partial, final)
        except OSError as exc:
            raise ChannelError(f"Cannot add file {final!r} to directory") from exc


class Transport(filesystem.Transport):
    Channel = Channel


# Registered on import: portal.celery imports this module, so every process that builds a
# connection from the settings (web, worker, beat, tests) knows the scheme.
TRANSPORT_ALIASES[SCHEME] = f"{__name__}:Transport"
