"""``slidefed server ...``: commands for the coordinator."""

from __future__ import annotations

import typer

server_app = typer.Typer(
    help="Run the coordinator.", no_args_is_help=True, rich_markup_mode=None
)

__all__ = ["server_app"]
