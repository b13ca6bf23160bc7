"""Terminal rendering of instances: the `describe` timeline and live step progress."""

from __future__ import annotations

import datetime as dt
import json
from typing import Any, Optional

from rich.console import Console
from rich.table import Table
from rich.text import Text

from .models import InstanceStatus, StepInfo

STATUS_STYLE = {
    "complete": "green",
    "done": "green",
    "errored": "red",
    "failed": "red",
    "terminated": "red",
    "retrying": "yellow",
    "waiting": "cyan",
    "paused": "magenta",
    "waitingForPause": "magenta",
    "running": "blue",
    "queued": "dim",
    "timed_out": "yellow",
}


def make_console(stderr: bool = False) -> Console:
    """A console that does not wrap at 80 columns when output goes to a file or pipe."""
    console = Console(stderr=stderr, highlight=False)
    if not console.is_terminal:
        console = Console(stderr=stderr, highlight=False, width=160)
    return console


def short_json(value: Any, limit: int = 60) -> str:
    text = json.dumps(value, separators=(",", ":"))
    return text if len(text) <= limit else text[: limit - 1] + "…"


def duration(start: Optional[dt.datetime], end: Optional[dt.datetime]) -> str:
    if start is None or end is None:
        return ""
    ms = (end - start).total_seconds() * 1000
    if ms < 1000:
        return f"{ms:.0f} ms"
    if ms < 120_000:
        return f"{ms / 1000:.1f} s"
    if ms < 7_200_000:
        return f"{ms / 60_000:.1f} min"
    return f"{ms / 3_600_000:.1f} h"


def step_detail(step: StepInfo) -> str:
    if step.kind == "sleep":
        return f"until {step.wake_at:%Y-%m-%d %H:%M:%S}" if step.wake_at else ""
    if step.kind == "event":
        if step.status == "done" and isinstance(step.output, dict):
            return f"{step.event_type}: {short_json(step.output.get('payload'))}"
        if step.status == "timed_out":
            return f"{step.event_type}: timed out"
        return f"waiting for {step.event_type!r}" + (f" until {step.wake_at:%Y-%m-%d %H:%M:%S}" if step.wake_at else "")
    if step.error is not None:
        return f"{step.error.name}: {step.error.message}"
    if step.status == "retrying" and step.failed_attempts:
        last = step.failed_attempts[-1].error
        when = f"; retry at {step.wake_at:%H:%M:%S}" if step.wake_at else ""
        return f"{last.name}: {last.message}{when}" if last else ""
    return short_json(step.output) if step.status == "done" else ""


def step_line(step: StepInfo) -> Text:
    style = STATUS_STYLE.get(step.status, "")
    line = Text(f"  #{step.seq:<3} {step.kind:<5} ")
    line.append(step.name, style="bold")
    line.append(f"  {step.status}", style=style)
    if step.attempts > 1:
        line.append(f" (attempt {step.attempts})")
    took = duration(step.started_at, step.ended_at)
    if took and step.kind == "step":
        line.append(f"  {took}", style="dim")
    detail = step_detail(step)
    if detail:
        line.append(f"  {detail}", style="dim")
    return line


def render_describe(status: InstanceStatus, console: Console) -> None:
    style = STATUS_STYLE.get(status.status, "")
    console.print(Text.assemble(("Instance ", ""), (status.id, "bold"), ("  ", ""), (status.status, style)))
    rows = [
        ("workflow", status.workflow),
        ("tenant", status.tenant),
        ("code", f"sha256:{status.digest[:16]}…"),
        ("created", f"{status.created_at:%Y-%m-%d %H:%M:%S}"),
    ]
    if status.parent is not None:
        rows.append(("parent", status.parent))
    if status.ended_at is not None:
        rows.append(("ended", f"{status.ended_at:%Y-%m-%d %H:%M:%S}  ({duration(status.created_at, status.ended_at)})"))
    if status.waiting_for:
        rows.append(("waiting for", f"event {status.waiting_for!r}"))
    elif status.wake_at is not None and status.status in ("waiting", "paused"):
        rows.append(("wakes at", f"{status.wake_at:%Y-%m-%d %H:%M:%S}"))
    rows.append(("params", short_json(status.params, 100)))
    if status.output is not None:
        rows.append(("output", short_json(status.output, 100)))
    if status.error is not None:
        rows.append(("error", f"{status.error.name}: {status.error.message}"))
    for key, value in rows:
        console.print(f"  {key:<12} {value}", markup=False, highlight=False)
    if not status.steps:
        console.print("  (no steps yet)", style="dim")
        return
    table = Table(box=None, pad_edge=False, show_edge=False, header_style="bold")
    for column in ("#", "kind", "name", "status", "attempts", "duration", "detail"):
        table.add_column(column, overflow="fold")
    for step in status.steps:
        table.add_row(
            str(step.seq),
            step.kind,
            step.name,
            Text(step.status, style=STATUS_STYLE.get(step.status, "")),
            str(step.attempts) if step.kind == "step" else "",
            duration(step.started_at, step.ended_at),
            step_detail(step),
        )
        for attempt in step.failed_attempts:
            if attempt.error is not None:
                table.add_row("", "", Text(f"  attempt {attempt.attempt}", style="dim"), Text("failed", style="red"), "",
                              duration(attempt.started_at, attempt.ended_at), f"{attempt.error.name}: {attempt.error.message}")
    console.print()
    console.print(table)
