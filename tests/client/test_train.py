import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from slidefed.client.data.manifest import PatientBag
from slidefed.client.train import (
    BagDataset,
    auc_score,
    batches_per_epoch,
    collate_bags,
    evaluate,
    train_dp,
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


@settings(max_examples=30, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 1), st.floats(0, 1)), min_size=2, max_size=30))
def test_auc_matches_pairwise_definition(pairs: list[tuple[int, float]]) -> None:
    labels = np.asarray([p[0] for p in pairs], dtype=np.int64)
    scores = np.asarray([p[1] for p in pairs])
    pos = [s for lab, s in pairs if lab == 1]
    neg = [s for lab, s in pairs if lab == 0]
    got = auc_score(labels, scores)
    if not pos or not neg:
        assert np.isnan(got)
        return
    wins = sum((p > n) + 0.5 * (p == n) for p in pos for n in neg)
    assert got == pytest.approx(wins / (len(pos) * len(neg)))


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
