"""What one site's message costs beyond its local training, measured in-process.

The site's ClientApp (:data:`slidefed.client.app.app`, egress guard included) is
called with the Messages a coordinator sends, round after round, as the SuperNode
calls it. Sites release no timing, so the seconds spent training come from the
site's own log: the ClientApp logs each round's training time
(``train_seconds``), which a handler on its logger reads here. The fixed cost
of a message is its wall time less that training time: checks, charging the
ledger, the audit records, storing the release, the egress guard.

At a realistic size (hundreds of patients, bags of 1,000 tiles of 1,024-dim
features) the ClientApp cannot be called as it is: its model is built from the
encoder's feature length, and only ``hed`` (24) has one (:data:`~slidefed.common.
model.ENCODER_DIMS`). There the training is the same :func:`~slidefed.client.
train.train_dp` call on bags of that size, and the fixed cost is the demo site's,
with its parts that grow with the model (hashing, storing and serialising the
update) measured again for the larger model.
"""

from __future__ import annotations

import io
import logging
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

_APP_LOGGER = "slidefed.client.app"


class _TrainSeconds(logging.Handler):
    """Collects the ``train_seconds`` the ClientApp logs for each round."""

    def __init__(self) -> None:
        super().__init__(level=logging.INFO)
        self.seconds: list[float] = []

    def emit(self, record: logging.LogRecord) -> None:
        value = getattr(record, "train_seconds", None)
        if isinstance(value, float):
            self.seconds.append(value)


def _instruction(arrays: dict[str, np.ndarray], server_round: int, run_id: int) -> Any:
    """A train instruction as the coordinator's Grid builds it."""
    from flwr.app import (
        Array,
        ArrayRecord,
        ConfigRecord,
        Message,
        Metadata,
        RecordDict,
    )

    meta = Metadata(
        run_id=run_id,
        message_id=f"bench-train-{server_round}-{time.time_ns()}",
        src_node_id=1,
        dst_node_id=7,
        reply_to_message_id="",
        group_id=str(server_round),
        created_at=time.time(),
        ttl=600.0,
        message_type="train",
    )
    content = RecordDict(
        {
            "arrays": ArrayRecord({k: Array(v) for k, v in arrays.items()}),
            "config": ConfigRecord({"server-round": server_round}),
        }
    )
    # The internal form Flower itself uses for a received message.
    return Message(content=content, metadata=meta)  # type: ignore[call-overload]


def site_messages(site_toml: Path, run: Any, *, rounds: int) -> dict[str, Any]:
    """Wall and training seconds of ``rounds`` train messages to one site.

    The first message also loads the features into the process (as the first
    message of a simulation actor does); the figures are medians of the others.
    """
    from flwr.app import Context, RecordDict

    from slidefed.client.app import app
    from slidefed.common.arrays import specs_of
    from slidefed.common.model import build_model, feature_dim
    from slidefed.common.wire import update_arrays

    model = build_model(
        run.task, feature_dim(run.encoder), seed=run.seed, inputs=run.inputs
    )
    arrays = {k: v.numpy() for k, v in model.state_dict().items()}
    context = Context(
        run_id=4242,
        node_id=7,
        node_config={"site-config": str(site_toml)},
        state=RecordDict(),
        run_config=run.model_dump(by_alias=True),
    )
    logger = logging.getLogger(_APP_LOGGER)
    handler, level = _TrainSeconds(), logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    walls: list[float] = []
    try:
        for server_round in range(1, rounds + 1):
            msg = _instruction(arrays, server_round, context.run_id)
            started = time.perf_counter()
            reply = app(msg, context)
            walls.append(time.perf_counter() - started)
            if reply.has_error():
                raise RuntimeError(f"the site refused round {server_round}")
            record = reply.content.array_records["arrays"]
            arrays = update_arrays(record, specs_of(arrays))
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
    wall = statistics.median(walls[1:])
    train = statistics.median(handler.seconds[1:])
    return {
        "messages": rounds,
        "first_message_seconds": round(walls[0], 3),
        "message_seconds": round(wall, 4),
        "training_seconds": round(train, 4),
        "fixed_ms_per_message": round((wall - train) * 1000, 1),
        "overhead_fraction": round((wall - train) / wall, 4),
    }


def size_dependent_ms(state: dict[str, np.ndarray]) -> float:
    """Milliseconds of the parts of a message that grow with the model.

    Hashing the update (twice: the stored release and its audit record),
    storing it as the site does (``.npz``, synced), and Flower's serialisation
    of the instruction and of the reply.
    """
    from slidefed.bench.round import named_wire_bytes, wire_bytes
    from slidefed.client.privacy.releases import ReleaseStore
    from slidefed.common.arrays import update_sha256

    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as folder:
        store = ReleaseStore(Path(folder))
        store.put(
            kind="train",
            run_id=1,
            server_round=1,
            input_key="bench",
            arrays=state,
            metrics={},
            charge={},
        )
        update_sha256(state)
        named_wire_bytes(state)  # the instruction: one Array per model array
        wire_bytes(state)  # the reply: packed
        np.load(io.BytesIO(Path(folder, "train-1-1.npz").read_bytes()))
    return (time.perf_counter() - started) * 1000


def realistic_training(
    *, patients: int, tiles: int, dim: int, batch_size: int = 8, seed: int = 0
) -> dict[str, Any]:
    """Seconds of one local DP epoch on ``patients`` bags of ``tiles`` x ``dim``."""
    import torch

    from slidefed.client.data.bags import PatientBag
    from slidefed.client.train import train_dp
    from slidefed.common.model import ABMIL

    torch.set_num_threads(1)  # as the ClientApp does
    rng = np.random.default_rng(seed)
    bags = [
        PatientBag(
            patient_id=f"p{i}",
            label=i % 2,
            split="train",
            features=rng.standard_normal((tiles, dim), dtype=np.float32),
        )
        for i in range(patients)
    ]
    model = ABMIL(dim)
    started = time.perf_counter()
    result = train_dp(
        model,
        bags,
        epochs=1,
        batch_size=batch_size,
        lr=0.01,
        noise_multiplier=1.0,
        max_grad_norm=1.0,
        delta=1e-5,
        seed=seed,
        report_epsilon=False,
    )
    seconds = time.perf_counter() - started
    state = {k: v.detach().numpy() for k, v in model.state_dict().items()}
    return {
        "patients": patients,
        "tiles_per_bag": tiles,
        "feature_dim": dim,
        "local_epochs": 1,
        "steps": result.steps,
        "training_seconds": round(seconds, 3),
        "update_bytes": int(sum(v.nbytes for v in state.values())),
        "size_dependent_ms": round(size_dependent_ms(state), 1),
    }


__all__ = ["realistic_training", "site_messages", "size_dependent_ms"]
