"""The doctor's checks of the site's last preparation and its QC.

They read ``state/prepare-report.json`` and ``state/qc/qc-report.json`` (never a
slide): slides skipped (unreadable or failed QC), QC warnings, slides whose
modality does not fit the encoder, and what is left for training and evaluation
once the skipped slides are gone: test patients and classes below the policy's
minimum (``policy.min_eval_patients``), for which every round's evaluation
metrics would be withheld.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

from slidefed.client.config import SiteConfig
from slidefed.client.prepare.report import REPORT_FILE, PrepareReport
from slidefed.deploy.doctor.report import Check

#: Slides named per check line.
NAMED = 3


def _qc_page(config_path: Path) -> str:
    return f"slidefed site qc --config {config_path} --out qc.html"


def load_prepare_report(config: SiteConfig) -> PrepareReport | None:
    """The last prepare report, or None when there is none (or it is unreadable)."""
    try:
        return PrepareReport.model_validate_json(
            (config.state_dir / REPORT_FILE).read_bytes()
        )
    except (OSError, ValueError):
        return None


def check_preparation(config: SiteConfig, config_path: Path) -> Check:
    """Slides skipped by the last preparation, and why.

    Returns
    -------
    Check
        ``warn`` when the site was never prepared, the run did not finish, or a
        slide was skipped (unreadable, no tissue, failed QC), naming the first.
    """
    name = "slides prepared"
    if config.tiles is not None:
        return Check(name=name, status="skip", detail="a site of labelled tiles")
    report = load_prepare_report(config)
    prepare = f"slidefed site prepare --config {config_path}"
    if report is None:
        return Check(
            name=name, status="warn", detail="the site was never prepared", fix=prepare
        )
    if not report.complete:
        return Check(
            name=name,
            status="warn",
            detail="the last preparation did not finish",
            fix=prepare,
        )
    skipped = report.skipped
    total = len(report.slides)
    if not skipped:
        return Check(name=name, status="ok", detail=f"{total} of {total} slides ready")
    failed_qc = sum(s.qc == "fail" for s in skipped)
    named = "; ".join(f"#{s.row} {s.reason}" for s in skipped[:NAMED])
    more = f" (and {len(skipped) - NAMED} more)" if len(skipped) > NAMED else ""
    return Check(
        name=name,
        status="warn",
        detail=(
            f"{len(skipped)} of {total} slides skipped ({failed_qc} failed QC, "
            f"{len(skipped) - failed_qc} unreadable or without tissue): {named}{more}"
        ),
        fix=(
            f"see why on the QC page ('{_qc_page(config_path)}'); rescan or "
            "replace the slides named, or remove their rows from the manifest; "
            f"then run '{prepare}'"
        ),
    )


def check_qc(config: SiteConfig, config_path: Path) -> Check:
    """Slides that failed QC or got a QC warning in the last preparation."""
    from slidefed.client.prepare.qc import load_site_qc

    name = "slide QC"
    if config.tiles is not None or not config.qc.enabled:
        return Check(name=name, status="skip", detail="QC is off for this site")
    report = load_site_qc(config)
    if report is None or not report.slides:
        return Check(
            name=name,
            status="skip",
            detail="no QC results yet",
            fix=f"slidefed site prepare --config {config_path}",
        )
    counts = (
        f"{report.count('pass')} pass, {report.count('warn')} warn, "
        f"{report.count('fail')} fail"
    )
    bad = [s for s in report.slides if s.verdict != "pass"]
    if not bad:
        return Check(name=name, status="ok", detail=counts)
    first = bad[0]
    return Check(
        name=name,
        status="warn",
        detail=f"{counts}; #{first.row} {first.verdict}: {'; '.join(first.reasons)}",
        fix=(
            f"look at the thumbnails ('{_qc_page(config_path)}'); rescan slides "
            "out of focus or badly exposed, or set the [qc] thresholds in site.toml"
        ),
    )


def check_modality(config: SiteConfig, config_path: Path) -> Check:
    """The slides' modality (brightfield, fluorescence) fits the encoder."""
    from slidefed.client.prepare.qc import load_site_qc
    from slidefed.client.prepare.qc.record import expected_modality

    name = "slide modality"
    report = load_site_qc(config) if config.tiles is None else None
    if report is None or not report.slides:
        return Check(name=name, status="skip", detail="no QC results yet")
    found: dict[str, int] = defaultdict(int)
    for s in report.slides:
        found[s.modality] += 1
    detail = ", ".join(f"{n} {m}" for m, n in sorted(found.items()))
    expected = expected_modality(config.qc, config.features.encoder)
    others = sorted(m for m in found if expected and m != expected)
    wrong = sum(found[m] for m in others)
    if not wrong:
        return Check(name=name, status="ok", detail=detail)
    them = " or ".join(others)
    return Check(
        name=name,
        status="warn",
        detail=(
            f"{detail}: {wrong} slides do not fit encoder "
            f"{config.features.encoder!r}, which expects {expected} slides"
        ),
        fix=(
            f"in {config_path}: set [features] encoder to one made for {them} "
            f"slides, or remove the {them} slides from the manifest and run "
            f"'slidefed site prepare' again; if the encoder is meant for them, set "
            f'[qc] modality = "{others[0] if len(others) == 1 else "any"}"'
        ),
    )


def check_cohort(config: SiteConfig) -> Check:
    """Test patients and classes left with usable slides, against the policy.

    Returns
    -------
    Check
        ``warn`` when fewer test patients than ``policy.min_eval_patients`` have
        a usable slide (every round's evaluation would be withheld), or when a
        class has fewer patients than that.
    """
    from slidefed.client.data.manifest import load_site_manifest

    name = "cohort after QC"
    report = load_prepare_report(config) if config.tiles is None else None
    if report is None:
        return Check(name=name, status="skip", detail="the site was never prepared")
    usable = {s.slide for s in report.usable}
    rows = [r for r in load_site_manifest(config).rows if r.slide in usable]
    minimum = config.policy.min_eval_patients
    test = {r.patient_id for r in rows if r.split == "test"}
    classes: dict[int, set[str]] = defaultdict(set)
    for r in rows:
        classes[r.label].add(r.patient_id)
    detail = (
        f"{len({r.patient_id for r in rows})} patients with usable slides, "
        f"{len(test)} of them for testing, {len(classes)} classes"
    )
    problems = []
    if len(test) < minimum:
        problems.append(
            f"only {len(test)} test patients (policy.min_eval_patients = {minimum}, "
            "so every round's evaluation metrics are withheld)"
        )
    small = [
        f"class {c}: {len(p)}" for c, p in sorted(classes.items()) if len(p) < minimum
    ]
    if small:
        problems.append(
            f"classes with fewer than {minimum} patients ({', '.join(small)})"
        )
    if not problems:
        return Check(name=name, status="ok", detail=detail)
    return Check(
        name=name,
        status="warn",
        detail=f"{detail}: {'; '.join(problems)}",
        fix=(
            "fix or replace the skipped slides, add patients to the manifest "
            "(split=test for evaluation), or lower policy.min_eval_patients in "
            "site.toml (a smaller cohort is easier to single out)"
        ),
    )


__all__ = [
    "NAMED",
    "check_cohort",
    "check_modality",
    "check_preparation",
    "check_qc",
    "load_prepare_report",
]
