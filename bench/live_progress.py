"""Live progress: the portal's cost per progress event (event→DOM latency: bench/live_latency.py).

    .venv/bin/python bench/live_progress.py [--jobs 50] [--events 1000]

Part 1 (done): ``--jobs`` running backups each post progress events through the real agent
API view (token auth, JSON, the Job UPDATE, two fragment renders, group_send to the
in-memory layer) in one process; reports CPU seconds per 1,000 events and the per-event
p50/p95 handling time. It uses a throw-away SQLite database under a temporary
HAVEN_DATA_DIR, so it never touches a real installation.

``--servers --hot`` posts through the ASGI app instead (``portal.hotpath`` in front of
Django, as daphne serves it less the gate and the HTTP parsing): the steady reports are
answered on the event loop (docs/benchmarks.md, "Load").

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
    parser.add_argument(
        "--hot",
        action="store_true",
        help="post through the ASGI app (portal.hotpath in front of Django, needs --servers) "
        "instead of Django's test client: steady reports are answered on the event loop",
    )
    args = parser.parse_args()
    if args.hot and not args.servers:
        raise SystemExit("--hot needs --servers (the hot path exists only with Redis)")

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
    post = _asgi_poster() if args.hot else None
    if post is not None:  # each job's first report starts it (Django's view), untimed
        for job, token in jobs:
            post(f"/api/agent/jobs/{job.pk}/progress/", token, {"phase": "backing_up"})
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
        if post is not None:
            status, content = post(f"/api/agent/jobs/{job.pk}/progress/", token, event)
        else:
            response = client.post(
                f"/api/agent/jobs/{job.pk}/progress/",
                data=json.dumps(event),
                content_type="application/json",
                HTTP_AUTHORIZATION=f"Bearer {token}",
            )
            status, content = response.status_code, response.content
        timings.append(time.perf_counter() - started)
        assert status == 200, content
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
        "path": "hot (event loop)" if args.hot else "Django view",
        "jobs": args.jobs,
        "events": args.events,
        "portal_cpu_s_per_1000_events": round(cpu / args.events * 1000, 3),
        "wall_s": round(wall, 3),
        "per_event_ms_p50": round(statistics.median(timings) * 1000, 2),
        "per_event_ms_p95": round(timings[int(len(timings) * 0.95) - 1] * 1000, 2),
    }
    print(json.dumps(result, indent=2))


def _asgi_poster():
    """``post(path, token, body) -> (status, body)`` through the portal's ASGI app as daphne
    serves it (the hot path in front of Django; the gate is daphne's), on one event loop
    kept for the whole run, so its batches and pools live as in a server."""
    import asyncio

    from django.core.asgi import get_asgi_application

    from portal import hotpath

    app = hotpath.serve(get_asgi_application())
    loop = asyncio.new_event_loop()

    async def call(path: str, token: str, body: dict):
        raw = json.dumps(body).encode()
        scope = {
            "type": "http", "method": "POST", "path": path, "raw_path": path.encode(),
            "query_string": b"", "scheme": "http", "http_version": "1.1",
            "client": ("127.0.0.1", 5000), "server": ("127.0.0.1", 80),
            "asgi": {"version": "3.0"},
            "headers": [
                (b"authorization", f"Bearer {token}".encode()),
                (b"content-type", b"application/json"),
                (b"content-length", str(len(raw)).encode()),
                (b"host", b"127.0.0.1"),
            ],
        }  # fmt: skip
        messages = [{"type": "http.request", "body": raw, "more_body": False}]
        answer: dict = {"body": b""}

        async def receive():
            if messages:
                return messages.pop(0)
            await asyncio.sleep(3600)

        async def send(message):
            if message["type"] == "http.response.start":
                answer["status"] = message["status"]
            else:
                answer["body"] += message.get("body", b"")

        await app(scope, receive, send)
        await asyncio.sleep(0)  # let a due batch leave, as a server's loop would
        return answer["status"], answer["body"]

    return lambda path, token, body: loop.run_until_complete(call(path, token, body))


if __name__ == "__main__":
    main()
