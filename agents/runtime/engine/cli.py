"""``python -m agents.runtime.engine``: a developer CLI for the engine on a local directory.

For people and the benchmark; the product CLI is ``haven-agent``.

    python -m agents.runtime.engine init      --repo DIR --password-file F
    python -m agents.runtime.engine backup    --repo DIR --password-file F [--exclude GLOB] SRC...
    python -m agents.runtime.engine restore   --repo DIR --password-file F --target DIR [RP] [PATH...]
    python -m agents.runtime.engine verify    --repo DIR --password-file F [--fraction F]
    python -m agents.runtime.engine snapshots --repo DIR --password-file F
    python -m agents.runtime.engine ls        --repo DIR --password-file F RP [PATH]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from agents.runtime.blobstore.local import LocalDirectoryStore
from agents.runtime.engine.backup import run_backup
from agents.runtime.engine.browse import list_dir
from agents.runtime.engine.crypto import DEFAULT_KDF
from agents.runtime.engine.errors import EngineError
from agents.runtime.engine.progress import Event, ProgressSink, ThrottledSink, display_path
from agents.runtime.engine.repository import Repository
from agents.runtime.engine.restore import CONFLICT_CHOICES_DEFAULT_FIRST, run_restore
from agents.runtime.engine.scan import WalkAhead
from agents.runtime.engine.verify import run_verify
from agents.runtime.protocol import CONFLICT_OVERWRITE
from agents.runtime.sizes import size_text


class _StderrSink(ProgressSink):
    def emit(self, event: Event) -> None:
        if event["type"] == "warning":
            print(f"warning: {event['path']}: {event['reason']}", file=sys.stderr)
        elif event["type"] == "progress" and sys.stderr.isatty():
            done = size_text(event["bytes_done"])
            print(f"\r{event['phase']}: {event['files_done']} files, {done}",
                  end="", file=sys.stderr)  # fmt: skip


def _password(args) -> str:
    if args.password_file:
        return Path(args.password_file).read_text().rstrip("\n")
    env = os.environ.get("HAVEN_PASSWORD")
    if env:
        return env
    raise EngineError("give --password-file FILE (or set HAVEN_PASSWORD)")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m agents.runtime.engine")
    ap.add_argument("--repo", required=True, help="repository directory")
    ap.add_argument("--password-file")
    ap.add_argument("--cache-dir", help="local cache (default: ~/.cache/haven-engine)")
    ap.add_argument("--json", action="store_true", help="print the result as JSON")
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("init")
    p.add_argument("--kdf-n", type=int, help="scrypt N (default: DEFAULT_KDF's)")
    p = sub.add_parser("backup")
    p.add_argument("sources", nargs="+")
    p.add_argument("--exclude", action="append", default=[])
    p.add_argument("--tag", action="append", default=[])
    p.add_argument("--compression-level", type=int, default=3)
    p.add_argument("--workers", type=int)
    p = sub.add_parser("restore")
    p.add_argument("recovery_point", nargs="?", default="latest")
    p.add_argument("paths", nargs="*")
    p.add_argument("--target", required=True)
    p.add_argument(
        "--on-conflict", default=CONFLICT_OVERWRITE, choices=CONFLICT_CHOICES_DEFAULT_FIRST
    )
    p = sub.add_parser("verify")
    p.add_argument("--fraction", type=float, default=1.0)
    sub.add_parser("snapshots")
    p = sub.add_parser("ls")
    p.add_argument("recovery_point", nargs="?", default="latest")
    p.add_argument("path", nargs="?", default="/")
    args = ap.parse_args(argv)

    cache = Path(args.cache_dir or Path.home() / ".cache" / "haven-engine")
    store = LocalDirectoryStore(args.repo, create=True)
    sink = ThrottledSink(_StderrSink(), max_per_second=4)
    try:
        password = _password(args)
        if args.cmd == "init":
            kdf = {**DEFAULT_KDF, **({"n": args.kdf_n} if args.kdf_n else {})}
            repo = Repository.init(store, password, kdf=kdf)
            print(f"created repository {repo.id} in {args.repo}")
            return 0
        walk = None
        if args.cmd == "backup":  # walk while the passphrase's key is derived
            walk = WalkAhead([os.path.abspath(s) for s in args.sources], args.exclude)
        try:
            repo = Repository.open(store, password)
        except BaseException:
            if walk is not None:
                walk.close()
            raise
        if args.cmd == "backup":
            res = run_backup(
                repo,
                walk=walk,
                cache_dir=cache,
                sink=sink,
                tags=args.tag,
                compression_level=args.compression_level,
                workers=args.workers,
            )
            _out(
                args,
                res.__dict__,
                f"{res.status}: {res.message}; recovery point {res.recovery_point}",
            )
            return 0 if res.status.startswith("completed") else 3
        if args.cmd == "restore":
            res = run_restore(
                repo,
                recovery_point=args.recovery_point,
                target=args.target,
                paths=[os.path.abspath(p) for p in args.paths] or None,
                on_conflict=args.on_conflict,
                sink=sink,
            )
            _out(args, res.__dict__, f"{res.status}: {res.message}")
            return 0 if res.status == "completed" else 3
        if args.cmd == "verify":
            rep = run_verify(repo, fraction=args.fraction, sink=sink)
            _out(args, {**rep.__dict__, "damaged": [d.__dict__ for d in rep.damaged]}, rep.message)
            return 0 if rep.ok else 4
        if args.cmd == "snapshots":
            for rp in repo.list_recovery_points():
                s = rp.stats
                print(f"{rp.id}  {rp.time:%Y-%m-%d %H:%M:%S}  {rp.hostname}  {rp.status}  "
                      f"{s.get('files')} files  {s.get('logical_bytes')} B  "
                      f"{', '.join(rp.sources)}")  # fmt: skip
            return 0
        if args.cmd == "ls":
            for e in list_dir(repo, recovery_point=args.recovery_point, path=args.path):
                print(f"{e.kind_name:8} {e.mode:04o} {e.size:>12}  {display_path(e.name)}")
            return 0
    except EngineError as exc:
        print(f"\nerror: {exc}", file=sys.stderr)
        return 2
    return 1


def _out(args, doc: dict, text: str) -> None:
    if sys.stderr.isatty():
        print(file=sys.stderr)
    if args.json:
        print(json.dumps(doc, default=str))
    else:
        print(text)
