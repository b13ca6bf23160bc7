"""One-step latency of tenantflow and its peers, interleaved in time.

    .venv/bin/python bench/latency_ab.py                 # 5 rounds, tenantflow then DBOS in each
    .venv/bin/python bench/latency_ab.py --peers dbos,restate --rounds 7

`make bench` measures tenantflow's workloads first and the peers' 20-40 minutes later, so a
change in this shared machine's load between the two halves moves the one-step ratio (a full
run here once had tenantflow's half in a busy spell and DBOS's in a quiet one). This script
runs the same workload (`bench/run.py --only one_step_latency` and the peers'
`one_step_latency`, one repeat of each) back to back in rounds, so that each ratio compares
measurements minutes apart, and reports every round and the median of the rounds' ratios.

Writes bench/results/latency-interleaved.json (every round's figures, load averages and the
commands). Takes ~1 minute per round and peer.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
PEERS_PYTHON = ROOT / "bench" / "peers" / ".venv" / "bin" / "python"
OUT = ROOT / "bench" / "results" / "latency-interleaved.json"
WORKLOAD = "one_step_latency"
METRICS = ("p50_ms", "p99_ms")

Json = dict[str, Any]


def log(msg: str) -> None:
    print(f"[latency-ab {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def run(cmd: list[str], timeout: float) -> None:
    """Run a harness; its own progress goes to our stderr, a failure stops the script."""
    log("$ " + " ".join(os.path.relpath(c, ROOT) if c.startswith(str(ROOT)) else c for c in cmd))
    subprocess.run(cmd, cwd=ROOT, check=True, timeout=timeout, stdout=sys.stderr)


def medians(section: Json) -> dict[str, float]:
    metrics = section["workloads"][WORKLOAD]["metrics"]
    return {m: float(metrics[m]["median"]) for m in METRICS}


def measure_tenantflow(work: Path) -> dict[str, float]:
    out = work / "tenantflow.json"
    out.unlink(missing_ok=True)  # a partial run would otherwise update the last one
    run([sys.executable, str(ROOT / "bench" / "run.py"), "--only", WORKLOAD, "--repeats", "1", "--peers", "skip",
         "--out", str(out), "--markdown", str(work / "tenantflow.md")], timeout=900)
    return medians(json.loads(out.read_text()))


def measure_peer(peer: str, work: Path) -> dict[str, float]:
    out = work / f"{peer}.json"
    run([str(PEERS_PYTHON), str(ROOT / "bench" / "peers" / "run.py"), "--peers", peer, "--workloads", WORKLOAD,
         "--repeats", "1", "--out", str(out)], timeout=900)
    section = json.loads(out.read_text())["peers"][peer]
    if section.get("status") != "ok":
        raise SystemExit(f"{peer}: {section.get('status')} (see its log above)")
    return medians(section)


def summarize(rounds: list[Json], peers: list[str]) -> Json:
    """Per peer and metric: the median of tenantflow/peer over the rounds, and its spread."""
    summary: Json = {}
    for peer in peers:
        for m in METRICS:
            ratios = [r["tenantflow"][m] / r[peer][m] for r in rounds]
            summary[f"{peer}.{m}"] = {
                "tenantflow_median": round(statistics.median(r["tenantflow"][m] for r in rounds), 3),
                "peer_median": round(statistics.median(r[peer][m] for r in rounds), 3),
                "ratio_median": round(statistics.median(ratios), 3),  # < 1: tenantflow is faster
                "ratio_range": [round(min(ratios), 3), round(max(ratios), 3)],
            }
    return summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5, help="rounds of tenantflow then each peer (default 5)")
    parser.add_argument("--peers", default="dbos", help="comma-separated subset of dbos,temporal,restate (default dbos: the closest)")
    parser.add_argument("--out", type=Path, default=OUT, help=f"JSON results (default {os.path.relpath(OUT, ROOT)})")
    args = parser.parse_args(argv)
    peers = [p for p in args.peers.split(",") if p]
    if not PEERS_PYTHON.exists():
        parser.error(f"{os.path.relpath(PEERS_PYTHON, ROOT)} is missing: run `bash bench/peers/setup.sh` (make bench does)")
    if args.rounds < 1:
        parser.error("--rounds must be at least 1")

    rounds: list[Json] = []
    with tempfile.TemporaryDirectory(prefix="tf-latency-ab-") as tmp:
        work = Path(tmp)
        for n in range(args.rounds):
            entry: Json = {"round": n + 1, "started_at": time.strftime("%Y-%m-%dT%H:%M:%S"), "load_avg_before": list(os.getloadavg())}
            entry["tenantflow"] = measure_tenantflow(work)
            for peer in peers:
                entry[peer] = measure_peer(peer, work)
            rounds.append(entry)
            log(f"round {n + 1}/{args.rounds}: " + ", ".join(f"{s} p50 {entry[s]['p50_ms']:.2f} p99 {entry[s]['p99_ms']:.2f} ms" for s in ["tenantflow", *peers]))

    result: Json = {
        "what": "one-step workflow latency, tenantflow and each peer measured back to back in every round (one repeat of each)",
        "command": " ".join([os.path.relpath(sys.executable, ROOT), "bench/latency_ab.py", *(argv if argv is not None else sys.argv[1:])]),
        "rounds": rounds,
        "summary": summarize(rounds, peers),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    for key, s in result["summary"].items():
        print(f"{key:22s} tenantflow {s['tenantflow_median']:.2f} ms, peer {s['peer_median']:.2f} ms, "
              f"ratio {s['ratio_median']:.2f} (rounds {s['ratio_range'][0]:.2f}-{s['ratio_range'][1]:.2f})")
    log(f"wrote {os.path.relpath(args.out, ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
