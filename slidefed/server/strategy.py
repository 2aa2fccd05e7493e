"""The strategies slidefed offers, each validating replies, and their checkpointed state.

Every strategy of ``flwr.serverapp.strategy`` that slidefed offers is wrapped by
:class:`~slidefed.server.validation.ValidatingMixin`, which checks and audits
replies before aggregation.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from flwr.serverapp.strategy import (
    FedAdam,
    FedAvg,
    FedMedian,
    FedProx,
    FedTrimmedAvg,
    Krum,
    Strategy,
)

from slidefed.common.arrays import ArraySpec
from slidefed.common.audit.writer import AuditLog
from slidefed.common.run_config import RunConfig
from slidefed.server.validation import (
    WEIGHT_KEY,
    ValidatingMixin,
    train_metrics,
    weighted_metrics,
)


class SlidefedFedAvg(ValidatingMixin, FedAvg):
    """FedAvg with validation."""


class SlidefedFedProx(ValidatingMixin, FedProx):
    """FedProx with validation (sites add the proximal term)."""


class SlidefedFedAdam(ValidatingMixin, FedAdam):
    """FedAdam with validation; its moments are checkpointed."""


class SlidefedFedMedian(ValidatingMixin, FedMedian):
    """Coordinate-wise median with validation."""


class SlidefedFedTrimmedAvg(ValidatingMixin, FedTrimmedAvg):
    """Trimmed mean with validation."""


class SlidefedKrum(ValidatingMixin, Krum):
    """Krum with validation."""


def build_strategy(
    run: RunConfig,
    *,
    expected: list[ArraySpec],
    audit: AuditLog | None,
    run_id: int,
    round_offset: int = 0,
) -> Strategy:
    """The strategy named by ``run.strategy``, validating every reply."""
    common: dict[str, Any] = {
        "min_train_nodes": run.min_sites,
        "min_evaluate_nodes": run.min_sites,
        "min_available_nodes": run.min_sites,
        "weighted_by_key": WEIGHT_KEY,
        "train_metrics_aggr_fn": train_metrics,
        "evaluate_metrics_aggr_fn": weighted_metrics,
    }
    strategy: ValidatingMixin
    if run.strategy == "fedavg":
        strategy = SlidefedFedAvg(**common)
    elif run.strategy == "fedprox":
        strategy = SlidefedFedProx(**common, proximal_mu=run.proximal_mu)
    elif run.strategy == "fedadam":
        strategy = SlidefedFedAdam(**common, eta=run.server_lr, eta_l=run.lr)
    elif run.strategy == "fedmedian":
        strategy = SlidefedFedMedian(**common)
    elif run.strategy == "fedtrimmedavg":
        strategy = SlidefedFedTrimmedAvg(**common, beta=run.trimmed_beta)
    else:
        strategy = SlidefedKrum(**common, num_malicious_nodes=run.krum_malicious)
    strategy.setup(
        expected=expected,
        audit=audit,
        run_id=run_id,
        max_update_norm=run.max_update_norm,
        round_offset=round_offset,
    )
    return strategy


def strategy_state(strategy: object) -> dict[str, np.ndarray]:
    """Arrays a strategy carries between rounds (FedAdam moments)."""
    state: dict[str, np.ndarray] = {}
    for name in ("m_t", "v_t"):
        value = getattr(strategy, name, None)
        if value:
            state.update({f"{name}/{k}": np.asarray(v) for k, v in value.items()})
    return state


def load_strategy_state(strategy: object, state: dict[str, np.ndarray]) -> None:
    """Restore what :func:`strategy_state` saved."""
    for name in ("m_t", "v_t"):
        prefix = f"{name}/"
        part = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
        if part and hasattr(strategy, name):
            setattr(strategy, name, part)


__all__ = [
    "SlidefedFedAdam",
    "SlidefedFedAvg",
    "SlidefedFedMedian",
    "SlidefedFedProx",
    "SlidefedFedTrimmedAvg",
    "SlidefedKrum",
    "build_strategy",
    "load_strategy_state",
    "strategy_state",
]
