"""A real local HTTP server standing in for the billing system's webhook: it checks each
request's HMAC signature the way a receiver would, and can be told to fail first."""

from __future__ import annotations

import hashlib
import hmac
import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass
class Received:
    """One request as the server saw it, and whether its signature was right."""

    headers: dict[str, str]
    payload: dict[str, Any]
    signature_ok: bool
    answered: int


@dataclass
class WebhookServer:
    secret: str
    fail_first: int = 0
    received: list[Received] = field(default_factory=list)
    url: str = ""

    def verify(self, timestamp: str, body: bytes, signature: str) -> bool:
        expected = hmac.new(self.secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256)
        return hmac.compare_digest(f"sha256={expected.hexdigest()}", signature)


@contextmanager
def webhook_server(secret: str, fail_first: int = 0) -> Iterator[WebhookServer]:
    """Serve on 127.0.0.1 (a free port) in a thread: 204 for a good signature, 401 for a bad
    one, 503 for the first `fail_first` requests."""
    state = WebhookServer(secret, fail_first)

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            ok = state.verify(
                self.headers.get("X-Collectflow-Timestamp", ""),
                body,
                self.headers.get("X-Collectflow-Signature", ""),
            )
            status = 503 if len(state.received) < state.fail_first else 204 if ok else 401
            state.received.append(Received(dict(self.headers), json.loads(body), ok, status))
            self.send_response(status)
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            """Quiet: the test reads `received` instead."""

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    state.url = f"http://127.0.0.1:{server.server_address[1]}/billing/suspend"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()
        thread.join()
