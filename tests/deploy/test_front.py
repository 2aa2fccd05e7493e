"""The coordinator's public front: what nginx forwards, and the commands it runs."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from slidefed.cli import main
from slidefed.common.errors import ConfigError
from slidefed.deploy.coordinator import coordinator_commands, superlink_command
from slidefed.deploy.front import front_files, render_nginx_conf
from slidefed.server.config import SERVER_CONFIG_ENV, load_server_config


@pytest.fixture
def coordinator(tmp_path: Path) -> Path:
    folder = tmp_path / "coord"
    assert main(["server", "init", str(folder), "--port", "18443"]) == 0
    return folder / "server.toml"


def test_the_superlink_listens_on_loopback_and_the_front_on_the_public_port(
    coordinator: Path,
) -> None:
    commands, env = coordinator_commands(coordinator)
    superlink, front = commands
    assert superlink[superlink.index("--host") + 1] == "127.0.0.1"
    assert superlink[superlink.index("--port") + 1] == "18444"
    assert Path(front[0]).name == "nginx"
    assert env[SERVER_CONFIG_ENV] == str(coordinator.resolve())
    conf = Path(front[front.index("-c") + 1]).read_text()
    assert "listen 127.0.0.1:18443 ssl;" in conf
    assert "server 127.0.0.1:18444;" in conf
    # The operator's own flwr CLI dials the SuperLink itself.
    assert load_server_config(coordinator).server.control_address == "127.0.0.1:18444"


def test_the_front_forwards_the_fleet_api_and_health_only(coordinator: Path) -> None:
    config = load_server_config(coordinator)
    conf = render_nginx_conf(config, front_files(config))
    forwarded = re.findall(r"location (=?\s*\S+) \{\s*proxy_pass", conf)
    assert forwarded == ["/v1/fleet/", "= /health"]
    assert re.search(r"location / \{\s*default_type text/plain;\s*return 403", conf)
    # The hop to the SuperLink is TLS again, checked against the federation's CA.
    assert "proxy_ssl_verify on;" in conf
    assert str(config.resolve(config.tls.ca_cert)) in conf


@pytest.mark.skipif(shutil.which("nginx") is None, reason="nginx is not installed")
def test_nginx_accepts_the_configuration(coordinator: Path) -> None:
    commands, _ = coordinator_commands(coordinator)
    front = commands[1]
    done = subprocess.run(
        [*front, "-t"], capture_output=True, text=True, timeout=30, check=False
    )
    assert done.returncode == 0, done.stderr
    assert "syntax is ok" in done.stderr


def test_insecure_has_no_front(coordinator: Path) -> None:
    commands, _ = coordinator_commands(coordinator, insecure=True)
    assert len(commands) == 1
    argv = commands[0]
    assert argv[argv.index("--port") + 1] == "18443"


def test_a_missing_nginx_is_one_line_with_the_fix(
    coordinator: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    text = coordinator.read_text().replace('nginx = "nginx"', 'nginx = "no-such-nginx"')
    coordinator.write_text(text)
    monkeypatch.setattr("slidefed.deploy.front._SEARCHED", ())
    with pytest.raises(ConfigError, match="apt-get install nginx"):
        coordinator_commands(coordinator)
    superlink_command(coordinator)  # the SuperLink alone still builds
