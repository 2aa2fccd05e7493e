"""Tests of slidefed.common.crypto: key files, formats, modes, refusals."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given
from hypothesis import strategies as st

from slidefed.common.crypto import (
    generate_audit_key,
    generate_node_key,
    key_id,
    load_audit_key,
    load_public_key,
    public_key_path,
)
from slidefed.common.errors import ConfigError


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_audit_key_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "keys" / "audit_key"

    key = generate_audit_key(path)

    loaded = load_audit_key(path)
    public = load_public_key(public_key_path(path))
    assert key_id(loaded.public_key()) == key_id(key.public_key())
    assert key_id(public) == key_id(key.public_key())
    assert public_key_path(path) == tmp_path / "keys" / "audit_key.pub"


def test_audit_key_file_formats_and_modes(tmp_path: Path) -> None:
    path = tmp_path / "audit_key"

    key = generate_audit_key(path)

    assert _mode(path) == 0o600
    assert path.read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----")
    pub_text = public_key_path(path).read_text()
    kind, _blob, comment = pub_text.split()
    assert kind == "ssh-ed25519"
    assert key_id(key.public_key()) in comment
    assert pub_text.endswith("\n")


def test_audit_key_mode_ignores_umask(tmp_path: Path) -> None:
    old = os.umask(0)
    try:
        generate_audit_key(tmp_path / "audit_key")
    finally:
        os.umask(old)

    assert _mode(tmp_path / "audit_key") == 0o600


def test_key_id_is_16_hex_and_stable(tmp_path: Path) -> None:
    key = generate_audit_key(tmp_path / "audit_key")

    ident = key_id(key.public_key())

    assert len(ident) == 16
    assert int(ident, 16) >= 0
    assert key_id(load_audit_key(tmp_path / "audit_key").public_key()) == ident


def test_refuses_to_overwrite_audit_key(tmp_path: Path) -> None:
    path = tmp_path / "audit_key"
    generate_audit_key(path)
    before = path.read_bytes()

    with pytest.raises(ConfigError, match="audit_key already exists"):
        generate_audit_key(path)

    assert path.read_bytes() == before


def test_refuses_when_only_the_public_key_exists(tmp_path: Path) -> None:
    path = tmp_path / "audit_key"
    public_key_path(path).write_text("ssh-ed25519 AAAA stale\n")

    with pytest.raises(ConfigError, match=r"audit_key\.pub already exists"):
        generate_audit_key(path)

    assert not path.exists()


def test_load_public_key_accepts_pem(tmp_path: Path) -> None:
    key = Ed25519PrivateKey.generate()
    pem = tmp_path / "key.pem"
    pem.write_bytes(
        key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )

    assert key_id(load_public_key(pem)) == key_id(key.public_key())


def test_load_audit_key_accepts_openssh_private_format(tmp_path: Path) -> None:
    key = Ed25519PrivateKey.generate()
    path = tmp_path / "audit_key"
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.OpenSSH,
            serialization.NoEncryption(),
        )
    )

    assert key_id(load_audit_key(path).public_key()) == key_id(key.public_key())


def test_load_audit_key_missing_names_file_and_fix(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"nope does not exist; create it with"):
        load_audit_key(tmp_path / "nope")


def test_load_audit_key_garbage(tmp_path: Path) -> None:
    path = tmp_path / "audit_key"
    path.write_text("not a key\n")

    with pytest.raises(ConfigError, match="audit_key is not a PEM or OpenSSH"):
        load_audit_key(path)


def test_load_audit_key_encrypted(tmp_path: Path) -> None:
    path = tmp_path / "audit_key"
    path.write_bytes(
        Ed25519PrivateKey.generate().private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"secret"),
        )
    )

    with pytest.raises(ConfigError, match="is encrypted"):
        load_audit_key(path)


def test_load_audit_key_rejects_node_key(tmp_path: Path) -> None:
    path = tmp_path / "node_key"
    generate_node_key(path)

    with pytest.raises(ConfigError, match="not an Ed25519 private key"):
        load_audit_key(path)
    with pytest.raises(ConfigError, match="not an Ed25519 key"):
        load_public_key(public_key_path(path))


def test_load_public_key_garbage(tmp_path: Path) -> None:
    path = tmp_path / "audit_key.pub"
    path.write_text("hello\n")

    with pytest.raises(ConfigError, match=r"audit_key\.pub cannot be read"):
        load_public_key(path)


def test_node_key_is_p384_openssh(tmp_path: Path) -> None:
    path = tmp_path / "keys" / "sn0"

    generate_node_key(path)

    assert _mode(path) == 0o600
    data = path.read_bytes()
    assert data.startswith(b"-----BEGIN OPENSSH PRIVATE KEY-----")
    private = serialization.load_ssh_private_key(data, password=None)
    assert isinstance(private, ec.EllipticCurvePrivateKey)
    assert isinstance(private.curve, ec.SECP384R1)
    pub_bytes = public_key_path(path).read_bytes()
    assert pub_bytes.startswith(b"ecdsa-sha2-nistp384 ")
    public = serialization.load_ssh_public_key(pub_bytes)
    assert public == private.public_key()


def test_refuses_to_overwrite_node_key(tmp_path: Path) -> None:
    path = tmp_path / "sn0"
    generate_node_key(path)

    with pytest.raises(ConfigError, match="sn0 already exists"):
        generate_node_key(path)


@pytest.fixture(scope="module")
def key_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("keys") / "audit_key"
    generate_audit_key(path)
    return path


@given(message=st.binary(max_size=256))
def test_signature_round_trip_through_key_files(key_file: Path, message: bytes) -> None:
    private = load_audit_key(key_file)
    public = load_public_key(public_key_path(key_file))

    public.verify(private.sign(message), message)  # raises if it does not verify
