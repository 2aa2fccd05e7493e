"""An update on the wire: the model's arrays as one flat array.

A site's reply to ``train`` carries its update as a single one-dimensional array,
:data:`PACKED`, holding every array of the model in the model's order, each
flattened in C order. Its layout is not on the wire: both ends build the model's
array specs themselves (the site from its own model for the run, the coordinator
from the model it sent), so the only bytes besides the values are one ``.npy``
header and one protobuf entry, whatever the number of arrays. Twelve arrays sent
one by one cost twelve headers: 8.9 % on top of the demo's 24 KB model, 0.8 % packed.

Hashes, audit records and stored releases are of the named arrays, never of this
form, so the audit cross-check does not depend on how an update travelled.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np
from flwr.app import Array, ArrayRecord
from numpy.typing import NDArray

from slidefed.common.arrays import ArraySpec
from slidefed.common.errors import SlidefedError

PACKED = "update.packed-v1"
"""Name of the one array of a packed update (the format's version in its name)."""


class WireFormatError(SlidefedError):
    """A packed update that does not fit the model it claims to update."""


def pack_update(arrays: Mapping[str, NDArray[np.generic]]) -> ArrayRecord:
    """The ArrayRecord of one packed update of ``arrays`` (all of one dtype).

    Raises
    ------
    WireFormatError
        If the arrays are empty or not all of one dtype.
    """
    values = [np.asarray(a) for a in arrays.values()]
    dtypes = {v.dtype for v in values}
    if len(dtypes) != 1:
        raise WireFormatError(
            f"an update packs arrays of one dtype, not {sorted(map(str, dtypes))}"
        )
    flat = np.concatenate([v.ravel() for v in values])
    return ArrayRecord({PACKED: Array(np.ascontiguousarray(flat))})


def is_packed(record: ArrayRecord) -> bool:
    """Whether ``record`` is a packed update (exactly the one array :data:`PACKED`)."""
    return list(record.keys()) == [PACKED]


def packed_size(specs: list[ArraySpec]) -> int:
    """Number of values of a packed update of arrays ``specs``."""
    return sum(math.prod(s.shape) for s in specs)


def read_packed(array: Array, specs: list[ArraySpec]) -> NDArray[np.generic]:
    """The values of the packed array, once its header and data agree with ``specs``.

    Raises
    ------
    WireFormatError
        If it is not numpy data, not one-dimensional floating point of the model's
        size, or its data disagree with its header.
    """
    total = packed_size(specs)
    if array.stype != "numpy.ndarray":
        raise WireFormatError(f"packed update of stype {array.stype!r}, not numpy")
    if tuple(array.shape) != (total,):
        raise WireFormatError(
            f"packed update of shape {tuple(array.shape)}, the model has {total} values"
        )
    try:
        value = array.numpy()
    except (TypeError, ValueError, OSError) as exc:
        raise WireFormatError("packed update cannot be read as numpy") from exc
    if str(value.dtype) != array.dtype or tuple(value.shape) != (total,):
        raise WireFormatError("packed update's data disagree with its header")
    if not np.issubdtype(value.dtype, np.floating):
        raise WireFormatError(f"packed update of dtype {value.dtype}, not a float")
    return value


def unpack_update(
    record: ArrayRecord, specs: list[ArraySpec]
) -> dict[str, NDArray[np.generic]]:
    """The named arrays of a packed update, in the layout ``specs``.

    Raises
    ------
    WireFormatError
        If ``record`` is not a packed update of a model of ``specs``.
    """
    if not is_packed(record):
        raise WireFormatError(f"not a packed update: it holds {len(record)} arrays")
    flat = read_packed(record[PACKED], specs)
    out: dict[str, NDArray[np.generic]] = {}
    start = 0
    for spec in specs:
        size = math.prod(spec.shape)
        out[spec.name] = flat[start : start + size].reshape(spec.shape)
        start += size
    return out


def update_arrays(
    record: ArrayRecord, specs: list[ArraySpec]
) -> dict[str, NDArray[np.generic]]:
    """The named arrays of an update, packed or sent one by one."""
    if is_packed(record):
        return unpack_update(record, specs)
    return {k: v.numpy() for k, v in record.items()}


__all__ = [
    "PACKED",
    "WireFormatError",
    "is_packed",
    "pack_update",
    "packed_size",
    "read_packed",
    "unpack_update",
    "update_arrays",
]
