"""The synthetic hospitals of ``slidefed demo``: plan, slides, configs, run config.

:func:`plan_sites` names and sizes the sites, :func:`synthesise` writes their
slides (in parallel processes) and ``site.toml``, :func:`demo_run_config` is the
researcher's side; :mod:`slidefed.demo.runner` runs it all end to end.
"""

from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict

from slidefed.client.config import SiteConfig, SitePolicy, SiteSection, dump_site_config
from slidefed.common.errors import ConfigError
from slidefed.common.run_config import RunConfig

logger = logging.getLogger(__name__)

# Sizes and label balance of the demo sites, cycled when more are asked for.
SITE_PLAN: list[tuple[int, float]] = [(48, 0.5), (36, 0.35), (30, 0.6)]
SLIDE_SIZE = (2048, 1536)
# Each hospital stains and scans a little differently (cycled like SITE_PLAN).
STAINS: list[tuple[float, float, tuple[float, float, float]]] = [
    (0.0, 0.0, (0.0, 0.0, 0.0)),
    (0.04, -0.03, (-4.0, 1.0, 3.0)),
    (-0.04, 0.03, (3.0, -3.0, -1.0)),
]
# A learnable task, not a trivial one: tumour covers a small share of the tissue
# of some of a tumour patient's slides, and some training labels are wrong.
TUMOUR_SHARE = (0.2, 0.35)
TUMOUR_SLIDES = 0.85
LABEL_NOISE = 0.05
# Held-out share of each site's patients: enough for an exact AUC to mean something.
TEST_FRACTION = 0.4


class DemoSite(BaseModel):
    """One synthetic hospital of the demo."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    root: Path
    config_path: Path
    patients: int
    tumour_fraction: float
    seed: int
    index: int = 0


def check_out_dir(out: Path | None) -> Path:
    """The demo folder: ``out`` if it can be written, else a fresh one.

    Raises
    ------
    ConfigError
        If ``out`` cannot be created or written.
    """
    if out is None:
        return Path(tempfile.mkdtemp(prefix="slidefed-demo-", dir=Path.cwd()))
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / ".write-test"
        probe.write_text("ok")
        probe.unlink()
    except OSError as exc:
        raise ConfigError(
            f"--out {out} cannot be written ({exc.strerror or exc}); "
            "choose a folder you can write to"
        ) from exc
    return out.resolve()


def plan_sites(out: Path, n_sites: int, seed: int) -> list[DemoSite]:
    """Names, sizes and label balance of ``n_sites`` demo sites."""
    if n_sites < 1:
        raise ConfigError(f"--sites {n_sites} must be at least 1; use --sites 3")
    sites = []
    for i in range(n_sites):
        patients, tumour = SITE_PLAN[i % len(SITE_PLAN)]
        name = f"hospital-{chr(ord('a') + i % 26)}{'' if i < 26 else i // 26}"
        root = out / "sites" / name
        sites.append(
            DemoSite(
                name=name,
                root=root,
                config_path=root / "site.toml",
                patients=patients,
                tumour_fraction=tumour,
                seed=seed * 1000 + i,
                index=i,
            )
        )
    return sites


def _synth_one(site: DemoSite, events: Any) -> int:
    from slidefed.demo.synth import Look, synth_site

    def report(done: int, total: int) -> None:
        if events is not None:
            events.put((site.name, done, total))

    h_shift, e_shift, tint = STAINS[site.index % len(STAINS)]
    look = Look(tumour_share=TUMOUR_SHARE, h_shift=h_shift, e_shift=e_shift, tint=tint)

    result = synth_site(
        site.root,
        patients=site.patients,
        seed=site.seed,
        tumour_fraction=site.tumour_fraction,
        test_fraction=TEST_FRACTION,
        width=SLIDE_SIZE[0],
        height=SLIDE_SIZE[1],
        progress=report,
        look=look,
        tumour_slides=TUMOUR_SLIDES,
        label_noise=LABEL_NOISE,
    )
    return result.n_slides


def synthesise_one(site: DemoSite) -> int:
    """Write one demo site's slides and site config, in this process; its slides."""
    n_slides = _synth_one(site, None)
    write_site_config(site)
    return n_slides


def synthesise(
    sites: list[DemoSite],
    *,
    workers: int,
    on_progress: Callable[[int, int], None],
) -> None:
    """Write the synthetic slides and site configs of every site.

    ``on_progress(done, total)`` counts slides over all sites; the total grows as
    each site learns how many slides its patients have.
    """
    import multiprocessing
    import queue

    with multiprocessing.Manager() as manager:
        events = manager.Queue()
        state: dict[str, tuple[int, int]] = {}
        with ProcessPoolExecutor(max_workers=workers) as pool:
            futures = [pool.submit(_synth_one, site, events) for site in sites]
            while not all(f.done() for f in futures) or not events.empty():
                try:
                    name, done, total = events.get(timeout=0.2)
                except queue.Empty:
                    continue
                state[name] = (done, total)
                on_progress(
                    sum(d for d, _ in state.values()),
                    sum(t for _, t in state.values()),
                )
            for fut in futures:
                fut.result()
    for site in sites:
        write_site_config(site)


def write_site_config(site: DemoSite) -> SiteConfig:
    """Write ``site.toml`` and the site's audit key."""
    from slidefed.client.keys import ensure_site_keys

    config = SiteConfig(
        site=SiteSection(name=site.name),
        policy=SitePolicy(max_epsilon=10.0, min_eval_patients=5),
        base_dir=site.root,
    )
    site.config_path.write_text(dump_site_config(config))
    ensure_site_keys(config)
    return config


def demo_run_config(
    out: Path, sites: list[DemoSite], rounds: int, seed: int
) -> RunConfig:
    """The researcher's side of the demo.

    Batches of 8 patients at a constant step size. The benchmarks' DP plan (every
    patient in every step, a cosine decay, log inputs) was tried here and not kept:
    at 2 rounds it once ended at AUC 0.796 (docs/researcher-guide.md).
    """
    return RunConfig(
        num_server_rounds=rounds,
        local_epochs=4,
        batch_size=8,
        lr=0.03,
        target_epsilon=8.0,
        max_grad_norm=1.0,
        bag_size=256,
        seed=seed,
        min_sites=len(sites),
        run_dir=str(out / "run"),
        run_name=f"demo:{out / 'run'}",
        sim_sites=",".join(str(s.config_path) for s in sites),
    )


def site_epsilons(sites: list[DemoSite]) -> dict[str, dict[int, float]]:
    """Cumulative epsilon after each round, per site, from each site's own ledger."""
    from slidefed.client.config import load_site_config
    from slidefed.client.privacy.ledger import PrivacyLedger

    out: dict[str, dict[int, float]] = {}
    for site in sites:
        config = load_site_config(site.config_path)
        ledger = PrivacyLedger(config.ledger_path).load()
        out[site.name] = {r.round: r.epsilon_after for r in ledger.rounds}
    return out


def cpu_count() -> int:
    """CPUs this process may use."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def summary_rows(metrics: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The rows of the final table."""
    return [
        {
            "round": r["round"],
            "train_loss": r.get("train_loss"),
            "eval_loss": r.get("eval_loss"),
            "accuracy": r.get("accuracy"),
            "auc": r.get("auc"),
        }
        for r in metrics
    ]


__all__ = [
    "DemoSite",
    "check_out_dir",
    "cpu_count",
    "demo_run_config",
    "plan_sites",
    "site_epsilons",
    "summary_rows",
    "synthesise",
    "write_site_config",
]
