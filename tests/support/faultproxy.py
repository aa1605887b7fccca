"""A loopback TCP proxy that a test can break on purpose: the way to make PostgreSQL, Redis,
Azurite or a portal "vanish" for the code under test without touching the real server, which
other tests (and other people on the machine) share.

    with FaultProxy("127.0.0.1", 6379) as proxy:
        url = f"redis://127.0.0.1:{proxy.port}/14"   # give this to the code under test
        proxy.cut()          # every open connection is reset, new ones are refused
        proxy.restore()      # new connections go through again
        proxy.delay = 0.5    # each forwarded chunk waits half a second

Only loopback addresses; the proxy's threads stop with ``close()``.
"""

from __future__ import annotations

import contextlib
import selectors
import socket
import threading
import time


class FaultProxy:
    def __init__(self, target_host: str, target_port: int, *, listen_host: str = "127.0.0.1"):
        if not target_host.startswith("127.") and target_host not in ("localhost", "::1"):
            raise ValueError("FaultProxy only forwards to loopback addresses")
        self.target = (target_host, target_port)
        self.delay = 0.0
        self._down = threading.Event()
        self._closed = threading.Event()
        self._lock = threading.Lock()
        self._pairs: list[tuple[socket.socket, socket.socket]] = []
        self._listener = socket.create_server((listen_host, 0))
        self._listener.settimeout(0.1)
        self.port = self._listener.getsockname()[1]
        self.connections = 0
        self._thread = threading.Thread(target=self._accept, name="fault-proxy", daemon=True)
        self._thread.start()

    # -- what a test does ------------------------------------------------------------------
    @property
    def up(self) -> bool:
        return not self._down.is_set()

    def cut(self) -> None:
        """Reset every open connection and refuse new ones until ``restore()``."""
        self._down.set()
        with self._lock:
            pairs, self._pairs = self._pairs, []
        for a, b in pairs:
            for s in (a, b):
                with contextlib.suppress(OSError):
                    s.setsockopt(
                        socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00"
                    )
                    s.close()

    def restore(self) -> None:
        self._down.clear()

    def close(self) -> None:
        self._closed.set()
        self.cut()
        self._thread.join(timeout=2)
        self._listener.close()

    def __enter__(self) -> FaultProxy:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- the forwarding ----------------------------------------------------------------------
    def _accept(self) -> None:
        while not self._closed.is_set():
            try:
                client, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            if self._down.is_set():
                with contextlib.suppress(OSError):
                    client.setsockopt(
                        socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00"
                    )
                    client.close()
                continue
            try:
                upstream = socket.create_connection(self.target, timeout=5)
            except OSError:
                client.close()
                continue
            self.connections += 1
            with self._lock:
                self._pairs.append((client, upstream))
            threading.Thread(
                target=self._pump, args=(client, upstream), name="fault-proxy-pump", daemon=True
            ).start()

    def _pump(self, a: socket.socket, b: socket.socket) -> None:
        # Blocking sockets, polled for readability: a readable socket's recv returns what is
        # there, and sendall writes a chunk whole (a non-blocking sendall may send part of it
        # and then raise, and a retry would send that part twice).
        peer = {a: b, b: a}
        with selectors.DefaultSelector() as sel:
            for s in (a, b):
                s.settimeout(None)
                sel.register(s, selectors.EVENT_READ)
            while not self._closed.is_set() and not self._down.is_set():
                for key, _ in sel.select(timeout=0.2):
                    source: socket.socket = key.fileobj  # type: ignore[assignment]
                    try:
                        data = source.recv(65536)
                    except OSError:
                        data = b""
                    if not data:
                        self._drop(a, b)
                        return
                    if self.delay:
                        time.sleep(self.delay)
                    try:
                        peer[source].sendall(data)
                    except OSError:
                        self._drop(a, b)
                        return
        self._drop(a, b)

    def _drop(self, a: socket.socket, b: socket.socket) -> None:
        with self._lock:
            if (a, b) in self._pairs:
                self._pairs.remove((a, b))
        for s in (a, b):
            with contextlib.suppress(OSError):
                s.close()
