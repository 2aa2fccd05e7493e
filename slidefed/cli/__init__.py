"""The ``slidefed`` command: one module per command group, heavy imports inside commands.

``root`` holds the top-level app and the one table that turns error types into exit
codes; ``site``, ``slide``, ``server``, ``audit``, ``bench``, ``demo`` and
``federation`` (simulate, launch) hold the commands of each user.
"""

from slidefed.cli.root import app as app
from slidefed.cli.root import main as main
from slidefed.cli.root import run as run

__all__ = ["app", "main", "run"]
