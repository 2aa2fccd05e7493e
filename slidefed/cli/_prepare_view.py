"""What ``slidefed site prepare`` shows: a progress bar, one line per problem, a summary.

Slides are named by their manifest line (header = 1) and path, so that a person
finds them in the file. A skipped slide gets one line, printed above the bar as
soon as it is known; the pipeline's own log record of the skip is not shown
again.
"""

from __future__ import annotations

import csv
import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from slidefed.client.config import SiteConfig
    from slidefed.client.prepare.report import PrepareReport, SlideOutcome


def skip_line(outcome: SlideOutcome) -> str:
    """The one line that names a skipped slide and why.

    Parameters
    ----------
    outcome : SlideOutcome
        A skipped slide.

    Returns
    -------
    str
        ``skipped manifest line N (SLIDE): REASON``.
    """
    reason = " ".join(outcome.reason.split())
    return f"skipped manifest line {outcome.row} ({outcome.slide}): {reason}"


class _NotSkips(logging.Filter):
    """Drops the pipeline's skip records: the view prints its own line for each."""

    def filter(self, record: logging.LogRecord) -> bool:
        from slidefed.client.prepare.pipeline import SKIP_RECORD

        return not getattr(record, SKIP_RECORD, False)


def _columns() -> tuple[Any, ...]:
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    return (
        TextColumn("Preparing"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("slides, {task.fields[rate]} tiles/s,"),
        TimeElapsedColumn(),
        TextColumn("elapsed, ETA"),
        TimeRemainingColumn(),
        TextColumn("{task.fields[now]}"),
    )


def prepare_with_progress(
    cfg: SiteConfig, *, workers: int, quiet: bool, ray_address: str | None = None
) -> PrepareReport:
    """Prepare every slide of the site under a progress bar.

    The bar shows the slides done, fresh tiles per second, the time left and
    the slide being worked on; each skipped slide prints one line above it.

    Parameters
    ----------
    cfg : SiteConfig
        The site.
    workers : int
        Worker processes (0: auto).
    quiet : bool
        No progress bar and no lines (for ``--json``).
    ray_address : str, optional
        Prepare on this Ray cluster (default: ``[prepare] ray_address``).

    Returns
    -------
    PrepareReport
        The pipeline's report.
    """
    from rich.logging import RichHandler
    from rich.progress import Progress

    from slidefed.cli._console import console
    from slidefed.client.data.manifest import load_manifest
    from slidefed.client.prepare import prepare_site

    total = len(load_manifest(cfg.manifest_path).rows)
    started = time.perf_counter()
    fresh_tiles = 0
    with Progress(*_columns(), console=console(), disable=quiet) as progress:
        task = progress.add_task("Preparing", total=total, rate="-", now="")

        def advance(outcome: SlideOutcome) -> None:
            nonlocal fresh_tiles
            if outcome.status == "ok":
                fresh_tiles += outcome.tiles
            elif outcome.status == "skipped" and not quiet:
                progress.console.print(
                    skip_line(outcome), markup=False, highlight=False, soft_wrap=True
                )
            elapsed = max(time.perf_counter() - started, 1e-9)
            rate = f"{fresh_tiles / elapsed:.0f}" if fresh_tiles else "-"
            progress.update(task, advance=1, rate=rate)

        def now(line: int, slide: str) -> None:
            progress.update(task, now=f"line {line}: {Path(slide).name}")

        # Other log lines print above the bar, not through it.
        handler = RichHandler(
            console=progress.console, show_path=False, show_time=False, markup=False
        )
        handler.addFilter(_NotSkips())
        handler.setLevel(logging.WARNING)
        log = logging.getLogger("slidefed")
        log.addHandler(handler)
        try:
            return prepare_site(
                cfg,
                workers=workers or None,
                progress=advance,
                on_start=now,
                ray_address=ray_address,
            )
        finally:
            log.removeHandler(handler)
            progress.update(task, now="")


def report_lines(
    cfg: SiteConfig, report: PrepareReport, config: Path | str = "site.toml"
) -> list[str]:
    """One line per noted slide and rejected row, then a summary.

    Skipped slides are not repeated here: :func:`prepare_with_progress` printed
    each as it happened (``--json`` prints the report instead).

    Parameters
    ----------
    cfg : SiteConfig
        The site.
    report : PrepareReport
        The pipeline's report.
    config : Path or str
        The site.toml the command was given (named in the hints).

    Returns
    -------
    list of str
        Lines to print.
    """
    lines: list[str] = []
    by_line = _manifest_slides(cfg.manifest_path)
    for s in report.slides:
        if s.status != "skipped" and s.unreadable_tiles:
            lines.append(f"note manifest line {s.row} ({s.slide}): {s.reason}")
    for line, reason in report.rejected_rows:
        name = by_line.get(line) or "?"
        lines.append(f"manifest line {line} ({name}) rejected: {reason}")
    lines += qc_lines(cfg, config)
    ok = sum(s.status == "ok" for s in report.slides)
    cached = sum(s.status == "cached" for s in report.slides)
    tiles = sum(s.tiles for s in report.usable)
    lines.append(
        f"{len(report.usable)} of {len(report.slides)} slides ready ({ok} prepared, "
        f"{cached} cached, {len(report.skipped)} skipped), {tiles} tiles, "
        f"{report.seconds:.1f} s, {report.tiles_per_second:.0f} tiles/s; "
        f"report in {cfg.state_dir / 'prepare-report.json'}"
    )
    return lines


def qc_lines(cfg: SiteConfig, config: Path | str = "site.toml") -> list[str]:
    """One line per slide with a QC warning, then the QC summary ([] without QC).

    Parameters
    ----------
    cfg : SiteConfig
        The site.
    config : Path or str
        The site.toml the command was given (named in the hint).

    Returns
    -------
    list of str
        Lines to print.
    """
    from slidefed.client.prepare.qc import load_site_qc

    qc = load_site_qc(cfg) if cfg.qc.enabled else None
    if qc is None or not qc.slides:
        return []
    lines = [
        f"QC warning {s.slide}: {'; '.join(s.reasons)}"
        for s in qc.slides
        if s.verdict == "warn"
    ]
    lines.append(
        f"QC: {qc.count('pass')} pass, {qc.count('warn')} warn, "
        f"{qc.count('fail')} fail (skipped); thumbnails and qc-report.json in "
        f"{cfg.qc_dir}; the page: 'slidefed site qc --config {config} --out qc.html'"
    )
    return lines


def _manifest_slides(path: Path) -> dict[int, str]:
    """Slide named on each line of the manifest (for messages about its rows)."""
    try:
        text = path.read_text(encoding="utf-8-sig", errors="replace")
    except OSError:
        return {}
    reader = csv.DictReader(text.splitlines())
    slides: dict[int, str] = {}
    for rec in reader:
        # The line a person sees (header = 1), as the manifest counts it.
        slides[reader.line_num] = (rec.get("slide") or "").strip()
    return slides


__all__ = ["prepare_with_progress", "qc_lines", "report_lines", "skip_line"]
