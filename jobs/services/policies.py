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


@transaction.atomic
def policy_save(*, machine, spec: dict, user=None, now: datetime | None = None) -> BackupPolicy:
    """Create or change a machine's policy; raises ValidationError naming every broken rule."""
    now = now or timezone.now()
    problems = policy_rules.spec_problems(spec)
    if problems:
        raise ValidationError(problems)
    spec = policy_rules.normalize(spec)
    policy = BackupPolicy.objects.select_for_update().filter(machine=machine).first()
    if policy is not None and policy.throttle and throttling.POLICY_KEY not in spec:
        spec[throttling.POLICY_KEY] = policy.throttle  # the policy editor leaves it as it is
    if policy is None:
        policy = BackupPolicy(machine=machine, scheduled_through=now, version=0)
    new_hash = policy_rules.spec_hash(spec)
    if new_hash == policy.spec_hash and policy.pk:
        return policy
    policy.set_spec(spec)
    policy.version += 1
    policy.updated_by = user
    policy.save()
    services._send_to_machine(
        machine,
        protocol.POLICY_TASK,
        policy=spec,
        version=policy.version,
        spec_hash=policy.spec_hash,
    )
    return policy


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
