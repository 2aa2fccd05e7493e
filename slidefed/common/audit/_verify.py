"""Internals of :func:`slidefed.common.audit.log.verify_log`.

The verifier reads a log in three steps:

1. every line is parsed and checked for canonical form (:func:`_parse`), with
   Python's cycle collector paused;
2. records are authenticated (:func:`_authenticate`): by the signed head through
   the hash chain where it vouches for them, by their own Ed25519 signature
   otherwise, checked in a thread pool when there are many (``cryptography``
   releases the GIL while it verifies);
3. one walk over the lines follows the chain and the head file and labels every
   broken rule (:class:`_Verifier`).

Import the public API from :mod:`slidefed.common.audit.log`, not from here. This module
imports only the standard library, pydantic and ``cryptography``.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import gc
import json
import os
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from slidefed.common.audit.log import (
    DEFAULT_PUBLIC_KEY_NAME,
    GENESIS_HASH,
    AuditHead,
    AuditRecord,
    NumberedRecord,
    Problem,
    ProblemKind,
    VerifyResult,
    _parse_head,
    _reason,
    _reject_constant,
    _signature_valid,
    _split_lines,
    canonical_json,
    head_path,
    line_hash,
)

_CHUNK = 2048
"""Signatures per unit of work handed to the threads."""

_PARALLEL_MIN = 4 * _CHUNK
"""Fewer signatures than this are checked in the calling thread."""

_DECODER = json.JSONDecoder(parse_constant=_reject_constant)
"""Parses lines as :func:`slidefed.common.audit.log.read_records` does, built once."""

_SIG_KEY = b',"signature":"'
_SIG_TEXT_LEN = 88  # base64 of 64 bytes


@dataclass(slots=True)
class _Line:
    """One line of a log under verification.

    ``sig_ok`` is None until the record is authenticated (see :func:`_authenticate`),
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


def _parse(number: int, raw: bytes, torn: bool) -> _Line:
    """Parse one line and check that it is in canonical form."""
    digest = line_hash(raw)
    if torn:
        return _Line(number, raw, digest, True, None, "", False)
    try:
        obj = _DECODER.decode(raw.decode("utf-8"))
        if not isinstance(obj, dict):
            raise ValueError("line is not a JSON object")
        record = AuditRecord.model_validate(obj)
    except ValueError as exc:
        return _Line(number, raw, digest, False, None, _reason(exc), False)
    # A record that validated in strict mode and lists every field reads back as
    # the same JSON, so its canonical form is the canonical form of ``obj``.
    complete = len(obj) == len(AuditRecord.model_fields)
    canonical = raw == (canonical_json(obj) if complete else record.to_line())
    return _Line(number, raw, digest, False, record, "", canonical)


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


def _vouch_by_head(
    lines: Sequence[_Line], head: _HeadState, keys: Mapping[str, Ed25519PublicKey]
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
    if key is None or not _signature_valid(
        key, state.signature, state.signing_payload()
    ):
        return
    anchor = next(
        (
            index
            for index in range(len(lines) - 1, -1, -1)
            if lines[index].hash == state.hash
            and (record := lines[index].record) is not None
            and record.seq == state.seq
        ),
        None,
    )
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
    lines: Sequence[_Line], keys: Mapping[str, Ed25519PublicKey]
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


def _authenticate(
    lines: Sequence[_Line],
    head: _HeadState,
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


@contextlib.contextmanager
def collector_paused() -> Iterator[None]:
    """Pause Python's cycle collector for the block (nested pauses are fine).

    A large log becomes millions of small objects that all stay alive and form no
    cycles; the collector would scan them over and over for nothing, which costs
    about as much as the parsing itself. Callers that keep working on the records
    (the cross-check, the report) pause it around all of that work.
    """
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def verify_data(
    path: Path,
    data: bytes,
    keys: Mapping[str, Ed25519PublicKey],
    *,
    explicit_keys: bool,
    every_signature: bool = False,
    threads: int | None = None,
) -> tuple[VerifyResult, list[NumberedRecord]]:
    """Verify the bytes of the log ``path`` against its head file.

    Parameters
    ----------
    path : Path
        The log; its head file is ``<path>.head``.
    data : bytes
        The log's content.
    keys : Mapping[str, Ed25519PublicKey]
        Trusted keys by key id.
    explicit_keys : bool
        Whether the caller passed ``keys`` (for the wording of ``unknown_key``).
    every_signature : bool
        Check each record's own signature even where the head vouches for it.
    threads : int, optional
        Threads for signature checks (default: the CPU count, at most 8).

    Returns
    -------
    tuple[VerifyResult, list[NumberedRecord]]
        The result, and every line that parsed as a record, with its 1-based
        line number, whether or not it passed.
    """
    with collector_paused():
        lines = [
            _parse(number, raw, torn)
            for number, (raw, torn) in enumerate(_split_lines(data), 1)
        ]
        head_state = _load_head_for_verify(head_path(path))
        _authenticate(
            lines, head_state, keys, every_signature=every_signature, threads=threads
        )
        verifier = _Verifier(lines, keys, head_state, explicit_keys=explicit_keys)
        problems = verifier.run()
        records = [
            NumberedRecord(n.number, n.record) for n in lines if n.record is not None
        ]
    result = VerifyResult(
        ok=not problems, path=str(path), records=len(records), problems=problems
    )
    return result, records


@dataclass(frozen=True)
class _HeadState:
    """The head file as the verifier sees it: missing, unreadable, or parsed."""

    path: Path
    head: AuditHead | None
    error: str


def _load_head_for_verify(path: Path) -> _HeadState:
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return _HeadState(path, None, "")
    except OSError as exc:
        return _HeadState(path, None, f"cannot be read: {exc.strerror}")
    try:
        return _HeadState(path, _parse_head(raw), "")
    except ValueError as exc:
        return _HeadState(path, None, f"is not a valid head file ({_reason(exc)})")


_LineStatus = Literal["ok", "bad", "inserted", "resync"]


class _Verifier:
    """Walk the lines once, keeping the chain position, and collect problems."""

    def __init__(
        self,
        lines: list[_Line],
        keys: Mapping[str, Ed25519PublicKey],
        head: _HeadState,
        *,
        explicit_keys: bool,
    ) -> None:
        self.lines = lines
        self.keys = keys
        self.head = head
        self.explicit_keys = explicit_keys
        self.problems: list[Problem] = []
        self.flagged: set[int] = set()
        # Chain position: the seq, line hash (None: not trustworthy) and line number
        # of the last record accepted into the chain.
        self.prev_seq = -1
        self.prev_hash: str | None = GENESIS_HASH
        self.prev_line = 0
        self.chain: dict[int, _Line] = {}
        self.seen_hash: dict[str, int] = {}
        self.seen_seq: dict[int, int] = {}
        self.seq_lines: dict[int, list[int]] = {}
        for line in lines:
            if line.record is not None:
                self.seq_lines.setdefault(line.record.seq, []).append(line.number)

    def report(self, line: int, kind: ProblemKind, message: str) -> None:
        self.problems.append(Problem(line=line, kind=kind, message=message))
        self.flagged.add(line)

    def run(self) -> list[Problem]:
        for index, line in enumerate(self.lines):
            status = self._check_line(index)
            if status == "ok" and line.record is not None:
                status = self._check_chain(line, line.record)
            if status == "bad":
                self.prev_seq += 1
                self.prev_hash = None
                self.prev_line = line.number
            elif status in ("ok", "resync") and line.record is not None:
                self._accept(line, line.record)
            if line.record is not None:
                self.seen_hash.setdefault(line.hash, line.number)
                self.seen_seq.setdefault(line.record.seq, line.number)
        self._check_head()
        return sorted(self.problems, key=lambda problem: problem.line)

    def _accept(self, line: _Line, record: AuditRecord) -> None:
        self.prev_seq = record.seq
        self.prev_hash = line.hash
        self.prev_line = line.number
        self.chain[record.seq] = line

    def _check_line(self, index: int) -> _LineStatus:
        """Check one line on its own: parse, canonical form, key, signature."""
        line = self.lines[index]
        if line.torn:
            self.report(
                line.number,
                "torn",
                "the last line has no newline at its end: it was "
                "cut short (a crash while writing, or the file was truncated)",
            )
            return "bad"
        record = line.record
        if record is None:
            self.report(line.number, "malformed", f"not an audit record ({line.error})")
            return "bad"
        if not line.canonical:
            self.report(
                line.number,
                "edited",
                "the line is not in the canonical form it was "
                "written in: its bytes were changed after signing",
            )
            return "bad"
        if record.key_id not in self.keys:
            self.report(line.number, "unknown_key", self._unknown_key_message(record))
            return "ok"  # unverifiable, but its place in the chain still counts
        if line.sig_ok:
            return "ok"
        return self._bad_signature(index, record)

    def _unknown_key_message(self, record: AuditRecord) -> str:
        where = (
            "is not among the given public keys"
            if self.explicit_keys
            else f"is not trusted: no {DEFAULT_PUBLIC_KEY_NAME} with that key is next "
            "to the log; pass the writer's audit public key"
        )
        return (
            f"record seq {record.seq} is signed by key {record.key_id}, which {where}"
        )

    def _bad_signature(self, index: int, record: AuditRecord) -> _LineStatus:
        """Label a known-key signature failure ``edited`` or ``forged`` (see module)."""
        line = self.lines[index]
        seq = record.seq
        before = self.lines[index - 1].hash if index > 0 else GENESIS_HASH
        nxt = self.lines[index + 1].record if index + 1 < len(self.lines) else None
        if nxt is not None and nxt.prev_hash == before != line.hash:
            self.report(
                line.number,
                "forged",
                f"record seq {seq} has an invalid signature and "
                "is not part of the chain (the next record follows the line before "
                "it): it was inserted",
            )
            return "inserted"
        head = self.head.head
        if nxt is not None:
            as_chained = nxt.prev_hash == line.hash
        else:
            as_chained = head is not None and head.hash == line.hash
        if as_chained:
            self.report(
                line.number,
                "forged",
                f"record seq {seq} has an invalid signature "
                "although the chain vouches for the line as it is: it was forged",
            )
        else:
            self.report(
                line.number,
                "edited",
                f"record seq {seq} does not match its signature: "
                "its content was changed after it was written",
            )
        return "bad"

    def _check_chain(self, line: _Line, record: AuditRecord) -> _LineStatus:
        """Check a line's place: seq after the previous one and chained to it."""
        if record.seq == self.prev_seq + 1 and self.prev_hash in (
            None,
            record.prev_hash,
        ):
            return "ok"
        if line.hash in self.seen_hash:
            self.report(
                line.number,
                "duplicated",
                f"record seq {record.seq} is a copy of line "
                f"{self.seen_hash[line.hash]}",
            )
            return "inserted"
        if record.seq <= self.prev_seq:
            self._report_backwards(line, record)
            return "inserted"
        if record.seq > self.prev_seq + 1:
            self._report_gap(line, record)
            return "resync"
        if self.prev_line == 0:
            self.report(
                line.number,
                "edited",
                "the first record does not start the chain "
                "(its prev_hash is not the genesis hash)",
            )
        elif self.prev_line not in self.flagged:
            self.report(
                self.prev_line,
                "edited",
                f"record seq {self.prev_seq} is not the record "
                f"that line {line.number} was chained to: it was replaced",
            )
        return "resync"

    def _report_backwards(self, line: _Line, record: AuditRecord) -> None:
        first = self.seen_seq.get(record.seq)
        if first is not None:
            self.report(
                line.number,
                "duplicated",
                f"a second, different record with seq "
                f"{record.seq} (the first is at line {first})",
            )
        else:
            self.report(
                line.number,
                "reordered",
                f"record seq {record.seq} is out of place: it "
                f"belongs before line {self.prev_line} (seq {self.prev_seq})",
            )

    def _report_gap(self, line: _Line, record: AuditRecord) -> None:
        first, last = self.prev_seq + 1, record.seq - 1
        span = f"seq {first}" if first == last else f"seq {first}..{last}"
        later = sorted(
            number
            for seq in range(first, last + 1)
            for number in self.seq_lines.get(seq, [])
            if number > line.number
        )
        if later:
            self.report(
                line.number,
                "reordered",
                f"record seq {record.seq} comes before "
                f"{span}, which is further down (line {later[0]}): lines were moved",
            )
        else:
            count = last - first + 1
            self.report(
                line.number,
                "deleted",
                f"{span} missing before record seq {record.seq}:"
                f" {count} record(s) were deleted",
            )

    def _check_head(self) -> None:
        """Check the head file against the chain: truncation of the tail shows here."""
        state = self.head
        end = len(self.lines) + 1
        if state.error:
            self.report(end, "malformed", f"{state.path} {state.error}")
            return
        head = state.head
        if head is None:
            if self.lines:
                self.report(
                    end,
                    "truncated",
                    f"{state.path} is missing, so records cut off the "
                    "end of the log cannot be detected",
                )
            return
        anchor = self.chain.get(head.seq)
        anchor_line = anchor.number if anchor is not None else end
        key = self.keys.get(head.key_id)
        if key is None:
            self.report(
                anchor_line,
                "unknown_key",
                f"{state.path} is signed by key {head.key_id}, which is not trusted",
            )
        elif not _signature_valid(key, head.signature, head.signing_payload()):
            self.report(anchor_line, "forged", f"{state.path} has an invalid signature")
            return
        self._compare_head(head, anchor)

    def _compare_head(self, head: AuditHead, anchor: _Line | None) -> None:
        path = self.head.path
        if anchor is not None:
            if anchor.hash != head.hash and anchor.number not in self.flagged:
                self.report(
                    anchor.number,
                    "edited",
                    f"record seq {head.seq} is not the one that {path} vouches for",
                )
            return
        last_seq = max(self.chain, default=-1)
        if head.seq <= last_seq:
            return  # that record is missing from the chain and was reported already
        last_line = self.chain[last_seq].number if self.chain else 0
        missing_line = last_line + 1
        torn = bool(self.lines) and self.lines[-1].torn
        if missing_line in self.flagged and not torn:
            return
        self.report(
            missing_line,
            "truncated",
            f"{path} says the log ends with record seq "
            f"{head.seq}, but the last intact record is seq {last_seq}: "
            f"{head.seq - last_seq} record(s) were cut off the end",
        )


__all__ = ["collector_paused", "verify_data"]
