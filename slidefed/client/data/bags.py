"""Patient bags: one training sample is all the tile features of one patient."""

from __future__ import annotations

import hashlib
from collections import defaultdict
from collections.abc import Sequence
from typing import Literal

import numpy as np
from numpy.typing import NDArray
from pydantic import BaseModel, ConfigDict

from slidefed.client.data.manifest import ManifestRow


class PatientBag(BaseModel):
    """All tile features of one patient (the privacy unit)."""

    model_config = ConfigDict(extra="forbid", frozen=True, arbitrary_types_allowed=True)

    patient_id: str
    label: int
    split: Literal["train", "test"]
    features: NDArray[np.float32]


def build_bags(
    rows: Sequence[ManifestRow],
    features: dict[str, NDArray[np.float32]],
    *,
    bag_size: int,
    seed: int,
) -> list[PatientBag]:
    """Group slide features by patient and subsample each bag to ``bag_size``.

    Slides without features (skipped in preparation, or no tissue) are left out;
    a patient without any tile is left out.
    """
    grouped: dict[str, list[ManifestRow]] = defaultdict(list)
    for row in rows:
        grouped[row.patient_id].append(row)
    bags: list[PatientBag] = []
    for pid in sorted(grouped):
        parts = [features[r.slide] for r in grouped[pid] if r.slide in features]
        parts = [p for p in parts if len(p)]
        if not parts:
            continue
        feats = np.concatenate(parts)
        if len(feats) > bag_size:
            # Seeded per patient so that a bag does not depend on the others.
            digest = hashlib.sha256(f"{seed}:{pid}".encode()).digest()
            rng = np.random.default_rng(int.from_bytes(digest[:8], "little"))
            feats = feats[np.sort(rng.choice(len(feats), bag_size, replace=False))]
        first = grouped[pid][0]
        bags.append(
            PatientBag(
                patient_id=pid, label=first.label, split=first.split, features=feats
            )
        )
    return bags


__all__ = ["PatientBag", "build_bags"]
