"""Held-out metrics as a DP release: noised statistics, and metrics computed from them.

An evaluation answers a model the coordinator chose, so its exact answer is a
query on the held-out patients: crafted models can read labels and features out of
exact metrics, however large the cohort. So a site releases only statistics to
which each held-out unit contributes a bounded amount, with Gaussian noise from
its own secure stream (the Gaussian mechanism, charged to the ledger like
training), and computes every metric from those noised statistics:

- ABMIL (one prediction per patient): the histogram of predicted probability over
  :data:`BINS` bins, per true label. One patient adds 1 to one cell, so the L2
  sensitivity is 1. Accuracy (threshold 0.5) and AUC (ties within a bin counted
  half) come from the noised histogram, clipped at 0.
- Tiles: the confusion matrix in which each unit (patient, group or tile) adds its
  tiles' row-normalised share, total mass 1 (L2 sensitivity at most 1). Accuracy,
  macro-F1 and per-class accuracy come from it; a class's figure is released only
  where its noised support reaches the policy's minimum.

Nothing exact leaves: not the loss, not a count. ``num-examples`` is the noised
total, rounded.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from numpy.typing import NDArray

from slidefed.client.evaluation import f1_scores
from slidefed.client.privacy.randomness import SecureStream
from slidefed.client.train import BagDataset, collate_bags

BINS = 10
"""Probability bins of the released histogram (0.5 is a bin edge)."""


@torch.no_grad()
def _probabilities(model: torch.nn.Module, bags: Sequence[Any]) -> list[float]:
    model.eval()
    out = []
    for bag in bags:
        x, mask, _ = collate_bags([BagDataset([bag])[0]])
        out.append(float(torch.softmax(model(x, mask), dim=1)[0, 1]))
    return out


def score_histogram(model: torch.nn.Module, bags: Sequence[Any]) -> NDArray[np.float64]:
    """Exact counts ``[label, bin]`` of the held-out patients (stays on site)."""
    hist = np.zeros((2, BINS), dtype=np.float64)
    for bag, prob in zip(bags, _probabilities(model, bags), strict=True):
        hist[int(bag.label), min(int(prob * BINS), BINS - 1)] += 1.0
    return hist


@torch.no_grad()
def unit_confusion(
    model: torch.nn.Module, samples: Sequence[Any], n_classes: int
) -> NDArray[np.float64]:
    """Confusion ``[truth, prediction]`` where each unit adds a total of 1."""
    model.eval()
    confusion = np.zeros((n_classes, n_classes), dtype=np.float64)
    for sample in samples:
        x, mask, y = collate_bags([BagDataset([sample])[0]])
        pred = model(x, mask)[0].argmax(dim=1).tolist()
        truth = y[0].tolist()
        share = 1.0 / max(len(truth), 1)
        for t, p in zip(truth, pred, strict=True):
            confusion[t, p] += share
    return confusion


def add_noise(
    stats: NDArray[np.float64], stream: SecureStream, noise_multiplier: float
) -> NDArray[np.float64]:
    """The Gaussian mechanism at L2 sensitivity 1."""
    noise = stream.normal(stats.size).reshape(stats.shape)
    return np.asarray(stats + noise_multiplier * noise, dtype=np.float64)


def histogram_metrics(noised: NDArray[np.float64]) -> dict[str, float | int]:
    """Released values of a noised score histogram ``[label, bin]``."""
    hist = np.clip(noised, 0.0, None)
    neg, pos = hist[0], hist[1]
    total = float(hist.sum())
    half = BINS // 2
    correct = float(pos[half:].sum() + neg[:half].sum())
    metrics: dict[str, float | int] = {
        "num-examples": max(1, round(total)),
        "accuracy": correct / total if total > 0 else 0.5,
    }
    n_pos, n_neg = float(pos.sum()), float(neg.sum())
    if n_pos > 0 and n_neg > 0:
        below = np.concatenate([[0.0], np.cumsum(neg)[:-1]])
        metrics["auc"] = float((pos * (below + 0.5 * neg)).sum() / (n_pos * n_neg))
    for label, row in (("neg", noised[0]), ("pos", noised[1])):
        for b, value in enumerate(row):
            metrics[f"{label}_bin_{b:02d}"] = float(value)
    return metrics


def confusion_metrics(
    noised: NDArray[np.float64], *, min_support: float
) -> dict[str, float | int]:
    """Released values of a noised unit confusion matrix."""
    confusion = np.clip(noised, 0.0, None)
    total = float(confusion.sum())
    support = confusion.sum(axis=1)
    present = support >= min_support
    metrics: dict[str, float | int] = {
        "num-examples": max(1, round(total)),
        "accuracy": float(np.trace(confusion) / total) if total > 0 else 0.0,
        "macro_f1": float(f1_scores(confusion)[present].mean())
        if present.any()
        else 0.0,
    }
    for i in np.flatnonzero(present):
        metrics[f"acc_class_{i:02d}"] = float(confusion[i, i] / support[i])
    return metrics


__all__ = [
    "BINS",
    "add_noise",
    "confusion_metrics",
    "histogram_metrics",
    "score_histogram",
    "unit_confusion",
]
