"""``run_doctor``: every check of one site, in the table's order."""

from __future__ import annotations

from pathlib import Path

from slidefed.client.config import load_site_config
from slidefed.common.errors import SlidefedError
from slidefed.deploy.doctor.data_checks import (
    check_approvals,
    check_budget,
    check_cache,
    check_disk,
    check_gpu,
    check_manifest,
    check_slides,
)
from slidefed.deploy.doctor.key_checks import check_certificate, check_node_key
from slidefed.deploy.doctor.prepare_checks import (
    check_cohort,
    check_modality,
    check_preparation,
    check_qc,
)
from slidefed.deploy.doctor.report import Check, DoctorReport, guard
from slidefed.deploy.doctor.superlink_checks import superlink_checks


def run_doctor(
    config_path: Path,
    *,
    superlink: str | None = None,
    ca: Path | None = None,
    insecure: bool = False,
    gpu: bool = True,
) -> DoctorReport:
    """Every check of one site.

    Parameters
    ----------
    config_path : Path
        ``site.toml``.
    superlink : str, optional
        ``HOST:PORT`` of the SuperLink, for the network checks.
    ca : Path, optional
        The federation's CA certificate.
    insecure : bool
        Probe the SuperLink without TLS (tests only).
    gpu : bool
        Whether to check for a GPU (imports torch).

    Returns
    -------
    DoctorReport
        The checks, in table order.
    """
    try:
        config = load_site_config(config_path)
    except SlidefedError as exc:
        check = Check(name="site config", status="fail", detail=str(exc))
        return DoctorReport(site="?", checks=[check])
    checks = [Check(name="site config", status="ok", detail=str(config_path))]
    checks.append(guard("manifest valid", lambda: check_manifest(config)))
    checks.append(guard("slides readable", lambda: check_slides(config)))
    checks.append(guard("cache writable", lambda: check_cache(config)))
    checks.append(
        guard("slides prepared", lambda: check_preparation(config, config_path))
    )
    checks.append(guard("slide QC", lambda: check_qc(config, config_path)))
    checks.append(guard("slide modality", lambda: check_modality(config, config_path)))
    checks.append(guard("cohort after QC", lambda: check_cohort(config)))
    checks.append(guard("disk space", lambda: check_disk(config)))
    if gpu:
        checks.append(guard("GPU visible", check_gpu))
    checks.append(guard("certificates valid", lambda: check_certificate(ca, superlink)))
    checks += superlink_checks(superlink, ca, insecure=insecure)
    checks.append(guard("node key registered", lambda: check_node_key(config)))
    checks.append(guard("apps approved", lambda: check_approvals(config_path)))
    checks.append(guard("budget remaining", lambda: check_budget(config)))
    return DoctorReport(site=config.site.name, checks=checks)


__all__ = ["run_doctor"]
