"""The CUDA backend side by side with PyTorch on the same GPU and weights.

    python bench/gpu.py                  # training step (fp32, bf16) + greedy decoding, 124M-class model
    python bench/gpu.py --size small     # a quick 15M-class run
    python bench/gpu.py --compile        # also torch.compile (adds about a minute)
    python bench/gpu.py --check          # no timing: a pytest-free correctness check against the CPU core
    python bench/gpu.py --attention naive   # train with the (B, NH, T, T) attention kernels (or simt: flash
                                            # without tensor cores) to compare with the default flash attention

Training: one step = forward + backward + clip + AdamW, tokens/s and the ratio to
PyTorch eager (transformers.LlamaForCausalLM, sdpa attention, bf16 autocast for the
bf16 row). Decoding: greedy tokens/s over the KV cache at batch 1 against Hugging Face
generate, and the memory-bandwidth bound (weight bytes read per token). Prints one
line per measurement and, with --json, writes them all to a file.
"""
import argparse
import json
import os
import sys
import time

import numpy as np

import pyllama

SIZES = {
    "small": dict(cfg=dict(vocab_size=4096, hidden_size=288, intermediate_size=768, num_hidden_layers=6,
                           num_attention_heads=6, num_key_value_heads=6, max_position_embeddings=1024), B=8, T=256),
    "124m": dict(cfg=dict(vocab_size=32000, hidden_size=768, intermediate_size=2048, num_hidden_layers=12,
                          num_attention_heads=12, num_key_value_heads=4, max_position_embeddings=1024), B=8, T=512),
}
H200_BW = 4.8e12  # bytes/s, HBM3e
PEAK = {"float32": 67e12, "bfloat16": 989e12}  # H100/H200 SXM dense (fp32 without tensor cores)


def timed(fn, warmup, iters, sync):
    for _ in range(warmup):
        fn()
    sync()
    times = []
    for _ in range(iters):
        t0 = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def segments(model):
    return np.array([(o, k, int(len(s) >= 2)) for _, o, k, s in model.param_segments()], dtype=np.int64)


def bench_train(cfg, B, T, dtype, iters, results):
    model = pyllama.Llama(cfg, seed=0).to("cuda", dtype=dtype)
    g = model._core.gpu
    segs = segments(model)
    ids = np.random.default_rng(0).integers(0, cfg.vocab_size, (B, T)).astype(np.int32)
    state = {"step": 0}

    def step():
        model.zero_grad()
        model(ids, labels=ids, return_logits=False)  # syncs once, for the loss
        model.backward()
        g.clip_grad_norm(1.0)
        state["step"] += 1
        g.adamw_step(segs, 3e-4, 0.9, 0.95, 1e-8, 0.1, state["step"])

    t = timed(step, 2, iters, g.synchronize)
    tok_s = B * T / t
    mfu = model.flops_per_token(T) * tok_s / PEAK[dtype]
    row = {"what": "train_step", "impl": "pyllama", "dtype": dtype, "B": B, "T": T, "s": t, "tok_s": tok_s,
           "mfu": mfu, "cublas": g.uses_cublas, "flash": g.uses_flash_attention,
           "attention": os.environ.get("PYLLAMA_CUDA_ATTENTION", "flash")}
    print(json.dumps(row), flush=True)
    results.append(row)
    return model, tok_s


def bench_torch_train(model, B, T, dtype, iters, results, compile_=False):
    try:
        import torch
        from transformers import LlamaConfig, LlamaForCausalLM
    except ImportError as e:
        print(f"# torch reference skipped: {e}", flush=True)
        return None
    if not torch.cuda.is_available():
        print("# torch reference skipped: torch.cuda is not available", flush=True)
        return None
    c = model.config
    hf_cfg = LlamaConfig(vocab_size=c.vocab_size, hidden_size=c.hidden_size, intermediate_size=c.intermediate_size,
                         num_hidden_layers=c.num_hidden_layers, num_attention_heads=c.num_attention_heads,
                         num_key_value_heads=c.num_key_value_heads, max_position_embeddings=c.max_position_embeddings,
                         rms_norm_eps=c.rms_norm_eps, rope_theta=c.rope_theta,
                         tie_word_embeddings=c.tie_word_embeddings, attn_implementation="sdpa")
    torch.backends.cuda.matmul.allow_tf32 = False
    hf = LlamaForCausalLM(hf_cfg).cuda()
    opt = torch.optim.AdamW(hf.parameters(), lr=3e-4, betas=(0.9, 0.95), weight_decay=0.1, fused=True)
    ids = torch.randint(0, c.vocab_size, (B, T), device="cuda")
    fwd = torch.compile(hf) if compile_ else hf

    def step():
        opt.zero_grad(set_to_none=True)
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=dtype == "bfloat16"):
            loss = fwd(input_ids=ids, labels=ids).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(hf.parameters(), 1.0)
        opt.step()

    t = timed(step, 3 if compile_ else 2, iters, torch.cuda.synchronize)
    row = {"what": "train_step", "impl": "torch.compile" if compile_ else "torch eager", "dtype": dtype, "B": B,
           "T": T, "s": t, "tok_s": B * T / t}
    print(json.dumps(row), flush=True)
    results.append(row)
    del hf, opt
    torch.cuda.empty_cache()
    return B * T / t


def bench_decode(cfg, dtype, n_new, results):
    model = pyllama.Llama(cfg, seed=0).to("cuda", dtype=dtype)
    prompt = np.random.default_rng(1).integers(0, cfg.vocab_size, (1, 16)).astype(np.int32)
    model._kv_reset(1, prompt.shape[1] + n_new + 1)
    zero = np.zeros(1, np.int32)
    t0 = time.perf_counter()
    logits = model._kv_forward(prompt, zero, zero)
    tok = np.array([[int(np.argmax(logits[0]))]], np.int32)
    t1 = time.perf_counter()
    for i in range(n_new):
        logits = model._kv_forward(tok, zero, np.array([prompt.shape[1] + i], np.int32))
        tok[0, 0] = int(np.argmax(logits[0]))
    t2 = time.perf_counter()
    tok_s = n_new / (t2 - t1)
    weight_bytes = model.num_parameters() * (2 if dtype == "bfloat16" else 4)
    row = {"what": "greedy_decode", "impl": "pyllama", "dtype": dtype, "prefill_s": t1 - t0, "tok_s": tok_s,
           "bandwidth_bound_tok_s": H200_BW / weight_bytes, "fraction_of_bound": tok_s / (H200_BW / weight_bytes)}
    print(json.dumps(row), flush=True)
    results.append(row)
    try:
        import torch
        from transformers import LlamaConfig, LlamaForCausalLM

        if not torch.cuda.is_available():
            return
        c = cfg
        hf = LlamaForCausalLM(LlamaConfig(
            vocab_size=c.vocab_size, hidden_size=c.hidden_size, intermediate_size=c.intermediate_size,
            num_hidden_layers=c.num_hidden_layers, num_attention_heads=c.num_attention_heads,
            num_key_value_heads=c.num_key_value_heads, max_position_embeddings=c.max_position_embeddings,
            tie_word_embeddings=c.tie_word_embeddings)).cuda().eval()
        if dtype == "bfloat16":
            hf = hf.to(torch.bfloat16)
        ids = torch.from_numpy(prompt.astype(np.int64)).cuda()
        with torch.no_grad():
            hf.generate(ids, max_new_tokens=4, do_sample=False, min_new_tokens=4)
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            hf.generate(ids, max_new_tokens=n_new, min_new_tokens=n_new, do_sample=False)
            torch.cuda.synchronize()
            t = time.perf_counter() - t0
        row = {"what": "greedy_decode", "impl": "hf generate", "dtype": dtype, "tok_s": n_new / t,
               "ratio_pyllama_over_hf": tok_s / (n_new / t)}
        print(json.dumps(row), flush=True)
        results.append(row)
    except Exception as e:  # the reference is optional
        print(f"# hf generate reference skipped: {type(e).__name__}: {e}", flush=True)


def check():
    """A correctness check without pytest: float32 GPU vs CPU core on logits, loss, every
    gradient, a few AdamW steps and greedy decoding; bf16 loss within 0.05. Exit 1 on a failure."""
    cfg = pyllama.LlamaConfig(vocab_size=300, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                              num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128)
    failures = []

    def close(name, got, ref, tol=1e-4):
        got, ref = np.asarray(got, np.float64), np.asarray(ref, np.float64)
        scale = max(float(np.abs(ref).max()), 1e-30)
        err = float(np.abs(got - ref).max())
        ok = bool(np.all(np.isfinite(got))) and err <= tol * scale
        print(f"{'ok  ' if ok else 'FAIL'} {name}: max err {err:.2e} (scale {scale:.2e})", flush=True)
        if not ok:
            failures.append(name)

    cpu = pyllama.Llama(cfg, seed=0)
    dev = pyllama.Llama(cfg, seed=0).to("cuda")
    rng = np.random.default_rng(0)
    ids = rng.integers(0, cfg.vocab_size, (2, 45))
    labels = ids.copy()
    labels[0, 3] = -100
    a, b = cpu(ids, labels=labels), dev(ids, labels=labels)
    close("logits", b.logits, a.logits)
    close("loss", b.loss, a.loss)
    cpu.backward()
    dev.backward()
    gd = dev.named_grads()
    for k, g in cpu.named_grads().items():
        close(f"grad {k}", gd[k], g)
    # greedy decoding over the KV cache
    toks = {}
    for name, m in (("cpu", cpu), ("gpu", dev)):
        m._kv_reset(1, 64)
        z = np.zeros(1, np.int32)
        lg = m._kv_forward(np.array([[5, 6, 7, 8]], np.int32), z, z)
        out = []
        for i in range(20):
            t = int(np.argmax(lg[0]))
            out.append(t)
            lg = m._kv_forward(np.array([[t]], np.int32), z, np.array([4 + i], np.int32))
        toks[name] = out
    ok = toks["cpu"] == toks["gpu"]
    print(f"{'ok  ' if ok else 'FAIL'} greedy tokens: {toks['gpu']}", flush=True)
    if not ok:
        failures.append("greedy")
    # AdamW on the GPU: loss goes down; bf16 loss within 0.05 of float32
    segs = segments(dev)
    losses = []
    for s in range(10):
        dev.zero_grad()
        losses.append(dev(ids, labels=ids, return_logits=False).loss)
        dev.backward()
        dev._core.gpu.clip_grad_norm(1.0)
        dev._core.gpu.adamw_step(segs, 1e-2, 0.9, 0.95, 1e-8, 0.1, s + 1)
    ok = losses[-1] < losses[0]
    print(f"{'ok  ' if ok else 'FAIL'} adamw losses {losses[0]:.4f} -> {losses[-1]:.4f}", flush=True)
    if not ok:
        failures.append("adamw")
    f32 = pyllama.Llama(cfg, seed=0).to("cuda")
    b16 = pyllama.Llama(cfg, seed=0).to("cuda", dtype="bfloat16")
    l32, l16 = f32(ids, labels=labels).loss, b16(ids, labels=labels).loss
    ok = abs(l32 - l16) <= 0.05
    print(f"{'ok  ' if ok else 'FAIL'} bf16 loss {l16:.4f} vs float32 {l32:.4f}", flush=True)
    if not ok:
        failures.append("bf16")
    # the flash attention kernels on awkward shapes (head sizes 12..256, T = 1, T not a
    # multiple of a block), against the CPU core: also what compute-sanitizer runs them on
    bad = {k: v for k, v in pyllama._core.cuda_check_ops(7).items() if "flash" in k and not v <= 1e-4}
    print(f"{'ok  ' if not bad else 'FAIL'} flash attention kernels vs CPU: {bad or 'all within 1e-4'}", flush=True)
    if bad:
        failures.append("flash attention kernels")
    print("check:", "FAILED " + ", ".join(failures) if failures else "all ok", flush=True)
    return 1 if failures else 0


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", choices=sorted(SIZES), default="124m")
    ap.add_argument("--iters", type=int, default=5)
    ap.add_argument("--decode-tokens", type=int, default=64)
    ap.add_argument("--compile", action="store_true", help="also time torch.compile (slow to start)")
    ap.add_argument("--check", action="store_true", help="correctness check only (no pytest needed)")
    ap.add_argument("--json", help="also write the results to this file")
    ap.add_argument("--attention", choices=["flash", "simt", "naive"], default=None,
                    help="training attention kernels (sets PYLLAMA_CUDA_ATTENTION; default: flash, "
                         "on tensor cores for bf16)")
    args = ap.parse_args(argv)
    if args.attention == "flash":
        os.environ.pop("PYLLAMA_CUDA_ATTENTION", None)
    elif args.attention:
        os.environ["PYLLAMA_CUDA_ATTENTION"] = args.attention
    info = pyllama.build_info()
    print("# build_info:", json.dumps(info), flush=True)
    if not info["cuda_available"]:
        print("no usable CUDA GPU: nothing to benchmark", file=sys.stderr)
        return 2
    if args.check:
        return check()
    spec = SIZES[args.size]
    cfg = pyllama.LlamaConfig(**spec["cfg"])
    B, T = spec["B"], spec["T"]
    results = []
    for dtype in ("float32", "bfloat16"):
        model, ours = bench_train(cfg, B, T, dtype, args.iters, results)
        ref = bench_torch_train(model, B, T, dtype, args.iters, results)
        if ref:
            print(f"# train {dtype}: pyllama / torch eager = {ours / ref:.2f}", flush=True)
        if args.compile and dtype == "bfloat16":
            ref_c = bench_torch_train(model, B, T, dtype, args.iters, results, compile_=True)
            if ref_c:
                print(f"# train {dtype}: pyllama / torch.compile = {ours / ref_c:.2f}", flush=True)
        del model
    for dtype in ("float32", "bfloat16"):
        bench_decode(cfg, dtype, args.decode_tokens, results)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
