"""The result outbox: nothing a machine finishes is lost because the portal was away.

One JSON file per job under ``<cache>/outbox/`` (0600, written to a temporary name, fsynced,
then renamed over, and the folder fsynced):

- ``<job id>.json`` in state ``started`` is the journal of a job that began on this machine
  (written when the portal answered its start). It carries the kind of work, the process
  that runs it and the files done so far. A worker that starts and finds one left by a
  process that is gone (killed, crashed, the machine lost power) turns it into a Failed
  result that says so (``recover_abandoned``).
- the same file in state ``result`` holds the wire result (``protocol.JobResult.to_wire``)
  and its ``result_id``, written before the first attempt to post it. It is posted until the
  portal accepts it; the portal answers the same ``result_id`` the same way every time, so
  posting again after a lost answer is harmless. Then the file is removed.
- ``<job id>.refused.json``: a result the portal refused (``PortalRefused``, final). Kept for
  the operator, logged, never posted again.

The job's own task tries for ``TASK_PATIENCE`` seconds with backoff; after that the worker
posts what is left when it starts and after each heartbeat the portal answers, each entry
backing off on its own up to ``MAX_BACKOFF``. ``haven-agent status`` lists what waits here.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from agents.runtime.portal_api import PortalError, PortalRefused
from agents.runtime.protocol import RESULT_ID, JobResult

log = logging.getLogger("haven.agent.jobs")

OUTBOX_FOLDER = "outbox"
STARTED = "started"
RESULT = "result"
REFUSED_SUFFIX = ".refused.json"
MAX_BACKOFF = 300.0
FIRST_BACKOFF = 1.0
# How long a job's task keeps posting its result before the worker's heartbeat takes over
# (the task holds a pool slot meanwhile).
TASK_PATIENCE = 120.0
JOURNAL_EVERY = 2.0  # seconds between journal updates of the files done

ABANDONED = {
    "backup": (
        "The agent stopped while backing up (it was killed, restarted or the machine went "
        "down), so no recovery point was made. The data uploaded so far is reused by the "
        "next backup: back up again."
    ),
    "restore": (
        "The agent stopped while restoring (it was killed, restarted or the machine went "
        "down); at least {files} file(s) already restored were kept, and the one being "
        "written may be incomplete. Start the restore again: files already there are skipped or "
        "replaced as the conflict choice says."
    ),
    "seed": (
        "The agent stopped while writing the seed (it was killed, restarted or the machine "
        "went down). What is in the staging folder is kept and reused: start the offline "
        "backup again (Back up now) and it finishes the seed."
    ),
    "compact": (
        "The agent stopped while compacting (it was killed, restarted or the machine went "
        "down). Nothing was deleted, every recovery point is as restorable as before, and "
        "the next compact job finishes the work."
    ),
    "download": (
        "The agent stopped while building the download (it was killed, restarted or the "
        "machine went down); nothing was downloaded. Start the download again."
    ),
    "verify": (
        "The agent stopped while verifying (it was killed, restarted or the machine went "
        "down), so the check did not finish; nothing in the vault was changed. Start Verify "
        "now again, or let the next scheduled verify read this slice."
    ),
    "drill": (
        "The agent stopped during the restore drill (it was killed, restarted or the machine "
        "went down), so nothing was proven. Its copy may be left in the scratch folder, in a "
        "folder named haven-drill-<this job's id>: delete it, then run the drill again."
    ),
}


def process_identity(pid: int) -> str:
    """Who process ``pid`` is, beyond its number (which a reboot or a long uptime reuses):
    the boot and the process's start time on Linux; "" where that cannot be read."""
    try:
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return ""
    # the start time is field 22; the command name (field 2) may hold spaces: split after it
    return f"{boot}:{stat.rsplit(')', 1)[1].split()[19]}"


def _alive(pid: int, identity: str) -> bool:
    if pid <= 0:
        return False
    if identity:
        return process_identity(pid) == identity
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@dataclass
class Entry:
    job_id: str
    state: str
    kind: str = ""
    pid: int = 0
    process: str = ""  # process_identity(pid) when it was written
    files_done: int = 0
    result_id: str = ""
    payload: dict = field(default_factory=dict)
    written_at: float = 0.0

    def to_json(self) -> dict:
        return {
            "job_id": self.job_id,
            "state": self.state,
            "kind": self.kind,
            "pid": self.pid,
            "process": self.process,
            "files_done": self.files_done,
            "result_id": self.result_id,
            "payload": self.payload,
            "written_at": self.written_at,
        }

    @classmethod
    def from_json(cls, data: dict) -> Entry:
        return cls(
            job_id=str(data["job_id"]),
            state=str(data.get("state") or ""),
            kind=str(data.get("kind") or ""),
            pid=int(data.get("pid") or 0),
            process=str(data.get("process") or ""),
            files_done=int(data.get("files_done") or 0),
            result_id=str(data.get("result_id") or ""),
            payload=dict(data.get("payload") or {}),
            written_at=float(data.get("written_at") or 0.0),
        )

    def wire(self) -> dict:
        """The body posted to ``jobs/<id>/result/``."""
        return {**self.payload, RESULT_ID: self.result_id}


# One lock for every Outbox of the process: the job's task and the heartbeat may both post
# the same result (each has its own Outbox); the portal would answer both the same way, but
# one post at a time keeps the log and the files simple.
_SENDING = threading.Lock()


class Outbox:
    def __init__(self, folder: Path, *, clock: Callable[[], float] = time.monotonic):
        self.folder = Path(folder)
        self.clock = clock
        self._lock = _SENDING
        self._due: dict[str, tuple[float, float]] = {}  # job id -> (next try, backoff)
        # Results the disk refused to keep (full, read-only): delivered from here instead.
        self._in_memory: dict[str, Entry] = {}

    # -- files ----------------------------------------------------------------------------
    def _path(self, job_id: str) -> Path:
        if not job_id or "/" in job_id or job_id.startswith("."):
            raise ValueError(f"not a job id: {job_id!r}")
        return self.folder / f"{job_id}.json"

    def _write(self, entry: Entry) -> None:
        self.folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        path = self._path(entry.job_id)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(json.dumps(entry.to_json(), separators=(",", ":")).encode())
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
            raise
        folder = os.open(self.folder, os.O_RDONLY)
        try:
            os.fsync(folder)
        finally:
            os.close(folder)

    def _keep(self, entry: Entry, what: str) -> bool:
        """Write ``entry``; a disk that refuses (full, read-only) is logged, not raised: the job
        goes on and its result is still posted from memory, only without the restart-proof
        copy on disk."""
        try:
            self._write(entry)
        except OSError as exc:
            log.error(
                "could not keep the %s of job %s in %s (%s); it is delivered from memory and "
                "will not survive a restart of the agent",
                what,
                entry.job_id,
                self.folder,
                exc.strerror or exc,
            )
            return False
        return True

    def get(self, job_id: str) -> Entry | None:
        try:
            return Entry.from_json(json.loads(self._path(job_id).read_bytes()))
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, TypeError) as exc:
            log.error("outbox entry for job %s is unreadable: %s", job_id, exc)
            return None

    def entries(self) -> list[Entry]:
        """Every job started or finished here and not yet delivered, oldest first."""
        if not self.folder.is_dir():
            return []
        found = []
        for path in sorted(self.folder.glob("*.json")):
            if path.name.endswith(REFUSED_SUFFIX) or path.name.startswith("."):
                continue
            entry = self.get(path.stem)
            if entry is not None:
                found.append(entry)
        return sorted(found, key=lambda e: e.written_at)

    def pending(self) -> list[Entry]:
        return [e for e in self.entries() if e.state == RESULT]

    def refused(self) -> list[Path]:
        return sorted(self.folder.glob(f"*{REFUSED_SUFFIX}")) if self.folder.is_dir() else []

    # -- a job's life -----------------------------------------------------------------------
    def started(self, job_id: str, kind: str) -> None:
        """Journal that ``job_id`` began in this process."""
        pid = os.getpid()
        self._keep(
            Entry(
                job_id,
                STARTED,
                kind=kind,
                pid=pid,
                process=process_identity(pid),
                written_at=time.time(),
            ),
            "journal",
        )

    def progressed(self, job_id: str, files_done: int) -> None:
        entry = self.get(job_id)
        if entry is None or entry.state != STARTED or entry.files_done == files_done:
            return
        entry.files_done = files_done
        self._keep(entry, "journal")

    def put(self, job_id: str, payload: dict) -> Entry:
        """Keep the result of ``job_id`` until the portal has it (replaces its journal)."""
        previous = self.get(job_id)
        if previous is not None and previous.state == RESULT:
            return previous  # a result is never replaced: it may have reached the portal
        entry = Entry(
            job_id,
            RESULT,
            kind=previous.kind if previous else "",
            result_id=str(uuid.uuid4()),
            payload=dict(payload),
            written_at=time.time(),
        )
        if not self._keep(entry, "result"):
            # The journal on disk would say "started" and, after a restart, report the job
            # abandoned although its result was delivered: it goes (removing needs no room),
            # and the result is delivered from memory.
            with contextlib.suppress(OSError):
                self._path(job_id).unlink(missing_ok=True)
            self._in_memory[job_id] = entry
        return entry

    def recover_abandoned(self) -> list[Entry]:
        """Jobs journaled by a process that is gone become Failed results saying so."""
        made = []
        for entry in self.entries():
            if entry.state != STARTED or _alive(entry.pid, entry.process):
                continue
            words = ABANDONED.get(entry.kind, ABANDONED["backup"]).format(files=entry.files_done)
            log.warning("job %s was left unfinished by a stopped agent: reporting it", entry.job_id)
            made.append(self.put(entry.job_id, JobResult.failed(words).to_wire()))
        return made

    # -- delivery ---------------------------------------------------------------------------
    def send(self, portal, entry: Entry) -> dict | None:
        """One attempt. The portal's answer once accepted (the file is gone); None after a
        refusal (the file is kept as refused). ``PortalError`` when it should be tried again."""
        with self._lock:
            current = self.get(entry.job_id) or self._in_memory.get(entry.job_id)
            if current is None or current.state != RESULT:
                return {"status": entry.payload.get("status"), "delivered": "already"}
            try:
                answer = portal.post(f"jobs/{entry.job_id}/result/", current.wire())
            except PortalRefused as exc:
                log.error(
                    "REFUSED the portal will not take the result of job %s (%s %s): %s; it is "
                    "kept in %s",
                    entry.job_id,
                    exc.status,
                    exc.code,
                    exc,
                    self.folder / f"{entry.job_id}{REFUSED_SUFFIX}",
                )
                if self._in_memory.pop(entry.job_id, None) is None:
                    os.replace(
                        self._path(entry.job_id), self.folder / f"{entry.job_id}{REFUSED_SUFFIX}"
                    )
                self._due.pop(entry.job_id, None)
                return None
            self._path(entry.job_id).unlink(missing_ok=True)
            self._in_memory.pop(entry.job_id, None)
            self._due.pop(entry.job_id, None)
            return answer

    def deliver(
        self,
        portal,
        entry: Entry,
        *,
        patience: float = TASK_PATIENCE,
        sleep: Callable[[float], None] = time.sleep,
    ) -> dict | None:
        """Post with backoff for up to ``patience`` seconds; what is still undelivered then
        stays for the worker's flush (``flush``)."""
        delay = FIRST_BACKOFF
        give_up = self.clock() + patience
        attempt = 0
        while True:
            attempt += 1
            try:
                return self.send(portal, entry)
            except (PortalError, OSError) as exc:  # away, a 5xx, a dropped connection
                log.warning(
                    "could not post the result of job %s (attempt %d, kept in the outbox): %s",
                    entry.job_id,
                    attempt,
                    exc,
                )
            if self.clock() + delay > give_up:
                self._due[entry.job_id] = (self.clock() + delay, delay)
                return None
            sleep(delay)
            delay = min(delay * 2, MAX_BACKOFF)

    def flush(self, portal) -> int:
        """Post every result that is due (each backs off on its own); returns how many the
        portal took or refused. Called when the worker starts and after each heartbeat."""
        done = 0
        now = self.clock()
        for entry in self.pending():
            due, delay = self._due.get(entry.job_id, (0.0, FIRST_BACKOFF / 2))
            if due > now:
                continue
            try:
                self.send(portal, entry)
            except (PortalError, OSError) as exc:
                delay = min(delay * 2, MAX_BACKOFF)
                self._due[entry.job_id] = (now + delay, delay)
                log.warning("result of job %s still not delivered: %s", entry.job_id, exc)
                continue
            done += 1
        return done


def outbox_for_cache(cache_dir: Path) -> Outbox:
    return Outbox(Path(cache_dir) / OUTBOX_FOLDER)


def outbox_of(ctx) -> Outbox:
    """The outbox of an agent task's context (``AgentContext``): in the agent's cache."""
    if "cache_dir" in ctx.extra:
        return outbox_for_cache(Path(ctx.extra["cache_dir"]))
    return outbox_for_cache(Path(ctx.settings.cache_path))
