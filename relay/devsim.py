"""`python -m relay.devsim`, the simulator's former name: it still runs, with a warning.

The simulator is a client of the relay and lives in `devsim/` (`python -m devsim`).
"""

import runpy
import sys
import warnings

if __name__ == "__main__":
    warnings.warn(
        "python -m relay.devsim is deprecated: use python -m devsim", FutureWarning, stacklevel=1
    )
    sys.argv[0] = "devsim"
    runpy.run_module("devsim", run_name="__main__", alter_sys=True)
