import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from slidefed.client.data.bags import PatientBag
from slidefed.client.evaluation import auc_score, evaluate, evaluate_tiles, f1_scores
from slidefed.common.model import ABMIL


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


def test_f1_scores_are_zero_where_a_class_is_never_seen() -> None:
    confusion = np.array([[3, 1, 0], [0, 2, 0], [0, 0, 0]], dtype=np.int64)
    f1 = f1_scores(confusion)
    assert f1[0] == pytest.approx(2 * 3 / (2 * 3 + 0 + 1))
    assert f1[1] == pytest.approx(2 * 2 / (2 * 2 + 1 + 0))
    assert f1[2] == 0.0


def test_evaluate_scores_one_prediction_per_patient() -> None:
    torch.manual_seed(0)
    model = ABMIL(4, hidden=8, attention=4)
    rng = np.random.default_rng(0)
    bags = [
        PatientBag(
            patient_id=f"P{i}",
            label=i % 2,
            split="test",
            features=rng.normal(size=(5, 4)).astype(np.float32),
        )
        for i in range(6)
    ]
    result = evaluate(model, bags)
    assert result.n_samples == 6
    assert 0.0 <= result.accuracy <= 1.0
    assert 0.0 <= result.auc <= 1.0
    assert result.loss > 0


def test_evaluate_tiles_counts_every_tile() -> None:
    from types import SimpleNamespace

    from slidefed.common.model import TileClassifier

    torch.manual_seed(0)
    model = TileClassifier(4, n_classes=3)
    rng = np.random.default_rng(1)
    samples = [
        SimpleNamespace(
            features=rng.normal(size=(n, 4)).astype(np.float32),
            labels=rng.integers(0, 3, size=n).astype(np.int64),
        )
        for n in (1, 3, 2)
    ]
    result = evaluate_tiles(model, samples, 3)
    assert result.n_samples == 3
    assert result.n_tiles == 6
    assert sum(result.class_support) == 6
