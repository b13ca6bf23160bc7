"""Deleting a tenant with everything it stored: a platform offboarding a customer.

The tenant's door closes first, in one transaction: its deployments, manifest, API keys
and name go, so nothing new arrives (no key of its authenticates, and no workflow of its
is deployed to create instances or children of). Its instances then go a batch per
transaction, with their journals, events and logs (the writer serves other tenants
between batches), each cancelled in the scheduler like a single delete. Last, in one
transaction, its hold on component versions goes, and the versions no tenant holds any
more go with their bytes and compiled artifacts: the tenant's code is its data too.

Interrupted (a crash, a cancelled request), a deletion is finished by asking again: what
is left of the tenant (instances, versions held) still makes it exist."""

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


def close_tenant(tenant: str) -> jn.WriteOp[Closed]:
    def op(conn: sqlite3.Connection) -> Closed:
        holds = conn.execute("SELECT 1 FROM tenant_components WHERE tenant=? LIMIT 1", (tenant,)).fetchone() is not None
        deployments = conn.execute("DELETE FROM deployments WHERE tenant=?", (tenant,)).rowcount
        keys = conn.execute("DELETE FROM api_keys WHERE tenant=?", (tenant,)).rowcount
        manifests = conn.execute("DELETE FROM tenant_manifests WHERE tenant=?", (tenant,)).rowcount
        named = conn.execute("DELETE FROM tenants WHERE name=?", (tenant,)).rowcount
        has_instances = conn.execute("SELECT 1 FROM instances WHERE tenant=? LIMIT 1", (tenant,)).fetchone() is not None
        existed = bool(holds or deployments or keys or manifests or named or has_instances)
        return Closed(existed, deployments, keys)

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


def release_components(tenant: str, remove_files: Callable[[str], None]) -> jn.WriteOp[list[str]]:
    """Drop the tenant's hold on its component versions and delete those no tenant holds
    then, with their files; the digests deleted. The files go inside the transaction: a
    tenant registering the same bytes commits after it and then finds them gone and writes
    them again (`Engine._register`)."""

    def op(conn: sqlite3.Connection) -> list[str]:
        digests = [str(r[0]) for r in conn.execute("SELECT digest FROM tenant_components WHERE tenant=? ORDER BY digest", (tenant,))]
        conn.execute("DELETE FROM tenant_components WHERE tenant=?", (tenant,))
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
    dropped = await engine.write(release_components(tenant, engine.remove_component_files))
    for digest in dropped:
        engine.isolates.evict(digest)
        if engine.runners is not None:
            engine.runners.evict(digest)
    return TenantDeleted(name=tenant, instances=instances, deployments=closed.deployments, api_keys=closed.api_keys, components=len(dropped))
