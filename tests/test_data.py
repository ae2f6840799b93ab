"""Token files (prepare) and the batch loader."""
import json
import os

import numpy as np
import pytest

from pyllama.data import DataLoader, TokenData, prepare, token_dtype
from pyllama import data as data_mod


class ByteTokenizer:
    """Stands in for pyllama.Tokenizer: one id per UTF-8 byte, with an optional offset."""

    def __init__(self, n_vocab=256, offset=0):
        self.n_vocab = n_vocab
        self.offset = offset
        self.saved = []

    def encode_ordinary(self, text):
        return [b + self.offset for b in text.encode("utf-8")]

    def save(self, path):
        self.saved.append(path)
        with open(path, "w") as f:
            json.dump({"byte_tokenizer": self.offset}, f)


TEXT = "".join(f"Line {i}: the quick brown fox — jumps {i * 7 % 13} times.\nThen {i}\n  indented {i}\n\n"
               for i in range(400))


def test_prepare_round_trip_and_split(tmp_path):
    src = tmp_path / "corpus.txt"
    src.write_text(TEXT, encoding="utf-8")
    tok = ByteTokenizer()
    metas = prepare(src, tok, tmp_path / "out", val_fraction=0.1)
    train, val = TokenData.open(tmp_path / "out" / "train.bin"), TokenData.open(tmp_path / "out" / "val.json")
    assert train.tokens.dtype == np.uint16 and isinstance(train.tokens, np.memmap)
    whole = np.frombuffer(TEXT.encode("utf-8"), np.uint8)
    # nothing lost, nothing reordered: train then val is the whole text
    assert np.array_equal(np.concatenate([train.tokens, val.tokens]), whole)
    assert 0.08 < len(val) / len(whole) < 0.12
    assert bytes(val.tokens[:1].astype(np.uint8)) not in (b" ", b"\n")  # cut at a line start
    assert metas["train"]["count"] == len(train) and metas["val"]["max_id"] == int(val.tokens.max())
    assert metas["train"]["tokenizer"] == "tokenizer.tiktoken" and os.path.isfile(tmp_path / "out" / "tokenizer.tiktoken")
    assert train.max_id == int(train.tokens.max())


def test_prepare_streams_in_pieces_and_folders(tmp_path, monkeypatch):
    folder = tmp_path / "docs"
    (folder / "sub").mkdir(parents=True)
    (folder / "a.txt").write_text(TEXT[:5000], encoding="utf-8")
    (folder / "sub" / "b.txt").write_text(TEXT[5000:12000], encoding="utf-8")
    (folder / ".hidden").write_text("skip me")
    monkeypatch.setattr(data_mod, "_CHUNK_BYTES", 512)  # force many pieces
    pieces = []

    class Recorder(ByteTokenizer):
        def encode_ordinary(self, text):
            pieces.append(text)
            return super().encode_ordinary(text)

    metas = prepare(folder, Recorder(n_vocab=70000), tmp_path / "out", val_fraction=0.2)
    assert len(pieces) > 10
    assert all(p.endswith("\n") for p in pieces[:-1] if p)  # cut after newlines only
    train = TokenData.open(tmp_path / "out" / "train.bin")
    val = TokenData.open(tmp_path / "out" / "val.bin")
    assert train.tokens.dtype == np.uint32  # vocabulary above 65536
    assert metas["train"]["sources"][0].endswith("a.txt") and len(metas["train"]["sources"]) == 2
    assert len(train) + len(val) == len(TEXT[:12000].encode("utf-8"))


def test_token_dtype():
    assert token_dtype(65536) == np.uint16 and token_dtype(65537) == np.uint32
    with pytest.raises(ValueError):
        token_dtype(0)


def test_open_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="pyllama prepare"):
        TokenData.open(tmp_path / "train.bin")
    src = tmp_path / "c.txt"
    src.write_text(TEXT)
    prepare(src, ByteTokenizer(), tmp_path / "o")
    with open(tmp_path / "o" / "train.bin", "ab") as f:
        f.write(b"x")
    with pytest.raises(ValueError, match="truncated or corrupt"):
        TokenData.open(tmp_path / "o" / "train.bin")
    (tmp_path / "o" / "val.json").write_text("{not json")
    with pytest.raises(ValueError, match="sidecar"):
        TokenData.open(tmp_path / "o" / "val.bin")
    with pytest.raises(FileNotFoundError):
        prepare(tmp_path / "missing.txt", ByteTokenizer(), tmp_path / "o2")
    (tmp_path / "bad.txt").write_bytes(b"\xff\xfe abc\n")
    with pytest.raises(ValueError, match="UTF-8"):
        prepare(tmp_path / "bad.txt", ByteTokenizer(), tmp_path / "o3")
    assert not [n for n in os.listdir(tmp_path / "o3") if n.endswith(".tmp")]


def test_random_loader_is_seeded_and_resumable():
    data = TokenData.from_array(np.arange(1000) % 251)
    a = DataLoader(data, 4, 16, seed=7)
    b = DataLoader(data, 4, 16, seed=7)
    first = [a.next_batch() for _ in range(3)]
    assert all(np.array_equal(x, y) for x, y in zip(first, [b.next_batch() for _ in range(3)]))
    assert first[0].shape == (4, 17) and first[0].dtype == np.int32
    for w in first[0]:  # windows of consecutive tokens
        assert np.array_equal(np.diff(w) % 251, np.ones(16))
    state = json.loads(json.dumps(a.state_dict()))
    more = [a.next_batch() for _ in range(3)]
    c = DataLoader(data, 4, 16, seed=0)
    c.load_state_dict(state)
    assert all(np.array_equal(x, y) for x, y in zip(more, [c.next_batch() for _ in range(3)]))
    assert not np.array_equal(DataLoader(data, 4, 16, seed=8).next_batch(), first[0])
    with pytest.raises(ValueError, match="seq_len"):
        c.load_state_dict(DataLoader(data, 4, 8).state_dict())


def test_sequential_loader_wraps():
    seq = DataLoader(TokenData.from_array(np.arange(20)), 2, 4, mode="sequential")
    assert seq.next_batch().tolist() == [[0, 1, 2, 3, 4], [4, 5, 6, 7, 8]]
    assert seq.next_batch().tolist() == [[8, 9, 10, 11, 12], [12, 13, 14, 15, 16]]
    assert seq.next_batch().tolist() == [[0, 1, 2, 3, 4], [4, 5, 6, 7, 8]]
    with pytest.raises(ValueError, match="needs at least 21 tokens"):
        DataLoader(TokenData.from_array(np.arange(20)), 1, 20)
    with pytest.raises(ValueError, match="mode"):
        DataLoader(TokenData.from_array(np.arange(20)), 1, 4, mode="shuffle")


def test_loader_over_memmap_larger_than_a_window(tmp_path):
    # a memmap is read window by window, never loaded whole
    n = 2_000_000
    arr = np.memmap(tmp_path / "big.bin", dtype=np.uint16, mode="w+", shape=(n,))
    arr[:] = np.arange(n) % 60000
    arr.flush()
    (tmp_path / "big.json").write_text(json.dumps({"format": "pyllama.tokens", "version": 1, "dtype": "uint16",
                                                    "count": n, "n_vocab": 60000}))
    d = TokenData.open(tmp_path / "big.bin")
    assert d.max_id == 59999
    w = DataLoader(d, 8, 64, seed=0).next_batch()
    assert np.array_equal((w[:, 1:] - w[:, :-1]) % 60000, np.ones((8, 64)))


@pytest.mark.parametrize("pattern", ["gpt2", "cl100k", "o200k"])
def test_prepare_in_small_pieces_equals_whole_text_encoding(tmp_path, monkeypatch, pattern):
    import pyllama

    if not hasattr(pyllama, "Tokenizer"):
        pytest.skip("needs pyllama.Tokenizer")
    corpus = os.path.join(os.path.dirname(pyllama.__file__), "data", "shakespeare.txt")
    with open(corpus, encoding="utf-8") as f:
        text = f.read()[:200_000]
    (tmp_path / "c.txt").write_text(text, encoding="utf-8")
    tok = pyllama.Tokenizer.train([text], vocab_size=600, pattern=pattern)
    monkeypatch.setattr(data_mod, "_CHUNK_BYTES", 2048)  # ~100 pieces
    prepare(tmp_path / "c.txt", tok, tmp_path / "out", val_fraction=0.1)
    train, val = TokenData.open(tmp_path / "out" / "train.bin"), TokenData.open(tmp_path / "out" / "val.bin")
    assert np.concatenate([train.tokens, val.tokens]).tolist() == tok.encode_ordinary(text)
    assert pyllama.Tokenizer.load(str(tmp_path / "out" / "tokenizer.tiktoken")).encode_ordinary(text[:500]) == \
        tok.encode_ordinary(text[:500])
