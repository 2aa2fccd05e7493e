"""A small in-process federation for utility sweeps (no transport).

Three synthetic sites, prepared with the sites' own pipeline, train with the
ClientApp's training code and are averaged in process; :func:`held_out` scores a
model on every site's held-out patients (also used by ``bench robust``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from slidefed.client.config import SiteConfig, SiteSection, TilingSection
from slidefed.client.data.bags import PatientBag, build_bags
from slidefed.client.evaluation import auc_score, evaluate
from slidefed.client.prepare.pipeline import load_site_features, prepare_site
from slidefed.client.privacy.accountant import calibrate_noise
from slidefed.client.train import (
    BagDataset,
    batches_per_epoch,
    collate_bags,
    train_dp,
    train_plain,
)
from slidefed.common.model import build_model, feature_dim
from slidefed.demo.synth import synth_site

PLAN = [(30, 0.5), (24, 0.35), (20, 0.6)]


def synth_sites(root: Path, *, seed: int) -> list[list[PatientBag]]:
    """Three synthetic sites, prepared; their patient bags."""
    out = []
    for i, (patients, tumour) in enumerate(PLAN):
        folder = root / f"site-{i}"
        if not (folder / "manifest.csv").is_file():
            synth_site(
                folder,
                patients=patients,
                seed=seed * 100 + i,
                tumour_fraction=tumour,
                width=1536,
                height=1024,
            )
        config = SiteConfig(
            site=SiteSection(name=f"site-{i}"),
            tiling=TilingSection(workers=2),
            base_dir=folder,
        )
        prepare_site(config)  # cached after the first run: nothing is decoded again
        manifest, feats = load_site_features(config)
        out.append(build_bags(manifest.rows, feats, bag_size=256, seed=seed))
    return out


def run_inprocess_fedavg(
    sites: list[list[PatientBag]],
    *,
    epsilon: float,
    rounds: int,
    seed: int,
    epochs: int = 4,
    batch_size: int = 8,
    lr: float = 0.03,
) -> dict[str, Any]:
    """FedAvg over ``sites`` with DP at ``epsilon`` per site; held-out AUC."""
    torch.set_num_threads(1)
    global_model = build_model("abmil", feature_dim("hed"), seed=seed)
    sigmas = _noise_multipliers(
        sites, epsilon=epsilon, rounds=rounds, epochs=epochs, batch_size=batch_size
    )
    for rnd in range(rounds):
        states, weights = [], []
        for i, bags in enumerate(sites):
            train = [b for b in bags if b.split == "train"]
            local = build_model("abmil", feature_dim("hed"), seed=seed)
            local.load_state_dict(global_model.state_dict())
            _train_local(
                local,
                train,
                sigma=None if math.isinf(epsilon) else sigmas[i],
                epochs=epochs,
                batch_size=batch_size,
                lr=lr,
                seed=seed,
                rnd=rnd,
                i=i,
            )
            states.append(local.state_dict())
            weights.append(len(train))
        global_model.load_state_dict(weighted_average(states, weights))
    held = held_out(global_model, sites)
    pooled_auc = auc_score(np.asarray(held.labels), np.asarray(held.scores))
    n = sum(k for _, k in held.accuracies)
    return {
        "auc": round(pooled_auc, 4),
        "accuracy": round(sum(a * k for a, k in held.accuracies) / n, 4),
        "test_patients": n,
        "noise_multipliers": [round(s, 3) for s in sigmas],
    }


def _noise_multipliers(
    sites: list[list[PatientBag]],
    *,
    epsilon: float,
    rounds: int,
    epochs: int,
    batch_size: int,
) -> list[float]:
    """Noise multiplier of each site for ``epsilon`` over the whole run (0 at inf)."""
    sigmas = []
    for bags in sites:
        train = [b for b in bags if b.split == "train"]
        n_batches = batches_per_epoch(len(train), batch_size)
        if math.isinf(epsilon):
            sigmas.append(0.0)
            continue
        sigmas.append(
            calibrate_noise(
                [],
                sample_rate=1 / n_batches,
                steps=n_batches * epochs * rounds,
                target_epsilon=epsilon,
                delta=1 / (10 * len(train)),
            )
        )
    return sigmas


def _train_local(
    local: torch.nn.Module,
    train: list[PatientBag],
    *,
    sigma: float | None,
    epochs: int,
    batch_size: int,
    lr: float,
    seed: int,
    rnd: int,
    i: int,
) -> None:
    """Site ``i``'s training in round ``rnd``: DP with noise ``sigma``, plain if None."""
    if sigma is None:
        train_plain(
            local,
            train,
            epochs=epochs,
            batch_size=8,
            lr=lr,
            seed=seed + rnd,
            loss=torch.nn.functional.cross_entropy,
        )
    else:
        train_dp(
            local,
            train,
            epochs=epochs,
            batch_size=batch_size,
            lr=lr,
            noise_multiplier=sigma,
            max_grad_norm=1.0,
            delta=1 / (10 * len(train)),
            seed=seed * 1000 + rnd * 10 + i,
        )


def weighted_average(
    states: list[dict[str, torch.Tensor]], weights: list[int]
) -> dict[str, Any]:
    """FedAvg: the average of ``states`` weighted by ``weights``."""
    total = float(sum(weights))
    return {
        k: sum(w / total * s[k] for w, s in zip(weights, states, strict=True))
        for k in states[0]
    }


@dataclass(frozen=True)
class HeldOut:
    """Predictions of a model on every site's held-out patients.

    Attributes
    ----------
    labels : list of int
        The patients' labels, pooled over sites.
    scores : list of float
        The model's tumour probability for each of them.
    accuracies : list of tuple
        ``(accuracy, patients)`` of each site.
    """

    labels: list[int]
    scores: list[float]
    accuracies: list[tuple[float, int]]


def held_out(
    model: torch.nn.Module,
    sites: list[list[PatientBag]],
    *,
    nonfinite: float | None = None,
) -> HeldOut:
    """Evaluate ``model`` on each site's test patients; pooled labels and scores.

    A score that is not finite becomes ``nonfinite`` where that is given.
    """
    labels, scores, accs = [], [], []
    for bags in sites:
        test = [b for b in bags if b.split == "test"]
        result = evaluate(model, test)
        accs.append((result.accuracy, len(test)))
        with torch.no_grad():
            for bag in test:
                x, mask, _ = collate_bags([BagDataset([bag])[0]])
                score = float(torch.softmax(model(x, mask), 1)[0, 1])
                if nonfinite is not None and not math.isfinite(score):
                    score = nonfinite
                scores.append(score)
                labels.append(bag.label)
    return HeldOut(labels=labels, scores=scores, accuracies=accs)


__all__ = [
    "HeldOut",
    "held_out",
    "run_inprocess_fedavg",
    "synth_sites",
    "weighted_average",
]
