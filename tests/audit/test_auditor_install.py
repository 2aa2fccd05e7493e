"""An auditor installs the base package, without torch, Flower or Opacus, and verifies.

The demo runs in the project's own environment; the logs it leaves are then
checked by ``slidefed audit verify`` and ``slidefed audit report`` from a fresh
virtual environment that holds only the base install.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import venv
from pathlib import Path

import pytest

pytestmark = [pytest.mark.integration, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
_DEMO = [sys.executable, "-m", "slidefed.cli", "demo", "--sites", "2", "--rounds", "1"]


def _run(cmd: list[str], **kwargs: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(  # type: ignore[call-overload, no-any-return]
        cmd, capture_output=True, text=True, check=False, timeout=900, **kwargs
    )


@pytest.fixture(scope="module")
def auditor_env(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh venv with ``pip install <repo>``: the auditor's set only."""
    home = tmp_path_factory.mktemp("auditor")
    env_dir = home / "venv"
    venv.EnvBuilder(with_pip=True).create(env_dir)
    # Build from a copy so that no build folder lands in the checkout.
    source = home / "src"
    shutil.copytree(
        REPO,
        source,
        ignore=shutil.ignore_patterns(
            ".venv", ".git", "*.egg-info", "build", "__pycache__", ".mypy_cache"
        ),
    )
    proc = _run([str(env_dir / "bin" / "pip"), "install", "--quiet", str(source)])
    assert proc.returncode == 0, proc.stderr[-3000:]
    return env_dir


@pytest.fixture(scope="module")
def demo_out(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The logs of a small demo, made in the project's environment."""
    out = tmp_path_factory.mktemp("demo") / "out"
    env = {**os.environ, "FLWR_HOME": str(out.parent / "flwr")}
    proc = _run(
        [*_DEMO, "--out", str(out)],
        env=env,
    )
    assert proc.returncode == 0, proc.stderr[-3000:] + proc.stdout[-3000:]
    return out


def _logs(out: Path) -> list[str]:
    logs = sorted(str(p) for p in out.rglob("*.jsonl") if "audit" in p.name)
    assert len(logs) >= 3, logs  # two sites and the server
    return logs


def test_auditor_install_has_no_torch_flower_or_opacus(auditor_env: Path) -> None:
    python = str(auditor_env / "bin" / "python")
    for module in ("torch", "flwr", "opacus", "tiffslide", "numpy"):
        proc = _run([python, "-c", f"import {module}"])
        assert proc.returncode != 0, f"{module} is installed in the auditor's venv"


def test_auditor_install_verifies_and_reports_demo_logs(
    auditor_env: Path, demo_out: Path, tmp_path: Path
) -> None:
    slidefed = str(auditor_env / "bin" / "slidefed")
    logs = _logs(demo_out)

    verify = _run([slidefed, "audit", "verify", *logs])
    report = _run(
        [slidefed, "audit", "report", *logs, "--out", str(tmp_path / "r.html")]
    )

    assert verify.returncode == 0, verify.stdout + verify.stderr
    assert report.returncode == 0, report.stdout + report.stderr
    assert "<html" in (tmp_path / "r.html").read_text(encoding="utf-8").lower()


def test_auditor_install_still_finds_tampering(
    auditor_env: Path, demo_out: Path, tmp_path: Path
) -> None:
    slidefed = str(auditor_env / "bin" / "slidefed")
    site_log = next(p for p in _logs(demo_out) if "/sites/" in p)
    folder = tmp_path / "audit"
    shutil.copytree(Path(site_log).parent, folder)  # the log, its head and its key
    copy = folder / Path(site_log).name
    intact = _run([slidefed, "audit", "verify", str(copy)])
    lines = copy.read_text(encoding="utf-8").splitlines()
    del lines[1]  # delete one record
    copy.write_text("\n".join(lines) + "\n", encoding="utf-8")

    proc = _run([slidefed, "audit", "verify", str(copy)])

    assert intact.returncode == 0, intact.stdout + intact.stderr
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "deleted" in proc.stdout + proc.stderr
