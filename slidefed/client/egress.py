"""Egress guard: only the model's arrays and allow-listed scalar metrics leave."""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np
from numpy.typing import NDArray

from slidefed.common.arrays import ArraySpec, validate_update

# Scalar metrics that a reply may carry; everything else is blocked.
ALLOWED_METRICS = frozenset(
    {
        "num-examples",
        "train_loss",
        "eval_loss",
        "accuracy",
        "auc",
        "epsilon",
        "epsilon_round",
        "delta",
        "noise_multiplier",
        "sample_rate",
        "steps",
        "train_seconds",
    }
)


def check_egress(
    arrays: Mapping[str, NDArray[np.generic]] | None,
    metrics: Mapping[str, object],
    expected: list[ArraySpec] | None,
) -> str | None:
    """Why a reply may not leave the site, or None when it may."""
    if arrays is not None:
        if expected is None:
            return "arrays in a reply that must carry none"
        problem = validate_update(arrays, expected)
        if problem:
            return problem
    for key, value in metrics.items():
        if key not in ALLOWED_METRICS:
            return f"metric {key!r} is not on the allow-list"
        if isinstance(value, bool) or not isinstance(value, int | float):
            return f"metric {key!r} is not a number"
        if not math.isfinite(float(value)):
            return f"metric {key!r} is not finite"
    return None


__all__ = ["ALLOWED_METRICS", "check_egress"]
