"""The egress guard on packed updates: the model as one array, and nothing else."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, Context, Message, RecordDict

from slidefed.client.egress import inspect_reply
from slidefed.common.arrays import specs_of
from slidefed.common.wire import PACKED, pack_update, unpack_update
from tests.client.messages import keyed_site
from tests.client.test_egress import (
    MODEL,
    _app,
    _assert_blocked,
    _audit,
    _context,
    _instruction,
    _metrics,
)


@pytest.fixture
def site_toml(tmp_path: Path) -> Path:
    return keyed_site(tmp_path, "egress-packed-test")


FLAT = np.concatenate([v.ravel() for v in MODEL.values()])


def _packed_reply(msg: Message, flat: np.ndarray) -> Message:
    record = ArrayRecord({PACKED: Array(np.ascontiguousarray(flat))})
    return Message(RecordDict({"arrays": record, "metrics": _metrics()}), reply_to=msg)


def _rule(site_toml: Path, flat: np.ndarray) -> str | None:
    msg = _instruction()
    verdict = inspect_reply(msg, _packed_reply(msg, flat), _context(site_toml))
    return None if verdict is None else verdict.rule


def test_a_packed_update_of_the_model_leaves_and_unpacks_to_it(
    site_toml: Path,
) -> None:
    def honest(msg: Message, _ctx: Context) -> Message:
        record = pack_update({k: v + 0.1 for k, v in MODEL.items()})
        content = RecordDict({"arrays": record, "metrics": _metrics()})
        return Message(content, reply_to=msg)

    reply = _app(honest)(_instruction(), _context(site_toml))
    assert not reply.has_error()
    got = unpack_update(reply.content.array_records["arrays"], specs_of(MODEL))
    assert list(got) == list(MODEL)
    for name, value in MODEL.items():
        np.testing.assert_array_equal(got[name], value + 0.1)
    assert _audit(site_toml) == []


def test_a_float16_packed_update_of_a_float32_model_leaves(site_toml: Path) -> None:
    assert _rule(site_toml, FLAT.astype(np.float16)) is None


@pytest.mark.parametrize(
    ("flat", "rule"),
    [
        # A tile's pixels appended after the model's values.
        (
            np.concatenate([FLAT, np.zeros(224 * 224 * 3, np.float32)]),
            "reply larger than the site's egress limit",
        ),
        # A patient's age hidden in three values past the model's.
        (
            np.concatenate([FLAT, np.array([6, 4, 0], np.float32)]),
            "packed update unlike the model",
        ),
        (FLAT[:-1], "packed update unlike the model"),
        (FLAT.reshape(1, -1), "packed update unlike the model"),
        (FLAT.astype(np.float64), "array dtype differs from the model"),
        (FLAT.astype(np.uint8), "array dtype differs from the model"),
        (
            np.where(np.arange(FLAT.size) == 3, np.nan, FLAT).astype(np.float32),
            "not finite",
        ),
    ],
    ids=[
        "tile-appended",
        "extra-values",
        "short",
        "two-dimensional",
        "wider",
        "pixels",
        "nan",
    ],
)
def test_egress_blocks_a_packed_update_unlike_the_model(
    site_toml: Path, flat: np.ndarray, rule: str
) -> None:
    got = _rule(site_toml, flat)
    assert got is not None
    assert rule in got


def test_a_packed_update_counts_against_the_egress_limit(site_toml: Path) -> None:
    site_toml.write_text(site_toml.read_text() + "[policy]\nmax_update_bytes = 4096\n")

    def honest(msg: Message, _ctx: Context) -> Message:
        return _packed_reply(msg, FLAT)

    reply = _app(honest)(_instruction(), _context(site_toml))
    assert (
        _assert_blocked(reply, site_toml) == "reply larger than the site's egress limit"
    )


def test_a_packed_update_of_a_model_the_server_swapped_is_blocked(
    site_toml: Path,
) -> None:
    # The server sends a larger model; the app packs exactly what it was sent.
    bigger: dict[str, Any] = {**MODEL, "extra.weight": np.zeros((64, 64), np.float32)}

    def echo(msg: Message, _ctx: Context) -> Message:
        return _packed_reply(msg, np.concatenate([v.ravel() for v in bigger.values()]))

    reply = _app(echo)(_instruction(model=bigger), _context(site_toml))
    assert _assert_blocked(reply, site_toml) == (
        "the server sent arrays unlike the site's model"
    )
