"""Tokenizers as models ship them: a Hugging Face ``tokenizer.json`` (with ``tokenizer_config.json`` and
``special_tokens_map.json``), run by the C++ core (csrc/core/tokenizer_hf.*) exactly as the ``tokenizers``
library runs it. This module holds the policy: which file to read, the special tokens' names, BOS/EOS,
transformers' decode clean-up and the chat template (rendered with jinja2's sandbox, as transformers does).

>>> import pyllama
>>> tok = pyllama.Tokenizer.from_pretrained("Meta-Llama-3-8B-Instruct")  # doctest: +SKIP
>>> tok.encode("Hello world", add_special_tokens=True)  # doctest: +SKIP
[128000, 9906, 1917]
>>> tok.decode([128000, 9906, 1917], skip_special_tokens=True)  # doctest: +SKIP
'Hello world'
"""
from __future__ import annotations

import json
import os
from typing import Any, Dict, Iterable, List, Optional, Sequence

from . import _core
from ._io import atomic_write_text
from .tokenizer import Tokenizer, TokenIdError, _fix_surrogates, _fix_surrogates_if_needed

__all__ = ["PretrainedTokenizer", "load_pretrained", "train_wordpiece", "train_wordlevel", "train_unigram"]

_SPECIAL_NAMES = ("bos_token", "eos_token", "unk_token", "pad_token", "sep_token", "cls_token", "mask_token")


def _read_json(path: str) -> Any:
    with open(path, "r", encoding="utf-8") as f:
        try:
            return json.load(f)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path!r} is not valid JSON: {e}") from None


def _token_text(v: Any) -> Optional[str]:
    """A special token as tokenizer_config.json writes it: a string or an AddedToken dict."""
    if isinstance(v, str):
        return v
    if isinstance(v, dict) and isinstance(v.get("content"), str):
        return v["content"]
    return None


def _clean_up_tokenization(text: str) -> str:
    # transformers' PreTrainedTokenizerBase.clean_up_tokenization
    return (text.replace(" .", ".").replace(" ?", "?").replace(" !", "!").replace(" ,", ",").replace(" ' ", "'")
            .replace(" n't", "n't").replace(" 'm", "'m").replace(" 's", "'s").replace(" 've", "'ve")
            .replace(" 're", "'re"))


class PretrainedTokenizer(Tokenizer):
    """A tokenizer read from a model's files (see :meth:`Tokenizer.from_pretrained`).

    ``encode(text, add_special_tokens=False)`` gives the ids of ``transformers``'
    ``tokenizer(text, add_special_tokens=...)["input_ids"]``; special-token text in ``text`` is
    recognised as transformers does. The tiktoken-style arguments still work: ``allowed_special``
    (default ``"all"`` here) and ``disallowed_special`` (default ``()``), ``encode_ordinary`` (special
    tokens' text encoded as text), ``encode_batch``.
    """

    def __init__(self, core, json_text: str, config: Optional[Dict[str, Any]] = None, source: str = ""):
        # Private: use Tokenizer.from_pretrained.
        self._hf = core
        self._json_text = json_text
        self._config = dict(config or {})
        self._source = source
        added = core.added_tokens
        self._special = {c.decode("utf-8"): i for i, c, special in added if special}
        self._special_set = frozenset(self._special)
        self._all_special_ids = sorted(self._special.values())
        self._pattern = "tokenizer.json"
        self._custom = None
        self._core = None
        self._names: Dict[str, Optional[str]] = {}
        for name in _SPECIAL_NAMES:
            self._names[name] = _token_text(self._config.get(name))
        self._chat_template = self._config.get("chat_template")
        self._apply_bos_eos_policy()

    def _apply_bos_eos_policy(self) -> None:
        # transformers' Llama-family tokenizers rebuild the template from add_bos_token / add_eos_token.
        cls = str(self._config.get("tokenizer_class") or "")
        if cls.replace("Fast", "") not in ("LlamaTokenizer", "CodeLlamaTokenizer", "GemmaTokenizer"):
            return
        if "add_bos_token" not in self._config and "add_eos_token" not in self._config:
            return
        pre, post = [], []
        if self._config.get("add_bos_token", True) and self.bos_token_id is not None:
            pre = [self.bos_token_id]
        if self._config.get("add_eos_token", False) and self.eos_token_id is not None:
            post = [self.eos_token_id]
        self._hf.set_template(pre, post)

    # ------------------------------------------------------------------ properties

    def _id_of(self, name: str) -> Optional[int]:
        text = self._names.get(name)
        if text is None:
            return None
        i = self._hf.token_to_id(text)
        return None if i < 0 else i

    @property
    def bos_token_id(self) -> Optional[int]:
        """Id of the BOS token named by tokenizer_config.json (None when it names none)."""
        return self._id_of("bos_token")

    @property
    def eos_token_id(self) -> Optional[int]:
        """Id of the EOS token named by tokenizer_config.json (None when it names none)."""
        return self._id_of("eos_token")

    @property
    def pad_token_id(self) -> Optional[int]:
        """Id of the padding token (None when the files name none)."""
        return self._id_of("pad_token")

    @property
    def unk_token_id(self) -> Optional[int]:
        """Id of the unknown token (None when the files name none)."""
        return self._id_of("unk_token")

    @property
    def bos_token(self) -> Optional[str]:
        return self._names.get("bos_token")

    @property
    def eos_token(self) -> Optional[str]:
        return self._names.get("eos_token")

    @property
    def add_bos_token(self) -> bool:
        """Whether ``encode(..., add_special_tokens=True)`` starts with BOS (what generate prepends)."""
        bos = self.bos_token_id
        return bos is not None and list(self._hf.prefix_ids[:1]) == [bos]

    @property
    def chat_template(self) -> Optional[str]:
        return self._chat_template if isinstance(self._chat_template, str) else None

    @property
    def n_vocab(self) -> int:
        return self._hf.vocab_size

    @property
    def model_type(self) -> str:
        """The tokenizer.json model: ``BPE``, ``WordPiece``, ``WordLevel`` or ``Unigram``."""
        return self._hf.model_type

    @property
    def pattern(self) -> str:
        return self._pattern

    @property
    def pattern_regex(self) -> str:
        raise AttributeError("a tokenizer.json pipeline has no single pattern; see split()")

    def token_to_id(self, token: str) -> Optional[int]:
        """The id of a token string (as the vocabulary spells it), or None."""
        i = self._hf.token_to_id(token)
        return None if i < 0 else i

    def id_to_token(self, token_id: int) -> str:
        """The vocabulary's string for an id."""
        try:
            return self._hf.id_to_token(token_id).decode("utf-8", "replace")
        except IndexError as e:
            raise TokenIdError(str(e)) from None

    def token_bytes(self, token_id: int) -> bytes:
        """The bytes one token adds to the text (after the decoder's per-token rules)."""
        return self.decode_bytes([token_id])

    def split(self, text: str) -> List[str]:
        """The pieces the model receives (after added tokens, normalizer and pre-tokenizer)."""
        text = _fix_surrogates_if_needed(self._check_text(text))
        return [p.decode("utf-8", "replace") for p in self._hf.pre_tokenize(text)]

    # ------------------------------------------------------------------ encoding

    def encode(self, text: str, add_special_tokens: bool = False, *, allowed_special="all",
               disallowed_special=()) -> List[int]:
        """Ids of ``text``; with ``add_special_tokens`` the post-processor's tokens (BOS, ...) too,
        exactly as ``transformers``' ``tokenizer(text)["input_ids"]``.

        >>> tok.encode("Hello", add_special_tokens=True)  # doctest: +SKIP
        [128000, 9906]
        """
        text = self._check_text(text)
        self._check_disallowed_hf([text], allowed_special, disallowed_special)
        allowed = None
        if allowed_special != "all" and len(self._special) != 0:
            if isinstance(allowed_special, str):
                raise TypeError("allowed_special must be 'all' or a set of strings, not a str")
            allowed = [self._special[t] for t in (allowed_special or ()) if t in self._special]
        try:  # lone surrogates (which UTF-8 cannot hold) are replaced only when the text has them
            return self._hf.encode(text, bool(add_special_tokens), allowed)
        except UnicodeEncodeError:
            return self._hf.encode(_fix_surrogates(text), bool(add_special_tokens), allowed)

    def _check_disallowed_hf(self, texts: List[str], allowed_special, disallowed_special) -> None:
        if disallowed_special == "all":
            bad = self._special_set if allowed_special != "all" else frozenset()
            bad = bad - frozenset(allowed_special if allowed_special != "all" else ())
        elif not disallowed_special:
            return
        else:
            if isinstance(disallowed_special, str):
                raise TypeError("disallowed_special must be 'all' or a collection of strings, not a str")
            bad = frozenset(disallowed_special)
        for text in texts:
            for t in sorted(bad):
                if t and t in text:
                    raise ValueError(
                        f"Encountered text corresponding to disallowed special token {t!r}.\n"
                        f"If you want this text to be encoded as a special token, pass it to `allowed_special`, "
                        f"e.g. `allowed_special={{{t!r}, ...}}`.\n"
                        f"To disable this check for all special tokens, pass `disallowed_special=()`.\n")

    def encode_prompt(self, text: str) -> List[int]:
        """A generation prompt's ids: the post-processor's leading tokens (BOS when the files say so)
        and the text's ids, without the trailing ones (an EOS or SEP would end the prompt)."""
        return list(self._hf.prefix_ids) + self.encode(text)

    def encode_ordinary(self, text: str) -> List[int]:
        """Ids of ``text`` with no special tokens recognised or added."""
        return self.encode(text, allowed_special=set())

    def encode_batch(self, texts: Sequence[str], *, num_threads: Optional[int] = None, allowed_special="all",
                     disallowed_special=(), add_special_tokens: bool = False) -> List[List[int]]:
        """``[encode(t, add_special_tokens) for t in texts]``; the GIL is released while the core works."""
        texts = list(texts)
        for t in texts:
            if not isinstance(t, str):
                self._check_text(t)
        self._check_disallowed_hf(texts, allowed_special, disallowed_special)
        if allowed_special == "all":
            try:
                return self._hf.encode_batch(texts, bool(add_special_tokens))
            except UnicodeEncodeError:
                return self._hf.encode_batch([_fix_surrogates_if_needed(t) for t in texts], bool(add_special_tokens))
        return [self.encode(t, add_special_tokens, allowed_special=allowed_special) for t in texts]

    def __call__(self, text: str, add_special_tokens: bool = True) -> Dict[str, List[int]]:
        """``{"input_ids": ..., "attention_mask": ...}`` as transformers' tokenizer call returns."""
        ids = self.encode(text, add_special_tokens)
        return {"input_ids": ids, "attention_mask": [1] * len(ids)}

    # ------------------------------------------------------------------ decoding

    def _ids_list(self, ids: Iterable[int]) -> List[int]:
        if hasattr(ids, "__array__") and hasattr(ids, "dtype"):
            import numpy as np

            arr = np.asarray(ids)
            if arr.dtype.kind not in "iu":
                raise TypeError(f"token ids must be integers, got an array of {arr.dtype}")
            return [int(x) for x in arr.reshape(-1)]
        out = []
        for x in ids:
            if isinstance(x, bool) or not hasattr(x, "__index__"):
                raise TypeError(f"token ids must be ints, got {x!r}")
            out.append(int(x))
        return out

    def decode(self, ids: Iterable[int], skip_special_tokens: bool = False, errors: str = "replace",
               clean_up_tokenization_spaces: Optional[bool] = None) -> str:
        """The text of ``ids`` as transformers' ``decode`` gives it (the decoder chain, then the
        clean-up of spaces before punctuation when tokenizer_config.json asks for it).

        >>> tok.decode(tok.encode("Hello world"))  # doctest: +SKIP
        'Hello world'
        """
        try:
            raw = self._hf.decode(self._ids_list(ids), bool(skip_special_tokens))
        except IndexError as e:
            raise TokenIdError(str(e)) from None
        text = raw.decode("utf-8", errors=errors)
        if clean_up_tokenization_spaces is None:
            clean_up_tokenization_spaces = bool(self._config.get("clean_up_tokenization_spaces", False))
            # transformers 5 skips the clean-up for BPE models (it strips real spaces before punctuation)
            if self.model_type == "BPE" and not self._config.get(
                    "clean_up_tokenization_spaces_for_bpe_even_though_it_will_corrupt_output", False):
                clean_up_tokenization_spaces = False
        return _clean_up_tokenization(text) if clean_up_tokenization_spaces else text

    def decode_bytes(self, ids: Iterable[int]) -> bytes:
        """The bytes of the tokens, each as it reads after earlier tokens (no first-token stripping,
        no clean-up), so that the bytes of a sequence are its tokens' bytes concatenated (what
        streaming needs). ``decode`` gives the text transformers gives."""
        ids = self._ids_list(ids)
        try:
            if not ids:
                return b""
            # Decoding behind a neutral token keeps the decoder's first-token rules (Metaspace's
            # dropped leading space, Strip) from applying to these tokens.
            anchor = self._anchor_id()
            if anchor is None:
                return self._hf.decode(ids, False)
            full = self._hf.decode([anchor] + ids, False)
            head = self._hf.decode([anchor], False)
            return full[len(head):] if full.startswith(head) else full
        except IndexError as e:
            raise TokenIdError(str(e)) from None

    def _anchor_id(self) -> Optional[int]:
        if not hasattr(self, "_anchor"):
            self._anchor = None
            for cand in ("a", "\u2581a", "Ġa", "the", "e"):
                i = self._hf.token_to_id(cand)
                if i >= 0 and not self._hf.is_special(i):
                    self._anchor = i
                    break
        return self._anchor

    # ------------------------------------------------------------------ chat

    def apply_chat_template(self, messages: List[Dict[str, Any]], add_generation_prompt: bool = False,
                            tokenize: bool = True, chat_template: Optional[str] = None, **kwargs):
        """The conversation rendered with the tokenizer's chat template, as transformers renders it
        (jinja2's sandboxed environment, ``trim_blocks``/``lstrip_blocks``, the same filters and
        globals, the special tokens as variables). ``tokenize=True`` returns the ids of the text
        (encoded without adding special tokens, as transformers does); False the text.

        Needs jinja2 (``pip install pyllama[chat]``).

        >>> tok.apply_chat_template([{"role": "user", "content": "Hi"}], add_generation_prompt=True,
        ...                         tokenize=False)  # doctest: +SKIP
        '<|begin_of_text|><|start_header_id|>user<|end_header_id|>\\n\\nHi<|eot_id|>...'
        """
        template = chat_template if chat_template is not None else self._chat_template
        if isinstance(template, list):  # [{"name": ..., "template": ...}]
            named = {t.get("name"): t.get("template") for t in template if isinstance(t, dict)}
            template = named.get("default")
            if template is None:
                raise ValueError(f"the tokenizer has named chat templates {sorted(named)} but no 'default'; "
                                 "pass chat_template=...")
        if not isinstance(template, str):
            raise ValueError("this tokenizer has no chat template (tokenizer_config.json's chat_template or "
                             "chat_template.jinja); pass chat_template=...")
        if not isinstance(messages, (list, tuple)) or not all(isinstance(m, dict) for m in messages):
            raise TypeError("messages must be a list of dicts like {'role': 'user', 'content': '...'}")
        env = _jinja_env()
        variables = {name: text for name, text in self._names.items() if text is not None}
        variables.update(kwargs)
        text = env.from_string(template).render(messages=list(messages), tools=variables.pop("tools", None),
                                                documents=variables.pop("documents", None),
                                                add_generation_prompt=add_generation_prompt, **variables)
        if not tokenize:
            return text
        return self.encode(text, add_special_tokens=False)

    # ------------------------------------------------------------------ files

    def save_pretrained(self, directory) -> None:
        """Write ``tokenizer.json`` and ``tokenizer_config.json`` into ``directory`` (atomically), which
        transformers' ``AutoTokenizer.from_pretrained`` and :meth:`Tokenizer.from_pretrained` load with
        the same ids."""
        directory = os.fspath(directory)
        os.makedirs(directory, exist_ok=True)
        atomic_write_text(os.path.join(directory, "tokenizer.json"), self._json_text)
        cfg = dict(self._config)
        cfg.setdefault("tokenizer_class", "PreTrainedTokenizerFast")
        atomic_write_text(os.path.join(directory, "tokenizer_config.json"),
                          json.dumps(cfg, indent=2, ensure_ascii=False) + "\n")

    def save(self, path) -> None:
        """Same as :meth:`save_pretrained` (a tokenizer.json pipeline has no .tiktoken form)."""
        self.save_pretrained(path)

    def to_hf_json(self) -> dict:
        return json.loads(self._json_text)

    def save_hf(self, path) -> None:
        path = os.fspath(path)
        if os.path.isdir(path):
            path = os.path.join(path, "tokenizer.json")
        atomic_write_text(path, self._json_text)

    def __reduce__(self):
        return (_unpickle_pretrained, (self._json_text, self._config, self._source))

    def __repr__(self) -> str:
        return (f"PretrainedTokenizer(model={self.model_type!r}, n_vocab={self.n_vocab}, "
                f"special_tokens={len(self._special)}, source={self._source!r})")


def _unpickle_pretrained(json_text: str, config: Dict[str, Any], source: str) -> PretrainedTokenizer:
    return PretrainedTokenizer(_core.CoreHfTokenizer(json_text), json_text, config, source)


# ---------------------------------------------------------------------------- training

_BERT_SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def _count_words(texts, splitter) -> List[tuple]:
    """(word, count) of the pieces the pipeline's normalizer and pre-tokenizer make of the texts."""
    import collections
    import itertools

    if isinstance(texts, (str, bytes, os.PathLike)):
        with open(os.fspath(texts), "r", encoding="utf-8", errors="replace") as f:
            texts = f.read().splitlines()
    counts: "collections.Counter[str]" = collections.Counter()
    it = iter(texts)
    done = 0
    while True:
        chunk = list(itertools.islice(it, 8192))  # counted in the core, a chunk at a time
        if not chunk:
            break
        for i, text in enumerate(chunk):
            if not isinstance(text, str):
                raise TypeError(f"training texts must be str, item {done + i} is {type(text).__name__}")
        done += len(chunk)
        try:
            pieces = splitter.count_pieces(chunk)
        except UnicodeEncodeError:
            pieces = splitter.count_pieces([_fix_surrogates_if_needed(t) for t in chunk])
        for p, n in pieces:
            counts[p.decode("utf-8", "replace")] += n
    return sorted(counts.items())


def _bert_pipeline(lowercase: bool) -> Dict[str, Any]:
    return {
        "version": "1.0", "truncation": None, "padding": None,
        "normalizer": {"type": "BertNormalizer", "clean_text": True, "handle_chinese_chars": True,
                       "strip_accents": None, "lowercase": lowercase},
        "pre_tokenizer": {"type": "BertPreTokenizer"},
        "decoder": {"type": "WordPiece", "prefix": "##", "cleanup": True},
    }


def _added(specials: Sequence[str], vocab: Dict[str, int]) -> List[Dict[str, Any]]:
    return [{"id": vocab[t], "content": t, "single_word": False, "lstrip": False, "rstrip": False,
             "normalized": False, "special": True} for t in specials]


def train_wordpiece(texts, vocab_size: int, special_tokens: Optional[Sequence[str]] = None, *,
                    lowercase: bool = True, min_frequency: int = 2) -> PretrainedTokenizer:
    """Learn a BERT-style WordPiece tokenizer (BertNormalizer, BertPreTokenizer, WordPiece with ``##``
    continuations, ``[CLS] ... [SEP]`` template) the way ``tokenizers``' WordPieceTrainer does: a
    character-level BPE over the words, in the core. ``texts``: strings or a path to a UTF-8 file.

    >>> import pyllama
    >>> tok = pyllama.Tokenizer.train_wordpiece(["the lower lowest newest widest"] * 20, vocab_size=60)
    >>> tok.decode(tok.encode("the lowest"))
    'the lowest'
    """
    specials = list(_BERT_SPECIALS if special_tokens is None else special_tokens)
    if "[UNK]" not in specials:
        raise ValueError("special_tokens must include '[UNK]' (WordPiece's unknown token)")
    pipe = _bert_pipeline(lowercase)
    splitter = _core.CoreHfTokenizer(json.dumps({**pipe, "model": {"type": "WordLevel", "vocab": {"[UNK]": 0},
                                                                    "unk_token": "[UNK]"}}))
    words = _count_words(texts, splitter)
    vocab_list, _ = _core.train_char_bpe(words, int(vocab_size), "##", specials, int(min_frequency))
    vocab = {t: i for i, t in enumerate(vocab_list)}
    doc = dict(pipe)
    doc["added_tokens"] = _added(specials, vocab)
    cls_sep = {}
    if "[CLS]" in vocab and "[SEP]" in vocab:
        cls_sep = {"type": "BertProcessing", "sep": ["[SEP]", vocab["[SEP]"]], "cls": ["[CLS]", vocab["[CLS]"]]}
    doc["post_processor"] = cls_sep or None
    doc["model"] = {"type": "WordPiece", "unk_token": "[UNK]", "continuing_subword_prefix": "##",
                    "max_input_chars_per_word": 100, "vocab": vocab}
    text = json.dumps(doc, ensure_ascii=False)
    config = {"tokenizer_class": "PreTrainedTokenizerFast", "unk_token": "[UNK]", "do_lower_case": lowercase,
              "clean_up_tokenization_spaces": True}
    for name, tok in (("pad_token", "[PAD]"), ("cls_token", "[CLS]"), ("sep_token", "[SEP]"), ("mask_token", "[MASK]")):
        if tok in vocab:
            config[name] = tok
    return PretrainedTokenizer(_core.CoreHfTokenizer(text), text, config, "trained")


def train_wordlevel(texts, vocab_size: int, special_tokens: Optional[Sequence[str]] = None, *,
                    lowercase: bool = False) -> PretrainedTokenizer:
    """A word-level tokenizer: the ``vocab_size`` most frequent words (Whitespace pre-tokenizer), the rest
    ``[UNK]`` (ties: the smaller word).

    >>> import pyllama
    >>> tok = pyllama.Tokenizer.train_wordlevel(["a b b c c c"], vocab_size=3)
    >>> tok.encode("c b a")
    [1, 2, 0]
    """
    specials = list(["[UNK]"] if special_tokens is None else special_tokens)
    if "[UNK]" not in specials:
        raise ValueError("special_tokens must include '[UNK]'")
    norm = {"type": "Lowercase"} if lowercase else None
    pipe = {"version": "1.0", "truncation": None, "padding": None, "normalizer": norm,
            "pre_tokenizer": {"type": "Whitespace"}, "decoder": None, "post_processor": None}
    splitter = _core.CoreHfTokenizer(json.dumps({**pipe, "model": {"type": "WordLevel", "vocab": {"[UNK]": 0},
                                                                    "unk_token": "[UNK]"}}))
    words = sorted(_count_words(texts, splitter), key=lambda wc: (-wc[1], wc[0]))
    vocab = {t: i for i, t in enumerate(specials)}
    for w, _ in words:
        if len(vocab) >= vocab_size:
            break
        vocab.setdefault(w, len(vocab))
    doc = dict(pipe)
    doc["added_tokens"] = _added(specials, vocab)
    doc["model"] = {"type": "WordLevel", "vocab": vocab, "unk_token": "[UNK]"}
    text = json.dumps(doc, ensure_ascii=False)
    config = {"tokenizer_class": "PreTrainedTokenizerFast", "unk_token": "[UNK]"}
    return PretrainedTokenizer(_core.CoreHfTokenizer(text), text, config, "trained")


def train_unigram(texts, vocab_size: int, special_tokens: Optional[Sequence[str]] = None, *,
                  max_piece_length: int = 16, seed_size: int = 200000) -> PretrainedTokenizer:
    """Learn a Unigram tokenizer (SentencePiece style: ``▁`` for spaces, Metaspace pre-tokenizer) by EM and
    pruning in the core (:func:`pyllama._core.train_unigram`); ``special_tokens`` (default ``["<unk>"]``)
    take the first ids and the first of them is the unknown token.

    >>> import pyllama
    >>> tok = pyllama.Tokenizer.train_unigram(["the lower lowest newest widest"] * 20, vocab_size=40)
    >>> tok.decode(tok.encode("the lowest"))
    'the lowest'
    """
    specials = list(["<unk>"] if special_tokens is None else special_tokens)
    if not specials:
        raise ValueError("special_tokens must name the unknown token first (e.g. ['<unk>'])")
    if vocab_size <= len(specials):
        raise ValueError(f"vocab_size={vocab_size} leaves no room beside {len(specials)} special tokens")
    pipe = {"version": "1.0", "truncation": None, "padding": None, "normalizer": None,
            "pre_tokenizer": {"type": "Metaspace", "replacement": "\u2581", "prepend_scheme": "always", "split": True},
            "decoder": {"type": "Metaspace", "replacement": "\u2581", "prepend_scheme": "always", "split": True},
            "post_processor": None}
    splitter = _core.CoreHfTokenizer(json.dumps({**pipe, "model": {"type": "WordLevel", "vocab": {"<unk>": 0},
                                                                    "unk_token": "<unk>"}}))
    words = _count_words(texts, splitter)
    pieces = _core.train_unigram(words, int(vocab_size) - len(specials), int(max_piece_length), int(seed_size))
    vocab = [[t, 0.0] for t in specials] + [[p, float(sc)] for p, sc in pieces if p not in specials]
    doc = dict(pipe)
    doc["added_tokens"] = _added(specials, {t: i for i, t in enumerate(specials)})
    doc["model"] = {"type": "Unigram", "unk_id": 0, "byte_fallback": False, "vocab": vocab}
    text = json.dumps(doc, ensure_ascii=False)
    config = {"tokenizer_class": "PreTrainedTokenizerFast", "unk_token": specials[0]}
    return PretrainedTokenizer(_core.CoreHfTokenizer(text), text, config, "trained")


_ENV = None


def _jinja_env():
    """transformers' chat-template environment (utils/chat_template_utils.py)."""
    global _ENV
    if _ENV is not None:
        return _ENV
    try:
        import jinja2
        from jinja2.ext import loopcontrols
        from jinja2.sandbox import ImmutableSandboxedEnvironment
    except ImportError:
        raise ImportError("apply_chat_template needs jinja2: pip install 'pyllama[chat]' (or jinja2>=3.1)") from None
    from datetime import datetime

    def raise_exception(message):
        raise jinja2.exceptions.TemplateError(message)

    def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
        return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)

    def strftime_now(fmt):
        return datetime.now().strftime(fmt)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols])
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = strftime_now
    _ENV = env
    return env


def load_pretrained(path) -> Tokenizer:
    """The tokenizer in a model folder or file (see :meth:`Tokenizer.from_pretrained`)."""
    path = os.fspath(path)
    config: Dict[str, Any] = {}
    if os.path.isdir(path):
        folder = path
        for name in ("special_tokens_map.json", "tokenizer_config.json"):
            p = os.path.join(folder, name)
            if os.path.isfile(p):
                data = _read_json(p)
                if not isinstance(data, dict):
                    raise ValueError(f"{p!r} is not a JSON object")
                config.update(data)
        jinja = os.path.join(folder, "chat_template.jinja")
        if os.path.isfile(jinja) and "chat_template" not in config:
            with open(jinja, "r", encoding="utf-8") as f:
                config["chat_template"] = f.read()
        for name in ("tokenizer.json", "tokenizer.model", "tokenizer.tiktoken"):
            if os.path.isfile(os.path.join(folder, name)):
                file = os.path.join(folder, name)
                break
        else:
            raise FileNotFoundError(f"no tokenizer in {folder!r}: looked for tokenizer.json, tokenizer.model and "
                                    "tokenizer.tiktoken")
    else:
        if not os.path.isfile(path):
            raise FileNotFoundError(f"no tokenizer file or folder at {path!r}")
        file = path
    with open(file, "rb") as f:
        data = f.read()
    head = data[:64].lstrip()
    if head.startswith(b"{"):
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as e:
            raise ValueError(f"{file!r} is not UTF-8 JSON: {e}") from None
        try:
            core = _core.CoreHfTokenizer(text)
        except ValueError as e:
            raise ValueError(f"{file!r}: {e}") from None
        return PretrainedTokenizer(core, text, config, file)
    if not _looks_tiktoken(data) and data[:1] == b"\x0a":  # ModelProto field 1 (pieces): a SentencePiece model
        try:
            text = _core.sentencepiece_to_hf_json(data)
        except ValueError as e:
            raise ValueError(f"{file!r}: {e}") from None
        config = {"bos_token": None, "eos_token": None, "unk_token": None, **config}
        core = _core.CoreHfTokenizer(text)
        _sentencepiece_names(core, config)
        return PretrainedTokenizer(core, text, config, file)
    if _looks_tiktoken(data):
        from .tokenizer import Tokenizer as _T

        specials = _added_from_config(config)
        n_ranks = sum(1 for line in data.splitlines() if line.strip())
        if not specials and n_ranks == 128000:  # Llama 3's original tokenizer.model: Meta's special tokens
            specials = {t: 128000 + i for i, t in enumerate(_LLAMA3_SPECIALS)}
            config.setdefault("bos_token", "<|begin_of_text|>")
            config.setdefault("eos_token", "<|end_of_text|>")
        base = _T.from_tiktoken(file, "llama3" if specials else "cl100k", specials or None)
        bos = _token_text(config.get("bos_token"))
        if not specials or bos not in specials:
            return base  # a plain .tiktoken vocabulary: the byte-level Tokenizer
        # A model's tiktoken file with its special tokens: the same pipeline as tokenizer.json (ids equal
        # tiktoken's), with BOS first as Llama 3 puts it.
        doc = base.to_hf_json()
        doc["post_processor"] = {"type": "TemplateProcessing", "single": [
            {"SpecialToken": {"id": bos, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
            "pair": [{"SpecialToken": {"id": bos, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}},
                     {"SpecialToken": {"id": bos, "type_id": 1}}, {"Sequence": {"id": "B", "type_id": 1}}],
            "special_tokens": {bos: {"id": bos, "ids": [specials[bos]], "tokens": [bos]}}}
        text = json.dumps(doc, ensure_ascii=False)
        return PretrainedTokenizer(_core.CoreHfTokenizer(text), text, config, file)
    raise ValueError(f"{file!r} is neither a tokenizer.json, a SentencePiece .model nor a .tiktoken file")


# Meta's special tokens of Llama 3 (3.1 names), ids 128000.. after the 128000 ranks of its tokenizer.model.
_LLAMA3_SPECIALS = (["<|begin_of_text|>", "<|end_of_text|>", "<|reserved_special_token_0|>",
                     "<|reserved_special_token_1|>", "<|finetune_right_pad_id|>", "<|step_id|>", "<|start_header_id|>",
                     "<|end_header_id|>", "<|eom_id|>", "<|eot_id|>", "<|python_tag|>"]
                    + [f"<|reserved_special_token_{i}|>" for i in range(2, 247)])


def _sentencepiece_names(core, config: Dict[str, Any]) -> None:
    # A bare .model: BOS is the piece its template starts with; <unk> and </s> by convention.
    if config.get("bos_token") is None and len(core.prefix_ids):
        config["bos_token"] = core.id_to_token(core.prefix_ids[0]).decode("utf-8")
    for name, piece in (("unk_token", "<unk>"), ("eos_token", "</s>")):
        if config.get(name) is None and core.token_to_id(piece) >= 0:
            config[name] = piece


def _looks_tiktoken(data: bytes) -> bool:
    first = data.split(b"\n", 1)[0].strip()
    parts = first.split(b" ")
    return len(parts) == 2 and parts[1].isdigit() and b"\0" not in data[:4096]


def _added_from_config(config: Dict[str, Any]) -> Dict[str, int]:
    out = {}
    dec = config.get("added_tokens_decoder")
    if isinstance(dec, dict):
        for k, v in dec.items():
            t = _token_text(v)
            if t is not None and str(k).isdigit():
                out[t] = int(k)
    return out
