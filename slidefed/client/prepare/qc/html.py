"""The site's QC report as one self-contained HTML page (``slidefed site qc``).

Like the auditor's report: a jinja2 template with autoescape on, no script,
nothing fetched (the thumbnails are embedded as data URIs, and the page's
Content-Security-Policy allows nothing else). The page shows slide names and
thumbnails: it is for the site's own staff and stays on site.
"""

from __future__ import annotations

import base64
import functools
from datetime import UTC, datetime
from pathlib import Path

import jinja2

from slidefed import __version__
from slidefed.client.prepare.qc.checker import QcStore
from slidefed.client.prepare.qc.draw import COLOURS
from slidefed.client.prepare.qc.record import QcReport
from slidefed.client.prepare.qc.tiles import FLAW_TEXT
from slidefed.common.errors import ConfigError
from slidefed.common.fileio import atomic_write_text

_LEGEND = [
    ("tissue kept (outline)", COLOURS["tissue"]),
    ("pen ink", COLOURS["ink"]),
    ("fold", COLOURS["fold"]),
    ("tile out of focus", COLOURS["blur"]),
    ("tile under- or over-exposed", COLOURS["dark"]),
]


@functools.cache
def _environment() -> jinja2.Environment:
    return jinja2.Environment(
        loader=jinja2.PackageLoader("slidefed.client.prepare.qc", "templates"),
        autoescape=True,
        trim_blocks=True,
        lstrip_blocks=True,
        undefined=jinja2.StrictUndefined,
    )


def _images(report: QcReport, store: QcStore) -> dict[str, str]:
    images: dict[str, str] = {}
    for s in report.slides:
        path = store.root / s.thumbnail if s.thumbnail else None
        try:
            data = path.read_bytes() if path is not None else b""
        except OSError:
            data = b""
        images[s.key] = base64.b64encode(data).decode("ascii")
    return images


def render_qc_html(
    report: QcReport, qc_dir: Path, *, generated: datetime | None = None
) -> str:
    """The page of a site's QC report.

    Parameters
    ----------
    report : QcReport
        The report.
    qc_dir : Path
        The folder of its thumbnails (``state/qc``).
    generated : datetime, optional
        When the page says it was made (default: now).

    Returns
    -------
    str
        HTML.
    """
    when = (generated or datetime.now(UTC)).strftime("%Y-%m-%d %H:%M UTC")
    return (
        _environment()
        .get_template("qc.html.j2")
        .render(
            report=report,
            generated=when,
            version=__version__,
            images=_images(report, QcStore(qc_dir)),
            legend=_LEGEND,
            flaw_text=FLAW_TEXT,
            thresholds=report.thresholds.model_dump(mode="json"),
        )
    )


def write_qc_html(report: QcReport, qc_dir: Path, out: Path) -> Path:
    """Render the page and write it to ``out``.

    Raises
    ------
    ConfigError
        If ``out`` cannot be written.
    """
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(out, render_qc_html(report, qc_dir))
    except OSError as exc:
        raise ConfigError(
            f"cannot write {out} ({exc.strerror}); choose another --out"
        ) from exc
    return out


__all__ = ["render_qc_html", "write_qc_html"]
