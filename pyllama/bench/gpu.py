"""The CUDA backend side by side with PyTorch on the same GPU, in one run.

    python bench/gpu.py                  # 124M-class model: training + decoding, about 2.5 minutes on an H200
    python bench/gpu.py --no-compile     # without the torch.compile row (it compiles for about a minute)
    python bench/gpu.py --size small     # a quick 15M-class run
    python bench/gpu.py --check          # no timing: a pytest-free correctness check against the CPU core
    python bench/gpu.py --json out.json  # also write every row to a file
    python bench/gpu.py --attention naive   # train with the (B, NH, T, T) attention kernels (or simt: flash
                                            # without tensor cores) to compare with the default flash attention
    python bench/gpu.py --matmul cublas  # matmuls through cublasGemmEx (default cuBLASLt; tiled: no cuBLAS)
    python bench/gpu.py --decode-only    # only the decoding rows (and HF generate)
    python bench/gpu.py --profile        # per-op GPU timings of a bf16 training step and of decode steps
    ncu ... python bench/gpu.py --eager-decode 2   # two eager decode steps for Nsight Compute

(``python -m pyllama.bench.gpu`` is the same command: bench/gpu.py wraps this module.)

Model (issue #8): hidden 768, intermediate 2048, 12 layers, 12 heads, 12 kv heads (MHA),
vocab 32000, untied head, about 124M parameters.

Training, one step = forward + backward + clip + AdamW, bf16 at batch 16 x 1024 (then, while
the time budget allows, bf16 again with cublasGemmEx instead of cuBLASLt, and float32 at
4 x 1024). Kernel variants that no GPU measurement has shown faster are not options of the
library: the kernel lab's programs (cuda/lab/README.md: the 64-row flash forward, the
atomic-dQ flash backward, the GEMM attention, cuBLASLt algorithm tuning) time them against
the library's kernels, and tests/gpu/run.sh runs them after this benchmark:
- pyllama: bf16 weights/activations for compute, float32 master weights, gradients and moments;
- torch eager: transformers.LlamaForCausalLM, sdpa attention, float32 weights under
  torch.autocast(bfloat16) (the same mixed precision), fused torch AdamW, TF32 off;
- torch.compile: the same model through torch.compile, in a subprocess with a timeout
  (compilation time not counted; skipped with a note when the budget is spent).
Printed: tokens/s, MFU = flops_per_token * tokens/s / peak, with flops_per_token =
6 * (matmul weights, lm_head included, embedding excluded) + 6 * L * C * T (causal
attention QK^T and PV, forward + backward), peak 989 TFLOP/s dense bf16 (H100/H200 SXM)
or 67 TFLOP/s float32; the ratios; and the peak GPU memory of the run: pyllama's
allocation counter (pyllama._core.cuda_memory_stats, the backend's cudaMalloc'd buffers)
and torch.cuda.max_memory_allocated.

Decoding, greedy, bf16 weights, the same 32-token prompts and 128 new tokens (eos off):
pyllama's model.generate (on-device argmax, greedy chains, CUDA graphs; also one step per
host round trip, without graphs, and at batch 1 without programmatic dependent launch,
with the unfused kernels, and with cuBLAS instead of the 128-bit-load matmul kernel)
against Hugging Face generate (bf16 weights, sdpa), at batch 1 and 16; each timed after a
warm-up of the same length. Targets: >= 2,000 tok/s at batch 1, >= 10,000 tok/s at batch 16.
"""
import argparse
import contextlib
import json
import os
import subprocess
import sys
import time

import numpy as np

import pyllama
from pyllama.optim import segment_table

from .common import timed, write_json
from .references import hf_model, torch_ok

SIZES = {
    # a smoke run of this script (tests/test_bench.py, e.g. on the CPU emulator of tools/cuda_sim)
    "tiny": dict(cfg=dict(vocab_size=256, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                          num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128),
                 train_bf16=(2, 32), train_f32=(2, 32)),
    "small": dict(cfg=dict(vocab_size=4096, hidden_size=288, intermediate_size=768, num_hidden_layers=6,
                           num_attention_heads=6, num_key_value_heads=6, max_position_embeddings=1024),
                  train_bf16=(8, 256), train_f32=(4, 256)),
    "124m": dict(cfg=dict(vocab_size=32000, hidden_size=768, intermediate_size=2048, num_hidden_layers=12,
                          num_attention_heads=12, num_key_value_heads=12, max_position_embeddings=1024),
                 train_bf16=(16, 1024), train_f32=(4, 1024)),
}
PEAK = {"float32": 67e12, "bfloat16": 989e12}  # H100/H200 SXM dense (float32 without tensor cores)
TARGET = {1: 2000.0, 16: 10000.0}  # decode tokens/s (issue #8)
T0 = time.perf_counter()


def elapsed():
    return time.perf_counter() - T0


def emit(row, results):
    print(json.dumps(row), flush=True)
    results.append(row)


@contextlib.contextmanager
def env_set(name, value):
    """Environment variable `name` = value (None: unset) inside the block; restored after.
    The backend reads its switches when a model moves to the GPU."""
    old = os.environ.get(name)
    if value is None:
        os.environ.pop(name, None)
    else:
        os.environ[name] = value
    try:
        yield
    finally:
        if old is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = old


def gib(n):
    return round(n / 2**30, 3)


# ---------------------------------------------------------------------------- training
def train_step(model, segs, ids, step):
    """One training step as the benchmark times it: forward + backward + clip + AdamW."""
    g = model._core
    model.zero_grad()
    model(ids, labels=ids, return_logits=False)  # syncs once, for the loss
    model.backward()
    g.clip_grad_norm(1.0)
    g.adamw_step(segs, 3e-4, 0.9, 0.95, 1e-8, 0.1, step)


def bench_train(cfg, B, T, dtype, results, budget_s):
    core = pyllama._core
    core.cuda_reset_peak_memory()
    base = core.cuda_memory_stats()["bytes_allocated"]
    model = pyllama.Llama(cfg, seed=0).to("cuda", options=pyllama.BackendOptions.from_env(), dtype=dtype)
    g = model._core
    segs = segment_table(model)
    ids = np.random.default_rng(0).integers(0, cfg.vocab_size, (B, T)).astype(np.int32)
    state = {"step": 0}

    def step():
        state["step"] += 1
        train_step(model, segs, ids, state["step"])

    t, n = timed(step, g.synchronize, budget_s=budget_s)
    tok_s = B * T / t
    peak = core.cuda_memory_stats()["peak_bytes_allocated"] - base
    row = {"what": "train_step", "impl": "pyllama", "dtype": dtype, "B": B, "T": T, "s": t, "iters": n,
           "tok_s": tok_s, "mfu": model.flops_per_token(T) * tok_s / PEAK[dtype], "peak_mem_gib": gib(peak),
           "cublas": g.uses_cublas, "matmul": g.matmul_backend,
           "lt_fallbacks": g.matmul_stats()["lt_fallbacks"],
           "flash": g.uses_flash_attention,
           "attention": g.attention_kernels}
    emit(row, results)
    flops = model.flops_per_token(T)
    del model, g
    return row, flops


def bench_torch_train(cfg, B, T, dtype, results, budget_s, flops, compile_=False):
    import torch

    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    hf = hf_model(cfg).cuda()
    opt = torch.optim.AdamW(hf.parameters(), lr=3e-4, betas=(0.9, 0.95), weight_decay=0.1, fused=True)
    ids = torch.randint(0, cfg.vocab_size, (B, T), device="cuda")
    fwd = torch.compile(hf) if compile_ else hf

    def step():
        opt.zero_grad(set_to_none=True)
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=dtype == "bfloat16"):
            loss = fwd(input_ids=ids, labels=ids).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(hf.parameters(), 1.0)
        opt.step()

    t, n = timed(step, torch.cuda.synchronize, warmup=3 if compile_ else 2, budget_s=budget_s)
    tok_s = B * T / t
    row = {"what": "train_step", "impl": "torch.compile" if compile_ else "torch eager", "dtype": dtype,
           "precision": "float32 weights, bf16 autocast" if dtype == "bfloat16" else "float32, TF32 off",
           "B": B, "T": T, "s": t, "iters": n, "tok_s": tok_s, "mfu": flops * tok_s / PEAK[dtype],
           "peak_mem_gib": gib(torch.cuda.max_memory_allocated() - base)}
    emit(row, results)
    del hf, opt, fwd
    torch.cuda.empty_cache()
    return row


def compile_child(args):
    """Runs in a subprocess (see bench_compile): one torch.compile training row, printed as JSON."""
    spec = SIZES[args.size]
    cfg = pyllama.LlamaConfig(**spec["cfg"])
    B, T = spec["train_bf16"]
    bench_torch_train(cfg, B, T, "bfloat16", [], 8.0, args.flops, compile_=True)
    return 0


def bench_compile(args, flops, results, timeout_s):
    """torch.compile in a subprocess, so that a slow compilation can be cut off at the budget."""
    # this module again (-P: the working folder does not go first on sys.path, as it did not for a script)
    safe_path = ["-P"] if sys.version_info >= (3, 11) else []
    cmd = [sys.executable, *safe_path, "-m", "pyllama.bench.gpu", "--size", args.size, "--_compile-child",
           "--_flops", str(flops)]
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s)
    except subprocess.TimeoutExpired:
        print(f"# torch.compile skipped: not done within {timeout_s:.0f}s (compilation included)", flush=True)
        return None
    rows = [ln for ln in p.stdout.splitlines() if ln.startswith("{")]
    if p.returncode != 0 or not rows:
        tail = (p.stderr or p.stdout).strip().splitlines()[-3:]
        print(f"# torch.compile failed (exit {p.returncode}): {' | '.join(tail)}", flush=True)
        return None
    row = json.loads(rows[-1])
    emit(row, results)
    return row


# ---------------------------------------------------------------------------- profile
def print_profile(title, prof, passes):
    """One table: each region's milliseconds per pass, share of the total, launches per pass."""
    total = sum(ms for ms, _ in prof.values())
    print(f"# profile: {title} ({passes} passes, {total / passes:.3f} ms per pass in the timed regions)", flush=True)
    for name, (ms, n) in sorted(prof.items(), key=lambda kv: -kv[1][0]):
        share = 100 * ms / total if total > 0 else 0.0  # 0 on the emulator, which keeps no GPU clock
        print(f"#   {name:32s} {ms / passes:9.3f} ms {share:5.1f}%  x{n / passes:g}", flush=True)


def bench_profile(cfg, B, T, prompt_len, n_new, results):
    """Where the time goes: CUDA-event timings of each op of a bf16 training step (forward,
    backward, AdamW) and of eager decode steps at batch 1 (set_profiling; the GPU waits
    after each pass, and decode steps run without graphs, so the sums run above the
    un-profiled times)."""
    ids = np.random.default_rng(0).integers(0, cfg.vocab_size, (B, T)).astype(np.int32)

    def train_profile(label):
        model = pyllama.Llama(cfg, seed=0).to("cuda", options=pyllama.BackendOptions.from_env(), dtype="bfloat16")
        g = model._core
        segs = segment_table(model)
        for i in range(4):  # the first two warm up
            if i == 2:
                g.set_profiling(True)
            train_step(model, segs, ids, i + 1)
        prof = g.profile()
        g.set_profiling(False)
        print_profile(f"train bfloat16 B={B} T={T}{label} ({g.attention_kernels})", prof, 2)
        results.append({"what": "profile", "pass": "train" + label, "dtype": "bfloat16", "B": B, "T": T,
                        "passes": 2, "attention": g.attention_kernels,
                        "regions": {k: list(v) for k, v in prof.items()}})
        return model, g

    model, g = train_profile("")
    prompt = np.random.default_rng(1).integers(0, cfg.vocab_size, (1, prompt_len))
    kw = dict(max_new_tokens=n_new, do_sample=False, eos_token_id=[])
    for fused in (True, False):
        g.set_decode_options(cuda_graphs=False, fused=fused)
        model.generate(prompt, **kw)
        g.set_profiling(True)
        model.generate(prompt, **kw)
        prof = g.profile()
        g.set_profiling(False)
        steps = max(1, n_new - 1)
        what = "fused" if fused else "unfused"
        print_profile(f"decode bfloat16 B=1, {what} kernels, eager launches", prof, steps)
        results.append({"what": "profile", "pass": f"decode {what}", "dtype": "bfloat16", "B": 1, "passes": steps,
                        "regions": {k: list(v) for k, v in prof.items()}})
    g.set_decode_options(cuda_graphs=True, fused=True)
    del model, g


# ---------------------------------------------------------------------------- decoding
def bench_decode(cfg, Bs, prompt_len, n_new, results, hf):
    """Greedy decoding, bf16: pyllama's generate (graphs, then without) and HF generate."""
    model = pyllama.Llama(cfg, seed=0).to("cuda", options=pyllama.BackendOptions.from_env(), dtype="bfloat16")
    g = model._core
    rng = np.random.default_rng(1)
    out_rows = {}
    for B in Bs:
        prompts = rng.integers(0, cfg.vocab_size, (B, prompt_len)).astype(np.int64)
        kw = dict(max_new_tokens=n_new, do_sample=False, eos_token_id=[])
        row = {"what": "greedy_decode", "impl": "pyllama", "dtype": "bfloat16", "B": B, "prompt": prompt_len,
               "new_tokens": n_new}
        variants = [("tok_s", True, True, True, True), ("tok_s_no_chain", True, True, True, True),
                    ("tok_s_no_graphs", False, True, True, True)]
        if B <= 4:  # the 128-bit-load (and fused) matmul kernels only take <= 4 rows
            variants += [("tok_s_no_pdl", True, True, True, False), ("tok_s_unfused", True, True, False, False),
                         ("tok_s_cublas", True, False, False, False)]
        for key, graphs, gemv, fused, pdl in variants:
            g.set_decode_options(fast_path=True, cuda_graphs=graphs, skinny_gemv=gemv, fused=fused, pdl=pdl)
            # tok_s_no_chain: one step per host round trip (as before greedy chains)
            with env_set("PYLLAMA_CUDA_GREEDY_CHAIN", "0" if key == "tok_s_no_chain" else None):
                model.options = pyllama.BackendOptions.from_env()  # generation reads greedy_chain per call
                # warm-up of the same length: the same cache shape, so the graph is captured
                # before the timed run (steady-state decoding; a capture costs about one step)
                model.generate(prompts, **kw)
                before = g.decode_stats()
                t0 = time.perf_counter()
                out = model.generate(prompts, **kw)
                t = time.perf_counter() - t0
                after = g.decode_stats()
            assert len(out) == B and all(len(x) == n_new for x in out)
            row[key] = B * n_new / t
            if key == "tok_s":
                row["s"] = t
                row["replays"] = after["replays"] - before["replays"]
                row["graph_error"] = after["graph_error"]
        row["target_tok_s"] = TARGET.get(B)
        g.set_decode_options(fast_path=True, cuda_graphs=True, skinny_gemv=True, fused=True, pdl=True)
        emit(row, results)
        out_rows[B] = row
        alt = f"one step per call {row['tok_s_no_chain']:.0f}, no graphs {row['tok_s_no_graphs']:.0f}"
        if "tok_s_cublas" in row:
            alt += (f", no PDL {row['tok_s_no_pdl']:.0f}, unfused {row['tok_s_unfused']:.0f}, "
                    f"cuBLAS matmuls {row['tok_s_cublas']:.0f}")
        if hf is not None:
            import torch

            ids = torch.from_numpy(prompts).cuda()
            mask = torch.ones_like(ids)
            gen = dict(do_sample=False, pad_token_id=0, attention_mask=mask)
            with torch.no_grad():
                hf.generate(ids, max_new_tokens=8, min_new_tokens=8, **gen)  # warm-up
                torch.cuda.synchronize()
                t0 = time.perf_counter()
                o = hf.generate(ids, max_new_tokens=n_new, min_new_tokens=n_new, **gen)
                torch.cuda.synchronize()
                t = time.perf_counter() - t0
            assert o.shape[1] == prompt_len + n_new
            ref = {"what": "greedy_decode", "impl": "hf generate", "dtype": "bfloat16", "B": B,
                   "prompt": prompt_len, "new_tokens": n_new, "s": t, "tok_s": B * n_new / t}
            emit(ref, results)
            print(f"# decode bf16 B={B}: pyllama {row['tok_s']:.0f} tok/s ({alt}), "
                  f"hf generate {ref['tok_s']:.0f} tok/s, ratio {row['tok_s'] / ref['tok_s']:.2f}; "
                  f"target {TARGET.get(B, 0):.0f}", flush=True)
        else:
            print(f"# decode bf16 B={B}: pyllama {row['tok_s']:.0f} tok/s ({alt}); "
                  f"target {TARGET.get(B, 0):.0f}", flush=True)
    del model, g
    return out_rows


# ---------------------------------------------------------------------------- check
def check():
    """A correctness check without pytest: float32 GPU vs CPU core on logits, loss, every
    gradient, greedy decoding (graph, eager and general decode paths, device argmax), a few
    AdamW steps; bf16 loss within 0.05. Exit 1 on a failure."""
    cfg = pyllama.LlamaConfig(vocab_size=300, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                              num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024)
    failures = []

    def close(name, got, ref, tol=1e-4):
        got, ref = np.asarray(got, np.float64), np.asarray(ref, np.float64)
        scale = max(float(np.abs(ref).max()), 1e-30)
        err = float(np.abs(got - ref).max())
        ok = bool(np.all(np.isfinite(got))) and err <= tol * scale
        print(f"{'ok  ' if ok else 'FAIL'} {name}: max err {err:.2e} (scale {scale:.2e})", flush=True)
        if not ok:
            failures.append(name)

    def verdict(name, ok, detail=""):
        print(f"{'ok  ' if ok else 'FAIL'} {name}{': ' + detail if detail else ''}", flush=True)
        if not ok:
            failures.append(name)

    cpu = pyllama.Llama(cfg, seed=0)
    dev = pyllama.Llama(cfg, seed=0).to("cuda", options=pyllama.BackendOptions.from_env())
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

    # greedy decoding over the KV cache: 2 sequences of a 300-token prompt, 100 steps, cache 600
    # (several attention splits: full, partial and empty ones, merged in the last block)
    prompt = np.random.default_rng(5).integers(0, cfg.vocab_size, (2, 300)).astype(np.int32)

    def decode(m, n=100, mode=None, device_argmax=False, chain=0):
        if mode is not None:
            m._core.set_decode_options(fast_path=mode[0], cuda_graphs=mode[1], skinny_gemv=mode[2],
                                           fused=mode[3])
        m._kv_reset(2, 600)
        slots = np.arange(2, dtype=np.int32)
        lg = m._kv_forward(prompt, slots, np.zeros(2, np.int32))
        tok = lg.argmax(-1).astype(np.int32)
        out, logits = [], []
        pending = []
        for i in range(n):
            out.append(tok.tolist())
            step = (tok[:, None], slots, np.full(2, prompt.shape[1] + i, np.int32))
            if chain and not pending:  # greedy chains: several steps fed on the device per call
                pending = list(m._kv_greedy_chain(*step, min(chain, n - i)))
            if pending:
                tok = np.asarray(pending.pop(0), np.int32)
            elif device_argmax:
                tok = np.asarray(m._kv_forward_greedy(*step), np.int32)
            else:
                lg = m._kv_forward(*step)
                logits.append(np.array(lg))
                tok = lg.argmax(-1).astype(np.int32)
        return out, logits

    ref_tokens, ref_logits = decode(cpu)
    for mode_name, mode in (("graphs", (True, True, True, True)), ("eager", (True, False, True, True)),
                            ("graphs, unfused", (True, True, True, False)),
                            ("graphs, cuBLAS", (True, True, False, False)), ("general", (False, False, False, False))):
        toks, logits = decode(dev, mode=mode)
        close(f"decode logits ({mode_name})", np.stack(logits), np.stack(ref_logits))
        verdict(f"decode tokens ({mode_name})", toks == ref_tokens)
    toks, _ = decode(dev, mode=(True, True, True, True), device_argmax=True)
    st = dev.backend_stats()["decode_stats"]
    verdict("device argmax tokens (graphs)", toks == ref_tokens, json.dumps(st))
    verdict("graphs replayed", st["replays"] > 0 and st["graph_error"] == "", json.dumps(st))
    toks, _ = decode(dev, chain=32)
    verdict("greedy chain tokens (graphs)", toks == ref_tokens)

    # AdamW on the GPU: loss goes down; bf16 loss within 0.05 of float32
    segs = segment_table(dev)
    losses = []
    for s in range(10):
        dev.zero_grad()
        losses.append(dev(ids, labels=ids, return_logits=False).loss)
        dev.backward()
        dev._core.clip_grad_norm(1.0)
        dev._core.adamw_step(segs, 1e-2, 0.9, 0.95, 1e-8, 0.1, s + 1)
    verdict("adamw", losses[-1] < losses[0], f"losses {losses[0]:.4f} -> {losses[-1]:.4f}")
    f32 = pyllama.Llama(cfg, seed=0).to("cuda", options=pyllama.BackendOptions.from_env())
    b16 = pyllama.Llama(cfg, seed=0).to("cuda", options=pyllama.BackendOptions.from_env(), dtype="bfloat16")
    l32, l16 = f32(ids, labels=labels).loss, b16(ids, labels=labels).loss
    verdict("bf16 loss", abs(l32 - l16) <= 0.05, f"{l16:.4f} vs float32 {l32:.4f}")
    b16_tokens, _ = decode(b16, n=40, device_argmax=True)
    verdict("bf16 greedy decode runs", len(b16_tokens) == 40)
    verdict("bf16 greedy chains equal single steps", decode(b16, n=40, chain=16)[0] == b16_tokens)
    mem = pyllama._core.cuda_memory_stats()
    verdict("allocation counter", mem["peak_bytes_allocated"] >= mem["bytes_allocated"] > 0, json.dumps(mem))
    # the flash attention kernels on awkward shapes (head sizes 12..256, T = 1, T not a
    # multiple of a block), against the CPU core: also what compute-sanitizer runs them on
    bad = {k: v for k, v in pyllama._core.cuda_check_ops(7).items() if "flash" in k and not v <= 1e-4}
    verdict("flash attention kernels vs CPU", not bad, str(bad or "all within 1e-4"))
    print("check:", "FAILED " + ", ".join(failures) if failures else "all ok", flush=True)
    return 1 if failures else 0


# ---------------------------------------------------------------------------- main
def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", choices=sorted(SIZES), default="124m")
    ap.add_argument("--budget", type=float, default=140.0,
                    help="seconds for the whole run (optional rows are skipped when it is spent; default 140)")
    ap.add_argument("--decode-tokens", type=int, default=128)
    ap.add_argument("--prompt-len", type=int, default=32)
    ap.add_argument("--compile", action="store_true", help="(the default) time torch.compile too")
    ap.add_argument("--no-compile", action="store_true", help="skip the torch.compile row")
    ap.add_argument("--check", action="store_true", help="correctness check only (no pytest needed)")
    ap.add_argument("--decode-only", action="store_true", help="only the decoding rows (and HF generate)")
    ap.add_argument("--eager-decode", type=int, default=0, metavar="N",
                    help="only N eager batch-1 bf16 decode steps, nothing timed (for Nsight Compute to attach)")
    ap.add_argument("--profile", action="store_true",
                    help="only per-op GPU timings (CUDA events) of a bf16 training step and of eager decode steps")
    ap.add_argument("--json", help="also write the results to this file")
    ap.add_argument("--_compile-child", dest="compile_child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--_flops", dest="flops", type=float, default=0.0, help=argparse.SUPPRESS)
    ap.add_argument("--matmul", choices=["cublaslt", "cublas", "tiled"], default=None,
                    help="matmul back end (sets PYLLAMA_CUDA_MATMUL; default: cuBLASLt, and a row with cublasGemmEx)")
    ap.add_argument("--attention", choices=["flash", "simt", "naive"], default=None,
                    help="training attention kernels (sets PYLLAMA_CUDA_ATTENTION; default: flash, "
                         "on tensor cores for bf16)")
    args = ap.parse_args(argv)
    if args.compile_child:
        return compile_child(args)
    if args.matmul:
        os.environ["PYLLAMA_CUDA_MATMUL"] = args.matmul
    if args.attention == "flash":
        os.environ.pop("PYLLAMA_CUDA_ATTENTION", None)
    elif args.attention:
        os.environ["PYLLAMA_CUDA_ATTENTION"] = args.attention
    info = pyllama.build_info()
    print("# build_info:", json.dumps(info), flush=True)
    if not info["cuda"]:
        print("bench/gpu.py: this pyllama build has no CUDA backend (build_info()['cuda'] is False); "
              "nothing to benchmark", file=sys.stderr)
        return 2
    if not info["cuda_available"]:
        print("bench/gpu.py: no usable CUDA GPU (build_info()['cuda_available'] is False); nothing to benchmark",
              file=sys.stderr)
        return 2
    if args.check:
        return check()
    spec = SIZES[args.size]
    cfg = pyllama.LlamaConfig(**spec["cfg"])
    results = []
    why = torch_ok()
    if why:
        print(f"# torch references skipped: {why}", flush=True)
    budget = args.budget
    if args.eager_decode:
        model = pyllama.Llama(cfg, seed=0).to("cuda", options=pyllama.BackendOptions.from_env(), dtype="bfloat16")
        model._core.set_decode_options(cuda_graphs=False)
        prompt = np.random.default_rng(1).integers(0, cfg.vocab_size, (1, args.prompt_len))
        model.generate(prompt, max_new_tokens=args.eager_decode + 1, do_sample=False, eos_token_id=[])
        print(f"# eager decode: {args.eager_decode} steps", flush=True)
        return 0

    def decode_rows():  # decoding at batch 1 and 16, Hugging Face generate beside when torch is there
        hf = None
        if not why:
            import torch

            hf = hf_model(cfg).cuda().to(torch.bfloat16).eval()
        bench_decode(cfg, (1, 16), args.prompt_len, args.decode_tokens, results, hf)
        if hf is not None:
            del hf
            torch.cuda.empty_cache()

    def save():
        if args.json:
            write_json(args.json, results)

    if args.profile:
        B, T = spec["train_bf16"]
        bench_profile(cfg, B, T, args.prompt_len, args.decode_tokens, results)
        save()
        return 0
    if args.decode_only:
        decode_rows()
        save()
        return 0

    # 1. bf16 training: ours, torch eager
    B, T = spec["train_bf16"]
    ours, flops = bench_train(cfg, B, T, "bfloat16", results, budget_s=8.0)
    eager = bench_torch_train(cfg, B, T, "bfloat16", results, 8.0, flops) if not why else None
    variants = []  # (label, row, what the default does instead), printed in the summary

    def variant(env, value, what, against, detail=lambda row: ""):
        """The bf16 training row again with one switch set (while the budget allows)."""
        if elapsed() >= budget - 90:
            return
        try:
            with env_set(env, value):
                row = bench_train(cfg, B, T, "bfloat16", results, budget_s=4.0)[0]
        except Exception as e:  # noqa: BLE001 - report and go on: the default path is what counts
            print(f"# bf16 training with {what} failed: {type(e).__name__}: {e}", flush=True)
            return
        variants.append((what + detail(row), row, against))

    if args.matmul is None:
        # 1b. the matmuls through cublasGemmEx instead of cuBLASLt (residual adds then a copy + beta 1)
        variant("PYLLAMA_CUDA_MATMUL", "cublas", "cublasGemmEx matmuls",
                f" ({ours['matmul']}, {ours['lt_fallbacks']} products refused by cuBLASLt)")
    # (the kernel variants that are not options: cuda/lab's programs time them, tests/gpu/run.sh)
    # 2. decoding at batch 1 and 16
    decode_rows()
    # 3. float32 training at a smaller batch, while the budget allows
    Bf, Tf = spec["train_f32"]
    f32 = f32_ref = None
    if elapsed() < budget - 45:
        f32, _ = bench_train(cfg, Bf, Tf, "float32", results, budget_s=5.0)
        if not why:
            f32_ref = bench_torch_train(cfg, Bf, Tf, "float32", results, 5.0, flops)
    else:
        print(f"# float32 training skipped: {elapsed():.0f}s of the {budget:.0f}s budget spent", flush=True)
    # 4. torch.compile (bf16) with what is left
    comp = None
    if not why and not args.no_compile:
        left = budget - elapsed()
        if left >= 40:
            comp = bench_compile(args, flops, results, left)
        else:
            print(f"# torch.compile skipped: {left:.0f}s of the budget left", flush=True)

    # summary
    def ratio(a, b):
        return f"{a['tok_s'] / b['tok_s']:.2f}" if a and b else "n/a"

    print(f"# train bfloat16 B={B} T={T}: pyllama {ours['tok_s']:.0f} tok/s (MFU {ours['mfu']:.1%}, peak "
          f"{ours['peak_mem_gib']} GiB); / torch eager = {ratio(ours, eager)}"
          + (f" (torch peak {eager['peak_mem_gib']} GiB)" if eager else "")
          + f"; / torch.compile = {ratio(ours, comp)}"
          + (f" (peak {comp['peak_mem_gib']} GiB)" if comp else ""), flush=True)
    for label, row, against in variants:
        print(f"# train bfloat16 B={B} T={T} with {label}: {row['tok_s']:.0f} tok/s (MFU {row['mfu']:.1%}); "
              f"/ default{against} = {ratio(row, ours)}", flush=True)
    if f32:
        print(f"# train float32 B={Bf} T={Tf}: pyllama {f32['tok_s']:.0f} tok/s (MFU {f32['mfu']:.1%}, peak "
              f"{f32['peak_mem_gib']} GiB); / torch eager = {ratio(f32, f32_ref)}", flush=True)
    print(f"# total {elapsed():.0f}s", flush=True)
    save()
    return 0


if __name__ == "__main__":
    sys.exit(main())
