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
    the prepare report, and never decoded. The ``ray_*`` settings send the work
    to the hospital's own Ray cluster instead of this machine's processes.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    # At most 8192 x 8192 px: 192 MiB of RGB pixels for the largest tile.
    max_tile_pixels: int = Field(default=MAX_TILE_PIXELS, ge=32 * 32, le=8192 * 8192)
    # The hospital's own Ray cluster (its head node, HOST:PORT, or "auto"):
    # slides are prepared there instead of on this machine (``site prepare
    # --ray`` overrides it). See slidefed.client.prepare.distributed.
    ray_address: str | None = Field(default=None, min_length=1)
    # Ray tasks in flight at once (0: twice the cluster's CPUs); bounds memory.
    ray_max_in_flight: int = Field(default=0, ge=0)
    # A slide with more tissue tiles than this is split into regions of about
    # this many tiles (rounded up to whole feature batches), one task each.
    ray_region_tiles: int = Field(default=4096, ge=1)
    # GPUs each feature task asks for where the cluster has GPUs (timm encoders).
    ray_gpus_per_task: float = Field(default=0.5, gt=0.0, le=8.0)


class QcSection(BaseModel):
    """Quality control of each slide and tile (``[qc]``), as a pathology lab runs it.

    Tissue is found on a thumbnail, pen ink and folds are found there and left
    out of the tissue mask; each tissue tile is then checked for focus and
    exposure at the working resolution, and a tile that fails is dropped. A slide
    whose dropped share reaches ``fail_tile_fraction`` (or that keeps no tile)
    fails QC and is skipped like an unreadable slide; one past a ``warn_*`` limit
    gets a warning. The defaults hold on the consortium's reference slides.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    enabled: bool = True
    # Pen ink: a strong green, blue, red or near-black colour over a stroke at
    # least ``ink_width_um`` wide (nuclei are smaller and never match).
    ink: bool = True
    ink_width_um: float = Field(default=8.0, gt=0.0, le=500.0)
    # Folds: tissue darker than this (0-1, on the thumbnail smoothed over
    # ``fold_smooth_um``) and more saturated than ``fold_saturation``.
    folds: bool = True
    fold_brightness: float = Field(default=0.3, ge=0.0, le=1.0)
    fold_saturation: float = Field(default=0.5, ge=0.0, le=1.0)
    fold_smooth_um: float = Field(default=15.0, gt=0.0, le=500.0)
    # Focus: a tile whose sharpness (fine-detail contrast over overall contrast)
    # is below this is out of focus.
    min_sharpness: float = Field(default=0.18, ge=0.0, le=1.0)
    # Exposure: a brightfield tile darker than ``min_brightness`` (mean, 0-1) is
    # under-exposed; a tile with more than ``max_clipped_fraction`` of its pixels
    # clipped (255 in every channel, or any channel for fluorescence) is
    # over-exposed.
    min_brightness: float = Field(default=0.15, ge=0.0, le=1.0)
    max_clipped_fraction: float = Field(default=0.5, gt=0.0, le=1.0)
    # Verdict: shares of the slide's tissue tiles dropped, of its tissue under
    # ink, and under folds.
    warn_tile_fraction: float = Field(default=0.1, ge=0.0, le=1.0)
    fail_tile_fraction: float = Field(default=0.5, gt=0.0, le=1.0)
    warn_ink_fraction: float = Field(default=0.01, ge=0.0, le=1.0)
    warn_fold_fraction: float = Field(default=0.05, ge=0.0, le=1.0)
    # The slides the encoder and task expect; "auto": brightfield (H&E) for the
    # ``hed`` encoder and ``timm:`` pathology encoders.
    modality: Literal["auto", "brightfield", "fluorescence", "any"] = "auto"
    # Thumbnails with the mask and the artefacts drawn (state/qc/*.png).
    thumbnails: bool = True

    @model_validator(mode="after")
    def _warn_below_fail(self) -> QcSection:
        if self.warn_tile_fraction > self.fail_tile_fraction:
            raise ValueError(
                f"qc.warn_tile_fraction={self.warn_tile_fraction} is above "
                f"qc.fail_tile_fraction={self.fail_tile_fraction}; set it lower"
            )
        return self


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


class DicomWebSection(BaseModel):
    """The hospital's image archive (PACS, VNA), read over DICOMweb.

    Manifest rows name its slides as ``dicomweb:<StudyInstanceUID>/<SeriesInstanceUID>``
    (``slidefed site import-dicomweb`` writes them). Secrets never sit in
    site.toml: a basic-auth password or a bearer token is read from a file.
    Frames are fetched ``batch_frames`` at a time; a request that fails for a
    reason that may pass (refused connection, timeout, HTTP 429/5xx) is tried
    ``retries`` more times, waiting ``backoff_seconds`` doubled at each try.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    url: str = Field(pattern=r"^https?://[^\s/]+(/\S*)?$")
    auth: Literal["none", "basic", "bearer"] = "none"
    username: str | None = Field(default=None, min_length=1)
    password_file: Path | None = None
    token_file: Path | None = None
    ca_bundle: Path | None = None
    batch_frames: int = Field(default=32, ge=1, le=1024)
    retries: int = Field(default=4, ge=0, le=20)
    backoff_seconds: float = Field(default=0.5, ge=0.0, le=60.0)
    timeout_seconds: float = Field(default=30.0, gt=0.0, le=600.0)

    @model_validator(mode="after")
    def _credentials_for_auth(self) -> DicomWebSection:
        if self.auth == "basic" and (self.username is None or not self.password_file):
            raise ValueError(
                'auth = "basic" needs username and password_file (a file holding '
                "the password)"
            )
        if self.auth == "bearer" and self.token_file is None:
            raise ValueError(
                'auth = "bearer" needs token_file (a file holding the token)'
            )
        if self.auth == "none" and (self.password_file or self.token_file):
            raise ValueError(
                'password_file and token_file need auth = "basic" or "bearer"'
            )
        return self


class SiteConfig(BaseModel):
    """The whole ``site.toml``; relative paths are resolved against its folder."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    site: SiteSection
    tiling: TilingSection = TilingSection()
    features: FeaturesSection = FeaturesSection()
    prepare: PrepareSection = PrepareSection()
    qc: QcSection = QcSection()
    tiles: TilesSection | None = None
    policy: SitePolicy = SitePolicy()
    dicomweb: DicomWebSection | None = None
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
    def qc_dir(self) -> Path:
        """Absolute folder of the QC records, thumbnails and report."""
        return self.state_dir / "qc"

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

    @property
    def dicomweb_endpoint(self) -> DicomWebSection | None:
        """The ``[dicomweb]`` section with its files made absolute, or None."""
        section = self.dicomweb
        if section is None:
            return None
        files = ("password_file", "token_file", "ca_bundle")
        return section.model_copy(
            update={
                name: self.resolve(getattr(section, name))
                for name in files
                if getattr(section, name) is not None
            }
        )


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
    "DicomWebSection",
    "FeaturesSection",
    "QcSection",
    "SiteConfig",
    "SitePolicy",
    "SiteSection",
    "TilesSection",
    "TilingSection",
    "dump_site_config",
    "load_site_config",
]
