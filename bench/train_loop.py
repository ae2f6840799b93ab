"""The optimizer step and the whole training step against PyTorch: ``pyllama.bench.scripts.train_loop``
(``--help`` for the options)."""
from pyllama.bench.scripts import train_loop as main

if __name__ == "__main__":
    main()
