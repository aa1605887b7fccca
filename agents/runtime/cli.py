"""``haven-agent``: configure, check, register, status, worker, install-service, unregister,
policy show, seed export, verify, backup, change-passphrase.

Every failure is printed as one ``error: ...`` line that says what to do, and the command
exits non-zero; no tracebacks for expected failures. Every command takes ``--json``: what it
prints then is one JSON document (``agents.runtime.output``).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import getpass
import hmac
import logging
import os
import sys
import time
from datetime import datetime
from pathlib import Path

from agents.runtime import checks, config, output, protocol, register, seed, throttling
from agents.runtime import passphrase as pp
from agents.runtime.blobstore.base import StorageError
from agents.runtime.credentials import CredentialsError, parse
from agents.runtime.engine import Repository, WrongPassphrase
from agents.runtime.engine.errors import EngineError
from agents.runtime.engine.verify import run_verify
from agents.runtime.jobs.backup import system_state
from agents.runtime.jobs.outbox import outbox_for_cache
from agents.runtime.jobs.policy import format_policy, load_policy
from agents.runtime.jobs.verify import damage_of
from agents.runtime.passphrase import PassphraseError
from agents.runtime.portal_api import PortalClient, PortalError, PortalRefused, PortalUnreachable
from agents.runtime.recovery.cli import add_commands as add_recovery_commands
from agents.runtime.register import RegistrationError, read_credentials_file
from agents.runtime.service import install_service
from agents.runtime.sizes import size_text
from agents.runtime.storage_grant import open_with_settings, renew_grant
from agents.runtime.version import __version__
from agents.runtime.worker import run_worker


class UsageError(Exception):
    pass


def _out(text: str = "") -> None:
    output.current().say(text)


def _result(data: dict) -> None:
    output.current().result(data)


def _interactive() -> bool:
    return sys.stdin.isatty()


def _ask(question: str) -> str:
    try:
        return input(question).strip()
    except EOFError:
        return ""


# --- configure ----------------------------------------------------------------------------
def cmd_configure(args) -> int:
    settings = config.load_settings()
    if args.install_dir is not None:
        settings.install_dir = str(Path(args.install_dir).expanduser())
    if args.cache_dir is not None:
        settings.cache_dir = str(Path(args.cache_dir).expanduser())
    if args.no_proxy:
        settings.proxy_url = settings.proxy_username = settings.proxy_password = ""
    if args.proxy is not None:
        settings.proxy_url = config.validate_proxy_url(args.proxy)
    if args.proxy_user is not None:
        settings.proxy_username = args.proxy_user
    if args.proxy_password_file is not None:
        settings.proxy_password = (
            Path(args.proxy_password_file).expanduser().read_text().splitlines()[0]
        )
    if args.passphrase_file is not None:
        settings.passphrase_file = _passphrase_file_setting(args.passphrase_file)
    if args.bandwidth_limit is not None:
        settings.bandwidth_limit = config.parse_bandwidth(args.bandwidth_limit)
    path = config.save_settings(settings)
    settings.cache_path.mkdir(parents=True, exist_ok=True, mode=0o700)
    _out(f"Settings saved to {path}")
    _out(f"  install location: {settings.install_dir or config.default_install_dir()}")
    _out(f"  cache location:   {settings.cache_path}")
    _out(
        "  proxy:            "
        + (
            settings.proxy_url
            + (f" (user {settings.proxy_username})" if settings.proxy_username else "")
            if settings.proxy_url
            else "none"
        )
    )
    _out(f"  bandwidth limit:  {config.format_bandwidth(settings.bandwidth_limit)}")
    _result(
        {
            "settings_file": str(path),
            "install_dir": settings.install_dir or str(config.default_install_dir()),
            "cache_dir": str(settings.cache_path),
            "proxy": settings.proxy_url or None,
            "bandwidth_limit": settings.bandwidth_limit,
        }
    )
    return 0


def _passphrase_file_setting(value: str) -> str:
    """Validate a passphrase file for scheduled backups: readable, valid, private."""
    if not value:
        return ""
    path = Path(value).expanduser().resolve()
    pp.read_file(path)
    if path.stat().st_mode & 0o077:
        raise UsageError(
            f"{path} can be read by other users; make it private first: chmod 600 {path}"
        )
    return str(path)


# --- check --------------------------------------------------------------------------------
def cmd_check(args) -> int:
    settings = config.load_settings()
    registration = config.load_registration()
    results: list[checks.CheckResult] = []
    portal_url = args.portal or ""
    expected_fingerprint = ""
    if args.vault_credentials:
        creds = parse(read_credentials_file(args.vault_credentials))
        portal_url, expected_fingerprint = creds.portal_url, creds.fingerprint
    elif registration and not portal_url:
        portal_url, expected_fingerprint = (
            registration.portal_url,
            registration.portal_fingerprint,
        )
    if not portal_url:
        raise UsageError(
            "this machine is not registered: pass --vault-credentials FILE or --portal URL "
            "to check the connection to a portal"
        )
    token = registration.token if registration and registration.portal_url == portal_url else ""
    client = PortalClient(portal_url, token=token, proxies=settings.proxies())
    portal_result, identity = checks.check_portal(client, expected_fingerprint)
    results.append(portal_result)
    results.append(
        checks.check_clock(identity)
        if identity
        else checks.CheckResult(
            "clock", False, "not checked: the portal did not answer", "Fix the portal check first."
        )
    )
    if registration and token:
        results.append(checks.check_token(client))
        results.append(checks.check_broker(registration))
        _renew_grant_if_expired(registration, client)
        results.append(checks.check_storage(registration, settings))
    else:
        _out("(not registered: broker and storage are checked after registration)")
    results.append(checks.check_cache(settings))
    client.close()
    for result in results:
        _out(result.line())
    failed = [r for r in results if not r.ok]
    _result({"checks": [dataclasses.asdict(r) for r in results]})
    _out(
        "All checks passed."
        if not failed
        else f"{len(failed)} check(s) failed: {', '.join(r.name for r in failed)}."
    )
    return 1 if failed else 0


def _renew_grant_if_expired(registration, client) -> None:
    with contextlib.suppress(PortalError):  # the storage check that follows says what is wrong
        renew_grant(registration, client)


def _machine_passphrase(args, settings) -> str:
    """The machine's encryption passphrase for a command that reads its backups:
    ``--passphrase-file`` or the one saved on the machine."""
    if args.passphrase_file:
        secret = pp.read_file(Path(args.passphrase_file).expanduser())
    else:
        secret = pp.saved_passphrase(settings) or ""
    if not secret:
        raise UsageError(
            "no saved passphrase on this machine: pass --passphrase-file FILE with the "
            "machine's encryption passphrase"
        )
    return secret


# --- register -----------------------------------------------------------------------------
def _passphrase_for(args) -> str:
    if args.passphrase_file and args.generate_passphrase:
        raise UsageError("use either --passphrase-file or --generate-passphrase, not both")
    if args.passphrase_file:
        return pp.read_file(Path(args.passphrase_file))
    if args.generate_passphrase:
        secret = pp.generate()
        path = pp.save(secret, Path(args.generate_passphrase))
        args.passphrase_file = str(path)
        _out(f"A new encryption passphrase was saved to {path} (readable only by you).")
        _out(pp.LOSS_WARNING)
        return secret
    if not _interactive():
        raise UsageError(
            "no encryption passphrase: pass --passphrase-file FILE, or --generate-passphrase "
            "PATH to create one, or run interactively"
        )
    answer = _ask("Generate a strong passphrase and save it to a file? [y/N] ").lower()
    if answer in ("y", "yes"):
        where = _ask("Where should the passphrase file be saved? ")
        if not where:
            raise UsageError("no location given for the passphrase file")
        secret = pp.generate()
        path = pp.save(secret, Path(where))
        args.passphrase_file = str(path)
        _out(f"The encryption passphrase was saved to {path} (readable only by you).")
        _out(pp.LOSS_WARNING)
        return secret
    return pp.prompt_twice(getpass.getpass, _out)


def cmd_register(args) -> int:
    settings = config.load_settings()
    credentials_path = args.vault_credentials
    if not credentials_path:
        if not _interactive():
            raise UsageError("pass --vault-credentials FILE (downloaded from the portal)")
        credentials_path = _ask("Vault credentials file: ")
    register.check_existing(None, replace=args.replace)
    prepared = register.prepare(credentials_path, settings)
    creds = prepared.credentials
    _out(f"Vault credentials verified: vault {creds.vault_name!r} on {creds.portal_url}")
    _out(f"  portal key {creds.fingerprint}, valid until {creds.expires_at:%Y-%m-%d %H:%M} UTC")
    name = args.machine_name
    if not name and _interactive():
        default = register.default_machine_name()
        name = _ask(f"Machine name [{default}]: ") or default
    secret = _passphrase_for(args)
    registration = register.enroll(
        prepared,
        passphrase=secret,
        settings=settings,
        machine_name=name or "",
        replace=args.replace,
    )
    _out(
        f"Registered machine {registration.machine_name!r} ({registration.machine_id}) to "
        f"vault {registration.vault_name!r} on {registration.portal_url}."
    )
    _out(f"Configuration saved in {config.config_dir()} (readable only by you).")
    if args.passphrase_file:
        try:
            settings.passphrase_file = _passphrase_file_setting(args.passphrase_file)
        except UsageError as exc:
            _out(f"Note: scheduled backups cannot use the passphrase file: {exc}")
        else:
            config.save_settings(settings)
            _out(f"Scheduled backups read the passphrase from {settings.passphrase_file}.")
    else:
        _out(
            "Scheduled backups need the passphrase on this machine: save it in a file only "
            "you can read and run haven-agent configure --passphrase-file FILE."
        )
    _out("Next: haven-agent install-service (or run haven-agent worker).")
    _out("Remember: " + pp.LOSS_WARNING)
    _result({"registered": True, **registration.public_view()})
    return 0


# --- status -------------------------------------------------------------------------------
def cmd_status(args) -> int:
    registration = config.load_registration()
    settings = config.load_settings()
    if registration is None:
        _result({"registered": False, "agent_version": __version__})
        _out(f"haven-agent {__version__}: this machine is not registered to any vault.")
        _out("Register with: haven-agent register --vault-credentials FILE")
        return 3
    view = registration.public_view()
    outbox = outbox_for_cache(settings.cache_path)
    waiting = [
        {"job_id": e.job_id, "status": e.payload.get("status"), "state": e.state}
        for e in outbox.entries()
    ]
    refused = [str(p) for p in outbox.refused()]
    schedule = throttling.applied_schedule(config.config_dir(), config.POLICY_FILE)
    now_kbps = throttling.kbps_at(schedule, datetime.now())
    _result(
        {
            "registered": True,
            "agent_version": __version__,
            **view,
            "job_results_undelivered": waiting,
            "job_results_refused": refused,
            "throttling": {"schedule": schedule, "now_kbps": now_kbps},
        }
    )
    _out(f"haven-agent {__version__}")
    _out(f"Registered to vault {registration.vault_name!r} on portal {registration.portal_url}")
    for key, value in view.items():
        _out(f"  {key + ':':24} {value}")
    _out(f"  {'config directory:':24} {config.config_dir()}")
    _out(f"  {'cache location:':24} {settings.cache_path}")
    _out(f"  {'proxy:':24} {settings.proxy_url or 'none'}")
    _out(f"  {'bandwidth limit:':24} {config.format_bandwidth(settings.bandwidth_limit)}")
    _out(f"  {'network throttling:':24} {throttling.describe(schedule)}")
    if now_kbps:
        _out(f"  {'throttled now to:':24} {throttling.format_rate(now_kbps)}")
    _out(f"  {'passphrase file:':24} {settings.passphrase_file or 'none (typed when needed)'}")
    for item in waiting:
        what = "running or left unfinished" if item["state"] == "started" else item["status"]
        _out(
            f"  {'job result waiting:':24} job {item['job_id']} ({what}); posted when the "
            "portal answers"
        )
    for path in refused:
        _out(f"  {'job result refused:':24} {path} (the portal refused it; see the worker log)")
    return 0


def cmd_policy_show(args) -> int:
    policy = load_policy(config.config_dir())
    _result({"policy": policy})
    for line in format_policy(policy).splitlines():
        _out(line)
    return 0


# --- seed export ------------------------------------------------------------------------------
def cmd_seed_export(args) -> int:
    registration = config.require_registration()
    settings = config.load_settings()
    policy = load_policy(config.config_dir())
    spec = (policy or {}).get("spec") or {}
    secret = _machine_passphrase(args, settings)
    client = PortalClient(
        registration.portal_url, token=registration.token, proxies=settings.proxies()
    )
    try:
        renew_grant(registration, client)
    finally:
        client.close()
    folder = args.to or spec.get(protocol.POLICY_SEED_STAGING) or ""
    if not folder:
        raise UsageError(
            "seed export: name the folder with --to PATH, or set the seed staging folder in "
            "the machine's backup policy in the portal (Initial backup: Offline)"
        )
    target = Path(folder).expanduser().absolute()
    _out(f"Writing the first backup of {registration.machine_name} to {target} ...")
    mapped, ready = system_state(spec, settings.cache_path)
    collected = ready() if ready is not None else []
    try:
        result, header = seed.seed_export(
            container=open_with_settings(registration.grant, settings),
            staging=target,
            passphrase=secret,
            items=list(spec.get("items") or []),
            excludes=[*spec.get("exclude_globs", []), *spec.get("exclude_types", [])],
            identity={
                "vault_id": registration.vault_id,
                "vault_name": registration.vault_name,
                "machine_id": registration.machine_id,
                "machine_name": registration.machine_name,
            },
            cache_dir=settings.cache_path,
            mapped=mapped,
            warnings=collected,
        )
    except (seed.SeedError, EngineError, StorageError) as exc:
        raise UsageError(f"seed export: {exc}") from None
    size = sum(b["size"] for b in header["blobs"])
    _out(
        f"Seed written: recovery point {header['recovery_point_id'][:8]}, "
        f"{result.files} files, {size} bytes in {len(header['blobs'])} blobs."
    )
    for warning in result.warnings[:20]:
        _out(f"  warning: {warning.get('path', '')}: {warning.get('reason', '')}")
    _result(
        {
            "folder": str(target),
            "recovery_point_id": header["recovery_point_id"],
            "files": result.files,
            "bytes": size,
            "blobs": len(header["blobs"]),
            "warnings": result.warnings,
        }
    )
    _out(
        "Next: take the disk to the portal's host and import it (the machine's page in the "
        f"portal, Import seed, or manage.py seed_import {target})."
    )
    return 0


# --- verify -------------------------------------------------------------------------------------
# The exit code when damage was found (1: the command could not run, 2: usage).
EXIT_DAMAGED = 4


def cmd_verify(args) -> int:
    if not 0 < args.fraction <= 1:
        raise UsageError("--fraction must be more than 0 and at most 1 (1 reads every pack)")
    registration = config.require_registration()
    settings = config.load_settings()
    secret = _machine_passphrase(args, settings)
    client = PortalClient(
        registration.portal_url, token=registration.token, proxies=settings.proxies()
    )
    try:
        _renew_grant_if_expired(registration, client)
    finally:
        client.close()
    share = "every pack" if args.fraction >= 1 else f"{args.fraction:.0%} of the packs"
    _out(f"Verifying the backup data of {registration.machine_name}: {share} and every manifest")
    progress = output.current().progress("verifying", count_unit="packs")
    try:
        repo = Repository.open(open_with_settings(registration.grant, settings), secret)
        report = run_verify(
            repo,
            fraction=args.fraction,
            sink=output.EventSink(progress),
        )
    except WrongPassphrase as exc:
        raise UsageError(f"the passphrase does not open this vault's backup data: {exc}") from None
    except (EngineError, StorageError) as exc:
        raise UsageError(f"verify: {exc}") from None
    finally:
        progress.close()
    damage = damage_of(report)
    _result(
        {
            "damaged": not report.ok,
            "packs_checked": report.packs_checked,
            "packs_total": report.packs_total,
            "bytes_checked": report.bytes_checked,
            "chunks_checked": report.chunks_checked,
            "recovery_points_checked": report.recovery_points_checked,
            "duration_s": report.duration_s,
            "damage": damage,
        }
    )
    _out(
        f"Read {report.packs_checked} of {report.packs_total} packs "
        f"({size_text(report.bytes_checked)}, {report.chunks_checked} chunks) and "
        f"{report.recovery_points_checked} recovery points in {report.duration_s:.1f} s."
    )
    if report.ok:
        _out("No damage found.")
        return 0
    out = output.current()
    for entry in damage:
        what = f"pack {entry['pack']}" if entry["pack"] else "repository"
        out.note(f"DAMAGED {what}: {entry['reason']}")
        if entry["recovery_points"]:
            out.note(f"  recovery points: {', '.join(entry['recovery_points'])}")
        for f in entry["files"]:
            out.note(f"  file {f['path']} (recovery point {f['recovery_point']})")
    out.error(
        "damage found. Restore the files named from an older recovery point that does "
        "not need the damaged packs; a new backup reuses the stored data and does not repair "
        "it (docs/verify.md)."
    )
    return EXIT_DAMAGED


# --- backup: Back up now from the machine ---------------------------------------------------
# Exit codes of ``backup --wait`` besides 0 and 1 (failed or cancelled): completed with
# warnings (like a restore that left some files out), and stopped waiting with Ctrl-C.
EXIT_WARNINGS, EXIT_STOPPED_WAITING = 3, 130
WAIT_POLL_S = 1.0
_STATUS_WORDS = {
    protocol.JobStatus.QUEUED: "queued: sent to this machine's worker",
    protocol.JobStatus.WAITING: (
        "waiting for this machine's worker (is haven-agent worker or its service running?)"
    ),
    protocol.JobStatus.RUNNING: "running",
}


def cmd_backup(args) -> int:
    """Back up now, asked for on the machine: the portal queues the job by its own rules
    (the policy, protection, a seed pending, one backup at a time) and the worker runs it."""
    registration = config.require_registration()
    client = PortalClient(
        registration.portal_url,
        token=registration.token,
        proxies=config.load_settings().proxies(),
    )
    try:
        job = client.post(
            "jobs/backup/", {"retain_until": args.retain_until} if args.retain_until else {}
        )
        url = registration.portal_url.rstrip("/") + job["path"]
        _result({"job_id": job["id"], "url": url, "status": job["status"]})
        try:
            _out(f"Backup of {registration.machine_name} started: job {job['id']}")
            _out(f"  {url}")
            if not args.wait:
                _out("The worker on this machine runs it; follow it in the portal, or use --wait.")
                return 0
            return _wait_for(client, job["id"], url)
        except KeyboardInterrupt:  # the job exists: only the waiting stops
            _out(f"Stopped waiting. The backup goes on in this machine's worker: {url}")
            _result({"waiting": "stopped"})
            return EXIT_STOPPED_WAITING
    finally:
        client.close()


def _wait_for(client: PortalClient, job_id: str, url: str) -> int:
    """Follow the job until it ends: its status as it changes, its progress as a bar."""
    out = output.current()
    progress: output.Progress | None = None
    seen = ""
    try:
        while True:
            try:
                job = client.get(f"jobs/{job_id}/")
            except PortalUnreachable as exc:  # a portal restarting: keep following
                out.note(f"note: {exc}")
                time.sleep(WAIT_POLL_S * 5)
                continue
            status = job["status"]
            if status != seen:
                seen = status
                if status in _STATUS_WORDS:
                    _out(f"Backup {_STATUS_WORDS[protocol.JobStatus(status)]}.")
            if status == protocol.JobStatus.RUNNING and job.get("progress"):
                progress = progress or out.progress("backing up")
                output.show(progress, job["progress"])
            if status in protocol.FINISHED_STATUSES:
                break
            time.sleep(WAIT_POLL_S)
    finally:
        if progress is not None:
            progress.close()
        if seen:
            _result({"status": seen})
    _result(
        {
            "status": status,
            "error": job.get("error") or None,
            "warning_count": job.get("warning_count", 0),
            "started_at": job.get("started_at"),
            "ended_at": job.get("ended_at"),
        }
    )
    if status == protocol.JobStatus.COMPLETED:
        _out("Backup completed.")
        return 0
    if status == protocol.JobStatus.WARNING:
        _out(f"Backup completed with {job.get('warning_count', 0)} warning(s): see {url}")
        return EXIT_WARNINGS
    what = "was cancelled" if status == protocol.JobStatus.CANCELLED else "failed"
    out.error(f"the backup {what}: {job.get('error') or 'no reason given'} ({url})")
    return 1


# --- worker, service, unregister ------------------------------------------------------------
def cmd_worker(args) -> int:
    registration = config.require_registration()
    settings = config.load_settings()
    if args.logfile:
        # Everything the worker and Celery log goes to the file (0600: it names paths).
        fd = os.open(args.logfile, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        os.dup2(fd, 2)
        os.close(fd)
        sys.stderr = open(2, "w", buffering=1, closefd=False)  # noqa: SIM115
    logging.basicConfig(
        level=args.loglevel.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    run_worker(registration, settings, loglevel=args.loglevel.upper())
    return 0


def cmd_install_service(args) -> int:
    try:
        path, note = install_service(
            Path(args.unit_dir) if args.unit_dir else None, start=not args.no_start
        )
    except RuntimeError as exc:
        raise UsageError(str(exc)) from None
    _out(f"Wrote {path}: {note}")
    return 0


def cmd_unregister(args) -> int:
    registration = config.require_registration()
    client = PortalClient(
        registration.portal_url,
        token=registration.token,
        proxies=config.load_settings().proxies(),
    )
    try:
        client.post("unregister/", {"reason": "unregistered on the machine"})
    except PortalRefused:
        pass  # unregistered in the portal already
    except PortalError as exc:
        if not args.force:
            raise UsageError(
                f"{exc} Pass --force to forget the registration locally anyway."
            ) from None
    config.remove_registration()
    _out(
        f"Machine {registration.machine_name!r} is no longer registered to vault "
        f"{registration.vault_name!r}. Its backups stay in the vault."
    )
    return 0


# --- change-passphrase ----------------------------------------------------------------------
def _current_passphrase(args, settings) -> str:
    """The passphrase typed (or in --passphrase-file); when this machine has its passphrase
    saved, it must be that one: the current, not an earlier one still in its period."""
    if args.passphrase_file:
        typed = pp.read_file(Path(args.passphrase_file))
    elif _interactive():
        typed = getpass.getpass("Current encryption passphrase: ")
    else:
        raise UsageError(
            "pass --passphrase-file FILE (the current passphrase) or run interactively"
        )
    path = pp.saved_path(settings)
    if path is not None and not hmac.compare_digest(typed.encode(), pp.read_file(path).encode()):
        raise UsageError(
            f"that is not this machine's current passphrase (the one saved in {path}). "
            "Nothing was changed."
        )
    return typed


def _new_passphrase(args, current: str) -> str:
    if args.new_passphrase_file:
        new = pp.read_file(Path(args.new_passphrase_file))
    elif _interactive():
        new = pp.prompt_twice(getpass.getpass, _out)
    else:
        raise UsageError("pass --new-passphrase-file FILE or run interactively")
    if new == current:
        raise UsageError("the new passphrase is the current one. Nothing was changed.")
    return new


def cmd_change_passphrase(args) -> int:
    """Re-wrap the master keys with a new passphrase (docs/agent.md): the current one must
    open the repository, the portal must accept the security PIN, and only then the new key
    blob is uploaded; the old key stays in the vault for its soft-delete period."""
    registration = config.require_registration()
    settings = config.load_settings()
    portal = PortalClient(
        registration.portal_url, token=registration.token, proxies=settings.proxies()
    )
    try:
        renew_grant(registration, portal)
        store = open_with_settings(registration.grant, settings)
        current = _current_passphrase(args, settings)
        try:
            repo = Repository.open(store, current)
        except WrongPassphrase:
            raise UsageError(
                "the current passphrase does not open this machine's backups. Nothing was changed."
            ) from None
        new = _new_passphrase(args, current)
        change = portal.post("jobs/passphrase/", {"security_pin": args.security_pin})
        try:
            key = repo.add_key(new)
        except StorageError as exc:
            raise UsageError(
                f"the new key could not be uploaded ({exc}); the passphrase is unchanged. "
                "Run the command again with a new security PIN."
            ) from None
        saved = pp.saved_path(settings)
        if saved is not None:
            pp.replace_file(new, saved)
        try:
            done = portal.post(f"jobs/passphrase/{change['change_id']}/complete/", {"key": key})
        except PortalError as exc:
            raise UsageError(
                f"the new passphrase works, but the portal did not record the change ({exc}); "
                "the old passphrase keeps working too. Run the command again (with the new "
                "passphrase as the current one) to record it."
            ) from None
    finally:
        portal.close()
    _out(f"The encryption passphrase of {registration.machine_name!r} is changed.")
    if saved is not None:
        _out(f"The new passphrase is saved in {saved}; scheduled backups use it.")
    _out(
        "Until "
        f"{done['old_keys_removed_after'][:16].replace('T', ' ')} UTC the old passphrase "
        "still opens the backups; after that only the new one does."
    )
    _out("Remember: " + pp.LOSS_WARNING)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="haven-agent", description="Haven backup agent for this machine."
    )
    parser.add_argument("--version", action="version", version=f"haven-agent {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("configure", help="installation settings: cache location, proxy")
    p.add_argument("--install-dir")
    p.add_argument("--cache-dir")
    p.add_argument("--proxy", help="proxy URL for portal and storage traffic")
    p.add_argument("--proxy-user")
    p.add_argument("--proxy-password-file")
    p.add_argument("--no-proxy", action="store_true")
    p.add_argument(
        "--passphrase-file", help="file (0600) scheduled backups read the passphrase from"
    )
    p.add_argument(
        "--bandwidth-limit",
        metavar="RATE",
        help="limit storage traffic per second, each way (512KB, 2MB; off for no limit)",
    )
    p.set_defaults(func=cmd_configure)

    p = sub.add_parser("check", help="verify access to the portal, broker, storage; clock")
    p.add_argument("--vault-credentials", help="check the portal named in this file")
    p.add_argument("--portal", help="check this portal URL")
    p.set_defaults(func=cmd_check)

    p = sub.add_parser("register", help="register this machine to a vault")
    p.add_argument("--vault-credentials")
    p.add_argument("--machine-name")
    p.add_argument("--passphrase-file")
    p.add_argument("--generate-passphrase", metavar="PATH")
    p.add_argument("--replace", action="store_true", help="replace an earlier registration")
    p.set_defaults(func=cmd_register)

    p = sub.add_parser("status", help="which portal and vault this machine is registered to")
    p.set_defaults(func=cmd_status)

    p = sub.add_parser("worker", help="run the worker for this machine's queue")
    p.add_argument("--loglevel", default="INFO")
    p.add_argument("--logfile")
    p.set_defaults(func=cmd_worker)

    p = sub.add_parser("install-service", help="write (and start) a systemd unit")
    p.add_argument("--unit-dir")
    p.add_argument("--no-start", action="store_true")
    p.set_defaults(func=cmd_install_service)

    p = sub.add_parser("unregister", help="unregister this machine and forget its credentials")
    p.add_argument("--force", action="store_true")
    p.set_defaults(func=cmd_unregister)

    p = sub.add_parser("policy", help="the backup policy the portal applied to this machine")
    policy_sub = p.add_subparsers(dest="policy_command", required=True)
    policy_sub.add_parser("show", help="show the applied policy").set_defaults(func=cmd_policy_show)

    p = sub.add_parser("seed", help="offline seeding: the first backup to a disk")
    seed_sub = p.add_subparsers(dest="seed_command", required=True)
    p = seed_sub.add_parser("export", help="write the first backup to a folder or mounted disk")
    p.add_argument(
        "--to",
        metavar="PATH",
        help="an empty folder on the disk (default: the policy's seed staging folder)",
    )
    p.add_argument("--passphrase-file", help="the machine's passphrase, if it is not saved")
    p.set_defaults(func=cmd_seed_export)

    p = sub.add_parser(
        "verify", help="read back and authenticate this machine's backup data in the vault"
    )
    p.add_argument(
        "--fraction",
        type=float,
        default=1.0,
        help="share of the packs to read, chosen at random (default 1: all); manifests are "
        "always read",
    )
    p.add_argument("--passphrase-file", help="the machine's passphrase, if it is not saved")
    p.set_defaults(func=cmd_verify)

    p = sub.add_parser(
        "backup", help="back up this machine now (a Back up now job the portal shows live)"
    )
    p.add_argument(
        "--wait", action="store_true", help="follow the job until it ends, with its progress"
    )
    p.add_argument(
        "--retain-until",
        metavar="YYYY-MM-DD",
        help="keep this recovery point until this date (default: the policy's retention for "
        "ad hoc backups)",
    )
    p.set_defaults(func=cmd_backup)

    p = sub.add_parser(
        "change-passphrase", help="re-wrap the backups' key with a new encryption passphrase"
    )
    p.add_argument(
        "--security-pin", required=True, help="the PIN a Contributor generated in the portal"
    )
    p.add_argument("--passphrase-file", help="file holding the current passphrase")
    p.add_argument("--new-passphrase-file", help="file holding the new passphrase")
    p.set_defaults(func=cmd_change_passphrase)

    add_recovery_commands(sub)  # recovery-points, ls, find, versions, restore
    _add_json_flag(sub)
    return parser


def _add_json_flag(sub) -> None:
    """``--json`` on every command (and every sub-command of policy and seed) that does
    not have it yet."""
    for p in sub.choices.values():
        nested = [a for a in p._actions if isinstance(a, argparse._SubParsersAction)]
        if nested:
            _add_json_flag(nested[0])
            continue
        if "--json" in p._option_string_actions:
            continue
        p.add_argument(
            "--json",
            action="store_true",
            help="print one JSON document (progress: JSON lines on stderr)",
        )


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    output.begin(args)
    # A command may begin its own output (the recovery commands do); the current one ends.
    try:
        code = args.func(args)
    except CredentialsError as exc:
        output.current().error(f"vault credentials refused ({exc.code}): {exc}")
        code = 1
    except PassphraseError as exc:
        output.current().error(f"passphrase: {exc}")
        code = 1
    except (PortalError, RegistrationError, config.ConfigError, UsageError) as exc:
        output.current().error(str(exc))
        code = 1
    except KeyboardInterrupt:
        output.current().error("interrupted")
        code = 130
    return output.current().finish(code)


if __name__ == "__main__":
    sys.exit(main())
