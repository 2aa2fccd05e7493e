"""Synthetic H&E-like whole-slide images and synthetic sites.

The slides are pyramidal, tiled, JPEG-compressed TIFF files that tiffslide and
openslide read as generic TIFF with an mpp (microns per pixel) value.  Their
content imitates haematoxylin and eosin (H&E) staining at 0.5 um/px: a near-white
background, one or two irregular tissue pieces with holes and a fold, pink
textured stroma and purple nuclei.  Tumour slides additionally hold one to three
contiguous tumour regions where nuclei are denser, larger and darker, so a
haematoxylin optical-density feature separates tumour tiles from normal tiles.

Everything is a deterministic function of the seed: two runs with the same seed
write byte-identical files (no timestamp and no software tag are stored).  A
default-size slide (2560 x 2048) takes about a quarter of a second on one core.

Modules, from the site down to the pixels:

- :mod:`~slidefed.demo.synth.site`: :func:`synth_site`, patients, splits and
  ``manifest.csv``;
- :mod:`~slidefed.demo.synth.slide_writer`: :func:`write_synthetic_slide`, the
  pyramid of JPEG tiles;
- ``_render`` (stains, stroma, colour table), ``_nuclei`` (sprites and their
  placement), ``_layout`` (tissue, holes, fold, tumour regions) and ``_fields``
  (smooth random fields, bilinear upsampling).

Importing this package loads numpy, scipy and tifffile, never torch or Flower.
"""

from slidefed.demo.synth._render import Look as Look
from slidefed.demo.synth.site import SynthSite as SynthSite
from slidefed.demo.synth.site import synth_site as synth_site
from slidefed.demo.synth.slide_writer import (
    write_synthetic_slide as write_synthetic_slide,
)

__all__ = ["Look", "SynthSite", "synth_site", "write_synthetic_slide"]
