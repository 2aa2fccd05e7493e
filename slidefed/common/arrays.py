"""Model arrays: stable serialisation, hashing and update validation."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping

import numpy as np
from numpy.typing import NDArray
from pydantic import BaseModel, ConfigDict


class ArraySpec(BaseModel):
    """Name, shape and dtype of one model array."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    shape: tuple[int, ...]
    dtype: str


def specs_of(arrays: Mapping[str, NDArray[np.generic]]) -> list[ArraySpec]:
    """Specs of named arrays, in their order."""
    return [
        ArraySpec(name=k, shape=tuple(int(d) for d in v.shape), dtype=str(v.dtype))
        for k, v in arrays.items()
    ]


def update_sha256(arrays: Mapping[str, NDArray[np.generic]]) -> str:
    """SHA-256 over names, shapes, dtypes and little-endian bytes, in key order."""
    digest = hashlib.sha256()
    for name, arr in arrays.items():
        a = np.ascontiguousarray(arr)
        digest.update(f"{name}|{a.shape}|{a.dtype.str}|".encode())
        digest.update(a.astype(a.dtype.newbyteorder("<"), copy=False).tobytes())
    return digest.hexdigest()


def update_nbytes(arrays: Mapping[str, NDArray[np.generic]]) -> int:
    """Total payload bytes of the arrays."""
    return int(sum(np.asarray(a).nbytes for a in arrays.values()))


def validate_update(
    arrays: Mapping[str, NDArray[np.generic]], expected: list[ArraySpec]
) -> str | None:
    """Why ``arrays`` do not match ``expected`` (names, shapes, finite), or None."""
    names = list(arrays)
    want = [s.name for s in expected]
    if names != want:
        extra = sorted(set(names) - set(want))
        missing = sorted(set(want) - set(names))
        if not extra and not missing:
            return "arrays are in another order than the model's"
        return f"array names differ (extra {extra}, missing {missing})"
    for spec in expected:
        arr = np.asarray(arrays[spec.name])
        if tuple(arr.shape) != spec.shape:
            return f"{spec.name}: shape {tuple(arr.shape)} != {spec.shape}"
        if not np.issubdtype(arr.dtype, np.floating):
            return f"{spec.name}: dtype {arr.dtype} is not floating point"
        if not np.all(np.isfinite(arr)):
            return f"{spec.name}: contains NaN or infinity"
    return None


__all__ = ["ArraySpec", "specs_of", "update_nbytes", "update_sha256", "validate_update"]
