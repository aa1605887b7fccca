"""Backup policies: saved in the portal and sent to the machine's agent, which reports the
version it applied; the difference is the drift the policy page explains.
"""

from __future__ import annotations

from datetime import datetime

from django.core.exceptions import ValidationError
from django.db import transaction
from django.utils import timezone

from agents.runtime import protocol, throttling
from jobs import policy_rules, services  # services: the package, for its dispatch seam
from jobs.models import BackupPolicy
from vaults import activity, immutability, security_pin
from vaults.activity import Operation
from vaults.services import critical_operation_email


def policy_save(
    *, machine, spec: dict, user=None, now: datetime | None = None, pin: str = ""
) -> BackupPolicy:
    """Create or change a machine's policy; raises ValidationError naming every broken rule.

    With the vault's security features on, no retention range may be shorter than the
    minimums (``policy_rules.SECURITY_MINIMUMS``), and a change that lowers any retention
    needs ``user``'s security PIN (refusals under the ``security_pin`` key) and e-mails
    the vault's alert recipients. A machine whose protection is stopped keeps its policy
    until backup is resumed."""
    vault = machine.vault
    problems = policy_rules.spec_problems(spec)
    if vault.security_features:
        for field, messages in policy_rules.security_minimum_problems(spec).items():
            problems.setdefault(field, []).extend(messages)
    if problems:
        raise ValidationError(problems)
    spec = policy_rules.normalize(spec)
    current = BackupPolicy.objects.filter(machine=machine).first()
    if current is not None and not current.is_protected:
        raise ValidationError(
            {
                "protection": [
                    f"Protection of {machine.name} is stopped "
                    f"({current.get_protection_display().lower()}); its policy cannot change "
                    "until backup is resumed."
                ]
            }
        )
    lowered = policy_rules.retention_lowered(current.spec(), spec) if current else []
    blocked = (
        immutability.blocked_reason(vault, action=f"lowering the retention of {machine.name}")
        if lowered
        else ""
    )
    if blocked:
        blocked += f" This change lowers: {'; '.join(lowered)}."
        activity.record(
            operation=Operation.POLICY_CHANGE,
            outcome=activity.Outcome.REFUSED,
            reason=blocked,
            user=user,
            vault=vault,
            resource=activity.Resource(kind="backup policy", id=str(machine.pk), name=machine.name),
            detail={"changes": policy_diff(current.spec() if current else {}, spec)},
        )
        raise ValidationError({"immutability": [blocked]})
    if lowered and vault.security_features:
        try:
            security_pin.consume(
                user=user, vault=vault, pin=pin, operation=security_pin.Operation.RETENTION_LOWER
            )
        except security_pin.PinRefused as exc:
            raise ValidationError(
                {"security_pin": [f"This change lowers retention ({'; '.join(lowered)}). {exc}"]}
            ) from None
    with transaction.atomic():
        policy = _policy_write(machine=machine, spec=spec, user=user, now=now or timezone.now())
        if lowered and vault.security_features:
            critical_operation_email(
                vault=vault,
                user=user,
                what=f"retention of {machine.name}'s policy lowered",
                details=[f"Machine: {machine.name}", f"Change: {'; '.join(lowered)}."],
            )
    return policy


def _policy_write(*, machine, spec: dict, user, now: datetime) -> BackupPolicy:
    policy = BackupPolicy.objects.select_for_update().filter(machine=machine).first()
    if policy is not None and policy.throttle and throttling.POLICY_KEY not in spec:
        spec[throttling.POLICY_KEY] = policy.throttle  # the policy editor leaves it as it is
    if policy is None:
        policy = BackupPolicy(machine=machine, scheduled_through=now, version=0)
    new_hash = policy_rules.spec_hash(spec)
    if new_hash == policy.spec_hash and policy.pk:
        return policy
    before = policy.spec() if policy.pk else {}
    policy.set_spec(spec)
    policy.version += 1
    policy.updated_by = user
    policy.save()
    activity.record(
        operation=Operation.POLICY_CHANGE,
        user=user,
        vault=machine.vault,
        resource=activity.Resource(kind="backup policy", id=str(machine.pk), name=machine.name),
        detail={"version": policy.version, "changes": policy_diff(before, spec)},
    )
    services._send_to_machine(
        machine,
        protocol.POLICY_TASK,
        policy=spec,
        version=policy.version,
        spec_hash=policy.spec_hash,
    )
    return policy


def _flatten(spec: dict, prefix: str = "") -> dict:
    flat = {}
    for key, value in spec.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def policy_diff(before: dict, after: dict) -> dict:
    """What changed between two specs, by dotted setting name: ``{"retention.daily.days":
    {"from": 7, "to": 14}}`` (``from`` is None for a setting the old spec did not have)."""
    old, new = _flatten(before), _flatten(after)
    return {
        key: {"from": old.get(key), "to": new.get(key)}
        for key in sorted(old.keys() | new.keys())
        if old.get(key) != new.get(key)
    }


def policy_throttle_save(*, machine, throttle: dict, user=None) -> BackupPolicy:
    """Set the machine's network throttling (Machine > Properties > Throttling). It travels
    in the policy, so it needs one; raises ValidationError naming every broken rule."""
    problems = throttling.spec_problems(throttle)
    if problems:
        raise ValidationError(problems)
    policy = BackupPolicy.objects.filter(machine=machine).first()
    if policy is None:
        raise ValidationError(
            {"enabled": ["Set a backup policy first: throttling is sent to the agent with it."]}
        )
    return policy_save(
        machine=machine, spec=policy.spec() | {throttling.POLICY_KEY: throttle}, user=user
    )


def policy_applied(*, policy: BackupPolicy, version: int, spec_hash: str, error: str = "") -> None:
    """The agent reports which policy it applied (or why it could not)."""
    fields = {"applied_at": timezone.now(), "apply_error": error[:2000]}
    if not error:
        fields.update(applied_version=version, applied_hash=spec_hash)
    BackupPolicy.objects.filter(pk=policy.pk).update(**fields)
    _push_applied(policy.pk)


def _push_applied(policy_pk) -> None:
    """Open policy and throttling pages of the machine show the new state without a reload
    (the page renders the same on reload)."""
    from django.template.loader import render_to_string

    from portal import realtime

    policy = BackupPolicy.objects.select_related("machine").get(pk=policy_pk)
    html = render_to_string(
        "jobs/_policy_applied.html", {"policy": policy, "drift": policy_drift(policy), "oob": True}
    )
    realtime.publish(f"policy.{policy.machine_id}", html)


def policy_drift(policy: BackupPolicy | None, *, now: datetime | None = None) -> str | None:
    """Why the machine runs something other than the authored policy, or None."""
    if policy is None or not policy.drifted:
        return None
    if policy.apply_error:
        return f"The agent could not apply version {policy.version}: {policy.apply_error}"
    applied = f"version {policy.applied_version}" if policy.applied_version else "no policy yet"
    if not policy.machine.is_online(now):
        return (
            f"The machine is offline; it runs {applied} and will pick up version "
            f"{policy.version} when its agent is back."
        )
    return f"The agent runs {applied}; version {policy.version} was sent and is not confirmed yet."
