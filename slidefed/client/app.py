"""The site's ClientApp: DP training and held-out evaluation on the Message API."""

from __future__ import annotations

import hashlib
import logging
import time
from typing import Any

import numpy as np
import torch
from flwr.app import (
    Array,
    ArrayRecord,
    Context,
    Error,
    Message,
    MetricRecord,
    RecordDict,
)
from flwr.clientapp import ClientApp

from slidefed.client.egress import check_egress, egress_guard_mod
from slidefed.client.evaluation import TileEvalResult, evaluate, evaluate_tiles
from slidefed.client.privacy.charging import Charge, charge_round
from slidefed.client.privacy.ledger import stable_run_id
from slidefed.client.site import Site, config_hash
from slidefed.client.train import batches_per_epoch, train_dp
from slidefed.common.arrays import specs_of, update_nbytes, update_sha256
from slidefed.common.audit.events import (
    EgressBlocked,
    MetricsReleased,
    MetricWithheld,
    RoundCharged,
    RoundFailed,
    RoundRefused,
    RoundReplayed,
    RunJoined,
    UpdateReleased,
)
from slidefed.common.errors import AuditError, PolicyViolation, SlidefedError
from slidefed.common.model import build_model, feature_dim
from slidefed.common.run_config import RunConfig, parse_run_config

logger = logging.getLogger(__name__)

app = ClientApp(mods=[egress_guard_mod])

# Error codes in replies (Flower reserves small codes).
REFUSED = 4001
FAILED = 4002
BLOCKED = 4003


def _round_seed(run: RunConfig, site: str, server_round: int) -> int:
    digest = hashlib.sha256(f"{run.seed}:{site}:{server_round}".encode()).digest()
    return int.from_bytes(digest[:4], "little")


def _config(msg: Message, key: str, default: float) -> float:
    """A numeric value of the instruction's ConfigRecord."""
    for record in msg.content.config_records.values():
        value = record.get(key)
        if isinstance(value, int | float):
            return float(value)
    return default


def _config_text(msg: Message, key: str) -> str:
    """A string value of the instruction's ConfigRecord, or ''."""
    for record in msg.content.config_records.values():
        value = record.get(key)
        if isinstance(value, str):
            return value
    return ""


def _error(msg: Message, code: int, reason: str) -> Message:
    return Message(Error(code=code, reason=reason), reply_to=msg)


def _load_model(run: RunConfig, site: Site, msg: Message) -> torch.nn.Module:
    model = build_model(
        run.task, feature_dim(run.encoder), seed=run.seed, n_classes=run.n_classes()
    )
    arrays = next(iter(msg.content.array_records.values()))
    model.load_state_dict(arrays.to_torch_state_dict())
    return model


def _input_key(
    incoming: ArrayRecord, fingerprint: dict[str, Any], run: RunConfig
) -> str:
    """What makes a round's release reproducible: model in, data, run config."""
    digest = hashlib.sha256()
    digest.update(update_sha256({k: v.numpy() for k, v in incoming.items()}).encode())
    digest.update(str(fingerprint["manifest_sha256"]).encode())
    digest.update(config_hash(run).encode())
    return digest.hexdigest()


def _check_policy(run: RunConfig, site: Site) -> None:
    policy = site.config.policy
    if run.task not in policy.allowed_tasks:
        raise PolicyViolation(
            f"task {run.task!r} is not allowed by this site's policy "
            f"(allowed_tasks={list(policy.allowed_tasks)})"
        )
    if run.encoder != site.config.features.encoder:
        raise PolicyViolation(
            f"the run uses encoder {run.encoder!r} but this site prepares features "
            f"with {site.config.features.encoder!r} (features.encoder in site.toml)"
        )
    if run.max_grad_norm > policy.max_grad_norm:
        raise PolicyViolation(
            f"max-grad-norm={run.max_grad_norm} exceeds the site's max_grad_norm "
            f"{policy.max_grad_norm}; lower it in the run config"
        )


@app.train()
def train(msg: Message, context: Context) -> Message:
    """One local DP round; refuses rounds that break the site policy."""
    try:
        run = parse_run_config(dict(context.run_config))
        site = Site.from_node(context.node_config, run)
    except SlidefedError as exc:
        return _error(msg, FAILED, str(exc))
    server_round = int(_config(msg, "server-round", 0))
    try:
        return _train(msg, context, run, site, server_round)
    except PolicyViolation as exc:
        _audit_quietly(
            site, RoundRefused(reason=str(exc)), context.run_id, server_round
        )
        return _error(msg, REFUSED, f"site {site.config.site.name} refused: {exc}")
    except (OSError, AuditError) as exc:
        # Disk full or read-only state: a ledger or audit write failed before
        # anything was released, so the round is refused; the files stay valid
        # because both are written atomically or appended whole.
        logger.warning("storage error in round %s", server_round, exc_info=True)
        reason = f"site storage error ({getattr(exc, 'strerror', None) or exc}); round refused"
        _audit_quietly(site, RoundRefused(reason=reason), context.run_id, server_round)
        return _error(msg, REFUSED, reason)
    except SlidefedError as exc:
        _audit_quietly(site, RoundFailed(reason=str(exc)), context.run_id, server_round)
        return _error(msg, FAILED, str(exc))


def _audit_quietly(
    site: Site, event: RoundRefused | RoundFailed, run_id: int, server_round: int
) -> None:
    """Audit a refusal; if the audit log itself cannot be written, say so in the log."""
    try:
        site.audit.append(event, run_id=run_id, round=server_round)
    except (OSError, AuditError):
        logger.exception("the audit log could not record %s", event.event)


def _train(
    msg: Message, context: Context, run: RunConfig, site: Site, server_round: int
) -> Message:
    train_bags, fingerprint = _training_samples(context, run, site, server_round)
    charge = _charge(msg, context, run, site, server_round, train_bags, fingerprint)
    state, metrics = _train_round(msg, run, site, server_round, train_bags, charge)
    return _release(msg, context, site, server_round, state, metrics)


def _training_samples(
    context: Context, run: RunConfig, site: Site, server_round: int
) -> tuple[list[Any], dict[str, Any]]:
    """The site's training samples, once the run passes the site policy."""
    torch.set_num_threads(1)
    _check_policy(run, site)
    bags, fingerprint = site.samples(run)
    train_bags = [b for b in bags if b.split == "train"]
    if not train_bags:
        raise PolicyViolation("no training patients with features at this site")
    if server_round == 1:
        site.audit.append(
            RunJoined(config_hash=config_hash(run), dataset=fingerprint),
            run_id=context.run_id,
            round=server_round,
        )
    return train_bags, fingerprint


def _charge(
    msg: Message,
    context: Context,
    run: RunConfig,
    site: Site,
    server_round: int,
    train_bags: list[Any],
    fingerprint: dict[str, Any],
) -> Charge:
    """Charge the round to the ledger (or recognise a replay), and audit it."""
    unit = fingerprint["unit"]
    n_batches = batches_per_epoch(len(train_bags), run.batch_size)
    policy = site.config.policy
    delta = policy.delta_for(len(train_bags))
    if run.target_delta > 0:
        delta = min(delta, run.target_delta)
    ledger_run = stable_run_id(run.run_name) if run.run_name else context.run_id
    incoming = next(iter(msg.content.array_records.values()))
    charge = charge_round(
        site.ledger,
        run_id=ledger_run,
        server_round=server_round,
        planned_rounds=run.num_server_rounds,
        sample_rate=1.0 / n_batches,
        steps=n_batches * run.local_epochs,
        target_epsilon=run.target_epsilon,
        max_epsilon=policy.max_epsilon,
        min_noise_multiplier=policy.min_noise_multiplier,
        delta=delta,
        unit=unit,
        accountant=policy.accountant,
        input_sha256=_input_key(incoming, fingerprint, run),
    )
    site.audit.append(
        (RoundReplayed if charge.replay else RoundCharged)(
            **charge.model_dump(exclude={"run_id", "round"})
        ),
        run_id=context.run_id,
        round=server_round,
    )
    return charge


def _train_round(
    msg: Message,
    run: RunConfig,
    site: Site,
    server_round: int,
    train_bags: list[Any],
    charge: Charge,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Train the global model locally with the charged noise; its state and metrics.

    Raises
    ------
    SlidefedError
        If training took other steps or another sample rate than were charged.
    """
    model = _load_model(run, site, msg)
    start = time.perf_counter()
    result = train_dp(
        model,
        train_bags,
        epochs=run.local_epochs,
        batch_size=run.batch_size,
        lr=run.lr,
        noise_multiplier=charge.noise_multiplier,
        max_grad_norm=run.max_grad_norm,
        delta=charge.delta,
        seed=_round_seed(run, site.config.site.name, server_round),
        proximal_mu=_config(msg, "proximal-mu", 0.0),
        secure_rng=site.config.policy.secure_rng,
        grad_sample_mode=run.grad_sample_mode,
    )
    if (
        result.steps != charge.steps
        or abs(result.sample_rate - charge.sample_rate) > 1e-12
    ):
        raise SlidefedError(
            f"trained {result.steps} steps at q={result.sample_rate} but charged "
            f"{charge.steps} at q={charge.sample_rate}; update withheld"
        )
    state = {k: v.detach().cpu().numpy() for k, v in model.state_dict().items()}
    if _config_text(msg, "wire-dtype") == "float16":
        state = {k: v.astype(np.float16) for k, v in state.items()}
    metrics: dict[str, Any] = {
        "num-examples": len(train_bags),
        "train_loss": result.loss,
        "epsilon": charge.epsilon_after,
        "epsilon_round": charge.epsilon_round,
        "delta": charge.delta,
        "noise_multiplier": charge.noise_multiplier,
        "train_seconds": time.perf_counter() - start,
    }
    return state, metrics


def _release(
    msg: Message,
    context: Context,
    site: Site,
    server_round: int,
    state: dict[str, Any],
    metrics: dict[str, Any],
) -> Message:
    """The reply with the update, once the egress guard passes it; audited."""
    expected = specs_of(state)
    problem = check_egress(state, metrics, expected)
    if problem:
        site.audit.append(
            EgressBlocked(reason=problem), run_id=context.run_id, round=server_round
        )
        return _error(msg, BLOCKED, f"egress guard blocked the reply: {problem}")
    site.audit.append(
        UpdateReleased(
            arrays=[s.model_dump() for s in expected],
            bytes=update_nbytes(state),
            sha256=update_sha256(state),
            metrics=metrics,
        ),
        run_id=context.run_id,
        round=server_round,
    )
    content = RecordDict(
        {
            "arrays": ArrayRecord(
                {k: Array(np.ascontiguousarray(v)) for k, v in state.items()}
            ),
            "metrics": MetricRecord(metrics),
        }
    )
    return Message(content, reply_to=msg)


@app.evaluate()
def evaluate_handler(msg: Message, context: Context) -> Message:
    """Held-out metrics, released only for enough patients."""
    try:
        run = parse_run_config(dict(context.run_config))
        site = Site.from_node(context.node_config, run)
        torch.set_num_threads(1)
        server_round = int(_config(msg, "server-round", 0))
        bags, _ = site.samples(run)
        test = [b for b in bags if b.split == "test"]
        minimum = site.config.policy.min_eval_patients
        if len(test) < minimum:
            site.audit.append(
                MetricWithheld(
                    reason=f"{len(test)} held-out patients < policy minimum {minimum}"
                ),
                run_id=context.run_id,
                round=server_round,
            )
            return _error(
                msg,
                REFUSED,
                f"metrics withheld: {len(test)} held-out patients is below the "
                f"site's min_eval_patients={minimum}",
            )
        model = _load_model(run, site, msg)
        if run.task == "tiles":
            metrics = _tile_metrics(evaluate_tiles(model, test, run.n_classes()))
        else:
            result = evaluate(model, test)
            metrics = {
                "num-examples": result.n_samples,
                "eval_loss": result.loss,
                "accuracy": result.accuracy,
            }
            if np.isfinite(result.auc):
                metrics["auc"] = result.auc
    except SlidefedError as exc:
        return _error(msg, FAILED, str(exc))
    problem = check_egress(None, metrics, None)
    if problem:
        return _error(msg, BLOCKED, f"egress guard blocked the reply: {problem}")
    site.audit.append(
        MetricsReleased(metrics=metrics), run_id=context.run_id, round=server_round
    )
    return Message(RecordDict({"metrics": MetricRecord(metrics)}), reply_to=msg)


def _tile_metrics(result: TileEvalResult) -> dict[str, Any]:
    """Scalars of a tile evaluation; per-class accuracy only for classes present."""
    metrics: dict[str, Any] = {
        "num-examples": result.n_samples,
        "eval_loss": result.loss,
        "accuracy": result.accuracy,
        "macro_f1": result.macro_f1,
    }
    for i, (acc, support) in enumerate(
        zip(result.class_accuracy, result.class_support, strict=True)
    ):
        if support:
            metrics[f"acc_class_{i:02d}"] = acc
    return metrics


__all__ = ["app"]
