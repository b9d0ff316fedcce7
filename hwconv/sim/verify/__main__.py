"""python -m hwconv.sim.verify: the same as `hwconv verify` (see cli.py)."""

import sys

from .cli import main

sys.exit(main())
