"""Where features become training samples: the manifest and patient bags.

:func:`load_manifest` validates a site's manifest CSV
(:mod:`~slidefed.client.data.manifest`); :func:`build_bags` groups each
patient's slide features into one bag, the privacy unit
(:mod:`~slidefed.client.data.bags`). Tile-labelled sites (a folder of class
folders, or a manifest of tiles) are :mod:`slidefed.client.data.tiles`, not
re-exported here because it loads the encoders (scipy, Pillow): import it from
that module.
"""

from slidefed.client.data.bags import PatientBag as PatientBag
from slidefed.client.data.bags import build_bags as build_bags
from slidefed.client.data.manifest import Manifest as Manifest
from slidefed.client.data.manifest import ManifestRow as ManifestRow
from slidefed.client.data.manifest import load_manifest as load_manifest

__all__ = ["Manifest", "ManifestRow", "PatientBag", "build_bags", "load_manifest"]
