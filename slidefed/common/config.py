"""Configuration models: the site (``site.toml``) and the run (Flower run config).

The site configuration belongs to the hospital; the run configuration belongs to
the researcher. The site policy lives in the site configuration and no run can
override it.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from slidefed.common.errors import ConfigError

M = TypeVar("M", bound=BaseModel)


def _kebab(name: str) -> str:
    return name.replace("_", "-")


class SiteSection(BaseModel):
    """Where the site's data and state live."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(min_length=1, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    manifest: Path = Path("manifest.csv")
    slides_root: Path = Path()
    state_dir: Path = Path("state")
    audit_dir: Path = Path("audit")


class TilingSection(BaseModel):
    """How slides are cut into tiles."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    target_mpp: float = Field(default=0.5, gt=0.05, le=16.0)
    tile_size: int = Field(default=224, ge=32, le=4096)
    tissue_fraction: float = Field(default=0.5, gt=0.0, le=1.0)
    fallback_mpp: float | None = Field(default=None, gt=0.0)
    workers: int = Field(default=0, ge=0)


class FeaturesSection(BaseModel):
    """The frozen encoder that turns tiles into feature vectors."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    encoder: str = "hed"
    weights: Path | None = None
    batch_size: int = Field(default=64, ge=1)


class TilesSection(BaseModel):
    """A site whose data are labelled tiles rather than whole slides."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    source: Literal["folder", "manifest"] = "folder"
    path: Path = Path("tiles")
    labels: tuple[str, ...] = ()
    tile_size: int = Field(default=224, ge=16, le=4096)
    test_fraction: float = Field(default=0.3, gt=0.0, lt=1.0)


class SitePolicy(BaseModel):
    """The site's privacy and use policy; a run can never override it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    max_epsilon: float = Field(default=10.0, gt=0.0)
    delta: float | None = Field(default=None, gt=0.0, lt=1.0)
    min_noise_multiplier: float = Field(default=0.3, ge=0.0)
    max_grad_norm: float = Field(default=5.0, gt=0.0)
    allowed_tasks: tuple[str, ...] = ("abmil", "tiles")
    min_eval_patients: int = Field(default=5, ge=1)
    max_bag_size: int = Field(default=2048, ge=1)
    accountant: Literal["rdp", "prv"] = "rdp"
    secure_rng: bool = False

    def delta_for(self, n_patients: int) -> float:
        """Return the delta in force for a dataset of ``n_patients`` samples."""
        default = 1.0 / (10.0 * max(n_patients, 1))
        return self.delta if self.delta is not None else default


class SiteConfig(BaseModel):
    """The whole ``site.toml``; relative paths are resolved against its folder."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    site: SiteSection
    tiling: TilingSection = TilingSection()
    features: FeaturesSection = FeaturesSection()
    tiles: TilesSection | None = None
    policy: SitePolicy = SitePolicy()
    base_dir: Path = Path()

    def resolve(self, path: Path) -> Path:
        """Resolve a path from the config against the config's folder."""
        return path if path.is_absolute() else (self.base_dir / path).resolve()

    @property
    def manifest_path(self) -> Path:
        """Absolute path of the manifest CSV."""
        return self.resolve(self.site.manifest)

    @property
    def slides_root(self) -> Path:
        """Absolute folder that slide paths in the manifest are relative to."""
        return self.resolve(self.site.slides_root)

    @property
    def state_dir(self) -> Path:
        """Absolute folder for the cache, the ledger and the keys."""
        return self.resolve(self.site.state_dir)

    @property
    def cache_dir(self) -> Path:
        """Absolute folder of the feature cache."""
        return self.state_dir / "cache"

    @property
    def ledger_path(self) -> Path:
        """Absolute path of the privacy ledger."""
        return self.state_dir / "ledger.json"

    @property
    def audit_path(self) -> Path:
        """Absolute path of the site audit log."""
        return self.resolve(self.site.audit_dir) / "audit.jsonl"

    @property
    def audit_key_path(self) -> Path:
        """Absolute path of the site's Ed25519 audit key."""
        return self.state_dir / "keys" / "audit_key"


def _first_error(exc: ValidationError, *, where: str) -> ConfigError:
    err = exc.errors()[0]
    key = ".".join(str(p) for p in err["loc"]) or "(top level)"
    value = err.get("input")
    shown = "" if isinstance(value, dict) else f"={value!r}"
    return ConfigError(
        f"{where}: {key}{shown} is invalid: {err['msg']}; "
        f"fix {key} in {where} and run again"
    )


def load_toml_model(path: Path, model: type[M], *, what: str, create: str) -> M:
    """Read a TOML config file into ``model``; ``base_dir`` is the file's folder.

    Raises
    ------
    ConfigError
        If the file is missing (``create`` says how to make one), is not TOML, or
        a value breaks a rule (the message names the key and the fix).
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(
            f"{path}: {what} not found; create one with '{create}' or pass --config PATH"
        )
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: not valid TOML ({exc}); fix the syntax") from exc
    raw["base_dir"] = str(path.parent.resolve())
    try:
        return model.model_validate(raw)
    except ValidationError as exc:
        raise _first_error(exc, where=str(path)) from exc


def load_site_config(path: Path) -> SiteConfig:
    """Read and validate ``site.toml``.

    Raises
    ------
    ConfigError
        If the file is missing, is not TOML, or a value breaks a rule.
    """
    return load_toml_model(
        path, SiteConfig, what="site config", create="slidefed site init DIR"
    )


def dump_site_config(config: SiteConfig) -> str:
    """Render a site config as TOML (the inverse of :func:`load_site_config`)."""
    lines: list[str] = []
    data = config.model_dump(mode="json", exclude={"base_dir"})
    for section, values in data.items():
        if values is None:  # an optional section the site does not use
            continue
        lines.append(f"[{section}]")
        for key, value in values.items():
            if value is None:
                continue
            lines.append(f"{key} = {_toml_value(value)}")
        lines.append("")
    return "\n".join(lines)


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    escaped = str(value).replace("\\", "\\\\").replace('"', '\\"')
    return f'"{escaped}"'


Strategy = Literal["fedavg", "fedprox", "fedadam", "fedmedian", "fedtrimmedavg", "krum"]


class RunConfig(BaseModel):
    """The researcher's run, parsed once from Flower's ``context.run_config``."""

    model_config = ConfigDict(
        extra="forbid", frozen=True, alias_generator=_kebab, populate_by_name=True
    )

    num_server_rounds: int = Field(default=3, ge=1, le=10_000)
    task: Literal["abmil", "tiles"] = "abmil"
    encoder: Literal["hed"] = "hed"
    labels: str = ""
    local_epochs: int = Field(default=2, ge=1, le=1000)
    batch_size: int = Field(default=8, ge=1)
    lr: float = Field(default=0.003, gt=0.0, le=10.0)
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
        return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()

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


__all__ = [
    "FeaturesSection",
    "RunConfig",
    "SiteConfig",
    "SitePolicy",
    "SiteSection",
    "TilesSection",
    "TilingSection",
    "dump_site_config",
    "load_site_config",
    "load_toml_model",
    "parse_run_config",
]
