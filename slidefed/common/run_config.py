"""The researcher's run configuration, parsed once from Flower's run config."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from slidefed.common.encoder_names import check_encoder_name, known_dim
from slidefed.common.errors import ConfigError


def _kebab(name: str) -> str:
    return name.replace("_", "-")


Strategy = Literal["fedavg", "fedprox", "fedadam", "fedmedian", "fedtrimmedavg", "krum"]


def cosine_lr(lr: float, index: int, total: int) -> float:
    """``lr`` decayed by half a cosine: ``lr`` at ``index`` 0, near 0 at ``total``."""
    import math

    return lr * 0.5 * (1 + math.cos(math.pi * min(max(index, 0), total) / total))


class RunConfig(BaseModel):
    """The researcher's run, parsed once from Flower's ``context.run_config``."""

    model_config = ConfigDict(
        extra="forbid", frozen=True, alias_generator=_kebab, populate_by_name=True
    )

    num_server_rounds: int = Field(default=3, ge=1, le=10_000)
    task: Literal["abmil", "tiles"] = "abmil"
    # hed, timm:<arch> or hf:<name>; each site's features.encoder must be the same.
    encoder: str = "hed"
    # Length of one tile's feature vector; 0: the one the encoder's name fixes
    # (slidefed.common.encoder_names.KNOWN_DIMS). hf:<name> encoders need it.
    feature_dim: int = Field(default=0, ge=0, le=65_536)
    labels: str = ""
    local_epochs: int = Field(default=2, ge=1, le=1000)
    batch_size: int = Field(default=8, ge=1)
    lr: float = Field(default=0.003, gt=0.0, le=10.0)
    # "cosine": round r of R trains with lr * (1 + cos(pi (r - 1) / R)) / 2, which
    # lets DP training settle where the noise would otherwise keep moving it.
    lr_schedule: Literal["constant", "cosine"] = "constant"
    # How the model sees the features (slidefed.common.model.Inputs).
    inputs: Literal["raw", "log1p"] = "raw"
    target_epsilon: float = Field(default=8.0, gt=0.0)
    target_delta: float = Field(default=0.0, ge=0.0, lt=1.0)
    max_grad_norm: float = Field(default=1.0, gt=0.0)
    grad_sample_mode: Literal["ew", "hooks"] = "ew"
    strategy: Strategy = "fedavg"
    proximal_mu: float = Field(default=0.01, ge=0.0)
    server_lr: float = Field(default=0.01, gt=0.0)
    trimmed_beta: float = Field(default=0.2, ge=0.0, lt=0.5)
    krum_malicious: int = Field(default=0, ge=0)
    max_update_norm: float = Field(default=0.0, ge=0.0)
    wire_dtype: Literal["float32", "float16"] = "float32"
    round_timeout: float = Field(default=3600.0, gt=0.0)
    connect_timeout: float = Field(default=600.0, gt=0.0)
    resume: bool = False
    run_name: str = ""
    bag_size: int = Field(default=256, ge=1)
    seed: int = 0
    min_sites: int = Field(default=1, ge=1)
    run_dir: str = ""
    sim_sites: str = ""

    def identity_hash(self) -> str:
        """SHA-256 of what defines the run (not where it writes or how it restarts)."""
        import hashlib
        import json

        data = self.model_dump(
            by_alias=True, exclude={"resume", "run_dir", "sim_sites"}
        )
        if not self.feature_dim:  # the hash of a run from before the key existed
            data.pop("feature-dim")
        return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()

    @model_validator(mode="after")
    def _encoder_and_dim(self) -> RunConfig:
        check_encoder_name(self.encoder)
        if self.feature_dim == 0 and known_dim(self.encoder) is None:
            msg = (
                f"encoder {self.encoder!r} has no known feature length; "
                "set feature-dim to its embedding size"
            )
            raise ValueError(msg)
        return self

    def encoder_dim(self) -> int:
        """Feature length of the run's encoder: ``feature-dim``, else its known one."""
        return self.feature_dim or (known_dim(self.encoder) or 0)

    @model_validator(mode="after")
    def _log_inputs_for_hed(self) -> RunConfig:
        # log(1 + x) is for features >= 0; an embedding's negative half would be
        # cut to 0.
        if self.inputs == "log1p" and self.encoder != "hed":
            msg = (
                f"inputs 'log1p' is for the hed statistics (>= 0), not for "
                f"{self.encoder!r} embeddings; use inputs = 'raw'"
            )
            raise ValueError(msg)
        return self

    @model_validator(mode="after")
    def _labels_for_tiles(self) -> RunConfig:
        labels = self.label_list()
        if self.task == "tiles" and len(labels) < 2:
            msg = "task 'tiles' needs labels: at least 2 class names, comma separated"
            raise ValueError(msg)
        if len(set(labels)) != len(labels):
            msg = "labels must not repeat"
            raise ValueError(msg)
        return self

    def label_list(self) -> list[str]:
        """The class labels agreed for a ``tiles`` run, in order."""
        return [x.strip() for x in self.labels.split(",") if x.strip()]

    def lr_at(self, server_round: int) -> float:
        """The local step size of round ``server_round`` (from 1)."""
        if self.lr_schedule == "constant":
            return self.lr
        return cosine_lr(self.lr, server_round - 1, self.num_server_rounds)

    def n_classes(self) -> int:
        """Number of classes the model predicts."""
        return len(self.label_list()) if self.task == "tiles" else 2

    def site_configs(self) -> list[Path]:
        """Site config paths of a simulated federation, in partition order."""
        return [Path(p) for p in self.sim_sites.split(",") if p]


def parse_run_config(run_config: dict[str, Any]) -> RunConfig:
    """Validate Flower's run config into a :class:`RunConfig`.

    Raises
    ------
    ConfigError
        Naming the key, the rule and the fix.
    """
    try:
        return RunConfig.model_validate(dict(run_config))
    except ValidationError as exc:
        err = exc.errors()[0]
        key = ".".join(str(p) for p in err["loc"]) or "(run config)"
        raise ConfigError(
            f"run config {key}={err.get('input')!r} is invalid: {err['msg']}; "
            f'fix it with --run-config "{key}=..."'
        ) from exc


__all__ = ["RunConfig", "Strategy", "cosine_lr", "parse_run_config"]
