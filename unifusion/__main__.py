"""`python -m unifusion ...` is the `unifusion` command (see `unifusion.cli`)."""
import sys

from .cli import main

if __name__ == "__main__":      # guarded: spawned worker processes (the demo's trainers) re-import this module
    sys.exit(main())
