"""Local training: patient-level DP-SGD (Opacus, Poisson sampling), and plain training.

Plain training (no clipping, no noise) is the reference that benchmarks and demos
compare DP training against. Held-out evaluation is in
:mod:`slidefed.client.evaluation`.
"""

from __future__ import annotations

import logging
import math
import warnings
from collections.abc import Callable, Sequence
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict
from torch import nn
from torch.utils.data import DataLoader, Dataset

from slidefed.client.data.bags import PatientBag
from slidefed.client.privacy.dp_sgd import PoissonBatches, install_secure_noise
from slidefed.client.privacy.randomness import ReleaseRandomness, SiteRandomness

logger = logging.getLogger(__name__)

Item = tuple[torch.Tensor, torch.Tensor, torch.Tensor]
GradSampleMode = Literal["ew", "hooks"]
LocalOptimizer = Literal["adam", "sgd"]


IGNORE = -100  # label of padded tiles


class BagDataset(Dataset[Item]):
    """Samples as (features, mask, target) triples.

    A sample is a patient bag (``label``: one target per sample) or a group of
    labelled tiles (``labels``: one target per tile). Items have the same arity and
    dtypes as a collated batch, because Opacus builds its empty-batch fallback
    from ``dataset[0]``.
    """

    def __init__(self, bags: Sequence[Any]) -> None:
        self.bags = list(bags)

    def __len__(self) -> int:
        return len(self.bags)

    def __getitem__(self, i: int) -> Item:
        bag = self.bags[i]
        x = torch.from_numpy(np.ascontiguousarray(bag.features))
        labels = getattr(bag, "labels", None)
        y = torch.from_numpy(labels) if labels is not None else torch.tensor(bag.label)
        return x, torch.ones(len(x), dtype=torch.bool), y


def collate_bags(items: Sequence[Item]) -> Item:
    """Pad samples to the batch maximum and build the mask."""
    n = max(len(x) for x, _, _ in items)
    dim = items[0][0].shape[1]
    xs = torch.zeros(len(items), n, dim)
    mask = torch.zeros(len(items), n, dtype=torch.bool)
    for i, (x, _, _) in enumerate(items):
        xs[i, : len(x)] = x
        mask[i, : len(x)] = True
    if items[0][2].dim() == 0:
        return xs, mask, torch.stack([y for _, _, y in items])
    ys = torch.full((len(items), n), IGNORE, dtype=torch.long)
    for i, (_, _, y) in enumerate(items):
        ys[i, : len(y)] = y
    return xs, mask, ys


def sample_losses(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Loss of each sample: one prediction per bag, or the mean over its tiles."""
    if logits.dim() == 2:
        return F.cross_entropy(logits, y, reduction="none")
    per_tile = F.cross_entropy(
        logits.permute(0, 2, 1), y, ignore_index=IGNORE, reduction="none"
    )
    counts = (y != IGNORE).sum(dim=1).clamp(min=1)
    return per_tile.sum(dim=1) / counts


def batches_per_epoch(n_samples: int, batch_size: int) -> int:
    """Poisson batches per epoch; the sample rate is its inverse."""
    return max(1, math.ceil(n_samples / batch_size))


class TrainResult(BaseModel):
    """What one local DP round did."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    loss: float
    steps: int
    sample_rate: float
    n_samples: int
    opacus_epsilon: float | None
    """Opacus's own RDP epsilon of these steps alone; None when not asked for."""


def train_dp(
    model: nn.Module,
    bags: Sequence[PatientBag] | Sequence[Any],
    *,
    epochs: int,
    batch_size: int,
    lr: float,
    noise_multiplier: float,
    max_grad_norm: float,
    delta: float,
    randomness: ReleaseRandomness | None = None,
    seed: int | None = None,
    proximal_mu: float = 0.0,
    grad_sample_mode: GradSampleMode = "ew",
    optimizer: LocalOptimizer = "adam",
    report_epsilon: bool = True,
) -> TrainResult:
    """Train ``model`` in place with DP-SGD, one sample per patient.

    Every draw comes from ``randomness``, the site's secret streams for this
    release: Poisson batches and DP noise from ChaCha20 streams, torch's own
    generator (dropout) from a derived seed. ``seed`` instead gives *public*
    randomness, for benchmarks and tests only. An epoch is exactly
    :func:`batches_per_epoch` steps at sample rate ``1 / steps``, what the ledger
    charged. FedProx's proximal gradient is added after the noise.

    ``grad_sample_mode`` ``ew`` (torch expanded weights) computes each patient's
    gradient inside autograd and costs about 1.2x a plain step for ABMIL; ``hooks``
    computes them in extra backward hooks (about 1.6-1.9x). Both give the same
    per-patient gradients. ``ew`` cannot run a batch of zero patients, which
    Poisson sampling produces, so such a step is taken as a noise-only step.

    ``report_epsilon=False`` skips Opacus's own epsilon of these steps
    (``opacus_epsilon`` is then None). The site's ledger charges every round
    with its own accountant; Opacus's RDP conversion at fractional orders
    costs seconds per call, far more than a small round's training.
    """
    if randomness is None:
        if seed is None:
            raise ValueError("train_dp needs the site's randomness (or a public seed)")
        randomness = SiteRandomness.public(f"train:{seed}").for_release()
    torch.manual_seed(randomness.seed("torch"))
    steps_per_epoch = batches_per_epoch(len(bags), batch_size)
    sampler = PoissonBatches(
        len(bags), steps=steps_per_epoch, stream=randomness.stream("poisson")
    )
    dataset = BagDataset(bags)
    data = DataLoader(
        dataset, batch_sampler=sampler, collate_fn=_collate_or_empty(dataset)
    )
    anchor = [p.detach().clone() for p in model.parameters() if p.requires_grad]
    opt = _local_optimizer(model, optimizer, lr)
    model.train()
    engine, private, dp_opt = _make_private(
        model,
        opt,
        data,
        noise_multiplier=noise_multiplier,
        max_grad_norm=max_grad_norm,
        grad_sample_mode=grad_sample_mode,
    )
    install_secure_noise(
        dp_opt, randomness.stream("noise"), anchor=anchor, proximal_mu=proximal_mu
    )
    private.train()
    total, steps = _dp_steps(
        model, private, dp_opt, data, epochs=epochs, grad_sample_mode=grad_sample_mode
    )
    eps: float | None = None
    if report_epsilon:
        eps = float(engine.accountant.get_epsilon(delta)) if steps else 0.0
    # Detach Opacus from the caller's model so that it can be used again.
    private._close()
    return TrainResult(
        loss=total / max(steps, 1),
        steps=steps,
        sample_rate=sampler.sample_rate,
        n_samples=len(bags),
        opacus_epsilon=eps,
    )


def _local_optimizer(
    model: nn.Module, optimizer: LocalOptimizer, lr: float
) -> torch.optim.Optimizer:
    """Adam (one step moves a weight by about ``lr``) or plain SGD."""
    if optimizer == "sgd":
        return torch.optim.SGD(model.parameters(), lr=lr)
    return torch.optim.Adam(model.parameters(), lr=lr)


def _collate_or_empty(dataset: BagDataset) -> Callable[[Sequence[Item]], Item]:
    """Collate a Poisson batch; an empty one as zero-length tensors of the right kind."""
    x0, mask0, y0 = dataset[0]

    def collate(items: Sequence[Item]) -> Item:
        if items:
            return collate_bags(items)
        y_shape = (0,) if y0.dim() == 0 else (0, 1)
        return (
            torch.zeros(0, 1, x0.shape[1], dtype=x0.dtype),
            torch.zeros(0, 1, dtype=mask0.dtype),
            torch.zeros(y_shape, dtype=y0.dtype),
        )

    return collate


def _dp_steps(
    model: nn.Module,
    private: Any,
    dp_opt: Any,
    data: DataLoader[Item],
    *,
    epochs: int,
    grad_sample_mode: GradSampleMode,
) -> tuple[float, int]:
    """The DP steps of ``epochs`` passes over the Poisson batches.

    Returns the summed loss and the number of steps taken, empty batches included.
    """
    total, steps = 0.0, 0
    for _ in range(epochs):
        for x, mask, y in data:
            # Never skip an empty Poisson batch: the step adds noise and is counted.
            dp_opt.zero_grad()
            if len(y) == 0 and grad_sample_mode == "ew":
                _empty_step(model, dp_opt)
                steps += 1
                continue
            loss = _dp_loss(private, dp_opt, x, mask, y)
            loss.backward()  # type: ignore[no-untyped-call]
            dp_opt.step()
            total += float(loss.detach())
            steps += 1
    return total, steps


def _make_private(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    data: DataLoader[Item],
    *,
    noise_multiplier: float,
    max_grad_norm: float,
    grad_sample_mode: GradSampleMode,
) -> tuple[Any, Any, Any]:
    """Opacus's engine, private module and DP optimizer over our Poisson batches.

    Opacus's own sampler and its noise generator are not used (see
    :mod:`slidefed.client.privacy.dp_sgd`), so its "secure mode" is not needed.
    """
    from opacus import PrivacyEngine

    with warnings.catch_warnings():
        # Opacus warns that its own secure RNG is off: slidefed replaces both of
        # its random draws with the site's ChaCha20 streams.
        warnings.filterwarnings(
            "ignore", message="Secure RNG turned off", category=UserWarning
        )
        engine = PrivacyEngine(accountant="rdp", secure_mode=False)
        private, dp_opt, _ = engine.make_private(
            module=model,
            optimizer=optimizer,
            data_loader=data,
            noise_multiplier=noise_multiplier,
            max_grad_norm=max_grad_norm,
            poisson_sampling=False,
            grad_sample_mode=grad_sample_mode,
        )
    return engine, private, dp_opt


def _dp_loss(
    private: Any, dp_opt: Any, x: torch.Tensor, mask: torch.Tensor, y: torch.Tensor
) -> torch.Tensor:
    """Summed patient losses over the expected (not the drawn) batch size."""
    logits = private(x, mask)
    loss: torch.Tensor = sample_losses(logits, y).sum() / dp_opt.expected_batch_size
    return loss


def _empty_step(model: nn.Module, optimizer: Any) -> None:
    """A noise-only DP step for a batch of no patients (expanded-weights mode)."""
    for p in model.parameters():
        if p.requires_grad:
            p.grad_sample = torch.zeros(0, *p.shape)  # type: ignore[attr-defined]
    optimizer.step()


Loss = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def mean_sample_loss(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Mean of :func:`sample_losses` over the batch."""
    return sample_losses(logits, y).mean()


def plain_step(
    forward: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    optimizer: torch.optim.Optimizer,
    batch: Item,
    *,
    loss: Loss,
) -> None:
    """One optimiser step on a collated batch: zero_grad, forward, backward, step."""
    x, mask, y = batch
    optimizer.zero_grad()
    loss(forward(x, mask), y).backward()  # type: ignore[no-untyped-call]
    optimizer.step()


def train_plain(
    model: nn.Module,
    samples: Sequence[Any],
    *,
    epochs: int,
    batch_size: int,
    lr: float,
    seed: int,
    loss: Loss = mean_sample_loss,
) -> None:
    """Train ``model`` in place without DP: Adam over shuffled, padded batches.

    The reference that DP training is compared against (no clipping, no noise,
    every sample in every epoch). ``seed`` seeds torch's global generator, which
    shuffles the samples.
    """
    torch.manual_seed(seed)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    ds = BagDataset(samples)
    model.train()
    for _ in range(epochs):
        order = torch.randperm(len(ds)).tolist()
        for start in range(0, len(order), batch_size):
            batch = collate_bags([ds[i] for i in order[start : start + batch_size]])
            plain_step(model, optimizer, batch, loss=loss)


__all__ = [
    "BagDataset",
    "TrainResult",
    "batches_per_epoch",
    "collate_bags",
    "mean_sample_loss",
    "plain_step",
    "sample_losses",
    "train_dp",
    "train_plain",
]
