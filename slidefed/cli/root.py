"""The ``slidefed`` command: the root app and the one error -> exit-code table.

Each group of commands lives in its own module (``demo``, ``federation``, ``site``,
``server``, ``audit``, ``bench``); heavy libraries (torch, opacus, flwr) load inside
commands, so that ``--help`` stays fast.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

import click
import typer
import typer.core

from slidefed.cli.audit import audit_app
from slidefed.cli.bench import bench_app
from slidefed.cli.demo import demo, synth_app
from slidefed.cli.federation import app_app, launch, simulate
from slidefed.cli.server import server_app
from slidefed.cli.site import site_app
from slidefed.cli.slide import slide_app
from slidefed.common.errors import SlidefedError

# slidefed's help is plain text (rich_markup_mode=None), but typer 0.20 escapes
# "[required]" and "[default: ...]" for rich whenever rich is installed, which
# prints a literal "\[required]". Plain help needs no rich at all.
typer.core.HAS_RICH = False

app = typer.Typer(
    name="slidefed",
    help="Federated learning for computational pathology with patient-level DP.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)
app.add_typer(synth_app, name="synth")
app.add_typer(slide_app, name="slide")
app.add_typer(site_app, name="site")
app.add_typer(server_app, name="server")
app.add_typer(audit_app, name="audit")
app.add_typer(bench_app, name="bench")
app.add_typer(app_app, name="app")
app.command()(demo)
app.command()(simulate)
app.command()(launch)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point: one line and exit 2 for bad input, never a traceback."""
    try:
        rc = app(args=list(argv) if argv is not None else None, standalone_mode=False)
    except click.exceptions.NoArgsIsHelpError:
        return 0
    except click.UsageError as exc:
        hint = f" (see '{exc.ctx.command_path} --help')" if exc.ctx else ""
        print(f"error: {exc.format_message()}{hint}", file=sys.stderr)
        return 2
    except click.exceptions.Abort:
        print("aborted", file=sys.stderr)
        return 130
    except click.exceptions.Exit as exc:
        return int(exc.exit_code)
    except SlidefedError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    # Without standalone mode, click returns the code of typer.Exit.
    return rc if isinstance(rc, int) else 0


def run() -> None:
    """Console-script entry point."""
    sys.exit(main())


__all__ = ["app", "main", "run"]
