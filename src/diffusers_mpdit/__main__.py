"""`python -m diffusers_mpdit ...` is the `mpdit` command, for environments without its console script on PATH."""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
