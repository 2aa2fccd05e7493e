"""``slidefed bench robust``: held-out AUC when one site sends hostile updates.

Three honest synthetic sites and one attacker train with DP in process; each
round the coordinator's real strategy objects (with slidefed's reply validation)
aggregate the replies. Attacks on the attacker's update delta: ``scaled`` (x10),
``sign_flip`` (x-10), ``nan`` (all NaN).
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from slidefed.bench._federation import held_out
from slidefed.client.data.bags import PatientBag
from slidefed.client.evaluation import auc_score
from slidefed.client.train import train_dp
from slidefed.common.arrays import specs_of
from slidefed.common.model import build_model, feature_dim
from slidefed.common.run_config import RunConfig

ATTACKS = ("none", "scaled", "sign_flip", "nan")
STRATEGIES = ("fedavg", "fedmedian", "fedtrimmedavg", "krum")


def _message(node: int, arrays: dict[str, np.ndarray], weight: int) -> Any:
    from flwr.app import Array, ArrayRecord, Message, Metadata, MetricRecord, RecordDict

    meta = Metadata(
        run_id=1,
        message_id=f"m{node}",
        src_node_id=node,
        dst_node_id=1,
        reply_to_message_id="",
        group_id="1",
        created_at=time.time(),
        ttl=60.0,
        message_type="train",
    )
    content = RecordDict(
        {
            "arrays": ArrayRecord(
                {k: Array(np.ascontiguousarray(v)) for k, v in arrays.items()}
            ),
            "metrics": MetricRecord({"num-examples": weight}),
        }
    )
    return Message(content=content, metadata=meta)  # type: ignore[call-overload]


def _attack(
    kind: str, local: dict[str, np.ndarray], glob: dict[str, np.ndarray]
) -> dict[str, np.ndarray]:
    if kind == "scaled":
        return {k: glob[k] + 10 * (v - glob[k]) for k, v in local.items()}
    if kind == "sign_flip":
        return {k: glob[k] - 10 * (v - glob[k]) for k, v in local.items()}
    if kind == "nan":
        return {k: np.full_like(v, np.nan) for k, v in local.items()}
    return local


def run_attack(
    sites: list[list[PatientBag]],
    *,
    strategy: str,
    attack: str,
    rounds: int = 3,
    seed: int = 0,
) -> dict[str, Any]:
    """One federation with site 0's data also used by an attacker (node 99)."""
    from slidefed.server.strategy import build_strategy
    from slidefed.server.validation import ValidatingMixin

    torch.set_num_threads(1)
    model = build_model("abmil", feature_dim("hed"), seed=seed)
    glob = {k: v.detach().numpy().copy() for k, v in model.state_dict().items()}
    run = RunConfig(strategy=strategy, krum_malicious=1, trimmed_beta=0.25)
    strat = build_strategy(run, expected=specs_of(glob), audit=None, run_id=1)
    assert isinstance(strat, ValidatingMixin)  # noqa: S101 - for the type checker
    members = [*enumerate(sites), (99, sites[0])]
    for rnd in range(1, rounds + 1):
        replies = []
        for node, bags in members:
            train = [b for b in bags if b.split == "train"]
            train_seed = seed * 1000 + rnd * 100 + node
            arrays = _local_arrays(glob, train, seed=seed, train_seed=train_seed)
            if node == 99:
                arrays = _attack(attack, arrays, glob)
            replies.append(_message(node + 1, arrays, len(train)))
        strat.current_global = glob
        if hasattr(strat, "current_arrays"):
            strat.current_arrays = glob
        aggregated, _ = strat.aggregate_train(rnd, replies)
        if aggregated is not None:
            glob = {k: v.numpy().astype(np.float32) for k, v in aggregated.items()}
    model.load_state_dict({k: torch.from_numpy(v.copy()) for k, v in glob.items()})
    held = held_out(model, sites, nonfinite=0.5)
    rejected = sum(len(i.get("rejected", [])) for i in strat.round_info.values())
    auc = auc_score(np.asarray(held.labels), np.asarray(held.scores))
    return {
        "strategy": strategy,
        "attack": attack,
        "auc": round(auc, 4) if math.isfinite(auc) else None,
        "rejected_updates": rejected,
    }


def _local_arrays(
    glob: dict[str, np.ndarray],
    train: list[PatientBag],
    *,
    seed: int,
    train_seed: int,
) -> dict[str, np.ndarray]:
    """One site's DP training from the global arrays ``glob``; its new arrays."""
    local = build_model("abmil", feature_dim("hed"), seed=seed)
    local.load_state_dict({k: torch.from_numpy(v.copy()) for k, v in glob.items()})
    train_dp(
        local,
        train,
        epochs=4,
        batch_size=8,
        lr=0.03,
        noise_multiplier=1.0,
        max_grad_norm=1.0,
        delta=1e-3,
        seed=train_seed,
    )
    return {k: v.detach().numpy() for k, v in local.state_dict().items()}


def sweep(
    strategies: tuple[str, ...] = STRATEGIES,
    attacks: tuple[str, ...] = ATTACKS,
    *,
    rounds: int = 3,
    workdir: Path | None = None,
) -> list[dict[str, Any]]:
    """AUC for every strategy under every attack."""
    import tempfile

    from slidefed.bench._federation import synth_sites

    root = workdir or Path(tempfile.mkdtemp(prefix="slidefed-robust-"))
    sites = synth_sites(root, seed=0)
    return [
        run_attack(sites, strategy=s, attack=a, rounds=rounds)
        for s in strategies
        for a in attacks
    ]


__all__ = ["ATTACKS", "STRATEGIES", "run_attack", "sweep"]
