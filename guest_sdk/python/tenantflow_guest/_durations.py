"""Durations and instants in the forms Cloudflare Workflows accepts, as milliseconds."""

from __future__ import annotations

import datetime as _dt
import re

_UNIT_MS = {
    "millisecond": 1,
    "ms": 1,
    "second": 1_000,
    "sec": 1_000,
    "s": 1_000,
    "minute": 60_000,
    "min": 60_000,
    "m": 60_000,
    "hour": 3_600_000,
    "h": 3_600_000,
    "day": 86_400_000,
    "d": 86_400_000,
    "week": 604_800_000,
    "w": 604_800_000,
    "month": 2_592_000_000,
    "year": 31_536_000_000,
    "y": 31_536_000_000,
}
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]+)\s*$")

Duration = "int | float | str | datetime.timedelta"


def to_ms(value: object, what: str = "duration") -> int:
    """`"10 seconds"`, `"1 hour"`, `"2 days"`, a timedelta, or a number of milliseconds."""
    if isinstance(value, bool):
        raise TypeError(f"{what} must be a number of milliseconds, a string like '10 seconds' or a timedelta, got bool")
    if isinstance(value, (int, float)):
        if value < 0:
            raise ValueError(f"{what} must not be negative, got {value}")
        return int(value)
    if isinstance(value, _dt.timedelta):
        ms = int(value.total_seconds() * 1000)
        if ms < 0:
            raise ValueError(f"{what} must not be negative, got {value}")
        return ms
    if isinstance(value, str):
        match = _DURATION.match(value)
        if match:
            unit = match.group(2).lower()
            factor = _UNIT_MS.get(unit) or _UNIT_MS.get(unit[:-1] if unit.endswith("s") else unit)
            if factor is not None:
                return int(float(match.group(1)) * factor)
        raise ValueError(f"invalid {what} {value!r}: use e.g. '10 seconds', '5 minutes', '1 hour', '2 days' or milliseconds")
    raise TypeError(f"{what} must be a number of milliseconds, a string like '10 seconds' or a timedelta, got {type(value).__name__}")


def to_epoch_ms(value: object) -> int:
    """A datetime (naive means UTC), an ISO-8601 string, or seconds since the epoch."""
    if isinstance(value, str):
        try:
            value = _dt.datetime.fromisoformat(value)
        except ValueError:
            raise ValueError(f"invalid timestamp {value!r}: use a datetime, an ISO-8601 string or epoch seconds") from None
    if isinstance(value, _dt.datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=_dt.timezone.utc)
        return int(value.timestamp() * 1000)
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return int(value * 1000)
    raise TypeError(f"timestamp must be a datetime, an ISO-8601 string or epoch seconds, got {type(value).__name__}")


def from_epoch_ms(ms: int) -> _dt.datetime:
    return _dt.datetime.fromtimestamp(ms / 1000, tz=_dt.timezone.utc)
