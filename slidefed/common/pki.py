"""A small PKI for one federation: a stable root CA and the SuperLink's certificate.

The root CA is made once and then only reused: :func:`ensure_ca` never replaces a
CA certificate or key, and refuses a key that does not match its certificate. The
SuperLink certificate is issued by that CA with the DNS names and IP addresses that
sites dial (subjectAltName; a common name alone is not enough for modern TLS
clients) and ``extendedKeyUsage=serverAuth``. Re-issuing it with other names means
moving the old pair aside first: files are never silently overwritten.

Keys are ECDSA P-256 (PEM, PKCS8, unencrypted, mode 0600); certificates are PEM
(mode 0644). This module imports only the standard library, pydantic and
``cryptography``.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import ipaddress
import os
from collections.abc import Sequence
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from pydantic import BaseModel, ConfigDict

from slidefed.common.errors import ConfigError

CA_DAYS = 3650
"""Validity of the root CA (ten years)."""

SERVER_DAYS = 825
"""Validity of a SuperLink certificate (the CA/Browser Forum's old maximum)."""

EXPIRY_WARNING_DAYS = 30
"""A certificate closer than this to its end is reported as near expiry."""


class CertificateInfo(BaseModel):
    """What an operator needs to know about one certificate file."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    path: Path
    subject: str
    issuer: str
    not_before: dt.datetime
    not_after: dt.datetime
    dns_names: tuple[str, ...]
    ip_addresses: tuple[str, ...]
    is_ca: bool
    sha256: str

    def days_left(self, now: dt.datetime | None = None) -> float:
        """Days until the certificate expires (negative once it has).

        Parameters
        ----------
        now : datetime, optional
            The time to compare with (default: now, UTC).

        Returns
        -------
        float
            Days left.
        """
        moment = now or dt.datetime.now(dt.UTC)
        return (self.not_after - moment).total_seconds() / 86400.0


class IssueResult(BaseModel):
    """Which files a PKI step created and which it found and reused."""

    model_config = ConfigDict(extra="forbid")

    created: list[Path] = []
    reused: list[Path] = []


# ----------------------------------------------------------------------- reading
def load_certificate(path: Path) -> x509.Certificate:
    """Read one PEM certificate.

    Parameters
    ----------
    path : Path
        PEM file (the first certificate is used).

    Returns
    -------
    x509.Certificate
        The certificate.

    Raises
    ------
    ConfigError
        If the file is missing, unreadable or not a PEM certificate.
    """
    data = _read(path, "certificate")
    try:
        return x509.load_pem_x509_certificate(data)
    except ValueError as exc:
        raise ConfigError(
            f"{path} is not a PEM certificate ({exc}); give the .crt file made by "
            "'slidefed server init'"
        ) from exc


def load_private_key(path: Path) -> ec.EllipticCurvePrivateKey:
    """Read an unencrypted PEM EC private key (CA or TLS key).

    Parameters
    ----------
    path : Path
        PEM file.

    Returns
    -------
    ec.EllipticCurvePrivateKey
        The key.

    Raises
    ------
    ConfigError
        If the file is missing, encrypted, or not an EC private key.
    """
    data = _read(path, "private key")
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except TypeError as exc:
        raise ConfigError(
            f"{path} is encrypted; slidefed needs it unencrypted"
        ) from exc
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise ConfigError(f"{path} is not a PEM private key ({exc})") from exc
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise ConfigError(
            f"{path} holds a {type(key).__name__}, not an EC key; "
            "move it aside and run 'slidefed server init' again"
        )
    return key


def certificate_info(path: Path) -> CertificateInfo:
    """Subject, issuer, validity, names and fingerprint of a certificate file.

    Parameters
    ----------
    path : Path
        PEM certificate.

    Returns
    -------
    CertificateInfo
        The facts.

    Raises
    ------
    ConfigError
        If the file cannot be read as a certificate.
    """
    cert = load_certificate(path)
    dns, ips = _sans(cert)
    try:
        is_ca = bool(
            cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
        )
    except x509.ExtensionNotFound:
        is_ca = False
    return CertificateInfo(
        path=path,
        subject=cert.subject.rfc4514_string(),
        issuer=cert.issuer.rfc4514_string(),
        not_before=cert.not_valid_before_utc,
        not_after=cert.not_valid_after_utc,
        dns_names=tuple(sorted(dns)),
        ip_addresses=tuple(sorted(ips)),
        is_ca=is_ca,
        sha256=fingerprint(cert),
    )


def fingerprint(cert: x509.Certificate) -> str:
    """SHA-256 fingerprint of a certificate (hex, colon-free).

    Parameters
    ----------
    cert : x509.Certificate
        The certificate.

    Returns
    -------
    str
        64 hex digits of the SHA-256 of its DER encoding.
    """
    return hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).hexdigest()


def verify_issued_by(cert: x509.Certificate, ca: x509.Certificate) -> bool:
    """Whether ``ca`` signed ``cert`` (signature and issuer name).

    Parameters
    ----------
    cert : x509.Certificate
        The certificate to check.
    ca : x509.Certificate
        The claimed issuer.

    Returns
    -------
    bool
        True when the issuer name matches and the signature verifies.
    """
    if cert.issuer != ca.subject:
        return False
    try:
        cert.verify_directly_issued_by(ca)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


# ----------------------------------------------------------------------- issuing
def ensure_ca(
    cert_path: Path,
    key_path: Path,
    *,
    common_name: str = "slidefed federation root CA",
    days: int = CA_DAYS,
) -> IssueResult:
    """Create the root CA once; afterwards reuse it and never replace it.

    Parameters
    ----------
    cert_path, key_path : Path
        CA certificate (given to every site) and its private key (stays with the
        coordinator, mode 0600).
    common_name : str
        Subject CN of a new CA.
    days : int
        Validity of a new CA.

    Returns
    -------
    IssueResult
        Both paths under ``created`` or under ``reused``.

    Raises
    ------
    ConfigError
        If only one of the two files exists, if the key does not belong to the
        certificate, or if the certificate is not a CA.
    """
    have_cert, have_key = _exists(cert_path), _exists(key_path)
    if have_cert and have_key:
        cert = load_certificate(cert_path)
        key = load_private_key(key_path)
        if not _same_key(cert, key):
            raise ConfigError(
                f"{key_path} does not belong to {cert_path}; restore the CA key that "
                "made this certificate (the CA is never replaced silently)"
            )
        if not certificate_info(cert_path).is_ca:
            raise ConfigError(f"{cert_path} is not a CA certificate; move it aside")
        return IssueResult(reused=[cert_path, key_path])
    if have_cert or have_key:
        present, missing = (cert_path, key_path) if have_cert else (key_path, cert_path)
        raise ConfigError(
            f"{present} exists but {missing} does not; restore {missing}, or move "
            f"{present} aside to make a new CA (every site must then get the new CA)"
        )
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = dt.datetime.now(dt.UTC)
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(ski, critical=False)
        .sign(key, hashes.SHA256())
    )
    _write_pair(cert_path, cert, key_path, key)
    return IssueResult(created=[cert_path, key_path])


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
        The root CA (see :func:`ensure_ca`).
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
    have_cert, have_key = _exists(cert_path), _exists(key_path)
    if have_cert and have_key:
        _check_existing_server_cert(
            ca_cert, cert_path, key_path, set(dns), {str(i) for i in ips}
        )
        return IssueResult(reused=[cert_path, key_path])
    if have_cert or have_key:
        present = cert_path if have_cert else key_path
        raise ConfigError(
            f"{present} exists without its pair; move it aside and run again"
        )
    ca_key = load_private_key(ca_key_path)
    if not _same_key(ca_cert, ca_key):
        raise ConfigError(f"{ca_key_path} does not belong to {ca_cert_path}")
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    sans: list[x509.GeneralName] = [x509.DNSName(n) for n in dns]
    sans += [x509.IPAddress(i) for i in ips]
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(
            min(now + dt.timedelta(days=days), ca_cert.not_valid_after_utc)
        )
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False
        )
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=True,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(
            x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False
        )
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    _write_pair(cert_path, cert, key_path, key)
    return IssueResult(created=[cert_path, key_path])


# ----------------------------------------------------------------------- helpers
def _check_existing_server_cert(
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
    if not _same_key(cert, load_private_key(key_path)):
        raise ConfigError(f"{key_path} does not belong to {cert_path}; {aside}")
    if not verify_issued_by(cert, ca_cert):
        raise ConfigError(
            f"{cert_path} was not issued by this federation's CA; {aside}"
        )
    have_dns, have_ips = _sans(cert)
    if set(have_dns) != dns or set(have_ips) != ips:
        raise ConfigError(
            f"{cert_path} names DNS {sorted(have_dns)} IP {sorted(have_ips)}, not the "
            f"DNS {sorted(dns)} IP {sorted(ips)} asked for; to re-issue it, {aside}"
        )
    if cert.not_valid_after_utc <= dt.datetime.now(dt.UTC):
        raise ConfigError(f"{cert_path} has expired; to renew it, {aside}")


def _sans(cert: x509.Certificate) -> tuple[list[str], list[str]]:
    try:
        ext = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return [], []
    dns = [str(n) for n in ext.get_values_for_type(x509.DNSName)]
    ips = [str(i) for i in ext.get_values_for_type(x509.IPAddress)]
    return dns, ips


def _same_key(cert: x509.Certificate, key: ec.EllipticCurvePrivateKey) -> bool:
    fmt = serialization.PublicFormat.SubjectPublicKeyInfo
    enc = serialization.Encoding.DER
    return bool(
        cert.public_key().public_bytes(enc, fmt)
        == key.public_key().public_bytes(enc, fmt)
    )


def _parse_ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
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


def _exists(path: Path) -> bool:
    return path.exists() or path.is_symlink()


def _read(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError as exc:
        raise ConfigError(
            f"{what} {path} does not exist; create it with 'slidefed server init'"
        ) from exc
    except OSError as exc:
        raise ConfigError(f"{what} {path} cannot be read: {exc.strerror}") from exc


def _write_pair(
    cert_path: Path,
    cert: x509.Certificate,
    key_path: Path,
    key: ec.EllipticCurvePrivateKey,
) -> None:
    key_bytes = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    write_new_file(key_path, key_bytes, mode=0o600)
    try:
        write_new_file(
            cert_path, cert.public_bytes(serialization.Encoding.PEM), mode=0o644
        )
    except BaseException:
        key_path.unlink(missing_ok=True)
        raise


def write_new_file(path: Path, data: bytes, *, mode: int) -> None:
    """Create ``path`` exclusively with ``mode`` and write ``data`` durably.

    Parameters
    ----------
    path : Path
        File to create; its parent folders are created.
    data : bytes
        Content.
    mode : int
        Permission bits (0o600 for private files), applied whatever the umask.

    Raises
    ------
    ConfigError
        If the file exists (nothing is ever overwritten) or cannot be created.
    """
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    except FileExistsError as exc:
        raise ConfigError(
            f"{path} already exists; slidefed never overwrites it"
        ) from exc
    except OSError as exc:
        raise ConfigError(f"cannot create {path}: {exc.strerror}") from exc
    with os.fdopen(fd, "wb") as handle:
        os.fchmod(handle.fileno(), mode)
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())


__all__ = [
    "CA_DAYS",
    "EXPIRY_WARNING_DAYS",
    "SERVER_DAYS",
    "CertificateInfo",
    "IssueResult",
    "certificate_info",
    "ensure_ca",
    "ensure_server_certificate",
    "fingerprint",
    "load_certificate",
    "load_private_key",
    "verify_issued_by",
    "write_new_file",
]
