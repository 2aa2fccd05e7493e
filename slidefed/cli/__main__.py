"""``python -m slidefed.cli``."""

import sys

from slidefed.cli.root import main

sys.exit(main())
