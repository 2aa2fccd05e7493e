"""Benchmark of the auditor's verifier on a generated site log.

Run it as ``python -c "from slidefed.bench.audit import bench_verify;
print(bench_verify(100_000))"``; the design asks for under 10 s.

The log is written by the real writer (:class:`slidefed.common.audit.writer.AuditLog`),
in batches with one disk sync each. This module imports only the standard library,
pydantic and ``cryptography``, like the auditor's tools it measures.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from pydantic import BaseModel, ConfigDict, Field

from slidefed.audit.accountant import epsilon
from slidefed.audit.verify import collector_paused, verify_and_read
from slidefed.common.audit.events import ArrayInfo, RoundCharged, UpdateReleased
from slidefed.common.audit.records import line_hash
from slidefed.common.audit.writer import AuditEntry, AuditLog
from slidefed.common.crypto import key_id
from slidefed.common.errors import ConfigError

_BATCH = 10_000
"""Records written per disk sync."""


class BenchResult(BaseModel):
    """Timing of :func:`bench_verify`."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    records: int
    bytes: int
    write_seconds: float
    verify_seconds: float
    verify_cpu_seconds: float = Field(
        description="CPU time of this process while verifying (all threads); on a "
        "busy machine it shows the work better than the wall-clock time"
    )
    ok: bool


_ARRAYS = [
    ArrayInfo(name=f"layer{i}.weight", shape=[24, 24], dtype="float32")
    for i in range(6)
]


_SIGMA = 200.0
"""Noise of each charge: one Gaussian release a round, so that 50,000 rounds
compose to about epsilon 5 at the delta below (the auditor recomputes it)."""
_DELTA = 0.0035714285714285713


def _bench_entry(seq: int) -> AuditEntry:
    """Return record ``seq``: a charge on even ones, its release on odd ones."""
    rnd = seq // 2 + 1
    if seq % 2 == 0:
        before = epsilon([(_SIGMA, 1.0, rnd - 1)], _DELTA)
        after = epsilon([(_SIGMA, 1.0, rnd)], _DELTA)
        charge = RoundCharged(
            accountant="rdp",
            delta=_DELTA,
            epsilon_after=after,
            epsilon_before=before,
            epsilon_max=10.0,
            epsilon_round=epsilon([(_SIGMA, 1.0, 1)], _DELTA),
            noise_multiplier=_SIGMA,
            sample_rate=1.0,
            steps=1,
            unit="patient",
            replay=False,
        )
        return AuditEntry(charge, run_id=1, round=rnd)
    release = UpdateReleased(
        arrays=_ARRAYS,
        bytes=13824,
        metrics={"num-examples": 28, "train_loss": 0.69},
        sha256=line_hash(seq.to_bytes(8, "big")),
    )
    return AuditEntry(release, run_id=1, round=rnd)


def write_bench_log(path: Path, n: int, key: Ed25519PrivateKey) -> None:
    """Write a valid log of ``n`` site records and its head.

    The records alternate between ``round_charged`` and ``update_released`` with
    payloads of the size the client writes.

    Parameters
    ----------
    path : Path
        The log file to create (its head goes beside it).
    n : int
        Number of records, at least 1.
    key : Ed25519PrivateKey
        The signing key.
    """
    log = AuditLog(path, key=key, actor="site", actor_name="bench-site")
    for start in range(0, n, _BATCH):
        stop = min(n, start + _BATCH)
        log.append_many([_bench_entry(seq) for seq in range(start, stop)])


def bench_verify(
    n: int = 100_000, *, directory: Path | None = None, every_signature: bool = False
) -> BenchResult:
    """Time :func:`slidefed.audit.verify.verify_log` on a generated log.

    Parameters
    ----------
    n : int
        Number of records.
    directory : Path, optional
        Where to write the log; a temporary folder, removed after, by default.
    every_signature : bool
        Check every record's own signature too (slower).

    Returns
    -------
    BenchResult
        Seconds to write and to verify (wall clock and CPU), and whether
        verification passed. The verification runs as ``slidefed audit verify``
        runs it, with Python's cycle collector paused.

    Raises
    ------
    ConfigError
        If ``n`` is below 1.
    """
    if n < 1:
        raise ConfigError(f"bench_verify needs at least 1 record, not {n}")
    with tempfile.TemporaryDirectory(dir=directory) as tmp:
        path = Path(tmp) / "audit.jsonl"
        key = Ed25519PrivateKey.generate()
        start = time.perf_counter()
        write_bench_log(path, n, key)
        written = time.perf_counter()
        cpu = time.process_time()
        with collector_paused():
            result, _ = verify_and_read(
                path,
                public_keys={key_id(key.public_key()): key.public_key()},
                every_signature=every_signature,
            )
        cpu_done = time.process_time()
        done = time.perf_counter()
        size = path.stat().st_size
    return BenchResult(
        records=result.records,
        bytes=size,
        write_seconds=round(written - start, 3),
        verify_seconds=round(done - written, 3),
        verify_cpu_seconds=round(cpu_done - cpu, 3),
        ok=result.ok,
    )


__all__ = ["BenchResult", "bench_verify", "write_bench_log"]
