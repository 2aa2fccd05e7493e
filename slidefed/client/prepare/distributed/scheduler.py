"""Slides as Ray tasks on the hospital's cluster, features into the site's cache.

The machine that runs ``site prepare`` (the driver) has already hashed the
slides and found the cached ones (:func:`slidefed.client.prepare.pipeline
.prepare_site`); here the rest is sent to the cluster:

* one task per slide plans its tile grid and, when the slide is small, reads
  and encodes it; a large slide comes back as a plan, and each of its regions
  becomes a task of its own (regions of started slides go before new slides,
  so that slides finish, and are cached, early);
* at most ``[prepare] ray_max_in_flight`` tasks are in flight (default: twice
  the cluster's CPUs), so that neither the nodes nor the driver hold more than
  a bounded amount of work;
* tasks ask for one CPU, and for ``ray_gpus_per_task`` GPUs when the encoder is
  a network and the cluster has GPUs;
* a task whose worker process or node dies is run again elsewhere by Ray
  (``max_retries``); a slide that fails even so, or whose task raises, is
  recorded as skipped with the reason, and the others go on;
* with ``[qc]`` enabled, nodes assess the slides and filter their tiles as a
  local run does, and return the masks and tallies; the driver writes each
  slide's QC record and thumbnail (``state/qc``: the nodes need not see the
  site's disk) and skips, and remembers, a slide that fails QC;
* only the driver writes the cache, with the same keys and the same arrays as a
  local run, and a slide only once all its regions are back: a run killed
  half-way leaves whole slides, which the next run (local or on the cluster)
  finds cached.

Ray is imported only here, and only when a cluster is asked for.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from numpy.typing import NDArray

from slidefed.client.config import FeaturesSection, SiteConfig
from slidefed.client.prepare.cache import FeatureCache
from slidefed.client.prepare.distributed.work import (
    NodeFacts,
    RegionDone,
    SlidePlan,
    SlideSkip,
    SlideWork,
    node_facts,
    read_region,
    start_slide,
)
from slidefed.client.prepare.qc.checker import SlideChecker
from slidefed.client.prepare.qc.masks import SlideMasks
from slidefed.client.prepare.report import SlideOutcome
from slidefed.client.prepare.slide import _finish, _qc_verdict
from slidefed.client.prepare.tiling import TileGrid
from slidefed.common.errors import ConfigError

logger = logging.getLogger(__name__)

#: Times Ray runs a task again after its worker process or node died.
MAX_RETRIES = 3


class SlideJob(Protocol):
    """A slide the driver found uncached (the pipeline's job)."""

    @property
    def row(self) -> int:
        """Row in the manifest."""

    @property
    def slide(self) -> str:
        """The slide as the manifest names it."""

    @property
    def path(self) -> Path:
        """The slide's file or folder."""

    @property
    def key(self) -> str:
        """Feature cache key."""


def _import_ray() -> Any:
    try:
        import ray
    except ImportError as exc:
        msg = (
            "preparing on a Ray cluster needs Ray on this machine and on every node; "
            "install the site extra (pip install 'slidefed[site]')"
        )
        raise ConfigError(msg) from exc
    return ray


def _no_cluster(address: str, why: object) -> ConfigError:
    return ConfigError(
        f"no Ray cluster answers at {address} ({why}); start the site's head node "
        "with 'ray start --head --port PORT' and give --ray HOST:PORT (or "
        "[prepare] ray_address in site.toml)"
    )


def _probe(address: str) -> None:
    """Fail fast when nothing listens at HOST:PORT (Ray itself retries for minutes)."""
    if address == "auto" or "://" in address:
        return
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit():
        msg = f"--ray {address!r} is not HOST:PORT; give the head node's address"
        raise ConfigError(msg)
    try:
        socket.create_connection((host or "127.0.0.1", int(port)), timeout=5).close()
    except OSError as exc:
        raise _no_cluster(address, exc.strerror or exc) from exc


def connect(address: str) -> Any:
    """Join the Ray cluster at ``address`` as its driver; the ``ray`` module.

    Raises
    ------
    ConfigError
        If Ray is missing, or no cluster answers at ``address``.
    """
    ray = _import_ray()
    _probe(address)
    # Keep CUDA_VISIBLE_DEVICES as Ray sets it for GPU tasks only (and quiet).
    os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")
    # Nothing leaves the site: no usage report to Ray's makers.
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    if ray.is_initialized():
        ray.shutdown()
    try:
        ray.init(address=address, log_to_driver=False, logging_level=logging.WARNING)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        raise _no_cluster(address, exc) from exc
    return ray


def check_nodes(ray: Any, slides: Sequence[Path]) -> list[NodeFacts]:
    """Ask every alive node for its slidefed version and whether it sees ``slides``.

    Raises
    ------
    ConfigError
        If a node runs another slidefed, or does not see the slide store.
    """
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    from slidefed import __version__

    remote = ray.remote(num_cpus=0)(node_facts)
    refs = [
        remote.options(
            scheduling_strategy=NodeAffinitySchedulingStrategy(
                node["NodeID"], soft=False
            )
        ).remote([str(p) for p in slides])
        for node in ray.nodes()
        # A node without CPUs (a head that only coordinates) gets no slide.
        if node.get("Alive") and node.get("Resources", {}).get("CPU", 0) > 0
    ]
    facts: list[NodeFacts] = ray.get(refs)
    for fact in facts:
        if fact.version != __version__:
            msg = (
                f"Ray node {fact.host} runs slidefed {fact.version}, this machine "
                f"{__version__}; install the same version on every node"
            )
            raise ConfigError(msg)
        if not fact.slides_visible:
            msg = (
                f"Ray node {fact.host} (pid {fact.pid}) does not see the site's "
                "slides; mount the slide store at the same path on every node"
            )
            raise ConfigError(msg)
    return facts


@dataclass
class _Slide:
    """A slide on the cluster: its job, work and the regions back so far."""

    job: SlideJob
    work: SlideWork
    start: float
    regions: dict[int, RegionDone] = field(default_factory=dict)
    expected: int = 1
    refs: set[Any] = field(default_factory=set)
    masks: SlideMasks | None = None
    grid: TileGrid | None = None


class _Scheduler:
    """Bounded submission of slide and region tasks; outcomes as they finish."""

    def __init__(
        self,
        ray: Any,
        config: SiteConfig,
        features: FeaturesSection,
        record: Callable[[SlideOutcome], None],
    ) -> None:
        self.ray = ray
        self.config = config
        self.features = features
        self.record = record
        self.cache = FeatureCache(config.cache_dir)
        resources = ray.cluster_resources()
        cpus = int(resources.get("CPU", 1)) or 1
        self.limit = config.prepare.ray_max_in_flight or 2 * cpus
        options: dict[str, Any] = {
            "num_cpus": 1,
            "max_retries": MAX_RETRIES,
            "retry_exceptions": False,
            "scheduling_strategy": "SPREAD",
        }
        if features.encoder.startswith("timm:") and resources.get("GPU", 0) > 0:
            options["num_gpus"] = config.prepare.ray_gpus_per_task
        self.start_task = ray.remote(start_slide).options(**options)
        self.region_task = ray.remote(read_region).options(**options)
        self.slides: dict[int, _Slide] = {}
        self.pending: dict[Any, tuple[int, int | None]] = {}
        # (row, region, its grid, the slide's QC masks in Ray's object store)
        self.regions: deque[tuple[int, int, Any, Any]] = deque()
        self.peak_in_flight = 0

    def _work(self, job: SlideJob) -> SlideWork:
        return SlideWork(
            row=job.row,
            path=str(job.path),
            tiling=self.config.tiling,
            features=self.features,
            max_tile_pixels=self.config.prepare.max_tile_pixels,
            region_tiles=self.config.prepare.ray_region_tiles,
            qc=self.config.qc if self.config.qc.enabled else None,
        )

    def _submit(self, row: int, index: int | None, ref: Any) -> None:
        self.pending[ref] = (row, index)
        self.slides[row].refs.add(ref)
        self.peak_in_flight = max(self.peak_in_flight, len(self.pending))

    def _fill(self, todo: deque[SlideJob]) -> None:
        while len(self.pending) < self.limit and (self.regions or todo):
            if self.regions:
                row, index, grid, masks = self.regions.popleft()
                if row in self.slides:  # not failed meanwhile
                    work = self.slides[row].work
                    ref = self.region_task.remote(work, grid, masks)
                    self._submit(row, index, ref)
                continue
            job = todo.popleft()
            work = self._work(job)
            self.slides[job.row] = _Slide(job=job, work=work, start=time.perf_counter())
            self._submit(job.row, None, self.start_task.remote(work))

    def run(self, jobs: Sequence[SlideJob]) -> None:
        """Prepare ``jobs`` on the cluster; record each slide's outcome once."""
        todo = deque(jobs)
        self._fill(todo)
        while self.pending:
            ready, _ = self.ray.wait(list(self.pending), num_returns=1)
            for ref in ready:
                self._collect(ref)
            self._fill(todo)

    def _collect(self, ref: Any) -> None:
        row, index = self.pending.pop(ref)
        slide = self.slides.get(row)
        if slide is None:  # the slide failed already
            return
        slide.refs.discard(ref)
        try:
            result = self.ray.get(ref)
        except self.ray.exceptions.RayTaskError as exc:
            cause = getattr(exc, "cause", None) or exc
            self._fail(
                slide, f"failed on the cluster ({type(cause).__name__}: {cause})"
            )
            return
        except self.ray.exceptions.RayError as exc:
            self._fail(
                slide,
                f"lost on the cluster after {MAX_RETRIES} retries "
                f"({type(exc).__name__}); run 'site prepare' again",
            )
            return
        if isinstance(result, SlideSkip):
            if result.remember:
                self.cache.save_skip(
                    slide.job.key,
                    result.reason,
                    fallback_mpp=self.config.tiling.fallback_mpp,
                )
            self._fail(slide, result.reason)
        elif isinstance(result, SlidePlan):
            self._split(slide, result)
        else:
            if index is None:  # a slide of one region
                slide.masks, slide.grid = result.masks, result.grid
            slide.regions[index or 0] = result
            if len(slide.regions) == slide.expected:
                self._finish(slide)

    def _split(self, slide: _Slide, plan: SlidePlan) -> None:
        slide.expected = len(plan.regions)
        slide.masks, slide.grid = plan.masks, plan.grid
        row = slide.job.row
        # The masks go to the object store once, not once per region.
        masks = self.ray.put(plan.masks) if plan.masks is not None else None
        for i, (a, b) in enumerate(plan.regions):
            grid = plan.grid.model_copy(update={"coords": plan.grid.coords[a:b]})
            self.regions.append((row, i, grid, masks))
        logger.info("slide #%d: %d regions", row, slide.expected)

    def _fail(self, slide: _Slide, reason: str) -> None:
        del self.slides[slide.job.row]
        for ref in slide.refs:
            self.ray.cancel(ref)
        self.record(
            SlideOutcome(
                slide=slide.job.slide,
                status="skipped",
                reason=reason,
                row=slide.job.row,
                seconds=round(time.perf_counter() - slide.start, 3),
            )
        )

    def _finish(self, slide: _Slide) -> None:
        del self.slides[slide.job.row]
        parts: list[NDArray[np.float32]] = []
        coords: list[tuple[int, int]] = []
        failed: list[str] = []
        for i in range(slide.expected):
            region = slide.regions[i]
            if region.coords:
                parts.append(region.features)
            coords.extend(region.coords)
            failed.extend(region.failed)
        decoded = sum(r.decoded for r in slide.regions.values())
        job = slide.job
        verdict = _qc_verdict(
            self._checker(slide),
            self.config.qc_dir,
            slide_rel=job.slide,
            row=job.row,
            key=job.key,
            grid=slide.grid,
        )
        self.record(
            _finish(
                job.slide,
                job.row,
                job.key,
                self.cache,
                (parts, coords, failed),
                decoded,
                slide.start,
                verdict,
                fallback_mpp=slide.grid.fallback_mpp if slide.grid else None,
            )
        )

    def _checker(self, slide: _Slide) -> SlideChecker | None:
        """The slide's QC as a local run ends it: its masks, all regions' tallies."""
        if slide.work.qc is None or slide.masks is None:
            return None
        checker = SlideChecker(slide.work.qc, self.features.encoder, slide.masks)
        for i in range(slide.expected):
            tally = slide.regions[i].tally
            if tally is not None:
                checker.tally.merge(tally)
        return checker


def prepare_on_ray(
    address: str,
    config: SiteConfig,
    features: FeaturesSection,
    jobs: Sequence[SlideJob],
    record: Callable[[SlideOutcome], None],
) -> None:
    """Prepare the uncached slides ``jobs`` on the Ray cluster at ``address``.

    Parameters
    ----------
    address : str
        The cluster's head node, ``HOST:PORT`` (or ``auto``).
    config : SiteConfig
        The site.
    features : FeaturesSection
        The site's encoder settings, weights resolved.
    jobs : sequence of SlideJob
        The slides to prepare (hashed, not cached).
    record : callable
        Called once with each slide's outcome, as it is known.

    Raises
    ------
    ConfigError
        If Ray is missing, no cluster answers, or a node cannot do the work.
    """
    if not jobs:
        return
    ray = connect(address)
    try:
        facts = check_nodes(ray, [config.slides_root, jobs[0].path])
        logger.info("preparing %d slides on %d Ray nodes", len(jobs), len(facts))
        scheduler = _Scheduler(ray, config, features, record)
        scheduler.run(jobs)
        logger.info("at most %d Ray tasks were in flight", scheduler.peak_in_flight)
    finally:
        ray.shutdown()


__all__ = ["MAX_RETRIES", "SlideJob", "check_nodes", "connect", "prepare_on_ray"]
