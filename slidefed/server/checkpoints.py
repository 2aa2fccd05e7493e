"""Per-round checkpoints of the global model and the strategy state."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict

from slidefed.common.fileio import atomic_write_text


class CheckpointManifest(BaseModel):
    """What a checkpoint holds besides the arrays."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    schema_version: Literal[1] = 1
    round: int
    config_hash: str
    resume_hash: str = ""
    run_name: str
    strategy: str
    metrics: list[dict[str, Any]]


class Checkpoint(BaseModel):
    """A loaded checkpoint."""

    model_config = ConfigDict(extra="forbid", frozen=True, arbitrary_types_allowed=True)

    manifest: CheckpointManifest
    arrays: dict[str, np.ndarray]
    state: dict[str, np.ndarray]


class Checkpoints:
    """``RUN/checkpoints/round-<n>.safetensors`` (+ ``.state`` and ``.json``)."""

    def __init__(self, run_dir: Path) -> None:
        self.folder = Path(run_dir) / "checkpoints"

    def save(
        self,
        manifest: CheckpointManifest,
        arrays: dict[str, np.ndarray],
        state: dict[str, np.ndarray],
    ) -> Path:
        """Write one round; the manifest goes last, so a torn checkpoint is ignored."""
        from safetensors.numpy import save_file

        self.folder.mkdir(parents=True, exist_ok=True)
        stem = self.folder / f"round-{manifest.round}"
        save_file(
            {k: np.ascontiguousarray(v) for k, v in arrays.items()},
            str(stem) + ".safetensors",
            metadata={
                "round": str(manifest.round),
                "config_hash": manifest.config_hash,
            },
        )
        if state:
            save_file(
                {k: np.ascontiguousarray(v) for k, v in state.items()},
                str(stem) + ".state.safetensors",
            )
        atomic_write_text(
            Path(str(stem) + ".json"), json.dumps(manifest.model_dump(), indent=1)
        )
        return Path(str(stem) + ".safetensors")

    def latest(self) -> Checkpoint | None:
        """The last complete checkpoint, or None."""
        from safetensors.numpy import load_file

        manifests = []
        for path in self.folder.glob("round-*.json"):
            manifest = CheckpointManifest.model_validate_json(path.read_text())
            manifests.append(manifest)
        if not manifests:
            return None
        last = max(manifests, key=lambda m: m.round)
        stem = self.folder / f"round-{last.round}"
        state_path = Path(str(stem) + ".state.safetensors")
        return Checkpoint(
            manifest=last,
            arrays=load_file(str(stem) + ".safetensors"),
            state=load_file(str(state_path)) if state_path.is_file() else {},
        )


__all__ = ["Checkpoint", "CheckpointManifest", "Checkpoints"]
