"""A live table of the rounds of a run, redrawn as ``metrics.jsonl`` grows."""

from __future__ import annotations

import json
import threading
from pathlib import Path
from types import TracebackType
from typing import Any


def rounds_table(rows: list[dict[str, Any]], total: int) -> Any:
    """A rich Table of the rounds so far."""
    from rich.table import Table

    table = Table(title=f"Federated rounds ({len(rows)}/{total})")
    for col in (
        "round",
        "sites",
        "accuracy",
        "AUC",
        "max ε",
        "s",
    ):
        table.add_column(col, justify="right")
    for r in rows:
        eps = [v for v in r.get("epsilon_per_site", {}).values() if v is not None]
        table.add_row(
            str(r["round"]),
            str(r.get("sites_trained", "-")),
            *(
                "-" if not isinstance(r.get(k), int | float) else f"{r[k]:.3f}"
                for k in ("accuracy", "auc")
            ),
            f"{max(eps):.2f}" if eps else "-",
            f"{r.get('seconds', 0):.1f}",
        )
    return table


class LiveRounds:
    """Show :func:`rounds_table` live on a terminal while a run goes on."""

    def __init__(self, metrics: Path, total: int, console: Any) -> None:
        self.metrics = Path(metrics)
        self.total = total
        self.console = console
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def rows(self) -> list[dict[str, Any]]:
        try:
            text = self.metrics.read_text()
        except OSError:
            return []
        rows = []
        for line in text.splitlines():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                break  # a line being written
        return rows

    def _run(self) -> None:
        from rich.live import Live

        with Live(
            rounds_table([], self.total), console=self.console, transient=True
        ) as live:
            while not self._stop.wait(0.5):
                live.update(rounds_table(self.rows(), self.total))

    def __enter__(self) -> LiveRounds:
        if self.console.is_terminal:
            self._thread = threading.Thread(target=self._run, daemon=True)
            self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()


__all__ = ["LiveRounds", "rounds_table"]
