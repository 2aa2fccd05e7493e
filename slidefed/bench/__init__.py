"""Benchmarks: every goal is a ratio against a baseline measured in the same run.

Each ``slidefed bench`` command has one module:

- :mod:`~slidefed.bench.dp`: DP-SGD step time over a plain step, and held-out AUC
  against epsilon (``bench dp``);
- :mod:`~slidefed.bench.tiling`: tile reading against the decode floor and a naive
  loop, one process and two (``bench tiling``; the readers are in
  ``_tile_readers``);
- :mod:`~slidefed.bench.round`: what a federated round costs beyond local training
  (``bench round``);
- :mod:`~slidefed.bench.robust`: held-out AUC when one site sends hostile updates
  (``bench robust``);
- :mod:`~slidefed.bench.audit`: the auditor's verifier on a generated site log;
- ``_federation``: the small in-process federation that ``dp`` and ``robust`` train.
- :mod:`~slidefed.bench.utility`: centralised, federated and federated-DP macro-F1
  on real tiles split by group (``bench utility``; its data, sites, training and
  report are in ``_utility_data``, ``_utility_sites``, ``_utility_train`` and
  ``_utility_report``).

Most of those modules import torch, Flower or tiffslide, so none is re-exported
here; this package re-exports only the light measuring tools.
"""

from slidefed.bench.memory import PeakMemory as PeakMemory
from slidefed.bench.memory import tree_rss_bytes as tree_rss_bytes
from slidefed.bench.timing import interleaved_medians as interleaved_medians

__all__ = ["PeakMemory", "interleaved_medians", "tree_rss_bytes"]
