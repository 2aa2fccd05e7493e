"""Quality control of slides and tiles, as a pathology lab runs it (HistoQC-like).

Per slide, on its thumbnail (:mod:`~slidefed.client.prepare.qc.masks`): a
tissue mask that holds on brightfield and fluorescence, pen ink and folds found
and left out of it, the scan's exposure and its modality. Per tile, at the
working resolution (:mod:`~slidefed.client.prepare.qc.tiles`): focus and
exposure; a failing tile is dropped. A verdict per slide (pass, warn, fail)
with its reasons (:mod:`~slidefed.client.prepare.qc.record`); a failed slide is
skipped. Thresholds: ``[qc]`` in site.toml
(:class:`~slidefed.client.config.QcSection`). What stays on site: the records
and drawn thumbnails in ``state/qc`` (:mod:`~slidefed.client.prepare.qc.draw`),
the site's JSON report (:mod:`~slidefed.client.prepare.qc.site_report`) and
its HTML page (:mod:`~slidefed.client.prepare.qc.html`, ``slidefed site qc``).
"""

from slidefed.client.prepare.qc.checker import QcStore as QcStore
from slidefed.client.prepare.qc.checker import SlideChecker as SlideChecker
from slidefed.client.prepare.qc.masks import SlideMasks as SlideMasks
from slidefed.client.prepare.qc.masks import assess_slide as assess_slide
from slidefed.client.prepare.qc.masks import assess_thumbnail as assess_thumbnail
from slidefed.client.prepare.qc.record import QcReport as QcReport
from slidefed.client.prepare.qc.record import SlideQc as SlideQc
from slidefed.client.prepare.qc.site_report import build_site_qc as build_site_qc
from slidefed.client.prepare.qc.site_report import load_site_qc as load_site_qc
from slidefed.client.prepare.qc.site_report import write_site_qc as write_site_qc
from slidefed.client.prepare.qc.tiles import sharpness as sharpness
from slidefed.client.prepare.qc.tiles import tile_flaws as tile_flaws

__all__ = [
    "QcReport",
    "QcStore",
    "SlideChecker",
    "SlideMasks",
    "SlideQc",
    "assess_slide",
    "assess_thumbnail",
    "build_site_qc",
    "load_site_qc",
    "sharpness",
    "tile_flaws",
    "write_site_qc",
]
