"""A vault's data on both sides: the primary account and, for a geo-redundant vault, the
secondary one (``secondary_account()``). Copying is the replication worker's
(``jobs.services.replication``); deleting on both sides is here, for every caller that
deletes a machine's blobs (retention, pack collection, removal of a machine's data).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass, field

from agents.runtime.blobstore import BlobNotFound, ContainerNotFound, StorageError
from vaults.storage.accounts import StorageAccount, primary_account, secondary_account

log = logging.getLogger(__name__)


def secondary_for(vault) -> StorageAccount | None:
    """The secondary account holding ``vault``'s copies, or None (not geo-redundant, or no
    secondary configured on this portal)."""
    if not getattr(vault, "replicated", False):
        return None
    return secondary_account()


@dataclass
class Deleted:
    """What ``delete_blobs_everywhere`` did: names deleted (or already absent) on the primary,
    and the names each side could not delete, with the reason, for the caller to retry."""

    primary: list[str] = field(default_factory=list)
    primary_failed: dict[str, str] = field(default_factory=dict)
    secondary_failed: dict[str, str] = field(default_factory=dict)


def _delete(account: StorageAccount, container: str, names: list[str], failed: dict) -> list[str]:
    done: list[str] = []
    try:
        store = account.store(container)
    except StorageError as exc:
        failed.update(dict.fromkeys(names, str(exc)))
        return done
    try:
        for name in names:
            try:
                store.delete(name)
            except (BlobNotFound, ContainerNotFound):
                pass  # gone already, which is what we want
            except StorageError as exc:
                failed[name] = str(exc)
                continue
            done.append(name)
    finally:
        store.close()
    return done


def delete_on_secondary(*, vault, container: str, names: Iterable[str]) -> dict[str, str]:
    """Delete ``names`` from the secondary copy of ``container`` (nothing when ``vault`` is not
    replicated); returns the names it could not delete, with the reason."""
    failed: dict[str, str] = {}
    secondary = secondary_for(vault)
    names = list(names)
    if secondary is not None and names:
        _delete(secondary, container, names, failed)
    return failed


def delete_blobs_everywhere(*, vault, container: str, names: Iterable[str]) -> Deleted:
    """Delete ``names`` from ``container`` on the primary and, when ``vault`` is replicated,
    on the secondary too (a name absent on a side counts as deleted there). Never raises for
    one blob: the failures come back per side. Deleting on the secondary only what the
    primary no longer holds keeps the copy from outliving the original's retention, and
    never the reverse."""
    names = list(names)
    result = Deleted()
    result.primary = _delete(primary_account(), container, names, result.primary_failed)
    result.secondary_failed = delete_on_secondary(
        vault=vault, container=container, names=result.primary
    )
    for name, reason in {**result.primary_failed, **result.secondary_failed}.items():
        log.warning("could not delete %s in %s: %s", name, container, reason)
    return result


def delete_container_everywhere(*, vault, container: str) -> None:
    """Remove ``container`` and every blob in it on both sides (raises ``StorageError``)."""
    primary_account().delete_container(container)
    secondary = secondary_for(vault)
    if secondary is not None:
        secondary.delete_container(container)
