"""Key files: the Ed25519 audit key and the P-384 SuperNode key.

Every key file is created once and never replaced: a second ``generate_*`` call on the
same path raises :class:`~slidefed.common.errors.ConfigError`. Private keys are
written with mode 0600, public keys (``<path>.pub``) in OpenSSH format.

This module imports only the standard library and ``cryptography`` so that auditors
can use it without torch.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import stat
from pathlib import Path

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)
from cryptography.hazmat.primitives.asymmetric.types import (
    PrivateKeyTypes,
    PublicKeyTypes,
)

from slidefed.common._new_file import write_new_pair
from slidefed.common.errors import ConfigError

logger = logging.getLogger(__name__)

_CREATE_HINT = "create it with `slidefed site init` or `slidefed server init`"


def public_key_path(path: Path) -> Path:
    """Return where the public key of the private key file ``path`` lives.

    Parameters
    ----------
    path : Path
        Private key file.

    Returns
    -------
    Path
        ``path`` with ``.pub`` appended (``keys/audit_key`` -> ``keys/audit_key.pub``).
    """
    return Path(str(path) + ".pub")


def generate_audit_key(path: Path) -> Ed25519PrivateKey:
    """Create a new Ed25519 audit key and write it to ``path`` and ``path.pub``.

    Parameters
    ----------
    path : Path
        Private key file to create (PEM, PKCS8, unencrypted, mode 0600). The public
        key goes to ``<path>.pub`` in OpenSSH format (``ssh-ed25519 AAAA... comment``).
        Missing parent directories are created.

    Returns
    -------
    Ed25519PrivateKey
        The new key.

    Raises
    ------
    ConfigError
        If ``path`` or ``<path>.pub`` already exists; keys are never overwritten.
    """
    key = Ed25519PrivateKey.generate()
    private = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    public = key.public_key().public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
    )
    comment = f" slidefed-audit-{key_id(key.public_key())}\n".encode()
    _write_key_pair(path, private, public + comment)
    return key


def generate_node_key(path: Path) -> None:
    """Create a P-384 SuperNode authentication key pair.

    Flower's SuperNode authentication wants an EC key on a NIST curve in OpenSSH
    format, like ``ssh-keygen -t ecdsa -b 384 -N "" -f PATH`` makes.

    Parameters
    ----------
    path : Path
        Private key file to create (OpenSSH private format, unencrypted, mode 0600),
        passed to ``flower-supernode --auth-supernode-private-key``. The public key
        goes to ``<path>.pub`` (``ecdsa-sha2-nistp384 AAAA... comment``), the file
        the coordinator registers with ``flwr supernode register``.

    Raises
    ------
    ConfigError
        If ``path`` or ``<path>.pub`` already exists; keys are never overwritten.
    """
    key = ec.generate_private_key(ec.SECP384R1())
    private = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.OpenSSH,
        serialization.NoEncryption(),
    )
    public = key.public_key().public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
    )
    _write_key_pair(path, private, public + b" slidefed-node\n")


def load_audit_key(path: Path) -> Ed25519PrivateKey:
    """Load the Ed25519 audit key written by :func:`generate_audit_key`.

    Parameters
    ----------
    path : Path
        Private key file, PEM (PKCS8) or OpenSSH private format, unencrypted.

    Returns
    -------
    Ed25519PrivateKey
        The key.

    Raises
    ------
    ConfigError
        If the file is missing, unreadable, encrypted or not an Ed25519 private key.
    """
    data = _read_key_file(path, "audit key")
    key: PrivateKeyTypes
    try:
        if data.lstrip().startswith(b"-----BEGIN OPENSSH PRIVATE KEY-----"):
            key = serialization.load_ssh_private_key(data, password=None)
        else:
            key = serialization.load_pem_private_key(data, password=None)
    except TypeError as exc:  # raised by cryptography for encrypted keys
        raise ConfigError(
            f"audit key {path} is encrypted; slidefed needs an unencrypted key file "
            f"readable only by its owner (mode 0600); {_CREATE_HINT}"
        ) from exc
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise ConfigError(
            f"audit key {path} is not a PEM or OpenSSH private key ({exc}); "
            f"point the config at the audit key file or {_CREATE_HINT}"
        ) from exc
    if not isinstance(key, Ed25519PrivateKey):
        raise ConfigError(
            f"audit key {path} is a {type(key).__name__}, not an Ed25519 private key; "
            f"{_CREATE_HINT}"
        )
    _warn_if_shared(path)
    return key


def load_public_key(path: Path) -> Ed25519PublicKey:
    """Load an Ed25519 public key (an audit key's ``.pub`` file).

    Parameters
    ----------
    path : Path
        OpenSSH (``ssh-ed25519 AAAA... [comment]``) or PEM (``BEGIN PUBLIC KEY``)
        public key file.

    Returns
    -------
    Ed25519PublicKey
        The key.

    Raises
    ------
    ConfigError
        If the file is missing, unreadable or not an Ed25519 public key.
    """
    data = _read_key_file(path, "public key")
    stripped = data.strip()
    key: PublicKeyTypes
    try:
        if stripped.startswith(b"-----BEGIN"):
            key = serialization.load_pem_public_key(stripped)
        else:
            key = serialization.load_ssh_public_key(stripped)
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise ConfigError(
            f"public key {path} cannot be read ({exc}); give the '.pub' file that was "
            "written next to the audit key"
        ) from exc
    if not isinstance(key, Ed25519PublicKey):
        raise ConfigError(
            f"public key {path} is a {type(key).__name__}, not an Ed25519 key; "
            "give the '.pub' file of the audit key, not the SuperNode key"
        )
    return key


def key_id(public_key: Ed25519PublicKey) -> str:
    """Return the short, stable identifier of an Ed25519 public key.

    Parameters
    ----------
    public_key : Ed25519PublicKey
        The key.

    Returns
    -------
    str
        The first 16 hex digits of the SHA-256 of the 32 raw public key bytes.
    """
    raw = public_key.public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw
    )
    return hashlib.sha256(raw).hexdigest()[:16]


def _write_key_pair(path: Path, private: bytes, public: bytes) -> None:
    """Write a private key (0600) and its ``.pub`` (0644), never overwriting."""
    pub_path = public_key_path(path)
    for existing in (path, pub_path):
        if existing.exists() or existing.is_symlink():
            raise ConfigError(
                f"{existing} already exists; slidefed never overwrites a key file. "
                "Keep using it, or move it (and its .pub) aside to create a new key"
            )
    write_new_pair(path, private, pub_path, public)


def _read_key_file(path: Path, what: str) -> bytes:
    """Read a key file, turning OS errors into a ConfigError naming the file."""
    try:
        return path.read_bytes()
    except FileNotFoundError as exc:
        raise ConfigError(f"{what} {path} does not exist; {_CREATE_HINT}") from exc
    except OSError as exc:
        raise ConfigError(
            f"{what} {path} cannot be read: {exc.strerror}; check its permissions"
        ) from exc


def _warn_if_shared(path: Path) -> None:
    """Warn when a private key file is readable by group or others."""
    with contextlib.suppress(OSError):
        if stat.S_IMODE(path.stat().st_mode) & 0o077:
            logger.warning(
                "private key %s is readable by other users; run `chmod 600 %s`",
                path,
                path,
            )


__all__ = [
    "generate_audit_key",
    "generate_node_key",
    "key_id",
    "load_audit_key",
    "load_public_key",
    "public_key_path",
]
