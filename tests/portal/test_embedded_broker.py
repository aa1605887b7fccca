"""The embedded broker never shows a consumer a message before it is written whole: a
worker that read a half-written file stopped, and `make run` with it."""

from __future__ import annotations

import os

from kombu import Connection

from portal import embedded_broker


def _options(folder):
    return {"data_folder_in": str(folder), "data_folder_out": str(folder)}


def test_a_message_is_invisible_to_consumers_until_it_is_whole(tmp_path, monkeypatch):
    folder = tmp_path / "broker"
    folder.mkdir()
    seen_while_writing = []
    real_replace = os.replace

    def replace(source, target):
        # The moment before the message appears: it is all on disk, under a name no
        # consumer of the queue picks up.
        seen_while_writing.append(sorted(p.name for p in folder.iterdir()))
        assert os.path.getsize(source) > 0
        real_replace(source, target)

    monkeypatch.setattr(embedded_broker.os, "replace", replace)
    with Connection("haven-filesystem://localhost//", transport_options=_options(folder)) as c:
        queue = c.SimpleQueue("portal")
        queue.put({"task": "jobs.sweep"})
        [names] = seen_while_writing
        assert len(names) == 1 and names[0].endswith(".portal.msg.partial")
        # A plain filesystem:// consumer (an agent on the portal's host) reads it as before.
        with Connection("filesystem://localhost//", transport_options=_options(folder)) as plain:
            message = plain.SimpleQueue("portal").get(timeout=2)
            assert message.payload == {"task": "jobs.sweep"}
            message.ack()
        queue.close()
