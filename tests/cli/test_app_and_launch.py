"""``slidefed app build`` and ``slidefed launch``, against a stand-in ``flwr``."""

from __future__ import annotations

import hashlib
import re
import sys
from pathlib import Path

import pytest

from slidefed.cli.root import main

FAKE = Path(__file__).with_name("fake_flwr.py")


def _hash_in(text: str) -> str:
    found = re.search(r"FAB sha256: ([0-9a-f]{64})", text)
    assert found, text
    return found.group(1)


@pytest.fixture
def fake_flwr(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """``flwr`` on PATH is the stand-in; its state lives in the returned folder."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    exe = bin_dir / "flwr"
    exe.write_text(
        f"#!{sys.executable}\nimport runpy\nrunpy.run_path({str(FAKE)!r}, run_name='__main__')\n"
    )
    exe.chmod(0o755)
    state = tmp_path / "flwr-state"
    state.mkdir()
    monkeypatch.setenv("PATH", f"{bin_dir}:{Path(sys.executable).parent}")
    monkeypatch.setenv("FAKE_FLWR_DIR", str(state))
    monkeypatch.setenv("FAKE_FLWR_STATUS", "finished:completed")
    monkeypatch.setenv("FLWR_HOME", str(tmp_path / "flwr-home"))
    return state


def test_app_build_prints_the_hash_launch_submits_and_sites_approve(
    tmp_path: Path, fake_flwr: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    app = tmp_path / "slidefed-app"
    assert main(["app", "build", "--out", str(app)]) == 0
    out = capsys.readouterr().out
    digest = _hash_in(out)
    (fab,) = app.glob("*.fab")
    assert hashlib.sha256(fab.read_bytes()).hexdigest() == digest
    assert f"slidefed site approve --config site.toml --hash {digest}" in out
    assert "flwr run ." not in out
    # A site approving the .fab it was sent lists the same hash.
    site = tmp_path / "site"
    site.mkdir()
    (site / "site.toml").write_text('[site]\nname = "a"\n')
    assert (
        main(
            ["site", "approve", "--config", str(site / "site.toml"), "--fab", str(fab)]
        )
        == 0
    )
    listed = (site / "approved_apps.toml").read_text()
    assert digest in listed
    assert f"approved {digest}" in capsys.readouterr().out
    # Approving it again says so and leaves the list as it was.
    approve = ["site", "approve", "--config", str(site / "site.toml"), "--hash"]
    assert main([*approve, digest]) == 0
    again = capsys.readouterr().out
    assert again.startswith(f"already approved {digest} (")
    assert "nothing changed" in again
    assert (site / "approved_apps.toml").read_text() == listed
    # Building again (the folder now holds a build) gives the same hash.
    assert main(["app", "build", "--out", str(app)]) == 0
    assert _hash_in(capsys.readouterr().out) == digest
    # launch, with that folder or with none, submits exactly that FAB.
    for extra in (["--app", str(app)], []):
        assert main(["launch", "consortium", *extra]) == 0
        out = capsys.readouterr().out
        assert f"submitting app {digest}" in out
        assert (fake_flwr / "submitted-hash").read_text() == digest
        (fake_flwr / "ls-calls").unlink()


def test_app_build_refuses_a_folder_holding_other_files(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    app = tmp_path / "app"
    app.mkdir()
    (app / "notes.md").write_text("would be bundled")
    assert main(["app", "build", "--out", str(app)]) == 2
    err = capsys.readouterr().err
    assert "notes.md" in err
    assert "empty folder" in err
    assert not list(app.glob("*.fab"))


def test_launch_prints_each_round_once_as_the_run_goes(
    fake_flwr: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["launch", "consortium"]) == 0
    lines = capsys.readouterr().out.splitlines()
    rounds = [line for line in lines if line.startswith("round ")]
    assert rounds == [
        "round 1/2: 2 sites trained, 2 evaluated; accuracy 0.600, AUC 0.700 "
        "(noised); highest site epsilon 1.200; 0 errors",
        "round 2/2: 2 sites trained, 2 evaluated; accuracy 0.750, AUC 0.800 "
        "(noised); highest site epsilon 2.000; 0 errors",
    ]
    assert lines[-1] == "run 7 completed"
    assert not any("\x1b" in line for line in lines)


def test_launch_of_a_failed_run_exits_5_with_where_to_look(
    fake_flwr: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("FAKE_FLWR_STATUS", "finished:failed")
    assert main(["launch", "consortium"]) == 5
    captured = capsys.readouterr()
    assert "run 7 ended finished:failed: exit code 700" in captured.err
    assert "flwr log 7 consortium --show" in captured.err
    assert "round 2/2:" in captured.out
