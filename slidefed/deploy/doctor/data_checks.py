"""The doctor's checks of the site's config and data: manifest, slides, cache, disk,
GPU, approved apps and privacy budget."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from slidefed.client.config import SiteConfig
from slidefed.common.errors import SlidefedError, SlidePathError
from slidefed.deploy.doctor.report import Check

if TYPE_CHECKING:
    from slidefed.client.slides.dicomweb_ref import DicomWebRef

SLIDE_SAMPLE = 3
"""How many slides of the manifest are opened."""

MIN_FREE_GB = 2.0
"""Below this much free space in the state folder the check fails."""

WARN_FREE_GB = 20.0
"""Below this much free space the check warns."""


def check_manifest(config: SiteConfig) -> Check:
    """The manifest parses and has usable rows.

    Parameters
    ----------
    config : SiteConfig
        The site.

    Returns
    -------
    Check
        ``warn`` when rows were rejected or privacy is per slide (no patient ids);
        ``fail`` naming the row when a slide lies outside the slide store.
    """
    from slidefed.client.data.manifest import load_site_manifest

    try:
        manifest = load_site_manifest(config)
    except SlidePathError as exc:
        return Check(
            name="manifest valid", status="fail", detail=exc.detail, fix=exc.fix
        )
    detail = (
        f"{len(manifest.rows)} slides of {manifest.n_patients} "
        f"{'patients' if manifest.unit == 'patient' else 'slides (no patient ids)'}"
    )
    if manifest.rejected:
        lines = ", ".join(str(line) for line, _ in manifest.rejected[:5])
        return Check(
            name="manifest valid",
            status="warn",
            detail=f"{detail}; {len(manifest.rejected)} rows rejected (lines {lines})",
            fix="run 'slidefed site prepare' to see why each row was rejected",
        )
    if manifest.unit == "slide":
        return Check(
            name="manifest valid",
            status="warn",
            detail=f"{detail}: privacy is per slide, not per patient",
            fix="add a patient_id column so that one patient is one sample",
        )
    return Check(name="manifest valid", status="ok", detail=detail)


def _web_ref(config: SiteConfig, uids: tuple[str, str]) -> DicomWebRef:
    """The series a row names on the site's DICOMweb archive."""
    from slidefed.client.slides.dicomweb_ref import DicomWebRef

    endpoint = config.dicomweb_endpoint
    if endpoint is None:  # load_site_manifest refuses this already
        raise SlidePathError("a row names a DICOMweb slide", fix="add [dicomweb]")
    return DicomWebRef(study_uid=uids[0], series_uid=uids[1], endpoint=endpoint)


def check_slides(config: SiteConfig, sample: int = SLIDE_SAMPLE) -> Check:
    """A sample of the manifest's slides opens.

    Parameters
    ----------
    config : SiteConfig
        The site.
    sample : int
        How many slides to open (evenly spread over the manifest).

    Returns
    -------
    Check
        ``fail`` naming the first unreadable slide's reason.
    """
    from slidefed.client.data.manifest import load_site_manifest
    from slidefed.client.data.slide_paths import SlideRoots
    from slidefed.client.slides import open_slide

    try:
        rows = load_site_manifest(config).rows
    except SlidePathError:
        # Nothing is opened outside the slide store; "manifest valid" names the row.
        return Check(
            name="slides readable",
            status="skip",
            detail="not checked: a manifest row names a slide outside the slide store",
            fix="fix the row named under 'manifest valid'",
        )
    roots = SlideRoots.of_site(config)
    step = max(1, len(rows) // max(sample, 1))
    picked = rows[::step][:sample]
    bad: list[str] = []
    for row in picked:
        try:
            path: Path | DicomWebRef = (
                roots.check(row.slide, manifest=config.manifest_path)
                if row.dicomweb is None
                else _web_ref(config, row.dicomweb)
            )
            with open_slide(
                path, max_tile_pixels=config.prepare.max_tile_pixels
            ) as slide:
                slide.info()
        except SlidefedError as exc:
            bad.append(str(getattr(exc, "reason", exc)))
    if bad:
        return Check(
            name="slides readable",
            status="fail",
            detail=f"{len(bad)} of {len(picked)} sampled slides cannot be read: {bad[0]}",
            fix=(
                f"check site.slides_root ({config.slides_root}) and that the slide "
                "store is mounted and readable by this user; 'slidefed slide inspect' "
                "names each bad file"
            ),
        )
    opened = f"{len(picked)} slide" + ("s" if len(picked) != 1 else "")
    detail = (
        f"all {len(rows)} slides opened"
        if len(picked) == len(rows)
        else f"{opened} opened, a sample spread over the manifest's {len(rows)} "
        "('slidefed site prepare' reads them all)"
    )
    return Check(name="slides readable", status="ok", detail=detail)


def check_cache(config: SiteConfig) -> Check:
    """The feature cache folder is writable: a temporary file is made in it."""
    cache = config.cache_dir
    try:
        cache.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=cache, prefix=".doctor-"):
            pass
    except OSError as exc:
        return Check(
            name="cache writable",
            status="fail",
            detail=f"{cache}: {exc.strerror}",
            fix=f"make {config.state_dir} writable by this user (the state volume)",
        )
    return Check(name="cache writable", status="ok", detail=str(cache))


def check_disk(config: SiteConfig) -> Check:
    """Free space where the cache and ledger live.

    Fails below :data:`MIN_FREE_GB` and warns below :data:`WARN_FREE_GB`, measured
    on the nearest existing folder of the site's state folder.
    """
    folder = config.state_dir
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    free = shutil.disk_usage(folder).free / 1e9
    detail = f"{free:.1f} GB free in {folder}"
    fix = "free space or move state_dir to a larger volume"
    if free < MIN_FREE_GB:
        return Check(name="disk space", status="fail", detail=detail, fix=fix)
    if free < WARN_FREE_GB:
        return Check(name="disk space", status="warn", detail=detail, fix=fix)
    return Check(name="disk space", status="ok", detail=detail)


def check_gpu() -> Check:
    """Whether a CUDA GPU is visible to this process.

    Returns
    -------
    Check
        ``ok`` with the device name, or ``warn`` saying that training falls back
        to the CPU.
    """
    try:
        import torch
    except ImportError:
        return Check(
            name="GPU visible",
            status="fail",
            detail="torch is not installed",
            fix="install slidefed with its dependencies",
        )
    if torch.cuda.is_available():
        count = torch.cuda.device_count()
        return Check(
            name="GPU visible",
            status="ok",
            detail=f"{count} CUDA device(s): {torch.cuda.get_device_name(0)}",
        )
    return Check(
        name="GPU visible",
        status="warn",
        detail="no CUDA GPU visible: features and training run on the CPU (slower)",
        fix=(
            "for GPU sites: use the CUDA image and start it with --gpus all "
            "(docker) or check the NVIDIA driver with nvidia-smi"
        ),
    )


def check_approvals(config_path: Path) -> Check:
    """The site approves at least one app version.

    Parameters
    ----------
    config_path : Path
        ``site.toml``.

    Returns
    -------
    Check
        ``warn`` when the list is empty (every run would be refused).
    """
    from slidefed.deploy.approval import approvals_path, load_approved_apps

    path = approvals_path(config_path)
    apps = load_approved_apps(path).app
    if not apps:
        return Check(
            name="apps approved",
            status="warn",
            detail=f"no app approved in {path.name}: every run will be refused",
            fix=(
                f"slidefed site approve --config {config_path} --app-dir APP "
                "(or --fab APP.fab, or --hash SHA256)"
            ),
        )
    names = ", ".join(a.name or a.fab_hash[:12] for a in apps[:3])
    return Check(
        name="apps approved", status="ok", detail=f"{len(apps)} approved ({names})"
    )


def check_budget(config: SiteConfig) -> Check:
    """Privacy budget left according to the ledger.

    Parameters
    ----------
    config : SiteConfig
        The site.

    Returns
    -------
    Check
        ``fail`` when spent, ``warn`` below 10 % left.
    """
    from slidefed.client.privacy.accountant import epsilon
    from slidefed.client.privacy.ledger import PrivacyLedger

    ledger = PrivacyLedger(config.ledger_path).load()
    delta = ledger.delta or config.policy.delta_for(1)
    spent = epsilon(ledger.history(), delta, accountant=ledger.accountant)
    total = config.policy.max_epsilon
    left = max(total - spent, 0.0)
    detail = f"epsilon {spent:.3f} of {total:.3f} spent, {left:.3f} left"
    if left <= 0:
        return Check(
            name="budget remaining",
            status="fail",
            detail=detail,
            fix="this dataset's budget is spent; no run can train on it any more",
        )
    if left < 0.1 * total:
        return Check(
            name="budget remaining",
            status="warn",
            detail=detail,
            fix="few runs remain possible; see 'slidefed site budget'",
        )
    return Check(name="budget remaining", status="ok", detail=detail)


__all__ = [
    "MIN_FREE_GB",
    "SLIDE_SAMPLE",
    "WARN_FREE_GB",
    "check_approvals",
    "check_budget",
    "check_cache",
    "check_disk",
    "check_gpu",
    "check_manifest",
    "check_slides",
]
