"""``slidefed site doctor``: one table of checks, each with its fix.

Every check returns a :class:`Check`; none raises. A check that needs something the
operator did not give (``--superlink``, ``--ca``) is skipped and says what to pass.
``site doctor`` exits non-zero when any check failed; warnings do not fail it.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import email.utils
import json
import shutil
import socket
import ssl
import stat
import tempfile
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict

from slidefed.client.config import SiteConfig, load_site_config
from slidefed.common.errors import SlidefedError

Status = Literal["ok", "warn", "fail", "skip"]

SLIDE_SAMPLE = 3
"""How many slides of the manifest are opened."""

MIN_FREE_GB = 2.0
"""Below this much free space in the state folder the check fails."""

WARN_FREE_GB = 20.0
"""Below this much free space the check warns."""

MAX_SKEW_S = 60.0
"""Clock difference with the SuperLink above which the check warns (fails at 5x)."""

NODE_STATUS_FILE = "node-status.json"
"""Where ``site start`` records how the SuperNode last ended (in the state folder)."""


class Check(BaseModel):
    """One line of the doctor's table."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    status: Status
    detail: str
    fix: str = ""


class NodeStatus(BaseModel):
    """How the site's SuperNode last ended, written by ``site start``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    exit_code: int
    flower_code: int | None = None
    cause: str = ""
    at: str


class DoctorReport(BaseModel):
    """All checks of one site."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    site: str
    checks: list[Check]

    @property
    def failed(self) -> bool:
        """Whether any check failed."""
        return any(c.status == "fail" for c in self.checks)


def _guard(name: str, fn: Callable[[], Check]) -> Check:
    """Run one check; an unexpected error becomes its failure, not a traceback."""
    try:
        return fn()
    except SlidefedError as exc:
        return Check(name=name, status="fail", detail=str(exc), fix="see the message")
    except (OSError, ValueError) as exc:
        return Check(name=name, status="fail", detail=f"{type(exc).__name__}: {exc}")


# ------------------------------------------------------------------ data
def check_manifest(config: SiteConfig) -> Check:
    """The manifest parses and has usable rows.

    Parameters
    ----------
    config : SiteConfig
        The site.

    Returns
    -------
    Check
        The result.
    """
    from slidefed.client.data.manifest import load_manifest

    manifest = load_manifest(config.manifest_path)
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
        The result.
    """
    from slidefed.client.data.manifest import load_manifest
    from slidefed.client.slides.core import open_slide

    rows = load_manifest(config.manifest_path).rows
    step = max(1, len(rows) // max(sample, 1))
    picked = rows[::step][:sample]
    bad: list[str] = []
    for row in picked:
        path = config.slides_root / row.slide
        try:
            with open_slide(path) as slide:
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
    return Check(
        name="slides readable",
        status="ok",
        detail=f"{len(picked)} of {len(rows)} slides opened",
    )


def check_cache(config: SiteConfig) -> Check:
    """The feature cache folder is writable.

    Parameters
    ----------
    config : SiteConfig
        The site.

    Returns
    -------
    Check
        The result.
    """
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

    Parameters
    ----------
    config : SiteConfig
        The site.

    Returns
    -------
    Check
        The result.
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


# ------------------------------------------------------------------ keys
def check_node_key(config: SiteConfig) -> Check:
    """The node key exists, is P-384, private; and what the last start said.

    Parameters
    ----------
    config : SiteConfig
        The site.

    Returns
    -------
    Check
        The result. Registration can only be confirmed by the coordinator; a
        previous ``site start`` that ended with code 305 shows it was refused.
    """
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    from slidefed.deploy.site_node import node_key_path

    name = "node key registered"
    private = node_key_path(config)
    public = Path(str(private) + ".pub")
    if not private.is_file() or not public.is_file():
        return Check(
            name=name,
            status="fail",
            detail=f"no node key at {private}",
            fix=(
                f"run 'slidefed site node-key --config {config.base_dir / 'site.toml'}' "
                "and send node_key.pub to the coordinator"
            ),
        )
    key = serialization.load_ssh_public_key(b" ".join(public.read_bytes().split()[:2]))
    if not isinstance(key, ec.EllipticCurvePublicKey) or key.curve.name != "secp384r1":
        return Check(name=name, status="fail", detail=f"{public} is not a P-384 key")
    if stat.S_IMODE(private.stat().st_mode) & 0o077:
        return Check(
            name=name,
            status="fail",
            detail=f"{private} is readable by other users",
            fix=f"chmod 600 {private}",
        )
    last = _node_status(config)
    if last is not None and last.cause == "not_registered":
        return Check(
            name=name,
            status="fail",
            detail=f"the SuperLink refused this node key at {last.at}",
            fix=(
                f"send {public} to the coordinator: 'slidefed server register-site "
                "node_key.pub --name SITE --config server.toml'"
            ),
        )
    return Check(
        name=name,
        status="ok",
        detail=(
            "P-384 key present (mode 0600); registration is confirmed by the "
            "coordinator ('flwr supernode ls') or by a 'site start' that stays up"
        ),
    )


def _node_status(config: SiteConfig) -> NodeStatus | None:
    path = config.state_dir / NODE_STATUS_FILE
    if not path.is_file():
        return None
    with contextlib.suppress(ValueError):
        return NodeStatus.model_validate_json(path.read_text(encoding="utf-8"))
    return None


def record_node_status(
    config: SiteConfig, exit_code: int, flower_code: int | None = None, cause: str = ""
) -> None:
    """Remember how the SuperNode ended, for ``site doctor``.

    Parameters
    ----------
    config : SiteConfig
        The site.
    exit_code : int
        Exit code of ``site start``'s first process to end.
    flower_code : int, optional
        Flower's exit code from the SuperNode's log (305: no activation).
    cause : str
        ``not_registered``, ``tls_untrusted`` or empty.
    """
    status = NodeStatus(
        exit_code=exit_code,
        flower_code=flower_code,
        cause=cause,
        at=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
    )
    with contextlib.suppress(OSError):
        (config.state_dir / NODE_STATUS_FILE).write_text(status.model_dump_json())


def clear_node_status(config: SiteConfig) -> None:
    """Forget an earlier failure: the SuperLink has just accepted this node.

    Parameters
    ----------
    config : SiteConfig
        The site.
    """
    (config.state_dir / NODE_STATUS_FILE).unlink(missing_ok=True)


def check_approvals(config_path: Path) -> Check:
    """The site approves at least one app version.

    Parameters
    ----------
    config_path : Path
        ``site.toml``.

    Returns
    -------
    Check
        The result.
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
    from slidefed.client.privacy.ledger import PrivacyLedger, epsilon

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


# --------------------------------------------------------------- network
def check_certificate(ca: Path | None, superlink: str | None) -> Check:
    """The CA file is valid, and the SuperLink's certificate chains to it.

    Parameters
    ----------
    ca : Path or None
        The federation's CA certificate.
    superlink : str or None
        ``HOST:PORT``; when given, the served certificate is checked too.

    Returns
    -------
    Check
        The result (``warn`` within 30 days of expiry).
    """
    from slidefed.common.pki import (
        EXPIRY_WARNING_DAYS,
        certificate_info,
    )

    name = "certificates valid"
    if ca is None:
        return Check(
            name=name, status="skip", detail="no --ca given", fix="pass --ca CA.crt"
        )
    if not ca.is_file():
        return Check(
            name=name,
            status="fail",
            detail=f"{ca}: no such file",
            fix="copy the federation's ca.crt from the coordinator and pass its path",
        )
    info = certificate_info(ca)
    if not info.is_ca:
        return Check(
            name=name,
            status="fail",
            detail=f"{ca} is not a CA certificate",
            fix="use pki/ca.crt from the coordinator",
        )
    checked = [("CA", info.days_left())]
    if superlink is not None:
        host, port = _split(superlink)
        context = ssl.create_default_context(cafile=str(ca))
        try:
            with (
                socket.create_connection((host, port), timeout=5) as raw,
                context.wrap_socket(raw, server_hostname=host) as tls,
            ):
                der = tls.getpeercert(binary_form=True)
        except ssl.SSLCertVerificationError as exc:
            return Check(
                name=name,
                status="fail",
                detail=f"the SuperLink's certificate does not verify: {exc.verify_message}",
                fix=(
                    "use the CA of this federation, and a --superlink name that the "
                    "certificate lists (ask the coordinator)"
                ),
            )
        except OSError:
            der = None
        if der is not None:
            from cryptography import x509

            cert = x509.load_der_x509_certificate(der)
            left = (cert.not_valid_after_utc - dt.datetime.now(dt.UTC)).days
            checked.append(("SuperLink", float(left)))
    worst_name, worst = min(checked, key=lambda item: item[1])
    detail = ", ".join(f"{n} expires in {d:.0f} days" for n, d in checked)
    if worst <= 0:
        return Check(
            name=name,
            status="fail",
            detail=f"{worst_name} certificate has expired",
            fix="ask the coordinator for a renewed certificate",
        )
    if worst < EXPIRY_WARNING_DAYS:
        return Check(
            name=name,
            status="warn",
            detail=detail,
            fix="ask the coordinator to renew it before it expires",
        )
    return Check(name=name, status="ok", detail=detail)


def probe_superlink(
    superlink: str, ca: Path | None, *, insecure: bool = False, timeout: float = 5.0
) -> tuple[Check, Check]:
    """``GET /health`` over HTTPS with the CA, and the clock skew from its Date.

    Parameters
    ----------
    superlink : str
        ``HOST:PORT``.
    ca : Path or None
        The federation's CA (required unless ``insecure``).
    insecure : bool
        Plain HTTP (tests only).
    timeout : float
        Seconds.

    Returns
    -------
    tuple of (Check, Check)
        Reachability and clock skew.
    """
    reach, clock = "SuperLink reachable", "clock skew"
    if ca is None and not insecure:
        skip = Check(name=reach, status="skip", detail="no --ca given", fix="pass --ca")
        return skip, Check(name=clock, status="skip", detail="needs the SuperLink")
    host, port = _split(superlink)
    scheme = "http" if insecure else "https"
    url = f"{scheme}://{host}:{port}/health"
    context = None if insecure else ssl.create_default_context(cafile=str(ca))
    try:
        with urllib.request.urlopen(url, timeout=timeout, context=context) as answer:  # noqa: S310 - http(s) only
            code = int(answer.status)
            date = answer.headers.get("Date")
    except urllib.error.URLError as exc:
        reason = exc.reason
        tls = isinstance(reason, ssl.SSLError)
        fix = (
            "the certificate does not verify with this CA: use the federation's CA "
            "and a host name the certificate lists"
            if tls
            else "check the address, that the SuperLink runs, and that this network "
            "allows outbound HTTPS to it (the site needs no inbound port)"
        )
        failed = Check(name=reach, status="fail", detail=f"{url}: {reason}", fix=fix)
        return failed, Check(name=clock, status="skip", detail="SuperLink unreachable")
    except (OSError, ValueError) as exc:
        failed = Check(name=reach, status="fail", detail=f"{url}: {exc}")
        return failed, Check(name=clock, status="skip", detail="SuperLink unreachable")
    ok = Check(
        name=reach,
        status="ok" if code == 200 else "fail",
        detail=f"{url} answered {code}" + (" over TLS" if not insecure else ""),
    )
    return ok, _skew_check(date)


def _skew_check(date: str | None) -> Check:
    name = "clock skew"
    if not date:
        return Check(name=name, status="skip", detail="the SuperLink sent no Date")
    remote = email.utils.parsedate_to_datetime(date)
    skew = (dt.datetime.now(dt.UTC) - remote).total_seconds()
    detail = f"{skew:+.0f} s against the SuperLink"
    fix = "synchronise this machine's clock (NTP: timedatectl set-ntp true)"
    if abs(skew) > 5 * MAX_SKEW_S:
        return Check(name=name, status="fail", detail=detail, fix=fix)
    if abs(skew) > MAX_SKEW_S:
        return Check(name=name, status="warn", detail=detail, fix=fix)
    return Check(name=name, status="ok", detail=detail)


def _split(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise ValueError(f"--superlink {address!r} must be HOST:PORT")
    return host.strip("[]"), int(port)


# ------------------------------------------------------------------ all
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
    checks.append(_guard("manifest valid", lambda: check_manifest(config)))
    checks.append(_guard("slides readable", lambda: check_slides(config)))
    checks.append(_guard("cache writable", lambda: check_cache(config)))
    checks.append(_guard("disk space", lambda: check_disk(config)))
    if gpu:
        checks.append(_guard("GPU visible", check_gpu))
    checks.append(
        _guard("certificates valid", lambda: check_certificate(ca, superlink))
    )
    if superlink is None:
        checks.append(
            Check(
                name="SuperLink reachable",
                status="skip",
                detail="no --superlink given",
                fix="pass --superlink HOST:PORT --ca CA.crt",
            )
        )
        checks.append(
            Check(name="clock skew", status="skip", detail="needs --superlink")
        )
    else:
        try:
            reach, skew = probe_superlink(superlink, ca, insecure=insecure)
        except (OSError, ValueError) as exc:
            reach = Check(
                name="SuperLink reachable",
                status="fail",
                detail=str(exc),
                fix="pass --superlink HOST:PORT and --ca pointing at the CA file",
            )
            skew = Check(name="clock skew", status="skip", detail="needs the SuperLink")
        checks += [reach, skew]
    checks.append(_guard("node key registered", lambda: check_node_key(config)))
    checks.append(_guard("apps approved", lambda: check_approvals(config_path)))
    checks.append(_guard("budget remaining", lambda: check_budget(config)))
    return DoctorReport(site=config.site.name, checks=checks)


def render_text(report: DoctorReport) -> str:
    """The report as a plain-text table (one line per check, fix below it).

    Parameters
    ----------
    report : DoctorReport
        The checks.

    Returns
    -------
    str
        Text.
    """
    width = max(len(c.name) for c in report.checks)
    lines = [f"site {report.site}"]
    for c in report.checks:
        lines.append(f"  {c.status.upper():4}  {c.name:<{width}}  {c.detail}")
        if c.fix and c.status in ("fail", "warn", "skip"):
            lines.append(f"        {'':<{width}}  fix: {c.fix}")
    failed = sum(c.status == "fail" for c in report.checks)
    warned = sum(c.status == "warn" for c in report.checks)
    lines.append(f"{failed} failed, {warned} warnings")
    return "\n".join(lines)


def render_json(report: DoctorReport) -> str:
    """The report as JSON (``site``, ``ok``, ``checks``).

    Parameters
    ----------
    report : DoctorReport
        The checks.

    Returns
    -------
    str
        JSON text.
    """
    data = report.model_dump(mode="json")
    data["ok"] = not report.failed
    return json.dumps(data, indent=2)


__all__ = [
    "Check",
    "DoctorReport",
    "NodeStatus",
    "check_approvals",
    "check_budget",
    "check_cache",
    "check_certificate",
    "check_disk",
    "check_gpu",
    "check_manifest",
    "check_node_key",
    "check_slides",
    "clear_node_status",
    "probe_superlink",
    "record_node_status",
    "render_json",
    "render_text",
    "run_doctor",
]
