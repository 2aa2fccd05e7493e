"""Tests of slidefed.common.audit.writer: appending, chaining, the head, crashes."""

from __future__ import annotations

import base64
import json
import multiprocessing
import tempfile
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given, settings
from hypothesis import strategies as st

from slidefed.audit.verify import read_records, verify_log
from slidefed.common.audit.events import MetricsReleased, RoundRefused
from slidefed.common.audit.records import (
    GENESIS_HASH,
    canonical_json,
    head_path,
    line_hash,
)
from slidefed.common.audit.writer import AuditEntry, AuditLog
from slidefed.common.crypto import generate_audit_key, key_id, load_audit_key
from slidefed.common.errors import AuditError, ConfigError
from tests.audit.builders import (
    charge,
    foreign,
    lines_of,
    new_log,
    note,
    resign,
    write_lines,
)

N_RECORDS = 5


def _log(directory: Path, actor: Any = "site") -> AuditLog:
    key = generate_audit_key(directory / "audit_key")
    return AuditLog(directory / "a.jsonl", key=key, actor=actor, actor_name="s")


# --- writing -------------------------------------------------------------------


def test_round_trip(tmp_path: Path) -> None:
    path, key, written = new_log(tmp_path)

    records = read_records(path)
    result = verify_log(path)

    assert records == written
    assert result.ok, result.summary()
    assert result.records == N_RECORDS
    assert [r.seq for r in records] == list(range(N_RECORDS))
    assert records[0].prev_hash == GENESIS_HASH
    lines = [line.rstrip(b"\n") for line in lines_of(path)]
    for previous, record in zip(lines, records[1:], strict=False):
        assert record.prev_hash == line_hash(previous)
    assert records[2].event == "round_charged"
    assert records[2].data == charge(0.5, before=0.25).model_dump()
    assert records[2].round == 2
    assert records[2].run_id == 7
    assert records[2].actor == "site"
    assert records[2].key_id == key_id(key.public_key())
    assert records[2].time.endswith("+00:00")


def test_lines_are_canonical_json(tmp_path: Path) -> None:
    path, _key, records = new_log(tmp_path, n=1)

    line = path.read_bytes()

    assert line == canonical_json(json.loads(line)) + b"\n"
    assert line.rstrip(b"\n") == records[0].to_line()
    assert records[0].signing_payload() == canonical_json(
        {k: v for k, v in json.loads(line).items() if k != "signature"}
    )


def test_the_line_holds_the_payload_as_it_was_always_written(tmp_path: Path) -> None:
    """Same event name, same keys, same values: old logs keep their meaning."""
    log = _log(tmp_path)

    record = log.append(
        MetricsReleased(metrics={"num-examples": 12, "auc": 0.75, "n": [1, 2]}),
        run_id=3,
        round=2,
    )

    line = lines_of(log.path)[0]
    assert b'"event":"metrics_released"' in line
    assert b'"data":{"metrics":{"auc":0.75,"n":[1,2],"num-examples":12}}' in line
    assert record.data == {"metrics": {"auc": 0.75, "n": [1, 2], "num-examples": 12}}


def test_head_file_points_at_last_record(tmp_path: Path) -> None:
    path, key, _records = new_log(tmp_path)

    head = json.loads(head_path(path).read_text())

    assert set(head) == {"seq", "hash", "key_id", "signature"}
    assert head["seq"] == N_RECORDS - 1
    assert head["hash"] == line_hash(lines_of(path)[-1].rstrip(b"\n"))
    assert head["key_id"] == key_id(key.public_key())
    payload = canonical_json({"hash": head["hash"], "seq": head["seq"]})
    key.public_key().verify(base64.b64decode(head["signature"]), payload)
    assert head_path(path).stat().st_mode & 0o777 == 0o644  # auditors read it


def test_chain_continues_across_instances(tmp_path: Path) -> None:
    path, _key, _records = new_log(tmp_path, n=2)
    again = AuditLog(
        path,
        key=load_audit_key(tmp_path / "audit_key"),
        actor="site",
        actor_name="hospital-a",
    )

    third = again.append(note("site start"))

    assert third.seq == 2
    assert third.prev_hash == line_hash(lines_of(path)[1].rstrip(b"\n"))
    assert verify_log(path).ok


def test_creates_parent_directories(tmp_path: Path) -> None:
    key = generate_audit_key(tmp_path / "audit_key")
    path = tmp_path / "deep" / "er" / "audit.jsonl"

    AuditLog(path, key=key, actor="server", actor_name="coord").append(note("start"))

    assert read_records(path)[0].actor == "server"


def test_a_payload_with_an_unknown_key_is_refused_before_writing(
    tmp_path: Path,
) -> None:
    log = _log(tmp_path)

    with pytest.raises(ValueError, match="extra"):
        log.append(RoundRefused(reason="x", patient="p-17"))  # type: ignore[call-arg]

    assert not log.path.exists()


@pytest.mark.parametrize(
    "data",
    [{"value": float("nan")}, {"value": {1, 2}}, {"value": b"raw"}, {"d": {1: 2}}],
)
def test_refuses_data_that_is_not_json_safe(
    tmp_path: Path, data: dict[str, Any]
) -> None:
    log = _log(tmp_path)

    with pytest.raises(AuditError, match="not JSON-safe"):
        log.append(MetricsReleased(metrics=data))

    assert not log.path.exists()


def test_refuses_bad_run_id_type(tmp_path: Path) -> None:
    log = _log(tmp_path)

    with pytest.raises(AuditError, match="run_id"):
        log.append(note("x"), run_id="7")  # type: ignore[arg-type]


def test_rejects_bad_actor(tmp_path: Path) -> None:
    key = Ed25519PrivateKey.generate()

    with pytest.raises(ConfigError, match="actor"):
        AuditLog(tmp_path / "a", key=key, actor="nurse", actor_name="x")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="actor_name"):
        AuditLog(tmp_path / "a", key=key, actor="site", actor_name="")


def _append_in_turn(path: Path, key_path: Path, worker: int, count: int) -> None:
    log = AuditLog(
        path, key=load_audit_key(key_path), actor="site", actor_name="hospital-a"
    )
    for i in range(count):
        log.append(note(f"worker {worker} record {i}"))


def test_processes_append_in_turn(tmp_path: Path) -> None:
    path, _key, _records = new_log(tmp_path, n=1)
    context = multiprocessing.get_context("fork")
    workers = [
        context.Process(
            target=_append_in_turn, args=(path, tmp_path / "audit_key", w, 15)
        )
        for w in range(4)
    ]

    for process in workers:
        process.start()
    for process in workers:
        process.join(timeout=60)

    assert [p.exitcode for p in workers] == [0, 0, 0, 0]
    result = verify_log(path)
    assert result.ok, result.summary()
    assert result.records == 1 + 4 * 15


# --- batches ---------------------------------------------------------------------


def test_append_many_chains_the_batch_with_one_head(tmp_path: Path) -> None:
    path, key, _records = new_log(tmp_path, n=2)
    log = AuditLog(path, key=key, actor="site", actor_name="hospital-a")

    written = log.append_many(
        [AuditEntry(note(f"n{i}"), run_id=1, round=i) for i in range(3)]
    )

    assert [r.seq for r in written] == [2, 3, 4]
    assert read_records(path)[2:] == written
    assert json.loads(head_path(path).read_text())["seq"] == 4
    assert verify_log(path, every_signature=True).ok
    assert log.append_many([]) == []


def test_append_many_writes_nothing_when_one_entry_is_bad(tmp_path: Path) -> None:
    path, key, _records = new_log(tmp_path, n=2)
    log = AuditLog(path, key=key, actor="site", actor_name="hospital-a")
    before = path.read_bytes()

    with pytest.raises(AuditError, match="run_id"):
        log.append_many(
            [AuditEntry(note("fine")), AuditEntry(note("bad"), run_id="1")]  # type: ignore[arg-type]
        )

    assert path.read_bytes() == before


# --- torn and malformed tails stop the writer -----------------------------------


def test_torn_last_line_stops_the_writer(tmp_path: Path) -> None:
    path, key, _records = new_log(tmp_path)
    lines = lines_of(path)
    write_lines(path, [*lines[:-1], lines[-1][:40]])  # cut inside the last record
    log = AuditLog(path, key=key, actor="site", actor_name="hospital-a")

    with pytest.raises(AuditError, match=rf"audit\.jsonl:{N_RECORDS}: .*torn"):
        log.append(note("after"))
    with pytest.raises(AuditError, match=rf"audit\.jsonl:{N_RECORDS}: .*torn"):
        read_records(path)


def test_malformed_last_line_stops_the_writer(tmp_path: Path) -> None:
    path, key, _records = new_log(tmp_path)
    with path.open("ab") as handle:
        handle.write(b"not json\n")
    log = AuditLog(path, key=key, actor="site", actor_name="hospital-a")

    with pytest.raises(AuditError, match=rf"audit\.jsonl:{N_RECORDS + 1}: .*not an"):
        log.append(note("after"))
    with pytest.raises(AuditError, match=rf"audit\.jsonl:{N_RECORDS + 1}: not an"):
        read_records(path)


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        ("truncate_last", "truncated"),
        ("empty", "truncated"),
        ("no_head", r"\.head is missing"),
    ],
)
def test_a_cut_log_stops_the_writer(tmp_path: Path, damage: str, message: str) -> None:
    path, key, _records = new_log(tmp_path)
    if damage == "truncate_last":
        write_lines(path, lines_of(path)[:-1])
    elif damage == "empty":
        path.write_bytes(b"")
    else:
        head_path(path).unlink()
    log = AuditLog(path, key=key, actor="site", actor_name="hospital-a")

    with pytest.raises(AuditError, match=message):
        log.append(note("after"))


# --- crashes between the lines and the head ----------------------------------------


def test_head_lagging_by_one_record_is_accepted_and_repaired(tmp_path: Path) -> None:
    path, key, _records = new_log(tmp_path, n=3)
    old_head = head_path(path).read_bytes()
    log = AuditLog(path, key=key, actor="site", actor_name="hospital-a")
    log.append(note("late"))
    head_path(path).write_bytes(old_head)  # as if the process died before the head

    lagging = verify_log(path)
    log.append(note("later"))

    assert lagging.ok, lagging.summary()
    result = verify_log(path)
    assert result.ok, result.summary()
    assert result.records == 5


def test_head_behind_a_whole_batch_is_accepted(tmp_path: Path) -> None:
    path, key, _records = new_log(tmp_path, n=3)
    old_head = head_path(path).read_bytes()
    log = AuditLog(path, key=key, actor="site", actor_name="hospital-a")
    log.append_many([AuditEntry(note(f"n{i}")) for i in range(4)])
    head_path(path).write_bytes(old_head)  # died before replacing the head

    log.append(note("after the crash"))

    result = verify_log(path)
    assert result.ok, result.summary()
    assert result.records == 8


def test_records_after_a_lagging_head_must_be_signed_by_the_writer(
    tmp_path: Path,
) -> None:
    path, key, _records = new_log(tmp_path, n=3)
    old_head = head_path(path).read_bytes()
    log = AuditLog(path, key=key, actor="site", actor_name="hospital-a")
    log.append_many([AuditEntry(note(f"n{i}")) for i in range(2)])
    head_path(path).write_bytes(old_head)
    lines = lines_of(path)
    lines[-1] = resign(lines[-1], Ed25519PrivateKey.generate(), claim=log.key_id)
    write_lines(path, lines)

    with pytest.raises(AuditError, match="truncated or edited"):
        log.append(note("after"))


def test_crash_before_the_first_head(tmp_path: Path) -> None:
    path, key, _records = new_log(tmp_path, n=1)
    head_path(path).unlink()
    log = AuditLog(path, key=key, actor="site", actor_name="hospital-a")

    record = log.append(note("second"))

    assert record.seq == 1
    assert verify_log(path).ok


# --- properties --------------------------------------------------------------------

_json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=12,
)


@settings(max_examples=100, deadline=None)
@given(
    payload=st.dictionaries(st.text(min_size=1, max_size=12), _json_values, max_size=5),
    event=st.text(min_size=1, max_size=20),
)
def test_any_json_payload_survives_a_round_trip(
    payload: dict[str, Any], event: str
) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp)
        key = generate_audit_key(directory / "audit_key")
        path = directory / "audit.jsonl"
        log = AuditLog(path, key=key, actor="server", actor_name="coordinator")

        written = log.append(foreign(event, value=payload))

        assert read_records(path) == [written]
        assert written.event == event
        assert written.data == {"value": payload}
        assert verify_log(path).ok
