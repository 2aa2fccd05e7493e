"""Slide readers behind one :class:`SlideSource` protocol.

tiffslide reads SVS, NDPI, OME-TIFF and generic tiled pyramidal TIFF
(:mod:`~slidefed.client.slides.tiff`); wsidicom reads DICOM whole-slide images
(:mod:`~slidefed.client.slides.dicom`), from files or, for a
:class:`~slidefed.client.slides.dicomweb_ref.DicomWebRef`, from the hospital's
archive over DICOMweb (:mod:`~slidefed.client.slides.dicomweb`).
:func:`open_slide` picks the reader from the file's content, not its name
(:mod:`~slidefed.client.slides.sniff`). Both
readers cut regions from decoded stored tiles kept in a bounded cache
(:mod:`~slidefed.client.slides.stored_tiles`).

Modules: ``base`` (the protocol, level and slide records, the errors readers
raise), ``pixels`` (RGB conversion and the one box downsampling), ``stored_tiles``,
``tiff`` (with ``tiff_levels``), ``dicom``, ``sniff``; ``codestream`` (the decoded
size a JPEG, JPEG 2000, WebP or PNG header declares) and ``bounds`` (the check of
every stored tile against it and the site's pixel cap, before any decode). Importing the package loads numpy and pydantic
only: tiffslide, tifffile, imagecodecs and wsidicom load when a slide is opened.
"""

from slidefed.client.slides.base import READ_ERRORS as READ_ERRORS
from slidefed.client.slides.base import LevelInfo as LevelInfo
from slidefed.client.slides.base import SlideInfo as SlideInfo
from slidefed.client.slides.base import SlideSource as SlideSource
from slidefed.client.slides.dicom import DicomSlideSource as DicomSlideSource
from slidefed.client.slides.pixels import box_reduce as box_reduce
from slidefed.client.slides.pixels import to_rgb as to_rgb
from slidefed.client.slides.pixels import ycbcr_to_rgb as ycbcr_to_rgb
from slidefed.client.slides.sniff import is_dicom_file as is_dicom_file
from slidefed.client.slides.sniff import open_slide as open_slide
from slidefed.client.slides.sniff import sniff_format as sniff_format
from slidefed.client.slides.stored_tiles import TILE_CACHE_BYTES as TILE_CACHE_BYTES
from slidefed.client.slides.stored_tiles import StoredTileReader as StoredTileReader
from slidefed.client.slides.tiff import TiffSlideSource as TiffSlideSource

__all__ = [
    "READ_ERRORS",
    "TILE_CACHE_BYTES",
    "DicomSlideSource",
    "LevelInfo",
    "SlideInfo",
    "SlideSource",
    "StoredTileReader",
    "TiffSlideSource",
    "box_reduce",
    "is_dicom_file",
    "open_slide",
    "sniff_format",
    "to_rgb",
    "ycbcr_to_rgb",
]
