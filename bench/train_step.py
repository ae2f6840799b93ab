"""One training step (forward + backward) of a LLaMA config: pyllama against PyTorch eager
(transformers.LlamaForCausalLM and a plain PyTorch module) on the same weights and threads.
A thin wrapper over ``pyllama.bench.bench_train_step`` (``python -m pyllama.bench --only train``
runs it as part of the suite).

    python bench/train_step.py                 # 15M-class: C=288, I=768, L=6, NH=6, V=4096, 8 x 256
    python bench/train_step.py --size 124m     # C=768, I=2048, L=12, NH=12, V=32000, 4 x 512
Prints tokens/s for each side, the ratios, and pyllama's achieved GFLOP/s.
"""
import argparse
import json

from pyllama import bench

SIZES = {
    "15m": dict(cfg=bench.CONFIG_15M, B=8, T=256, target=1.5),
    "124m": dict(cfg=bench.CONFIG_124M, B=4, T=512, target=1.2),
}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", choices=sorted(SIZES), default="15m")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--iters", type=int, default=5)
    ap.add_argument("--no-reference", action="store_true", help="measure pyllama only")
    ap.add_argument("--json", help="also write the results to this file")
    args = ap.parse_args(argv)
    spec = SIZES[args.size]
    bench.set_threads(args.threads)
    res = bench.bench_train_step(spec["cfg"], spec["B"], spec["T"], args.iters, not args.no_reference,
                                 args.threads, f"train {args.size}", spec["target"])
    print(bench.format_table(res.pop("rows")))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(res, f, indent=1)
    return res


if __name__ == "__main__":
    main()
