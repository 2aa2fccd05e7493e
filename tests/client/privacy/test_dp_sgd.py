"""The random parts of DP-SGD: exact Poisson steps, secure noise, FedProx after noise."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from slidefed.client.data.bags import PatientBag
from slidefed.client.privacy.dp_sgd import PoissonBatches, install_secure_noise
from slidefed.client.privacy.randomness import SiteRandomness
from slidefed.client.train import batches_per_epoch, train_dp
from slidefed.common.model import ABMIL


def _bags(n: int, seed: int = 0) -> list[PatientBag]:
    rng = np.random.default_rng(seed)
    return [
        PatientBag(
            patient_id=f"p{i}",
            features=rng.normal(size=(int(rng.integers(3, 9)), 8)).astype(np.float32),
            label=i % 2,
            split="train",
        )
        for i in range(n)
    ]


@settings(max_examples=200, deadline=None)
@given(n=st.integers(1, 2000), batch=st.sampled_from([4, 8, 16]))
def test_poisson_batches_run_exactly_the_charged_steps(n: int, batch: int) -> None:
    charged = batches_per_epoch(n, batch)  # what the ClientApp charges per epoch
    stream = SiteRandomness.public("steps").stream("poisson", n, batch)
    sampler = PoissonBatches(n, steps=charged, stream=stream)

    drawn = list(sampler)

    assert len(drawn) == charged == math.ceil(n / batch)
    assert sampler.sample_rate == 1.0 / charged
    assert all(0 <= i < n for b in drawn for i in b)


@pytest.mark.parametrize(("n", "batch"), [(744, 8), (93, 1), (10, 4)])
def test_training_takes_the_charged_steps(n: int, batch: int) -> None:
    # 744 patients at batch 8: 1 / (1 / 93) rounds down to 92 in Opacus's sampler.
    model = ABMIL(8, hidden=8, attention=4)
    result = train_dp(
        model,
        _bags(n),
        epochs=1,
        batch_size=batch,
        lr=0.01,
        noise_multiplier=1.0,
        max_grad_norm=1.0,
        delta=1e-5,
        seed=0,
    )
    assert result.steps == batches_per_epoch(n, batch)
    assert result.sample_rate == 1.0 / batches_per_epoch(n, batch)


def test_the_same_randomness_gives_the_same_bits_and_another_secret_does_not() -> None:
    def run(secret_label: str) -> dict[str, torch.Tensor]:
        torch.manual_seed(0)
        model = ABMIL(8, hidden=8, attention=4)
        randomness = SiteRandomness.public(secret_label).for_release("train", 1, 1)
        train_dp(
            model,
            _bags(20),
            epochs=2,
            batch_size=4,
            lr=0.05,
            noise_multiplier=1.0,
            max_grad_norm=1.0,
            delta=1e-5,
            randomness=randomness,
        )
        return model.state_dict()

    a, b, c = run("site-a"), run("site-a"), run("site-b")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)


def test_fedprox_pull_is_added_after_the_noise_and_clipping_still_bounds() -> None:
    from opacus import GradSampleModule
    from opacus.optimizers import DPOptimizer

    torch.manual_seed(0)
    model = ABMIL(8, hidden=8, attention=4)
    anchor = [p.detach().clone() for p in model.parameters()]
    with torch.no_grad():
        for p in model.parameters():  # move away from the global model
            p.add_(0.5)
    module = GradSampleModule(model, batch_first=True, loss_reduction="mean")
    sgd = torch.optim.SGD(model.parameters(), lr=0.0)
    opt = DPOptimizer(
        sgd, noise_multiplier=0.0, max_grad_norm=1.0, expected_batch_size=4
    )
    mu = 3.0
    install_secure_noise(
        opt, SiteRandomness.public("prox").stream("n"), anchor=anchor, proximal_mu=mu
    )
    from slidefed.client.train import BagDataset, collate_bags, sample_losses

    x, mask, y = collate_bags([BagDataset(_bags(4))[i] for i in range(4)])
    loss = sample_losses(module(x, mask), y).sum() * 100  # large gradients
    loss.backward()  # type: ignore[no-untyped-call]
    opt.pre_step()

    pulled = torch.cat([(p.grad - 0).flatten() for p in opt.params])
    pull = torch.cat(
        [
            (mu * (p.detach() - g)).flatten()
            for p, g in zip(opt.params, anchor, strict=True)
        ]
    )
    data_part = pulled - pull
    # Four clipped per-patient gradients (norm <= 1 each), summed, over 4.
    assert float(data_part.norm()) <= 1.0 + 1e-5
    assert float(pull.norm()) > 1.0  # and the pull did reach the update
    module._close()
