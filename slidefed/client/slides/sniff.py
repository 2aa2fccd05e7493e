"""Choosing the reader of a slide from its content, never from its name.

:func:`open_slide` reads the first bytes: TIFF-family files open with the
tiffslide reader, DICOM files (or a folder holding one DICOM series) with the
wsidicom reader; anything else is refused with the reason, naming the format
where it is known (a PNG, a ZIP archive, Zeiss CZI, ...).
"""

from __future__ import annotations

from pathlib import Path

from slidefed.client.config import MAX_TILE_PIXELS
from slidefed.client.slides.base import SlideSource
from slidefed.client.slides.dicomweb_ref import DicomWebRef
from slidefed.client.slides.tiff import TiffSlideSource
from slidefed.common.errors import SlideReadError

_TIFF_MAGICS = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")

# Content signatures of files that are not slides we read, with the reason.
_FOREIGN_MAGICS: tuple[tuple[bytes, str], ...] = (
    (b"ZISRAWFILE", "Zeiss CZI is an unsupported format; export it as OME-TIFF"),
    (b"\x89PNG", "a PNG image, not a whole-slide image"),
    (b"\xff\xd8\xff", "a plain JPEG image, not a whole-slide image"),
    (b"GIF8", "a GIF image, not a whole-slide image"),
    (b"BM", "a BMP image, not a whole-slide image"),
    (b"%PDF", "a PDF document, not a whole-slide image"),
    (b"PK\x03\x04", "a ZIP archive, not a whole-slide image; unpack it first"),
    (b"\x1f\x8b", "a gzip archive, not a whole-slide image; unpack it first"),
    (b"<?xml", "an XML file, not a whole-slide image"),
)
_FOREIGN_SUFFIXES = {
    ".mrxs": "3DHISTECH MRXS is an unsupported format; export it as OME-TIFF or DICOM",
    ".isyntax": "Philips iSyntax is an unsupported format; export it as DICOM",
    ".vms": "Hamamatsu VMS is an unsupported format; export it as OME-TIFF",
    ".vmu": "Hamamatsu VMU is an unsupported format; export it as OME-TIFF",
    ".czi": "Zeiss CZI is an unsupported format; export it as OME-TIFF",
}


def is_dicom_file(path: Path) -> bool:
    """Whether a file starts with the DICOM preamble and ``DICM`` magic."""
    try:
        with path.open("rb") as fh:
            head = fh.read(132)
    except OSError:
        return False
    return len(head) == 132 and head[128:132] == b"DICM"


def _foreign_reason(path: Path, head: bytes) -> str:
    """Why a file that is neither TIFF nor DICOM is not read."""
    suffix = path.suffix.lower()
    if suffix in _FOREIGN_SUFFIXES:
        return _FOREIGN_SUFFIXES[suffix]
    for magic, reason in _FOREIGN_MAGICS:
        if head.startswith(magic):
            return reason
    try:
        head.decode("utf-8")
    except UnicodeDecodeError:
        pass
    else:
        return "not a readable slide (a text file, not TIFF or DICOM)"
    return "not a readable slide (unrecognised format, neither TIFF nor DICOM)"


def sniff_format(path: Path) -> str:
    """``"tiff"`` or ``"dicom"`` from the content of ``path`` (file or folder).

    Raises
    ------
    SlideReadError
        If the path is missing, empty, or holds something that is not a slide
        in a supported format; the reason says what it is where that is known.
    """
    path = Path(path)
    if path.is_dir():
        if any(p.is_file() and is_dicom_file(p) for p in sorted(path.iterdir())):
            return "dicom"
        raise SlideReadError(str(path), "folder holds no DICOM files")
    if not path.is_file():
        raise SlideReadError(str(path), "file not found")
    try:
        with path.open("rb") as fh:
            head = fh.read(132)
    except OSError as exc:
        raise SlideReadError(str(path), f"cannot read the file ({exc})") from exc
    if not head:
        raise SlideReadError(str(path), "empty file, not a slide")
    if head[:4] in _TIFF_MAGICS:
        return "tiff"
    if len(head) == 132 and head[128:132] == b"DICM":
        return "dicom"
    raise SlideReadError(str(path), _foreign_reason(path, head))


def open_slide(
    path: Path | DicomWebRef, *, max_tile_pixels: int = MAX_TILE_PIXELS
) -> SlideSource:
    """Open a slide with the reader that fits its content.

    TIFF-family files (SVS, NDPI, OME-TIFF, tiled TIFF) open with tiffslide;
    DICOM files, or a folder holding one DICOM series, with wsidicom.

    Parameters
    ----------
    path : Path or DicomWebRef
        The slide file, or a DICOM series folder; or a series on the site's
        DICOMweb archive.
    max_tile_pixels : int
        Cap on the pixels of one stored tile, as declared by the file and by
        each tile's codestream header (``[prepare] max_tile_pixels``).

    Raises
    ------
    SlideReadError
        If the file is missing, truncated, not a slide, or in an unsupported
        format.
    SlideDecodeRefused
        If its stored tiles are over the cap (also raised later, by a read,
        for a tile whose own header declares too much).
    """
    if isinstance(path, DicomWebRef):
        from slidefed.client.slides.dicomweb import DicomWebSlideSource

        return DicomWebSlideSource(path, max_tile_pixels=max_tile_pixels)
    path = Path(path)
    kind = sniff_format(path)
    if kind == "dicom":
        from slidefed.client.slides.dicom import DicomSlideSource

        return DicomSlideSource(path, max_tile_pixels=max_tile_pixels)
    return TiffSlideSource(path, max_tile_pixels=max_tile_pixels)


__all__ = ["is_dicom_file", "open_slide", "sniff_format"]
