"""Training, files (.tiktoken + JSON, tokenizer.json) and the command line."""
import json
import os

import pytest

import pyllama

HERE = os.path.dirname(os.path.abspath(__file__))
SHAKESPEARE = os.path.join(os.path.dirname(HERE), "pyllama", "data", "shakespeare.txt")
SPECIAL = ["<|endoftext|>", "<|pad|>"]


@pytest.fixture(scope="module")
def text():
    with open(SHAKESPEARE, encoding="utf-8", newline="") as f:
        return f.read()


@pytest.fixture(scope="module")
def trained(text):
    return pyllama.Tokenizer.train([text], 4096, "cl100k", SPECIAL, progress=False)


def test_train_basics(trained, text):
    tok = trained
    assert tok.n_vocab == 4096
    assert tok.special_tokens == {"<|endoftext|>": 4094, "<|pad|>": 4095}
    ids = tok.encode_ordinary(text)
    assert tok.decode(ids) == text
    assert len(ids) < len(text.encode()) / 3  # it learned something
    assert tok.encode("<|pad|>", allowed_special="all") == [4095]
    # The first merges of English text.
    assert {tok.token_bytes(256), tok.token_bytes(257)} & {b" t", b"he", b"e ", b" a", b"th", b"\n\n"}


def test_train_is_deterministic_and_path_equals_texts(trained, text, tmp_path):
    again = pyllama.Tokenizer.train([text], 4096, "cl100k", SPECIAL, progress=False)
    from_path = pyllama.Tokenizer.train(SHAKESPEARE, 4096, "cl100k", SPECIAL, progress=True)
    for other in (again, from_path):
        assert [other.token_bytes(i) for i in range(4094)] == [trained.token_bytes(i) for i in range(4094)]


def test_special_text_is_cut_out_of_training():
    docs = ["abcabc<|endoftext|>abcabc"] * 50
    tok = pyllama.Tokenizer.train(docs, 260, "cl100k", ["<|endoftext|>"], progress=False)
    learned = {tok.token_bytes(i) for i in range(256, tok.n_vocab - 1)}
    assert not any(b"<|" in t or b"|>" in t for t in learned)


def test_train_other_patterns(text):
    part = text[:100_000]
    for pattern in ("gpt2", "o200k", "llama3"):
        tok = pyllama.Tokenizer.train([part], 600, pattern, progress=False)
        assert tok.decode(tok.encode(part)) == part
        assert tok.pattern == ("cl100k" if pattern == "llama3" else pattern)


def test_train_custom_regex_matches_preset(text):
    pytest.importorskip("regex", reason="custom patterns need the regex module")
    part = text[:50_000]
    preset = pyllama.Tokenizer.train([part], 500, "gpt2", progress=False)
    custom = pyllama.Tokenizer.train([part], 500, preset.pattern_regex, progress=False)
    assert [custom.token_bytes(i) for i in range(500)] == [preset.token_bytes(i) for i in range(500)]
    assert custom.encode(part) == preset.encode(part)


def test_train_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="too small"):
        pyllama.Tokenizer.train(["abc"], 256, special_tokens=["<|x|>"])
    with pytest.raises(TypeError):
        pyllama.Tokenizer.train(["abc"], 300.0)
    with pytest.raises(TypeError):
        pyllama.Tokenizer.train([b"abc"], 300)
    with pytest.raises(TypeError):
        pyllama.Tokenizer.train(42, 300)
    with pytest.raises(FileNotFoundError):
        pyllama.Tokenizer.train(str(tmp_path / "missing.txt"), 300)
    with pytest.raises(ValueError, match="unknown pattern preset"):
        pyllama.Tokenizer.train(["abc"], 300, pattern="cl100")
    with pytest.raises(ValueError, match="duplicates"):
        pyllama.Tokenizer.train(["abc"], 300, special_tokens=["<|a|>", "<|a|>"])
    with pytest.warns(UserWarning, match="too few distinct pairs"):
        tok = pyllama.Tokenizer.train(["ab ab"], 1000)
    assert tok.n_vocab == 258  # "ab", " ab"


def test_token_count_close_to_hf_tokenizers(trained, text):
    tokenizers = pytest.importorskip("tokenizers", reason="the reference trainer (pip install tokenizers)")
    from tokenizers import Regex, models, pre_tokenizers, trainers

    hf = tokenizers.Tokenizer(models.BPE())
    hf.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(trained.pattern_regex), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    trainer = trainers.BpeTrainer(vocab_size=4096, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  special_tokens=SPECIAL, show_progress=False)
    hf.train_from_iterator([text], trainer)
    n_hf = len(hf.encode(text, add_special_tokens=False).ids)
    n_ours = len(trained.encode_ordinary(text))
    assert abs(n_ours - n_hf) <= 0.01 * n_hf, (n_ours, n_hf)


def test_hf_export_gives_identical_ids(trained, text, tmp_path):
    tokenizers = pytest.importorskip("tokenizers", reason="loads the exported tokenizer.json")
    path = tmp_path / "tokenizer.json"
    trained.save_hf(str(path))
    hf = tokenizers.Tokenizer.from_file(str(path))
    assert hf.get_vocab_size() == trained.n_vocab
    assert hf.encode(text, add_special_tokens=False).ids == trained.encode_ordinary(text)
    samples = ["Hello  world!!\n\n  x", "don't STOP'S", "中文 123456 émoji 👍🏽", "a<|endoftext|>b"]
    for s in samples:
        assert hf.encode(s, add_special_tokens=False).ids == trained.encode(s, allowed_special="all")
        assert hf.decode(trained.encode(s, allowed_special="all"), skip_special_tokens=False) == s
    # A folder gets tokenizer.json inside it.
    trained.save_hf(str(tmp_path))
    assert json.loads((tmp_path / "tokenizer.json").read_text())["model"]["type"] == "BPE"


def test_hf_export_of_o200k_vocab_slice(text, tmp_path):
    # o200k pattern (case classes, marks, contractions as suffixes) through the export.
    tokenizers = pytest.importorskip("tokenizers", reason="loads the exported tokenizer.json")
    tok = pyllama.Tokenizer.train([text[:300_000]], 2000, "o200k", ["<|endoftext|>"], progress=False)
    tok.save_hf(str(tmp_path / "t.json"))
    hf = tokenizers.Tokenizer.from_file(str(tmp_path / "t.json"))
    part = text[300_000:400_000]
    assert hf.encode(part, add_special_tokens=False).ids == tok.encode(part)


def test_save_load_roundtrip(trained, text, tmp_path):
    p = tmp_path / "shakespeare.tiktoken"
    trained.save(str(p))
    assert os.path.exists(str(p) + ".json")
    back = pyllama.Tokenizer.load(str(p))
    assert back.n_vocab == trained.n_vocab and back.special_tokens == trained.special_tokens
    assert back.pattern == "cl100k"
    assert back.encode_ordinary(text[:50_000]) == trained.encode_ordinary(text[:50_000])
    # A folder holds tokenizer.tiktoken(.json).
    trained.save(str(tmp_path))
    assert pyllama.Tokenizer.load(str(tmp_path)).n_vocab == 4096
    # Custom patterns survive a round trip.
    custom = pyllama.Tokenizer.from_ranks([bytes([b]) for b in range(256)], r"\w+|\s+|[^\w\s]+", ["<|e|>"])
    custom.save(str(tmp_path / "c.tiktoken"))
    assert pyllama.Tokenizer.load(str(tmp_path / "c.tiktoken")).pattern == r"\w+|\s+|[^\w\s]+"


def test_saved_file_is_readable_by_tiktoken(trained, text, tmp_path):
    tiktoken = pytest.importorskip("tiktoken", reason="the reference implementation")
    import tiktoken.load

    p = tmp_path / "v.tiktoken"
    trained.save(str(p))
    old = os.environ.get("TIKTOKEN_CACHE_DIR")
    os.environ["TIKTOKEN_CACHE_DIR"] = ""
    try:
        ranks = tiktoken.load.load_tiktoken_bpe(str(p))
    finally:
        if old is None:
            del os.environ["TIKTOKEN_CACHE_DIR"]
        else:
            os.environ["TIKTOKEN_CACHE_DIR"] = old
    enc = tiktoken.Encoding("mine", pat_str=trained.pattern_regex, mergeable_ranks=ranks,
                            special_tokens=trained.special_tokens)
    assert enc.encode_ordinary(text) == trained.encode_ordinary(text)


def test_load_errors(tmp_path, trained):
    with pytest.raises(FileNotFoundError):
        pyllama.Tokenizer.load(str(tmp_path / "nothing.tiktoken"))
    p = tmp_path / "bare.tiktoken"
    p.write_bytes(b"YQ== 0\n")
    with pytest.raises(FileNotFoundError, match="from_tiktoken"):
        pyllama.Tokenizer.load(str(p))
    (tmp_path / "bare.tiktoken.json").write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        pyllama.Tokenizer.load(str(p))
    (tmp_path / "bare.tiktoken.json").write_text('{"format": "other"}')
    with pytest.raises(ValueError, match="not a pyllama tokenizer"):
        pyllama.Tokenizer.load(str(p))


def test_cli_train_and_encode(tmp_path, capsys):
    from pyllama.cli import main

    src = tmp_path / "in.txt"
    src.write_text(open(SHAKESPEARE, encoding="utf-8").read()[:100_000], encoding="utf-8")
    out = tmp_path / "tok.tiktoken"
    hf = tmp_path / "tokenizer.json"
    assert main(["tokenizer", "train", str(src), "--vocab-size", "512", "--special", "<|endoftext|>",
                 "--out", str(out), "--hf-json", str(hf), "--no-progress"]) == 0
    assert out.exists() and hf.exists()
    capsys.readouterr()
    assert main(["tokenizer", "encode", "--tokenizer", str(out), "--text", "ROMEO:<|endoftext|>", "--allow-special"]) == 0
    ids = [int(x) for x in capsys.readouterr().out.split()]
    tok = pyllama.Tokenizer.load(str(out))
    assert ids == tok.encode("ROMEO:<|endoftext|>", allowed_special="all") and ids[-1] == 511
    assert main(["tokenizer", "encode", "--tokenizer", str(out), str(src), "--count"]) == 0
    assert int(capsys.readouterr().out) == len(tok.encode_ordinary(src.read_text(encoding="utf-8")))
    assert main(["tokenizer", "encode", "--tokenizer", str(tmp_path / "none.tiktoken"), "--text", "x"]) == 1
    assert main(["tokenizer", "train", str(src), "--vocab-size", "512", "--pattern", "nope", "--out", str(out)]) == 1


def test_pickle_roundtrip(trained, text):
    import pickle

    back = pickle.loads(pickle.dumps(trained))
    assert back.special_tokens == trained.special_tokens and back.pattern == trained.pattern
    assert back.encode(text[:20_000]) == trained.encode(text[:20_000])


def _batch_in_child(tok, docs, q):
    q.put(tok.encode_batch(docs, num_threads=2))


def test_encode_batch_after_fork_and_from_many_threads(trained, text):
    import multiprocessing as mp
    import sys
    import threading

    docs = [text[i:i + 30_000] for i in range(0, 300_000, 30_000)]
    want = [trained.encode(d) for d in docs]
    assert trained.encode_batch(docs, num_threads=2) == want  # the worker pool exists now
    results = []
    threads = [threading.Thread(target=lambda: results.append(trained.encode_batch(docs, num_threads=2) == want))
               for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == [True] * 4
    if sys.platform.startswith("linux"):
        ctx = mp.get_context("fork")
        q = ctx.Queue()
        p = ctx.Process(target=_batch_in_child, args=(trained, docs, q))
        p.start()
        assert q.get(timeout=60) == want
        p.join(timeout=60)


def test_works_with_generate_and_stream(text):
    if not hasattr(pyllama, "Llama"):
        pytest.skip("pyllama.Llama is not built in this tree")
    tok = pyllama.Tokenizer.train([text[:100_000]], 512, "cl100k", ["<|endoftext|>"], progress=False)
    cfg = pyllama.LlamaConfig(vocab_size=tok.n_vocab, hidden_size=64, intermediate_size=172, num_hidden_layers=2,
                              num_attention_heads=4, num_key_value_heads=2)
    model = pyllama.Llama(cfg, seed=0)
    out = model.generate("ROMEO:", tokenizer=tok, max_new_tokens=8)
    assert len(out) == 1 and len(out[0]) == 8
    pieces = [s.text for s in model.stream("ROMEO:", tokenizer=tok, max_new_tokens=8)]
    # (The stream may hold back an incomplete character at the very end.)
    joined, full = "".join(pieces), tok.decode(out[0])
    assert full.startswith(joined) and len(full) - len(joined) <= 1
