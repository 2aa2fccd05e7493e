"""Where a manifest row's slide lies, and whether the site lets it be read.

A manifest is input like any other: a row may name ``../outside/x.tiff``, an
absolute path elsewhere, or a symlink inside the slide store that points out of
it. Every row's slide is joined with ``site.slides_root`` and resolved
(symlinks and ``..`` followed) and is accepted only when the result lies inside
the resolved ``slides_root`` or inside one of the folders the site lists in
``site.extra_slide_roots``. Both sides are resolved, so a ``slides_root`` that is
itself a symlink (a mount point, ``/data -> /mnt/nas``) works, and a ``..`` that
comes back inside is fine. A row may name a file or a folder (a DICOM series).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from pydantic import BaseModel, ConfigDict

from slidefed.client.config import SiteConfig
from slidefed.common.errors import SlidePathError


def _resolved(path: Path) -> Path:
    """``path`` made absolute with symlinks and ``..`` followed as far as they exist."""
    return path.resolve(strict=False)


class SlideRoots(BaseModel):
    """The folders a site's slides may lie in, already resolved.

    Attributes
    ----------
    slides_root : Path
        The resolved ``site.slides_root``; relative slide values start here.
    extra : tuple of Path
        The resolved ``site.extra_slide_roots``.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    slides_root: Path
    extra: tuple[Path, ...] = ()

    @classmethod
    def of_site(cls, config: SiteConfig) -> SlideRoots:
        """The roots of a site, from its ``site.toml``."""
        return cls.of_folders(config.slides_root, config.extra_slide_roots)

    @classmethod
    def of_folders(cls, slides_root: Path, extra: Sequence[Path] = ()) -> SlideRoots:
        """The roots ``slides_root`` and ``extra``, resolved."""
        return cls(
            slides_root=_resolved(slides_root),
            extra=tuple(_resolved(p) for p in extra),
        )

    def resolve(self, slide: str) -> Path | None:
        """``slides_root / slide`` resolved, inside a root or not.

        Returns
        -------
        Path or None
            None for a value the operating system cannot take as a path (a NUL
            byte, a symlink loop); :meth:`check` refuses it.
        """
        try:
            return _resolved(self.slides_root / slide)
        except (OSError, RuntimeError, ValueError):
            return None

    def allows(self, path: Path | None) -> bool:
        """Whether a resolved ``path`` lies inside (or is) one of the roots."""
        return path is not None and any(
            path.is_relative_to(root) for root in (self.slides_root, *self.extra)
        )

    def check(self, slide: str, *, manifest: Path, line: int | None = None) -> Path:
        """The resolved path of a row's slide, refused when it lies outside.

        Parameters
        ----------
        slide : str
            The row's ``slide`` value.
        manifest : Path
            The manifest file (named in the error).
        line : int, optional
            The row's line in the CSV (the header is line 1).

        Returns
        -------
        Path
            The resolved path, inside a root.

        Raises
        ------
        SlidePathError
            If the resolved path lies outside every root.
        """
        path = self.resolve(slide)
        if path is not None and self.allows(path):
            return path
        where = f"{manifest}: line {line}" if line is not None else f"{manifest}"
        what = (
            "is not a valid path"
            if path is None
            else f"resolves to {path}, outside the slide store"
        )
        raise SlidePathError(
            f"{where}: slide {slide!r} {what}",
            fix=(
                f"move the slide under slides_root ({self.slides_root}) or add its "
                "folder to site.extra_slide_roots in site.toml"
            ),
        )


def slide_path(config: SiteConfig, slide: str, *, line: int | None = None) -> Path:
    """The resolved path of one manifest slide of a site, checked.

    Raises
    ------
    SlidePathError
        If the slide lies outside ``slides_root`` and ``extra_slide_roots``.
    """
    return SlideRoots.of_site(config).check(
        slide, manifest=config.manifest_path, line=line
    )


__all__ = ["SlideRoots", "slide_path"]
