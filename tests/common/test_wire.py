"""A packed update: one array on the wire, the model's arrays at both ends."""

from __future__ import annotations

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord
from flwr.common.serde import array_record_to_proto

from slidefed.common.arrays import specs_of, update_sha256
from slidefed.common.model import build_model
from slidefed.common.wire import (
    PACKED,
    WireFormatError,
    pack_update,
    unpack_update,
    update_arrays,
)

MODEL = {k: v.numpy() for k, v in build_model("abmil", 24, seed=0).state_dict().items()}


def _proto_bytes(record: ArrayRecord) -> int:
    return len(array_record_to_proto(record).SerializeToString())


@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_pack_then_unpack_gives_the_same_arrays_and_hash(dtype: type) -> None:
    arrays = {k: v.astype(dtype) for k, v in MODEL.items()}
    record = pack_update(arrays)
    assert list(record) == [PACKED]
    got = unpack_update(record, specs_of(MODEL))
    assert list(got) == list(MODEL)
    assert update_sha256(got) == update_sha256(arrays)


def test_packing_carries_one_header_not_one_per_array() -> None:
    raw = sum(v.nbytes for v in MODEL.values())
    named = _proto_bytes(ArrayRecord({k: Array(v) for k, v in MODEL.items()}))
    packed = _proto_bytes(pack_update(MODEL))
    assert packed / raw <= 1.01 < named / raw


def test_arrays_of_different_dtypes_are_not_packed() -> None:
    mixed: dict[str, np.ndarray] = {
        "w": np.ones(3, np.float32),
        "b": np.ones(2, np.float64),
    }
    with pytest.raises(WireFormatError, match="one dtype"):
        pack_update(mixed)


def test_a_record_of_named_arrays_is_not_a_packed_update() -> None:
    named = ArrayRecord({k: Array(v) for k, v in MODEL.items()})
    with pytest.raises(WireFormatError, match="not a packed update"):
        unpack_update(named, specs_of(MODEL))
    assert list(update_arrays(named, specs_of(MODEL))) == list(MODEL)


def test_a_packed_array_of_another_size_is_refused() -> None:
    record = pack_update({"w": np.ones(7, np.float32)})
    with pytest.raises(WireFormatError, match="the model has 9 values"):
        unpack_update(record, specs_of({"w": np.ones((3, 3), np.float32)}))
