"""Writes about vaults: creation and deployment, storage redundancy, usage samples, deletion.

Views and tasks call these; none of them saves a Vault itself. Storage is reached only
through ``vaults.storage`` (``primary_account()`` / ``secondary_account()``), whose errors
are ``agents.runtime.blobstore.StorageError`` subclasses with messages meant for a person.

Deployment failure policy: the vault row stays, in state "Deployment failed" with the reason,
and any container the attempt created is removed again, so no storage is half-made. The
person can press Retry (``vault_deploy_retry``) or delete the failed vault.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from datetime import timedelta

from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.mail import send_mail
from django.db import IntegrityError, transaction
from django.template.loader import render_to_string
from django.urls import reverse
from django.utils import timezone

from agents.runtime.blobstore.base import StorageError
from portal import realtime
from portal.models import Notification, ResourceGroup, Subscription
from portal.services import notification_publish, resource_group_create
from vaults import activity, immutability, security_pin, storage
from vaults.activity import Operation
from vaults.models import Vault, VaultUsageSample
from vaults.selectors import (
    vault_alert_recipients,
    vault_delete_blockers,
    vault_redundancy_locked_reason,
)

log = logging.getLogger(__name__)

MAX_VAULTS_PER_SUBSCRIPTION = 500
NAME_MIN, NAME_MAX = 2, 50
NAME_CHARS = re.compile(r"^[A-Za-z0-9-]*$")
MAX_TAGS = 50
TAG_NAME_MAX, TAG_VALUE_MAX = 512, 256
TAG_NAME_FORBIDDEN = set("<>%&\\?/")
# A usage sample is written when the value changed, and at least once a day regardless.
USAGE_SAMPLE_EVERY = timedelta(days=1)


@dataclass(frozen=True)
class NameProblem:
    """One naming rule the vault name breaks: ``rule`` is a stable code, ``message`` the
    sentence shown to the person."""

    rule: str  # length | start | characters | unique | limit
    message: str

    def __str__(self) -> str:
        return self.message


class VaultDeleteBlocked(Exception):
    """The vault still holds something; ``blockers`` lists exactly what."""

    def __init__(self, blockers):
        self.blockers = blockers
        super().__init__("; ".join(b.what for b in blockers))


class VaultStorageError(Exception):
    """Storage could not be changed; the message says why, in plain words."""


def group_for_vault(vault_id) -> str:
    return f"vault.{vault_id}"


def container_name_for(vault: Vault) -> str:
    """Azure container names: 3-63 characters, lowercase letters, digits, single hyphens,
    starting with a letter or digit. ``vault-`` + 32 hex digits of the id is 38."""
    return f"vault-{vault.pk.hex}"


# --- names ------------------------------------------------------------------------------
def vault_name_problems(*, name: str, subscription: Subscription | None) -> list[NameProblem]:
    """Every naming rule ``name`` breaks, in the order a person would fix them."""
    problems = []
    if not NAME_MIN <= len(name) <= NAME_MAX:
        problems.append(
            NameProblem(
                "length",
                f"The name must be {NAME_MIN} to {NAME_MAX} characters long (it is {len(name)}).",
            )
        )
    if name and not (name[0].isascii() and name[0].isalpha()):
        problems.append(NameProblem("start", "The name must start with a letter."))
    if not NAME_CHARS.match(name):
        bad = sorted({c for c in name if not (c.isascii() and (c.isalnum() or c == "-"))})
        shown = " ".join(repr(c) if c != " " else "space" for c in bad)
        problems.append(
            NameProblem(
                "characters",
                f"The name can contain only letters, digits and hyphens (not {shown}).",
            )
        )
    if subscription is not None:
        if name and Vault.objects.filter(subscription=subscription, name__iexact=name).exists():
            problems.append(
                NameProblem(
                    "unique",
                    f"A vault named {name!r} already exists in subscription {subscription.name} "
                    "(names are compared ignoring case).",
                )
            )
        if Vault.objects.filter(subscription=subscription).count() >= MAX_VAULTS_PER_SUBSCRIPTION:
            problems.append(
                NameProblem(
                    "limit",
                    f"Subscription {subscription.name} already has "
                    f"{MAX_VAULTS_PER_SUBSCRIPTION} vaults, the most it can hold. Delete one "
                    "or use another subscription.",
                )
            )
    return problems


def vault_create_problems(
    *, name: str, location: str, subscription: Subscription | None
) -> dict[str, list[str]]:
    """The rules a new vault's name and region break, keyed by field ({} when both hold).

    The create wizard shows these at each step; ``vault_create`` checks them again, under
    the subscription's lock.
    """
    errors: dict[str, list[str]] = {}
    name_problems = vault_name_problems(name=name, subscription=subscription)
    if name_problems:
        errors["name"] = [p.message for p in name_problems]
    if location not in settings.HAVEN_REGIONS:
        errors["location"] = ["Choose a region from the list."]
    return errors


def tags_problems(tags: dict[str, str]) -> list[str]:
    problems = []
    if len(tags) > MAX_TAGS:
        problems.append(f"A vault can have at most {MAX_TAGS} tags.")
    for key, value in tags.items():
        if not key:
            problems.append(f"The tag with value {value!r} needs a name.")
        elif len(key) > TAG_NAME_MAX:
            problems.append(f"Tag name {key[:20]!r}… is longer than {TAG_NAME_MAX} characters.")
        elif set(key) & TAG_NAME_FORBIDDEN:
            problems.append(f"Tag name {key!r} cannot contain any of < > % & \\ ? /.")
        if len(value) > TAG_VALUE_MAX:
            problems.append(f"The value of tag {key!r} is longer than {TAG_VALUE_MAX} characters.")
    return problems


# --- create and deploy ------------------------------------------------------------------
def vault_create(
    *,
    subscription: Subscription,
    name: str,
    location: str,
    created_by,
    resource_group: ResourceGroup | None = None,
    new_resource_group_name: str = "",
    tags: dict[str, str] | None = None,
) -> Vault:
    """Create a vault (and, if asked, its new resource group) and start its deployment.

    The caller has checked the Contributor role on ``subscription``. Raises
    ``ValidationError`` keyed by field, each message naming the rule it breaks.
    """
    name = name.strip()
    tags = tags or {}
    with transaction.atomic():
        # Serialise creations in one subscription so the 500-vault limit and the unique name
        # hold under concurrency (the database's unique constraint backs up the name rule).
        Subscription.objects.select_for_update().filter(pk=subscription.pk).first()
        errors = vault_create_problems(name=name, location=location, subscription=subscription)
        if resource_group is None and not new_resource_group_name.strip():
            errors["resource_group"] = ["Choose a resource group or create a new one."]
        if resource_group is not None and resource_group.subscription_id != subscription.pk:
            errors["resource_group"] = [
                f"Resource group {resource_group.name} is not in subscription {subscription}."
            ]
        tag_problems = tags_problems(tags)
        if tag_problems:
            errors["tags"] = tag_problems
        if errors:
            raise ValidationError(errors)
        if resource_group is None:
            try:
                resource_group = resource_group_create(
                    subscription=subscription, name=new_resource_group_name, location=location
                )
            except ValidationError as exc:
                raise ValidationError(
                    {"resource_group": exc.message_dict.get("name", exc.messages)}
                ) from None
        try:
            with transaction.atomic():
                vault = Vault.objects.create(
                    subscription=subscription,
                    resource_group=resource_group,
                    name=name,
                    location=location,
                    tags=tags,
                    created_by=created_by,
                    state=Vault.State.DEPLOYING,
                    redundancy=default_redundancy(),
                )
        except IntegrityError:
            raise ValidationError(
                {"name": [f"A vault named {name!r} already exists in subscription {subscription}."]}
            ) from None
        activity.record(
            operation=Operation.VAULT_CREATE,
            user=created_by,
            vault=vault,
            detail={
                "location": location,
                "resource_group": resource_group.name,
                "redundancy": vault.redundancy,
            },
        )
        _deployment_started(vault, user=created_by)
    return vault


def _deployment_started(vault: Vault, *, user) -> None:
    if user is not None:
        notification_publish(
            user=user,
            title="Deployment in progress…",
            body=f"Deploying vault {vault.name} in {vault.location}.",
            level=Notification.Level.IN_PROGRESS,
            link_url=reverse("vaults:deployment", args=[vault.pk]),
            link_label="Deployment details",
            key=f"deploy:{vault.pk}",
        )
    _push_vault(vault)
    from vaults.tasks import deploy_vault

    vault_id = str(vault.pk)
    transaction.on_commit(lambda: deploy_vault.apply_async(args=[vault_id], queue="portal"))


def vault_deploy(*, vault: Vault) -> Vault:
    """Provision the vault's storage (runs on the portal worker). Idempotent: a vault that
    is not deploying is left alone, and creating a container that exists is not an error."""
    with transaction.atomic():
        vault = Vault.objects.select_for_update().get(pk=vault.pk)
        if vault.state != Vault.State.DEPLOYING:
            return vault
    name = container_name_for(vault)
    made: list = []
    secondary_name = ""
    try:
        primary = storage.primary_account()
        primary.ping()
        primary.create_container(name)
        made.append(primary)
        if vault.redundancy == Vault.Redundancy.GEO:
            secondary = storage.secondary_account()
            if secondary is not None:
                secondary.ping()
                secondary.create_container(name)
                made.append(secondary)
                secondary_name = name
    except Exception as exc:
        for account in made:
            try:
                account.delete_container(name)
            except Exception:  # the reason shown is the first failure, not this one
                log.warning("could not remove container %s after a failed deployment", name)
        reason = _plain_reason(exc)
        with transaction.atomic():
            Vault.objects.filter(pk=vault.pk).update(
                state=Vault.State.FAILED, state_reason=reason, container="", secondary_container=""
            )
            vault.refresh_from_db()
            _notify_deployment(vault, ok=False)
            _push_vault(vault)
        return vault

    with transaction.atomic():
        Vault.objects.filter(pk=vault.pk).update(
            state=Vault.State.READY,
            state_reason="",
            container=name,
            secondary_container=secondary_name,
            deployed_at=timezone.now(),
        )
        vault.refresh_from_db()
        VaultUsageSample.objects.create(vault=vault, taken_at=timezone.now(), bytes_used=0)
        _notify_deployment(vault, ok=True)
        _push_vault(vault)
    return vault


def _plain_reason(exc: Exception) -> str:
    if isinstance(exc, StorageError):
        return f"The vault's storage could not be prepared: {exc}"
    log.exception("vault deployment failed unexpectedly", exc_info=exc)
    return (
        "The vault's storage could not be prepared because of an unexpected error "
        f"({type(exc).__name__}); the portal log has the details."
    )


def _notify_deployment(vault: Vault, *, ok: bool) -> None:
    if vault.created_by is None:
        return
    if ok:
        notification_publish(
            user=vault.created_by,
            title="Deployment succeeded",
            body=f"Vault {vault.name} is ready.",
            level=Notification.Level.SUCCESS,
            link_url=reverse("vaults:overview", args=[vault.pk]),
            link_label="Go to resource",
            key=f"deploy:{vault.pk}",
        )
    else:
        notification_publish(
            user=vault.created_by,
            title="Deployment failed",
            body=f"Vault {vault.name}: {vault.state_reason} Nothing was left half-made; "
            "you can retry when the storage is back.",
            level=Notification.Level.ERROR,
            link_url=reverse("vaults:deployment", args=[vault.pk]),
            link_label="Retry",
            key=f"deploy:{vault.pk}",
        )


def vault_deploy_retry(*, vault: Vault, user) -> Vault:
    """Start the deployment of a failed vault again."""
    with transaction.atomic():
        updated = Vault.objects.filter(pk=vault.pk, state=Vault.State.FAILED).update(
            state=Vault.State.DEPLOYING, state_reason=""
        )
        vault.refresh_from_db()
        if not updated:
            raise ValidationError(f"Vault {vault.name} is not in a failed state; nothing to retry.")
        if vault.created_by_id is None:
            Vault.objects.filter(pk=vault.pk).update(created_by=user)
            vault.refresh_from_db()
        _deployment_started(vault, user=vault.created_by)
    return vault


def _push_vault(vault: Vault) -> None:
    """Push the vault's live fragments (deployment status, status pill) to watching pages."""
    html = render_to_string("vaults/_live_push.html", {"vault": vault})
    realtime.publish(group_for_vault(vault.pk), html)


# --- redundancy -------------------------------------------------------------------------
def default_redundancy() -> str:
    """Geo-redundant where this portal has a secondary store, else locally redundant: a new
    vault never starts with a choice the portal cannot honour."""
    if storage.secondary_account() is not None:
        return Vault.Redundancy.GEO
    return Vault.Redundancy.LOCAL


def redundancy_advice(value: str) -> str:
    """What each choice copies where, in this portal's storage."""
    account = storage.primary_account()
    primary = account.describe()
    if value == Vault.Redundancy.GEO:
        secondary = storage.secondary_account()
        where = secondary.describe() if secondary is not None else "a secondary store"
        return (
            f"Recommended when this vault is your primary backup copy. Every backup is stored "
            f"in {primary}, and the portal's worker copies each of its blobs (packs, indexes, "
            f"keys, recovery points) to {where}, usually within minutes; the vault shows "
            "how far behind the copy is. Enables Cross Region Restore."
        )
    if value == Vault.Redundancy.ZONE:
        # Only an Azure account is one; a local directory is not (its "Not available" reason
        # says so beside this).
        where = (
            f"{primary}, an Azure account"
            if isinstance(account, storage.AzureStorageAccount)
            else "an Azure storage account"
        )
        return (
            f"Backups are stored once, in {where} that itself keeps copies in separate "
            "availability zones of its region: survives a zone outage and keeps the data in "
            "the region. Haven copies nothing more."
        )
    return (
        f"Backups are stored once, in {primary}, with whatever redundancy that storage has "
        "of its own; nothing is copied elsewhere. Choose it when this vault is not your "
        "primary backup copy: it costs less storage."
    )


def redundancy_unavailable_reason(value: str) -> str:
    """Why a choice cannot be made on this portal ("" when it can)."""
    if value == Vault.Redundancy.GEO:
        return storage.secondary_unavailable_reason()
    if value == Vault.Redundancy.ZONE:
        return storage.zone_redundancy_reason()
    return ""


def vault_redundancy_set(*, vault: Vault, redundancy: str, user) -> Vault:
    """Change the storage redundancy; allowed only until the first item is protected.

    Choosing geo-redundant provisions the secondary container (when a secondary account is
    configured); leaving it removes an empty secondary container. A change, and a refused
    one, is in the activity log.
    """
    with activity.refusals_recorded(
        operation=Operation.REDUNDANCY_CHANGE,
        refused=(ValidationError,),
        user=user,
        vault=vault,
        detail={"from": vault.redundancy, "to": redundancy},
    ):
        return _redundancy_set(vault=vault, redundancy=redundancy, user=user)


def _redundancy_set(*, vault: Vault, redundancy: str, user) -> Vault:
    if redundancy not in Vault.Redundancy.values:
        raise ValidationError({"redundancy": ["Choose Geo-, Locally- or Zone-redundant."]})
    with transaction.atomic():
        vault = Vault.objects.select_for_update().get(pk=vault.pk)
        if vault.redundancy == redundancy:
            return vault
        reason = vault_redundancy_locked_reason(vault)
        if reason:
            raise ValidationError({"redundancy": [reason]})
        if vault.cross_region_restore:
            raise ValidationError(
                {
                    "redundancy": [
                        "Cross Region Restore is enabled, and cannot be turned off: the vault "
                        "stays geo-redundant."
                    ]
                }
            )
        unavailable = redundancy_unavailable_reason(redundancy)
        if unavailable:
            raise ValidationError({"redundancy": [unavailable]})
        secondary_container = vault.secondary_container
        try:
            if redundancy == Vault.Redundancy.GEO:
                secondary = storage.secondary_account()
                if secondary is not None:  # (checked above)
                    secondary.ping()
                    secondary.create_container(vault.container)
                    secondary_container = vault.container
            elif secondary_container:
                secondary = storage.secondary_account()
                if secondary is not None:
                    secondary.delete_container(secondary_container)
                secondary_container = ""
        except StorageError as exc:
            raise ValidationError(
                {"redundancy": [f"The secondary storage could not be changed: {exc}"]}
            ) from None
        Vault.objects.filter(pk=vault.pk).update(
            redundancy=redundancy,
            secondary_container=secondary_container,
        )
        activity.record(
            operation=Operation.REDUNDANCY_CHANGE,
            user=user,
            vault=vault,
            detail={"from": vault.redundancy, "to": redundancy},
        )
        vault.refresh_from_db()
        notification_publish(
            user=user,
            title="Backup configuration saved",
            body=f"Vault {vault.name} now uses {vault.get_redundancy_display()} storage.",
            level=Notification.Level.SUCCESS,
            link_url=reverse("vaults:properties", args=[vault.pk]),
            link_label="Properties",
        )
    return vault


def vault_cross_region_restore_enable(*, vault: Vault, user) -> Vault:
    """Turn on Cross Region Restore: Recover Data may then read the secondary copy. Only for
    a replicating geo-redundant vault; once on, it stays on (as in the reference)."""
    with transaction.atomic():
        vault = Vault.objects.select_for_update().get(pk=vault.pk)
        if vault.cross_region_restore:
            return vault
        if not vault.replicated or storage.secondary_account() is None:
            raise ValidationError(
                {
                    "cross_region_restore": [
                        "Cross Region Restore needs geo-redundant storage with a secondary "
                        "store: "
                        + (
                            storage.secondary_unavailable_reason()
                            or "choose Geo-redundant under Backup Configuration first."
                        )
                    ]
                }
            )
        Vault.objects.filter(pk=vault.pk).update(cross_region_restore=True)
        vault.refresh_from_db()
        notification_publish(
            user=user,
            title="Cross Region Restore enabled",
            body=f"Recover Data in vault {vault.name} can now read the secondary copy.",
            level=Notification.Level.SUCCESS,
            link_url=reverse("vaults:properties", args=[vault.pk]),
            link_label="Properties",
        )
    return vault


# --- security settings ------------------------------------------------------------------
SOFT_DELETE_MIN_DAYS, SOFT_DELETE_MAX_DAYS = 14, 180


def critical_operation_email(*, vault: Vault, user, what: str, details: list[str]) -> None:
    """E-mail the vault's alert recipients that a critical operation was done, after
    commit (security features on: docs/protection.md). ``what`` names the operation."""
    recipients = vault_alert_recipients(vault)
    if not recipients:
        return
    who = user.get_username() if user is not None else "the portal"
    link = settings.HAVEN_PUBLIC_URL + reverse("vaults:overview", args=[vault.pk])
    body = "\n".join(
        [
            f"Critical operation on vault {vault.name}: {what}",
            f"By: {who}",
            f"At: {timezone.now():%Y-%m-%d %H:%M} UTC",
            *details,
            "",
            "If you did not expect this, check the vault at once:",
            link,
        ]
    )
    subject = f"[Haven] Critical operation on {vault.name}: {what}"
    transaction.on_commit(
        lambda: send_mail(subject=subject, message=body, from_email=None, recipient_list=recipients)
    )


def vault_security_settings_set(
    *,
    vault: Vault,
    user,
    security_features: bool,
    soft_delete_enabled: bool,
    soft_delete_days,
    always_on: bool,
    pin: str = "",
) -> Vault:
    """Change the vault's security settings (Properties › Security settings).

    Strengthening needs nothing more than the caller's Contributor role. Weakening (soft
    delete turned off or shortened, security features turned off) needs the user's
    security PIN while security features are on, and e-mails the alert recipients.
    Always-on soft delete is irreversible: once on, soft delete cannot be turned off or
    shortened, and always-on cannot be turned off. Raises ``ValidationError`` keyed by
    field, or ``security_pin.PinRefused``."""
    from jobs.policy_rules import whole_number

    days = whole_number(soft_delete_days)
    errors: dict[str, list[str]] = {}
    if days is None or not SOFT_DELETE_MIN_DAYS <= days <= SOFT_DELETE_MAX_DAYS:
        errors["soft_delete_days"] = [
            f"Keep deleted backup data for {SOFT_DELETE_MIN_DAYS} to {SOFT_DELETE_MAX_DAYS} days."
        ]
        days = vault.soft_delete_days
    if vault.soft_delete_always_on:
        if not always_on:
            errors.setdefault("always_on", []).append(
                "Always-on soft delete is irreversible: it cannot be turned off."
            )
        if not soft_delete_enabled:
            errors.setdefault("soft_delete_enabled", []).append(
                "Soft delete is always on for this vault; it cannot be turned off."
            )
        if days < vault.soft_delete_days:
            errors.setdefault("soft_delete_days", []).append(
                f"Soft delete is always on for this vault; the period cannot be shortened "
                f"below {vault.soft_delete_days} days."
            )
    if always_on and not soft_delete_enabled:
        errors.setdefault("always_on", []).append(
            "Always-on soft delete needs soft delete to be on."
        )
    if vault.soft_delete_enabled and not soft_delete_enabled:
        blocked = immutability.blocked_reason(vault, action="turning soft delete off")
        if blocked:
            errors.setdefault("soft_delete_enabled", []).append(blocked)
    elif soft_delete_enabled and days < vault.soft_delete_days:
        blocked = immutability.blocked_reason(vault, action="shortening soft delete")
        if blocked:
            errors.setdefault("soft_delete_days", []).append(blocked)
    if errors:
        raise ValidationError(errors)
    weakened = []
    if vault.soft_delete_enabled and not soft_delete_enabled:
        weakened.append("soft delete turned off")
    elif soft_delete_enabled and days < vault.soft_delete_days:
        weakened.append(f"soft delete shortened from {vault.soft_delete_days} to {days} days")
    if vault.security_features and not security_features:
        weakened.append("security features turned off")
    if weakened and vault.security_features:
        operation = (
            security_pin.Operation.SECURITY_FEATURES_OFF
            if not security_features
            else security_pin.Operation.SOFT_DELETE_WEAKEN
        )
        security_pin.consume(user=user, vault=vault, pin=pin, operation=operation)
    with transaction.atomic():
        changed = Vault.objects.filter(pk=vault.pk).update(
            security_features=security_features,
            soft_delete_enabled=soft_delete_enabled,
            soft_delete_days=days,
            soft_delete_always_on=always_on or vault.soft_delete_always_on,
        )
        if weakened and vault.security_features and changed:
            critical_operation_email(
                vault=vault,
                user=user,
                what="security settings weakened",
                details=[f"Change: {', '.join(weakened)}."],
            )
    vault.refresh_from_db()
    return vault


# --- immutable vault --------------------------------------------------------------------
def vault_immutability_set(
    *, vault: Vault, user, state: str, confirm: str = "", pin: str = ""
) -> Vault:
    """Change the vault's immutability (Properties › Immutable vault; ``vaults.immutability``).

    Disabled ⇄ Enabled freely, and either → Locked, which is irreversible: locking needs
    ``confirm`` to be the vault's name typed, and while security features are on, the
    person's security PIN, as does disabling. The change, or its refusal, is in the
    activity log, and a change e-mails the alert recipients. Raises ``ValidationError``
    keyed ``immutability`` or ``security_pin``."""
    before = vault.immutability
    with activity.refusals_recorded(
        operation=Operation.IMMUTABILITY_CHANGE,
        refused=(ValidationError,),
        user=user,
        vault=vault,
        detail={"from": before, "to": state},
    ):
        vault = _immutability_set(vault=vault, user=user, state=state, confirm=confirm, pin=pin)
    return vault


def _immutability_set(*, vault: Vault, user, state: str, confirm: str, pin: str) -> Vault:
    Immutability = Vault.Immutability
    if state not in Immutability.values:
        raise ValidationError({"immutability": ["Choose Disabled, Enabled or Locked."]})
    before = vault.immutability
    if state == before:
        return vault
    if before == Immutability.LOCKED:
        raise ValidationError(
            {
                "immutability": [
                    f"Vault {vault.name} is a locked immutable vault: immutability cannot be "
                    "disabled or unlocked."
                ]
            }
        )
    operation = None
    if state == Immutability.LOCKED:
        if (confirm or "").strip() != vault.name:
            raise ValidationError(
                {
                    "confirm": [
                        f"Locking cannot be undone: type the vault's name, {vault.name}, "
                        "to confirm."
                    ]
                }
            )
        operation = security_pin.Operation.IMMUTABILITY_LOCK
    elif state == Immutability.DISABLED:
        operation = security_pin.Operation.IMMUTABILITY_DISABLE
    if operation is not None and vault.security_features:
        try:
            security_pin.consume(user=user, vault=vault, pin=pin, operation=operation)
        except security_pin.PinRefused as exc:
            raise ValidationError({"security_pin": [str(exc)]}) from None
    with transaction.atomic():
        changed = Vault.objects.filter(pk=vault.pk, immutability=before).update(immutability=state)
        if not changed:  # someone changed it meanwhile: decide again on the new state
            raise ValidationError(
                {"immutability": ["The vault's immutability changed meanwhile; try again."]}
            )
        vault.refresh_from_db()
        activity.record(
            operation=Operation.IMMUTABILITY_CHANGE,
            user=user,
            vault=vault,
            detail={"from": before, "to": state},
        )
        label = vault.get_immutability_display().lower()
        critical_operation_email(
            vault=vault,
            user=user,
            what=f"immutability {label}",
            details=[
                f"Immutability: {Immutability(before).label} → {Immutability(state).label}.",
                *(
                    ["Locked immutability cannot be undone."]
                    if state == Immutability.LOCKED
                    else []
                ),
            ],
        )
    return vault


# --- usage ------------------------------------------------------------------------------
def vault_usage_record(*, vault: Vault, bytes_used: int, at=None) -> VaultUsageSample | None:
    """Record the storage used, if it changed or a day passed since the last sample.

    Called by the periodic sampler and by whoever changes the usage (a finished backup,
    retention); returns the new sample, or None when nothing needed writing.
    """
    at = at or timezone.now()
    last = vault.usage_samples.order_by("-taken_at").first()
    if last and last.bytes_used == bytes_used and at - last.taken_at < USAGE_SAMPLE_EVERY:
        return None
    return VaultUsageSample.objects.create(vault=vault, taken_at=at, bytes_used=bytes_used)


def vault_usage_sample(*, vault: Vault) -> VaultUsageSample | None:
    """Measure one deployed vault's storage and record it: the vault's own container plus
    each machine's (every machine keeps its repository in a container of its own)."""
    if vault.state != Vault.State.READY or not vault.container:
        return None
    account = storage.primary_account()
    containers = [vault.container]
    containers += [c for c in vault.machines.values_list("container", flat=True) if c]
    used = sum(account.usage(name) for name in containers if account.container_exists(name))
    return vault_usage_record(vault=vault, bytes_used=used)


def vaults_usage_sample_all() -> int:
    """The periodic sampler: every deployed vault; one unreachable container does not stop
    the others. Returns how many samples were written."""
    written = 0
    for vault in Vault.objects.filter(state=Vault.State.READY).exclude(container=""):
        try:
            if vault_usage_sample(vault=vault):
                written += 1
        except StorageError as exc:
            log.warning("usage of vault %s not sampled: %s", vault.pk, exc)
    return written


# --- delete -----------------------------------------------------------------------------
# Apps keeping history for a vault (the jobs app: jobs, recovery points, alerts) register
# the function that removes it when the vault is deleted; their foreign keys PROTECT it.
_history_removers: list = []


def register_history_remover(fn) -> None:
    _history_removers.append(fn)


def vault_delete(*, vault: Vault, user) -> None:
    """Delete an empty vault and its storage.

    Refused with ``VaultDeleteBlocked`` while anything remains (see
    ``vaults.selectors.vault_delete_blockers``). Storage goes first: if it cannot be
    removed, the vault stays and ``VaultStorageError`` says why. The deletion, a refusal
    and a failure are in the activity log, which keeps the vault's entries after it.
    """
    with activity.refusals_recorded(
        operation=Operation.VAULT_DELETE,
        refused=(VaultDeleteBlocked,),
        failed=(VaultStorageError,),
        user=user,
        vault=vault,
    ):
        _vault_delete(vault=vault, user=user)


def _vault_delete(*, vault: Vault, user) -> None:
    with transaction.atomic():
        vault = Vault.objects.select_for_update().get(pk=vault.pk)
        blockers = vault_delete_blockers(vault)
        if blockers:
            raise VaultDeleteBlocked(blockers)
        name = vault.name
        try:
            if vault.container:
                storage.primary_account().delete_container(vault.container)
            if vault.secondary_container:
                secondary = storage.secondary_account()
                if secondary is not None:
                    secondary.delete_container(vault.secondary_container)
        except StorageError as exc:
            raise VaultStorageError(
                f"The vault's storage could not be removed, so the vault was kept: {exc}"
            ) from None
        # Machines unregistered earlier are history only; they go with the vault.
        for remove_history in _history_removers:
            remove_history(vault)
        vault.machines.filter(unregistered_at__isnull=False).delete()
        activity.record(operation=Operation.VAULT_DELETE, user=user, vault=vault)
        vault.delete()
        notification_publish(
            user=user,
            title="Vault deleted",
            body=f"Vault {name} and its storage were deleted.",
            level=Notification.Level.SUCCESS,
        )
