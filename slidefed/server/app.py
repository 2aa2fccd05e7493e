"""The coordinator's ServerApp: validated aggregation, checkpoints, metrics, audit."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, MetricRecord
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import Strategy

from slidefed.common.arrays import specs_of
from slidefed.common.audit.events import (
    ReplyLost,
    ReplyReasked,
    RoundCompleted,
    RunFinished,
    RunResumed,
    RunStarted,
    RunStopped,
)
from slidefed.common.audit.writer import AuditLog
from slidefed.common.crypto import generate_audit_key, load_audit_key, public_key_path
from slidefed.common.errors import ConfigError, FederationError
from slidefed.common.model import build_model, feature_dim
from slidefed.common.progress_line import format_round_line
from slidefed.common.run_config import RunConfig, parse_run_config
from slidefed.server.checkpoints import CheckpointManifest, Checkpoints
from slidefed.server.config import SERVER_CONFIG_ENV, load_server_config
from slidefed.server.metrics import MetricsLog, write_model_card, write_site_names
from slidefed.server.recovering_grid import RecoveringGrid, pull_rate
from slidefed.server.strategy import (
    SlidefedFedAvg,
    build_strategy,
    load_strategy_state,
    strategy_state,
)
from slidefed.server.validation import WEIGHT_KEY, ValidatingMixin, weighted_metrics

logger = logging.getLogger(__name__)
# Flower forwards what its own logger writes in the ServerApp process to the run's
# log ('flwr log RUN_ID CONNECTION'); slidefed's per-round line goes there too.
flower_logger = logging.getLogger("flwr")

app = ServerApp()

Arrays = dict[str, np.ndarray]


def run_dir_of(run: RunConfig, context: Context) -> Path:
    """Absolute run folder (the ServerApp may run from an installed FAB)."""
    if run.run_dir:
        return Path(run.run_dir)
    return Path.cwd() / f"slidefed-run-{context.run_id}"


def config_hash(run: RunConfig) -> str:
    """SHA-256 of the run config without the keys that only say where or resume."""
    return run.identity_hash()


def resume_hash(run: RunConfig) -> str:
    """Like :func:`config_hash`, but a resumed run may ask for more rounds."""
    return run.model_copy(update={"num_server_rounds": 1}).identity_hash()


def coordinator_audit_key() -> Path:
    """The private key that signs the coordinator's audit log; never in a run folder.

    Deployed (``slidefed server start`` names its ``server.toml`` in
    ``$SLIDEFED_SERVER_CONFIG``): the audit key of ``server init``, the one
    auditors pin. A simulation on a researcher's machine: that machine's own
    simulation key under ``$XDG_STATE_HOME/slidefed`` (made on first use).

    Raises
    ------
    ConfigError
        If the deployed coordinator's key is missing.
    """
    named = os.environ.get(SERVER_CONFIG_ENV)
    if named:
        config = load_server_config(Path(named))
        key = config.resolve(config.state.audit_key)
        if not key.is_file():
            raise ConfigError(
                f"{key}: the coordinator's audit key is missing; run 'slidefed "
                f"server init {config.base_dir}' again (it keeps what exists)"
            )
        return key
    state = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    key = Path(state) / "slidefed" / "simulation" / "audit_key"
    if not key.is_file():
        generate_audit_key(key)
    return key


def _record_site_names(run_dir: Path) -> None:
    """Name the registered sites in the run folder (for the plot and model card)."""
    named = os.environ.get(SERVER_CONFIG_ENV)
    try:  # a simulation records the sites it plays itself
        sites = load_server_config(Path(named)).sites if named else []
    except (ConfigError, OSError):
        return
    names: dict[int | str, str] = {
        s.node_id: s.name for s in sites if s.node_id is not None
    }
    if names:
        write_site_names(run_dir, names)


def server_audit(run_dir: Path) -> AuditLog:
    """The server's audit log in ``RUN/audit``, signed with the coordinator's key."""
    key_path = coordinator_audit_key()
    beside = run_dir / "audit" / "audit_key.pub"
    beside.parent.mkdir(parents=True, exist_ok=True)
    public = public_key_path(key_path).read_bytes()
    if not beside.is_file() or beside.read_bytes() != public:
        beside.write_bytes(public)
    return AuditLog(
        run_dir / "audit" / "server-audit.jsonl",
        key=load_audit_key(key_path),
        actor="server",
        actor_name="coordinator",
    )


def wait_for_sites(grid: Grid, needed: int, timeout: float) -> None:
    """Wait until ``needed`` sites are connected, or fail with a clear message."""
    deadline = time.monotonic() + timeout
    while True:
        connected = len(list(grid.get_node_ids()))
        if connected >= needed:
            return
        if time.monotonic() > deadline:
            raise FederationError(
                f"only {connected} of {needed} sites connected after {timeout:.0f} s; "
                "check that the sites' nodes are started and registered, or lower "
                "min-sites / raise connect-timeout in the run config"
            )
        time.sleep(1.0)


def _row(
    strategy: ValidatingMixin, server_round: int, seconds: float
) -> dict[str, Any]:
    info = dict(strategy.round_info.get(server_round, {}))
    row: dict[str, Any] = {"round": server_round, "seconds": round(seconds, 2)}
    train_m = info.pop("train", {})
    row["train_patients"] = int(train_m.get(WEIGHT_KEY, 0))
    if "train_loss" in train_m:
        row["train_loss"] = train_m["train_loss"]
    eval_m = info.pop("eval", {})
    row["eval_patients"] = int(eval_m.pop(WEIGHT_KEY, 0))
    row.update(eval_m)
    row.update(info)
    local = row.get("train_seconds_max", 0.0)
    aggregate = row.get("aggregate_seconds", 0.0)
    row["time_split"] = {
        "local_training": round(local, 3),
        "aggregation": round(aggregate, 3),
        "transfer_and_other": round(max(seconds - local - aggregate, 0.0), 3),
    }
    return row


@app.main()
def main(grid: Grid, context: Context) -> None:
    """Run the federated rounds; checkpoint, log and audit each one."""
    run = parse_run_config(dict(context.run_config))
    run_dir = run_dir_of(run, context)
    run_dir.mkdir(parents=True, exist_ok=True)
    audit = server_audit(run_dir)
    checkpoints = Checkpoints(run_dir)
    offset, arrays, state, rows = _initial_state(run, checkpoints)
    metrics_log = MetricsLog(run_dir, target_epsilon=run.target_epsilon)
    _record_site_names(run_dir)
    # After a resume the log holds exactly the checkpointed rounds: rounds that ran
    # after the last checkpoint are run again.
    for row in rows:
        metrics_log.append(row)
    audit.append(
        (RunResumed if offset else RunStarted)(
            config_hash=config_hash(run),
            strategy=run.strategy,
            rounds=run.num_server_rounds,
            run_name=run.run_name,
            fab_hash=_fab_hash(grid),
        ),
        run_id=context.run_id,
        round=offset,
    )
    remaining = run.num_server_rounds - offset
    strategy = build_strategy(
        run,
        expected=specs_of(arrays),
        audit=audit,
        run_id=context.run_id,
        round_offset=offset,
    )
    assert isinstance(strategy, ValidatingMixin)  # noqa: S101 - for the type checker
    load_strategy_state(strategy, state)
    after_round = _round_recorder(
        run,
        context,
        strategy=strategy,
        offset=offset,
        metrics_log=metrics_log,
        checkpoints=checkpoints,
        audit=audit,
    )
    final = arrays
    if remaining > 0:
        wait_for_sites(grid, run.min_sites, run.connect_timeout)
        notify, rate = _reply_auditor(audit, context.run_id), pull_rate(grid)
        recovering = RecoveringGrid(grid, notify, pulls_per_second=rate)
        final = _run_rounds(
            cast(Grid, recovering), run, strategy, arrays, remaining, after_round
        )
    _finish(run_dir, run, context, audit=audit, metrics_log=metrics_log, final=final)


def _fab_hash(grid: Grid) -> str:
    """The SHA-256 of the app (FAB) the SuperLink runs; empty in a simulation."""
    try:
        return str(grid.run.fab_hash or "")
    except (AttributeError, NotImplementedError):
        return ""


def _reply_auditor(
    audit: AuditLog, run_id: int
) -> Callable[[str, int, str, int | None, int], None]:
    """Audit each repeated instruction and each reply still missing at a deadline."""

    def notify(
        what: str, node: int, stage: str, server_round: int | None, asks: int
    ) -> None:
        event: ReplyReasked | ReplyLost = (
            ReplyReasked(node=str(node), stage=stage, asks=asks)
            if what == "reasked"
            else ReplyLost(node=str(node), stage=stage, asks=asks)
        )
        audit.append(event, run_id=run_id, round=server_round)

    return notify


def _initial_state(
    run: RunConfig, checkpoints: Checkpoints
) -> tuple[int, Arrays, Arrays, list[dict[str, Any]]]:
    """Rounds done, global model, strategy state and metric rows to start from.

    A new run starts from the seeded model; a resumed one from its last checkpoint.

    Raises
    ------
    FederationError
        If the checkpoint was made with another run config or another model.
    """
    model = build_model(
        run.task,
        feature_dim(run.encoder, run.feature_dim),
        seed=run.seed,
        n_classes=run.n_classes(),
        inputs=run.inputs,
    )
    arrays = {k: v.detach().numpy() for k, v in model.state_dict().items()}
    if not run.resume or (last := checkpoints.latest()) is None:
        return 0, arrays, {}, []
    if last.manifest.resume_hash not in ("", resume_hash(run)):
        raise FederationError(
            f"{checkpoints.folder}: the checkpoint was made with another run "
            "config; resume with the same config, or start a new run-dir"
        )
    if set(last.arrays) != set(arrays):
        raise FederationError(
            f"{checkpoints.folder}: the checkpoint holds other arrays than the "
            f"{run.task} model; start a new run-dir"
        )
    offset = last.manifest.round
    logger.info("resuming after round %d from %s", offset, checkpoints.folder)
    # safetensors returns names sorted; keep the model's own order.
    resumed = {k: last.arrays[k] for k in arrays}
    return offset, resumed, last.state, last.manifest.metrics


def _round_recorder(
    run: RunConfig,
    context: Context,
    *,
    strategy: ValidatingMixin,
    offset: int,
    metrics_log: MetricsLog,
    checkpoints: Checkpoints,
    audit: AuditLog,
) -> Callable[[int, ArrayRecord], MetricRecord | None]:
    """Flower's ``evaluate_fn``: after each round, log, checkpoint and audit it."""
    clock = [time.perf_counter()]

    def after_round(
        server_round: int, global_arrays: ArrayRecord
    ) -> MetricRecord | None:
        if server_round == 0:
            return None
        absolute = server_round + offset
        now = time.perf_counter()
        row = _row(strategy, absolute, now - clock[0])
        clock[0] = now
        if int(row.get("sites_trained", 0)) < run.min_sites:
            _fail_round(run, context, absolute, row, audit)
        metrics_log.append(row)
        _checkpoint(checkpoints, run, absolute, metrics_log, global_arrays, strategy)
        audit.append(
            RoundCompleted(
                sites_trained=row.get("sites_trained", 0),
                sites_evaluated=row.get("sites_evaluated", 0),
                rejected=len(row.get("rejected", [])),
                errors=len(row.get("errors", [])),
            ),
            run_id=context.run_id,
            round=absolute,
        )
        _log_round(run, absolute, row)
        return None

    return after_round


def _why_untrained(row: dict[str, Any]) -> str:
    """The sites' reasons for a round without enough training, one per reason."""
    reasons: dict[str, list[str]] = {}
    for entry in [*row.get("errors", []), *row.get("rejected", [])]:
        nodes = reasons.setdefault(str(entry["reason"]), [])
        if str(entry["node"]) not in nodes:
            nodes.append(str(entry["node"]))
    if not reasons:
        return "no site replied in time (see the sites' logs and round-timeout)"
    return "; ".join(
        f"{reason} (site{'s' if len(nodes) > 1 else ''} {', '.join(nodes)})"
        for reason, nodes in reasons.items()
    )


def _fail_round(
    run: RunConfig,
    context: Context,
    absolute: int,
    row: dict[str, Any],
    audit: AuditLog,
) -> None:
    """End the run: a round with fewer trained sites than min-sites is no result.

    Nothing of the round is logged as a metric or checkpointed: the metrics of
    an untrained model must not look like results.

    Raises
    ------
    FederationError
        Always, naming the round, the count and the sites' reasons.
    """
    trained = int(row.get("sites_trained", 0))
    why = _why_untrained(row)
    audit.append(
        RunStopped(
            sites_trained=trained,
            sites_evaluated=int(row.get("sites_evaluated", 0)),
            rejected=len(row.get("rejected", [])),
            errors=len(row.get("errors", [])),
            min_sites=run.min_sites,
            reason=why,
        ),
        run_id=context.run_id,
        round=absolute,
    )
    message = (
        f"round {absolute}: {trained} of min-sites {run.min_sites} sites trained, so "
        f"the run stops without a model; {why}"
    )
    logger.error("%s", message)
    raise FederationError(message)


def _checkpoint(
    checkpoints: Checkpoints,
    run: RunConfig,
    absolute: int,
    metrics_log: MetricsLog,
    global_arrays: ArrayRecord,
    strategy: ValidatingMixin,
) -> None:
    checkpoints.save(
        CheckpointManifest(
            round=absolute,
            config_hash=config_hash(run),
            resume_hash=resume_hash(run),
            run_name=run.run_name,
            strategy=run.strategy,
            metrics=metrics_log.rows(),
        ),
        {k: v.numpy() for k, v in global_arrays.items()},
        strategy_state(strategy),
    )


def _log_round(run: RunConfig, absolute: int, row: dict[str, Any]) -> None:
    """The round's line, in the run's log (``flwr log``) and in slidefed's own."""
    epsilons = [
        float(v)
        for v in row.get("epsilon_per_site", {}).values()
        if isinstance(v, int | float)
    ]
    line = format_round_line(
        server_round=absolute,
        rounds=run.num_server_rounds,
        sites_trained=int(row.get("sites_trained", 0)),
        sites_evaluated=int(row.get("sites_evaluated", 0)),
        accuracy=row.get("accuracy"),
        auc=row.get("auc"),
        epsilon_max=max(epsilons) if epsilons else None,
        errors=len(row.get("errors", [])) + len(row.get("rejected", [])),
    )
    flower_logger.info("%s", line)
    if not flower_logger.isEnabledFor(logging.INFO):
        # Flower's logger is quiet here (slidefed's own simulation): our log.
        logger.info("%s", line)


def _run_rounds(
    grid: Grid,
    run: RunConfig,
    strategy: Strategy,
    arrays: Arrays,
    remaining: int,
    after_round: Callable[[int, ArrayRecord], MetricRecord | None],
) -> Arrays:
    """The remaining rounds with Flower's strategy loop; the final global model."""
    result = strategy.start(
        grid=grid,
        initial_arrays=ArrayRecord(
            {k: Array(np.asarray(v)) for k, v in arrays.items()}
        ),
        num_rounds=remaining,
        timeout=run.round_timeout,
        train_config=ConfigRecord({"wire-dtype": run.wire_dtype}),
        evaluate_config=ConfigRecord({}),
        evaluate_fn=after_round,
    )
    return {k: np.ascontiguousarray(v.numpy()) for k, v in result.arrays.items()}


def _finish(
    run_dir: Path,
    run: RunConfig,
    context: Context,
    *,
    audit: AuditLog,
    metrics_log: MetricsLog,
    final: Arrays,
) -> None:
    """Write the final model, model card and run record; audit the end of the run."""
    from safetensors.numpy import save_file

    save_file(
        {k: np.ascontiguousarray(v) for k, v in final.items()},
        str(run_dir / "final.safetensors"),
        metadata={
            "task": run.task,
            "encoder": run.encoder,
            "rounds": str(run.num_server_rounds),
            "config_hash": config_hash(run),
        },
    )
    write_model_card(
        run_dir, run=run, rows=metrics_log.rows(), config_hash=config_hash(run)
    )
    record = {"run_config": run.model_dump(by_alias=True), "run_id": context.run_id}
    record["config_hash"] = config_hash(run)
    (run_dir / "run.json").write_text(json.dumps(record, indent=2))
    model_file = (run_dir / "final.safetensors").read_bytes()
    audit.append(
        RunFinished(
            final_sha256=hashlib.sha256(
                b"".join(np.ascontiguousarray(v).tobytes() for v in final.values())
            ).hexdigest(),
            model_file_sha256=hashlib.sha256(model_file).hexdigest(),
        ),
        run_id=context.run_id,
        round=run.num_server_rounds,
    )


__all__ = ["SlidefedFedAvg", "app", "config_hash", "main", "weighted_metrics"]
