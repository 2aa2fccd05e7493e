"""The shared models: their input option and class count."""

import pytest
import torch

from slidefed.common.errors import ConfigError
from slidefed.common.model import build_model
from slidefed.common.run_config import RunConfig, parse_run_config


@pytest.mark.parametrize("task", ["abmil", "tiles"])
def test_log1p_inputs_are_the_raw_model_on_log_features(task: str) -> None:
    x = torch.rand(2, 5, 24) * 150
    mask = torch.ones(2, 5, dtype=torch.bool)
    raw = build_model(task, 24, seed=3, n_classes=3)
    logged = build_model(task, 24, seed=3, n_classes=3, inputs="log1p")
    # Same weights (the option has none), so the same state dict fits both sides.
    assert raw.state_dict().keys() == logged.state_dict().keys()
    torch.testing.assert_close(logged(x, mask), raw(torch.log1p(x), mask))
    assert not torch.allclose(logged(x, mask), raw(x, mask))


def test_abmil_predicts_the_classes_it_is_built_for() -> None:
    model = build_model("abmil", 24, seed=0, n_classes=4)
    out = model(torch.rand(3, 7, 24), torch.ones(3, 7, dtype=torch.bool))
    assert out.shape == (3, 4)


def test_run_config_cosine_schedule_from_flower_keys() -> None:
    run = parse_run_config(
        {"num-server-rounds": 4, "lr": 0.2, "lr-schedule": "cosine", "inputs": "log1p"}
    )
    assert run.inputs == "log1p"
    assert [round(run.lr_at(r), 6) for r in (1, 2, 3, 4)] == [
        0.2,
        round(0.2 * (1 + 2**-0.5) / 2, 6),
        0.1,
        round(0.2 * (1 - 2**-0.5) / 2, 6),
    ]
    assert RunConfig(lr=0.2).lr_at(4) == 0.2


def test_log_inputs_are_refused_for_embeddings_that_go_negative() -> None:
    with pytest.raises(ConfigError, match="inputs 'log1p' is for the hed"):
        parse_run_config({"encoder": "timm:vit_small_patch16_224", "inputs": "log1p"})
