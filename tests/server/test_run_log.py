"""What the ServerApp writes to the run's log (``flwr log``) and to its audit log.

The ServerApp runs against a stand-in SuperLink whose two sites answer every
instruction (the train reply echoes the global model), so what Flower's logger
receives and what the audit log records are those of a real run.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import logging
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from flwr.app import (
    Array,
    ArrayRecord,
    Context,
    Message,
    Metadata,
    MetricRecord,
    RecordDict,
)
from flwr.supercore.run import Run
from flwr.supercore.task_identity import TaskIdentity

from slidefed.server.app import main

FAB_HASH = "ab" * 32
SITES = {
    # node: (patients, cumulative epsilon, delta)
    11: (10, 1.0, 1e-5),
    12: (30, 3.0, 1e-6),
}


class _Link:
    """Two sites that answer at once, as the SuperLink passes their replies on."""

    def __init__(self) -> None:
        self.ids = itertools.count(1)
        self.pending: dict[str, Message] = {}
        self.run = Run.create_empty(run_id=5)
        self.run.fab_hash = FAB_HASH

    def get_node_ids(self) -> list[int]:
        return list(SITES)

    def push_messages(self, messages: list[Message]) -> list[str]:
        ids = []
        for message in messages:
            mid = f"m{next(self.ids)}"
            self.pending[mid] = message
            ids.append(mid)
        return ids

    def pull_messages(self, ids: list[str]) -> list[Message]:
        return [
            self._answer(mid, self.pending.pop(mid))
            for mid in ids
            if mid in self.pending
        ]

    def _answer(self, mid: str, message: Message) -> Message:
        node = message.metadata.dst_node_id
        patients, epsilon, delta = SITES[node]
        meta = Metadata(
            run_id=5,
            message_id=f"r{mid}",
            src_node_id=node,
            dst_node_id=0,
            reply_to_message_id=mid,
            group_id=message.metadata.group_id,
            created_at=time.time(),
            ttl=60.0,
            message_type=message.metadata.message_type,
        )
        metrics: dict[str, int | float | list[int] | list[float]]
        if message.metadata.message_type == "train":
            model = next(iter(message.content.array_records.values()))
            metrics = {
                "num-examples": patients,
                "epsilon": epsilon,
                "epsilon_round": epsilon / 2,
                "delta": delta,
                "noise_multiplier": 1.0 + epsilon,
            }
            arrays = ArrayRecord({k: Array(v.numpy()) for k, v in model.items()})
            content = RecordDict({"arrays": arrays, "metrics": MetricRecord(metrics)})
        else:
            metrics = {"num-examples": patients, "accuracy": 0.75, "auc": 0.8}
            content = RecordDict({"metrics": MetricRecord(metrics)})
        return Message(content=content, metadata=meta)  # type: ignore[call-overload,no-any-return]


class _Lines(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


@pytest.fixture
def flower_log(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[list[str]]:
    """What Flower's logger receives (Flower forwards it to 'flwr log')."""
    monkeypatch.setattr(TaskIdentity, "_run_id", 5)
    monkeypatch.setattr(TaskIdentity, "_node_id", 0)
    monkeypatch.setattr(TaskIdentity, "_task_id", 1)
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    monkeypatch.delenv("SLIDEFED_SERVER_CONFIG", raising=False)
    flwr_logger = logging.getLogger("flwr")
    handler = _Lines()
    flwr_logger.addHandler(handler)
    level = flwr_logger.level
    flwr_logger.setLevel(logging.INFO)
    yield handler.lines
    flwr_logger.removeHandler(handler)
    flwr_logger.setLevel(level)


def _run(tmp_path: Path) -> Path:
    run_dir = tmp_path / "run"
    context = Context(
        run_id=5,
        node_id=0,
        node_config={},
        state=RecordDict(),
        run_config={
            "num-server-rounds": 2,
            "min-sites": 2,
            "run-dir": str(run_dir),
            "run-name": "r7",
            "round-timeout": 30,
        },
    )
    main(_Link(), context)  # type: ignore[arg-type]
    return run_dir


def test_the_run_log_has_a_line_per_round_and_never_a_mean_of_epsilons(
    tmp_path: Path, flower_log: list[str]
) -> None:
    _run(tmp_path)
    rounds = [line for line in flower_log if line.startswith("slidefed round ")]
    assert rounds == [
        f"slidefed round {r}/2: 2 sites trained, 2 evaluated; accuracy 0.750, "
        "AUC 0.800 (noised); highest site epsilon 3.000; 0 errors"
        for r in (1, 2)
    ]
    aggregated = [line for line in flower_log if "Aggregated MetricRecord" in line]
    train = aggregated[0]
    # The weakest site's guarantee, not the weighted means (2.5 and 3.25e-06).
    assert "'epsilon_max': 3.0" in train
    assert "'delta_max': 1e-05" in train
    assert "'noise_multiplier_min': 2.0" in train
    assert "'epsilon':" not in train
    assert "'delta':" not in train
    assert "'epsilon_round':" not in train


def test_the_audit_log_names_the_run_its_app_and_the_final_model_file(
    tmp_path: Path, flower_log: list[str]
) -> None:
    run_dir = _run(tmp_path)
    records = [
        json.loads(line)
        for line in (run_dir / "audit" / "server-audit.jsonl").read_text().splitlines()
    ]
    started = next(r for r in records if r["event"] == "run_started")
    assert started["data"]["run_name"] == "r7"
    assert started["data"]["fab_hash"] == FAB_HASH
    finished = next(r for r in records if r["event"] == "run_finished")
    model = (run_dir / "final.safetensors").read_bytes()
    assert finished["data"]["model_file_sha256"] == hashlib.sha256(model).hexdigest()
