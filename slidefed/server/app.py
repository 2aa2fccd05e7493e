"""The coordinator's ServerApp: FedAvg with reply validation, metrics and model."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
from flwr.app import (
    Array,
    ArrayRecord,
    ConfigRecord,
    Context,
    Message,
    MetricRecord,
    RecordDict,
)
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import FedAvg

from slidefed.common.arrays import ArraySpec, specs_of, validate_update
from slidefed.common.config import RunConfig, parse_run_config
from slidefed.common.model import build_model, feature_dim
from slidefed.server.metrics import MetricsLog

logger = logging.getLogger(__name__)

app = ServerApp()

WEIGHT_KEY = "num-examples"


def _metrics(content: RecordDict) -> MetricRecord:
    return next(iter(content.metric_records.values()))


def _number(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


def weighted_metrics(contents: list[RecordDict], weight_key: str) -> MetricRecord:
    """Weighted mean of each metric over the replies that carry it."""
    sums: dict[str, float] = {}
    weights: dict[str, float] = {}
    total = 0
    for content in contents:
        record = _metrics(content)
        w = _number(record.get(weight_key)) or 0.0
        total += int(w)
        for key, value in record.items():
            number = _number(value)
            if key == weight_key or number is None:
                continue
            sums[key] = sums.get(key, 0.0) + w * number
            weights[key] = weights.get(key, 0.0) + w
    out: dict[str, int | float | list[int] | list[float]] = {
        k: sums[k] / weights[k] for k in sums if weights[k] > 0
    }
    out[weight_key] = total
    return MetricRecord(out)


class SlidefedFedAvg(FedAvg):
    """FedAvg that validates every reply and keeps per-site round details."""

    def __init__(self, *, expected: list[ArraySpec], **kwargs: Any) -> None:
        super().__init__(
            weighted_by_key=WEIGHT_KEY,
            train_metrics_aggr_fn=weighted_metrics,
            evaluate_metrics_aggr_fn=weighted_metrics,
            **kwargs,
        )
        self.expected = expected
        self.round_info: dict[int, dict[str, Any]] = {}

    def _info(self, server_round: int) -> dict[str, Any]:
        return self.round_info.setdefault(
            server_round,
            {"epsilon_per_site": {}, "errors": [], "rejected": [], "bytes_in": 0},
        )

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Drop error and invalid replies, then average the rest."""
        info = self._info(server_round)
        valid: list[Message] = []
        for msg in replies:
            node = str(msg.metadata.src_node_id)
            if msg.has_error():
                info["errors"].append({"node": node, "reason": msg.error.reason})
                logger.warning(
                    "round %s: node %s replied with an error: %s",
                    server_round,
                    node,
                    msg.error.reason,
                )
                continue
            problem = self._check(msg)
            if problem:
                info["rejected"].append({"node": node, "reason": problem})
                logger.warning(
                    "round %s: update of node %s rejected: %s",
                    server_round,
                    node,
                    problem,
                )
                continue
            eps = _number(_metrics(msg.content).get("epsilon"))
            info["epsilon_per_site"][node] = eps
            arrays = next(iter(msg.content.array_records.values()))
            info["bytes_in"] += sum(a.numpy().nbytes for a in arrays.values())
            valid.append(msg)
        info["sites_trained"] = len(valid)
        if not valid:
            return None, None
        aggregated: tuple[ArrayRecord | None, MetricRecord | None]
        aggregated = super().aggregate_train(server_round, valid)
        if aggregated[1] is not None:
            info["train"] = dict(aggregated[1])
        return aggregated

    def _check(self, msg: Message) -> str | None:
        content = msg.content
        if len(content.array_records) != 1 or len(content.metric_records) != 1:
            return "reply must hold exactly one ArrayRecord and one MetricRecord"
        arrays = next(iter(content.array_records.values()))
        metrics = next(iter(content.metric_records.values()))
        weight = metrics.get(WEIGHT_KEY)
        if not isinstance(weight, int) or weight <= 0:
            return f"{WEIGHT_KEY} missing or not a positive integer"
        named = {k: v.numpy() for k, v in arrays.items()}
        return validate_update(named, self.expected)

    def aggregate_evaluate(
        self, server_round: int, replies: Iterable[Message]
    ) -> MetricRecord | None:
        """Aggregate the held-out metrics of the sites that released them."""
        info = self._info(server_round)
        valid = []
        for msg in replies:
            if msg.has_error():
                info["errors"].append(
                    {"node": str(msg.metadata.src_node_id), "reason": msg.error.reason}
                )
            else:
                valid.append(msg)
        info["sites_evaluated"] = len(valid)
        if not valid:
            return None
        metrics: MetricRecord | None = super().aggregate_evaluate(server_round, valid)
        if metrics is not None:
            info["eval"] = dict(metrics)
        return metrics


def _run_dir(run: RunConfig, context: Context) -> Path:
    if run.run_dir:
        return Path(run.run_dir)
    return Path.cwd() / f"slidefed-run-{context.run_id}"


@app.main()
def main(grid: Grid, context: Context) -> None:
    """Run the federated rounds and write metrics and the final model."""
    from safetensors.numpy import save_file

    run = parse_run_config(dict(context.run_config))
    run_dir = _run_dir(run, context)
    model = build_model(run.task, feature_dim(run.encoder), seed=run.seed)
    initial = {k: v.detach().numpy() for k, v in model.state_dict().items()}
    strategy = SlidefedFedAvg(
        expected=specs_of(initial),
        min_train_nodes=run.min_sites,
        min_evaluate_nodes=run.min_sites,
        min_available_nodes=run.min_sites,
    )
    metrics_log = MetricsLog(run_dir)
    started = time.perf_counter()
    round_start = [started]

    def after_round(server_round: int, arrays: ArrayRecord) -> MetricRecord | None:
        if server_round == 0:
            return None
        now = time.perf_counter()
        info = dict(strategy.round_info.get(server_round, {}))
        row: dict[str, Any] = {
            "round": server_round,
            "seconds": round(now - round_start[0], 2),
        }
        round_start[0] = now
        train_m = info.pop("train", {})
        row["train_patients"] = int(train_m.get(WEIGHT_KEY, 0))
        if "train_loss" in train_m:
            row["train_loss"] = train_m["train_loss"]
        eval_m = info.pop("eval", {})
        row["eval_patients"] = int(eval_m.pop(WEIGHT_KEY, 0))
        row.update(eval_m)
        row.update(info)
        metrics_log.append(row)
        logger.info(
            "round %d/%d: train loss %.4f, held-out loss %.4f, accuracy %.3f, AUC %.3f",
            server_round,
            run.num_server_rounds,
            float(row.get("train_loss", np.nan)),
            float(row.get("eval_loss", np.nan)),
            float(row.get("accuracy", np.nan)),
            float(row.get("auc", np.nan)),
        )
        return None

    result = strategy.start(
        grid=grid,
        initial_arrays=ArrayRecord({k: Array(v) for k, v in initial.items()}),
        num_rounds=run.num_server_rounds,
        train_config=ConfigRecord({}),
        evaluate_config=ConfigRecord({}),
        evaluate_fn=after_round,
    )
    final = {k: np.ascontiguousarray(v.numpy()) for k, v in result.arrays.items()}
    run_dir.mkdir(parents=True, exist_ok=True)
    save_file(
        final,
        str(run_dir / "final.safetensors"),
        metadata={
            "task": run.task,
            "encoder": run.encoder,
            "rounds": str(run.num_server_rounds),
        },
    )
    (run_dir / "run.json").write_text(
        json.dumps(
            {
                "run_config": run.model_dump(by_alias=True),
                "run_id": context.run_id,
                "seconds": round(time.perf_counter() - started, 2),
            },
            indent=2,
        )
    )


__all__ = ["SlidefedFedAvg", "app", "main", "weighted_metrics"]
