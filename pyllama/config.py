"""Model configuration with Hugging Face ``LlamaConfig`` field names."""
from __future__ import annotations

import dataclasses
import json
import math
import os
from dataclasses import dataclass, field
from typing import Optional, Union

PathLike = Union[str, "os.PathLike[str]"]

INT_MAX = 2 ** 31 - 1  # the core's sizes and ids are 32-bit
_memory_limit: Optional[int] = None


def memory_limit(limit_bytes: Optional[int] = None, *, reset: bool = False) -> Optional[int]:
    """The most memory (bytes) a model may need before ``LlamaConfig`` refuses it.

    By default the machine's physical memory (``os.sysconf``). ``memory_limit(n)`` sets a
    lower (or higher) limit for this process, ``memory_limit(reset=True)`` goes back to
    the default; both return the limit now in force (None when it cannot be told).
    ``Llama(config)`` checks 4 bytes per parameter (the float32 weights; gradients are
    allocated by the first backward) plus the RoPE
    tables, ``Trainer`` 16 (two AdamW moments more) plus the activations of a batch
    (:meth:`LlamaConfig.memory_bytes`); both in Python, before the core allocates.
    A config alone is never refused for its size.

    >>> import pyllama
    >>> old = pyllama.memory_limit(10**6)
    >>> pyllama.Llama(pyllama.LlamaConfig(vocab_size=32000, hidden_size=256, intermediate_size=512,
    ...                                   num_hidden_layers=2, num_attention_heads=4))
    Traceback (most recent call last):
    ...
    MemoryError: Llama: this model needs about 71 MB (4 bytes per parameter ... pyllama.memory_limit() is 1 MB...
    >>> _ = pyllama.memory_limit(reset=True)
    """
    global _memory_limit
    if reset:
        _memory_limit = None
    elif limit_bytes is not None:
        if isinstance(limit_bytes, bool) or not isinstance(limit_bytes, int) or limit_bytes <= 0:
            raise ValueError(f"memory_limit must be a positive number of bytes, got {limit_bytes!r}")
        _memory_limit = limit_bytes
    return _memory_limit if _memory_limit is not None else _physical_memory()


def _normalize_rope_scaling(rs, max_position_embeddings) -> Optional[dict]:
    """``rope_scaling`` checked by the core's config.json reader, in canonical form."""
    from . import _core

    if not isinstance(rs, dict):
        raise ValueError(f"LlamaConfig.rope_scaling must be a dict as config.json spells it (or None), got {rs!r}")
    rs = {k: v for k, v in rs.items() if k != "rope_theta"}  # rope_theta is its own field
    try:
        text = json.dumps(rs, allow_nan=False)
    except (TypeError, ValueError) as e:
        raise ValueError(f"LlamaConfig.rope_scaling has a value that is not plain JSON: {e}") from None
    mp = max_position_embeddings if isinstance(max_position_embeddings, int) and max_position_embeddings > 0 else 1
    out = _core.normalize_rope_scaling(text, mp)
    if out is not None:  # the core's JSON gives whole numbers as int: factors are floats, as transformers has them
        out = {k: float(v) if isinstance(v, (int, float)) and not isinstance(v, bool)
               and k != "original_max_position_embeddings" else v for k, v in out.items()}
    return out


def _physical_memory() -> Optional[int]:
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def _mb(n: int) -> str:
    return f"{n / 1e6:,.0f} MB" if n < 1e10 else f"{n / 1e9:,.1f} GB"


def check_memory(cfg: "LlamaConfig", training: bool = False, batch_tokens: int = 0) -> None:
    """Raise ``MemoryError`` (with the figures) when ``cfg`` needs more than :func:`memory_limit`
    (see :meth:`LlamaConfig.memory_bytes` for what is counted)."""
    limit = memory_limit()
    need = cfg.memory_bytes(training, batch_tokens)
    if limit is not None and need > limit:
        who = "pyllama.memory_limit()" if _memory_limit is not None else "this machine's memory"
        what = ("Trainer: training this model needs about {} (16 bytes per parameter for weights, gradients and "
                "AdamW moments, the activations of a batch" if training else
                "Llama: this model needs about {} (4 bytes per parameter for the float32 weights; a backward "
                "adds 4 more for the gradients")
        raise MemoryError(what.format(_mb(need)) + f", RoPE tables of max_position_embeddings="
                          f"{cfg.max_position_embeddings}); {who} is {_mb(limit)}. Use a smaller model"
                          + (" or batch" if training else "") + ", or set the limit with pyllama.memory_limit(bytes)")


@dataclass
class LlamaConfig:
    """The blueprint of a LLaMA model (field names as in ``transformers.LlamaConfig``).

    >>> cfg = LlamaConfig(vocab_size=4096, hidden_size=288, intermediate_size=768,
    ...                   num_hidden_layers=6, num_attention_heads=6)
    >>> cfg.head_dim, cfg.num_key_value_heads
    (48, 6)

    RoPE scaling takes ``rope_scaling`` as transformers spells it (types ``linear``, ``dynamic``,
    ``yarn``, ``llama3``); ``head_dim`` may differ from hidden_size / heads; ``attention_bias``
    and ``mlp_bias`` add biases to the projections:

    >>> LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
    ...             num_attention_heads=4, head_dim=16, attention_bias=True,
    ...             rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
    ...                           "high_freq_factor": 4.0}).rope_scaling["original_max_position_embeddings"]
    2048
    """

    vocab_size: int = 32000  # V: number of token ids
    hidden_size: int = 4096  # C: width of the residual stream
    intermediate_size: int = 11008  # I: width of the SwiGLU feed-forward
    num_hidden_layers: int = 32  # L: transformer blocks
    num_attention_heads: int = 32  # NH: query heads
    num_key_value_heads: Optional[int] = None  # NKV: key/value heads (GQA); None means NH
    max_position_embeddings: int = 2048  # longest sequence the model accepts
    rms_norm_eps: float = 1e-6  # epsilon inside RMSNorm's square root
    rope_theta: float = 10000.0  # RoPE base
    tie_word_embeddings: bool = False  # output head shares the embedding matrix
    bos_token_id: Optional[int] = None
    eos_token_id: Optional[int] = None
    head_dim: Optional[int] = None  # HS: width of one attention head; None means hidden_size / NH
    attention_bias: bool = False  # q/k/v/o projections with biases
    mlp_bias: bool = False  # gate/up/down projections with biases
    rope_scaling: Optional[dict] = None  # {"rope_type": "linear" | "dynamic" | "yarn" | "llama3", ...}

    def __post_init__(self) -> None:
        if self.num_key_value_heads is None:
            self.num_key_value_heads = self.num_attention_heads
        C, NH = self.hidden_size, self.num_attention_heads
        if self.head_dim is None and all(isinstance(v, int) and not isinstance(v, bool) and 0 < v <= INT_MAX
                                         for v in (C, NH)) and C % NH == 0:
            self.head_dim = C // NH  # otherwise validate() says what is wrong
        if self.rope_scaling is not None:
            self.rope_scaling = _normalize_rope_scaling(self.rope_scaling, self.max_position_embeddings)
        self.validate()

    @property
    def max_positions(self) -> int:
        """The longest sequence (and KV cache) the model takes: ``max_position_embeddings``, or
        ``max_position_embeddings * factor`` with dynamic RoPE scaling, which exists to go past it."""
        if self.rope_scaling and self.rope_scaling.get("rope_type") == "dynamic":
            return int(math.floor(self.max_position_embeddings * float(self.rope_scaling["factor"])))
        return self.max_position_embeddings

    def validate(self) -> None:
        """Check every field (types, ranges, the ``int32`` limit of the core) and that the
        model fits in memory (:func:`check_memory`); errors name the field."""
        def positive(name: str) -> None:
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
                raise ValueError(f"LlamaConfig.{name} must be a positive int, got {v!r}")
            if v > INT_MAX:
                raise ValueError(f"LlamaConfig.{name} = {v} is too large: the core's sizes are 32-bit, at most "
                                 f"{INT_MAX}")

        def positive_float(name: str) -> None:
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v <= 0:
                raise ValueError(f"LlamaConfig.{name} must be a finite number > 0, got {v!r}")

        for name in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                     "num_attention_heads", "num_key_value_heads", "max_position_embeddings"):
            positive(name)
        if self.head_dim is None:
            raise ValueError(
                f"LlamaConfig.hidden_size ({self.hidden_size}) must be divisible by "
                f"num_attention_heads ({self.num_attention_heads}), or give head_dim")
        positive("head_dim")
        if self.head_dim % 2:
            raise ValueError(f"LlamaConfig: head_dim = {self.head_dim} must be even for rotary embeddings")
        for name in ("attention_bias", "mlp_bias"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"LlamaConfig.{name} must be True or False, got {getattr(self, name)!r}")
        if self.rope_scaling is not None:
            _normalize_rope_scaling(self.rope_scaling, self.max_position_embeddings)
        if self.num_attention_heads % self.num_key_value_heads:
            raise ValueError(
                f"LlamaConfig.num_key_value_heads ({self.num_key_value_heads}) must divide "
                f"num_attention_heads ({self.num_attention_heads})")
        positive_float("rms_norm_eps")
        positive_float("rope_theta")
        if not isinstance(self.tie_word_embeddings, bool):
            raise ValueError(f"LlamaConfig.tie_word_embeddings must be True or False, got {self.tie_word_embeddings!r}")
        for name in ("bos_token_id", "eos_token_id"):
            v = getattr(self, name)
            if v is not None and (isinstance(v, bool) or not isinstance(v, int) or not 0 <= v <= INT_MAX):
                raise ValueError(f"LlamaConfig.{name} must be None or an int in [0, {INT_MAX}], got {v!r}")

    def memory_bytes(self, training: bool = True, batch_tokens: int = 0) -> int:
        """Bytes a model of this shape needs: 16 per parameter to train (float32 weights,
        gradients and two AdamW moments), 4 for the model alone (``training=False``: the
        weights, what ``Llama(config)`` allocates; gradients come with the first backward), plus the RoPE cos/sin tables
        (max_position_embeddings x head_dim floats) and, when ``batch_tokens`` (batch x
        sequence) is given, a rough figure for the activations kept for the backward pass
        (10 floats of width C and 3 of width I per token per layer, plus the logits twice).

        >>> LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
        ...             num_attention_heads=2, max_position_embeddings=16).memory_bytes()
        231936
        """
        C, I, L, V = self.hidden_size, self.intermediate_size, self.num_hidden_layers, self.vocab_size
        kv, q = self.num_key_value_heads * self.head_dim, self.num_attention_heads * self.head_dim
        per_layer = C * q * 2 + C * kv * 2 + 3 * C * I + 2 * C
        if self.attention_bias:
            per_layer += q + 2 * kv + C
        if self.mlp_bias:
            per_layer += 2 * I + C
        params = L * per_layer + V * C * (1 if self.tie_word_embeddings else 2) + C
        rope = self.max_positions * self.head_dim * 4
        acts = batch_tokens * (L * (10 * C + 3 * I) + 2 * V) * 4
        return (16 if training else 4) * params + rope + acts

    # ---------------------------------------------------------------- Hugging Face config.json
    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["architectures"] = ["LlamaForCausalLM"]
        d["model_type"] = "llama"
        d["hidden_act"] = "silu"
        d["torch_dtype"] = "float32"
        d["rope_scaling"] = dict(self.rope_scaling) if self.rope_scaling else None
        return {k: v for k, v in d.items() if v is not None or k == "rope_scaling"}

    @classmethod
    def from_dict(cls, d: dict) -> "LlamaConfig":
        """A config from a Hugging Face ``config.json`` dict (transformers 4 or 5 spelling).

        Every field that changes the model's math is honoured or refused with a ``ValueError``
        that names it (docs/CHECKPOINTS.md has the list); the rest are ignored.

        >>> LlamaConfig.from_dict({"vocab_size": 64, "hidden_size": 32, "intermediate_size": 64,
        ...     "num_hidden_layers": 1, "num_attention_heads": 4,
        ...     "rope_parameters": {"rope_type": "default", "rope_theta": 500000.0}}).rope_theta
        500000.0
        >>> LlamaConfig.from_dict({"vocab_size": 64, "hidden_size": 32, "intermediate_size": 64,
        ...     "num_hidden_layers": 1, "num_attention_heads": 4,
        ...     "rope_parameters": {"rope_type": "linear", "factor": 2.0}}).rope_scaling
        {'factor': 2.0, 'rope_type': 'linear'}
        >>> LlamaConfig.from_dict({"vocab_size": 64, "hidden_size": 32, "intermediate_size": 64,
        ...     "num_hidden_layers": 1, "num_attention_heads": 4,
        ...     "rope_parameters": {"rope_type": "longrope", "short_factor": [1.0], "long_factor": [1.0]}})
        Traceback (most recent call last):
        ...
        ValueError: config.json: rope_parameters asks for RoPE scaling rope_type 'longrope', ...
        """
        from . import _core

        if not isinstance(d, dict):
            raise ValueError(f"config.json must hold a JSON object of settings, got {type(d).__name__}")
        try:
            text = json.dumps(d, allow_nan=False)
        except (TypeError, ValueError) as e:
            raise ValueError(f"config.json has a value that is not plain JSON: {e}") from None
        try:
            n = _core.normalize_hf_config(text)
        except ValueError as e:
            raise ValueError(str(e)) from None
        for name in ("rms_norm_eps", "rope_theta"):
            n[name] = float(n[name])
        return cls(**n)

    def to_json(self, path: PathLike) -> None:
        """Write a Hugging Face ``config.json`` (atomically)."""
        from ._io import atomic_write_text

        atomic_write_text(path, json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n")

    @classmethod
    def from_json(cls, path: PathLike) -> "LlamaConfig":
        """Read a Hugging Face ``config.json``."""
        if not os.path.isfile(path):
            raise FileNotFoundError(f"no config file at {os.fspath(path)!r}")
        with open(path, "r", encoding="utf-8") as f:
            try:
                d = json.load(f)
            except json.JSONDecodeError as e:
                raise ValueError(f"{os.fspath(path)!r} is not valid JSON: {e}") from None
        return cls.from_dict(d)
