"""``pyllama generate``: decode from a checkpoint, streaming text to the terminal.

    pyllama generate --checkpoint runs/shakespeare/latest --prompt "ROMEO:"
    pyllama generate --checkpoint DIR --prompt "ROMEO:" --do-sample --temperature 0.8 --top-p 0.95 --seed 1
    pyllama generate --checkpoint DIR --prompt "ROMEO:" --num-beams 4 --num-return-sequences 2
    pyllama generate --checkpoint DIR --prompt-ids "1 2 3"          # token ids in and out, no tokenizer

The checkpoint folder holds the Hugging Face model files (``config.json`` +
``model.safetensors``) and the model's tokenizer (``tokenizer.json`` or ``tokenizer.model``
with ``tokenizer_config.json``: the prompt starts with BOS when those files say so), or the
tokenizer saved by ``Tokenizer.save``
(``tokenizer.tiktoken`` or ``tokenizer.json``, each with its ``.json`` sidecar;
or a bare ``.tiktoken`` file). A run folder or a ``latest`` link
or pointer file is followed to its newest checkpoint. Every ``GenerationConfig``
field has a flag of the same name; a ``generation_config.json`` in the folder gives
the defaults of the flags not given (as transformers' ``generate`` takes them).
"""
from __future__ import annotations

import argparse
import os
import re
import sys
import time
import warnings
from typing import Any, List, Optional

TOKENIZER_NAMES = ("tokenizer.json", "tokenizer.tiktoken")


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "generate", help="generate text from a checkpoint (streams to the terminal)",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True, help="model folder (config.json + model.safetensors), "
                   "a training run folder, or its 'latest'")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--prompt", help="prompt text (encoded with the checkpoint's tokenizer)")
    src.add_argument("--prompt-ids", help="prompt as token ids, e.g. '1 2 3' or '1,2,3' (prints ids, no tokenizer)")
    p.add_argument("--tokenizer", help="tokenizer file (default: the one in the checkpoint folder)")
    p.add_argument("--threads", type=int, help="CPU threads for the core")
    p.add_argument("--weights-dtype", choices=["float32", "bfloat16"], default="float32",
                   help="weights the decoding steps read: bfloat16 halves the memory traffic (faster, "
                        "logits within ~1e-2 of float32); default float32")
    p.add_argument("--quiet", action="store_true", help="print only the generated text (no prompt, no summary)")

    g = p.add_argument_group("generation (GenerationConfig fields)")
    g.add_argument("--max-new-tokens", type=int, help="most new tokens per sequence (default: the checkpoint's "
                   "generation_config.json, else 128)")
    g.add_argument("--min-new-tokens", type=int)
    g.add_argument("--do-sample", action="store_true", default=None, help="sample instead of greedy/beam search")
    g.add_argument("--temperature", type=float)
    g.add_argument("--top-k", type=int, help="0 turns it off (default 50 when sampling)")
    g.add_argument("--top-p", type=float)
    g.add_argument("--min-p", type=float)
    g.add_argument("--repetition-penalty", type=float)
    g.add_argument("--presence-penalty", type=float)
    g.add_argument("--frequency-penalty", type=float)
    g.add_argument("--no-repeat-ngram-size", type=int)
    g.add_argument("--num-beams", type=int)
    g.add_argument("--length-penalty", type=float)
    g.add_argument("--early-stopping", choices=["true", "false", "never"])
    g.add_argument("--eos-token-id", type=int, nargs="*", help="eos token id(s); none given: no eos")
    g.add_argument("--stop-string", dest="stop_strings", action="append", help="stop when this text appears "
                   "(repeatable)")
    g.add_argument("--num-return-sequences", type=int)
    g.add_argument("--seed", type=int)
    p.set_defaults(func=run)


_FIELDS = ("max_new_tokens", "min_new_tokens", "do_sample", "temperature", "top_k", "top_p", "min_p",
           "repetition_penalty", "presence_penalty", "frequency_penalty", "no_repeat_ngram_size", "num_beams",
           "length_penalty", "early_stopping", "eos_token_id", "stop_strings", "num_return_sequences", "seed")


DEFAULT_MAX_NEW_TOKENS = 128  # when neither the flag nor the checkpoint's generation_config.json gives a length


def kwargs_from_args(args: argparse.Namespace) -> dict:
    """The GenerationConfig fields the command line gave explicitly."""
    kw = {f: getattr(args, f) for f in _FIELDS if getattr(args, f, None) is not None}
    if "early_stopping" in kw:
        kw["early_stopping"] = {"true": True, "false": False}.get(kw["early_stopping"], kw["early_stopping"])
    return kw


def config_from_args(args: argparse.Namespace, model: Any = None):
    """The GenerationConfig in force: the flags given win over the model's ``generation_config``
    (the checkpoint's generation_config.json), which wins over the defaults (as transformers merges
    them); ``--max-new-tokens`` defaults to 128 unless the file sets max_new_tokens or max_length."""
    from .generation import GenerationConfig, _resolve

    kw = kwargs_from_args(args)
    own = getattr(model, "generation_config", None)
    if "max_new_tokens" not in kw and not ({"max_new_tokens", "max_length"} & getattr(own, "_loaded_fields", set())):
        kw["max_new_tokens"] = DEFAULT_MAX_NEW_TOKENS
    if model is None:
        return GenerationConfig(**kw)
    return _resolve(model, None, kw)


def set_threads(args: argparse.Namespace) -> None:
    """--threads, checked (the generate and chat commands)."""
    import pyllama

    if args.threads is not None:
        if args.threads < 1:
            raise ValueError(f"--threads must be >= 1, got {args.threads}")
        pyllama.set_num_threads(args.threads)


def resolve_model_dir(path: str) -> str:
    """The folder with config.json that ``path`` names (following run folders and 'latest')."""
    path = os.fspath(path)
    if os.path.isfile(path) and os.path.basename(path) == "latest":  # pointer file
        with open(path, encoding="utf-8") as f:
            path = os.path.join(os.path.dirname(path), f.read().strip())
    if os.path.islink(path):
        path = os.path.realpath(path)
    if not os.path.isdir(path):
        raise FileNotFoundError(f"checkpoint {path!r} does not exist or is not a folder")
    if os.path.isfile(os.path.join(path, "config.json")):
        return path
    latest = os.path.join(path, "latest")
    if os.path.exists(latest):
        return resolve_model_dir(latest)
    steps = sorted((int(m.group(1)), int(m.group(2) or 0), n) for n in os.listdir(path)  # step-N, re-saved step-N.K
                   if (m := re.fullmatch(r"step-(\d+)(?:\.(\d+))?", n)) and os.path.isdir(os.path.join(path, n)))
    if steps:
        return os.path.join(path, steps[-1][2])
    raise FileNotFoundError(f"{path!r} has no config.json: not a model folder or training run")


def find_tokenizer(model_dir: str) -> Optional[str]:
    """The tokenizer file in a checkpoint folder: ``Tokenizer.save`` writes ``NAME`` (the
    ``.tiktoken`` ranks) and ``NAME.json`` (pattern and special tokens); NAME is
    ``tokenizer.tiktoken`` (``save(folder)``) or ``tokenizer.json`` (the Trainer's name).
    A bare ``.tiktoken`` file also counts."""
    names = list(TOKENIZER_NAMES) + sorted(n for n in os.listdir(model_dir) if n.endswith(".tiktoken"))
    for n in names:
        p = os.path.join(model_dir, n)
        if os.path.isfile(p) and (os.path.isfile(p + ".json") or n.endswith(".tiktoken")):
            return p
    return None


def _hf_folder(folder: str) -> bool:
    """Whether a folder holds a model's own tokenizer files (tokenizer.json without pyllama's
    .json sidecar, or a tokenizer.model)."""
    if os.path.isfile(os.path.join(folder, "tokenizer.model")):
        return True
    p = os.path.join(folder, "tokenizer.json")
    return os.path.isfile(p) and not os.path.isfile(p + ".json")


def load_tokenizer(model_dir: str, path: Optional[str]):
    """The tokenizer at ``path`` (a model's tokenizer.json / tokenizer.model with its
    tokenizer_config.json, a file written by ``Tokenizer.save``, a folder holding one, or a
    bare ``.tiktoken``), else the one saved in the checkpoint folder."""
    from . import Tokenizer

    for folder in ([model_dir] if path is None else [path] if os.path.isdir(path) else []):
        if _hf_folder(folder):
            return Tokenizer.from_pretrained(folder)
    if path is not None and os.path.isfile(path) and not os.path.isfile(path + ".json") and \
            os.path.basename(path) in ("tokenizer.json", "tokenizer.model"):
        folder = os.path.dirname(os.path.abspath(path))
        return Tokenizer.from_pretrained(folder if _hf_folder(folder) else path)
    if path is None:
        path = find_tokenizer(model_dir)
        if path is None:
            raise FileNotFoundError(f"no tokenizer in {model_dir!r} (looked for {', '.join(TOKENIZER_NAMES)} "
                                    "with its .json, or a .tiktoken file); pass --tokenizer FILE, or --prompt-ids "
                                    "to work with token ids")
    elif os.path.isdir(path):
        found = find_tokenizer(path)
        if found is None:
            raise FileNotFoundError(f"no tokenizer in folder {path!r}")
        path = found
    elif not os.path.isfile(path):
        raise FileNotFoundError(f"no tokenizer file at {path!r}")
    try:
        from . import Tokenizer
    except ImportError:
        raise ValueError("pyllama.Tokenizer is not available in this build; use --prompt-ids") from None
    if not os.path.isfile(path + ".json") and path.endswith(".tiktoken"):
        return Tokenizer.from_tiktoken(path)
    return Tokenizer.load(path)


def _parse_ids(text: str) -> List[int]:
    try:
        return [int(t) for t in re.split(r"[\s,]+", text.strip()) if t]
    except ValueError:
        raise ValueError(f"--prompt-ids must be integers separated by spaces or commas, got {text!r}") from None


def run(args: argparse.Namespace) -> int:
    import pyllama

    config_from_args(args)  # bad flags fail before the model loads
    set_threads(args)
    model_dir = resolve_model_dir(args.checkpoint)
    model = pyllama.Llama.from_pretrained(model_dir)
    model.set_inference_dtype(args.weights_dtype)
    cfg = config_from_args(args, model)  # the flags given, over the checkpoint's generation_config.json
    tok = None
    if args.prompt is not None:
        tok = load_tokenizer(model_dir, args.tokenizer)
        from .generation import encode_prompt

        ids = encode_prompt(tok, args.prompt)  # with BOS when the tokenizer's files say so
        if not ids:
            raise ValueError("--prompt encodes to no tokens; give a non-empty prompt")
    else:
        ids = _parse_ids(args.prompt_ids)
        if args.tokenizer:
            tok = load_tokenizer(model_dir, args.tokenizer)
    out = sys.stdout
    err = sys.stderr

    last = [""]

    def show(text: str) -> None:
        if text:
            out.write(text)
            out.flush()
            last[0] = text[-1]

    t0 = time.perf_counter()
    n_tokens = 0
    reasons: List[str] = []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", RuntimeWarning)
        if cfg.num_beams == 1 and cfg.num_return_sequences == 1:
            if not args.quiet:
                show(args.prompt if args.prompt is not None else " ".join(map(str, ids)))
            for ev in model.stream([ids], cfg, tokenizer=tok):
                if ev.token_id >= 0:
                    n_tokens += 1
                    show(ev.text if (tok is not None and args.prompt is not None) else f" {ev.token_id}")
                if ev.stop_reason is not None:
                    reasons.append(ev.stop_reason)
            if last[0] != "\n":
                show("\n")
        else:
            res = model.generate([ids], cfg, tokenizer=tok)
            reasons = list(res.stop_reasons)
            for i, seq in enumerate(res):
                n_tokens += len(seq)
                if not args.quiet:
                    score = f" (score {res.scores[i]:.4f})" if res.scores is not None else ""
                    show(f"--- sequence {i + 1}{score}\n")
                    show(args.prompt if args.prompt is not None else " ".join(map(str, ids)))
                if tok is not None and args.prompt is not None:
                    show(tok.decode(seq) + "\n")
                else:
                    show("".join(f" {t}" for t in seq) + "\n")
    dt = time.perf_counter() - t0
    for w in caught:
        if not args.quiet:
            err.write(f"pyllama generate: {w.message}\n")
    if not args.quiet:
        err.write(f"[{n_tokens} tokens in {dt:.2f}s, {n_tokens / max(dt, 1e-9):.1f} tokens/s; "
                  f"stopped: {', '.join(reasons)}]\n")
    return 0
