"""Models shared by sites and the coordinator: gated-attention MIL (ABMIL)."""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from slidefed.common.encoder_names import KNOWN_DIMS

# How a model sees its features: as they are, or as log(1 + x) (fixed and
# data-independent, so it needs no statistics of anyone's data; features that are
# >= 0 with scales from 0.02 to 160, as the hed statistics, come out comparable).
Inputs = Literal["raw", "log1p"]


def _inputs(x: torch.Tensor, inputs: str) -> torch.Tensor:
    if inputs == "log1p":
        return torch.log1p(x.clamp_min(0.0))
    return x


class ABMIL(nn.Module):
    """Gated attention multiple-instance learning (Ilse et al., 2018).

    Input ``x`` is (B, N, D) tile features padded to the batch maximum, ``mask``
    (B, N) marks the real tiles. Every trainable layer keeps the batch dimension
    so that Opacus computes one gradient per bag, i.e. per patient.
    """

    def __init__(
        self,
        in_dim: int,
        *,
        hidden: int = 64,
        attention: int = 32,
        n_classes: int = 2,
        inputs: Inputs = "raw",
    ) -> None:
        super().__init__()
        self.inputs = inputs
        self.norm = nn.LayerNorm(in_dim)
        self.embed = nn.Linear(in_dim, hidden)
        self.att_v = nn.Linear(hidden, attention)
        self.att_u = nn.Linear(hidden, attention)
        self.att_w = nn.Linear(attention, 1)
        self.head = nn.Linear(hidden, n_classes)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Class logits (B, n_classes)."""
        h = F.relu(self.embed(self.norm(_inputs(x, self.inputs))))
        gate = torch.tanh(self.att_v(h)) * torch.sigmoid(self.att_u(h))
        scores = self.att_w(gate).squeeze(-1)
        scores = scores.masked_fill(~mask, float("-inf"))
        weights = torch.softmax(scores, dim=1)
        pooled = torch.bmm(weights.unsqueeze(1), h).squeeze(1)
        return self.head(pooled)  # type: ignore[no-any-return]


class TileClassifier(nn.Module):
    """A classifier of tile features; ``x`` is (B, N, D): a sample may hold many tiles.

    With patient ids a sample is all of a patient's tiles (the privacy unit is the
    patient); without, a sample is one tile (N = 1).
    """

    def __init__(
        self,
        in_dim: int,
        *,
        hidden: int = 64,
        n_classes: int = 2,
        inputs: Inputs = "raw",
    ) -> None:
        super().__init__()
        self.inputs = inputs
        self.norm = nn.LayerNorm(in_dim)
        self.hidden = nn.Linear(in_dim, hidden)
        self.head = nn.Linear(hidden, n_classes)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Logits (B, N, n_classes); padded tiles are masked by the loss."""
        del mask
        return self.head(F.relu(self.hidden(self.norm(_inputs(x, self.inputs)))))  # type: ignore[no-any-return]


# Feature length of each encoder whose name fixes it; sites and the coordinator
# agree on it (slidefed.common.encoder_names).
ENCODER_DIMS: dict[str, int] = dict(KNOWN_DIMS)


def feature_dim(encoder: str, declared: int = 0) -> int:
    """Feature length of ``encoder``: ``declared`` when given, else its known one."""
    if declared:
        return declared
    try:
        return ENCODER_DIMS[encoder]
    except KeyError:
        msg = (
            f"encoder={encoder!r} has no known feature length; set feature-dim "
            "in the run config"
        )
        raise ValueError(msg) from None


def build_model(
    task: str,
    in_dim: int,
    *,
    seed: int,
    n_classes: int = 2,
    inputs: Inputs = "raw",
) -> nn.Module:
    """The model of ``task`` with seeded initial weights."""
    gen_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        if task == "abmil":
            return ABMIL(in_dim, n_classes=n_classes, inputs=inputs)
        if task == "tiles":
            return TileClassifier(in_dim, n_classes=n_classes, inputs=inputs)
        msg = f"task={task!r} has no model; use 'abmil' or 'tiles'"
        raise ValueError(msg)
    finally:
        torch.random.set_rng_state(gen_state)


__all__ = [
    "ABMIL",
    "ENCODER_DIMS",
    "Inputs",
    "TileClassifier",
    "build_model",
    "feature_dim",
]
