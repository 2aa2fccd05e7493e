"""What a node prepares before it serves rounds (``site start``, ``simulate``).

Rounds read prepared features only, so the commands that serve them prepare
first whatever ``site prepare`` has not, and leave a prepared site alone.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from slidefed.client.config import load_site_config
from slidefed.client.prepare import check_prepared, prepare_unless_ready
from slidefed.demo.synth import SynthSite
from slidefed.deploy.site_node import prepare_before_serving
from tests.client.prepared import shared_cache


def _site(folder: Path, small_site: SynthSite) -> Path:
    folder.mkdir()
    toml = folder / "site.toml"
    toml.write_text(
        f'[site]\nname = "serving"\nmanifest = "{small_site.manifest}"\n'
        f'slides_root = "{small_site.root}"\n'
    )
    shutil.copytree(shared_cache(small_site), folder / "state" / "cache")
    return toml


def test_site_start_prepares_an_unprepared_site_once(
    small_site: SynthSite, tmp_path: Path
) -> None:
    toml = _site(tmp_path / "site", small_site)
    report_file = tmp_path / "site" / "state" / "prepare-report.json"

    first = prepare_before_serving(toml)
    written = report_file.stat().st_mtime_ns
    second = prepare_before_serving(toml)

    assert len(first) == 1
    assert first[0].startswith(
        f"prepared {small_site.n_slides} of {small_site.n_slides} slides (0 skipped) "
        "before serving rounds"
    )
    assert second == []  # ready: nothing hashed, opened or written
    assert report_file.stat().st_mtime_ns == written
    report, _ = check_prepared(load_site_config(toml))
    assert len(report.usable) == small_site.n_slides


def test_site_start_warns_for_a_site_without_a_manifest(tmp_path: Path) -> None:
    toml = tmp_path / "site.toml"
    toml.write_text('[site]\nname = "bare"\n')

    [line] = prepare_before_serving(toml)

    assert line.startswith(f"warning: no manifest at {tmp_path / 'manifest.csv'}")
    assert f"run 'slidefed site prepare --config {toml}'" in line


def test_a_changed_manifest_is_prepared_again_before_serving(
    small_site: SynthSite, tmp_path: Path
) -> None:
    toml = _site(tmp_path / "site", small_site)
    config = load_site_config(toml)
    assert prepare_unless_ready(config) is not None
    assert prepare_unless_ready(config) is None
    rows = small_site.manifest.read_text().splitlines()
    manifest = tmp_path / "fewer.csv"
    manifest.write_text("\n".join(rows[:-1]) + "\n")  # one slide fewer
    toml.write_text(toml.read_text().replace(str(small_site.manifest), str(manifest)))

    report = prepare_unless_ready(load_site_config(toml))

    assert report is not None
    assert len(report.slides) == small_site.n_slides - 1
    assert {s.status for s in report.slides} == {"cached"}  # nothing decoded
