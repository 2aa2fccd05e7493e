"""``site prepare --ray``: a 2-node Ray cluster on 127.0.0.1 (``ray start``).

One cluster (a head node and one more node, one CPU each) serves every test in
this module; each test prepares the same synthetic site into a cache of its own
and compares it with a local preparation of that site (with QC, as a site has
it by default: features, skips, QC records and thumbnails, the QC report).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from slidefed.cli import main
from slidefed.client.config import load_site_config
from slidefed.client.prepare.distributed.loopback import LoopbackCluster
from slidefed.client.prepare.pipeline import prepare_site
from slidefed.client.prepare.report import PrepareReport, SlideOutcome
from slidefed.demo.synth import synth_site
from tests.client.prepare.distributed.qc_slides import write_qc_slides

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[4]
# Regions of 8 tiles (2 batches of 4): every synthetic slide is split.
SETTINGS = "[features]\nbatch_size = 4\n[prepare]\nray_region_tiles = 8\n"


@pytest.fixture(scope="module")
def cluster() -> Iterator[LoopbackCluster]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(REPO), env.get("PYTHONPATH", "")) if p
    )
    with LoopbackCluster.started(head_cpus=1, workers=1, env=env) as found:
        yield found


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Synthetic slides (:func:`_good`, one with tiles QC drops), a blurred one
    that fails QC, a truncated one and a file that is not one."""
    root = tmp_path_factory.mktemp("raysite")
    made = synth_site(root, patients=5, seed=5, width=1024, height=768)
    first = sorted((root / "slides").glob("*.tif"))[0]
    write_qc_slides(first, root / "slides")
    (root / "slides" / "cut.tif").write_bytes(first.read_bytes()[:5000])
    (root / "slides" / "notes.tif").write_text("a scanner log, not a slide\n")
    with made.manifest.open("a") as fh:
        fh.write(
            "slides/partly.tif,PX3,0,train\nslides/blurred.tif,PX4,1,train\n"
            "slides/cut.tif,PX1,0,train\nslides/notes.tif,PX2,1,train\n"
        )
    _config(root, "local")
    prepare_site(load_site_config(root / "local.toml"), workers=1)
    return root


def _good(root: Path) -> int:
    """How many good slides the site has (the manifest ends with the 3 bad ones)."""
    return len((root / "manifest.csv").read_text().splitlines()) - 4


def _config(root: Path, name: str) -> Path:
    path = root / f"{name}.toml"
    path.write_text(f'[site]\nname = "t"\nstate_dir = "state-{name}"\n{SETTINGS}')
    return path


def _cache(root: Path, name: str) -> dict[str, object]:
    """Every file of a cache; an .npz as its arrays (dtype, shape, bytes)."""
    contents: dict[str, object] = {}
    for f in sorted((root / f"state-{name}" / "cache").iterdir()):
        if f.name.startswith("."):  # a write the killed run left unfinished
            continue
        if f.suffix == ".npz":
            with np.load(f) as data:
                contents[f.name] = {
                    k: (data[k].dtype.str, data[k].shape, data[k].tobytes())
                    for k in data.files
                }
        else:
            contents[f.name] = f.read_bytes()
    return contents


def _qc(root: Path, name: str) -> dict[str, object]:
    """Every QC record and thumbnail (bytes), and the QC report (parsed)."""
    contents: dict[str, object] = {}
    for f in sorted((root / f"state-{name}" / "qc").iterdir()):
        if f.name == "qc-report.json":
            report = json.loads(f.read_text())
            report.pop("generated")
            contents[f.name] = report
        elif not f.name.startswith("."):
            contents[f.name] = f.read_bytes()
    return contents


def _outcomes(report: PrepareReport) -> list[tuple[object, ...]]:
    """What each slide's outcome says, but its times and decoding counts."""
    return [
        (o.row, o.slide, o.status, o.reason, o.key, o.tiles, o.qc, o.qc_dropped_tiles)
        for o in sorted(report.slides, key=lambda o: o.row)
    ]


def _report(root: Path, name: str) -> PrepareReport:
    path = root / f"state-{name}" / "prepare-report.json"
    return PrepareReport.model_validate_json(path.read_text())


def test_cluster_cache_equals_local_bit_for_bit(
    cluster: LoopbackCluster, site: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = _config(site, "ray")

    rc = main(
        ["site", "prepare", "--config", str(config), "--ray", cluster.address, "--json"]
    )

    out = json.loads(capsys.readouterr().out)
    assert rc == 0
    assert _cache(site, "ray") == _cache(site, "local")
    statuses = Counter(s["status"] for s in out["slides"])
    assert statuses == {"ok": _good(site), "skipped": 3}
    reasons = {s["slide"]: s["reason"] for s in out["slides"] if s["reason"]}
    assert set(reasons) == {"slides/cut.tif", "slides/notes.tif", "slides/blurred.tif"}
    assert reasons["slides/blurred.tif"].startswith("failed QC: every tissue tile")
    assert _outcomes(_report(site, "ray")) == _outcomes(_report(site, "local"))
    qc = {s["slide"]: (s["qc"], s["qc_dropped_tiles"]) for s in out["slides"]}
    assert qc["slides/blurred.tif"][0] == "fail"
    assert qc["slides/partly.tif"][1] >= 2  # in the first and the last region
    ray_qc = _qc(site, "ray")
    assert ray_qc == _qc(site, "local")
    assert sum(name.endswith(".png") for name in ray_qc) == _good(site) + 1
    # A later run on this machine alone finds every slide cached.
    again = prepare_site(load_site_config(config), workers=1)
    assert Counter(s.status for s in again.slides) == {
        "cached": _good(site),
        "skipped": 3,
    }
    assert _outcomes(again)[-3][6] == "fail"  # blurred.tif, known to fail


def _kill_one_busy_worker(cluster: LoopbackCluster, done: threading.Event) -> list[int]:
    killed: list[int] = []

    def hunt() -> None:
        while not done.is_set() and not killed:
            for pid in cluster.busy_workers(1):
                os.kill(pid, signal.SIGKILL)
                killed.append(pid)
                break
            time.sleep(0.05)

    threading.Thread(target=hunt, daemon=True).start()
    return killed


def test_worker_killed_mid_slide_is_retried_elsewhere(
    cluster: LoopbackCluster, site: Path
) -> None:
    config = load_site_config(_config(site, "killed"))
    seen: list[SlideOutcome] = []
    done = threading.Event()
    killed = _kill_one_busy_worker(cluster, done)

    try:
        report = prepare_site(config, ray_address=cluster.address, progress=seen.append)
    finally:
        done.set()

    assert killed, "no worker of the second node was seen at work"
    n = _good(site)
    # Each slide once; a slide is named by its manifest line (the header is 1).
    assert sorted(o.row for o in seen) == list(range(2, n + 5))
    assert Counter(o.status for o in report.slides) == {"ok": n, "skipped": 3}
    assert _cache(site, "killed") == _cache(site, "local")
    assert _qc(site, "killed") == _qc(site, "local")


def test_killed_cluster_run_resumes_without_redoing_slides(
    cluster: LoopbackCluster, site: Path
) -> None:
    config = _config(site, "resume")
    cache = site / "state-resume" / "cache"
    env = dict(os.environ, PYTHONPATH=str(REPO))
    cmd = [sys.executable, "-m", "slidefed.cli", "site", "prepare"]
    driver = subprocess.Popen(
        [*cmd, "--config", str(config), "--ray", cluster.address, "--json"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 120
    while not list(cache.glob("*.npz")) and time.monotonic() < deadline:
        time.sleep(0.05)
    driver.send_signal(signal.SIGKILL)
    driver.wait()
    finished = {p.stem for p in cache.glob("*.npz")}

    report = prepare_site(load_site_config(config), ray_address=cluster.address)

    assert 0 < len(finished) < _good(site)
    cached = {s.key for s in report.slides if s.status == "cached"}
    assert cached == finished
    assert Counter(s.status for s in report.slides)["ok"] == _good(site) - len(finished)
    assert _cache(site, "resume") == _cache(site, "local")
    assert _qc(site, "resume") == _qc(site, "local")
