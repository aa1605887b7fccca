"""Replication lag under a backup: how long a geo-redundant vault's new blobs wait before
they are on the secondary (jobs.services.replication).

    .venv/bin/python bench/replication_lag.py [--mb 200]

Starts two Azurite servers (primary and secondary accounts), backs up ``--mb`` MB of random
data (incompressible, so every byte is stored) with the engine into a machine container on
the primary, then runs one replication pass, as the portal worker does right after a backup
records its point. Reports the backup's time, the pass's time and rate, and the lag: the age
of the oldest blob of the backup when the pass finished (the worst a blob waited, since the
pass starts when the backup ends). Uses a throw-away SQLite database under a temporary
HAVEN_DATA_DIR.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mb", type=int, default=200)
    args = parser.parse_args()

    scratch = Path(tempfile.mkdtemp(prefix="haven-bench-grs-"))
    for name in ("DATABASE_URL", "REDIS_URL", "AZURE_STORAGE_CONNECTION_STRING"):
        os.environ.pop(name, None)
    os.environ["HAVEN_DATA_DIR"] = str(scratch / "data")
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "portal.settings")

    from tests.support.servers import Azurite

    primary, secondary = Azurite(scratch / "primary"), Azurite(scratch / "secondary")
    primary.start()
    secondary.start()
    try:
        os.environ["AZURE_STORAGE_CONNECTION_STRING"] = primary.connection_string
        os.environ["HAVEN_SECONDARY_STORAGE_CONNECTION_STRING"] = secondary.connection_string
        print(json.dumps(run(scratch, args.mb), indent=2))
    finally:
        primary.stop()
        secondary.stop()


def run(scratch: Path, megabytes: int) -> dict:
    import django

    django.setup()
    import logging

    from django.core.management import call_command

    logging.getLogger("portal.realtime").setLevel(logging.WARNING)  # no portal to push to

    call_command("migrate", verbosity=0)
    from django.utils import timezone

    from agents.models import Machine
    from agents.runtime.engine import Repository, run_backup
    from jobs.models import ReplicaState
    from jobs.services import replicate_machine
    from portal.models import ResourceGroup, Subscription
    from vaults import storage
    from vaults.models import Vault

    sub = Subscription.objects.create(name="Bench")
    rg = ResourceGroup.objects.create(subscription=sub, name="rg", location="West Europe")
    vault = Vault.objects.create(
        subscription=sub, resource_group=rg, name="v", location="x", state="ready",
        container="vault-bench", secondary_container="vault-bench",
    )  # fmt: skip
    machine = Machine.objects.create(vault=vault, name="m", container="machine-bench")
    storage.primary_account().create_container(machine.container)

    data = scratch / "source"
    data.mkdir()
    rng = random.Random(200)
    for i in range(megabytes // 10):
        (data / f"file-{i:03d}.bin").write_bytes(rng.randbytes(10 * 1024 * 1024))

    store = storage.primary_account().store(machine.container)
    repo = Repository.init(store, "bench passphrase", kdf={"n": 2**10, "r": 8, "p": 1})
    started = time.monotonic()
    result = run_backup(repo, sources=[str(data)], cache_dir=scratch / "cache")
    backup_s = time.monotonic() - started

    started = time.monotonic()
    job = replicate_machine(machine=machine)
    pass_s = time.monotonic() - started
    state = ReplicaState.objects.get(machine=machine)
    with storage.primary_account().store(machine.container) as primary:
        oldest = min(blob.modified for blob in primary.list())
    lag = (state.checked_at or timezone.now()) - oldest
    return {
        "data_mb": megabytes,
        "stored_bytes": result.added_bytes,
        "blobs": job.details["blobs"],
        "backup_seconds": round(backup_s, 1),
        "replication_pass_seconds": round(pass_s, 1),
        "replication_mb_per_s": round(job.bytes_transferred / pass_s / 1e6, 1),
        "lag_at_catch_up_seconds": round(lag.total_seconds(), 1),
        "job_status": job.status,
        "pending_after": state.pending_blobs,
    }


if __name__ == "__main__":
    main()
