"""Where the writer continues a log: its last record, checked against the head.

Before each append the writer reads the last line and the head file, and refuses to
continue a chain whose end it cannot trust (a torn line, a line that is no record,
a head that names a record the log no longer ends with). A head may lag behind the
log: a crash between writing the lines and replacing the head leaves exactly that.
The records after the head are accepted when each continues the chain and carries a
valid signature by the writer's own key.

Internal to :mod:`slidefed.common.audit.writer`.
"""

from __future__ import annotations

import os
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from slidefed.common.audit.records import (
    GENESIS_HASH,
    AuditHead,
    AuditRecord,
    error_reason,
    head_path,
    line_hash,
    parse_head,
    parse_line,
    signature_valid,
    split_lines,
    verify_hint,
)
from slidefed.common.crypto import key_id
from slidefed.common.errors import AuditError


def count_lines(path: Path) -> int:
    """Count lines, a last line without newline included (for error messages)."""
    count = 0
    last = b"\n"
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 16), b""):
            count += chunk.count(b"\n")
            last = chunk[-1:]
    return count + (last != b"\n")


def read_last_line(path: Path) -> bytes | None:
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
            line = count_lines(path)
            raise AuditError(
                f"{path}:{line}: the last line is torn (no newline at its end); "
                f"{verify_hint(path)}. If a crash tore it, delete that partial "
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


def read_head(path: Path) -> AuditHead | None:
    """Return the head file of the log ``path``, or None when there is none.

    Raises
    ------
    AuditError
        If the head file cannot be read or is not a valid head file.
    """
    head_file = head_path(path)
    try:
        raw = head_file.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise AuditError(f"cannot read {head_file}: {exc.strerror}") from exc
    try:
        return parse_head(raw)
    except ValueError as exc:
        raise AuditError(
            f"{head_file} is not a valid head file ({error_reason(exc)}); "
            f"{verify_hint(path)}"
        ) from exc


def _head_matches(head: AuditHead | None, last: AuditRecord, digest: str) -> bool:
    """Tell whether the head names the last record or the one before it."""
    if head is None:
        return last.seq == 0 and last.prev_hash == GENESIS_HASH
    if (head.seq, head.hash) == (last.seq, digest):
        return True
    return (head.seq, head.hash) == (last.seq - 1, last.prev_hash)


def _signed_after_head(path: Path, head: AuditHead, key: Ed25519PublicKey) -> bool:
    """Tell whether the records after the head's continue its chain, signed by ``key``.

    Only read after a crash left the head more than one record behind (a batch
    append that died before replacing the head).
    """
    lines = [raw for raw, _torn in split_lines(path.read_bytes())]
    anchor = next(
        (i for i in range(len(lines) - 1, -1, -1) if line_hash(lines[i]) == head.hash),
        None,
    )
    if anchor is None:
        return False
    own = key_id(key)
    expected_seq, expected_prev = head.seq, head.hash
    for raw in lines[anchor + 1 :]:
        expected_seq += 1
        try:
            record = parse_line(raw)
        except ValueError:
            return False
        if (
            (record.seq, record.prev_hash, record.key_id)
            != (expected_seq, expected_prev, own)
            or record.to_line() != raw
            or not signature_valid(key, record.signature, record.signing_payload())
        ):
            return False
        expected_prev = line_hash(raw)
    return True


def tail_state(path: Path, key: Ed25519PublicKey) -> tuple[int, str]:
    """Return ``(seq, prev_hash)`` for the next record of the log ``path``.

    Parameters
    ----------
    path : Path
        The log file.
    key : Ed25519PublicKey
        The writer's public key, which must have signed any records the head
        does not name yet.

    Raises
    ------
    AuditError
        If the last line is torn or not a record, or the head file disagrees with
        the log (truncation or an edit).
    """
    last = read_last_line(path)
    head = read_head(path)
    head_file = head_path(path)
    if last is None:
        if head is not None:
            raise AuditError(
                f"{path} has no records but {head_file} says it ends "
                f"with record seq {head.seq}: the log was truncated; "
                f"{verify_hint(path)}"
            )
        return 0, GENESIS_HASH
    try:
        record = parse_line(last)
    except ValueError as exc:
        raise AuditError(
            f"{path}:{count_lines(path)}: the last line is not an audit "
            f"record ({error_reason(exc)}); {verify_hint(path)}"
        ) from exc
    digest = line_hash(last)
    if not _head_matches(head, record, digest) and (
        head is None
        or head.seq >= record.seq
        or not _signed_after_head(path, head, key)
    ):
        said = "is missing" if head is None else f"says seq {head.seq}"
        raise AuditError(
            f"{head_file} {said} but the last record of {path} is seq "
            f"{record.seq}: the log was truncated or edited; "
            f"{verify_hint(path)}, then move the log and its .head aside "
            "to start a new one"
        )
    return record.seq + 1, digest


__all__ = ["count_lines", "read_head", "read_last_line", "tail_state"]
