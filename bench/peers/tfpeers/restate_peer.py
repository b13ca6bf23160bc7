"""Restate: the single-node server from npm (@restatedev/restate-server) with default RocksDB storage
under a temp dir, the Python SDK services in a separate hypercorn process, driven over HTTP ingress.

replay re-runs a finished invocation with the admin API's restart-as-new from a journal prefix:
the server copies the recorded steps into a new invocation and the SDK replays them. A prefix past
the input needs service protocol V6+ (SDK 1.3.0 offers V5-V7; server 1.7 pins V6, V7 being opt-in)
and the completed invocation's journal, which Restate keeps for `default-journal-retention` (1 day).

cold_start spawns a hypercorn process per tenant serving only that tenant's service
(tfpeers.restate_tenant, named after the tenant), registers it as a deployment with the admin API and
invokes its one-step handler through the ingress; afterwards the process is stopped and the deployment
deleted (DELETE /deployments/{id}?force=true), so the server later parks footprint_waiting's workflows
without the cold tenants' deployments in its schema."""

from __future__ import annotations

import asyncio
import importlib.metadata
import os
import re
import subprocess
import sys
import time
import tomllib
import uuid
from pathlib import Path
from typing import Any

import httpx

from .common import PEERS_DIR, Json, Peer, ProcessGroup, free_port, log, tail, wait_tcp
from .locate import restate_binary

SERVICE_APP = "tfpeers.restate_service:app"
TENANT_APP = "tfpeers.restate_tenant:app"
COLD_POLL_S = 0.005  # cold_start's polls (port, ingress): fine enough not to add to what it measures
PARK_SENDS_IN_FLIGHT = 64


def _config_toml(node_port: int, admin_port: int, ingress_port: int) -> str:
    """Only addresses, names and housekeeping are set; storage and durability stay Restate's defaults."""
    return f"""\
node-name = "tf-peers-bench"
cluster-name = "tf-peers-bench"
bind-address = "127.0.0.1:{node_port}"
advertised-address = "http://127.0.0.1:{node_port}/"
disable-telemetry = true
shutdown-timeout = "10s"
log-filter = "warn"
log-format = "compact"
log-disable-ansi-codes = true

[admin]
bind-address = "127.0.0.1:{admin_port}"
disable-web-ui = true

[ingress]
bind-address = "127.0.0.1:{ingress_port}"
"""


def _service_name(tenant: str) -> str:
    """A Restate service name (an identifier) for a tenant: tf-cold-0-3-12345 -> TfCold_0_3_12345."""
    parts = re.findall(r"[A-Za-z]+|[0-9]+", tenant)
    name = "".join(p.capitalize() if p.isalpha() else f"_{p}" for p in parts)
    return name if name[:1].isalpha() else f"T{name}"


def _get(cfg: dict[str, Any], dotted: str) -> Any:
    cur: Any = cfg
    for part in dotted.split("."):
        if not isinstance(cur, dict) or part not in cur:
            return None
        cur = cur[part]
    return cur


class RestatePeer(Peer):
    name = "restate"

    def __init__(self, procs: ProcessGroup) -> None:
        self._procs = procs
        self._bin = restate_binary()
        self._server: subprocess.Popen[bytes] | None = None
        self._service: subprocess.Popen[bytes] | None = None
        self._http: httpx.AsyncClient | None = None
        self._server_version = "unknown"
        self._effective: dict[str, Any] = {}
        self._park_counter: Path | None = None
        self._replay_counter: Path | None = None
        self._admin_url = ""
        self._admin: httpx.AsyncClient | None = None
        self._replay_originals: dict[int, tuple[str, int]] = {}  # steps -> (finished invocation, restart index)
        self._workdir: Path | None = None

    async def start(self, workdir: Path) -> None:
        if self._bin is None:
            raise RuntimeError("restate-server binary not found under bench/peers/node_modules (run setup.sh)")
        self._server_version = subprocess.run(
            [str(self._bin), "--version"], capture_output=True, text=True, timeout=30, check=True
        ).stdout.strip()
        self._workdir = workdir
        node_port, admin_port, ingress_port, svc_port = free_port(), free_port(), free_port(), free_port()
        cfg = workdir / "restate.toml"
        cfg.write_text(_config_toml(node_port, admin_port, ingress_port))
        dumped = subprocess.run(
            [str(self._bin), "--config-file", str(cfg), "--dump-config"],
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        ).stdout
        self._effective = tomllib.loads(dumped)

        server_log = workdir / "restate-server.log"
        self._server = self._procs.start(
            "restate-server",
            [
                str(self._bin),
                "--config-file",
                str(cfg),
                "--base-dir",
                str(workdir / "restate-data"),
                "--listen-mode",
                "tcp",
                "--no-logo",
            ],
            server_log,
            cwd=workdir,
        )
        admin = self._admin_url = f"http://127.0.0.1:{admin_port}"
        async with httpx.AsyncClient(timeout=5) as probe:
            deadline = time.monotonic() + 90
            while True:
                if self._server.poll() is not None:
                    raise RuntimeError(f"restate-server exited with {self._server.returncode}:\n{tail(server_log)}")
                try:
                    if (await probe.get(f"{admin}/health")).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                if time.monotonic() > deadline:
                    raise TimeoutError(f"restate admin not healthy after 90s:\n{tail(server_log)}")
                await asyncio.sleep(0.2)

            svc_log = workdir / "restate-service.log"
            self._park_counter = workdir / "park-steps"
            self._replay_counter = workdir / "replay-steps"
            self._service = self._procs.start(
                "restate service (hypercorn)",
                [sys.executable, "-m", "hypercorn", "--bind", f"127.0.0.1:{svc_port}", "--workers", "1", SERVICE_APP],
                svc_log,
                cwd=PEERS_DIR,
                env={
                    **os.environ,
                    "TF_PEERS_PARK_COUNTER": str(self._park_counter),
                    "TF_PEERS_REPLAY_COUNTER": str(self._replay_counter),
                },
            )
            await asyncio.to_thread(wait_tcp, svc_port, 60.0, self._service)

            resp = await probe.post(
                f"{admin}/deployments", json={"uri": f"http://127.0.0.1:{svc_port}", "force": True}, timeout=60
            )
            if resp.status_code >= 300:
                raise RuntimeError(f"registering the deployment failed: {resp.status_code} {resp.text}")
        log(f"restate up: ingress 127.0.0.1:{ingress_port}, admin {admin_port}, service {svc_port}")

        self._admin = httpx.AsyncClient(base_url=admin, timeout=httpx.Timeout(60.0))
        self._http = httpx.AsyncClient(
            base_url=f"http://127.0.0.1:{ingress_port}",
            timeout=httpx.Timeout(300.0),
            limits=httpx.Limits(max_connections=256, max_keepalive_connections=256),
        )
        # The new deployment reaches the ingress shortly after registration.
        deadline = time.monotonic() + 60
        while True:
            resp = await self._http.post("/TfBench/steps", json=1)
            if resp.status_code == 200:
                break
            if time.monotonic() > deadline:
                raise TimeoutError(f"ingress not serving TfBench after 60s: {resp.status_code} {resp.text}")
            await asyncio.sleep(0.2)

    async def stop(self) -> None:
        for attr in ("_http", "_admin"):
            client: httpx.AsyncClient | None = getattr(self, attr)
            if client is not None:
                setattr(self, attr, None)
                await client.aclose()
        for attr in ("_service", "_server"):
            proc: subprocess.Popen[bytes] | None = getattr(self, attr)
            if proc is not None:
                setattr(self, attr, None)
                self._procs.stop(proc)

    def version(self) -> Json:
        return {
            "restate-server": self._server_version,
            "restate-sdk": importlib.metadata.version("restate-sdk"),
            "hypercorn": importlib.metadata.version("hypercorn"),
        }

    def durability(self) -> Json:
        keys = [
            "default-replication",
            "bifrost.default-provider",
            "log-server.rocksdb-disable-wal-fsync",
            "bifrost.local.rocksdb-disable-wal",
            "bifrost.local.rocksdb-disable-wal-fsync",
            "metadata-server.type",
            "worker.storage.rocksdb-memory-budget",
        ]
        effective = {k: _get(self._effective, k) for k in keys if _get(self._effective, k) is not None}
        return {
            "summary": (
                "Restate single-node server, default RocksDB storage (Bifrost log + partition store) under a temp "
                "dir; only addresses changed from the defaults. Each ctx.run result is appended to the durable log "
                "(RocksDB WAL with fsync) before the handler resumes"
            ),
            "storage": "rocksdb (defaults)",
            "effective_config": effective,
            "service_transport": "hypercorn, HTTP/2 cleartext (bidirectional protocol), separate process",
        }

    def _h(self) -> httpx.AsyncClient:
        if self._http is None:
            raise RuntimeError("restate peer not started")
        return self._http

    async def _call(self, path: str, body: Any = None) -> Any:
        resp = await self._h().post(path, json=body) if body is not None else await self._h().post(path)
        if resp.status_code != 200:
            raise RuntimeError(f"POST {path}: {resp.status_code} {resp.text[:300]}")
        return resp.json() if resp.content else None

    async def one_step(self) -> float:
        t0 = time.perf_counter()
        res = await self._call("/TfBench/steps", 1)
        dt = time.perf_counter() - t0
        assert res == 1
        return dt

    async def sequential(self, steps: int) -> None:
        assert await self._call("/TfBench/steps", steps) == steps

    async def aggregate(self, workflows: int, steps: int) -> None:
        results = await asyncio.gather(*(self._call("/TfBench/steps", steps) for _ in range(workflows)))
        assert all(r == steps for r in results)

    async def signal_wakeup(self, settle_s: float) -> float:
        key = f"tf-wake-{uuid.uuid4()}"
        run = asyncio.create_task(self._call(f"/TfWaitSignal/{key}/run"))
        try:
            await asyncio.sleep(settle_s)
            if run.done():
                raise RuntimeError(f"workflow ended before the signal: {run.result()!r}")
            t0 = time.monotonic()
            await self._call(f"/TfWaitSignal/{key}/wake")
            t1 = float(await run)
        finally:
            if not run.done():
                run.cancel()
        return t1 - t0

    async def sleep_gap(self, sleep_ms: int) -> float:
        t0, t1 = await self._call("/TfBench/sleep", sleep_ms)
        return float(t1) - float(t0)

    def _a(self) -> httpx.AsyncClient:
        if self._admin is None:
            raise RuntimeError("restate peer not started")
        return self._admin

    async def _query(self, sql: str) -> list[Json]:
        """Rows of the admin API's SQL introspection (sys_journal, sys_invocation, ...)."""
        resp = await self._a().post("/query", json={"query": sql}, headers={"Accept": "application/json"})
        if resp.status_code != 200:
            raise RuntimeError(f"admin query {sql!r}: {resp.status_code} {resp.text[:300]}")
        rows: list[Json] = resp.json()["rows"]
        return rows

    async def _replay_prefix(self, invocation_id: str, steps: int) -> int:
        """Journal index to restart `invocation_id` from: the entry just before the "final" Run command.

        A v2 journal reads Input, then per ctx.run a Run command and its Run notification (the
        result), then Output; `from` copies entries 0..from, so this copies the input and every
        step with its result, and the re-run executes "final" anew.
        """
        rows = await self._query(
            f"SELECT index, name FROM sys_journal WHERE id = '{invocation_id}' AND entry_type = 'Command: Run' "
            "ORDER BY index"
        )
        names = [r["name"] for r in rows]
        if names != ["step"] * steps + ["final"]:
            raise RuntimeError(f"unexpected journal of {invocation_id}: Run commands {names[:5]}... ({len(names)})")
        return int(rows[-1]["index"]) - 1

    def _replay_executed(self) -> int:
        assert self._replay_counter is not None
        return self._replay_counter.stat().st_size if self._replay_counter.exists() else 0

    async def replay(self, steps: int) -> float:
        if steps not in self._replay_originals:
            resp = await self._h().post("/TfBench/replay", json=steps)
            if resp.status_code != 200 or resp.json()[0] != steps:
                raise RuntimeError(f"POST /TfBench/replay: {resp.status_code} {resp.text[:300]}")
            invocation_id = resp.headers["x-restate-id"]
            self._replay_originals[steps] = (invocation_id, await self._replay_prefix(invocation_id, steps))
        old_id, prefix = self._replay_originals[steps]
        executed = self._replay_executed()

        t0 = time.monotonic()
        patch = await self._a().patch(f"/invocations/{old_id}/restart-as-new", params={"from": prefix})
        if patch.status_code >= 300:
            raise RuntimeError(f"restart-as-new of {old_id} from {prefix}: {patch.status_code} {patch.text[:300]}")
        new_id = patch.json()["new_invocation_id"]
        res = await self._h().get(f"/restate/invocation/{new_id}/attach")
        t1 = time.monotonic()

        if res.status_code != 200:
            raise RuntimeError(f"attaching to {new_id}: {res.status_code} {res.text[:300]}")
        acc, stamp = res.json()
        # The steps' results must come from the copied journal (none run again), "final" must run anew.
        if acc != steps or self._replay_executed() != executed or not t0 < stamp < t1:
            raise RuntimeError(
                f"re-run {new_id} did not replay: result {res.text[:100]}, "
                f"{self._replay_executed() - executed} steps executed again"
            )
        return t1 - t0

    async def cold_start(self, tenant: str) -> float:
        assert self._workdir is not None
        service, port = _service_name(tenant), free_port()
        deployment = ""
        t0 = time.monotonic()
        # --workers 1 as for the benchmark's service: the master spawns a second interpreter for the
        # worker (~200 ms of this), but --workers 0 ignores SIGTERM here (stop() would wait 15 s).
        proc = self._procs.start(
            f"restate tenant {tenant} (hypercorn)",
            [sys.executable, "-m", "hypercorn", "--bind", f"127.0.0.1:{port}", "--workers", "1", TENANT_APP],
            self._workdir / "cold" / f"{tenant}.log",
            cwd=PEERS_DIR,
            env={**os.environ, "TF_PEERS_TENANT_SERVICE": service},
        )
        try:
            await asyncio.to_thread(wait_tcp, port, 60.0, proc, COLD_POLL_S)
            t_listen = time.monotonic()
            # hypercorn's master only binds; its (spawned) worker listens once it imported the app and
            # ran the ASGI startup, so the server's discovery request finds the service ready.
            resp = await self._a().post("/deployments", json={"uri": f"http://127.0.0.1:{port}", "force": True})
            if resp.status_code >= 300:
                raise RuntimeError(f"registering {tenant}'s deployment: {resp.status_code} {resp.text[:300]}")
            deployment = resp.json()["id"]
            t_registered = time.monotonic()
            # The new service can reach the ingress a moment after registration: it answers 404 until then.
            deadline = t_registered + 60
            while (res := await self._h().post(f"/{service}/first")).status_code == 404 and time.monotonic() < deadline:
                await asyncio.sleep(COLD_POLL_S)
            if res.status_code != 200:
                raise RuntimeError(f"invoking {service}/first: {res.status_code} {res.text[:300]}")
            stamp, imported = (float(x) for x in res.json())
            log(
                f"restate cold_start {tenant}: listening +{(t_listen - t0) * 1e3:.0f} ms, app imported "
                f"+{(imported - t0) * 1e3:.0f}, registered +{(t_registered - t0) * 1e3:.0f}, "
                f"step +{(stamp - t0) * 1e3:.0f}"
            )
            return stamp - t0
        finally:
            self._procs.stop(proc)
            if deployment:
                resp = await self._a().delete(f"/deployments/{deployment}", params={"force": "true"})
                if resp.status_code >= 300:
                    log(f"restate: deleting {tenant}'s deployment {deployment}: {resp.status_code} {resp.text[:300]}")

    def _parked(self) -> int:
        assert self._park_counter is not None
        return self._park_counter.stat().st_size if self._park_counter.exists() else 0

    async def park(self, count: int) -> None:
        target = self._parked() + count
        gate = asyncio.Semaphore(PARK_SENDS_IN_FLIGHT)

        async def send() -> None:  # `/send`: the ingress answers once the invocation is accepted
            async with gate:
                resp = await self._h().post(f"/TfPark/tf-park-{uuid.uuid4()}/park/send")
                if resp.status_code >= 300:
                    raise RuntimeError(f"starting TfPark: {resp.status_code} {resp.text[:300]}")

        await asyncio.gather(*(send() for _ in range(count)))
        while self._parked() < target:
            await asyncio.sleep(0.05)

    def processes(self) -> list[int]:
        return [os.getpid()] + [p.pid for p in (self._server, self._service) if p is not None]
