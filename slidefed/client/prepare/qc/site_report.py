"""The site's QC report: every slide's record after a preparation, as JSON.

:func:`build_site_qc` gathers the records of the slides of a prepare report
(records are kept per cache key, so a slide prepared earlier keeps its record);
slides skipped before QC could look at them (missing, unreadable, no tissue)
are listed apart with their reason. ``prepare`` writes the report to
``state/qc/qc-report.json`` at the end of each run.
"""

from __future__ import annotations

from slidefed.client.config import SiteConfig
from slidefed.client.prepare.qc.checker import QcStore
from slidefed.client.prepare.qc.record import QC_REPORT_FILE, QcReport, new_report
from slidefed.client.prepare.report import PrepareReport
from slidefed.common.errors import ConfigError


def build_site_qc(config: SiteConfig, report: PrepareReport) -> QcReport:
    """The QC report of the slides of ``report``.

    Parameters
    ----------
    config : SiteConfig
        The site.
    report : PrepareReport
        Its last preparation.

    Returns
    -------
    QcReport
        One record per slide QC saw, in manifest order.
    """
    store = QcStore(config.qc_dir)
    slides = []
    not_checked: list[tuple[int, str, str]] = []
    for outcome in report.slides:
        record = store.load(outcome.key) if outcome.key else None
        if record is not None:
            slides.append(record.model_copy(update={"row": outcome.row}))
        elif outcome.status == "skipped":
            not_checked.append((outcome.row, outcome.slide, outcome.reason))
    return new_report(
        site=config.site.name,
        encoder=config.features.encoder,
        qc=config.qc,
        slides=slides,
        not_checked=not_checked,
    )


def write_site_qc(config: SiteConfig, report: PrepareReport) -> QcReport | None:
    """Build and write ``state/qc/qc-report.json`` (None when QC is off)."""
    if not config.qc.enabled:
        return None
    qc_report = build_site_qc(config, report)
    config.qc_dir.mkdir(parents=True, exist_ok=True)
    qc_report.write(config.qc_dir)
    return qc_report


def load_site_qc(config: SiteConfig) -> QcReport | None:
    """The site's last QC report, or None when there is none.

    Raises
    ------
    ConfigError
        If the report exists but cannot be read.
    """
    path = config.qc_dir / QC_REPORT_FILE
    try:
        text = path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read it ({exc.strerror})") from exc
    try:
        return QcReport.model_validate_json(text)
    except ValueError as exc:
        raise ConfigError(
            f"{path} is unreadable or from another slidefed; run "
            "'slidefed site prepare' to write it again"
        ) from exc


__all__ = ["build_site_qc", "load_site_qc", "write_site_qc"]
