"""`python -m unifusion ...` is the `unifusion` command (see `unifusion.cli`)."""
import sys

from .cli import main

sys.exit(main())
