"""Training and scoring for ``slidefed bench utility``.

Centralised training pools the sites' training units; federated training is
FedAvg over the sites, in process (weights: the sites' training units, as their
replies declare), each site training with the ClientApp's own code: plain
(:func:`slidefed.client.train.train_plain`) or DP-SGD with Opacus
(:func:`slidefed.client.train.train_dp`, one sample per unit, Poisson batches).
Each DP site's noise is calibrated for the whole run, and its epsilon is computed
by the sites' accountant (:func:`slidefed.client.privacy.accountant.tightest`, the
policy's ``best`` of RDP and PRV) from the steps actually taken.
"""

from __future__ import annotations

import contextlib
import math
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field

from slidefed.bench._federation import weighted_average
from slidefed.bench._utility_sites import BenchSite
from slidefed.client.evaluation import f1_scores
from slidefed.client.privacy.accountant import calibrate_noise, tightest
from slidefed.client.train import (
    BagDataset,
    batches_per_epoch,
    collate_bags,
    train_dp,
    train_plain,
)
from slidefed.common.errors import SlidefedError
from slidefed.common.model import Inputs, build_model, feature_dim
from slidefed.common.run_config import cosine_lr

Calibration = Literal["rdp", "best"]


class PlainPlan(BaseModel):
    """Training without DP: epochs (per round), batch size and Adam's step size."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    rounds: int = Field(default=1, ge=1)
    epochs: int = Field(ge=1)
    batch_size: int = Field(ge=1)
    lr: float = Field(gt=0.0)


class DPPlan(BaseModel):
    """Federated DP-SGD: rounds, local steps, clipping, and the step size per epsilon.

    ``batches_per_epoch`` sets the sampling rate (about ``1 / batches_per_epoch``;
    1: every unit is expected in every batch). ``lr`` maps an epsilon to its step
    size (noisier runs take smaller steps); ``default_lr`` is for other epsilons.
    ``calibration`` ``best`` takes the least noise whose ``best`` bound meets the
    target, ``rdp`` the noise the sites' charging calibrates (on RDP).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    rounds: int = Field(ge=1)
    local_epochs: int = Field(default=1, ge=1)
    batches_per_epoch: int = Field(default=1, ge=1)
    max_grad_norm: float = Field(gt=0.0)
    lr: dict[float, float] = {}
    default_lr: float = Field(gt=0.0)
    calibration: Calibration = "best"
    lr_schedule: Literal["constant", "cosine"] = "constant"
    average_last: float = Field(default=0.0, ge=0.0, lt=1.0)
    # The server's step on the mean update: FedAvg takes it as it is; FedAdam
    # (the federation's ``strategy = "fedadam"``, Flower's formula) keeps moments
    # of the noisy updates across rounds, which is post-processing: no privacy cost.
    server: Literal["fedavg", "fedadam"] = "fedavg"
    # The sites' optimiser for their local step: Adam with fresh moments (one
    # step moves each weight by about lr times the sign of its noisy gradient)
    # or plain SGD (the noisy gradient itself, so the sites' noise averages out).
    local_optimizer: Literal["adam", "sgd"] = "adam"
    server_lr: float = Field(default=0.01, gt=0.0)
    server_beta_1: float = Field(default=0.9, ge=0.0, lt=1.0)
    server_beta_2: float = Field(default=0.99, ge=0.0, lt=1.0)
    server_tau: float = Field(default=1e-3, gt=0.0)

    def lr_for(self, epsilon: float, rnd: int = 0) -> float:
        """Step size at ``epsilon`` in round ``rnd`` (from 0)."""
        lr = self.lr.get(float(epsilon), self.default_lr)
        if self.lr_schedule == "cosine":
            # The federation's lr-schedule = "cosine" (RunConfig.lr_at).
            lr = cosine_lr(lr, rnd, self.rounds)
        return lr


@dataclass(frozen=True)
class SitePrivacy:
    """One site's DP plan and what the accountant says of it."""

    site: str
    units: int
    sample_rate: float
    steps: int
    noise_multiplier: float
    noise_multiplier_rdp: float
    delta: float
    epsilon: float
    bound: str

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready figures."""
        return {
            "site": self.site,
            "units": self.units,
            "sample_rate": round(self.sample_rate, 6),
            "steps": self.steps,
            "noise_multiplier": round(self.noise_multiplier, 4),
            "noise_multiplier_rdp_calibrated": round(self.noise_multiplier_rdp, 4),
            "delta": self.delta,
            "epsilon": round(self.epsilon, 4),
            "bound": self.bound,
        }


def new_model(n_classes: int, seed: int, inputs: Inputs = "raw") -> torch.nn.Module:
    """The tile classifier of a ``tiles`` run (hed features; ``inputs`` of the run)."""
    return build_model(
        "tiles", feature_dim("hed"), seed=seed, n_classes=n_classes, inputs=inputs
    )


@torch.no_grad()
def score(
    model: torch.nn.Module, samples: Sequence[Any], labels: list[str]
) -> dict[str, Any]:
    """Tile accuracy, macro-F1 (over labels present) and per-class F1."""
    model.eval()
    k = len(labels)
    confusion = np.zeros((k, k), dtype=np.int64)
    ds = BagDataset(samples)
    for start in range(0, len(ds), 64):
        x, mask, y = collate_bags(
            [ds[i] for i in range(start, min(start + 64, len(ds)))]
        )
        pred = model(x, mask).argmax(dim=-1)
        keep = mask
        np.add.at(confusion, (y[keep].numpy(), pred[keep].numpy()), 1)
    support = confusion.sum(axis=1)
    present = support > 0
    f1 = f1_scores(confusion)
    return {
        "accuracy": round(float(np.trace(confusion) / max(int(support.sum()), 1)), 4),
        "macro_f1": round(float(f1[present].mean()) if present.any() else 0.0, 4),
        "class_f1": {
            lab: round(float(v), 4) for lab, v in zip(labels, f1, strict=True)
        },
        "test_tiles": int(support.sum()),
    }


def train_centralised(
    sites: list[BenchSite],
    plan: PlainPlan,
    *,
    n_classes: int,
    seed: int,
    inputs: Inputs = "raw",
) -> torch.nn.Module:
    """The model trained without DP on every site's training units, pooled."""
    model = new_model(n_classes, seed, inputs)
    pooled = [s for site in sites for s in site.samples]
    train_plain(
        model,
        pooled,
        epochs=plan.epochs * plan.rounds,
        batch_size=plan.batch_size,
        lr=plan.lr,
        seed=seed,
    )
    return model


def train_federated(
    sites: list[BenchSite],
    plan: PlainPlan,
    *,
    n_classes: int,
    seed: int,
    inputs: Inputs = "raw",
) -> torch.nn.Module:
    """FedAvg without DP: each round, each site trains the global model plainly."""
    model = new_model(n_classes, seed, inputs)
    for rnd in range(plan.rounds):
        states, weights = [], []
        for i, site in enumerate(sites):
            local = new_model(n_classes, seed, inputs)
            local.load_state_dict(model.state_dict())
            train_plain(
                local,
                site.samples,
                epochs=plan.epochs,
                batch_size=plan.batch_size,
                lr=plan.lr,
                seed=seed * 7919 + rnd * 31 + i,
            )
            states.append(local.state_dict())
            weights.append(site.n_units)
        model.load_state_dict(weighted_average(states, weights))
    return model


def dp_batch_size(units: int, batches: int) -> int:
    """The batch size that gives ``batches`` Poisson batches per epoch."""
    return max(1, math.ceil(units / batches))


@contextlib.contextmanager
def _quiet_accountant() -> Iterator[None]:
    """Opacus notes when the best Renyi order is at the edge of its grid.

    The bound it returns is still valid, only looser (see the sites' accountant);
    Opacus's own per-round epsilon in :func:`train_dp` notes it too.
    """
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Optimal order is the")
        yield


def plan_privacy(
    site: BenchSite, plan: DPPlan, *, epsilon: float, delta: float
) -> SitePrivacy:
    """The site's noise for ``epsilon`` over the whole run, and its accounted epsilon."""
    with _quiet_accountant():
        return _plan_privacy(site, plan, epsilon=epsilon, delta=delta)


def _plan_privacy(
    site: BenchSite, plan: DPPlan, *, epsilon: float, delta: float
) -> SitePrivacy:
    n = site.n_units
    per_epoch = batches_per_epoch(n, dp_batch_size(n, plan.batches_per_epoch))
    q, steps = 1.0 / per_epoch, per_epoch * plan.local_epochs * plan.rounds
    sigma_rdp = calibrate_noise(
        [], sample_rate=q, steps=steps, target_epsilon=epsilon, delta=delta
    )
    sigma = sigma_rdp
    if plan.calibration == "best":
        sigma = _calibrate_best(q, steps, epsilon, delta, hi=sigma_rdp)
    policy = site.config.policy
    if plan.max_grad_norm > policy.max_grad_norm:
        raise SlidefedError(
            f"max_grad_norm {plan.max_grad_norm} exceeds {site.name}'s policy "
            f"maximum {policy.max_grad_norm}; lower it in the plan"
        )
    # As the sites' charging does: never less noise than the policy's floor.
    sigma = max(sigma, policy.min_noise_multiplier)
    eps, bound = tightest([(sigma, q, steps)], delta, accountant=policy.accountant)
    return SitePrivacy(
        site=site.name,
        units=n,
        sample_rate=q,
        steps=steps,
        noise_multiplier=sigma,
        noise_multiplier_rdp=sigma_rdp,
        delta=delta,
        epsilon=eps,
        bound=bound,
    )


def _calibrate_best(
    q: float, steps: int, target: float, delta: float, *, hi: float
) -> float:
    """Least noise (to 0.5%) whose ``best`` bound is at most ``target``."""
    lo = hi / 2
    if tightest([(lo, q, steps)], delta, accountant="best")[0] <= target:
        return lo
    while hi - lo > 0.005 * hi:
        mid = (lo + hi) / 2
        if tightest([(mid, q, steps)], delta, accountant="best")[0] <= target:
            hi = mid
        else:
            lo = mid
    return hi


def train_federated_dp(
    sites: list[BenchSite],
    plan: DPPlan,
    *,
    epsilon: float,
    n_classes: int,
    seed: int,
    inputs: Inputs = "raw",
) -> tuple[torch.nn.Module, list[SitePrivacy]]:
    """FedAvg with DP-SGD at every site for ``epsilon`` per site over the run.

    Raises
    ------
    SlidefedError
        If a site took other steps or another sample rate than were accounted.
    """
    privacy = [
        plan_privacy(
            site,
            plan,
            epsilon=epsilon,
            delta=site.config.policy.delta_for(site.n_units),
        )
        for site in sites
    ]
    model = new_model(n_classes, seed, inputs)
    average = _Average(first=round(plan.rounds * (1 - plan.average_last)))
    server = _ServerAdam(plan) if plan.server == "fedadam" else None
    for rnd in range(plan.rounds):
        lr = plan.lr_for(epsilon, rnd)
        states, weights = [], []
        for i, (site, priv) in enumerate(zip(sites, privacy, strict=True)):
            local = new_model(n_classes, seed, inputs)
            local.load_state_dict(model.state_dict())
            with _quiet_accountant():
                result = train_dp(
                    local,
                    site.samples,
                    epochs=plan.local_epochs,
                    batch_size=dp_batch_size(site.n_units, plan.batches_per_epoch),
                    lr=lr,
                    noise_multiplier=priv.noise_multiplier,
                    max_grad_norm=plan.max_grad_norm,
                    delta=priv.delta,
                    seed=seed * 1_000_003 + rnd * 101 + i,
                    optimizer=plan.local_optimizer,
                )
            if (
                result.steps * plan.rounds != priv.steps
                or result.sample_rate != priv.sample_rate
            ):
                raise SlidefedError(
                    f"{site.name} trained {result.steps} steps at q={result.sample_rate}"
                    f" in round {rnd + 1}, not what was accounted"
                )
            states.append(local.state_dict())
            weights.append(site.n_units)
        mean = weighted_average(states, weights)
        if server is not None:
            mean = server.step(rnd, model.state_dict(), mean)
        model.load_state_dict(mean)
        average.add(rnd, model.state_dict())
    if average.count:
        model.load_state_dict(average.state())
    return model, privacy


class _ServerAdam:
    """FedAdam's server step (Flower's formula, bias-corrected step size).

    The pseudo-gradient is the mean site model minus the global model; the
    moments only ever see released (noised) updates.
    """

    def __init__(self, plan: DPPlan) -> None:
        self.plan = plan
        self.m: dict[str, torch.Tensor] = {}
        self.v: dict[str, torch.Tensor] = {}

    def step(
        self,
        rnd: int,
        current: dict[str, torch.Tensor],
        mean: dict[str, torch.Tensor],
    ) -> dict[str, torch.Tensor]:
        p = self.plan
        b1, b2 = p.server_beta_1, p.server_beta_2
        eta = p.server_lr * math.sqrt(1 - b2 ** (rnd + 1)) / (1 - b1 ** (rnd + 1))
        out: dict[str, torch.Tensor] = {}
        for k, x in current.items():
            if not torch.is_floating_point(x):
                out[k] = mean[k]
                continue
            delta = mean[k].to(torch.float64) - x.to(torch.float64)
            m = self.m.get(k, torch.zeros_like(delta))
            v = self.v.get(k, torch.zeros_like(delta))
            self.m[k] = b1 * m + (1 - b1) * delta
            self.v[k] = b2 * v + (1 - b2) * delta**2
            step = eta * self.m[k] / (self.v[k].sqrt() + p.server_tau)
            out[k] = (x.to(torch.float64) + step).to(x.dtype)
        return out


class _Average:
    """The running mean of the global models from round ``first`` on (Polyak).

    Post-processing of released models: it costs no privacy.
    """

    def __init__(self, *, first: int) -> None:
        self.first = first
        self.count = 0
        self.sum: dict[str, torch.Tensor] = {}

    def add(self, rnd: int, state: dict[str, torch.Tensor]) -> None:
        if rnd < self.first:
            return
        self.count += 1
        for k, v in state.items():
            self.sum[k] = self.sum.get(k, torch.zeros_like(v)) + v.detach()

    def state(self) -> dict[str, torch.Tensor]:
        return {k: v / self.count for k, v in self.sum.items()}


__all__ = [
    "DPPlan",
    "PlainPlan",
    "SitePrivacy",
    "dp_batch_size",
    "new_model",
    "plan_privacy",
    "score",
    "train_centralised",
    "train_federated",
    "train_federated_dp",
]
