"""``slidefed audit verify`` and ``report`` on logs written by the real AuditLog.

Each tampering from the issue's acceptance (change one epsilon digit, delete a
record, swap two records, cut the file mid-line, alter a signature, insert a record
signed by another key) must make ``verify`` exit 1 and name the record; so must a
server log that claims an update no site released, and a site over its budget.
"""

from __future__ import annotations

import base64
import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from slidefed.audit import _lines as verify_lines
from slidefed.audit.check import check_logs
from slidefed.audit.load import load_public_keys
from slidefed.audit.verify import verify_log
from slidefed.cli import main
from slidefed.common.audit.records import Actor, AuditRecord
from slidefed.common.audit.writer import AuditLog
from slidefed.common.crypto import generate_audit_key, key_id, load_audit_key
from tests.audit.builders import (
    aggregated,
    charge,
    completed,
    foreign,
    joined,
    release,
    sha,
)

RUN_ID = 3315920926361214562
BUDGET = 10.0


# --- a small federation, written the way the client and the server write it ------


@dataclass(frozen=True)
class Federation:
    """Two site logs, a server log, and a folder with the three public keys."""

    site_a: Path
    site_b: Path
    server: Path
    keys: Path
    key_a: Ed25519PrivateKey

    @property
    def logs(self) -> list[str]:
        return [str(self.site_a), str(self.site_b), str(self.server)]


def _writer(
    folder: Path, keys: Path, actor: Actor, name: str, file: str
) -> tuple[AuditLog, Ed25519PrivateKey]:
    key = generate_audit_key(folder / "keys" / "audit_key")
    audit = folder / "audit"
    audit.mkdir(parents=True)
    pub = (folder / "keys" / "audit_key.pub").read_bytes()
    (audit / "audit_key.pub").write_bytes(pub)
    (keys / f"{name}.pub").write_bytes(pub)
    log = AuditLog(audit / file, key=key, actor=actor, actor_name=name)
    return log, key


def write_site(
    folder: Path,
    keys: Path,
    name: str,
    epsilons: list[float],
    *,
    budget: float = BUDGET,
) -> tuple[Path, Ed25519PrivateKey]:
    """Write a site log with the client's events, one charge and release a round."""
    log, key = _writer(folder, keys, "site", name, "audit.jsonl")
    log.append(joined(), run_id=RUN_ID, round=1)
    before = 0.0
    for rnd, after in enumerate(epsilons, 1):
        spent = charge(after, before=before, budget=budget)
        log.append(spent, run_id=RUN_ID, round=rnd)
        log.append(release(sha(name, rnd)), run_id=RUN_ID, round=rnd)
        before = after
    return log.path, key


def write_server(
    folder: Path, keys: Path, updates: list[tuple[str, int]]
) -> tuple[Path, AuditLog]:
    """Write a server log that aggregated the updates ``(site, round)``."""
    log, _key = _writer(folder, keys, "server", "server", "server-audit.jsonl")
    for node, (site, rnd) in enumerate(updates, 1):
        log.append(aggregated(str(node), sha(site, rnd)), run_id=RUN_ID, round=rnd)
    log.append(completed(2), run_id=RUN_ID, round=2)
    return log.path, log


@pytest.fixture
def fed(tmp_path: Path) -> Federation:
    keys = tmp_path / "trusted"
    keys.mkdir()
    site_a, key_a = write_site(tmp_path / "a", keys, "hospital-a", [5.4363, 7.8432])
    site_b, _ = write_site(tmp_path / "b", keys, "hospital-b", [4.1, 6.25])
    updates = [
        ("hospital-a", 1),
        ("hospital-b", 1),
        ("hospital-a", 2),
        ("hospital-b", 2),
    ]
    server, _ = write_server(tmp_path / "server", keys, updates)
    return Federation(site_a, site_b, server, keys, key_a)


def _lines(path: Path) -> list[bytes]:
    return path.read_bytes().splitlines(keepends=True)


def _verify(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str]:
    rc = main(["audit", "verify", *args])
    captured = capsys.readouterr()
    if "--json" in args:  # stdout alone is the JSON; warnings go to stderr
        return rc, captured.out
    return rc, captured.out + captured.err


def _failed_line(out: str) -> str:
    return next(line for line in out.splitlines() if line.startswith("FAILED"))


# --- verify: good logs ----------------------------------------------------------------


def test_verify_passes_on_sites_and_server(
    fed: Federation, capsys: pytest.CaptureFixture[str]
) -> None:
    rc, out = _verify(capsys, *fed.logs)

    assert rc == 0, out
    assert f"{fed.site_a}: OK, 5 records (site hospital-a)" in out
    assert f"{fed.server}: OK, 5 records (server)" in out
    assert "4 aggregated update(s) matched" in out


def test_verify_with_trusted_keys_and_every_signature(
    fed: Federation, capsys: pytest.CaptureFixture[str]
) -> None:
    rc, out = _verify(capsys, *fed.logs, "--keys", str(fed.keys), "--every-signature")

    assert rc == 0, out


def test_verify_json_is_the_full_result(
    fed: Federation, capsys: pytest.CaptureFixture[str]
) -> None:
    rc = main(["audit", "verify", *fed.logs, "--json"])
    captured = capsys.readouterr()

    result = json.loads(captured.out)
    # Without --keys the warning goes to stderr; stdout stays pure JSON.
    assert captured.err.startswith("WARNING: no --keys given")
    assert rc == 0
    assert result["ok"] is True
    assert result["cross_checked"] is True
    assert result["updates_matched"] == 4
    assert [log["actor"] for log in result["logs"]] == ["site", "site", "server"]
    assert result["first_problem"] is None


# --- verify: each tampering of the acceptance ---------------------------------------


def _change_epsilon_digit(fed: Federation) -> tuple[int, str]:
    lines = _lines(fed.site_a)
    assert b'"epsilon_after":7.8432' in lines[3]
    lines[3] = lines[3].replace(b'"epsilon_after":7.8432', b'"epsilon_after":1.8432')
    fed.site_a.write_bytes(b"".join(lines))
    return 4, "edited"


def _delete_record(fed: Federation) -> tuple[int, str]:
    lines = _lines(fed.site_a)
    del lines[2]
    fed.site_a.write_bytes(b"".join(lines))
    return 3, "deleted"


def _swap_records(fed: Federation) -> tuple[int, str]:
    lines = _lines(fed.site_a)
    lines[1], lines[2] = lines[2], lines[1]
    fed.site_a.write_bytes(b"".join(lines))
    return 2, "reordered"


def _cut_mid_line(fed: Federation) -> tuple[int, str]:
    lines = _lines(fed.site_a)
    kept = b"".join(lines[:3]) + lines[3][: len(lines[3]) // 2]
    fed.site_a.write_bytes(kept)
    return 4, "torn"


def _alter_signature(fed: Federation) -> tuple[int, str]:
    lines = _lines(fed.site_a)
    record = AuditRecord.model_validate_json(lines[2])
    raw = bytearray(base64.b64decode(record.signature))
    raw[0] ^= 0x01
    new = base64.b64encode(bytes(raw)).decode()
    lines[2] = lines[2].replace(record.signature.encode(), new.encode())
    fed.site_a.write_bytes(b"".join(lines))
    return 3, "edited"


def _resigned(line: bytes, key: Ed25519PrivateKey, **update: Any) -> bytes:
    fields = AuditRecord.model_validate_json(line).model_dump() | update
    unsigned = AuditRecord.model_validate(fields)
    signature = base64.b64encode(key.sign(unsigned.signing_payload())).decode()
    return unsigned.model_copy(update={"signature": signature}).to_line() + b"\n"


def _insert_foreign_record(fed: Federation) -> tuple[int, str]:
    lines = _lines(fed.site_a)
    intruder = Ed25519PrivateKey.generate()
    fake = _resigned(
        lines[1],
        intruder,
        key_id=key_id(intruder.public_key()),
        data={**AuditRecord.model_validate_json(lines[1]).data, "epsilon_after": 0.1},
    )
    lines.insert(2, fake)
    fed.site_a.write_bytes(b"".join(lines))
    return 3, "unknown_key"


def _insert_record_claiming_the_site_key(fed: Federation) -> tuple[int, str]:
    lines = _lines(fed.site_a)
    record = AuditRecord.model_validate_json(lines[2])
    fake = _resigned(lines[2], Ed25519PrivateKey.generate(), seq=record.seq + 1)
    lines.insert(3, fake)
    fed.site_a.write_bytes(b"".join(lines))
    return 4, "forged"


TAMPERINGS = {
    "change one epsilon digit": _change_epsilon_digit,
    "delete a record": _delete_record,
    "swap two records": _swap_records,
    "cut the file mid-line": _cut_mid_line,
    "alter a signature": _alter_signature,
    "insert a record signed by another key": _insert_foreign_record,
    "insert a record claiming the site's key": _insert_record_claiming_the_site_key,
}


@pytest.mark.parametrize("keys", [False, True], ids=["key-beside-log", "--keys"])
@pytest.mark.parametrize("tamper", list(TAMPERINGS), ids=list(TAMPERINGS))
def test_each_tampering_fails_naming_the_record(
    fed: Federation, capsys: pytest.CaptureFixture[str], tamper: str, keys: bool
) -> None:
    line, kind = TAMPERINGS[tamper](fed)
    extra = ["--keys", str(fed.keys)] if keys else []

    rc, out = _verify(capsys, *fed.logs, *extra)

    assert rc == 1, out
    assert _failed_line(out) == (
        f"FAILED: first bad record {fed.site_a}:{line}: {kind}"
    ), out
    assert f"{fed.site_b}: OK" in out


def test_json_names_the_first_bad_record(
    fed: Federation, capsys: pytest.CaptureFixture[str]
) -> None:
    line, kind = _delete_record(fed)

    rc, out = _verify(capsys, *fed.logs, "--json")

    result = json.loads(out)
    assert rc == 1
    assert result["ok"] is False
    assert result["first_problem"]["path"] == str(fed.site_a)
    assert (result["first_problem"]["line"], result["first_problem"]["kind"]) == (
        line,
        kind,
    )
    assert result["logs"][0]["problems"][0]["kind"] == kind


def test_an_edited_epsilon_over_budget_is_an_edit_first(
    fed: Federation, capsys: pytest.CaptureFixture[str]
) -> None:
    lines = _lines(fed.site_a)
    lines[3] = lines[3].replace(b'"epsilon_after":7.8432', b'"epsilon_after":17.8432')
    fed.site_a.write_bytes(b"".join(lines))

    rc, out = _verify(capsys, *fed.logs, "--json")

    problems = json.loads(out)["logs"][0]["problems"]
    assert rc == 1
    assert [(p["line"], p["kind"]) for p in problems] == [
        (4, "edited"),
        (4, "over_budget"),
        (4, "epsilon_mismatch"),  # the auditor recomputes 7.8432 from the DP params
    ]


# --- verify: the cross-check ---------------------------------------------------------


def test_server_claiming_an_update_no_site_released(
    fed: Federation, capsys: pytest.CaptureFixture[str]
) -> None:
    log = AuditLog(
        fed.server, key=_server_key(fed), actor="server", actor_name="server"
    )
    log.append(aggregated("77", sha("nobody", 3)), run_id=RUN_ID, round=3)

    rc, out = _verify(capsys, *fed.logs)

    assert rc == 1, out
    assert _failed_line(out).startswith(
        f"FAILED: first bad record {fed.server}:6: unmatched_update"
    )
    assert "node 77" in out
    assert f"{fed.site_a}: OK" in out


def _server_key(fed: Federation) -> Ed25519PrivateKey:
    return load_audit_key(fed.server.parent.parent / "keys" / "audit_key")


def test_server_log_without_site_logs_matches_nothing(
    fed: Federation, capsys: pytest.CaptureFixture[str]
) -> None:
    rc, out = _verify(capsys, str(fed.server))

    assert rc == 1
    assert f"{fed.server}:1: unmatched_update:" in out
    assert "pass the site logs too" in out


def test_site_log_missing_from_the_cross_check(
    fed: Federation, capsys: pytest.CaptureFixture[str]
) -> None:
    rc, out = _verify(capsys, str(fed.site_a), str(fed.server))

    assert rc == 1
    assert f"{fed.server}:2: unmatched_update:" in out  # hospital-b's round 1


def test_site_over_budget(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    keys = tmp_path / "trusted"
    keys.mkdir()
    site, _ = write_site(tmp_path / "c", keys, "hospital-c", [6.0, 10.5], budget=10.0)

    rc, out = _verify(capsys, str(site), "--keys", str(keys))

    assert rc == 1, out
    assert _failed_line(out).startswith(
        f"FAILED: first bad record {site}:4: over_budget"
    )
    assert "10.5" in out
    assert "over its policy maximum 10" in out


def test_budget_reached_exactly_is_not_over(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    keys = tmp_path / "trusted"
    keys.mkdir()
    site, _ = write_site(tmp_path / "c", keys, "hospital-c", [6.0, 10.0], budget=10.0)

    rc, out = _verify(capsys, str(site))

    assert rc == 0, out


def test_cross_check_reports_unreadable_payloads(tmp_path: Path) -> None:
    keys = tmp_path / "trusted"
    keys.mkdir()
    server, log = write_server(tmp_path / "s", keys, [])
    no_sha = foreign("update_aggregated", node="1", bytes=192, weight=28)
    log.append(no_sha, run_id=RUN_ID, round=1)

    result = check_logs([server])

    assert result.first_problem is not None
    assert (result.first_problem.line, result.first_problem.kind) == (2, "malformed")
    assert "data.sha256" in result.first_problem.message


def test_a_site_key_cannot_speak_for_another_site(
    fed: Federation, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    fake = tmp_path / "fake" / "audit.jsonl"
    log = AuditLog(fake, key=fed.key_a, actor="site", actor_name="hospital-b")
    log.append(release(sha("x", 9), nbytes=1), run_id=RUN_ID, round=9)

    rc, out = _verify(capsys, *fed.logs, str(fake), "--keys", str(fed.keys))

    assert rc == 1, out
    assert _failed_line(out) == f"FAILED: first bad record {fake}:1: forged"
    assert "which signs the records of site hospital-a" in out


def test_a_record_in_the_name_of_another_actor(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    keys = tmp_path / "trusted"
    keys.mkdir()
    site, key = write_site(tmp_path / "c", keys, "hospital-c", [1.0])
    AuditLog(site, key=key, actor="server", actor_name="server").append(
        completed(1), run_id=RUN_ID, round=1
    )

    rc, out = _verify(capsys, str(site), "--keys", str(keys))

    assert rc == 1, out
    assert _failed_line(out) == f"FAILED: first bad record {site}:4: forged"


def test_another_actor_writing_into_a_site_log(
    fed: Federation, capsys: pytest.CaptureFixture[str]
) -> None:
    server = AuditLog(
        fed.site_a, key=_server_key(fed), actor="server", actor_name="server"
    )
    server.append(completed(1), run_id=RUN_ID, round=3)

    rc, out = _verify(capsys, str(fed.site_a), "--keys", str(fed.keys))

    assert rc == 1, out
    assert _failed_line(out) == f"FAILED: first bad record {fed.site_a}:6: malformed"
    assert "in the log of site hospital-a" in out


# --- bad input: one line, exit 2 ------------------------------------------------------


def _bad_input(capsys: pytest.CaptureFixture[str], *args: str) -> str:
    rc = main(["audit", *args])
    captured = capsys.readouterr()
    assert rc == 2, captured
    assert "Traceback" not in captured.err
    assert len(captured.err.strip().splitlines()) == 1, captured.err
    return captured.err


def test_missing_log_is_bad_input(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    err = _bad_input(capsys, "verify", str(tmp_path / "nope.jsonl"))
    assert "no such audit log" in err


def test_keys_that_are_not_a_folder(
    fed: Federation, capsys: pytest.CaptureFixture[str]
) -> None:
    err = _bad_input(capsys, "verify", str(fed.site_a), "--keys", str(fed.site_a))
    assert "is not a folder" in err


def test_keys_folder_without_keys(
    fed: Federation, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    err = _bad_input(capsys, "verify", str(fed.site_a), "--keys", str(empty))
    assert "holds no *.pub file" in err


def test_keys_folder_with_a_bad_key(
    fed: Federation, capsys: pytest.CaptureFixture[str]
) -> None:
    (fed.keys / "junk.pub").write_text("not a key\n")
    err = _bad_input(capsys, "verify", str(fed.site_a), "--keys", str(fed.keys))
    assert "junk.pub" in err


def test_report_out_is_a_folder(
    fed: Federation, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    err = _bad_input(capsys, "report", str(fed.site_a), "--out", str(tmp_path))
    assert "is a folder" in err


def test_a_log_given_twice_is_bad_input(
    fed: Federation, capsys: pytest.CaptureFixture[str]
) -> None:
    err = _bad_input(capsys, "verify", str(fed.site_a), str(fed.site_a))
    assert "given twice" in err


def test_no_logs_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    _bad_input(capsys, "verify")


def test_a_file_that_is_not_a_log_fails_without_traceback(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    junk = tmp_path / "junk.jsonl"
    junk.write_bytes(b"\x00\xff not json\n")

    rc, out = _verify(capsys, str(junk))

    assert rc == 1
    assert f"{junk}:1: malformed:" in out
    assert "Traceback" not in out


# --- report ---------------------------------------------------------------------------


def test_report_command_writes_the_page(
    fed: Federation, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "deep" / "report.html"

    rc = main(
        ["audit", "report", *fed.logs, "--out", str(out), "--keys", str(fed.keys)]
    )

    page = out.read_text()
    assert rc == 0, capsys.readouterr()
    assert page.count('<svg class="eps-chart"') == 2
    assert "Every chain, signature and cross-check holds" in page
    assert "the public keys the auditor supplied" in page


def test_report_of_a_tampered_log_is_written_and_exits_1(
    fed: Federation, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _swap_records(fed)
    out = tmp_path / "report.html"

    rc = main(["audit", "report", *fed.logs, "--out", str(out)])

    printed = capsys.readouterr().out
    assert rc == 1
    assert f"FAILED: first bad record {fed.site_a}:2: reordered:" in printed
    assert "Verification FAILED" in out.read_text()


# --- verify internals the CLI relies on ----------------------------------------------


def test_parallel_signature_checks_agree_with_serial(
    fed: Federation, monkeypatch: pytest.MonkeyPatch
) -> None:
    _insert_record_claiming_the_site_key(fed)
    serial = verify_log(fed.site_a, every_signature=True)
    monkeypatch.setattr(verify_lines, "_PARALLEL_MIN", 1)
    monkeypatch.setattr(verify_lines, "_CHUNK", 2)

    parallel = verify_log(fed.site_a, every_signature=True)

    assert parallel == serial
    assert [p.kind for p in parallel.problems][:1] == ["forged"]


def test_load_public_keys_indexes_by_key_id(fed: Federation) -> None:
    keys = load_public_keys(fed.keys)

    assert key_id(fed.key_a.public_key()) in keys
    assert len(keys) == 3


def test_demo_like_logs_copied_elsewhere_still_verify(
    fed: Federation, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """An auditor works on copies: the log and its head travel together."""
    copy = tmp_path / "copy"
    shutil.copytree(fed.site_a.parent, copy)

    rc, out = _verify(capsys, str(copy / "audit.jsonl"), "--keys", str(fed.keys))

    assert rc == 0, out
