"""The demo's own look at the model: every site's held-out patients, exact.

In a real federation only noised evaluation statistics leave a site (with the
default ``eval_noise_multiplier`` and a few dozen held-out patients, their AUC is
mostly noise). The demo plays every site on one machine, so it can also evaluate
the global model of every round, and the final one, on all held-out patients
exactly; it says so wherever it shows the figures. Nothing here is a release: it
runs after the federation, on the demo's own folders.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from slidefed.client.config import load_site_config
from slidefed.client.evaluation import auc_score
from slidefed.common.run_config import RunConfig

NOTE = (
    "exact, on the demo's own machine, which plays every site; "
    "the federation itself saw only noised statistics"
)


def _test_bags(site_configs: list[Path], run: RunConfig) -> list[Any]:
    from slidefed.client.site import Site

    bags: list[Any] = []
    for path in site_configs:
        site_bags, _ = Site(load_site_config(path)).bags(run)
        bags += [b for b in site_bags if b.split == "test"]
    return bags


def _load_model(weights: Path, run: RunConfig) -> Any:
    """The run's model (its task, encoder and inputs) with the weights of ``weights``."""
    import torch
    from safetensors.numpy import load_file

    from slidefed.common.model import build_model, feature_dim

    model = build_model(
        run.task, feature_dim(run.encoder), seed=run.seed, inputs=run.inputs
    )
    state = load_file(str(weights))
    model.load_state_dict({k: torch.from_numpy(v) for k, v in state.items()})
    return model


def _evaluate(weights: Path, bags: list[Any], run: RunConfig) -> dict[str, Any]:
    model = _load_model(weights, run)
    lab = np.asarray([int(b.label) for b in bags], dtype=np.int64)
    prob = np.asarray([_probability(model, b) for b in bags], dtype=np.float64)
    return {
        "patients": len(bags),
        "auc": auc_score(lab, prob),
        "accuracy": float(np.mean((prob >= 0.5) == (lab == 1))) if len(lab) else 0.0,
    }


def evaluate_final_model(
    run_dir: Path, site_configs: list[Path], run: RunConfig
) -> dict[str, Any]:
    """AUC and accuracy over every site's test patients, per round and final.

    Writes ``demo-local-evaluation.json``: the final model's figures, and
    ``rounds`` with each round's checkpoint (``checkpoints/round-N``).
    """
    bags = _test_bags(site_configs, run)
    rounds = []
    for k in range(1, run.num_server_rounds + 1):
        weights = run_dir / "checkpoints" / f"round-{k}.safetensors"
        if weights.is_file():
            rounds.append({"round": k, **_evaluate(weights, bags, run)})
    out = {
        **_evaluate(run_dir / "final.safetensors", bags, run),
        "rounds": rounds,
        "note": NOTE,
    }
    (run_dir / "demo-local-evaluation.json").write_text(json.dumps(out, indent=1))
    return out


def _probability(model: Any, bag: Any) -> float:
    import torch

    from slidefed.client.train import BagDataset, collate_bags

    with torch.no_grad():
        model.eval()
        x, mask, _ = collate_bags([BagDataset([bag])[0]])
        return float(torch.softmax(model(x, mask), dim=1)[0, 1])


__all__ = ["NOTE", "evaluate_final_model"]
