"""``pyllama tokenizer train|encode``.

    pyllama tokenizer train corpus.txt --vocab-size 4096 --out tok.tiktoken [--hf-json tokenizer.json]
    pyllama tokenizer encode --tokenizer tok.tiktoken --text "Hello world"
    pyllama tokenizer encode --tokenizer tok.tiktoken input.txt --count
"""
from __future__ import annotations

import argparse
import sys
import time


def register(subparsers) -> None:
    p = subparsers.add_parser("tokenizer", help="train a byte-level BPE tokenizer, or encode text with one",
                              description="Train a byte-level BPE tokenizer (tiktoken-compatible), or encode text.")
    sub = p.add_subparsers(dest="tokenizer_command", metavar="{train,encode}")
    p.set_defaults(func=lambda args: (p.print_help(), 2)[1])

    t = sub.add_parser("train", help="learn a vocabulary from text files")
    t.add_argument("inputs", nargs="+", help="UTF-8 text files")
    t.add_argument("--vocab-size", type=int, required=True,
                   help="total tokens: 256 bytes + merges + special tokens")
    t.add_argument("--pattern", default="cl100k", help="gpt2, cl100k, llama3, o200k, or a regex (default: cl100k)")
    t.add_argument("--special", action="append", default=[], metavar="TOKEN",
                   help="a special token (repeatable), e.g. --special '<|endoftext|>'")
    t.add_argument("--out", required=True, help="output .tiktoken file (a .json with the pattern goes beside it)")
    t.add_argument("--hf-json", default=None, help="also write a Hugging Face tokenizer.json here")
    t.add_argument("--no-progress", action="store_true", help="no progress bar")
    t.set_defaults(func=cmd_train)

    e = sub.add_parser("encode", help="print the token ids of a text")
    e.add_argument("input", nargs="?", help="a UTF-8 text file (or use --text, or stdin)")
    e.add_argument("--tokenizer", required=True, help="a tokenizer written by `pyllama tokenizer train` / "
                   "Tokenizer.save, or a model's tokenizer.json / tokenizer.model (or its folder)")
    e.add_argument("--add-special-tokens", action="store_true",
                   help="a model's tokenizer: add its template's tokens (BOS ...), as transformers' tokenizer(text)")
    e.add_argument("--text", default=None, help="text to encode")
    e.add_argument("--allow-special", action="store_true", help="encode special-token text as the special tokens")
    e.add_argument("--count", action="store_true", help="print only the number of tokens")
    e.set_defaults(func=cmd_encode)


def cmd_train(args) -> int:
    from .tokenizer import Tokenizer

    t0 = time.perf_counter()
    if len(args.inputs) == 1:
        source = args.inputs[0]
    else:
        def texts():
            for path in args.inputs:
                with open(path, "r", encoding="utf-8", errors="replace", newline="") as f:
                    yield f.read()
        source = texts()
    tok = Tokenizer.train(source, args.vocab_size, pattern=args.pattern, special_tokens=args.special,
                          progress=False if args.no_progress else None)
    tok.save(args.out)
    if args.hf_json:
        tok.save_hf(args.hf_json)
    print(f"trained {tok!r} in {time.perf_counter() - t0:.2f}s -> {args.out}"
          + (f" and {args.hf_json}" if args.hf_json else ""))
    return 0


def cmd_encode(args) -> int:
    from .tokenizer import Tokenizer

    tok = Tokenizer.load(args.tokenizer)
    if args.text is not None:
        text = args.text
    elif args.input:
        with open(args.input, "r", encoding="utf-8", newline="") as f:
            text = f.read()
    else:
        text = sys.stdin.read()
    kw = {"add_special_tokens": True} if args.add_special_tokens else {}
    if kw and not hasattr(tok, "bos_token_id"):
        raise ValueError("--add-special-tokens needs a model's tokenizer (tokenizer.json or tokenizer.model)")
    ids = tok.encode(text, allowed_special="all" if args.allow_special else set(),
                     disallowed_special="all" if args.allow_special else (), **kw)
    if args.count:
        print(len(ids))
    else:
        print(" ".join(map(str, ids)))
    return 0
