"""The demo's own look at the final model: every site's held-out patients, exact.

In a real federation only noised evaluation statistics leave a site. The demo
plays every site on one machine, so it can also evaluate the final model on all
held-out patients exactly; it says so wherever it shows the figure. Nothing here
is a release: it runs after the federation, on the demo's own folders.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from slidefed.client.config import load_site_config
from slidefed.client.evaluation import auc_score
from slidefed.common.run_config import RunConfig


def evaluate_final_model(
    run_dir: Path, site_configs: list[Path], run: RunConfig
) -> dict[str, Any]:
    """AUC and accuracy of ``final.safetensors`` over every site's test patients."""
    import torch
    from safetensors.numpy import load_file

    from slidefed.client.site import Site
    from slidefed.common.model import build_model, feature_dim

    model = build_model(
        run.task,
        feature_dim(run.encoder, run.feature_dim),
        seed=run.seed,
        inputs=run.inputs,
    )
    state = load_file(str(run_dir / "final.safetensors"))
    model.load_state_dict({k: torch.from_numpy(v) for k, v in state.items()})
    labels: list[int] = []
    probs: list[float] = []
    for path in site_configs:
        bags, _ = Site(load_site_config(path)).bags(run)
        test = [b for b in bags if b.split == "test"]
        for bag in test:
            labels.append(int(bag.label))
            probs.append(_probability(model, bag))
    lab = np.asarray(labels, dtype=np.int64)
    prob = np.asarray(probs, dtype=np.float64)
    out = {
        "patients": len(labels),
        "auc": auc_score(lab, prob),
        "accuracy": float(np.mean((prob >= 0.5) == (lab == 1))) if len(lab) else 0.0,
        "note": "exact, on the demo's own machine, which plays every site; "
        "the federation itself saw only noised statistics",
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


__all__ = ["evaluate_final_model"]
