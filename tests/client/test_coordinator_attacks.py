"""A curious or hostile coordinator, played through the Message API.

Every test here sends Flower Messages to the site's ClientApp, as a coordinator
would (its own models, run configs, seeds and replays), and reads only what comes
back and what the site's own tools show; none calls the site's internals.
"""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from flwr.app import (
    Context,
    Message,
)

from slidefed.cli import main
from slidefed.client.app import app
from slidefed.client.config import load_site_config
from slidefed.client.keys import ensure_site_keys
from slidefed.common.site_errors import (
    SITE_ERRORS,
    SiteError,
    is_site_error,
    site_error_message,
)
from slidefed.demo.synth import SynthSite
from tests.client.messages import (
    instruction,
    model_arrays,
    node_context,
    reply_arrays,
)
from tests.client.prepared import prepare_like_shared


def _message(
    kind: str, server_round: int, *, seed: int = 0, run_id: int = 42
) -> Message:
    return instruction(kind, server_round, seed=seed, run_id=run_id)


def _context(site_toml: Path, *, run_id: int = 42, **run: Any) -> Context:
    run.setdefault("run_name", "attack")
    run.setdefault("num_server_rounds", 3)
    return node_context(site_toml, run_id=run_id, **run)


def _site(
    folder: Path,
    small_site: SynthSite,
    *,
    manifest: Path | None = None,
    extra: str = "",
) -> Path:
    """A site of the shared synthetic slides, with its own state and `site init`."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "site.toml"
    path.write_text(
        f'[site]\nname = "hospital-x"\nmanifest = "{manifest or small_site.manifest}"\n'
        f'slides_root = "{small_site.root}"\nstate_dir = "{folder / "state"}"\n'
        f'audit_dir = "{folder / "audit"}"\n'
        "[policy]\nmax_epsilon = 20.0\nmin_eval_patients = 1\n" + extra
    )
    ensure_site_keys(load_site_config(path))
    # Rounds read prepared features only; from a copy of the shared slides' cache.
    prepare_like_shared(path, small_site)
    return path


def _audit(site_toml: Path) -> list[dict[str, Any]]:
    path = load_site_config(site_toml).audit_path
    return [json.loads(x) for x in path.read_text().splitlines()]


def _arrays(reply: Message) -> dict[str, np.ndarray]:
    return reply_arrays(reply)


def _budget(site_toml: Path, capsys: pytest.CaptureFixture[str]) -> dict[str, Any]:
    capsys.readouterr()
    assert main(["site", "budget", "--config", str(site_toml), "--json"]) == 0
    return json.loads(capsys.readouterr().out)  # type: ignore[no-any-return]


def _same(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> bool:
    return a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


def test_two_sites_with_their_own_secret_release_different_bits(
    small_site: SynthSite, tmp_path: Path
) -> None:
    one = _site(tmp_path / "one", small_site)
    two = _site(tmp_path / "two", small_site)

    a = _arrays(app(_message("train", 1), _context(one, target_epsilon=4.0)))
    b = _arrays(app(_message("train", 1), _context(two, target_epsilon=4.0)))

    assert not _same(a, b)


def test_the_same_request_twice_gives_the_same_bits_charged_once(
    small_site: SynthSite, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    site = _site(tmp_path / "site", small_site)
    first = _arrays(app(_message("train", 1), _context(site, target_epsilon=4.0)))
    spent = _budget(site, capsys)["epsilon_spent"]

    again = _arrays(app(_message("train", 1), _context(site, target_epsilon=4.0)))

    assert _same(first, again)
    assert _budget(site, capsys)["epsilon_spent"] == spent


@pytest.mark.parametrize(
    ("section", "change"),
    [
        ("[policy]\n", "max_bag_size = 16\n"),
        ("[policy]\n", "min_noise_multiplier = 0.9\n"),
    ],
    ids=["bags", "policy"],
)
def test_a_replay_after_the_data_or_policy_changed_is_a_new_charged_release(
    small_site: SynthSite,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    section: str,
    change: str,
) -> None:
    site = _site(tmp_path / "site", small_site)
    first = _arrays(app(_message("train", 1), _context(site, target_epsilon=4.0)))
    spent = _budget(site, capsys)["epsilon_spent"]
    site.write_text(site.read_text().replace(section, section + change))

    again = app(_message("train", 1), _context(site, target_epsilon=4.0))

    if again.has_error():  # refused is acceptable: nothing new left for free
        assert is_site_error(again.error.code, again.error.reason)
        assert again.error.code == SiteError.BUDGET
    else:
        assert not _same(first, _arrays(again))
        assert _budget(site, capsys)["epsilon_spent"] > spent


def test_a_replay_after_the_tiling_changed_is_charged(
    small_site: SynthSite, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    site = _site(tmp_path / "site", small_site)
    app(_message("train", 1), _context(site, target_epsilon=4.0))
    spent = _budget(site, capsys)["epsilon_spent"]
    site.write_text(site.read_text() + "[tiling]\ntile_size = 128\n")  # new features

    again = app(_message("train", 1), _context(site, target_epsilon=4.0))

    assert again.has_error() or _budget(site, capsys)["epsilon_spent"] > spent


def test_a_replay_after_the_manifest_changed_is_charged(
    small_site: SynthSite, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rows = list(csv.DictReader(small_site.manifest.read_text().splitlines()))
    manifest = tmp_path / "manifest.csv"

    def write(selected: list[dict[str, str]]) -> None:
        with manifest.open("w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(selected)

    write(rows)
    site = _site(tmp_path / "site", small_site, manifest=manifest)
    app(_message("train", 1), _context(site, target_epsilon=4.0))
    spent = _budget(site, capsys)["epsilon_spent"]
    train_rows = [r for r in rows if r["split"] == "train"]
    write([r for r in rows if r is not train_rows[0]])  # one training slide fewer

    again = app(_message("train", 1), _context(site, target_epsilon=4.0))

    assert again.has_error() or _budget(site, capsys)["epsilon_spent"] > spent


@pytest.mark.parametrize("damage", ["deleted", "rolled back"])
def test_a_deleted_or_rolled_back_ledger_stops_training(
    small_site: SynthSite, tmp_path: Path, damage: str
) -> None:
    site = _site(tmp_path / "site", small_site)
    ledger = load_site_config(site).ledger_path
    app(_message("train", 1), _context(site, target_epsilon=6.0))
    older = ledger.read_bytes()
    app(_message("train", 2), _context(site, target_epsilon=6.0))
    if damage == "deleted":
        ledger.unlink()
    else:
        ledger.write_bytes(older)

    reply = app(_message("train", 3), _context(site, target_epsilon=6.0))

    assert (reply.error.code, reply.error.reason) == (
        SiteError.LEDGER_CHECK_FAILED,
        "refused: ledger check failed",
    )
    assert "ledger" in _audit(site)[-1]["data"]["reason"]


def test_flipping_a_training_label_changes_only_the_dp_protected_arrays(
    small_site: SynthSite, tmp_path: Path
) -> None:
    rows = list(csv.DictReader(small_site.manifest.read_text().splitlines()))
    flipped = tmp_path / "flipped.csv"
    target = next(r for r in rows if r["split"] == "train")["patient_id"]
    with flipped.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        for row in rows:
            if row["patient_id"] == target:
                row = {**row, "label": str(1 - int(row["label"]))}
            writer.writerow(row)
    sites = [
        _site(tmp_path / "a", small_site),
        _site(tmp_path / "b", small_site, manifest=flipped),
    ]
    # The same secret at both: the only difference is the one label.
    secret = load_site_config(sites[0]).state_dir / "keys" / "rng_secret"
    shutil.copy(secret, load_site_config(sites[1]).state_dir / "keys" / "rng_secret")

    replies = [
        app(_message("train", 1), _context(s, target_epsilon=4.0)) for s in sites
    ]

    metrics = [dict(r.content.metric_records["metrics"]) for r in replies]
    assert metrics[0] == metrics[1]  # every non-DP value is independent of the label
    arrays = [_arrays(r) for r in replies]
    assert arrays[0].keys() == arrays[1].keys()
    assert all(arrays[0][k].shape == arrays[1][k].shape for k in arrays[0])
    assert set(replies[0].content) == set(replies[1].content)


def test_crafted_evaluations_are_charged_each_and_capped(
    small_site: SynthSite, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    site = _site(tmp_path / "site", small_site, extra="max_evaluations_per_run = 5\n")
    answered, refused, spends = 0, 0, []
    for i in range(100):
        # A different crafted model each time, as an attacker probing labels would.
        reply = app(
            _message("evaluate", 1 + i % 3, seed=i), _context(site, target_epsilon=4.0)
        )
        if reply.has_error():
            assert (reply.error.code, reply.error.reason) == (
                SiteError.EVALUATION_CAP,
                site_error_message(SiteError.EVALUATION_CAP),
            )
            refused += 1
            continue
        answered += 1
        spends.append(_budget(site, capsys)["epsilon_spent"])
        metrics = reply.content.metric_records["metrics"]
        assert "accuracy" in metrics
        assert "eval_loss" not in metrics

    assert answered == 3  # one per round: max_evaluations_per_round = 1
    assert refused == 97
    assert spends == sorted(spends)
    assert len(set(spends)) == len(spends)  # every answer was charged
    budget = _budget(site, capsys)
    assert budget["evaluations"] == answered
    assert budget["epsilon_evaluations"] > 0


def test_site_init_makes_a_private_secret_and_a_site_without_one_trains_nothing(
    small_site: SynthSite, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    folder = tmp_path / "fresh"
    assert main(["site", "init", str(folder), "--name", "hospital-y"]) == 0
    secret = folder / "state" / "keys" / "rng_secret"
    assert secret.stat().st_mode & 0o777 == 0o600
    assert len(secret.read_bytes()) == 32

    site = _site(tmp_path / "site", small_site)
    (load_site_config(site).state_dir / "keys" / "rng_secret").unlink()
    reply = app(_message("train", 1), _context(site, target_epsilon=4.0))

    assert (reply.error.code, reply.error.reason) == (
        SiteError.SITE_NOT_PREPARED,
        "refused: site not prepared",
    )
    # Why stays at the site, in its log.
    assert "randomness secret is missing" in caplog.text


# ------------------------------------------------ the model it sends the site
def _refused_with(reply: Message, code: SiteError) -> None:
    assert reply.has_error()
    assert (reply.error.code, reply.error.reason) == (int(code), SITE_ERRORS[code])


@pytest.mark.parametrize("kind", ["train", "evaluate"])
def test_a_model_over_the_sites_limit_is_refused_before_anything_is_charged(
    small_site: SynthSite,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    kind: str,
) -> None:
    # The site's own model is about 24 KB; an extra 1 MiB array rides along.
    site = _site(tmp_path / "site", small_site, extra="max_update_bytes = 262144\n")
    big = {**model_arrays(), "exfil": np.zeros(1 << 18, dtype=np.float32)}

    reply = app(instruction(kind, 1, arrays=big), _context(site, target_epsilon=4.0))

    _refused_with(reply, SiteError.MODEL_TOO_LARGE)
    last = _audit(site)[-1]
    assert last["event"] in {"round_refused", "evaluation_refused"}
    assert "max_update_bytes=262144" in last["data"]["reason"]
    assert _budget(site, capsys)["epsilon_spent"] == 0


def test_a_policy_limit_below_the_model_refuses_the_model_itself(
    small_site: SynthSite, tmp_path: Path
) -> None:
    site = _site(tmp_path / "site", small_site, extra="max_update_bytes = 4096\n")
    reply = app(instruction("train", 1), _context(site, target_epsilon=4.0))
    _refused_with(reply, SiteError.MODEL_TOO_LARGE)


def test_a_run_config_asking_the_site_for_a_huge_model_is_refused(
    small_site: SynthSite, tmp_path: Path
) -> None:
    # 1000 labels make the site's own tile classifier about 270 KB: over the limit,
    # whatever the coordinator actually sends.
    site = _site(tmp_path / "site", small_site, extra="max_update_bytes = 100000\n")
    labels = ",".join(f"c{i}" for i in range(1000))
    ctx = _context(site, task="tiles", labels=labels, target_epsilon=4.0)
    _refused_with(app(instruction("train", 1), ctx), SiteError.MODEL_TOO_LARGE)


@pytest.mark.parametrize(
    "change",
    ["extra", "missing", "shape", "order"],
)
def test_a_model_unlike_the_sites_own_is_refused(
    small_site: SynthSite,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    change: str,
) -> None:
    site = _site(tmp_path / "site", small_site)
    arrays = model_arrays()
    if change == "extra":
        arrays["exfil"] = np.zeros(16, dtype=np.float32)
    elif change == "missing":
        arrays.pop("head.bias")
    elif change == "shape":
        arrays["head.bias"] = np.zeros(3, dtype=np.float32)
    else:
        arrays = dict(reversed(arrays.items()))

    reply = app(instruction("train", 1, arrays=arrays), _context(site))

    _refused_with(reply, SiteError.MODEL_DIFFERS)
    assert _audit(site)[-1]["event"] == "round_refused"
    assert _budget(site, capsys)["epsilon_spent"] == 0
