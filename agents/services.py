"""Writes for machines: register, heartbeat, rename, unregister, storage grants.

Registration is all or nothing: the machine row, its token, its storage container and
grant, and its broker user are made together; any failure rolls the rows back and removes
the broker user again. Unregistering revokes the machine's API tokens, broker user and
storage grants at once (its backups stay in storage for retention to handle).
"""

from __future__ import annotations

import contextlib
import logging
import re
from datetime import UTC, datetime, timedelta

from django.core.cache import cache
from django.db import IntegrityError, transaction
from django.db.models import ProtectedError, Q
from django.utils import timezone

from agents import broker
from agents.api_auth import machine_token_issue, machine_tokens_revoke
from agents.models import OFFLINE_AFTER, Machine, SourceGrantAuthorisation
from portal import realtime
from portal.models import Role
from vaults import activity
from vaults.activity import Operation, Outcome
from vaults.models import Vault, VaultCredential

log = logging.getLogger(__name__)

GRANT_LIFETIME = timedelta(hours=24)
# Replacing a registered machine revokes its token, broker user and grants: the same
# decision as Unregister in the portal, so the same role.
REPLACE_ROLE = Role.CONTRIBUTOR
MACHINE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9 ._()-]{0,62}$")


class MachineError(Exception):
    """A refusal with a ``code`` for the API and a message for a person."""

    def __init__(self, code: str, message: str, status: int = 400):
        super().__init__(message)
        self.code = code
        self.message = message
        self.status = status


def machine_name_problems(name: str) -> list[str]:
    if not name:
        return ["Enter a machine name."]
    if not MACHINE_NAME.match(name):
        return [
            "A machine name is 1 to 63 characters: letters, digits, spaces, '.', '_', '-', "
            "'(' and ')', starting with a letter or digit."
        ]
    return []


def container_for(machine: Machine) -> str:
    """The machine's own container: its grants can be revoked without touching others'."""
    return f"machine-{machine.id.hex}"


def _storage():
    from vaults.storage import primary_account

    return primary_account()


def machine_grant_issue(*, machine: Machine) -> dict:
    from vaults.storage import AGENT_PERMISSIONS

    return _storage().issue_grant(
        machine.container,
        expires_at=timezone.now() + GRANT_LIFETIME,
        permissions=AGENT_PERMISSIONS,
    )


def _credentials_refusal(exc) -> MachineError:
    from vaults import credentials as vc

    codes = [
        (vc.CredentialsMalformed, "malformed", 400),
        (vc.CredentialsForeign, "foreign", 403),
        (vc.CredentialsTampered, "tampered", 403),
        (vc.CredentialsRevoked, "revoked", 403),
        (vc.CredentialsExpired, "expired", 403),
        (vc.CredentialsUsed, "used", 403),
        (vc.CredentialsRoleTooLow, "role_too_low", 403),
    ]
    for cls, code, status in codes:
        if isinstance(exc, cls):
            return MachineError(code, str(exc), status)
    return MachineError("credentials", str(exc), 403)


def _credentials_verify(content: bytes):
    from vaults import credentials as vc

    try:
        return vc.credentials_verify(content)
    except vc.CredentialsError as exc:
        raise _credentials_refusal(exc) from None


def _may_replace(credential: VaultCredential) -> None:
    from vaults import credentials as vc

    try:
        vc.credentials_role_check(credential, REPLACE_ROLE, doing="Replacing a machine")
    except vc.CredentialsError as exc:
        raise _credentials_refusal(exc) from None


def machine_register(
    *,
    content: bytes,
    machine_name: str,
    hostname: str = "",
    os_name: str = "",
    agent_version: str = "",
    time_zone: str = "UTC",
    replace: bool = False,
    replaces_machine_id: str = "",
) -> tuple[Machine, dict]:
    """Register a machine with the vault the credentials name; returns (machine, answer).

    The registration, and a refusal once the credentials are known to be the vault's, is
    in the vault's activity log, by "machine NAME" with the credentials' downloader.
    """
    credential = _credentials_verify(content)
    try:
        return _register(
            credential,
            machine_name=machine_name,
            hostname=hostname,
            os_name=os_name,
            agent_version=agent_version,
            time_zone=time_zone,
            replace=replace,
            replaces_machine_id=replaces_machine_id,
        )
    except MachineError as exc:
        name = (machine_name or "").strip()[:63]
        activity.record(
            operation=Operation.MACHINE_REPLACE if replace else Operation.MACHINE_REGISTER,
            vault=credential.vault,
            actor=f"machine {name}",
            resource=activity.Resource(kind="machine", name=name),
            outcome=Outcome.FAILED if exc.status >= 500 else Outcome.REFUSED,
            reason=exc.message,
            detail=_registration_detail(credential, hostname=hostname),
        )
        raise


def _registration_detail(credential: VaultCredential, *, hostname: str, replaced=()) -> dict:
    detail = {
        "hostname": hostname[:255],
        "credentials": str(credential.pk)[:8],
        "credentials_downloaded_by": (
            credential.issued_by.get_username() if credential.issued_by else ""
        ),
    }
    if replaced:
        detail["replaced"] = [{"id": str(m.pk), "name": m.name} for m in replaced]
    return detail


def _register(
    credential: VaultCredential,
    *,
    machine_name: str,
    hostname: str,
    os_name: str,
    agent_version: str,
    time_zone: str,
    replace: bool,
    replaces_machine_id: str,
) -> tuple[Machine, dict]:
    vault = credential.vault
    if vault.state != Vault.State.READY:
        raise MachineError(
            "vault_not_ready",
            f"Vault {vault.name} is not ready ({vault.get_state_display()}); try again later.",
            409,
        )
    name = (machine_name or "").strip()
    problems = machine_name_problems(name)
    if problems:
        raise MachineError("bad_name", " ".join(problems))

    made_user = ""
    made_container = ""
    try:
        with transaction.atomic():
            # Lock the vault row: two machines registering the same name at once queue here.
            Vault.objects.select_for_update().filter(pk=vault.pk).first()
            earlier = list(
                Machine.objects.filter(vault=vault, name__iexact=name, unregistered_at__isnull=True)
            )
            if replaces_machine_id and replace:
                earlier += list(
                    Machine.objects.filter(
                        pk=_uuid(replaces_machine_id), vault=vault, unregistered_at__isnull=True
                    ).exclude(pk__in=[m.pk for m in earlier])
                )
            if earlier and not replace and any(m.name.lower() == name.lower() for m in earlier):
                raise MachineError(
                    "name_taken",
                    f"Vault {vault.name} already has a machine named {name!r}. Choose another "
                    "name with --machine-name, or pass --replace to replace that machine's "
                    "registration (it is unregistered; this needs vault credentials "
                    "downloaded by a Contributor or Owner).",
                    409,
                )
            if earlier:
                _may_replace(credential)
            # Lock the credential row: a file limited to one registration registers once.
            credential = VaultCredential.objects.select_for_update().get(pk=credential.pk)
            if credential.single_use and credential.used_at is not None:
                raise MachineError(
                    "used",
                    f"These vault credentials were limited to one registration and registered "
                    f"a machine on {credential.used_at:%Y-%m-%d %H:%M} UTC. Download new "
                    "credentials from the vault's Prepare infrastructure page.",
                    403,
                )
            # Free the name first: the unique constraint covers registered machines only.
            for old in earlier:
                Machine.objects.filter(pk=old.pk).update(unregistered_at=timezone.now())
            machine = Machine(
                vault=vault,
                name=name,
                hostname=hostname[:255],
                os_name=os_name[:255],
                agent_version=agent_version[:40],
                time_zone=(time_zone or "UTC")[:64],
                credential_id=credential.pk,
            )
            machine.container = container_for(machine)
            machine.save()
            if earlier:  # "Replaced by <name> on <date>" in Recover Data's source list
                Machine.objects.filter(pk__in=[m.pk for m in earlier]).update(replaced_by=machine)
            VaultCredential.objects.filter(pk=credential.pk).update(
                used_at=timezone.now(), used_by_machine=machine.pk
            )
            token = machine_token_issue(machine=machine)
            account = _storage()
            try:
                account.create_container(machine.container)
                made_container = machine.container
                grant = machine_grant_issue(machine=machine)
            except Exception as exc:
                raise MachineError(
                    "storage_unavailable",
                    f"The portal could not prepare storage for the machine: {exc}",
                    503,
                ) from None
            try:
                connection = broker.broker_user_create(machine=machine)
            except broker.BrokerUnavailable as exc:
                raise MachineError("broker_unavailable", str(exc), 503) from None
            made_user = connection["broker_username"]
            Machine.objects.filter(pk=machine.pk).update(
                broker_username=made_user,
                broker_password_sha256=connection["broker_password_sha256"],
            )
            machine.broker_username = made_user
            activity.record(
                operation=Operation.MACHINE_REPLACE if earlier else Operation.MACHINE_REGISTER,
                vault=vault,
                actor=f"machine {machine.name}",
                resource=machine,
                detail=_registration_detail(credential, hostname=hostname, replaced=earlier),
            )
            # Last, the earlier registrations' outside access goes (nothing can fail after).
            for old in earlier:
                _revoke_outside_access(old)
                machine_tokens_revoke(machine=old)
    except IntegrityError:
        _cleanup(made_user, made_container)
        raise MachineError(
            "name_taken", f"Vault {vault.name} already has a machine named {name!r}.", 409
        ) from None
    except BaseException:
        _cleanup(made_user, made_container)
        raise
    answer = {
        "machine_id": str(machine.pk),
        "machine_name": machine.name,
        "vault_id": str(vault.pk),
        "vault_name": vault.name,
        "subscription_id": str(vault.subscription_id),
        "subscription_name": vault.subscription.name,
        "resource_group": vault.resource_group.name,
        "token": token,
        "queue": machine.queue,
        "broker_url": connection["broker_url"],
        "broker_transport_options": connection["broker_transport_options"],
        "result_key_prefix": connection["result_key_prefix"],
        "container": machine.container,
        "grant": grant,
        "replaced": [str(m.pk) for m in earlier],
    }
    return machine, answer


def _uuid(value: str):
    import uuid

    try:
        return uuid.UUID(str(value))
    except ValueError:
        return None


def _cleanup(username: str, container: str, *, force: bool = False) -> None:
    """Remove what a failed registration made outside the database (the container only
    when empty, unless ``force``: it belonged to that registration alone)."""
    if username:
        try:
            broker.broker_user_delete(username=username)
        except broker.BrokerUnavailable:
            log.exception("could not remove broker user %s after a failed registration", username)
    if container:
        try:
            account = _storage()
            store = account.store(container)
            empty = force or not any(True for _ in store.list())
            store.close()
            if empty:
                account.delete_container(container)
        except Exception:
            log.warning("could not remove container %s after a failed registration", container)


def _revoke_outside_access(machine: Machine) -> None:
    broker.broker_user_delete(username=machine.broker_username)
    if machine.container:
        from agents.runtime.blobstore import ContainerNotFound, StorageError
        from vaults.storage.replicas import secondary_for

        with contextlib.suppress(ContainerNotFound):
            _storage().revoke_grants(machine.container)
        # Read grants to the secondary copy (Cross Region Restore) stop too.
        secondary = secondary_for(machine.vault)
        if secondary is not None:
            try:
                secondary.revoke_grants(machine.container)
            except ContainerNotFound:
                pass  # nothing copied yet, so no grant to it either
            except StorageError as exc:  # they expire within the hour (recovery grants)
                log.warning("could not revoke secondary grants of %s: %s", machine.container, exc)


def machine_unregister(*, machine: Machine, user=None, detail: dict | None = None) -> Machine:
    """Unregister: API tokens, broker user and storage grants stop working at once.

    ``user`` is the person who asked (None when the machine itself did, through the API).
    """
    with transaction.atomic():
        updated = Machine.objects.filter(pk=machine.pk, unregistered_at__isnull=True).update(
            unregistered_at=timezone.now()
        )
        machine_tokens_revoke(machine=machine)
        if updated:
            activity.record(
                operation=Operation.MACHINE_UNREGISTER,
                user=user,
                vault=machine.vault,
                resource=machine,
                detail=detail,
            )
            try:
                _revoke_outside_access(machine)
            except broker.BrokerUnavailable as exc:
                raise MachineError("broker_unavailable", str(exc), 503) from None
    machine.refresh_from_db()
    return machine


def _rollback_obstacle(machine: Machine) -> str:
    """Why ``machine`` is more than a half-finished registration ("" when it is not)."""
    from jobs.models import Job, RecoveryPoint

    if Job.objects.filter(machine=machine).exists():
        return "it has jobs"
    if RecoveryPoint.objects.filter(machine=machine).exists():
        return "it has recovery points"
    if SourceGrantAuthorisation.objects.filter(Q(source=machine) | Q(target=machine)).exists():
        return "it has recovery authorisations (the audit of who read whose backups)"
    if machine.container and _container_has_blobs(machine.container):
        return "its storage holds data"
    return ""


def _container_has_blobs(container: str) -> bool:
    """True also when storage cannot tell: a container is deleted only when seen empty."""
    from agents.runtime.blobstore import ContainerNotFound, StorageError

    try:
        store = _storage().store(container)
        try:
            return any(True for _ in store.list())
        finally:
            store.close()
    except ContainerNotFound:
        return False
    except StorageError:
        log.warning("could not list container %s; treating it as holding data", container)
        return True


def machine_registration_rollback(*, machine: Machine) -> None:
    """Undo a registration the agent could not finish (broker or storage unreachable from
    the machine): the machine disappears as if it had never registered.

    The caller holds only a fresh machine token, so this never destroys anything: a machine
    with a job (restore and download audit records are jobs), a recovery point or a blob in
    its container is refused (409) and left exactly as it was. A machine seen online but
    otherwise empty is unregistered rather than deleted.
    """
    obstacle = _rollback_obstacle(machine)
    if obstacle:
        raise MachineError(
            "rollback_refused",
            f"Machine {machine.name} cannot be rolled back: {obstacle}. Unregister it instead "
            "(haven-agent unregister, or Unregister in the portal); its backups are kept.",
            409,
        )
    if machine.last_seen_at is not None:
        machine_unregister(machine=machine, detail={"rollback": True})
        return
    with transaction.atomic():
        # Lock the row: a job queued for it now waits for this decision.
        Machine.objects.select_for_update().filter(pk=machine.pk).first()
        machine_tokens_revoke(machine=machine)
        try:
            _revoke_outside_access(machine)
        except broker.BrokerUnavailable as exc:
            raise MachineError("broker_unavailable", str(exc), 503) from None
        # Access is gone: what the container holds now is all it will ever hold. Anything
        # there (or a job or point that raced in) keeps the machine, unregistered.
        if _rollback_obstacle(machine):
            Machine.objects.filter(pk=machine.pk).update(unregistered_at=timezone.now())
            return
        if machine.credential_id:
            from vaults.models import VaultCredential

            # A single-use credentials file may register again: it registered nothing.
            VaultCredential.objects.filter(
                pk=machine.credential_id, used_by_machine=machine.pk
            ).update(used_at=None, used_by_machine=None)
        deleted = True
        try:
            with transaction.atomic():
                Machine.objects.filter(pk=machine.pk).delete()
        except ProtectedError:  # a record that must outlive it (a job, a point) names it
            Machine.objects.filter(pk=machine.pk).update(unregistered_at=timezone.now())
            deleted = False
        activity.record(
            operation=Operation.MACHINE_UNREGISTER,
            vault=machine.vault,
            resource=machine,
            detail={"rollback": True, "deleted": deleted},
        )
        if not deleted:
            return
    _cleanup("", machine.container)


def machine_rename(*, machine: Machine, name: str, user=None) -> Machine:
    old_name = machine.name
    name = (name or "").strip()
    problems = machine_name_problems(name)
    if problems:
        raise MachineError("bad_name", " ".join(problems))
    clash = (
        Machine.objects.filter(vault=machine.vault, name__iexact=name, unregistered_at__isnull=True)
        .exclude(pk=machine.pk)
        .exists()
    )
    if clash:
        raise MachineError(
            "name_taken", f"Vault {machine.vault.name} already has a machine named {name!r}.", 409
        )
    try:
        with transaction.atomic():
            Machine.objects.filter(pk=machine.pk).update(name=name)
            if name != old_name:
                machine.name = name
                activity.record(
                    operation=Operation.MACHINE_RENAME,
                    user=user,
                    vault=machine.vault,
                    resource=machine,
                    detail={"from": old_name, "to": name},
                )
    except IntegrityError:
        raise MachineError("name_taken", f"A machine named {name!r} exists already.", 409) from None
    machine.refresh_from_db()
    return machine


def machine_heartbeat(
    *, machine: Machine, agent_version: str = "", hostname: str = "", os_name: str = ""
) -> Machine:
    was_online = machine.is_online()
    fields = {"last_seen_at": timezone.now()}
    if agent_version:
        fields["agent_version"] = agent_version[:40]
    if hostname:
        fields["hostname"] = hostname[:255]
    if os_name:
        fields["os_name"] = os_name[:255]
    Machine.objects.filter(pk=machine.pk).update(**fields)
    for key, value in fields.items():
        setattr(machine, key, value)
    if not was_online:
        _push_status(machine)
    return machine


def _push_status(machine: Machine) -> None:
    """Tell open pages that the machine's status changed (a push; the page is the truth)."""
    from django.template.loader import render_to_string

    from portal import realtime

    html = render_to_string("agents/_status_push.html", {"machine": machine})
    realtime.publish(f"machine.{machine.pk}", html)
    realtime.fleet_changed(machine.vault.subscription_id)


# How often the portal looks for machines that went Offline (agents.offline_announce), and
# where it keeps when it last looked (the cache: every worker's, so any one may run it).
OFFLINE_SWEEP_SECONDS = 30
OFFLINE_SWEPT_KEY = "agents.offline_swept_at"


def machines_offline_announce(*, now: datetime | None = None) -> list:
    """Tell the open Backup centers of each subscription where a machine went Offline since
    the last sweep (``portal.realtime.fleet_changed``). Nothing is written when a machine
    goes Offline: it is Offline once its last heartbeat is ``OFFLINE_AFTER`` old, so this
    finds the heartbeats that aged past that between the last sweep and ``now``. One query
    and one message per subscription, however many machines there are (a first sweep, or
    one after the cache was lost, looks back one period). Returns the subscriptions told."""
    now = now or timezone.now()
    swept = cache.get(OFFLINE_SWEPT_KEY)
    since = (
        datetime.fromtimestamp(swept, UTC)
        if isinstance(swept, float)
        else now - timedelta(seconds=OFFLINE_SWEEP_SECONDS)
    )
    cache.set(OFFLINE_SWEPT_KEY, now.timestamp(), timeout=None)
    # Online while now - last_seen_at < OFFLINE_AFTER: crossed when last_seen_at is in
    # (since - OFFLINE_AFTER, now - OFFLINE_AFTER].
    subscriptions = list(
        Machine.objects.filter(
            unregistered_at__isnull=True,
            last_seen_at__gt=since - OFFLINE_AFTER,
            last_seen_at__lte=now - OFFLINE_AFTER,
        )
        .values_list("vault__subscription_id", flat=True)
        .order_by()  # the model's ordering would make each machine distinct
        .distinct()
    )
    for subscription_id in subscriptions:
        realtime.fleet_changed(subscription_id)
    return subscriptions
