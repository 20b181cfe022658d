"""`python -m r1lab ...`: the same CLI as the `r1lab` script (what `torchrun -m r1lab` runs)."""

import sys

from r1lab.cli import main

if __name__ == "__main__":
    sys.exit(main())
