"""Audit logs for tests: payloads as the client and the server write them, and edits.

:func:`foreign` makes a payload outside the schema, as a writer that does not use
:mod:`slidefed.common.audit.events` (an old or a hostile one) would write it.
"""

from __future__ import annotations

import base64
import math
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from pydantic import ConfigDict

from slidefed.audit.accountant import ORDERS
from slidefed.common.audit.events import (
    AuditEvent,
    RoundCharged,
    RoundCompleted,
    RoundRefused,
    RunJoined,
    UpdateAggregated,
    UpdateReleased,
)
from slidefed.common.audit.records import (
    AuditHead,
    AuditRecord,
    canonical_json,
    head_path,
    line_hash,
)
from slidefed.common.audit.writer import AuditLog
from slidefed.common.crypto import generate_audit_key, key_id

DATASET = {
    "unit": "patient",
    "manifest_sha256": "a" * 64,
    "slides": 80,
    "slides_with_features": 80,
    "patients": 40,
    "train_patients": 28,
    "test_patients": 12,
}


_LEGACY_DP = {"noise_multiplier": 0.9560546875, "sample_rate": 0.25, "steps": 16}
"""DP parameters of a charge whose epsilons no Gaussian history can reach."""


def _gaussian_rho(target: float, delta: float) -> float | None:
    """The sum of 1/sigma^2 of Gaussian releases whose composition has ``target``.

    Gaussian releases (sample rate 1, one step) compose to one Gaussian with
    ``1/sigma^2 = sum of 1/sigma_i^2``: its RDP at order ``a`` is ``a rho / 2``,
    and the auditor's epsilon ``min_a (a rho / 2 + c_a)`` is reached exactly at
    ``rho = max_a 2 (target - c_a) / a``. None when ``target`` lies below the
    epsilon of an arbitrarily small release (at ``delta``).
    """
    best = -math.inf
    for order in ORDERS:
        c = -(math.log(delta) + math.log(order)) / (order - 1) + math.log(
            (order - 1) / order
        )
        best = max(best, 2 * (target - c) / order)
    return best if best > 0 else None


def _honest_dp(before: float, after: float, delta: float) -> dict[str, Any]:
    """DP parameters of a charge that takes a Gaussian history from before to after."""
    if after == before:
        return {"noise_multiplier": 1.0, "sample_rate": 1.0, "steps": 0}
    rho_after = _gaussian_rho(after, delta)
    rho_before = 0.0 if before == 0 else _gaussian_rho(before, delta)
    if rho_after is None or rho_before is None or rho_after <= rho_before:
        return dict(_LEGACY_DP)
    sigma = 1 / math.sqrt(rho_after - rho_before)
    return {"noise_multiplier": sigma, "sample_rate": 1.0, "steps": 1}


def charge(
    after: float, *, before: float = 0.0, budget: float = 10.0, **fields: Any
) -> RoundCharged:
    """A ``round_charged`` payload reaching ``after`` of a ``budget``.

    Unless ``fields`` give the DP parameters, they are those of one Gaussian
    release that brings a log of such charges (each ``before`` the ``after`` of
    the charge before it, at one delta) from ``before`` to ``after``, as the
    auditor recomputes it (:mod:`slidefed.audit.accountant`), so that the
    records are honest. Epsilons no such history reaches (below the epsilon of an
    arbitrarily small release) get fixed parameters, which the auditor's
    recomputation refutes.
    """
    delta = fields.get("delta", 0.0035714285714285713)
    values: dict[str, Any] = {
        **_honest_dp(before, after, delta),
        "delta": delta,
        "unit": "patient",
        "accountant": "rdp",
        "epsilon_round": after - before,
        "epsilon_before": before,
        "epsilon_after": after,
        "epsilon_max": budget,
        "replay": False,
    }
    return RoundCharged(**(values | fields))


def release(sha256: str, *, nbytes: int = 192, arrays: int = 1) -> UpdateReleased:
    """An ``update_released`` payload."""
    return UpdateReleased(
        arrays=[
            {"name": f"layer{i}.weight", "shape": [2, 24], "dtype": "float32"}
            for i in range(arrays)
        ],
        bytes=nbytes,
        sha256=sha256,
        metrics={"num-examples": 28, "train_loss": 0.6},
    )


def joined(config_hash: str = "f" * 64, **dataset: Any) -> RunJoined:
    """A ``run_joined`` payload."""
    return RunJoined(config_hash=config_hash, dataset=DATASET | dataset)


def aggregated(node: str, sha256: str, *, nbytes: int = 192) -> UpdateAggregated:
    """An ``update_aggregated`` payload."""
    return UpdateAggregated(node=node, sha256=sha256, bytes=nbytes, weight=28)


def completed(sites_trained: int) -> RoundCompleted:
    """A ``round_completed`` payload."""
    return RoundCompleted(
        sites_trained=sites_trained, sites_evaluated=sites_trained, rejected=0, errors=0
    )


def note(reason: str) -> RoundRefused:
    """A small payload for tests that need any record."""
    return RoundRefused(reason=reason)


def foreign(event: str, **data: Any) -> AuditEvent:
    """A payload named ``event`` with ``data``, outside the schema."""
    model = type(
        "Foreign",
        (AuditEvent,),
        {"model_config": ConfigDict(extra="allow", frozen=True), "event": event},
    )
    payload: AuditEvent = model(**data)
    return payload


def new_log(
    directory: Path, n: int = 5
) -> tuple[Path, Ed25519PrivateKey, list[AuditRecord]]:
    """Write a site log of ``n`` charges (epsilon 0.25 a round), its key beside it."""
    key = generate_audit_key(directory / "audit_key")
    path = directory / "audit.jsonl"
    log = AuditLog(path, key=key, actor="site", actor_name="hospital-a")
    records = [
        log.append(charge(0.25 * i, before=0.25 * max(i - 1, 0)), run_id=7, round=i)
        for i in range(n)
    ]
    return path, key, records


def lines_of(path: Path) -> list[bytes]:
    """The lines of a log, each with its newline."""
    return path.read_bytes().splitlines(keepends=True)


def write_lines(path: Path, lines: list[bytes]) -> None:
    """Replace a log's content by ``lines``."""
    path.write_bytes(b"".join(lines))


def parse(line: bytes) -> AuditRecord:
    """The record of one line."""
    return AuditRecord.model_validate_json(line)


def resign(
    line: bytes, key: Ed25519PrivateKey, *, claim: str | None = None, **update: Any
) -> bytes:
    """Return ``line`` changed by ``update`` and signed by ``key``.

    The record names ``claim`` as its key id, or ``key``'s own id by default.
    """
    fields = parse(line).model_dump() | update
    fields["key_id"] = claim if claim is not None else key_id(key.public_key())
    unsigned = AuditRecord.model_validate(fields)
    signature = base64.b64encode(key.sign(unsigned.signing_payload())).decode()
    return unsigned.model_copy(update={"signature": signature}).to_line() + b"\n"


def rechain_after(
    lines: list[bytes], index: int, key: Ed25519PrivateKey, path: Path
) -> None:
    """Re-sign every line after ``index`` onto the chain, and the head, with ``key``.

    ``index = -1`` re-signs the whole log, as a forger with another key would: the
    chain stays intact, and with the forger's public key put beside the log only
    an auditor who pins the real key can tell.
    """
    for i in range(index + 1, len(lines)):
        prev = line_hash(lines[i - 1].rstrip()) if i else parse(lines[0]).prev_hash
        lines[i] = resign(lines[i], key, prev_hash=prev)
    write_lines(path, lines)
    last = lines[-1].rstrip(b"\n")
    seq = parse(last).seq
    payload = canonical_json({"hash": line_hash(last), "seq": seq})
    head = AuditHead(
        seq=seq,
        hash=line_hash(last),
        key_id=key_id(key.public_key()),
        signature=base64.b64encode(key.sign(payload)).decode(),
    )
    head_path(path).write_bytes(head.to_bytes())


def resign_log(path: Path, key: Ed25519PrivateKey) -> None:
    """Re-sign a whole log and its head with ``key`` (see :func:`rechain_after`)."""
    rechain_after(lines_of(path), -1, key, path)


def sha(site: str, rnd: int) -> str:
    """A stand-in sha256 of a site's update of a round."""
    return line_hash(f"{site}/{rnd}".encode())


__all__ = [
    "DATASET",
    "aggregated",
    "charge",
    "completed",
    "foreign",
    "joined",
    "lines_of",
    "new_log",
    "note",
    "parse",
    "rechain_after",
    "release",
    "resign",
    "resign_log",
    "sha",
    "write_lines",
]
