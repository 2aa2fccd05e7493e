"""``slidefed bench dp``: cost of DP-SGD per step, and utility against epsilon."""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from slidefed.bench.timing import interleaved_medians
from slidefed.client.data.bags import PatientBag
from slidefed.client.train import BagDataset, collate_bags, plain_step
from slidefed.common.model import ABMIL


def _batches(
    n_batches: int, *, batch: int, dim: int, min_len: int, max_len: int, seed: int
) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n_batches):
        bags = [
            PatientBag(
                patient_id=str(i),
                label=int(rng.integers(0, 2)),
                split="train",
                features=rng.normal(
                    size=(int(rng.integers(min_len, max_len + 1)), dim)
                ).astype(np.float32),
            )
            for i in range(batch)
        ]
        ds = BagDataset(bags)
        out.append(collate_bags([ds[i] for i in range(len(ds))]))
    return out


def step_ratio(
    *,
    dim: int = 1024,
    hidden: int = 256,
    attention: int = 128,
    batch: int = 16,
    min_len: int = 256,
    max_len: int = 512,
    reps: int = 15,
    threads: int = 1,
    seed: int = 0,
) -> dict[str, Any]:
    """Median step time of DP-SGD over a plain step, same batches, same run.

    Both Opacus per-sample modes are timed: ``ew`` (the default) and ``hooks``.
    A step is zero_grad, forward, backward and optimizer step (clip and noise for DP).
    """
    torch.set_num_threads(threads)
    torch.manual_seed(seed)
    batches = _batches(
        4, batch=batch, dim=dim, min_len=min_len, max_len=max_len, seed=seed
    )

    def make() -> ABMIL:
        return ABMIL(dim, hidden=hidden, attention=attention)

    steps, cleanup = _steppers(make, batches, batch=batch)
    with warnings.catch_warnings():
        # Inputs need no gradient, which full backward hooks note on every step.
        warnings.simplefilter("ignore", UserWarning)
        medians = interleaved_medians(steps, reps=reps)
    for wrapped in cleanup:
        wrapped._close()
    return {
        "model": f"ABMIL {dim}->{hidden} (attention {attention})",
        "batch": batch,
        "bag_lengths": [min_len, max_len],
        "threads": threads,
        "device": "cpu",
        "plain_step_ms": round(medians["plain"] * 1000, 2),
        "dp_step_ms": round(medians["ew"] * 1000, 2),
        "hooks_step_ms": round(medians["hooks"] * 1000, 2),
        "grad_sample_mode": "ew",
        "ratio_dp_to_plain": round(medians["ew"] / medians["plain"], 3),
        "ratio_hooks_to_plain": round(medians["hooks"] / medians["plain"], 3),
    }


def _steppers(
    make: Callable[[], ABMIL], batches: list[Any], *, batch: int
) -> tuple[dict[str, Any], list[Any]]:
    """One step function per variant, each on a copy of one model from ``make``.

    ``plain`` is SGD on the model; ``ew`` and ``hooks`` wrap it in Opacus's
    expanded-weights and hooks grad-sample modules with a DP optimizer.  Also
    returns the wrapped modules, to close after timing.
    """
    from opacus import GradSampleModule
    from opacus.grad_sample import GradSampleModuleExpandedWeights
    from opacus.optimizers import DPOptimizer

    from slidefed.client.privacy.dp_sgd import install_secure_noise
    from slidefed.client.privacy.randomness import SiteRandomness

    wrappers: dict[str, Any] = {
        "plain": None,
        "ew": GradSampleModuleExpandedWeights,
        "hooks": GradSampleModule,
    }
    reference = make()
    steps = {}
    cleanup = []
    for name, wrapper in wrappers.items():
        model = make()
        model.load_state_dict(reference.state_dict())
        sgd = torch.optim.SGD(model.parameters(), lr=0.01)
        if wrapper is None:
            forward, optimizer = model, sgd
        else:
            forward = wrapper(model, batch_first=True, loss_reduction="mean")
            cleanup.append(forward)
            optimizer = DPOptimizer(
                sgd, noise_multiplier=1.0, max_grad_norm=1.0, expected_batch_size=batch
            )
            # The site's noise comes from its ChaCha20 stream: time that, not torch's.
            install_secure_noise(optimizer, SiteRandomness.public("bench").stream(name))
        steps[name] = _stepper(forward, optimizer, batches)
    return steps, cleanup


def _stepper(forward: Any, optimizer: Any, batches: list[Any]) -> Any:
    count = [0]

    def step() -> None:
        batch = batches[count[0] % len(batches)]
        count[0] += 1
        plain_step(forward, optimizer, batch, loss=F.cross_entropy)

    return step


def utility_sweep(
    epsilons: list[float], *, rounds: int = 3, seed: int = 0, workdir: Any = None
) -> dict[str, Any]:
    """Held-out AUC of in-process FedAvg over 3 synthetic sites per epsilon.

    ``math.inf`` means no DP (plain Adam, no clipping, no noise). The federation is
    simulated in process with the same data pipeline and training code as the
    ClientApp; only the transport is left out.
    """
    import tempfile
    from pathlib import Path

    from slidefed.bench._federation import run_inprocess_fedavg, synth_sites

    root = (
        Path(workdir) if workdir else Path(tempfile.mkdtemp(prefix="slidefed-bench-"))
    )
    sites = synth_sites(root, seed=seed)
    results = []
    for eps in epsilons:
        metrics = run_inprocess_fedavg(sites, epsilon=eps, rounds=rounds, seed=seed)
        results.append({"epsilon": "inf" if math.isinf(eps) else eps, **metrics})
    by_eps = {r["epsilon"]: r["auc"] for r in results}
    out: dict[str, Any] = {"rounds": rounds, "results": results}
    if 8.0 in by_eps and "inf" in by_eps and by_eps["inf"] > 0:
        out["auc_ratio_eps8_to_inf"] = round(by_eps[8.0] / by_eps["inf"], 4)
    return out


__all__ = ["step_ratio", "utility_sweep"]
