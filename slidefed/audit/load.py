"""Load what an audit needs: the trusted keys, and each log verified and read.

This module imports only the standard library, pydantic and ``cryptography``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from slidefed.audit.problems import NumberedRecord, VerifyResult
from slidefed.audit.verify import verify_and_read
from slidefed.common.audit.records import Actor
from slidefed.common.crypto import key_id, load_public_key
from slidefed.common.errors import ConfigError


@dataclass(frozen=True)
class LoadedLog:
    """A log, its verification result and the records that parsed.

    Attributes
    ----------
    path : Path
        The log file.
    result : VerifyResult
        What :func:`slidefed.audit.verify.verify_and_read` found.
    records : list[NumberedRecord]
        Every line that parsed as a record, with its line number.
    """

    path: Path
    result: VerifyResult
    records: list[NumberedRecord]

    @property
    def actor(self) -> Actor | None:
        """``"site"`` or ``"server"`` as the first record says, None when empty."""
        return self.records[0].record.actor if self.records else None

    @property
    def actor_name(self) -> str | None:
        """The site's or server's name, as the first record says."""
        return self.records[0].record.actor_name if self.records else None


def load_public_keys(folder: Path) -> dict[str, Ed25519PublicKey]:
    """Load every ``*.pub`` audit key in a folder.

    Parameters
    ----------
    folder : Path
        Folder of OpenSSH or PEM Ed25519 public keys.

    Returns
    -------
    dict[str, Ed25519PublicKey]
        The keys by :func:`slidefed.common.crypto.key_id`.

    Raises
    ------
    ConfigError
        If ``folder`` is not a folder, holds no ``*.pub`` file, or one of them is
        not an Ed25519 public key.
    """
    if not folder.is_dir():
        raise ConfigError(
            f"--keys {folder} is not a folder; give a folder of the sites' *.pub "
            "audit keys"
        )
    files = sorted(folder.glob("*.pub"))
    if not files:
        raise ConfigError(
            f"--keys {folder} holds no *.pub file; copy the sites' audit_key.pub "
            "files there (renamed per site)"
        )
    keys: dict[str, Ed25519PublicKey] = {}
    for file in files:
        key = load_public_key(file)
        keys[key_id(key)] = key
    return keys


def load_logs(
    paths: Sequence[Path],
    *,
    public_keys: Mapping[str, Ed25519PublicKey] | None = None,
    every_signature: bool = False,
) -> list[LoadedLog]:
    """Verify and read each log.

    Parameters
    ----------
    paths : Sequence[Path]
        Audit logs (``audit.jsonl``, ``server-audit.jsonl``).
    public_keys : Mapping[str, Ed25519PublicKey], optional
        Trusted keys; None trusts the ``audit_key.pub`` beside each log.
    every_signature : bool
        Check each record's own signature even where the head vouches for it.

    Returns
    -------
    list[LoadedLog]
        One per path, in the order given.

    Raises
    ------
    AuditError
        If a log is missing or unreadable.
    ConfigError
        If a key beside a log is not an Ed25519 public key.
    """
    loaded = []
    for path in paths:
        result, records = verify_and_read(
            path, public_keys=public_keys, every_signature=every_signature
        )
        loaded.append(LoadedLog(path=path, result=result, records=records))
    return loaded


__all__ = ["LoadedLog", "load_logs", "load_public_keys"]
