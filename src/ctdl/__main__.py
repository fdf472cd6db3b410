"""``python -m ctdl``: the ``ctdl`` command (sweeps start their runs this way)."""

import sys

from ctdl.cli import main

if __name__ == "__main__":
    sys.exit(main())
