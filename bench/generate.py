"""Decoding speed: pyllama ``generate`` (KV cache in the core, strategies in Python)
against Hugging Face ``generate`` (transformers.LlamaForCausalLM, eager attention,
float32) on the same weights and threads.

    python bench/generate.py                       # C=288, I=768, L=6, NH=6, V=32000, untied head
    python bench/generate.py --prompt-len 128 --new-tokens 256 --threads 2 --json out.json

Prefill: tokens/s of the prompt pass (generate with one new token).
Decode: tokens/s of batch-1 greedy decoding, (new_tokens - 1) tokens after the
prefill (time of a full generate minus the prefill time).
Also prints pyllama's decode weight traffic (the memory-bandwidth view: every
decode step reads all weights once).
"""
import argparse
import json
import time

import numpy as np

import pyllama


def best_of(fn, repeats):
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--hidden", type=int, default=288)
    ap.add_argument("--intermediate", type=int, default=768)
    ap.add_argument("--layers", type=int, default=6)
    ap.add_argument("--heads", type=int, default=6)
    ap.add_argument("--vocab", type=int, default=32000)
    ap.add_argument("--prompt-len", type=int, default=128)
    ap.add_argument("--new-tokens", type=int, default=256)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--no-hf", action="store_true", help="measure pyllama only")
    ap.add_argument("--json", help="also write the results to this file")
    args = ap.parse_args(argv)

    cfg = pyllama.LlamaConfig(vocab_size=args.vocab, hidden_size=args.hidden, intermediate_size=args.intermediate,
                              num_hidden_layers=args.layers, num_attention_heads=args.heads,
                              max_position_embeddings=max(1024, args.prompt_len + args.new_tokens),
                              tie_word_embeddings=False)
    pyllama.set_num_threads(args.threads)
    model = pyllama.Llama(cfg, seed=0)
    prompt = np.random.default_rng(0).integers(0, cfg.vocab_size, args.prompt_len).tolist()
    P, N = args.prompt_len, args.new_tokens
    gen = dict(eos_token_id=[], do_sample=False)

    # ------------------------------------------------------------------ pyllama
    model.generate([prompt], max_new_tokens=8, **gen)  # warm-up
    t_pre = best_of(lambda: model.generate([prompt], max_new_tokens=1, **gen), args.repeats)
    t_all = best_of(lambda: model.generate([prompt], max_new_tokens=N, **gen), args.repeats)
    ours = {"prefill_tok_s": P / t_pre, "decode_tok_s": (N - 1) / max(t_all - t_pre, 1e-9)}
    # weights a decode step reads: all but the embedding table (one row of it)
    weight_bytes = 4 * (model.num_parameters() - (0 if cfg.tie_word_embeddings else cfg.vocab_size * cfg.hidden_size))
    ours["decode_weight_GB_s"] = weight_bytes * ours["decode_tok_s"] / 1e9
    # Python's share: time outside the core's KV-cache steps, per generated token
    core_time = [0.0]

    def timed(fn):
        def run(*a, **k):
            t0 = time.perf_counter()
            r = fn(*a, **k)
            core_time[0] += time.perf_counter() - t0
            return r
        return run

    for name in ("_kv_reset", "_kv_forward", "_kv_reorder"):
        setattr(model, name, timed(getattr(model, name)))
    t0 = time.perf_counter()
    model.generate([prompt], max_new_tokens=N, **gen)
    ours["python_us_per_token"] = (time.perf_counter() - t0 - core_time[0]) / N * 1e6
    for name in ("_kv_reset", "_kv_forward", "_kv_reorder"):
        delattr(model, name)
    res = {"config": dict(hidden=args.hidden, intermediate=args.intermediate, layers=args.layers,
                          heads=args.heads, vocab=args.vocab, params=model.num_parameters()),
           "prompt_len": P, "new_tokens": N, "threads": args.threads, "pyllama": ours}
    print(f"model: {model!r}; prompt {P} tokens, {N} new tokens, batch 1, greedy, {args.threads} threads")
    print(f"pyllama      prefill {ours['prefill_tok_s']:10.1f} tok/s   decode {ours['decode_tok_s']:8.1f} tok/s"
          f"   (decode reads {weight_bytes / 1e6:.0f} MB of weights per token: "
          f"{ours['decode_weight_GB_s']:.1f} GB/s; Python overhead {ours['python_us_per_token']:.0f} us/token)")

    # ------------------------------------------------------------------ Hugging Face
    if not args.no_hf:
        try:
            import torch
            import transformers
        except ImportError:
            print("Hugging Face: torch/transformers not installed (pip install '.[bench]'); skipped")
        else:
            torch.set_num_threads(args.threads)
            hf_cfg = transformers.LlamaConfig(
                vocab_size=cfg.vocab_size, hidden_size=cfg.hidden_size, intermediate_size=cfg.intermediate_size,
                num_hidden_layers=cfg.num_hidden_layers, num_attention_heads=cfg.num_attention_heads,
                num_key_value_heads=cfg.num_key_value_heads, max_position_embeddings=cfg.max_position_embeddings,
                rms_norm_eps=cfg.rms_norm_eps, rope_theta=cfg.rope_theta, tie_word_embeddings=False,
                attn_implementation="eager", bos_token_id=None, eos_token_id=None, pad_token_id=0)
            hf = transformers.LlamaForCausalLM(hf_cfg).float().eval()
            hf.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in model.named_parameters().items()})
            ids = torch.tensor([prompt])
            mask = torch.ones_like(ids)

            def hf_gen(n):
                with torch.inference_mode():
                    return hf.generate(ids, attention_mask=mask, max_new_tokens=n, min_new_tokens=n,
                                       do_sample=False, pad_token_id=0)

            hf_gen(8)  # warm-up
            h_pre = best_of(lambda: hf_gen(1), args.repeats)
            h_all = best_of(lambda: hf_gen(N), args.repeats)
            theirs = {"prefill_tok_s": P / h_pre, "decode_tok_s": (N - 1) / max(h_all - h_pre, 1e-9)}
            same = hf_gen(N)[0, P:].tolist() == model.generate([prompt], max_new_tokens=N, **gen)[0]
            res.update(hf=theirs, same_tokens=same,
                       ratio_prefill=ours["prefill_tok_s"] / theirs["prefill_tok_s"],
                       ratio_decode=ours["decode_tok_s"] / theirs["decode_tok_s"])
            print(f"HF generate  prefill {theirs['prefill_tok_s']:10.1f} tok/s   decode "
                  f"{theirs['decode_tok_s']:8.1f} tok/s   (transformers {transformers.__version__}, "
                  f"torch {torch.__version__})")
            print(f"ratio pyllama/HF: prefill {res['ratio_prefill']:.2f}x, decode {res['ratio_decode']:.2f}x; "
                  f"same greedy tokens: {same}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(res, f, indent=2)
    return res


if __name__ == "__main__":
    main()
