"""Headless Chromium for the tests that render slidefed's HTML pages."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest


def chromium() -> str | None:
    """Return the Chromium binary to use, or None when there is none."""
    override = os.environ.get("SLIDEFED_CHROMIUM")
    if override:
        return override
    for name in ("chromium", "chromium-browser", "google-chrome", "chrome"):
        found = shutil.which(name)
        if found:
            return found
    return None


@contextlib.contextmanager
def _profile() -> Iterator[str]:
    with tempfile.TemporaryDirectory(prefix="slidefed-chromium-") as folder:
        yield folder


def run_chromium(page: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    """Load ``page`` in headless Chromium, offline, with ``extra`` flags."""
    binary = chromium()
    if binary is None:
        pytest.skip("no Chromium binary (install Debian's chromium package)")
    with _profile() as profile:
        return subprocess.run(
            [
                binary,
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--hide-scrollbars",
                f"--user-data-dir={profile}",
                *extra,
                page.resolve().as_uri(),
            ],
            capture_output=True,
            text=True,
            timeout=120,
            check=True,
        )


__all__ = ["chromium", "run_chromium"]
