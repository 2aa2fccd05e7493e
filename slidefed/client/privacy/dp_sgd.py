"""The random parts of DP-SGD, drawn from the site's secret, on top of Opacus.

Opacus clips each patient's gradient and sums them; the two random parts of the
mechanism are replaced here so that they come from the site's own secure streams
(:mod:`slidefed.client.privacy.randomness`) instead of torch's global generator:

- :class:`PoissonBatches` draws the batches: each step takes each sample with
  probability ``q = 1 / steps_per_epoch``, and an epoch is *exactly*
  ``steps_per_epoch`` steps, the number that was charged. (Opacus's own sampler
  runs ``int(1 / q)`` steps, one fewer than charged when ``1 / q`` rounds down.)
- :func:`install_secure_noise` makes the DP optimizer add Gaussian noise from a
  ChaCha20 stream, and adds FedProx's proximal gradient ``mu (w - w_global)``
  *after* the noise: it depends on no patient, so adding it is post-processing and
  leaves the per-patient clipping bound and the privacy guarantee as they are.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import Sampler

from slidefed.client.privacy.randomness import SecureStream


class PoissonBatches(Sampler[list[int]]):
    """Exactly ``steps`` Poisson batches per pass, from a secure stream."""

    def __init__(self, n_samples: int, *, steps: int, stream: SecureStream) -> None:
        if n_samples < 1 or steps < 1:
            raise ValueError("Poisson batches need at least one sample and one step")
        self.n_samples = n_samples
        self.steps = steps
        self.sample_rate = 1.0 / steps
        self._stream = stream

    def __len__(self) -> int:
        return self.steps

    def __iter__(self) -> Iterator[list[int]]:
        for _ in range(self.steps):
            chosen = self._stream.bernoulli(self.n_samples, self.sample_rate)
            yield [int(i) for i in np.flatnonzero(chosen)]


def install_secure_noise(
    optimizer: Any,
    stream: SecureStream,
    *,
    anchor: Sequence[torch.Tensor] | None = None,
    proximal_mu: float = 0.0,
) -> None:
    """Make an Opacus ``DPOptimizer`` draw its noise from ``stream``.

    With ``proximal_mu > 0`` and the global parameters as ``anchor`` (in the order
    of ``optimizer.params``), the proximal gradient is added after the noised,
    scaled gradient.
    """
    from opacus.optimizers.optimizer import _check_processed_flag, _mark_as_processed

    def add_noise() -> None:
        std = optimizer.noise_multiplier * optimizer.max_grad_norm
        for p in optimizer.params:
            _check_processed_flag(p.summed_grad)
            draw = stream.normal(p.summed_grad.numel())
            noise = torch.from_numpy(draw).to(p.summed_grad.dtype) * std
            p.grad = (p.summed_grad + noise.view_as(p.summed_grad)).view_as(p)
            _mark_as_processed(p.summed_grad)

    optimizer.add_noise = add_noise
    if proximal_mu <= 0:
        return
    if anchor is None or len(anchor) != len(optimizer.params):
        raise ValueError("the proximal term needs one anchor per parameter")
    scale = optimizer.scale_grad

    def scale_then_pull() -> None:
        scale()
        for p, g in zip(optimizer.params, anchor, strict=True):
            p.grad = p.grad + proximal_mu * (p.detach() - g)

    optimizer.scale_grad = scale_then_pull


__all__ = ["PoissonBatches", "install_secure_noise"]
