import numpy as np
import pytest
import torch

from slidefed.client.data.bags import PatientBag
from slidefed.client.evaluation import evaluate
from slidefed.client.train import (
    BagDataset,
    batches_per_epoch,
    collate_bags,
    mean_sample_loss,
    plain_step,
    train_dp,
    train_plain,
)
from slidefed.common.model import ABMIL


def _bags(n: int, seed: int = 0) -> list[PatientBag]:
    rng = np.random.default_rng(seed)
    bags = []
    for i in range(n):
        label = i % 2
        feats = rng.normal(size=(int(rng.integers(3, 40)), 8)).astype(np.float32)
        feats[:, 0] += 2.0 * label
        bags.append(
            PatientBag(patient_id=f"P{i}", label=label, split="train", features=feats)
        )
    return bags


def test_padded_per_sample_gradients_equal_each_bag_alone() -> None:
    from opacus import GradSampleModule

    torch.manual_seed(0)
    model = ABMIL(8, hidden=16, attention=8)
    bags = _bags(4)
    reference = []
    for bag in bags:
        x, mask, y = collate_bags([BagDataset([bag])[0]])
        model.zero_grad()
        loss = torch.nn.functional.cross_entropy(model(x, mask), y, reduction="sum")
        grads = torch.autograd.grad(loss, list(model.parameters()))
        reference.append(
            {n: g for (n, _), g in zip(model.named_parameters(), grads, strict=True)}
        )

    gsm = GradSampleModule(model, loss_reduction="sum")
    x, mask, y = collate_bags([BagDataset(bags)[i] for i in range(4)])
    gsm.zero_grad()
    loss = torch.nn.functional.cross_entropy(gsm(x, mask), y, reduction="sum")
    loss.backward()  # type: ignore[no-untyped-call]
    for name, param in model.named_parameters():
        for i in range(4):
            torch.testing.assert_close(
                param.grad_sample[i],  # type: ignore[attr-defined]
                reference[i][name],
                atol=1e-5,
                rtol=1e-4,
            )
    gsm._close()


def test_train_dp_counts_every_poisson_step_and_learns() -> None:
    model = ABMIL(8, hidden=16, attention=8)
    bags = _bags(24)
    before = evaluate(model, bags)
    result = train_dp(
        model,
        bags,
        epochs=5,
        batch_size=4,
        lr=0.05,
        noise_multiplier=0.5,
        max_grad_norm=1.0,
        delta=1e-3,
        seed=0,
    )
    assert result.steps == 5 * batches_per_epoch(24, 4)
    assert result.sample_rate == pytest.approx(1 / 6)
    assert result.opacus_epsilon is not None
    assert result.opacus_epsilon > 0
    after = evaluate(model, bags)
    assert after.loss < before.loss
    assert after.auc > 0.8
    # Opacus let go of the model: its state dict has no wrapper prefix.
    assert not any(k.startswith("_module") for k in model.state_dict())


def test_train_dp_survives_empty_batches() -> None:
    model = ABMIL(8, hidden=16, attention=8)
    result = train_dp(
        model,
        _bags(3),
        epochs=10,
        batch_size=1,
        lr=0.01,
        noise_multiplier=1.0,
        max_grad_norm=1.0,
        delta=1e-3,
        seed=1,
    )
    assert result.steps == 30
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_expanded_weights_and_hooks_train_the_same_model() -> None:
    models = []
    for mode in ("ew", "hooks"):
        torch.manual_seed(0)
        model = ABMIL(8, hidden=16, attention=8)
        # Few patients and batch 1: Poisson sampling draws empty batches too.
        result = train_dp(
            model,
            _bags(3),
            epochs=6,
            batch_size=1,
            lr=0.01,
            noise_multiplier=1.0,
            max_grad_norm=1.0,
            delta=1e-3,
            seed=4,
            grad_sample_mode=mode,
        )
        assert result.steps == 18
        models.append(model.state_dict())
    for key in models[0]:
        torch.testing.assert_close(models[0][key], models[1][key], atol=1e-5, rtol=1e-4)


def _distance(model: ABMIL, start: dict[str, torch.Tensor]) -> float:
    return sum(
        float(((p - start[k]) ** 2).sum()) for k, p in model.state_dict().items()
    )


def test_proximal_term_keeps_the_model_near_the_global_one() -> None:
    torch.manual_seed(0)
    start = ABMIL(8, hidden=16, attention=8).state_dict()
    distances = []
    for mu in (0.0, 50.0):
        model = ABMIL(8, hidden=16, attention=8)
        model.load_state_dict(start)
        train_dp(
            model,
            _bags(12),
            epochs=4,
            batch_size=4,
            lr=0.05,
            noise_multiplier=0.5,
            max_grad_norm=1.0,
            delta=1e-3,
            seed=2,
            proximal_mu=mu,
        )
        distances.append(_distance(model, start))
    assert distances[1] < distances[0]


def test_plain_step_is_zero_grad_forward_backward_step() -> None:
    torch.manual_seed(0)
    model = ABMIL(8, hidden=16, attention=8)
    twin = ABMIL(8, hidden=16, attention=8)
    twin.load_state_dict(model.state_dict())
    batch = collate_bags([BagDataset(_bags(4))[i] for i in range(4)])
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    twin_opt = torch.optim.SGD(twin.parameters(), lr=0.1)
    for _ in range(2):
        plain_step(model, opt, batch, loss=mean_sample_loss)
        x, mask, y = batch
        twin_opt.zero_grad()
        mean_sample_loss(twin(x, mask), y).backward()  # type: ignore[no-untyped-call]
        twin_opt.step()
    for key, value in model.state_dict().items():
        assert torch.equal(value, twin.state_dict()[key])


def test_train_plain_is_seeded_and_learns() -> None:
    bags = _bags(24)
    torch.manual_seed(0)
    start = ABMIL(8, hidden=16, attention=8).state_dict()
    models = [ABMIL(8, hidden=16, attention=8) for _ in range(2)]
    for model in models:
        model.load_state_dict(start)
    before = evaluate(models[0], bags)
    for model in models:
        train_plain(model, bags, epochs=5, batch_size=4, lr=0.05, seed=3)
    for key, value in models[0].state_dict().items():
        assert torch.equal(value, models[1].state_dict()[key])
    assert evaluate(models[0], bags).loss < before.loss
