"""The optimizer step and the whole training step, pyllama against PyTorch on the same model.

    python bench/train_loop.py                  # 15M-class model, 2 threads
    python bench/train_loop.py --threads 1 --iters 20

Prints, side by side with the ratio:
  - AdamW + clip on the model's parameters: pyllama's fused flat pass vs torch.optim.AdamW
    (foreach, and fused where this torch has it) + clip_grad_norm_;
  - a whole Trainer step (forward, backward, clip, AdamW) in tokens/s vs the same loop in
    PyTorch eager (transformers.LlamaForCausalLM, eager attention).
"""
import argparse
import time

import numpy as np

import pyllama

CFG = dict(vocab_size=4096, hidden_size=288, intermediate_size=768, num_hidden_layers=6, num_attention_heads=6,
           num_key_value_heads=6, max_position_embeddings=1024)


def median_time(fn, warmup, iters):
    for _ in range(warmup):
        fn()
    ts = []
    for _ in range(iters):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return float(np.median(ts))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--iters", type=int, default=10)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq", type=int, default=256)
    args = ap.parse_args(argv)
    pyllama.set_num_threads(args.threads)
    import torch

    torch.set_num_threads(args.threads)
    cfg = pyllama.LlamaConfig(**CFG)
    model = pyllama.Llama(cfg, seed=0)
    rng = np.random.default_rng(0)
    model.flat_grads()[:] = rng.standard_normal(model.flat_grads().size).astype(np.float32) * 1e-3
    opt = pyllama.AdamW(model, lr=1e-4)

    def ours_opt():
        pyllama.clip_grad_norm(model, 1.0)
        opt.step()

    t_ours = median_time(ours_opt, 2, args.iters)
    params = [torch.nn.Parameter(torch.from_numpy(np.array(p))) for p in model.named_parameters().values()]
    for p, g in zip(params, model.named_grads().values()):
        p.grad = torch.from_numpy(np.array(g))
    groups = [{"params": [p for p in params if p.ndim == 2], "weight_decay": 0.1},
              {"params": [p for p in params if p.ndim != 2], "weight_decay": 0.0}]
    rows = [("AdamW+clip (ms), %d params" % model.num_parameters(), t_ours * 1e3)]
    for kind in ("foreach", "fused"):
        try:
            topt = torch.optim.AdamW(groups, lr=1e-4, betas=(0.9, 0.95), **{kind: True})

            def torch_opt():
                torch.nn.utils.clip_grad_norm_(params, 1.0)
                topt.step()

            t = median_time(torch_opt, 2, args.iters)
        except (RuntimeError, TypeError) as e:  # fused may be unavailable on this CPU build
            print(f"torch {kind}: unavailable ({e})")
            continue
        print(f"optimizer step: pyllama {t_ours * 1e3:.2f} ms, torch {kind} {t * 1e3:.2f} ms, "
              f"ratio torch/pyllama {t / t_ours:.2f}")

    # whole training step
    data = rng.integers(0, cfg.vocab_size, 200_000).astype(np.uint16)
    tc = pyllama.TrainConfig(batch_size=args.batch, seq_len=args.seq, max_steps=10_000, warmup_steps=10,
                             eval_interval=0, out_dir=None)
    trainer = pyllama.Trainer(model, tc, data, progress=False)
    t_step = median_time(trainer.train_step, 1, max(3, args.iters // 2))
    import transformers

    hf_cfg = transformers.LlamaConfig(**CFG, rms_norm_eps=cfg.rms_norm_eps, attn_implementation="eager",
                                      tie_word_embeddings=False)
    hf = transformers.LlamaForCausalLM(hf_cfg).float().train()
    hopt = torch.optim.AdamW(hf.parameters(), lr=1e-4, betas=(0.9, 0.95), foreach=True)
    ids = torch.from_numpy(rng.integers(0, cfg.vocab_size, (args.batch, args.seq)).astype(np.int64))

    def torch_step():
        hopt.zero_grad()
        hf(input_ids=ids, labels=ids).loss.backward()
        torch.nn.utils.clip_grad_norm_(hf.parameters(), 1.0)
        hopt.step()

    t_torch = median_time(torch_step, 1, max(3, args.iters // 2))
    tok = args.batch * args.seq
    print(f"train step ({args.batch}x{args.seq}, {args.threads} threads): pyllama {tok / t_step:.0f} tok/s, "
          f"torch eager {tok / t_torch:.0f} tok/s, ratio pyllama/torch {t_torch / t_step:.2f}")


if __name__ == "__main__":
    main()
