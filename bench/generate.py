"""Decoding speed: pyllama ``generate`` (KV cache in the core, strategies in Python)
against Hugging Face ``generate`` (transformers.LlamaForCausalLM, float32) on the same
weights and threads, and against the memory-bandwidth limit. A thin wrapper over
``pyllama.bench.bench_decode``.

    python bench/generate.py                       # C=288, I=768, L=6, NH=6, V=32000, untied head
    python bench/generate.py --prompt-len 128 --new-tokens 256 --threads 2 --json out.json

Decode: tokens/s of batch-1 greedy decoding, (new_tokens - 1) tokens after the prefill
(time of a full generate minus the time of generate with one new token).
Prefill: tokens/s of the prompt pass (generate with one new token).
Bandwidth: the weight bytes a decode step reads (all but the embedding table, plus one
row of it) per second, against a streaming copy (numpy, read + write bytes).
"""
import argparse
import json

from pyllama import bench


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--hidden", type=int, default=288)
    ap.add_argument("--intermediate", type=int, default=768)
    ap.add_argument("--layers", type=int, default=6)
    ap.add_argument("--heads", type=int, default=6)
    ap.add_argument("--kv-heads", type=int, default=None, help="key/value heads (default: --heads)")
    ap.add_argument("--vocab", type=int, default=32000)
    ap.add_argument("--prompt-len", type=int, default=128)
    ap.add_argument("--new-tokens", type=int, default=256)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--no-hf", action="store_true", help="measure pyllama only")
    ap.add_argument("--json", help="also write the results to this file")
    args = ap.parse_args(argv)
    cfg = dict(vocab_size=args.vocab, hidden_size=args.hidden, intermediate_size=args.intermediate,
               num_hidden_layers=args.layers, num_attention_heads=args.heads,
               num_key_value_heads=args.kv_heads or args.heads, tie_word_embeddings=False)
    bench.set_threads(args.threads)
    bw = bench.measure_bandwidth(256)["bandwidth_GB_s"]
    res = bench.bench_decode(cfg, args.prompt_len, args.new_tokens, args.repeats, not args.no_hf, args.threads, bw)
    rows = res.pop("rows")
    ours = res["pyllama"]
    rows.append(bench._row("prefill", f"prompt {args.prompt_len} (from the same runs)", ours["prefill_tok_s"],
                           "HF generate" if "hf" in res else "-",
                           res["hf"]["prefill_tok_s"] if "hf" in res else None, "tok/s"))
    print(bench.format_table(rows))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(res, f, indent=2)
    return res


if __name__ == "__main__":
    main()
