"""The doctor's checks of keys and certificates: the node key and the federation's CA."""

from __future__ import annotations

import datetime as dt
import socket
import ssl
import stat
from pathlib import Path

from slidefed.client.config import SiteConfig
from slidefed.deploy.doctor.node_status import read_node_status
from slidefed.deploy.doctor.report import Check
from slidefed.deploy.doctor.superlink_checks import split_address

NODE_KEY, CERTIFICATES = "node key registered", "certificates valid"


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
    from slidefed.deploy.site_node import node_key_path

    private = node_key_path(config)
    public = Path(str(private) + ".pub")
    problem = _node_key_problem(config, private, public)
    if problem is not None:
        return problem
    last = read_node_status(config)
    if last is not None and last.cause == "not_registered":
        return Check(
            name=NODE_KEY,
            status="fail",
            detail=f"the SuperLink refused this node key at {last.at}",
            fix=(
                f"send {public} to the coordinator: 'slidefed server register-site "
                "node_key.pub --name SITE --config server.toml'"
            ),
        )
    return Check(
        name=NODE_KEY,
        status="ok",
        detail=(
            "P-384 key present (mode 0600); registration is confirmed by the "
            "coordinator ('flwr supernode ls') or by a 'site start' that stays up"
        ),
    )


def _node_key_problem(config: SiteConfig, private: Path, public: Path) -> Check | None:
    """A failed check when the key pair is missing, not P-384 or readable by others."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    if not private.is_file() or not public.is_file():
        return Check(
            name=NODE_KEY,
            status="fail",
            detail=f"no node key at {private}",
            fix=(
                f"run 'slidefed site node-key --config {config.base_dir / 'site.toml'}' "
                "and send node_key.pub to the coordinator"
            ),
        )
    key = serialization.load_ssh_public_key(b" ".join(public.read_bytes().split()[:2]))
    if not isinstance(key, ec.EllipticCurvePublicKey) or key.curve.name != "secp384r1":
        return Check(
            name=NODE_KEY, status="fail", detail=f"{public} is not a P-384 key"
        )
    if stat.S_IMODE(private.stat().st_mode) & 0o077:
        return Check(
            name=NODE_KEY,
            status="fail",
            detail=f"{private} is readable by other users",
            fix=f"chmod 600 {private}",
        )
    return None


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
    from slidefed.common.pki import certificate_info

    if ca is None:
        return Check(
            name=CERTIFICATES,
            status="skip",
            detail="no --ca given",
            fix="pass --ca CA.crt",
        )
    if not ca.is_file():
        return Check(
            name=CERTIFICATES,
            status="fail",
            detail=f"{ca}: no such file",
            fix="copy the federation's ca.crt from the coordinator and pass its path",
        )
    info = certificate_info(ca)
    if not info.is_ca:
        return Check(
            name=CERTIFICATES,
            status="fail",
            detail=f"{ca} is not a CA certificate",
            fix="use pki/ca.crt from the coordinator",
        )
    checked = [("CA", info.days_left())]
    if superlink is not None:
        served = _served_days_left(ca, superlink)
        if isinstance(served, Check):
            return served
        if served is not None:
            checked.append(("SuperLink", served))
    return _expiry_check(checked)


def _served_days_left(ca: Path, superlink: str) -> Check | float | None:
    """Days left of the certificate the SuperLink serves (None: not reached)."""
    from cryptography import x509

    host, port = split_address(superlink)
    context = ssl.create_default_context(cafile=str(ca))
    try:
        with (
            socket.create_connection((host, port), timeout=5) as raw,
            context.wrap_socket(raw, server_hostname=host) as tls,
        ):
            der = tls.getpeercert(binary_form=True)
    except ssl.SSLCertVerificationError as exc:
        return Check(
            name=CERTIFICATES,
            status="fail",
            detail=f"the SuperLink's certificate does not verify: {exc.verify_message}",
            fix=(
                "use the CA of this federation, and a --superlink name that the "
                "certificate lists (ask the coordinator)"
            ),
        )
    except OSError:
        return None
    if der is None:
        return None
    cert = x509.load_der_x509_certificate(der)
    return float((cert.not_valid_after_utc - dt.datetime.now(dt.UTC)).days)


def _expiry_check(checked: list[tuple[str, float]]) -> Check:
    from slidefed.common.pki import EXPIRY_WARNING_DAYS

    worst_name, worst = min(checked, key=lambda item: item[1])
    detail = ", ".join(f"{n} expires in {d:.0f} days" for n, d in checked)
    if worst <= 0:
        return Check(
            name=CERTIFICATES,
            status="fail",
            detail=f"{worst_name} certificate has expired",
            fix="ask the coordinator for a renewed certificate",
        )
    if worst < EXPIRY_WARNING_DAYS:
        return Check(
            name=CERTIFICATES,
            status="warn",
            detail=detail,
            fix="ask the coordinator to renew it before it expires",
        )
    return Check(name=CERTIFICATES, status="ok", detail=detail)


__all__ = ["check_certificate", "check_node_key"]
