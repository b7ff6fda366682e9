"""`python3 -m shoutd` runs the daemon, as the `shoutd` entry point does."""

import sys

from .daemon import main

sys.exit(main())
