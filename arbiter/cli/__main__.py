"""`python -m arbiter.cli`, the same as the `arbiter` console script."""

import sys

from arbiter.cli import main

sys.exit(main())
