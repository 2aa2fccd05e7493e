"""The on-disk format of an audit log: records, the head file, canonical JSON.

Each line of an audit log is one :class:`AuditRecord` in canonical JSON (sorted keys,
no spaces, ASCII). A record carries

- ``seq``, its 0-based line number;
- ``prev_hash``, the hex SHA-256 of the previous line's bytes (without the newline),
  or 64 zeros for the first record;
- ``signature``, a base64 Ed25519 signature, by the key named in ``key_id``, over the
  canonical JSON of all the other fields.

Next to ``audit.jsonl`` the writer keeps ``audit.jsonl.head`` (:class:`AuditHead`):
the ``seq`` and line hash of the last record, signed by the same key and replaced
atomically after each append, so that cutting records off the end shows.

The parsing helpers here are shared by the writer
(:mod:`slidefed.common.audit.writer`) and the auditor's verifier
(:mod:`slidefed.audit.verify`), so that both read a line the same way. This module
imports only the standard library, pydantic and ``cryptography``.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

GENESIS_HASH = "0" * 64
"""``prev_hash`` of the first record of a log."""

DEFAULT_PUBLIC_KEY_NAME = "audit_key.pub"
"""Public key that the verifier trusts, next to the log, when given no keys."""

Actor = Literal["site", "server"]
"""Who writes a log."""

_HEX64 = r"^[0-9a-f]{64}$"
_KEY_ID = r"^[0-9a-f]{16}$"


def canonical_json(obj: Any) -> bytes:
    """Serialise ``obj`` the one way that signatures and hashes are computed over.

    Parameters
    ----------
    obj : Any
        JSON-safe value (dicts with string keys, lists, str, int, finite float,
        bool, None).

    Returns
    -------
    bytes
        ``json.dumps(obj, sort_keys=True, separators=(",", ":"))`` as ASCII.

    Raises
    ------
    TypeError, ValueError
        If ``obj`` is not JSON-safe (for example a tuple key, a set, NaN).
    """
    text = json.dumps(
        obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False
    )
    return text.encode("ascii")


def line_hash(line: bytes) -> str:
    """Return the hex SHA-256 of one log line (without its newline)."""
    return hashlib.sha256(line).hexdigest()


def verify_hint(path: Path) -> str:
    """Return the advice that ends every message about a damaged log."""
    return f"run `slidefed audit verify {path}` to see what changed"


def _check_signature_text(value: str) -> str:
    """Accept only the canonical base64 spelling of a 64-byte signature."""
    try:
        raw = base64.b64decode(value, validate=True)
    except binascii.Error as exc:
        raise ValueError("signature is not base64") from exc
    if len(raw) != 64 or base64.b64encode(raw).decode("ascii") != value:
        raise ValueError("signature must be the base64 of 64 bytes")
    return value


class AuditRecord(BaseModel):
    """One line of an audit log.

    Attributes
    ----------
    schema_version : Literal[1]
        Version of this record layout.
    seq : int
        0-based line number of the record in its log.
    time : str
        UTC time of writing, ISO-8601.
    actor, actor_name : str
        Who wrote it: ``"site"`` or ``"server"`` and the site's (or server's) name.
    event : str
        Event type, for example ``"round_charged"`` or ``"egress_blocked"``; the
        payload models of :mod:`slidefed.common.audit.events` name them all.
    run_id, round : int or None
        Flower run and server round the event belongs to, if any.
    data : dict[str, Any]
        JSON-safe payload of the event.
    prev_hash : str
        Hex SHA-256 of the previous line, or 64 zeros for the first record.
    key_id : str
        :func:`slidefed.common.crypto.key_id` of the signing key.
    signature : str
        Base64 Ed25519 signature over :meth:`signing_payload`.
    """

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    schema_version: Literal[1] = 1
    seq: int = Field(ge=0)
    time: str
    actor: Actor
    actor_name: str = Field(min_length=1)
    event: str = Field(min_length=1)
    run_id: int | None = None
    round: int | None = None
    data: dict[str, Any]
    prev_hash: str = Field(pattern=_HEX64)
    key_id: str = Field(pattern=_KEY_ID)
    signature: str

    @field_validator("time")
    @classmethod
    def _utc_iso_time(cls, value: str) -> str:
        parsed = datetime.fromisoformat(value)
        offset = parsed.utcoffset()
        if offset is None or offset.total_seconds() != 0:
            raise ValueError("time must be ISO-8601 in UTC")
        return value

    @field_validator("signature")
    @classmethod
    def _base64_signature(cls, value: str) -> str:
        return _check_signature_text(value)

    def signing_payload(self) -> bytes:
        """Return the bytes that ``signature`` signs: every other field, canonical."""
        return canonical_json(self.model_dump(mode="json", exclude={"signature"}))

    def to_line(self) -> bytes:
        """Return the record as its log line (canonical JSON, no newline)."""
        return canonical_json(self.model_dump(mode="json"))


class AuditHead(BaseModel):
    """Signed pointer to the last record of a log (``<log>.head``).

    ``signature`` signs the canonical JSON of ``{"hash": ..., "seq": ...}``.
    """

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    seq: int = Field(ge=0)
    hash: str = Field(pattern=_HEX64)
    key_id: str = Field(pattern=_KEY_ID)
    signature: str

    @field_validator("signature")
    @classmethod
    def _base64_signature(cls, value: str) -> str:
        return _check_signature_text(value)

    def signing_payload(self) -> bytes:
        """Return the bytes that ``signature`` signs."""
        return canonical_json({"hash": self.hash, "seq": self.seq})

    def to_bytes(self) -> bytes:
        """Return the file content: canonical JSON and a newline."""
        return canonical_json(self.model_dump(mode="json")) + b"\n"


def head_path(path: Path) -> Path:
    """Return the head file of the log ``path`` (``audit.jsonl.head``)."""
    return path.with_name(path.name + ".head")


def sign(key: Ed25519PrivateKey, payload: bytes) -> str:
    """Return the base64 Ed25519 signature of ``payload``."""
    return base64.b64encode(key.sign(payload)).decode("ascii")


def signature_valid(key: Ed25519PublicKey, signature: str, payload: bytes) -> bool:
    """Tell whether ``signature`` (base64) signs ``payload`` under ``key``."""
    try:
        key.verify(base64.b64decode(signature), payload)
    except InvalidSignature:
        return False
    return True


def reject_constant(name: str) -> Any:
    """Refuse ``NaN`` and ``Infinity`` while parsing (``json`` accepts them)."""
    raise ValueError(f"{name} is not allowed in an audit record")


def error_reason(exc: ValueError) -> str:
    """Return a one-line reason for a parse or validation failure."""
    if isinstance(exc, ValidationError):
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first["loc"]) or "record"
        return f"{where}: {first['msg']}"
    return str(exc).splitlines()[0] if str(exc) else type(exc).__name__


def parse_line(raw: bytes) -> AuditRecord:
    """Parse one line; raise ValueError when it is not an audit record."""
    obj = json.loads(raw.decode("utf-8"), parse_constant=reject_constant)
    if not isinstance(obj, dict):
        raise ValueError("line is not a JSON object")
    return AuditRecord.model_validate(obj)


def parse_head(raw: bytes) -> AuditHead:
    """Parse a head file; raise ValueError when it is not one, canonically written."""
    obj = json.loads(raw.decode("utf-8"), parse_constant=reject_constant)
    if not isinstance(obj, dict):
        raise ValueError("head is not a JSON object")
    head = AuditHead.model_validate(obj)
    if head.to_bytes() != raw:
        raise ValueError("head is not in canonical form")
    return head


def split_lines(data: bytes) -> list[tuple[bytes, bool]]:
    """Split a log into ``(line, torn)`` pairs; only the last line can be torn."""
    if not data:
        return []
    parts = data.split(b"\n")
    torn = parts[-1] != b""
    if not torn:
        parts.pop()
    return [(part, torn and i == len(parts) - 1) for i, part in enumerate(parts)]


__all__ = [
    "DEFAULT_PUBLIC_KEY_NAME",
    "GENESIS_HASH",
    "Actor",
    "AuditHead",
    "AuditRecord",
    "canonical_json",
    "error_reason",
    "head_path",
    "line_hash",
    "parse_head",
    "parse_line",
    "reject_constant",
    "sign",
    "signature_valid",
    "split_lines",
    "verify_hint",
]
