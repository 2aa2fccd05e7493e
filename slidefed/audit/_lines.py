"""The first two steps of verification: parse every line, then authenticate records.

1. every line is parsed and checked for canonical form (:func:`parse`);
2. records are authenticated (:func:`authenticate`): by the signed head through the
   hash chain where it vouches for them, by their own Ed25519 signature otherwise,
   checked in a thread pool when there are many (``cryptography`` releases the GIL
   while it verifies).

Internal to :mod:`slidefed.audit.verify`; the walk that labels broken rules is in
:mod:`slidefed.audit._chain`. Imports only the standard library, pydantic and
``cryptography``.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from slidefed.common.audit.records import (
    AuditHead,
    AuditRecord,
    canonical_json,
    error_reason,
    line_hash,
    parse_head,
    reject_constant,
    signature_valid,
)

_CHUNK = 2048
"""Signatures per unit of work handed to the threads."""

_PARALLEL_MIN = 4 * _CHUNK
"""Fewer signatures than this are checked in the calling thread."""

_DECODER = json.JSONDecoder(parse_constant=reject_constant)
"""Parses lines as :func:`slidefed.common.audit.records.parse_line` does, built once."""

_SIG_KEY = b',"signature":"'
_SIG_TEXT_LEN = 88  # base64 of 64 bytes


@dataclass(slots=True)
class Line:
    """One line of a log under verification.

    ``sig_ok`` is None until the record is authenticated (see :func:`authenticate`),
    and stays None when the line has no record, is not canonical, or names an
    untrusted key.
    """

    number: int
    raw: bytes
    hash: str
    torn: bool
    record: AuditRecord | None
    error: str
    canonical: bool
    sig_ok: bool | None = None


@dataclass(frozen=True)
class HeadState:
    """The head file as the verifier sees it: missing, unreadable, or parsed."""

    path: Path
    head: AuditHead | None
    error: str


def parse(number: int, raw: bytes, torn: bool) -> Line:
    """Parse one line and check that it is in canonical form."""
    digest = line_hash(raw)
    if torn:
        return Line(number, raw, digest, True, None, "", False)
    try:
        obj = _DECODER.decode(raw.decode("utf-8"))
        if not isinstance(obj, dict):
            raise ValueError("line is not a JSON object")
        record = AuditRecord.model_validate(obj)
    except ValueError as exc:
        return Line(number, raw, digest, False, None, error_reason(exc), False)
    # A record that validated in strict mode and lists every field reads back as
    # the same JSON, so its canonical form is the canonical form of ``obj``.
    complete = len(obj) == len(AuditRecord.model_fields)
    try:
        canonical = raw == (canonical_json(obj) if complete else record.to_line())
    except (TypeError, ValueError):  # e.g. a number edited out of float range
        return Line(number, raw, digest, False, None, "not canonical JSON", False)
    return Line(number, raw, digest, False, record, "", canonical)


def load_head(path: Path) -> HeadState:
    """Read the head file ``path`` for verification; never raises."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return HeadState(path, None, "")
    except OSError as exc:
        return HeadState(path, None, f"cannot be read: {exc.strerror}")
    try:
        return HeadState(path, parse_head(raw), "")
    except ValueError as exc:
        return HeadState(path, None, f"is not a valid head file ({error_reason(exc)})")


def _signed_bytes(line: bytes) -> bytes:
    """Return what the signature of a canonical line covers: the line without it.

    In canonical JSON the top-level ``signature`` is followed only by ``time``, so
    its last occurrence is the top-level one; cutting it out leaves the canonical
    JSON of every other field, which :meth:`AuditRecord.signing_payload` returns.
    """
    start = line.rfind(_SIG_KEY)
    end = start + len(_SIG_KEY) + _SIG_TEXT_LEN
    if start < 0 or line[end : end + 9] != b'","time":':
        # Cannot happen for a validated canonical line; stay correct regardless.
        return AuditRecord.model_validate_json(line).signing_payload()
    return line[:start] + line[end + 1 :]


def _head_anchor(lines: Sequence[Line], head: AuditHead) -> int | None:
    """Return the index of the last line that is the record the head names."""
    for index in range(len(lines) - 1, -1, -1):
        record = lines[index].record
        if (
            lines[index].hash == head.hash
            and record is not None
            and record.seq == head.seq
        ):
            return index
    return None


def _vouch_by_head(
    lines: Sequence[Line], head: HeadState, keys: Mapping[str, Ed25519PublicKey]
) -> None:
    """Mark the records that a valid, trusted head vouches for through the chain.

    The head signs the hash of the line it names; that line holds the hash of the
    line before it, and so on. Walking back from that line while each record's
    ``prev_hash`` is the hash of the line above it, every line reached is, byte for
    byte, what the head's signer chained (finding other bytes with the same hash is
    infeasible), so the head's signature authenticates it. Only records that claim
    the head's own key are marked; the others keep their own signature check.
    """
    state = head.head
    if state is None:
        return
    key = keys.get(state.key_id)
    if key is None or not signature_valid(
        key, state.signature, state.signing_payload()
    ):
        return
    anchor = _head_anchor(lines, state)
    index = anchor if anchor is not None else -1
    while index >= 0:
        line = lines[index]
        record = line.record
        if record is None:
            break
        if line.canonical and record.key_id == state.key_id:
            line.sig_ok = True
        if index == 0 or record.prev_hash != lines[index - 1].hash:
            break
        index -= 1


def _check_signatures(
    lines: Sequence[Line], keys: Mapping[str, Ed25519PublicKey]
) -> None:
    """Check the own signature of each line (all canonical, with a trusted key)."""
    for line in lines:
        record = line.record
        if record is None:  # never: the caller passes records only
            continue
        try:
            keys[record.key_id].verify(
                base64.b64decode(record.signature), _signed_bytes(line.raw)
            )
        except (InvalidSignature, binascii.Error):
            line.sig_ok = False
        else:
            line.sig_ok = True


def authenticate(
    lines: Sequence[Line],
    head: HeadState,
    keys: Mapping[str, Ed25519PublicKey],
    *,
    every_signature: bool,
    threads: int | None,
) -> None:
    """Set ``sig_ok`` of every canonical record whose key is trusted.

    Records the head vouches for need no signature check of their own unless
    ``every_signature`` is set; the rest are checked in a thread pool when there
    are many (``cryptography`` releases the GIL while it verifies).
    """
    if not every_signature:
        _vouch_by_head(lines, head, keys)
    todo = [
        line
        for line in lines
        if line.sig_ok is None
        and line.canonical
        and line.record is not None
        and line.record.key_id in keys
    ]
    workers = threads if threads is not None else min(8, os.cpu_count() or 1)
    if len(todo) < _PARALLEL_MIN or workers <= 1:
        _check_signatures(todo, keys)
        return
    chunks = [todo[i : i + _CHUNK] for i in range(0, len(todo), _CHUNK)]
    with ThreadPoolExecutor(max_workers=workers) as pool:
        for future in [pool.submit(_check_signatures, c, keys) for c in chunks]:
            future.result()


__all__ = ["HeadState", "Line", "authenticate", "load_head", "parse"]
