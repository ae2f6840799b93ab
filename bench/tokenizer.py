"""Tokenizer speed against tiktoken and Hugging Face tokenizers: ``pyllama.bench.scripts.tokenizer``
(``--help`` for the options)."""
import sys

from pyllama.bench.scripts import tokenizer as main

if __name__ == "__main__":
    sys.exit(main())
