"""Tenant manifests: `tenants/<tenant>/tenant.toml`, what a tenant deploys and may use.

    tenant = "acme"
    source = "workflow.py"            # relative to the manifest's folder
    description = "Order approval"

    [egress]
    allow = ["api.stripe.com", "*.acme.example", "127.0.0.1:8080"]
    private = false                   # may allowed names resolve to private addresses?

    [secrets]                         # name the guest asks for = where the host reads it
    STRIPE_KEY = "env:ACME_STRIPE_KEY"
    SIGNING_KEY = "file:/run/secrets/acme-signing-key"
    TEST_TOKEN = "literal:not-a-real-secret"

    [limits]
    memory_mib = 256
    step_timeout_max_seconds = 300
    unfinished_instances_max = 100000  # the tenant's quota (default: the engine's)
    retention_days = 30                # how long its finished instances are kept (default: the engine's)
    http_timeout_seconds = 30
    http_max_response_mib = 10
    http_max_redirects = 5

Validated with pydantic; unknown keys are refused, and every error names the file, the
key and what is wrong. Secret values are read only by `to_policy()`, on the host.
"""

from __future__ import annotations

import os
import re
import tomllib
from pathlib import Path
from typing import Annotated, Any, Mapping, Optional

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from .egress import AllowEntry
from .errors import InvalidInput
from .limits import DAY_MS, TENANT, MiB
from .policy import TenantPolicy

SECRET_SOURCES = ("env:", "file:", "literal:")
_SECRET_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_\-.]{0,127}$")


class ManifestError(InvalidInput):
    """A manifest that cannot be used; the message names the file and the key."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Egress(_Strict):
    allow: tuple[str, ...] = ()
    private: bool = False  # allowed names may resolve to loopback/private addresses (egress.py)

    @field_validator("allow")
    @classmethod
    def _patterns(cls, entries: tuple[str, ...]) -> tuple[str, ...]:
        problems = []
        for index, entry in enumerate(entries):
            try:
                AllowEntry.parse(entry)
            except ValueError as exc:
                problems.append(f"entry {index}: {exc}")
        if problems:
            raise ValueError("; ".join(problems))
        return entries


class Limits(_Strict):
    memory_mib: Optional[Annotated[int, Field(gt=0, le=4096)]] = None
    step_timeout_max_seconds: Optional[Annotated[float, Field(gt=0)]] = None
    unfinished_instances_max: Optional[Annotated[int, Field(gt=0)]] = None
    retention_days: Optional[Annotated[float, Field(gt=0, le=36500)]] = None
    http_timeout_seconds: Annotated[float, Field(gt=0, le=600)] = 30
    http_max_response_mib: Annotated[float, Field(gt=0, le=1024)] = 10
    http_max_redirects: Annotated[int, Field(ge=0, le=20)] = 5


class TenantManifest(_Strict):
    tenant: str
    source: str
    description: str = ""
    egress: Egress = Egress()
    secrets: dict[str, str] = {}
    limits: Limits = Limits()
    # Where the manifest was read from (not a TOML key): `source` is relative to it.
    folder: Path = Field(default=Path("."), exclude=True)

    @field_validator("tenant")
    @classmethod
    def _tenant_name(cls, tenant: str) -> str:
        if not TENANT.fullmatch(tenant):
            raise ValueError(f"invalid tenant name {tenant!r}: 1 to 63 lowercase letters, digits, '-' and '_', starting with a letter or digit")
        return tenant

    @field_validator("source")
    @classmethod
    def _python_file(cls, source: str) -> str:
        if not source.endswith(".py"):
            raise ValueError(f"must name a Python file (*.py), got {source!r}")
        if Path(source).is_absolute() or ".." in Path(source).parts:
            raise ValueError(f"must be a path inside the tenant's folder, got {source!r}")
        return source

    @field_validator("secrets")
    @classmethod
    def _sources(cls, secrets: dict[str, str]) -> dict[str, str]:
        problems = []
        for name, where in secrets.items():
            if not _SECRET_NAME.match(name):
                problems.append(f"invalid secret name {name!r} (letters, digits, '_', '-' and '.', starting with a letter or '_')")
            if not where.startswith(SECRET_SOURCES) or where in SECRET_SOURCES[:2]:
                problems.append(f"secret {name!r}: the value must be 'env:VARIABLE', 'file:PATH' or 'literal:VALUE', got {_redact(where)!r}")
        if problems:
            raise ValueError("; ".join(problems))
        return secrets

    @property
    def source_path(self) -> Path:
        return self.folder / self.source

    def to_policy(self, environ: Optional[Mapping[str, str]] = None) -> TenantPolicy:
        """The engine policy, with secret values read now (env from `environ`, default os.environ)."""
        env = os.environ if environ is None else environ
        values = {name: self._read_secret(name, where, env) for name, where in self.secrets.items()}
        lim = self.limits
        return TenantPolicy(
            egress=self.egress.allow,
            egress_private=self.egress.private,
            secrets=values,
            memory_bytes=lim.memory_mib * MiB if lim.memory_mib is not None else None,
            max_step_timeout_ms=int(lim.step_timeout_max_seconds * 1000) if lim.step_timeout_max_seconds is not None else None,
            max_unfinished_instances=lim.unfinished_instances_max,
            retention_ms=round(lim.retention_days * DAY_MS) if lim.retention_days is not None else None,
            http_timeout_ms=int(lim.http_timeout_seconds * 1000),
            http_max_response_bytes=int(lim.http_max_response_mib * MiB),
            http_max_redirects=lim.http_max_redirects,
        )

    def _read_secret(self, name: str, where: str, env: Mapping[str, str]) -> str:
        kind, _, ref = where.partition(":")
        if kind == "literal":
            return ref
        if kind == "env":
            if ref not in env:
                raise ManifestError(f"tenant {self.tenant!r}: secret {name!r} reads environment variable {ref}, which is not set")
            return env[ref]
        path = Path(ref) if Path(ref).is_absolute() else self.folder / ref
        try:
            return path.read_text().rstrip("\r\n")
        except OSError as exc:
            raise ManifestError(f"tenant {self.tenant!r}: secret {name!r} reads {path}: {exc.strerror or exc}") from None


def _redact(where: str) -> str:
    return where if len(where) <= 8 else where[:6] + "…"


def _location(loc: tuple[Any, ...]) -> str:
    return ".".join(str(part) for part in loc) or "(top level)"


def _describe(error: Any) -> str:
    where = _location(tuple(error["loc"]))
    if error["type"] == "extra_forbidden":
        return f"{where}: unknown key"
    if error["type"] == "missing":
        return f"{where}: required key is missing"
    message = str(error["msg"]).removeprefix("Value error, ")
    return f"{where}: {message}"


def parse_manifest(data: dict[str, Any], path: Path) -> TenantManifest:
    """Validate decoded TOML; ManifestError lists every problem with its key."""
    if "folder" in data:
        raise ManifestError(f"{path}: folder: unknown key")
    try:
        return TenantManifest.model_validate({**data, "folder": path.parent})
    except ValidationError as exc:
        problems = "; ".join(_describe(e) for e in exc.errors())
        raise ManifestError(f"{path}: {problems}") from None


def load_manifest(path: str | os.PathLike[str]) -> TenantManifest:
    """Read and validate a tenant manifest (its workflow source must exist)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ManifestError(f"{path}: cannot read the manifest: {exc.strerror or exc}") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ManifestError(f"{path}: invalid TOML: {exc}") from None
    manifest = parse_manifest(data, path)
    if not manifest.source_path.is_file():
        raise ManifestError(f"{path}: source: {manifest.source!r} does not exist in {path.parent}")
    return manifest
