"""Helpers for isolation tests: a real HTTP server on loopback and a bystander tenant."""

from __future__ import annotations

import json
import sys
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

from tenantflow.engine import Engine

BYSTANDER = "bystander"


class _Handler(BaseHTTPRequestHandler):
    """Routes: /hello, /echo, /redirect?to=URL[&status=302], /loop, /big?n=BYTES
    (with Content-Length), /stream?n=BYTES (without), /slow?ms=MS, /count."""

    server: "LoopbackServer"
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:  # quiet
        pass

    def _send(self, status: int, body: bytes, headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _handle(self) -> None:
        url = urlsplit(self.path)
        query = {k: v[0] for k, v in parse_qs(url.query).items()}
        self.server.hits[url.path] += 1
        length = int(self.headers.get("content-length") or 0)
        body = self.rfile.read(length) if length else b""
        if url.path == "/hello":
            self._send(200, b"hello from the test server", {"Content-Type": "text/plain; charset=utf-8", "X-Echo": self.headers.get("x-probe", "none")})
        elif url.path == "/echo":
            echo = {"method": self.command, "headers": {k.lower(): v for k, v in self.headers.items()}, "body": body.decode("utf-8", "replace")}
            self._send(200, json.dumps(echo).encode(), {"Content-Type": "application/json"})
        elif url.path == "/redirect":
            self._send(int(query.get("status", "302")), b"", {"Location": query["to"]})
        elif url.path == "/loop":
            self._send(302, b"", {"Location": "/loop"})
        elif url.path == "/big":
            self._send(200, b"x" * int(query["n"]))
        elif url.path == "/stream":  # no Content-Length: the body ends when the connection does
            self.send_response(200)
            self.send_header("Connection", "close")
            self.end_headers()
            remaining = int(query["n"])
            try:
                while remaining > 0:
                    chunk = min(remaining, 64 * 1024)
                    self.wfile.write(b"y" * chunk)
                    remaining -= chunk
            except (BrokenPipeError, ConnectionResetError):
                pass
            self.close_connection = True
        elif url.path == "/slow":
            time.sleep(int(query.get("ms", "2000")) / 1000)
            self._send(200, b"finally")
        elif url.path == "/count":
            self._send(200, str(self.server.hits["/count"]).encode())
        else:
            self._send(404, b"not found")

    do_GET = do_POST = do_PUT = do_DELETE = _handle


class LoopbackServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.hits: Counter[str] = Counter()
        self._thread = threading.Thread(target=self.serve_forever, name="test-http", daemon=True)

    @property
    def port(self) -> int:
        return int(self.server_address[1])

    @property
    def origin(self) -> str:
        return f"127.0.0.1:{self.port}"

    def url(self, path: str) -> str:
        return f"http://{self.origin}{path}"

    def handle_error(self, request: Any, client_address: Any) -> None:
        if isinstance(sys.exc_info()[1], (BrokenPipeError, ConnectionResetError)):
            return  # a client that gave up (the timeout and terminate tests): expected, not a traceback
        super().handle_error(request, client_address)

    def __enter__(self) -> "LoopbackServer":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()
        self.server_close()


async def start_bystander(engine: Engine, ms: int = 300) -> str:
    """An ordinary instance of another tenant (the `basics` component must be deployed
    for BYSTANDER): a step that computes for `ms`, a sleep, another step."""
    return await engine.tenant(BYSTANDER).create("Busy", {"ms": ms, "sleep": 0})


async def check_bystander(engine: Engine, instance_id: str) -> None:
    status = await engine.tenant(BYSTANDER).wait(instance_id, timeout=120)
    assert (status.status, status.output) == ("complete", ["worked", "after"]), status
