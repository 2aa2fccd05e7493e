"""A small PKI for one federation: a stable root CA and the SuperLink's certificate.

The root CA is made once and then only reused: :func:`ensure_ca` never replaces a
CA certificate or key, and refuses a key that does not match its certificate. The
SuperLink certificate (:func:`ensure_server_certificate`) is issued by that CA with
the names sites dial and ``extendedKeyUsage=serverAuth``. Files are never silently
overwritten.

Keys are ECDSA P-256 (PEM, PKCS8, unencrypted, mode 0600); certificates are PEM
(mode 0644). The package imports only the standard library, pydantic and
``cryptography``.

Modules: :mod:`~slidefed.common.pki.certificates` (reading and checking files),
:mod:`~slidefed.common.pki.ca` (the root CA),
:mod:`~slidefed.common.pki.server_certificate` (the SuperLink's certificate).
"""

from slidefed.common.pki._issuing import IssueResult as IssueResult
from slidefed.common.pki.ca import CA_DAYS as CA_DAYS
from slidefed.common.pki.ca import ensure_ca as ensure_ca
from slidefed.common.pki.certificates import (
    EXPIRY_WARNING_DAYS as EXPIRY_WARNING_DAYS,
)
from slidefed.common.pki.certificates import CertificateInfo as CertificateInfo
from slidefed.common.pki.certificates import certificate_info as certificate_info
from slidefed.common.pki.certificates import fingerprint as fingerprint
from slidefed.common.pki.certificates import load_certificate as load_certificate
from slidefed.common.pki.certificates import load_private_key as load_private_key
from slidefed.common.pki.certificates import verify_issued_by as verify_issued_by
from slidefed.common.pki.server_certificate import SERVER_DAYS as SERVER_DAYS
from slidefed.common.pki.server_certificate import (
    ensure_server_certificate as ensure_server_certificate,
)

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
]
