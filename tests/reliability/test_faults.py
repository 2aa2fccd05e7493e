"""Faults at a site: a killed prepare, a full disk under the ledger and the audit log."""

import errno
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from slidefed.audit.verify import verify_log
from slidefed.client.config import load_site_config
from slidefed.demo.synth import synth_site

pytestmark = pytest.mark.reliability


def test_kill_during_site_prepare_loses_nothing_and_redoes_nothing(
    tmp_path: Path,
) -> None:
    synth_site(tmp_path, patients=14, seed=9, width=2048, height=1536)
    (tmp_path / "site.toml").write_text('[site]\nname = "k"\n')
    cache = tmp_path / "state" / "cache"
    cmd = [
        sys.executable,
        "-m",
        "slidefed.cli",
        "site",
        "prepare",
        "--config",
        str(tmp_path / "site.toml"),
        "--workers",
        "1",
        "--json",
    ]
    proc = subprocess.Popen(
        cmd,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    deadline = time.monotonic() + 300
    while len(list(cache.glob("*.npz"))) < 3:
        assert proc.poll() is None, "prepare finished before it could be killed"
        assert time.monotonic() < deadline
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    done_before = {p.name for p in cache.glob("*.npz")}

    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    report = json.loads(out[out.index("{") :])
    statuses = [s["status"] for s in report["slides"]]
    keys_ok = {s["key"] + ".npz" for s in report["slides"] if s["status"] == "ok"}
    keys_cached = {
        s["key"] + ".npz" for s in report["slides"] if s["status"] == "cached"
    }
    assert set(statuses) <= {"ok", "cached"}
    assert keys_cached == done_before  # everything finished before the kill is kept
    assert not keys_ok & done_before  # and none of it is prepared twice
    assert len(keys_ok | keys_cached) == len(report["slides"])


def _enospc(*_args: object, **_kwargs: object) -> None:
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


@pytest.fixture
def app_site(small_site, tmp_path: Path) -> Path:
    from slidefed.client.keys import ensure_site_keys

    path = tmp_path / "site.toml"
    path.write_text(
        f'[site]\nname = "full-disk"\nmanifest = "{small_site.manifest}"\n'
        f'slides_root = "{small_site.root}"\n'
    )
    ensure_site_keys(load_site_config(path))
    from tests.client.prepared import prepare_like_shared

    prepare_like_shared(path, small_site)  # rounds read prepared features only
    return path


def _train_once(site_toml: Path, run_id: int = 42):
    from slidefed.client.app import app
    from tests.client.test_app import _context, _message

    ctx = _context(site_toml, target_epsilon=2.0)
    ctx.run_id = run_id
    return app(_message("train", 1), ctx)


def test_disk_full_while_the_ledger_is_written_refuses_the_round(
    app_site: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = load_site_config(app_site)
    first = _train_once(app_site, run_id=1)
    assert not first.has_error()
    ledger_before = config.ledger_path.read_bytes()

    monkeypatch.setattr("slidefed.common.fileio.os.fsync", _enospc)
    reply = _train_once(app_site, run_id=2)
    assert reply.has_error()
    assert "storage error" in str(reply.error.reason)
    assert config.ledger_path.read_bytes() == ledger_before
    assert not list(config.ledger_path.parent.glob("*.tmp"))
    assert verify_log(config.audit_path).ok


def test_disk_full_while_the_audit_log_is_written_refuses_the_round(
    app_site: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = load_site_config(app_site)
    monkeypatch.setattr("slidefed.common.audit.writer.os.write", _enospc)
    reply = _train_once(app_site)
    assert reply.has_error()
    assert "storage error" in str(reply.error.reason)
    monkeypatch.undo()
    if config.audit_path.exists():
        assert verify_log(config.audit_path).ok
    # Nothing was released, so nothing may have been charged either.
    from slidefed.client.privacy.ledger import PrivacyLedger

    assert PrivacyLedger(config.ledger_path).load().rounds == []
