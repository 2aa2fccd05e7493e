"""``slidefed bench prepare``: site preparation through Ray against local processes.

One run writes a synthetic site and prepares it, each time into an empty cache:

* locally with 1 and with 2 worker processes (the baselines);
* through a Ray cluster on 127.0.0.1 (``ray start``): a head node that runs no
  task, and 1, then 2, worker nodes of one CPU each;

then reports slides/s of each, the speed-ups, what joining the cluster costs
(connecting and asking every node for its version, once per run) and the time
Ray adds per slide beyond that (Ray with one worker node against one local
process, the same slides). Every cache is checked against the local one, array
for array. On a machine with few cores the speed-up is bounded by the cores,
not by Ray: the report names the core count.
"""

from __future__ import annotations

import os
import platform
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from slidefed.client.config import load_site_config
from slidefed.client.prepare.distributed.loopback import LoopbackCluster
from slidefed.client.prepare.distributed.scheduler import check_nodes, connect
from slidefed.client.prepare.pipeline import prepare_site
from slidefed.demo.synth import synth_site


def _cache_arrays(cache: Path) -> dict[str, bytes]:
    arrays: dict[str, bytes] = {}
    for f in sorted(cache.glob("*.npz")):
        with np.load(f) as data:
            arrays[f.name] = b"".join(data[k].tobytes() for k in sorted(data.files))
    return arrays


class _Site:
    """The synthetic site and one fresh state folder per measurement."""

    def __init__(self, root: Path, *, patients: int, width: int, height: int) -> None:
        self.root = root
        made = synth_site(root, patients=patients, seed=11, width=width, height=height)
        self.slides = made.n_slides
        self.reference: dict[str, bytes] = {}

    def run(self, name: str, **kwargs: Any) -> dict[str, Any]:
        """Prepare into ``state-<name>``; seconds, slides/s and tiles."""
        toml = self.root / f"{name}.toml"
        toml.write_text(f'[site]\nname = "bench"\nstate_dir = "state-{name}"\n')
        config = load_site_config(toml)
        start = time.perf_counter()
        report = prepare_site(config, **kwargs)
        seconds = time.perf_counter() - start
        arrays = _cache_arrays(config.cache_dir)
        if not self.reference:
            self.reference = arrays
        shutil.rmtree(config.state_dir)
        ok = sum(s.status == "ok" for s in report.slides)
        return {
            "seconds": round(seconds, 3),
            "slides_per_s": round(ok / seconds, 3),
            "tiles": sum(s.tiles for s in report.usable),
            "slides_prepared": ok,
            "cache_equal_to_local": arrays == self.reference,
        }


def _connect_seconds(address: str) -> float:
    """Joining the cluster and checking its nodes, as each ``--ray`` run does."""
    start = time.perf_counter()
    ray = connect(address)
    try:
        check_nodes(ray, [Path("/")])
    finally:
        ray.shutdown()
    return round(time.perf_counter() - start, 3)


def _ray_runs(site: _Site, env: dict[str, str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    start = time.perf_counter()
    with LoopbackCluster.started(head_cpus=0, workers=1, env=env) as cluster:
        out["cluster_start_seconds"] = round(time.perf_counter() - start, 1)
        out["connect_seconds"] = _connect_seconds(cluster.address)
        out["1_worker_node"] = site.run("ray1", ray_address=cluster.address)
        cluster.add_node(cpus=1)
        cluster.wait()
        out["2_worker_nodes"] = site.run("ray2", ray_address=cluster.address)
    return out


def bench_prepare(
    *, patients: int = 6, width: int = 1536, height: int = 1024
) -> dict[str, Any]:
    """Slides/s through Ray with 1 and 2 worker nodes against local processes.

    Parameters
    ----------
    patients : int
        Patients of the synthetic site (one to three slides each).
    width, height : int
        Slide size in pixels.

    Returns
    -------
    dict
        The measurements (see the module docstring).
    """
    load_before = round(os.getloadavg()[0], 2)
    env = dict(os.environ)
    repo = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = os.pathsep.join(p for p in (repo, env.get("PYTHONPATH")) if p)
    with tempfile.TemporaryDirectory(prefix="bench-prepare-") as tmp:
        site = _Site(Path(tmp), patients=patients, width=width, height=height)
        site.run("warmup", workers=1)  # page cache, imports; the reference cache
        local = {
            "1_process": site.run("local1", workers=1),
            "2_processes": site.run("local2", workers=2),
        }
        ray = _ray_runs(site, env)
    one, two = ray["1_worker_node"], ray["2_worker_nodes"]
    base1, base2 = local["1_process"], local["2_processes"]
    overhead = (
        one["seconds"] - base1["seconds"] - ray["connect_seconds"]
    ) / site.slides
    return {
        "slides": site.slides,
        "slide_px": [width, height],
        "tiles": base1["tiles"],
        "encoder": "hed",
        "cpu_cores": os.cpu_count(),
        "python": platform.python_version(),
        # Other work on the machine slows every variant; read ratios with it.
        "load_average_before_after": [load_before, round(os.getloadavg()[0], 2)],
        "local": local,
        "ray": ray,
        "speedup_ray_2_nodes_over_1": round(
            two["slides_per_s"] / one["slides_per_s"], 3
        ),
        "speedup_local_2_over_1": round(
            base2["slides_per_s"] / base1["slides_per_s"], 3
        ),
        "ray_1_node_over_local_1_process": round(
            one["slides_per_s"] / base1["slides_per_s"], 3
        ),
        "ray_2_nodes_over_local_2_processes": round(
            two["slides_per_s"] / base2["slides_per_s"], 3
        ),
        "ray_per_slide_overhead_seconds": round(overhead, 3),
    }


__all__ = ["bench_prepare"]
