"""``slidefed.bench.audit``: the verifier's benchmark writes a valid log and times it."""

from __future__ import annotations

from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from slidefed.audit.check import check_logs
from slidefed.audit.verify import read_records, verify_log
from slidefed.bench.audit import bench_verify, write_bench_log
from slidefed.common.crypto import key_id
from slidefed.common.errors import ConfigError


def test_bench_log_verifies(tmp_path: Path) -> None:
    key = Ed25519PrivateKey.generate()
    path = tmp_path / "audit.jsonl"
    write_bench_log(path, 7, key)

    records = read_records(path)
    result = verify_log(path, public_keys={key_id(key.public_key()): key.public_key()})

    assert result.ok, result.summary()
    assert [r.event for r in records[:2]] == ["round_charged", "update_released"]
    assert [r.seq for r in records] == list(range(7))


def test_bench_log_passes_the_cross_check(tmp_path: Path) -> None:
    key = Ed25519PrivateKey.generate()
    path = tmp_path / "audit.jsonl"
    write_bench_log(path, 6, key)

    result = check_logs(
        [path], public_keys={key_id(key.public_key()): key.public_key()}
    )

    assert result.ok, result.summary()


def test_bench_verify_reports_its_run() -> None:
    result = bench_verify(12)

    assert (result.records, result.ok) == (12, True)
    assert result.verify_seconds >= 0


def test_bench_verify_needs_a_record() -> None:
    with pytest.raises(ConfigError, match="at least 1 record"):
        bench_verify(0)
