"""Matrix multiply at the model's shapes: pyllama's sgemm against numpy's matmul (OpenBLAS),
same threads, GFLOP/s and the ratio. A thin wrapper over ``pyllama.bench.bench_matmul``.

    python bench/matmul.py [--threads 2] [--iters 5] [--peak]
"""
import argparse
import json

from pyllama import bench


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--iters", type=int, default=5)
    ap.add_argument("--peak", action="store_true", help="also a 2048^3 square matmul (the machine's peak)")
    args = ap.parse_args(argv)
    bench.set_threads(args.threads)
    shapes = list(bench.MATMUL_SHAPES)
    if args.peak:
        shapes.append(("square 2048", 2048, 2048, 2048, False, False))
    res = bench.bench_matmul(shapes, args.iters)
    print(bench.format_table(res["rows"]))
    return res["shapes"]


if __name__ == "__main__":
    print(json.dumps(main(), indent=1))
