"""A real HTTP server that is busy for its first requests: it answers them with a status
(503 by default, or 429) and, when given, a ``Retry-After`` header, then 200 ``{"ok": true}``.
It records each request's method, path and arrival time, for tests of the agent's clients
(the portal API and the portal storage) that must wait out what a busy server asks."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class BusyServer:
    def __init__(self, busy: int, *, status: int = 503, retry_after: str | None = "1"):
        self.busy = busy
        self.status = status
        self.retry_after = retry_after
        self.seen: list[tuple[str, str, float]] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def _answer(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                self.rfile.read(length)
                outer.seen.append((self.command, self.path, time.monotonic()))
                if len(outer.seen) <= outer.busy:
                    body, status = {"error": "busy", "message": "busy"}, outer.status
                else:
                    body, status = {"ok": True}, 200
                data = json.dumps(body).encode()
                self.send_response(status)
                if status != 200 and outer.retry_after is not None:
                    self.send_header("Retry-After", outer.retry_after)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = do_PUT = _answer

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    @property
    def times(self) -> list[float]:
        return [at for _, _, at in self.seen]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
