"""Plots of a benchmark run: PNGs next to the JSON they are drawn from.

    .venv/bin/python bench/plot.py [--tenantflow bench/results/tenantflow.json] [--peers bench/results/peers.json]

Writes, under bench/results/ (with a `-quick` suffix for quick runs):
  throughput.png  sequential and aggregate steps/s per system, with the raw SQLite commit limit
  latency.png     one-step p50/p99, event wake-up p50, sleep overshoot p50, cold start per system (log scale)
  memory.png      memory with 10,000 workflows waiting, per system
  replay.png      replay cost per recorded step, per system (log scale)
  tenantflow.png  tenantflow against the issue's targets (measured / target)
matplotlib is installed into the repo venv by `make bench` (it is not a tenantflow dependency).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any, Optional, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
SYSTEMS = [("tenantflow", "tenantflow", "#2b7bba"), ("dbos", "DBOS", "#e07b39"), ("temporal", "Temporal", "#7e57c2"), ("restate", "Restate", "#3aa06b")]


def value(section: Optional[dict[str, Any]], name: str) -> Optional[float]:
    if not section or section.get("status") not in (None, "ok"):
        return None
    return (section.get("metrics", {}).get(name) or {}).get("median")


def section_of(tf: dict[str, Any], peers: dict[str, Any], system: str, workload: str) -> Optional[dict[str, Any]]:
    if system == "tenantflow":
        own: Optional[dict[str, Any]] = tf.get("workloads", {}).get(workload)
        return own
    p = peers.get("peers", {}).get(system)
    if not p or p.get("status") not in ("ok", "partial"):
        return None
    peer: Optional[dict[str, Any]] = p.get("workloads", {}).get(workload)
    return peer


def grouped_bars(ax: Any, groups: Sequence[tuple[str, ...]], tf: dict[str, Any], peers: dict[str, Any], unit: str) -> float:
    """One group of bars per (workload, metric, label[, the peers' metric]), one bar per system,
    values printed; returns the largest value drawn."""
    systems = [s for s in SYSTEMS if s[0] == "tenantflow" or s[0] in peers.get("peers", {})]
    width = 0.8 / len(systems)
    tallest = 0.0
    for i, (system, label, color) in enumerate(systems):
        xs, ys = [], []
        for g, (workload, name, _, *peer_name) in enumerate(groups):
            metric = peer_name[0] if peer_name and system != "tenantflow" else name
            v = value(section_of(tf, peers, system, workload), metric)
            if v is not None and v > 0:
                xs.append(g + (i - (len(systems) - 1) / 2) * width)
                ys.append(v)
        bars = ax.bar(xs, ys, width, label=label, color=color)
        tallest = max([tallest] + ys)
        for bar, v in zip(bars, ys):
            ax.annotate(f"{v:,.0f}" if v >= 10 else f"{v:.2f}", (bar.get_x() + bar.get_width() / 2, v),
                        ha="center", va="bottom", fontsize=7, rotation=90, xytext=(0, 2), textcoords="offset points")
    ax.set_xticks(range(len(groups)))
    ax.set_xticklabels([g[2] for g in groups], fontsize=8)
    ax.set_yscale("log")
    if tallest > 0:  # nothing drawn (e.g. a partial run): leave the axis as it is
        ax.set_ylim(top=ax.get_ylim()[1] * 3)  # room for the tallest bar's value under the title
    ax.set_ylabel(unit)
    ax.grid(axis="y", which="both", alpha=0.3)
    return tallest


def target_mark(ax: Any, x: float, y: float, text: str) -> None:
    """A red dotted target line over the bar group at x."""
    ax.hlines(y, x - 0.45, x + 0.45, colors="red", linestyles=":", linewidth=1)
    ax.annotate(text, (x + 0.45, y), fontsize=7, color="red", ha="right", xytext=(0, 3), textcoords="offset points")


def finish(fig: Any, ax: Any, title: str, out: Path) -> None:
    ax.set_title(title)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)


def plot_throughput(tf: dict[str, Any], peers: dict[str, Any], out: Path) -> None:
    sizes = tf.get("sizes", {})
    fig, ax = plt.subplots(figsize=(8, 4.8))
    groups = [
        ("sequential_steps", "steps_per_s", f"sequential\n1 × {sizes.get('seq_steps')} steps"),
        ("aggregate_steps", "total_steps_per_s", f"aggregate\n{sizes.get('agg_workflows')} × {sizes.get('agg_steps')} steps"),
    ]
    grouped_bars(ax, groups, tf, peers, "durable steps / s (log)")
    raw = value(tf.get("workloads", {}).get("raw_sqlite"), "commits_per_s")
    if raw:
        ax.axhline(raw, color="grey", linestyle="--", linewidth=1)
        ax.annotate(f"raw SQLite durable commits/s on this disk: {raw:,.0f}", (-0.45, raw), fontsize=7, color="grey", xytext=(0, 3), textcoords="offset points")
    targets = [(0, 2000, "target 2,000"), (1, 10_000, "target 10,000")]
    for x, y, text in targets:
        target_mark(ax, x, y, text)
    finish(fig, ax, "Durable step throughput (higher is better)", out)


def plot_latency(tf: dict[str, Any], peers: dict[str, Any], out: Path) -> None:
    sleep_ms = tf.get("sizes", {}).get("sleep_ms", 100)
    gap_ms = tf.get("sizes", {}).get("latency_gap_ms", 20)
    fig, ax = plt.subplots(figsize=(10, 4.8))
    groups = [
        ("one_step_latency", "p50_ms", "one-step\nworkflow p50\n(back to back)"),
        ("one_step_latency", "p99_ms", "one-step\nworkflow p99\n(back to back)"),
        ("one_step_latency", "paced_p50_ms", f"one-step p50,\nrequests\n{gap_ms} ms apart"),
        ("wakeup_latency", "signal_p50_ms", "event → next\nstep p50"),
        ("wakeup_latency", "sleep_overshoot_p50_ms", f"sleep({sleep_ms} ms)\novershoot p50"),
        ("cold_start", "disk_artifact_ms", "cold start:\nnew tenant's\nfirst step", "first_step_ms"),
    ]
    grouped_bars(ax, groups, tf, peers, "ms (log)")
    target_mark(ax, 0, 3, "target 3 ms")
    target_mark(ax, 2, 3, "target 3 ms")
    target_mark(ax, 5, 15, "target 15 ms")
    finish(fig, ax, "Latency (lower is better)", out)


def plot_memory(tf: dict[str, Any], peers: dict[str, Any], out: Path) -> None:
    waiting = tf.get("sizes", {}).get("waiting_instances", 10_000)
    fig, ax = plt.subplots(figsize=(7, 4.8))
    groups = [
        ("footprint_waiting", "rss_mib", f"{waiting:,} waiting workflows:\nonce all wait"),
        ("footprint_waiting", "rss_settled_mib", "the same\nafter 42 s idle"),
    ]
    tallest = grouped_bars(ax, groups, tf, peers, "MiB, RSS of every process")
    ax.set_yscale("linear")  # a few hundred MiB each: ratios read directly
    ax.set_ylim(0, max(tallest, 300.0) * 1.2)
    target_mib = 300e6 / 2**20
    target_mark(ax, 0, target_mib, "target 300 MB")
    finish(fig, ax, "Host memory with workflows waiting on an event (lower is better)", out)


def plot_replay(tf: dict[str, Any], peers: dict[str, Any], out: Path) -> None:
    history = tf.get("sizes", {}).get("replay_history", 1000)
    fig, ax = plt.subplots(figsize=(6, 4.8))
    groups = [("replay", "us_per_step", f"going through {history:,} recorded\nsteps again, per step")]
    grouped_bars(ax, groups, tf, peers, "µs per recorded step (log)")
    target_mark(ax, 0, 20, "target 20 µs")
    finish(fig, ax, "Replay cost (lower is better)", out)


def plot_targets(tf: dict[str, Any], out: Path) -> None:
    targets = [t for t in tf.get("targets", []) if t.get("value") is not None]
    if not targets:
        return
    import textwrap

    fig, ax = plt.subplots(figsize=(11, 0.62 * len(targets) + 1.4))
    labels, ratios, colors = [], [], []
    for t in targets:
        # normalized so that 1.0 is the target and bigger is always better
        r = t["value"] / t["threshold"] if t["better"] == "higher" else t["threshold"] / t["value"]
        labels.append(textwrap.fill(t["target"], 48))
        ratios.append(r)
        colors.append("#3aa06b" if t["pass"] else ("#d9534f" if t["pass"] is False else "#999999"))
    ys = range(len(targets))
    ax.barh(list(ys), ratios, color=colors)
    ax.axvline(1.0, color="black", linewidth=1)
    for y, r, t in zip(ys, ratios, targets):
        short = t["shown"].split(" (")[0].split(";")[0].split(" —")[0]
        ax.annotate(short, (r, y), fontsize=7, va="center", xytext=(4, 0), textcoords="offset points")
    ax.set_yticks(list(ys))
    ax.set_yticklabels(labels, fontsize=8)
    ax.invert_yaxis()
    ax.set_xscale("log")
    ax.set_xlabel("measured relative to target (≥ 1 meets it; log)")
    ax.set_title("tenantflow against the issue's targets")
    right = max(ratios + [1.0]) * 12
    ax.set_xlim(min(ratios + [1.0]) / 2, right)
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tenantflow", type=Path, default=RESULTS / "tenantflow.json")
    parser.add_argument("--peers", type=Path, default=None, help="peer JSON (default: next to the tenantflow JSON, if present)")
    parser.add_argument("--no-peers", action="store_true", help="plot tenantflow alone")
    args = parser.parse_args()
    tf = json.loads(args.tenantflow.read_text())
    suffix = "-quick" if tf.get("mode") == "quick" else ""
    peers_path = args.peers or args.tenantflow.with_name(f"peers{suffix}.json")
    peers = json.loads(peers_path.read_text()) if peers_path.exists() and not args.no_peers else {}
    out_dir = args.tenantflow.parent
    plot_throughput(tf, peers, out_dir / f"throughput{suffix}.png")
    plot_latency(tf, peers, out_dir / f"latency{suffix}.png")
    plot_memory(tf, peers, out_dir / f"memory{suffix}.png")
    plot_replay(tf, peers, out_dir / f"replay{suffix}.png")
    plot_targets(tf, out_dir / f"tenantflow{suffix}.png")
    print(f"[plot] wrote {', '.join(f'{n}{suffix}.png' for n in ('throughput', 'latency', 'memory', 'replay', 'tenantflow'))} under {out_dir}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
