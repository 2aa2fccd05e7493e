"""The ClientApp called directly with Messages (no runtime)."""

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from flwr.app import (
    Context,
    Message,
)

from slidefed.client.app import app
from slidefed.client.config import load_site_config
from slidefed.client.keys import ensure_site_keys
from slidefed.common.model import build_model
from slidefed.common.site_errors import SiteError, site_error_message
from slidefed.common.wire import PACKED
from slidefed.demo.synth import SynthSite
from tests.client.messages import instruction, node_context, reply_arrays
from tests.client.prepared import prepare_like_shared


def _message(kind: str, server_round: int) -> Message:
    return instruction(kind, server_round)


def _context(site_toml: Path, **run: Any) -> Context:
    return node_context(site_toml, **run)


@pytest.fixture
def site_toml(small_site: SynthSite, tmp_path: Path) -> Path:
    # A private copy of the site config with its own state, ledger and audit log.
    path = tmp_path / "site.toml"
    path.write_text(
        f'[site]\nname = "app-test"\nmanifest = "{small_site.manifest}"\n'
        f'slides_root = "{small_site.root}"\n[policy]\nmin_eval_patients = 5\n'
        "max_epsilon = 3.0\n"
    )
    ensure_site_keys(load_site_config(path))
    prepare_like_shared(path, small_site)  # rounds read prepared features only
    return path


def _events(site_toml: Path) -> list[dict[str, object]]:
    log = load_site_config(site_toml).audit_path
    return [json.loads(x) for x in log.read_text().splitlines()]


def test_train_releases_only_model_arrays_and_charges_first(site_toml: Path) -> None:
    reply = app(_message("train", 1), _context(site_toml, target_epsilon=2.0))
    assert not reply.has_error(), reply.error
    metrics = reply.content.metric_records["metrics"]
    # No loss and no timing: only the update's weight and the public accounting.
    assert set(metrics) == {
        "num-examples",
        "epsilon",
        "epsilon_round",
        "delta",
        "noise_multiplier",
    }
    assert 0 < float(metrics["epsilon"]) <= 2.0  # type: ignore[arg-type]
    record = reply.content.array_records["arrays"]
    assert list(record) == [PACKED]
    names = list(reply_arrays(reply))
    assert names == list(build_model("abmil", 24, seed=0).state_dict())
    events = [e["event"] for e in _events(site_toml)]
    assert events.index("round_charged") < events.index("update_released")


def _entry(reply: Message) -> tuple[int, str]:
    assert reply.has_error()
    return int(reply.error.code), str(reply.error.reason)


def _table(code: SiteError) -> tuple[int, str]:
    return int(code), site_error_message(code)


def test_round_breaking_policy_is_refused_and_audited(site_toml: Path) -> None:
    reply = app(_message("train", 1), _context(site_toml, max_grad_norm=50.0))
    assert _entry(reply) == (4109, "refused: clipping norm above the site's limit")
    # The rule and the fix stay at the site, in its audit log.
    last = _events(site_toml)[-1]
    assert last["event"] == "round_refused"
    assert "max_grad_norm" in str(last["data"]["reason"])  # type: ignore[index]
    assert "site error 4109" in str(last["data"]["reason"])  # type: ignore[index]


def test_run_over_budget_is_refused(site_toml: Path) -> None:
    first = app(_message("train", 1), _context(site_toml, target_epsilon=2.9))
    assert not first.has_error()
    ctx = _context(site_toml, target_epsilon=2.0)
    ctx.run_id = 43
    reply = app(_message("train", 1), ctx)
    assert _entry(reply) == _table(SiteError.BUDGET)
    last = _events(site_toml)[-1]
    assert "lower target-epsilon" in str(last["data"]["reason"])  # type: ignore[index]


def test_evaluation_below_minimum_patients_releases_no_metric(site_toml: Path) -> None:
    # The 10-patient site holds 4 test patients, below the policy's minimum of 5.
    reply = app(_message("evaluate", 1), _context(site_toml))
    assert _entry(reply) == _table(SiteError.TOO_FEW_EVAL_UNITS)
    assert not reply.has_content()
    assert _events(site_toml)[-1]["event"] == "metric_withheld"


def _largest_step(reply: Message) -> float:
    sent = build_model("abmil", 24, seed=0).state_dict()
    got = reply_arrays(reply)
    return max(
        float((torch.from_numpy(got[k]) - v).abs().max()) for k, v in sent.items()
    )


def test_cosine_schedule_shrinks_the_step_the_site_takes_by_round(
    site_toml: Path,
) -> None:
    # One Adam step per round (fresh moments) moves a weight by about lr, so the
    # largest change of the reply is the round's step size.
    run = {
        "target_epsilon": 2.5,
        "num_server_rounds": 3,
        "local_epochs": 1,
        "batch_size": 64,
        "lr": 0.01,
        "lr_schedule": "cosine",
    }
    first = app(_message("train", 1), _context(site_toml, **run))
    third = app(_message("train", 3), _context(site_toml, **run))
    assert not first.has_error()
    assert not third.has_error()
    assert _largest_step(first) == pytest.approx(0.01, rel=1e-3)
    # Round 3 of 3: lr * (1 + cos(2 pi / 3)) / 2 = lr / 4.
    assert _largest_step(third) == pytest.approx(0.0025, rel=1e-3)


def test_a_train_message_syncs_the_audit_log_once(
    site_toml: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import os

    synced: list[str] = []
    real = os.fsync

    def fsync(fd: int) -> None:
        synced.append(Path(f"/proc/self/fd/{fd}").readlink().name)
        real(fd)

    first = app(_message("train", 1), _context(site_toml, target_epsilon=2.0))
    monkeypatch.setattr(os, "fsync", fsync)
    reply = app(_message("train", 2), _context(site_toml, target_epsilon=2.0))

    assert not first.has_error(), first.error
    assert not reply.has_error(), reply.error
    # Charged and released: two records, one sync of the log (round 1 syncs
    # run_joined on its own, before the charge).
    events = [(e["event"], e["round"]) for e in _events(site_toml)]
    assert events[-2:] == [("round_charged", 2), ("update_released", 2)]
    assert synced.count("audit.jsonl") == 1
