"""Authorization: who may do what to which tenant. A layer of its own.

The HTTP API authenticates every request (a bearer token -> a `Principal`) and then asks
the `Authorizer` before each operation with (principal, action, tenant, instance id).
Nothing here reads an instance's envelope: routing data never grants access.

The default `ApiKeyAuthorizer` keeps API keys in the engine's database, each mapped to a
tenant and a role. A token is `tf_<key id>_<secret>` where the secret is 32 random bytes;
only the sha256 of the token is stored and it is compared in constant time.
"""

from __future__ import annotations

import base64
import enum
import hashlib
import hmac
import re
import secrets
import sqlite3
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Optional, Protocol, Sequence

from . import journal as jn
from .api_models import IssuedKeyInfo, KeyInfo, TenantDeleted, TenantInfo
from .errors import Forbidden, InvalidInput, TenantflowError, Unauthenticated
from .limits import check_tenant
from .models import ts

if TYPE_CHECKING:
    from .engine import Engine


class Action(str, enum.Enum):
    CREATE = "create"  # create instances
    READ = "read"  # status, list, logs, workflows
    CONTROL = "control"  # pause, resume, terminate, restart, delete
    SEND_EVENT = "send_event"
    DEPLOY = "deploy"  # register component versions
    ADMIN = "admin"  # platform operations (metrics, tenants, keys)


class Role(str, enum.Enum):
    TENANT_DEVELOPER = "tenant-developer"
    TENANT_READONLY = "tenant-readonly"
    PLATFORM_ADMIN = "platform-admin"


ROLE_ACTIONS: dict[Role, frozenset[Action]] = {
    Role.TENANT_DEVELOPER: frozenset(Action) - {Action.ADMIN},
    Role.TENANT_READONLY: frozenset({Action.READ}),
    Role.PLATFORM_ADMIN: frozenset(Action),
}


@dataclass(frozen=True)
class Principal:
    """An authenticated caller. `tenant` is None for principals not bound to one tenant."""

    subject: str
    role: Role
    tenant: Optional[str] = None


class Authorizer(Protocol):
    async def authenticate(self, token: Optional[str]) -> Principal:
        """The principal a bearer token stands for; raise `Unauthenticated` if none."""

    async def authorize(self, principal: Principal, action: Action, tenant: str, instance_id: Optional[str]) -> None:
        """Return if allowed, raise `Forbidden` if not. Must not consult instance data."""


def role_allows(principal: Principal, action: Action, tenant: str) -> bool:
    """The role table: platform admins anywhere, tenant roles on their own tenant only."""
    if principal.role is not Role.PLATFORM_ADMIN and principal.tenant != tenant:
        return False
    return action in ROLE_ACTIONS[principal.role]


def check_role(principal: Principal, action: Action, tenant: str) -> None:
    if not role_allows(principal, action, tenant):
        # The same message whether or not the tenant (or any instance) exists.
        raise Forbidden(f"{principal.role.value} key {principal.subject} may not {action.value} on tenant {tenant!r}")


# ---- API keys in the engine's database -------------------------------------------------

TOKEN = re.compile(r"tf_([0-9a-f]{12})_[A-Za-z0-9_\-]{43}")


class TenantExists(TenantflowError):
    code = "already_exists"


class KeyNotFound(TenantflowError, LookupError):
    code = "not_found"


@dataclass(frozen=True)
class ApiKey:
    id: str
    tenant: Optional[str]
    role: Role
    description: str
    created_at: int
    revoked_at: Optional[int]


@dataclass(frozen=True)
class IssuedKey:
    key: ApiKey
    token: str  # shown once: only its hash is stored


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def new_token() -> tuple[str, str]:
    key_id = secrets.token_hex(6)
    secret = base64.urlsafe_b64encode(secrets.token_bytes(32)).decode().rstrip("=")
    return key_id, f"tf_{key_id}_{secret}"


def _key(row: Sequence[Any]) -> ApiKey:
    return ApiKey(row[0], row[1], Role(row[2]), row[3], row[4], row[5])


KEY_COLUMNS = "id, tenant, role, description, created_at, revoked_at"


def key_with_hash_query(key_id: str) -> jn.Query[Optional[tuple[ApiKey, str]]]:
    return jn.Query(
        f"SELECT {KEY_COLUMNS}, token_sha256 FROM api_keys WHERE id=?",
        (key_id,),
        lambda rows: (_key(rows[0]), str(rows[0][-1])) if rows else None,
    )


def keys_query(tenant: Optional[str] = None) -> jn.Query[list[ApiKey]]:
    where, params = ("WHERE tenant=?", (tenant,)) if tenant is not None else ("", ())
    return jn.Query(f"SELECT {KEY_COLUMNS} FROM api_keys {where} ORDER BY created_at, id", params, lambda rows: [_key(r) for r in rows])


def tenants_query() -> jn.Query[list[tuple[str, int, int]]]:
    """Each tenant with when it was created and its unfinished instances."""
    return jn.Query(
        "SELECT t.name, t.created_at, COALESCE(u.unfinished, 0) FROM tenants t LEFT JOIN tenant_usage u ON u.tenant = t.name ORDER BY t.name",
        (), lambda rows: [(str(r[0]), int(r[1]), int(r[2])) for r in rows],
    )


def create_tenant(name: str, now: int) -> Callable[[sqlite3.Connection], None]:
    check_tenant(name)

    def op(conn: sqlite3.Connection) -> None:
        try:
            conn.execute("INSERT INTO tenants (name, created_at) VALUES (?, ?)", (name, now))
        except sqlite3.IntegrityError:
            raise TenantExists(f"tenant {name!r} already exists") from None

    return op


def issue_key(tenant: Optional[str], role: Role, now: int, description: str = "") -> Callable[[sqlite3.Connection], IssuedKey]:
    """A new key for `tenant` (which must exist), or a platform-admin key (no tenant)."""
    if role is Role.PLATFORM_ADMIN:
        if tenant is not None:
            raise InvalidInput("platform-admin keys are not bound to a tenant; leave the tenant out")
    elif tenant is None:
        raise InvalidInput(f"a {role.value} key needs a tenant")
    else:
        check_tenant(tenant)

    def op(conn: sqlite3.Connection) -> IssuedKey:
        if tenant is not None and conn.execute("SELECT 1 FROM tenants WHERE name=?", (tenant,)).fetchone() is None:
            raise InvalidInput(f"tenant {tenant!r} does not exist; create it first (`tenantflow tenants create {tenant}`)")
        key_id, token = new_token()
        conn.execute(
            "INSERT INTO api_keys (id, tenant, role, token_sha256, description, created_at) VALUES (?, ?, ?, ?, ?, ?)",
            (key_id, tenant, role.value, hash_token(token), description, now),
        )
        return IssuedKey(ApiKey(key_id, tenant, role, description, now, None), token)

    return op


def revoke_key(key_id: str, now: int) -> Callable[[sqlite3.Connection], ApiKey]:
    def op(conn: sqlite3.Connection) -> ApiKey:
        conn.execute("UPDATE api_keys SET revoked_at=COALESCE(revoked_at, ?) WHERE id=?", (now, key_id))
        row = conn.execute(f"SELECT {KEY_COLUMNS} FROM api_keys WHERE id=?", (key_id,)).fetchone()
        if row is None:
            raise KeyNotFound(f"no API key {key_id!r}")
        return _key(row)

    return op


def key_info(key: ApiKey) -> KeyInfo:
    return KeyInfo(id=key.id, tenant=key.tenant, role=key.role.value, description=key.description,
                   created_at=ts(key.created_at), revoked_at=ts(key.revoked_at))  # type: ignore[arg-type]


class KeyAdmin:
    """Tenants and API keys in the engine's database, as the CLI (`--db`) and the API's
    admin routes manage them; `client.ApiClient` offers the same calls over HTTP."""

    def __init__(self, engine: "Engine") -> None:
        self.engine = engine

    async def create_tenant(self, name: str) -> TenantInfo:
        now = self.engine.now()
        await self.engine.write(create_tenant(name, now))
        return TenantInfo(name=name, created_at=ts(now), quota=self.engine.quota_for(name))  # type: ignore[arg-type]

    async def tenants(self) -> list[TenantInfo]:
        return [
            TenantInfo(name=name, created_at=ts(at), unfinished_instances=unfinished, quota=self.engine.quota_for(name))  # type: ignore[arg-type]
            for name, at, unfinished in await self.engine.read(tenants_query())
        ]

    async def delete_tenant(self, name: str) -> TenantDeleted:
        """The tenant and everything it stored (`Engine.delete_tenant`)."""
        return await self.engine.delete_tenant(name)

    async def issue_key(self, tenant: Optional[str], role: str, description: str = "") -> IssuedKeyInfo:
        try:
            chosen = Role(role)
        except ValueError:
            raise InvalidInput(f"unknown role {role!r}; one of {', '.join(r.value for r in Role)}") from None
        issued = await self.engine.write(issue_key(tenant, chosen, self.engine.now(), description))
        return IssuedKeyInfo(key=key_info(issued.key), token=issued.token)

    async def keys(self, tenant: Optional[str] = None) -> list[KeyInfo]:
        return [key_info(k) for k in await self.engine.read(keys_query(tenant))]

    async def revoke_key(self, key_id: str) -> KeyInfo:
        return key_info(await self.engine.write(revoke_key(key_id, self.engine.now())))


class ApiKeyAuthorizer:
    """Bearer API keys stored (hashed) in the engine's database, mapped to tenant and role.

    Every request reads the key's row, so a revocation takes effect on the next request."""

    def __init__(self, engine: "Engine") -> None:
        self.engine = engine

    async def authenticate(self, token: Optional[str]) -> Principal:
        if not token:
            raise Unauthenticated("missing API key: send `Authorization: Bearer <key>`")
        match = TOKEN.fullmatch(token)
        found = await self.engine.read(key_with_hash_query(match.group(1))) if match else None
        # Compare even when nothing was found, so both failures cost the same.
        expected = found[1] if found else "0" * 64
        matches = hmac.compare_digest(hash_token(token), expected)
        if found is None or not matches or found[0].revoked_at is not None:
            raise Unauthenticated("invalid or revoked API key")
        key = found[0]
        return Principal(subject=key.id, role=key.role, tenant=key.tenant)

    async def authorize(self, principal: Principal, action: Action, tenant: str, instance_id: Optional[str]) -> None:
        check_role(principal, action, tenant)
