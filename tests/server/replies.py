"""Train replies and a validating strategy for the server's unit tests."""

import time

import numpy as np
from flwr.app import (
    Array,
    ArrayRecord,
    Error,
    Message,
    Metadata,
    MetricRecord,
    RecordDict,
)

from slidefed.common.arrays import specs_of
from slidefed.common.audit.writer import AuditLog
from slidefed.common.run_config import RunConfig
from slidefed.common.wire import pack_update
from slidefed.server.strategy import build_strategy
from slidefed.server.validation import ValidatingMixin

EXPECTED = {"w": np.ones((2, 3), np.float32), "b": np.zeros(3, np.float32)}


def reply(
    node: int,
    arrays: dict[str, np.ndarray] | None,
    metrics: dict[str, int | float | list[int] | list[float]],
    *,
    error: str | None = None,
    stage: str = "train",
    packed: bool = False,
) -> Message:
    """A reply of site ``node``; ``packed``: its arrays as one, as sites send them."""
    meta = Metadata(
        run_id=1,
        message_id=f"m{node}",
        src_node_id=node,
        dst_node_id=1,
        reply_to_message_id="x",
        group_id="1",
        created_at=time.time(),
        ttl=60.0,
        message_type=stage,
    )
    if error is not None:
        return Message(error=Error(code=4001, reason=error), metadata=meta)  # type: ignore[call-overload,no-any-return]
    content = RecordDict({"metrics": MetricRecord(metrics)})
    if arrays is not None and packed:
        content["arrays"] = pack_update(arrays)
    elif arrays is not None:
        content["arrays"] = ArrayRecord({k: Array(v) for k, v in arrays.items()})
    return Message(content=content, metadata=meta)  # type: ignore[call-overload,no-any-return]


def validating_strategy(
    name: str = "fedavg", audit: AuditLog | None = None, **run: object
) -> ValidatingMixin:
    strategy = build_strategy(
        RunConfig(strategy=name, **run),
        expected=specs_of(EXPECTED),
        audit=audit,
        run_id=1,
    )
    assert isinstance(strategy, ValidatingMixin)
    return strategy
