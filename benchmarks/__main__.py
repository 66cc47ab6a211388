"""Entry point: ``python -m benchmarks [--quick] [--rounds N] [--only a,b] [--json out.json]``."""

import sys

from .cli import main

sys.exit(main())
