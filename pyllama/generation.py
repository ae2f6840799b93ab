"""Decoding: greedy, sampling and beam search in Python over the core's KV cache.

The core gives these private steps on a model (see ``docs/GENERATION.md``):

- ``model._kv_reset(n_slots, max_len)``: allocate a cache of ``n_slots`` sequences;
- ``model._kv_forward(tokens[B, T], slots[B], start_pos[B], last_only=True)``:
  run ``T`` new tokens of each of ``B`` sequences, sequence ``b`` in cache slot
  ``slots[b]`` at positions ``start_pos[b] .. start_pos[b]+T-1``; returns logits;
- ``model._kv_reorder(src[n_slots])``: slot ``i`` takes the old content of slot
  ``src[i]`` (beam search);
- optional, ``model._kv_greedy_on_device()`` and ``model._kv_forward_greedy(tokens,
  slots, start_pos)`` (the argmax of the last positions' logits, int32 [B]): plain greedy
  decoding (no logits processor active) uses them on a cuda model, so only B token ids
  come back from the GPU per step;
- optional, ``model._kv_greedy_chain_max()`` and ``model._kv_greedy_chain(tokens, slots,
  start_pos, n)`` (n greedy steps in a row, each step's argmax fed to the next on the
  GPU, int32 [n, B]): plain greedy decoding then asks for several tokens per call, and
  drops a sequence's tokens past its stop.

Everything else, every logits processor, the sampler and beam search, is here,
on numpy arrays, with Hugging Face ``generate`` semantics.

Ragged batches: prompts of different lengths are never padded. Each prompt is
prefilled on its own (prompts of equal length share one call), then every
decode step runs all live sequences together with ``T = 1``, each at its own
position. Sequences leave the batch as they stop.

>>> import pyllama
>>> cfg = pyllama.LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64,
...                           num_hidden_layers=1, num_attention_heads=2)
>>> model = pyllama.Llama(cfg, seed=0)
>>> out = generate(model, [[1, 2, 3], [4, 5]], max_new_tokens=4)
>>> [len(t) for t in out], out.stop_reasons
([4, 4], ['max_new_tokens', 'max_new_tokens'])
"""
from __future__ import annotations

import codecs
import dataclasses
import math
import numbers
import warnings
from dataclasses import dataclass
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np

__all__ = [
    "GenerationConfig",
    "GenerateOutput",
    "StreamToken",
    "generate",
    "stream",
    "apply_repetition_penalty",
    "apply_presence_frequency_penalty",
    "apply_no_repeat_ngram",
    "apply_min_new_tokens",
    "apply_temperature",
    "apply_top_k",
    "apply_top_p",
    "apply_min_p",
    "log_softmax",
    "sample_from_logits",
]

# Why a sequence stopped (GenerateOutput.stop_reasons, StreamToken.stop_reason).
STOP_EOS = "eos"                        # it chose an eos token (the token is kept)
STOP_STRING = "stop_string"             # its text now contains one of stop_strings
STOP_MAX_NEW_TOKENS = "max_new_tokens"  # it reached max_new_tokens
STOP_MAX_CONTEXT = "max_context"        # prompt + new tokens filled max_position_embeddings

_BEAM_NEG = np.float32(-1.0e9)  # Hugging Face's "not a candidate" score in beam search
_TOP_P_HEADS = (256, 4096)  # top-p sorts only this many tokens when they hold more than top_p


# ============================================================================ config
@dataclass
class GenerationConfig:
    """How to decode (field names and defaults as in Hugging Face's ``GenerationConfig``).

    ``model.generate(ids, config, **kwargs)`` takes a config, keyword overrides, or
    both (the keywords win). Invalid values raise ``ValueError`` naming the field.

    >>> GenerationConfig(do_sample=True, temperature=0.7, top_p=0.9).top_k
    50
    >>> GenerationConfig(do_sample=True, temperature=0)
    Traceback (most recent call last):
    ...
    ValueError: GenerationConfig.temperature must be > 0 when do_sample=True (got 0); use do_sample=False for greedy decoding
    """

    max_new_tokens: int = 20  # most tokens to generate per sequence (the prompt not counted)
    min_new_tokens: int = 0  # eos tokens are forbidden until this many tokens are generated
    do_sample: bool = False  # sample (True) or take the most likely token / beams (False)
    temperature: float = 1.0  # logits / temperature before sampling (do_sample only)
    top_k: Optional[int] = 50  # keep the k most likely tokens (do_sample only); 0 or None: off
    top_p: float = 1.0  # nucleus: keep the smallest set with probability >= top_p (do_sample only)
    min_p: Optional[float] = None  # drop tokens with p < min_p * max p (do_sample only)
    repetition_penalty: float = 1.0  # HF/CTRL: seen tokens' logits: positive / penalty, negative * penalty
    presence_penalty: float = 0.0  # OpenAI: logit -= presence_penalty if the token was generated
    frequency_penalty: float = 0.0  # OpenAI: logit -= frequency_penalty * times it was generated
    no_repeat_ngram_size: int = 0  # forbid repeating any n-gram of this size (prompt included); 0: off
    num_beams: int = 1  # beam search when > 1
    length_penalty: float = 1.0  # beam score = sum of log-probs / new_length ** length_penalty
    early_stopping: Union[bool, str] = False  # beam search: True, False or "never" (HF semantics)
    eos_token_id: Union[None, int, List[int]] = None  # None: the model config's; [] : none
    stop_strings: Union[None, str, List[str]] = None  # stop when the text contains one (needs a tokenizer)
    num_return_sequences: int = 1  # sequences returned per prompt (best first)
    seed: Optional[int] = None  # sampling seed: the same seed gives the same tokens; None: fresh entropy
    # Hugging Face's total-length limit (prompt + new tokens), as generation_config.json files without
    # max_new_tokens give it: when not None, each sequence gets max_length - len(prompt) new tokens
    # instead of max_new_tokens; passing max_new_tokens= to generate clears it (HF: max_new_tokens wins).
    max_length: Optional[int] = None
    bos_token_id: Optional[int] = None  # kept from generation_config.json (pyllama never adds it to prompts)
    pad_token_id: Optional[int] = None  # kept from generation_config.json (pyllama never pads: ragged batches)

    def __post_init__(self) -> None:
        self.validate()

    # ------------------------------------------------------------------ checks
    def validate(self) -> None:
        """Raise ``ValueError`` naming the first invalid field."""

        def fail(name: str, msg: str) -> None:
            raise ValueError(f"GenerationConfig.{name} {msg}")

        def is_int(v: Any) -> bool:
            return isinstance(v, numbers.Integral) and not isinstance(v, bool)

        def is_real(v: Any) -> bool:
            return isinstance(v, numbers.Real) and not isinstance(v, bool) and math.isfinite(v)

        if not is_int(self.max_new_tokens) or not 1 <= self.max_new_tokens <= 2 ** 31 - 1:
            fail("max_new_tokens", f"must be an int from 1 to 2**31-1, got {self.max_new_tokens!r}")
        if not is_int(self.min_new_tokens) or not 0 <= self.min_new_tokens <= 2 ** 31 - 1:
            fail("min_new_tokens", f"must be an int from 0 to 2**31-1, got {self.min_new_tokens!r}")
        if not isinstance(self.do_sample, (bool, np.bool_)):
            fail("do_sample", f"must be True or False, got {self.do_sample!r}")
        if not is_real(self.temperature):
            fail("temperature", f"must be a finite number, got {self.temperature!r}")
        if self.do_sample and self.temperature <= 0:
            fail("temperature", f"must be > 0 when do_sample=True (got {self.temperature!r}); "
                 "use do_sample=False for greedy decoding")
        if self.top_k is not None and (not is_int(self.top_k) or self.top_k < 0):
            fail("top_k", f"must be None or an int >= 0 (0 turns it off), got {self.top_k!r}")
        if not is_real(self.top_p) or not 0.0 < self.top_p <= 1.0:
            fail("top_p", f"must be in (0, 1], got {self.top_p!r}")
        if self.min_p is not None and (not is_real(self.min_p) or not 0.0 <= self.min_p <= 1.0):
            fail("min_p", f"must be None or in [0, 1], got {self.min_p!r}")
        if not is_real(self.repetition_penalty) or self.repetition_penalty <= 0:
            fail("repetition_penalty", f"must be > 0 (1.0 turns it off), got {self.repetition_penalty!r}")
        for name in ("presence_penalty", "frequency_penalty", "length_penalty"):
            if not is_real(getattr(self, name)):
                fail(name, f"must be a finite number, got {getattr(self, name)!r}")
        if not is_int(self.no_repeat_ngram_size) or self.no_repeat_ngram_size < 0:
            fail("no_repeat_ngram_size", f"must be an int >= 0 (0 turns it off), got {self.no_repeat_ngram_size!r}")
        if not is_int(self.num_beams) or self.num_beams < 1:
            fail("num_beams", f"must be an int >= 1, got {self.num_beams!r}")
        if not (self.early_stopping is True or self.early_stopping is False or self.early_stopping == "never"):
            fail("early_stopping", f"must be True, False or 'never', got {self.early_stopping!r}")
        eos = self.eos_token_id
        if eos is not None:
            items = [eos] if is_int(eos) else eos
            if not isinstance(items, (list, tuple)) or not all(is_int(t) and t >= 0 for t in items):
                fail("eos_token_id", f"must be None, an int >= 0 or a list of them, got {eos!r}")
        ss = self.stop_strings
        if ss is not None:
            items = [ss] if isinstance(ss, str) else ss
            if not isinstance(items, (list, tuple)) or not all(isinstance(s, str) and s for s in items):
                fail("stop_strings", f"must be None, a non-empty string or a list of them, got {ss!r}")
        if not is_int(self.num_return_sequences) or self.num_return_sequences < 1:
            fail("num_return_sequences", f"must be an int >= 1, got {self.num_return_sequences!r}")
        if self.num_beams > 1 and self.num_return_sequences > self.num_beams:
            fail("num_return_sequences", f"({self.num_return_sequences}) must be <= num_beams ({self.num_beams})")
        if self.num_beams == 1 and not self.do_sample and self.num_return_sequences > 1:
            fail("num_return_sequences", f"({self.num_return_sequences}) must be 1 for greedy decoding; "
                 "set do_sample=True or num_beams > 1")
        if self.seed is not None and (not is_int(self.seed) or self.seed < 0):
            fail("seed", f"must be None or an int >= 0, got {self.seed!r}")
        if self.max_length is not None and (not is_int(self.max_length) or not 1 <= self.max_length <= 2 ** 31 - 1):
            fail("max_length", f"must be None or an int from 1 to 2**31-1, got {self.max_length!r}")
        for name in ("bos_token_id", "pad_token_id"):
            v = getattr(self, name)
            if v is not None and (not is_int(v) or v < 0):
                fail(name, f"must be None or an int >= 0, got {v!r}")

    # ------------------------------------------------------------------ helpers
    def replace(self, **kwargs: Any) -> "GenerationConfig":
        """A copy with some fields changed (validated).

        >>> GenerationConfig().replace(num_beams=4).num_beams
        4
        """
        names = {f.name for f in dataclasses.fields(self)}
        unknown = sorted(set(kwargs) - names)
        if unknown:
            raise TypeError(f"unknown generation option(s): {', '.join(unknown)}; "
                            f"GenerationConfig fields are: {', '.join(sorted(names))}")
        return dataclasses.replace(self, **kwargs)

    def to_dict(self) -> Dict[str, Any]:
        """The fields as a plain dict (JSON-ready).

        >>> GenerationConfig(num_beams=2).to_dict()["num_beams"]
        2
        """
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: Dict[str, Any]) -> "GenerationConfig":
        """A config from a dict of fields (unknown keys raise ``TypeError``).

        >>> GenerationConfig.from_dict({"do_sample": True, "top_p": 0.9}).top_p
        0.9
        """
        return cls().replace(**d)

    # ------------------------------------------------------------------ generation_config.json
    @classmethod
    def from_pretrained(cls, path: Union[str, "os.PathLike[str]"]) -> "GenerationConfig":
        """The defaults a model folder's ``generation_config.json`` gives (``path``: the folder or
        the file), read as transformers reads it: fields it leaves out or sets to null keep
        pyllama's defaults (transformers' global defaults), ``eos_token_id`` may be an int or a
        list (generation stops at any of them), a file with ``max_length`` but no
        ``max_new_tokens`` limits prompt + new tokens (see ``max_length``). As in transformers,
        ``temperature``/``top_k``/``top_p`` apply only when ``do_sample`` is true. Metadata keys
        (``transformers_version``, ``use_cache``, ...) are skipped; a decoding option pyllama does
        not implement (``typical_p``, ``num_beam_groups``, ``suppress_tokens``, ...) set to a
        value that would change the tokens raises ``ValueError`` naming it.

        >>> import json, tempfile, os
        >>> d = tempfile.mkdtemp()
        >>> with open(os.path.join(d, "generation_config.json"), "w") as f:
        ...     json.dump({"do_sample": True, "temperature": 0.6, "top_p": 0.9, "eos_token_id": [2, 9],
        ...                "transformers_version": "4.45.0"}, f)
        >>> g = GenerationConfig.from_pretrained(d)
        >>> g.do_sample, g.temperature, g.top_p, g.eos_token_id, g.top_k
        (True, 0.6, 0.9, [2, 9], 50)
        """
        import json
        import os

        path = os.fspath(path)
        file = os.path.join(path, "generation_config.json") if os.path.isdir(path) else path
        if not os.path.isfile(file):
            raise FileNotFoundError(f"no generation_config.json at {path!r}")
        try:
            with open(file, "r", encoding="utf-8") as f:
                d = json.load(f)
        except (ValueError, UnicodeDecodeError) as e:
            raise ValueError(f"{file!r} is not valid JSON ({e}): re-save it with GenerationConfig.save_pretrained") from None
        if not isinstance(d, dict):
            raise ValueError(f"{file!r} must hold a JSON object, got {type(d).__name__}")
        names = {f.name for f in dataclasses.fields(cls)}
        kw: Dict[str, Any] = {}
        for k, v in d.items():
            if v is None:
                continue  # null: not set, as transformers reads it
            if k in names:
                kw[k] = v
            elif k in _HF_UNSUPPORTED:
                if v != _HF_UNSUPPORTED[k] and not (isinstance(v, (list, dict)) and not v):
                    raise ValueError(f"{file!r} sets {k}={v!r}, a decoding option pyllama does not implement "
                                     f"(its neutral value is {_HF_UNSUPPORTED[k]!r}); the tokens would differ from "
                                     "transformers': remove it from the file or pass a GenerationConfig yourself")
            # anything else is metadata (transformers_version, use_cache, output_*, cache_*, assistant_*, ...)
        if "max_new_tokens" in kw:
            kw.pop("max_length", None)  # transformers: max_new_tokens wins over max_length
        try:
            cfg = cls(**kw)
        except (ValueError, TypeError) as e:
            raise ValueError(f"{file!r}: {e}") from None
        cfg._loaded_fields = frozenset(kw)  # what the file set (the CLI's own defaults yield to these)
        return cfg

    def save_pretrained(self, path: Union[str, "os.PathLike[str]"]) -> None:
        """Write ``generation_config.json`` into the folder ``path`` (atomically), in the form
        transformers' ``GenerationConfig.from_pretrained`` reads: the fields that differ from the
        defaults, plus pyllama-only fields (presence/frequency penalties, seed) only when set.

        >>> GenerationConfig(do_sample=True, top_p=0.9).save_pretrained("my-model")  # doctest: +SKIP
        """
        import json
        import os

        from ._io import atomic_write

        path = os.fspath(path)
        os.makedirs(path, exist_ok=True)
        default = type(self)()
        d = {k: v for k, v in self.to_dict().items() if v != getattr(default, k)}
        text = json.dumps(d, indent=2, sort_keys=True) + "\n"

        def write(tmp: str) -> None:
            with open(tmp, "w", encoding="utf-8") as f:
                f.write(text)

        atomic_write(os.path.join(path, "generation_config.json"), write)

    def eos_ids(self, model_config: Any = None) -> List[int]:
        """The eos ids in force: this config's, else the model config's (``[]`` means none).

        >>> GenerationConfig(eos_token_id=2).eos_ids(), GenerationConfig(eos_token_id=[2, 7]).eos_ids()
        ([2], [2, 7])
        """
        eos = self.eos_token_id
        if eos is None and model_config is not None:
            eos = getattr(model_config, "eos_token_id", None)
        if eos is None:
            return []
        if isinstance(eos, numbers.Integral):
            return [int(eos)]
        return [int(t) for t in eos]


# Hugging Face GenerationConfig fields that change the tokens and pyllama does not implement, with
# their neutral values: a generation_config.json that sets one otherwise is refused by name.
_HF_UNSUPPORTED: Dict[str, Any] = {
    "min_length": 0, "typical_p": 1.0, "epsilon_cutoff": 0.0, "eta_cutoff": 0.0, "diversity_penalty": 0.0,
    "num_beam_groups": 1, "penalty_alpha": None, "top_h": None, "encoder_repetition_penalty": 1.0,
    "encoder_no_repeat_ngram_size": 0, "bad_words_ids": None, "force_words_ids": None, "constraints": None,
    "sequence_bias": None, "guidance_scale": None, "renormalize_logits": False, "forced_bos_token_id": None,
    "forced_eos_token_id": None, "exponential_decay_length_penalty": None, "suppress_tokens": None,
    "begin_suppress_tokens": None, "forced_decoder_ids": None, "watermarking_config": None, "dola_layers": None,
    "max_time": None, "token_healing": False, "low_memory": None,
}


# ============================================================================ processors
# Each takes logits [N, V] (float32, one row per sequence) and returns them,
# changed in place where it can. They follow Hugging Face's LogitsProcessors
# exactly; the tests compare them on fixed logits.


def apply_repetition_penalty(logits: np.ndarray, seen: np.ndarray, penalty: float) -> np.ndarray:
    """Hugging Face's (CTRL's) repetition penalty: for every token already in the
    sequence (``seen[n, v]`` true), a positive logit is divided by ``penalty`` and a
    negative one multiplied by it.

    >>> apply_repetition_penalty(np.array([[2.0, -2.0, 2.0]], np.float32),
    ...                          np.array([[True, True, False]]), 2.0)
    array([[ 1., -4.,  2.]], dtype=float32)
    """
    if penalty == 1.0:
        return logits
    p = np.float32(penalty)
    penalised = np.where(logits < 0, logits * p, logits / p)
    np.copyto(logits, penalised, where=seen)
    return logits


def apply_presence_frequency_penalty(logits: np.ndarray, counts: np.ndarray, presence: float,
                                     frequency: float) -> np.ndarray:
    """OpenAI's rule: ``logit[j] -= count[j] * frequency + (count[j] > 0) * presence``,
    ``counts[n, v]`` being how often token v was generated so far in sequence n.

    >>> apply_presence_frequency_penalty(np.zeros((1, 3), np.float32), np.array([[0, 1, 3]]), 0.5, 0.25)
    array([[ 0.  , -0.75, -1.25]], dtype=float32)
    """
    if presence == 0.0 and frequency == 0.0:
        return logits
    pen = counts * np.float32(frequency) + (counts > 0) * np.float32(presence)
    logits -= pen.astype(np.float32, copy=False)
    return logits


def _banned_ngram_tokens(seq: np.ndarray, n: int) -> np.ndarray:
    """Tokens that would repeat an n-gram of ``seq`` (1-D) if appended."""
    L = seq.shape[0]
    if L + 1 < n or L < n:
        return seq[:0]
    windows = np.lib.stride_tricks.sliding_window_view(seq, n)  # [L-n+1, n]
    prefix = seq[L - n + 1:]
    match = np.all(windows[:, : n - 1] == prefix, axis=1)
    return windows[match, n - 1]


def apply_no_repeat_ngram(logits: np.ndarray, sequences: Sequence[np.ndarray], n: int) -> np.ndarray:
    """Forbid (logit = -inf) every token that would complete an n-gram already present
    in the sequence (``sequences[i]``: the whole sequence so far, prompt included).

    >>> apply_no_repeat_ngram(np.zeros((1, 4), np.float32), [np.array([1, 2, 3, 1])], 2)
    array([[  0.,   0., -inf,   0.]], dtype=float32)
    """
    if n <= 0:
        return logits
    for i, seq in enumerate(sequences):
        banned = _banned_ngram_tokens(np.asarray(seq), n)
        if banned.size:
            logits[i, banned] = -np.inf
    return logits


def apply_min_new_tokens(logits: np.ndarray, n_generated: np.ndarray, min_new_tokens: int,
                         eos_ids: Sequence[int]) -> np.ndarray:
    """Forbid the eos tokens in rows that have generated fewer than ``min_new_tokens``.

    >>> apply_min_new_tokens(np.zeros((2, 3), np.float32), np.array([0, 5]), 2, [1])
    array([[  0., -inf,   0.],
           [  0.,   0.,   0.]], dtype=float32)
    """
    if min_new_tokens <= 0 or not eos_ids:
        return logits
    rows = np.flatnonzero(np.asarray(n_generated) < min_new_tokens)
    if rows.size:
        logits[np.ix_(rows, np.asarray(eos_ids))] = -np.inf
    return logits


def apply_temperature(logits: np.ndarray, temperature: float) -> np.ndarray:
    """``logits / temperature``.

    >>> apply_temperature(np.array([[1.0, 2.0]], np.float32), 0.5)
    array([[2., 4.]], dtype=float32)
    """
    if temperature != 1.0:
        logits /= np.float32(temperature)
    return logits


def apply_top_k(logits: np.ndarray, top_k: int, min_tokens_to_keep: int = 1) -> np.ndarray:
    """Keep the ``top_k`` largest logits of each row (ties with the k-th kept), set
    the rest to -inf.

    >>> apply_top_k(np.array([[1.0, 3.0, 2.0, 0.0]], np.float32), 2)
    array([[-inf,   3.,   2., -inf]], dtype=float32)
    """
    if top_k is None or top_k <= 0:
        return logits
    V = logits.shape[-1]
    k = min(max(int(top_k), min_tokens_to_keep), V)
    if k >= V:
        return logits
    kth = np.partition(logits, V - k, axis=-1)[:, V - k: V - k + 1]
    logits[logits < kth] = -np.inf
    return logits


def _softmax64(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)
    x -= x.max(axis=-1, keepdims=True)
    np.exp(x, out=x)
    x /= x.sum(axis=-1, keepdims=True)
    return x


def apply_top_p(logits: np.ndarray, top_p: float, min_tokens_to_keep: int = 1) -> np.ndarray:
    """Nucleus filtering: keep the most likely tokens whose probabilities add up to at
    least ``top_p`` (Hugging Face: drop the least likely tokens while their cumulative
    probability stays <= 1 - top_p), and at least ``min_tokens_to_keep``.

    >>> apply_top_p(np.log(np.array([[0.5, 0.3, 0.15, 0.05]], np.float32)), 0.8)[0] > -np.inf
    array([ True,  True, False, False])
    """
    if top_p >= 1.0:
        return logits
    for i in range(logits.shape[0]):  # rows: a few sequences; sort only what can matter
        row = logits[i]
        cand = np.flatnonzero(row > -np.inf)
        if cand.size <= min_tokens_to_keep:
            continue
        probs = _softmax64(row[cand][None, :])[0]
        below = 0.0  # probability mass of the candidates left out of the sort
        for head_size in _TOP_P_HEADS:
            # fast path: when the largest head_size tokens already hold more than top_p,
            # every other token has cumulative (ascending) mass <= 1 - top_p: all removed
            if cand.size <= 4 * head_size or head_size < min_tokens_to_keep:
                break
            head = np.argpartition(-probs, head_size - 1)[:head_size]
            rest = 1.0 - float(probs[head].sum())
            if rest < 1.0 - top_p - 1e-9:
                row[np.delete(cand, head)] = -np.inf
                cand, probs, below = cand[head], probs[head], rest
                break
        order = np.argsort(probs, kind="stable")  # ascending
        remove = below + np.cumsum(probs[order]) <= 1.0 - top_p
        remove[-min_tokens_to_keep:] = False
        row[cand[order[remove]]] = -np.inf
    return logits


def apply_min_p(logits: np.ndarray, min_p: Optional[float], min_tokens_to_keep: int = 1) -> np.ndarray:
    """Drop tokens whose probability is below ``min_p`` times the row's largest one.

    >>> apply_min_p(np.log(np.array([[0.6, 0.3, 0.1]], np.float32)), 0.2)[0] > -np.inf
    array([ True,  True, False])
    """
    if min_p is None or min_p <= 0.0:
        return logits
    probs = _softmax64(logits)
    remove = probs < min_p * probs.max(axis=-1, keepdims=True)
    if min_tokens_to_keep > 1:
        V = logits.shape[-1]
        k = min(min_tokens_to_keep, V)
        top = np.argpartition(-probs, k - 1, axis=-1)[:, :k]
        np.put_along_axis(remove, top, False, axis=-1)
    else:
        remove[np.arange(logits.shape[0]), probs.argmax(axis=-1)] = False
    logits[remove] = -np.inf
    return logits


def log_softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise log-softmax in float32 (a new array).

    >>> np.round(np.exp(log_softmax(np.array([[0.0, 0.0]], np.float32))), 3)
    array([[0.5, 0.5]], dtype=float32)
    """
    m = logits.max(axis=-1, keepdims=True)
    z = logits - m
    lse = np.log(np.exp(z.astype(np.float64)).sum(axis=-1, keepdims=True)).astype(np.float32)
    return z - lse


def sample_from_logits(logits: np.ndarray, uniforms: np.ndarray) -> np.ndarray:
    """One token per row from ``softmax(logits)`` by inverse transform: row i takes
    the first token whose cumulative probability exceeds ``uniforms[i]`` (in [0, 1)).
    Tokens with logit -inf are never chosen. The random numbers are arguments, so
    the sampler is deterministic and testable.

    >>> sample_from_logits(np.log(np.array([[0.25, 0.25, 0.5]], np.float32)), np.array([0.6]))
    array([2])
    """
    out = np.empty(logits.shape[0], np.int64)
    for i in range(logits.shape[0]):  # rows: a few sequences; work on the tokens still allowed
        row = logits[i]
        cand = np.flatnonzero(row > -np.inf)
        if cand.size == 0:
            raise ValueError("sampling: every token is masked (logit -inf) for a sequence, so there is nothing "
                             "to sample; this happens when no_repeat_ngram_size, min_new_tokens or bad logits "
                             "exclude the whole vocabulary: use a smaller no_repeat_ngram_size or max_new_tokens")
        w = row[cand].astype(np.float64)
        np.exp(w - w.max(), out=w)
        cdf = np.cumsum(w)
        j = int(np.searchsorted(cdf, float(uniforms[i]) * cdf[-1], side="right"))
        if j >= cand.size:  # u * total rounded up to total: the last token with p > 0
            j = int(np.flatnonzero(w)[-1])
        out[i] = cand[j]
    return out


# ============================================================================ per-sequence state
class _TokenBytes:
    """Cached bytes of single tokens (for stop strings and streamed text)."""

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer
        self.cache: Dict[int, bytes] = {}

    def __call__(self, tok: int) -> bytes:
        b = self.cache.get(tok)
        if b is None:
            b = self.tokenizer.decode_bytes([int(tok)])
            self.cache[tok] = b
        return b

    def of(self, ids: Sequence[int]) -> bytes:
        return self.tokenizer.decode_bytes([int(t) for t in ids]) if len(ids) else b""


class _StopStrings:
    """Hugging Face's StopStringCriteria on bytes: a sequence stops when a stop string
    occurs in its text (prompt included) and overlaps the last token."""

    def __init__(self, strings: Sequence[str], token_bytes: _TokenBytes) -> None:
        self.stops = [s.encode("utf-8") for s in strings]
        self.keep = max(len(s) for s in self.stops) - 1  # bytes of history that can matter
        self.token_bytes = token_bytes

    def initial_tail(self, prompt: Sequence[int]) -> bytes:
        if self.keep == 0:
            return b""
        # the last `keep` bytes of the prompt's text; a token has >= 1 byte (or 0 for specials)
        return self.token_bytes.of(prompt[-self.keep:])[-self.keep:]

    def step(self, tail: bytes, tok: int) -> Tuple[bool, bytes]:
        tb = self.token_bytes(tok)
        buf = tail + tb
        hit = False
        if tb:
            for s in self.stops:
                if buf.find(s, max(0, len(tail) - len(s) + 1)) != -1:
                    hit = True
                    break
        return hit, (buf[-self.keep:] if self.keep else b"")


class _SeqState:
    """Tokens and counters of N sequences, as the processors need them."""

    def __init__(self, prompts: List[np.ndarray], rows_of_prompt: List[int], max_total: int, vocab: int,
                 cfg: GenerationConfig) -> None:
        N = len(rows_of_prompt)
        self.tokens = np.zeros((N, max_total), np.int32)  # prompt + generated
        self.length = np.zeros(N, np.int64)
        self.prompt_len = np.zeros(N, np.int64)
        for r, p in enumerate(rows_of_prompt):
            L = len(prompts[p])
            self.tokens[r, :L] = prompts[p]
            self.length[r] = self.prompt_len[r] = L
        self.seen = None  # [N, V] bool: token present (prompt included), for repetition_penalty
        if cfg.repetition_penalty != 1.0:
            self.seen = np.zeros((N, vocab), bool)
            for r, p in enumerate(rows_of_prompt):
                self.seen[r, prompts[p]] = True
        self.counts = None  # [N, V] int32: times generated, for presence/frequency penalties
        if cfg.presence_penalty != 0.0 or cfg.frequency_penalty != 0.0:
            self.counts = np.zeros((N, vocab), np.int32)

    def n_generated(self, rows: np.ndarray) -> np.ndarray:
        return self.length[rows] - self.prompt_len[rows]

    def append(self, rows: np.ndarray, toks: np.ndarray) -> None:
        self.tokens[rows, self.length[rows]] = toks
        self.length[rows] += 1
        if self.seen is not None:
            self.seen[rows, toks] = True
        if self.counts is not None:
            np.add.at(self.counts, (rows, toks), 1)

    def gather(self, src: np.ndarray) -> None:
        """Row i takes the old row src[i] (beam reordering)."""
        self.tokens = self.tokens[src]
        self.length = self.length[src]
        self.prompt_len = self.prompt_len[src]
        if self.seen is not None:
            self.seen = self.seen[src]
        if self.counts is not None:
            self.counts = self.counts[src]


class _Processors:
    """The logits pipeline in Hugging Face's order: repetition penalty, (OpenAI
    presence/frequency penalties), no-repeat n-gram, min new tokens; then, when
    sampling, temperature, top-k, top-p, min-p."""

    def __init__(self, cfg: GenerationConfig, eos_ids: List[int], warp: bool, min_tokens_to_keep: int) -> None:
        self.cfg = cfg
        self.eos_ids = eos_ids
        self.warp = warp
        self.min_keep = min_tokens_to_keep

    def __call__(self, logits: np.ndarray, state: _SeqState, rows: np.ndarray) -> np.ndarray:
        cfg = self.cfg
        if state.seen is not None:
            apply_repetition_penalty(logits, state.seen[rows], cfg.repetition_penalty)
        if state.counts is not None:
            apply_presence_frequency_penalty(logits, state.counts[rows], cfg.presence_penalty, cfg.frequency_penalty)
        if cfg.no_repeat_ngram_size > 0:
            seqs = [state.tokens[r, : state.length[r]] for r in rows]
            apply_no_repeat_ngram(logits, seqs, cfg.no_repeat_ngram_size)
        if cfg.min_new_tokens > 0:
            apply_min_new_tokens(logits, state.n_generated(rows), cfg.min_new_tokens, self.eos_ids)
        if self.warp:
            apply_temperature(logits, cfg.temperature)
            if cfg.top_k:
                apply_top_k(logits, cfg.top_k, self.min_keep)
            if cfg.top_p < 1.0:
                apply_top_p(logits, cfg.top_p, self.min_keep)
            if cfg.min_p is not None:
                apply_min_p(logits, cfg.min_p, self.min_keep)
        return logits


# ============================================================================ inputs
def _as_prompts(input_ids: Any, vocab: int, max_pos: int) -> List[np.ndarray]:
    """A list of 1-D int32 arrays from a list of token-id lists, a 2-D int array,
    or a single 1-D list of ids (one prompt)."""
    if isinstance(input_ids, np.ndarray) or hasattr(input_ids, "numpy") or hasattr(input_ids, "__array__"):
        arr = np.asarray(input_ids)
        if arr.ndim == 1:
            arr = arr[None, :]
        if arr.ndim != 2:
            raise ValueError(f"input_ids must be a list of token-id lists or a 2-D int array, got shape {arr.shape}")
        rows = [arr[i] for i in range(arr.shape[0])]
    elif isinstance(input_ids, (list, tuple)):
        if len(input_ids) and all(isinstance(t, numbers.Integral) for t in input_ids):
            rows = [input_ids]
        else:
            rows = list(input_ids)
    else:
        raise ValueError(f"input_ids must be a list of token-id lists or a 2-D int array, "
                         f"got {type(input_ids).__name__}")
    if not rows:
        raise ValueError("input_ids is empty: give at least one prompt")
    prompts = []
    for i, r in enumerate(rows):
        a = np.asarray(r)
        if a.ndim != 1:
            raise ValueError(f"input_ids[{i}] must be a list of token ids, got shape {a.shape}")
        if a.size == 0:
            raise ValueError(f"input_ids[{i}] is an empty prompt; every prompt needs at least one token")
        if a.dtype.kind not in "iu":
            raise ValueError(f"input_ids[{i}] must hold integer token ids, got dtype {a.dtype}")
        lo, hi = int(a.min()), int(a.max())
        if lo < 0 or hi >= vocab:
            raise ValueError(f"input_ids[{i}] holds token id {lo if lo < 0 else hi}, outside the vocabulary [0, {vocab})")
        if a.size > max_pos:
            raise ValueError(f"input_ids[{i}] has {a.size} tokens, longer than the model's context "
                             f"(max_position_embeddings = {max_pos})")
        prompts.append(a.astype(np.int32))
    return prompts


def _resolve(model: Any, generation_config: Optional[GenerationConfig], kwargs: Dict[str, Any]) -> GenerationConfig:
    """The config in force, merged as transformers merges it: keyword arguments > the config
    passed (its None fields taking the model's) > ``model.generation_config`` (from the
    checkpoint's generation_config.json) > the defaults. An explicit ``max_new_tokens`` clears
    ``max_length``."""
    cfg = generation_config
    own = getattr(model, "generation_config", None)
    if not isinstance(own, GenerationConfig):
        own = None
    if cfg is None:
        cfg = own if own is not None else GenerationConfig()
    else:
        if isinstance(cfg, dict):
            cfg = GenerationConfig.from_dict(cfg)
        elif not isinstance(cfg, GenerationConfig):
            raise TypeError(f"generation_config must be a GenerationConfig, got {type(cfg).__name__}")
        if own is not None:  # the caller's unset (None) fields: the model's values (HF's defaults_only update)
            fill = {f.name: getattr(own, f.name) for f in dataclasses.fields(cfg)
                    if f.default is None and getattr(cfg, f.name) is None and getattr(own, f.name) is not None}
            if "max_length" in fill and cfg.max_new_tokens != GenerationConfig.max_new_tokens:
                del fill["max_length"]  # the caller chose max_new_tokens
            if fill:
                cfg = cfg.replace(**fill)
    if "max_new_tokens" in kwargs and "max_length" not in kwargs:
        kwargs = dict(kwargs, max_length=None)
    return cfg.replace(**kwargs) if kwargs else cfg


def _wanted_new_tokens(cfg: GenerationConfig, plen: np.ndarray) -> np.ndarray:
    """New tokens each sequence is asked for: max_new_tokens, or max_length - prompt length."""
    if cfg.max_length is None:
        return np.full(plen.shape, cfg.max_new_tokens, np.int64)
    want = cfg.max_length - plen
    if (want < 1).any():
        k = int(np.argmin(want))
        raise ValueError(f"a prompt of {int(plen[k])} tokens leaves no room under GenerationConfig.max_length = "
                         f"{cfg.max_length} (prompt + new tokens); pass max_new_tokens= instead")
    return want


class GenerateOutput(list):
    """What ``generate`` returns: a list (prompt-major, best first) of new-token lists,
    with ``stop_reasons`` (one per entry: ``"eos"``, ``"stop_string"``,
    ``"max_new_tokens"`` or ``"max_context"``) and, for beam search, ``scores``
    (length-penalised sums of log-probs).

    >>> out = GenerateOutput([[5, 2], [7]], ["eos", "max_new_tokens"])
    >>> out == [[5, 2], [7]], out.stop_reasons[0]
    (True, 'eos')
    """

    def __init__(self, seqs: List[List[int]], stop_reasons: List[str], scores: Optional[List[float]] = None):
        super().__init__(seqs)
        self.stop_reasons = stop_reasons
        self.scores = scores


@dataclass
class StreamToken:
    """One token chosen by ``stream``: ``index`` is the sequence's place in
    ``generate``'s output, ``text`` the text it adds (given a tokenizer; incomplete
    UTF-8 is held back until complete), ``stop_reason`` is set on a sequence's last token."""

    index: int
    token_id: int
    text: Optional[str] = None
    stop_reason: Optional[str] = None


def _model_dims(model: Any) -> Tuple[int, int]:
    mc = model.config
    return int(mc.vocab_size), int(getattr(mc, "max_positions", mc.max_position_embeddings))


def _prefill(model: Any, prompts: List[np.ndarray], slots: List[int]) -> np.ndarray:
    """Run every prompt into its slot; prompts of equal length share a call. Returns
    the last-position logits [n_prompts, V] (a copy)."""
    by_len: Dict[int, List[int]] = {}
    for i, p in enumerate(prompts):
        by_len.setdefault(len(p), []).append(i)
    out: Optional[np.ndarray] = None
    for L, idx in by_len.items():
        toks = np.stack([prompts[i] for i in idx]).astype(np.int32)
        logits = model._kv_forward(toks, np.asarray([slots[i] for i in idx], np.int32),
                                   np.zeros(len(idx), np.int32), True)
        if out is None:
            out = np.empty((len(prompts), logits.shape[-1]), np.float32)
        out[idx] = logits
    assert out is not None
    return out


def _claim_cache(model: Any) -> object:
    """Mark the model's KV cache as this generation's (a model has one cache)."""
    owner = object()
    try:
        model._generation_owner = owner
    except AttributeError:  # a model that takes no attributes: no check
        pass
    return owner


def _check_cache(model: Any, owner: object) -> None:
    if getattr(model, "_generation_owner", owner) is not owner:
        raise RuntimeError("another generate()/stream() on this model reset its KV cache while this stream "
                           "was running; a model runs one generation at a time (finish or close the stream first)")


def _warn_context(max_pos: int) -> None:
    warnings.warn(f"generation reached the model's maximum context ({max_pos} tokens) and stopped early "
                  f"(stop_reason '{STOP_MAX_CONTEXT}')", RuntimeWarning, stacklevel=4)


# ============================================================================ greedy / sampling
def _decode_steps(model: Any, prompts: List[np.ndarray], cfg: GenerationConfig, eos_ids: List[int],
                  stopper: Optional[_StopStrings]) -> Iterator[Tuple[int, int, Optional[str]]]:
    """Greedy or sampled decoding; yields (sequence index, token, stop_reason or None)
    as tokens are chosen. Sequence k = prompt k // r, copy k % r."""
    V, max_pos = _model_dims(model)
    r = cfg.num_return_sequences
    n = len(prompts)
    N = n * r
    plen = np.array([len(prompts[k // r]) for k in range(N)], np.int64)
    want = _wanted_new_tokens(cfg, plen)
    limit = np.minimum(want, max_pos - plen)  # new tokens each may get
    max_total = int((plen + limit).max())

    owner = _claim_cache(model)
    model._kv_reset(N, max(max_total - 1, int(plen.max())))
    first = _prefill(model, prompts, [i * r for i in range(n)])
    rows_of_prompt = [k // r for k in range(N)]
    if r > 1:
        model._kv_reorder(np.array([(k // r) * r for k in range(N)], np.int32))
    logits = first[rows_of_prompt]  # [N, V]

    state = _SeqState(prompts, rows_of_prompt, max_total, V, cfg)
    procs = _Processors(cfg, eos_ids, warp=cfg.do_sample, min_tokens_to_keep=1)
    rngs = None
    if cfg.do_sample:
        ss = np.random.SeedSequence(cfg.seed)
        rngs = [np.random.Generator(np.random.PCG64(s)) for s in ss.spawn(N)]
    eos_set = set(eos_ids)
    tails = [stopper.initial_tail(prompts[k // r]) for k in range(N)] if stopper else None

    live = np.arange(N)
    warned = False
    for k in np.flatnonzero(limit <= 0):  # the prompt fills the context already
        if not warned:
            _warn_context(max_pos)
            warned = True
        yield int(k), -1, STOP_MAX_CONTEXT
    live = live[limit > 0]

    # Plain greedy (no processor changes the logits): the argmax can be taken where the logits
    # are (the GPU), and only the token ids come back. min_new_tokens masks eos only while a
    # sequence is short, so it is checked per step.
    on_device = getattr(model, "_kv_greedy_on_device", None)
    device_greedy = (not cfg.do_sample and state.seen is None and state.counts is None
                     and cfg.no_repeat_ngram_size == 0 and on_device is not None and bool(on_device()))
    # Greedy chains: n steps per call, fed on the device. Long ones when only the token
    # limit can stop a sequence (nothing is computed past it); short ones when eos or a stop
    # string may end it earlier (what follows a stop in the same chain is dropped).
    chain_max = int(getattr(model, "_kv_greedy_chain_max", lambda: 0)()) if device_greedy else 0
    chain_len = min(chain_max, 32 if not eos_ids and stopper is None else 8)
    next_toks: Optional[np.ndarray] = None
    pending: List[np.ndarray] = []  # tokens of later chain steps, each aligned with `live`

    while live.size:
        if next_toks is not None:
            toks = next_toks
        elif pending:
            toks = pending.pop(0)
        else:
            lg = procs(logits, state, live)
            if cfg.do_sample:
                toks = sample_from_logits(lg, np.array([rngs[k].random() for k in live]))
            else:
                toks = lg.argmax(axis=-1)
        toks = toks.astype(np.int32)
        state.append(live, toks)
        keep = np.ones(live.size, bool)
        for j, (k, t) in enumerate(zip(live.tolist(), toks.tolist())):
            reason = None
            if t in eos_set:
                reason = STOP_EOS
            if stopper is not None:
                hit, tails[k] = stopper.step(tails[k], t)
                if hit and reason is None:
                    reason = STOP_STRING
            if reason is None and state.length[k] - plen[k] >= limit[k]:
                if limit[k] < want[k]:
                    reason = STOP_MAX_CONTEXT
                    if not warned:
                        _warn_context(max_pos)
                        warned = True
                else:
                    reason = STOP_MAX_NEW_TOKENS
            if reason is not None:
                keep[j] = False
            yield k, t, reason
        live, toks = live[keep], toks[keep]
        if pending and not keep.all():  # a sequence stopped inside a chain: drop its later tokens
            pending = [p[keep] for p in pending]
        next_toks = None
        if live.size and not pending:
            _check_cache(model, owner)
            step_args = (toks[:, None], live.astype(np.int32), (state.length[live] - 1).astype(np.int32))
            if device_greedy and (cfg.min_new_tokens == 0 or not eos_ids
                                  or bool((state.n_generated(live) >= cfg.min_new_tokens).all())):
                # at most the tokens every live sequence may still get: no position past the cache
                n = min(chain_len, int((limit[live] - state.n_generated(live)).min()))
                if n >= 2:
                    pending = list(np.asarray(model._kv_greedy_chain(*step_args, n), np.int32))
                else:
                    next_toks = np.asarray(model._kv_forward_greedy(*step_args), np.int32)
            else:
                next_toks = None
                out = model._kv_forward(*step_args, True)
                logits = np.array(out, np.float32, copy=True)


# ============================================================================ beam search
def _beam_search(model: Any, prompts: List[np.ndarray], cfg: GenerationConfig, eos_ids: List[int],
                 stopper: Optional[_StopStrings]) -> GenerateOutput:
    """Hugging Face's (vectorised, transformers >= 4.50) beam search, one independent
    search per prompt, all prompts' beams decoded together. Beam b of prompt i lives
    in cache slot i * num_beams + b."""
    V, max_pos = _model_dims(model)
    nb = cfg.num_beams
    n = len(prompts)
    N = n * nb
    lp_pow = cfg.length_penalty
    early = cfg.early_stopping
    K = min(max(2, 1 + len(eos_ids)) * nb, nb * V)  # candidates kept per step
    plen = np.array([len(p) for p in prompts], np.int64)
    want = _wanted_new_tokens(cfg, plen)
    limit = np.minimum(want, max_pos - plen)  # HF's max_length - prompt length
    max_total = int((plen + limit).max())
    eos_arr = np.asarray(eos_ids, np.int64)
    rng = None
    if cfg.do_sample:
        rng = [np.random.Generator(np.random.PCG64(s)) for s in np.random.SeedSequence(cfg.seed).spawn(n)]

    rows_of_prompt = [i // nb for i in range(N)]
    state = _SeqState(prompts, rows_of_prompt, max_total, V, cfg)
    procs = _Processors(cfg, eos_ids, warp=cfg.do_sample, min_tokens_to_keep=len(eos_ids) + 1)
    tails = [stopper.initial_tail(prompts[i // nb]) for i in range(N)] if stopper else None

    running = np.zeros((n, nb), np.float32)  # running beams' summed log-probs
    running[:, 1:] = _BEAM_NEG  # step 1 expands beam 0 only (all beams hold the prompt)
    fin_scores = np.full((n, nb), _BEAM_NEG, np.float32)  # finished hypotheses, best first
    fin_done = np.zeros((n, nb), bool)
    fin_seqs: List[List[Optional[List[int]]]] = [[None] * nb for _ in range(n)]
    fin_reason: List[List[Optional[str]]] = [[None] * nb for _ in range(n)]
    heur_open = np.ones(n, bool)  # HF's is_early_stop_heuristic_unsatisfied

    live = np.flatnonzero(limit > 0)
    hit_context = bool((limit <= 0).any())
    if live.size:
        _claim_cache(model)
        model._kv_reset(N, max(max_total - 1, int(plen.max())))
        first = _prefill(model, [prompts[i] for i in live], [int(i) * nb for i in live])
        logits = np.repeat(first, nb, axis=0)  # [n_live * nb, V]
    gen = 0  # tokens generated so far (the same for every beam of every prompt)
    while live.size:
        rows = (live[:, None] * nb + np.arange(nb)).reshape(-1)
        lp = log_softmax(logits)
        lp = procs(lp, state, rows)
        nl = live.size
        acc = (lp.reshape(nl, nb, V) + running[live][:, :, None]).reshape(nl, nb * V)
        if rng is None:
            part = np.argpartition(-acc, K - 1, axis=-1)[:, :K]
        else:  # sample K without replacement ∝ softmax(acc): Gumbel top-K
            g = np.stack([rng[i].gumbel(size=nb * V) for i in live]).astype(np.float64)
            noisy = acc.astype(np.float64) + g
            part = np.argpartition(-noisy, K - 1, axis=-1)[:, :K]
        pv = np.take_along_axis(acc, part, axis=-1)
        order = np.lexsort((part, -pv), axis=-1)  # best first; ties: lower index first
        cidx = np.take_along_axis(part, order, axis=-1)
        cval = np.take_along_axis(pv, order, axis=-1)  # [nl, K]
        cbeam = cidx // V  # source beam
        ctok = (cidx % V).astype(np.int32)

        # which candidates end their sequence
        hits = np.isin(ctok, eos_arr) if eos_arr.size else np.zeros((nl, K), bool)
        reason = np.where(hits, STOP_EOS, "").astype(object)
        full = gen + 1 >= limit[live]  # this token reaches max_new_tokens or the context
        new_tails: Dict[Tuple[int, int], bytes] = {}
        if stopper is not None:
            for a in range(nl):
                for c in range(K):
                    src_row = live[a] * nb + cbeam[a, c]
                    hit, t = stopper.step(tails[src_row], int(ctok[a, c]))
                    new_tails[(a, c)] = t
                    if hit and not hits[a, c]:
                        hits[a, c] = True
                        reason[a, c] = STOP_STRING
        for a in np.flatnonzero(full):
            m = ~hits[a]
            hits[a] = True
            reason[a, m] = STOP_MAX_NEW_TOKENS if limit[live[a]] == want[live[a]] else STOP_MAX_CONTEXT

        # running beams for the next step: the best nb candidates that did not stop
        rval = cval + hits.astype(np.float32) * _BEAM_NEG
        nxt = np.argsort(-rval, axis=-1, kind="stable")[:, :nb]
        new_running = np.take_along_axis(rval, nxt, axis=-1)

        # finished hypotheses: only the top nb candidates may enter
        glen = gen + 1
        cand = cval / np.float32(glen ** lp_pow)
        cand = cand + ((fin_done[live].all(axis=1) & (early is True)).astype(np.float32) * _BEAM_NEG)[:, None]
        cand = cand + ((~heur_open[live]).astype(np.float32) * _BEAM_NEG)[:, None]
        entered = hits.copy()
        entered[:, nb:] = False
        cand = cand + (~entered).astype(np.float32) * _BEAM_NEG
        for a, i in enumerate(live.tolist()):
            merged = np.concatenate([fin_scores[i], cand[a]])
            # best first; among equal scores the later entry first, as torch.topk does here. Scores
            # tie when every token gets masked (no_repeat_ngram_size exhausting the vocabulary): an
            # open candidate's s/len - 1e9 rounds to the -1e9 of the empty slots in float32, and
            # Hugging Face keeps the newest such candidates, so the output holds tokens, not []
            top = np.lexsort((-np.arange(merged.size), -merged))[:nb]
            kept = []  # (tokens, reason, finished) of the new best nb
            for j in top.tolist():
                if j < nb:  # an old finished hypothesis
                    kept.append((fin_seqs[i][j], fin_reason[i][j], bool(fin_done[i, j])))
                else:  # candidate c: its source beam's new tokens + its token
                    c = j - nb
                    src_row = i * nb + int(cbeam[a, c])
                    toks = state.tokens[src_row, plen[i]: state.length[src_row]].tolist() + [int(ctok[a, c])]
                    kept.append((toks, reason[a, c] or None, bool(entered[a, c])))
            fin_scores[i] = merged[top]
            fin_seqs[i] = [k[0] for k in kept]
            fin_reason[i] = [k[1] for k in kept]
            fin_done[i] = [k[2] for k in kept]
        if (reason == STOP_MAX_CONTEXT).any():
            hit_context = True

        # move beams: cache, tokens, counters, stop-string tails
        src_all = np.arange(N)
        src_all[rows] = (live[:, None] * nb + np.take_along_axis(cbeam, nxt, axis=-1)).reshape(-1)
        state.gather(src_all)
        new_toks = np.take_along_axis(ctok, nxt, axis=-1).reshape(-1)
        state.append(rows, new_toks)
        if stopper is not None:
            for a in range(nl):
                for b in range(nb):
                    tails[live[a] * nb + b] = new_tails[(a, int(nxt[a, b]))]
        running[live] = new_running
        gen += 1

        # HF's stopping rules, per prompt
        if early == "never" and lp_pow > 0.0:
            best_len = limit[live].astype(np.float64)
        else:
            best_len = np.full(nl, float(gen))
        best_run = running[live, 0] / (best_len ** lp_pow).astype(np.float32)
        worst_fin = np.where(fin_done[live], fin_scores[live].min(axis=1, keepdims=True), _BEAM_NEG)
        heur_open[live] &= (best_run[:, None] > worst_fin).any(axis=1)
        done = ~heur_open[live] | (fin_done[live].all(axis=1) & (early is True)) | hits.all(axis=1)
        live = live[~done]
        if live.size:
            model._kv_reorder(src_all.astype(np.int32))
            rows = (live[:, None] * nb + np.arange(nb)).reshape(-1)
            pos = (state.length[rows] - 1).astype(np.int32)
            out = model._kv_forward(state.tokens[rows, state.length[rows] - 1][:, None].astype(np.int32),
                                    rows.astype(np.int32), pos, True)
            logits = np.array(out, np.float32, copy=True)

    if hit_context:
        _warn_context(max_pos)
    r = cfg.num_return_sequences
    seqs, reasons, scores = [], [], []
    for i in range(n):
        if limit[i] <= 0:
            seqs += [[] for _ in range(r)]
            reasons += [STOP_MAX_CONTEXT] * r
            scores += [0.0] * r
            continue
        for b in range(r):
            seqs.append(fin_seqs[i][b] if fin_seqs[i][b] is not None else [])
            reasons.append(fin_reason[i][b] or STOP_MAX_NEW_TOKENS)
            scores.append(float(fin_scores[i][b]))
    return GenerateOutput(seqs, reasons, scores)


# ============================================================================ drivers
def _setup(model: Any, input_ids: Any, generation_config: Optional[GenerationConfig], tokenizer: Any,
           kwargs: Dict[str, Any]):
    cfg = _resolve(model, generation_config, kwargs)
    V, max_pos = _model_dims(model)
    if isinstance(input_ids, str):
        if tokenizer is None:
            raise ValueError("input_ids is a string: pass tokenizer=... to encode it, or pass token ids")
        input_ids = [tokenizer.encode(input_ids)]
    prompts = _as_prompts(input_ids, V, max_pos)
    eos_ids = cfg.eos_ids(getattr(model, "config", None))
    bad = [t for t in eos_ids if t >= V]
    if bad:
        raise ValueError(f"GenerationConfig.eos_token_id {bad[0]} is outside the vocabulary [0, {V})")
    stopper = None
    if cfg.stop_strings:
        if tokenizer is None:
            raise ValueError("GenerationConfig.stop_strings needs a tokenizer: pass tokenizer=...")
        strings = [cfg.stop_strings] if isinstance(cfg.stop_strings, str) else list(cfg.stop_strings)
        stopper = _StopStrings(strings, _TokenBytes(tokenizer))
    return cfg, prompts, eos_ids, stopper


def generate(model: Any, input_ids: Any, generation_config: Optional[GenerationConfig] = None,
             **kwargs: Any) -> GenerateOutput:
    """Generate new tokens for each prompt; ``model.generate`` calls this.

    ``input_ids``: a list of token-id lists (lengths may differ), a 2-D int array, or
    one list of ids. ``generation_config`` and/or keyword overrides (the fields of
    :class:`GenerationConfig`); ``tokenizer=`` is needed for ``stop_strings``.

    Returns a :class:`GenerateOutput`: a list of ``len(prompts) * num_return_sequences``
    lists of new token ids (prompt-major, best first), each ending with the eos token
    when one stopped it; ``.stop_reasons`` says why each stopped.

    >>> import pyllama
    >>> cfg = pyllama.LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64,
    ...                           num_hidden_layers=1, num_attention_heads=2)
    >>> model = pyllama.Llama(cfg, seed=0)
    >>> a = generate(model, [[1, 2, 3]], max_new_tokens=5, do_sample=True, seed=7)
    >>> a == generate(model, [[1, 2, 3]], max_new_tokens=5, do_sample=True, seed=7)
    True
    >>> len(generate(model, [[1, 2], [3]], num_beams=3, num_return_sequences=2, max_new_tokens=3))
    4
    """
    tokenizer = kwargs.pop("tokenizer", None)
    cfg, prompts, eos_ids, stopper = _setup(model, input_ids, generation_config, tokenizer, kwargs)
    if cfg.num_beams > 1:
        return _beam_search(model, prompts, cfg, eos_ids, stopper)
    N = len(prompts) * cfg.num_return_sequences
    seqs: List[List[int]] = [[] for _ in range(N)]
    reasons: List[str] = [STOP_MAX_NEW_TOKENS] * N
    for k, t, reason in _decode_steps(model, prompts, cfg, eos_ids, stopper):
        if t >= 0:
            seqs[k].append(t)
        if reason is not None:
            reasons[k] = reason
    return GenerateOutput(seqs, reasons)


def stream(model: Any, input_ids: Any, generation_config: Optional[GenerationConfig] = None,
           tokenizer: Any = None, **kwargs: Any) -> Iterator[StreamToken]:
    """Like :func:`generate` (greedy or sampling), but yields each token as it is
    chosen, as a :class:`StreamToken`; with a tokenizer, ``.text`` holds the text it
    adds and ``input_ids`` may be a string. Beam search cannot stream (a beam's
    tokens are only final at the end), as in Hugging Face.

    >>> import pyllama
    >>> cfg = pyllama.LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64,
    ...                           num_hidden_layers=1, num_attention_heads=2)
    >>> model = pyllama.Llama(cfg, seed=0)
    >>> toks = [ev.token_id for ev in stream(model, [1, 2, 3], max_new_tokens=4)]
    >>> toks == generate(model, [[1, 2, 3]], max_new_tokens=4)[0]
    True
    """
    cfg, prompts, eos_ids, stopper = _setup(model, input_ids, generation_config, tokenizer, kwargs)
    if cfg.num_beams > 1:
        raise ValueError("GenerationConfig.num_beams > 1 cannot stream; use generate() for beam search")
    # checks above run now; the tokens come lazily
    return _stream_tokens(model, prompts, cfg, eos_ids, stopper, tokenizer)


def _stream_tokens(model: Any, prompts: List[np.ndarray], cfg: GenerationConfig, eos_ids: List[int],
                   stopper: Optional[_StopStrings], tokenizer: Any) -> Iterator[StreamToken]:
    token_bytes = _TokenBytes(tokenizer) if tokenizer is not None else None
    decoders: Dict[int, Any] = {}
    for k, t, reason in _decode_steps(model, prompts, cfg, eos_ids, stopper):
        text = None
        if token_bytes is not None:
            dec = decoders.get(k)
            if dec is None:
                dec = decoders[k] = codecs.getincrementaldecoder("utf-8")(errors="replace")
            text = dec.decode(token_bytes(t) if t >= 0 else b"", final=reason is not None)
        yield StreamToken(int(k), int(t), text, reason)
