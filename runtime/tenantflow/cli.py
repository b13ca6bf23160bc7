"""The `tenantflow` command line."""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
from pathlib import Path
from typing import Any, Awaitable, Callable, Optional

import click
from rich.console import Console

from . import __version__


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, "--version", prog_name="tenantflow")
def main() -> None:
    """tenantflow: durable workflows from tenant code, run in a WebAssembly sandbox."""


def _fail(message: str) -> None:
    click.echo(f"error: {message}", err=True)
    sys.exit(1)


@main.command("compile")
@click.argument("source", type=click.Path(path_type=Path, dir_okay=False))
@click.option(
    "-o",
    "--output",
    type=click.Path(path_type=Path, dir_okay=False),
    default=None,
    help="Where to write the component (default: <source stem>.wasm next to the source).",
)
@click.option("-q", "--quiet", is_flag=True, help="Print no progress, only the result.")
def compile_command(source: Path, output: Path | None, quiet: bool) -> None:
    """Compile a Python workflow module (and its sibling modules) into a component."""
    from .compiler import CompileError, compile_workflow

    target = output if output is not None else source.with_suffix(".wasm")
    console = Console(stderr=True, highlight=False)
    live = console.is_terminal and not quiet

    try:
        with console.status("compiling", spinner="dots") if live else contextlib.nullcontext() as status:

            def progress(message: str) -> None:
                if quiet:
                    return
                if status is not None:
                    status.update(message.split("] ", 1)[-1])
                    console.print(message, markup=False)
                else:
                    click.echo(message, err=True)

            result = compile_workflow(source, target, progress=progress)
    except CompileError as exc:
        _fail(str(exc))
        return
    click.echo(f"wrote {result.output}")
    click.echo(f"size: {result.size_bytes / 1_000_000:.1f} MB ({result.size_bytes} bytes)")
    click.echo(f"digest: sha256:{result.digest}")
    click.echo(f"workflows: {', '.join(result.workflows)}")


DB_OPTION = click.option(
    "--db",
    type=click.Path(path_type=Path, dir_okay=False),
    default=Path("tenantflow.db"),
    show_default=True,
    envvar="TENANTFLOW_DB",
    help="SQLite database file (created on first use).",
)
TENANT_OPTION = click.option("--tenant", default="default", show_default=True, envvar="TENANTFLOW_TENANT", help="Tenant that owns the instances.")


def _remember(ctx: click.Context, param: click.Parameter, value: Any) -> Any:
    ctx.meta[f"tenantflow.{param.name}"] = value
    return value


def REMOTE_OPTIONS(f: Callable[..., Any]) -> Callable[..., Any]:
    """--url/--api-key: talk to a tenantflow server instead of opening --db (see _binding_call)."""
    f = click.option("--api-key", envvar="TENANTFLOW_API_KEY", default=None, expose_value=False, callback=_remember,
                     help="API key for --url (or TENANTFLOW_API_KEY).")(f)
    return click.option("--url", envvar="TENANTFLOW_URL", default=None, expose_value=False, callback=_remember,
                        help="Use the tenantflow server at this URL instead of --db (or TENANTFLOW_URL).")(f)


def _json_arg(text: str, what: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise click.BadParameter(f"{what} is not valid JSON: {exc}") from None


def _run_async(coro: Any) -> Any:
    from .errors import TenantflowError

    try:
        return asyncio.run(coro)
    except TenantflowError as exc:
        _fail(str(exc))
    except KeyboardInterrupt:
        click.echo("interrupted: the instance stays in the database and continues on the next run", err=True)
        sys.exit(130)


@main.command("run")
@click.argument("component", type=click.Path(path_type=Path, dir_okay=False, exists=True))
@click.option("--workflow", "-w", required=True, help="Workflow name (see `tenantflow compile` output).")
@click.option("--params", "-p", default="null", help="Params as JSON.")
@click.option("--id", "instance_id", default=None, help="Instance id (default: generated).")
@DB_OPTION
@TENANT_OPTION
@click.option("--fast-forward", is_flag=True, help="Skip through sleeps, retry delays and wait timeouts instantly.")
@click.option("--event", "events", multiple=True, metavar="TYPE=JSON", help="Send an event after creating the instance (repeatable).")
@click.option("--json", "as_json", is_flag=True, help="Print the final status as JSON.")
def run_command(
    component: Path, workflow: str, params: str, instance_id: str | None, db: Path, tenant: str,
    fast_forward: bool, events: tuple[str, ...], as_json: bool,
) -> None:
    """Run an instance of a compiled workflow durably on a local SQLite file.

    Shows each step as it completes and prints the output. Exit status 0 when the
    instance completes, 1 when it errs or is terminated, 3 when it is left waiting.
    """
    parsed_params = _json_arg(params, "--params")
    parsed_events = []
    for spec in events:
        event_type, sep, payload = spec.partition("=")
        if not sep:
            raise click.BadParameter(f"--event {spec!r}: use TYPE=JSON")
        parsed_events.append((event_type, _json_arg(payload, f"--event {event_type}")))
    code = _run_async(_run(component, workflow, parsed_params, instance_id, db, tenant, fast_forward, parsed_events, as_json))
    sys.exit(code)


async def _run(
    component: Path, workflow: str, params: Any, instance_id: str | None, db: Path, tenant: str,
    fast_forward: bool, events: list[tuple[str, Any]], as_json: bool,
) -> int:
    from .clock import FastForwardClock, SystemClock
    from .console import make_console, render_describe, step_line
    from .engine import Engine

    console = make_console(stderr=True)
    clock = FastForwardClock() if fast_forward else SystemClock()
    async with Engine(db, clock=clock) as engine:
        console.print(f"loading {component} ...", style="dim")
        info = await engine.deploy(tenant, component.read_bytes())
        binding = engine.tenant(tenant)
        iid = await binding.create(workflow, params, id=instance_id, digest=info.digest)
        console.print(f"instance [bold]{iid}[/] of {workflow} (tenant {tenant}, db {db})")
        for event_type, payload in events:
            await binding.send_event(iid, event_type, payload)
        shown: dict[int, str] = {}
        while True:
            status = await binding.status(iid)
            for step in status.steps:
                if shown.get(step.seq) != step.status and step.status != "running":
                    shown[step.seq] = step.status
                    console.print(step_line(step))
            if status.status in ("complete", "errored", "terminated", "paused"):
                break
            if status.status == "waiting" and not fast_forward and engine.scheduler.idle and status.waiting_for:
                console.print(
                    f"waiting for event {status.waiting_for!r}: send it with "
                    f"`tenantflow instances send-event {iid} {status.waiting_for} JSON --db {db}` (Ctrl-C leaves it waiting durably)",
                    style="cyan",
                )
                while (await binding.status(iid)).status == "waiting":
                    await engine.scheduler.changed(0.5)
            await engine.scheduler.changed(0.1)
        if as_json:
            click.echo(status.model_dump_json(indent=2))
        else:
            render_describe(status, console)
            if status.output is not None:
                click.echo(json.dumps(status.output, indent=2))
        return {"complete": 0, "errored": 1, "terminated": 1}.get(status.status, 3)


@main.group("instances")
def instances() -> None:
    """Inspect and control instances in a local database (--db) or on a server (--url)."""


def _binding_call(db: Path, tenant: str, action: Callable[[Any], Awaitable[Any]]) -> Any:
    from .engine import Engine

    url, api_key = _remote()
    if url:
        return _run_async(_remote_call(url, api_key, tenant, action))
    if not db.exists():
        _fail(f"database {db} does not exist")

    async def go() -> Any:
        # No scheduler: a host (`tenantflow serve` / `run`) owning this file runs the work.
        async with Engine(db, run_scheduler=False) as engine:
            return await action(engine.tenant(tenant))

    return _run_async(go())


@instances.command("list")
@DB_OPTION
@TENANT_OPTION
@REMOTE_OPTIONS
@click.option("--workflow", default=None, help="Only instances of this workflow.")
@click.option("--status", default=None, help="Only instances with this status.")
@click.option("--limit", default=50, show_default=True)
@click.option("--cursor", default=None, help="Continue from a previous page.")
@click.option("--parent", default=None, help="Only the children this instance started.")
@click.option("--json", "as_json", is_flag=True)
def list_command(db: Path, tenant: str, workflow: str | None, status: str | None, limit: int, cursor: str | None, parent: str | None,
                 as_json: bool) -> None:
    """List instances, newest first."""
    from rich.table import Table

    from .console import STATUS_STYLE, make_console

    page = _binding_call(db, tenant, lambda b: b.list(workflow=workflow, status=status, limit=limit, cursor=cursor, parent=parent))
    if as_json:
        click.echo(page.model_dump_json(indent=2))
        return
    table = Table(box=None, header_style="bold")
    for column in ("id", "workflow", "status", "created", "ended"):
        table.add_column(column)
    for item in page.instances:
        table.add_row(item.id, item.workflow, f"[{STATUS_STYLE.get(item.status, '')}]{item.status}[/]",
                      f"{item.created_at:%Y-%m-%d %H:%M:%S}", f"{item.ended_at:%Y-%m-%d %H:%M:%S}" if item.ended_at else "")
    make_console().print(table)
    if page.next_cursor:
        click.echo(f"more: --cursor {page.next_cursor}")


@instances.command("describe")
@click.argument("instance_id")
@DB_OPTION
@TENANT_OPTION
@REMOTE_OPTIONS
@click.option("--json", "as_json", is_flag=True)
@click.option("--logs/--no-logs", default=True, help="Show the instance's log lines.")
@click.option("--steps", "steps_limit", type=click.IntRange(0, 10_000), default=None, help="Show at most this many steps (default: all).")
@click.option("--steps-from", type=click.IntRange(min=0), default=0, help="Start the timeline at the step with this seq.")
@click.option("--log-lines", type=click.IntRange(1, 10_000), default=1000, show_default=True, help="Show at most this many log lines.")
def describe_command(
    instance_id: str, db: Path, tenant: str, as_json: bool, logs: bool, steps_limit: Optional[int], steps_from: int, log_lines: int
) -> None:
    """Show an instance's status and step timeline."""
    from .console import make_console, render_describe

    async def both(b: Any) -> Any:
        status = await b.status(instance_id, steps_limit=steps_limit, steps_from=steps_from)
        return status, (await b.log_page(instance_id, limit=log_lines) if logs or as_json else None)

    status, page = _binding_call(db, tenant, both)
    if as_json:
        data = json.loads(status.model_dump_json())
        data["logs"] = [json.loads(line.model_dump_json()) for line in page.logs]
        data["logs_next_cursor"] = page.next_cursor
        click.echo(json.dumps(data, indent=2))
        return
    console = make_console()
    render_describe(status, console)
    if status.next_steps_from is not None:
        console.print(f"  (more steps follow: --steps-from {status.next_steps_from})", style="dim")
    if page is not None and page.logs:
        console.print("\nlogs:", style="bold")
        for line in page.logs:
            console.print(f"  {line.at:%H:%M:%S} {line.stream:<7} {line.message}", markup=False)
        if page.next_cursor is not None:
            console.print(f"  (the first {len(page.logs)} lines; more follow)", style="dim")
        if status.log_dropped_bytes:
            console.print(f"  ({status.log_dropped_bytes} bytes dropped over the log limit)", style="yellow")


@instances.command("logs")
@click.argument("instance_id")
@DB_OPTION
@TENANT_OPTION
@REMOTE_OPTIONS
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line.")
def logs_command(instance_id: str, db: Path, tenant: str, as_json: bool) -> None:
    """Print every log line of an instance, oldest first (read a page at a time)."""

    async def every_page(b: Any) -> int:
        shown, cursor = 0, None
        while True:
            page = await b.log_page(instance_id, limit=1000, cursor=cursor)
            for line in page.logs:
                click.echo(line.model_dump_json() if as_json else f"{line.at:%Y-%m-%d %H:%M:%S} {line.stream:<7} {line.message}")
            shown += len(page.logs)
            if page.next_cursor is None:
                return shown
            cursor = page.next_cursor

    if not _binding_call(db, tenant, every_page) and not as_json:
        click.echo(f"{instance_id} has no log lines", err=True)


def _control_command(name: str, help_text: str) -> None:
    @instances.command(name, help=help_text)
    @click.argument("instance_id")
    @DB_OPTION
    @TENANT_OPTION
    @REMOTE_OPTIONS
    def command(instance_id: str, db: Path, tenant: str) -> None:
        new_status = _binding_call(db, tenant, lambda b: getattr(b, name)(instance_id))
        click.echo(f"{instance_id}: {new_status}")


_control_command("pause", "Pause an instance (at its next durable call if it is running).")
_control_command("resume", "Resume a paused instance.")
_control_command("terminate", "Terminate an instance wherever it is.")
_control_command("restart", "Clear an instance's journal and run it again with the same params.")


@instances.command("send-event")
@click.argument("instance_id")
@click.argument("event_type")
@click.argument("payload", default="null")
@DB_OPTION
@TENANT_OPTION
@REMOTE_OPTIONS
def send_event_command(instance_id: str, event_type: str, payload: str, db: Path, tenant: str) -> None:
    """Send an event (JSON payload) to an instance."""
    body = _json_arg(payload, "payload")
    _binding_call(db, tenant, lambda b: b.send_event(instance_id, event_type, body))
    click.echo(f"{instance_id}: event {event_type!r} sent")



# ---- against a server (--url), serve, deploy, tenants and keys ------------------------

@instances.command("upgrade")
@click.option("--workflow", "-w", required=True, help="Workflow whose in-flight instances move.")
@click.option("--to", "target", required=True, help="Target code: a digest (sha256:... or hex) or, with --db, a .wasm file (registered first).")
@click.option("--id", "instance_ids", multiple=True, help="Only these instances (repeatable; default: all in flight).")
@click.option("--apply", is_flag=True, help="Switch the instances that replay cleanly (default: dry run).")
@DB_OPTION
@TENANT_OPTION
@REMOTE_OPTIONS
@click.option("--json", "as_json", is_flag=True)
@click.option("--page-size", type=click.IntRange(1, 1000), default=100, show_default=True, help="Instances examined per request.")
def upgrade_command(
    workflow: str, target: str, instance_ids: tuple[str, ...], apply: bool, db: Path, tenant: str, as_json: bool, page_size: int
) -> None:
    """Move in-flight instances to other code, after replaying each journal against it.

    An instance whose recorded calls all match the new code is `compatible` (and
    `upgraded` with --apply); otherwise the first divergence is shown and it is left alone.
    """
    from .engine import Engine

    digest = target.removeprefix("sha256:")

    async def every_page(binding: Any, to: str) -> list[Any]:
        from .models import every_upgrade_page

        examined = 0

        async def page_from(cursor: str | None) -> Any:
            # A page per call (each instance in it is replayed): its lines show as it ends.
            nonlocal examined
            if cursor is not None and not as_json:
                click.echo(f"... {examined} examined so far", err=True)
            page = await binding.upgrade_page(workflow, to, apply=apply, instance_ids=instance_ids or None, limit=page_size, cursor=cursor)
            examined += len(page.results)
            if not as_json:
                for r in page.results:
                    line = f"{r.id}: {r.result} ({r.from_digest[:12]} -> {r.to_digest[:12]})"
                    click.echo(line + (f": {r.divergence}" if r.divergence else ""))
            return page

        return await every_upgrade_page(page_from)

    if target.endswith(".wasm"):
        if _remote()[0]:
            _fail("with --url, --to takes the digest of a component registered there (`tenantflow deploy --url` prints it)")
        if not db.exists():
            _fail(f"database {db} does not exist")

        async def register_and_upgrade() -> Any:
            async with Engine(db, run_scheduler=False) as engine:
                binding = engine.tenant(tenant)
                registered = (await binding.register(Path(target).read_bytes())).digest
                return await every_page(binding, registered)

        results = _run_async(register_and_upgrade())
    else:
        results = _binding_call(db, tenant, lambda b: every_page(b, digest))
    if as_json:
        click.echo(json.dumps([json.loads(r.model_dump_json()) for r in results], indent=2))
        return
    if not results:
        click.echo(f"no in-flight instances of {workflow!r} run other code")
    if not apply and any(r.result == "compatible" for r in results):
        click.echo("dry run: nothing changed; use --apply to switch the compatible instances")
    if any(r.result == "diverged" for r in results):
        sys.exit(1)


def _remote() -> tuple[str | None, str | None]:
    ctx = click.get_current_context(silent=True)
    if ctx is None:
        return None, None
    return ctx.meta.get("tenantflow.url"), ctx.meta.get("tenantflow.api_key")


async def _with_client(url: str, api_key: str | None, op: Callable[[Any], Awaitable[Any]]) -> Any:
    from .client import ApiClient

    async with ApiClient(url, api_key) as client:
        return await op(client)


async def _remote_call(url: str, api_key: str | None, tenant: str, action: Callable[[Any], Awaitable[Any]]) -> Any:
    return await _with_client(url, api_key, lambda client: action(client.tenant(tenant)))


def _open_engine(db: Path) -> Any:
    from .engine import Engine

    return Engine(db, run_scheduler=False)


@main.command("serve")
@DB_OPTION
@click.option("--host", default="127.0.0.1", show_default=True, help="Interface to listen on.")
@click.option("--port", default=8080, show_default=True, type=int)
@click.option("--workers", default=4, show_default=True, type=int, help="Invocations running at once.")
@click.option("--processes", default=0, show_default=True, type=click.IntRange(min=0),
              help="Runner processes the invocations run in, one per core (0: this process's threads).")
@click.option("--log-format", type=click.Choice(["json", "text"]), default="json", show_default=True, help="JSON lines or key=value lines.")
@click.option("--log-level", type=click.Choice(["debug", "info", "warning", "error"]), default="info", show_default=True)
@click.option("--artifact-dir", type=click.Path(path_type=Path, file_okay=False), default=None,
              help="Precompiled component cache (default: ~/.cache/tenantflow/artifacts or $TENANTFLOW_CACHE_DIR).")
@click.option("--public-metrics", is_flag=True, help="Serve /metrics without a platform-admin key.")
@click.option("--grace-seconds", default=10.0, show_default=True, help="How long open requests may take to finish on shutdown.")
@click.option("--retention-days", type=click.FloatRange(min=0, min_open=True), default=None,
              help="Delete finished instances (with their journal and logs) this many days after they end (default: keep them).")
def serve_command(
    db: Path, host: str, port: int, workers: int, processes: int, log_format: str, log_level: str, artifact_dir: Path | None,
    public_metrics: bool, grace_seconds: float, retention_days: float | None,
) -> None:
    """Run the scheduler and the HTTP API on one database until SIGTERM.

    Instances continue where they left off when it starts again. API keys come from the
    same database: see `tenantflow tenants create` and `tenantflow keys issue`.
    """
    from .serve import serve

    sys.exit(serve(db, host=host, port=port, workers=workers, processes=processes, log_format=log_format, log_level=log_level,  # type: ignore[arg-type]
                   artifact_dir=artifact_dir, public_metrics=public_metrics, grace_seconds=grace_seconds, retention_days=retention_days))


def _component_source(path: Path) -> tuple[Path, Any]:
    """(file to deploy, the tenant manifest if any): a .wasm, a .py, or a tenant folder."""
    from .errors import TenantflowError
    from .manifest import load_manifest

    if path.is_dir():
        if (path / "tenant.toml").is_file():
            try:
                manifest = load_manifest(path / "tenant.toml")
            except TenantflowError as exc:
                _fail(str(exc))
                raise
            return manifest.source_path, manifest
        if (path / "workflow.py").is_file():
            return path / "workflow.py", None
        raise click.BadParameter(f"{path} has neither tenant.toml nor workflow.py")
    if path.suffix not in (".py", ".wasm"):
        raise click.BadParameter(f"{path}: expected a .py workflow module, a .wasm component or a tenant folder")
    return path, None


@main.command("deploy")
@click.argument("path", type=click.Path(path_type=Path, exists=True))
@click.option("--tenant", default=None, envvar="TENANTFLOW_TENANT", help="Tenant to deploy for (default: the manifest's, else 'default').")
@DB_OPTION
@REMOTE_OPTIONS
@click.option("--register-only", is_flag=True,
              help="Register the version without making it current: instances may pin it or upgrade to it.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def deploy_command(path: Path, tenant: str | None, db: Path, register_only: bool, as_json: bool) -> None:
    """Register a new version of a tenant's workflows (compiling first if given source).

    PATH is a component (.wasm), a workflow module (.py) or a tenant folder with a
    tenant.toml. New instances use the new version (unless --register-only); running ones
    keep theirs.
    """
    import tempfile

    from .compiler import CompileError, compile_workflow

    source, manifest = _component_source(path)
    tenant = tenant or (manifest.tenant if manifest else None) or "default"
    if manifest is not None and manifest.tenant != tenant:
        _fail(f"{path}: the manifest is for tenant {manifest.tenant!r}, not {tenant!r}")
    if source.suffix == ".wasm":
        wasm = source.read_bytes()
    else:
        with tempfile.TemporaryDirectory(prefix="tenantflow-deploy-") as tmp:
            try:
                result = compile_workflow(source, Path(tmp) / "component.wasm", progress=lambda m: click.echo(m, err=True))
            except CompileError as exc:
                _fail(str(exc))
                return
            wasm = result.output.read_bytes()

    async def local() -> Any:
        async with _open_engine(db) as engine:
            if manifest is not None:  # with the database in hand we are the platform: grant it
                await engine.apply_manifest(manifest)
            return await (engine.tenant(tenant).register(wasm) if register_only else engine.deploy(tenant, wasm))

    url, api_key = _remote()
    if url and manifest is not None and (manifest.egress.allow or manifest.secrets):
        click.echo("note: egress and secrets in tenant.toml are granted by the platform (`tenantflow deploy --db`), not over the API", err=True)
    info = _run_async(_remote_call(url, api_key, tenant, lambda b: b.deploy(wasm, current=not register_only)) if url else local())
    if as_json:
        click.echo(json.dumps({"tenant": tenant, **info.model_dump(), "current": not register_only}, indent=2))
        return
    click.echo(f"registered for tenant {tenant} (not current)" if register_only else f"deployed for tenant {tenant}")
    click.echo(f"digest: sha256:{info.digest}")
    click.echo(f"size: {info.size} bytes")
    click.echo(f"workflows: {', '.join(info.workflows)}")


def _admin(db: Path, op: Callable[[Any], Awaitable[Any]]) -> Any:
    """Run `op` on the tenants-and-keys admin: `auth.KeyAdmin` on --db, or the server's admin
    routes with --url (a platform-admin key); both take the same calls."""
    url, api_key = _remote()
    if url:
        return _run_async(_with_client(url, api_key, op))
    from .auth import KeyAdmin

    async def local() -> Any:
        async with _open_engine(db) as engine:
            return await op(KeyAdmin(engine))

    return _run_async(local())


@main.group("tenants")
def tenants() -> None:
    """Create, list and delete tenants (API keys are issued per tenant)."""


@tenants.command("create")
@click.argument("name")
@DB_OPTION
@REMOTE_OPTIONS
def tenants_create(name: str, db: Path) -> None:
    """Create a tenant."""
    _admin(db, lambda admin: admin.create_tenant(name))
    click.echo(f"tenant {name} created")


@tenants.command("list")
@DB_OPTION
@REMOTE_OPTIONS
def tenants_list(db: Path) -> None:
    """List tenants."""
    for tenant in _admin(db, lambda admin: admin.tenants()):
        quota = "no quota" if tenant.quota is None else f"quota {tenant.quota:,}"
        click.echo(f"{tenant.name}\tcreated {tenant.created_at:%Y-%m-%d %H:%M:%S}\t{tenant.unfinished_instances:,} unfinished ({quota})")


@tenants.command("delete")
@click.argument("name")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@DB_OPTION
@REMOTE_OPTIONS
@click.option("--json", "as_json", is_flag=True)
def tenants_delete(name: str, yes: bool, db: Path, as_json: bool) -> None:
    """Delete a tenant and everything it stored (not undoable): its instances (running ones
    are stopped), deployments, API keys, manifest and the component versions no other
    tenant holds."""
    if not yes:
        click.confirm(f"delete tenant {name!r} with all its instances, versions and keys?", abort=True, err=True)
    deleted = _admin(db, lambda admin: admin.delete_tenant(name))
    if as_json:
        click.echo(deleted.model_dump_json(indent=2))
        return
    click.echo(f"tenant {name} deleted: {deleted.instances} instances, {deleted.deployments} deployments, "
               f"{deleted.api_keys} API keys, {deleted.components} component versions")


@main.group("keys")
def keys() -> None:
    """Issue, list and revoke API keys for `tenantflow serve` (on --db, or a server's with --url)."""


@keys.command("issue")
@click.option("--tenant", default=None, help="Tenant the key acts for (not for platform-admin keys).")
@click.option("--role", type=click.Choice(["tenant-developer", "tenant-readonly", "platform-admin"]), default="tenant-developer", show_default=True)
@click.option("--description", default="", help="A note to tell keys apart.")
@DB_OPTION
@REMOTE_OPTIONS
@click.option("--json", "as_json", is_flag=True)
def keys_issue(tenant: str | None, role: str, description: str, db: Path, as_json: bool) -> None:
    """Issue a key and print its token. The token is shown only this once."""
    issued = _admin(db, lambda admin: admin.issue_key(tenant, role, description))
    if as_json:
        click.echo(json.dumps({"id": issued.key.id, "tenant": tenant, "role": role, "token": issued.token}, indent=2))
        return
    click.echo(f"key id: {issued.key.id}")
    click.echo(f"tenant: {tenant or '(all: platform admin)'}")
    click.echo(f"role:   {role}")
    click.echo(f"token:  {issued.token}")
    click.echo("store the token now: it is not shown again (only its hash is kept)", err=True)


@keys.command("revoke")
@click.argument("key_id")
@DB_OPTION
@REMOTE_OPTIONS
def keys_revoke(key_id: str, db: Path) -> None:
    """Revoke a key; requests with it fail from the next request on."""
    key = _admin(db, lambda admin: admin.revoke_key(key_id))
    click.echo(f"key {key.id} revoked")


@keys.command("list")
@click.option("--tenant", default=None, help="Only this tenant's keys.")
@DB_OPTION
@REMOTE_OPTIONS
@click.option("--json", "as_json", is_flag=True)
def keys_list(tenant: str | None, db: Path, as_json: bool) -> None:
    """List keys (ids, tenants, roles; never tokens)."""
    found = _admin(db, lambda admin: admin.keys(tenant))
    if as_json:
        click.echo(json.dumps([{"id": k.id, "tenant": k.tenant, "role": k.role, "description": k.description,
                                "created_at": _ms(k.created_at), "revoked_at": _ms(k.revoked_at)} for k in found], indent=2))
        return
    for k in found:
        state = f"revoked {k.revoked_at:%Y-%m-%d %H:%M:%S}" if k.revoked_at else "active"
        click.echo(f"{k.id}  {k.tenant or '*':<20} {k.role:<17} {state:<28} {k.description}")


def _ms(at: Any) -> Any:
    """Milliseconds since the epoch, as `keys list --json` has always printed them."""
    return None if at is None else round(at.timestamp() * 1000)


if __name__ == "__main__":
    main()
