"""Hostile input: fuzzed configs, manifests and audit logs give named errors only."""

import contextlib
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from slidefed.cli import main
from slidefed.client.config import load_site_config
from slidefed.client.data.manifest import load_manifest
from slidefed.common.errors import AuditError, ConfigError, ManifestError
from slidefed.common.run_config import parse_run_config

pytestmark = pytest.mark.reliability

SETTINGS = settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
toml_scalars = st.one_of(
    st.integers(-(10**6), 10**6),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=20),
    st.booleans(),
)
keys = st.sampled_from(
    [
        "name",
        "max_epsilon",
        "delta",
        "target_mpp",
        "tile_size",
        "encoder",
        "manifest",
        "min_eval_patients",
        "allowed_tasks",
        "bogus",
        "accountant",
        "secure_rng",
    ]
)
sections = st.sampled_from(["site", "policy", "tiling", "features", "tiles", "nope"])


def _toml(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return '"' + value.replace("\\\\", "").replace('"', "").replace("\n", " ") + '"'
    return repr(value)


@SETTINGS
@given(
    st.dictionaries(
        sections, st.dictionaries(keys, toml_scalars, max_size=4), max_size=4
    )
)
def test_fuzz_site_toml_gives_config_error_only(
    tmp_path: Path, tables: dict[str, dict[str, object]]
) -> None:
    text = "\n".join(
        f"[{section}]\n" + "\n".join(f"{k} = {_toml(v)}" for k, v in values.items())
        for section, values in tables.items()
    )
    path = tmp_path / "site.toml"
    path.write_text(text)
    try:
        load_site_config(path)
    except ConfigError as exc:
        assert str(path) in str(exc)


@SETTINGS
@given(st.binary(max_size=200))
def test_fuzz_site_toml_bytes(tmp_path: Path, blob: bytes) -> None:
    path = tmp_path / "site.toml"
    path.write_bytes(blob)
    with contextlib.suppress(ConfigError):
        load_site_config(path)


@settings(max_examples=150, deadline=None)
@given(
    st.dictionaries(
        st.sampled_from(
            [
                "num-server-rounds",
                "lr",
                "strategy",
                "task",
                "labels",
                "target-epsilon",
                "batch-size",
                "wire-dtype",
                "resume",
                "x-unknown",
                "bag-size",
                "seed",
            ]
        ),
        toml_scalars,
        max_size=5,
    )
)
def test_fuzz_run_config_gives_config_error_only(config: dict[str, object]) -> None:
    try:
        parse_run_config(config)
    except ConfigError as exc:
        assert "--run-config" in str(exc)


@SETTINGS
@given(
    st.lists(
        st.lists(
            st.text(alphabet=st.characters(blacklist_categories=["Cs"]), max_size=12),
            min_size=0,
            max_size=5,
        ),
        max_size=8,
    ),
    st.booleans(),
)
def test_fuzz_manifest_gives_manifest_error_or_rows(
    tmp_path: Path, rows: list[list[str]], header: bool
) -> None:
    lines = ["slide,patient_id,label,split"] if header else []
    lines += [",".join(r) for r in rows]
    path = tmp_path / "manifest.csv"
    path.write_text("\n".join(lines), encoding="utf-8")
    try:
        manifest = load_manifest(path)
    except ManifestError:
        return
    assert manifest.rows


@pytest.fixture(scope="module")
def valid_log(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from slidefed.common.audit.events import RoundCharged
    from slidefed.common.audit.writer import AuditLog
    from slidefed.common.crypto import generate_audit_key

    folder = tmp_path_factory.mktemp("log")
    key = generate_audit_key(folder / "audit_key")
    log = AuditLog(folder / "audit.jsonl", key=key, actor="site", actor_name="fuzz")
    for r in range(1, 4):
        charge = RoundCharged(
            noise_multiplier=1.0,
            sample_rate=0.5,
            steps=2,
            delta=1e-5,
            unit="patient",
            accountant="rdp",
            epsilon_round=1.0,
            epsilon_before=float(r - 1),
            epsilon_after=float(r),
            epsilon_max=10.0,
            replay=False,
        )
        log.append(charge, run_id=1, round=r)
    return folder / "audit.jsonl"


@SETTINGS
@given(st.integers(0, 10**6), st.binary(min_size=1, max_size=8))
def test_fuzz_audit_log_is_verified_or_rejected_never_crashes(
    tmp_path: Path, valid_log: Path, position: int, patch: bytes
) -> None:
    data = bytearray(valid_log.read_bytes())
    at = position % len(data)
    data[at : at + len(patch)] = patch
    target = tmp_path / "audit.jsonl"
    target.write_bytes(bytes(data))
    head = valid_log.with_name(valid_log.name + ".head")
    target.with_name(target.name + ".head").write_bytes(head.read_bytes())
    (tmp_path / "audit_key.pub").write_bytes(
        (valid_log.parent / "audit_key.pub").read_bytes()
    )
    code = main(["audit", "verify", str(target)])
    assert code in (0, 1, 4)
    if bytes(data) != valid_log.read_bytes():
        assert code != 0


def test_audit_error_is_named() -> None:
    assert issubclass(AuditError, Exception)
