"""`tenantflow run` and `tenantflow instances ...` through the real console script."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from enginekit import REPO
from enginekit import cli as tenantflow

ORDER = {"order_id": "77", "items": [{"price": 700, "qty": 2}]}


def test_run_fast_forwards_through_sleeps_and_prints_the_output(tmp_path: Path) -> None:
    acme = _acme()
    db = tmp_path / "flows.db"
    done = tenantflow(
        "run", str(acme), "--workflow", "order-approval", "--params", json.dumps(ORDER), "--id", "order-77",
        "--db", str(db), "--tenant", "acme", "--fast-forward", "--event", 'approval={"approved": true, "by": "kim"}',
    )
    assert json.loads(done.stdout[done.stdout.index("{"):]) == {
        "order_id": "77", "status": "shipped", "charged": 1400, "currency": "EUR", "tracking": "TRK-77"
    }
    assert "#5   step  ship  done" in done.stderr  # live step progress
    listing = tenantflow("instances", "list", "--db", str(db), "--tenant", "acme", "--json")
    assert [(i["id"], i["status"]) for i in json.loads(listing.stdout)["instances"]] == [("order-77", "complete")]
    described = json.loads(tenantflow("instances", "describe", "order-77", "--db", str(db), "--tenant", "acme", "--json").stdout)
    assert [s["name"] for s in described["steps"]] == ["validate order", "reserve stock", "manager approval", "charge card", "wait for warehouse pickup", "ship"]
    assert described["logs"][0]["message"] == "order 77 needs approval (1400)"
    timeline = tenantflow("instances", "describe", "order-77", "--db", str(db), "--tenant", "acme").stdout
    assert "wait for warehouse pickup" in timeline and "60.0 min" in timeline
    # A page of the timeline: two steps from seq 1, and where the rest starts.
    page = tenantflow("instances", "describe", "order-77", "--db", str(db), "--tenant", "acme", "--steps", "2", "--steps-from", "1", "--no-logs").stdout
    assert "reserve stock" in page and "manager approval" in page and "validate order" not in page and "charge card" not in page
    assert "(more steps follow: --steps-from 3)" in page and "logs:" not in page
    paged = json.loads(tenantflow("instances", "describe", "order-77", "--db", str(db), "--tenant", "acme", "--json", "--steps", "2").stdout)
    assert [s["seq"] for s in paged["steps"]] == [0, 1] and paged["next_steps_from"] == 2 and paged["logs_next_cursor"] is None


def test_run_exit_codes_and_instance_commands(tmp_path: Path) -> None:
    acme = _acme()
    db = tmp_path / "flows.db"
    failed = tenantflow("run", str(acme), "-w", "order-approval", "-p", '{"order_id": "x", "items": []}', "--db", str(db), "--fast-forward", check=False)
    assert failed.returncode == 1 and "NonRetryableError: order has no items" in failed.stderr
    # without --fast-forward and no event, the order waits: exit 3, state kept in the database
    waiting = subprocess.run(
        [sys.executable, "-m", "tenantflow.cli", "run", str(acme), "-w", "order-approval", "-p", json.dumps(ORDER), "--id", "w1", "--db", str(db), "--fast-forward"],
        capture_output=True, text=True, timeout=300,
    )
    assert waiting.returncode == 0  # fast-forward: the approval wait times out, the order expires
    assert '"status": "expired"' in waiting.stdout
    assert tenantflow("instances", "send-event", "w1", "approval", "{}", "--db", str(db), check=False).returncode == 1
    assert "cannot send an event to instance 'w1': it is complete" in tenantflow("instances", "send-event", "w1", "approval", "{}", "--db", str(db), check=False).stderr
    assert "instance 'nope' not found" in tenantflow("instances", "pause", "nope", "--db", str(db), check=False).stderr
    restarted = tenantflow("instances", "restart", "w1", "--db", str(db))
    assert "w1: queued" in restarted.stdout
    assert tenantflow("instances", "terminate", "w1", "--db", str(db)).stdout.strip() == "w1: terminated"
    bad = tenantflow("run", str(acme), "-w", "order-approval", "-p", "{not json", "--db", str(db), check=False)
    assert bad.returncode == 2 and "--params is not valid JSON" in bad.stderr


def _acme() -> Path:
    from components import build_component

    return build_component(REPO / "tenants" / "acme" / "workflow.py")


def test_instances_upgrade_dry_run_and_apply(tmp_path: Path) -> None:
    import asyncio

    from enginekit import component, open_engine

    from tenantflow.clock import ManualClock

    db = tmp_path / "flows.db"

    async def prepare() -> None:
        clock = ManualClock()
        async with open_engine(db, clock=clock, deploy={"t": "flow_v1"}) as engine:
            await engine.tenant("t").create("pipeline", {"commit": "c"}, id="p1")
            await engine.tenant("t").create("pipeline", {"commit": "d"}, id="p2")
            await engine.scheduler.quiesce()

    asyncio.run(prepare())
    v2, v3 = component("flow_v2"), component("flow_v3")
    refused = tenantflow("instances", "upgrade", "-w", "pipeline", "--to", str(v3), "--db", str(db), "--tenant", "t", "--apply", check=False)
    assert refused.returncode == 1 and "p1: diverged" in refused.stdout and "position 0" in refused.stdout
    dry = tenantflow("instances", "upgrade", "-w", "pipeline", "--to", str(v2), "--db", str(db), "--tenant", "t", "--page-size", "1")
    assert "p1: compatible" in dry.stdout and "p2: compatible" in dry.stdout and "dry run" in dry.stdout
    assert dry.stderr.count("examined so far") == 1  # a page of one each: progress between them
    applied = tenantflow("instances", "upgrade", "-w", "pipeline", "--to", str(v2), "--db", str(db), "--tenant", "t", "--apply", "--json", "--page-size", "1")
    assert [(r["id"], r["result"]) for r in json.loads(applied.stdout)] == [("p1", "upgraded"), ("p2", "upgraded")]


def test_instances_logs_prints_every_line_a_page_at_a_time(tmp_path: Path) -> None:
    import asyncio

    from enginekit import open_engine

    from tenantflow.engine import Engine

    db = tmp_path / "flows.db"

    async def prepare() -> None:
        async with open_engine(db, deploy={"t": "hostile"}) as engine:
            t = engine.tenant("t")
            assert (await t.wait(await t.create("Shout", {"lines": 2500, "line_bytes": 10}, id="loud"))).output == "shouted"
        async with Engine(db, run_scheduler=False) as engine:  # queued, never run: no lines yet
            await engine.tenant("t").create("Shout", id="quiet")

    asyncio.run(prepare())
    printed = tenantflow("instances", "logs", "loud", "--db", str(db), "--tenant", "t").stdout.splitlines()
    assert len(printed) == 2501  # three pages of 1,000
    assert all(line.endswith("stdout  " + "x" * 9) for line in printed[:2500]) and printed[-1].endswith("stderr  done shouting")
    as_json = [json.loads(line) for line in tenantflow("instances", "logs", "loud", "--db", str(db), "--tenant", "t", "--json").stdout.splitlines()]
    assert [(line["stream"], line["message"]) for line in as_json] == [("stdout", "x" * 9)] * 2500 + [("stderr", "done shouting")]
    quiet = tenantflow("instances", "logs", "quiet", "--db", str(db), "--tenant", "t")
    assert quiet.stdout == "" and "quiet has no log lines" in quiet.stderr
    missing = tenantflow("instances", "logs", "nope", "--db", str(db), "--tenant", "t", check=False)
    assert missing.returncode == 1 and "instance 'nope' not found" in missing.stderr
