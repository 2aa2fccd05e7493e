"""Tests of slidefed.audit.verify: every kind of tampering, named by its line."""

from __future__ import annotations

import base64
import json
import shutil
import tempfile
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given, settings
from hypothesis import strategies as st

from slidefed.audit.problems import Problem, VerifyResult
from slidefed.audit.verify import read_records, verify_and_read, verify_log
from slidefed.common.audit.records import (
    canonical_json,
    head_path,
    line_hash,
)
from slidefed.common.audit.writer import AuditLog
from slidefed.common.crypto import key_id
from slidefed.common.errors import AuditError
from tests.audit.builders import (
    lines_of,
    new_log,
    note,
    parse,
    rechain_after,
    resign,
    write_lines,
)

N_RECORDS = 5


def _first(result: VerifyResult) -> Problem:
    assert not result.ok, "tampering was not detected"
    return result.problems[0]


# --- torn and malformed tails ---------------------------------------------------


def test_torn_last_line(tmp_path: Path) -> None:
    path, _key, _records = new_log(tmp_path)
    lines = lines_of(path)
    write_lines(path, [*lines[:-1], lines[-1][:40]])  # cut inside the last record

    result = verify_log(path)

    assert (_first(result).line, _first(result).kind) == (N_RECORDS, "torn")
    # the head vouched for the whole record, so this was not a crash
    assert any(p.kind == "truncated" for p in result.problems)


def test_torn_line_after_crash_is_only_torn(tmp_path: Path) -> None:
    path, _key, _records = new_log(tmp_path)
    with path.open("ab") as handle:  # a crash while writing record 5
        handle.write(b'{"actor":"site","actor_na')

    result = verify_log(path)

    assert [(p.line, p.kind) for p in result.problems] == [(N_RECORDS + 1, "torn")]


def test_malformed_last_line(tmp_path: Path) -> None:
    path, _key, _records = new_log(tmp_path)
    with path.open("ab") as handle:
        handle.write(b"not json\n")

    result = verify_log(path)

    assert (_first(result).line, _first(result).kind) == (N_RECORDS + 1, "malformed")


# --- tampering -------------------------------------------------------------------


def test_edited_field(tmp_path: Path) -> None:
    path, _key, _records = new_log(tmp_path)
    lines = lines_of(path)
    lines[2] = lines[2].replace(b'"epsilon_after":0.5', b'"epsilon_after":0.1')

    write_lines(path, lines)

    problem = _first(verify_log(path))

    assert (problem.line, problem.kind) == (3, "edited")


def test_edited_last_line(tmp_path: Path) -> None:
    path, _key, _records = new_log(tmp_path)
    lines = lines_of(path)
    lines[-1] = lines[-1].replace(b'"round":4', b'"round":5')
    write_lines(path, lines)

    problem = _first(verify_log(path))

    assert (problem.line, problem.kind) == (N_RECORDS, "edited")


def test_non_canonical_spacing_is_an_edit(tmp_path: Path) -> None:
    path, _key, _records = new_log(tmp_path)
    lines = lines_of(path)
    lines[1] = lines[1].replace(b'"event":', b'"event": ')
    write_lines(path, lines)

    problem = _first(verify_log(path))

    assert (problem.line, problem.kind) == (2, "edited")


def test_deleted_middle_line(tmp_path: Path) -> None:
    path, _key, _records = new_log(tmp_path)
    lines = lines_of(path)
    del lines[2]
    write_lines(path, lines)

    result = verify_log(path)

    assert [(p.line, p.kind) for p in result.problems] == [(3, "deleted")]
    assert "seq 2 missing" in result.problems[0].message


def test_deleted_first_line(tmp_path: Path) -> None:
    path, _key, _records = new_log(tmp_path)
    write_lines(path, lines_of(path)[1:])

    problem = _first(verify_log(path))

    assert (problem.line, problem.kind) == (1, "deleted")


def test_swappedlines_of(tmp_path: Path) -> None:
    path, _key, _records = new_log(tmp_path)
    lines = lines_of(path)
    lines[1], lines[2] = lines[2], lines[1]
    write_lines(path, lines)

    result = verify_log(path)

    assert [(p.line, p.kind) for p in result.problems] == [
        (2, "reordered"),
        (3, "reordered"),
    ]


def test_line_moved_to_the_end(tmp_path: Path) -> None:
    path, _key, _records = new_log(tmp_path)
    lines = lines_of(path)
    lines.append(lines.pop(1))
    write_lines(path, lines)

    problem = _first(verify_log(path))

    assert (problem.line, problem.kind) == (2, "reordered")


def test_duplicated_line(tmp_path: Path) -> None:
    path, _key, _records = new_log(tmp_path)
    lines = lines_of(path)
    lines.insert(2, lines[1])
    write_lines(path, lines)

    result = verify_log(path)

    assert [(p.line, p.kind) for p in result.problems] == [(3, "duplicated")]
    assert "copy of line 2" in result.problems[0].message


def test_truncated_last_record(tmp_path: Path) -> None:
    path, _key, _records = new_log(tmp_path)
    write_lines(path, lines_of(path)[:-1])

    result = verify_log(path)

    assert [(p.line, p.kind) for p in result.problems] == [(N_RECORDS, "truncated")]


def test_truncated_to_empty(tmp_path: Path) -> None:
    path, _key, _records = new_log(tmp_path)
    path.write_bytes(b"")

    problem = _first(verify_log(path))

    assert (problem.line, problem.kind) == (1, "truncated")


def test_missing_head_file(tmp_path: Path) -> None:
    path, _key, _records = new_log(tmp_path)
    head_path(path).unlink()

    problem = _first(verify_log(path))

    assert (problem.line, problem.kind) == (N_RECORDS + 1, "truncated")


def test_resigned_with_another_key(tmp_path: Path) -> None:
    path, _key, _records = new_log(tmp_path)
    lines = lines_of(path)
    intruder = Ed25519PrivateKey.generate()
    lines[2] = resign(lines[2], intruder, data={"epsilon": 0.0})
    write_lines(path, lines)

    problem = _first(verify_log(path))

    assert (problem.line, problem.kind) == (3, "unknown_key")
    assert key_id(intruder.public_key()) in problem.message


def test_inserted_record_with_a_forged_signature(tmp_path: Path) -> None:
    path, key, _records = new_log(tmp_path)
    lines = lines_of(path)
    forged = resign(
        lines[2],
        Ed25519PrivateKey.generate(),
        claim=key_id(key.public_key()),
        event="fake",
    )
    lines.insert(3, forged)
    write_lines(path, lines)

    result = verify_log(path)

    assert [(p.line, p.kind) for p in result.problems] == [(4, "forged")]


def test_chain_rewritten_with_another_key_claiming_the_real_one(tmp_path: Path) -> None:
    path, key, _records = new_log(tmp_path)
    lines = lines_of(path)
    intruder = Ed25519PrivateKey.generate()
    claim = key_id(key.public_key())
    lines[2] = resign(lines[2], intruder, claim=claim, data={"epsilon": 0.0})
    lines[3] = resign(
        lines[3], intruder, claim=claim, prev_hash=line_hash(lines[2].rstrip(b"\n"))
    )
    write_lines(path, lines)

    problem = _first(verify_log(path))

    assert (problem.line, problem.kind) == (3, "forged")


def test_forged_head(tmp_path: Path) -> None:
    path, _key, _records = new_log(tmp_path)
    write_lines(path, lines_of(path)[:-1])
    head = json.loads(head_path(path).read_text())
    payload = canonical_json({"hash": head["hash"], "seq": head["seq"] - 1})
    bogus = Ed25519PrivateKey.generate().sign(payload)
    head.update(seq=head["seq"] - 1, signature=base64.b64encode(bogus).decode())
    head_path(path).write_bytes(canonical_json(head) + b"\n")

    problem = _first(verify_log(path))

    assert (problem.line, problem.kind) == (N_RECORDS - 1, "forged")
    assert ".head has an invalid signature" in problem.message


def test_unknown_key_without_public_key(tmp_path: Path) -> None:
    path, _key, _records = new_log(tmp_path)
    (tmp_path / "audit_key.pub").unlink()

    result = verify_log(path)

    assert (_first(result).line, _first(result).kind) == (1, "unknown_key")
    assert "audit_key.pub" in _first(result).message


def test_explicit_public_keys(tmp_path: Path) -> None:
    path, key, _records = new_log(tmp_path)
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
    path, _key, _records = new_log(tmp_path)
    lines = lines_of(path)
    del lines[1]
    write_lines(path, lines)

    summary = verify_log(path).summary()

    assert summary.startswith(f"{path}:2: deleted: ")


# --- how records are authenticated -----------------------------------------------


def test_the_head_vouches_for_the_chain_unless_every_signature(tmp_path: Path) -> None:
    """Only the key holder can write a bad signature that the head vouches for."""
    path, key, _records = new_log(tmp_path)
    lines = lines_of(path)
    record = parse(lines[1])
    wrong = base64.b64encode(key.sign(b"something else")).decode()
    lines[1] = record.model_copy(update={"signature": wrong}).to_line() + b"\n"
    rechain_after(lines, 1, key, path)

    vouched = verify_log(path)
    strict = verify_log(path, every_signature=True)

    assert vouched.ok, vouched.summary()
    assert [(p.line, p.kind) for p in strict.problems] == [(2, "forged")]


def test_every_signature_passes_an_intact_log(tmp_path: Path) -> None:
    path, _key, _records = new_log(tmp_path)

    assert verify_log(path, every_signature=True).ok


def test_records_after_a_lagging_head_keep_their_own_check(tmp_path: Path) -> None:
    path, key, _records = new_log(tmp_path, n=3)
    old_head = head_path(path).read_bytes()
    AuditLog(path, key=key, actor="site", actor_name="hospital-a").append(note("late"))
    head_path(path).write_bytes(old_head)
    lines = lines_of(path)
    lines[-1] = resign(
        lines[-1], Ed25519PrivateKey.generate(), claim=parse(lines[-1]).key_id
    )
    write_lines(path, lines)

    problem = _first(verify_log(path))

    assert (problem.line, problem.kind) == (4, "edited")


def test_verify_and_read_returns_numbered_records(tmp_path: Path) -> None:
    path, _key, written = new_log(tmp_path)
    lines = lines_of(path)
    lines[2] = b"not json\n"
    write_lines(path, lines)

    result, records = verify_and_read(path)

    assert not result.ok
    assert [r.line for r in records] == [1, 2, 4, 5]
    assert [r.record for r in records] == [written[0], written[1], *written[3:]]


# --- properties --------------------------------------------------------------------


@pytest.fixture(scope="module")
def sample_log(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path, _key, _records = new_log(tmp_path_factory.mktemp("sample"), n=4)
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
