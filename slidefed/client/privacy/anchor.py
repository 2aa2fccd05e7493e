"""The ledger checked against its anchor in the site's own audit log.

After every charge the site writes the ledger's anchor into its signed audit log
(``ledger_rounds`` and ``ledger_sha256`` in the data of ``round_charged``,
``evaluation_charged`` and ``round_replayed`` records):
:meth:`~slidefed.client.privacy.ledger.Ledger.anchor` of the ledger just after the
charge. Before it computes anything, the site calls :func:`verify_ledger`, which
refuses a ledger that the log contradicts (:class:`LedgerMismatch`):

- the log anchors charged entries but the ledger file is missing (deleted);
- the ledger file is malformed (a field out of range names itself);
- it holds fewer entries than the log anchors (rolled back to an older copy);
- its first ``n`` entries do not have the anchored digest (edited).

A ledger with *more* entries than its latest anchor, whose first ``n`` match, is
accepted: a crash between the ledger write and the audit write leaves exactly that,
and can only over-count.

The log is read from its end, in blocks, only as far as needed: every anchor from
the last line back to and including the latest ``round_charged`` or
``evaluation_charged`` record is checked (a ``round_replayed`` record may repeat an
older charge's anchor, so the latest charge's is always among them). A log that
does not exist yet (a fresh site) has nothing to check. Lines that are not JSON
records are skipped here: the audit writer and verifier refuse such a log anyway.

This module imports neither torch nor Opacus.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from pydantic import ValidationError

from slidefed.client.privacy.ledger import Ledger, PrivacyLedger
from slidefed.common.errors import PolicyViolation

ANCHOR_EVENTS = frozenset({"round_charged", "evaluation_charged", "round_replayed"})
"""Audit events whose data carry the ledger's anchor."""
_CHARGE_EVENTS = frozenset({"round_charged", "evaluation_charged"})
_BLOCK = 1 << 16


class LedgerMismatch(PolicyViolation):
    """The privacy ledger is missing, malformed, rolled back or edited."""


@dataclass(frozen=True)
class Anchor:
    """One anchor of the ledger, as an audit record states it."""

    rounds: int
    sha256: str
    seq: int | None
    event: str


def verify_ledger(ledger_file: PrivacyLedger, audit_path: Path) -> None:
    """Check the ledger against the anchors in the site's audit log.

    Raises
    ------
    LedgerMismatch
        If the ledger is missing while the log anchors charges, malformed, holds
        fewer entries than anchored, or its anchored entries were changed; the
        message says what is wrong and how to fix it, on one line.
    """
    anchors, charged = latest_anchors(Path(audit_path))
    path = ledger_file.path
    if not path.is_file():
        needed = max((a.rounds for a in anchors), default=0)
        if needed or charged:
            count = f"{needed} charged entries" if needed else "charged entries"
            raise LedgerMismatch(
                f"privacy ledger {path} is missing but the audit log {audit_path} "
                f"shows {count}; restore the ledger from a backup that holds them "
                "(deleting it does not reset the spend); training and evaluation "
                "refused"
            )
        return
    ledger = _load(ledger_file)
    for anchor in sorted(anchors, key=lambda a: a.rounds, reverse=True):
        _check(ledger, anchor, path, Path(audit_path))


def _load(ledger_file: PrivacyLedger) -> Ledger:
    try:
        return ledger_file.load()
    except ValidationError as exc:
        error = exc.errors()[0]
        where = ".".join(str(part) for part in error["loc"]) or "the file"
        raise LedgerMismatch(
            f"privacy ledger {ledger_file.path} is malformed ({where}: "
            f"{error['msg']}); restore it from a backup that matches the audit log; "
            "never edit it by hand"
        ) from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise LedgerMismatch(
            f"privacy ledger {ledger_file.path} cannot be read ({exc}); restore it "
            "from a backup that matches the audit log"
        ) from exc


def _check(ledger: Ledger, anchor: Anchor, path: Path, audit_path: Path) -> None:
    where = (
        f"{audit_path} record {anchor.seq}" if anchor.seq is not None else audit_path
    )
    held = len(ledger.rounds)
    if held < anchor.rounds:
        raise LedgerMismatch(
            f"privacy ledger {path} holds {held} entries but the audit log "
            f"({where}) anchors {anchor.rounds}: it was rolled back to an older "
            "copy; restore the newest ledger (the one that holds them); training "
            "and evaluation refused"
        )
    _, digest = ledger.anchor(anchor.rounds)
    if digest != anchor.sha256:
        raise LedgerMismatch(
            f"privacy ledger {path}: its first {anchor.rounds} entries do not match "
            f"the digest anchored in the audit log ({where}, sha256 "
            f"{anchor.sha256[:12]}...): it was edited; restore the copy that "
            "matches the log; training and evaluation refused"
        )


def latest_anchors(audit_path: Path) -> tuple[list[Anchor], bool]:
    """The anchors from the log's end back to its latest charge; whether it has one.

    The second value is True when the log holds any ``round_charged`` or
    ``evaluation_charged`` record (anchored or not, as logs written before anchors
    are). Reads from the end, and only to the start when no charge is anchored.
    """
    anchors: list[Anchor] = []
    charged = False
    for line in _lines_from_end(audit_path):
        if b"_charged" not in line and b"round_replayed" not in line:
            continue
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if not isinstance(record, dict) or record.get("event") not in ANCHOR_EVENTS:
            continue
        event = record["event"]
        charged = charged or event in _CHARGE_EVENTS
        anchor = _anchor_of(record)
        if anchor is not None:
            anchors.append(anchor)
            if event in _CHARGE_EVENTS:
                break
    return anchors, charged


def _anchor_of(record: dict[str, object]) -> Anchor | None:
    data = record.get("data")
    if not isinstance(data, dict):
        return None
    rounds, digest = data.get("ledger_rounds"), data.get("ledger_sha256")
    if not isinstance(rounds, int) or isinstance(rounds, bool) or rounds < 0:
        return None
    if not isinstance(digest, str) or not digest:
        return None
    seq = record.get("seq")
    return Anchor(
        rounds=rounds,
        sha256=digest,
        seq=seq if isinstance(seq, int) else None,
        event=str(record["event"]),
    )


def _lines_from_end(path: Path) -> Iterator[bytes]:
    """The file's lines, last first (none when it does not exist)."""
    try:
        handle = path.open("rb")
    except FileNotFoundError:
        return
    with handle:
        pos = handle.seek(0, os.SEEK_END)
        rest = b""
        while pos > 0:
            step = min(_BLOCK, pos)
            pos -= step
            handle.seek(pos)
            block = handle.read(step) + rest
            lines = block.split(b"\n")
            rest = lines[0]
            for line in reversed(lines[1:]):
                if line.strip():
                    yield line
        if rest.strip():
            yield rest


__all__ = [
    "ANCHOR_EVENTS",
    "Anchor",
    "LedgerMismatch",
    "latest_anchors",
    "verify_ledger",
]
