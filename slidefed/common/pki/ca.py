"""The federation's root CA: made once, then only reused, never replaced."""

from __future__ import annotations

from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.x509.oid import NameOID

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
    certificate_info,
    key_matches,
    load_certificate,
    load_private_key,
)

CA_DAYS = 3650
"""Validity of the root CA (ten years)."""


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
    have_cert, have_key = exists(cert_path), exists(key_path)
    if have_cert and have_key:
        _check_existing_ca(cert_path, key_path)
        return IssueResult(reused=[cert_path, key_path])
    if have_cert or have_key:
        present, missing = (cert_path, key_path) if have_cert else (key_path, cert_path)
        raise ConfigError(
            f"{present} exists but {missing} does not; restore {missing}, or move "
            f"{present} aside to make a new CA (every site must then get the new CA)"
        )
    _issue_ca(cert_path, key_path, common_name=common_name, days=days)
    return IssueResult(created=[cert_path, key_path])


def _check_existing_ca(cert_path: Path, key_path: Path) -> None:
    cert = load_certificate(cert_path)
    if not key_matches(cert, load_private_key(key_path)):
        raise ConfigError(
            f"{key_path} does not belong to {cert_path}; restore the CA key that "
            "made this certificate (the CA is never replaced silently)"
        )
    if not certificate_info(cert_path).is_ca:
        raise ConfigError(f"{cert_path} is not a CA certificate; move it aside")


def _issue_ca(cert_path: Path, key_path: Path, *, common_name: str, days: int) -> None:
    key = new_key()
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    cert = (
        certificate_builder(
            subject=name, issuer=name, public_key=key.public_key(), days=days
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(key_usage(ca=True), critical=True)
        .add_extension(
            x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False
        )
        .sign(key, hashes.SHA256())
    )
    write_pair(cert_path, cert, key_path, key)


__all__ = ["CA_DAYS", "ensure_ca"]
