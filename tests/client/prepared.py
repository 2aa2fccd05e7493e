"""Sites of the shared synthetic slides, prepared as ``slidefed site prepare`` does.

A round reads only prepared features, so a test that sends Messages to a site
prepares it first. The shared slides are prepared once (in their own
``state/cache``); each site gets a copy of that cache, so its own preparation
only hashes the slides and writes its report.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from slidefed.client.config import load_site_config
from slidefed.client.prepare.pipeline import prepare_site
from slidefed.client.prepare.report import PrepareReport
from slidefed.demo.synth import SynthSite


def shared_cache(small_site: SynthSite) -> Path:
    """The feature cache of the shared slides, prepared on first use."""
    cache = small_site.root / "state" / "cache"
    if not any(cache.glob("*.npz")):
        prepare_site(load_site_config(small_site.root / "site.toml"), workers=1)
    return cache


def prepare_like_shared(site_toml: Path, small_site: SynthSite) -> PrepareReport:
    """Prepare a site of the shared slides (its own state) from the shared cache."""
    config = load_site_config(site_toml)
    shutil.copytree(shared_cache(small_site), config.cache_dir, dirs_exist_ok=True)
    return prepare_site(config, workers=1)


__all__ = ["prepare_like_shared", "shared_cache"]
