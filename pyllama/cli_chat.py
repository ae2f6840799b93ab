"""``pyllama chat``: an interactive chat with a model, through its tokenizer's chat template.

    pyllama chat --checkpoint Meta-Llama-3-8B-Instruct
    pyllama chat --checkpoint DIR --system "You are terse." --do-sample --temperature 0.7

Each line you type is a user message; the conversation so far is rendered with the chat template
of the checkpoint's tokenizer (``tokenizer_config.json`` or ``chat_template.jinja``), the reply is
streamed token by token and kept in the conversation. An empty line or end of input ends the chat.
The reply stops at the model's EOS ids (generation_config.json) and the tokenizer's EOS token.
"""
from __future__ import annotations

import argparse
import sys
from typing import Any, Dict, List


def register(subparsers: Any) -> None:
    p = subparsers.add_parser("chat", help="chat with a model through its chat template (streams replies)",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True, help="model folder with its tokenizer files")
    p.add_argument("--tokenizer", help="tokenizer folder or file (default: the checkpoint folder)")
    p.add_argument("--system", help="a system message to start the conversation with")
    p.add_argument("--threads", type=int, help="CPU threads for the core")
    g = p.add_argument_group("generation (GenerationConfig fields)")
    g.add_argument("--max-new-tokens", type=int, default=256, help="most new tokens per reply (default 256)")
    g.add_argument("--do-sample", action="store_true", default=None)
    g.add_argument("--temperature", type=float)
    g.add_argument("--top-k", type=int)
    g.add_argument("--top-p", type=float)
    g.add_argument("--repetition-penalty", type=float)
    g.add_argument("--seed", type=int)
    p.set_defaults(func=run)


def run(args: argparse.Namespace, stdin=None, stdout=None) -> int:
    import pyllama

    from .cli_generate import load_tokenizer, resolve_model_dir, set_threads
    from .generation import GenerationConfig

    stdin = stdin or sys.stdin
    out = stdout or sys.stdout
    set_threads(args)
    model_dir = resolve_model_dir(args.checkpoint)
    model = pyllama.Llama.from_pretrained(model_dir)
    tok = load_tokenizer(model_dir, args.tokenizer)
    if not hasattr(tok, "apply_chat_template"):
        raise ValueError("the checkpoint's tokenizer has no chat template (chat needs a model's tokenizer.json "
                         "with tokenizer_config.json's chat_template)")
    kw = {f: getattr(args, f) for f in ("max_new_tokens", "do_sample", "temperature", "top_k", "top_p",
                                          "repetition_penalty", "seed") if getattr(args, f, None) is not None}
    base = GenerationConfig(**kw)
    eos = set(base.eos_ids(getattr(model, "config", None)))
    gen_cfg = getattr(model, "generation_config", None)
    if gen_cfg is not None:
        eos |= set(gen_cfg.eos_ids(getattr(model, "config", None)))
    if tok.eos_token_id is not None:
        eos.add(tok.eos_token_id)
    cfg = GenerationConfig(**{**kw, "eos_token_id": sorted(eos) or None})
    messages: List[Dict[str, str]] = []
    if args.system:
        messages.append({"role": "system", "content": args.system})
    interactive = hasattr(stdin, "isatty") and stdin.isatty()
    while True:
        if interactive:
            out.write("> ")
            out.flush()
        line = stdin.readline()
        if not line or not line.strip():
            break
        messages.append({"role": "user", "content": line.rstrip("\n")})
        ids = tok.apply_chat_template(messages, add_generation_prompt=True)
        reply: List[int] = []
        for ev in model.stream([ids], cfg, tokenizer=tok):
            if ev.token_id >= 0:
                if ev.token_id not in eos:
                    reply.append(ev.token_id)
                    out.write(ev.text or "")
                    out.flush()
        out.write("\n")
        out.flush()
        messages.append({"role": "assistant", "content": tok.decode(reply, skip_special_tokens=True)})
    return 0
