"""``python -m agents.runtime.engine``: the developer CLI (``cli``)."""

import sys

from agents.runtime.engine.cli import main

sys.exit(main())
