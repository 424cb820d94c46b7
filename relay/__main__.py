"""`python -m relay`."""

import sys

from relay.run.cli import main

sys.exit(main())
