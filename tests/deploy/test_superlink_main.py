"""The SuperLink that ``server start`` runs waits longer for SQLite's lock."""

import subprocess
import sys

from slidefed.deploy.superlink_main import SQLITE_BUSY_TIMEOUT_MS, patched_pragmas

PROBE = """
import sqlite3
from slidefed.deploy.superlink_main import apply_lock_wait
from flwr.supercore import sql_mixin
before = sqlite3.connect(":memory:")
sql_mixin._set_sqlite_pragmas(before, None)
apply_lock_wait()
after = sqlite3.connect(":memory:")
sql_mixin._set_sqlite_pragmas(after, None)
print(before.execute("PRAGMA busy_timeout").fetchone()[0],
      after.execute("PRAGMA busy_timeout").fetchone()[0])
"""


def test_connections_opened_after_the_patch_wait_a_minute() -> None:
    out = subprocess.run(
        [sys.executable, "-c", PROBE], capture_output=True, text=True, check=True
    ).stdout.split()
    assert out == ["5000", str(SQLITE_BUSY_TIMEOUT_MS)]


def test_only_the_lock_wait_changes() -> None:
    flower = (("busy_timeout", "5000"), ("journal_mode", "WAL"), ("foreign_keys", "ON"))
    assert patched_pragmas(flower) == (
        ("busy_timeout", "60000"),
        ("journal_mode", "WAL"),
        ("foreign_keys", "ON"),
    )
    assert patched_pragmas((("journal_mode", "WAL"),))[0] == ("busy_timeout", "60000")


def test_the_launcher_is_flowers_superlink() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "slidefed.deploy.superlink_main", "--help"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "usage: flower-superlink" in proc.stdout
    assert "--database" in proc.stdout
