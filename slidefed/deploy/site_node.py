"""Running a site's node: its keys and the commands of ``slidefed site start``.

``slidefed site start`` runs two processes and watches both
(:func:`slidefed.deploy.supervisor.supervise`):

1. ``flower-supernode`` with the site's P-384 node key (SuperNode authentication),
   the federation's CA (TLS), ``--node-config 'site-config="/abs/site.toml"'``, its
   own ``FLWR_HOME`` under the site's state folder, its Runtime API on a local port,
   and ``--isolation process``: the SuperNode starts no app code itself;
2. the site's executor (``python -m slidefed.deploy.approval_gate executor``), which
   takes the SuperNode's ClientApp tasks and runs each in a fresh process only after
   the app's FAB hash passed the site's approval list (see
   :mod:`slidefed.deploy.approval_gate`). The two share a secret so that no other
   local process can take the tasks.

This module loads neither torch nor Flower.
"""

from __future__ import annotations

import os
import secrets
import socket
import sys
from pathlib import Path

from pydantic import BaseModel, ConfigDict

from slidefed.client.config import SiteConfig, load_site_config
from slidefed.common.crypto import generate_node_key, public_key_path
from slidefed.common.errors import ConfigError
from slidefed.common.flower_env import flower_env, flower_executable

EXECUTOR_MODULE = "slidefed.deploy.approval_gate"
"""``python -m`` target of the site's executor (its ``ENTRY_MODULE``).

Named, not imported: a module imported when its package is, before ``python -m``
runs it, makes Python warn that it may behave unpredictably."""

LOCALHOST = "127.0.0.1"
"""Where the SuperNode's Runtime API listens: only this machine's processes."""


class SiteLaunch(BaseModel):
    """The two commands of a running site, with their shared environment."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    supernode: list[str]
    executor: list[str]
    env: dict[str, str]
    runtime_port: int
    insecure: bool


# --------------------------------------------------------------------- keys
def node_key_path(config: SiteConfig) -> Path:
    """Where the site's SuperNode key lives: ``<state>/keys/node_key``.

    Parameters
    ----------
    config : SiteConfig
        The site.

    Returns
    -------
    Path
        The private key; its public half is the same path plus ``.pub``.
    """
    return config.state_dir / "keys" / "node_key"


def ensure_node_key(config: SiteConfig) -> Path:
    """Create the site's P-384 SuperNode key (OpenSSH format) if it has none.

    The private key (mode 0600) stays at the site; the public key
    (``node_key.pub``) is what the coordinator registers with
    ``slidefed server register-site``. An existing key is never replaced.

    Parameters
    ----------
    config : SiteConfig
        The site.

    Returns
    -------
    Path
        The public key file.

    Raises
    ------
    ConfigError
        If only one half of the key pair exists.
    """
    private = node_key_path(config)
    public = public_key_path(private)
    if private.is_file() and public.is_file():
        return public
    if private.exists() or public.exists():
        present = private if private.exists() else public
        raise ConfigError(
            f"{present} exists without its other half; restore it, or move it aside "
            "to make a new node key (the coordinator must then register the new one)"
        )
    generate_node_key(private)
    return public


def ensure_superexec_secret(config: SiteConfig) -> Path:
    """The secret shared by the site's SuperNode and executor (made once, 0600).

    Parameters
    ----------
    config : SiteConfig
        The site.

    Returns
    -------
    Path
        ``<state>/keys/superexec_secret``.
    """
    path = config.state_dir / "keys" / "superexec_secret"
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as handle:
            handle.write(secrets.token_hex(32).encode())
    return path


# ------------------------------------------------------------------ commands
def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that is free on ``host`` now.

    Parameters
    ----------
    host : str
        Interface.

    Returns
    -------
    int
        The port.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def build_site_launch(
    config_path: Path,
    *,
    superlink: str,
    ca: Path | None,
    insecure: bool = False,
    runtime_port: int = 0,
    max_wait_time: float | None = None,
) -> SiteLaunch:
    """The commands that run this site's node (nothing is started).

    Creates the audit key, the node key and the executor secret when missing.

    Parameters
    ----------
    config_path : Path
        ``site.toml``.
    superlink : str
        ``HOST:PORT`` of the SuperLink.
    ca : Path or None
        The federation's CA certificate (required unless ``insecure``).
    insecure : bool
        No TLS and no node authentication: for tests only.
    runtime_port : int
        Local port of the SuperNode's Runtime API (0: a free one).
    max_wait_time : float, optional
        Give up connecting to the SuperLink after this many seconds.

    Returns
    -------
    SiteLaunch
        The commands and their environment.

    Raises
    ------
    ConfigError
        On a bad address, a missing CA, or an unusable site config.
    """
    site_toml = Path(config_path).resolve()
    config = load_site_config(site_toml)
    if ":" not in superlink or not superlink.rsplit(":", 1)[1].isdigit():
        raise ConfigError(
            f"--superlink {superlink!r} must be HOST:PORT, e.g. superlink.example.org:8000"
        )
    secret = _ensure_site_keys(config)
    flwr_home = config.state_dir / "flwr"
    flwr_home.mkdir(parents=True, exist_ok=True)
    port = runtime_port or free_port()
    supernode = _supernode_command(
        site_toml, superlink=superlink, port=port, secret=secret
    )
    if max_wait_time is not None:
        supernode += ["--max-wait-time", str(max_wait_time)]
    supernode += ["--insecure"] if insecure else _tls_arguments(config, ca)
    return SiteLaunch(
        supernode=supernode,
        executor=_executor_command(site_toml, port=port, secret=secret),
        env=flower_env(flwr_home),
        runtime_port=port,
        insecure=insecure,
    )


def _ensure_site_keys(config: SiteConfig) -> Path:
    """The audit key, the randomness secret, the node key and the executor secret."""
    from slidefed.client.keys import ensure_site_keys

    ensure_site_keys(config)  # makes only what is missing
    ensure_node_key(config)
    return ensure_superexec_secret(config)


def _supernode_command(
    site_toml: Path, *, superlink: str, port: int, secret: Path
) -> list[str]:
    node_config = 'site-config="' + str(site_toml).replace('"', '\\"') + '"'
    return [
        flower_executable("flower-supernode"),
        "--superlink",
        superlink,
        "--node-config",
        node_config,
        "--isolation",
        "process",
        "--host",
        LOCALHOST,
        "--port",
        str(port),
        "--superexec-auth-secret-file",
        str(secret),
    ]


def _tls_arguments(config: SiteConfig, ca: Path | None) -> list[str]:
    """TLS with the federation's CA, and SuperNode authentication with the node key."""
    if ca is None:
        raise ConfigError(
            "--ca CA.crt is required: the federation's CA certificate from the "
            "coordinator (pki/ca.crt); --insecure is for tests only"
        )
    ca_path = Path(ca).resolve()
    if not ca_path.is_file():
        raise ConfigError(
            f"--ca {ca}: no such file; copy pki/ca.crt from the coordinator"
        )
    return [
        "--root-certificates",
        str(ca_path),
        "--auth-supernode-private-key",
        str(node_key_path(config)),
    ]


def _executor_command(site_toml: Path, *, port: int, secret: Path) -> list[str]:
    return [
        sys.executable,
        "-m",
        EXECUTOR_MODULE,
        "executor",
        "--runtime-api-address",
        f"{LOCALHOST}:{port}",
        "--site-config",
        str(site_toml),
        "--superexec-auth-secret-file",
        str(secret),
    ]


# ------------------------------------------------------------ preparation
def prepare_before_serving(config_path: Path) -> list[str]:
    """Prepare the site's slides unless its features are ready for rounds.

    A round only reads prepared features (it never prepares or decodes a
    slide), so ``site start`` prepares first what ``site prepare`` has not:
    nothing when the last preparation still describes the site. A site with
    no manifest yet starts anyway (every round then fails until it has one).

    Returns
    -------
    list of str
        Lines for the operator (warnings start with ``warning:``).

    Raises
    ------
    ManifestError
        If the manifest exists but is invalid.
    ConfigError
        If the encoder is unknown or its weights file is missing.
    """
    from slidefed.client.prepare.pipeline import prepare_unless_ready
    from slidefed.client.prepare.prepared import prepare_command

    config = load_site_config(Path(config_path))
    if config.tiles is None and not config.manifest_path.is_file():
        return [
            f"warning: no manifest at {config.manifest_path}: every round will "
            f"fail; write it, then run '{prepare_command(config)}'"
        ]
    report = prepare_unless_ready(config)
    if report is None:
        return []
    lines = [
        f"prepared {len(report.usable)} of {len(report.slides)} slides "
        f"({len(report.skipped)} skipped) before serving rounds; report in "
        f"{config.state_dir / 'prepare-report.json'}"
    ]
    if not report.usable:
        lines.append(
            "warning: no usable slide at this site: every round will fail; "
            f"fix the slides '{prepare_command(config)}' lists"
        )
    return lines


__all__ = [
    "EXECUTOR_MODULE",
    "LOCALHOST",
    "SiteLaunch",
    "build_site_launch",
    "ensure_node_key",
    "ensure_superexec_secret",
    "free_port",
    "node_key_path",
    "prepare_before_serving",
]
