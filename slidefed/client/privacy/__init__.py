"""Where epsilon is charged: the site's privacy accountant, ledger and budget policy.

- :mod:`~slidefed.client.privacy.ledger`: the on-disk record of every charged round
  (:class:`PrivacyLedger`), read and written under a lock, replaced atomically.
- :mod:`~slidefed.client.privacy.accountant`: epsilon of a DP history and the noise
  calibration (``epsilon``, ``calibrate_noise``), on Opacus's accountants.
- :mod:`~slidefed.client.privacy.charging`: ``charge_round``, which plans a run and
  charges each round to the ledger before it trains, or refuses it.

Importing this package stays light (no torch, no Opacus), so only the ledger's
names are re-exported here; import ``epsilon``, ``calibrate_noise``, ``Charge`` and
``charge_round`` from their modules, which load Opacus.
"""

from slidefed.client.privacy.ledger import AccountantName as AccountantName
from slidefed.client.privacy.ledger import Ledger as Ledger
from slidefed.client.privacy.ledger import LedgerRound as LedgerRound
from slidefed.client.privacy.ledger import LedgerRun as LedgerRun
from slidefed.client.privacy.ledger import PrivacyLedger as PrivacyLedger
from slidefed.client.privacy.ledger import Step as Step
from slidefed.client.privacy.ledger import Unit as Unit
from slidefed.client.privacy.ledger import stable_run_id as stable_run_id

__all__ = [
    "AccountantName",
    "Ledger",
    "LedgerRound",
    "LedgerRun",
    "PrivacyLedger",
    "Step",
    "Unit",
    "stable_run_id",
]
