"""What ``slidefed site prepare`` shows: a progress bar, then one line per problem."""

from __future__ import annotations

import csv
import time
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from slidefed.client.config import SiteConfig
    from slidefed.client.prepare.report import PrepareReport


def prepare_with_progress(
    cfg: SiteConfig, *, workers: int, quiet: bool, ray_address: str | None = None
) -> PrepareReport:
    """Prepare every slide of the site under a progress bar (slides, tiles/s).

    Parameters
    ----------
    cfg : SiteConfig
        The site.
    workers : int
        Worker processes (0: auto).
    quiet : bool
        No progress bar (for ``--json``).
    ray_address : str, optional
        Prepare on this Ray cluster (default: ``[prepare] ray_address``).

    Returns
    -------
    PrepareReport
        The pipeline's report.
    """
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    from slidefed.client.data.manifest import load_manifest
    from slidefed.client.prepare import SlideOutcome, prepare_site

    total = len(load_manifest(cfg.manifest_path).rows)
    started = time.perf_counter()
    fresh_tiles = 0
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("slides, {task.fields[rate]} tiles/s"),
    )
    with Progress(*columns, disable=quiet, transient=False) as progress:
        task = progress.add_task("Preparing", total=total, rate="-")

        def advance(outcome: SlideOutcome) -> None:
            nonlocal fresh_tiles
            if outcome.status == "ok":
                fresh_tiles += outcome.tiles
            elapsed = max(time.perf_counter() - started, 1e-9)
            progress.update(task, advance=1, rate=f"{fresh_tiles / elapsed:.0f}")

        return prepare_site(
            cfg, workers=workers or None, progress=advance, ray_address=ray_address
        )


def report_lines(cfg: SiteConfig, report: PrepareReport) -> list[str]:
    """One line per skipped slide, noted slide and rejected row, then a summary.

    Parameters
    ----------
    cfg : SiteConfig
        The site.
    report : PrepareReport
        The pipeline's report.

    Returns
    -------
    list of str
        Lines to print.
    """
    lines: list[str] = []
    by_line = _manifest_slides(cfg.manifest_path)
    for s in report.slides:
        if s.status == "skipped":
            lines.append(f"skipped {s.slide}: {' '.join(s.reason.split())}")
        elif s.unreadable_tiles:
            lines.append(f"note {s.slide}: {s.reason}")
    for line, reason in report.rejected_rows:
        name = by_line.get(line) or "?"
        lines.append(f"manifest line {line} ({name}) rejected: {reason}")
    lines += qc_lines(cfg)
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


def qc_lines(cfg: SiteConfig) -> list[str]:
    """One line per slide with a QC warning, then the QC summary ([] without QC).

    Parameters
    ----------
    cfg : SiteConfig
        The site.

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
        f"{cfg.qc_dir}; the page: 'slidefed site qc --config SITE.toml --out qc.html'"
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


__all__ = ["prepare_with_progress", "qc_lines", "report_lines"]
