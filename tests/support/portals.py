"""More than one portal in a test: real daphne processes, a loopback reverse proxy in front
that the test points at the portal of its choice, and a small websocket client.

    with PortalProcess(env, data_dir=tmp / "p1") as one, PortalProcess(env, ...) as two:
        with PortalProxy([one.port, two.port]) as proxy:
            proxy.use(0)   # new connections go to the first portal ...
            proxy.use(1)   # ... and from now on to the second

``kill()`` SIGKILLs a portal and ``start()`` serves again on the same port: a real restart.

The proxy is connection-level (a browser or HTTP client that keeps a connection open stays
on its portal until it opens a new one): send ``Connection: close`` to move every request.
Each portal gets its own ``HAVEN_DATA_DIR``, so a test shows nothing is shared on disk.
"""

from __future__ import annotations

import base64
import contextlib
import os
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path

from tests.support.faultproxy import FaultProxy
from tests.support.servers import REPO, free_port, port_open


class PortalProcess:
    """``daphne portal.asgi:application`` on a free loopback port, with ``env`` added."""

    def __init__(self, env: dict[str, str], *, data_dir: Path, name: str = "portal"):
        self.name = name
        self.port = free_port()
        self.data_dir = data_dir
        self.log_path = data_dir.parent / f"{name}.log"
        self.env = {**os.environ, **env, "HAVEN_DATA_DIR": str(data_dir)}
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 60) -> None:
        self.launch()
        self.wait_ready(timeout)

    def launch(self) -> None:
        """Start the process without waiting for it to serve (``wait_ready`` does)."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "wb") as log:
            command = [sys.executable, "-m", "daphne", "-b", "127.0.0.1", "-p", str(self.port)]
            self.process = subprocess.Popen(
                [*command, "portal.asgi:application"],
                cwd=REPO,
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def wait_ready(self, timeout: float = 60) -> None:
        assert self.process is not None, "launch() first"
        deadline = time.monotonic() + timeout
        while not port_open("127.0.0.1", self.port):
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"{self.name} did not start:\n{self.log()}")
            time.sleep(0.2)

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-4000:]
        except FileNotFoundError:
            return ""

    def kill(self) -> None:
        """SIGKILL to the portal and whatever it forked, as a crash or an OOM kill would;
        ``start()`` then serves again on the same port."""
        if self.process and self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(10)
        self.process = None

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)
        self.process = None

    def __enter__(self) -> PortalProcess:
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


class PortalProxy(FaultProxy):
    """The reverse proxy in front of several portals; ``use(i)`` picks the one that new
    connections reach."""

    def __init__(self, ports: list[int]):
        self.ports = list(ports)
        super().__init__("127.0.0.1", self.ports[0])

    def use(self, index: int) -> None:
        self.target = ("127.0.0.1", self.ports[index])

    # Forwarding with blocking sockets, a thread per direction: FaultProxy's non-blocking
    # ``sendall`` may have sent part of a chunk when it raises BlockingIOError, and sending
    # the chunk again then corrupts a large response (a download) on its way.
    def _pump(self, a: socket.socket, b: socket.socket) -> None:
        for sock in (a, b):
            sock.setblocking(True)
        back = threading.Thread(target=self._copy, args=(b, a), daemon=True)
        back.start()
        self._copy(a, b)
        back.join()
        self._drop(a, b)

    @staticmethod
    def _copy(source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        with contextlib.suppress(OSError):
            sink.shutdown(socket.SHUT_WR)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


class SocketClosed(Exception):
    """The server closed the websocket (``code`` is its close code)."""

    def __init__(self, code: int | None):
        super().__init__(f"the websocket was closed (code {code})")
        self.code = code


class WebSocket:
    """A minimal RFC 6455 client for text frames: enough to watch the portal's live socket."""

    def __init__(self, port: int, path: str, *, cookie: str, timeout: float = 10):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        key = base64.b64encode(os.urandom(16)).decode()
        request = (
            f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
            f"Origin: http://127.0.0.1:{port}\r\nCookie: {cookie}\r\n\r\n"
        )
        self.sock.sendall(request.encode())
        self.file = self.sock.makefile("rb")
        status = self.file.readline()
        while self.file.readline() not in (b"\r\n", b""):
            pass
        if b" 101 " not in status:
            self.close()
            raise ConnectionError(f"the websocket was refused: {status.decode().strip()}")

    def _read(self, count: int) -> bytes:
        data = self.file.read(count)
        if data is None or len(data) < count:
            raise SocketClosed(None)
        return data

    def _send(self, opcode: int, payload: bytes) -> None:
        mask = os.urandom(4)
        header = bytes([0x80 | opcode])
        if len(payload) < 126:
            header += bytes([0x80 | len(payload)])
        else:
            header += bytes([0x80 | 126]) + struct.pack("!H", len(payload))
        masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        self.sock.sendall(header + mask + masked)

    def receive(self, timeout: float) -> str:
        """The next text message; ``TimeoutError`` when none comes within ``timeout``."""
        self.sock.settimeout(timeout)
        while True:
            first, second = self._read(2)
            opcode, length = first & 0x0F, second & 0x7F
            if length == 126:
                (length,) = struct.unpack("!H", self._read(2))
            elif length == 127:
                (length,) = struct.unpack("!Q", self._read(8))
            payload = self._read(length) if length else b""
            if opcode == 0x1:
                return payload.decode()
            if opcode == 0x8:
                raise SocketClosed(struct.unpack("!H", payload[:2])[0] if payload else None)
            if opcode == 0x9:
                self._send(0xA, payload)

    def receive_until(self, text: str, *, timeout: float) -> str:
        """The first message containing ``text`` within ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            message = self.receive(left)
            if text in message:
                return message
        raise TimeoutError(f"no message containing {text!r} within {timeout} s")

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self._send(0x8, struct.pack("!H", 1000))
        self.sock.close()
