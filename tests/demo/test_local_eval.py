"""The demo's exact evaluation scores a model as the run's config built it."""

from pathlib import Path
from typing import Literal

import numpy as np
import pytest
import torch
from safetensors.numpy import save_file

from slidefed.client.data.bags import PatientBag
from slidefed.common.model import build_model, feature_dim
from slidefed.common.run_config import RunConfig
from slidefed.demo import local_eval


def _bags(n: int) -> list[PatientBag]:
    rng = np.random.default_rng(3)
    return [
        PatientBag(
            patient_id=f"p{i}",
            label=i % 2,
            split="test",
            features=rng.gamma(2.0, 40.0, size=(5, 24)).astype(np.float32),
        )
        for i in range(n)
    ]


@pytest.mark.parametrize("inputs", ["raw", "log1p"])
def test_the_evaluated_model_sees_the_inputs_it_was_trained_on(
    tmp_path: Path, inputs: Literal["raw", "log1p"]
) -> None:
    run = RunConfig(inputs=inputs, seed=5)
    trained = build_model(run.task, feature_dim(run.encoder), seed=9, inputs=inputs)
    weights = tmp_path / "final.safetensors"
    save_file({k: v.numpy() for k, v in trained.state_dict().items()}, str(weights))
    bags = _bags(12)
    trained.eval()
    mask = torch.ones(1, 5, dtype=torch.bool)
    with torch.no_grad():
        expected = np.array(
            [
                float(
                    torch.softmax(trained(torch.from_numpy(b.features)[None], mask), 1)[
                        0, 1
                    ]
                )
                for b in bags
            ]
        )

    model = local_eval._load_model(weights, run)
    got = [local_eval._probability(model, b) for b in bags]

    np.testing.assert_allclose(got, expected, rtol=1e-5)
    out = local_eval._evaluate(weights, bags, run)
    labels = np.array([b.label for b in bags])
    assert out["accuracy"] == pytest.approx(np.mean((expected >= 0.5) == (labels == 1)))
