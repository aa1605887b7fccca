"""Writes of the jobs app, one module per concept. Views, API endpoints, tasks and the other
apps call them through this package: ``from jobs import services; services.backup_start(...)``.

    policies   a machine's backup policy: saved, sent to its agent, applied, drift explained
    points     a new recovery point and its retention tags; what an ad hoc backup would get
    jobs       backup start (Back up now: from the portal or the machine), the agent's start/progress/result reports, cancel, the sweep
    scheduler  the once-a-minute tick that starts the scheduled backups that are due
    drills     restore drills: started on demand or on schedule, their evidence checked, the
               missed-drill alert
    pruning    retention applied to a machine's points; unreferenced packs collected, fenced
               against backups; a deleted vault's history removed
    compaction Compact jobs: the agent rewrites wasteful packs, the portal checks its report
               against storage, moves the references and deletes the old packs
    replication  geo-redundant vaults: containers copied to the secondary store, the lag,
               deletions on both sides, which points the secondary can restore
    alerts     Backup Alerts raised and resolved, the no-recent-backup check, their email
    live       pushes to open pages, and the notification when a job ends
    protection stop protection (retain or delete), resume, soft delete, undelete, the purge
    seeding    offline seeding: a seed disk's import into the machine's container
    passphrase a machine's passphrase change: the PIN, the new key, the old keys retired
    verify     verify jobs: Verify now, the weekly slice, the agent's damage report checked,
               recovery points marked Damaged
    fleet      the Backup center's machines and alerts; an alert's Acknowledge and Close
    webhooks   alert webhooks: configured, their deliveries queued with the alert change, sent
    egress     where a webhook may POST: public addresses and the allowed networks, checked
               when saved and at every send, connecting to the address that was checked

Reads are in ``jobs.selectors``; the pure rules in ``jobs.policy_rules``, ``jobs.retention``
and ``jobs.schedule``; Recover Data (restore and download jobs) in ``jobs.recovery``.
"""

from __future__ import annotations

import logging

from django.db import transaction
from kombu.exceptions import KombuError

from agents import dispatch
from jobs import tasks
from jobs.services.alerts import (
    alert_email_send,
    alert_raise,
    alerts_after_job,
    alerts_check_stale,
    alerts_resolve,
    alerts_send_digest,
)
from jobs.services.compaction import (
    CompactAlreadyRunning,
    CompactionRefused,
    CompactionUnverifiable,
    CompactRefused,
    compact_all,
    compact_refusal,
    compact_start,
    compaction_apply,
)
from jobs.services.drills import (
    DrillEvidenceRefused,
    DrillRefused,
    DrillSettings,
    drill_settings_parse,
    drill_settings_save,
    drill_start,
    drills_check_missed,
    drills_schedule,
)
from jobs.services.jobs import (
    BackupAlreadyRunning,
    JobNotCancellable,
    NoPolicy,
    ProtectionStopped,
    ResultConflict,
    SeedPending,
    backup_now,
    backup_start,
    job_cancel,
    job_fail,
    job_finish,
    job_mark_started,
    job_record_progress,
    jobs_sweep,
)
from jobs.services.live import alerts_publish, job_group, job_notify_finished, job_publish
from jobs.services.passphrase import (
    PassphraseChangeRefused,
    passphrase_change_authorize,
    passphrase_change_complete,
    passphrase_keys_retire_due,
)
from jobs.services.points import (
    PointRefused,
    PointUnverifiable,
    adhoc_retention,
    point_check,
    recovery_point_create,
    retention_sentence,
)
from jobs.services.policies import (
    policy_applied,
    policy_drift,
    policy_save,
    policy_throttle_save,
)
from jobs.services.protection import (
    ProtectionRefused,
    protection_delete,
    protection_purge,
    protection_purge_due,
    protection_resume,
    protection_stop,
    protection_undelete,
    restore_refusal,
)
from jobs.services.pruning import (
    backup_in_flight,
    keeps_last_point,
    packs_collect,
    retention_apply,
    retention_apply_all,
    vault_history_delete,
)
from jobs.services.replication import (
    point_replicated,
    replicate_all,
    replicate_machine,
    replicated_manifests,
    replication_lag,
)
from jobs.services.scheduler import schedule_tick
from jobs.services.seeding import (
    ImportTakenOver,
    SeedRefused,
    seed_import_run,
    seed_import_start,
    seed_path_resolve,
)
from jobs.services.verify import (
    VerifyRefused,
    VerifyReportRefused,
    verify_refusal,
    verify_schedule_tick,
    verify_start,
    verify_summary,
    verify_weeks_check,
    verify_weeks_set,
)

__all__ = [
    "BackupAlreadyRunning",
    "CompactAlreadyRunning",
    "CompactRefused",
    "CompactionRefused",
    "CompactionUnverifiable",
    "DrillEvidenceRefused",
    "DrillRefused",
    "DrillSettings",
    "ImportTakenOver",
    "JobNotCancellable",
    "NoPolicy",
    "PassphraseChangeRefused",
    "PointRefused",
    "PointUnverifiable",
    "ProtectionRefused",
    "ProtectionStopped",
    "ResultConflict",
    "SeedPending",
    "SeedRefused",
    "VerifyRefused",
    "VerifyReportRefused",
    "adhoc_retention",
    "alert_email_send",
    "alert_raise",
    "alerts_after_job",
    "alerts_check_stale",
    "alerts_publish",
    "alerts_resolve",
    "alerts_send_digest",
    "backup_in_flight",
    "backup_now",
    "backup_start",
    "compact_all",
    "compact_refusal",
    "compact_start",
    "compaction_apply",
    "drill_settings_parse",
    "drill_settings_save",
    "drill_start",
    "drills_check_missed",
    "drills_schedule",
    "job_cancel",
    "job_fail",
    "job_finish",
    "job_group",
    "job_mark_started",
    "job_notify_finished",
    "job_publish",
    "job_record_progress",
    "jobs_sweep",
    "keeps_last_point",
    "packs_collect",
    "passphrase_change_authorize",
    "passphrase_change_complete",
    "passphrase_keys_retire_due",
    "point_check",
    "point_replicated",
    "policy_applied",
    "policy_drift",
    "policy_save",
    "policy_throttle_save",
    "protection_delete",
    "protection_purge",
    "protection_purge_due",
    "protection_resume",
    "protection_stop",
    "protection_undelete",
    "recovery_point_create",
    "replicate_all",
    "replicate_machine",
    "replicated_manifests",
    "replication_lag",
    "restore_refusal",
    "retention_apply",
    "retention_apply_all",
    "retention_sentence",
    "schedule_tick",
    "seed_import_run",
    "seed_import_start",
    "seed_path_resolve",
    "vault_history_delete",
    "verify_refusal",
    "verify_schedule_tick",
    "verify_start",
    "verify_summary",
    "verify_weeks_check",
    "verify_weeks_set",
]

log = logging.getLogger(__name__)

# -- the two ways out ---------------------------------------------------------------------
# Agent tasks and portal tasks leave through these names, which the modules look up on this
# package at each call (``services._send_to_machine(...)``) so that one replacement reaches
# every caller: tests/jobs/conftest.py's ``sent`` and ``_jobs_env`` fixtures and
# bench/live_*.py replace them.
_send_to_machine = dispatch.send_after_commit  # its docstring has the rule for failures


def _enqueue(task_name: str, *args) -> None:
    """Run portal task ``jobs.tasks.<task_name>`` after commit."""

    def send() -> None:
        try:
            getattr(tasks, task_name).delay(*args)
        except KombuError:  # the broker is down: the daily run catches up
            log.warning("could not enqueue %s%r", task_name, args, exc_info=True)

    transaction.on_commit(send)
