"""Load: a 2,000-machine fleet live on one portal, on loopback, bounded in time.

    .venv/bin/python -m bench.load --agents 2000 --jobs 200 --history 100000 \
        --points 20000 --watchers 50 --duration 60

It creates its own PostgreSQL database (``--database``, dropped at the end unless
``--keep``) on ``--pg`` and starts its own Redis (a private ``redis-server`` on a free
port: the agents' ACL users, broker, channel layer and cache), then the portal as ``make
run`` starts it (``HAVEN_PORTAL_PROCESSES`` daphne processes on one port, one per core by
default; ``--web-processes N`` to choose) and its worker. Seeded: the fleet (tokens and ACL users as registration makes them), the
running backups, and the history (``bulk_create``). Then for ``--duration`` seconds:
every agent heart-beats once a minute and waits on its queue as its ACL user; ``--jobs``
agents post progress once a second; ``--watchers`` websocket clients watch vaults and jobs;
the harness itself times each portal page in-process (with its query count).

Printed (JSON): page p50/p95 and queries, agent API p95 per endpoint, POST→socket
latency p50/p95/max and events lost, the portal's CPU per progress event (all its daphne
processes' CPU over the run / reports posted: heart-beats, starts and sockets included) and
the cores it used, and the CPU of Redis and
of the database's PostgreSQL backends over the run. Targets: docs/benchmarks.md ("Load").
"""

from __future__ import annotations

import argparse
import contextlib
import json
import multiprocessing
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from bench.load import clients  # noqa: E402


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    values = sorted(values)
    return values[min(len(values) - 1, int(len(values) * q))]


def _ms(value: float | None) -> float | None:
    return None if value is None else round(value * 1000, 1)


def _pg(admin_url: str, sql: str) -> None:
    import psycopg

    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(sql)


def _private_postgres(work: Path, children: list) -> str:
    """initdb and start a PostgreSQL of the bench's own (as the ``postgres`` user when run as
    root); returns its URL."""
    bindir = Path(subprocess.check_output(["pg_config", "--bindir"], text=True).strip())
    data = work / "pg"
    data.mkdir()
    user = None
    if os.geteuid() == 0:  # PostgreSQL refuses to run as root
        shutil.chown(work, "postgres")
        shutil.chown(data, "postgres")
        user = "postgres"
    subprocess.run(
        [str(bindir / "initdb"), "-D", str(data), "-U", "postgres", "--auth=trust"],
        check=True,
        stdout=subprocess.DEVNULL,
        user=user,
    )
    port = _free_port()
    server = subprocess.Popen(
        [
            str(bindir / "postgres"),
            "-D",
            str(data),
            "-p",
            str(port),
            "-c",
            "listen_addresses=127.0.0.1",
            "-c",
            f"unix_socket_directories={data}",
            "-c",
            "max_connections=400",
            "-c",
            "log_connections=on",
        ],
        stdout=subprocess.DEVNULL,
        stderr=open(work / "postgres.log", "w"),  # noqa: SIM115
        start_new_session=True,
        user=user,
    )
    children.append(server)
    url = f"postgres://postgres@127.0.0.1:{port}"
    import psycopg

    deadline = time.monotonic() + 30
    while True:
        try:
            psycopg.connect(f"{url}/postgres").close()
            return url
        except psycopg.OperationalError:
            if time.monotonic() > deadline:
                raise SystemExit("the private PostgreSQL did not start") from None
            time.sleep(0.3)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--agents", type=int, default=2000)
    parser.add_argument("--jobs", type=int, default=200)
    parser.add_argument("--history", type=int, default=100_000)
    parser.add_argument("--points", type=int, default=20_000)
    parser.add_argument("--watchers", type=int, default=50)
    parser.add_argument("--duration", type=float, default=60.0)
    parser.add_argument(
        "--pg",
        default="private",
        help="a server URL (postgres://user@host:port), or 'private' (default): a PostgreSQL "
        "of its own on a free port, so the portal's connections never crowd a shared one",
    )
    parser.add_argument("--database", default="haven_load_bench")
    parser.add_argument(
        "--web-processes",
        type=int,
        default=0,
        help="daphne processes on the portal's port (default: HAVEN_PORTAL_PROCESSES, "
        "which is the number of cores with Redis)",
    )
    parser.add_argument("--keep", action="store_true", help="keep the database afterwards")
    parser.add_argument("--log", default="/tmp/haven-load-portal.log", help="the portal's log")
    args = parser.parse_args()
    args.duration = min(args.duration, 600.0)  # bounded
    args.jobs = min(args.jobs, args.agents)

    work = Path(tempfile.mkdtemp(prefix="haven-load-"))
    redis_port, port = _free_port(), _free_port()
    children: list[subprocess.Popen] = []
    redis_server = subprocess.Popen(
        [
            "redis-server",
            "--port",
            str(redis_port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(work),
            "--maxclients",
            "10000",
        ],
        stdout=subprocess.DEVNULL,
    )
    children.append(redis_server)
    private = args.pg == "private"
    postgres: list[subprocess.Popen] = []
    if private:
        args.pg = _private_postgres(work, children)
        postgres.append(children[-1])
    _pg(f"{args.pg}/postgres", f'DROP DATABASE IF EXISTS "{args.database}"')
    _pg(f"{args.pg}/postgres", f'CREATE DATABASE "{args.database}"')
    base = f"http://127.0.0.1:{port}"
    os.environ.update(
        DATABASE_URL=f"{args.pg}/{args.database}",
        REDIS_URL=f"redis://127.0.0.1:{redis_port}/0",
        HAVEN_DATA_DIR=str(work / "data"),
        HAVEN_PORT=str(port),
        HAVEN_INTERNAL_URL=base,
        DJANGO_SETTINGS_MODULE="portal.settings",
    )
    os.environ.pop("AZURE_STORAGE_CONNECTION_STRING", None)
    try:
        result = _run(args, base, port, redis_server, children, postgres)
        print(json.dumps(result, indent=2))
    finally:
        for child in reversed(children):
            if child.poll() is None:
                # PostgreSQL: a fast shutdown (SIGINT), not a wait for its clients.
                child.send_signal(signal.SIGINT if child in postgres else signal.SIGTERM)
                try:
                    child.wait(15)
                except subprocess.TimeoutExpired:
                    child.kill()
        if not args.keep and not private:
            from django.db import connections

            connections.close_all()
            _pg(f"{args.pg}/postgres", f'DROP DATABASE IF EXISTS "{args.database}" WITH (FORCE)')
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


def _run(args, base: str, port: int, redis_server, children, postgres) -> dict:
    import django

    django.setup()
    from django.core.management import call_command

    time.sleep(0.5)  # redis-server listening
    call_command("migrate", interactive=False, verbosity=0)
    call_command("collectstatic", interactive=False, verbosity=0)
    from bench.load.seed import seed

    started = time.monotonic()
    seeded = seed(agents=args.agents, jobs=args.jobs, history=args.history, points=args.points)
    seed_s = time.monotonic() - started

    env = os.environ.copy()
    python = sys.executable
    log = open(args.log, "w")  # noqa: SIM115 (closed with the process)
    from django.conf import settings

    from portal import serve

    # As manage.py haven_run starts it: HAVEN_PORTAL_PROCESSES daphne processes on one port.
    processes = args.web_processes or settings.HAVEN_PORTAL_PROCESSES
    sock = serve.listening_socket("127.0.0.1", port)
    web = serve.start_web(sock, processes, env=env, stdout=log, stderr=log)
    sock.close()
    children.extend(web)
    worker = subprocess.Popen(
        [python, "-m", "celery", "-A", "portal", "worker", "-Q", "portal", "-c", "2",
         "--loglevel", "WARNING"],
        cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        start_new_session=True,
    )  # fmt: skip
    children.append(worker)
    import requests

    deadline = time.monotonic() + 60
    while True:
        try:
            requests.get(base + "/signin/", timeout=5)
            break
        except (requests.ConnectionError, requests.Timeout):  # the port is open before
            # the processes serve it: a first request waits in its queue meanwhile
            if time.monotonic() > deadline:
                raise SystemExit("the portal did not start") from None
            time.sleep(0.3)

    from django.test import Client

    from portal.models import User

    owner = User.objects.get(pk=seeded["owner_id"])
    vaults, fleet = seeded["vaults"], seeded["fleet"]
    watches = []
    for n in range(args.watchers):
        client = Client()
        client.force_login(owner, backend="django.contrib.auth.backends.ModelBackend")
        cookie = (
            f"{settings.SESSION_COOKIE_NAME}={client.cookies[settings.SESSION_COOKIE_NAME].value}"
        )
        if n % 2 == 0 or not args.jobs:
            watches.append((cookie, f"watch=vault:{vaults[n // 2 % len(vaults)]}"))
        else:
            watches.append((cookie, f"watch=job:{fleet[(n // 2) % args.jobs]['job']}"))

    ctx = multiprocessing.get_context("spawn")
    queues = {name: ctx.Queue() for name in ("broker", "watchers", "http")}
    listen_for = args.duration + 8  # the last reports' pushes arrive
    procs = {
        "broker": ctx.Process(
            target=clients.broker_agents,
            args=(
                int(os.environ["REDIS_URL"].rsplit(":", 1)[1].split("/")[0]),
                fleet,
                args.duration,
                queues["broker"],
            ),
        ),
        "watchers": ctx.Process(
            target=clients.watchers,
            args=(base.replace("http", "ws"), base, watches, listen_for, queues["watchers"]),
        ),
    }
    for proc in procs.values():
        proc.start()
    time.sleep(3)  # sockets open, agents logged in
    postmaster = postgres[0].pid if postgres else None
    webs = [w.pid for w in web]
    cpu0 = _cpu_now(webs, worker.pid, redis_server.pid, postmaster)
    t0 = time.monotonic()
    procs["http"] = ctx.Process(
        target=clients.http_agents,
        args=(base, fleet, args.jobs, args.duration, queues["http"]),
    )
    procs["http"].start()
    pages = _time_pages(owner, seeded, until=t0 + args.duration)
    results = {name: queues[name].get(timeout=120) for name in ("http", "broker")}
    cpu1 = _cpu_now(webs, worker.pid, redis_server.pid, postmaster)
    wall = time.monotonic() - t0
    results["watchers"] = queues["watchers"].get(timeout=60)
    for proc in procs.values():
        proc.join(10)
    summary = _summary(args, seed_s, wall, pages, results, cpu0, cpu1, fleet, seeded)
    summary["fleet"]["portal_processes"] = len(web)
    pg_log = Path(os.environ["HAVEN_DATA_DIR"]).parent / "postgres.log"
    if pg_log.exists():  # the private server logs each connection it accepts
        summary["cpu"]["postgresql_connections_opened"] = pg_log.read_text().count(
            "connection authorized"
        )
    return summary


def _cpu_now(web: list[int], worker: int, redis_pid: int, postmaster: int | None) -> dict:
    worker_cpu = clients.cpu_seconds(worker)
    for child in _children(worker):
        with contextlib.suppress(OSError):
            worker_cpu += clients.cpu_seconds(child)
    pg = None
    if postmaster is not None:
        # Backends come and go (one per portal connection): the postmaster's reaped
        # children's CPU plus the live ones'.
        pg = clients.cpu_seconds(postmaster, children=True)
        for child in _children(postmaster):
            with contextlib.suppress(OSError):
                pg += clients.cpu_seconds(child)
    return {
        "portal": sum(clients.cpu_seconds(pid) for pid in web),
        "worker": worker_cpu,
        "redis": clients.cpu_seconds(redis_pid),
        "pg": pg,
    }


def _children(pid: int) -> list[int]:
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return []
    return [int(p) for p in text.split()]


PAGES = {
    "home": "/",
    "vault overview": "/vaults/{vault}/",
    "backup items": "/jobs/vaults/{vault}/backup-items/",
    "jobs list": "/jobs/",
    "job page": "/jobs/{job}/",
    "machine page": "/machines/{machine}/",
    "recovery wizard": "/recover/{machine}/to/{machine}/",
}


def _time_pages(owner, seeded, *, until: float) -> dict:
    from django.db import connection
    from django.test import Client
    from django.test.utils import CaptureQueriesContext

    client = Client(HTTP_HOST="127.0.0.1")
    client.force_login(owner, backend="django.contrib.auth.backends.ModelBackend")
    names = {
        "vault": seeded["vaults"][0],
        "job": seeded["fleet"][0].get("job") or seeded["sample_job"],
        "machine": seeded["fleet"][0]["machine"],
    }
    timings: dict[str, list[float]] = {name: [] for name in PAGES}
    queries: dict[str, int] = {}
    statuses: dict[str, int] = {}
    time.sleep(5)  # the fleet at full rate
    while time.monotonic() < until:
        for name, path in PAGES.items():
            with CaptureQueriesContext(connection) as captured:
                started = time.perf_counter()
                response = client.get(path.format(**names))
                timings[name].append(time.perf_counter() - started)
            queries[name] = len(captured)
            statuses[name] = response.status_code
        time.sleep(0.5)
    return {
        name: {
            "p50_ms": _ms(_pct(timings[name], 0.5)),
            "p95_ms": _ms(_pct(timings[name], 0.95)),
            "queries": queries.get(name),
            "status": statuses.get(name),
            "samples": len(timings[name]),
        }
        for name in PAGES
    }


def _summary(args, seed_s, wall, pages, results, cpu0, cpu1, fleet, seeded) -> dict:
    http = results["http"]
    posted = {f"{job}/{seq}" for job, seq in http["posted"] if seq > 0}
    vault_of = {agent["job"]: agent["vault"] for agent in fleet[: args.jobs]}
    latencies: list[float] = []
    lost = expected = 0
    socket_errors = []
    drops = sum(w.get("drops", 0) for w in results["watchers"])
    for watcher in results["watchers"]:
        if "error" in watcher:
            socket_errors.append(watcher["error"])
            continue
        kind, _, target = watcher["query"].split("=", 1)[1].partition(":")
        mine = {
            key
            for key in posted
            if (kind == "job" and key.split("/")[0] == target)
            or (kind == "vault" and vault_of.get(key.split("/")[0]) == target)
        }
        heard = watcher["heard"]
        expected += len(mine)
        lost += len(mine - heard.keys())
        latencies.extend(heard[key] for key in mine if key in heard)
    progress_events = len(http["posted"])
    portal_cpu = cpu1["portal"] - cpu0["portal"]
    pg_cpu = None if cpu0["pg"] is None else round(cpu1["pg"] - cpu0["pg"], 2)
    return {
        "machine": {"cpus": os.cpu_count(), "load_average": os.getloadavg()},
        "fleet": {
            "agents": args.agents,
            "running_jobs": args.jobs,
            "history_jobs": args.history,
            "recovery_points": min(args.points, args.history),
            "watchers": args.watchers,
            "duration_s": round(wall, 1),
            "seed_s": round(seed_s, 1),
        },
        "pages": pages,
        "agent_api": {
            endpoint: {
                "count": len(values),
                "p50_ms": _ms(_pct(values, 0.5)),
                "p95_ms": _ms(_pct(values, 0.95)),
                # Past the fleet's burst of starts and first reports (the run's first 10 s).
                "p95_after_10s_ms": _ms(
                    _pct(
                        [
                            value
                            for value, at in zip(values, http["sent_at"][endpoint], strict=True)
                            if at >= 10
                        ],
                        0.95,
                    )
                ),
            }
            for endpoint, values in http["latency"].items()
        },
        "agent_api_errors": http["errors"],
        "broker": results["broker"],
        "live": {
            "reports_posted": progress_events,
            "deliveries_expected": expected,
            "deliveries_lost": lost,
            "post_to_socket_p50_ms": _ms(_pct(latencies, 0.5)),
            "post_to_socket_p95_ms": _ms(_pct(latencies, 0.95)),
            "post_to_socket_max_ms": _ms(max(latencies) if latencies else None),
            "socket_drops": drops,
            "socket_errors": socket_errors[:3],
        },
        "cpu": {
            "portal_s": round(portal_cpu, 2),
            "portal_ms_per_progress_event": round(portal_cpu / max(1, progress_events) * 1000, 2),
            "portal_cores_used": round(portal_cpu / max(wall, 0.001), 2),
            "worker_s": round(cpu1["worker"] - cpu0["worker"], 2),
            "redis_s": round(cpu1["redis"] - cpu0["redis"], 2),
            "postgresql_s": pg_cpu,
        },
    }


if __name__ == "__main__":
    main()
