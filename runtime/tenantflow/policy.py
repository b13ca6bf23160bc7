"""What a tenant's guests may use: egress allow-list, secrets, resource limits.

Set by the platform (from a tenant manifest or its own configuration) and read by the
host on every capability call; the guest never sees or changes it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Optional

if TYPE_CHECKING:
    from .limits import Limits


@dataclass(frozen=True)
class TenantPolicy:
    # Hosts guests may fetch: exact host names or "*.suffix" patterns.
    egress: tuple[str, ...] = ()
    # Whether allowed host names may resolve to loopback or private addresses (egress.py).
    egress_private: bool = False
    # Secrets by name (values stay on the host; never journaled).
    secrets: dict[str, str] = field(default_factory=dict)
    # Per-instance memory cap; None means the engine's default.
    memory_bytes: Optional[int] = None
    # Upper bound on any step's per-attempt timeout (a longer one asked for is cut to it).
    max_step_timeout_ms: Optional[int] = None
    # The tenant's quota of unfinished instances; None means the engine's default
    # (`Limits.max_unfinished_instances_per_tenant`): a platform's plans differ per tenant.
    max_unfinished_instances: Optional[int] = None
    # How long the tenant's finished instances are kept (ms); None means the engine's
    # `retention_days` (which may be off: kept until deleted).
    retention_ms: Optional[int] = None
    # Outbound HTTP limits.
    http_timeout_ms: int = 30_000
    http_max_response_bytes: int = 10 * 1024 * 1024
    http_max_redirects: int = 5


DEFAULT_POLICY = TenantPolicy()


def quota_of(policy: TenantPolicy, limits: "Limits") -> Optional[int]:
    """A tenant's quota of unfinished instances: its policy's, else the engine's default."""
    return policy.max_unfinished_instances if policy.max_unfinished_instances is not None else limits.max_unfinished_instances_per_tenant
