"""The writer of a signed, hash-chained audit log.

:class:`AuditLog` appends :mod:`slidefed.common.audit.events` payloads as signed
records (:mod:`slidefed.common.audit.records`): it takes a lock, reads where the
chain ends, writes the lines with one ``fsync``, then replaces the signed head file.
:meth:`AuditLog.append_many` writes a whole batch that way, which is what makes a
long series of records cheap (one disk sync instead of one per record).

This module imports only the standard library, pydantic and ``cryptography``.
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import json
import os
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NamedTuple

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from pydantic import ValidationError

from slidefed.common.audit._tail import tail_state
from slidefed.common.audit.events import AuditEvent
from slidefed.common.audit.records import (
    Actor,
    AuditHead,
    AuditRecord,
    canonical_json,
    error_reason,
    head_path,
    line_hash,
    sign,
)
from slidefed.common.crypto import key_id as compute_key_id
from slidefed.common.errors import AuditError, ConfigError
from slidefed.common.fileio import atomic_write_bytes

_NO_SIGNATURE = base64.b64encode(bytes(64)).decode("ascii")
"""Stands in for the signature while the fields are checked, before signing."""


class AuditEntry(NamedTuple):
    """One record to append: the payload and the run and round it belongs to."""

    payload: AuditEvent
    run_id: int | None = None
    round: int | None = None


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
        payload: AuditEvent,
        /,
        *,
        run_id: int | None = None,
        round: int | None = None,
    ) -> AuditRecord:
        """Sign and durably append one record.

        Parameters
        ----------
        payload : AuditEvent
            The event: its ``event`` name becomes the record's ``event``, its fields
            the record's ``data``.
        run_id, round : int or None
            Flower run and server round, if the event belongs to one.

        Returns
        -------
        AuditRecord
            The record as written.

        Raises
        ------
        AuditError
            If the payload is not JSON-safe, the log's last line is torn or not a
            record, the head file disagrees with the log (truncation), or the file
            cannot be written. Nothing is written then, except when only the head
            could not be replaced: a head behind the log is accepted by both the
            next append and the verifier.
        """
        return self.append_many([AuditEntry(payload, run_id, round)])[0]

    def append_many(self, entries: Sequence[AuditEntry]) -> list[AuditRecord]:
        """Sign and append several records with one disk sync.

        The records follow each other in the chain, in the order given; nothing
        is written unless every one of them is valid.

        Parameters
        ----------
        entries : Sequence[AuditEntry]
            The payloads and their runs and rounds.

        Returns
        -------
        list[AuditRecord]
            The records as written, in order.

        Raises
        ------
        AuditError
            As for :meth:`append`.
        """
        prepared = [(entry, self._json_safe(entry.payload)) for entry in entries]
        if not prepared:
            return []
        records: list[AuditRecord] = []
        lines: list[bytes] = []
        with self._locked():
            seq, prev_hash = tail_state(self.path, self._key.public_key())
            for entry, data in prepared:
                record, line = self._make_record(
                    entry, seq=seq + len(lines), prev_hash=prev_hash, data=data
                )
                records.append(record)
                lines.append(line)
                prev_hash = line_hash(line)
            self._write_lines(b"".join(line + b"\n" for line in lines))
            self._write_head(seq=records[-1].seq, digest=prev_hash)
        return records

    def _json_safe(self, payload: AuditEvent) -> dict[str, Any]:
        """Return the payload as it will read back (tuples become lists) or refuse it."""
        try:
            data = payload.model_dump()
            _check_keys(data)
            safe: dict[str, Any] = json.loads(canonical_json(data))
        except (TypeError, ValueError) as exc:
            raise AuditError(
                f"audit event {payload.event!r} for {self.path}: data is not JSON-safe "
                f"({exc}); pass str, int, finite float, bool, None, lists and dicts"
            ) from exc
        return safe

    def _make_record(
        self, entry: AuditEntry, *, seq: int, prev_hash: str, data: dict[str, Any]
    ) -> tuple[AuditRecord, bytes]:
        """Return the signed record and its line."""
        event = entry.payload.event
        fields: dict[str, Any] = {
            "schema_version": 1,
            "seq": seq,
            "time": datetime.now(UTC).isoformat(timespec="microseconds"),
            "actor": self.actor,
            "actor_name": self.actor_name,
            "event": event,
            "run_id": entry.run_id,
            "round": entry.round,
            "data": data,
            "prev_hash": prev_hash,
            "key_id": self.key_id,
        }
        try:
            unsigned = AuditRecord.model_validate(
                {**fields, "signature": _NO_SIGNATURE}
            )
        except ValidationError as exc:
            raise AuditError(
                f"cannot write audit event {event!r} to {self.path}: "
                f"{error_reason(exc)}"
            ) from exc
        # The strict model changed nothing, so the fields are what it would dump:
        # their canonical JSON is the record's signing payload.
        signature = sign(self._key, canonical_json(fields))
        line = canonical_json({**fields, "signature": signature})
        return unsigned.model_copy(update={"signature": signature}), line

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        lock = self.path.with_name(self.path.name + ".lock")
        try:
            fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise AuditError(
                f"cannot open the lock file of {self.path}: {exc.strerror}"
            ) from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # closing the descriptor releases the lock

    def _write_lines(self, lines: bytes) -> None:
        created = not self.path.exists()
        try:
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            try:
                view = memoryview(lines)
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
            seq=seq, hash=digest, key_id=self.key_id, signature=sign(self._key, payload)
        )
        try:
            # 0o644: auditors read the head; mkstemp would leave it 0o600.
            atomic_write_bytes(self.head_path, head.to_bytes(), mode=0o644)
            _fsync_dir(self.head_path.parent)
        except OSError as exc:
            raise AuditError(f"cannot write {self.head_path}: {exc.strerror}") from exc


class AuditBatch:
    """The records of one message, held until :meth:`flush` writes them at once.

    A site's message handler appends a charge, a release and perhaps a refusal;
    written one by one, each costs a lock, a read of the tail, a disk sync of the
    log and a replacement of the head. Held here, they go out with one
    :meth:`AuditLog.append_many`, in the order appended, before the reply leaves.

    Parameters
    ----------
    log : AuditLog
        The log the records belong to.
    """

    def __init__(self, log: AuditLog) -> None:
        self.log = log
        self._pending: list[AuditEntry] = []

    @property
    def path(self) -> Path:
        """The log file."""
        return self.log.path

    def append(
        self,
        payload: AuditEvent,
        /,
        *,
        run_id: int | None = None,
        round: int | None = None,
    ) -> None:
        """Hold one record for the next :meth:`flush`.

        Raises
        ------
        AuditError
            If the payload is not JSON-safe (checked now, so that a bad record
            cannot keep the others of the batch from being written).
        """
        self.log._json_safe(payload)
        self._pending.append(AuditEntry(payload, run_id, round))

    def flush(self) -> list[AuditRecord]:
        """Write every held record with one disk sync; the records written.

        Raises
        ------
        AuditError
            As :meth:`AuditLog.append_many`; the records stay held then, so a
            later flush may try again.
        """
        records = self.log.append_many(self._pending)
        self._pending = []
        return records


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


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


__all__ = ["AuditBatch", "AuditEntry", "AuditLog"]
