"""Byte-level BPE tokenizer, compatible with tiktoken (same ids for the same vocabulary).

The work happens in the C++ core: the preset pre-tokenizers (``gpt2``, ``cl100k`` /
``llama3``, ``o200k``) are hand-written scanners that split text exactly as the
presets' regular expressions do; encoding merges byte pairs by rank; training counts
pieces and merges pairs with a priority queue. This module adds the policy: special
tokens, file formats, threads and progress bars.

>>> import pyllama
>>> tok = pyllama.Tokenizer.train(["the cat sat on the mat"] * 10, vocab_size=262,
...                               special_tokens=["<|endoftext|>"])
>>> ids = tok.encode("the cat<|endoftext|>", allowed_special="all")
>>> tok.decode(ids)
'the cat<|endoftext|>'

Files
-----
``save(path)`` writes the vocabulary in tiktoken's ``.tiktoken`` format (one line per
token: the token's bytes in base64, a space, its rank) at ``path`` and a small JSON
file at ``path + ".json"`` with the pattern and the special tokens. ``save_hf(path)``
writes a Hugging Face ``tokenizer.json`` that the ``tokenizers`` package loads.
"""
from __future__ import annotations

import collections
import gzip
import json
import os
import re
import sys
import warnings
from typing import AbstractSet, Collection, Dict, Iterable, List, Literal, Optional, Sequence, Union

from . import _core
from ._io import atomic_write_bytes, atomic_write_text

__all__ = ["Tokenizer", "TokenIdError", "PRESETS"]

#: Names accepted as ``pattern``; ``llama3`` is the ``cl100k`` pattern.
PRESETS = ("gpt2", "cl100k", "llama3", "o200k")

_META_FORMAT = "pyllama.tokenizer"
_META_VERSION = 1
_DIR_FILE = "tokenizer.tiktoken"
# tokenizer.json regexes are compiled by Oniguruma, which reads tiktoken's cl100k spelling differently
# (`\p{N}{1,3}+` is a repeat of `\p{N}{1,3}` there, not possessive: digit runs stay whole). Llama 3's
# tokenizer.json spelling splits exactly as tiktoken's cl100k does, so exports write that one.
_HF_CL100K_REGEX = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|"
                    r"\s*[\r\n]+|\s+(?!\S)|\s+")


class TokenIdError(IndexError, ValueError):
    """A token id that is not in the vocabulary (both an IndexError and a ValueError)."""


def _canonical_pattern(pattern: str) -> str:
    """A preset name as the core knows it, or the custom regex itself."""
    if not isinstance(pattern, str):
        raise TypeError(f"pattern must be a preset name {PRESETS} or a regex string, got {type(pattern).__name__}")
    if pattern in PRESETS:
        return "cl100k" if pattern == "llama3" else pattern
    if re.fullmatch(r"[A-Za-z0-9_]+", pattern):
        # A bare word is far more likely a misspelt preset than a regex.
        raise ValueError(f"unknown pattern preset {pattern!r}: expected one of {', '.join(PRESETS)}, "
                         "or a regular expression")
    return pattern


def _compile_custom(pattern: str):
    try:
        import regex as rx  # \p{L} etc. need the third-party `regex` module
    except ImportError:  # pragma: no cover - regex is installed alongside tiktoken/transformers
        rx = re
    try:
        return rx.compile(pattern)
    except Exception as e:  # regex.error / re.error
        raise ValueError(f"invalid pattern regex {pattern!r}: {e}") from None


def _read_bytes(path) -> bytes:
    path = os.fspath(path)
    with open(path, "rb") as f:
        data = f.read()
    if path.endswith(".gz") or data[:2] == b"\x1f\x8b":
        data = gzip.decompress(data)
    return data


def _bytes_to_unicode() -> Dict[int, str]:
    """GPT-2's byte -> printable character table used by byte-level BPE in `tokenizers`."""
    printable = [*range(0x21, 0x7F), *range(0xA1, 0xAD), *range(0xAE, 0x100)]
    table = {b: chr(b) for b in printable}
    extra = 0
    for b in range(256):
        if b not in table:
            table[b] = chr(256 + extra)
            extra += 1
    return table


def _special_dict(special_tokens, first_id: int) -> Dict[str, int]:
    if special_tokens is None:
        return {}
    if isinstance(special_tokens, str):
        raise TypeError("special_tokens must be a list of strings or a dict {token: id}, not a str")
    if isinstance(special_tokens, dict):
        out = {}
        for t, i in special_tokens.items():
            if not isinstance(t, str) or not isinstance(i, int) or isinstance(i, bool) or i < 0:
                raise TypeError(f"special_tokens must map str to a non-negative int id, got {t!r}: {i!r}")
            out[t] = i
        return out
    out = {}
    for t in special_tokens:
        if not isinstance(t, str):
            raise TypeError(f"special tokens must be strings, got {t!r}")
        if t in out:
            raise ValueError(f"special token {t!r} is listed twice")
        out[t] = first_id + len(out)
    return out


class Tokenizer:
    """Byte-level BPE tokenizer. Build one with :meth:`train`, :meth:`from_tiktoken` or :meth:`load`.

    ``pattern`` is a preset name (``"gpt2"``, ``"cl100k"``, ``"llama3"`` = cl100k,
    ``"o200k"``), split by the core's hand-written scanners, or any other regular
    expression string, which is split in Python with the ``regex`` module (slower; the
    BPE merges still run in the core). A bare word that is not a preset is an error.

    >>> import pyllama
    >>> tok = pyllama.Tokenizer.train(["hello world, hello there"] * 5, vocab_size=265)
    >>> tok.decode(tok.encode("hello there"))
    'hello there'
    """

    def __init__(self, core, pattern: str):
        # Private: use the class methods.
        self._core = core
        self._pattern = pattern
        self._custom = None if _core.tokenizer_is_preset(pattern) else _compile_custom(pattern)
        self._special: Dict[str, int] = dict(core.specials)
        self._special_set = frozenset(self._special)
        self._all_special_ids = sorted(self._special.values())
        self._special_regex = None

    # ------------------------------------------------------------------ construction

    @classmethod
    def from_tiktoken(cls, path, pattern: str = "cl100k",
                      special_tokens: Optional[Union[Dict[str, int], Sequence[str]]] = None) -> "Tokenizer":
        """Load a ``.tiktoken`` vocabulary (``.gz`` too): one ``<base64 token> <rank>`` per line.

        ``special_tokens``: a dict ``{text: id}`` (ids outside the ranks), or a list of
        texts that get the ids after the last rank. Malformed files (bad base64, bad or
        duplicate ranks, gaps, duplicate tokens, a missing single byte) raise ValueError.

        >>> import pyllama
        >>> tok = pyllama.Tokenizer.from_tiktoken("cl100k_base.tiktoken", "cl100k",
        ...                                       {"<|endoftext|>": 100257})  # doctest: +SKIP
        >>> tok.encode("hello world")  # doctest: +SKIP
        [15339, 1917]
        """
        pat = _canonical_pattern(pattern)
        data = _read_bytes(path)
        what = f"{os.fspath(path)!r} is not a .tiktoken file (text lines '<base64 token> <rank>')"
        if b"\0" in data[:65536]:
            raise ValueError(f"{what}: it holds binary data; pass the tokenizer's .tiktoken ranks file (a "
                             "tokenizer.json goes to Tokenizer.from_hf_json / Tokenizer.load)")
        n_lines = sum(1 for line in data.splitlines() if line.strip())
        specials = _special_dict(special_tokens, n_lines)
        try:
            core = _core.CoreTokenizer.from_tiktoken(data, pat if _core.tokenizer_is_preset(pat) else None,
                                                     list(specials.items()))
        except ValueError as e:
            raise ValueError(f"{what}: {e}") from None
        return cls(core, pat)

    @classmethod
    def from_pretrained(cls, path) -> "Tokenizer":
        """The tokenizer a model ships: a folder (``tokenizer.json``, else ``tokenizer.model``, else
        ``tokenizer.tiktoken``, with ``tokenizer_config.json`` / ``special_tokens_map.json`` /
        ``chat_template.jinja`` when present) or one file (``tokenizer.json``, a tiktoken-format
        ``tokenizer.model`` or ``.tiktoken``). A tokenizer.json gives a
        :class:`pyllama.tokenizers_hf.PretrainedTokenizer` (a Tokenizer) whose
        ``encode(text, add_special_tokens=True)`` equals transformers' ``tokenizer(text)["input_ids"]``.

        >>> import pyllama
        >>> tok = pyllama.Tokenizer.from_pretrained("Meta-Llama-3-8B")  # doctest: +SKIP
        >>> tok.encode("Hello world", add_special_tokens=True)  # doctest: +SKIP
        [128000, 9906, 1917]
        """
        from .tokenizers_hf import load_pretrained

        return load_pretrained(path)

    @classmethod
    def train_wordpiece(cls, texts_or_path, vocab_size: int, special_tokens: Optional[Sequence[str]] = None, *,
                        lowercase: bool = True, min_frequency: int = 2) -> "Tokenizer":
        """A BERT-style WordPiece tokenizer learnt from text; see :func:`pyllama.tokenizers_hf.train_wordpiece`.

        >>> import pyllama
        >>> tok = pyllama.Tokenizer.train_wordpiece(["low lower lowest"] * 10, vocab_size=40)
        >>> tok.decode(tok.encode("lowest"))
        'lowest'
        """
        from .tokenizers_hf import train_wordpiece

        return train_wordpiece(texts_or_path, vocab_size, special_tokens, lowercase=lowercase,
                               min_frequency=min_frequency)

    @classmethod
    def train_unigram(cls, texts_or_path, vocab_size: int, special_tokens: Optional[Sequence[str]] = None, *,
                      max_piece_length: int = 16, seed_size: int = 200000) -> "Tokenizer":
        """A SentencePiece-style Unigram tokenizer learnt by EM and pruning; see
        :func:`pyllama.tokenizers_hf.train_unigram`.

        >>> import pyllama
        >>> tok = pyllama.Tokenizer.train_unigram(["low lower lowest"] * 10, vocab_size=30)
        >>> tok.decode(tok.encode("lowest"))
        'lowest'
        """
        from .tokenizers_hf import train_unigram

        return train_unigram(texts_or_path, vocab_size, special_tokens, max_piece_length=max_piece_length,
                             seed_size=seed_size)

    @classmethod
    def train_wordlevel(cls, texts_or_path, vocab_size: int, special_tokens: Optional[Sequence[str]] = None, *,
                        lowercase: bool = False) -> "Tokenizer":
        """A word-level tokenizer (the most frequent words); see :func:`pyllama.tokenizers_hf.train_wordlevel`.

        >>> import pyllama
        >>> pyllama.Tokenizer.train_wordlevel(["x y y"], vocab_size=3).encode("y x z")
        [1, 2, 0]
        """
        from .tokenizers_hf import train_wordlevel

        return train_wordlevel(texts_or_path, vocab_size, special_tokens, lowercase=lowercase)

    @classmethod
    def from_ranks(cls, tokens: Sequence[bytes], pattern: str = "cl100k",
                   special_tokens: Optional[Union[Dict[str, int], Sequence[str]]] = None) -> "Tokenizer":
        """A tokenizer from the tokens' bytes in rank order (rank = index).

        >>> import pyllama
        >>> tok = pyllama.Tokenizer.from_ranks([bytes([b]) for b in range(256)] + [b"ab"], "gpt2")
        >>> tok.encode("ab")
        [256]
        """
        pat = _canonical_pattern(pattern)
        toks = [bytes(t) for t in tokens]
        specials = _special_dict(special_tokens, len(toks))
        core = _core.CoreTokenizer(toks, pat if _core.tokenizer_is_preset(pat) else None, list(specials.items()))
        return cls(core, pat)

    @classmethod
    def train(cls, texts_or_path, vocab_size: int, pattern: str = "cl100k",
              special_tokens: Optional[Sequence[str]] = None, *, progress: Optional[bool] = None) -> "Tokenizer":
        """Learn a byte-level BPE vocabulary.

        ``texts_or_path``: an iterable of strings (each one a document) or a path to a
        UTF-8 text file (a ``str`` is always taken as a path; pass ``[text]`` for one
        text). ``vocab_size`` counts everything: the 256 single bytes, the merged tokens
        and the special tokens, which get the last ids. Text equal to a special token is
        cut out of the training data. Ties between equally frequent pairs go to the
        smaller pair of ids, so training is deterministic. ``progress``: show a tqdm bar
        (default: when stderr is a terminal).

        >>> import pyllama
        >>> tok = pyllama.Tokenizer.train(["low lower lowest"] * 3, vocab_size=260, pattern="gpt2")
        >>> tok.n_vocab
        260
        """
        if not isinstance(vocab_size, int) or isinstance(vocab_size, bool):
            raise TypeError(f"vocab_size must be an int, got {type(vocab_size).__name__}")
        specials = list(special_tokens or [])
        if len(set(specials)) != len(specials):
            raise ValueError("special_tokens has duplicates")
        n_tokens = vocab_size - len(specials)
        if n_tokens < 256:
            raise ValueError(f"vocab_size={vocab_size} is too small: byte-level BPE needs 256 byte tokens "
                             f"plus {len(specials)} special tokens")
        pat = _canonical_pattern(pattern)
        preset = _core.tokenizer_is_preset(pat)
        trainer = _core.CoreBpeTrainer(pat if preset else None, specials)
        custom = None if preset else _compile_custom(pat)

        def feed(text: str) -> None:
            if preset:
                trainer.add_text(text)
                return
            chunks = [text]
            for s in specials:
                chunks = [part for c in chunks for part in c.split(s)]
            counts = collections.Counter(m.group(0) for c in chunks for m in custom.finditer(c))
            trainer.add_pieces(dict(counts))

        if isinstance(texts_or_path, (str, bytes, os.PathLike)):
            path = os.fspath(texts_or_path)
            if isinstance(path, bytes):
                path = os.fsdecode(path)
            if not os.path.isfile(path):
                raise FileNotFoundError(f"training text {path!r} does not exist (pass a list of strings to train on text)")
            with open(path, "r", encoding="utf-8", errors="replace", newline="") as f:
                while True:
                    block = f.read(1 << 22)
                    if not block:
                        break
                    if not block.endswith("\n"):
                        block += f.readline()  # blocks end at a line end
                    feed(block)
        else:
            try:
                it = iter(texts_or_path)
            except TypeError:
                raise TypeError("texts_or_path must be a path or an iterable of strings, "
                                f"got {type(texts_or_path).__name__}") from None
            for i, text in enumerate(it):
                if not isinstance(text, str):
                    raise TypeError(f"training texts must be str, item {i} is {type(text).__name__}")
                feed(text)

        show = sys.stderr.isatty() if progress is None else bool(progress)
        bar = None
        if show:
            from tqdm.auto import tqdm

            bar = tqdm(total=n_tokens - 256, desc="BPE merges", unit="merge")

        def report(done: int, total: int) -> None:
            if bar is not None:
                bar.update(done - bar.n)

        try:
            tokens = trainer.train(n_tokens, report if bar is not None else None)
        finally:
            if bar is not None:
                bar.close()
        if len(tokens) < n_tokens:
            warnings.warn(f"the training text has too few distinct pairs: the vocabulary has {len(tokens)} "
                          f"tokens instead of {n_tokens} (plus {len(specials)} special)", stacklevel=2)
        special_ids = {s: len(tokens) + i for i, s in enumerate(specials)}
        core = _core.CoreTokenizer(tokens, pat if preset else None, list(special_ids.items()))
        return cls(core, pat)

    # ------------------------------------------------------------------ properties

    @property
    def n_vocab(self) -> int:
        """Largest token id + 1 (regular and special tokens).

        >>> import pyllama
        >>> pyllama.Tokenizer.from_ranks([bytes([b]) for b in range(256)], "gpt2", ["<|eot|>"]).n_vocab
        257
        """
        return self._core.n_vocab

    @property
    def pattern(self) -> str:
        """The preset name (``gpt2``, ``cl100k``, ``o200k``) or the custom regex."""
        return self._pattern

    @property
    def pattern_regex(self) -> str:
        """The regular expression the pre-tokenizer implements."""
        return _core.tokenizer_pattern_regex(self._pattern) if self._custom is None else self._pattern

    @property
    def special_tokens(self) -> Dict[str, int]:
        """``{text: id}`` of the special tokens (a copy)."""
        return dict(self._special)

    @property
    def special_tokens_set(self) -> AbstractSet[str]:
        """The special tokens' texts, as in tiktoken."""
        return self._special_set

    def token_bytes(self, token_id: int) -> bytes:
        """The bytes of one token.

        >>> import pyllama
        >>> tok = pyllama.Tokenizer.from_ranks([bytes([b]) for b in range(256)], "gpt2")
        >>> tok.token_bytes(104)
        b'h'
        """
        try:
            return self._core.token_bytes(token_id)
        except IndexError as e:
            raise TokenIdError(str(e)) from None

    def split(self, text: str) -> List[str]:
        """The pieces the pre-tokenizer cuts ``text`` into (special tokens not recognised).

        >>> import pyllama
        >>> pyllama.Tokenizer.from_ranks([bytes([b]) for b in range(256)], "cl100k").split("Hello  world!!")
        ['Hello', ' ', ' world', '!!']
        """
        text = self._check_text(text)
        if self._custom is None:
            try:
                return _core.tokenizer_pretokenize(self._pattern, text)
            except UnicodeEncodeError:
                return _core.tokenizer_pretokenize(self._pattern, _fix_surrogates(text))
        return [m.group(0) for m in self._custom.finditer(text)]

    # ------------------------------------------------------------------ encoding

    @staticmethod
    def _check_text(text) -> str:
        if not isinstance(text, str):
            raise TypeError(f"expected a str to encode, got {type(text).__name__}"
                            + (" (decode bytes first)" if isinstance(text, (bytes, bytearray)) else ""))
        return text

    def _allowed_ids(self, allowed_special) -> List[int]:
        if allowed_special == "all":
            return self._all_special_ids
        if not allowed_special:
            return []
        if isinstance(allowed_special, str):
            raise TypeError("allowed_special must be 'all' or a set of strings, not a str")
        return [self._special[t] for t in allowed_special if t in self._special]

    def _disallowed(self, allowed_special, disallowed_special) -> frozenset:
        if disallowed_special == "all":
            if not self._special:
                return frozenset()
            if allowed_special == "all":
                return frozenset()
            return self._special_set - frozenset(allowed_special or ())
        if not disallowed_special:
            return frozenset()
        if isinstance(disallowed_special, str):
            raise TypeError("disallowed_special must be 'all' or a collection of strings, not a str")
        return frozenset(disallowed_special)

    def _check_disallowed(self, texts: List[str], allowed_special, disallowed_special) -> None:
        disallowed = self._disallowed(allowed_special, disallowed_special)
        if not disallowed:
            return
        ids = [self._special[t] for t in disallowed if t in self._special]
        others = [t for t in disallowed if t not in self._special and t]  # strings that are not special tokens
        first, special_hit = len(texts), None
        if ids:
            try:
                found = self._core.find_special_batch(texts, ids)
            except UnicodeEncodeError:
                found = self._core.find_special_batch([_fix_surrogates_if_needed(t) for t in texts], ids)
            if found is not None:
                first = found[0]
                special_hit = next(t for t, i in self._special.items() if i == found[1])
        if others:
            scan = range(min(first + 1, len(texts)))
        else:
            scan = [first] if special_hit is not None else []
        for i in scan:
            text = texts[i]
            cands = [(text.find(o), o) for o in others if o in text]
            if i == first:
                cands.append((text.find(special_hit), special_hit))
            if cands:
                hit = min(cands)[1]
                raise ValueError(
                    f"Encountered text corresponding to disallowed special token {hit!r}.\n"
                    f"If you want this text to be encoded as a special token, pass it to `allowed_special`, "
                    f"e.g. `allowed_special={{{hit!r}, ...}}`.\n"
                    f"If you want this text to be encoded as normal text, disable the check for this token by "
                    f"passing `disallowed_special=(tok.special_tokens_set - {{{hit!r}}})`.\n"
                    f"To disable this check for all special tokens, pass `disallowed_special=()`.\n")

    def _encode_custom(self, text: str, allowed_ids: List[int]) -> List[int]:
        out: List[int] = []
        pos = 0
        if allowed_ids:
            allowed = sorted((t for t, i in self._special.items() if i in set(allowed_ids)), key=len, reverse=True)
            for m in re.finditer("|".join(map(re.escape, allowed)), text):
                out += self._core.encode_pieces([p.group(0) for p in self._custom.finditer(text[pos:m.start()])])
                out.append(self._special[m.group(0)])
                pos = m.end()
        out += self._core.encode_pieces([p.group(0) for p in self._custom.finditer(text[pos:])])
        return out

    def encode(self, text: str, *, allowed_special: Union[Literal["all"], AbstractSet[str]] = set(),
               disallowed_special: Union[Literal["all"], Collection[str]] = "all") -> List[int]:
        """Token ids of ``text``, with tiktoken's rules for special tokens.

        Text that matches a special token in ``allowed_special`` (a set, or ``"all"``)
        becomes that token's id. By default (``disallowed_special="all"``) text that
        matches any other special token raises ValueError, whose message says how to
        allow it or encode it as ordinary text (``disallowed_special=()``). A str with
        lone surrogates is encoded as tiktoken does (they become U+FFFD).

        >>> import pyllama
        >>> tok = pyllama.Tokenizer.train(["hello world"] * 4, vocab_size=262, special_tokens=["<|eot|>"])
        >>> tok.decode(tok.encode("hello<|eot|>", allowed_special={"<|eot|>"}))
        'hello<|eot|>'
        >>> tok.encode("hello<|eot|>")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
          ...
        ValueError: Encountered text corresponding to disallowed special token '<|eot|>'...
        """
        if not isinstance(text, str):
            self._check_text(text)
        if self._custom is None:
            # One core call checks for disallowed special tokens and encodes.
            if not allowed_special and disallowed_special == "all":
                allowed, disallowed = [], self._all_special_ids
            else:
                allowed = self._allowed_ids(allowed_special)
                names = self._disallowed(allowed_special, disallowed_special)
                if any(t not in self._special for t in names):  # plain strings: checked in Python
                    self._check_disallowed([text], allowed_special, disallowed_special)
                    names = ()
                disallowed = [self._special[t] for t in names]
            try:
                out = self._core.encode_checked(text, allowed, disallowed)
            except UnicodeEncodeError:
                out = self._core.encode_checked(_fix_surrogates(text), allowed, disallowed)
            if isinstance(out, int):
                self._check_disallowed([text], allowed_special, disallowed_special)  # raises with the message
                raise AssertionError("unreachable")  # pragma: no cover
            return out
        self._check_disallowed([text], allowed_special, disallowed_special)
        return self._encode_custom(_fix_surrogates_if_needed(text), self._allowed_ids(allowed_special))

    def encode_ordinary(self, text: str) -> List[int]:
        """Token ids of ``text``; special-token text is encoded as ordinary text.

        >>> import pyllama
        >>> tok = pyllama.Tokenizer.from_ranks([bytes([b]) for b in range(256)], "gpt2")
        >>> tok.encode_ordinary("hi")
        [104, 105]
        """
        text = self._check_text(text)
        if self._custom is not None:
            return self._encode_custom(_fix_surrogates_if_needed(text), [])
        try:
            return self._core.encode_ordinary(text)
        except UnicodeEncodeError:
            return self._core.encode_ordinary(_fix_surrogates(text))

    def encode_batch(self, texts: Sequence[str], *, num_threads: Optional[int] = None,
                     allowed_special: Union[Literal["all"], AbstractSet[str]] = set(),
                     disallowed_special: Union[Literal["all"], Collection[str]] = "all") -> List[List[int]]:
        """``[encode(t) for t in texts]``, on ``num_threads`` threads (default: pyllama.num_threads()).

        The GIL is released while the core encodes, so other Python threads run meanwhile.

        >>> import pyllama
        >>> tok = pyllama.Tokenizer.from_ranks([bytes([b]) for b in range(256)], "gpt2")
        >>> tok.encode_batch(["a", "bc"], num_threads=2)
        [[97], [98, 99]]
        """
        texts = list(texts)
        for t in texts:
            if not isinstance(t, str):
                self._check_text(t)
        self._check_disallowed(texts, allowed_special, disallowed_special)
        allowed = self._allowed_ids(allowed_special)
        if self._custom is not None:
            return [self._encode_custom(_fix_surrogates_if_needed(t), allowed) for t in texts]
        if num_threads is None:
            num_threads = _core.num_threads()
        if not isinstance(num_threads, int) or num_threads < 1:
            raise ValueError(f"num_threads must be a positive int, got {num_threads!r}")
        try:
            return self._core.encode_batch(texts, allowed, num_threads)
        except UnicodeEncodeError:
            return self._core.encode_batch([_fix_surrogates_if_needed(t) for t in texts], allowed, num_threads)

    # ------------------------------------------------------------------ decoding

    def decode_bytes(self, ids: Iterable[int]) -> bytes:
        """The bytes of the tokens, concatenated. Unknown ids raise TokenIdError (an IndexError
        and a ValueError).

        >>> import pyllama
        >>> tok = pyllama.Tokenizer.from_ranks([bytes([b]) for b in range(256)], "gpt2")
        >>> tok.decode_bytes([104, 105])
        b'hi'
        """
        try:
            if hasattr(ids, "__array__") and hasattr(ids, "dtype"):
                import numpy as np

                arr = np.asarray(ids)
                if arr.dtype.kind not in "iu":
                    raise TypeError(f"token ids must be integers, got an array of {arr.dtype}")
                return self._core.decode_bytes_array(np.ascontiguousarray(arr.reshape(-1), dtype=np.int64))
            if not isinstance(ids, (list, tuple)):
                ids = list(ids)
            try:
                return self._core.decode_bytes(ids)
            except TypeError:
                bad = next((x for x in ids if not isinstance(x, int) and not hasattr(x, "__index__")), None)
                raise TypeError(f"token ids must be ints, got {bad!r}" if bad is not None
                                else "token ids must be ints") from None
        except IndexError as e:
            raise TokenIdError(str(e)) from None

    def decode(self, ids: Iterable[int], errors: str = "replace") -> str:
        """The text of the tokens. Lossy: byte sequences that are not valid UTF-8 (e.g. a
        token sequence cut inside a character) become U+FFFD with the default
        ``errors="replace"``; pass ``errors="strict"`` to raise instead.

        >>> import pyllama
        >>> tok = pyllama.Tokenizer.train(["héllo wörld"] * 4, vocab_size=262)
        >>> tok.decode(tok.encode("wörld"))
        'wörld'
        """
        return self.decode_bytes(ids).decode("utf-8", errors=errors)

    # ------------------------------------------------------------------ files

    @staticmethod
    def _resolve(path) -> str:
        path = os.fspath(path)
        if os.path.isdir(path):
            return os.path.join(path, _DIR_FILE)
        return path

    def save(self, path) -> None:
        """Write the vocabulary as ``.tiktoken`` at ``path`` and the pattern and special
        tokens to ``path + ".json"`` (a folder: ``tokenizer.tiktoken`` inside it). Both
        files are written atomically.

        >>> tok.save("shakespeare.tiktoken")  # doctest: +SKIP
        >>> import pyllama
        >>> pyllama.Tokenizer.load("shakespeare.tiktoken").encode("hello")  # doctest: +SKIP
        """
        path = self._resolve(path)
        atomic_write_bytes(path, self._core.to_tiktoken())
        meta = {
            "format": _META_FORMAT,
            "version": _META_VERSION,
            "vocab_file": os.path.basename(path),
            "pattern": self._pattern,
            "special_tokens": self._special,
            "n_vocab": self.n_vocab,
        }
        atomic_write_text(path + ".json", json.dumps(meta, indent=2, ensure_ascii=False) + "\n")

    @classmethod
    def load(cls, path) -> "Tokenizer":
        """Load a tokenizer written by :meth:`save` (``path`` and ``path + ".json"``). A model's own
        ``tokenizer.json`` / ``tokenizer.model`` (or a folder of them) goes to :meth:`from_pretrained`.

        >>> import pyllama
        >>> tok = pyllama.Tokenizer.load("shakespeare.tiktoken")  # doctest: +SKIP
        """
        original = os.fspath(path)
        path = cls._resolve(path)
        meta_path = path + ".json"
        if not os.path.exists(meta_path):
            if os.path.isdir(original) or os.path.basename(path) in ("tokenizer.json", "tokenizer.model"):
                # a model's own tokenizer files (tokenizer.json, tokenizer.model): see from_pretrained
                if os.path.isdir(original) and not any(os.path.isfile(os.path.join(original, n)) for n in
                                                       ("tokenizer.json", "tokenizer.model")):
                    raise FileNotFoundError(f"no tokenizer in {original!r}")
                if os.path.exists(original):
                    return cls.from_pretrained(original)
            if not os.path.exists(path):
                raise FileNotFoundError(f"no tokenizer at {path!r}")
            raise FileNotFoundError(f"{meta_path!r} (the pattern and special tokens) is missing; for a bare "
                                    ".tiktoken file use Tokenizer.from_tiktoken(path, pattern, special_tokens)")
        with open(meta_path, "r", encoding="utf-8") as f:
            try:
                meta = json.load(f)
            except json.JSONDecodeError as e:
                raise ValueError(f"{meta_path!r} is not valid JSON: {e}") from None
        if not isinstance(meta, dict) or meta.get("format") != _META_FORMAT:
            raise ValueError(f"{meta_path!r} is not a pyllama tokenizer file")
        if meta.get("version") != _META_VERSION:
            raise ValueError(f"{meta_path!r} has version {meta.get('version')!r}; this pyllama reads {_META_VERSION}")
        return cls.from_tiktoken(path, meta["pattern"], meta.get("special_tokens") or {})

    def to_hf_json(self) -> dict:
        """The Hugging Face ``tokenizer.json`` content (a dict) for this tokenizer: a
        byte-level BPE model whose merges reproduce rank-order merging, the pattern as a
        ``Split`` pre-tokenizer, the special tokens as added tokens.
        """
        b2u = _bytes_to_unicode()
        regex = self.pattern_regex
        if self._custom is None and _core.tokenizer_pattern_regex(self._pattern) == _core.tokenizer_pattern_regex("cl100k"):
            regex = _HF_CL100K_REGEX

        def name(rank: int) -> str:
            return "".join(b2u[b] for b in self._core.token_bytes(rank))

        names = [name(r) for r in range(self._core.n_ranks)]
        vocab = {n: r for r, n in enumerate(names)}
        merges = [f"{names[a]} {names[b]}" for a, b, _ in self._core.hf_merges()]
        # `tokenizers` numbers added tokens consecutively after the model's vocabulary, so ids
        # that no token has (cl100k has none at 100256) get placeholder tokens.
        by_id = {i: t for t, i in self._special.items()}
        added = [{"id": i, "content": by_id.get(i, f"<|pyllama_unused_{i}|>"), "single_word": False,
                  "lstrip": False, "rstrip": False, "normalized": False, "special": True}
                 for i in range(self._core.n_ranks, self.n_vocab)]
        return {
            "version": "1.0",
            "truncation": None,
            "padding": None,
            "added_tokens": added,
            "normalizer": None,
            "pre_tokenizer": {
                "type": "Sequence",
                "pretokenizers": [
                    {"type": "Split", "pattern": {"Regex": regex}, "behavior": "Isolated", "invert": False},
                    {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": False},
                ],
            },
            "post_processor": None,
            "decoder": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True, "use_regex": True},
            "model": {
                "type": "BPE",
                "dropout": None,
                "unk_token": None,
                "continuing_subword_prefix": None,
                "end_of_word_suffix": None,
                "fuse_unk": False,
                "byte_fallback": False,
                "ignore_merges": True,
                "vocab": vocab,
                "merges": merges,
            },
        }

    def save_hf(self, path) -> None:
        """Write a Hugging Face ``tokenizer.json`` (a folder: ``tokenizer.json`` inside it)
        that ``tokenizers.Tokenizer.from_file`` loads and that gives the same ids.

        >>> tok.save_hf("out/tokenizer.json")  # doctest: +SKIP
        >>> import tokenizers
        >>> tokenizers.Tokenizer.from_file("out/tokenizer.json").encode("hello").ids  # doctest: +SKIP
        """
        path = os.fspath(path)
        if os.path.isdir(path):
            path = os.path.join(path, "tokenizer.json")
        atomic_write_text(path, json.dumps(self.to_hf_json(), ensure_ascii=False) + "\n")

    def __reduce__(self):
        # Pickles (e.g. for DataLoader workers) carry the vocabulary in .tiktoken form.
        return (_unpickle, (self._core.to_tiktoken(), self._pattern, dict(self._special)))

    def __repr__(self) -> str:
        pat = self._pattern if self._custom is None else "custom regex"
        return f"Tokenizer(n_vocab={self.n_vocab}, pattern={pat!r}, special_tokens={len(self._special)})"


def _unpickle(vocab: bytes, pattern: str, special: Dict[str, int]) -> Tokenizer:
    pat = _canonical_pattern(pattern)
    core = _core.CoreTokenizer.from_tiktoken(vocab, pat if _core.tokenizer_is_preset(pat) else None,
                                             list(special.items()))
    return Tokenizer(core, pat)


def _fix_surrogates(text: str) -> str:
    # What tiktoken does with lone surrogates: round-trip through UTF-16, replacing them.
    return text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")


def _fix_surrogates_if_needed(text: str) -> str:
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        return _fix_surrogates(text)
