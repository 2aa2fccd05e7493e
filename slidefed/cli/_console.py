"""The one rich console of a ``slidefed`` process, and logging onto it."""

from __future__ import annotations

import logging
from typing import Any

_CONSOLE: list[Any] = []


def console() -> Any:
    """The process's rich Console (made on first use; rich loads only then)."""
    if not _CONSOLE:
        from rich.console import Console

        made = Console()
        # Logs and CI capture output at 80 columns; the summary table needs more.
        _CONSOLE.append(made if made.is_terminal else Console(width=120))
    return _CONSOLE[0]


def setup_logging(verbose: bool) -> None:
    """Send slidefed's log (and, with ``verbose``, Flower's and Ray's) to the console.

    On a terminal through rich; into a file or a pipe (CI, a service's log) one
    plain line per record, never wrapped, so that a long line stays one line
    for ``grep``.
    """
    handler: logging.Handler
    if console().is_terminal:
        from rich.logging import RichHandler

        # The same console as progress bars and the live table, so that log
        # lines print above them instead of through them.
        handler = RichHandler(
            console=console(), show_path=False, show_time=False, markup=False
        )
        fmt = "%(message)s"
    else:
        handler = logging.StreamHandler(console().file)
        fmt = "%(levelname)-8s %(message)s"
    logging.basicConfig(level=logging.WARNING, handlers=[handler], format=fmt)
    logging.getLogger("slidefed").setLevel(logging.DEBUG if verbose else logging.INFO)
    for name in ("flwr", "ray"):
        logging.getLogger(name).setLevel(logging.INFO if verbose else logging.WARNING)


__all__ = ["console", "setup_logging"]
