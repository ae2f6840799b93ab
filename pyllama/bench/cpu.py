"""pyllama's CPU benchmark suite: each benchmark measured side by side with its reference.

    python -m pyllama.bench                      # the full suite (a few minutes on 2 cores)
    pyllama bench --quick                        # tiny sizes, seconds (what the tests run)
    pyllama bench --only train,decode --threads 4 --json out.json --plot curves.png

Benchmarks (``--only`` takes a comma-separated list of these names):

========== ==========================================================================
machine    peak float32 GFLOP/s (large square matmul, pyllama and numpy) and streaming
           memory bandwidth (numpy copy of a >= 256 MB array, read + write bytes)
train      training step (forward + backward) of the 15M-class config, batch 8 x 256:
           pyllama against PyTorch eager, both ``transformers.LlamaForCausalLM`` and a
           plain PyTorch module (:class:`PlainLlama`) holding the same weights
train_large the 124M-class config (hidden 768, 12 layers, vocab 32000), batch 4 x 512
decode     batch-1 greedy decoding, 15M-class with an untied 32000-token head: pyllama
           ``generate`` against Hugging Face ``generate``, and against the memory-bandwidth
           limit (weight bytes a decode step reads / streaming bandwidth)
prefill    the prompt pass of ``generate`` (batch 1, 512 tokens) against Hugging Face
matmul     pyllama's sgemm at the models' shapes against numpy (OpenBLAS)
encode     tokenizer encode (one long text on one thread; a batch of documents on N
           threads) against tiktoken, same vocabulary, ids checked equal
bpe        BPE training against Hugging Face ``tokenizers``
scale_t    training-step cost as T grows (128 ... 2048, same tokens per step)
scale_width training-step GFLOP/s as the model widens (hidden 128 ... 1024)
========== ==========================================================================

Every comparison runs both sides in this process, alternating ours and theirs, on the
same threads (``--threads``, default 2, set for pyllama, PyTorch and OpenBLAS), and
keeps the best of several runs (the median goes to the JSON too). Ratios are stated
so that > 1 means pyllama is faster. The table at the end lists ours, theirs, the
ratio and the issue's target; ``--json`` (default ``bench-results.json``) keeps every
figure; ``--plot`` draws the scaling curves when matplotlib is installed.

References that are not installed (torch, transformers, tiktoken, tokenizers) are
skipped with a message; ``--no-reference`` measures pyllama alone.
"""
from __future__ import annotations

import argparse
import ctypes
import math
import os
import platform
import sys
import time
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

import pyllama

from .. import _core
from .common import _cpu_name, _loadavg, best_ratio, log, paired_ratio, race, write_json
from .references import _import_torch, _import_transformers, hf_llama_from, plain_llama_from

# the package's folder (pyllama/), where the bundled text is, and a source checkout's root above it
PACKAGE_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# --------------------------------------------------------------------------- configurations
CONFIG_15M = dict(vocab_size=4096, hidden_size=288, intermediate_size=768, num_hidden_layers=6,
                  num_attention_heads=6, num_key_value_heads=6)
CONFIG_124M = dict(vocab_size=32000, hidden_size=768, intermediate_size=2048, num_hidden_layers=12,
                   num_attention_heads=12, num_key_value_heads=12)
CONFIG_DECODE = dict(CONFIG_15M, vocab_size=32000, tie_word_embeddings=False)
CONFIG_TINY = dict(vocab_size=512, hidden_size=64, intermediate_size=160, num_hidden_layers=2,
                   num_attention_heads=4, num_key_value_heads=2)

# (name, M, N, K, trans_a, trans_b): forward y = x W^T, backward dx = dy W, dW = dy^T x
MATMUL_SHAPES = [
    ("15m qkv fwd", 2048, 864, 288, False, True),
    ("15m mlp gate|up fwd", 2048, 1536, 288, False, True),
    ("15m down fwd", 2048, 288, 768, False, True),
    ("15m lm_head fwd", 2048, 4096, 288, False, True),
    ("15m lm_head dx", 2048, 288, 4096, False, False),
    ("15m lm_head dW", 4096, 288, 2048, True, False),
    ("124m mlp gate|up fwd", 2048, 4096, 768, False, True),
    ("124m down dx", 2048, 2048, 768, False, False),
    ("124m lm_head fwd", 2048, 32000, 768, False, True),
]
MATMUL_SHAPES_QUICK = [
    ("quick x W^T", 128, 192, 64, False, True),
    ("quick dy W", 128, 64, 192, False, False),
    ("quick dy^T x", 192, 64, 128, True, False),
]

BENCHMARKS = ("machine", "train", "train_large", "decode", "prefill", "matmul", "encode", "bpe",
              "scale_t", "scale_width")
VOCAB_SPECIALS = {"cl100k": ("cl100k_base", {"<|endoftext|>": 100257}),
                  "o200k": ("o200k_base", {"<|endoftext|>": 199999})}


# --------------------------------------------------------------------------- small helpers
def _row(bench: str, what: str, ours: Optional[float], reference: str, theirs: Optional[float], unit: str,
         ratio: Optional[float] = None, target: Optional[float] = None) -> Dict[str, Any]:
    """One line of the final table. ``ratio`` defaults to ours / theirs (higher-is-better units)."""
    if ratio is None and ours is not None and theirs:
        ratio = ours / theirs
    ok = None if ratio is None or target is None else bool(ratio >= target)
    return dict(bench=bench, what=what, ours=ours, reference=reference, theirs=theirs, unit=unit,
                ratio=ratio, target=target, ok=ok)


def set_blas_threads(n: int) -> Optional[int]:
    """Limit numpy's BLAS (OpenBLAS) to ``n`` threads; returns the count set, or None when
    the library could not be found (then numpy uses its own default)."""
    try:
        from threadpoolctl import threadpool_limits  # type: ignore

        threadpool_limits(n, user_api="blas")
        return n
    except ImportError:
        pass
    libs = []
    try:
        with open("/proc/self/maps") as f:
            for line in f:
                p = line.split()[-1]
                if "openblas" in os.path.basename(p).lower() and p not in libs:
                    libs.append(p)
    except OSError:
        return None
    for p in libs:
        try:
            lib = ctypes.CDLL(p)
        except OSError:
            continue
        for sym in ("scipy_openblas_set_num_threads64_", "openblas_set_num_threads64_",
                    "scipy_openblas_set_num_threads", "openblas_set_num_threads"):
            fn = getattr(lib, sym, None)
            if fn is not None:
                fn(ctypes.c_int(n))
                return n
    return None


def set_threads(n: int) -> Dict[str, Any]:
    """Use ``n`` threads in pyllama, PyTorch (when imported later by a benchmark, via
    :func:`_import_torch`) and numpy's BLAS."""
    if n < 1:
        raise ValueError(f"--threads must be >= 1, got {n}")
    pyllama.set_num_threads(n)
    return {"pyllama": pyllama.num_threads(), "blas": set_blas_threads(n)}


# --------------------------------------------------------------------------- machine limits
def measure_peak(n: int = 2048, repeats: int = 3) -> Dict[str, float]:
    """float32 GFLOP/s of an n x n x n matmul, pyllama's sgemm and numpy's (the machine's
    practical peak is the larger)."""
    rng = np.random.default_rng(0)
    a = rng.standard_normal((n, n), dtype=np.float32)
    b = rng.standard_normal((n, n), dtype=np.float32)
    out = np.empty((n, n), np.float32)
    t = race({"pyllama": lambda: _core.matmul(a, b, False, False),
              "numpy": lambda: np.matmul(a, b, out=out)}, repeats)
    gf = 2.0 * n ** 3 / 1e9
    res = {"n": n, "pyllama_gflops": gf / t["pyllama"]["best_s"], "numpy_gflops": gf / t["numpy"]["best_s"]}
    res["peak_gflops"] = max(res["pyllama_gflops"], res["numpy_gflops"])
    return res


def measure_bandwidth(megabytes: int = 256, repeats: int = 5) -> Dict[str, float]:
    """Streaming bandwidth: numpy copy of a ``megabytes`` MB float32 array into another,
    counting read + write bytes (best of ``repeats``)."""
    n = megabytes * (1 << 20) // 4
    src = np.ones(n, np.float32)
    dst = np.zeros(n, np.float32)
    t = race({"copy": lambda: np.copyto(dst, src)}, repeats)["copy"]
    return {"array_MB": megabytes, "bandwidth_GB_s": 2 * src.nbytes / t["best_s"] / 1e9}


def bench_machine(quick: bool) -> Dict[str, Any]:
    """Peak GFLOP/s and streaming bandwidth."""
    log("machine: peak matmul GFLOP/s and streaming memory bandwidth")
    peak = measure_peak(512 if quick else 2048, 3 if quick else 5)
    bw = measure_bandwidth(32 if quick else 256, 3 if quick else 5)
    res = dict(peak, **bw)
    log(f"  peak {res['peak_gflops']:.1f} GFLOP/s (pyllama {res['pyllama_gflops']:.1f}, numpy "
        f"{res['numpy_gflops']:.1f}; {res['n']}^3 matmul), bandwidth {res['bandwidth_GB_s']:.1f} GB/s "
        f"(numpy copy of {res['array_MB']} MB)")
    res["rows"] = [
        _row("machine", f"sgemm {res['n']}^3 vs numpy", res["pyllama_gflops"], "numpy", res["numpy_gflops"],
             "GFLOP/s"),
        _row("machine", "stream copy (read+write)", None, "numpy copy", res["bandwidth_GB_s"], "GB/s"),
    ]
    return res


# --------------------------------------------------------------------------- training step
def bench_train_step(cfg_kw: Dict[str, Any], B: int, T: int, iters: int, reference: bool = True,
                     threads: int = 2, name: str = "train", target: Optional[float] = None,
                     peak_gflops: Optional[float] = None, hf_attn: str = "sdpa") -> Dict[str, Any]:
    """One training step (forward + backward, gradients zeroed first; no optimizer) of
    ``cfg_kw`` on a B x T batch: pyllama, ``transformers.LlamaForCausalLM`` and the plain
    PyTorch module, same weights and batch, alternating, best of ``iters``. Reports
    tokens/s, GFLOP/s (the model's ``flops_per_token`` for every side), the losses of the
    first step (a check that all sides compute the same model) and the ratios."""
    cfg = pyllama.LlamaConfig(**dict(cfg_kw, max_position_embeddings=max(T, 128)))
    model = pyllama.Llama(cfg, seed=0)
    ids = np.random.default_rng(0).integers(0, cfg.vocab_size, (B, T)).astype(np.int32)
    tokens = B * T
    flops = model.flops_per_token(T) * tokens

    def ours():
        model.zero_grad()
        model(ids, labels=ids, return_logits=False)
        model.backward()

    fns: Dict[str, Callable[[], Any]] = {"pyllama": ours}
    losses = {"pyllama": model(ids, labels=ids, return_logits=False).loss}
    torch = _import_torch(threads) if reference else None
    if torch is not None:
        tids = torch.from_numpy(ids.astype(np.int64))
        plain = plain_llama_from(model, torch).train()

        def torch_plain():
            plain.zero_grad(set_to_none=True)
            _, loss = plain(tids, tids)
            loss.backward()

        fns["torch_plain"] = torch_plain
        with torch.no_grad():
            losses["torch_plain"] = float(plain(tids, tids)[1])
        transformers = _import_transformers()
        if transformers is not None:
            hf = hf_llama_from(model, torch, transformers, hf_attn).train()

            def torch_hf():
                hf.zero_grad(set_to_none=True)
                hf(input_ids=tids, labels=tids).loss.backward()

            fns["torch_hf"] = torch_hf
            with torch.no_grad():
                losses["torch_hf"] = float(hf(input_ids=tids, labels=tids).loss)
    t = race(fns, iters, warmup=1)
    res: Dict[str, Any] = {"config": cfg_kw, "B": B, "T": T, "tokens": tokens, "flops_per_step": flops,
                           "loss_first_step": losses, "hf_attn_implementation": hf_attn}
    for side, st in t.items():
        res[side] = dict(st, tok_s=tokens / st["best_s"], gflops=flops / st["best_s"] / 1e9)
    if peak_gflops:
        res["pyllama"]["fraction_of_peak"] = res["pyllama"]["gflops"] / peak_gflops
    rows = []
    label = f"{cfg.hidden_size}x{cfg.num_hidden_layers} V{cfg.vocab_size} {B}x{T}"
    for side, ref in (("torch_hf", "transformers eager"), ("torch_plain", "plain PyTorch")):
        if side in res:
            res[f"ratio_vs_{side}"] = best_ratio(t, "pyllama", side)
            res[f"paired_median_ratio_vs_{side}"] = paired_ratio(t, "pyllama", side)
            rows.append(_row(name, f"fwd+bwd {label}", res["pyllama"]["tok_s"], ref, res[side]["tok_s"], "tok/s",
                             ratio=res[f"ratio_vs_{side}"], target=target))
    if not rows:
        rows.append(_row(name, f"fwd+bwd {label}", res["pyllama"]["tok_s"], "-", None, "tok/s"))
    if peak_gflops:
        rows.append(_row(name, "achieved GFLOP/s vs machine peak", res["pyllama"]["gflops"], "peak",
                         peak_gflops, "GFLOP/s"))
    res["rows"] = rows
    msg = ", ".join(f"{k} {res[k]['tok_s']:.0f} tok/s ({res[k]['gflops']:.1f} GFLOP/s)" for k in t)
    log(f"  {msg}; first-step losses " + ", ".join(f"{k} {v:.5f}" for k, v in losses.items()))
    return res


def bench_train(quick: bool, reference: bool, threads: int, large: bool = False,
                peak_gflops: Optional[float] = None, iters: Optional[int] = None) -> Dict[str, Any]:
    """The issue's training-step benchmarks: 15M-class (8 x 256) or, with ``large``,
    124M-class (4 x 512; few iterations, PyTorch takes many seconds a step)."""
    if quick:
        kw, B, T, n = CONFIG_TINY, 2, 32, 2
    elif large:
        kw, B, T, n = CONFIG_124M, 4, 512, 3
    else:
        kw, B, T, n = CONFIG_15M, 8, 256, 7
    name = "train_large" if large else "train"
    log(f"{name}: training step {kw['hidden_size']}x{kw['num_hidden_layers']} vocab {kw['vocab_size']}, "
        f"batch {B} x {T}" + (" (PyTorch takes several seconds a step here)" if large and not quick else ""))
    return bench_train_step(kw, B, T, iters or n, reference, threads, name, 1.2 if large else 1.5, peak_gflops)


# --------------------------------------------------------------------------- decoding / prefill
def decode_weight_bytes(model: "pyllama.Llama") -> int:
    """Bytes of weights one decode step reads: every parameter except the embedding
    table, plus the one embedding row it looks up (a tied head reads the whole table)."""
    c = model.config
    n = model.num_parameters()
    if not c.tie_word_embeddings:
        n -= c.vocab_size * c.hidden_size - c.hidden_size
    return 4 * n


def bench_decode(cfg_kw: Dict[str, Any], prompt_len: int, new_tokens: int, repeats: int, reference: bool = True,
                 threads: int = 2, bandwidth: Optional[float] = None, hf_attn: str = "sdpa",
                 check_tokens: bool = True) -> Dict[str, Any]:
    """Batch-1 greedy decoding: pyllama ``generate`` against Hugging Face ``generate``.

    Decode tok/s = (new_tokens - 1) / (time of generate(new_tokens) - time of
    generate(1)), so the prompt pass is left out; both sides alternate. Also times the
    core's decode step alone (``_kv_forward``, no Python sampling) and reports the weight
    bytes a step reads per second against the streaming ``bandwidth`` (GB/s)."""
    cfg = pyllama.LlamaConfig(**dict(cfg_kw, max_position_embeddings=max(1024, prompt_len + new_tokens)))
    model = pyllama.Llama(cfg, seed=0)
    prompt = np.random.default_rng(0).integers(0, cfg.vocab_size, prompt_len).tolist()
    gen = dict(eos_token_id=[], do_sample=False)
    fns: Dict[str, Callable[[], Any]] = {
        "pyllama_1": lambda: model.generate([prompt], max_new_tokens=1, **gen),
        "pyllama_n": lambda: model.generate([prompt], max_new_tokens=new_tokens, **gen),
    }
    hf = None
    torch = _import_torch(threads) if reference else None
    transformers = _import_transformers() if torch is not None else None
    if transformers is not None:
        hf = hf_llama_from(model, torch, transformers, hf_attn).eval()
        ids = torch.tensor([prompt])
        mask = torch.ones_like(ids)

        def hf_gen(n):
            with torch.inference_mode():
                return hf.generate(ids, attention_mask=mask, max_new_tokens=n, min_new_tokens=n, do_sample=False,
                                   pad_token_id=0, eos_token_id=None)

        fns["hf_1"] = lambda: hf_gen(1)
        fns["hf_n"] = lambda: hf_gen(new_tokens)

    # the core's decode step alone: the floor under generate's time per token
    def core_steps():
        model._kv_reset(1, prompt_len + new_tokens)
        slot = np.zeros(1, np.int32)
        model._kv_forward(np.asarray([prompt], np.int32), slot, np.zeros(1, np.int32), True)
        tok = np.zeros((1, 1), np.int32)
        t0 = time.perf_counter()
        for i in range(new_tokens - 1):
            model._kv_forward(tok, slot, np.full(1, prompt_len + i, np.int32), True)
        return time.perf_counter() - t0

    t = race(fns, repeats, warmup=1)
    core_t = min(core_steps() for _ in range(max(1, repeats)))
    wbytes = decode_weight_bytes(model)
    n = new_tokens - 1

    def side(prefix):
        d = max(t[prefix + "_n"]["best_s"] - t[prefix + "_1"]["best_s"], 1e-9)
        return {"decode_tok_s": n / d, "prefill_tok_s": prompt_len / t[prefix + "_1"]["best_s"],
                "generate_s": t[prefix + "_n"]["best_s"], "generate_median_s": t[prefix + "_n"]["median_s"]}

    ours = side("pyllama")
    ours["core_step_tok_s"] = n / core_t
    ours["weight_GB_s"] = wbytes * ours["decode_tok_s"] / 1e9
    ours["core_weight_GB_s"] = wbytes * ours["core_step_tok_s"] / 1e9
    res: Dict[str, Any] = {"config": cfg_kw, "prompt_len": prompt_len, "new_tokens": new_tokens,
                           "weight_bytes_per_token": wbytes, "pyllama": ours, "hf_attn_implementation": hf_attn}
    label = f"{cfg.hidden_size}x{cfg.num_hidden_layers} V{cfg.vocab_size}, prompt {prompt_len}"
    rows = []
    if hf is not None:
        res["hf"] = side("hf")
        dec = {k: {"times_s": [max(a - b, 1e-9) for a, b in zip(t[k + "_n"]["times_s"], t[k + "_1"]["times_s"])]}
               for k in ("pyllama", "hf")}
        res["paired_median_ratio_vs_hf"] = paired_ratio(dec, "pyllama", "hf")
        res["ratio_vs_hf"] = ours["decode_tok_s"] / res["hf"]["decode_tok_s"]
        if check_tokens:
            theirs = hf_gen(new_tokens)[0, prompt_len:].tolist()
            res["same_tokens"] = theirs == list(model.generate([prompt], max_new_tokens=new_tokens, **gen)[0])
        rows.append(_row("decode", f"batch 1 greedy, {label}", ours["decode_tok_s"], "HF generate",
                         res["hf"]["decode_tok_s"], "tok/s", ratio=res["ratio_vs_hf"], target=3.0))
    else:
        rows.append(_row("decode", f"batch 1 greedy, {label}", ours["decode_tok_s"], "-", None, "tok/s"))
    if bandwidth:
        res["bandwidth_GB_s"] = bandwidth
        res["fraction_of_bandwidth"] = ours["weight_GB_s"] / bandwidth
        res["core_fraction_of_bandwidth"] = ours["core_weight_GB_s"] / bandwidth
        rows.append(_row("decode", f"weights read/s ({wbytes / 1e6:.0f} MB/token), generate", ours["weight_GB_s"],
                         "stream copy", bandwidth, "GB/s", target=0.5))
        rows.append(_row("decode", "weights read/s, core step alone", ours["core_weight_GB_s"], "stream copy",
                         bandwidth, "GB/s"))
    res["rows"] = rows
    msg = f"  pyllama {ours['decode_tok_s']:.1f} tok/s (core step alone {ours['core_step_tok_s']:.1f}; " \
          f"{ours['weight_GB_s']:.1f} GB/s of weights)"
    if hf is not None:
        msg += f", HF generate {res['hf']['decode_tok_s']:.1f} tok/s"
        if "same_tokens" in res:
            msg += f", same greedy tokens: {res['same_tokens']}"
    log(msg)
    return res


def bench_prefill(cfg_kw: Dict[str, Any], prompt_len: int, repeats: int, reference: bool = True,
                  threads: int = 2, hf_attn: str = "sdpa") -> Dict[str, Any]:
    """The prompt pass: time of ``generate(prompt, max_new_tokens=1)`` (batch 1), pyllama
    against Hugging Face, alternating; tokens/s of the prompt."""
    cfg = pyllama.LlamaConfig(**dict(cfg_kw, max_position_embeddings=max(1024, prompt_len + 1)))
    model = pyllama.Llama(cfg, seed=0)
    prompt = np.random.default_rng(1).integers(0, cfg.vocab_size, prompt_len).tolist()
    fns: Dict[str, Callable[[], Any]] = {
        "pyllama": lambda: model.generate([prompt], max_new_tokens=1, eos_token_id=[], do_sample=False)}
    torch = _import_torch(threads) if reference else None
    transformers = _import_transformers() if torch is not None else None
    if transformers is not None:
        hf = hf_llama_from(model, torch, transformers, hf_attn).eval()
        ids = torch.tensor([prompt])
        mask = torch.ones_like(ids)

        def hf_pre():
            with torch.inference_mode():
                hf.generate(ids, attention_mask=mask, max_new_tokens=1, do_sample=False, pad_token_id=0,
                            eos_token_id=None)

        fns["hf"] = hf_pre
    t = race(fns, repeats, warmup=1)
    res: Dict[str, Any] = {"config": cfg_kw, "prompt_len": prompt_len, "hf_attn_implementation": hf_attn}
    for k, st in t.items():
        res[k] = dict(st, tok_s=prompt_len / st["best_s"])
    label = f"{cfg.hidden_size}x{cfg.num_hidden_layers} V{cfg.vocab_size}, {prompt_len} tokens"
    if "hf" in res:
        res["ratio_vs_hf"] = best_ratio(t, "pyllama", "hf")
        res["rows"] = [_row("prefill", label, res["pyllama"]["tok_s"], "HF generate", res["hf"]["tok_s"], "tok/s",
                            ratio=res["ratio_vs_hf"])]
    else:
        res["rows"] = [_row("prefill", label, res["pyllama"]["tok_s"], "-", None, "tok/s")]
    log("  " + ", ".join(f"{k} {res[k]['tok_s']:.0f} tok/s" for k in t))
    return res


# --------------------------------------------------------------------------- matmul
def bench_matmul(shapes: Sequence[Tuple[str, int, int, int, bool, bool]], iters: int,
                 reference: bool = True) -> Dict[str, Any]:
    """pyllama's sgemm (``_core.matmul(a, b, trans_a, trans_b)``) against ``np.matmul``
    at each shape, alternating, best of ``iters``; also the max abs difference."""
    rng = np.random.default_rng(0)
    out = []
    rows = []
    for name, M, N, K, ta, tb in shapes:
        a = rng.standard_normal((K, M) if ta else (M, K), dtype=np.float32)
        b = rng.standard_normal((N, K) if tb else (K, N), dtype=np.float32)
        an, bn = (a.T if ta else a), (b.T if tb else b)
        fns = {"pyllama": lambda: _core.matmul(a, b, ta, tb)}
        if reference:
            fns["numpy"] = lambda: np.matmul(an, bn)
        t = race(fns, iters, warmup=1)
        gf = 2.0 * M * N * K / 1e9
        r = dict(shape=name, M=M, N=N, K=K, trans_a=ta, trans_b=tb, pyllama_gflops=gf / t["pyllama"]["best_s"])
        if reference:
            r["numpy_gflops"] = gf / t["numpy"]["best_s"]
            r["ratio"] = best_ratio(t, "pyllama", "numpy")
            r["max_abs_err"] = float(np.abs(_core.matmul(a, b, ta, tb) - np.matmul(an, bn)).max())
        out.append(r)
        rows.append(_row("matmul", f"{name} {M}x{N}x{K}", r["pyllama_gflops"], "numpy" if reference else "-",
                         r.get("numpy_gflops"), "GFLOP/s", ratio=r.get("ratio"), target=0.9 if reference else None))
        log(f"  {name:22s} M={M:5d} N={N:5d} K={K:5d}: pyllama {r['pyllama_gflops']:6.1f} GFLOP/s"
            + (f", numpy {r['numpy_gflops']:6.1f}, ratio {r['ratio']:.2f}x" if reference else ""))
    res: Dict[str, Any] = {"shapes": out, "rows": rows}
    if reference and out:
        res["geomean_ratio"] = float(math.exp(np.mean([math.log(r["ratio"]) for r in out])))
        res["min_ratio"] = float(min(r["ratio"] for r in out))
    return res


# --------------------------------------------------------------------------- tokenizer
def default_text_path() -> str:
    """The text that ships with the package (``pyllama/data/shakespeare.txt``)."""
    p = os.path.join(PACKAGE_DIR, "data", "shakespeare.txt")
    if not os.path.isfile(p):
        raise FileNotFoundError(f"the bundled text {p!r} is missing; pass a text file")
    return p


def read_text(path: Optional[str] = None, max_bytes: Optional[int] = None) -> str:
    with open(path or default_text_path(), encoding="utf-8", newline="") as f:
        text = f.read()
    if max_bytes is not None:
        text = text[:max_bytes]
    return text


def find_vocab_file(name: str = "cl100k", path: Optional[str] = None) -> Optional[str]:
    """A ``.tiktoken`` file (plain or gzipped) for the ``cl100k``/``o200k`` vocabulary:
    ``path`` when given, else ``$PYLLAMA_TIKTOKEN_DIR``, else the repository's
    ``tests/data`` next to the package (a source checkout), else None."""
    if path:
        if not os.path.isfile(path):
            raise FileNotFoundError(f"vocabulary file {path!r} does not exist")
        return path
    base = VOCAB_SPECIALS[name][0]
    dirs = [os.environ.get("PYLLAMA_TIKTOKEN_DIR", ""), os.path.join(PACKAGE_DIR, "..", "tests", "data")]
    for d in dirs:
        for ext in (".tiktoken", ".tiktoken.gz"):
            p = os.path.join(d, base + ext)
            if d and os.path.isfile(p):
                return os.path.abspath(p)
    return None


def _tiktoken_from(tok: "pyllama.Tokenizer", name: str):
    """A ``tiktoken.Encoding`` with ``tok``'s vocabulary, pattern and special tokens."""
    import tiktoken

    specials = tok.special_tokens
    special_ids = set(specials.values())
    ranks = {}
    for i in range(tok.n_vocab):
        if i in special_ids:
            continue
        try:
            ranks[tok.token_bytes(i)] = i
        except (IndexError, ValueError):  # a hole in the ranks (cl100k has one at 100256)
            pass
    return tiktoken.Encoding(name, pat_str=tok.pattern_regex, mergeable_ranks=ranks, special_tokens=specials)


def load_encode_pair(vocab: str = "cl100k", vocab_file: Optional[str] = None, text: str = "",
                     need_reference: bool = True):
    """(pyllama tokenizer, tiktoken encoding or None, description). Uses the real
    vocabulary file when one is found (:func:`find_vocab_file`); otherwise trains a
    4096-token vocabulary on ``text`` with pyllama and builds tiktoken from the same ranks."""
    path = find_vocab_file(vocab, vocab_file)
    if path is not None:
        ours = pyllama.Tokenizer.from_tiktoken(path, vocab, VOCAB_SPECIALS[vocab][1])
        desc = f"{VOCAB_SPECIALS[vocab][0]} ({os.path.basename(path)})"
    else:
        log(f"  no {VOCAB_SPECIALS[vocab][0]}.tiktoken found (pass --vocab-file or set PYLLAMA_TIKTOKEN_DIR): "
            "using a 4096-token vocabulary trained on the text")
        ours = pyllama.Tokenizer.train([text], 4096, vocab, ["<|endoftext|>"], progress=False)
        desc = f"trained 4096-token vocabulary, {vocab} pattern"
    ref = None
    if need_reference:
        try:
            import tiktoken  # noqa: F401
        except ImportError:
            log("tiktoken is not installed (pip install 'pyllama[bench]'): encode reference skipped")
        else:
            ref = _tiktoken_from(ours, vocab)
    return ours, ref, desc


def bench_encode(text: str, repeats: int, threads: int, reference: bool = True, vocab: str = "cl100k",
                 vocab_file: Optional[str] = None) -> Dict[str, Any]:
    """Encode speed (MB/s of UTF-8 input): one long text on one thread, and a batch of
    documents (the text's paragraphs) on ``threads`` threads, pyllama against tiktoken
    with the same vocabulary; ids are checked equal. pyllama keeps a cache of encoded
    pieces, so each is timed twice: warm (the text was encoded before) and the first
    pass of a freshly loaded tokenizer (empty cache)."""
    import pickle

    ours, ref, desc = load_encode_pair(vocab, vocab_file, text, reference)
    mb = len(text.encode()) / 1e6
    docs = [d for d in text.split("\n\n") if d]
    mb_docs = sum(len(d.encode()) for d in docs) / 1e6
    res: Dict[str, Any] = {"vocab": desc, "text_MB": mb, "n_docs": len(docs), "threads": threads}
    ids = ours.encode_ordinary(text)
    res["tokens"] = len(ids)
    if ref is not None:
        res["same_ids"] = ids == ref.encode_ordinary(text) and \
            ours.encode_batch(docs, num_threads=threads) == ref.encode_ordinary_batch(docs, num_threads=threads)
        if not res["same_ids"]:
            log("  WARNING: pyllama's ids differ from tiktoken's")
    blob = pickle.dumps(ours)
    fresh = [pickle.loads(blob) for _ in range(2 * (repeats + 1))]  # new tokenizers: empty piece caches
    single = {"pyllama": lambda: ours.encode_ordinary(text),
              "pyllama_first_pass": lambda: fresh.pop().encode_ordinary(text)}
    batch = {"pyllama": lambda: ours.encode_batch(docs, num_threads=threads),
             "pyllama_first_pass": lambda: fresh.pop().encode_batch(docs, num_threads=threads)}
    if ref is not None:
        single["tiktoken"] = lambda: ref.encode_ordinary(text)
        batch["tiktoken"] = lambda: ref.encode_ordinary_batch(docs, num_threads=threads)
    rows = []
    for key, fns, size, what in (("single", single, mb, "1 thread, one text"),
                                 ("batch", batch, mb_docs, f"batch of {len(docs)} docs, {threads} threads")):
        t = race(fns, repeats, warmup=1)
        res[key] = {k: dict(st, MB_s=size / st["best_s"]) for k, st in t.items()}
        theirs = res[key]["tiktoken"]["MB_s"] if "tiktoken" in res[key] else None
        for side, how in (("pyllama", "warm"), ("pyllama_first_pass", "first pass")):
            ratio = best_ratio(t, side, "tiktoken") if theirs else None
            res[key][side]["ratio"] = ratio
            rows.append(_row("encode", f"{what}, {how}, {desc.split(' (')[0]}", res[key][side]["MB_s"],
                             "tiktoken" if theirs else "-", theirs, "MB/s", ratio=ratio))
        log(f"  {what}: " + ", ".join(f"{k} {v['MB_s']:.1f} MB/s" for k, v in res[key].items()))
    res["rows"] = rows
    return res


def bench_bpe(text: str, vocab_sizes: Sequence[int], repeats: int, reference: bool = True,
              threads: int = 2) -> Dict[str, Any]:
    """BPE training time with the cl100k pattern, pyllama against Hugging Face
    ``tokenizers`` (``Split(same regex)`` + ``ByteLevel``, ``BpeTrainer``), and the
    number of tokens each trained vocabulary gives the text."""
    hf = None
    if reference:
        try:
            from tokenizers import Regex, Tokenizer, models, pre_tokenizers, trainers
            hf = True
        except ImportError:
            log("tokenizers is not installed (pip install 'pyllama[bench]'): BPE-training reference skipped")
    mb = len(text.encode()) / 1e6
    pattern = pyllama.Tokenizer.from_ranks([bytes([b]) for b in range(256)], "cl100k").pattern_regex
    res: Dict[str, Any] = {"text_MB": mb, "sizes": []}
    rows = []
    for v in vocab_sizes:
        holder: Dict[str, Any] = {}

        def ours():
            holder["pyllama"] = pyllama.Tokenizer.train([text], v, "cl100k", ["<|endoftext|>"], progress=False)

        fns = {"pyllama": ours}
        if hf:
            def theirs():
                tk = Tokenizer(models.BPE())
                tk.pre_tokenizer = pre_tokenizers.Sequence([
                    pre_tokenizers.Split(Regex(pattern), behavior="isolated"),
                    pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
                tr = trainers.BpeTrainer(vocab_size=v, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                         special_tokens=["<|endoftext|>"], show_progress=False)
                tk.train_from_iterator([text], tr)
                holder["tokenizers"] = tk

            fns["tokenizers"] = theirs
        t = race(fns, repeats, warmup=0)
        r: Dict[str, Any] = {"vocab_size": v, "pyllama": t["pyllama"],
                             "pyllama_tokens": len(holder["pyllama"].encode_ordinary(text))}
        if hf:
            r["tokenizers"] = t["tokenizers"]
            r["tokenizers_tokens"] = len(holder["tokenizers"].encode(text, add_special_tokens=False).ids)
            r["ratio"] = best_ratio(t, "pyllama", "tokenizers")
        res["sizes"].append(r)
        # seconds: lower is better, so the ratio is theirs / ours
        rows.append(_row("bpe", f"train vocab {v}, {mb:.2f} MB", t["pyllama"]["best_s"],
                         "tokenizers" if hf else "-", t["tokenizers"]["best_s"] if hf else None, "s",
                         ratio=r.get("ratio")))
        log(f"  vocab {v}: pyllama {t['pyllama']['best_s']:.3f}s"
            + (f", tokenizers {t['tokenizers']['best_s']:.3f}s (tokens {r['pyllama_tokens']} vs "
               f"{r['tokenizers_tokens']})" if hf else ""))
    res["rows"] = rows
    return res


# --------------------------------------------------------------------------- scaling
def bench_scale_t(Ts: Sequence[int], tokens: int, iters: int, reference: bool = True, threads: int = 2,
                  cfg_kw: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
    """Training-step cost as T grows, at a fixed number of tokens per step (B = tokens / T):
    the per-token cost rises with T only through attention (O(T) per token)."""
    cfg_kw = dict(cfg_kw or CONFIG_15M)
    points = []
    for T in Ts:
        B = max(1, tokens // T)
        log(f"  T={T} (batch {B})")
        r = _scale_point(cfg_kw, B, T, iters, reference, threads)
        points.append(r)
    return {"config": cfg_kw, "tokens_per_step": tokens, "points": points,
            "rows": [_scale_row("scale_t", f"T={p['T']} (batch {p['B']}), hidden {cfg_kw['hidden_size']}", p)
                     for p in points]}


def bench_scale_width(widths: Sequence[int], B: int, T: int, layers: int, iters: int, reference: bool = True,
                      threads: int = 2, vocab: int = 4096) -> Dict[str, Any]:
    """Training-step GFLOP/s as the model widens (head size 64 where it divides,
    intermediate = 8/3 hidden rounded to 32, fixed layers, B x T)."""
    points = []
    for C in widths:
        nh = max(1, C // 64) if C % 64 == 0 else max(1, C // 32)
        inter = int(round(8 * C / 3 / 32)) * 32
        kw = dict(vocab_size=vocab, hidden_size=C, intermediate_size=inter, num_hidden_layers=layers,
                  num_attention_heads=nh, num_key_value_heads=nh)
        log(f"  hidden {C} (intermediate {inter}, {layers} layers, {nh} heads)")
        points.append(_scale_point(kw, B, T, iters, reference, threads))
    return {"B": B, "T": T, "layers": layers, "points": points,
            "rows": [_scale_row("scale_width", f"hidden {p['hidden']}, {layers} layers, {B}x{T}", p) for p in points]}


def _scale_row(bench: str, what: str, p: Dict[str, Any]) -> Dict[str, Any]:
    theirs = p["torch_plain"]["tok_s"] if "torch_plain" in p else None
    return _row(bench, what, p["pyllama"]["tok_s"], "plain PyTorch" if theirs else "-", theirs, "tok/s",
                ratio=p.get("ratio"))


def _scale_point(cfg_kw, B, T, iters, reference, threads) -> Dict[str, Any]:
    cfg = pyllama.LlamaConfig(**dict(cfg_kw, max_position_embeddings=max(T, 128)))
    model = pyllama.Llama(cfg, seed=0)
    ids = np.random.default_rng(0).integers(0, cfg.vocab_size, (B, T)).astype(np.int32)
    flops = model.flops_per_token(T) * B * T

    def ours():
        model.zero_grad()
        model(ids, labels=ids, return_logits=False)
        model.backward()

    fns = {"pyllama": ours}
    torch = _import_torch(threads) if reference else None
    if torch is not None:
        plain = plain_llama_from(model, torch).train()
        tids = torch.from_numpy(ids.astype(np.int64))

        def theirs():
            plain.zero_grad(set_to_none=True)
            plain(tids, tids)[1].backward()

        fns["torch_plain"] = theirs
    t = race(fns, iters, warmup=1)
    r: Dict[str, Any] = {"hidden": cfg.hidden_size, "B": B, "T": T, "params": model.num_parameters()}
    for k, st in t.items():
        r[k] = dict(st, us_per_token=st["best_s"] / (B * T) * 1e6, tok_s=B * T / st["best_s"],
                    gflops=flops / st["best_s"] / 1e9)
    if "torch_plain" in r:
        r["ratio"] = best_ratio(t, "pyllama", "torch_plain")
    log("    " + ", ".join(f"{k} {r[k]['us_per_token']:.1f} us/token ({r[k]['gflops']:.1f} GFLOP/s)" for k in t))
    return r


def plot_scaling(results: Dict[str, Any], path: str, peak: Optional[float] = None) -> bool:
    """PNG of the scaling curves (µs/token against T; GFLOP/s against width). Returns
    False (with a message) when matplotlib is missing or there is nothing to draw."""
    st, sw = results.get("scale_t"), results.get("scale_width")
    if not st and not sw:
        log("plot: no scaling results to draw (run scale_t or scale_width)")
        return False
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log("plot: matplotlib is not installed (pip install matplotlib); no plot written")
        return False
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    labels = {"pyllama": "pyllama", "torch_plain": "PyTorch eager (plain module)"}
    if st:
        ax = axes[0]
        for k, lab in labels.items():
            pts = [p for p in st["points"] if k in p]
            if pts:
                ax.plot([p["T"] for p in pts], [p[k]["us_per_token"] for p in pts], "o-", label=lab)
        ax.set_xscale("log", base=2)
        ax.set_xlabel("sequence length T (tokens per step fixed)")
        ax.set_ylabel("training step, µs per token")
        ax.set_ylim(bottom=0)
        ax.set_title(f"cost vs T (hidden {st['config']['hidden_size']}, {st['config']['num_hidden_layers']} layers)")
        ax.grid(alpha=0.3)
        ax.legend()
    if sw:
        ax = axes[1]
        for k, lab in labels.items():
            pts = [p for p in sw["points"] if k in p]
            if pts:
                ax.plot([p["hidden"] for p in pts], [p[k]["gflops"] for p in pts], "o-", label=lab)
        if peak:
            ax.axhline(peak, color="gray", ls="--", label=f"matmul peak {peak:.0f}")
        ax.set_ylim(bottom=0)
        ax.set_xlabel("hidden size")
        ax.set_ylabel("training step GFLOP/s")
        ax.set_title(f"throughput vs width ({sw['layers']} layers, {sw['B']} x {sw['T']})")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    log(f"plot written to {path}")
    return True


# --------------------------------------------------------------------------- the suite
def run_suite(only: Optional[Sequence[str]] = None, quick: bool = False, threads: int = 2,
              reference: bool = True, text_path: Optional[str] = None,
              vocab_file: Optional[str] = None) -> Dict[str, Any]:
    """Run the chosen benchmarks (all by default) and return the results: ``meta``,
    ``results`` (name → that benchmark's figures) and ``table`` (the rows printed at the
    end: bench, what, ours, reference, theirs, unit, ratio, target, ok)."""
    names = list(only) if only else list(BENCHMARKS)
    bad = [n for n in names if n not in BENCHMARKS]
    if bad:
        raise ValueError(f"unknown benchmark(s) {', '.join(bad)}; choose from {', '.join(BENCHMARKS)}")
    thr = set_threads(threads)
    if reference:  # tokenizers' thread pool reads this when it starts
        os.environ.setdefault("RAYON_NUM_THREADS", str(threads))
    meta = {"pyllama": pyllama.__version__, "build": pyllama.build_info(), "threads": thr, "quick": quick,
            "reference": reference, "python": platform.python_version(), "machine": platform.machine(),
            "cpu": _cpu_name(), "cpu_count": os.cpu_count(), "load_average_start": _loadavg(),
            "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"), "numpy": np.__version__,
            "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    results: Dict[str, Any] = {}
    t_start = time.perf_counter()
    need_machine = "machine" in names or any(n in names for n in ("train", "train_large", "decode"))
    if need_machine:
        results["machine"] = bench_machine(quick)
    peak = results.get("machine", {}).get("peak_gflops")
    bw = results.get("machine", {}).get("bandwidth_GB_s")
    text = None
    for name in names:
        if name == "machine":
            continue
        t0 = time.perf_counter()
        if name == "train":
            results[name] = bench_train(quick, reference, threads, False, peak)
        elif name == "train_large":
            results[name] = bench_train(quick, reference, threads, True, peak)
        elif name == "decode":
            kw, P, N, rep = (dict(CONFIG_TINY, tie_word_embeddings=False), 8, 16, 2) if quick else \
                (CONFIG_DECODE, 128, 256, 5)
            log(f"decode: batch 1 greedy, {kw['hidden_size']}x{kw['num_hidden_layers']} vocab {kw['vocab_size']} "
                f"untied, prompt {P}, {N} new tokens")
            results[name] = bench_decode(kw, P, N, rep, reference, threads, bw)
        elif name == "prefill":
            kw, P, rep = (dict(CONFIG_TINY, tie_word_embeddings=False), 32, 2) if quick else (CONFIG_DECODE, 512, 7)
            log(f"prefill: batch 1, {P}-token prompt, {kw['hidden_size']}x{kw['num_hidden_layers']} "
                f"vocab {kw['vocab_size']}")
            results[name] = bench_prefill(kw, P, rep, reference, threads)
        elif name == "matmul":
            log("matmul: pyllama sgemm vs numpy at the models' shapes")
            results[name] = bench_matmul(MATMUL_SHAPES_QUICK if quick else MATMUL_SHAPES, 3 if quick else 11,
                                         reference)
        elif name in ("encode", "bpe"):
            if text is None:
                text = read_text(text_path, 50_000 if quick else None)
            if name == "encode":
                log(f"encode: {len(text.encode()) / 1e6:.2f} MB against tiktoken")
                results[name] = bench_encode(text, 2 if quick else 5, threads, reference, "cl100k", vocab_file)
            else:
                sizes = [512] if quick else [4096, 32768]
                log(f"bpe: training vocabularies of {', '.join(map(str, sizes))} on "
                    f"{len(text.encode()) / 1e6:.2f} MB against tokenizers")
                results[name] = bench_bpe(text, sizes, 1 if quick else 2, reference, threads)
        elif name == "scale_t":
            Ts, tok, it = ([16, 32, 64], 64, 1) if quick else ([128, 256, 512, 1024, 2048], 2048, 3)
            log(f"scale_t: training-step cost for T in {Ts}, {tok} tokens per step")
            results[name] = bench_scale_t(Ts, tok, it, reference, threads, CONFIG_TINY if quick else CONFIG_15M)
        elif name == "scale_width":
            ws, B, T, L, it = ([32, 64], 2, 32, 2, 1) if quick else ([128, 256, 512, 768, 1024], 4, 256, 4, 3)
            log(f"scale_width: training-step GFLOP/s for hidden in {ws}, {L} layers, {B} x {T}")
            results[name] = bench_scale_width(ws, B, T, L, it, reference, threads)
        results[name]["seconds"] = time.perf_counter() - t0
        if need_machine and not quick:
            _sample_peak(results["machine"])
    if need_machine and not quick:
        _fix_peak_rows(results)
    meta["seconds"] = time.perf_counter() - t_start
    meta["load_average_end"] = _loadavg()
    table = [row for r in results.values() for row in r.get("rows", [])]
    return {"meta": meta, "results": results, "table": table}


def _sample_peak(m: Dict[str, Any]) -> None:
    """Measure the square-matmul peak again and keep the highest: the capacity a shared
    machine gives this process changes from minute to minute, and a peak measured in a
    busy moment would understate it (sampled after every benchmark). The same for the
    streaming bandwidth."""
    again = measure_peak(m["n"], 3)
    m.setdefault("peak_samples", [m["peak_gflops"]]).append(again["peak_gflops"])
    for k in ("pyllama_gflops", "numpy_gflops", "peak_gflops"):
        m[k] = max(m[k], again[k])
    bw = measure_bandwidth(m["array_MB"], 3)["bandwidth_GB_s"]
    m.setdefault("bandwidth_samples", [m["bandwidth_GB_s"]]).append(bw)
    m["bandwidth_GB_s"] = max(m["bandwidth_GB_s"], bw)


def _fix_peak_rows(results: Dict[str, Any]) -> None:
    """Point the table rows and fractions at the final (highest sampled) peak and bandwidth."""
    m = results["machine"]
    m["rows"][0].update(ours=m["pyllama_gflops"], theirs=m["numpy_gflops"],
                        ratio=m["pyllama_gflops"] / m["numpy_gflops"])
    m["rows"][1].update(theirs=m["bandwidth_GB_s"])
    d = results.get("decode")
    if d and "bandwidth_GB_s" in d:
        bw = d["bandwidth_GB_s"] = m["bandwidth_GB_s"]
        d["fraction_of_bandwidth"] = d["pyllama"]["weight_GB_s"] / bw
        d["core_fraction_of_bandwidth"] = d["pyllama"]["core_weight_GB_s"] / bw
        for row in d["rows"]:
            if row["reference"] == "stream copy":
                row.update(theirs=bw, ratio=row["ours"] / bw)
                row["ok"] = None if row["target"] is None else bool(row["ratio"] >= row["target"])
    for r in results.values():
        for row in r.get("rows", []):
            if row["reference"] == "peak":
                row.update(theirs=m["peak_gflops"], ratio=row["ours"] / m["peak_gflops"])
        if isinstance(r.get("pyllama"), dict) and "fraction_of_peak" in r["pyllama"]:
            r["pyllama"]["fraction_of_peak"] = r["pyllama"]["gflops"] / m["peak_gflops"]


def _fmt(x: Optional[float]) -> str:
    if x is None:
        return "-"
    if x >= 1000:
        return f"{x:,.0f}"
    if x >= 10:
        return f"{x:.1f}"
    return f"{x:.3g}"


def format_table(table: Sequence[Dict[str, Any]]) -> str:
    """The final table as text: one line per comparison, ratio > 1 means pyllama is faster."""
    head = ("bench", "what", "pyllama", "reference", "theirs", "unit", "ratio", "target")
    lines = [[r["bench"], r["what"], _fmt(r["ours"]), r["reference"], _fmt(r["theirs"]), r["unit"],
              "-" if r["ratio"] is None else f"{r['ratio']:.2f}x",
              "-" if r["target"] is None else f">={r['target']:g}x " + ("ok" if r["ok"] else "MISSED")]
             for r in table]
    widths = [max(len(h), *(len(l[i]) for l in lines)) if lines else len(h) for i, h in enumerate(head)]
    out = ["  ".join(h.ljust(w) for h, w in zip(head, widths)), "  ".join("-" * w for w in widths)]
    for l in lines:
        out.append("  ".join(c.ljust(w) if i in (0, 1, 3, 5) else c.rjust(w) for i, (c, w) in
                             enumerate(zip(l, widths))))
    return "\n".join(out)


def summary(res: Dict[str, Any]) -> str:
    """Header lines (machine, threads, load) and the table."""
    m = res["meta"]
    lines = [f"pyllama {m['pyllama']} on {m['cpu']} ({m['cpu_count']} CPUs), {m['threads']['pyllama']} threads, "
             f"simd {m['build'].get('simd')}, load average {m['load_average_start']} -> {m['load_average_end']}, "
             f"{m['seconds']:.0f} s"]
    mach = res["results"].get("machine")
    if mach:
        lines.append(f"machine peak {mach['peak_gflops']:.1f} GFLOP/s ({mach['n']}^3 sgemm, best of "
                     f"{len(mach.get('peak_samples', [0]))} samples through the run), streaming bandwidth "
                     f"{mach['bandwidth_GB_s']:.1f} GB/s (numpy copy of {mach['array_MB']} MB, read + write)")
    tr = res["results"].get("train")
    if tr and mach:
        lines.append(f"training step achieves {tr['pyllama']['gflops']:.1f} GFLOP/s = "
                     f"{100 * tr['pyllama']['gflops'] / mach['peak_gflops']:.0f}% of peak")
    lines.append("pyllama, theirs: best of several runs, the two sides alternating; ratio = pyllama / theirs "
                 "throughput (for seconds: theirs / pyllama); > 1: pyllama faster")
    lines.append(format_table(res["table"]))
    return "\n".join(lines)


def add_arguments(ap: argparse.ArgumentParser) -> None:
    """The suite's options (shared by ``pyllama bench`` and ``python -m pyllama.bench``)."""
    ap.add_argument("--quick", action="store_true", help="tiny sizes (seconds); what the tests run")
    ap.add_argument("--threads", type=int, default=2, help="threads for pyllama, PyTorch and BLAS (default 2)")
    ap.add_argument("--only", default=None,
                    help="comma-separated benchmarks to run (default all): " + ",".join(BENCHMARKS))
    ap.add_argument("--json", default="bench-results.json", metavar="PATH",
                    help="write all figures here (default bench-results.json; '' to skip)")
    ap.add_argument("--plot", default=None, metavar="PATH",
                    help="PNG of the scaling curves (needs matplotlib)")
    ap.add_argument("--no-reference", action="store_true", help="measure pyllama only")
    ap.add_argument("--text", default=None, metavar="FILE",
                    help="UTF-8 text for the tokenizer benchmarks (default: the bundled shakespeare.txt)")
    ap.add_argument("--vocab-file", default=None, metavar="FILE",
                    help="cl100k_base.tiktoken(.gz) for the encode benchmark (default: found in a source "
                         "checkout or $PYLLAMA_TIKTOKEN_DIR, else a vocabulary trained on the text)")


def run_from_args(args: argparse.Namespace) -> int:
    """Run the suite from parsed arguments, print the table, write JSON / plot."""
    only = [s.strip() for s in args.only.split(",") if s.strip()] if args.only else None
    res = run_suite(only, args.quick, args.threads, not args.no_reference, args.text, args.vocab_file)
    print()
    print(summary(res))
    if args.json:
        write_json(args.json, res)
        print(f"\nresults written to {args.json}")
    if args.plot:
        plot_scaling(res["results"], args.plot, res["results"].get("machine", {}).get("peak_gflops"))
    return 0


def register(subparsers) -> None:
    """Add the ``bench`` subcommand to the ``pyllama`` command."""
    p = subparsers.add_parser("bench", help="CPU benchmark suite against PyTorch, HF, numpy, tiktoken, tokenizers",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(p)
    p.set_defaults(func=run_from_args)


def main(argv: Optional[List[str]] = None) -> int:
    """``python -m pyllama.bench``."""
    ap = argparse.ArgumentParser(prog="python -m pyllama.bench", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(ap)
    args = ap.parse_args(argv)
    try:
        return run_from_args(args)
    except (ValueError, FileNotFoundError) as e:
        ap.error(str(e))
    return 2


if __name__ == "__main__":
    sys.exit(main())
