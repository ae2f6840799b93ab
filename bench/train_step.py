"""One training step (forward + backward) of a LLaMA config: pyllama against PyTorch eager
(transformers.LlamaForCausalLM, eager attention) on the same weights and threads.

    python bench/train_step.py                 # 15M-class: C=288, I=768, L=6, NH=6, V=4096, 8 x 256
    python bench/train_step.py --size 124m     # C=768, I=2048, L=12, NH=12, V=32000, 4 x 512
Prints tokens/s for both, the ratio, and pyllama's achieved GFLOP/s.
"""
import argparse
import json
import time

import numpy as np

import pyllama

SIZES = {
    "15m": dict(cfg=dict(vocab_size=4096, hidden_size=288, intermediate_size=768, num_hidden_layers=6,
                         num_attention_heads=6, num_key_value_heads=6, max_position_embeddings=1024), B=8, T=256),
    "124m": dict(cfg=dict(vocab_size=32000, hidden_size=768, intermediate_size=2048, num_hidden_layers=12,
                          num_attention_heads=12, num_key_value_heads=12, max_position_embeddings=1024), B=4, T=512),
}


def timeit(fn, warmup, iters):
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(iters):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", choices=sorted(SIZES), default="15m")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--iters", type=int, default=5)
    ap.add_argument("--json", help="also write the results to this file")
    args = ap.parse_args(argv)
    spec = SIZES[args.size]
    B, T = spec["B"], spec["T"]
    pyllama.set_num_threads(args.threads)
    cfg = pyllama.LlamaConfig(**spec["cfg"])
    model = pyllama.Llama(cfg, seed=0)
    rng = np.random.default_rng(0)
    ids = rng.integers(0, cfg.vocab_size, (B, T)).astype(np.int32)

    def ours():
        model.zero_grad()
        model(ids, labels=ids, return_logits=False)
        model.backward()

    t_ours = timeit(ours, 1, args.iters)
    tok = B * T
    flops = model.flops_per_token(T) * tok
    res = {"size": args.size, "B": B, "T": T, "threads": args.threads,
           "pyllama_tok_s": tok / t_ours, "pyllama_gflops": flops / t_ours / 1e9}
    try:
        import torch
        import transformers
    except ImportError:
        print("torch/transformers not installed: pip install '.[bench]' for the reference side")
    else:
        torch.set_num_threads(args.threads)
        hcfg = transformers.LlamaConfig(**spec["cfg"], attn_implementation="eager", rms_norm_eps=1e-6)
        hf = transformers.LlamaForCausalLM(hcfg).float().train()
        tids = torch.from_numpy(ids.astype(np.int64))

        def theirs():
            hf.zero_grad(set_to_none=False)
            out = hf(input_ids=tids, labels=tids)
            out.loss.backward()

        t_hf = timeit(theirs, 1, args.iters)
        res["torch_tok_s"] = tok / t_hf
        res["ratio"] = t_hf / t_ours
    print(json.dumps(res, indent=1))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(res, f, indent=1)
    return res


if __name__ == "__main__":
    main()
