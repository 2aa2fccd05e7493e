"""The code-approval gate fails closed on a Flower it was not written for."""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

import pytest

from slidefed.common.errors import ConfigError
from slidefed.deploy import approval_gate, site_node


def test_the_installed_flower_is_the_one_the_gate_was_written_for() -> None:
    installed = approval_gate.check_flower_version()
    assert installed.startswith(approval_gate.FLOWER_SERIES + ".")


@pytest.mark.parametrize("other", ["1.43.0", "1.41.2", "2.42.0", "1.4", ""])
def test_another_flower_version_is_refused_in_one_line(
    other: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(approval_gate, "installed_flower_version", lambda: other)
    with pytest.raises(ConfigError) as raised:
        approval_gate.check_flower_version()
    message = str(raised.value)
    assert "\n" not in message
    assert f"flwr {other or '(not installed)'} is installed" in message
    assert "written for flwr 1.42.x" in message
    assert "pip install 'flwr[simulation]==1.42.*'" in message


def test_the_gate_patches_nothing_on_another_flower(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    rc: Any = importlib.import_module("flwr.supernode.runtime.run_clientapp")
    before = {name: getattr(rc, name) for name in approval_gate._HOOKED}
    monkeypatch.setattr(approval_gate, "installed_flower_version", lambda: "1.43.0")
    with pytest.raises(ConfigError, match=r"flwr 1\.43\.0 is installed"):
        approval_gate._install_hooks(tmp_path / "site.toml")
    assert {name: getattr(rc, name) for name in approval_gate._HOOKED} == before


def test_the_executor_exits_with_the_message_on_another_flower(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    rs: Any = importlib.import_module("flwr.supercore.superexec.run_superexec")
    factory = rs.get_executor
    monkeypatch.setattr(approval_gate, "installed_flower_version", lambda: "1.50.1")
    argv = ["--runtime-api-address", "127.0.0.1:1", "--site-config", str(tmp_path)]
    with pytest.raises(SystemExit) as exited:
        approval_gate.main(["executor", *argv])
    assert exited.value.code == ConfigError.exit_code
    err = capsys.readouterr().err
    assert err.startswith("error: flwr 1.50.1 is installed")
    assert err.count("\n") == 1
    assert rs.get_executor is factory  # Flower's executor factory was left alone


def test_the_entry_point_needs_a_command(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        approval_gate.main([])
    assert exited.value.code == 2
    assert approval_gate.ENTRY_MODULE in capsys.readouterr().err


def test_the_site_starts_the_executor_through_the_gate() -> None:
    assert site_node.EXECUTOR_MODULE == approval_gate.ENTRY_MODULE
