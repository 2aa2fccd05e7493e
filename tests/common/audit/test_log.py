"""Tests of slidefed.common.audit.log: writing, chaining, and tamper detection."""

from __future__ import annotations

import base64
import json
import multiprocessing
import shutil
import tempfile
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given, settings
from hypothesis import strategies as st

from slidefed.common.audit.log import (
    GENESIS_HASH,
    AuditHead,
    AuditLog,
    AuditRecord,
    Problem,
    VerifyResult,
    canonical_json,
    head_path,
    line_hash,
    read_records,
    verify_and_read,
    verify_log,
)
from slidefed.common.crypto import generate_audit_key, key_id, load_audit_key
from slidefed.common.errors import AuditError, ConfigError

N_RECORDS = 5


# --- helpers -------------------------------------------------------------------


def _new_log(
    directory: Path, n: int = N_RECORDS
) -> tuple[Path, Ed25519PrivateKey, list[AuditRecord]]:
    """Write a log of ``n`` records, with its key pair next to it."""
    key = generate_audit_key(directory / "audit_key")
    path = directory / "audit.jsonl"
    log = AuditLog(path, key=key, actor="site", actor_name="hospital-a")
    records = [
        log.append("round.fit", run_id=7, round=i, epsilon=0.25 * i, names=["w", "b"])
        for i in range(n)
    ]
    return path, key, records


def _lines(path: Path) -> list[bytes]:
    return path.read_bytes().splitlines(keepends=True)


def _write(path: Path, lines: list[bytes]) -> None:
    path.write_bytes(b"".join(lines))


def _parse(line: bytes) -> AuditRecord:
    return AuditRecord.model_validate_json(line)


def _resign(
    line: bytes, key: Ed25519PrivateKey, *, claim: str | None = None, **update: Any
) -> bytes:
    """Return ``line`` changed by ``update`` and signed by ``key``.

    The record names ``claim`` as its key id, or ``key``'s own id by default.
    """
    fields = _parse(line).model_dump() | update
    fields["key_id"] = claim if claim is not None else key_id(key.public_key())
    unsigned = AuditRecord.model_validate(fields)
    signature = base64.b64encode(key.sign(unsigned.signing_payload())).decode()
    return unsigned.model_copy(update={"signature": signature}).to_line() + b"\n"


def _first(result: VerifyResult) -> Problem:
    assert not result.ok, "tampering was not detected"
    return result.problems[0]


# --- writing -------------------------------------------------------------------


def test_round_trip(tmp_path: Path) -> None:
    path, key, written = _new_log(tmp_path)

    records = read_records(path)
    result = verify_log(path)

    assert records == written
    assert result.ok, result.summary()
    assert result.records == N_RECORDS
    assert [r.seq for r in records] == list(range(N_RECORDS))
    assert records[0].prev_hash == GENESIS_HASH
    lines = [line.rstrip(b"\n") for line in _lines(path)]
    for previous, record in zip(lines, records[1:], strict=False):
        assert record.prev_hash == line_hash(previous)
    assert records[2].data == {"epsilon": 0.5, "names": ["w", "b"]}
    assert records[2].round == 2
    assert records[2].run_id == 7
    assert records[2].actor == "site"
    assert records[2].key_id == key_id(key.public_key())
    assert records[2].time.endswith("+00:00")


def test_lines_are_canonical_json(tmp_path: Path) -> None:
    path, _key, records = _new_log(tmp_path, n=1)

    line = path.read_bytes()

    assert line == canonical_json(json.loads(line)) + b"\n"
    assert line.rstrip(b"\n") == records[0].to_line()


def test_head_file_points_at_last_record(tmp_path: Path) -> None:
    path, key, _records = _new_log(tmp_path)

    head = json.loads(head_path(path).read_text())

    assert set(head) == {"seq", "hash", "key_id", "signature"}
    assert head["seq"] == N_RECORDS - 1
    assert head["hash"] == line_hash(_lines(path)[-1].rstrip(b"\n"))
    assert head["key_id"] == key_id(key.public_key())
    payload = canonical_json({"hash": head["hash"], "seq": head["seq"]})
    key.public_key().verify(base64.b64decode(head["signature"]), payload)


def test_chain_continues_across_instances(tmp_path: Path) -> None:
    path, _key, _records = _new_log(tmp_path, n=2)
    again = AuditLog(
        path,
        key=load_audit_key(tmp_path / "audit_key"),
        actor="site",
        actor_name="hospital-a",
    )

    third = again.append("site.start")

    assert third.seq == 2
    assert third.prev_hash == line_hash(_lines(path)[1].rstrip(b"\n"))
    assert verify_log(path).ok


def test_creates_parent_directories(tmp_path: Path) -> None:
    key = generate_audit_key(tmp_path / "audit_key")
    path = tmp_path / "deep" / "er" / "audit.jsonl"

    AuditLog(path, key=key, actor="server", actor_name="coord").append("start")

    assert read_records(path)[0].actor == "server"


def test_event_is_positional_so_data_may_use_the_name(tmp_path: Path) -> None:
    key = generate_audit_key(tmp_path / "audit_key")
    log = AuditLog(tmp_path / "a.jsonl", key=key, actor="site", actor_name="s")

    record = log.append("egress.blocked", event="fit-reply", reason="extra array")

    assert record.event == "egress.blocked"
    assert record.data == {"event": "fit-reply", "reason": "extra array"}


@pytest.mark.parametrize(
    "data",
    [{"value": float("nan")}, {"value": {1, 2}}, {"value": b"raw"}, {"d": {1: 2}}],
)
def test_refuses_data_that_is_not_json_safe(
    tmp_path: Path, data: dict[str, Any]
) -> None:
    key = generate_audit_key(tmp_path / "audit_key")
    log = AuditLog(tmp_path / "a.jsonl", key=key, actor="site", actor_name="s")

    with pytest.raises(AuditError, match="not JSON-safe"):
        log.append("x", **data)

    assert not (tmp_path / "a.jsonl").exists()


def test_refuses_bad_run_id_type(tmp_path: Path) -> None:
    key = generate_audit_key(tmp_path / "audit_key")
    log = AuditLog(tmp_path / "a.jsonl", key=key, actor="site", actor_name="s")

    with pytest.raises(AuditError, match="run_id"):
        log.append("x", run_id="7")  # type: ignore[arg-type]


def test_rejects_bad_actor(tmp_path: Path) -> None:
    key = Ed25519PrivateKey.generate()

    with pytest.raises(ConfigError, match="actor"):
        AuditLog(tmp_path / "a", key=key, actor="nurse", actor_name="x")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="actor_name"):
        AuditLog(tmp_path / "a", key=key, actor="site", actor_name="")


def _append_many(path: Path, key_path: Path, worker: int, count: int) -> None:
    log = AuditLog(
        path, key=load_audit_key(key_path), actor="site", actor_name="hospital-a"
    )
    for i in range(count):
        log.append("worker", worker=worker, i=i)


def test_processes_append_in_turn(tmp_path: Path) -> None:
    path, _key, _records = _new_log(tmp_path, n=1)
    context = multiprocessing.get_context("fork")
    workers = [
        context.Process(target=_append_many, args=(path, tmp_path / "audit_key", w, 15))
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


# --- torn and malformed tails stop the writer -----------------------------------


def test_torn_last_line(tmp_path: Path) -> None:
    path, key, _records = _new_log(tmp_path)
    lines = _lines(path)
    _write(path, [*lines[:-1], lines[-1][:40]])  # cut inside the last record

    result = verify_log(path)
    log = AuditLog(path, key=key, actor="site", actor_name="hospital-a")

    assert (_first(result).line, _first(result).kind) == (N_RECORDS, "torn")
    # the head vouched for the whole record, so this was not a crash
    assert any(p.kind == "truncated" for p in result.problems)
    with pytest.raises(AuditError, match=rf"audit\.jsonl:{N_RECORDS}: .*torn"):
        log.append("after")
    with pytest.raises(AuditError, match=rf"audit\.jsonl:{N_RECORDS}: .*torn"):
        read_records(path)


def test_torn_line_after_crash_is_only_torn(tmp_path: Path) -> None:
    path, _key, _records = _new_log(tmp_path)
    with path.open("ab") as handle:  # a crash while writing record 5
        handle.write(b'{"actor":"site","actor_na')

    result = verify_log(path)

    assert [(p.line, p.kind) for p in result.problems] == [(N_RECORDS + 1, "torn")]


def test_malformed_last_line_stops_the_writer(tmp_path: Path) -> None:
    path, key, _records = _new_log(tmp_path)
    with path.open("ab") as handle:
        handle.write(b"not json\n")

    result = verify_log(path)

    assert (_first(result).line, _first(result).kind) == (N_RECORDS + 1, "malformed")
    log = AuditLog(path, key=key, actor="site", actor_name="hospital-a")
    with pytest.raises(AuditError, match=rf"audit\.jsonl:{N_RECORDS + 1}: .*not an"):
        log.append("after")
    with pytest.raises(AuditError, match=rf"audit\.jsonl:{N_RECORDS + 1}: not an"):
        read_records(path)


# --- tampering -------------------------------------------------------------------


def test_edited_field(tmp_path: Path) -> None:
    path, _key, _records = _new_log(tmp_path)
    lines = _lines(path)
    lines[2] = lines[2].replace(b'"epsilon":0.5', b'"epsilon":0.1')

    _write(path, lines)

    problem = _first(verify_log(path))

    assert (problem.line, problem.kind) == (3, "edited")


def test_edited_last_line(tmp_path: Path) -> None:
    path, _key, _records = _new_log(tmp_path)
    lines = _lines(path)
    lines[-1] = lines[-1].replace(b'"round":4', b'"round":5')
    _write(path, lines)

    problem = _first(verify_log(path))

    assert (problem.line, problem.kind) == (N_RECORDS, "edited")


def test_non_canonical_spacing_is_an_edit(tmp_path: Path) -> None:
    path, _key, _records = _new_log(tmp_path)
    lines = _lines(path)
    lines[1] = lines[1].replace(b'"event":', b'"event": ')
    _write(path, lines)

    problem = _first(verify_log(path))

    assert (problem.line, problem.kind) == (2, "edited")


def test_deleted_middle_line(tmp_path: Path) -> None:
    path, _key, _records = _new_log(tmp_path)
    lines = _lines(path)
    del lines[2]
    _write(path, lines)

    result = verify_log(path)

    assert [(p.line, p.kind) for p in result.problems] == [(3, "deleted")]
    assert "seq 2 missing" in result.problems[0].message


def test_deleted_first_line(tmp_path: Path) -> None:
    path, _key, _records = _new_log(tmp_path)
    _write(path, _lines(path)[1:])

    problem = _first(verify_log(path))

    assert (problem.line, problem.kind) == (1, "deleted")


def test_swapped_lines(tmp_path: Path) -> None:
    path, _key, _records = _new_log(tmp_path)
    lines = _lines(path)
    lines[1], lines[2] = lines[2], lines[1]
    _write(path, lines)

    result = verify_log(path)

    assert [(p.line, p.kind) for p in result.problems] == [
        (2, "reordered"),
        (3, "reordered"),
    ]


def test_line_moved_to_the_end(tmp_path: Path) -> None:
    path, _key, _records = _new_log(tmp_path)
    lines = _lines(path)
    lines.append(lines.pop(1))
    _write(path, lines)

    problem = _first(verify_log(path))

    assert (problem.line, problem.kind) == (2, "reordered")


def test_duplicated_line(tmp_path: Path) -> None:
    path, _key, _records = _new_log(tmp_path)
    lines = _lines(path)
    lines.insert(2, lines[1])
    _write(path, lines)

    result = verify_log(path)

    assert [(p.line, p.kind) for p in result.problems] == [(3, "duplicated")]
    assert "copy of line 2" in result.problems[0].message


def test_truncated_last_record(tmp_path: Path) -> None:
    path, key, _records = _new_log(tmp_path)
    _write(path, _lines(path)[:-1])

    result = verify_log(path)

    assert [(p.line, p.kind) for p in result.problems] == [(N_RECORDS, "truncated")]
    log = AuditLog(path, key=key, actor="site", actor_name="hospital-a")
    with pytest.raises(AuditError, match="truncated"):
        log.append("after")


def test_truncated_to_empty(tmp_path: Path) -> None:
    path, key, _records = _new_log(tmp_path)
    path.write_bytes(b"")

    problem = _first(verify_log(path))

    assert (problem.line, problem.kind) == (1, "truncated")
    log = AuditLog(path, key=key, actor="site", actor_name="hospital-a")
    with pytest.raises(AuditError, match="truncated"):
        log.append("after")


def test_missing_head_file(tmp_path: Path) -> None:
    path, key, _records = _new_log(tmp_path)
    head_path(path).unlink()

    problem = _first(verify_log(path))

    assert (problem.line, problem.kind) == (N_RECORDS + 1, "truncated")
    log = AuditLog(path, key=key, actor="site", actor_name="hospital-a")
    with pytest.raises(AuditError, match=r"\.head is missing"):
        log.append("after")


def test_resigned_with_another_key(tmp_path: Path) -> None:
    path, _key, _records = _new_log(tmp_path)
    lines = _lines(path)
    intruder = Ed25519PrivateKey.generate()
    lines[2] = _resign(lines[2], intruder, data={"epsilon": 0.0})
    _write(path, lines)

    problem = _first(verify_log(path))

    assert (problem.line, problem.kind) == (3, "unknown_key")
    assert key_id(intruder.public_key()) in problem.message


def test_inserted_record_with_a_forged_signature(tmp_path: Path) -> None:
    path, key, _records = _new_log(tmp_path)
    lines = _lines(path)
    forged = _resign(
        lines[2],
        Ed25519PrivateKey.generate(),
        claim=key_id(key.public_key()),
        event="fake",
    )
    lines.insert(3, forged)
    _write(path, lines)

    result = verify_log(path)

    assert [(p.line, p.kind) for p in result.problems] == [(4, "forged")]


def test_chain_rewritten_with_another_key_claiming_the_real_one(tmp_path: Path) -> None:
    path, key, _records = _new_log(tmp_path)
    lines = _lines(path)
    intruder = Ed25519PrivateKey.generate()
    claim = key_id(key.public_key())
    lines[2] = _resign(lines[2], intruder, claim=claim, data={"epsilon": 0.0})
    lines[3] = _resign(
        lines[3], intruder, claim=claim, prev_hash=line_hash(lines[2].rstrip(b"\n"))
    )
    _write(path, lines)

    problem = _first(verify_log(path))

    assert (problem.line, problem.kind) == (3, "forged")


def test_forged_head(tmp_path: Path) -> None:
    path, _key, _records = _new_log(tmp_path)
    _write(path, _lines(path)[:-1])
    head = json.loads(head_path(path).read_text())
    payload = canonical_json({"hash": head["hash"], "seq": head["seq"] - 1})
    bogus = Ed25519PrivateKey.generate().sign(payload)
    head.update(seq=head["seq"] - 1, signature=base64.b64encode(bogus).decode())
    head_path(path).write_bytes(canonical_json(head) + b"\n")

    problem = _first(verify_log(path))

    assert (problem.line, problem.kind) == (N_RECORDS - 1, "forged")
    assert ".head has an invalid signature" in problem.message


def test_unknown_key_without_public_key(tmp_path: Path) -> None:
    path, _key, _records = _new_log(tmp_path)
    (tmp_path / "audit_key.pub").unlink()

    result = verify_log(path)

    assert (_first(result).line, _first(result).kind) == (1, "unknown_key")
    assert "audit_key.pub" in _first(result).message


def test_explicit_public_keys(tmp_path: Path) -> None:
    path, key, _records = _new_log(tmp_path)
    elsewhere = tmp_path / "copy" / "site-a.jsonl"
    elsewhere.parent.mkdir()
    shutil.copy(path, elsewhere)
    shutil.copy(head_path(path), head_path(elsewhere))

    trusted = verify_log(
        elsewhere, public_keys={key_id(key.public_key()): key.public_key()}
    )
    untrusted = verify_log(path, public_keys={})

    assert trusted.ok, trusted.summary()
    assert _first(untrusted).kind == "unknown_key"


def test_missing_log_raises(tmp_path: Path) -> None:
    with pytest.raises(AuditError, match=r"nope\.jsonl does not exist"):
        verify_log(tmp_path / "nope.jsonl")
    with pytest.raises(AuditError, match=r"nope\.jsonl does not exist"):
        read_records(tmp_path / "nope.jsonl")


def test_summary_names_file_line_and_kind(tmp_path: Path) -> None:
    path, _key, _records = _new_log(tmp_path)
    lines = _lines(path)
    del lines[1]
    _write(path, lines)

    summary = verify_log(path).summary()

    assert summary.startswith(f"{path}:2: deleted: ")


# --- crashes between the two writes of one append ---------------------------------


def test_head_lagging_by_one_record_is_accepted_and_repaired(tmp_path: Path) -> None:
    path, key, _records = _new_log(tmp_path, n=3)
    old_head = head_path(path).read_bytes()
    log = AuditLog(path, key=key, actor="site", actor_name="hospital-a")
    log.append("late")
    head_path(path).write_bytes(old_head)  # as if the process died before the head

    lagging = verify_log(path)
    log.append("later")

    assert lagging.ok, lagging.summary()
    result = verify_log(path)
    assert result.ok, result.summary()
    assert result.records == 5


def test_crash_before_the_first_head(tmp_path: Path) -> None:
    path, key, _records = _new_log(tmp_path, n=1)
    head_path(path).unlink()
    log = AuditLog(path, key=key, actor="site", actor_name="hospital-a")

    record = log.append("second")

    assert record.seq == 1
    assert verify_log(path).ok


# --- how records are authenticated -----------------------------------------------


def _rechain_after(
    lines: list[bytes], index: int, key: Ed25519PrivateKey, path: Path
) -> None:
    """Re-sign every line after ``index`` onto the chain, and the head, with ``key``."""
    for i in range(index + 1, len(lines)):
        lines[i] = _resign(lines[i], key, prev_hash=line_hash(lines[i - 1].rstrip()))
    _write(path, lines)
    last = lines[-1].rstrip(b"\n")
    seq = _parse(last).seq
    payload = canonical_json({"hash": line_hash(last), "seq": seq})
    head = AuditHead(
        seq=seq,
        hash=line_hash(last),
        key_id=key_id(key.public_key()),
        signature=base64.b64encode(key.sign(payload)).decode(),
    )
    head_path(path).write_bytes(head.to_bytes())


def test_the_head_vouches_for_the_chain_unless_every_signature(tmp_path: Path) -> None:
    """Only the key holder can write a bad signature that the head vouches for."""
    path, key, _records = _new_log(tmp_path)
    lines = _lines(path)
    record = _parse(lines[1])
    wrong = base64.b64encode(key.sign(b"something else")).decode()
    lines[1] = record.model_copy(update={"signature": wrong}).to_line() + b"\n"
    _rechain_after(lines, 1, key, path)

    vouched = verify_log(path)
    strict = verify_log(path, every_signature=True)

    assert vouched.ok, vouched.summary()
    assert [(p.line, p.kind) for p in strict.problems] == [(2, "forged")]


def test_every_signature_passes_an_intact_log(tmp_path: Path) -> None:
    path, _key, _records = _new_log(tmp_path)

    assert verify_log(path, every_signature=True).ok


def test_records_after_a_lagging_head_keep_their_own_check(tmp_path: Path) -> None:
    path, key, _records = _new_log(tmp_path, n=3)
    old_head = head_path(path).read_bytes()
    AuditLog(path, key=key, actor="site", actor_name="hospital-a").append("late")
    head_path(path).write_bytes(old_head)
    lines = _lines(path)
    lines[-1] = _resign(
        lines[-1], Ed25519PrivateKey.generate(), claim=_parse(lines[-1]).key_id
    )
    _write(path, lines)

    problem = _first(verify_log(path))

    assert (problem.line, problem.kind) == (4, "edited")


def test_verify_and_read_returns_numbered_records(tmp_path: Path) -> None:
    path, _key, written = _new_log(tmp_path)
    lines = _lines(path)
    lines[2] = b"not json\n"
    _write(path, lines)

    result, records = verify_and_read(path)

    assert not result.ok
    assert [r.line for r in records] == [1, 2, 4, 5]
    assert [r.record for r in records] == [written[0], written[1], *written[3:]]


# --- properties --------------------------------------------------------------------


@pytest.fixture(scope="module")
def sample_log(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path, _key, _records = _new_log(tmp_path_factory.mktemp("sample"), n=4)
    return path


def _verify_changed(sample: Path, *, log: bytes, head: bytes) -> VerifyResult:
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp)
        target = directory / sample.name
        target.write_bytes(log)
        head_path(target).write_bytes(head)
        shutil.copy(sample.parent / "audit_key.pub", directory / "audit_key.pub")
        return verify_log(target)


@settings(max_examples=300, deadline=None)
@given(data=st.data())
def test_any_single_byte_change_in_the_log_is_detected(
    sample_log: Path, data: st.DataObject
) -> None:
    original = sample_log.read_bytes()
    position = data.draw(st.integers(0, len(original) - 1), label="position")
    byte = data.draw(
        st.integers(0, 255).filter(lambda b: b != original[position]), label="byte"
    )
    changed = original[:position] + bytes([byte]) + original[position + 1 :]

    result = _verify_changed(
        sample_log, log=changed, head=head_path(sample_log).read_bytes()
    )

    assert not result.ok
    line = original[:position].count(b"\n") + 1
    assert result.problems[0].line == line, result.summary()


@settings(max_examples=200, deadline=None)
@given(data=st.data())
def test_any_single_byte_change_in_the_head_is_detected(
    sample_log: Path, data: st.DataObject
) -> None:
    original = head_path(sample_log).read_bytes()
    position = data.draw(st.integers(0, len(original) - 1), label="position")
    byte = data.draw(
        st.integers(0, 255).filter(lambda b: b != original[position]), label="byte"
    )
    changed = original[:position] + bytes([byte]) + original[position + 1 :]

    result = _verify_changed(sample_log, log=sample_log.read_bytes(), head=changed)

    assert not result.ok


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
    payload=st.dictionaries(
        st.text(min_size=1, max_size=12).filter(lambda k: k not in {"run_id", "round"}),
        _json_values,
        max_size=5,
    ),
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

        written = log.append(event, **payload)

        assert read_records(path) == [written]
        assert written.data == payload
        assert verify_log(path).ok
