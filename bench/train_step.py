"""One training step against PyTorch eager: ``pyllama.bench.scripts.train_step``
(``--help`` for the options)."""
from pyllama.bench.scripts import train_step as main

if __name__ == "__main__":
    main()
