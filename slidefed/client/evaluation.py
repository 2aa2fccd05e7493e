"""Held-out evaluation at a site: per-patient loss, accuracy and AUC, per-tile F1."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from numpy.typing import NDArray
from pydantic import BaseModel, ConfigDict
from torch import nn

from slidefed.client.data.bags import PatientBag
from slidefed.client.train import BagDataset, collate_bags


def auc_score(labels: NDArray[np.int64], scores: NDArray[np.float64]) -> float:
    """Area under the ROC curve (Mann-Whitney, ties counted half); NaN if one class."""
    pos = scores[labels == 1]
    neg = scores[labels == 0]
    if len(pos) == 0 or len(neg) == 0:
        return float("nan")
    greater = (pos[:, None] > neg[None, :]).sum()
    ties = (pos[:, None] == neg[None, :]).sum()
    return float((greater + 0.5 * ties) / (len(pos) * len(neg)))


class EvalResult(BaseModel):
    """Held-out metrics of one site."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    loss: float
    accuracy: float
    auc: float
    n_samples: int


@torch.no_grad()
def evaluate(model: nn.Module, bags: Sequence[PatientBag]) -> EvalResult:
    """Loss, accuracy and AUC over ``bags``, one prediction per patient."""
    model.eval()
    losses, probs, labels = [], [], []
    for bag in bags:
        x, mask, y = collate_bags([BagDataset([bag])[0]])
        logits = model(x, mask)
        losses.append(float(F.cross_entropy(logits, y)))
        probs.append(float(torch.softmax(logits, dim=1)[0, 1]))
        labels.append(int(y[0]))
    lab = np.asarray(labels, dtype=np.int64)
    prob = np.asarray(probs, dtype=np.float64)
    return EvalResult(
        loss=float(np.mean(losses)),
        accuracy=float(np.mean((prob >= 0.5) == (lab == 1))),
        auc=auc_score(lab, prob),
        n_samples=len(bags),
    )


class TileEvalResult(BaseModel):
    """Held-out metrics of a tile classifier at one site."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    loss: float
    accuracy: float
    macro_f1: float
    class_accuracy: list[float]
    class_support: list[int]
    n_samples: int
    n_tiles: int


def f1_scores(
    confusion: NDArray[np.int64] | NDArray[np.float64],
) -> NDArray[np.float64]:
    """Per-class F1 from a confusion matrix (rows: truth); 0 where undefined."""
    tp = np.diag(confusion).astype(np.float64)
    fp = confusion.sum(axis=0) - tp
    fn = confusion.sum(axis=1) - tp
    denom = 2 * tp + fp + fn
    return np.asarray(np.divide(2 * tp, denom, out=np.zeros_like(tp), where=denom > 0))


@torch.no_grad()
def evaluate_tiles(
    model: nn.Module, samples: Sequence[Any], n_classes: int
) -> TileEvalResult:
    """Per-tile loss, accuracy, macro-F1 (over classes present) and per-class accuracy."""
    model.eval()
    confusion = np.zeros((n_classes, n_classes), dtype=np.int64)
    losses = []
    for sample in samples:
        x, mask, y = collate_bags([BagDataset([sample])[0]])
        logits = model(x, mask)[0]
        target = y[0]
        losses.append(float(F.cross_entropy(logits, target, reduction="sum")))
        for t, p in zip(target.tolist(), logits.argmax(dim=1).tolist(), strict=True):
            confusion[t, p] += 1
    support = confusion.sum(axis=1)
    present = support > 0
    per_class = np.divide(
        np.diag(confusion), support, out=np.zeros(n_classes), where=present
    )
    n_tiles = int(support.sum())
    return TileEvalResult(
        loss=float(np.sum(losses) / max(n_tiles, 1)),
        accuracy=float(np.trace(confusion) / max(n_tiles, 1)),
        macro_f1=float(f1_scores(confusion)[present].mean()) if present.any() else 0.0,
        class_accuracy=[float(v) for v in per_class],
        class_support=[int(v) for v in support],
        n_samples=len(samples),
        n_tiles=n_tiles,
    )


__all__ = [
    "EvalResult",
    "TileEvalResult",
    "auc_score",
    "evaluate",
    "evaluate_tiles",
    "f1_scores",
]
