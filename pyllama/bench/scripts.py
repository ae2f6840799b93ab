"""The command lines of the single-benchmark scripts in ``bench/`` (each script calls one
function here): more knobs than the suite (:mod:`pyllama.bench.cpu`) gives a benchmark.

    python bench/generate.py     -> generate()     decoding and prefill against HF generate
    python bench/matmul.py       -> matmul()       sgemm against numpy at the models' shapes
    python bench/tokenizer.py    -> tokenizer()    encode against tiktoken, BPE training against tokenizers
    python bench/train_step.py   -> train_step()   forward + backward against PyTorch eager
    python bench/train_loop.py   -> train_loop()   AdamW + clip and a whole Trainer step against PyTorch
"""
from __future__ import annotations

import argparse
import os

import numpy as np

import pyllama

from . import cpu as bench
from .common import timed, write_json
from .references import hf_llama_config

# a source checkout's root (bench/, tests/ beside the package)
ROOT = os.path.dirname(bench.PACKAGE_DIR)


GENERATE_DOC = """Decoding speed: pyllama ``generate`` (KV cache in the core, strategies in Python)
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


def generate(argv=None):
    ap = argparse.ArgumentParser(description=GENERATE_DOC, formatter_class=argparse.RawDescriptionHelpFormatter)
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
        write_json(args.json, res, indent=2)
    return res


MATMUL_DOC = """Matrix multiply at the model's shapes: pyllama's sgemm against numpy's matmul (OpenBLAS),
same threads, GFLOP/s and the ratio. A thin wrapper over ``pyllama.bench.bench_matmul``.

    python bench/matmul.py [--threads 2] [--iters 5] [--peak]
"""


def matmul(argv=None):
    ap = argparse.ArgumentParser(description=MATMUL_DOC, formatter_class=argparse.RawDescriptionHelpFormatter)
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


TOKENIZER_DOC = """Tokenizer speed against the references: tiktoken (encode) and Hugging Face tokenizers
(training). A thin wrapper over ``pyllama.bench.bench_encode`` and ``bench_bpe``.

    python bench/tokenizer.py [--text FILE] [--vocab cl100k|o200k] [--repeat 3] [--threads 2]

Encode: MB/s of UTF-8 input on one thread (one long text, warm and the first pass of a
freshly loaded tokenizer, so the piece cache starts empty), and on a batch of documents
over N threads; both tokenizers use the same vocabulary and pattern and the ids are
checked to be equal. Training: seconds to learn vocabularies of 4096 and 32768 tokens
with the cl100k pattern, and the token count each trained vocabulary gives the text.
Prints both sides and the ratios (>1: pyllama is faster).
"""


def tokenizer(argv=None) -> int:
    ap = argparse.ArgumentParser(description=TOKENIZER_DOC.split("\n")[0])
    ap.add_argument("--text", default=None, help="UTF-8 text (default: the bundled shakespeare.txt)")
    ap.add_argument("--vocab", default="cl100k", choices=sorted(bench.VOCAB_SPECIALS))
    ap.add_argument("--vocab-file", default=None, help="the .tiktoken(.gz) file (default: tests/data)")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--train-sizes", default="4096,32768")
    ap.add_argument("--skip-train", action="store_true")
    args = ap.parse_args(argv)
    bench.set_threads(args.threads)
    os.environ.setdefault("RAYON_NUM_THREADS", str(args.threads))
    vocab_file = args.vocab_file
    if vocab_file is None:
        base = bench.VOCAB_SPECIALS[args.vocab][0]
        p = os.path.join(ROOT, "tests", "data", base + ".tiktoken.gz")
        vocab_file = p if os.path.isfile(p) else None
    text = bench.read_text(args.text)
    print(f"text: {args.text or bench.default_text_path()}; pyllama {pyllama.__version__}; {os.cpu_count()} CPUs")
    rows = bench.bench_encode(text, args.repeat, args.threads, True, args.vocab, vocab_file)["rows"]
    if not args.skip_train:
        rows += bench.bench_bpe(text, [int(s) for s in args.train_sizes.split(",")], args.repeat, True,
                                args.threads)["rows"]
    print(bench.format_table(rows))
    return 0


TRAIN_STEP_DOC = """One training step (forward + backward) of a LLaMA config: pyllama against PyTorch eager
(transformers.LlamaForCausalLM and a plain PyTorch module) on the same weights and threads.
A thin wrapper over ``pyllama.bench.bench_train_step`` (``python -m pyllama.bench --only train``
runs it as part of the suite).

    python bench/train_step.py                 # 15M-class: C=288, I=768, L=6, NH=6, V=4096, 8 x 256
    python bench/train_step.py --size 124m     # C=768, I=2048, L=12, NH=12, V=32000, 4 x 512
Prints tokens/s for each side, the ratios, and pyllama's achieved GFLOP/s.
"""

TRAIN_STEP_SIZES = {
    "15m": dict(cfg=bench.CONFIG_15M, B=8, T=256, target=1.5),
    "124m": dict(cfg=bench.CONFIG_124M, B=4, T=512, target=1.2),
}


def train_step(argv=None):
    ap = argparse.ArgumentParser(description=TRAIN_STEP_DOC, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", choices=sorted(TRAIN_STEP_SIZES), default="15m")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--iters", type=int, default=5)
    ap.add_argument("--no-reference", action="store_true", help="measure pyllama only")
    ap.add_argument("--json", help="also write the results to this file")
    args = ap.parse_args(argv)
    spec = TRAIN_STEP_SIZES[args.size]
    bench.set_threads(args.threads)
    res = bench.bench_train_step(spec["cfg"], spec["B"], spec["T"], args.iters, not args.no_reference,
                                 args.threads, f"train {args.size}", spec["target"])
    print(bench.format_table(res.pop("rows")))
    if args.json:
        write_json(args.json, res)
    return res


TRAIN_LOOP_DOC = """The optimizer step and the whole training step, pyllama against PyTorch on the same model.

    python bench/train_loop.py                  # 15M-class model, 2 threads
    python bench/train_loop.py --threads 1 --iters 20

Prints, side by side with the ratio:
  - AdamW + clip on the model's parameters: pyllama's fused flat pass vs torch.optim.AdamW
    (foreach, and fused where this torch has it) + clip_grad_norm_;
  - a whole Trainer step (forward, backward, clip, AdamW) in tokens/s vs the same loop in
    PyTorch eager (transformers.LlamaForCausalLM, eager attention).
"""

TRAIN_LOOP_CFG = dict(bench.CONFIG_15M, max_position_embeddings=1024)


def train_loop(argv=None):
    ap = argparse.ArgumentParser(description=TRAIN_LOOP_DOC, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--iters", type=int, default=10)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq", type=int, default=256)
    args = ap.parse_args(argv)
    pyllama.set_num_threads(args.threads)
    import torch

    torch.set_num_threads(args.threads)
    cfg = pyllama.LlamaConfig(**TRAIN_LOOP_CFG)
    model = pyllama.Llama(cfg, seed=0)
    rng = np.random.default_rng(0)
    model.flat_grads()[:] = rng.standard_normal(model.flat_grads().size).astype(np.float32) * 1e-3
    opt = pyllama.AdamW(model, lr=1e-4)

    def ours_opt():
        pyllama.clip_grad_norm(model, 1.0)
        opt.step()

    t_ours = timed(ours_opt, warmup=2, iters=args.iters)[0]
    params = [torch.nn.Parameter(torch.from_numpy(np.array(p))) for p in model.named_parameters().values()]
    for p, g in zip(params, model.named_grads().values()):
        p.grad = torch.from_numpy(np.array(g))
    groups = [{"params": [p for p in params if p.ndim == 2], "weight_decay": 0.1},
              {"params": [p for p in params if p.ndim != 2], "weight_decay": 0.0}]
    for kind in ("foreach", "fused"):
        try:
            topt = torch.optim.AdamW(groups, lr=1e-4, betas=(0.9, 0.95), **{kind: True})

            def torch_opt():
                torch.nn.utils.clip_grad_norm_(params, 1.0)
                topt.step()

            t = timed(torch_opt, warmup=2, iters=args.iters)[0]
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
    t_step = timed(trainer.train_step, warmup=1, iters=max(3, args.iters // 2))[0]
    import transformers

    hf_cfg = hf_llama_config(cfg, transformers, "eager", tie_word_embeddings=False)
    hf = transformers.LlamaForCausalLM(hf_cfg).float().train()
    hopt = torch.optim.AdamW(hf.parameters(), lr=1e-4, betas=(0.9, 0.95), foreach=True)
    ids = torch.from_numpy(rng.integers(0, cfg.vocab_size, (args.batch, args.seq)).astype(np.int64))

    def torch_step():
        hopt.zero_grad()
        hf(input_ids=ids, labels=ids).loss.backward()
        torch.nn.utils.clip_grad_norm_(hf.parameters(), 1.0)
        hopt.step()

    t_torch = timed(torch_step, warmup=1, iters=max(3, args.iters // 2))[0]
    tok = args.batch * args.seq
    print(f"train step ({args.batch}x{args.seq}, {args.threads} threads): pyllama {tok / t_step:.0f} tok/s, "
          f"torch eager {tok / t_torch:.0f} tok/s, ratio pyllama/torch {t_torch / t_step:.2f}")
