"""Limits on what callers and guests may send, and the validation that enforces them."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any, NoReturn, Optional

from .errors import InvalidInput, PayloadTooLarge

MiB = 1024 * 1024
DAY_MS = 86_400_000
INSTANCE_ID = re.compile(r"^[a-zA-Z0-9_][a-zA-Z0-9\-_]*$")
EVENT_TYPE = re.compile(r"^[A-Za-z0-9_\-]{1,100}$")
TENANT = re.compile(r"^[a-z0-9][a-z0-9\-_]{0,62}$")
WORKFLOW_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_\-.]{0,127}$")
MAX_INSTANCE_ID = 100


@dataclass(frozen=True)
class Limits:
    max_params_bytes: int = MiB
    max_step_result_bytes: int = MiB
    # What the results an instance records may add up to (Cloudflare's free tier keeps 100 MB
    # per instance); a step past it fails: 10,000 steps of 1 MiB would be 10 GiB on the disk.
    max_state_bytes_per_instance: int = 100 * MiB
    max_output_bytes: int = MiB  # what a workflow returns
    max_event_payload_bytes: int = MiB
    # Events sent to an instance and not yet taken by a wait: a sender cannot fill the disk
    # (shared by every tenant) through an instance that never waits for its type.
    max_pending_events_per_instance: int = 10_000
    max_step_name_chars: int = 256
    # A guest's error (a failed attempt, a failed workflow): its name and message are cut to
    # these, saying so; each is journaled, kept in the status and sent to every reader.
    max_error_name_bytes: int = 256
    max_error_message_bytes: int = 16 * 1024
    # A step's failed attempts kept in its history (the last ones; `attempts` counts all): a
    # step retried without end would otherwise rewrite an ever longer history each time.
    max_attempt_history: int = 25
    max_steps_per_instance: int = 10_000
    max_log_bytes_per_instance: int = MiB
    # Lines too, not only bytes: empty lines cost no bytes, yet a row each (and host memory
    # while the invocation runs); lines past either bound are dropped and counted.
    max_log_lines_per_instance: int = 10_000
    # Instances of one tenant not yet complete, errored or terminated (None: no quota): what
    # bounds a guest's fan-out when children start children, and a tenant's share of a host.
    max_unfinished_instances_per_tenant: Optional[int] = 1_000_000
    # Child workflows one `start` may create (like a batch create over HTTP), and one
    # instance over its life: a guest's fan-out must not fill the disk or hold the writer.
    max_children_per_call: int = 1000
    max_children_per_instance: int = 10_000
    memory_bytes: int = 256 * MiB
    # Wall-clock budget of one invocation (replay plus new work), beyond step timeouts.
    invocation_timeout_ms: int = 15 * 60 * 1000
    default_event_timeout_ms: int = 24 * 3600 * 1000
    # The longest a guest may ask to wait (sleep, event or join timeout, retry delay), like
    # Cloudflare's 365 days: every wake-up time then fits SQLite and a datetime.
    max_wait_ms: int = 365 * 24 * 3600 * 1000
    # A sleep this short is served in place (the worker waits, the instance stays loaded)
    # when no other instance is queued for a worker: no unwind, replay and new instance.
    # 0 turns it off. Always journaled first, so a crash mid-sleep resumes it.
    sleep_in_place_ms: int = 250


def check_instance_id(instance_id: object) -> str:
    if not isinstance(instance_id, str) or not instance_id:
        raise InvalidInput("instance id must be a non-empty string")
    if len(instance_id) > MAX_INSTANCE_ID:
        raise InvalidInput(f"instance id is {len(instance_id)} characters; at most {MAX_INSTANCE_ID} are allowed")
    if not INSTANCE_ID.fullmatch(instance_id):
        raise InvalidInput(f"invalid instance id {instance_id!r}: use letters, digits, '-' and '_', not starting with '-'")
    return instance_id


def check_event_type(event_type: object) -> str:
    if not isinstance(event_type, str) or not EVENT_TYPE.fullmatch(event_type):
        raise InvalidInput(f"invalid event type {event_type!r}: 1 to 100 characters of letters, digits, '-' and '_'")
    return event_type


def check_tenant(tenant: object) -> str:
    if not isinstance(tenant, str) or not TENANT.fullmatch(tenant):
        raise InvalidInput(f"invalid tenant {tenant!r}: 1 to 63 lowercase letters, digits, '-' and '_', starting with a letter or digit")
    return tenant


def check_workflow_name(name: object) -> str:
    if not isinstance(name, str) or not WORKFLOW_NAME.fullmatch(name):
        raise InvalidInput(f"invalid workflow name {name!r}")
    return name


def encode_json(value: Any, limit: int, what: str) -> str:
    """Serialize a caller's value, refusing what is not JSON or is over `limit` bytes."""
    try:
        text = json.dumps(value, allow_nan=False, separators=(",", ":"))
    except (TypeError, ValueError) as exc:
        raise InvalidInput(f"{what} must be JSON-serializable: {exc}") from None
    check_size(text, limit, what)
    return text


def _no_constant(name: str) -> NoReturn:
    raise ValueError(f"{name} is not JSON")


# One decoder for every check (`json.loads` with options builds a new one per call).
_STRICT_JSON = json.JSONDecoder(parse_constant=_no_constant)


def json_problem(text: str) -> Optional[str]:
    """Why `text` is not one JSON value, or None when it is. What a guest hands the host
    as JSON (a step's result, its output) is checked before it is journaled: an API reader
    must be able to decode everything the journal holds."""
    try:
        _STRICT_JSON.decode(text)
    except ValueError as exc:  # json.JSONDecodeError, and NaN or Infinity
        return str(exc)
    return None


def size_over(text: str, limit: int) -> Optional[int]:
    """The UTF-8 size of `text` when it is over `limit` bytes, else None. A character is at
    most 4 bytes: short texts (nearly all) need no encoding to tell."""
    if len(text) * 4 <= limit:
        return None
    size = len(text.encode())
    return size if size > limit else None


def cut_text(text: str, limit_bytes: int) -> str:
    """`text` cut to at most `limit_bytes` of UTF-8 (at a character boundary), saying how
    long it was."""
    size = size_over(text, limit_bytes)
    if size is None:
        return text
    note = f" ... [cut: {format_bytes(size)} in all]"
    keep = max(limit_bytes - len(note), 0)
    return text.encode()[:keep].decode("utf-8", "ignore") + note


def utf8_size(text: str) -> int:
    return len(text) if text.isascii() else len(text.encode())


def check_size(text: str, limit: int, what: str) -> None:
    size = size_over(text, limit)
    if size is not None:
        raise PayloadTooLarge(f"{what} is {over_limit(size, limit)}")


def format_bytes(n: int) -> str:
    if n >= MiB:
        return f"{n / MiB:.1f} MiB".replace(".0 MiB", " MiB")
    if n >= 1024:
        return f"{n / 1024:.1f} KiB".replace(".0 KiB", " KiB")
    return f"{n} bytes"


def format_sizes(size: int, limit: int) -> tuple[str, str]:
    """A size and its limit for a message, exact when rounding would make them look equal
    ("1048577 bytes; the limit is 1048576 bytes", not "1 MiB; the limit is 1 MiB")."""
    a, b = format_bytes(size), format_bytes(limit)
    return (f"{size} bytes", f"{limit} bytes") if a == b else (a, b)


def over_limit(size: int, limit: int) -> str:
    """'<size>; the limit is <limit>', for a message about a size over its limit."""
    shown, cap = format_sizes(size, limit)
    return f"{shown}; the limit is {cap}"
