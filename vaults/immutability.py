"""The immutable vault (Properties › Immutable vault; docs/protection.md).

While a vault's immutability is *Enabled* or *Locked*, no operation that could lose recovery
points before their retention ends is allowed: stop protection and delete backup data,
lowering the retention of a policy, turning soft delete off or shortening it. Each service
that does one of these asks ``blocked_reason`` first and refuses with its words, which name
immutability. *Enabled* can be disabled again; *Locked* cannot (``vaults.services.
vault_immutability_set`` owns the state machine). Data soft deleted before immutability was
enabled keeps its course: it can be undeleted, and is purged when its period ends.
"""

from __future__ import annotations

from vaults.models import Vault

Immutability = Vault.Immutability


def is_immutable(vault: Vault) -> bool:
    return vault.immutability != Immutability.DISABLED


def blocked_reason(vault: Vault, *, action: str) -> str:
    """Why ``action`` ("deleting backup data") is refused on ``vault``, or "" if allowed."""
    if not is_immutable(vault):
        return ""
    if vault.immutability == Immutability.LOCKED:
        after = "Immutability is locked for this vault and cannot be disabled."
    else:
        after = "To do it, disable immutability first under Properties › Immutable vault."
    return (
        f"Vault {vault.name} is an immutable vault ({vault.get_immutability_display().lower()}): "
        f"{action} is blocked, because it could lose recovery points. {after}"
    )
