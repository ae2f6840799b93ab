"""Tokenizer speed against the references: tiktoken (encode) and Hugging Face tokenizers
(training). A thin wrapper over ``pyllama.bench.bench_encode`` and ``bench_bpe``.

    python bench/tokenizer.py [--text FILE] [--vocab cl100k|o200k] [--repeat 3] [--threads 2]

Encode: MB/s of UTF-8 input on one thread (one long text, warm and the first pass of a
freshly loaded tokenizer, so the piece cache starts empty), and on a batch of documents
over N threads; both tokenizers use the same vocabulary and pattern and the ids are
checked to be equal. Training: seconds to learn vocabularies of 4096 and 32768 tokens
with the cl100k pattern, and the token count each trained vocabulary gives the text.
Prints both sides and the ratios (>1: pyllama is faster).
"""
from __future__ import annotations

import argparse
import os
import sys

import pyllama
from pyllama import bench

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--text", default=None, help="UTF-8 text (default: the bundled shakespeare.txt)")
    ap.add_argument("--vocab", default="cl100k", choices=sorted(bench.VOCAB_SPECIALS))
    ap.add_argument("--vocab-file", default=None, help="the .tiktoken(.gz) file (default: tests/data)")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--train-sizes", default="4096,32768")
    ap.add_argument("--skip-train", action="store_true")
    args = ap.parse_args(argv)
    bench.set_threads(args.threads)
    os.environ.setdefault("RAYON_NUM_THREADS", str(args.threads))
    vocab_file = args.vocab_file
    if vocab_file is None:
        base = bench.VOCAB_SPECIALS[args.vocab][0]
        p = os.path.join(ROOT, "tests", "data", base + ".tiktoken.gz")
        vocab_file = p if os.path.isfile(p) else None
    text = bench.read_text(args.text)
    print(f"text: {args.text or bench.default_text_path()}; pyllama {pyllama.__version__}; {os.cpu_count()} CPUs")
    rows = bench.bench_encode(text, args.repeat, args.threads, True, args.vocab, vocab_file)["rows"]
    if not args.skip_train:
        rows += bench.bench_bpe(text, [int(s) for s in args.train_sizes.split(",")], args.repeat, True,
                                args.threads)["rows"]
    print(bench.format_table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
