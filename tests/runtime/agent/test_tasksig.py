"""Signed task messages: only the portal's key, for this machine, unaltered, recent."""

from __future__ import annotations

import base64
from datetime import UTC, datetime, timedelta

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from agents.runtime.tasksig import AUTH_KWARG, TaskRefused, signed_bytes, verify_task

PORTAL = Ed25519PrivateKey.generate()
PUBLIC = base64.b64encode(
    PORTAL.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
).decode()


def sign(kwargs, *, machine="m-1", task_id="t-1", issued_at=None, expires_at=None, key=PORTAL):
    issued_at = issued_at or datetime.now(UTC).isoformat()
    expires_at = expires_at or (datetime.fromisoformat(issued_at) + timedelta(hours=1)).isoformat()
    data = signed_bytes(
        task="haven.agent.ping",
        task_id=task_id,
        machine_id=machine,
        args=[],
        kwargs=kwargs,
        issued_at=issued_at,
        expires_at=expires_at,
    )
    return {
        **kwargs,
        AUTH_KWARG: {
            "signature": base64.b64encode(key.sign(data)).decode(),
            "issued_at": issued_at,
            "expires_at": expires_at,
        },
    }


def check(kwargs, **overrides):
    params = {
        "task": "haven.agent.ping",
        "task_id": "t-1",
        "args": [],
        "machine_id": "m-1",
        "public_key_b64": PUBLIC,
    }
    params.update(overrides)
    verify_task(kwargs=kwargs, **params)


def test_a_genuine_message_verifies():
    check(sign({"note": "hi", "paths": ("/a", "/b")}))


@pytest.mark.parametrize(
    ("kwargs", "overrides", "reason"),
    [
        ({"note": "hi"}, {}, "is not signed"),
        ({**sign({"note": "hi"}), "note": "bye"}, {}, "does not verify"),
        (sign({"note": "hi"}), {"machine_id": "m-2"}, "does not verify"),
        (sign({"note": "hi"}), {"task_id": "t-2"}, "does not verify"),
        (sign({"note": "hi"}), {"task": "haven.agent.backup"}, "does not verify"),
        (sign({}, key=Ed25519PrivateKey.generate()), {}, "does not verify"),
        (sign({}, issued_at=(datetime.now(UTC) - timedelta(days=31)).isoformat()), {}, "expired"),
        (sign({}, issued_at=(datetime.now(UTC) + timedelta(hours=1)).isoformat()), {}, "clock"),
        (sign({}, issued_at=(datetime.now(UTC) - timedelta(hours=2)).isoformat()), {}, "expired"),
        (
            sign({}, expires_at=(datetime.now(UTC) + timedelta(days=31)).isoformat()),
            {},
            "no valid issue time or expiry",
        ),
    ],
    ids=[
        "unsigned",
        "altered",
        "other-machine",
        "other-id",
        "other-task",
        "forged",
        "old",
        "future",
        "expired",
        "lifetime-too-long",
    ],
)
def test_anything_else_is_refused(kwargs, overrides, reason):
    with pytest.raises(TaskRefused, match=reason):
        check(kwargs, **overrides)
