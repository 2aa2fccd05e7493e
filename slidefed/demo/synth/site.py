"""Write a synthetic site: patients, their slides and ``manifest.csv``.

Patients ``P0001``... have one to three slides each, ``out_dir/slides/<patient>-<k>.tif``.
``manifest.csv`` has the header ``slide,patient_id,label,split``: ``slide`` is relative
to the site folder, ``label`` is ``0`` (normal) or ``1`` (tumour), ``split`` is
``train`` or ``test``.  By default all slides of a tumour patient are tumour
slides; a :class:`~slidefed.demo.synth._render.Look` and ``tumour_slides`` make a
harder site (tumour in a few of a patient's tiles, the hospital's own staining),
and ``label_noise`` flips the manifest label of some training patients.
"""

from __future__ import annotations

import csv
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydantic
from numpy.typing import NDArray

from slidefed.common.errors import ConfigError
from slidefed.demo.synth._render import DEFAULT_LOOK, Look
from slidefed.demo.synth.slide_writer import check_slide_args, write_synthetic_slide

_Row = tuple[str, str, str, str]


class SynthSite(pydantic.BaseModel):
    """What :func:`synth_site` wrote.

    Attributes
    ----------
    root : Path
        The output directory; slide paths in the manifest are relative to it.
    manifest : Path
        ``root / "manifest.csv"`` with columns ``slide,patient_id,label,split``.
    n_patients : int
        Number of patients.
    n_slides : int
        Number of slides (one to three per patient).
    n_tumour : int
        Number of tumour patients (label 1 before any label noise).
    n_flipped : int
        Training patients whose manifest label was flipped (``label_noise``).
    """

    model_config = pydantic.ConfigDict(extra="forbid", frozen=True)

    root: Path
    manifest: Path
    n_patients: int
    n_slides: int
    n_tumour: int
    n_flipped: int = 0


@dataclass(frozen=True)
class _Patients:
    """Label, split and slide count of every patient."""

    is_tumour: NDArray[np.bool_]
    in_test: NDArray[np.bool_]
    n_per: NDArray[np.int64]
    flipped: NDArray[np.bool_] | None = None


def synth_site(
    out_dir: Path,
    *,
    patients: int,
    seed: int,
    tumour_fraction: float = 0.5,
    test_fraction: float = 0.3,
    width: int = 2560,
    height: int = 2048,
    progress: Callable[[int, int], None] | None = None,
    look: Look = DEFAULT_LOOK,
    tumour_slides: float = 1.0,
    label_noise: float = 0.0,
) -> SynthSite:
    """Write a synthetic site: slides plus a manifest (see the module docstring).

    ``round(patients * tumour_fraction)`` patients are tumour patients.  Splits
    are by patient and stratified by class: each class sends
    ``round(n_class * test_fraction)`` patients to test, at least
    ``min(2, n_class)`` when ``patients >= 8``, and keeps one in train where
    that minimum allows it.

    Parameters
    ----------
    out_dir : Path
        Output directory, created if missing; files of the same names are overwritten.
    patients : int
        Number of patients, >= 1.
    seed : int
        Non-negative seed; the whole output is a deterministic function of the
        arguments.
    tumour_fraction : float
        Fraction of tumour patients, in ``[0, 1]``.
    test_fraction : float
        Fraction of each class's patients in the test split, in ``(0, 1)``.
    width, height : int
        Level-0 slide size in pixels, each >= 256.
    progress : callable, optional
        Called as ``progress(done, total)`` after each slide.
    look : Look
        The hospital's staining and tumour extent.
    tumour_slides : float
        Chance that each slide of a tumour patient holds tumour (one always does).
    label_noise : float
        Chance that a training patient's manifest label is flipped (test labels
        stay true), in ``[0, 0.5)``.

    Returns
    -------
    SynthSite
        Paths and counts of what was written.

    Raises
    ------
    ConfigError
        If an argument is out of range.
    """
    _check_site_args(patients, seed, tumour_fraction, test_fraction, width, height)
    _check_noise_args(label_noise, tumour_slides)
    drawn = _flip_labels(
        _draw_patients(patients, seed, tumour_fraction, test_fraction),
        seed,
        label_noise,
    )
    rows = _write_slides(
        out_dir, drawn, seed, (width, height), progress, (look, tumour_slides)
    )
    manifest = out_dir / "manifest.csv"
    _write_manifest(manifest, rows)
    return SynthSite(
        root=out_dir,
        manifest=manifest,
        n_patients=patients,
        n_slides=len(rows),
        n_tumour=int(drawn.is_tumour.sum()),
        n_flipped=int(drawn.flipped.sum()) if drawn.flipped is not None else 0,
    )


def _check_site_args(
    patients: int,
    seed: int,
    tumour_fraction: float,
    test_fraction: float,
    width: int,
    height: int,
) -> None:
    """Raise :class:`ConfigError` for arguments that cannot make a site."""
    if patients < 1:
        raise ConfigError(f"patients must be >= 1 (got {patients}); pass patients=8")
    if seed < 0:
        raise ConfigError(f"seed must be >= 0 (got {seed}); pass a non-negative seed")
    if not 0.0 <= tumour_fraction <= 1.0:
        raise ConfigError(
            f"tumour_fraction must be in [0, 1] (got {tumour_fraction}); e.g. 0.5"
        )
    if not 0.0 < test_fraction < 1.0:
        raise ConfigError(
            f"test_fraction must be in (0, 1) (got {test_fraction}); e.g. 0.3"
        )
    check_slide_args(seed, width, height, 0.5, 256, 85)


def _check_noise_args(label_noise: float, tumour_slides: float) -> None:
    """Raise :class:`ConfigError` for a label noise or tumour-slide chance out of range."""
    if not 0.0 <= label_noise < 0.5 or not 0.0 < tumour_slides <= 1.0:
        raise ConfigError(
            f"label_noise must be in [0, 0.5) and tumour_slides in (0, 1] (got "
            f"{label_noise}, {tumour_slides}); e.g. 0.1 and 0.6"
        )


def _split_counts(n_class: int, patients: int, test_fraction: float) -> int:
    """Number of test patients of one class.

    ``round(n_class * test_fraction)``, at least ``min(2, n_class)`` when
    ``patients >= 8``, and leaving at least one patient of the class for
    training where that does not break the minimum.
    """
    lo = min(2, n_class) if patients >= 8 else 0
    hi = max(lo, n_class - 1) if n_class >= 2 else n_class
    return max(lo, min(hi, round(n_class * test_fraction)))


def _draw_patients(
    patients: int, seed: int, tumour_fraction: float, test_fraction: float
) -> _Patients:
    """Draw which patients have tumour, which are in test, and their slide counts."""
    rng = np.random.default_rng(np.random.SeedSequence([seed, 0x5EED]))
    n_tumour = round(patients * tumour_fraction)
    is_tumour = np.zeros(patients, dtype=bool)
    is_tumour[rng.permutation(patients)[:n_tumour]] = True
    in_test = np.zeros(patients, dtype=bool)
    for cls in (False, True):
        members = np.flatnonzero(is_tumour == cls)
        k = _split_counts(members.size, patients, test_fraction)
        in_test[rng.permutation(members)[:k]] = True
    n_per = rng.integers(1, 4, size=patients)
    return _Patients(is_tumour=is_tumour, in_test=in_test, n_per=n_per)


def _flip_labels(drawn: _Patients, seed: int, label_noise: float) -> _Patients:
    """Mark training patients whose manifest label is wrong (test labels stay true)."""
    if label_noise <= 0:
        return drawn
    rng = np.random.default_rng(np.random.SeedSequence([seed, 0xF11F]))
    flips = (rng.random(drawn.is_tumour.size) < label_noise) & ~drawn.in_test
    return _Patients(drawn.is_tumour, drawn.in_test, drawn.n_per, flips)


def _write_slides(
    out_dir: Path,
    drawn: _Patients,
    seed: int,
    size: tuple[int, int],
    progress: Callable[[int, int], None] | None,
    style: tuple[Look, float] = (DEFAULT_LOOK, 1.0),
) -> list[_Row]:
    """Write every patient's slides; the manifest rows, in order."""
    slides_dir = out_dir / "slides"
    slides_dir.mkdir(parents=True, exist_ok=True)
    total = int(drawn.n_per.sum())
    rows: list[_Row] = []
    look, tumour_slides = style
    for i, n_slides in enumerate(drawn.n_per):
        pid = f"P{i + 1:04d}"
        flipped = drawn.flipped is not None and bool(drawn.flipped[i])
        label = "1" if drawn.is_tumour[i] != flipped else "0"
        split = "test" if drawn.in_test[i] else "train"
        which = _tumour_slides(seed, i, int(n_slides), tumour_slides)
        for k in range(1, int(n_slides) + 1):
            name = f"{pid}-{k}.tif"
            slide_seed = int(np.random.SeedSequence([seed, i, k]).generate_state(1)[0])
            write_synthetic_slide(
                slides_dir / name,
                seed=slide_seed,
                tumour=bool(drawn.is_tumour[i]) and which[k - 1],
                width=size[0],
                height=size[1],
                look=look,
            )
            rows.append((f"slides/{name}", pid, label, split))
            if progress is not None:
                progress(len(rows), total)
    return rows


def _tumour_slides(seed: int, patient: int, n: int, chance: float) -> list[bool]:
    """Which of a tumour patient's ``n`` slides hold tumour (at least one)."""
    if chance >= 1.0:
        return [True] * n
    rng = np.random.default_rng(np.random.SeedSequence([seed, patient, 0x7A]))
    which = [bool(x) for x in rng.random(n) < chance]
    if not any(which):
        which[int(rng.integers(n))] = True
    return which


def _write_manifest(manifest: Path, rows: list[_Row]) -> None:
    """Write ``manifest.csv``: the header, then one row per slide."""
    with manifest.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh, lineterminator="\n")
        writer.writerow(("slide", "patient_id", "label", "split"))
        writer.writerows(rows)
