"""Which grant a recovery uses: this machine's own (primary) grant, or for Cross Region
Restore a read-only grant to the secondary copy that the portal issues, even for this
machine's own backups (its saved grant opens only the primary)."""

from __future__ import annotations

from types import SimpleNamespace

from agents.runtime import protocol
from agents.runtime.recovery.source import resolve_source


class Portal:
    def __init__(self):
        self.asked: list[tuple[str, dict]] = []

    def post(self, path, body):
        self.asked.append((path, body))
        return {"grant": {"kind": "haven-http", "permissions": "rl"}, "machine": {
            "id": body.get("source_machine_id") or body["source_machine"], "name": "web-01"}}  # fmt: skip


REGISTRATION = SimpleNamespace(machine_id="m1", machine_name="web-01", grant={"own": True})


def test_the_primary_copy_of_its_own_backups_needs_no_request():
    portal = Portal()
    source = resolve_source(registration=REGISTRATION, portal=portal)
    assert source.own and source.grant == {"own": True} and not portal.asked


def test_the_secondary_copy_is_asked_for_even_for_its_own_backups():
    portal = Portal()
    source = resolve_source(
        registration=REGISTRATION, portal=portal, region=protocol.REGION_SECONDARY
    )
    assert portal.asked == [
        ("recovery/grant/", {"source_machine_id": "m1", "region": protocol.REGION_SECONDARY})
    ]
    assert source.own and source.region == protocol.REGION_SECONDARY
    assert source.grant == {"kind": "haven-http", "permissions": "rl"}
