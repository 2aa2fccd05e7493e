"""The site's privacy ledger: the on-disk record of every charged round.

The ledger holds the whole DP history of the site's dataset: every round of every
run, with its noise multiplier, sample rate and steps. Epsilon is always computed
by composing that whole history (:mod:`slidefed.client.privacy.accountant`), so the
spend survives restarts, new runs and new containers. The file is read and written
under a lock and replaced atomically. This module imports neither torch nor Opacus.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from slidefed.common.fileio import atomic_write_text

Unit = Literal["patient", "slide", "tile"]
AccountantName = Literal["rdp", "prv"]
Step = tuple[float, float, int]  # (noise multiplier, sample rate, steps)


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
        atomic_write_text(
            self.path, json.dumps(ledger.model_dump(mode="json"), indent=1)
        )


def stable_run_id(run_name: str) -> int:
    """A ledger run id that survives coordinator restarts (from the run name)."""
    return int(hashlib.sha256(run_name.encode()).hexdigest()[:15], 16)


__all__ = [
    "AccountantName",
    "Ledger",
    "LedgerRound",
    "LedgerRun",
    "PrivacyLedger",
    "Step",
    "Unit",
    "stable_run_id",
]
