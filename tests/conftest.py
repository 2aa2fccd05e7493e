"""Shared fixtures: small synthetic sites and the real slides in ../shared/data."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from slidefed.demo.synth import SynthSite, synth_site

SHARED_DATA = Path(
    os.environ.get(
        "SLIDEFED_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"
    )
)


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The real slides and tiles (skips when the folder is absent)."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real test data not found at {SHARED_DATA}")
    return SHARED_DATA


@pytest.fixture(scope="session")
def small_site(tmp_path_factory: pytest.TempPathFactory) -> SynthSite:
    """A synthetic site of 10 patients with small slides, with a site.toml."""
    root = tmp_path_factory.mktemp("site")
    site = synth_site(root, patients=10, seed=3, width=1024, height=768)
    (root / "site.toml").write_text('[site]\nname = "test-site"\n')
    return site
