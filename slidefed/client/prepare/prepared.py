"""What a round reads: the features the site prepared, from its cache only.

A message from the coordinator never makes the site prepare, open or decode a
slide: :func:`load_site_features` reads the last complete preparation report
(``state/prepare-report.json``) and the feature cache it names. The report must
still describe the site: the same manifest (by hash), encoder and tiling as
``site.toml`` sets now, and slide files unchanged since they were hashed (only
their ``stat()`` is read; a slide file removed since keeps its cached
features). Anything else is refused with :class:`SiteNotPrepared`, whose
message names what changed and the one command that fixes it.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from slidefed.client.config import SiteConfig
from slidefed.client.data.manifest import Manifest, load_site_manifest
from slidefed.client.data.slide_paths import SlideRoots
from slidefed.client.prepare.cache import FeatureCache, slide_signature
from slidefed.client.prepare.report import REPORT_FILE, PrepareReport
from slidefed.client.prepare.slide import tiling_params
from slidefed.common.errors import SiteNotPrepared

logger = logging.getLogger(__name__)


def prepare_command(config: SiteConfig) -> str:
    """The command that prepares this site, as the operator types it."""
    toml = config.base_dir / "site.toml"
    return f"slidefed site prepare --config {toml if toml.is_file() else 'site.toml'}"


def _refuse(config: SiteConfig, what: str) -> SiteNotPrepared:
    return SiteNotPrepared(
        f"site {config.site.name}: {what}; run '{prepare_command(config)}' "
        "before the node serves rounds"
    )


def read_report(config: SiteConfig) -> PrepareReport:
    """The site's last preparation report, complete and readable.

    Raises
    ------
    SiteNotPrepared
        If there is none, it cannot be read, or its run did not finish.
    """
    path = config.state_dir / REPORT_FILE
    try:
        text = path.read_bytes()
    except FileNotFoundError:
        raise _refuse(config, f"no prepared features ({path} not found)") from None
    except OSError as exc:
        raise _refuse(config, f"cannot read {path} ({exc.strerror or exc})") from exc
    try:
        report = PrepareReport.model_validate_json(text)
    except ValueError as exc:
        raise _refuse(
            config, f"{path} is unreadable or from an older slidefed"
        ) from exc
    if not report.complete or report.tiling is None:
        raise _refuse(config, "the last preparation did not finish")
    return report


def _check_settings(config: SiteConfig, report: PrepareReport) -> None:
    """The encoder and tiling of the report are those site.toml sets now."""
    if report.encoder != config.features.encoder:
        raise _refuse(
            config,
            f"features were prepared with encoder {report.encoder!r}, but "
            f"features.encoder is {config.features.encoder!r}",
        )
    if report.encoder_id and report.encoder != "hed":
        from slidefed.client.prepare.encoders import default_weights, encoder_cache_id

        weights = default_weights(config.features.encoder, config.features.weights)
        current = encoder_cache_id(
            config.features.encoder,
            config.resolve(weights) if weights is not None else None,
        )
        if current != report.encoder_id:
            raise _refuse(
                config,
                "features were prepared with other weights than "
                "features.weights holds now",
            )
    params = tiling_params(config.tiling, config.qc)
    if report.tiling != params:
        prepared = dict(report.tiling or {})
        what = "[qc]" if prepared.pop("qc", None) != params.pop("qc", None) else ""
        if prepared != params:
            what = "[tiling]"
        raise _refuse(
            config, f"features were prepared with another {what} than site.toml sets"
        )


def _check_manifest(
    config: SiteConfig, report: PrepareReport, manifest: Manifest
) -> None:
    """The manifest is the one prepared (by hash)."""
    if manifest.sha256 == report.manifest_sha256:
        return
    known = {s.slide for s in report.slides}
    new = sum(row.slide not in known for row in manifest.rows)
    raise _refuse(
        config,
        f"the manifest changed since the site was prepared ({new} of its "
        f"{len(manifest.rows)} slides not prepared)",
    )


def _check_slides(config: SiteConfig, report: PrepareReport) -> None:
    """No slide file hashed at preparation changed since (``stat()`` only).

    A slide skipped then (a refused or unreadable file) counts too: replacing
    it with a good copy needs a new preparation to be used. A file removed
    since keeps its prepared features.
    """
    roots = SlideRoots.of_site(config)
    for outcome in report.slides:
        if not outcome.signature:  # missing or unhashable at preparation
            continue
        path = roots.resolve(outcome.slide)
        if path is None or not path.exists():
            continue
        try:
            changed = slide_signature(path) != outcome.signature
        except OSError:
            changed = True
        if changed:
            raise _refuse(
                config,
                f"the slide on manifest line {outcome.row} changed since it was prepared",
            )


def check_prepared(config: SiteConfig) -> tuple[PrepareReport, Manifest]:
    """The last preparation, checked against the site as it is now.

    Nothing is opened but the report, the manifest and the feature cache's
    index; slides are only ``stat()``-ed.

    Returns
    -------
    tuple
        The report and the site's manifest.

    Raises
    ------
    SiteNotPrepared
        If preparation never ran or did not finish; if the manifest, encoder
        or tiling changed since; if a slide's files changed since they were
        hashed; or if a prepared slide's features are missing from the cache.
    ManifestError
        If the manifest itself is missing or invalid.
    """
    report = read_report(config)
    _check_settings(config, report)
    manifest = load_site_manifest(config)
    _check_manifest(config, report, manifest)
    _check_slides(config, report)
    cache = FeatureCache(config.cache_dir)
    for outcome in report.usable:
        if not cache.has(outcome.key):
            raise _refuse(
                config,
                f"the features of the slide on manifest line {outcome.row} are missing from the "
                f"feature cache ({config.cache_dir})",
            )
    return report, manifest


def load_site_features(
    config: SiteConfig,
) -> tuple[Manifest, dict[str, NDArray[np.float32]]]:
    """Manifest and prepared features per slide, read from the cache alone.

    Never prepares, opens or decodes a slide.

    Returns
    -------
    tuple
        The manifest, and each usable slide's features (n_tiles, dim).

    Raises
    ------
    SiteNotPrepared
        As :func:`check_prepared`: the message says what changed and to run
        ``slidefed site prepare --config site.toml``.
    """
    report, manifest = check_prepared(config)
    cache = FeatureCache(config.cache_dir)
    feats = {s.slide: cache.load(s.key) for s in report.usable}
    logger.debug(
        "loaded prepared features of %d slides (%d skipped at preparation)",
        len(feats),
        len(report.skipped),
    )
    return manifest, feats


def report_path(config: SiteConfig) -> Path:
    """Where the site's preparation report lives."""
    return config.state_dir / REPORT_FILE


__all__ = [
    "check_prepared",
    "load_site_features",
    "prepare_command",
    "read_report",
    "report_path",
]
