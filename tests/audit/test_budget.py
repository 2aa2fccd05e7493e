"""``slidefed audit verify`` recomputes each site's composed epsilon from its log.

Every log here is written by the real signed writer and checked through the CLI.
The auditor composes the DP parameters of each ``round_charged`` and
``evaluation_charged`` record (not replays) with its own accountant and fails,
naming the site, when the composition exceeds the site's maximum or disagrees with
what the site claimed. The accountants are checked too: the auditor's incremental
one against Opacus, and the sites' bounds against Google's dp-accounting (PLD).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
from opacus.accountants.analysis.rdp import compute_rdp, get_privacy_spent

from slidefed.audit.accountant import ORDERS, Composition, agrees, epsilon, rdp_step
from slidefed.audit.load import load_logs
from slidefed.audit.report import build_report
from slidefed.cli import main
from slidefed.client.privacy.accountant import epsilon as site_epsilon
from slidefed.client.privacy.charging import charge_round
from slidefed.client.privacy.ledger import AccountantName, PrivacyLedger
from slidefed.common.audit.events import (
    AuditEvent,
    EvaluationCharged,
    RoundCharged,
    RoundReplayed,
)
from slidefed.common.audit.writer import AuditLog
from slidefed.common.crypto import generate_audit_key
from tests.pld import SLACK, ledger_pld_epsilon, pld_epsilon

SITE = "hospital-a"
DELTA = 1e-5
Step = tuple[float, float, int]
Charged = type[RoundCharged]


def _write(folder: Path, entries: list[tuple[AuditEvent, int]]) -> Path:
    """Write a signed site log of ``(payload, round)``; its public key beside it."""
    folder.mkdir(parents=True, exist_ok=True)
    key = generate_audit_key(folder / "audit_key")
    log = AuditLog(folder / "audit.jsonl", key=key, actor="site", actor_name=SITE)
    for payload, rnd in entries:
        log.append(payload, run_id=11, round=rnd)
    return log.path


def _charge(
    step: Step,
    *,
    after: float,
    before: float = 0.0,
    maximum: float = 10.0,
    accountant: str = "rdp",
    model: Charged = RoundCharged,
    **fields: Any,
) -> RoundCharged:
    sigma, q, steps = step
    values: dict[str, Any] = {
        "noise_multiplier": sigma,
        "sample_rate": q,
        "steps": steps,
        "delta": DELTA,
        "unit": "patient",
        "accountant": accountant,
        "epsilon_round": after - before,
        "epsilon_before": before,
        "epsilon_after": after,
        "epsilon_max": maximum,
        "replay": False,
    }
    return model(**(values | fields))


def _verify(
    capsys: pytest.CaptureFixture[str], path: Path
) -> tuple[int, dict[str, Any]]:
    """Run ``slidefed audit verify`` twice: as text, then ``--json``."""
    rc = main(["audit", "verify", str(path)])
    text = capsys.readouterr().out
    rc_json = main(["audit", "verify", str(path), "--json"])
    result = json.loads(capsys.readouterr().out)
    assert rc == rc_json
    result["text"] = text
    return rc, result


def _problems(result: dict[str, Any]) -> list[tuple[int, str]]:
    return [(p["line"], p["kind"]) for p in result["logs"][0]["problems"]]


def _honest(
    steps: list[tuple[Step, Charged]], *, maximum: float = 10.0
) -> list[tuple[AuditEvent, int]]:
    """Records of ``steps`` as an honest site writes them, epsilons from Opacus.

    ``epsilon_after`` is the tighter of Opacus's RDP and PRV bounds and says which;
    ``epsilon_rdp`` is the RDP bound.
    """
    entries: list[tuple[AuditEvent, int]] = []
    history: list[Step] = []
    before = 0.0
    for rnd, (step, model) in enumerate(steps, 1):
        history.append(step)
        rdp = site_epsilon(history, DELTA, accountant="rdp")
        prv = site_epsilon(history, DELTA, accountant="prv")
        accountant, after = ("prv", prv) if prv < rdp else ("rdp", rdp)
        payload = _charge(
            step,
            after=after,
            before=before,
            maximum=maximum,
            accountant=accountant,
            model=model,
            epsilon_rdp=rdp,
            ledger_rounds=rnd,
        )
        entries.append((payload, rnd))
        before = after
    return entries


# --- (i) charges that each stay under the maximum but compose over it ------------


@pytest.mark.parametrize("accountant", ["prv", "rdp"])
def test_charges_that_compose_over_the_maximum_fail_naming_the_site(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], accountant: str
) -> None:
    step: Step = (1.5, 0.1, 50)
    composed = [epsilon([step] * k, DELTA) for k in (1, 2, 3)]
    maximum = (composed[1] + composed[2]) / 2  # passed by the third charge only
    claims = [0.5 * eps for eps in composed]  # each under the maximum
    entries: list[tuple[AuditEvent, int]] = [
        (
            _charge(
                step,
                after=after,
                before=claims[rnd - 2] if rnd > 1 else 0.0,
                maximum=maximum,
                accountant=accountant,
            ),
            rnd,
        )
        for rnd, after in enumerate(claims, 1)
    ]
    path = _write(tmp_path / "site", entries)

    rc, result = _verify(capsys, path)

    assert rc == 1, result["text"]
    over = (3, "over_budget")
    if accountant == "prv":  # a PRV bound below RDP is no mismatch
        assert _problems(result) == [over]
    else:  # an RDP claim must equal the recomputation
        mismatch = "epsilon_mismatch"
        assert _problems(result) == [(1, mismatch), (2, mismatch), over, (3, mismatch)]
    message = next(
        p["message"]
        for p in result["logs"][0]["problems"]
        if p["kind"] == "over_budget"
    )
    assert message.startswith(
        f"site {SITE}: composed epsilon {composed[2]:.3f} exceeds its max_epsilon "
        f"{maximum:.3f} at line 3"
    )
    assert "recomputed by the auditor from the logged DP parameters" in message
    assert f"site {SITE}" in result["text"]
    assert "FAILED: first bad record" in result["text"]


def test_the_issue_case_2_74_over_a_maximum_of_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Three Gaussian releases claimed at 0.6 each (PRV): the log composes to 2.74."""
    step: Step = (2.8, 1.0, 1)
    entries: list[tuple[AuditEvent, int]] = []
    for rnd in (1, 2, 3):
        claim = _charge(
            step, after=0.6 * rnd, before=0.6 * (rnd - 1), maximum=2.0, accountant="prv"
        )
        entries.append((claim, rnd))
    composed = epsilon([step] * 3, DELTA)
    path = _write(tmp_path / "site", entries)

    rc, result = _verify(capsys, path)

    assert 2.74 < composed < 2.75
    assert rc == 1
    assert _problems(result) == [(2, "over_budget"), (3, "over_budget")]
    messages = [p["message"] for p in result["logs"][0]["problems"]]
    assert messages[1].startswith(
        f"site {SITE}: composed epsilon {composed:.3f} exceeds its max_epsilon 2.000 "
        "at line 3"
    )
    assert f"{path}:2: over_budget: site {SITE}: composed epsilon" in result["text"]


# --- (ii) a claim the recomputation refutes ---------------------------------------


def test_an_understated_epsilon_rdp_fails(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    entries = _honest([((1.1, 0.05, 100), RoundCharged)] * 3)
    honest = entries[1][0]
    assert isinstance(honest, RoundCharged)
    assert honest.epsilon_rdp is not None
    understated = honest.model_copy(update={"epsilon_rdp": 0.9 * honest.epsilon_rdp})
    entries[1] = (understated, 2)
    path = _write(tmp_path / "site", entries)

    rc, result = _verify(capsys, path)

    assert rc == 1, result["text"]
    assert _problems(result) == [(2, "epsilon_mismatch")]
    message = result["logs"][0]["problems"][0]["message"]
    assert message.startswith(f"site {SITE}: epsilon_rdp ")
    assert "disagrees with the composed RDP epsilon" in message
    assert f"{honest.epsilon_rdp:.6f}" in message


def test_an_understated_rdp_epsilon_after_fails(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    step: Step = (1.1, 0.05, 100)
    true = epsilon([step], DELTA)
    path = _write(
        tmp_path / "site",
        [(_charge(step, after=round(true, 2) - 0.01, accountant="rdp"), 1)],
    )

    rc, result = _verify(capsys, path)

    assert rc == 1
    assert _problems(result) == [(1, "epsilon_mismatch")]
    assert "(accountant rdp) disagrees" in result["text"]


def test_a_prv_bound_above_the_rdp_bound_fails(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    step: Step = (1.1, 0.05, 100)
    rdp = epsilon([step], DELTA)
    path = _write(
        tmp_path / "site", [(_charge(step, after=rdp + 0.1, accountant="prv"), 1)]
    )

    rc, result = _verify(capsys, path)

    assert rc == 1
    assert _problems(result) == [(1, "epsilon_mismatch")]
    assert "(accountant prv) is above the composed RDP epsilon" in result["text"]


def test_an_accountant_the_auditor_does_not_know_fails(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    step: Step = (1.1, 0.05, 100)
    payload = _charge(step, after=0.01, accountant="trust-me")
    path = _write(tmp_path / "site", [(payload, 1)])

    rc, result = _verify(capsys, path)

    assert rc == 1
    assert _problems(result) == [(1, "epsilon_mismatch")]
    assert "'trust-me'" in result["text"]


def test_an_uncounted_evaluation_fails(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """An evaluation release composes into the history like a round."""
    entries = _honest([((1.1, 0.05, 100), RoundCharged)] * 2)
    entries.insert(
        1, (_charge((3.0, 1.0, 1), after=0.0, model=EvaluationCharged), 1)
    )  # line 2: claims nothing, and round 2 (line 3) leaves it out
    path = _write(tmp_path / "site", entries)

    rc, result = _verify(capsys, path)

    assert rc == 1
    problems = _problems(result)
    assert (2, "epsilon_mismatch") in problems
    assert (3, "epsilon_mismatch") in problems


# --- (iii) an honest history passes -------------------------------------------------


def test_an_honest_history_passes(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    steps: list[tuple[Step, Charged]] = [
        ((1.1, 0.05, 100), RoundCharged),
        ((1.1, 0.05, 100), RoundCharged),
        ((4.0, 1.0, 1), EvaluationCharged),
        ((1.5, 0.1, 50), RoundCharged),
        ((0.9560546875, 0.25, 16), RoundCharged),
    ]
    entries = _honest(steps, maximum=20.0)
    last = entries[-1][0]
    path = _write(tmp_path / "site", entries)

    rc, result = _verify(capsys, path)

    assert rc == 0, result["text"]
    assert result["ok"] is True
    assert "OK, 5 records" in result["text"]
    assert isinstance(last, RoundCharged)
    assert last.epsilon_rdp is not None
    assert agrees(last.epsilon_rdp, epsilon([s for s, _ in steps], DELTA))


def test_an_honest_site_at_its_maximum_passes(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    entries = _honest([((1.1, 0.05, 100), RoundCharged)] * 2)
    last = entries[-1][0]
    assert isinstance(last, RoundCharged)
    assert last.epsilon_rdp is not None
    entries = [
        (payload.model_copy(update={"epsilon_max": last.epsilon_rdp}), rnd)
        for payload, rnd in entries
    ]
    path = _write(tmp_path / "site", entries)

    rc, result = _verify(capsys, path)

    assert rc == 0, result["text"]


# --- (iv) replays are not counted twice ---------------------------------------------


def test_replays_are_not_counted_twice(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    entries = _honest([((1.1, 0.05, 100), RoundCharged)] * 2)
    first = entries[0][0]
    assert isinstance(first, RoundCharged)
    repeated = first.model_dump() | {"replay": True}
    entries[1:1] = [
        (RoundReplayed(**repeated), 1),  # the writer's replay record
        (RoundCharged(**repeated), 1),  # an older writer's: round_charged, replay
    ]
    path = _write(tmp_path / "site", entries)

    rc, result = _verify(capsys, path)

    assert rc == 0, result["text"]
    assert "OK, 4 records" in result["text"]


def test_a_replay_charged_again_is_counted(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The same parameters charged twice (replay false) compose twice."""
    entries = _honest([((1.1, 0.05, 100), RoundCharged)] * 2)
    first = entries[0][0]
    entries.insert(1, (first, 1))
    path = _write(tmp_path / "site", entries)

    rc, result = _verify(capsys, path)

    assert rc == 1
    assert (2, "epsilon_mismatch") in _problems(result)


# --- the report shows the problem ---------------------------------------------------


def test_the_report_shows_a_composed_budget_problem(tmp_path: Path) -> None:
    step: Step = (1.5, 0.1, 50)
    composed = epsilon([step] * 2, DELTA)
    entries: list[tuple[AuditEvent, int]] = [
        (_charge(step, after=0.5, maximum=3.0, accountant="prv"), 1),
        (_charge(step, after=1.0, before=0.5, maximum=3.0, accountant="prv"), 2),
    ]
    path = _write(tmp_path / "site", entries)

    page = build_report(load_logs([path]))

    assert composed > 3.0 > epsilon([step], DELTA)
    assert "Verification FAILED" in page
    assert "over_budget" in page
    assert f"composed epsilon {composed:.3f} exceeds its max_epsilon 3.000" in page


# --- (v) the incremental accountant -------------------------------------------------

HISTORIES: list[list[Step]] = [
    [(1.1, 0.05, 100)] * 4,
    [(0.9560546875, 0.25, 16), (2.0, 1.0, 1), (1.5, 0.1, 50), (0.7, 0.01, 1000)],
    [(4.0, 1.0, 1), (3.0, 1.0, 1), (1.0, 1.0, 3)],
    [(1.2, 0.02, 0), (0.8, 0.5, 7), (5.0, 0.001, 10_000)],
]


def _opacus_epsilon(history: list[Step], delta: float) -> float:
    orders = [float(order) for order in ORDERS]
    rdp = sum(
        compute_rdp(q=q, noise_multiplier=sigma, steps=steps, orders=orders)
        for sigma, q, steps in history
    )
    eps, _ = get_privacy_spent(orders=orders, rdp=rdp, delta=delta)
    return float(eps)


@pytest.mark.parametrize("history", HISTORIES)
@pytest.mark.parametrize("delta", [1e-5, 0.0035714285714285713])
def test_the_incremental_accountant_matches_epsilon_and_opacus(
    history: list[Step], delta: float
) -> None:
    composed = Composition()
    for k, (sigma, q, steps) in enumerate(history, 1):
        composed.add(sigma, q, steps)
        prefix = history[:k]
        assert composed.epsilon(delta) == pytest.approx(
            epsilon(prefix, delta), rel=1e-12
        )
        if composed.steps:  # Opacus converts an empty history too, to above 0
            assert composed.epsilon(delta) == pytest.approx(
                _opacus_epsilon(prefix, delta), rel=1e-10
            )
    assert composed.steps == sum(steps for _, _, steps in history)


def test_the_incremental_accountant_edges() -> None:
    composed = Composition()
    assert composed.epsilon(1e-5) == 0.0
    composed.add(1.0, 0.1, 0)
    composed.add(1.0, 0.1, -5)
    assert (composed.steps, composed.epsilon(1e-5)) == (0, 0.0)
    composed.add(0.0, 0.1, 1)  # no noise: no bound
    assert composed.epsilon(1e-5) == float("inf")
    assert not agrees(3.0, float("inf"))
    assert agrees(float("inf"), float("inf"))


@pytest.mark.parametrize(
    ("sigma", "q"),
    [(1e-160, 0.5), (1e-200, 0.3), (1e-200, 1.0), (1e160, 0.5), (1e300, 1.0)],
)
def test_extreme_noise_gives_a_bound_not_nan_or_a_hang(sigma: float, q: float) -> None:
    values = [rdp_step(sigma, q, order) for order in ORDERS]
    assert not any(math.isnan(value) for value in values)
    eps = epsilon([(sigma, q, 3)], 1e-5)
    if sigma < 1:  # no noise to speak of: no bound
        assert eps == float("inf")
    else:  # all but no privacy spent: the floor of the conversion at delta
        assert 0 <= eps < 0.2


def test_no_noise_fails_the_audit(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = _write(
        tmp_path / "site",
        [(_charge((1e-160, 0.5, 3), after=0.5, accountant="prv"), 1)],
    )

    rc, result = _verify(capsys, path)

    assert rc == 1
    assert _problems(result) == [(1, "over_budget")]
    assert f"site {SITE}: composed epsilon inf exceeds" in result["text"]


# --- the sites' bounds against an independent accountant (dp-accounting, PLD) --------

PLANS: dict[str, dict[str, Any]] = {
    "demo": {"sample_rate": 0.25, "steps": 16, "rounds": 2, "target": 8.0},
    "small-q": {"sample_rate": 0.05, "steps": 100, "rounds": 3, "target": 2.0},
    "gaussian": {"sample_rate": 1.0, "steps": 1, "rounds": 2, "target": 1.0},
    "prv": {
        "sample_rate": 0.1,
        "steps": 50,
        "rounds": 3,
        "target": 4.0,
        "accountant": "prv",
    },
}
"""Plans for :func:`charge_round`; the demo's at its delta 1/280, the rest at 1e-5."""


@pytest.mark.parametrize("name", list(PLANS))
def test_charged_epsilon_is_an_upper_bound_by_pld(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], name: str
) -> None:
    """The real charging code: each round's epsilon bounds PLD's, and passes audit."""
    plan = PLANS[name]
    delta = 1 / 280 if name == "demo" else 1e-5
    ledger_file = PrivacyLedger(tmp_path / "state" / "ledger.json")
    accountant: AccountantName = plan.get("accountant", "rdp")
    entries: list[tuple[AuditEvent, int]] = []
    for rnd in range(1, plan["rounds"] + 1):
        charged = charge_round(
            ledger_file,
            run_id=5,
            server_round=rnd,
            planned_rounds=plan["rounds"],
            sample_rate=plan["sample_rate"],
            steps=plan["steps"],
            target_epsilon=plan["target"],
            max_epsilon=plan["target"] + 1.0,
            min_noise_multiplier=0.3,
            delta=delta,
            unit="patient",
            accountant=accountant,
            input_sha256=f"model-{rnd}",
        )
        ledger = ledger_file.load()
        independent = ledger_pld_epsilon(ledger)
        assert len(ledger.history()) == rnd
        assert charged.epsilon_after >= independent - SLACK, (rnd, independent)
        fields = charged.model_dump(exclude={"run_id", "round"})
        entries.append((RoundCharged(**fields), rnd))
    assert charged.epsilon_after <= plan["target"] + 1e-6

    rc, result = _verify(capsys, _write(tmp_path / "audit", entries))

    assert rc == 0, result["text"]


def test_pld_helper_on_a_known_gaussian() -> None:
    """One Gaussian release: PLD's epsilon is below RDP's and close to it."""
    pld = pld_epsilon([(2.0, 1.0, 1)], 1e-5)
    rdp = epsilon([(2.0, 1.0, 1)], 1e-5)
    assert 0.8 * rdp < pld <= rdp
    assert pld_epsilon([], 1e-5) == 0.0
