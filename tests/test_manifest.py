"""Tenant manifests (`tenants/<tenant>/tenant.toml`): validation with precise errors, and
the policy they grant."""

from __future__ import annotations

from pathlib import Path

import pytest
from enginekit import REPO

from tenantflow.limits import MiB
from tenantflow.manifest import ManifestError, load_manifest


def write(folder: Path, text: str, source: str | None = "workflow.py") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    if source:
        (folder / source).write_text("# a workflow\n")
    path = folder / "tenant.toml"
    path.write_text(text)
    return path


def test_the_example_tenant_manifest_is_valid() -> None:
    manifest = load_manifest(REPO / "tenants" / "acme" / "tenant.toml")
    assert manifest.tenant == "acme" and manifest.source_path == REPO / "tenants" / "acme" / "workflow.py"
    policy = manifest.to_policy({"ACME_STRIPE_API_KEY": "sk_live_x", "ACME_SLACK_WEBHOOK_URL": "https://hooks.slack.com/x"})
    assert "api.stripe.com" in policy.egress and policy.secrets["STRIPE_API_KEY"] == "sk_live_x"
    assert (policy.memory_bytes, policy.max_step_timeout_ms, policy.http_timeout_ms) == (256 * MiB, 300_000, 20_000)


def test_a_full_manifest_becomes_a_policy(tmp_path: Path) -> None:
    (tmp_path / "t" / "keys").mkdir(parents=True)
    (tmp_path / "t" / "keys" / "signing").write_text("from-a-file\n")
    path = write(tmp_path / "t", """
tenant = "shop-2"
source = "flows.py"
description = "a shop"

[egress]
allow = ["api.example.com", "*.example.org:8443", "127.0.0.1:9000"]
private = true

[secrets]
TOKEN = "env:SHOP_TOKEN"
SIGNING = "file:keys/signing"
TEST = "literal:plain-value"

[limits]
memory_mib = 128
step_timeout_max_seconds = 1.5
unfinished_instances_max = 500
retention_days = 7.5
http_timeout_seconds = 10
http_max_response_mib = 0.5
http_max_redirects = 0
""", source="flows.py")
    policy = load_manifest(path).to_policy({"SHOP_TOKEN": "t0k"})
    assert policy.egress == ("api.example.com", "*.example.org:8443", "127.0.0.1:9000") and policy.egress_private
    assert policy.secrets == {"TOKEN": "t0k", "SIGNING": "from-a-file", "TEST": "plain-value"}
    assert (policy.memory_bytes, policy.max_step_timeout_ms, policy.http_timeout_ms) == (128 * MiB, 1500, 10_000)
    assert (policy.http_max_response_bytes, policy.http_max_redirects, policy.max_unfinished_instances) == (MiB // 2, 0, 500)
    assert policy.retention_ms == 7.5 * 86_400_000


def test_minimal_manifest_grants_nothing(tmp_path: Path) -> None:
    policy = load_manifest(write(tmp_path / "t", 'tenant = "t"\nsource = "workflow.py"\n')).to_policy({})
    assert (policy.egress, policy.egress_private, policy.secrets, policy.memory_bytes, policy.max_unfinished_instances) == ((), False, {}, None, None)
    assert policy.retention_ms is None


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ('tenant = "t"\nsource = "workflow.py"\ncolour = "blue"\n', "colour: unknown key"),
        ('tenant = "t"\nsource = "workflow.py"\n[limits]\nmemory_gb = 1\n', "limits.memory_gb: unknown key"),
        ('tenant = "t"\nsource = "workflow.py"\n[limits]\nmemory_mib = 0\n', "limits.memory_mib: Input should be greater than 0"),
        ('tenant = "t"\nsource = "workflow.py"\n[limits]\nmemory_mib = "lots"\n', "limits.memory_mib: Input should be a valid integer"),
        ('tenant = "t"\nsource = "workflow.py"\n[limits]\nunfinished_instances_max = 0\n', "limits.unfinished_instances_max: Input should be greater than 0"),
        ('tenant = "t"\nsource = "workflow.py"\n[limits]\nretention_days = 0\n', "limits.retention_days: Input should be greater than 0"),
        ('source = "workflow.py"\n', "tenant: required key is missing"),
        ('tenant = "Big Corp"\nsource = "workflow.py"\n', "tenant: invalid tenant name 'Big Corp'"),
        ('tenant = "t"\nsource = "../../etc/passwd.py"\n', "source: must be a path inside the tenant's folder"),
        ('tenant = "t"\nsource = "workflow.js"\n', "source: must name a Python file (*.py)"),
        ('tenant = "t"\nsource = "workflow.py"\n[egress]\nallow = ["https://x.com"]\n', "egress.allow: entry 0: 'https://x.com' is not a host pattern"),
        ('tenant = "t"\nsource = "workflow.py"\n[egress]\nallow = "x.com"\n', "egress.allow: Input should be a valid tuple"),
        ('tenant = "t"\nsource = "workflow.py"\n[secrets]\nKEY = "hunter2-value"\n', "secrets: secret 'KEY': the value must be 'env:VARIABLE', 'file:PATH' or 'literal:VALUE', got 'hunter…'"),
        ('tenant = "t"\nsource = "workflow.py"\n[secrets]\n"bad name" = "env:X"\n', "secrets: invalid secret name 'bad name'"),
        ('tenant = "t"\nsource = "workflow.py"\nfolder = "/"\n', "folder: unknown key"),
        ('tenant = "t"\nsource = "workflow.py\n', "invalid TOML: "),
    ],
)
def test_invalid_manifests_get_precise_errors(tmp_path: Path, text: str, problem: str) -> None:
    path = write(tmp_path / "t", text)
    with pytest.raises(ManifestError) as info:
        load_manifest(path)
    assert str(info.value).startswith(f"{path}: ") and problem in str(info.value)


def test_every_problem_is_reported_at_once(tmp_path: Path) -> None:
    path = write(tmp_path / "t", 'tenant = "T"\nsource = "x"\nextra = 1\n[limits]\nhttp_max_redirects = 99\n')
    with pytest.raises(ManifestError) as info:
        load_manifest(path)
    message = str(info.value)
    for key in ("tenant:", "source:", "extra: unknown key", "limits.http_max_redirects: Input should be less than or equal to 20"):
        assert key in message


def test_missing_files_and_secrets_are_named(tmp_path: Path) -> None:
    with pytest.raises(ManifestError, match="cannot read the manifest"):
        load_manifest(tmp_path / "nope" / "tenant.toml")
    path = write(tmp_path / "t", 'tenant = "t"\nsource = "flows.py"\n', source=None)
    with pytest.raises(ManifestError, match=r"source: 'flows.py' does not exist in "):
        load_manifest(path)
    path = write(tmp_path / "u", 'tenant = "u"\nsource = "workflow.py"\n[secrets]\nA = "env:NOT_SET_ANYWHERE"\nB = "file:missing.txt"\n')
    manifest = load_manifest(path)
    with pytest.raises(ManifestError, match="secret 'A' reads environment variable NOT_SET_ANYWHERE, which is not set"):
        manifest.to_policy({})
    with pytest.raises(ManifestError, match=r"secret 'B' reads .*missing.txt: No such file or directory"):
        manifest.to_policy({"NOT_SET_ANYWHERE": "x"})
