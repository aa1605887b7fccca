"""System State on Linux: what it takes to rebuild a machine's configuration on a fresh install
of the same distribution, collected into a staging folder at the start of a backup (on a
thread of its own: ``jobs.backup.system_state``; the walk takes the folder last).

``collect(staging)`` fills the folder with

* ``etc/`` — a copy of ``/etc`` as files (symbolic links as links; what cannot be read is
  named in a warning);
* ``packages/`` — the package selection: ``dpkg --get-selections`` and ``apt-mark showmanual``
  where dpkg exists, else ``rpm -qa``;
* ``systemd/enabled-unit-files.txt`` — ``systemctl list-unit-files --state=enabled`` (the unit
  files and overrides themselves are under ``etc/systemd/``);
* ``crontabs/`` — a copy of ``/var/spool/cron``;
* ``users/`` — ``getent passwd`` and ``getent group``; ``shadow`` only when the agent can
  read ``/etc/shadow`` (root), which the manifest says;
* ``mounts/`` — ``/etc/fstab`` and ``findmnt --json``;
* ``disks/`` — ``lsblk --json`` and, as root, ``sfdisk --dump`` of each disk;
* ``manifest.json`` — what was collected, with which command and exit status, and the
  distribution from ``/etc/os-release``; ``README.md`` — how to use each part.

Every command runs without a shell (an argument list), with a timeout and ``LC_ALL=C``. A
missing command or a failure is a warning naming the command and why; it never fails the
backup. Files are rewritten only when their content changed, so an unchanged part keeps its
metadata and the backup does not read it again.

The backup stores the folder under ``protocol.SYSTEM_STATE_PATH`` (``engine.paths.PathMap``).
No Django here.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import stat
import subprocess
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

COMMAND_TIMEOUT = 60  # seconds per command
MANIFEST = "manifest.json"
README = "README.md"
FORMAT = "haven-system-state"
VERSION = 1
MAX_NAMED = 10  # unreadable files named in one warning
MEMORY_DISKS = ("zram", "ram", "loop")  # "disks" with no partition table worth keeping


@dataclass
class Places:
    """Where the machine keeps what is copied (tests point these at folders of their own)."""

    etc: Path = Path("/etc")
    cron: Path = Path("/var/spool/cron")
    fstab: Path = Path("/etc/fstab")
    shadow: Path = Path("/etc/shadow")
    os_release: Path = Path("/etc/os-release")


@dataclass
class Collection:
    """What ``collect`` did: the manifest it wrote and its warnings (``{"path", "reason"}``,
    as the engine's, so the job lists them beside the backup's)."""

    manifest: dict
    warnings: list[dict] = field(default_factory=list)


class _Collector:
    def __init__(self, staging: Path, places: Places, timeout: float, euid: int):
        self.staging = staging
        self.places = places
        self.timeout = timeout
        self.root = euid == 0
        self.items: list[dict] = []
        self.warnings: list[dict] = []
        self.written: set[Path] = set()

    def warn(self, what: str, reason: str) -> None:
        self.warnings.append({"path": f"System State: {what}", "reason": reason})

    # -- files ------------------------------------------------------------------------------
    def write(self, rel: str, data: bytes) -> None:
        """Write ``rel`` only when its content changed (unchanged: not read by the backup)."""
        path = self.staging / rel
        self.written.add(path)
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        try:
            if path.read_bytes() == data:
                return
        except OSError:
            pass
        tmp = path.with_name(f".{path.name}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)

    def copy_tree(self, name: str, source: Path, rel: str, *, optional: bool = False) -> None:
        """Mirror ``source`` into ``rel``: files copied when their size or time changed, links
        as links, what is gone removed; unreadable files named in one warning. An
        ``optional`` folder that does not exist (no cron installed) is noted, not a warning."""
        if not source.is_dir():
            self.items.append({"name": name, "path": rel, "source": str(source),
                               "ok": optional, "error": "not present on this machine"})  # fmt: skip
            if not optional:
                self.warn(name, f"{source} does not exist on this machine; nothing was collected")
            return
        dest_root = self.staging / rel
        unreadable: list[str] = []
        files = 0
        for folder, dirs, names in os.walk(source, onerror=lambda e: unreadable.append(
                f"{e.filename}: {e.strerror}")):  # fmt: skip
            dirs.sort()
            here = Path(folder)
            out = dest_root / here.relative_to(source)
            out.mkdir(parents=True, exist_ok=True, mode=0o700)
            self.written.add(out)
            for sub in dirs:
                if (here / sub).is_symlink():
                    names.append(sub)  # os.walk lists a link to a folder as a folder
            for entry in sorted(names):
                src, dst = here / entry, out / entry
                try:
                    st = os.lstat(src)
                    if stat.S_ISLNK(st.st_mode):
                        target = os.readlink(src)
                        if not dst.is_symlink() or os.readlink(dst) != target:
                            if dst.is_symlink() or dst.exists():
                                _remove(dst)
                            os.symlink(target, dst)
                    elif stat.S_ISREG(st.st_mode):
                        try:
                            dt = os.lstat(dst)
                            same = (
                                stat.S_ISREG(dt.st_mode)
                                and dt.st_size == st.st_size
                                and dt.st_mtime_ns == st.st_mtime_ns
                                and stat.S_IMODE(dt.st_mode) == stat.S_IMODE(st.st_mode)
                            )
                        except FileNotFoundError:
                            same = False
                        if not same:
                            if dst.is_symlink() or dst.is_dir():
                                _remove(dst)
                            shutil.copy2(src, dst, follow_symlinks=False)
                        files += 1
                    else:
                        continue  # sockets, FIFOs, devices: not configuration
                    self.written.add(dst)
                except OSError as exc:
                    unreadable.append(f"{src}: {exc.strerror}")
            dirs[:] = [d for d in dirs if not (here / d).is_symlink()]
        item = {"name": name, "path": rel, "source": str(source), "ok": True, "files": files}
        if unreadable:
            item["unreadable"] = len(unreadable)
            shown = "; ".join(unreadable[:MAX_NAMED])
            more = f" and {len(unreadable) - MAX_NAMED} more" if len(unreadable) > MAX_NAMED else ""
            hint = "" if self.root else " (the agent does not run as root)"
            self.warn(name, f"{len(unreadable)} item(s) of {source} not collected{hint}: "
                            f"{shown}{more}")  # fmt: skip
        self.items.append(item)

    def copy_file(self, name: str, source: Path, rel: str) -> bool:
        try:
            data = source.read_bytes()
        except OSError as exc:
            self.items.append({"name": name, "path": rel, "source": str(source), "ok": False,
                               "error": exc.strerror or str(exc)})  # fmt: skip
            return False
        self.write(rel, data)
        self.items.append({"name": name, "path": rel, "source": str(source), "ok": True})
        return True

    # -- commands ---------------------------------------------------------------------------
    def run(self, name: str, args: list[str], rel: str) -> Future:
        """Start ``args`` on the pool (the commands wait on the system, not on us: run
        together they take as long as the slowest); the future gives its output or None."""
        item: dict = {"name": name, "path": rel, "command": args, "exit_status": None}
        self.items.append(item)  # (in the order asked, whatever order they finish in)
        return self.pool.submit(self._run, item, args, rel)

    def _run(self, item: dict, args: list[str], rel: str) -> bytes | None:
        """Run ``args`` (no shell, timeout, C locale); its output goes to ``rel``. A missing
        command, a timeout or a non-zero exit is a warning naming the command."""
        name = item["name"]
        shown = " ".join(args)
        if shutil.which(args[0]) is None:
            item.update(ok=False, error="command not found")
            self.warn(name, f"`{shown}` not run: {args[0]} is not installed on this machine")
            return None
        env = {"PATH": os.environ.get("PATH", os.defpath), "LC_ALL": "C", "LANG": "C"}
        try:
            done = subprocess.run(
                args,
                stdin=subprocess.DEVNULL,
                capture_output=True,
                timeout=self.timeout,
                env=env,
                check=False,
            )
        except subprocess.TimeoutExpired:
            item.update(ok=False, error=f"timed out after {self.timeout:g} s")
            self.warn(name, f"`{shown}` did not finish within {self.timeout:g} s; not collected")
            return None
        except OSError as exc:
            item.update(ok=False, error=exc.strerror or str(exc))
            self.warn(name, f"`{shown}` could not run: {exc.strerror or exc}")
            return None
        item["exit_status"] = done.returncode
        if done.returncode != 0:
            why = done.stderr.decode("utf-8", "replace").strip().splitlines()
            item.update(ok=False, error=(why[0] if why else "")[:300])
            detail = f": {why[0][:200]}" if why else ""
            self.warn(name, f"`{shown}` failed (exit status {done.returncode}){detail}")
            return None
        item["ok"] = True
        self.write(rel, done.stdout)
        return done.stdout

    # -- the parts --------------------------------------------------------------------------
    def collect(self) -> dict:
        with ThreadPoolExecutor(max_workers=4, thread_name_prefix="haven-sysstate") as pool:
            self.pool = pool
            manifest = self._collect()
        self.warnings.sort(key=lambda w: w["path"])
        manifest["warnings"] = len(self.warnings)
        return manifest

    def _collect(self) -> dict:
        places = self.places
        if shutil.which("dpkg"):
            self.run("packages", ["dpkg", "--get-selections"], "packages/dpkg-selections.txt")
            if shutil.which("apt-mark"):
                self.run("packages (manual)", ["apt-mark", "showmanual"],
                         "packages/apt-manual.txt")  # fmt: skip
        elif shutil.which("rpm"):
            self.run("packages", ["rpm", "-qa"], "packages/rpm-qa.txt")
        else:
            self.items.append({"name": "packages", "ok": False,
                               "error": "neither dpkg nor rpm is installed"})  # fmt: skip
            self.warn("packages", "the package selection was not collected: neither dpkg nor "
                      "rpm is installed on this machine")  # fmt: skip
        self.run(
            "systemd units",
            ["systemctl", "list-unit-files", "--state=enabled", "--no-pager", "--no-legend"],
            "systemd/enabled-unit-files.txt",
        )
        disks = self.run("disks", ["lsblk", "--json"], "disks/lsblk.json")
        self.copy_tree("etc", places.etc, "etc")  # while the commands run
        self.copy_tree("crontabs", places.cron, "crontabs", optional=True)
        self.run("users", ["getent", "passwd"], "users/passwd")
        self.run("groups", ["getent", "group"], "users/group")
        shadow = ""
        if self.root and os.access(places.shadow, os.R_OK):
            shadow = "included" if self.copy_file("shadow", places.shadow, "users/shadow") else ""
        if not shadow:
            shadow = f"not collected: {places.shadow} is readable only by root"
            self.warn("password hashes", f"{places.shadow} was not read (the agent does not "
                      "run as root, or cannot read it): users/ holds no password hashes")  # fmt: skip
        self.copy_file("fstab", places.fstab, "mounts/fstab")
        self.run("mounts", ["findmnt", "--json"], "mounts/findmnt.json")
        if not self.root:
            self.items.append({"name": "partition tables", "ok": False,
                               "error": "sfdisk --dump needs root"})  # fmt: skip
            self.warn("partition tables", "`sfdisk --dump` not run: it needs root and the agent "
                      "does not run as root (disks/lsblk.json has the layout)")  # fmt: skip
        elif (layout := disks.result()) is not None:
            for name in _disk_names(layout):
                self.run(f"partition table of /dev/{name}", ["sfdisk", "--dump", f"/dev/{name}"],
                         f"disks/sfdisk-{name}.txt")  # fmt: skip
        return {
            "format": FORMAT,
            "version": VERSION,
            "hostname": socket.gethostname(),
            "distribution": os_release(places.os_release),
            "collected_as_root": self.root,
            "password_hashes": shadow,
            "items": self.items,
        }

    def prune(self) -> None:
        """Remove what an earlier collection left and this one did not write."""
        keep = self.written | {self.staging / MANIFEST, self.staging / README}
        for folder, dirs, names in os.walk(self.staging, topdown=False):
            here = Path(folder)
            for name in names:
                if here / name not in keep:
                    (here / name).unlink(missing_ok=True)
            for name in dirs:  # bottom up: emptied by now when nothing in it was kept
                path = here / name
                if path.is_symlink():
                    if path not in keep:
                        path.unlink()
                elif path not in keep and not any(path.iterdir()):
                    path.rmdir()


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)


def _disk_names(lsblk_json: bytes) -> list[str]:
    try:
        devices = json.loads(lsblk_json).get("blockdevices") or []
    except (ValueError, AttributeError):
        return []
    return sorted(
        str(d["name"])
        for d in devices
        if isinstance(d, dict)
        and d.get("type") == "disk"
        and "/" not in str(d.get("name", "/"))
        and not str(d["name"]).startswith(MEMORY_DISKS)
    )


def os_release(path: Path = Path("/etc/os-release")) -> dict:
    """``ID``, ``VERSION_ID``, ``PRETTY_NAME`` … of ``/etc/os-release`` ({} when absent)."""
    out: dict[str, str] = {}
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return out
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        if sep and key.strip() and not key.startswith("#"):
            out[key.strip()] = value.strip().strip("\"'")
    return out


def collect(
    staging: Path,
    *,
    places: Places | None = None,
    timeout: float = COMMAND_TIMEOUT,
    euid: int | None = None,
    now: Callable[[], datetime] = lambda: datetime.now(UTC),
) -> Collection:
    """Collect System State into ``staging`` (created private; an earlier collection there is
    updated in place). Never raises for what it could not collect: those are warnings."""
    staging = Path(staging)
    staging.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(staging, 0o700)
    collector = _Collector(
        staging, places or Places(), timeout, os.geteuid() if euid is None else euid
    )
    manifest = collector.collect()
    collector.prune()
    manifest["collected_at"] = now().isoformat()
    collector.write(MANIFEST, json.dumps(manifest, indent=1).encode())
    collector.write(README, README_TEXT.encode())
    return Collection(manifest=manifest, warnings=collector.warnings)


README_TEXT = """\
# System State collected by the Haven agent

This folder is a machine's configuration as the Haven agent collected it before a backup.
It is a record to rebuild from on a fresh install of the same distribution (see
manifest.json: `distribution`), not an image: nothing here restores itself. Never copy it
over a running system; pick what you need, part by part.

manifest.json says what was collected, with which command and its exit status, and whether
the agent ran as root (without root, unreadable files and the password hashes are missing).

## etc/ — a copy of /etc

Compare before you copy: `diff -ru etc/ /etc/`. Copy single files back with their owner and
mode, e.g. `cp -a etc/nginx/nginx.conf /etc/nginx/`.

## packages/ — the package selection

* Debian, Ubuntu: `apt-get update && dpkg --set-selections < packages/dpkg-selections.txt &&
  apt-get dselect-upgrade`; or install only what was installed by hand:
  `xargs -a packages/apt-manual.txt apt-get install -y`.
* RHEL, Fedora, SUSE: `rpm -qa` names with versions;
  `sed 's/-[^-]*-[^-]*$//' packages/rpm-qa.txt | xargs dnf install -y`.

## systemd/enabled-unit-files.txt — enabled units

Unit files and drop-in overrides you made are under etc/systemd/system/. Enable the units
again with `awk '{print $1}' systemd/enabled-unit-files.txt | xargs systemctl enable`.

## crontabs/ — /var/spool/cron

Per-user crontabs: `crontab -u USER crontabs/crontabs/USER` (Debian layout) or
`crontab -u USER crontabs/USER` (RHEL layout).

## users/ — users and groups

`getent passwd` and `getent group` output; `shadow` (password hashes) only when the agent ran
as root. Recreate an account with `useradd` / `groupadd` using the same UID and GID, so the
restored files' owners match.

## mounts/ — mount list

`fstab` (the configured mounts) and `findmnt.json` (what was mounted at backup time).
Compare with the new machine's /etc/fstab; file systems are referenced by UUID or LABEL.

## disks/ — partition tables

`lsblk.json` (disks, partitions, sizes, file systems). As root, `sfdisk-DISK.txt` per disk:
`sfdisk /dev/DISK < disks/sfdisk-DISK.txt` recreates the partition table on an EMPTY disk of
at least that size — it destroys what is on the disk. Haven does not restore file systems
or boot loaders (no bare-metal recovery).
"""
