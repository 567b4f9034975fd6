"""`python -m dp_fast ...`: the `dp-fast` command (what torchrun starts: `torchrun ... -m dp_fast train ...`)."""
import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
