"""Deleting a tenant with everything it stored: a platform offboarding a customer.

The tenant's door closes first, in one transaction: its deployments, registered versions,
manifest, API keys and name go, so nothing new arrives (no key of its authenticates, and
no workflow of its is deployed to create instances or children of). Its instances then
go a batch per transaction, with their journals, events and logs (the writer serves
other tenants between batches), each cancelled in the scheduler like a single delete.
Last, the component versions no tenant holds any more go with their bytes and compiled
artifacts: the tenant's code is its data too."""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

from . import journal as jn
from .api_models import TenantDeleted
from .errors import TenantNotFound

if TYPE_CHECKING:
    from .engine import Engine

DELETE_BATCH = 500  # instances per transaction, as in the retention sweep


@dataclass
class Closed:
    existed: bool
    deployments: int
    api_keys: int
    digests: list[str]  # the versions it held: garbage once no other tenant holds them


def close_tenant(tenant: str) -> jn.WriteOp[Closed]:
    def op(conn: sqlite3.Connection) -> Closed:
        digests = [str(r[0]) for r in conn.execute("SELECT digest FROM tenant_components WHERE tenant=? ORDER BY digest", (tenant,))]
        conn.execute("DELETE FROM tenant_components WHERE tenant=?", (tenant,))
        deployments = conn.execute("DELETE FROM deployments WHERE tenant=?", (tenant,)).rowcount
        keys = conn.execute("DELETE FROM api_keys WHERE tenant=?", (tenant,)).rowcount
        manifests = conn.execute("DELETE FROM tenant_manifests WHERE tenant=?", (tenant,)).rowcount
        named = conn.execute("DELETE FROM tenants WHERE name=?", (tenant,)).rowcount
        has_instances = conn.execute("SELECT 1 FROM instances WHERE tenant=? LIMIT 1", (tenant,)).fetchone() is not None
        existed = bool(digests or deployments or keys or manifests or named or has_instances)
        return Closed(existed, deployments, keys, digests)

    return op


def delete_instances_of(tenant: str, limit: int) -> jn.WriteOp[list[tuple[int, str]]]:
    """Up to `limit` of the tenant's instances, with what they recorded: (pk, status) of
    each. The last batch drops the tenant's usage row too (its count is zero by then)."""

    def op(conn: sqlite3.Connection) -> list[tuple[int, str]]:
        rows = [(int(r[0]), str(r[1])) for r in conn.execute(
            "SELECT pk, status FROM instances WHERE tenant=? ORDER BY pk LIMIT ?", (tenant, limit))]
        if rows:
            jn.delete_rows(conn, [pk for pk, _ in rows])
        if len(rows) < limit:
            conn.execute("DELETE FROM tenant_usage WHERE tenant=?", (tenant,))
        return rows

    return op


def drop_unheld_components(digests: list[str], remove_files: Callable[[str], None]) -> jn.WriteOp[list[str]]:
    """Delete the components among `digests` that no tenant holds, with their files. The
    files go inside the transaction: a tenant registering the same bytes commits after it
    and then finds them gone and writes them again (`Engine._register`)."""

    def op(conn: sqlite3.Connection) -> list[str]:
        dropped = []
        for digest in digests:
            if conn.execute("SELECT 1 FROM tenant_components WHERE digest=? LIMIT 1", (digest,)).fetchone() is not None:
                continue
            conn.execute("DELETE FROM components WHERE digest=?", (digest,))
            remove_files(digest)
            dropped.append(digest)
        return dropped

    return op


async def delete_tenant(engine: "Engine", tenant: str) -> TenantDeleted:
    closed = await engine.write(close_tenant(tenant))
    if not closed.existed:
        raise TenantNotFound(tenant)
    engine.forget_policy(tenant)
    instances = 0
    while True:
        batch = await engine.write(delete_instances_of(tenant, DELETE_BATCH))
        for pk, status in batch:  # stop what runs, forget what waits
            engine._after_control(jn.ControlResult(pk, tenant, "deleted", status))
        instances += len(batch)
        if len(batch) < DELETE_BATCH:
            break
    dropped = await engine.write(drop_unheld_components(closed.digests, engine.remove_component_files))
    for digest in dropped:
        engine.isolates.evict(digest)
        if engine.runners is not None:
            engine.runners.evict(digest)
    return TenantDeleted(name=tenant, instances=instances, deployments=closed.deployments, api_keys=closed.api_keys, components=len(dropped))
