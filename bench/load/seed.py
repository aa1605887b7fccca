"""The fleet in the bench's own database: one owner, ``VAULTS`` vaults, the machines (each
with an agent token and its Redis ACL user, made by ``agents.broker`` as registration
does), the running backups, and the history (jobs and recovery points, bulk-inserted).
Runs in the harness's process after ``django.setup()``."""

from __future__ import annotations

import hashlib
import random
import secrets
from datetime import timedelta

VAULTS = 10
BATCH = 5000


def seed(*, agents: int, jobs: int, history: int, points: int) -> dict:
    from django.utils import timezone

    from agents import broker
    from agents.api_auth import TOKEN_PREFIX, token_hash
    from agents.models import Machine, MachineToken
    from jobs.models import Job, RecoveryPoint
    from portal.models import Membership, ResourceGroup, Role, Subscription, User
    from vaults.models import Vault

    now = timezone.now()
    rng = random.Random(13)
    owner = User.objects.create_user(username="owner", password=secrets.token_urlsafe(16))
    sub = Subscription.objects.create(name="Fleet", created_by=owner)
    Membership.objects.create(user=owner, subscription=sub, role=Role.OWNER)
    rg = ResourceGroup.objects.create(subscription=sub, name="fleet-rg", location="West Europe")
    vaults = [
        Vault.objects.create(
            subscription=sub,
            resource_group=rg,
            name=f"vault-{v:02}",
            location="West Europe",
            state=Vault.State.READY,
            container=f"vault-{v:02}",
        )
        for v in range(VAULTS)
    ]
    machines = Machine.objects.bulk_create(
        [
            Machine(
                vault=vaults[i % VAULTS],
                name=f"host-{i:04}",
                hostname=f"host-{i:04}.fleet.test",
                # Registered machines have a container (Recover Data lists only those).
                container=f"m-host-{i:04}",
                last_seen_at=now,
            )
            for i in range(agents)
        ],
        batch_size=BATCH,
    )
    fleet = []
    tokens = []
    for machine in machines:
        # The broker user as registration makes it (agents.services.machine_register).
        creds = broker.broker_user_create(machine=machine)
        password = creds["broker_url"].split("://", 1)[1].split("@", 1)[0].split(":", 1)[1]
        machine.broker_username = creds["broker_username"]
        machine.broker_password_sha256 = creds["broker_password_sha256"]
        token = TOKEN_PREFIX + secrets.token_urlsafe(32)
        tokens.append(MachineToken(machine=machine, token_hash=token_hash(token)))
        fleet.append(
            {
                "machine": str(machine.pk),
                "vault": str(machine.vault_id),
                "token": token,
                "queue": machine.queue,
                "broker_user": creds["broker_username"],
                "broker_password": _unquote(password),
            }
        )
    Machine.objects.bulk_update(
        machines, ["broker_username", "broker_password_sha256"], batch_size=BATCH
    )
    MachineToken.objects.bulk_create(tokens, batch_size=BATCH)

    # History: finished jobs over the last 90 days, spread over the machines.
    statuses = [Job.Status.COMPLETED] * 8 + [Job.Status.WARNING, Job.Status.FAILED]
    old_jobs = []
    for n in range(history):
        machine = machines[n % len(machines)]
        started = now - timedelta(seconds=rng.randrange(90 * 86400))
        old_jobs.append(
            Job(
                vault_id=machine.vault_id,
                machine=machine,
                operation=Job.Operation.BACKUP,
                status=rng.choice(statuses),
                trigger=Job.Trigger.SCHEDULED,
                started_at=started,
                ended_at=started + timedelta(seconds=rng.randrange(60, 3600)),
                last_report_at=started,
                bytes_transferred=rng.randrange(1 << 30),
                progress={"phase": "finalizing", "files_done": 1000, "files_total": 1000},
            )
        )
    Job.objects.bulk_create(old_jobs, batch_size=BATCH)
    # created_at is auto_now_add: spread it as the start times.
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("UPDATE jobs_job SET created_at = started_at WHERE started_at IS NOT NULL")
    done = [j for j in old_jobs if j.status != Job.Status.FAILED]
    RecoveryPoint.objects.bulk_create(
        [
            RecoveryPoint(
                machine_id=job.machine_id,
                vault_id=job.vault_id,
                job=job,
                snapshot_id=hashlib.sha256(str(job.pk).encode()).hexdigest(),
                manifest_blob=f"snapshots/{job.pk.hex}",
                created_at=job.ended_at,
                tagged_for=job.ended_at,
                kind=RecoveryPoint.Kind.SCHEDULED,
                logical_bytes=job.bytes_transferred * 3,
                stored_bytes=job.bytes_transferred,
                file_count=1000,
                retention_tags=["daily"],
            )
            for job in done[:points]
        ],
        batch_size=BATCH,
    )
    # The running backups: queued, each started by its agent in the run.
    running = Job.objects.bulk_create(
        [
            Job(
                vault_id=machines[i].vault_id,
                machine=machines[i],
                operation=Job.Operation.BACKUP,
                status=Job.Status.QUEUED,
                created_by=owner,
            )
            for i in range(jobs)
        ]
    )
    for i, job in enumerate(running):
        fleet[i]["job"] = str(job.pk)
    with connection.cursor() as cursor:
        # Planner statistics and the visibility map, as autovacuum keeps them in a database
        # in use (the bulk UPDATE above left a dead copy of every job: without the vacuum,
        # an index-only scan visits them all).
        cursor.execute("VACUUM ANALYZE")
    return {
        "owner_id": owner.pk,
        "vaults": [str(v.pk) for v in vaults],
        "fleet": fleet,
        "sample_machine": str(machines[-1].pk),
        "sample_job": str(old_jobs[-1].pk) if old_jobs else None,
    }


def _unquote(value: str) -> str:
    from urllib.parse import unquote

    return unquote(value)
