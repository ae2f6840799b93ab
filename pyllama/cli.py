"""The ``pyllama`` command.

Each subcommand lives in its own module, which provides ``register(subparsers)``
(adds its parser and sets ``func`` on it). ``pyllama --help`` lists them.

    pyllama train                    # train the small preset on the bundled corpus
    pyllama generate --checkpoint DIR --prompt "ROMEO:"
    pyllama chat --checkpoint DIR    # interactive chat with the model's chat template
    pyllama tokenizer train|encode ...
    pyllama prepare INPUT --tokenizer TOK --out DIR
    pyllama bench
"""
from __future__ import annotations

import argparse
import importlib
import sys
from typing import List, Optional

# Modules that define subcommands, in the order --help lists them.
SUBCOMMAND_MODULES = [
    "pyllama.cli_train",      # train, prepare
    "pyllama.cli_generate",   # generate
    "pyllama.cli_chat",       # chat
    "pyllama.cli_tokenizer",  # tokenizer train|encode
    "pyllama.bench",          # bench
]


def build_parser() -> argparse.ArgumentParser:
    from ._version import __version__

    parser = argparse.ArgumentParser(prog="pyllama", description="Train and run LLaMA models on pyllama's C++ core.")
    parser.add_argument("--version", action="version", version=f"pyllama {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in SUBCOMMAND_MODULES:
        try:
            mod = importlib.import_module(name)
        except ModuleNotFoundError as e:
            if e.name == name:  # subcommand not built yet
                continue
            raise
        mod.register(sub)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        rc = args.func(args)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except (ValueError, TypeError, FileNotFoundError, OSError) as e:
        print(f"pyllama {args.command}: error: {e}", file=sys.stderr)
        return 1
    return int(rc or 0)


if __name__ == "__main__":
    sys.exit(main())
