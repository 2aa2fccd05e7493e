"""The site's ClientApp: DP training and held-out evaluation on the Message API.

Every refusal or failure is answered with an entry of the site's table of errors
(:mod:`slidefed.common.site_errors`): a code and its fixed message. What made the
site refuse (which rule, which budget, the exception) goes to the site's log and
audit log only.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from flwr.app import (
    Context,
    Message,
)
from flwr.clientapp import ClientApp

from slidefed.client import messages as m
from slidefed.client import noised_metrics as nm
from slidefed.client.egress import egress_guard_mod
from slidefed.client.privacy.anchor import verify_ledger
from slidefed.client.privacy.charging import Charge, charge_round
from slidefed.client.privacy.evaluation_charging import charge_evaluation
from slidefed.client.privacy.releases import Kind
from slidefed.client.site import Site, config_hash
from slidefed.client.train import batches_per_epoch, train_dp
from slidefed.common.arrays import ArraySpec
from slidefed.common.audit.events import (
    EvaluationCharged,
    EvaluationRefused,
    MetricsReleased,
    MetricWithheld,
    RoundCharged,
    RoundFailed,
    RoundRefused,
    RoundReplayed,
    RunJoined,
)
from slidefed.common.errors import (
    AuditError,
    PolicyViolation,
    SiteNotPrepared,
    SlidefedError,
)
from slidefed.common.flower_env import APPROVED_FAB_ENV
from slidefed.common.run_config import RunConfig, parse_run_config
from slidefed.common.site_errors import SiteError, SiteRefusal

logger = logging.getLogger(__name__)

app = ClientApp(mods=[egress_guard_mod])


def _check_policy(run: RunConfig, site: Site) -> None:
    policy = site.config.policy
    if run.max_grad_norm > policy.max_grad_norm:
        raise SiteRefusal(
            f"max-grad-norm={run.max_grad_norm} exceeds the site's max_grad_norm "
            f"{policy.max_grad_norm}; lower it in the run config",
            code=SiteError.CLIPPING_NORM,
        )


def _detail(code: SiteError, exc: BaseException | str) -> str:
    """What the site's audit log records of a refusal: the reason and its code."""
    return f"{exc} (site error {int(code)})"


Handler = Callable[[Message, Context, RunConfig, Site, int], Message]


def _handle(
    msg: Message,
    context: Context,
    body: Handler,
    *,
    refused: type[RoundRefused] | type[EvaluationRefused],
) -> Message:
    """Run one handler; refusals and failures become table replies, audited.

    The reply carries the table entry only; the reason (with its code) goes to the
    site log and, once the site is loaded, to its audit log.
    """
    try:
        run = parse_run_config(dict(context.run_config))
    except SlidefedError as exc:
        logger.error(
            "run config refused (site error %d): %s", SiteError.RUN_CONFIG_INVALID, exc
        )
        return m.error(msg, SiteError.RUN_CONFIG_INVALID)
    try:
        site = Site.from_node(context.node_config, run)
    except SlidefedError as exc:
        logger.error(
            "site not prepared (site error %d): %s", SiteError.SITE_NOT_PREPARED, exc
        )
        return m.error(msg, SiteError.SITE_NOT_PREPARED)
    server_round = int(m.config(msg, "server-round", 0))
    reply = _answer(msg, context, body, run, site, server_round, refused=refused)
    try:
        # Every record of this message, with one disk sync, before the reply leaves.
        site.audit.flush()
    except (OSError, AuditError):
        logger.exception("the audit log could not record round %s", server_round)
        return m.error(msg, SiteError.STORAGE_ERROR)
    return reply


def _answer(
    msg: Message,
    context: Context,
    body: Handler,
    run: RunConfig,
    site: Site,
    server_round: int,
    *,
    refused: type[RoundRefused] | type[EvaluationRefused],
) -> Message:
    """The handler's reply, or the table entry of its refusal or failure."""
    try:
        return body(msg, context, run, site, server_round)
    except PolicyViolation as exc:
        code = m.refusal_code(exc)
        logger.warning("round %s refused: %s", server_round, _detail(code, exc))
        event = refused(reason=_detail(code, exc))
        _audit_quietly(site, event, context.run_id, server_round)
        return m.error(msg, code)
    except (OSError, AuditError) as exc:
        # Disk full or read-only state: a ledger or audit write failed before
        # anything was released, so the round is refused; the files stay valid
        # because both are written atomically or appended whole.
        logger.warning("storage error in round %s", server_round, exc_info=True)
        why = f"site storage error ({getattr(exc, 'strerror', None) or exc}); round refused"
        event = refused(reason=_detail(SiteError.STORAGE_ERROR, why))
        _audit_quietly(site, event, context.run_id, server_round)
        return m.error(msg, SiteError.STORAGE_ERROR)
    except SlidefedError as exc:
        code = (
            SiteError.SITE_NOT_PREPARED
            if isinstance(exc, SiteNotPrepared)
            else SiteError.FAILED
        )
        logger.error("round %s failed: %s", server_round, _detail(code, exc))
        failed = RoundFailed(reason=_detail(code, exc))
        _audit_quietly(site, failed, context.run_id, server_round)
        return m.error(msg, code)


@app.train()
def train(msg: Message, context: Context) -> Message:
    """One local DP round; refuses rounds that break the site policy."""
    return _handle(msg, context, _train, refused=RoundRefused)


def _audit_quietly(
    site: Site,
    event: RoundRefused | RoundFailed | EvaluationRefused,
    run_id: int,
    server_round: int,
) -> None:
    """Audit a refusal; if the audit log itself cannot be written, say so in the log."""
    try:
        site.audit.append(event, run_id=run_id, round=server_round)
    except (OSError, AuditError):
        logger.exception("the audit log could not record %s", event.event)


def _train(
    msg: Message, context: Context, run: RunConfig, site: Site, server_round: int
) -> Message:
    specs = m.check_model(msg, run, site)
    train_bags, fingerprint = _training_samples(context, run, site, server_round)
    ledger_run = m.ledger_run(run, context)
    key = m.input_key("train", msg, fingerprint, run, site)
    stored = site.releases.get("train", ledger_run, server_round, key)
    if stored is not None:
        meta, arrays = stored
        site.audit.append(
            RoundReplayed(**meta.charge), run_id=context.run_id, round=server_round
        )
        # The same bytes leave again: recorded like any release.
        m.audit_release(context, site, server_round, arrays, dict(meta.metrics))
        return m.reply(msg, arrays, dict(meta.metrics))
    charge = _charge(context, run, site, server_round, train_bags, fingerprint, key)
    state, metrics = _train_round(
        msg, run, site, server_round, train_bags, charge, ledger_run, key
    )
    blocked = _store_unless_blocked(
        msg,
        context,
        site,
        ("train", ledger_run, server_round, key),
        state,
        metrics,
        charge,
        specs=specs,
    )
    if blocked is not None:
        return blocked
    m.audit_release(context, site, server_round, state, metrics)
    return m.reply(msg, state, metrics)


def _store_unless_blocked(
    msg: Message,
    context: Context,
    site: Site,
    release: tuple[Kind, int, int, str],
    arrays: dict[str, Any] | None,
    metrics: dict[str, Any],
    charge: Charge,
    *,
    specs: list[ArraySpec] | None = None,
) -> Message | None:
    """Store a release before it is sent; the error reply if the guard blocks it.

    ``specs``: the site's own model, which the arrays must match.
    """
    kind, ledger_run, server_round, key = release
    problem = m.egress_problem(context, site, server_round, arrays, metrics, specs)
    if problem:
        logger.warning("egress check blocked the reply: %s", problem)
        return m.error(msg, SiteError.EGRESS_BLOCKED)
    site.releases.put(
        kind=kind,
        run_id=ledger_run,
        server_round=server_round,
        input_key=key,
        arrays=arrays,
        metrics=metrics,
        charge=_charge_fields(charge),
    )
    return None


def _charge_fields(charge: Charge) -> dict[str, Any]:
    """A charge as the fields of its audit record."""
    return charge.model_dump(exclude={"run_id", "round"})


def _training_samples(
    context: Context, run: RunConfig, site: Site, server_round: int
) -> tuple[list[Any], dict[str, Any]]:
    """The site's training samples, once the run passes the site policy."""
    torch.set_num_threads(1)
    _check_policy(run, site)
    verify_ledger(site.ledger, site.config.audit_path)
    bags, fingerprint = site.samples(run)
    train_bags = [b for b in bags if b.split == "train"]
    if not train_bags:
        raise SiteRefusal(
            "no training patients with features at this site",
            code=SiteError.NO_TRAINING_DATA,
        )
    if server_round == 1:
        site.audit.append(
            RunJoined(
                config_hash=config_hash(run),
                dataset=fingerprint,
                run_name=run.run_name,
                fab_hash=os.environ.get(APPROVED_FAB_ENV, ""),
            ),
            run_id=context.run_id,
            round=server_round,
        )
    return train_bags, fingerprint


def _charge(
    context: Context,
    run: RunConfig,
    site: Site,
    server_round: int,
    train_bags: list[Any],
    fingerprint: dict[str, Any],
    key: str,
) -> Charge:
    """Charge the round to the ledger (or recognise a replay), and audit it."""
    # Held records first: an unwritable log refuses the round before any charge.
    site.audit.flush()
    n_batches = batches_per_epoch(len(train_bags), run.batch_size)
    policy = site.config.policy
    charge = charge_round(
        site.ledger,
        run_id=m.ledger_run(run, context),
        server_round=server_round,
        planned_rounds=run.num_server_rounds,
        sample_rate=1.0 / n_batches,
        steps=n_batches * run.local_epochs,
        target_epsilon=run.target_epsilon,
        max_epsilon=policy.max_epsilon,
        min_noise_multiplier=policy.min_noise_multiplier,
        delta=m.delta(run, site, len(train_bags)),
        unit=fingerprint["unit"],
        accountant=policy.accountant,
        input_sha256=key,
        eval_noise_multiplier=policy.eval_noise_multiplier,
        planned_evaluations=m.evaluation_cap(run, site),
        run_name=run.run_name,
        flower_run_id=context.run_id,
    )
    site.audit.append(
        (RoundReplayed if charge.replay else RoundCharged)(**_charge_fields(charge)),
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
    ledger_run: int,
    key: str,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Train the global model locally with the charged noise; its state and metrics.

    Only values that are public or DP-protected go into the metrics: the update's
    weight (the number of training units, which the site declares public) and the
    privacy accounting of the plan. No loss, no timing.

    Raises
    ------
    SlidefedError
        If training took other steps or another sample rate than were charged.
    """
    model = m.load_model(run, site, msg)
    started = time.perf_counter()
    result = train_dp(
        model,
        train_bags,
        epochs=run.local_epochs,
        batch_size=run.batch_size,
        lr=run.lr_at(server_round),
        noise_multiplier=charge.noise_multiplier,
        max_grad_norm=run.max_grad_norm,
        delta=charge.delta,
        randomness=site.randomness.for_release("train", server_round, key),
        proximal_mu=m.config(msg, "proximal-mu", 0.0),
        grad_sample_mode=run.grad_sample_mode,
        # The ledger charged this round with its own accountant.
        report_epsilon=False,
    )
    # The site's own log only: timing is not released (it tells about the data).
    seconds = time.perf_counter() - started
    line = "round %s: trained %d steps in %.3f s"
    logger.info(
        line, server_round, result.steps, seconds, extra={"train_seconds": seconds}
    )
    if result.steps != charge.steps or result.sample_rate != charge.sample_rate:
        raise SlidefedError(
            f"trained {result.steps} steps at q={result.sample_rate} but charged "
            f"{charge.steps} at q={charge.sample_rate}; update withheld"
        )
    state = {k: v.detach().cpu().numpy() for k, v in model.state_dict().items()}
    if m.config_text(msg, "wire-dtype") == "float16":
        state = {k: v.astype(np.float16) for k, v in state.items()}
    metrics: dict[str, Any] = {
        "num-examples": len(train_bags),
        "epsilon": charge.epsilon_after,
        "epsilon_round": charge.epsilon_round,
        "delta": charge.delta,
        "noise_multiplier": charge.noise_multiplier,
    }
    return state, metrics


@app.evaluate()
def evaluate_handler(msg: Message, context: Context) -> Message:
    """Held-out metrics as a DP release: noised statistics, charged and capped."""
    return _handle(msg, context, _evaluate, refused=EvaluationRefused)


def _evaluate(
    msg: Message, context: Context, run: RunConfig, site: Site, server_round: int
) -> Message:
    torch.set_num_threads(1)
    m.check_model(msg, run, site)
    verify_ledger(site.ledger, site.config.audit_path)
    bags, fingerprint = site.samples(run)
    test = [b for b in bags if b.split == "test"]
    minimum = site.config.policy.min_eval_patients
    if len(test) < minimum:
        site.audit.append(
            MetricWithheld(
                reason=f"{len(test)} held-out units < policy minimum {minimum}"
            ),
            run_id=context.run_id,
            round=server_round,
        )
        return m.error(msg, SiteError.TOO_FEW_EVAL_UNITS)
    ledger_run = m.ledger_run(run, context)
    key = m.input_key("evaluate", msg, fingerprint, run, site)
    stored = site.releases.get("evaluate", ledger_run, server_round, key)
    if stored is not None:
        site.audit.append(
            RoundReplayed(**stored[0].charge), run_id=context.run_id, round=server_round
        )
        return m.reply(msg, None, dict(stored[0].metrics))
    policy = site.config.policy
    charge = charge_evaluation(
        site.ledger,
        run_id=ledger_run,
        server_round=server_round,
        noise_multiplier=policy.eval_noise_multiplier,
        max_epsilon=policy.max_epsilon,
        delta=m.delta(run, site, sum(b.split == "train" for b in bags)),
        unit=fingerprint["unit"],
        accountant=policy.accountant,
        input_sha256=key,
        max_per_round=policy.max_evaluations_per_round,
        max_per_run=m.evaluation_cap(run, site),
    )
    site.audit.append(
        (RoundReplayed if charge.replay else EvaluationCharged)(
            **_charge_fields(charge)
        ),
        run_id=context.run_id,
        round=server_round,
    )
    stream = site.randomness.stream("evaluate", server_round, key)
    metrics = _noised_metrics(m.load_model(run, site, msg), run, site, test, stream)
    blocked = _store_unless_blocked(
        msg,
        context,
        site,
        ("evaluate", ledger_run, server_round, key),
        None,
        metrics,
        charge,
    )
    if blocked is not None:
        return blocked
    site.audit.append(
        MetricsReleased(metrics=metrics), run_id=context.run_id, round=server_round
    )
    return m.reply(msg, None, metrics)


def _noised_metrics(
    model: torch.nn.Module,
    run: RunConfig,
    site: Site,
    test: list[Any],
    stream: Any,
) -> dict[str, float | int]:
    """The released metrics: computed from noised statistics only."""
    sigma = site.config.policy.eval_noise_multiplier
    if run.task == "tiles":
        confusion = nm.unit_confusion(model, test, run.n_classes())
        return nm.confusion_metrics(
            nm.add_noise(confusion, stream, sigma),
            min_support=float(site.config.policy.min_eval_patients),
        )
    hist = nm.score_histogram(model, test)
    return nm.histogram_metrics(nm.add_noise(hist, stream, sigma))


__all__ = ["app", "evaluate_handler", "train"]
