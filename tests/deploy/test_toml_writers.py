"""Every TOML file slidefed writes survives any string: quotes, backslashes, newlines."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from slidefed.deploy.approval import (
    ApprovedApps,
    approve_app,
    dump_approved_apps,
    load_approved_apps,
)
from slidefed.deploy.coordinator import write_connection
from slidefed.server.config import (
    RegisteredSite,
    ServerConfig,
    StateSection,
    TlsSection,
    load_server_config,
    save_server_config,
)
from slidefed.simulation import app_pyproject

NASTY = "a \"quoted\"\nline\\with 'all' = [x]"
"""A string that breaks TOML written by f-strings."""

KEY = "ecdsa-sha2-nistp384 AAAA"


def _nasty_dir(tmp_path: Path) -> Path:
    folder = tmp_path / NASTY
    folder.mkdir()
    return folder


def test_server_config_with_a_nasty_path_round_trips(tmp_path: Path) -> None:
    folder = _nasty_dir(tmp_path)
    config = ServerConfig(
        tls=TlsSection(ca_cert=folder / "ca.crt"),
        state=StateSection(flwr_home=Path(NASTY)),
        sites=(RegisteredSite(name="site-a", public_key=KEY, registered_at=NASTY),),
        base_dir=folder,
    )
    path = folder / "server.toml"
    save_server_config(config, path)
    loaded = load_server_config(path)
    assert loaded.tls.ca_cert == folder / "ca.crt"
    assert loaded.state.flwr_home == Path(NASTY)
    assert loaded.sites == config.sites
    assert path.stat().st_mode & 0o777 == 0o644
    assert [p.name for p in folder.iterdir()] == ["server.toml"]  # no temp file left


def test_flower_connection_with_a_nasty_ca_path_round_trips(tmp_path: Path) -> None:
    folder = _nasty_dir(tmp_path)
    config = ServerConfig(base_dir=folder)
    save_server_config(config, folder / "server.toml")
    home = write_connection(folder / "server.toml")
    text = (home / "config.toml").read_text(encoding="utf-8")
    assert text.startswith("# Written by slidefed server init/register-site")
    data = tomllib.loads(text)
    assert data["superlink"]["default"] == "slidefed"
    connection = data["superlink"]["slidefed"]
    assert connection["root-certificates"] == str(folder / "pki" / "ca.crt")
    assert connection["address"] == config.server.control_address


def test_approval_list_with_a_nasty_name_and_note_round_trips(tmp_path: Path) -> None:
    folder = _nasty_dir(tmp_path)
    path = folder / "approved_apps.toml"
    written = approve_app(path, "ab" * 32, name=NASTY, note=NASTY)
    approve_app(path, "cd" * 32, name="second")
    loaded = load_approved_apps(path)
    assert loaded.app[0] == written.app[0]
    assert loaded.app[0].name == NASTY
    assert [a.fab_hash for a in loaded.app] == ["ab" * 32, "cd" * 32]
    text = path.read_text(encoding="utf-8")
    assert text.startswith("# Apps (Flower FABs) this site runs")
    assert sorted(p.name for p in folder.iterdir()) == ["approved_apps.toml"]
    assert ApprovedApps.model_validate(tomllib.loads(dump_approved_apps(loaded)))


@pytest.mark.parametrize("value", [NASTY, 3, 0.5, True])
def test_app_pyproject_with_a_nasty_value_round_trips(value: object) -> None:
    data = tomllib.loads(app_pyproject({"run-dir": value, "seed": 0}))
    app = data["tool"]["flwr"]["app"]
    assert app["config"] == {"run-dir": value, "seed": 0}
    assert app["components"]["clientapp"] == "slidefed.client.app:app"
