"""Reply validation in front of every strategy slidefed offers.

:class:`ValidatingMixin` checks each train reply before aggregation (names, shapes,
dtypes, finite values, update norm, weight key; a packed update,
:mod:`slidefed.common.wire`, is first read in the layout of the model sent); offenders and error replies are
dropped and audited, and the round goes on while enough valid replies remain. It
also shifts round numbers by the resumed offset, so that every record, audit line
and site instruction carries the absolute round.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from typing import Any, Literal

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.serverapp import Grid

from slidefed.common.arrays import ArraySpec, update_sha256, validate_update
from slidefed.common.audit.events import (
    AuditEvent,
    ReplyError,
    UpdateAggregated,
    UpdateRejected,
)
from slidefed.common.audit.writer import AuditLog
from slidefed.common.site_errors import describe_reply_error
from slidefed.common.wire import WireFormatError, is_packed, unpack_update

logger = logging.getLogger(__name__)

WEIGHT_KEY = "num-examples"


def _metrics(content: RecordDict) -> MetricRecord:
    return next(iter(content.metric_records.values()))


def _number(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


PRIVACY_BOUNDS = {
    "epsilon": "epsilon_max",
    "epsilon_round": "epsilon_round_max",
    "delta": "delta_max",
}
"""Train metrics that are each site's own privacy bound, and the name of their
maximum over the sites. A mean of bounds bounds nothing, so these are never
averaged."""

_NOISE_MIN = "noise_multiplier_min"


def weighted_metrics(
    contents: list[RecordDict], weight_key: str, *, skip: Iterable[str] = ()
) -> MetricRecord:
    """Weighted mean of each metric over the replies that carry it.

    Parameters
    ----------
    contents : list of RecordDict
        The replies' contents (one MetricRecord each).
    weight_key : str
        The metric that weighs each reply (summed, not averaged).
    skip : iterable of str
        Metrics to leave out.

    Returns
    -------
    MetricRecord
        The means, and the total weight under ``weight_key``.
    """
    left_out = set(skip)
    sums: dict[str, float] = {}
    weights: dict[str, float] = {}
    total = 0
    for content in contents:
        record = _metrics(content)
        w = _number(record.get(weight_key)) or 0.0
        total += int(w)
        for key, value in record.items():
            number = _number(value)
            if key == weight_key or key in left_out or number is None:
                continue
            sums[key] = sums.get(key, 0.0) + w * number
            weights[key] = weights.get(key, 0.0) + w
    out: dict[str, int | float | list[int] | list[float]] = {
        k: sums[k] / weights[k] for k in sums if weights[k] > 0
    }
    out[weight_key] = total
    return MetricRecord(out)


def train_metrics(contents: list[RecordDict], weight_key: str) -> MetricRecord:
    """The round's train metrics as Flower logs them: privacy bounds never averaged.

    Each site's epsilon and delta are its own bound; their mean is a guarantee of
    nothing. So they appear as the maximum over the sites (``epsilon_max``,
    ``epsilon_round_max``, ``delta_max``: the weakest site's guarantee), the noise
    multiplier as its minimum, and every other metric as the weighted mean.

    Parameters
    ----------
    contents : list of RecordDict
        The valid train replies' contents.
    weight_key : str
        The weight metric.

    Returns
    -------
    MetricRecord
        Means of the other metrics, the maxima, the minimum noise, the total weight.
    """
    skip = {*PRIVACY_BOUNDS, "noise_multiplier"}
    out = dict(weighted_metrics(contents, weight_key, skip=skip))
    for key, name in (*PRIVACY_BOUNDS.items(), ("noise_multiplier", _NOISE_MIN)):
        values = [
            v for c in contents if (v := _number(_metrics(c).get(key))) is not None
        ]
        if values:
            out[name] = min(values) if name == _NOISE_MIN else max(values)
    return MetricRecord(out)


def _update_digest(msg: Message) -> str:
    """SHA-256 of a train reply's arrays."""
    return update_sha256(_numpy(next(iter(msg.content.array_records.values()))))


def _numpy(record: ArrayRecord) -> dict[str, np.ndarray]:
    return {k: v.numpy() for k, v in record.items()}


class ValidatingMixin:
    """Validation, auditing and round offsets in front of a Flower strategy."""

    expected: list[ArraySpec]
    round_offset: int
    max_update_norm: float
    audit: AuditLog | None
    run_id: int
    round_info: dict[int, dict[str, Any]]
    current_global: dict[str, np.ndarray] | None

    def setup(
        self,
        *,
        expected: list[ArraySpec],
        audit: AuditLog | None,
        run_id: int,
        max_update_norm: float = 0.0,
        round_offset: int = 0,
    ) -> None:
        """Attach what validation and auditing need."""
        self.expected = expected
        self.audit = audit
        self.run_id = run_id
        self.max_update_norm = max_update_norm
        self.round_offset = round_offset
        self.round_info = {}
        self.current_global = None

    def info(self, server_round: int) -> dict[str, Any]:
        """Per-round details for metrics.jsonl (absolute round number)."""
        return self.round_info.setdefault(
            server_round,
            {
                "epsilon_per_site": {},
                "errors": [],
                "rejected": [],
                "bytes_in": 0,
                "bytes_out": 0,
                "train_seconds_max": 0.0,
                "train_seconds_sum": 0.0,
                "aggregate_seconds": 0.0,
            },
        )

    def _audit(self, event: AuditEvent, server_round: int) -> None:
        if self.audit is not None:
            self.audit.append(event, run_id=self.run_id, round=server_round)

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """Send the global model; remember it for the update-norm check."""
        absolute = server_round + self.round_offset
        self.current_global = _numpy(arrays)
        return super().configure_train(absolute, arrays, config, grid)  # type: ignore[misc, no-any-return]

    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """Ask sites to evaluate (absolute round number)."""
        absolute = server_round + self.round_offset
        return super().configure_evaluate(absolute, arrays, config, grid)  # type: ignore[misc, no-any-return]

    def check(self, msg: Message) -> str | None:
        """Why a train reply may not be aggregated, or None."""
        content = msg.content
        if len(content.array_records) != 1 or len(content.metric_records) != 1:
            return "reply must hold exactly one ArrayRecord and one MetricRecord"
        metrics = _metrics(content)
        weight = metrics.get(WEIGHT_KEY)
        if not isinstance(weight, int) or isinstance(weight, bool) or weight <= 0:
            return f"{WEIGHT_KEY} missing or not a positive integer"
        arrays = _numpy(next(iter(content.array_records.values())))
        problem = validate_update(arrays, self.expected)
        if problem:
            return problem
        if self.max_update_norm > 0 and self.current_global is not None:
            norm = float(
                np.sqrt(
                    sum(
                        float(np.sum((arrays[k].astype(np.float64) - g) ** 2))
                        for k, g in self.current_global.items()
                    )
                )
            )
            if norm > self.max_update_norm:
                return (
                    f"update norm {norm:.4g} exceeds max-update-norm "
                    f"{self.max_update_norm:.4g}"
                )
        return None

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Drop error and invalid replies, audit them, aggregate the rest."""
        absolute = server_round + self.round_offset
        info = self.info(absolute)
        valid: list[Message] = []
        replies = list(replies)
        if self.current_global is not None:
            sent = sum(a.nbytes for a in self.current_global.values())
            info["bytes_out"] = sent * len(replies)
        for msg in replies:
            if self._admit(msg, absolute, info):
                self._accept(msg, absolute, info)
                valid.append(msg)
        info["sites_trained"] = len(valid)
        if not valid:
            return None, None
        # Sums of floats depend on their order, and replies arrive in any order
        # (a replayed release comes back at once): aggregate in the order of the
        # updates' hashes, so the same updates always give the same global model.
        valid.sort(key=_update_digest)
        start = time.perf_counter()
        aggregated: tuple[ArrayRecord | None, MetricRecord | None]
        aggregated = super().aggregate_train(absolute, valid)  # type: ignore[misc]
        info["aggregate_seconds"] = round(time.perf_counter() - start, 4)
        if aggregated[1] is not None:
            info["train"] = dict(aggregated[1])
        return self._in_model_dtypes(aggregated[0]), aggregated[1]

    def _in_model_dtypes(self, arrays: ArrayRecord | None) -> ArrayRecord | None:
        """The global model in the model's own dtypes.

        Server optimisers (FedAdam, FedYogi, ...) compute in float64; the sites
        accept only their own model, in its dtypes, so the model goes out as such.
        """
        if arrays is None:
            return None
        dtypes = {spec.name: spec.dtype for spec in self.expected}
        return ArrayRecord(
            {
                name: Array(np.asarray(array.numpy(), dtype=dtypes.get(name)))
                for name, array in arrays.items()
            }
        )

    def _reply_error(
        self,
        msg: Message,
        absolute: int,
        info: dict[str, Any],
        stage: Literal["train", "evaluate"],
    ) -> None:
        """Record, audit and log a reply that carries an error instead of content.

        Shown by its code, from the table of site errors: a site's own text is
        never displayed, logged or audited here.
        """
        node = str(msg.metadata.src_node_id)
        reason = describe_reply_error(msg.error.code, msg.error.reason)
        info["errors"].append(
            {"node": node, "code": int(msg.error.code), "reason": reason}
        )
        self._audit(ReplyError(node=node, reason=reason, stage=stage), absolute)
        logger.warning(
            "round %s: site %s replied to %s with an error: %s",
            absolute,
            node,
            stage,
            reason,
        )

    def _unpack(self, msg: Message) -> str | None:
        """Give a packed update its arrays' names and shapes; why not, or None.

        The layout is the model's (:attr:`expected`), never the reply's: the rest
        of validation, the hashes and aggregation then see the arrays by name.
        """
        records = msg.content.array_records
        if len(records) != 1:
            return None
        key, record = next(iter(records.items()))
        if not is_packed(record):
            return None
        try:
            arrays = unpack_update(record, self.expected)
        except WireFormatError as exc:
            return str(exc)
        msg.content[key] = ArrayRecord({k: Array(v) for k, v in arrays.items()})
        return None

    def _admit(self, msg: Message, absolute: int, info: dict[str, Any]) -> bool:
        """Whether a train reply may be aggregated; records and audits why not."""
        node = str(msg.metadata.src_node_id)
        if msg.has_error():
            self._reply_error(msg, absolute, info, "train")
            return False
        problem = self._unpack(msg) or self.check(msg)
        if problem:
            info["rejected"].append({"node": node, "reason": problem})
            self._audit(UpdateRejected(node=node, reason=problem), absolute)
            logger.warning(
                "round %s: update of site %s rejected: %s", absolute, node, problem
            )
            return False
        return True

    def _accept(self, msg: Message, absolute: int, info: dict[str, Any]) -> None:
        """Account for an admitted reply (in float32) and audit its aggregation."""
        node = str(msg.metadata.src_node_id)
        record = next(iter(msg.content.array_records.values()))
        arrays = _numpy(record)
        # Updates may travel as float16; aggregate in float32.
        if any(a.dtype != np.float32 for a in arrays.values()):
            arrays = {k: a.astype(np.float32) for k, a in arrays.items()}
            key = next(iter(msg.content.array_records))
            msg.content[key] = ArrayRecord({k: Array(v) for k, v in arrays.items()})
        metrics = _metrics(msg.content)
        info["epsilon_per_site"][node] = _number(metrics.get("epsilon"))
        seconds = _number(metrics.get("train_seconds")) or 0.0
        info["train_seconds_max"] = max(info["train_seconds_max"], seconds)
        info["train_seconds_sum"] += seconds
        nbytes = sum(a.numpy().nbytes for a in record.values())
        info["bytes_in"] += nbytes
        self._audit(
            UpdateAggregated(
                node=node,
                sha256=update_sha256(_numpy(record)),
                bytes=nbytes,
                weight=int(metrics[WEIGHT_KEY]),  # type: ignore[arg-type]
            ),
            absolute,
        )

    def aggregate_evaluate(
        self, server_round: int, replies: Iterable[Message]
    ) -> MetricRecord | None:
        """Aggregate the held-out metrics of the sites that released them."""
        absolute = server_round + self.round_offset
        info = self.info(absolute)
        valid = []
        for msg in replies:
            if msg.has_error():
                self._reply_error(msg, absolute, info, "evaluate")
            else:
                valid.append(msg)
        info["sites_evaluated"] = len(valid)
        if not valid:
            return None
        # Sites may release different keys (per-class metrics of the classes they
        # hold), which Flower's own check refuses; the weighted mean takes each key
        # over the sites that sent it.
        metrics: MetricRecord | None = weighted_metrics(
            [m.content for m in valid], WEIGHT_KEY
        )
        if metrics is not None:
            info["eval"] = dict(metrics)
        return metrics


__all__ = [
    "PRIVACY_BOUNDS",
    "WEIGHT_KEY",
    "ValidatingMixin",
    "train_metrics",
    "weighted_metrics",
]
