"""The releases a site has sent, kept so that a replay returns the same bytes.

A coordinator may ask for the same round twice (after a crash, a restart, a lost
reply, or on purpose). The site answers a request whose inputs are unchanged with
the release it stored, byte for byte, and charges nothing; anything that differs
(model in, data, features, tiling, policy, code) has another ``input_key`` and is
a new, charged release that replaces the stored one. So one charge never pays for
two different releases.

A release is stored before it is sent: ``<kind>-<run>-<round>.json`` (metadata,
metrics, the charge) and, for training, ``.npz`` (the arrays), both written
atomically, the arrays first.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any, Literal

import numpy as np
from numpy.typing import NDArray
from pydantic import BaseModel, ConfigDict

from slidefed.common.arrays import update_sha256
from slidefed.common.fileio import atomic_write_bytes, atomic_write_text

Kind = Literal["train", "evaluate"]


class StoredRelease(BaseModel):
    """What was sent for one (kind, run, round)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    schema_version: Literal[1] = 1
    kind: Kind
    run_id: int
    round: int
    input_key: str
    arrays_sha256: str = ""
    metrics: dict[str, float | int]
    charge: dict[str, Any]


class ReleaseStore:
    """The folder of stored releases (``state/releases``)."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def _stem(self, kind: Kind, run_id: int, server_round: int) -> Path:
        return self.root / f"{kind}-{run_id}-{server_round}"

    def get(
        self, kind: Kind, run_id: int, server_round: int, input_key: str
    ) -> tuple[StoredRelease, dict[str, NDArray[Any]]] | None:
        """The stored release for these inputs, or None (never stored, or changed)."""
        meta_path = self._stem(kind, run_id, server_round).with_suffix(".json")
        if not meta_path.is_file():
            return None
        meta = StoredRelease.model_validate_json(meta_path.read_text(encoding="utf-8"))
        if meta.input_key != input_key:
            return None
        arrays: dict[str, NDArray[Any]] = {}
        if kind == "train":
            raw = meta_path.with_suffix(".npz").read_bytes()
            with np.load(io.BytesIO(raw), allow_pickle=False) as npz:
                arrays = {name: npz[name] for name in npz.files}
            if update_sha256(arrays) != meta.arrays_sha256:
                return None  # damaged: train again (the same bits) rather than send it
        return meta, arrays

    def put(
        self,
        *,
        kind: Kind,
        run_id: int,
        server_round: int,
        input_key: str,
        arrays: dict[str, NDArray[Any]] | None,
        metrics: dict[str, float | int],
        charge: dict[str, Any],
    ) -> StoredRelease:
        """Store a release before it is sent."""
        stem = self._stem(kind, run_id, server_round)
        digest = ""
        if arrays is not None:
            buffer = io.BytesIO()
            np.savez(buffer, **arrays)  # type: ignore[arg-type]
            atomic_write_bytes(stem.with_suffix(".npz"), buffer.getvalue())
            digest = update_sha256(arrays)
        meta = StoredRelease(
            kind=kind,
            run_id=run_id,
            round=server_round,
            input_key=input_key,
            arrays_sha256=digest,
            metrics=metrics,
            charge=charge,
        )
        atomic_write_text(stem.with_suffix(".json"), meta.model_dump_json(indent=1))
        return meta


__all__ = ["Kind", "ReleaseStore", "StoredRelease"]
