"""Helpers for HTTP API tests: real uvicorn servers on 127.0.0.1, keys, polling."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import uvicorn
from enginekit import ARTIFACTS, REPO, component

from tenantflow.auth import Role, create_tenant, issue_key
from tenantflow.engine import Engine

SETTLED = ("complete", "errored", "terminated", "paused")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def serve_in_thread(app: Any) -> Iterator[str]:
    """Run an ASGI app (lifespan included) under uvicorn in a thread; yields its base URL."""
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, name=f"uvicorn-{port}", daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the test server did not start")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(60)


def admin(db: Path, op: Any) -> Any:
    """Run a write op against `db` from outside the server (like the admin CLI does)."""

    async def go() -> Any:
        async with Engine(db, run_scheduler=False, artifact_dir=ARTIFACTS) as engine:
            return await engine.write(op(engine.now()))

    return asyncio.run(go())


def make_tenant(db: Path, name: str) -> None:
    admin(db, lambda now: create_tenant(name, now))


def make_key(db: Path, tenant: str | None, role: str = "tenant-developer") -> str:
    return str(admin(db, lambda now: issue_key(tenant, Role(role), now)).token)


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def deploy(client: httpx.Client, tenant: str, folder: str = "api") -> dict[str, Any]:
    response = client.post(
        f"/v1/tenants/{tenant}/components", content=component(folder).read_bytes(), headers={"Content-Type": "application/wasm"}
    )
    assert response.status_code == 201, response.text
    return dict(response.json())


def wait_status(client: httpx.Client, tenant: str, instance_id: str, *statuses: str, timeout: float = 60.0) -> dict[str, Any]:
    wanted = statuses or SETTLED
    deadline = time.monotonic() + timeout
    while True:
        response = client.get(f"/v1/tenants/{tenant}/instances/{instance_id}")
        assert response.status_code == 200, response.text
        body = dict(response.json())
        if body["status"] in wanted:
            return body
        if time.monotonic() > deadline:
            raise TimeoutError(f"{tenant}/{instance_id} is still {body['status']}, not one of {wanted}")
        time.sleep(0.05)


class ServeProcess:
    """`tenantflow serve` in a subprocess: for restarts, SIGTERM and log output."""

    def __init__(self, db: Path, log_path: Path, *extra: str) -> None:
        self.db, self.log_path, self.extra = db, log_path, extra
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> "ServeProcess":
        cmd = [sys.executable, "-m", "tenantflow.cli", "serve", "--db", str(self.db), "--port", str(self.port),
               "--artifact-dir", str(ARTIFACTS), "--workers", "2", *self.extra]
        self._log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(cmd, stdout=self._log, stderr=subprocess.STDOUT, cwd=REPO, env={**os.environ, "PYTHONUNBUFFERED": "1"})
        deadline = time.monotonic() + 60
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"tenantflow serve exited with {self.proc.returncode}:\n{self.log_path.read_text()}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{self.url}/readyz", timeout=2).status_code == 200:
                    return self
            if time.monotonic() > deadline:
                raise RuntimeError(f"tenantflow serve did not become ready:\n{self.log_path.read_text()}")
            time.sleep(0.1)

    def terminate(self, timeout: float = 60.0) -> int:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        try:
            code = self.proc.wait(timeout)
        finally:
            self._log.close()
        return code

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
            self._log.close()
