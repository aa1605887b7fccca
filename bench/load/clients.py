"""The simulated fleet and its watchers, each run in a process of its own (no Django here).

* ``http_agents``: every machine heart-beats through the agent API once a minute (spread
  over the minute); the first ``jobs`` machines also start their backup and post a
  progress report each second (``protocol.PROGRESS_KEYS``), the report's ``current`` file
  carrying its number and the time it was sent.
* ``broker_agents``: every machine logs in to Redis as its own ACL user and waits on its
  queue (``BRPOP`` with a 1 s timeout, as a kombu worker does).
* ``watchers``: websocket clients of ``/ws/live/`` (a signed-in session each) watching a
  vault or a job, as the pages do; they note when each report arrives.

All bounded by ``duration``; each returns its figures through a multiprocessing queue.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import re
import threading
import time
from pathlib import Path
from urllib.parse import urlsplit

MARK = re.compile(r"/bench/([0-9a-f-]{36})/(\d+)/(\d+\.\d+)")


def _report(seq: int, job: str) -> dict:
    from agents.runtime import protocol  # the wire (no Django)

    values = {
        "phase": "backing_up",
        "files_done": seq * 10,
        "files_total": 100_000,
        "bytes_done": seq * 10_000_000,
        "bytes_total": 100_000_000_000,
        "new_bytes": seq * 1_000_000,
        "stored_bytes": seq * 400_000,
        "rate_bps": 10_000_000,
        "eta_s": 1000 - seq,
        "elapsed_s": seq,
        "current": f"/bench/{job}/{seq}/{time.time():.6f}",
    }
    return {
        "schema": 1,
        "type": "progress",
        "operation": "backup",
        **{k: values.get(k) for k in protocol.PROGRESS_KEYS},
        "elapsed_s": seq,
    }


def http_agents(base: str, fleet: list[dict], jobs: int, duration: float, out) -> None:
    import requests

    deadline = time.monotonic() + duration
    lock = threading.Lock()
    latency: dict[str, list[float]] = {"heartbeat": [], "start": [], "progress": []}
    sent_at: dict[str, list[float]] = {name: [] for name in latency}  # seconds into the run
    began = deadline - duration
    errors: dict[str, int] = {}
    posted: list[tuple[str, int]] = []

    def call(session, endpoint, url, token, body):
        started = time.monotonic()
        try:
            response = session.post(
                url, json=body, headers={"Authorization": f"Bearer {token}"}, timeout=30
            )
            ok = response.status_code == 200
            key = str(response.status_code)
        except requests.RequestException as exc:
            ok, key = False, type(exc).__name__
        elapsed = time.monotonic() - started
        with lock:
            latency[endpoint].append(elapsed)
            sent_at[endpoint].append(started - began)
            if not ok:
                errors[f"{endpoint}:{key}"] = errors.get(f"{endpoint}:{key}", 0) + 1
        return ok

    def job_agent(agent: dict, offset: float):
        session = requests.Session()
        time.sleep(offset)
        job, token = agent["job"], agent["token"]
        call(session, "start", f"{base}/api/agent/jobs/{job}/start/", token, {})
        seq = 0
        next_at = time.monotonic()
        while time.monotonic() < deadline:
            if call(session, "progress", f"{base}/api/agent/jobs/{job}/progress/", token,
                    _report(seq, job)):  # fmt: skip
                with lock:
                    posted.append((job, seq))
            seq += 1
            next_at += 1.0
            time.sleep(max(0.0, next_at - time.monotonic()))

    def heartbeats(agents: list[dict], slot: float):
        session = requests.Session()
        for n, agent in enumerate(agents):
            at = slot * n
            while time.monotonic() < deadline - duration + at:
                time.sleep(0.05)
            if time.monotonic() >= deadline:
                return
            call(session, "heartbeat", f"{base}/api/agent/heartbeat/", agent["token"],
                 {"agent_version": "bench", "hostname": agent["machine"][:8]})  # fmt: skip

    threads = [
        threading.Thread(target=job_agent, args=(agent, (i % 100) / 100), daemon=True)
        for i, agent in enumerate(fleet[:jobs])
    ]
    # One minute's heart-beats of the whole fleet, spread evenly by 20 senders.
    senders = 20
    per_minute = min(60.0, duration)
    for s in range(senders):
        share = fleet[s::senders]
        threads.append(
            threading.Thread(
                target=heartbeats, args=(share, per_minute / max(1, len(share))), daemon=True
            )
        )
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=max(1.0, deadline - time.monotonic() + 35))
    out.put({"latency": latency, "sent_at": sent_at, "errors": errors, "posted": posted})


async def _resp(reader, writer, *args: str):
    writer.write(
        f"*{len(args)}\r\n".encode()
        + b"".join(f"${len(a.encode())}\r\n{a}\r\n".encode() for a in args)
    )
    await writer.drain()
    line = await reader.readline()
    if line.startswith(b"$"):
        size = int(line[1:])
        if size >= 0:
            await reader.readexactly(size + 2)
    elif line.startswith(b"*"):
        for _ in range(max(0, int(line[1:]))):
            head = await reader.readline()
            if head.startswith(b"$") and int(head[1:]) >= 0:
                await reader.readexactly(int(head[1:]) + 2)
    return line


def broker_agents(port: int, fleet: list[dict], duration: float, out) -> None:
    async def agent(spec: dict, deadline: float, counts: dict):
        await asyncio.sleep(hash(spec["machine"]) % 1000 / 1000)
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            answer = await _resp(
                reader, writer, "AUTH", spec["broker_user"], spec["broker_password"]
            )
            if not answer.startswith(b"+OK"):
                counts["auth_refused"] += 1
                return
            counts["logged_in"] += 1
            while time.monotonic() < deadline:
                answer = await _resp(reader, writer, "BRPOP", spec["queue"], "1")
                counts["brpop"] += 1
                if answer.startswith(b"-"):
                    counts["errors"] += 1
            writer.close()
        except OSError:
            counts["errors"] += 1

    async def main():
        counts = {"logged_in": 0, "auth_refused": 0, "brpop": 0, "errors": 0}
        deadline = time.monotonic() + duration
        await asyncio.gather(*(agent(spec, deadline, counts) for spec in fleet))
        return counts

    out.put(asyncio.run(main()))


async def _ws_connect(url: str, cookie: str, origin: str):
    parts = urlsplit(url)
    reader, writer = await asyncio.open_connection(parts.hostname, parts.port)
    key = base64.b64encode(os.urandom(16)).decode()
    path = parts.path + (f"?{parts.query}" if parts.query else "")
    writer.write(
        (
            f"GET {path} HTTP/1.1\r\nHost: {parts.hostname}:{parts.port}\r\n"
            f"Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
            f"Sec-WebSocket-Version: 13\r\nOrigin: {origin}\r\nCookie: {cookie}\r\n\r\n"
        ).encode()
    )
    await writer.drain()
    status = await reader.readline()
    while (await reader.readline()) not in (b"\r\n", b""):
        pass
    if b" 101 " not in status:
        raise ConnectionError(status.decode(errors="replace"))
    return reader, writer


def _ws_frame(opcode: int, payload: bytes) -> bytes:
    """A client frame (masked, as a client's must be), payload under 126 bytes."""
    mask = os.urandom(4)
    masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    return bytes([0x80 | opcode, 0x80 | len(payload)]) + mask + masked


async def _ws_messages(reader, writer):
    """Text messages from the server (unmasked frames; fragments joined); pings answered,
    as a browser does (daphne closes a socket that does not answer)."""
    parts: list[bytes] = []
    while True:
        head = await reader.readexactly(2)
        opcode, size = head[0] & 0x0F, head[1] & 0x7F
        if size == 126:
            size = int.from_bytes(await reader.readexactly(2), "big")
        elif size == 127:
            size = int.from_bytes(await reader.readexactly(8), "big")
        payload = await reader.readexactly(size)
        if opcode == 8:
            return
        if opcode == 9:
            writer.write(_ws_frame(10, payload[:125]))
            await writer.drain()
            continue
        if opcode in (0, 1):
            parts.append(payload)
            if head[0] & 0x80:
                yield b"".join(parts).decode()
                parts = []


def watchers(ws_base: str, origin: str, watches: list[tuple[str, str]], duration: float, out):
    """``watches``: (session cookie, query string) per watcher."""

    async def watcher(cookie: str, query: str, deadline: float):
        """Listens until ``deadline``; reconnects after a drop (as htmx's ws extension does,
        after which the page fetches its fragments again: reports pushed meanwhile are
        counted lost)."""
        heard: dict[str, float] = {}
        drops = 0
        error = None

        async def listen(reader, writer):
            async for text in _ws_messages(reader, writer):
                arrived = time.time()
                for job, seq, sent in MARK.findall(text):
                    heard[f"{job}/{seq}"] = arrived - float(sent)

        while time.monotonic() < deadline:
            try:
                reader, writer = await _ws_connect(f"{ws_base}/ws/live/?{query}", cookie, origin)
            except (OSError, ConnectionError) as exc:
                error = str(exc)
                await asyncio.sleep(1)
                continue
            with contextlib.suppress(TimeoutError, asyncio.IncompleteReadError, OSError):
                await asyncio.wait_for(
                    listen(reader, writer), timeout=max(1.0, deadline - time.monotonic())
                )
            writer.close()
            if time.monotonic() < deadline - 1:
                drops += 1
                await asyncio.sleep(1)
        result = {"query": query, "heard": heard, "drops": drops}
        if error and not heard:
            result["error"] = error
        return result

    async def main():
        deadline = time.monotonic() + duration
        return await asyncio.gather(*(watcher(c, q, deadline) for c, q in watches))

    out.put(asyncio.run(main()))


def cpu_seconds(pid: int, *, children: bool = False) -> float:
    """User + system CPU of ``pid`` (and of its reaped children, when asked)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = int(fields[11]) + int(fields[12])
    if children:
        ticks += int(fields[13]) + int(fields[14])
    return ticks / os.sysconf("SC_CLK_TCK")
