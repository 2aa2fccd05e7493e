"""The demo: synthetic hospitals (or real labelled tiles) trained as a DP federation.

- :mod:`~slidefed.demo.synth`: synthetic H&E-like pyramidal TIFF slides and
  synthetic sites (slides plus ``manifest.csv``), byte-identical for a seed;
  also used by the tests and the benchmarks;
- :mod:`~slidefed.demo.federation`: the demo's sites (names, sizes, configs) and
  its run config (``slidefed demo``);
- :mod:`~slidefed.demo.tiles`: the same on real labelled tiles, with a centralised
  baseline (``slidefed demo --data tiles``);
- :mod:`~slidefed.demo.runner`: both demos end to end, with progress on a console.

Re-exported here: the synthetic-data API.  Importing this package loads numpy,
scipy and tifffile, never torch or Flower (those load when a demo trains).
"""

from slidefed.demo.synth import SynthSite as SynthSite
from slidefed.demo.synth import synth_site as synth_site
from slidefed.demo.synth import write_synthetic_slide as write_synthetic_slide

__all__ = ["SynthSite", "synth_site", "write_synthetic_slide"]
