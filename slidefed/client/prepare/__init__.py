"""Where a slide becomes features: tissue, tile grid, encoders, feature cache.

:func:`prepare_site` runs the whole site (``slidefed site prepare``): for each
manifest slide, a tissue mask (:mod:`~slidefed.client.prepare.tissue`), a tile
grid at the target resolution (:mod:`~slidefed.client.prepare.tiling`), a frozen
encoder (:mod:`~slidefed.client.prepare.encoders`) and the per-slide feature
cache (:mod:`~slidefed.client.prepare.cache`). One slide's work is
:mod:`~slidefed.client.prepare.slide`, the outcome records
:mod:`~slidefed.client.prepare.report`; what a round reads (the prepared
features, from the cache only) :mod:`~slidefed.client.prepare.prepared`.
Importing the package loads numpy, scipy and Pillow; torch and timm load only
when a ``timm:<arch>`` encoder is built.
"""

from slidefed.client.prepare.cache import FeatureCache as FeatureCache
from slidefed.client.prepare.cache import HashMemo as HashMemo
from slidefed.client.prepare.cache import cache_key as cache_key
from slidefed.client.prepare.cache import file_sha256 as file_sha256
from slidefed.client.prepare.cache import slide_sha256 as slide_sha256
from slidefed.client.prepare.encoders import Encoder as Encoder
from slidefed.client.prepare.encoders import HedEncoder as HedEncoder
from slidefed.client.prepare.encoders import TimmEncoder as TimmEncoder
from slidefed.client.prepare.encoders import encoder_cache_id as encoder_cache_id
from slidefed.client.prepare.encoders import encoder_for as encoder_for
from slidefed.client.prepare.encoders import get_encoder as get_encoder
from slidefed.client.prepare.pipeline import load_site_features as load_site_features
from slidefed.client.prepare.pipeline import prepare_site as prepare_site
from slidefed.client.prepare.pipeline import (
    prepare_unless_ready as prepare_unless_ready,
)
from slidefed.client.prepare.prepared import check_prepared as check_prepared
from slidefed.client.prepare.report import PrepareReport as PrepareReport
from slidefed.client.prepare.report import SlideOutcome as SlideOutcome
from slidefed.client.prepare.slide import prepare_slide as prepare_slide
from slidefed.client.prepare.tiling import TileBatch as TileBatch
from slidefed.client.prepare.tiling import TileGrid as TileGrid
from slidefed.client.prepare.tiling import iter_tiles as iter_tiles
from slidefed.client.prepare.tiling import plan_tiles as plan_tiles
from slidefed.client.prepare.tiling import read_tile as read_tile
from slidefed.client.prepare.tissue import tissue_mask as tissue_mask

__all__ = [
    "Encoder",
    "FeatureCache",
    "HashMemo",
    "HedEncoder",
    "PrepareReport",
    "SlideOutcome",
    "TileBatch",
    "TileGrid",
    "TimmEncoder",
    "cache_key",
    "check_prepared",
    "encoder_cache_id",
    "encoder_for",
    "file_sha256",
    "get_encoder",
    "iter_tiles",
    "load_site_features",
    "plan_tiles",
    "prepare_site",
    "prepare_slide",
    "prepare_unless_ready",
    "read_tile",
    "slide_sha256",
    "tissue_mask",
]
