"""``python -m minignn``: the ``minignn`` command (see :mod:`minignn.cli`)."""
import sys

from .cli import main

sys.exit(main())
