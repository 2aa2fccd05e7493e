"""The site's configuration (``site.toml``): where its data live and its policy.

The site configuration belongs to the hospital; no run can override it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from slidefed.common.tomlfile import dump_toml, load_toml_model


class SiteSection(BaseModel):
    """Where the site's data and state live."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(min_length=1, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    manifest: Path = Path("manifest.csv")
    slides_root: Path = Path()
    # Folders outside slides_root that manifest rows may also name (an archive on
    # another mount). Every other path a row resolves to is refused.
    extra_slide_roots: tuple[Path, ...] = ()
    state_dir: Path = Path("state")
    audit_dir: Path = Path("audit")

    @field_validator("extra_slide_roots")
    @classmethod
    def _no_filesystem_root(cls, roots: tuple[Path, ...]) -> tuple[Path, ...]:
        for root in roots:
            if root.is_absolute() and root == Path(root.anchor):
                raise ValueError(
                    f"{root} would allow every file on the machine; name the "
                    "folder that holds the slides"
                )
        return roots


class TilingSection(BaseModel):
    """How slides are cut into tiles."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    target_mpp: float = Field(default=0.5, gt=0.05, le=16.0)
    tile_size: int = Field(default=224, ge=32, le=4096)
    tissue_fraction: float = Field(default=0.5, gt=0.0, le=1.0)
    fallback_mpp: float | None = Field(default=None, gt=0.0)
    workers: int = Field(default=0, ge=0)


#: Default of ``[prepare] max_tile_pixels``: a 4096 x 4096 px stored tile.
MAX_TILE_PIXELS = 4096 * 4096


class PrepareSection(BaseModel):
    """Limits on what preparing a slide may decode.

    ``max_tile_pixels`` caps the pixels of one stored tile (or strip, or DICOM
    frame), as the file's tags declare it and as the tile's own codestream
    header declares it; a slide with a tile past the cap is skipped, named in
    the prepare report, and never decoded.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    # At most 8192 x 8192 px: 192 MiB of RGB pixels for the largest tile.
    max_tile_pixels: int = Field(default=MAX_TILE_PIXELS, ge=32 * 32, le=8192 * 8192)


class FeaturesSection(BaseModel):
    """The frozen encoder that turns tiles into feature vectors."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    encoder: str = "hed"
    # A file (timm:<arch>) or a folder (hf:<name>) on this machine; never fetched.
    weights: Path | None = None
    batch_size: int = Field(default=64, ge=1)
    # What the model was trained at, when its own config does not say (or is
    # wrong): resolution (um/px, default 0.5), input side (px), mean and std.
    mpp: float | None = Field(default=None, gt=0.0, le=16.0)
    input_size: int | None = Field(default=None, ge=16, le=4096)
    mean: tuple[float, float, float] | None = None
    std: tuple[float, float, float] | None = None
    # Extra timm.create_model arguments (UNI: init_values = 1e-5).
    model_args: dict[str, bool | int | float | str] = {}
    # "cuda", "cuda:1", "cpu"; default: CUDA when available.
    device: str | None = None
    compile: bool = False


class TilesSection(BaseModel):
    """A site whose data are labelled tiles rather than whole slides.

    A manifest (``source = "manifest"``) names each tile's ``patient_id`` or
    ``group`` (or ``source_group``) in its own column. A folder of class folders
    names them in ``groups``, a CSV relative to ``path`` (like LC25000's
    ``groups.csv``) with a tile column (``path`` or ``tile``, relative to ``path``),
    a ``patient_id``, ``group`` or ``source_group`` column and an optional
    ``split``. ``test_fraction`` is the share of patients (or groups) held out when
    no split is given; a patient or group is never split.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    source: Literal["folder", "manifest"] = "folder"
    path: Path = Path("tiles")
    labels: tuple[str, ...] = ()
    tile_size: int = Field(default=224, ge=16, le=4096)
    test_fraction: float = Field(default=0.3, gt=0.0, lt=1.0)
    groups: Path | None = None

    @model_validator(mode="after")
    def _groups_for_folders(self) -> TilesSection:
        if self.groups is not None and self.source == "manifest":
            raise ValueError(
                "tiles.groups is for class-folder sites; a manifest names each "
                "tile's patient_id or group in its own column"
            )
        return self


DEFAULT_MAX_UPDATE_BYTES = 64 * 1024 * 1024
"""Default ``policy.max_update_bytes`` (64 MiB): far above the hed/ABMIL models."""


class SitePolicy(BaseModel):
    """The site's privacy and use policy; a run can never override it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    max_epsilon: float = Field(default=10.0, gt=0.0)
    delta: float | None = Field(default=None, gt=0.0, lt=1.0)
    min_noise_multiplier: float = Field(default=0.3, ge=0.0)
    max_grad_norm: float = Field(default=5.0, gt=0.0)
    allowed_tasks: tuple[str, ...] = ("abmil", "tiles")
    # Encoders a run may name; empty: only the site's own features.encoder.
    allowed_encoders: tuple[str, ...] = ()
    min_eval_patients: int = Field(default=5, ge=1)
    max_bag_size: int = Field(default=2048, ge=1)
    # The privacy unit of a tile site. None: from its data (the patient when the
    # tiles name patients, else the group), refusing a tile without one. "tile"
    # makes every tile its own unit, and must be said explicitly.
    unit: Literal["patient", "group", "tile"] | None = None
    # "best": report the tighter of the RDP and PRV (upper) bounds; every record
    # says which one it reports.
    accountant: Literal["rdp", "prv", "best"] = "best"
    # Kept so that older site.toml files still load: noise and sampling always come
    # from the site's own ChaCha20 stream (see slidefed.client.privacy.randomness).
    secure_rng: bool = True
    # Evaluation is a release too: its statistics are noised (Gaussian, this
    # multiplier on a per-unit sensitivity of 1) and charged like training.
    eval_noise_multiplier: float = Field(default=4.0, gt=0.0)
    max_evaluations_per_round: int = Field(default=1, ge=0)
    # None: as many as the run's planned rounds.
    max_evaluations_per_run: int | None = Field(default=None, ge=0)
    # The most bytes of model arrays an instruction may bring and a reply may carry
    # (their .npy serialisation). The egress guard uses the smaller of this and the
    # size of the model the site builds itself for the run.
    max_update_bytes: int = Field(default=DEFAULT_MAX_UPDATE_BYTES, ge=1)

    def delta_for(self, n_patients: int) -> float:
        """The delta in force: the policy's, else min(1e-5, 1/(10 N)) for N units."""
        default = min(1e-5, 1.0 / (10.0 * max(n_patients, 1)))
        return self.delta if self.delta is not None else default


class SiteConfig(BaseModel):
    """The whole ``site.toml``; relative paths are resolved against its folder."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    site: SiteSection
    tiling: TilingSection = TilingSection()
    features: FeaturesSection = FeaturesSection()
    prepare: PrepareSection = PrepareSection()
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
    def extra_slide_roots(self) -> tuple[Path, ...]:
        """Absolute extra folders that manifest slides may lie in."""
        return tuple(self.resolve(p) for p in self.site.extra_slide_roots)

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
    return dump_toml(config.model_dump(mode="json", exclude={"base_dir"}))


__all__ = [
    "DEFAULT_MAX_UPDATE_BYTES",
    "FeaturesSection",
    "SiteConfig",
    "SitePolicy",
    "SiteSection",
    "TilesSection",
    "TilingSection",
    "dump_site_config",
    "load_site_config",
]
