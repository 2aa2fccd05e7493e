"""What issuing the CA and the SuperLink certificate have in common."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from pydantic import BaseModel, ConfigDict

from slidefed.common._new_file import write_new_pair


class IssueResult(BaseModel):
    """Which files a PKI step created and which it found and reused."""

    model_config = ConfigDict(extra="forbid")

    created: list[Path] = []
    reused: list[Path] = []


def exists(path: Path) -> bool:
    """Whether ``path`` is taken (a dangling link counts: it is never replaced)."""
    return path.exists() or path.is_symlink()


def new_key() -> ec.EllipticCurvePrivateKey:
    """A fresh ECDSA P-256 key, the kind of every key of the federation's PKI."""
    return ec.generate_private_key(ec.SECP256R1())


def key_usage(*, ca: bool) -> x509.KeyUsage:
    """keyUsage of a CA (signs certificates and CRLs) or of a TLS server (ECDHE).

    Parameters
    ----------
    ca : bool
        Whether the certificate is the root CA.

    Returns
    -------
    x509.KeyUsage
        Digital signature always; certificate and CRL signing for the CA, key
        agreement for the server.
    """
    return x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=not ca,
        key_cert_sign=ca,
        crl_sign=ca,
        encipher_only=False,
        decipher_only=False,
    )


def certificate_builder(
    *,
    subject: x509.Name,
    issuer: x509.Name,
    public_key: ec.EllipticCurvePublicKey,
    days: int,
    not_after_cap: dt.datetime | None = None,
) -> x509.CertificateBuilder:
    """Names, key, a random serial and the validity of a new certificate.

    The certificate is valid from five minutes ago (clocks drift) for ``days``,
    but never past ``not_after_cap`` (the end of the issuing CA).

    Parameters
    ----------
    subject, issuer : x509.Name
        Who the certificate is for and who signs it.
    public_key : ec.EllipticCurvePublicKey
        The key it certifies.
    days : int
        Validity.
    not_after_cap : datetime, optional
        Latest end of validity.

    Returns
    -------
    x509.CertificateBuilder
        A builder that only lacks its extensions and signature.
    """
    now = dt.datetime.now(dt.UTC)
    not_after = now + dt.timedelta(days=days)
    if not_after_cap is not None:
        not_after = min(not_after, not_after_cap)
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(not_after)
    )


def write_pair(
    cert_path: Path,
    cert: x509.Certificate,
    key_path: Path,
    key: ec.EllipticCurvePrivateKey,
) -> None:
    """Write a new key (PEM, PKCS8, 0600) and its certificate (PEM, 0644).

    Raises
    ------
    ConfigError
        If either file exists or cannot be created (no half pair is left).
    """
    key_bytes = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    cert_bytes = cert.public_bytes(serialization.Encoding.PEM)
    write_new_pair(key_path, key_bytes, cert_path, cert_bytes)


__all__ = [
    "IssueResult",
    "certificate_builder",
    "exists",
    "key_usage",
    "new_key",
    "write_pair",
]
