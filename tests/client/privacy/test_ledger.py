import json
import subprocess
import sys
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from slidefed.client.privacy.ledger import (
    Ledger,
    LedgerRound,
    PrivacyLedger,
    stable_run_id,
)


@settings(max_examples=25, deadline=None)
@given(
    rounds=st.lists(
        st.tuples(st.floats(0.3, 5.0), st.floats(0.01, 1.0), st.integers(1, 1000)),
        max_size=6,
    ),
    delta=st.floats(1e-8, 0.1),
)
def test_ledger_round_trips_exactly(
    rounds: list[tuple[float, float, int]], delta: float
) -> None:
    ledger = Ledger(
        delta=delta,
        rounds=[
            LedgerRound(
                run_id=7,
                round=i + 1,
                noise_multiplier=s,
                sample_rate=q,
                steps=n,
                epsilon_after=float(i),
                time="2026-01-01T00:00:00+00:00",
            )
            for i, (s, q, n) in enumerate(rounds)
        ],
    )
    assert Ledger.model_validate_json(ledger.model_dump_json()) == ledger


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
        "import sys, slidefed.client.privacy, slidefed.client.privacy.ledger; "
        "print(sorted(m for m in ('torch', 'opacus', 'flwr') if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "[]"
