"""Reading and judging certificate and key files: no file is written here."""

from __future__ import annotations

import datetime as dt
import hashlib
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from pydantic import BaseModel, ConfigDict

from slidefed.common.errors import ConfigError

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
    dns, ips = subject_alt_names(cert)
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


def subject_alt_names(cert: x509.Certificate) -> tuple[list[str], list[str]]:
    """The DNS names and the IP addresses in a certificate's subjectAltName.

    Parameters
    ----------
    cert : x509.Certificate
        The certificate.

    Returns
    -------
    tuple of (list of str, list of str)
        DNS names and IP addresses, both empty without the extension.
    """
    try:
        ext = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return [], []
    dns = [str(n) for n in ext.get_values_for_type(x509.DNSName)]
    ips = [str(i) for i in ext.get_values_for_type(x509.IPAddress)]
    return dns, ips


def key_matches(cert: x509.Certificate, key: ec.EllipticCurvePrivateKey) -> bool:
    """Whether ``key`` is the private half of the key that ``cert`` certifies.

    Parameters
    ----------
    cert : x509.Certificate
        The certificate.
    key : ec.EllipticCurvePrivateKey
        The private key found next to it.

    Returns
    -------
    bool
        True when both public keys are the same.
    """
    fmt = serialization.PublicFormat.SubjectPublicKeyInfo
    enc = serialization.Encoding.DER
    return bool(
        cert.public_key().public_bytes(enc, fmt)
        == key.public_key().public_bytes(enc, fmt)
    )


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


def _read(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError as exc:
        raise ConfigError(
            f"{what} {path} does not exist; create it with 'slidefed server init'"
        ) from exc
    except OSError as exc:
        raise ConfigError(f"{what} {path} cannot be read: {exc.strerror}") from exc


__all__ = [
    "EXPIRY_WARNING_DAYS",
    "CertificateInfo",
    "certificate_info",
    "fingerprint",
    "key_matches",
    "load_certificate",
    "load_private_key",
    "subject_alt_names",
    "verify_issued_by",
]
