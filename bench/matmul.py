"""Matrix multiply at the model's shapes: pyllama's sgemm against numpy's matmul (OpenBLAS),
same threads, GFLOP/s and the ratio.

    python bench/matmul.py [--threads 2]
"""
import argparse
import json
import os
import time

import numpy as np

# (name, M, N, K, trans_a, trans_b): forward y = x W^T, backward dx = dy W, dW = dy^T x
SHAPES = [
    ("15m qkv fwd", 2048, 864, 288, False, True),
    ("15m mlp up fwd", 2048, 1536, 288, False, True),
    ("15m down fwd", 2048, 288, 768, False, True),
    ("15m lm_head fwd", 2048, 4096, 288, False, True),
    ("15m lm_head dx", 2048, 288, 4096, False, False),
    ("15m lm_head dW", 4096, 288, 2048, True, False),
    ("124m mlp up fwd", 2048, 4096, 768, False, True),
    ("124m lm_head fwd", 2048, 32000, 768, False, True),
    ("square 1024", 1024, 1024, 1024, False, False),
]


def best_time(fn, iters):
    fn()
    ts = []
    for _ in range(iters):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return min(ts)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--iters", type=int, default=5)
    args = ap.parse_args(argv)
    os.environ.setdefault("OPENBLAS_NUM_THREADS", str(args.threads))
    import pyllama
    from pyllama import _core

    pyllama.set_num_threads(args.threads)
    try:
        from threadpoolctl import threadpool_limits

        threadpool_limits(args.threads)
    except ImportError:
        pass
    rng = np.random.default_rng(0)
    rows = []
    for name, M, N, K, ta, tb in SHAPES:
        a = rng.standard_normal((K, M) if ta else (M, K), dtype=np.float32)
        b = rng.standard_normal((N, K) if tb else (K, N), dtype=np.float32)
        an, bn = (a.T if ta else a), (b.T if tb else b)
        t_ours = best_time(lambda: _core.matmul(a, b, ta, tb), args.iters)
        t_np = best_time(lambda: np.matmul(an, bn), args.iters)
        err = float(np.abs(_core.matmul(a, b, ta, tb) - np.matmul(an, bn)).max())
        gf = 2.0 * M * N * K / 1e9
        rows.append(dict(shape=name, M=M, N=N, K=K, pyllama_gflops=gf / t_ours, numpy_gflops=gf / t_np,
                         ratio=t_np / t_ours, max_abs_err=err))
        print(f"{name:18s} M={M:5d} N={N:5d} K={K:5d}  pyllama {gf / t_ours:7.1f} GFLOP/s  "
              f"numpy {gf / t_np:7.1f} GFLOP/s  ratio {t_np / t_ours:5.2f}x")
    return rows


if __name__ == "__main__":
    print(json.dumps(main(), indent=1))
