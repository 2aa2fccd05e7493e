import json
import subprocess
import sys
from pathlib import Path
from typing import Literal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from slidefed.client.privacy.ledger import (
    Ledger,
    LedgerRound,
    LedgerRun,
    PrivacyLedger,
    stable_run_id,
)


@settings(max_examples=25, deadline=None)
@given(
    rounds=st.lists(
        st.tuples(
            st.floats(0.3, 5.0),
            st.floats(0.01, 1.0),
            st.integers(1, 1000),
            st.sampled_from(["train", "evaluate"]),
        ),
        max_size=6,
    ),
    delta=st.floats(1e-8, 0.1),
)
def test_ledger_round_trips_exactly(
    rounds: list[tuple[float, float, int, Literal["train", "evaluate"]]], delta: float
) -> None:
    ledger = Ledger(
        delta=delta,
        rounds=[
            LedgerRound(
                run_id=7,
                round=i + 1,
                kind=kind,
                noise_multiplier=s,
                sample_rate=q,
                steps=n,
                epsilon_after=float(i),
                time="2026-01-01T00:00:00+00:00",
            )
            for i, (s, q, n, kind) in enumerate(rounds)
        ],
    )
    again = Ledger.model_validate_json(ledger.model_dump_json())
    assert again == ledger
    assert again.anchor() == ledger.anchor()


def test_ledger_file_is_indented_json_and_leaves_no_temp_file(tmp_path: Path) -> None:
    path = tmp_path / "state" / "ledger.json"
    ledger_file = PrivacyLedger(path)
    with ledger_file.locked() as ledger:
        ledger.delta = 1e-4
    expected = json.dumps(Ledger(delta=1e-4).model_dump(mode="json"), indent=1)
    assert path.read_text(encoding="utf-8") == expected
    assert ledger_file.load() == Ledger(delta=1e-4)
    assert sorted(p.name for p in path.parent.iterdir()) == [
        "ledger.json",
        "ledger.json.lock",
    ]


def test_stable_run_id_depends_only_on_the_run_name() -> None:
    assert stable_run_id("study-1") == stable_run_id("study-1")
    assert stable_run_id("study-1") != stable_run_id("study-2")
    assert 0 <= stable_run_id("study-1") < 16**15


def test_the_privacy_package_and_its_ledger_import_no_torch() -> None:
    code = (
        "import sys, slidefed.client.privacy, slidefed.client.privacy.ledger, "
        "slidefed.client.privacy.anchor; "
        "print(sorted(m for m in ('torch', 'opacus', 'flwr') if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "[]"


def _row(**change: object) -> dict[str, object]:
    row: dict[str, object] = {
        "run_id": 1,
        "round": 1,
        "noise_multiplier": 1.0,
        "sample_rate": 0.25,
        "steps": 4,
        "epsilon_after": 0.5,
        "time": "2026-01-01T00:00:00+00:00",
    }
    return {**row, **change}


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("steps", -5),
        ("steps", 0),
        ("sample_rate", 0.0),
        ("sample_rate", 1.5),
        ("noise_multiplier", -1.0),
        ("round", -1),
        ("kind", "other"),
    ],
)
def test_a_row_no_charge_could_write_is_malformed(field: str, value: object) -> None:
    with pytest.raises(ValidationError) as error:
        LedgerRound.model_validate(_row(**{field: value}))
    assert error.value.errors()[0]["loc"] == (field,)


def test_a_row_names_its_kind_and_old_rows_are_training() -> None:
    assert LedgerRound.model_validate(_row()).kind == "train"
    evaluation = LedgerRound.model_validate(
        _row(kind="evaluate", sample_rate=1.0, steps=1, noise_multiplier=4.0)
    )
    ledger = Ledger(rounds=[LedgerRound.model_validate(_row()), evaluation])
    assert ledger.history() == [(1.0, 0.25, 4), (4.0, 1.0, 1)]


def _ledger_of(n: int) -> Ledger:
    runs = [
        LedgerRun(
            run_id=run,
            started="2026-01-01T00:00:00+00:00",
            target_epsilon=2.0,
            planned_rounds=3,
            steps_per_round=4,
            sample_rate=0.25,
            noise_multiplier=1.0,
            epsilon_before=0.0,
        )
        for run in (1, 2, 3)
    ]
    rows = [
        LedgerRound.model_validate(_row(run_id=1 + i // 3, round=1 + i % 3))
        for i in range(n)
    ]
    return Ledger(delta=1e-5, runs=runs[: 1 + (n - 1) // 3], rounds=rows)


def test_the_anchor_of_a_prefix_survives_appending() -> None:
    long = _ledger_of(8)
    for n in range(1, 9):
        assert long.anchor(n) == _ledger_of(n).anchor()
    assert long.anchor() == (8, long.anchor(8)[1])
    assert len({long.anchor(n)[1] for n in range(9)}) == 9
    edited = long.model_copy(
        update={"rounds": [long.rounds[0].model_copy(update={"steps": 3})]}
    )
    assert edited.anchor(1) != long.anchor(1)
    with pytest.raises(ValueError, match="holds 8"):
        long.anchor(9)


def test_the_anchor_is_the_same_after_a_round_trip_through_the_file(
    tmp_path: Path,
) -> None:
    ledger_file = PrivacyLedger(tmp_path / "ledger.json")
    with ledger_file.locked() as ledger:
        ledger.delta = 1e-5
        ledger.rounds.append(LedgerRound.model_validate(_row(sample_rate=1 / 93)))
        expected = ledger.anchor()
    assert ledger_file.load().anchor() == expected


def test_a_plan_written_before_run_names_keeps_its_anchor(tmp_path: Path) -> None:
    # A ledger file as sites wrote it before plans carried a run name: the anchor
    # recorded in their audit logs must still verify after the upgrade.
    old = _ledger_of(2).model_dump(mode="json")
    for plan in old["runs"]:
        del plan["run_name"], plan["flower_run_id"]
    body = {
        "schema_version": 1,
        "unit": "patient",
        "delta": 1e-5,
        "rounds": old["rounds"],
        "runs": old["runs"],
    }
    text = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    import hashlib

    path = tmp_path / "ledger.json"
    path.write_text(json.dumps(old))
    assert PrivacyLedger(path).load().anchor() == (
        2,
        hashlib.sha256(text.encode("ascii")).hexdigest(),
    )
    # A named plan is anchored with its name: renaming it shows.
    named = _ledger_of(2)
    named.runs[0] = named.runs[0].model_copy(update={"run_name": "r7"})
    renamed = _ledger_of(2)
    renamed.runs[0] = renamed.runs[0].model_copy(update={"run_name": "r8"})
    assert len({named.anchor()[1], renamed.anchor()[1], _ledger_of(2).anchor()[1]}) == 3
