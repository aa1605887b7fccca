"""``haven-agent`` commands for recovery: recovery-points, ls, find, versions, restore, and
recovery-passphrase (for restoring another machine's data here).

Register them with ``add_commands(subparsers)`` from ``agents/runtime/cli.py``. Each command
handles its own failures: one ``error: ...`` line on stderr and a non-zero exit code
(1 failure; 3 restore finished but some items could not be restored; 130 cancelled). What
they print goes through ``agents.runtime.output`` (``--json``: one JSON document).
"""

from __future__ import annotations

import getpass
import sys
import threading
from pathlib import Path

from agents.runtime import config, output, protocol
from agents.runtime.blobstore.base import StorageError
from agents.runtime.config import ConfigError
from agents.runtime.engine import EngineError, WrongPassphrase
from agents.runtime.passphrase import PassphraseError, read_file
from agents.runtime.portal_api import PortalClient, PortalError
from agents.runtime.recovery import human, ops
from agents.runtime.recovery import source as src
from agents.runtime.storage_grant import renew_grant

EXIT_FAILED, EXIT_PARTIAL, EXIT_CANCELLED = 1, 3, 130


def _out(text: str = "") -> None:
    output.current().say(text)


def _err(text: str) -> None:
    output.current().note(text)


def _json(data) -> None:
    output.current().result(data)


# -- opening the repository ------------------------------------------------------------------
def _portal(registration, settings):
    return PortalClient(
        registration.portal_url, token=registration.token, proxies=settings.proxies()
    )


def _passphrase(args, source, settings) -> str:
    if getattr(args, "passphrase_file", None):
        return read_file(Path(args.passphrase_file))
    saved = src.saved_passphrase(source, settings)
    if saved:
        return saved
    if sys.stdin.isatty():
        return getpass.getpass(f"Encryption passphrase of {source.machine_name}: ")
    raise src.passphrase_needed(source)


def _vault_credentials(args) -> bytes:
    """The ``--vault-credentials`` file's bytes (b"" without the option)."""
    path = getattr(args, "vault_credentials", None)
    if not path:
        return b""
    return Path(path).expanduser().read_bytes()


def _resolve(args, registration, portal) -> src.Source:
    source = src.resolve_source(
        registration=registration,
        portal=portal,
        machine=getattr(args, "from_machine", None),
        machine_id=getattr(args, "from_machine_id", None),
        vault_credentials=_vault_credentials(args),
    )
    note = src.others_note(source)
    if note:
        _err(note)
    return source


def _open(source, store, secret):
    """The source's repository; a passphrase that does not open another machine's key is
    said in its name, before anything is read (let alone written)."""
    try:
        return src.open_repository(store, secret)
    except WrongPassphrase:
        if source.own:
            raise
        raise src.RecoveryError(
            f"the passphrase does not open the backups of {source.machine_name!r}"
            f"{f' ({source.state})' if source.state else ''}: it must be the passphrase "
            f"{source.machine_name!r} was registered with (or last changed to). Nothing was "
            "restored or written. Check for typos and the keyboard layout."
        ) from None


def open_for(args):
    """(repository, source) for a command's ``--from-machine`` / ``--from-machine-id`` /
    ``--vault-credentials`` / ``--passphrase-file``."""
    registration = config.require_registration()
    settings = config.load_settings()
    portal = _portal(registration, settings)
    try:
        source = _resolve(args, registration, portal)
        if source.own:
            renew_grant(registration, portal)
            source.grant = registration.grant
    finally:
        portal.close()
    secret = _passphrase(args, source, settings)
    store = src.open_store(source, settings)
    return _open(source, store, secret), source


def _whose(source) -> str:
    """The machine as named in output: web-01, or web-01 (Unregistered on 2026-12-01)."""
    return f"{source.machine_name} ({source.state})" if source.state else source.machine_name


# -- commands ---------------------------------------------------------------------------------
def cmd_recovery_points(args) -> int:
    repo, source = open_for(args)
    points = ops.recovery_points(repo)
    if args.json:
        _json(
            {
                "machine": source.machine_name,
                "machine_id": source.machine_id,
                "state": source.state or "Registered",
                "recovery_points": points,
            }
        )
        return 0
    if not points:
        _out(f"{_whose(source)} has no recovery points yet.")
        return 0
    rows = [
        [p["short_id"], human.when(p["time"]), str(p["files"] or 0), human.size(p["bytes"]),
         ", ".join(p["sources"])]
        for p in points
    ]  # fmt: skip
    _out(f"Recovery points of {_whose(source)} (newest first):")
    _out(human.table(rows, ["ID", "TIME", "FILES", "SIZE", "SOURCES"], right=(2, 3)))
    return 0


def _entry_row(e: dict) -> list[str]:
    name = e["name"] + ("/" if e["kind"] == "dir" else "")
    if e["kind"] == "symlink":
        name += f" -> {e['target']}"
    return [e["mode"] or "-", human.size(e["size"]) if e["size"] is not None else "",
            human.when(e["mtime"]), name]  # fmt: skip


def cmd_ls(args) -> int:
    repo, _ = open_for(args)
    listing = ops.ls(repo, recovery_point=args.recovery_point, path=args.path)
    if args.json:
        _json(listing)
        return 0
    rp = listing["recovery_point"]
    _out(f"{listing['path']} in recovery point {rp['short_id']} of {human.when(rp['time'])}:")
    if not listing["entries"]:
        _out("  (empty, or not in this recovery point)")
        return 0
    rows = [_entry_row(e) for e in listing["entries"]]
    _out(human.table(rows, ["MODE", "SIZE", "MODIFIED", "NAME"], right=(1,)))
    return 0


def cmd_find(args) -> int:
    repo, _ = open_for(args)
    answer = ops.find(
        repo, pattern=args.pattern, recovery_points=args.recovery_point or None, limit=args.limit
    )
    if args.json:
        _json(answer)
        return 0
    if not answer["matches"]:
        _out(f"Nothing named like {args.pattern!r} in any recovery point.")
        return 0
    rows = []
    for m in answer["matches"]:
        e, rps = m["entry"], m["recovery_points"]
        rows.append([
            e["path"] + ("/" if e["kind"] == "dir" else ""),
            human.size(e["size"]) if e["size"] is not None else "",
            human.when(e["mtime"]),
            f"{len(rps)} ({rps[0]['id'][:8]} newest)",
        ])  # fmt: skip
    _out(human.table(rows, ["PATH", "SIZE", "MODIFIED", "RECOVERY POINTS"], right=(1,)))
    if answer["truncated"]:
        _out(f"(only the first {args.limit} paths; narrow the pattern or raise --limit)")
    return 0


def cmd_versions(args) -> int:
    repo, _ = open_for(args)
    answer = ops.versions(repo, path=args.path)
    if args.json:
        _json(answer)
        return 0
    if not answer["versions"]:
        _out(f"{args.path} is in no recovery point.")
        return 0
    rows = [
        [v["recovery_point"][:8], human.when(v["time"]),
         human.size(v["entry"]["size"]) if v["entry"]["size"] is not None else v["entry"]["kind"],
         human.when(v["entry"]["mtime"]), "changed" if v["changed"] else "same"]
        for v in answer["versions"]
    ]  # fmt: skip
    _out(f"Versions of {args.path} (newest first):")
    _out(human.table(rows, ["POINT", "BACKED UP", "SIZE", "MODIFIED", "VS OLDER"], right=(2,)))
    _out(f"Restore one with: haven-agent restore POINT {args.path} --target DIR")
    return 0


def cmd_restore(args) -> int:
    repo, _ = open_for(args)
    cancel, done = threading.Event(), threading.Event()
    box: dict = {}
    progress = output.current().progress("restoring")

    def work() -> None:
        try:
            box["result"] = ops.restore(
                repo,
                recovery_point=args.recovery_point,
                paths=args.paths,
                target=args.target,
                on_conflict=args.on_conflict,
                restore_permissions=args.restore_permissions,
                sink=output.EventSink(progress),
                cancel=cancel,
            )
        except BaseException as exc:  # handed to the main thread
            box["error"] = exc
        finally:
            done.set()

    # The engine runs in a thread so that Ctrl-C here becomes its cancel: the file being
    # written is finished or removed, every finished file is kept.
    thread = threading.Thread(target=work, name="haven-restore")
    thread.start()
    while not done.is_set():
        try:
            done.wait(0.2)
        except KeyboardInterrupt:
            if not cancel.is_set():
                _err("\ncancelling: finishing the current file…")
            cancel.set()
    thread.join()
    progress.close()
    if "error" in box:
        raise box["error"]
    res = ops.result_dict(box["result"], target=args.target)
    if args.json:
        _json(res)
    else:
        _out(
            f"{res['message'][0].upper()}{res['message'][1:]} under {res['target']} "
            f"in {res['duration_s']:.1f} s ({human.size(res['bytes'])})."
        )
        if res["skipped"]:
            _out(f"{res['skipped']} existing files kept (--on-conflict skip).")
        for f in res["failed"]:
            _out(f"not restored: {f['path']}: {f['reason']}")
        for w in res["warnings"]:
            _out(f"warning: {w['path']}: {w['reason']}")
    if res["status"] == "cancelled":
        return EXIT_CANCELLED
    return EXIT_PARTIAL if res["failed"] else 0


def cmd_recovery_passphrase(args) -> int:
    """Type another machine's passphrase here once, checked against its repository."""

    registration = config.require_registration()
    settings = config.load_settings()
    portal = _portal(registration, settings)
    try:
        source = _resolve(args, registration, portal)
    finally:
        portal.close()
    if source.own:
        raise src.RecoveryError(
            "this is this machine's own repository; its passphrase is the one saved at "
            "registration (haven-agent configure --passphrase-file FILE)"
        )
    if args.passphrase_file:
        secret = read_file(Path(args.passphrase_file))
    elif sys.stdin.isatty():
        secret = getpass.getpass(f"Encryption passphrase of {source.machine_name}: ")
    else:
        raise src.PassphraseNeeded("pass --passphrase-file FILE or run interactively")
    _open(source, src.open_store(source, settings), secret)  # a wrong one is refused here
    path = src.remember_passphrase(source, secret)
    _out(
        f"The passphrase opens {_whose(source)}'s backups; saved in {path} (readable "
        "only by you). The portal can now restore that machine's data onto this one."
    )
    return 0


# -- wiring -----------------------------------------------------------------------------------
def _guard(func):
    """Run a command; expected failures become one ``error:`` line and exit code 1."""

    def run(args) -> int:
        out = output.begin(args)
        try:
            return out.finish(func(args))
        except (
            src.RecoveryError,
            EngineError,
            StorageError,
            PortalError,
            ConfigError,
            PassphraseError,
        ) as exc:
            out.error(str(exc))
        except OSError as exc:
            out.error(f"{exc.strerror or exc}: {exc.filename or ''}".rstrip(": "))
        return out.finish(EXIT_FAILED)

    run.__name__ = func.__name__
    run.__doc__ = func.__doc__
    return run


VAULT_CREDENTIALS_HELP = (
    "with --from-machine(-id): vault credentials downloaded for this (after this machine "
    "registered) by a Backup Operator, Contributor or Owner; the portal lets this machine "
    "read the other's backups for an hour on their say-so"
)


def _from_machine(p, *, required: bool = False) -> None:
    which = p.add_mutually_exclusive_group(required=required)
    which.add_argument(
        "--from-machine",
        metavar="MACHINE",
        help="another machine of this vault whose backups to read, registered or not: its "
        "name (the machine that has it now, else the one that had it last) or its id",
    )
    which.add_argument(
        "--from-machine-id",
        metavar="ID",
        help="the same, by machine id (for a name that several machines have had)",
    )


def _common(p) -> None:
    _from_machine(p)
    p.add_argument("--vault-credentials", metavar="FILE", help=VAULT_CREDENTIALS_HELP)
    p.add_argument("--passphrase-file", help="read the encryption passphrase from this file")
    p.add_argument("--json", action="store_true", help="print one JSON document")


def add_commands(sub) -> None:
    """Add the recovery commands to ``haven-agent``'s subparsers."""
    p = sub.add_parser("recovery-points", help="list the recovery points (newest first)")
    _common(p)
    p.set_defaults(func=_guard(cmd_recovery_points))

    p = sub.add_parser("ls", help="list a folder of a recovery point")
    p.add_argument("recovery_point", metavar="RP", help="id, id prefix or 'latest'")
    p.add_argument("path", metavar="PATH", nargs="?", default="/")
    _common(p)
    p.set_defaults(func=_guard(cmd_ls))

    p = sub.add_parser("find", help="search file names across recovery points")
    p.add_argument("pattern", metavar="PATTERN", help="part of a name, or a glob (*.pdf)")
    p.add_argument("--recovery-point", action="append", metavar="RP", help="only these points")
    p.add_argument("--limit", type=int, default=ops.DEFAULT_FIND_LIMIT)
    _common(p)
    p.set_defaults(func=_guard(cmd_find))

    p = sub.add_parser("versions", help="the versions of a file across recovery points")
    p.add_argument("path", metavar="PATH")
    _common(p)
    p.set_defaults(func=_guard(cmd_versions))

    p = sub.add_parser("restore", help="restore files and folders of a recovery point")
    p.add_argument("recovery_point", metavar="RP", help="id, id prefix or 'latest'")
    p.add_argument(
        "paths",
        metavar="PATHS",
        nargs="+",
        help="absolute paths as backed up, or system-state (never restored into / or /etc)",
    )
    p.add_argument(
        "--target", required=True, help="folder to restore under ('/' = original location)"
    )
    p.add_argument(
        "--on-conflict", choices=protocol.CONFLICT_CHOICES, default=protocol.CONFLICT_COPY
    )
    p.add_argument(
        "--restore-permissions",
        action="store_true",
        help="also restore owner and group (needs root for other users' files)",
    )
    _common(p)
    p.set_defaults(func=_guard(cmd_restore))

    p = sub.add_parser(
        "recovery-passphrase",
        help="type another machine's passphrase here, to restore its data onto this machine",
    )
    _from_machine(p, required=True)
    p.add_argument("--vault-credentials", metavar="FILE", help=VAULT_CREDENTIALS_HELP)
    p.add_argument("--passphrase-file")
    p.add_argument("--json", action="store_true", help="print one JSON document")
    p.set_defaults(func=_guard(cmd_recovery_passphrase))
