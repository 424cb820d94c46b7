"""`python -m devsim`: a simulated xiaozhi device against the relay (docs/devsim.md)."""

import sys

from devsim.cli import main

sys.exit(main())
