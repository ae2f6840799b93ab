"""Tokenizer speed against the references: tiktoken (encode) and Hugging Face tokenizers (training).

    python bench/tokenizer.py [--text FILE] [--vocab cl100k|o200k] [--repeat 3] [--threads 2]

Encode: MB/s of UTF-8 input on one thread (one long text, and the first pass of a
freshly loaded tokenizer, so the piece cache starts empty), and on a batch of
documents over N threads; both tokenizers use the same vocabulary and pattern and the
ids are checked to be equal. Training: seconds to learn vocabularies of 4096 and
32768 tokens with the cl100k pattern, and the token count each trained vocabulary
gives the text. Prints both sides and the ratios (>1: pyllama is faster).
"""
from __future__ import annotations

import argparse
import gzip
import os
import sys
import tempfile
import time

import pyllama

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VOCABS = {"cl100k": ("cl100k_base", {"<|endoftext|>": 100257}), "o200k": ("o200k_base", {"<|endoftext|>": 199999})}


def default_text() -> str:
    for p in (os.path.join(ROOT, "..", "shared", "data", "shakespeare.txt"),
              os.path.join(ROOT, "pyllama", "data", "shakespeare.txt")):
        if os.path.exists(p):
            return os.path.abspath(p)
    raise SystemExit("no text found; pass --text")


def vocab_file(name: str, tmp: str) -> str:
    base, _ = VOCABS[name]
    shared = os.path.join(ROOT, "..", "shared", "data", base + ".tiktoken")
    if os.path.exists(shared):
        return shared
    out = os.path.join(tmp, base + ".tiktoken")
    with gzip.open(os.path.join(ROOT, "tests", "data", base + ".tiktoken.gz"), "rb") as f, open(out, "wb") as g:
        g.write(f.read())
    return out


def best_of(fn, repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def bench_encode(text: str, vocab: str, repeat: int, threads: int, tmp: str) -> None:
    import tiktoken
    import tiktoken.load

    path = vocab_file(vocab, tmp)
    os.environ.setdefault("TIKTOKEN_CACHE_DIR", "")
    _, special = VOCABS[vocab]
    ours = pyllama.Tokenizer.from_tiktoken(path, vocab, special)
    ref = tiktoken.Encoding(vocab, pat_str=ours.pattern_regex, mergeable_ranks=tiktoken.load.load_tiktoken_bpe(path),
                            special_tokens=special)
    mb = len(text.encode()) / 1e6

    got = ours.encode_ordinary(text)
    want = ref.encode_ordinary(text)
    assert got == want, "ids differ from tiktoken"
    ours_1 = best_of(lambda: ours.encode_ordinary(text), repeat)
    # First pass of a freshly loaded tokenizer: its piece cache starts empty.
    fresh = [pyllama.Tokenizer.from_tiktoken(path, vocab, special) for _ in range(repeat)]
    ours_cold = best_of(lambda: fresh.pop().encode_ordinary(text), repeat)
    ref_1 = best_of(lambda: ref.encode_ordinary(text), repeat)

    print(f"encode {vocab}, {mb:.2f} MB, {len(want)} tokens (ids identical to tiktoken)")
    print(f"  1 thread : pyllama {mb / ours_1:7.1f} MB/s (first pass, empty cache: {mb / ours_cold:6.1f})"
          f"   tiktoken {mb / ref_1:7.1f} MB/s   ratio {ref_1 / ours_1:.2f}x (first pass {ref_1 / ours_cold:.2f}x)")

    # Many small documents (paragraphs), then 64 large ones (tiktoken's per-text overhead matters less).
    paragraphs = [d for d in text.split("\n\n") if d]
    step = len(paragraphs) // 64 + 1
    chunks = ["\n\n".join(paragraphs[i:i + step]) for i in range(0, len(paragraphs), step)]
    for docs in (paragraphs, chunks):
        mb = sum(len(d.encode()) for d in docs) / 1e6
        assert ours.encode_batch(docs, num_threads=threads) == ref.encode_ordinary_batch(docs, num_threads=threads)
        fresh = [pyllama.Tokenizer.from_tiktoken(path, vocab, special) for _ in range(repeat)]
        ours_bcold = best_of(lambda: fresh.pop().encode_batch(docs, num_threads=threads), repeat)
        ours_b = best_of(lambda: ours.encode_batch(docs, num_threads=threads), repeat)
        ref_b = best_of(lambda: ref.encode_ordinary_batch(docs, num_threads=threads), repeat)
        print(f"  batch of {len(docs):5d} docs, {threads} threads: pyllama {mb / ours_b:7.1f} MB/s "
              f"(first pass {mb / ours_bcold:6.1f})   tiktoken {mb / ref_b:7.1f} MB/s   "
              f"ratio {ref_b / ours_b:.2f}x (first pass {ref_b / ours_bcold:.2f}x)")


def bench_train(text: str, sizes, repeat: int) -> None:
    from tokenizers import Regex, Tokenizer, models, pre_tokenizers, trainers

    mb = len(text.encode()) / 1e6
    pattern = pyllama.Tokenizer.from_ranks([bytes([b]) for b in range(256)], "cl100k").pattern_regex
    print(f"train cl100k pattern on {mb:.2f} MB (HF tokenizers: Split(same regex) + ByteLevel BPE, "
          f"{os.cpu_count()} CPUs available to it)")
    for v in sizes:
        holder = {}

        def ours():
            holder["ours"] = pyllama.Tokenizer.train([text], v, "cl100k", ["<|endoftext|>"], progress=False)

        def hf():
            tk = Tokenizer(models.BPE())
            tk.pre_tokenizer = pre_tokenizers.Sequence([
                pre_tokenizers.Split(Regex(pattern), behavior="isolated"),
                pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
            tr = trainers.BpeTrainer(vocab_size=v, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                     special_tokens=["<|endoftext|>"], show_progress=False)
            tk.train_from_iterator([text], tr)
            holder["hf"] = tk

        t_ours = best_of(ours, repeat)
        t_hf = best_of(hf, repeat)
        n_ours = len(holder["ours"].encode_ordinary(text))
        n_hf = len(holder["hf"].encode(text, add_special_tokens=False).ids)
        print(f"  vocab {v:6d}: pyllama {t_ours:7.3f}s   tokenizers {t_hf:7.3f}s   ratio {t_hf / t_ours:5.1f}x   "
              f"tokens {n_ours} vs {n_hf} ({100 * (n_ours - n_hf) / n_hf:+.3f}%)"
              f"   vocab {holder['ours'].n_vocab} vs {holder['hf'].get_vocab_size()}")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--text", default=None, help="UTF-8 text (default: shakespeare.txt)")
    ap.add_argument("--vocab", default="cl100k", choices=sorted(VOCABS))
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--train-sizes", default="4096,32768")
    ap.add_argument("--skip-train", action="store_true")
    args = ap.parse_args(argv)
    path = args.text or default_text()
    with open(path, encoding="utf-8", newline="") as f:
        text = f.read()
    print(f"text: {path}; pyllama {pyllama.__version__}; {os.cpu_count()} CPUs")
    with tempfile.TemporaryDirectory() as tmp:
        bench_encode(text, args.vocab, args.repeat, args.threads, tmp)
    if not args.skip_train:
        bench_train(text, [int(s) for s in args.train_sizes.split(",")], args.repeat)
    return 0


if __name__ == "__main__":
    sys.exit(main())
