"""slidefed: federated learning for computational pathology.

Hospitals keep their whole-slide images on site; each trains with patient-level
differential privacy and only model updates leave.

Packages, one role each:

- :mod:`slidefed.client`: the site (ClientApp ``slidefed.client.app:app``): slides,
  tiling and features, patient bags, DP training, the privacy ledger;
- :mod:`slidefed.server`: the coordinator (ServerApp ``slidefed.server.app:app``):
  strategies, update validation, checkpoints, metrics;
- :mod:`slidefed.common`: what both sides share (errors, run config, model, audit
  records, crypto); it imports neither side;
- :mod:`slidefed.deploy`: starting and supervising real site nodes and the
  coordinator;
- :mod:`slidefed.audit`: the auditor's tools (verify, cross-check, report), no torch;
- :mod:`slidefed.demo`, :mod:`slidefed.bench`: the demo federation, synthetic slides
  and benchmarks;
- :mod:`slidefed.simulation` and :mod:`slidefed.launch`: run a federation on Flower's
  simulation engine, or on a real one; :mod:`slidefed.cli`: the ``slidefed`` command.
"""

__version__ = "0.1.0"

__all__ = ["__version__"]
