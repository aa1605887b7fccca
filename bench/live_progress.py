"""Live progress: the portal's cost per progress event (event→DOM latency: bench/live_latency.py).

    .venv/bin/python bench/live_progress.py [--jobs 50] [--events 1000]

Part 1 (done): ``--jobs`` running backups each post progress events through the real agent
API view (token auth, JSON, the Job UPDATE, two fragment renders, group_send to the
in-memory layer) in one process; reports CPU seconds per 1,000 events and the per-event
p50/p95 handling time. It uses a throw-away SQLite database under a temporary
HAVEN_DATA_DIR, so it never touches a real installation.

Part 2 is ``bench/live_latency.py``: 50 jobs at once against a live daphne portal with
Chromium watching job pages, measuring agent POST → DOM update p50/p95 (target p95 < 1 s).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=50)
    parser.add_argument("--events", type=int, default=1000)
    parser.add_argument(
        "--servers",
        action="store_true",
        help="use DATABASE_URL and REDIS_URL from the environment (a throw-away database!)",
    )
    parser.add_argument("--profile", type=int, default=0, help="print the top N functions")
    args = parser.parse_args()

    data_dir = tempfile.mkdtemp(prefix="haven-bench-")
    if not args.servers:
        for name in ("DATABASE_URL", "REDIS_URL"):
            os.environ.pop(name, None)
    os.environ["HAVEN_DATA_DIR"] = data_dir
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "portal.settings")
    import django

    django.setup()
    from django.core.management import call_command

    call_command("migrate", verbosity=0)

    from django.test import Client
    from django.utils import timezone

    from agents.api_auth import machine_token_issue
    from agents.models import Machine
    from jobs import policy_rules, services
    from portal import realtime
    from portal.models import ResourceGroup, Subscription
    from vaults.models import Vault

    services._send_to_machine = lambda *a, **k: None  # no agents to reach here
    realtime.serving_pid = os.getpid()  # push straight into this process's channel layer
    sub = Subscription.objects.create(name="Bench")
    rg = ResourceGroup.objects.create(subscription=sub, name="rg", location="West Europe")
    vault = Vault.objects.create(
        subscription=sub, resource_group=rg, name="v", location="x", state="ready"
    )
    spec = policy_rules.default_spec()
    spec["items"] = ["/data"]
    jobs = []
    for i in range(args.jobs):
        machine = Machine.objects.create(vault=vault, name=f"m{i}", last_seen_at=timezone.now())
        services.policy_save(machine=machine, spec=spec)
        job = services.backup_start(machine=machine)
        jobs.append((job, machine_token_issue(machine=machine)))

    client = Client(HTTP_HOST="127.0.0.1")
    timings = []
    profiler = None
    if args.profile:
        import cProfile

        profiler = cProfile.Profile(time.process_time)  # CPU, not waiting
        profiler.enable()
    cpu_start = time.process_time()
    wall_start = time.perf_counter()
    for n in range(args.events):
        job, token = jobs[n % len(jobs)]
        event = {
            "type": "progress",
            "phase": "backing_up",
            "files_done": n,
            "files_total": args.events,
            "bytes_done": n * 1_000_000,
            "bytes_total": args.events * 1_000_000,
            "stored_bytes": n * 400_000,
            "rate_bps": 50_000_000,
            "eta_s": 12.5,
            "current": f"/data/dir{n % 97}/file-{n}.bin",
        }
        started = time.perf_counter()
        response = client.post(
            f"/api/agent/jobs/{job.pk}/progress/",
            data=json.dumps(event),
            content_type="application/json",
            HTTP_AUTHORIZATION=f"Bearer {token}",
        )
        timings.append(time.perf_counter() - started)
        assert response.status_code == 200, response.content
    cpu = time.process_time() - cpu_start
    wall = time.perf_counter() - wall_start
    if profiler is not None:
        import pstats

        profiler.disable()
        pstats.Stats(profiler).sort_stats(os.environ.get("BENCH_SORT", "cumulative")).print_stats(
            args.profile
        )
    timings.sort()
    result = {
        "jobs": args.jobs,
        "events": args.events,
        "portal_cpu_s_per_1000_events": round(cpu / args.events * 1000, 3),
        "wall_s": round(wall, 3),
        "per_event_ms_p50": round(statistics.median(timings) * 1000, 2),
        "per_event_ms_p95": round(timings[int(len(timings) * 0.95) - 1] * 1000, 2),
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
