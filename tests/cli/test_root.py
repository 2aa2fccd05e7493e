import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from slidefed.cli import main
from slidefed.demo.synth import SynthSite

HELP_PROBE = """
import sys, click, typer
from slidefed.cli import app, main
paths = []
def walk(cmd, prefix):
    paths.append(prefix)
    for name, sub in getattr(cmd, "commands", {}).items():
        walk(sub, prefix + [name])
walk(typer.main.get_command(app), [])
for p in paths:
    assert main([*p, "--help"]) == 0, p
heavy = sorted(m for m in ("torch", "opacus", "flwr", "ray") if m in sys.modules)
print(len(paths), heavy)
"""


def test_every_help_answers_without_heavy_imports() -> None:
    out = subprocess.run(
        [sys.executable, "-c", HELP_PROBE], capture_output=True, text=True, check=True
    )
    count, heavy = out.stdout.strip().splitlines()[-1].split(" ", 1)
    assert int(count) >= 10
    assert heavy == "[]"


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["demo", "--sites", "0"], "--sites 0 must be at least 1"),
        (["demo", "--rounds", "0"], "--rounds 0 must be at least 1"),
        (["demo", "--no-such-option"], "No such option"),
        (["demo", "--sites", "three"], "'three' is not a valid integer"),
        (["demo", "--data", "tiles", "--rounds", "0"], "try --rounds 5"),
        (["demo", "--data", "bogus"], "must be 'slides' or 'tiles'"),
        (["nonsense"], "No such command"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(
    argv: list[str], needle: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert needle in err
    assert len(err.splitlines()) == 1
    assert "Traceback" not in err


def test_demo_out_that_cannot_be_written(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert main(["demo", "--out", str(blocker / "sub")]) == 2
    err = capsys.readouterr().err.strip()
    assert "cannot be written" in err
    assert len(err.splitlines()) == 1


@pytest.mark.skipif(os.geteuid() == 0, reason="root can write anywhere")
def test_demo_out_read_only(tmp_path: Path) -> None:
    ro = tmp_path / "ro"
    ro.mkdir(mode=0o500)
    assert main(["demo", "--out", str(ro)]) == 2


def test_slide_inspect_json_reports_levels_and_mpp(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from slidefed.demo.synth import write_synthetic_slide

    path = tmp_path / "s.tif"
    write_synthetic_slide(path, seed=0, tumour=False, width=2048, height=1536)
    assert main(["slide", "inspect", str(path), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert len(info["levels"]) >= 3
    assert info["mpp"] == pytest.approx(0.5)


def test_slide_inspect_bad_file_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "x.svs"
    bad.write_bytes(b"\x00" * 100)
    assert main(["slide", "inspect", str(bad)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ")
    assert "x.svs" in err
    assert len(err.splitlines()) == 1


def test_synth_site_command_is_deterministic(tmp_path: Path) -> None:
    import hashlib

    def digests(folder: Path) -> dict[str, str]:
        return {
            p.name: hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*"))
            if p.is_file()
        }

    assert (
        main(["synth", "site", str(tmp_path / "a"), "--patients", "3", "--seed", "7"])
        == 0
    )
    assert (
        main(["synth", "site", str(tmp_path / "b"), "--patients", "3", "--seed", "7"])
        == 0
    )
    a, b = digests(tmp_path / "a"), digests(tmp_path / "b")
    assert a == b
    assert len(a) >= 4


def test_site_prepare_and_budget(
    small_site: SynthSite, capsys: pytest.CaptureFixture[str]
) -> None:
    config = str(small_site.root / "site.toml")
    assert main(["site", "prepare", "--config", config, "--workers", "1"]) == 0
    assert main(["site", "budget", "--config", config, "--json"]) == 0
    out = capsys.readouterr().out
    budget = json.loads(out[out.index("{") :])
    assert budget["unit"] == "patient"
    assert budget["epsilon_spent"] == 0.0
    assert budget["epsilon_remaining"] == budget["epsilon_max"]
    assert budget["runs"] == []


def test_site_prepare_missing_config(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["site", "prepare", "--config", str(tmp_path / "site.toml")]) == 2
    assert "site init" in capsys.readouterr().err


def test_simulate_site_without_site_toml(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["simulate", "--sites", str(tmp_path), "--rounds", "1", "--out"]
    assert main([*argv, str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err.strip()
    assert "no site.toml there" in err
    assert len(err.splitlines()) == 1
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(
    ("resume", "has_run", "needle"),
    [(False, True, "already holds a run"), (True, False, "no checkpoint to resume")],
)
def test_simulate_run_folder_rules(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    resume: bool,
    has_run: bool,
    needle: str,
) -> None:
    (tmp_path / "site.toml").write_text('[site]\nname = "a"\n')
    out = tmp_path / "run"
    if has_run:
        (out / "checkpoints").mkdir(parents=True)
    argv = ["simulate", "--sites", str(tmp_path), "--rounds", "1", "--out", str(out)]
    assert main([*argv, *(["--resume"] if resume else [])]) == 2
    assert needle in capsys.readouterr().err


def test_demo_and_bench_packages_import_light() -> None:
    probe = (
        "import sys, slidefed, slidefed.demo, slidefed.bench, slidefed.demo.runner; "
        "print(sorted(m for m in ('torch', 'opacus', 'flwr', 'ray', 'tiffslide') "
        "if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "[]"


def test_help_shows_required_and_defaults_without_escapes(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["simulate", "--help"]) == 0
    out = capsys.readouterr().out
    assert "[required]" in out
    assert "[default: fedavg]" in out
    assert "\\[" not in out


def test_simulate_takes_sites_listed_after_one_flag(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "site.toml").write_text(f'[site]\nname = "{name}"\n')
    (tmp_path / "c").mkdir()  # the third has no site.toml: named as such
    sites = [str(tmp_path / n) for n in "abc"]
    argv = ["simulate", "--sites", *sites, "--rounds", "1", "--out"]
    assert main([*argv, str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err.strip()
    assert "unexpected extra argument" not in err.lower()
    assert f"{tmp_path / 'c'}" in err
    assert "no site.toml there" in err
