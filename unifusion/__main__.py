"""`python -m unifusion ...` is the `unifusion` command (see `unifusion.cli`)."""
from .cli import console

if __name__ == "__main__":      # guarded: spawned worker processes (the demo's trainers) re-import this module
    console()
