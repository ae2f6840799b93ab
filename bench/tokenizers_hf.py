"""pyllama's tokenizers of model files and its trainers against the reference libraries, in one
process, alternating, one thread:

    python bench/tokenizers_hf.py [--corpus pyllama/data/shakespeare.txt] [--vocab 2000] [--reps 3]

- encode speed: a byte-level BPE tokenizer.json (trained by `tokenizers`) against `tokenizers`,
  and a SentencePiece BPE .model (trained by `sentencepiece`) against `sentencepiece`; ids checked
  equal first;
- training: Unigram against sentencepiece's trainer and WordPiece against `tokenizers`'
  WordPieceTrainer at the same vocabulary size: tokens per byte on held-out text (the last 10%
  of the corpus) and training time.
One thread on every side (RAYON_NUM_THREADS=1 for tokenizers; num_threads=1 for sentencepiece's batch
encode, which otherwise uses every core, and for its trainer, which otherwise starts 16 threads). Quote ratios (the machine is shared). Needs tokenizers and
sentencepiece.
"""
import argparse
import os
import sys
import tempfile
import time

os.environ.setdefault("RAYON_NUM_THREADS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def best(fn, reps):
    out, times = None, []
    for _ in range(reps):
        t = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t)
    return out, min(times)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    here = os.path.dirname(os.path.abspath(__file__))
    ap.add_argument("--corpus", default=os.path.join(here, "..", "pyllama", "data", "shakespeare.txt"))
    ap.add_argument("--vocab", type=int, default=2000)
    ap.add_argument("--reps", type=int, default=3)
    a = ap.parse_args()
    import sentencepiece as spm
    import tokenizers
    from tokenizers import decoders, models, normalizers, pre_tokenizers, trainers

    import pyllama

    pyllama.set_num_threads(1)
    text = open(a.corpus, encoding="utf-8").read()
    cut = text.rfind("\n", 0, int(len(text) * 0.9))
    train, held = text[:cut], text[cut + 1:]
    lines = train.splitlines()
    nbytes = len(held.encode())
    tmp = tempfile.mkdtemp()
    print(f"corpus {a.corpus}: {len(text.encode()) / 1e6:.2f} MB (held-out {nbytes / 1e6:.2f} MB), vocab {a.vocab}, "
          f"one thread, best of {a.reps}")

    # ---- encode: byte-level BPE tokenizer.json
    tk = tokenizers.Tokenizer(models.BPE())
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    tk.train_from_iterator(lines, trainers.BpeTrainer(vocab_size=a.vocab, show_progress=False,
                                                      initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tk.save(os.path.join(tmp, "tokenizer.json"))
    ours = pyllama.Tokenizer.from_pretrained(os.path.join(tmp, "tokenizer.json"))
    ref_ids, t_ref = best(lambda: tk.encode(text, add_special_tokens=False).ids, a.reps)
    our_ids, t_our = best(lambda: ours.encode(text), a.reps)
    assert list(our_ids) == ref_ids, "ids differ from tokenizers'"
    print(f"encode byte-level BPE tokenizer.json: pyllama {t_our * 1e3:.0f} ms, tokenizers {t_ref * 1e3:.0f} ms "
          f"-> {t_ref / t_our:.2f}x (same {len(ref_ids)} ids)")

    # ---- encode: SentencePiece BPE .model
    prefix = os.path.join(tmp, "spbpe")
    spm.SentencePieceTrainer.train(sentence_iterator=iter(lines), model_prefix=prefix, vocab_size=a.vocab,
                                   model_type="bpe", byte_fallback=True, character_coverage=1.0,
                                   normalization_rule_name="identity", minloglevel=2)
    sp = spm.SentencePieceProcessor(model_file=prefix + ".model")
    ours = pyllama.Tokenizer.from_pretrained(prefix + ".model")
    held_lines = [ln for ln in held.splitlines() if ln]
    all_lines = [ln for ln in text.splitlines() if ln]
    # both take the list in one call; sentencepiece's batch encode runs on every core unless told otherwise
    ref_ids, t_ref = best(lambda: sp.encode(all_lines, num_threads=1), a.reps)
    our_ids, t_our = best(lambda: ours.encode_batch(all_lines, num_threads=1), a.reps)
    assert [list(x) for x in our_ids] == ref_ids, "ids differ from sentencepiece's"
    print(f"encode SentencePiece BPE .model ({len(all_lines)} lines, one batch call): pyllama {t_our * 1e3:.0f} ms, "
          f"sentencepiece {t_ref * 1e3:.0f} ms -> {t_ref / t_our:.2f}x (same ids)")

    # ---- training: Unigram vs sentencepiece
    t = time.perf_counter()
    prefix = os.path.join(tmp, "spuni")
    spm.SentencePieceTrainer.train(sentence_iterator=iter(lines), model_prefix=prefix, vocab_size=a.vocab,
                                   model_type="unigram", character_coverage=1.0, normalization_rule_name="identity",
                                   minloglevel=2, num_threads=1)
    t_sp = time.perf_counter() - t
    sp = spm.SentencePieceProcessor(model_file=prefix + ".model")
    t = time.perf_counter()
    uni = pyllama.Tokenizer.train_unigram(lines, vocab_size=a.vocab)
    t_uni = time.perf_counter() - t
    tpb_sp = sum(len(sp.encode(ln)) for ln in held_lines) / nbytes
    tpb_uni = sum(len(uni.encode(ln)) for ln in held_lines) / nbytes
    print(f"train Unigram: pyllama {t_uni:.2f} s, sentencepiece {t_sp:.2f} s -> {t_sp / t_uni:.2f}x; held-out tokens "
          f"per byte {tpb_uni:.4f} vs {tpb_sp:.4f} ({(tpb_uni / tpb_sp - 1) * 100:+.1f}%)")

    # ---- training: WordPiece vs tokenizers
    t = time.perf_counter()
    wp = tokenizers.Tokenizer(models.WordPiece(unk_token="[UNK]"))
    wp.normalizer = normalizers.BertNormalizer(lowercase=True)
    wp.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    wp.train_from_iterator(lines, trainers.WordPieceTrainer(vocab_size=a.vocab, show_progress=False,
                                                            special_tokens=["[PAD]", "[UNK]", "[CLS]", "[SEP]",
                                                                            "[MASK]"]))
    t_ref = time.perf_counter() - t
    t = time.perf_counter()
    ourwp = pyllama.Tokenizer.train_wordpiece(lines, vocab_size=a.vocab)
    t_our = time.perf_counter() - t
    tpb_ref = sum(len(wp.encode(ln, add_special_tokens=False).ids) for ln in held_lines) / nbytes
    tpb_our = sum(len(ourwp.encode(ln)) for ln in held_lines) / nbytes
    print(f"train WordPiece: pyllama {t_our:.2f} s, tokenizers {t_ref:.2f} s -> {t_ref / t_our:.2f}x; held-out "
          f"tokens per byte {tpb_our:.4f} vs {tpb_ref:.4f} ({(tpb_our / tpb_ref - 1) * 100:+.1f}%)")


if __name__ == "__main__":
    sys.exit(main())
