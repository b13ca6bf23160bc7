"""Shared pieces: the peer interface, workload sizes, statistics and process management."""

from __future__ import annotations

import abc
import contextlib
import ctypes
import json
import math
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

PEERS_DIR = Path(__file__).resolve().parent.parent
"""bench/peers: the directory that holds run.py, setup.sh, .venv and node_modules."""

Json = dict[str, Any]


@dataclass(frozen=True)
class Sizes:
    """Workload sizes; the same for every peer in a run."""

    seq_steps: int
    agg_workflows: int
    agg_steps: int
    latency_runs: int
    wakeup_runs: int
    sleep_ms: int
    settle_ms: int
    warmup_runs: int
    warmup_seconds: float
    """One-step runs go on for this long after the first `warmup_runs` (the same in bench/run.py)."""
    repeat_budget_s: float
    """Soft time budget of one repeat of one workload: latency loops stop early past it."""
    call_timeout_s: float
    """Hard timeout of a single workflow run (async peers); the parent bounds the whole peer."""
    park_workflows: int = 10_000
    """footprint_waiting: workflows parked on an event wait at once (as tenantflow's)."""
    park_settle_s: float = 42.0
    """footprint_waiting: idle time before the `settled` reading (tenantflow's is 42 s)."""
    park_budget_s: float = 1500.0
    """footprint_waiting: time allowed for parking them all."""
    replay_steps: int = 1000
    """replay: recorded steps the re-run goes through (tenantflow's replay workload: 1,000)."""
    replay_runs: int = 5
    """replay: re-runs per repeat, of the long workflow and of the 0-step one each."""
    cold_runs: int = 5
    """cold_start: new tenant processes started per repeat."""
    latency_gap_ms: int = 20
    """one_step_latency's paced runs: the time from one result to the next request (a
    lightly loaded host, as opposed to the back-to-back runs of a saturated client)."""

    @staticmethod
    def full() -> Sizes:
        return Sizes(
            seq_steps=1000,
            agg_workflows=64,
            agg_steps=100,
            latency_runs=200,
            wakeup_runs=40,
            sleep_ms=100,
            settle_ms=200,
            warmup_runs=5,
            warmup_seconds=2.0,
            repeat_budget_s=240.0,
            call_timeout_s=240.0,
        )

    @staticmethod
    def quick() -> Sizes:
        return Sizes(
            seq_steps=100,
            agg_workflows=8,
            agg_steps=20,
            latency_runs=20,
            wakeup_runs=5,
            sleep_ms=100,
            settle_ms=200,
            warmup_runs=2,
            warmup_seconds=0.5,
            repeat_budget_s=60.0,
            call_timeout_s=60.0,
            park_workflows=200,
            park_settle_s=3.0,
            park_budget_s=120.0,
            replay_steps=100,
            replay_runs=2,
            cold_runs=2,
        )

    def to_json(self) -> Json:
        return asdict(self)

    @staticmethod
    def from_json(data: Json) -> Sizes:
        return Sizes(**data)


class Peer(abc.ABC):
    """One peer engine, started once per run of its child process.

    Every method that runs a workflow returns only after the workflow completed. Steps are the
    peer's durable unit (DBOS step, Temporal activity, Restate ctx.run): each returns a small
    value that the engine durably records before the workflow goes on.
    """

    name: str

    @abc.abstractmethod
    async def start(self, workdir: Path) -> None:
        """Start servers / workers with storage under workdir."""

    @abc.abstractmethod
    async def stop(self) -> None:
        """Stop everything start() started (idempotent; processes are also reaped by ProcessGroup)."""

    @abc.abstractmethod
    def version(self) -> Json:
        """Versions of the peer's packages and binaries."""

    @abc.abstractmethod
    def durability(self) -> Json:
        """The durability settings in force, with a one-line summary under 'summary'."""

    @abc.abstractmethod
    async def one_step(self) -> float:
        """Start a workflow of one step, wait for its result; return the seconds this took, timed as
        close to the peer's own client calls as possible (no harness thread hops included)."""

    @abc.abstractmethod
    async def sequential(self, steps: int) -> None:
        """Run one workflow of `steps` sequential steps to completion."""

    @abc.abstractmethod
    async def aggregate(self, workflows: int, steps: int) -> None:
        """Run `workflows` concurrent workflows of `steps` steps each, all to completion."""

    @abc.abstractmethod
    async def signal_wakeup(self, settle_s: float) -> float:
        """Start a workflow that waits for an event, wait settle_s so it is parked, send the event
        and return seconds from just before sending to the start of the step that follows."""

    @abc.abstractmethod
    async def sleep_gap(self, sleep_ms: int) -> float:
        """Run a workflow step -> durable sleep(sleep_ms) -> step; return seconds from the end of the
        first step to the start of the second."""

    @abc.abstractmethod
    async def replay(self, steps: int) -> float:
        """Have the peer go through a finished workflow of `steps` steps and one final step again
        from its recorded history, by its own recovery path (each recorded step answered from the
        history, not run), up to the final step; return the seconds from the call that starts the
        re-run to its end. The first call for a given `steps` runs that workflow (untimed); later
        calls re-run the same one."""

    @abc.abstractmethod
    async def cold_start(self, tenant: str) -> float:
        """A tenant whose code is not running anywhere yet: start a new process serving its
        workflow code alone (a fresh interpreter importing the peer's SDK and the workflow
        definitions, connected to this peer's server or database under the name `tenant`, as a
        platform running each tenant's code in a process of its own would), start a one-step
        workflow for it at once, and return the seconds from just before the process was spawned
        to the start of that step (a `time.monotonic()` taken inside it). The process is stopped
        before returning."""

    @abc.abstractmethod
    async def park(self, count: int) -> None:
        """Start `count` workflows that each run one step and then wait for an event (with a timeout
        of a day, so each also holds a timer); return once every one of them has run its step."""

    @abc.abstractmethod
    def processes(self) -> list[int]:
        """Pids of everything this peer runs on (this driver process, servers, workers, services);
        their children are counted too."""


# --- statistics ----------------------------------------------------------------------------------


def percentile(values: Sequence[float], q: float) -> float:
    """Linear-interpolated percentile (q in [0, 100]) of a non-empty sequence."""
    if not values:
        raise ValueError("percentile of no values")
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q / 100.0
    lo = math.floor(pos)
    hi = math.ceil(pos)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


def median(values: Sequence[float]) -> float:
    return percentile(values, 50.0)


def metric(samples: Sequence[float], unit: str, better: str) -> Json:
    """One metric of one workload: the median over repeats plus the per-repeat samples."""
    return {
        "unit": unit,
        "better": better,
        "median": round(median(samples), 4) if samples else None,
        "samples": [round(s, 4) for s in samples],
    }


# --- small utilities -----------------------------------------------------------------------------


def log(msg: str) -> None:
    print(f"[peers {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def free_port() -> int:
    """A currently free TCP port on 127.0.0.1 (the usual small bind race applies)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_tcp(port: int, timeout_s: float, proc: subprocess.Popen[bytes] | None = None, poll_s: float = 0.05) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} before listening on {port}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return
        time.sleep(poll_s)
    raise TimeoutError(f"nothing listening on 127.0.0.1:{port} after {timeout_s:.0f}s")


def write_json_atomic(path: Path, data: Json) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=False) + "\n")
    os.replace(tmp, path)


def tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def filesystem_of(path: Path) -> str:
    """Filesystem type of the mount holding path, from /proc/mounts (Linux); 'unknown' elsewhere."""
    try:
        mounts = Path("/proc/mounts").read_text().splitlines()
    except OSError:
        return "unknown"
    best = ("", "unknown")
    target = str(path.resolve())
    for line in mounts:
        parts = line.split()
        if len(parts) < 3:
            continue
        mnt = parts[1]
        if (target == mnt or target.startswith(mnt.rstrip("/") + "/")) and len(mnt) > len(best[0]):
            best = (mnt, parts[2])
    return best[1]


def fsync_probe(directory: Path, rounds: int = 50) -> Json:
    """p50/p99 of write(4 KiB)+fsync in directory: what one durable commit costs at best here."""
    samples: list[float] = []
    probe = directory / ".fsync-probe"
    fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        block = b"x" * 4096
        for _ in range(rounds):
            t0 = time.perf_counter()
            os.write(fd, block)
            os.fsync(fd)
            samples.append((time.perf_counter() - t0) * 1000.0)
    finally:
        os.close(fd)
        probe.unlink(missing_ok=True)
    return {"p50_ms": round(percentile(samples, 50), 4), "p99_ms": round(percentile(samples, 99), 4)}


# --- network isolation ---------------------------------------------------------------------------

_CLONE_NEWNET = 0x40000000
_SIOCGIFFLAGS = 0x8913
_SIOCSIFFLAGS = 0x8914
_IFF_UP = 0x1


def isolate_network() -> str:
    """Move this (still single-threaded) process into a new network namespace with only loopback up.

    Everything the peer starts inherits it, so nothing can reach beyond 127.0.0.1: e.g. the Restate
    server's unconditional start-up check for a newer release on api.github.com then fails locally
    instead of sending DNS queries out. Needs CAP_SYS_ADMIN (root); returns what was done.
    """
    import fcntl
    import struct

    libc = ctypes.CDLL(None, use_errno=True)
    if libc.unshare(_CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        return f"host network (unshare(CLONE_NEWNET) failed: {os.strerror(err)})"
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        req = struct.pack("16sh", b"lo", 0)
        flags = struct.unpack("16sh", fcntl.ioctl(s, _SIOCGIFFLAGS, req))[1]
        fcntl.ioctl(s, _SIOCSIFFLAGS, struct.pack("16sh", b"lo", flags | _IFF_UP))
    return "private network namespace, loopback only"


# --- processes -----------------------------------------------------------------------------------

_PR_SET_PDEATHSIG = 1


def die_with_parent(sig: int) -> None:
    """preexec_fn: the kernel sends `sig` to this process when the thread that forked it exits."""
    with contextlib.suppress(Exception):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, sig, 0, 0, 0)


class ProcessGroup:
    """Processes started by this harness; each in its own process group, all stopped on close().

    Each child also gets PR_SET_PDEATHSIG=SIGKILL so a crash of the harness cannot leak servers.
    """

    def __init__(self) -> None:
        self._procs: list[tuple[str, subprocess.Popen[bytes], float]] = []

    def start(
        self,
        name: str,
        argv: Sequence[str],
        log_path: Path,
        *,
        cwd: Path | None = None,
        env: dict[str, str] | None = None,
        stop_timeout_s: float = 15.0,
    ) -> subprocess.Popen[bytes]:
        log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(log_path, "ab") as out:
            proc = subprocess.Popen(
                list(argv),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=cwd,
                env=env,
                process_group=0,
                preexec_fn=lambda: die_with_parent(signal.SIGKILL),
            )
        self._procs.append((name, proc, stop_timeout_s))
        return proc

    def stop(self, proc: subprocess.Popen[bytes]) -> None:
        for entry in list(self._procs):
            if entry[1] is proc:
                self._procs.remove(entry)
                _stop_group(entry[0], proc, entry[2])

    def close(self) -> None:
        while self._procs:
            name, proc, timeout = self._procs.pop()
            _stop_group(name, proc, timeout)

    def __enter__(self) -> ProcessGroup:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _signal_group(pgid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def _stop_group(name: str, proc: subprocess.Popen[bytes], timeout_s: float) -> None:
    """SIGTERM the process group, wait up to timeout_s, then SIGKILL it."""
    pgid = proc.pid
    if proc.poll() is None:
        _signal_group(pgid, signal.SIGTERM)
        try:
            proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            log(f"{name} (pid {proc.pid}) ignored SIGTERM for {timeout_s:.0f}s; killing")
    # Kill whatever is left of the group (the leader or any helper it forked).
    _signal_group(pgid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=5)


def session_pids(sid: int) -> list[int]:
    """Pids of live processes whose session id is sid (Linux /proc)."""
    pids: list[int] = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # Fields after the ")" that closes comm: state ppid pgrp session ...
        fields = stat[stat.rfind(")") + 2 :].split()
        if len(fields) > 3 and int(fields[3]) == sid:
            pids.append(int(entry.name))
    return pids


def kill_session(sid: int, grace_s: float) -> None:
    """SIGTERM every process of session sid, wait up to grace_s for them to go, SIGKILL the rest."""
    for pid in session_pids(sid):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline and _live(session_pids(sid)):
        time.sleep(0.1)
    for pid in session_pids(sid):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)


def _live(pids: list[int]) -> list[int]:
    """Pids that are not zombies."""
    live = []
    for pid in pids:
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            continue
        if stat[stat.rfind(")") + 2 :][:1] != "Z":
            live.append(pid)
    return live


@contextlib.contextmanager
def timed() -> Iterator[list[float]]:
    """with timed() as t: ...; t[0] is the elapsed seconds afterwards."""
    box: list[float] = []
    t0 = time.perf_counter()
    try:
        yield box
    finally:
        box.append(time.perf_counter() - t0)
