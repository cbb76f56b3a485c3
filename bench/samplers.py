"""Run the sampler benchmark: `python bench/samplers.py [--peers] [--quick] [--out DIR]`
(the same as `unifusion bench samplers` and `python -m unifusion.bench.samplers`)."""
import sys

from unifusion.bench.samplers import main

if __name__ == "__main__":
    sys.exit(main())
