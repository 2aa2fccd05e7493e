"""Signed, hash-chained audit log (JSON lines) and its offline verifier.

Each line of an audit log is one :class:`AuditRecord` in canonical JSON (sorted keys,
no spaces, ASCII). A record carries

- ``seq``, its 0-based line number;
- ``prev_hash``, the hex SHA-256 of the previous line's bytes (without the newline),
  or 64 zeros for the first record;
- ``signature``, a base64 Ed25519 signature, by the key named in ``key_id``, over the
  canonical JSON of all the other fields.

Next to ``audit.jsonl`` the writer keeps ``audit.jsonl.head``: the ``seq`` and line
hash of the last record, signed by the same key and replaced atomically after each
append, so that cutting records off the end shows. (An attacker who kept an old head
file can still roll back the log together with it; only a copy of the head held
elsewhere, for example by the coordinator, rules that out.)

:func:`verify_log` authenticates every record by a trusted key: by the signed head
when the hash chain from the record to the line the head names is intact (the head's
signature covers that whole chain, so it vouches for every byte of it), and by the
record's own signature otherwise (no head, a head that lags, a broken chain, a record
under another key), or always with ``every_signature=True``. The internals live in
:mod:`slidefed.common.audit._verify`.

It reports every broken rule with its line and one of the kinds of
:data:`ProblemKind`. Signature failures are labelled from the chain's evidence:
``edited`` when the next record (or the head) was chained to other bytes than the
line holds now, ``forged`` when nothing shows the line changed after it was chained
(a record inserted between two others, or a line re-signed together with the chain
after it).

This module imports only the standard library, pydantic and ``cryptography``.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import fcntl
import hashlib
import json
import os
import tempfile
from collections.abc import Iterator, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal, NamedTuple

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from slidefed.common.crypto import key_id as compute_key_id
from slidefed.common.crypto import load_public_key
from slidefed.common.errors import AuditError, ConfigError

GENESIS_HASH = "0" * 64
"""``prev_hash`` of the first record of a log."""

DEFAULT_PUBLIC_KEY_NAME = "audit_key.pub"
"""Public key that :func:`verify_log` trusts, next to the log, when given no keys."""

Actor = Literal["site", "server"]
ProblemKind = Literal[
    "edited",
    "deleted",
    "reordered",
    "duplicated",
    "truncated",
    "torn",
    "forged",
    "unknown_key",
    "malformed",
    "unmatched_update",
    "over_budget",
]
"""What a :class:`Problem` reports. The last two come from the cross-check of
:mod:`slidefed.audit.check`, never from :func:`verify_log`."""

_HEX64 = r"^[0-9a-f]{64}$"
_KEY_ID = r"^[0-9a-f]{16}$"
_FIX = "run `slidefed audit verify {path}` to see what changed"


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
        Event type, for example ``"round.fit"`` or ``"egress.blocked"``.
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


class Problem(BaseModel):
    """One broken rule found by :func:`verify_log`."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    line: int = Field(ge=1, description="1-based line of the log")
    kind: ProblemKind
    message: str


class VerifyResult(BaseModel):
    """Outcome of :func:`verify_log`; ``problems`` are sorted by line."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    ok: bool
    path: str
    records: int
    problems: list[Problem]

    def summary(self) -> str:
        """Return one ``path:line: kind: message`` line per problem, or ``path: OK``."""
        if self.ok:
            return f"{self.path}: OK, {self.records} records"
        return "\n".join(
            f"{self.path}:{p.line}: {p.kind}: {p.message}" for p in self.problems
        )


def head_path(path: Path) -> Path:
    """Return the head file of the log ``path`` (``audit.jsonl.head``)."""
    return path.with_name(path.name + ".head")


def _lock_path(path: Path) -> Path:
    return path.with_name(path.name + ".lock")


def _sign(key: Ed25519PrivateKey, payload: bytes) -> str:
    return base64.b64encode(key.sign(payload)).decode("ascii")


def _signature_valid(key: Ed25519PublicKey, signature: str, payload: bytes) -> bool:
    try:
        key.verify(base64.b64decode(signature), payload)
    except InvalidSignature:
        return False
    return True


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not allowed in an audit record")


def _reason(exc: ValueError) -> str:
    """Return a one-line reason for a parse or validation failure."""
    if isinstance(exc, ValidationError):
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first["loc"]) or "record"
        return f"{where}: {first['msg']}"
    return str(exc).splitlines()[0] if str(exc) else type(exc).__name__


def _parse_line(raw: bytes) -> AuditRecord:
    """Parse one line; raise ValueError when it is not an audit record."""
    obj = json.loads(raw.decode("utf-8"), parse_constant=_reject_constant)
    if not isinstance(obj, dict):
        raise ValueError("line is not a JSON object")
    return AuditRecord.model_validate(obj)


def _parse_head(raw: bytes) -> AuditHead:
    """Parse a head file; raise ValueError when it is not one, canonically written."""
    obj = json.loads(raw.decode("utf-8"), parse_constant=_reject_constant)
    if not isinstance(obj, dict):
        raise ValueError("head is not a JSON object")
    head = AuditHead.model_validate(obj)
    if head.to_bytes() != raw:
        raise ValueError("head is not in canonical form")
    return head


def _count_lines(path: Path) -> int:
    """Count lines, a last line without newline included (for error messages)."""
    count = 0
    last = b"\n"
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 16), b""):
            count += chunk.count(b"\n")
            last = chunk[-1:]
    return count + (last != b"\n")


def _read_last_line(path: Path) -> bytes | None:
    """Return the last line of the log (no newline), or None for no records.

    Raises
    ------
    AuditError
        If the file does not end with a newline (a torn last line).
    """
    try:
        handle = path.open("rb")
    except FileNotFoundError:
        return None
    with handle:
        end = handle.seek(0, os.SEEK_END)
        if end == 0:
            return None
        handle.seek(end - 1)
        if handle.read(1) != b"\n":
            line = _count_lines(path)
            raise AuditError(
                f"{path}:{line}: the last line is torn (no newline at its end); "
                f"{_FIX.format(path=path)}. If a crash tore it, delete that partial "
                "line: the head file still vouches for the records before it"
            )
        tail = b""
        pos = end - 1
        while pos > 0 and b"\n" not in tail:
            step = min(1 << 12, pos)
            pos -= step
            handle.seek(pos)
            tail = handle.read(step) + tail
        return tail.rsplit(b"\n", 1)[-1]


class AuditLog:
    """Append-only writer of one signed audit log.

    Several processes of one site may append to the same log in turn: each append
    takes an exclusive ``flock`` on ``<log>.lock``, reads the current tail, and
    continues the chain from it.

    Parameters
    ----------
    path : Path
        The log file (JSON lines); parent directories are created.
    key : Ed25519PrivateKey
        The audit key that signs each record and the head file.
    actor : {"site", "server"}
        Who writes this log.
    actor_name : str
        The site's or server's name.
    """

    def __init__(
        self,
        path: Path,
        *,
        key: Ed25519PrivateKey,
        actor: Actor,
        actor_name: str,
    ) -> None:
        if actor not in ("site", "server"):
            raise ConfigError(f"audit actor {actor!r} must be 'site' or 'server'")
        if not actor_name:
            raise ConfigError("audit actor_name must not be empty; give the site name")
        self.path = Path(path)
        self.head_path = head_path(self.path)
        self.actor: Actor = actor
        self.actor_name = actor_name
        self.key_id = compute_key_id(key.public_key())
        self._key = key
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise AuditError(
                f"cannot create the audit directory {self.path.parent}: {exc.strerror}"
            ) from exc

    def append(
        self,
        event: str,
        /,
        *,
        run_id: int | None = None,
        round: int | None = None,
        **data: Any,
    ) -> AuditRecord:
        """Sign and durably append one record.

        Parameters
        ----------
        event : str
            Event type.
        run_id, round : int or None
            Flower run and server round, if the event belongs to one.
        **data : Any
            JSON-safe payload (str, int, finite float, bool, None, lists, dicts).

        Returns
        -------
        AuditRecord
            The record as written.

        Raises
        ------
        AuditError
            If ``data`` is not JSON-safe, the log's last line is torn or not a
            record, the head file disagrees with the log (truncation), or the file
            cannot be written. Nothing is written then, except when only the head
            could not be replaced: a head one record behind is accepted by both
            the next append and :func:`verify_log`.
        """
        payload = self._json_safe(event, data)
        with self._locked():
            seq, prev_hash = self._tail_state()
            record = self._make_record(
                event,
                seq=seq,
                prev_hash=prev_hash,
                run_id=run_id,
                rnd=round,
                data=payload,
            )
            line = record.to_line()
            self._write_line(line + b"\n")
            self._write_head(seq=record.seq, digest=line_hash(line))
        return record

    def _json_safe(self, event: str, data: dict[str, Any]) -> dict[str, Any]:
        """Return ``data`` as it will read back (tuples become lists) or refuse it."""
        try:
            _check_keys(data)
            safe: dict[str, Any] = json.loads(canonical_json(data))
        except (TypeError, ValueError) as exc:
            raise AuditError(
                f"audit event {event!r} for {self.path}: data is not JSON-safe "
                f"({exc}); pass str, int, finite float, bool, None, lists and dicts"
            ) from exc
        return safe

    def _make_record(
        self,
        event: str,
        *,
        seq: int,
        prev_hash: str,
        run_id: int | None,
        rnd: int | None,
        data: dict[str, Any],
    ) -> AuditRecord:
        fields: dict[str, Any] = {
            "seq": seq,
            "time": datetime.now(UTC).isoformat(timespec="microseconds"),
            "actor": self.actor,
            "actor_name": self.actor_name,
            "event": event,
            "run_id": run_id,
            "round": rnd,
            "data": data,
            "prev_hash": prev_hash,
            "key_id": self.key_id,
            "signature": base64.b64encode(bytes(64)).decode("ascii"),
        }
        try:
            unsigned = AuditRecord.model_validate(fields)
        except ValidationError as exc:
            raise AuditError(
                f"cannot write audit event {event!r} to {self.path}: {_reason(exc)}"
            ) from exc
        signature = _sign(self._key, unsigned.signing_payload())
        return unsigned.model_copy(update={"signature": signature})

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        try:
            fd = os.open(_lock_path(self.path), os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise AuditError(
                f"cannot open the lock file of {self.path}: {exc.strerror}"
            ) from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # closing the descriptor releases the lock

    def _tail_state(self) -> tuple[int, str]:
        """Return ``(seq, prev_hash)`` for the next record, checking the head."""
        last = _read_last_line(self.path)
        head = self._read_head()
        if last is None:
            if head is not None:
                raise AuditError(
                    f"{self.path} has no records but {self.head_path} says it ends "
                    f"with record seq {head.seq}: the log was truncated; "
                    f"{_FIX.format(path=self.path)}"
                )
            return 0, GENESIS_HASH
        try:
            record = _parse_line(last)
        except ValueError as exc:
            raise AuditError(
                f"{self.path}:{_count_lines(self.path)}: the last line is not an audit "
                f"record ({_reason(exc)}); {_FIX.format(path=self.path)}"
            ) from exc
        digest = line_hash(last)
        if not _head_matches(head, record, digest):
            said = "is missing" if head is None else f"says seq {head.seq}"
            raise AuditError(
                f"{self.head_path} {said} but the last record of {self.path} is seq "
                f"{record.seq}: the log was truncated or edited; "
                f"{_FIX.format(path=self.path)}, then move the log and its .head aside "
                "to start a new one"
            )
        return record.seq + 1, digest

    def _read_head(self) -> AuditHead | None:
        try:
            raw = self.head_path.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise AuditError(f"cannot read {self.head_path}: {exc.strerror}") from exc
        try:
            return _parse_head(raw)
        except ValueError as exc:
            raise AuditError(
                f"{self.head_path} is not a valid head file ({_reason(exc)}); "
                f"{_FIX.format(path=self.path)}"
            ) from exc

    def _write_line(self, line: bytes) -> None:
        created = not self.path.exists()
        try:
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            try:
                view = memoryview(line)
                while view:
                    view = view[os.write(fd, view) :]
                os.fsync(fd)
            finally:
                os.close(fd)
            if created:
                _fsync_dir(self.path.parent)
        except OSError as exc:
            raise AuditError(f"cannot write {self.path}: {exc.strerror}") from exc

    def _write_head(self, *, seq: int, digest: str) -> None:
        payload = canonical_json({"hash": digest, "seq": seq})
        head = AuditHead(
            seq=seq,
            hash=digest,
            key_id=self.key_id,
            signature=_sign(self._key, payload),
        )
        try:
            _atomic_write(self.head_path, head.to_bytes())
        except OSError as exc:
            raise AuditError(f"cannot write {self.head_path}: {exc.strerror}") from exc


def _check_keys(value: Any) -> None:
    """Refuse dict keys that JSON would silently turn into strings."""
    if isinstance(value, dict):
        for name, item in value.items():
            if not isinstance(name, str):
                raise TypeError(f"dict key {name!r} is not a string")
            _check_keys(item)
    elif isinstance(value, list | tuple):
        for item in value:
            _check_keys(item)


def _head_matches(head: AuditHead | None, last: AuditRecord, digest: str) -> bool:
    """Tell whether the head vouches for the log ending with ``last``.

    The head may lag by one record: a crash between writing the line and replacing
    the head leaves exactly that, and the extra record is signed anyway.
    """
    if head is None:
        return last.seq == 0 and last.prev_hash == GENESIS_HASH
    if (head.seq, head.hash) == (last.seq, digest):
        return True
    return (head.seq, head.hash) == (last.seq - 1, last.prev_hash)


def _atomic_write(path: Path, data: bytes) -> None:
    """Replace ``path`` with ``data`` via a synced temp file and ``os.replace``."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            os.fchmod(handle.fileno(), 0o644)  # auditors read it; mkstemp made 0600
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        Path(tmp).replace(path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _read_log_bytes(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError as exc:
        raise AuditError(
            f"audit log {path} does not exist; check the path (site logs live in the "
            "site's audit directory)"
        ) from exc
    except OSError as exc:
        raise AuditError(f"cannot read audit log {path}: {exc.strerror}") from exc


def _split_lines(data: bytes) -> list[tuple[bytes, bool]]:
    """Split a log into ``(line, torn)`` pairs; only the last line can be torn."""
    if not data:
        return []
    parts = data.split(b"\n")
    torn = parts[-1] != b""
    if not torn:
        parts.pop()
    return [(part, torn and i == len(parts) - 1) for i, part in enumerate(parts)]


def read_records(path: Path) -> list[AuditRecord]:
    """Read every record of a log without checking signatures or the chain.

    Parameters
    ----------
    path : Path
        The log file.

    Returns
    -------
    list[AuditRecord]
        The records in file order.

    Raises
    ------
    AuditError
        If the file is missing, a line is not an audit record, or the last line is
        torn. The message names the file and the line.
    """
    records: list[AuditRecord] = []
    for number, (raw, torn) in enumerate(_split_lines(_read_log_bytes(path)), 1):
        if torn:
            raise AuditError(
                f"{path}:{number}: the last line is torn (no newline at its end); "
                f"{_FIX.format(path=path)}"
            )
        try:
            records.append(_parse_line(raw))
        except ValueError as exc:
            raise AuditError(
                f"{path}:{number}: not an audit record ({_reason(exc)}); "
                f"{_FIX.format(path=path)}"
            ) from exc
    return records


class NumberedRecord(NamedTuple):
    """A record and the 1-based line of the log it was read from."""

    line: int
    record: AuditRecord


def verify_log(
    path: Path,
    *,
    public_keys: Mapping[str, Ed25519PublicKey] | None = None,
    every_signature: bool = False,
) -> VerifyResult:
    """Check a log's records, signatures, chain and head file.

    Parameters
    ----------
    path : Path
        The log file; its head file is ``<path>.head``.
    public_keys : Mapping[str, Ed25519PublicKey], optional
        Trusted keys by :func:`slidefed.common.crypto.key_id`. When None, the key in
        ``audit_key.pub`` next to the log is trusted if that file exists, and every
        record is reported as ``unknown_key`` otherwise.
    every_signature : bool
        Check each record's own signature even where the signed head already
        vouches for the record through the hash chain (see the module docstring).
        Slower, and it finds nothing more unless the key holder itself wrote a
        record with a bad signature.

    Returns
    -------
    VerifyResult
        ``ok`` is True when no problem was found. ``problems`` are sorted by line,
        so the first one is the first bad record; later ones may follow from it.

    Raises
    ------
    AuditError
        If the log file is missing or unreadable.
    ConfigError
        If ``audit_key.pub`` next to the log is not an Ed25519 public key.
    """
    result, _ = verify_and_read(
        path, public_keys=public_keys, every_signature=every_signature
    )
    return result


def verify_and_read(
    path: Path,
    *,
    public_keys: Mapping[str, Ed25519PublicKey] | None = None,
    every_signature: bool = False,
) -> tuple[VerifyResult, list[NumberedRecord]]:
    """Verify a log like :func:`verify_log` and return its records too.

    Reading and verifying in one pass spares callers that need both (the
    cross-check, the HTML report) a second parse of a large log.

    Parameters
    ----------
    path : Path
        The log file; its head file is ``<path>.head``.
    public_keys : Mapping[str, Ed25519PublicKey], optional
        Trusted keys, as for :func:`verify_log`.
    every_signature : bool
        As for :func:`verify_log`.

    Returns
    -------
    tuple[VerifyResult, list[NumberedRecord]]
        The result of :func:`verify_log`, and every line that parsed as a record
        with its 1-based line number, in file order, including records that
        failed a check (look them up in ``problems`` by line).

    Raises
    ------
    AuditError
        If the log file is missing or unreadable.
    ConfigError
        If ``audit_key.pub`` next to the log is not an Ed25519 public key.
    """
    from slidefed.common.audit._verify import verify_data

    data = _read_log_bytes(path)
    keys = _trusted_keys(path, public_keys)
    result, records = verify_data(
        path,
        data,
        keys,
        explicit_keys=public_keys is not None,
        every_signature=every_signature,
    )
    return result, records


def _trusted_keys(
    path: Path, public_keys: Mapping[str, Ed25519PublicKey] | None
) -> dict[str, Ed25519PublicKey]:
    if public_keys is not None:
        return dict(public_keys)
    pub = path.parent / DEFAULT_PUBLIC_KEY_NAME
    if not pub.is_file():
        return {}
    key = load_public_key(pub)
    return {compute_key_id(key): key}


__all__ = [
    "DEFAULT_PUBLIC_KEY_NAME",
    "GENESIS_HASH",
    "Actor",
    "AuditHead",
    "AuditLog",
    "AuditRecord",
    "NumberedRecord",
    "Problem",
    "ProblemKind",
    "VerifyResult",
    "canonical_json",
    "head_path",
    "line_hash",
    "read_records",
    "verify_and_read",
    "verify_log",
]
