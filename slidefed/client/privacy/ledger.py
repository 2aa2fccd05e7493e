"""The site's privacy ledger, accountant and policy enforcement.

The ledger holds the whole DP history of the site's dataset: every round of every
run, with its noise multiplier, sample rate and steps. Epsilon is always computed
by composing that whole history with the RDP accountant of Opacus, so the spend
survives restarts, new runs and new containers. A round is charged (written
atomically to disk) before training starts, so a crash can only over-count.
"""

from __future__ import annotations

import fcntl
import functools
import json
import os
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from opacus.accountants import RDPAccountant
from opacus.accountants.analysis.rdp import compute_rdp, get_privacy_spent
from pydantic import BaseModel, ConfigDict, Field

from slidefed.common.budget import EPSILON_TOLERANCE
from slidefed.common.errors import PrivacyBudgetExhausted

Unit = Literal["patient", "slide", "tile"]
AccountantName = Literal["rdp", "prv"]
Step = tuple[float, float, int]  # (noise multiplier, sample rate, steps)

_ALPHAS: list[float] = [float(a) for a in RDPAccountant.DEFAULT_ALPHAS]
# A coarser grid for calibration: a minimum over fewer orders is an upper bound,
# so noise calibrated on it never overshoots the target.
_CAL_ALPHAS = [
    1.25,
    1.5,
    1.75,
    2,
    2.5,
    3,
    3.5,
    4,
    5,
    6,
    7,
    8,
    10,
    12,
    16,
    20,
    24,
    32,
    48,
    64,
]
_MAX_SIGMA = 1e4


class LedgerRound(BaseModel):
    """One charged round."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    run_id: int
    round: int
    noise_multiplier: float
    sample_rate: float
    steps: int
    epsilon_after: float
    time: str
    input_sha256: str = ""


class LedgerRun(BaseModel):
    """The privacy plan of one run on this dataset."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    run_id: int
    started: str
    target_epsilon: float
    planned_rounds: int
    steps_per_round: int
    sample_rate: float
    noise_multiplier: float
    epsilon_before: float


class Ledger(BaseModel):
    """Everything the accountant needs, schema-versioned."""

    model_config = ConfigDict(extra="forbid")

    schema_version: Literal[1] = 1
    unit: Unit = "patient"
    accountant: AccountantName = "rdp"
    delta: float | None = Field(default=None, gt=0, lt=1)
    runs: list[LedgerRun] = []
    rounds: list[LedgerRound] = []

    def history(self) -> list[Step]:
        """The DP history of every charged round."""
        return [(r.noise_multiplier, r.sample_rate, r.steps) for r in self.rounds]

    def run(self, run_id: int) -> LedgerRun | None:
        """The plan of ``run_id``, if it started here."""
        return next((r for r in self.runs if r.run_id == run_id), None)


def epsilon(
    history: Sequence[Step],
    delta: float,
    *,
    accountant: AccountantName = "rdp",
    fine: bool = True,
) -> float:
    """Epsilon of the composition of ``history`` at ``delta``.

    ``rdp`` is Opacus's Renyi accountant (conservative, fast); ``prv`` is its
    privacy-random-variable accountant (tighter, an upper bound within 0.01).
    """
    if not history:
        return 0.0
    if accountant == "prv":
        from opacus.accountants import PRVAccountant

        prv = PRVAccountant()
        prv.history = [(float(s), float(q), int(n)) for s, q, n in history]
        return float(prv.get_epsilon(delta))
    alphas = tuple(_ALPHAS if fine else [float(a) for a in _CAL_ALPHAS])
    rdp = None
    for sigma, q, steps in history:
        # RDP is linear in the number of steps: cache one step per (q, sigma).
        part = _unit_rdp(float(q), float(sigma), alphas) * steps
        rdp = part if rdp is None else rdp + part
    eps, _ = get_privacy_spent(orders=list(alphas), rdp=rdp, delta=delta)
    return float(eps)


@functools.lru_cache(maxsize=4096)
def _unit_rdp(q: float, sigma: float, alphas: tuple[float, ...]) -> Any:
    return compute_rdp(q=q, noise_multiplier=sigma, steps=1, orders=list(alphas))


def calibrate_noise(
    prior: Sequence[Step],
    *,
    sample_rate: float,
    steps: int,
    target_epsilon: float,
    delta: float,
    accountant: AccountantName = "rdp",
) -> float:
    """Smallest noise multiplier (to 1e-3) such that prior + plan stays within target.

    Raises
    ------
    PrivacyBudgetExhausted
        If no noise multiplier up to 1e4 fits.
    """

    def fits(sigma: float) -> bool:
        plan = [*prior, (sigma, sample_rate, steps)]
        return epsilon(plan, delta, accountant=accountant, fine=False) <= target_epsilon

    hi = 1.0
    while not fits(hi):
        hi *= 2
        if hi > _MAX_SIGMA:
            raise PrivacyBudgetExhausted(
                f"no noise multiplier reaches epsilon <= {target_epsilon:.3g} for "
                f"{steps} steps at sample rate {sample_rate:.3g}; raise the run's "
                "target-epsilon or lower num-server-rounds/local-epochs"
            )
    lo = 0.0
    while hi - lo > 1e-3:
        mid = (lo + hi) / 2
        if mid > 0 and fits(mid):
            hi = mid
        else:
            lo = mid
    return hi


class PrivacyLedger:
    """The ledger file, read and written under a lock, replaced atomically."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)

    def load(self) -> Ledger:
        """The ledger on disk, or an empty one."""
        if not self.path.is_file():
            return Ledger()
        return Ledger.model_validate_json(self.path.read_text(encoding="utf-8"))

    @contextmanager
    def locked(self) -> Iterator[Ledger]:
        """Hold the ledger lock; changes to the yielded ledger are saved on exit."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        lock_path = self.path.with_name(self.path.name + ".lock")
        with lock_path.open("a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            ledger = self.load()
            yield ledger
            self._save(ledger)

    def _save(self, ledger: Ledger) -> None:
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, suffix=".tmp")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                fh.write(json.dumps(ledger.model_dump(mode="json"), indent=1))
                fh.flush()
                os.fsync(fh.fileno())
            Path(tmp).replace(self.path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise


def now() -> str:
    """UTC time in ISO-8601."""
    return datetime.now(UTC).isoformat(timespec="seconds")


class Charge(BaseModel):
    """What one round costs and what it brings the total to."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    run_id: int
    round: int
    noise_multiplier: float
    sample_rate: float
    steps: int
    delta: float
    unit: Unit
    accountant: AccountantName
    epsilon_round: float
    epsilon_before: float
    epsilon_after: float
    epsilon_max: float
    replay: bool = False


def charge_round(
    ledger_file: PrivacyLedger,
    *,
    run_id: int,
    server_round: int,
    planned_rounds: int,
    sample_rate: float,
    steps: int,
    target_epsilon: float,
    max_epsilon: float,
    min_noise_multiplier: float,
    delta: float,
    unit: Unit,
    accountant: AccountantName = "rdp",
    input_sha256: str = "",
) -> Charge:
    """Plan (first round of a run) and charge one round before it trains.

    A run is granted its target epsilon, capped at the site maximum, or refused
    up front: a site never hands a run less budget than it planned for, since
    that would silently train with far more noise than the researcher designed.

    A round asked again with the same global model (``input_sha256``), after a
    crash or a coordinator restart, is a replay: training is seeded by run, site
    and round, so it releases the very same update, and it is not charged twice.

    Raises
    ------
    PrivacyBudgetExhausted
        If the run's budget is not available, or the round would take the
        dataset past ``max_epsilon``; nothing is charged then.
    """
    with ledger_file.locked() as ledger:
        if ledger.delta is None:
            ledger.delta = delta
        delta = min(delta, ledger.delta)
        ledger.unit = unit
        ledger.accountant = accountant
        history = ledger.history()
        replayed = next(
            (
                r
                for r in ledger.rounds
                if input_sha256
                and r.run_id == run_id
                and r.round == server_round
                and r.input_sha256 == input_sha256
            ),
            None,
        )
        if replayed is not None:
            return _replay_charge(
                replayed, ledger, delta, unit, accountant, max_epsilon
            )
        before = epsilon(history, delta, accountant=accountant)
        plan = ledger.run(run_id)
        if plan is None:
            remaining = max_epsilon - before
            wanted = min(target_epsilon, max_epsilon)
            if remaining <= EPSILON_TOLERANCE:
                raise PrivacyBudgetExhausted(
                    f"site budget spent: epsilon {before:.3f} of max_epsilon "
                    f"{max_epsilon:.3f} (policy in site.toml); no more training on "
                    "this dataset"
                )
            if remaining + EPSILON_TOLERANCE < wanted:
                raise PrivacyBudgetExhausted(
                    f"run asks for epsilon {target_epsilon:.3g} but only "
                    f"{remaining:.3f} of the site's max_epsilon {max_epsilon:.3g} "
                    f"remains; lower target-epsilon to at most {remaining:.3f}"
                )
            sigma = calibrate_noise(
                history,
                sample_rate=sample_rate,
                steps=steps * planned_rounds,
                target_epsilon=before + wanted,
                delta=delta,
                accountant=accountant,
            )
            plan = LedgerRun(
                run_id=run_id,
                started=now(),
                target_epsilon=target_epsilon,
                planned_rounds=planned_rounds,
                steps_per_round=steps,
                sample_rate=sample_rate,
                noise_multiplier=max(sigma, min_noise_multiplier),
                epsilon_before=before,
            )
            ledger.runs.append(plan)
        sigma = plan.noise_multiplier
        after = epsilon(
            [*history, (sigma, sample_rate, steps)], delta, accountant=accountant
        )
        if after > max_epsilon + EPSILON_TOLERANCE:
            raise PrivacyBudgetExhausted(
                f"round {server_round} would bring epsilon to {after:.3f}, over the "
                f"site's max_epsilon {max_epsilon:.3f} (policy in site.toml); round "
                "refused"
            )
        ledger.rounds.append(
            LedgerRound(
                run_id=run_id,
                round=server_round,
                noise_multiplier=sigma,
                sample_rate=sample_rate,
                steps=steps,
                epsilon_after=after,
                time=now(),
                input_sha256=input_sha256,
            )
        )
    return Charge(
        run_id=run_id,
        round=server_round,
        noise_multiplier=sigma,
        sample_rate=sample_rate,
        steps=steps,
        delta=delta,
        unit=unit,
        accountant=accountant,
        epsilon_round=epsilon(
            [(sigma, sample_rate, steps)], delta, accountant=accountant
        ),
        epsilon_before=before,
        epsilon_after=after,
        epsilon_max=max_epsilon,
    )


def _replay_charge(
    replayed: LedgerRound,
    ledger: Ledger,
    delta: float,
    unit: Unit,
    accountant: AccountantName,
    max_epsilon: float,
) -> Charge:
    history = ledger.history()
    spent = epsilon(history, delta, accountant=accountant)
    step = (replayed.noise_multiplier, replayed.sample_rate, replayed.steps)
    return Charge(
        run_id=replayed.run_id,
        round=replayed.round,
        noise_multiplier=replayed.noise_multiplier,
        sample_rate=replayed.sample_rate,
        steps=replayed.steps,
        delta=delta,
        unit=unit,
        accountant=accountant,
        epsilon_round=epsilon([step], delta, accountant=accountant),
        epsilon_before=spent,
        epsilon_after=spent,
        epsilon_max=max_epsilon,
        replay=True,
    )


def stable_run_id(run_name: str) -> int:
    """A ledger run id that survives coordinator restarts (from the run name)."""
    import hashlib

    return int(hashlib.sha256(run_name.encode()).hexdigest()[:15], 16)


__all__ = [
    "Charge",
    "Ledger",
    "LedgerRound",
    "LedgerRun",
    "PrivacyLedger",
    "calibrate_noise",
    "charge_round",
    "epsilon",
    "stable_run_id",
]
