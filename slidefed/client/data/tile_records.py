"""The records of a tile-labelled site: tiles, units, samples and the dataset."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import numpy as np
from numpy.typing import NDArray
from pydantic import BaseModel, ConfigDict

TileUnit = Literal["patient", "group", "tile"]
Split = Literal["train", "test"]


class TileRecord(BaseModel):
    """One tile named by the site's data.

    ``name`` is the tile as the data name it (relative), ``where`` the place to
    point at in a message (``file:line``, or the tile's path), ``split`` the split
    the data give for it (``None``: drawn per unit).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    path: Path
    name: str
    label: str
    patient_id: str | None = None
    group: str | None = None
    split: Split | None = None
    where: str = ""


class TileSample(BaseModel):
    """One training sample: all tiles of a patient or a group, or a single tile."""

    model_config = ConfigDict(extra="forbid", frozen=True, arbitrary_types_allowed=True)

    sample_id: str
    split: Split
    features: NDArray[np.float32]
    labels: NDArray[np.int64]


class TileDataset(BaseModel):
    """The usable samples of a site and what was skipped."""

    model_config = ConfigDict(extra="forbid", frozen=True, arbitrary_types_allowed=True)

    unit: TileUnit
    labels: list[str]
    samples: list[TileSample]
    skipped: list[tuple[str, str]]
    fingerprint: str


class UnitOf(BaseModel):
    """A tile's privacy unit (its kind and id: the sample it joins) and split."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: TileUnit
    key: str
    split: Split


__all__ = ["Split", "TileDataset", "TileRecord", "TileSample", "TileUnit", "UnitOf"]
