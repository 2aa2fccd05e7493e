"""The on-disk feature cache: per-slide features keyed by content, encoder and tiling.

A slide's key (:func:`cache_key`) is made of its content hash, the encoder id
and the tiling parameters, so that a changed slide, encoder or grid never
reuses old features. Content hashes are remembered (:class:`HashMemo`) while a
slide's names, sizes and modification times are unchanged, and a slide that
gave no features is remembered with its reason (:class:`SkipRecord`).
"""

from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path

import numpy as np
from numpy.typing import NDArray
from pydantic import BaseModel, ConfigDict

from slidefed.common.fileio import atomic_write_bytes, atomic_write_text


def file_sha256(path: Path, chunk: int = 1 << 20) -> str:
    """SHA-256 of a file's content."""
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def _slide_files(path: Path) -> list[Path]:
    """The files whose content makes up a slide (one file, or a folder's files)."""
    if path.is_dir():
        return sorted(p for p in path.iterdir() if p.is_file())
    return [path]


def slide_signature(path: Path) -> str:
    """Cheap stand-in for a slide's content: names, sizes and modification times.

    A slide whose signature is unchanged is taken as unchanged, so its content
    hash need not be computed again (see :class:`HashMemo`).
    """
    parts = []
    for f in _slide_files(path):
        st = f.stat()
        parts.append(f"{f.name}:{st.st_size}:{st.st_mtime_ns}:{st.st_ino}")
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()


def slide_sha256(path: Path) -> str:
    """SHA-256 of a slide's content: of the file, or of a folder's files.

    For a folder (a DICOM series) it is the sha256 of the lines
    ``<file name> <file sha256>``, in name order.
    """
    path = Path(path)
    if not path.is_dir():
        return file_sha256(path)
    lines = [f"{f.name} {file_sha256(f)}" for f in _slide_files(path)]
    return hashlib.sha256("\n".join(lines).encode()).hexdigest()


class HashRecord(BaseModel):
    """A slide's content hash and the signature it was computed for."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    signature: str
    sha256: str


class HashMemo(BaseModel):
    """Content hashes of slides, so that unchanged slides are not hashed again.

    Stored as ``hashes.json`` in the feature cache folder, keyed by the slide's
    absolute path; an entry counts only while the slide's signature (names,
    sizes, modification times) is unchanged.
    """

    model_config = ConfigDict(extra="forbid")

    schema_version: int = 1
    entries: dict[str, HashRecord] = {}

    @classmethod
    def load(cls, path: Path) -> HashMemo:
        """The memo at ``path``; empty if it is missing or unreadable."""
        try:
            return cls.model_validate_json(Path(path).read_bytes())
        except (OSError, ValueError):
            return cls()

    def save(self, path: Path) -> None:
        """Write the memo atomically."""
        atomic_write_text(Path(path), self.model_dump_json())

    def sha256(self, slide: Path) -> str:
        """Content hash of ``slide``, from the memo when its signature matches."""
        key = str(Path(slide).resolve())
        signature = slide_signature(slide)
        record = self.entries.get(key)
        if record is not None and record.signature == signature:
            return record.sha256
        digest = slide_sha256(slide)
        self.entries[key] = HashRecord(signature=signature, sha256=digest)
        return digest


def cache_key(content_hash: str, encoder_id: str, tiling: dict[str, object]) -> str:
    """Key of one slide's features: content, encoder and tiling parameters."""
    blob = json.dumps(
        {"slide": content_hash, "encoder": encoder_id, "tiling": tiling},
        sort_keys=True,
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:32]


class SkipRecord(BaseModel):
    """Why a slide gave no features (a negative cache entry)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    reason: str
    readers: str
    fallback_mpp: float | None = None


def readers_id() -> str:
    """slidefed's version and the optional readers installed (DICOM).

    Part of every skip record: installing the DICOM extra, or a new slidefed,
    makes skipped slides be tried again.
    """
    import importlib.util

    from slidefed import __version__

    dicom = importlib.util.find_spec("wsidicom") is not None
    return f"slidefed-{__version__}{'+dicom' if dicom else ''}"


class FeatureCache:
    """Per-slide features on disk, written atomically."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def path(self, key: str) -> Path:
        """File that holds the features of ``key``."""
        return self.root / f"{key}.npz"

    def has(self, key: str) -> bool:
        """Whether features for ``key`` are cached."""
        return self.path(key).is_file()

    def load(self, key: str) -> NDArray[np.float32]:
        """Features (n, dim) of ``key``."""
        with np.load(self.path(key)) as data:
            return np.asarray(data["features"], dtype=np.float32)

    def load_coords(self, key: str) -> NDArray[np.int64]:
        """Level-0 tile positions (n, 2) of ``key``."""
        with np.load(self.path(key)) as data:
            return np.asarray(data["coords"], dtype=np.int64)

    def skip_path(self, key: str) -> Path:
        """File that records why the slide of ``key`` gave no features."""
        return self.root / f"{key}.skip.json"

    def save_skip(
        self, key: str, reason: str, *, fallback_mpp: float | None = None
    ) -> None:
        """Remember that the slide of ``key`` is skipped, and why.

        The record holds for the same slide content, encoder, tiling and readers
        (:func:`readers_id`): a later run reports the reason without opening
        the slide again. ``fallback_mpp``: the site's fallback the skip may
        stand on; the record lapses when the site changes it.
        """
        record = SkipRecord(
            reason=reason, readers=readers_id(), fallback_mpp=fallback_mpp
        )
        atomic_write_text(self.skip_path(key), record.model_dump_json())

    def load_skip(self, key: str, *, fallback_mpp: float | None = None) -> str | None:
        """The remembered skip reason of ``key``, or None.

        None too when the skip stood on another fallback mpp than the site's
        ``fallback_mpp`` now.
        """
        try:
            record = SkipRecord.model_validate_json(self.skip_path(key).read_bytes())
        except (OSError, ValueError):
            return None
        if record.fallback_mpp is not None and record.fallback_mpp != fallback_mpp:
            return None
        return record.reason if record.readers == readers_id() else None

    def save(
        self,
        key: str,
        features: NDArray[np.float32],
        coords: NDArray[np.int64],
        *,
        fallback_mpp: float | None = None,
    ) -> None:
        """Store features and tile coordinates of ``key`` atomically.

        ``fallback_mpp`` is the site's fallback the tiles stand on, when the
        file states no mpp of its own (see :meth:`fallback_mpp`).
        """
        buf = io.BytesIO()
        used = np.float64(np.nan if fallback_mpp is None else fallback_mpp)
        np.savez(buf, features=features, coords=coords, fallback_mpp=used)
        atomic_write_bytes(self.path(key), buf.getvalue())

    def fallback_mpp(self, key: str) -> float | None:
        """The site's fallback mpp the features of ``key`` stand on, or None.

        The cache key leaves ``tiling.fallback_mpp`` out, so that setting it
        redoes no slide that states its own mpp; a slide that stood on it is
        redone when it changes (:func:`~slidefed.client.prepare.slide.known_outcome`).
        """
        with np.load(self.path(key)) as data:
            if "fallback_mpp" not in data:
                return None
            value = float(data["fallback_mpp"])
        return None if np.isnan(value) else value


__all__ = [
    "FeatureCache",
    "HashMemo",
    "HashRecord",
    "SkipRecord",
    "cache_key",
    "file_sha256",
    "readers_id",
    "slide_sha256",
    "slide_signature",
]
