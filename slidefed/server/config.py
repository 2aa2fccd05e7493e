"""The coordinator's configuration, ``server.toml``.

Written by ``slidefed server init`` and extended by ``slidefed server register-site``;
relative paths are resolved against the file's folder.

::

    [server]
    name = "coordinator"
    host = "0.0.0.0"                    # where the public front (nginx) listens
    port = 8000                         # it serves the Fleet API only
    superlink_port = 8001               # flower-superlink itself, on 127.0.0.1
    public_address = "superlink.example.org:8000"   # what sites dial
    control_address = "127.0.0.1:8001"  # what the coordinator's own flwr CLI dials

    [front]
    nginx = "nginx"                     # the reverse proxy's program

    [tls]
    ca_cert = "pki/ca.crt"              # give this file to every site
    ca_key = "pki/ca.key"               # never leaves the coordinator
    cert = "pki/superlink.crt"
    key = "pki/superlink.key"

    [state]
    database = "state/superlink.db"
    audit_key = "state/keys/audit_key"
    flwr_home = "state/flwr"            # FLWR_HOME of the coordinator's flwr CLI
    superlink_home = "state/superlink"  # FLWR_HOME of flower-superlink

    [[sites]]
    name = "hospital-a"
    public_key = "ecdsa-sha2-nistp384 AAAA..."
    node_id = 123456789
    registered_at = "2026-11-30T10:00:00+00:00"
"""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from slidefed.common.fileio import atomic_write_text
from slidefed.common.tomlfile import dump_toml, load_toml_model

SERVER_CONFIG_ENV = "SLIDEFED_SERVER_CONFIG"
"""Environment variable that tells the ServerApp which ``server.toml`` it serves.

``slidefed server start`` sets it; the ServerApp then signs its audit log with the
coordinator's key from ``server init`` (``[state] audit_key``)."""

CONNECTION = "slidefed"
"""Name of the coordinator's connection in its ``$FLWR_HOME/config.toml``."""


class ServerSection(BaseModel):
    """Where the SuperLink listens and how it is reached."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(default="coordinator", pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=1, le=65535)
    public_address: str = "localhost:8000"
    control_address: str = "127.0.0.1:8001"
    superlink_port: int | None = Field(default=None, ge=1, le=65535)

    @property
    def superlink_port_or_default(self) -> int:
        """The SuperLink's own port on 127.0.0.1 (default: the public port + 1)."""
        if self.superlink_port is not None:
            return self.superlink_port
        return self.port + 1 if self.port < 65535 else self.port - 1


class FrontSection(BaseModel):
    """The public front: nginx forwards the Fleet API only (see deploy.front)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    nginx: str = "nginx"


class TlsSection(BaseModel):
    """The federation's CA and the SuperLink's certificate."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    ca_cert: Path = Path("pki/ca.crt")
    ca_key: Path = Path("pki/ca.key")
    cert: Path = Path("pki/superlink.crt")
    key: Path = Path("pki/superlink.key")


class StateSection(BaseModel):
    """Files the coordinator keeps between restarts."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    database: Path = Path("state/superlink.db")
    audit_key: Path = Path("state/keys/audit_key")
    flwr_home: Path = Path("state/flwr")
    superlink_home: Path = Path("state/superlink")


class RegisteredSite(BaseModel):
    """A site whose SuperNode key the SuperLink accepts."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(min_length=1, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    public_key: str = Field(pattern=r"^ecdsa-sha2-nistp384 [A-Za-z0-9+/=]+$")
    node_id: int | None = None
    registered_at: str = ""


class ServerConfig(BaseModel):
    """The whole ``server.toml``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    server: ServerSection = ServerSection()
    front: FrontSection = FrontSection()
    tls: TlsSection = TlsSection()
    state: StateSection = StateSection()
    sites: tuple[RegisteredSite, ...] = ()
    base_dir: Path = Path()

    def resolve(self, path: Path) -> Path:
        """Resolve a path of the config against the config's folder.

        Parameters
        ----------
        path : Path
            Path as written in the file.

        Returns
        -------
        Path
            Absolute path.
        """
        return path if path.is_absolute() else (self.base_dir / path).resolve()

    def site(self, name: str) -> RegisteredSite | None:
        """The registered site called ``name``, if any.

        Parameters
        ----------
        name : str
            Site name.

        Returns
        -------
        RegisteredSite or None
            The entry.
        """
        return next((s for s in self.sites if s.name == name), None)


def load_server_config(path: Path) -> ServerConfig:
    """Read and validate ``server.toml``.

    Parameters
    ----------
    path : Path
        The file.

    Returns
    -------
    ServerConfig
        The config, ``base_dir`` set to the file's folder.

    Raises
    ------
    ConfigError
        If the file is missing, is not TOML, or a value breaks a rule.
    """
    return load_toml_model(
        path, ServerConfig, what="server config", create="slidefed server init DIR"
    )


def dump_server_config(config: ServerConfig) -> str:
    """Render a server config as TOML (the inverse of :func:`load_server_config`).

    Written through ``tomli-w``: any path or name comes back as it went in.

    Parameters
    ----------
    config : ServerConfig
        The config.

    Returns
    -------
    str
        TOML text: ``[server]``, ``[tls]``, ``[state]``, then one ``[[sites]]``
        table per registered site (none when no site is registered).
    """
    data = config.model_dump(
        mode="json", exclude={"base_dir", "sites"}, exclude_none=True
    )
    if config.sites:
        data["sites"] = [
            site.model_dump(mode="json", exclude_none=True) for site in config.sites
        ]
    return dump_toml(data)


def save_server_config(config: ServerConfig, path: Path) -> None:
    """Write ``server.toml`` atomically (a reader never sees half a file).

    Parameters
    ----------
    config : ServerConfig
        The config.
    path : Path
        Destination (mode 0644: it holds no secret).
    """
    atomic_write_text(path, dump_server_config(config))
    path.chmod(0o644)


__all__ = [
    "CONNECTION",
    "SERVER_CONFIG_ENV",
    "FrontSection",
    "RegisteredSite",
    "ServerConfig",
    "ServerSection",
    "StateSection",
    "TlsSection",
    "dump_server_config",
    "load_server_config",
    "save_server_config",
]
