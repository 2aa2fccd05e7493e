"""A small in-process federation for utility sweeps (no transport)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import torch

from slidefed.client.config import SiteConfig, SiteSection, TilingSection
from slidefed.client.data.manifest import PatientBag, build_bags
from slidefed.client.prepare.pipeline import load_site_features
from slidefed.client.privacy.ledger import calibrate_noise
from slidefed.client.train import auc_score, batches_per_epoch, evaluate, train_dp
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
        manifest, feats = load_site_features(config)
        out.append(build_bags(manifest.rows, feats, bag_size=256, seed=seed))
    return out


def _train_plain(
    model: torch.nn.Module, bags: list[PatientBag], *, epochs: int, lr: float, seed: int
) -> None:
    from slidefed.client.train import BagDataset, collate_bags

    torch.manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    ds = BagDataset(bags)
    model.train()
    for _ in range(epochs):
        order = torch.randperm(len(ds)).tolist()
        for start in range(0, len(order), 8):
            x, mask, y = collate_bags([ds[i] for i in order[start : start + 8]])
            opt.zero_grad()
            torch.nn.functional.cross_entropy(model(x, mask), y).backward()  # type: ignore[no-untyped-call]
            opt.step()


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
    for rnd in range(rounds):
        states, weights = [], []
        for i, bags in enumerate(sites):
            train = [b for b in bags if b.split == "train"]
            local = build_model("abmil", feature_dim("hed"), seed=seed)
            local.load_state_dict(global_model.state_dict())
            if math.isinf(epsilon):
                _train_plain(local, train, epochs=epochs, lr=lr, seed=seed + rnd)
            else:
                train_dp(
                    local,
                    train,
                    epochs=epochs,
                    batch_size=batch_size,
                    lr=lr,
                    noise_multiplier=sigmas[i],
                    max_grad_norm=1.0,
                    delta=1 / (10 * len(train)),
                    seed=seed * 1000 + rnd * 10 + i,
                )
            states.append(local.state_dict())
            weights.append(len(train))
        total = float(sum(weights))
        global_model.load_state_dict(
            {
                k: sum(w / total * s[k] for w, s in zip(weights, states, strict=True))
                for k in states[0]
            }
        )
    labels, scores, accs = [], [], []
    for bags in sites:
        test = [b for b in bags if b.split == "test"]
        result = evaluate(global_model, test)
        accs.append((result.accuracy, len(test)))
        with torch.no_grad():
            for bag in test:
                from slidefed.client.train import BagDataset, collate_bags

                x, mask, _ = collate_bags([BagDataset([bag])[0]])
                scores.append(float(torch.softmax(global_model(x, mask), 1)[0, 1]))
                labels.append(bag.label)
    pooled_auc = auc_score(np.asarray(labels), np.asarray(scores))
    n = sum(k for _, k in accs)
    return {
        "auc": round(pooled_auc, 4),
        "accuracy": round(sum(a * k for a, k in accs) / n, 4),
        "test_patients": n,
        "noise_multipliers": [round(s, 3) for s in sigmas],
    }


__all__ = ["run_inprocess_fedavg", "synth_sites"]
