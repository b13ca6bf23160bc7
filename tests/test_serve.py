"""`tenantflow serve` as a real process: restarts, SIGTERM, structured logs; and the CLI
against a server (`--url`) printing exactly what it prints against the database file."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from apikit import ServeProcess, bearer, make_key, make_tenant, serve_in_thread, wait_status
from enginekit import ARTIFACTS, cli, component

from tenantflow.server import create_standalone_app


def log_records(path: Path) -> list[dict[str, Any]]:
    records = []
    for line in path.read_text().splitlines():
        records.append(json.loads(line))  # every line the server writes is one JSON object
    return records


@pytest.fixture
def server_db(tmp_path: Path) -> tuple[Path, str]:
    """A database with tenant acme and a developer key, made with the admin commands."""
    db = tmp_path / "serve.db"
    cli("tenants", "create", "acme", "--db", str(db))
    issued = json.loads(cli("keys", "issue", "--tenant", "acme", "--role", "tenant-developer", "--db", str(db), "--json").stdout)
    assert issued["token"].startswith("tf_") and issued["role"] == "tenant-developer"
    listed = cli("keys", "list", "--db", str(db)).stdout
    assert issued["id"] in listed and issued["token"] not in listed  # the token is shown once only
    return db, issued["token"]


def test_restart_in_the_middle_of_a_sleep_picks_up_where_it_left_off(tmp_path: Path, server_db: tuple[Path, str]) -> None:
    db, token = server_db
    log = tmp_path / "serve.log"
    first = ServeProcess(db, log).start()
    try:
        deployed = cli("deploy", str(component("api")), "--tenant", "acme", "--url", first.url, "--api-key", token).stdout
        assert "workflows: Approval, Echo, Fail, Grind, Nap" in deployed and "digest: sha256:" in deployed
        with httpx.Client(base_url=first.url, headers=bearer(token), timeout=60) as client:
            client.post("/v1/tenants/acme/instances", json={"workflow": "Nap", "id": "napper", "params": {"duration": "2 seconds"}}).raise_for_status()
            asleep = wait_status(client, "acme", "napper", "waiting")
            assert [(s["name"], s["status"]) for s in asleep["steps"]] == [("before", "done"), ("nap", "waiting")]
        assert first.terminate() == 0
    finally:
        first.kill()

    second = ServeProcess(db, log).start()
    try:
        with httpx.Client(base_url=second.url, headers=bearer(token), timeout=60) as client:
            done = wait_status(client, "acme", "napper")
        assert done["status"] == "complete" and done["output"] == ["before", "after"]
        assert [(s["name"], s["status"], s["attempts"]) for s in done["steps"]] == [("before", "done", 1), ("nap", "done", 0), ("after", "done", 1)]
        assert second.terminate() == 0
    finally:
        second.kill()

    time.sleep(1)  # the napper ended over a second ago: past a retention of 0.864 s
    third = ServeProcess(db, log, "--retention-days", "0.00001").start()
    try:
        with httpx.Client(base_url=third.url, headers=bearer(token), timeout=60) as client:
            deadline = time.monotonic() + 30
            while client.get("/v1/tenants/acme/instances/napper").status_code != 404 and time.monotonic() < deadline:
                time.sleep(0.05)
            assert client.get("/v1/tenants/acme/instances/napper").status_code == 404  # swept as the host started
        assert third.terminate() == 0
    finally:
        third.kill()

    records = log_records(log)
    assert {"ts", "level", "logger", "msg"} <= set(records[0])
    requests = [r for r in records if r["logger"] == "uvicorn.access"]
    assert any(r["method"] == "POST" and r["path"] == "/v1/tenants/acme/instances" and r["status"] == 201 for r in requests)
    assert sum(r["msg"] == "engine open" for r in records) == 3 and sum(r["msg"] == "engine closed" for r in records) == 3
    assert [r.get("signal") for r in records if r["msg"] == "stopped"] == ["SIGTERM"] * 3
    assert any(r["logger"] == "tenantflow.retention" and r["msg"] == "deleted 1 instances that finished over 1e-05 days ago" for r in records)


def test_sigterm_lets_running_instances_finish_or_replay(tmp_path: Path, server_db: tuple[Path, str]) -> None:
    db, token = server_db
    log = tmp_path / "serve.log"
    cli("deploy", str(component("api")), "--tenant", "acme", "--db", str(db))  # the local mode of deploy
    first = ServeProcess(db, log, "--log-format", "text").start()
    ids = [f"grind-{i}" for i in range(3)]
    try:
        with httpx.Client(base_url=first.url, headers=bearer(token), timeout=60) as client:
            batch = [{"workflow": "Grind", "id": i, "params": {"n": 6, "ms": 250}} for i in ids]
            client.post("/v1/tenants/acme/instances/batch", json={"instances": batch}).raise_for_status()
            wait_status(client, "acme", ids[0], "running")
        assert first.terminate() == 0  # 2 workers: two invocations are mid-flight, one instance is queued
    finally:
        first.kill()
    text = log.read_text()
    assert "msg=\"closing engine: running invocations finish or are left to replay\"" in text
    assert "msg=\"engine closed\"" in text

    second = ServeProcess(db, log).start()
    try:
        with httpx.Client(base_url=second.url, headers=bearer(token), timeout=60) as client:
            for instance_id in ids:
                done = wait_status(client, "acme", instance_id)
                assert done["status"] == "complete" and done["output"] == list(range(6))
                assert [(s["seq"], s["status"]) for s in done["steps"]] == [(i, "done") for i in range(6)]
    finally:
        second.terminate()
        second.kill()


@pytest.fixture
def remote(tmp_path: Path) -> Iterator[tuple[Path, str, str]]:
    db = tmp_path / "cli.db"
    make_tenant(db, "acme")
    token = make_key(db, "acme")
    with serve_in_thread(create_standalone_app(db, artifact_dir=ARTIFACTS, workers=2)) as url:
        yield db, url, token


def test_cli_against_a_server_prints_what_it_prints_locally(remote: tuple[Path, str, str]) -> None:
    db, url, token = remote
    local = ["--db", str(db), "--tenant", "acme"]
    over_http = ["--url", url, "--api-key", token, "--tenant", "acme"]
    wasm = str(component("api"))
    assert cli("deploy", wasm, *over_http).stdout == cli("deploy", wasm, *local).stdout  # same digest, same workflows
    other = str(component("flow_v1"))
    registered = cli("deploy", other, "--register-only", *over_http).stdout
    assert registered == cli("deploy", other, "--register-only", *local).stdout and registered.startswith("registered for tenant acme (not current)\n")
    assert json.loads(cli("deploy", other, "--register-only", "--json", *local).stdout)["current"] is False
    workflows = httpx.get(f"{url}/v1/tenants/acme/workflows", headers=bearer(token)).json()["workflows"]
    assert "pipeline" not in {w["name"] for w in workflows}  # registered, not deployed: no current version of it
    with httpx.Client(base_url=url, headers=bearer(token), timeout=60) as client:
        client.post("/v1/tenants/acme/instances", json={"workflow": "Echo", "id": "e1", "params": {"x": 1}}).raise_for_status()
        client.post("/v1/tenants/acme/instances", json={"workflow": "Approval", "id": "a1"}).raise_for_status()
        wait_status(client, "acme", "e1")
        wait_status(client, "acme", "a1", "waiting")
        for args in (["list"], ["list", "--json"], ["list", "--status", "waiting"], ["describe", "e1"], ["describe", "e1", "--json"], ["describe", "a1"],
                     ["describe", "a1", "--steps", "1"], ["describe", "a1", "--steps", "0", "--json"], ["logs", "e1"], ["logs", "e1", "--json"]):
            assert cli("instances", *args, *over_http).stdout == cli("instances", *args, *local).stdout, args

        assert cli("instances", "pause", "a1", *over_http).stdout == "a1: paused\n"
        assert cli("instances", "resume", "a1", *over_http).stdout == "a1: queued\n"
        wait_status(client, "acme", "a1", "waiting")
        assert cli("instances", "send-event", "a1", "approval", '"bob"', *over_http).stdout == "a1: event 'approval' sent\n"
        assert wait_status(client, "acme", "a1")["output"] == {"approved_by": "bob"}

    missing_remote = cli("instances", "describe", "nope", *over_http, check=False)
    missing_local = cli("instances", "describe", "nope", *local, check=False)
    assert (missing_remote.returncode, missing_remote.stderr) == (missing_local.returncode, missing_local.stderr) == (1, "error: instance 'nope' not found\n")
    env_key = cli("instances", "describe", "e1", "--url", url, "--tenant", "acme", check=False)
    assert env_key.returncode == 1 and "missing API key" in env_key.stderr
    revoked = cli("keys", "revoke", token.split("_")[1], "--db", str(db)).stdout
    assert "revoked" in revoked
    assert "invalid or revoked API key" in cli("instances", "list", *over_http, check=False).stderr


def test_deploy_resolves_tenant_folders_through_their_manifest(tmp_path: Path) -> None:
    folder = tmp_path / "initech"
    folder.mkdir()
    (folder / "tenant.toml").write_text('tenant = "initech"\nsource = "flows.py"\n')
    (folder / "flows.py").write_text("def broken(:\n")  # refused by the syntax check, before any build
    done = cli("deploy", str(folder), "--db", str(tmp_path / "x.db"), check=False)
    assert done.returncode == 1 and "flows.py" in done.stderr and "line 1" in done.stderr.lower()
    (folder / "tenant.toml").write_text('tenant = "initech"\nsource = "flows.py"\ncolour = "red"\n')
    done = cli("deploy", str(folder), "--db", str(tmp_path / "x.db"), check=False)
    assert done.returncode == 1 and "colour" in done.stderr
    done = cli("deploy", str(folder / "tenant.toml"), check=False)
    assert done.returncode == 2 and "expected a .py workflow module" in done.stderr
