"""Live progress, end to end: agent progress POST → job page DOM update in Chromium.

    .venv/bin/python -m bench.live_latency [--jobs 50] [--watch 10] [--rate 2] [--seconds 20]
        [--servers [--db-name haven_bench_latency]]

A real portal (daphne, the project's ASGI app, as ``make run`` starts it: one process with
the embedded defaults, ``HAVEN_PORTAL_PROCESSES`` with ``--servers``; in a throw-away data
directory) receives progress events from ``--jobs`` simulated agents at once, each posting
``--rate`` events a second through the real agent API (token auth, JSON, Job update,
fragment renders, group push) with the agent's own client (``PortalClient``, which waits
out a busy portal's Retry-After: an event it could not send is counted as deferred, and the
next tick carries newer progress). Chromium keeps ``--watch`` job pages open; a
MutationObserver in each page records when the event's marker (its current file) appears.
It prints p50/p95/max latency from the agent's POST to the DOM update, the events lost
(accepted but never shown), the answers by status, the peak database and Redis
connections and threads of a portal process (the most any one held: the bounds are per
process), and the portal processes' CPU seconds per 1,000 events (from /proc).
Target (issue 6): p95 under 1 s with 50 jobs.

``--servers`` keeps ``DATABASE_URL`` and ``REDIS_URL`` (both must be set) instead of the
embedded defaults, with the database name replaced by ``--db-name``, created afresh on the
same server and dropped at the end: the developer's own database is never touched. Redis
keys are those of a portal (rate-limit counters, the channel layer's): give a Redis
database you can spare in ``REDIS_URL``. The portal's own bounds come from the environment
as in production (HAVEN_PORTAL_CONCURRENCY, HAVEN_DB_POOL_SIZE, ... docs/configuration.md).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import requests

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

BROWSER_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
LAST_PUSH_SECONDS = 10.0
OBSERVER = """
(jobId) => {
  // Every marker the page showed: the job block's text when the observer runs, and the
  // texts a swap replaced before it ran (two reports of one job in one pushed batch are
  // applied in one task: the first is in the DOM, then replaced, before any callback).
  window.__seen = {};
  window.__replaced = {};
  const note = (text, replaced) => {
    const match = text && text.match(/marker-(\\d+)-(\\d+)/);
    if (!match || match[2] in window.__seen) return;
    window.__seen[match[2]] = Date.now();
    if (replaced) window.__replaced[match[2]] = true;
  };
  new MutationObserver((records) => {
    for (const record of records) {
      if (record.type === "characterData") note(record.oldValue, true);
      for (const node of record.removedNodes) note(node.textContent, true);
    }
    const el = document.getElementById(`job-${jobId}-live`);
    if (el) note(el.textContent, false);
  }).observe(document.body,
    {subtree: true, childList: true, characterData: true, characterDataOldValue: true});
}
"""


def _cpu_seconds(pids: list[int]) -> float:
    ticks = 0
    for pid in pids:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        ticks += int(fields[11]) + int(fields[12])
    return ticks / os.sysconf("SC_CLK_TCK")


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _use_own_database(name: str) -> str:
    """Point DATABASE_URL at a fresh database ``name`` on the same server; its URL."""
    import psycopg

    url = os.environ.get("DATABASE_URL", "")
    parts = urlsplit(url)
    if parts.scheme not in ("postgres", "postgresql") or not os.environ.get("REDIS_URL"):
        raise SystemExit("--servers needs DATABASE_URL (PostgreSQL) and REDIS_URL set")
    if parts.path.lstrip("/") == name:
        raise SystemExit(f"DATABASE_URL already names {name}: pick another --db-name")
    admin = urlunsplit(parts._replace(path="/postgres"))
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{name}"')
    own = urlunsplit(parts._replace(path=f"/{name}"))
    os.environ["DATABASE_URL"] = own
    return admin


def _drop_database(admin: str, name: str) -> None:
    import psycopg

    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _seed(jobs: int, password: str):
    """Users, a vault and ``jobs`` running backup jobs, each with its machine's token."""
    import django

    django.setup()
    from django.core.management import call_command
    from django.utils import timezone

    call_command("migrate", verbosity=0)
    from agents.api_auth import machine_token_issue
    from agents.models import Machine
    from jobs import policy_rules, services
    from portal import realtime
    from portal.models import ResourceGroup, Subscription, User
    from vaults.models import Vault

    services._send_to_machine = lambda *a, **k: True  # the simulated agents need no task
    services._enqueue = lambda *a, **k: None  # nor does the portal worker (not running)
    realtime.serving_pid = os.getpid()  # no portal is up yet: seeding pushes go nowhere
    User.objects.create_superuser(username="bench", password=password)
    sub = Subscription.objects.create(name="Bench")
    rg = ResourceGroup.objects.create(subscription=sub, name="rg", location="West Europe")
    vault = Vault.objects.create(
        subscription=sub, resource_group=rg, name="v", location="x", state="ready"
    )
    spec = policy_rules.default_spec()
    spec["items"] = ["/data"]
    seeded = []
    for i in range(jobs):
        machine = Machine.objects.create(vault=vault, name=f"m{i}", last_seen_at=timezone.now())
        services.policy_save(machine=machine, spec=spec)
        job = services.backup_start(machine=machine)
        seeded.append((str(job.pk), machine_token_issue(machine=machine)))
    from django.db import connections

    connections.close_all()  # the portal's connections are the ones counted
    return seeded


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=50)
    parser.add_argument("--watch", type=int, default=10, help="job pages Chromium keeps open")
    parser.add_argument("--rate", type=float, default=2.0, help="events per second per job")
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument(
        "--servers",
        action="store_true",
        help="use DATABASE_URL (with --db-name) and REDIS_URL instead of embedded defaults",
    )
    parser.add_argument("--db-name", default="haven_bench_latency")
    args = parser.parse_args()

    data_dir = tempfile.mkdtemp(prefix="haven-latency-")
    port = _free_port()
    base = f"http://127.0.0.1:{port}"
    admin = _use_own_database(args.db_name) if args.servers else None
    dropped = ["AZURE_STORAGE_CONNECTION_STRING"]
    if not args.servers:
        dropped += ["DATABASE_URL", "REDIS_URL"]
    for name in dropped:
        os.environ.pop(name, None)
    os.environ.update(
        HAVEN_DATA_DIR=data_dir, HAVEN_PORT=str(port), DJANGO_SETTINGS_MODULE="portal.settings"
    )
    password = "bench-password-1234"
    seeded = _seed(args.jobs, password)

    # As make run starts it: HAVEN_PORTAL_PROCESSES daphne processes on one port (one per
    # core with Redis, one with the embedded defaults).
    from django.conf import settings

    from portal import serve

    sock = serve.listening_socket("127.0.0.1", port)
    servers = serve.start_web(
        sock,
        settings.HAVEN_PORTAL_PROCESSES,
        env=os.environ.copy(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    sock.close()
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                requests.get(base + "/signin/", timeout=5)
                break
            except (requests.ConnectionError, requests.Timeout):
                if time.monotonic() > deadline:
                    raise SystemExit("the portal did not start") from None
                time.sleep(0.2)
        result = _measure(args, base, password, seeded, [server.pid for server in servers])
    finally:
        for server in servers:
            server.terminate()
        for server in servers:
            server.wait(10)
        if admin:
            _drop_database(admin, args.db_name)
    print(json.dumps(result, indent=2))


class _Peaks:
    """Samples the portal processes' connections to PostgreSQL and Redis and their threads
    (the most any one process held: the bounds are per process)."""

    def __init__(self, pids: list[int]):
        from tests.support.procnet import tcp_connections_to, thread_count

        self.pids = pids
        self.count, self.threads = tcp_connections_to, thread_count
        self.ports = {}
        for name, default in (("DATABASE_URL", 5432), ("REDIS_URL", 6379)):
            url = os.environ.get(name)
            if url:
                self.ports[name] = urlsplit(url).port or default
        self.peak: Counter[str] = Counter()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.1):
            try:
                for pid in self.pids:
                    for name, port in self.ports.items():
                        self.peak[name] = max(self.peak[name], self.count(pid, port))
                    self.peak["threads"] = max(self.peak["threads"], self.threads(pid))
            except OSError:
                return

    def __enter__(self) -> _Peaks:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(5)


def _measure(args, base, password, seeded, server_pids: list[int]) -> dict:
    from playwright.sync_api import sync_playwright

    from agents.runtime.portal_api import PortalBusy, PortalClient, PortalError, PortalRefused

    watched = seeded[: args.watch]
    sent: dict[tuple[str, int], float] = {}
    errors: list[str] = []
    answers: Counter[str] = Counter()
    with sync_playwright() as pw:
        browser = pw.chromium.launch(
            executable_path="/usr/bin/chromium", headless=True, args=BROWSER_ARGS
        )
        context = browser.new_context()
        page = context.new_page()
        page.goto(base + "/signin/")
        page.get_by_label("User name").fill("bench")
        page.get_by_label("Password").fill(password)
        page.get_by_role("button", name="Sign in").click()
        page.wait_for_url(base + "/")
        pages = []
        for job_id, _token in watched:
            tab = context.new_page()
            tab.goto(f"{base}/jobs/{job_id}/")
            tab.wait_for_function("() => document.querySelector('#live') !== null")
            tab.evaluate(OBSERVER, job_id)
            pages.append(tab)
        time.sleep(2)  # let every socket connect

        stop = time.monotonic() + args.seconds
        cpu_before = _cpu_seconds(server_pids)

        def agent(index: int, job_id: str, token: str) -> None:
            client = PortalClient(base, token=token)
            seq = 0
            next_at = time.monotonic() + index / args.jobs / args.rate  # spread the starts
            while next_at < stop:
                time.sleep(max(0.0, next_at - time.monotonic()))
                client.wait_while_busy()  # as the agent does: nothing before Retry-After
                while next_at < time.monotonic() - 1 / args.rate:
                    next_at += 1 / args.rate  # like PortalSink: only the latest progress is sent
                    answers["ticks skipped (agent still waiting)"] += 1
                if next_at >= stop:
                    break
                seq += 1
                event = {
                    "type": "progress",
                    "phase": "backing_up",
                    "files_done": seq,
                    "files_total": 100000,
                    "bytes_done": seq * 1_000_000,
                    "bytes_total": 100000 * 1_000_000,
                    "stored_bytes": seq * 400_000,
                    "rate_bps": 50_000_000,
                    "eta_s": 60,
                    "current": f"/data/marker-{index}-{seq}",
                }
                posted_at = time.time() * 1000
                try:
                    client.post(f"jobs/{job_id}/progress/", event)
                except PortalBusy:
                    answers["503 busy, Retry-After"] += 1
                except (PortalRefused, PortalError) as exc:
                    answers["error"] += 1
                    errors.append(str(exc)[:200])
                else:
                    answers["200"] += 1
                    sent[(job_id, seq)] = posted_at
                next_at += 1 / args.rate
            client.close()

        threads = [
            threading.Thread(target=agent, args=(i, job_id, token))
            for i, (job_id, token) in enumerate(seeded)
        ]
        with _Peaks(server_pids) as peaks:
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
        cpu = _cpu_seconds(server_pids) - cpu_before
        # The last pushes: until every watched event is shown, at most LAST_PUSH_SECONDS.
        wanted = {job_id: {str(seq) for (sent_job, seq) in sent if sent_job == job_id}
                  for _tab, (job_id, _token) in zip(pages, watched, strict=True)}  # fmt: skip
        until = time.monotonic() + LAST_PUSH_SECONDS
        while time.monotonic() < until:
            if all(
                wanted[job_id] <= set(tab.evaluate("() => Object.keys(window.__seen)"))
                for tab, (job_id, _token) in zip(pages, watched, strict=True)
            ):
                break
            time.sleep(0.25)
        latencies, lost, replaced, lost_at = [], 0, 0, []
        for tab, (job_id, _token) in zip(pages, watched, strict=True):
            seen = tab.evaluate("() => window.__seen")
            gone = tab.evaluate("() => window.__replaced")
            last = max((seq for (sent_job, seq) in sent if sent_job == job_id), default=0)
            for (sent_job, seq), at in sent.items():
                if sent_job != job_id:
                    continue
                if str(seq) in seen:
                    latencies.append(seen[str(seq)] - at)
                    replaced += str(seq) in gone
                else:
                    lost += 1
                    lost_at.append(seq - last)
        browser.close()
    latencies.sort()
    events = len(sent)
    return {
        "jobs": args.jobs,
        "portal_processes": len(server_pids),
        "servers": bool(args.servers),
        "watched_pages": len(watched),
        "events_accepted": events,
        "events_per_second": round(events / args.seconds, 1),
        "answers": dict(answers),
        "http_errors": len(errors),
        "first_error": errors[0] if errors else None,
        "portal_peak_db_connections": peaks.peak.get("DATABASE_URL"),
        "portal_peak_redis_connections": peaks.peak.get("REDIS_URL"),
        "portal_peak_threads": peaks.peak["threads"],
        "latency_ms_p50": round(statistics.median(latencies), 1) if latencies else None,
        "latency_ms_p95": round(latencies[int(len(latencies) * 0.95) - 1], 1)
        if latencies
        else None,
        "latency_ms_max": round(latencies[-1], 1) if latencies else None,
        "watched_events_not_shown": lost,
        # (of each: its number counted from its job's last event, 0 the last)
        "not_shown_from_last": sorted(lost_at),
        "watched_events_replaced_in_the_task_they_came": replaced,
        "portal_cpu_s_per_1000_events": round(cpu / events * 1000, 2) if events else None,
    }


if __name__ == "__main__":
    main()
