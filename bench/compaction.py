"""``python -m bench.compaction``: Haven's compaction against ``restic forget --prune``.

Ten backups of a tree that changes between them (10% of the files get a new block, 2% are
removed and as many new ones appear), into a Haven repository and a restic repository, in
turn; the last five are also backed up into a fresh Haven repository, which is "a fresh
backup of what remains". Then the five oldest recovery points are deleted and the space
reclaimed, each tool as a child process timed like ``bench/run``'s stages:

* Haven: what the portal and the agent do after retention (``jobs.services.pruning`` and
  ``jobs.services.compaction``): the manifests go, the packs no kept point names go, the
  agent's compaction rewrites the wasteful packs, the portal's check of its report
  (``jobs.compaction_check``, the same function) reads the moved bytes back, and the old
  packs go;
* restic: ``restic forget <the five ids> --prune`` (its defaults: ``--max-unused 5%``).

Printed: each step's wall time, stored size before and after (``du -sb``), Haven's size after
compaction against the fresh repository's, and a restore of the newest point checked against
the tree. docs/benchmarks.md ("Compaction") has the figures.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import time
from pathlib import Path

from bench.__main__ import PYTHON, REPO_ROOT, Haven, Restic, ensure_tools, run, warm
from bench.dataset import build

ROUNDS = 10


def mutate(src: Path, round_no: int) -> None:
    """One round of churn, the same for every tool (a fixed seed per round)."""
    rng = random.Random(1000 + round_no)
    files = sorted(p for p in src.rglob("*") if p.is_file() and not p.is_symlink())
    changed = rng.sample(files, max(1, len(files) // 10))
    for p in changed[: len(changed) * 8 // 10]:
        data = bytearray(p.read_bytes())
        at = rng.randrange(len(data) + 1)
        data[at:at] = rng.randbytes(4096)
        p.write_bytes(bytes(data))
    for p in changed[len(changed) * 8 // 10 :]:
        p.unlink()
    new = src / f"new-{round_no}"
    new.mkdir(exist_ok=True)
    for n in range(len(changed) - len(changed) * 8 // 10):
        donor = rng.choice(files)
        if donor.exists():
            blob = donor.read_bytes()
            new.joinpath(f"{n}.bin").write_bytes(blob[::-1] + rng.randbytes(512))


def haven_prune(repo_dir: Path, password_file: Path, forget: list[str], out: Path) -> None:
    """The child: the portal's retention and collection, the agent's compaction, the
    portal's check and deletions; each step's time goes to ``out`` (JSON)."""
    from agents.runtime.blobstore.local import LocalDirectoryStore
    from agents.runtime.engine import Repository, layout
    from agents.runtime.engine.compact import run_compact
    from jobs.compaction_check import compaction_check

    times = {}
    started = time.monotonic()
    store = LocalDirectoryStore(repo_dir)
    # the portal: expired manifests, then the packs no kept point names (it has the lists
    # as each point's pack_ids; here they are read from the kept manifests)
    for point in forget:
        store.delete(layout.manifest_blob(point))
    repo = Repository.open(store, password_file.read_text().strip())
    keep: set[str] = set()
    for rp in repo.list_recovery_points():
        keep.update(rp.packs)
    for blob in list(store.list(layout.DATA_PREFIX)):
        if layout.pack_id_of(blob.name) not in keep:
            store.delete(blob.name)
    times["retention_s"] = time.monotonic() - started
    mark = time.monotonic()
    result = run_compact(Repository.open(store, password_file.read_text().strip()))
    times["compact_s"] = time.monotonic() - mark
    mark = time.monotonic()
    compaction_check(report=result.report, store=store)
    for old in result.report.packs:
        store.delete(layout.pack_blob(old.pack))
    times["check_delete_s"] = time.monotonic() - mark
    times["packs_rewritten"] = result.packs_rewritten
    times["packs_total"] = result.packs_total
    times["bytes_rewritten"] = result.bytes_rewritten
    times["bytes_written"] = result.bytes_written
    out.write_text(json.dumps(times))


def restic_ids(tool: Restic) -> list[str]:
    out = subprocess.run(
        ["restic", "snapshots", "--json"],
        env={**os.environ, **tool.env},
        capture_output=True,
        text=True,
        check=True,
    )
    snaps = sorted(json.loads(out.stdout), key=lambda s: s["time"])
    return [s["short_id"] for s in snaps]


def haven_ids(tool: Haven) -> list[str]:
    from agents.runtime.blobstore.local import LocalDirectoryStore
    from agents.runtime.engine import Repository

    repo = Repository.open(LocalDirectoryStore(tool.repo), "benchmark passphrase")
    return [rp.id for rp in repo.list_recovery_points()]


def same_tree(a: Path, b: Path) -> bool:
    done = subprocess.run(["diff", "-r", "--no-dereference", str(a), str(b)], capture_output=True)
    return done.returncode == 0


def main() -> None:
    ap = argparse.ArgumentParser(prog="python -m bench.compaction")
    ap.add_argument("--size", type=float, default=5e8, help="data set bytes (default ~500 MB)")
    ap.add_argument("--files", type=int, default=12_000)
    ap.add_argument("--scratch", default="/work/benchdata")
    ap.add_argument("--json", help="also write the results here")
    ap.add_argument("--haven-prune", nargs=4, metavar=("REPO", "PWFILE", "IDS", "OUT"),
                    help=argparse.SUPPRESS)  # fmt: skip
    args = ap.parse_args()
    if args.haven_prune:
        repo, pw, ids, out = args.haven_prune
        haven_prune(Path(repo), Path(pw), ids.split(","), Path(out))
        return

    ensure_tools()
    scratch = Path(args.scratch)
    info = build(scratch / f"size-{int(args.size)}", size=int(args.size), files=args.files)
    print(f"data set: {info['files']} files, {info['bytes'] / 1e9:.2f} GB", flush=True)
    work = scratch / "run-compaction"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    src = work / "src"
    run(["cp", "-a", info["path"], str(src)])
    haven, restic = Haven(work, src), Restic(work, src)
    fresh = Haven(work / "fresh", src)
    for tool in (haven, restic, fresh):
        tool.init()
    for round_no in range(ROUNDS):
        if round_no:
            mutate(src, round_no)
        warm(src)
        for tool in (haven, restic) + ((fresh,) if round_no >= ROUNDS // 2 else ()):
            sample = tool.backup(f"r{round_no}")
            label = "fresh" if tool is fresh else tool.name
            print(f"round {round_no + 1:2} {label:7} backup {sample.wall:6.2f} s", flush=True)
    results: dict = {"data": info}
    before = {"haven": haven.stored(), "restic": restic.stored()}
    print(f"stored before: haven {before['haven'] / 1e6:.1f} MB, "
          f"restic {before['restic'] / 1e6:.1f} MB", flush=True)  # fmt: skip

    forget_haven = haven_ids(haven)[: ROUNDS // 2]
    steps = work / "haven-steps.json"
    h = run(
        [str(PYTHON), "-m", "bench.compaction", "--haven-prune", str(haven.repo),
         str(haven.work / "pw"), ",".join(forget_haven), str(steps)],
        cwd=REPO_ROOT,
    )  # fmt: skip
    forget_restic = restic_ids(restic)[: ROUNDS // 2]
    r = run(["restic", "forget", *forget_restic, "--prune"], env=restic.env)
    after = {"haven": haven.stored(), "restic": restic.stored(), "fresh": fresh.stored()}
    detail = json.loads(steps.read_text())
    target = work / "restore"
    haven.restore(target)
    restored_ok = same_tree(src, target / str(src).lstrip("/"))
    results.update(
        haven={"wall": h.wall, "cpu": h.cpu, "rss_mb": h.rss_mb, **detail},
        restic={"wall": r.wall, "cpu": r.cpu, "rss_mb": r.rss_mb},
        before=before,
        after=after,
        restored_latest_matches=restored_ok,
    )
    print()
    print("| | stored before | stored after | reclaim wall / CPU / peak RSS |")
    print("|---|---|---|---|")
    print(f"| haven | {before['haven'] / 1e6:.1f} MB | {after['haven'] / 1e6:.1f} MB | "
          f"{h.wall:.2f} s / {h.cpu:.2f} s / {h.rss_mb:.0f} MB |")  # fmt: skip
    print(f"| restic forget --prune | {before['restic'] / 1e6:.1f} MB | "
          f"{after['restic'] / 1e6:.1f} MB | {r.wall:.2f} s / {r.cpu:.2f} s / {r.rss_mb:.0f} MB |")  # fmt: skip
    print(f"| haven, fresh backup of the five kept states | | {after['fresh'] / 1e6:.1f} MB | |")
    print()
    print(f"haven after compaction / fresh: {after['haven'] / after['fresh']:.3f}")
    print(f"haven steps: retention+collection {detail['retention_s']:.2f} s, compaction "
          f"{detail['compact_s']:.2f} s ({detail['packs_rewritten']} of {detail['packs_total']} "
          f"packs, {detail['bytes_rewritten'] / 1e6:.1f} MB into "
          f"{detail['bytes_written'] / 1e6:.1f} MB), check+delete {detail['check_delete_s']:.2f} s")  # fmt: skip
    print(f"haven / restic reclaim wall: {h.wall / r.wall:.2f}x")
    print(f"newest point restored and identical to the tree: {restored_ok}")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
