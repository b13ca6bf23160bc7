"""The `tenantflow` command line."""

from __future__ import annotations

import contextlib
import sys
from pathlib import Path

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


if __name__ == "__main__":
    main()
