"""Running a site's node: its keys, the SuperNode command, and a small supervisor.

``slidefed site start`` runs two processes and watches both:

1. ``flower-supernode`` with the site's P-384 node key (SuperNode authentication),
   the federation's CA (TLS), ``--node-config 'site-config="/abs/site.toml"'``, its
   own ``FLWR_HOME`` under the site's state folder, its Runtime API on a local port,
   and ``--isolation process``: the SuperNode starts no app code itself;
2. the site's executor (``python -m slidefed.deploy.approval executor``), which takes
   the SuperNode's ClientApp tasks and runs each in a fresh process only after the
   app's FAB hash passed the site's approval list (see
   :mod:`slidefed.deploy.approval`). The two share a secret so that no other local
   process can take the tasks.

If either process ends, the other is stopped and ``site start`` exits with the
first one's exit code. Flower's own reason (``Exit Code: 305``: the SuperLink was
not reached, or refused the node key) is read from the SuperNode's output and told
in one line. SIGINT/SIGTERM/SIGHUP are forwarded to both.

This module loads neither torch nor Flower.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import Any

from pydantic import BaseModel, ConfigDict

from slidefed.client.config import SiteConfig, load_site_config
from slidefed.common.crypto import generate_node_key, public_key_path
from slidefed.common.errors import ConfigError

logger = logging.getLogger(__name__)

SUPERNODE_EXIT_AUTH = 305
"""Flower's exit code when the SuperNode cannot activate with the SuperLink.

The process itself exits with 1; Flower writes this code in its last log lines."""


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


def flower_executable(name: str) -> str:
    """Path of a Flower command, preferring the one beside this Python.

    Parameters
    ----------
    name : str
        ``flower-supernode``, ``flower-superlink``, ``flwr``...

    Returns
    -------
    str
        Absolute path.

    Raises
    ------
    ConfigError
        If the command is not installed.
    """
    beside = Path(sys.executable).parent / name
    if beside.is_file():
        return str(beside)
    found = shutil.which(name)
    if found is None:
        raise ConfigError(
            f"{name} not found; install slidefed (it brings flwr) into this "
            "environment, or put its bin folder on PATH"
        )
    return found


def flower_env(flwr_home: Path) -> dict[str, str]:
    """Environment for a Flower process: its own FLWR_HOME, quiet and offline.

    Parameters
    ----------
    flwr_home : Path
        The process's ``FLWR_HOME``.

    Returns
    -------
    dict of str to str
        A copy of ``os.environ`` with Flower's settings and this Python's bin
        folder first on PATH (Flower starts its helpers by name).
    """
    env = dict(os.environ)
    env["FLWR_HOME"] = str(flwr_home)
    env.setdefault("FLWR_TELEMETRY_ENABLED", "0")
    env.setdefault("FLWR_DISABLE_UPDATE_CHECK", "1")
    env["FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION"] = "1"
    bin_dir = str(Path(sys.executable).parent)
    path = env.get("PATH", "")
    if bin_dir not in path.split(os.pathsep):
        env["PATH"] = bin_dir + (os.pathsep + path if path else "")
    return env


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

    Creates the node key and the executor secret when missing.

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
    if not config.audit_key_path.is_file():
        from slidefed.client.keys import ensure_audit_key

        ensure_audit_key(config)
    key = node_key_path(config)
    ensure_node_key(config)
    secret = ensure_superexec_secret(config)
    flwr_home = config.state_dir / "flwr"
    flwr_home.mkdir(parents=True, exist_ok=True)
    port = runtime_port or free_port()
    node_config = 'site-config="' + str(site_toml).replace('"', '\\"') + '"'
    supernode = [
        flower_executable("flower-supernode"),
        "--superlink",
        superlink,
        "--node-config",
        node_config,
        "--isolation",
        "process",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--superexec-auth-secret-file",
        str(secret),
    ]
    if max_wait_time is not None:
        supernode += ["--max-wait-time", str(max_wait_time)]
    if insecure:
        supernode.append("--insecure")
    else:
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
        supernode += [
            "--root-certificates",
            str(ca_path),
            "--auth-supernode-private-key",
            str(key),
        ]
    executor = [
        sys.executable,
        "-m",
        "slidefed.deploy.approval",
        "executor",
        "--runtime-api-address",
        f"127.0.0.1:{port}",
        "--site-config",
        str(site_toml),
        "--superexec-auth-secret-file",
        str(secret),
    ]
    return SiteLaunch(
        supernode=supernode,
        executor=executor,
        env=flower_env(flwr_home),
        runtime_port=port,
        insecure=insecure,
    )


# ---------------------------------------------------------------- supervisor
_FORWARDED = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)

_CAUSES = (
    ("[code: 2004]", "not_registered"),
    ("No SuperNode found with the given public key", "not_registered"),
    ("CERTIFICATE_VERIFY_FAILED", "tls_untrusted"),
    ("SSL/TLS handshake error", "tls_untrusted"),
)


class SupervisedExit(BaseModel):
    """How a supervised site ended."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    code: int
    flower_code: int | None = None
    cause: str = ""


class _Watcher:
    """Copies the first process's output through and notes Flower's exit reason."""

    def __init__(self, on_connected: Callable[[], None] | None = None) -> None:
        self.flower_code: int | None = None
        self.cause = ""
        self._on_connected = on_connected

    def pump(self, stream: Any) -> None:
        for raw in iter(stream.readline, b""):
            with contextlib.suppress(OSError, ValueError):
                sys.stdout.buffer.write(raw)
                sys.stdout.buffer.flush()
            line = raw.decode("utf-8", errors="replace")
            if "SuperNode ID:" in line and self._on_connected is not None:
                with contextlib.suppress(OSError):
                    self._on_connected()
                self._on_connected = None
            found = re.search(r"Exit Code: (\d+)", line)
            if found:
                self.flower_code = int(found.group(1))
            for needle, cause in _CAUSES:
                if needle in line and not self.cause:
                    self.cause = cause


def supervise(
    commands: list[list[str]],
    env: dict[str, str],
    *,
    grace: float = 10.0,
    on_connected: Callable[[], None] | None = None,
) -> SupervisedExit:
    """Run ``commands`` side by side until one ends; then stop the others.

    The first command's output is passed through and read for Flower's exit
    reason (``Exit Code: 305`` and why).

    Parameters
    ----------
    commands : list of list of str
        The processes, started in order (the first one's exit code wins ties).
    env : dict of str to str
        Their environment.
    grace : float
        Seconds between SIGTERM and SIGKILL when stopping.
    on_connected : callable, optional
        Called once when the SuperNode reports its node id (it was accepted).

    Returns
    -------
    SupervisedExit
        Exit code of the process that ended first (128 + signal number when a
        forwarded signal stopped the site), Flower's own exit code and its cause
        (``not_registered``, ``tls_untrusted``) when the output named them.
    """
    procs: list[subprocess.Popen[bytes]] = []
    received: list[int] = []
    watcher = _Watcher(on_connected)
    pump: threading.Thread | None = None

    def forward(signum: int, _frame: FrameType | None) -> None:
        received.append(signum)
        for proc in procs:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)

    previous = {s: signal.signal(s, forward) for s in _FORWARDED}
    try:
        for command in commands:
            if not procs:
                first = subprocess.Popen(
                    command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
                )
                procs.append(first)
                pump = threading.Thread(
                    target=watcher.pump, args=(first.stdout,), daemon=True
                )
                pump.start()
                # The SuperNode must be listening before the executor dials it.
                time.sleep(0.5)
            else:
                procs.append(subprocess.Popen(command, env=env))
        code = _wait_first(procs)
    finally:
        _stop_all(procs, grace)
        if pump is not None:
            pump.join(timeout=5)
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if received:
        code = 128 + received[0]
    return SupervisedExit(
        code=code, flower_code=watcher.flower_code, cause=watcher.cause
    )


def _wait_first(procs: list[subprocess.Popen[bytes]]) -> int:
    while True:
        for proc in procs:
            code = proc.poll()
            if code is not None:
                return code
        time.sleep(0.2)


def _stop_all(procs: list[subprocess.Popen[bytes]], grace: float) -> None:
    for proc in procs:
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + grace
    for proc in procs:
        try:
            proc.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


__all__ = [
    "SUPERNODE_EXIT_AUTH",
    "SiteLaunch",
    "SupervisedExit",
    "build_site_launch",
    "ensure_node_key",
    "ensure_superexec_secret",
    "flower_env",
    "flower_executable",
    "free_port",
    "node_key_path",
    "supervise",
]
