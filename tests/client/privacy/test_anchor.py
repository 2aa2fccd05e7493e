import json
import shutil
import time
from pathlib import Path

import pytest

from slidefed.client.privacy.anchor import LedgerMismatch, verify_ledger
from slidefed.client.privacy.charging import Charge, charge_round
from slidefed.client.privacy.evaluation_charging import charge_evaluation
from slidefed.client.privacy.ledger import PrivacyLedger
from slidefed.common.audit.events import (
    EvaluationCharged,
    RoundCharged,
    RoundReplayed,
    RunJoined,
)
from slidefed.common.audit.writer import AuditLog
from slidefed.common.crypto import generate_audit_key
from slidefed.common.errors import PolicyViolation


class Site:
    """A site's ledger and audit log, charged as the ClientApp charges them."""

    def __init__(self, folder: Path) -> None:
        self.ledger = PrivacyLedger(folder / "state" / "ledger.json")
        self.audit_path = folder / "audit" / "audit.jsonl"
        key = generate_audit_key(folder / "keys" / "audit_key")
        self.log = AuditLog(self.audit_path, key=key, actor="site", actor_name="s")

    def train(self, rnd: int, *, audit: bool = True, key: str = "") -> Charge:
        charge = charge_round(
            self.ledger,
            run_id=1,
            server_round=rnd,
            planned_rounds=5,
            sample_rate=0.25,
            steps=8,
            target_epsilon=4.0,
            max_epsilon=10.0,
            min_noise_multiplier=0.3,
            delta=1e-5,
            unit="patient",
            input_sha256=key,
        )
        if audit:
            event = RoundReplayed if charge.replay else RoundCharged
            self.log.append(event(**_fields(charge)), run_id=1, round=rnd)
        return charge

    def evaluate(self, rnd: int) -> Charge:
        charge = charge_evaluation(
            self.ledger,
            run_id=1,
            server_round=rnd,
            noise_multiplier=4.0,
            max_epsilon=10.0,
            delta=1e-5,
            unit="patient",
            accountant="rdp",
            input_sha256="",
            max_per_round=1,
            max_per_run=5,
        )
        self.log.append(EvaluationCharged(**_fields(charge)), run_id=1, round=rnd)
        return charge

    def verify(self) -> None:
        verify_ledger(self.ledger, self.audit_path)


def _fields(charge: Charge) -> dict[str, object]:
    return charge.model_dump(exclude={"run_id", "round"})


@pytest.fixture
def site(tmp_path: Path) -> Site:
    return Site(tmp_path)


def test_a_fresh_site_has_nothing_to_check(site: Site) -> None:
    site.verify()  # neither a log nor a ledger yet
    site.log.append(RunJoined(config_hash="c", dataset={}), run_id=1, round=1)
    site.verify()  # a log without charges


def test_a_ledger_that_matches_its_anchor_is_accepted(site: Site) -> None:
    site.train(1)
    site.evaluate(1)
    site.train(2)
    site.verify()
    assert LedgerMismatch.__mro__[1] is PolicyViolation


def test_a_ledger_extended_past_its_anchor_is_accepted(site: Site) -> None:
    site.train(1)
    # A crash between the ledger write and the audit write: the ledger is ahead.
    site.train(2, audit=False)
    site.verify()
    # A replay record may repeat an older anchor after a later charge.
    site.train(3, key="k")
    replay = site.train(3, key="k")
    assert replay.replay
    site.verify()


def test_an_evaluation_before_the_runs_plan_keeps_its_anchor(site: Site) -> None:
    site.evaluate(0)
    n, digest = site.ledger.load().anchor()
    site.train(1)  # adds the run's plan to the ledger
    assert site.ledger.load().anchor(n) == (n, digest)
    # A replay record repeating the evaluation's older anchor still checks out.
    site.log.append(
        RoundReplayed.model_validate(
            {
                **_fields(site.train(1, audit=False)),
                "ledger_rounds": n,
                "ledger_sha256": digest,
            }
        ),
        run_id=1,
        round=1,
    )
    site.verify()


def test_a_deleted_ledger_is_refused(site: Site) -> None:
    site.train(1)
    site.train(2)
    site.ledger.path.unlink()
    with pytest.raises(LedgerMismatch) as refused:
        site.verify()
    message = str(refused.value)
    assert "is missing but the audit log" in message
    assert "shows 2 charged entries" in message
    assert "restore the ledger from a backup" in message
    assert "\n" not in message


def test_a_deleted_ledger_is_refused_by_a_log_written_before_anchors(
    site: Site,
) -> None:
    charge = site.train(1, audit=False)
    old = _fields(charge)
    for key in ("epsilon_rdp", "ledger_rounds", "ledger_sha256"):
        old.pop(key)
    site.log.append(RoundCharged.model_validate(old), run_id=1, round=1)
    site.verify()  # nothing anchored: nothing to compare
    site.ledger.path.unlink()
    with pytest.raises(LedgerMismatch, match="is missing"):
        site.verify()


def test_a_rolled_back_ledger_is_refused(site: Site, tmp_path: Path) -> None:
    site.train(1)
    shutil.copy(site.ledger.path, tmp_path / "backup.json")
    site.train(2)
    site.evaluate(2)
    shutil.copy(tmp_path / "backup.json", site.ledger.path)
    with pytest.raises(LedgerMismatch) as refused:
        site.verify()
    message = str(refused.value)
    assert "holds 1 entries but the audit log" in message
    assert "anchors 3: it was rolled back" in message
    assert "restore the newest ledger" in message


def test_an_edited_ledger_is_refused(site: Site) -> None:
    site.train(1)
    site.train(2)
    data = json.loads(site.ledger.path.read_text(encoding="utf-8"))
    data["rounds"][0]["steps"] = 1  # a valid row, but not the one charged
    site.ledger.path.write_text(json.dumps(data), encoding="utf-8")
    with pytest.raises(LedgerMismatch) as refused:
        site.verify()
    message = str(refused.value)
    assert "its first 2 entries do not match the digest anchored" in message
    assert "it was edited" in message


def test_a_ledger_with_a_negative_steps_row_is_malformed(site: Site) -> None:
    site.train(1)
    data = json.loads(site.ledger.path.read_text(encoding="utf-8"))
    data["rounds"].append({**data["rounds"][0], "round": 2, "steps": -100})
    site.ledger.path.write_text(json.dumps(data), encoding="utf-8")
    with pytest.raises(LedgerMismatch) as refused:
        site.verify()
    message = str(refused.value)
    assert "is malformed (rounds.1.steps: Input should be greater than" in message
    assert "restore it from a backup" in message


def test_a_ledger_that_is_not_json_is_malformed(site: Site) -> None:
    site.train(1)
    site.ledger.path.write_text("{not json", encoding="utf-8")
    with pytest.raises(LedgerMismatch, match="is malformed"):
        site.verify()


def _synthetic_log(path: Path, lines: int, anchor_at: int, n: int, digest: str) -> None:
    other = json.dumps({"event": "metrics_released", "data": {"x": "y" * 200}})
    charged = json.dumps(
        {
            "event": "round_charged",
            "seq": anchor_at,
            "data": {"ledger_rounds": n, "ledger_sha256": digest},
        }
    )
    with path.open("w", encoding="utf-8") as handle:
        for i in range(lines):
            handle.write((charged if i == anchor_at else other) + "\n")


def test_reading_a_long_log_stays_fast(site: Site, tmp_path: Path) -> None:
    site.train(1)
    n, digest = site.ledger.load().anchor()
    log = tmp_path / "long.jsonl"
    _synthetic_log(log, 100_000, 99_990, n, digest)
    start = time.perf_counter()
    verify_ledger(site.ledger, log)
    assert time.perf_counter() - start < 0.5
    # The latest anchor far back: the whole log is read, from the end.
    _synthetic_log(log, 100_000, 5, n + 1, digest)
    start = time.perf_counter()
    with pytest.raises(LedgerMismatch, match="rolled back"):
        verify_ledger(site.ledger, log)
    assert time.perf_counter() - start < 3.0
