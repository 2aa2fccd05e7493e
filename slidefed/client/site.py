"""A site at run time: its config, data, ledger and audit log, for one message."""

from __future__ import annotations

import functools
import hashlib
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from slidefed.client.config import SiteConfig, load_site_config
from slidefed.client.data.bags import PatientBag, build_bags
from slidefed.client.keys import ensure_site_keys
from slidefed.client.prepare.prepared import load_site_features, report_path
from slidefed.client.privacy.ledger import PrivacyLedger
from slidefed.client.privacy.randomness import SiteRandomness
from slidefed.client.privacy.releases import ReleaseStore
from slidefed.common.audit.writer import AuditBatch, AuditLog
from slidefed.common.crypto import load_audit_key
from slidefed.common.errors import ConfigError, PolicyViolation
from slidefed.common.run_config import RunConfig

logger = logging.getLogger(__name__)


def site_config_path(node_config: Mapping[str, Any], run: RunConfig) -> Path:
    """Where this node's site.toml is: node config, else the simulated federation."""
    if "site-config" in node_config:
        return Path(str(node_config["site-config"]))
    sites = run.site_configs()
    if "partition-id" in node_config and sites:
        pid = int(node_config["partition-id"])
        if pid < len(sites):
            return sites[pid]
    raise ConfigError(
        "this node has no site config; start the SuperNode with "
        "--node-config 'site-config=\"/path/site.toml\"'"
    )


class Site:
    """Everything one message handler needs about the site."""

    def __init__(self, config: SiteConfig) -> None:
        self.config = config
        self.ledger = PrivacyLedger(config.ledger_path)
        self.releases = ReleaseStore(config.state_dir / "releases")
        self.randomness = SiteRandomness.of_site(config.state_dir)
        # The records of one message are written together, with one disk
        # sync, when the handler flushes them before its reply leaves.
        self.audit = AuditBatch(
            AuditLog(
                config.audit_path,
                key=load_audit_key(config.audit_key_path),
                actor="site",
                actor_name=config.site.name,
            )
        )

    @classmethod
    def from_node(cls, node_config: Mapping[str, Any], run: RunConfig) -> Site:
        """The site of this node."""
        return cls(load_site_config(site_config_path(node_config, run)))

    def samples(self, run: RunConfig) -> tuple[list[Any], dict[str, Any]]:
        """Training samples of the run's task and the dataset fingerprint.

        A process that serves several messages (a simulation actor) keeps the
        samples in memory while no file of the site's data has changed.
        """
        key = (
            run.task,
            run.labels,
            run.bag_size,
            run.seed,
            # Tiling, encoder, tiles, policy: any change of the site's config
            # makes new samples.
            self.config.model_dump_json(),
            _data_signature(self.config),
        )
        hit = _SAMPLES.get(key)
        if hit is not None:
            return hit
        samples, fingerprint = self._load_samples(run)
        # What the samples hold, so that a changed feature, bag, tiling or policy
        # makes a new release (the manifest hash alone does not see those).
        fingerprint["data_sha256"] = samples_sha256(samples)
        result = (samples, fingerprint)
        _SAMPLES.clear()  # one site per process at a time: keep memory bounded
        _SAMPLES[key] = result
        return result

    def _load_samples(self, run: RunConfig) -> tuple[list[Any], dict[str, Any]]:
        if run.task == "tiles":
            return tile_samples(self.config, run)
        if self.config.tiles is not None:
            raise PolicyViolation(
                f"task {run.task!r} needs slides, but this site holds labelled tiles"
            )
        bags, fingerprint = self.bags(run)
        return list(bags), fingerprint

    def bags(self, run: RunConfig) -> tuple[list[PatientBag], dict[str, Any]]:
        """Patient bags and the dataset fingerprint.

        The features come from the site's last preparation, read from the
        cache: a message never makes the site prepare or decode a slide.

        Raises
        ------
        SiteNotPrepared
            If the site was not prepared for its manifest, encoder and tiling
            (``slidefed site prepare --config site.toml`` fixes it).
        """
        manifest, feats = load_site_features(self.config)
        bag_size = min(run.bag_size, self.config.policy.max_bag_size)
        # The subsample of a large bag is the site's secret draw, not the run's seed.
        seed = self.randomness.seed("bags")
        bags = build_bags(manifest.rows, feats, bag_size=bag_size, seed=seed)
        fingerprint = {
            "unit": manifest.unit,
            "manifest_sha256": manifest.sha256,
            "slides": len(manifest.rows),
            "slides_with_features": len(feats),
            "patients": len(bags),
            "train_patients": sum(b.split == "train" for b in bags),
            "test_patients": sum(b.split == "test" for b in bags),
        }
        return bags, fingerprint


_SAMPLES: dict[tuple[Any, ...], tuple[list[Any], dict[str, Any]]] = {}


def _data_signature(config: SiteConfig) -> tuple[Any, ...]:
    """Paths, sizes and modification times of everything the samples depend on."""
    # A new preparation report means new features, whatever else changed.
    paths = [config.manifest_path, report_path(config)]
    if config.tiles is not None:
        root = config.resolve(config.tiles.path)
        paths += sorted(root.rglob("*")) if root.exists() else []
        if config.tiles.groups is not None:
            paths.append(root / config.tiles.groups)
    elif config.manifest_path.is_file():
        st = config.manifest_path.stat()
        paths += _manifest_slides(
            config.manifest_path,
            st.st_size,
            st.st_mtime_ns,
            config.slides_root,
            tuple(config.extra_slide_roots),
        )
    # The tiles section and the policy's unit decide the samples too.
    out = [str(config.base_dir), repr(config.tiles), str(config.policy.unit)]
    for path in paths:
        try:
            st = path.stat()
        except OSError:
            out.append(f"{path}:missing")
            continue
        out.append(f"{path}:{st.st_size}:{st.st_mtime_ns}")
    return tuple(out)


@functools.lru_cache(maxsize=8)
def _manifest_slides(
    manifest: Path,
    size: int,
    mtime_ns: int,
    slides_root: Path,
    extra_roots: tuple[Path, ...],
) -> tuple[Path, ...]:
    """The resolved slide files a manifest names, inside the site's slide roots.

    Kept per manifest version (path, size, modification time) and roots: resolving
    every slide's path costs several times more than ``stat()``-ing it, and a
    simulation actor asks for every message. A symlink under the slide roots
    re-pointed without a change to the manifest is seen by the next process
    (a deployed SuperNode starts one per message); preparation checks it anyway.
    """
    import csv

    from slidefed.client.data.slide_paths import SlideRoots

    del size, mtime_ns  # part of the cache key only
    roots = SlideRoots.of_folders(slides_root, extra_roots)
    rows = csv.DictReader(manifest.read_text().splitlines())
    # Only stat()ed here; preparation refuses a slide outside the roots.
    found = (roots.resolve((r.get("slide") or "").strip()) for r in rows)
    return tuple(p for p in found if p is not None and roots.allows(p))


def tile_samples(
    config: SiteConfig, run: RunConfig
) -> tuple[list[Any], dict[str, Any]]:
    """Tile samples of a tile-labelled site, and the dataset fingerprint.

    Raises
    ------
    PolicyViolation
        If the site declares labels that the run's label set does not hold.
    """
    from slidefed.client.data.tiles import load_tile_dataset

    labels = run.label_list()
    declared = list(config.tiles.labels) if config.tiles else []
    outside = sorted(set(declared) - set(labels))
    if outside:
        raise PolicyViolation(
            f"this site's labels {outside} are not in the run's label set {labels}; "
            "agree on the labels in the run config (labels=...)"
        )
    data = load_tile_dataset(config, labels)
    fingerprint = {
        "unit": data.unit,
        "manifest_sha256": data.fingerprint,
        "samples": len(data.samples),
        "tiles": int(sum(len(s.labels) for s in data.samples)),
        "skipped": len(data.skipped),
        "train_samples": sum(s.split == "train" for s in data.samples),
        "test_samples": sum(s.split == "test" for s in data.samples),
    }
    return list(data.samples), fingerprint


def samples_sha256(samples: Sequence[Any]) -> str:
    """SHA-256 of every sample's features, labels and split, in order."""
    digest = hashlib.sha256()
    for sample in samples:
        features = np.ascontiguousarray(sample.features)
        digest.update(f"{features.dtype}:{features.shape}:{sample.split}".encode())
        digest.update(features.tobytes())
        labels = getattr(sample, "labels", None)
        label = labels if labels is not None else np.asarray([sample.label])
        digest.update(np.ascontiguousarray(label).astype(np.int64).tobytes())
    return digest.hexdigest()


@functools.lru_cache(maxsize=1)
def code_sha256() -> str:
    """SHA-256 of slidefed's own source files: a new code version is a new release."""
    import slidefed

    root = Path(slidefed.__file__).resolve().parent
    digest = hashlib.sha256(slidefed.__version__.encode())
    for path in sorted(root.rglob("*.py")):
        digest.update(str(path.relative_to(root)).encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()


def config_hash(run: RunConfig) -> str:
    """SHA-256 of the run config, for the audit trail."""
    return run.identity_hash()


__all__ = [
    "Site",
    "code_sha256",
    "config_hash",
    "ensure_site_keys",
    "samples_sha256",
    "site_config_path",
]
