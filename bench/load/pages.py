"""Each portal page's cost per render, in-process: CPU ms (this process only: the database's
own CPU is not in it), wall ms and queries, for the pages ``bench.load`` times under load.

    python -m bench.load --pg postgres://postgres@127.0.0.1:5432 --keep --duration 10
    DATABASE_URL=postgres://postgres@127.0.0.1:5432/haven_load_bench REDIS_URL=redis://… \\
        python -m bench.load.pages --renders 15

Against a database ``bench.load`` seeded and kept (``--keep``): its owner, the first vault
and machine, a queued job. Run it from main's tree and a branch's, back to back, to compare.
"""

from __future__ import annotations

import argparse
import json
import os
import time


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--renders", type=int, default=15)
    parser.add_argument("--page", default="", help="only the pages whose name contains this")
    parser.add_argument("--machine", default="", help="the machine (name) of the machine pages")
    args = parser.parse_args()
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "portal.settings")
    import django

    django.setup()
    from django.db import connection
    from django.test import Client
    from django.test.utils import CaptureQueriesContext

    from agents.models import Machine
    from bench.load.__main__ import PAGES
    from jobs.models import Job
    from portal.models import User

    owner = User.objects.get(username="owner")
    machines = Machine.objects.order_by("name")
    machine = (machines.filter(name=args.machine) if args.machine else machines).first()
    assert machine is not None, "seed the database with bench.load first (--keep)"
    job = Job.objects.filter(status=Job.Status.QUEUED).order_by("created_at").first() or (
        Job.objects.first()
    )
    names = {"vault": machine.vault_id, "machine": machine.pk, "job": job.pk if job else ""}
    client = Client(HTTP_HOST="127.0.0.1")
    client.force_login(owner, backend="django.contrib.auth.backends.ModelBackend")
    results = {}
    for name, path in PAGES.items():
        if args.page not in name:
            continue
        url = path.format(**names)
        assert client.get(url).status_code == 200, (name, url)  # warm
        cpu, wall = [], []
        for _ in range(args.renders):
            with CaptureQueriesContext(connection) as queries:
                started, started_cpu = time.perf_counter(), time.process_time()
                response = client.get(url)
                cpu.append((time.process_time() - started_cpu) * 1000)
                wall.append((time.perf_counter() - started) * 1000)
        results[name] = {
            "cpu_ms_median": round(sorted(cpu)[len(cpu) // 2], 1),
            "cpu_ms_min": round(min(cpu), 1),
            "wall_ms_median": round(sorted(wall)[len(wall) // 2], 1),
            "queries": len(queries),
            "bytes": len(response.content),
        }
    print(json.dumps({"load_average": os.getloadavg(), "pages": results}, indent=2))


if __name__ == "__main__":
    main()
