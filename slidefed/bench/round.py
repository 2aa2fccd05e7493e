"""``slidefed bench round``: what a federated round costs beyond local training.

Two measurements. :func:`site_costs`: one site's train messages, in-process, at the
demo's size and at a realistic size (:mod:`slidefed.bench._site_round`): the fixed
cost of a message in ms and its share of the message (``overhead_fraction``).
:func:`measure`: whole federations of simulated sites, each round against the
local training those sites do (measured in the same run, in-process, on the same
data) and a plain socket.

Sites share one prepared synthetic dataset (their own ledgers, audit logs and keys)
so that 10 or 50 virtual sites fit this machine. The round is run on Flower's
simulation engine with the real ServerApp and ClientApp at the demo's settings. In
the same run the same model tensors are sent with plain ``torch.save`` over a local
socket, the baseline for moving updates at all.
"""

from __future__ import annotations

import io
import json
import os
import socket
import tempfile
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from slidefed.common.run_config import RunConfig


def _shared_site(root: Path, seed: int) -> Path:
    from slidefed.client.config import load_site_config
    from slidefed.client.prepare.pipeline import prepare_site
    from slidefed.demo.synth import synth_site

    shared = root / "shared"
    synth_site(shared, patients=16, seed=seed, width=1024, height=768)
    (shared / "site.toml").write_text('[site]\nname = "shared"\n')
    prepare_site(load_site_config(shared / "site.toml"), workers=2)
    return shared


def _demo_site(root: Path, seed: int, rounds: int) -> tuple[Path, RunConfig]:
    """The largest site of ``slidefed demo`` (its slides, policy and run config).

    Synthesised and prepared as the demo does it, in ``root / "demo"``; the run is
    the demo's, planned for ``rounds`` rounds.
    """
    from slidefed.client.config import load_site_config
    from slidefed.client.prepare.pipeline import prepare_site
    from slidefed.demo.federation import demo_run_config, plan_sites, synthesise_one

    site = plan_sites(root / "demo", 1, seed)[0]
    synthesise_one(site)
    prepare_site(load_site_config(site.config_path), workers=2)
    return site.config_path, demo_run_config(root / "demo", [site], rounds, seed)


def _sites(root: Path, shared: Path, n: int) -> list[Path]:
    from slidefed.client.config import load_site_config
    from slidefed.client.keys import ensure_site_keys
    from slidefed.client.prepare.pipeline import prepare_site

    paths = []
    for i in range(n):
        folder = root / f"site-{i:03d}"
        (folder / "state").mkdir(parents=True)
        (folder / "state" / "cache").symlink_to(shared / "state" / "cache")
        toml = folder / "site.toml"
        toml.write_text(
            f'[site]\nname = "site-{i:03d}"\nmanifest = "{shared / "manifest.csv"}"\n'
            f'slides_root = "{shared}"\n[policy]\nmin_eval_patients = 3\n'
        )
        config = load_site_config(toml)
        ensure_site_keys(config)
        # The shared cache holds every slide: this only writes the site's report.
        prepare_site(config, workers=1)
        paths.append(toml)
    return paths


def socket_baseline(state: dict[str, Any], copies: int) -> tuple[float, int]:
    """Seconds and bytes to send ``copies`` torch.save blobs over a local socket."""
    import torch

    server = socket.create_server(("127.0.0.1", 0))
    port = server.getsockname()[1]
    received = [0]

    def receive() -> None:
        conn, _ = server.accept()
        with conn:
            while chunk := conn.recv(1 << 20):
                received[0] += len(chunk)

    thread = threading.Thread(target=receive)
    thread.start()
    start = time.perf_counter()
    with socket.create_connection(("127.0.0.1", port)) as client:
        for _ in range(copies):
            buf = io.BytesIO()
            torch.save({k: torch.from_numpy(v) for k, v in state.items()}, buf)
            client.sendall(buf.getvalue())
    thread.join()
    server.close()
    return time.perf_counter() - start, received[0]


def wire_bytes(state: dict[str, np.ndarray]) -> int:
    """Bytes of one update as a site sends it: packed, in Flower's protobuf."""
    from flwr.common.serde import array_record_to_proto

    from slidefed.common.wire import pack_update

    return len(array_record_to_proto(pack_update(state)).SerializeToString())


def named_wire_bytes(state: dict[str, np.ndarray]) -> int:
    """Bytes of the same update sent as one Flower Array per model array."""
    from flwr.app import Array, ArrayRecord
    from flwr.common.serde import array_record_to_proto

    record = ArrayRecord({k: Array(v) for k, v in state.items()})
    return len(array_record_to_proto(record).SerializeToString())


def measure(
    n_sites: int, *, rounds: int = 2, seed: int = 0, workdir: Path | None = None
) -> dict[str, Any]:
    """One federation of ``n_sites``; the last round's overhead."""
    from slidefed.bench._site_round import site_messages
    from slidefed.bench.memory import PeakMemory
    from slidefed.common.model import build_model, feature_dim
    from slidefed.simulation import run_simulation

    root = workdir or Path(tempfile.mkdtemp(prefix="slidefed-bench-round-"))
    shared = (
        _shared_site(root, seed) if not (root / "shared").is_dir() else root / "shared"
    )
    fed = root / f"n{n_sites}-{time.time_ns()}"
    sites = _sites(fed, shared, n_sites)
    cpus = os.cpu_count() or 1
    run = _run_config(fed, sites, rounds)
    started = time.perf_counter()
    with PeakMemory() as memory:
        run_simulation(run, n_sites=n_sites, total_cpus=cpus)
    total_seconds = time.perf_counter() - started
    rows = [
        json.loads(x) for x in (fed / "run" / "metrics.jsonl").read_text().splitlines()
    ]
    last = rows[-1]
    parallel = min(cpus, n_sites)
    # Sites release no timing: one site's training, measured here on the same
    # data and settings, stands for each of them.
    # A site of its own: the federation's sites have charged this run's rounds.
    timing = _sites(fed / "timing", shared, 1)
    site = site_messages(timing[0], _run_config(fed / "timing", timing, 3), rounds=3)
    training = site["training_seconds"] * n_sites / parallel
    model = build_model("abmil", feature_dim("hed"), seed=seed)
    state = {k: v.detach().numpy() for k, v in model.state_dict().items()}
    sock_seconds, sock_bytes = socket_baseline(state, 2 * n_sites)
    raw = sum(v.nbytes for v in state.values())
    overhead = max(last["seconds"] - training - sock_seconds, 0.0)
    return {
        "sites": n_sites,
        "round": last["round"],
        "round_seconds": last["seconds"],
        "local_training_seconds": round(training, 3),
        "socket_baseline_seconds": round(sock_seconds, 4),
        "overhead_seconds": round(overhead, 3),
        "overhead_fraction": round(overhead / last["seconds"], 4),
        "bytes_ratio": round(wire_bytes(state) / raw, 4),
        "bytes_ratio_one_array_each": round(named_wire_bytes(state) / raw, 4),
        "torch_save_bytes_ratio": round(sock_bytes / (2 * n_sites) / raw, 4),
        "raw_update_bytes": raw,
        "cpus": cpus,
        "rounds": rounds,
        "total_seconds": round(total_seconds, 1),
        "sites_trained_per_round": [r.get("sites_trained", 0) for r in rows],
        "peak_rss_mib": round(memory.peak / 2**20, 1),
        "peak_rss_mib_per_site": round(memory.peak / 2**20 / n_sites, 2),
    }


def _run_config(fed: Path, sites: list[Path], rounds: int) -> RunConfig:
    """The demo's settings, for a federation of ``sites`` in ``fed``."""
    from slidefed.common.run_config import RunConfig

    return RunConfig(
        num_server_rounds=rounds,
        local_epochs=4,
        batch_size=8,
        lr=0.03,
        min_sites=len(sites),
        run_dir=str(fed / "run"),
        run_name=str(fed),
        sim_sites=",".join(str(s) for s in sites),
    )


def site_costs(
    *,
    patients: int = 200,
    tiles: int = 1000,
    dim: int = 1024,
    messages: int = 6,
    seed: int = 0,
    workdir: Path | None = None,
) -> dict[str, Any]:
    """The fixed cost of a site's message, at the demo's and a realistic size.

    ``demo``: the ClientApp's train messages to the demo's largest site (48
    patients, 2048 x 1536 px slides, the demo's run config and policy).
    ``realistic``: one local epoch on ``patients`` bags of ``tiles`` x ``dim``,
    with the demo's fixed cost where the model's size does not matter and the
    size-dependent parts measured again for the larger model.
    """
    from slidefed.bench._site_round import (
        realistic_training,
        site_messages,
        size_dependent_ms,
    )
    from slidefed.common.model import build_model, feature_dim

    root = workdir or Path(tempfile.mkdtemp(prefix="slidefed-bench-site-"))
    site, run = _demo_site(root, seed, messages)
    demo = site_messages(site, run, rounds=messages)
    small = build_model("abmil", feature_dim("hed"), seed=seed)
    small_ms = size_dependent_ms(
        {k: v.detach().numpy() for k, v in small.state_dict().items()}
    )
    big = realistic_training(patients=patients, tiles=tiles, dim=dim, seed=seed)
    fixed_ms = demo["fixed_ms_per_message"] - small_ms + big["size_dependent_ms"]
    total = big["training_seconds"] + fixed_ms / 1000
    realistic = {
        **big,
        "fixed_ms_per_message": round(fixed_ms, 1),
        "message_seconds": round(total, 3),
        "overhead_fraction": round(fixed_ms / 1000 / total, 4),
    }
    return {"demo": demo, "realistic": realistic}


def bytes_ratio_demo(seed: int = 0) -> float:
    """Wire bytes over raw fp32 bytes for the demo's model (ABMIL on ``hed``)."""
    from slidefed.common.model import build_model, feature_dim

    model = build_model("abmil", feature_dim("hed"), seed=seed)
    state = {k: v.detach().numpy() for k, v in model.state_dict().items()}
    return float(round(wire_bytes(state) / sum(v.nbytes for v in state.values()), 5))


def bytes_ratio_large() -> float:
    """Wire bytes over raw fp32 bytes for a UNI-sized ABMIL (1024 -> 256)."""
    from slidefed.common.model import ABMIL

    model = ABMIL(1024, hidden=256, attention=128)
    state = {k: v.detach().numpy() for k, v in model.state_dict().items()}
    return float(round(wire_bytes(state) / sum(v.nbytes for v in state.values()), 5))


__all__ = [
    "bytes_ratio_demo",
    "bytes_ratio_large",
    "measure",
    "named_wire_bytes",
    "site_costs",
    "socket_baseline",
    "wire_bytes",
]
