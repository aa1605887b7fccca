"""A machine's passphrase change (``haven-agent change-passphrase``; docs/protection.md).

1. ``passphrase_change_authorize``: the machine sends the security PIN a Contributor of
   the vault generated; the portal lists the repository's key blobs (``keys/``) and only then
   uses the PIN (``security_pin.consume_for_vault``), so nothing is uploaded without it.
2. The machine wraps the master keys with the new passphrase into a new key blob (blobs are
   write-once) and reports its name: ``passphrase_change_complete`` checks the blob is there,
   is new and looks like a key, records the change (activity log, the machine page) and sets
   when the old keys retire: the vault's soft-delete period later.
3. ``passphrase_keys_retire_due`` (the portal's worker, hourly) deletes the old key blobs
   of each change whose period has passed, with the account key, on both sides of a
   geo-redundant vault. Until then the old passphrase still opens the backups; after it,
   only the new one does.

A compromised machine could change the passphrase (it already holds the keys), but only
with a PIN a person generated, and it cannot delete anything: its SAS has no delete
permission and the retirement waits for the period whatever it reports.
"""

from __future__ import annotations

import json
import re
from datetime import datetime, timedelta

from django.db import transaction
from django.utils import timezone

from agents.runtime.blobstore import BlobNotFound, StorageError
from agents.runtime.engine.layout import KEYS_PREFIX, key_blob
from jobs.models import BackupPolicy, PassphraseChange
from jobs.services.pruning import repository_store
from vaults import activity, security_pin
from vaults.services import critical_operation_email
from vaults.storage.replicas import delete_blobs_everywhere

# The machine uploads its new key right after the PIN is accepted; an authorisation not
# completed within this is void (a new PIN is needed).
COMPLETE_WITHIN = timedelta(minutes=30)
_KEY_NAME = re.compile(r"^[0-9a-f]{16}$")
MAX_KEY_BLOB = 64 * 1024


class PassphraseChangeRefused(Exception):
    """The change cannot go on; ``status`` and ``code`` for the API, the message says why."""

    def __init__(self, message: str, *, status: int = 409, code: str = "refused"):
        super().__init__(message)
        self.status = status
        self.code = code


def _key_names(store) -> list[str]:
    return sorted(b.name.removeprefix(KEYS_PREFIX) for b in store.list(KEYS_PREFIX))


def passphrase_change_authorize(
    *, machine, pin: str, now: datetime | None = None, store=None
) -> PassphraseChange:
    """Check the PIN for ``machine``'s passphrase change and note the keys it will retire.
    Raises ``PassphraseChangeRefused`` or ``security_pin.PinRefused``."""
    now = now or timezone.now()
    policy = BackupPolicy.objects.filter(machine=machine).only("protection").first()
    if policy is not None and policy.protection in (
        BackupPolicy.Protection.SOFT_DELETED,
        BackupPolicy.Protection.DELETED,
    ):
        raise PassphraseChangeRefused(
            f"The backup data of {machine.name} is deleted or soft deleted; there is no "
            "passphrase to change."
        )
    old_keys = _with_store(machine, store, _key_names)
    if not old_keys:
        raise PassphraseChangeRefused(
            f"{machine.name} has no backups yet, so no key to re-wrap: its first backup "
            "uses the passphrase saved on the machine."
        )
    used = security_pin.consume_for_vault(
        vault=machine.vault,
        pin=pin,
        operation=security_pin.Operation.PASSPHRASE_CHANGE,
        now=now,
    )
    return PassphraseChange.objects.create(
        machine=machine, vault=machine.vault, user=used.user, authorized_at=now, old_keys=old_keys
    )


def _check_key_blob(store, key_name: str) -> None:
    try:
        raw = store.get(key_blob(key_name))
    except BlobNotFound:
        raise PassphraseChangeRefused(
            f"The new key {key_name} is not in the vault's storage; upload it first.",
            status=400,
            code="key_missing",
        ) from None
    try:
        doc = json.loads(raw[:MAX_KEY_BLOB])
        ok = isinstance(doc, dict) and isinstance(doc.get("kdf"), dict) and doc.get("wrapped")
    except ValueError:
        ok = False
    if not ok:
        raise PassphraseChangeRefused(
            f"keys/{key_name} is not a wrapped key.", status=400, code="key_malformed"
        )


def passphrase_change_complete(
    *, machine, change_id, key_name: str, now: datetime | None = None, store=None
) -> PassphraseChange:
    """Record that ``machine`` uploaded ``key_name`` for the authorised change."""
    now = now or timezone.now()
    key_name = str(key_name or "")
    change = PassphraseChange.objects.filter(pk=change_id, machine=machine).first()
    if change is None:
        raise PassphraseChangeRefused(
            "No such passphrase change for this machine.", status=404, code="not_found"
        )
    if change.completed_at is not None:
        if change.new_key == key_name:
            return change
        raise PassphraseChangeRefused("This passphrase change is already complete.")
    if now - change.authorized_at > COMPLETE_WITHIN:
        raise PassphraseChangeRefused(
            "The security PIN's authorisation for this change has lapsed; run "
            "haven-agent change-passphrase again with a new PIN.",
            code="authorisation_lapsed",
        )
    if not _KEY_NAME.match(key_name) or key_name in change.old_keys:
        raise PassphraseChangeRefused(
            "Name the new key blob the machine uploaded (16 hex digits, not an existing key).",
            status=400,
            code="malformed",
        )
    _with_store(machine, store, lambda opened: _check_key_blob(opened, key_name))
    vault = machine.vault
    with transaction.atomic():
        updated = PassphraseChange.objects.filter(pk=change.pk, completed_at__isnull=True).update(
            new_key=key_name,
            completed_at=now,
            retire_after=now + timedelta(days=vault.soft_delete_days),
        )
        change.refresh_from_db()
        if not updated:
            raise PassphraseChangeRefused("This passphrase change is already complete.")
        activity.record(
            operation=activity.Operation.PASSPHRASE_CHANGE,
            user=change.user,
            vault=vault,
            resource=machine,
            detail={
                "new_key": key_name,
                "old_keys": change.old_keys,
                "old_keys_removed_after": change.retire_after.isoformat(),
            },
        )
        if vault.security_features:
            critical_operation_email(
                vault=vault,
                user=change.user,
                what=f"encryption passphrase of {machine.name} changed",
                details=[
                    f"Machine: {machine.name}",
                    "The previous passphrase keeps opening the backups until "
                    f"{change.retire_after:%Y-%m-%d %H:%M} UTC; after that only the new one.",
                ],
            )
    return change


def passphrase_keys_retire_due(*, now: datetime | None = None) -> int:
    """Delete the old key blobs of every completed change whose period has passed (never a
    machine's newest key). A storage failure leaves the change for the next run. Returns
    the number of changes retired."""
    now = now or timezone.now()
    due = PassphraseChange.objects.filter(
        completed_at__isnull=False, retired_at__isnull=True, retire_after__lte=now
    ).select_related("machine", "vault")
    count = 0
    for change in due:
        newest = (
            PassphraseChange.objects.filter(machine=change.machine, completed_at__isnull=False)
            .order_by("-completed_at")
            .values_list("new_key", flat=True)
            .first()
        )
        names = [key_blob(k) for k in change.old_keys if k not in (newest, change.new_key)]
        result = delete_blobs_everywhere(
            vault=change.vault, container=change.machine.container, names=names
        )
        if result.primary_failed or result.secondary_failed:
            continue
        PassphraseChange.objects.filter(pk=change.pk).update(retired_at=now)
        count += 1
    return count


def _with_store(machine, store, read):
    """``read(store)`` on ``store``, or on the machine's store opened (and closed) for it; a
    storage that cannot answer is a 503 refusal the agent retries."""
    opened = None
    try:
        if store is None:
            store = opened = repository_store(machine)
        return read(store)
    except StorageError as exc:
        raise PassphraseChangeRefused(
            f"The vault's storage cannot be read now ({exc}); try again later.",
            status=503,
            code="storage_unavailable",
        ) from None
    finally:
        if opened is not None:
            opened.close()
