"""The SuperLink's TLS certificate, issued by the federation's CA.

It names the DNS names and IP addresses that sites dial (subjectAltName; a common
name alone is not enough for modern TLS clients) and carries
``extendedKeyUsage=serverAuth``. Re-issuing it with other names means moving the
old pair aside first: files are never silently overwritten.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
from collections.abc import Sequence
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from slidefed.common.errors import ConfigError
from slidefed.common.pki._issuing import (
    IssueResult,
    certificate_builder,
    exists,
    key_usage,
    new_key,
    write_pair,
)
from slidefed.common.pki.certificates import (
    key_matches,
    load_certificate,
    load_private_key,
    subject_alt_names,
    verify_issued_by,
)

SERVER_DAYS = 825
"""Validity of a SuperLink certificate (the CA/Browser Forum's old maximum)."""

IpAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


def ensure_server_certificate(
    ca_cert_path: Path,
    ca_key_path: Path,
    cert_path: Path,
    key_path: Path,
    *,
    dns_names: Sequence[str],
    ip_addresses: Sequence[str],
    common_name: str = "slidefed-superlink",
    days: int = SERVER_DAYS,
) -> IssueResult:
    """Issue the SuperLink's TLS certificate once; reuse it while it still fits.

    Parameters
    ----------
    ca_cert_path, ca_key_path : Path
        The root CA (see :func:`slidefed.common.pki.ensure_ca`).
    cert_path, key_path : Path
        Server certificate (PEM) and key (PEM, mode 0600).
    dns_names, ip_addresses : sequence of str
        subjectAltName entries: every name and address that sites and the
        operator use to reach the SuperLink.
    common_name : str
        Subject CN.
    days : int
        Validity of a new certificate.

    Returns
    -------
    IssueResult
        Both paths under ``created`` or under ``reused``.

    Raises
    ------
    ConfigError
        If no name is given, an IP address is invalid, or existing files do not
        fit (other names, another CA, a foreign key, expired): they are never
        overwritten; the message says what to move aside.
    """
    ips = [_parse_ip(ip) for ip in ip_addresses]
    dns = [_check_dns(name) for name in dns_names]
    if not dns and not ips:
        raise ConfigError("give at least one --dns NAME or --ip IP for the SuperLink")
    ca_cert = load_certificate(ca_cert_path)
    have_cert, have_key = exists(cert_path), exists(key_path)
    if have_cert and have_key:
        _check_existing(ca_cert, cert_path, key_path, set(dns), {str(i) for i in ips})
        return IssueResult(reused=[cert_path, key_path])
    if have_cert or have_key:
        present = cert_path if have_cert else key_path
        raise ConfigError(
            f"{present} exists without its pair; move it aside and run again"
        )
    ca_key = load_private_key(ca_key_path)
    if not key_matches(ca_cert, ca_key):
        raise ConfigError(f"{ca_key_path} does not belong to {ca_cert_path}")
    key = new_key()
    cert = _issue(ca_cert, ca_key, key, dns, ips, common_name=common_name, days=days)
    write_pair(cert_path, cert, key_path, key)
    return IssueResult(created=[cert_path, key_path])


def _issue(
    ca_cert: x509.Certificate,
    ca_key: ec.EllipticCurvePrivateKey,
    key: ec.EllipticCurvePrivateKey,
    dns: list[str],
    ips: list[IpAddress],
    *,
    common_name: str,
    days: int,
) -> x509.Certificate:
    sans: list[x509.GeneralName] = [x509.DNSName(n) for n in dns]
    sans += [x509.IPAddress(i) for i in ips]
    return (
        certificate_builder(
            subject=x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]),
            issuer=ca_cert.subject,
            public_key=key.public_key(),
            days=days,
            not_after_cap=ca_cert.not_valid_after_utc,
        )
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False
        )
        .add_extension(key_usage(ca=False), critical=True)
        .add_extension(
            x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False
        )
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )


def _check_existing(
    ca_cert: x509.Certificate,
    cert_path: Path,
    key_path: Path,
    dns: set[str],
    ips: set[str],
) -> None:
    cert = load_certificate(cert_path)
    aside = (
        f"move {cert_path} and {key_path} aside and run 'slidefed server init' again"
    )
    if not key_matches(cert, load_private_key(key_path)):
        raise ConfigError(f"{key_path} does not belong to {cert_path}; {aside}")
    if not verify_issued_by(cert, ca_cert):
        raise ConfigError(
            f"{cert_path} was not issued by this federation's CA; {aside}"
        )
    have_dns, have_ips = subject_alt_names(cert)
    if set(have_dns) != dns or set(have_ips) != ips:
        raise ConfigError(
            f"{cert_path} names DNS {sorted(have_dns)} IP {sorted(have_ips)}, not the "
            f"DNS {sorted(dns)} IP {sorted(ips)} asked for; to re-issue it, {aside}"
        )
    if cert.not_valid_after_utc <= dt.datetime.now(dt.UTC):
        raise ConfigError(f"{cert_path} has expired; to renew it, {aside}")


def _parse_ip(text: str) -> IpAddress:
    try:
        return ipaddress.ip_address(text)
    except ValueError as exc:
        raise ConfigError(
            f"--ip {text!r} is not an IP address; e.g. --ip 10.0.0.5"
        ) from exc


def _check_dns(name: str) -> str:
    label = name.strip().lower().rstrip(".")
    ok = (
        bool(label)
        and len(label) <= 253
        and all(
            part
            and len(part) <= 63
            and part.replace("-", "").replace("*", "").isalnum()
            for part in label.split(".")
        )
    )
    if not ok:
        raise ConfigError(
            f"--dns {name!r} is not a DNS name; e.g. --dns superlink.example.org"
        )
    return label


__all__ = ["SERVER_DAYS", "ensure_server_certificate"]
