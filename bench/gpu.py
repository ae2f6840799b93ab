"""The CUDA backend beside PyTorch on the same GPU: ``pyllama.bench.gpu`` (the same as
``python -m pyllama.bench.gpu``; ``--help`` for the options). tests/gpu/run.sh runs this file."""
import sys

from pyllama.bench.gpu import main

if __name__ == "__main__":
    sys.exit(main())
