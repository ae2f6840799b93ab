"""``python -m pyllama.bench``: the CPU suite (:func:`pyllama.bench.cpu.main`)."""
import sys

from .cpu import main

if __name__ == "__main__":
    sys.exit(main())
