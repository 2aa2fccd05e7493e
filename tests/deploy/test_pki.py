"""PKI (root CA, SuperLink certificate), server.toml and the coordinator commands."""

from __future__ import annotations

import ssl
import stat
import sys
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID

from slidefed.cli import main
from slidefed.common.crypto import generate_audit_key, generate_node_key
from slidefed.common.errors import ConfigError
from slidefed.common.pki import (
    certificate_info,
    ensure_ca,
    ensure_server_certificate,
    load_certificate,
    verify_issued_by,
)
from slidefed.deploy.coordinator import superlink_command
from slidefed.server.config import (
    RegisteredSite,
    ServerConfig,
    dump_server_config,
    load_server_config,
    save_server_config,
)

KEY = "ecdsa-sha2-nistp384 AAAA"


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _pki(tmp_path: Path) -> tuple[Path, Path, Path, Path]:
    ca, ca_key = tmp_path / "ca.crt", tmp_path / "ca.key"
    cert, key = tmp_path / "s.crt", tmp_path / "s.key"
    ensure_ca(ca, ca_key)
    ensure_server_certificate(
        ca, ca_key, cert, key, dns_names=["localhost"], ip_addresses=["127.0.0.1"]
    )
    return ca, ca_key, cert, key


def test_ca_is_created_once_and_then_reused(tmp_path: Path) -> None:
    ca, key = tmp_path / "pki" / "ca.crt", tmp_path / "pki" / "ca.key"
    first = ensure_ca(ca, key)
    assert first.created == [ca, key]
    before = ca.read_bytes(), key.read_bytes()
    second = ensure_ca(ca, key)
    assert second.reused == [ca, key]
    assert not second.created
    assert (ca.read_bytes(), key.read_bytes()) == before
    assert _mode(key) == 0o600
    assert certificate_info(ca).is_ca


def test_ca_is_never_replaced_silently(tmp_path: Path) -> None:
    ca, key = tmp_path / "ca.crt", tmp_path / "ca.key"
    ensure_ca(ca, key)
    other = tmp_path / "other"
    ensure_ca(other / "ca.crt", other / "ca.key")
    key.write_bytes((other / "ca.key").read_bytes())  # a key of another CA
    with pytest.raises(ConfigError, match="does not belong"):
        ensure_ca(ca, key)
    key.unlink()
    with pytest.raises(ConfigError, match="exists but"):
        ensure_ca(ca, key)
    assert ca.is_file()


def test_server_certificate_has_sans_server_auth_and_chains(tmp_path: Path) -> None:
    ca, _, cert_path, key = _pki(tmp_path)
    cert = load_certificate(cert_path)
    info = certificate_info(cert_path)
    assert info.dns_names == ("localhost",)
    assert info.ip_addresses == ("127.0.0.1",)
    assert not info.is_ca
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert ExtendedKeyUsageOID.SERVER_AUTH in eku
    assert verify_issued_by(cert, load_certificate(ca))
    assert _mode(key) == 0o600
    assert _mode(cert_path) == 0o644
    # The standard library's TLS stack accepts the pair and trusts it via the CA.
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.load_cert_chain(cert_path, key)
    client = ssl.create_default_context(cafile=str(ca))
    assert client.cert_store_stats()["x509_ca"] == 1


def test_server_certificate_is_reused_or_refused_never_overwritten(
    tmp_path: Path,
) -> None:
    ca, ca_key, cert, key = _pki(tmp_path)
    before = cert.read_bytes()
    again = ensure_server_certificate(
        ca, ca_key, cert, key, dns_names=["localhost"], ip_addresses=["127.0.0.1"]
    )
    assert again.reused == [cert, key]
    with pytest.raises(ConfigError, match="aside"):
        ensure_server_certificate(
            ca,
            ca_key,
            cert,
            key,
            dns_names=["localhost", "superlink.example.org"],
            ip_addresses=["127.0.0.1"],
        )
    assert cert.read_bytes() == before


def test_server_certificate_of_another_ca_is_refused(tmp_path: Path) -> None:
    _, _, cert, key = _pki(tmp_path / "one")
    ca2, ca2_key, _, _ = _pki(tmp_path / "two")
    with pytest.raises(ConfigError, match="not issued by this federation's CA"):
        ensure_server_certificate(
            ca2, ca2_key, cert, key, dns_names=["localhost"], ip_addresses=["127.0.0.1"]
        )


@pytest.mark.parametrize(
    ("dns", "ips", "message"),
    [
        ([], [], "at least one"),
        (["bad name!"], [], "not a DNS name"),
        ([], ["1.2.3"], "not an IP"),
    ],
)
def test_server_certificate_rejects_bad_names(
    tmp_path: Path, dns: list[str], ips: list[str], message: str
) -> None:
    ca, ca_key = tmp_path / "ca.crt", tmp_path / "ca.key"
    ensure_ca(ca, ca_key)
    with pytest.raises(ConfigError, match=message):
        ensure_server_certificate(
            ca,
            ca_key,
            tmp_path / "s.crt",
            tmp_path / "s.key",
            dns_names=dns,
            ip_addresses=ips,
        )


def test_server_config_round_trips(tmp_path: Path) -> None:
    config = ServerConfig(
        sites=(
            RegisteredSite(name="site-a", public_key=KEY, node_id=12345678901234567890),
        ),
        base_dir=tmp_path,
    )
    path = tmp_path / "server.toml"
    save_server_config(config, path)
    loaded = load_server_config(path)
    assert loaded.sites == config.sites
    assert loaded.server == config.server
    assert loaded.resolve(Path("pki/ca.crt")) == (tmp_path / "pki/ca.crt").resolve()
    assert "[[sites]]" in dump_server_config(config)


def test_server_config_errors_name_the_key(tmp_path: Path) -> None:
    path = tmp_path / "server.toml"
    path.write_text("[server]\nport = 0\n")
    with pytest.raises(ConfigError, match=r"server\.port"):
        load_server_config(path)
    with pytest.raises(ConfigError, match="not found"):
        load_server_config(tmp_path / "missing.toml")


def test_server_init_cli_creates_everything_and_is_idempotent(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = tmp_path / "coord"
    assert main(["server", "init", str(folder), "--port", "18999"]) == 0
    config = load_server_config(folder / "server.toml")
    assert config.server.port == 18999
    assert config.server.control_address == "127.0.0.1:19000"
    assert config.server.superlink_port == 19000
    for rel, mode in [
        ("pki/ca.key", 0o600),
        ("pki/superlink.key", 0o600),
        ("state/keys/audit_key", 0o600),
        ("pki/ca.crt", 0o644),
    ]:
        assert _mode(folder / rel) == mode, rel
    flwr_config = (folder / "state/flwr/config.toml").read_text()
    assert 'address = "127.0.0.1:19000"' in flwr_config
    assert "root-certificates" in flwr_config
    ca_before = (folder / "pki/ca.crt").read_bytes()
    assert main(["server", "init", str(folder)]) == 0
    assert (folder / "pki/ca.crt").read_bytes() == ca_before
    assert "reused" in capsys.readouterr().out
    # Other names are refused with one line, exit 2, and nothing is replaced.
    assert main(["server", "init", str(folder), "--dns", "other.example.org"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ")
    assert err.count("\n") == 1
    assert (folder / "pki/ca.crt").read_bytes() == ca_before


def test_superlink_command_has_tls_node_auth_and_a_database(tmp_path: Path) -> None:
    folder = tmp_path / "coord"
    assert main(["server", "init", str(folder)]) == 0
    argv, env = superlink_command(folder / "server.toml")
    # Flower's SuperLink, started with a longer SQLite lock wait.
    assert argv[:3] == [sys.executable, "-m", "slidefed.deploy.superlink_main"]
    for flag in (
        "--ssl-ca-certfile",
        "--ssl-certfile",
        "--ssl-keyfile",
        "--enable-supernode-auth",
        "--disable-runtime-dependency-installation",
        "--database",
    ):
        assert flag in argv
    assert "--insecure" not in argv
    assert argv[argv.index("--database") + 1].endswith("state/superlink.db")
    assert env["FLWR_HOME"].endswith("state/superlink")
    assert env["FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION"] == "1"
    insecure, _ = superlink_command(folder / "server.toml", insecure=True)
    assert "--insecure" in insecure
    assert "--enable-supernode-auth" not in insecure
    assert "--ssl-certfile" not in insecure


def test_superlink_command_refuses_a_missing_key(tmp_path: Path) -> None:
    folder = tmp_path / "coord"
    assert main(["server", "init", str(folder)]) == 0
    (folder / "pki/superlink.key").unlink()
    with pytest.raises(ConfigError, match="missing"):
        superlink_command(folder / "server.toml")


def test_register_site_refuses_wrong_keys_before_calling_flower(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = tmp_path / "coord"
    assert main(["server", "init", str(folder)]) == 0
    config = str(folder / "server.toml")
    audit = tmp_path / "audit_key"
    generate_audit_key(audit)
    assert (
        main(
            [
                "server",
                "register-site",
                f"{audit}.pub",
                "--name",
                "a",
                "--config",
                config,
            ]
        )
        == 2
    )
    assert "not a P-384 key" in capsys.readouterr().err
    assert (
        main(
            [
                "server",
                "register-site",
                str(tmp_path / "nope.pub"),
                "--name",
                "a",
                "--config",
                config,
            ]
        )
        == 2
    )
    node = tmp_path / "node_key"
    generate_node_key(node)
    assert (
        main(
            [
                "server",
                "register-site",
                f"{node}.pub",
                "--name",
                "bad name",
                "--config",
                config,
            ]
        )
        == 2
    )
    assert "--name" in capsys.readouterr().err


def test_register_site_without_a_superlink_fails_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = tmp_path / "coord"
    # A port where nothing listens.
    assert main(["server", "init", str(folder), "--port", "1"]) == 0
    node = tmp_path / "node_key"
    generate_node_key(node)
    code = main(
        [
            "server",
            "register-site",
            f"{node}.pub",
            "--name",
            "site-a",
            "--config",
            str(folder / "server.toml"),
        ]
    )
    assert code == 5
    err = capsys.readouterr().err
    assert err.startswith("error: ")
    assert err.count("\n") == 1
    assert not load_server_config(folder / "server.toml").sites
