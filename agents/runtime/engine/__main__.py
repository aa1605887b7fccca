import sys

from agents.runtime.engine.cli import main

sys.exit(main())
