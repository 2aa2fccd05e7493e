"""Records of one message held by an AuditBatch and written with one disk sync."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest

from slidefed.audit.verify import read_records, verify_log
from slidefed.common.audit.events import MetricsReleased, RoundRefused
from slidefed.common.audit.writer import AuditBatch, AuditLog
from slidefed.common.crypto import generate_audit_key
from slidefed.common.errors import AuditError


def _batch(directory: Path) -> AuditBatch:
    key = generate_audit_key(directory / "audit_key")
    log = AuditLog(directory / "a.jsonl", key=key, actor="site", actor_name="s")
    return AuditBatch(log)


def _synced_files(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The names of the files os.fsync is called on, from now on."""
    synced: list[str] = []
    real: Callable[[int], None] = os.fsync

    def fsync(fd: int) -> None:
        synced.append(Path(f"/proc/self/fd/{fd}").readlink().name)
        real(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    return synced


def test_nothing_is_written_before_the_flush_then_all_in_order(
    tmp_path: Path,
) -> None:
    batch = _batch(tmp_path)
    batch.append(MetricsReleased(metrics={"auc": 0.5}), run_id=3, round=1)
    batch.append(RoundRefused(reason="budget"), run_id=3, round=2)

    assert not batch.path.exists()
    written = batch.flush()

    records = read_records(batch.path)
    assert records == written
    assert [(r.event, r.round) for r in records] == [
        ("metrics_released", 1),
        ("round_refused", 2),
    ]
    assert verify_log(batch.path).ok
    assert batch.flush() == []  # nothing held twice


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="needs /proc")
def test_one_sync_of_the_log_for_the_whole_batch(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    batch = _batch(tmp_path)
    batch.append(RoundRefused(reason="first"))
    batch.flush()  # the log exists: later flushes need no directory sync for it
    synced = _synced_files(monkeypatch)

    for i in range(5):
        batch.append(RoundRefused(reason=f"r{i}"), run_id=1, round=i)
    batch.flush()

    assert synced.count("a.jsonl") == 1
    assert len(read_records(batch.path)) == 6


def test_a_bad_record_is_refused_when_appended_and_keeps_no_other_out(
    tmp_path: Path,
) -> None:
    batch = _batch(tmp_path)
    batch.append(RoundRefused(reason="kept"))

    with pytest.raises(AuditError, match="not JSON-safe"):
        batch.append(MetricsReleased(metrics={"v": float("nan")}))
    batch.flush()

    assert [r.data["reason"] for r in read_records(batch.path)] == ["kept"]
