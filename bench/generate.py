"""Decoding and prefill speed against Hugging Face ``generate``: ``pyllama.bench.scripts.generate``
(``--help`` for the options)."""
from pyllama.bench.scripts import generate as main

if __name__ == "__main__":
    main()
