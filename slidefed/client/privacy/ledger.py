"""The site's privacy ledger: the on-disk record of every charged release.

The ledger holds the whole DP history of the site's dataset: every training round
and every evaluation of every run, with its noise multiplier, sample rate and steps
(an evaluation is one Gaussian mechanism: sample rate 1, one step). Epsilon is
always computed by composing that whole history
(:mod:`slidefed.client.privacy.accountant`), so the spend survives restarts, new
runs and new containers. The file is read and written under a lock and replaced
atomically; every field is constrained, so a hand-edited row that no charge could
have written (negative steps, a sample rate above 1) makes the file malformed.

The ledger's *anchor* (:meth:`Ledger.anchor`) is what the site's audit log records
after each charge, so that a deleted, rolled-back or edited ledger is caught
(:mod:`slidefed.client.privacy.anchor`). This module imports neither torch nor
Opacus.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from slidefed.common.fileio import atomic_write_text

Unit = Literal["patient", "group", "slide", "tile"]
AccountantName = Literal["rdp", "prv", "best"]
"""What a site asks for: one bound, or ``best``, the tighter valid one."""
Bound = Literal["rdp", "prv"]
"""The bound a reported epsilon is: never ``best``."""
EntryKind = Literal["train", "evaluate"]
Step = tuple[float, float, int]  # (noise multiplier, sample rate, steps)

_STRICT = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class LedgerRound(BaseModel):
    """One charged release: a training round or an evaluation."""

    model_config = _STRICT

    run_id: int
    round: int = Field(ge=0)
    kind: EntryKind = "train"
    noise_multiplier: float = Field(ge=0)
    sample_rate: float = Field(gt=0, le=1)
    steps: int = Field(ge=1)
    epsilon_after: float = Field(ge=0)
    time: str
    input_sha256: str = ""


class LedgerRun(BaseModel):
    """The privacy plan of one run on this dataset.

    ``run_id`` is the ledger's id of the run (from its ``run-name`` when it has
    one, else Flower's run id); ``run_name`` and ``flower_run_id`` are that name
    and the Flower run in which the plan was made: the ``run_id`` of the audit
    records of that run. ``planned_evaluations`` evaluations at ``eval_noise_multiplier`` are reserved in
    the run's grant: its training noise was calibrated with them composed in.
    """

    model_config = _STRICT

    run_id: int
    started: str
    target_epsilon: float = Field(ge=0)
    planned_rounds: int = Field(ge=1)
    steps_per_round: int = Field(ge=1)
    sample_rate: float = Field(gt=0, le=1)
    noise_multiplier: float = Field(ge=0)
    epsilon_before: float = Field(ge=0)
    planned_evaluations: int = Field(default=0, ge=0)
    eval_noise_multiplier: float = Field(default=0.0, ge=0)
    run_name: str = ""
    flower_run_id: int | None = None


_NAMES = ("run_name", "flower_run_id")
"""Fields a plan gained later: left out of the anchor while unset, so that the
anchors of plans written before them still verify."""


def _anchored_plan(plan: LedgerRun) -> dict[str, Any]:
    """A plan as the anchor digests it."""
    body = plan.model_dump(mode="json")
    for name in _NAMES:
        if body.get(name) in ("", None):
            body.pop(name, None)
    return body


class Ledger(BaseModel):
    """Everything the accountant needs, schema-versioned."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    schema_version: Literal[1] = 1
    unit: Unit = "patient"
    accountant: AccountantName = "rdp"
    delta: float | None = Field(default=None, gt=0, lt=1)
    runs: list[LedgerRun] = []
    rounds: list[LedgerRound] = []

    def history(self) -> list[Step]:
        """The DP history of every charged release, training and evaluation."""
        return [(r.noise_multiplier, r.sample_rate, r.steps) for r in self.rounds]

    def run(self, run_id: int) -> LedgerRun | None:
        """The plan of ``run_id``, if it started here."""
        return next((r for r in self.runs if r.run_id == run_id), None)

    def anchor(self, n: int | None = None) -> tuple[int, str]:
        """The number of entries and the digest of the first ``n`` (default: all).

        The digest is the hex SHA-256 of the canonical JSON (sorted keys, no
        spaces, ASCII, no NaN) of::

            {"schema_version": 1, "unit": ..., "delta": ...,
             "rounds": [the first n rounds, as dumped],
             "runs": [the plans of the runs with a training round among them,
                      in ledger order]}

        Charges only append rounds and runs (a run's plan is added with its first
        training round, in the same write, and never changed; an evaluation may
        come before it), and the unit and delta are fixed by the first charge, so
        the digest of the first ``n`` entries stays computable from any later
        ledger: an anchor in the audit log checks a longer ledger too.
        """
        count = len(self.rounds) if n is None else n
        if not 0 <= count <= len(self.rounds):
            raise ValueError(
                f"anchor of {count} entries asked; the ledger holds {len(self.rounds)}"
            )
        rounds = self.rounds[:count]
        ids = {r.run_id for r in rounds if r.kind == "train"}
        body: dict[str, Any] = {
            "schema_version": self.schema_version,
            "unit": self.unit,
            "delta": self.delta,
            "rounds": [r.model_dump(mode="json") for r in rounds],
            "runs": [_anchored_plan(p) for p in self.runs if p.run_id in ids],
        }
        text = json.dumps(
            body,
            sort_keys=True,
            separators=(",", ":"),
            ensure_ascii=True,
            allow_nan=False,
        )
        return count, hashlib.sha256(text.encode("ascii")).hexdigest()


class PrivacyLedger:
    """The ledger file, read and written under a lock, replaced atomically."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)

    def load(self) -> Ledger:
        """The ledger on disk, or an empty one.

        Raises
        ------
        pydantic.ValidationError
            If the file is not a valid ledger (a field out of its range included).
        """
        if not self.path.is_file():
            return Ledger()
        return Ledger.model_validate_json(self.path.read_text(encoding="utf-8"))

    @contextmanager
    def locked(self) -> Iterator[Ledger]:
        """Hold the ledger lock; changes to the yielded ledger are saved on exit.

        Nothing is saved when the body raises.
        """
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
    "Bound",
    "EntryKind",
    "Ledger",
    "LedgerRound",
    "LedgerRun",
    "PrivacyLedger",
    "Step",
    "Unit",
    "stable_run_id",
]
