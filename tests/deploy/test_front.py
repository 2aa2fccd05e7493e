"""The coordinator's public front: what nginx forwards, and the commands it runs."""

from __future__ import annotations

import http.server
import re
import shutil
import ssl
import subprocess
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from slidefed.cli import main
from slidefed.common.errors import ConfigError
from slidefed.deploy.coordinator import coordinator_commands, superlink_command
from slidefed.deploy.front import front_files, render_nginx_conf
from slidefed.deploy.site_node import free_port
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


def test_a_wrong_nginx_path_names_the_setting(
    coordinator: Path, tmp_path: Path
) -> None:
    wrong = tmp_path / "opt" / "nginx"
    text = coordinator.read_text().replace('nginx = "nginx"', f'nginx = "{wrong}"')
    coordinator.write_text(text)
    with pytest.raises(ConfigError) as caught:
        coordinator_commands(coordinator)
    assert str(caught.value) == (
        f"[front] nginx = '{wrong}' in server.toml is not an executable file; set "
        "it to nginx's path (for example /usr/sbin/nginx) or remove it to use the "
        "nginx on PATH"
    )


class _Upstream(http.server.BaseHTTPRequestHandler):
    """Stands where the SuperLink would: 500 on push (a locked database), 200 else."""

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        code = 500 if self.path.endswith("/push-messages") else 200
        self.send_response(code)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"ok")

    def log_message(self, *_args: object) -> None:
        return


def _post(url: str, ca: Path) -> int:
    context = ssl.create_default_context(cafile=str(ca))
    request = urllib.request.Request(url, data=b"x", method="POST")  # noqa: S310
    try:
        with urllib.request.urlopen(request, context=context, timeout=10) as answer:  # noqa: S310
            return int(answer.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)
    except OSError:  # not listening yet
        return 0


@pytest.mark.skipif(shutil.which("nginx") is None, reason="nginx is not installed")
def test_real_nginx_forwards_fleet_refuses_control_and_makes_500_retryable(
    tmp_path: Path,
) -> None:
    public, inner = free_port(), free_port()
    folder = tmp_path / "coord"
    assert main(
        ["server", "init", str(folder), "--port", str(public),
         "--superlink-port", str(inner)]
    ) == 0  # fmt: skip
    config = load_server_config(folder / "server.toml")
    tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    tls.load_cert_chain(config.resolve(config.tls.cert), config.resolve(config.tls.key))
    upstream = http.server.ThreadingHTTPServer(("127.0.0.1", inner), _Upstream)
    upstream.socket = tls.wrap_socket(upstream.socket, server_side=True)
    threading.Thread(target=upstream.serve_forever, daemon=True).start()
    commands, _ = coordinator_commands(folder / "server.toml")
    nginx = subprocess.Popen(commands[1], stderr=subprocess.PIPE)
    try:
        ca = config.resolve(config.tls.ca_cert)
        base = f"https://localhost:{public}"
        deadline = time.monotonic() + 20
        while _post(f"{base}/v1/fleet/pull-messages", ca) != 200:
            assert nginx.poll() is None, nginx.communicate()[1]
            assert time.monotonic() < deadline
            time.sleep(0.2)
        # A locked SuperLink (500) reaches the node as 503, which Flower retries.
        assert _post(f"{base}/v1/fleet/push-messages", ca) == 503
        assert _post(f"{base}/v1/control/list-runs", ca) == 403
        assert _post(f"{base}/v1/runtime/acquire-task", ca) == 403
    finally:
        nginx.terminate()
        nginx.communicate(timeout=10)
        upstream.shutdown()
        upstream.server_close()
