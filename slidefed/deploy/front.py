"""The coordinator's public front: nginx in front of a SuperLink on loopback.

Open-source Flower serves everything on one HTTPS port: the Fleet API that
SuperNodes need (``/v1/fleet/``), and the Control API (``/v1/control/``: submit
runs, list them, register node keys) and the runtime API (``/v1/runtime/``) that
only the coordinator may use, with no account authentication of their own.
``slidefed server start`` therefore runs the SuperLink on ``127.0.0.1`` and puts
nginx, a TLS-terminating reverse proxy, on the public address. nginx forwards
the Fleet API and ``/health`` to the SuperLink (over TLS again, verified with the
federation's CA) and answers everything else with 403. The operator reaches the
Control API on the coordinator host itself (``control_address``); a researcher
elsewhere reaches it through an SSH tunnel to that host (see docs/deployment.md).

The SuperLink answers a node's call with 500 when its SQLite state is locked by
concurrent writers (many nodes uploading at once). Flower's SuperNode gives up on
a 500 but retries a 503 with backoff, so the front turns the SuperLink's 500s on
the Fleet API into 503: the node sends its reply again instead of losing it.
"""

from __future__ import annotations

import getpass
import os
import shutil
from pathlib import Path

from pydantic import BaseModel, ConfigDict

from slidefed.common.errors import ConfigError
from slidefed.server.config import ServerConfig

PUBLIC_PREFIXES = ("/v1/fleet/",)
"""Path prefixes that the public address forwards to the SuperLink."""

PUBLIC_EXACT = ("/health",)
"""Exact paths that the public address forwards (a load balancer's probe)."""

MAX_BODY_MIB = 1024
"""Largest request body nginx accepts (a model update, a FAB)."""

_NGINX_HINT = (
    "nginx is not installed; install it (Debian/Ubuntu: apt-get install nginx) or "
    "set [front] nginx in server.toml to its path"
)


_SEARCHED = ("/usr/sbin", "/usr/local/sbin")


class FrontFiles(BaseModel):
    """Where the front keeps its configuration, logs and temporary files."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    folder: Path
    conf: Path


def front_files(config: ServerConfig) -> FrontFiles:
    """The front's files under the coordinator's state folder."""
    folder = config.resolve(config.state.superlink_home).parent / "front"
    return FrontFiles(folder=folder, conf=folder / "nginx.conf")


def nginx_executable(config: ServerConfig) -> str:
    """The nginx program, or a :class:`ConfigError` that says how to get it."""
    named = config.front.nginx
    found = shutil.which(named) or (
        named if Path(named).is_file() and os.access(named, os.X_OK) else None
    )
    if found is None:
        # Debian puts nginx in /usr/sbin, which a user's PATH may not hold.
        for folder in _SEARCHED:
            candidate = Path(folder) / named
            if os.access(candidate, os.X_OK):
                return str(candidate)
        if os.sep in named:
            raise ConfigError(
                f"[front] nginx = {named!r} in server.toml is not an executable "
                "file; set it to nginx's path (for example /usr/sbin/nginx) or "
                "remove it to use the nginx on PATH"
            )
        raise ConfigError(_NGINX_HINT)
    return found


def _quote(path: Path) -> str:
    text = str(path)
    if any(c in text for c in '"\\;{}\n'):
        raise ConfigError(
            f"{text}: nginx cannot take a path with quotes, ';', braces or newlines; "
            "move the coordinator folder"
        )
    return f'"{text}"'


def render_nginx_conf(config: ServerConfig, files: FrontFiles) -> str:
    """nginx's configuration: TLS on the public address, the Fleet API only.

    Parameters
    ----------
    config : ServerConfig
        The coordinator's ``server.toml``.
    files : FrontFiles
        Where nginx writes its pid, logs and temporary files.

    Returns
    -------
    str
        A complete ``nginx.conf`` (run with ``-c`` and ``daemon off``).
    """
    tls = config.tls
    ca, cert, key = (config.resolve(p) for p in (tls.ca_cert, tls.cert, tls.key))
    temp = files.folder / "tmp"
    upstream = f"127.0.0.1:{config.server.superlink_port_or_default}"
    user = f"user {getpass.getuser()};\n" if os.geteuid() == 0 else ""
    proxy = f"""
            proxy_pass https://superlink;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host $host;
            proxy_ssl_trusted_certificate {_quote(ca)};
            proxy_ssl_verify on;
            proxy_ssl_name localhost;
            proxy_ssl_server_name off;
            proxy_read_timeout 3600s;
            proxy_send_timeout 3600s;
            proxy_request_buffering off;
            proxy_buffering off;
            proxy_intercept_errors on;
            error_page 500 = @busy;"""
    locations = "".join(
        f"\n        location {p} {{{proxy}\n        }}" for p in PUBLIC_PREFIXES
    ) + "".join(f"\n        location = {p} {{{proxy}\n        }}" for p in PUBLIC_EXACT)
    return f"""# Written by slidefed server start; edit server.toml, not this file.
{user}worker_processes 1;
pid {_quote(files.folder / "nginx.pid")};
error_log stderr warn;
events {{
    worker_connections 1024;
}}
http {{
    access_log {_quote(files.folder / "access.log")};
    client_body_temp_path {_quote(temp / "body")};
    proxy_temp_path {_quote(temp / "proxy")};
    fastcgi_temp_path {_quote(temp / "fastcgi")};
    uwsgi_temp_path {_quote(temp / "uwsgi")};
    scgi_temp_path {_quote(temp / "scgi")};
    client_max_body_size {MAX_BODY_MIB}m;
    server_tokens off;
    upstream superlink {{
        server {upstream};
        keepalive 16;
    }}
    server {{
        listen {config.server.host}:{config.server.port} ssl;
        ssl_certificate {_quote(cert)};
        ssl_certificate_key {_quote(key)};
        ssl_protocols TLSv1.2 TLSv1.3;{locations}
        location @busy {{
            default_type text/plain;
            return 503 "the SuperLink is busy; try again\\n";
        }}
        location / {{
            default_type text/plain;
            return 403 "only the Fleet API is served here\\n";
        }}
    }}
}}
"""


def front_command(config: ServerConfig) -> list[str]:
    """Write nginx's configuration and return the command that runs it.

    Raises
    ------
    ConfigError
        If nginx is missing or the coordinator's paths cannot be written into
        its configuration.
    """
    files = front_files(config)
    for sub in ("body", "proxy", "fastcgi", "uwsgi", "scgi"):
        (files.folder / "tmp" / sub).mkdir(parents=True, exist_ok=True)
    files.conf.write_text(render_nginx_conf(config, files), encoding="utf-8")
    return [
        nginx_executable(config),
        "-e",
        "stderr",
        "-p",
        str(files.folder),
        "-c",
        str(files.conf),
        "-g",
        "daemon off;",
    ]


__all__ = [
    "MAX_BODY_MIB",
    "PUBLIC_EXACT",
    "PUBLIC_PREFIXES",
    "FrontFiles",
    "front_command",
    "front_files",
    "nginx_executable",
    "render_nginx_conf",
]
