"""The last step of verification: one walk over the lines that labels broken rules.

:class:`Verifier` follows the chain position line by line (seq after seq, each
``prev_hash`` the hash of the line before) and then checks the head file against
the chain; every broken rule becomes a :class:`~slidefed.audit.problems.Problem`
with its line and kind. Signature failures are labelled from the chain's evidence:
``edited`` when the next record (or the head) was chained to other bytes than the
line holds now, ``forged`` when nothing shows the line changed after it was chained
(a record inserted between two others, or a line re-signed together with the chain
after it).

Internal to :mod:`slidefed.audit.verify`. Imports only the standard library,
pydantic and ``cryptography``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Literal

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from slidefed.audit._lines import HeadState, Line
from slidefed.audit.problems import Problem, ProblemKind
from slidefed.common.audit.records import (
    DEFAULT_PUBLIC_KEY_NAME,
    GENESIS_HASH,
    AuditHead,
    AuditRecord,
    signature_valid,
)

_LineStatus = Literal["ok", "bad", "inserted", "resync"]


class Verifier:
    """Walk the lines once, keeping the chain position, and collect problems."""

    def __init__(
        self,
        lines: list[Line],
        keys: Mapping[str, Ed25519PublicKey],
        head: HeadState,
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
        self.chain: dict[int, Line] = {}
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

    def _accept(self, line: Line, record: AuditRecord) -> None:
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

    def _check_chain(self, line: Line, record: AuditRecord) -> _LineStatus:
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

    def _report_backwards(self, line: Line, record: AuditRecord) -> None:
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

    def _report_gap(self, line: Line, record: AuditRecord) -> None:
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
        elif not signature_valid(key, head.signature, head.signing_payload()):
            self.report(anchor_line, "forged", f"{state.path} has an invalid signature")
            return
        self._compare_head(head, anchor)

    def _compare_head(self, head: AuditHead, anchor: Line | None) -> None:
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


__all__ = ["Verifier"]
