"""Sequential throughput and one-step latency of tenantflow and its peers, interleaved in time.

    .venv/bin/python bench/interleaved.py                        # 5 rounds against DBOS and Restate
    .venv/bin/python bench/interleaved.py --peers dbos --rounds 7
    .venv/bin/python bench/interleaved.py --workloads one_step_latency

`make bench` measures tenantflow's workloads first and the peers' 10-40 minutes later, so a
change in this shared machine's load between the two halves moves a ratio (a full run here
once had tenantflow's half in a busy spell and DBOS's in a quiet one; DBOS's sequential figure
has ranged over 530-890 steps/s across runs). This script runs the same workloads
(`bench/run.py --only ...` and the peer harness's `--workloads ...`, one repeat each) back to
back in rounds, alternating which system goes first, so that each ratio compares measurements
a minute apart; it reports every round and, per peer and metric, the median of the rounds'
ratios and their range. `make bench` runs it (3 rounds) after the peers, and BENCHMARKS.md
shows its table.

Writes bench/results/interleaved.json (every round's figures, load averages, the command).
Takes ~1-2 minutes per round.
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

from hostcpu import cpu_sample, cpu_share

ROOT = Path(__file__).resolve().parents[1]
PEERS_PYTHON = ROOT / "bench" / "peers" / ".venv" / "bin" / "python"
OUT = ROOT / "bench" / "results" / "interleaved.json"
PEERS = ("dbos", "temporal", "restate")
# The workloads whose ratio to a peer moves most with the machine's load, and their metrics
# (the same names in both harnesses) with the better direction.
METRICS: dict[str, tuple[tuple[str, str], ...]] = {
    "sequential_steps": (("steps_per_s", "higher"),),
    "one_step_latency": (("p50_ms", "lower"), ("p99_ms", "lower"), ("paced_p50_ms", "lower"), ("paced_p99_ms", "lower")),
}

Json = dict[str, Any]


def log(msg: str) -> None:
    print(f"[interleaved {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def run(cmd: list[str], timeout: float) -> None:
    """Run a harness; its own progress goes to our stderr, a failure stops the script."""
    log("$ " + " ".join(os.path.relpath(c, ROOT) if c.startswith(str(ROOT)) else c for c in cmd))
    subprocess.run(cmd, cwd=ROOT, check=True, timeout=timeout, stdout=sys.stderr)


def medians(workloads_section: Json, workloads: list[str]) -> Json:
    """{workload: {metric: median}} from one harness's `workloads` section."""
    out: Json = {}
    for workload in workloads:
        section = workloads_section.get(workload) or {}
        if section.get("status", "ok") != "ok":
            raise SystemExit(f"{workload} failed: {section.get('reason', section.get('status'))}")
        out[workload] = {m: float(section["metrics"][m]["median"]) for m, _ in METRICS[workload]}
    return out


def measure_tenantflow(work: Path, workloads: list[str]) -> Json:
    out = work / "tenantflow.json"
    out.unlink(missing_ok=True)  # a partial run would otherwise update the last one
    run([sys.executable, str(ROOT / "bench" / "run.py"), "--only", ",".join(workloads), "--repeats", "1", "--peers", "skip",
         "--out", str(out), "--markdown", str(work / "tenantflow.md")], timeout=1800)
    return medians(json.loads(out.read_text())["workloads"], workloads)


def measure_peer(peer: str, work: Path, workloads: list[str]) -> Json:
    out = work / f"{peer}.json"
    run([str(PEERS_PYTHON), str(ROOT / "bench" / "peers" / "run.py"), "--peers", peer, "--workloads", ",".join(workloads),
         "--repeats", "1", "--out", str(out)], timeout=1800)
    section = json.loads(out.read_text())["peers"][peer]
    if section.get("status") != "ok":
        raise SystemExit(f"{peer}: {section.get('status')} (see its log above)")
    return medians(section["workloads"], workloads)


def summarize(rounds: list[Json], peers: list[str], workloads: list[str]) -> Json:
    """Per workload, metric and peer: the median of tenantflow/peer over the rounds, its
    range, and in how many rounds tenantflow was the better of the two."""
    summary: Json = {}
    for workload in workloads:
        for metric, better in METRICS[workload]:
            tf = [r["tenantflow"][workload][metric] for r in rounds]
            for peer in peers:
                theirs = [r[peer][workload][metric] for r in rounds]
                ratios = [a / b for a, b in zip(tf, theirs)]
                won = sum(1 for a, b in zip(tf, theirs) if (a > b if better == "higher" else a < b))
                summary[f"{workload}.{metric}.{peer}"] = {
                    "workload": workload, "metric": metric, "peer": peer, "better": better,
                    "tenantflow_median": round(statistics.median(tf), 3),
                    "peer_median": round(statistics.median(theirs), 3),
                    "ratio_median": round(statistics.median(ratios), 3),  # tenantflow / peer
                    "ratio_range": [round(min(ratios), 3), round(max(ratios), 3)],
                    "rounds_tenantflow_better": won,
                    "rounds": len(rounds),
                }
    return summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5, help="rounds of every system (default 5)")
    parser.add_argument("--peers", default="dbos,restate", help=f"comma-separated subset of {','.join(PEERS)} (default dbos,restate: the closest)")
    parser.add_argument("--workloads", default=",".join(METRICS), help=f"comma-separated subset of {','.join(METRICS)} (default both)")
    parser.add_argument("--out", type=Path, default=OUT, help=f"JSON results (default {os.path.relpath(OUT, ROOT)})")
    args = parser.parse_args(argv)
    peers = [p for p in args.peers.split(",") if p]
    workloads = [w for w in args.workloads.split(",") if w]
    if not PEERS_PYTHON.exists():
        parser.error(f"{os.path.relpath(PEERS_PYTHON, ROOT)} is missing: run `bash bench/peers/setup.sh` (make bench does)")
    if args.rounds < 1:
        parser.error("--rounds must be at least 1")
    if not peers or set(peers) - set(PEERS):
        parser.error(f"--peers: one or more of {', '.join(PEERS)}")
    if not workloads or set(workloads) - set(METRICS):
        parser.error(f"--workloads: one or more of {', '.join(METRICS)}")

    started = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    rounds: list[Json] = []
    with tempfile.TemporaryDirectory(prefix="tf-interleaved-") as tmp:
        work = Path(tmp)
        for n in range(args.rounds):
            # Alternate who goes first: a trend in the machine's load over a round then
            # favours neither side across rounds.
            order = ["tenantflow", *peers] if n % 2 == 0 else [*peers, "tenantflow"]
            entry: Json = {"round": n + 1, "started_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "order": order,
                           "load_avg_before": list(os.getloadavg())}
            cpu_before = cpu_sample()
            for system in order:
                entry[system] = measure_tenantflow(work, workloads) if system == "tenantflow" else measure_peer(system, work, workloads)
            entry["load_avg_after"] = list(os.getloadavg())
            entry["cpu_during"] = cpu_share(cpu_before, cpu_sample())
            rounds.append(entry)
            log(f"round {n + 1}/{args.rounds}: " + "; ".join(
                f"{s} " + ", ".join(f"{m} {v:,.2f}" for w in workloads for m, v in entry[s][w].items()) for s in ["tenantflow", *peers]))

    result: Json = {
        "what": "tenantflow and each peer measured back to back in every round (one repeat of each workload), alternating who goes first",
        "command": " ".join([os.path.relpath(sys.executable, ROOT), "bench/interleaved.py", *(argv if argv is not None else sys.argv[1:])]),
        "started_at": started,
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "workloads": workloads,
        "peers": peers,
        "rounds": rounds,
        "summary": summarize(rounds, peers, workloads),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    for s in result["summary"].values():
        print(f"{s['workload']}.{s['metric']} vs {s['peer']}: tenantflow {s['tenantflow_median']:,.2f}, peer {s['peer_median']:,.2f}, "
              f"ratio {s['ratio_median']:.2f} (rounds {s['ratio_range'][0]:.2f}-{s['ratio_range'][1]:.2f}; "
              f"tenantflow better in {s['rounds_tenantflow_better']}/{s['rounds']})")
    log(f"wrote {os.path.relpath(args.out, ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
