"""Token data: ``prepare`` (text → token files) and a memmap-backed batch loader.

File format (docs/TRAINING.md): ``<split>.bin`` holds the token ids as raw
little-endian ``uint16`` (when the vocabulary has at most 65536 ids) or
``uint32``, with no header; the sidecar ``<split>.json`` records
``{"format": "pyllama.tokens", "version": 1, "dtype", "count", "max_id",
"n_vocab", "tokenizer", "sources"}``. The ``.bin`` files are opened as numpy
memmaps, so corpora larger than memory work.

>>> import numpy as np
>>> data = TokenData.from_array(np.arange(100) % 7)
>>> loader = DataLoader(data, batch_size=2, seq_len=8, seed=0)
>>> loader.next_batch().shape      # windows of seq_len + 1 tokens
(2, 9)
"""
from __future__ import annotations

import json
import os
from typing import Dict, Iterable, Iterator, List, Optional, Union

import numpy as np

from ._io import atomic_write_text

__all__ = ["TokenData", "DataLoader", "prepare", "token_dtype", "save_tokenizer", "TOKENIZER_FILE"]

FORMAT = "pyllama.tokens"
VERSION = 1
# The tokenizer saved next to token data and in checkpoints: Tokenizer.save writes
# tokenizer.tiktoken (+ tokenizer.tiktoken.json); save_hf adds a Hugging Face tokenizer.json.
TOKENIZER_FILE = "tokenizer.tiktoken"
HF_TOKENIZER_FILE = "tokenizer.json"
_CHUNK_BYTES = 1 << 20

PathLike = Union[str, "os.PathLike[str]"]


def token_dtype(n_vocab: int) -> np.dtype:
    """``uint16`` when every id fits (n_vocab <= 65536), else ``uint32``.

    >>> token_dtype(50257), token_dtype(100277)
    (dtype('uint16'), dtype('uint32'))
    """
    if n_vocab <= 0:
        raise ValueError(f"n_vocab must be > 0, got {n_vocab}")
    return np.dtype(np.uint16) if n_vocab <= 1 << 16 else np.dtype(np.uint32)


class TokenData:
    """A stream of token ids (a numpy memmap or array) and what is known about it.

    >>> d = TokenData.from_array([5, 1, 4, 1])
    >>> len(d), d.max_id
    (4, 5)
    """

    def __init__(self, tokens: np.ndarray, meta: Optional[dict] = None, path: Optional[str] = None) -> None:
        if tokens.ndim != 1:
            raise ValueError(f"token data must be 1-D, got shape {tokens.shape}")
        if tokens.dtype.kind not in "ui":
            raise TypeError(f"token data must hold integers, got {tokens.dtype}")
        self.tokens = tokens
        self.meta = dict(meta or {})
        self.path = path
        self._max_id = self.meta.get("max_id")

    @classmethod
    def from_array(cls, tokens, n_vocab: Optional[int] = None) -> "TokenData":
        a = np.asarray(tokens)
        if a.dtype.kind == "i" and a.size and a.min() < 0:
            raise ValueError("token ids must be >= 0")
        meta = {"count": int(a.size)}
        if n_vocab is not None:
            meta["n_vocab"] = int(n_vocab)
        return cls(a.reshape(-1), meta)

    @classmethod
    def open(cls, path: PathLike) -> "TokenData":
        """Open ``<split>.bin`` (or its ``.json`` sidecar) written by :func:`prepare` as a memmap."""
        path = os.path.abspath(os.fspath(path))
        base = path[:-5] if path.endswith(".json") else path[:-4] if path.endswith(".bin") else path
        bin_path, meta_path = base + ".bin", base + ".json"
        if not os.path.isfile(meta_path):
            raise FileNotFoundError(f"no token data at {base!r}: expected {meta_path!r} and {bin_path!r} "
                                    "(write them with `pyllama prepare`)")
        try:
            with open(meta_path, encoding="utf-8") as f:
                meta = json.load(f)
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ValueError(f"{meta_path!r} is not a valid token-data sidecar: {e}") from None
        if not isinstance(meta, dict) or meta.get("format") != FORMAT:
            raise ValueError(f"{meta_path!r} is not a pyllama token-data sidecar (format != {FORMAT!r})")
        if meta.get("version") != VERSION:
            raise ValueError(f"{meta_path!r} has version {meta.get('version')!r}; this pyllama reads version {VERSION}")
        if meta.get("dtype") not in ("uint16", "uint32"):
            raise ValueError(f"{meta_path!r}: dtype must be 'uint16' or 'uint32', got {meta.get('dtype')!r}")
        dtype = np.dtype(meta["dtype"]).newbyteorder("<")
        count = meta.get("count")
        if not isinstance(count, int) or count < 0:
            raise ValueError(f"{meta_path!r}: count must be an int >= 0, got {count!r}")
        if not os.path.isfile(bin_path):
            raise FileNotFoundError(f"token file {bin_path!r} is missing (its sidecar {meta_path!r} exists)")
        size = os.path.getsize(bin_path)
        if size != count * dtype.itemsize:
            raise ValueError(f"{bin_path!r} holds {size} bytes but its sidecar says {count} {meta['dtype']} tokens "
                             f"({count * dtype.itemsize} bytes): the file is truncated or corrupt; run prepare again")
        tokens = np.memmap(bin_path, dtype=dtype, mode="r", shape=(count,)) if count else np.zeros(0, dtype)
        return cls(tokens, meta, base)

    def __len__(self) -> int:
        return int(self.tokens.shape[0])

    @property
    def n_vocab(self) -> Optional[int]:
        return self.meta.get("n_vocab")

    @property
    def max_id(self) -> int:
        """Largest token id (from the sidecar, else one pass over the data in chunks); -1 when empty."""
        if self._max_id is None:
            m = -1
            for lo in range(0, len(self), 1 << 24):
                m = max(m, int(self.tokens[lo:lo + (1 << 24)].max()))
            self._max_id = m
        return int(self._max_id)

    def fingerprint(self, samples: int = 64, chunk: int = 4096) -> str:
        """A hash of the dtype, the length and ``samples`` evenly spaced slices of
        ``chunk`` tokens (all of them when the data is smaller): cheap on a large
        memmap, and it tells apart the data files that data-parallel ranks open.

        >>> TokenData.from_array([1, 2, 3]).fingerprint() == TokenData.from_array([1, 2, 4]).fingerprint()
        False
        """
        import hashlib

        t = self.tokens
        n = len(t)
        h = hashlib.blake2b(digest_size=12)
        h.update(f"{t.dtype.str}:{n}".encode())
        if n <= samples * chunk:
            h.update(np.ascontiguousarray(t).tobytes())
        else:
            for s in np.linspace(0, n - chunk, samples).astype(np.int64):
                h.update(np.ascontiguousarray(t[int(s):int(s) + chunk]).tobytes())
        return h.hexdigest()

    def describe(self) -> dict:
        return {"path": self.path, "count": len(self), "dtype": str(self.tokens.dtype),
                "tokenizer": self.meta.get("tokenizer"), "n_vocab": self.n_vocab}


def as_token_data(data) -> TokenData:
    """A TokenData from a TokenData, a path written by prepare, or an array of ids."""
    if isinstance(data, TokenData):
        return data
    if isinstance(data, (str, os.PathLike)):
        return TokenData.open(data)
    return TokenData.from_array(data)


class DataLoader:
    """Batches of windows of ``seq_len + 1`` consecutive tokens.

    ``mode="random"``: each window starts at a position drawn from a seeded
    ``numpy`` PCG64 generator (uniform over every valid start).
    ``mode="sequential"``: windows follow each other (stride ``seq_len``, so
    each window's last token is the next one's first) and wrap at the end.
    :meth:`state_dict` / :meth:`load_state_dict` save and restore the position
    and the generator exactly.

    >>> import numpy as np
    >>> seq = DataLoader(TokenData.from_array(np.arange(20)), 2, 4, mode="sequential")
    >>> seq.next_batch().tolist()
    [[0, 1, 2, 3, 4], [4, 5, 6, 7, 8]]
    """

    def __init__(self, data, batch_size: int, seq_len: int, seed: int = 0, mode: str = "random") -> None:
        self.data = as_token_data(data)
        if batch_size <= 0 or seq_len <= 0:
            raise ValueError(f"batch_size and seq_len must be > 0, got {batch_size}, {seq_len}")
        if mode not in ("random", "sequential"):
            raise ValueError(f"mode must be 'random' or 'sequential', got {mode!r}")
        if len(self.data) < seq_len + 1:
            raise ValueError(f"seq_len={seq_len} needs at least {seq_len + 1} tokens of data, "
                             f"but {self.data.path or 'the data'} has {len(self.data)}")
        self.batch_size = int(batch_size)
        self.seq_len = int(seq_len)
        self.seed = int(seed)
        self.mode = mode
        self.rng = np.random.Generator(np.random.PCG64(self.seed))
        self.pos = 0  # next window start (sequential mode)
        self.batches = 0  # batches drawn so far

    def _next_starts(self) -> np.ndarray:
        """Advance the stream by one batch: its window start positions."""
        B, W, n = self.batch_size, self.seq_len + 1, len(self.data)
        if self.mode == "random":
            starts = self.rng.integers(0, n - W + 1, size=B)
        else:
            starts = np.empty(B, np.int64)
            for b in range(B):
                if self.pos + W > n:
                    self.pos = 0
                starts[b] = self.pos
                self.pos += self.seq_len
        self.batches += 1
        return starts

    def skip_batch(self) -> None:
        """Advance past one batch without reading it: the stream stays where
        :meth:`next_batch` would have left it. Data-parallel ranks draw the same
        stream and each reads only its own micro-batches.

        >>> import numpy as np
        >>> a, b = (DataLoader(TokenData.from_array(np.arange(50)), 2, 4, seed=1) for _ in range(2))
        >>> a.skip_batch(); bool((a.next_batch() == (b.next_batch(), b.next_batch())[1]).all())
        True
        """
        self._next_starts()

    def next_batch(self) -> np.ndarray:
        """An int32 array [batch_size, seq_len + 1]."""
        starts = self._next_starts()
        B, W = self.batch_size, self.seq_len + 1
        out = np.empty((B, W), np.int32)
        toks = self.data.tokens
        for b, s in enumerate(starts):
            out[b] = toks[int(s):int(s) + W]
        return out

    def __iter__(self) -> Iterator[np.ndarray]:
        while True:
            yield self.next_batch()

    def state_dict(self) -> dict:
        """JSON-serialisable position and generator state."""
        return {"mode": self.mode, "seed": self.seed, "batch_size": self.batch_size, "seq_len": self.seq_len,
                "pos": self.pos, "batches": self.batches, "rng": self.rng.bit_generator.state}

    def load_state_dict(self, state: dict) -> None:
        for k in ("mode", "batch_size", "seq_len"):
            if state.get(k) != getattr(self, k):
                raise ValueError(f"data loader state has {k}={state.get(k)!r} but this loader has "
                                 f"{k}={getattr(self, k)!r}")
        try:
            self.rng.bit_generator.state = state["rng"]
            self.pos = int(state["pos"])
            self.batches = int(state["batches"])
        except (KeyError, TypeError, ValueError) as e:
            raise ValueError(f"data loader state is corrupt: {e}") from None


# ---------------------------------------------------------------------- prepare

def save_tokenizer(tokenizer, folder: str) -> Optional[str]:
    """Save ``tokenizer`` into ``folder`` as ``tokenizer.tiktoken`` (+ its ``.json``, via
    ``Tokenizer.save``) and, when it can, a Hugging Face ``tokenizer.json``. Returns the
    file name to load it from (``Tokenizer.load``), or None without a ``save`` method."""
    if not hasattr(tokenizer, "save"):
        return None
    tokenizer.save(os.path.join(folder, TOKENIZER_FILE))
    if hasattr(tokenizer, "save_hf"):
        tokenizer.save_hf(os.path.join(folder, HF_TOKENIZER_FILE))
    return TOKENIZER_FILE


def _input_files(path: str) -> List[str]:
    if os.path.isfile(path):
        return [path]
    if os.path.isdir(path):
        files = []
        for root, dirs, names in os.walk(path):
            dirs[:] = sorted(d for d in dirs if not d.startswith("."))
            files += [os.path.join(root, n) for n in sorted(names) if not n.startswith(".")]
        if not files:
            raise ValueError(f"folder {path!r} holds no files to prepare")
        return files
    raise FileNotFoundError(f"no text file or folder at {path!r}")


def _char_before(buf: bytes, j: int) -> str:
    """The character that ends at byte j (exclusive), or '' when it cannot be decoded."""
    for k in range(1, 5):
        if j - k < 0:
            return ""
        try:
            return buf[j - k:j].decode("utf-8")
        except UnicodeDecodeError:
            continue
    return ""


def _char_at(buf: bytes, j: int) -> str:
    """The character that starts at byte j, or '' when it cannot be decoded."""
    for k in range(1, 5):
        try:
            return buf[j:j + k].decode("utf-8")
        except UnicodeDecodeError:
            continue
    return ""


def _safe_cut(buf: bytes, lo: int) -> int:
    r"""First position >= lo just after a newline that sits between two non-space
    characters (``x
y``); -1 when there is none.

    Every pre-tokenizer preset (gpt2, cl100k, o200k, llama3) ends a piece at such a
    newline and starts the next at ``y``, whether or not the text goes on, so
    encoding the parts separately gives the same ids as encoding the whole text.
    (After a longer whitespace run, gpt2's ``\s+(?!\S)`` would split the run
    differently at the end of a part.)
    """
    i = max(lo, 1)
    while True:
        j = buf.find(b"\n", i)
        if j < 0 or j + 1 >= len(buf):
            return -1
        before, after = _char_before(buf, j), _char_at(buf, j + 1)
        if before and after and not before.isspace() and not after.isspace():
            return j + 1
        i = j + 1


def _text_pieces(path: str, start: int, end: int, chunk: Optional[int] = None) -> Iterator[str]:
    """The bytes [start, end) of a UTF-8 file as text pieces cut at safe newlines."""
    chunk = chunk or _CHUNK_BYTES
    with open(path, "rb") as f:
        f.seek(start)
        left = end - start
        carry = b""
        while left > 0 or carry:
            data = f.read(min(chunk, left)) if left > 0 else b""
            left -= len(data)
            buf = carry + data
            if left > 0:
                cut = _safe_cut(buf, max(0, len(buf) - chunk // 2)) if len(buf) >= chunk else -1
                if cut < 0:
                    carry = buf
                    continue
                piece, carry = buf[:cut], buf[cut:]
            else:
                piece, carry = buf, b""
            try:
                yield piece.decode("utf-8")
            except UnicodeDecodeError as e:
                raise ValueError(f"{path!r} is not UTF-8 text ({e})") from None


def _split_point(path: str, val_fraction: float) -> int:
    """Byte offset where the validation part of a file starts (at a safe newline)."""
    size = os.path.getsize(path)
    if val_fraction <= 0:
        return size
    target = int(size * (1.0 - val_fraction))
    with open(path, "rb") as f:
        f.seek(target)
        tail = f.read(1 << 16)
    cut = _safe_cut(tail, 0)
    return size if cut < 0 else target + cut


class _TokenWriter:
    def __init__(self, path: str, dtype: np.dtype) -> None:
        self.path = path
        self.tmp = path + ".tmp"
        self.dtype = dtype
        self.count = 0
        self.max_id = -1
        self.f = open(self.tmp, "wb")

    def write(self, ids) -> None:
        a = np.asarray(ids, dtype=np.int64)
        if a.size == 0:
            return
        self.max_id = max(self.max_id, int(a.max()))
        if self.max_id > np.iinfo(self.dtype).max:
            raise ValueError(f"token id {self.max_id} does not fit {self.dtype}")
        self.f.write(a.astype(self.dtype.newbyteorder("<")).tobytes())
        self.count += int(a.size)

    def close(self) -> None:
        self.f.flush()
        os.fsync(self.f.fileno())
        self.f.close()
        os.replace(self.tmp, self.path)

    def abort(self) -> None:
        self.f.close()
        try:
            os.unlink(self.tmp)
        except OSError:
            pass


def prepare(input_path: PathLike, tokenizer, out_dir: PathLike, *, val_fraction: float = 0.1,
            tokenizer_ref: Optional[str] = None, progress: bool = False) -> Dict[str, dict]:
    """Tokenize a text file (or every file in a folder) into ``train`` and ``val`` token files.

    The last ``val_fraction`` of each file (cut at a line boundary) goes to
    ``val``, the rest to ``train``. Text is read and encoded in ~1 MB pieces,
    so the input may be larger than memory. The tokenizer is saved next to the
    data (:func:`save_tokenizer`). Returns the two sidecars.

    >>> tok = Tokenizer.train("corpus.txt", vocab_size=1024)     # doctest: +SKIP
    >>> meta = prepare("corpus.txt", tok, "data/corpus")          # doctest: +SKIP
    >>> TokenData.open("data/corpus/train.bin")                    # doctest: +SKIP
    """
    input_path, out_dir = os.fspath(input_path), os.fspath(out_dir)
    if not (0.0 <= val_fraction < 1.0):
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction!r}")
    for attr in ("encode_ordinary", "n_vocab"):
        if not hasattr(tokenizer, attr):
            raise TypeError(f"tokenizer must provide .{attr} (a pyllama.Tokenizer), got {type(tokenizer).__name__}")
    files = _input_files(input_path)
    n_vocab = int(tokenizer.n_vocab)
    dtype = token_dtype(n_vocab)
    os.makedirs(out_dir, exist_ok=True)
    saved = save_tokenizer(tokenizer, out_dir)
    if tokenizer_ref is None:
        tokenizer_ref = saved
    writers = {s: _TokenWriter(os.path.join(out_dir, s + ".bin"), dtype) for s in ("train", "val")}
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=sum(os.path.getsize(p) for p in files), unit="B", unit_scale=True, desc="prepare")
    try:
        for path in files:
            cut = _split_point(path, val_fraction)
            for split, (lo, hi) in (("train", (0, cut)), ("val", (cut, os.path.getsize(path)))):
                for text in _text_pieces(path, lo, hi):
                    writers[split].write(tokenizer.encode_ordinary(text))
                    if bar is not None:
                        bar.update(len(text.encode("utf-8")))
        for w in writers.values():
            w.close()
    except BaseException:
        for w in writers.values():
            w.abort()
        raise
    finally:
        if bar is not None:
            bar.close()
    metas = {}
    for split, w in writers.items():
        meta = {"format": FORMAT, "version": VERSION, "dtype": dtype.name, "count": w.count, "max_id": w.max_id,
                "n_vocab": n_vocab, "tokenizer": tokenizer_ref, "split": split,
                "val_fraction": val_fraction, "sources": [os.path.abspath(p) for p in files]}
        atomic_write_text(os.path.join(out_dir, split + ".json"), json.dumps(meta, indent=2) + "\n")
        metas[split] = meta
    return metas
