"""Model configuration with Hugging Face ``LlamaConfig`` field names."""
from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field
from typing import Optional, Union

PathLike = Union[str, "os.PathLike[str]"]


@dataclass
class LlamaConfig:
    """The blueprint of a LLaMA model (field names as in ``transformers.LlamaConfig``).

    >>> cfg = LlamaConfig(vocab_size=4096, hidden_size=288, intermediate_size=768,
    ...                   num_hidden_layers=6, num_attention_heads=6)
    >>> cfg.head_dim, cfg.num_key_value_heads
    (48, 6)
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

    def __post_init__(self) -> None:
        if self.num_key_value_heads is None:
            self.num_key_value_heads = self.num_attention_heads
        self.validate()

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    def validate(self) -> None:
        def positive(name: str) -> None:
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
                raise ValueError(f"LlamaConfig.{name} must be a positive int, got {v!r}")

        for name in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                     "num_attention_heads", "num_key_value_heads", "max_position_embeddings"):
            positive(name)
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(
                f"LlamaConfig.hidden_size ({self.hidden_size}) must be divisible by "
                f"num_attention_heads ({self.num_attention_heads})")
        if self.head_dim % 2:
            raise ValueError(f"LlamaConfig: head_dim = hidden_size / num_attention_heads = {self.head_dim} "
                             "must be even for rotary embeddings")
        if self.num_attention_heads % self.num_key_value_heads:
            raise ValueError(
                f"LlamaConfig.num_key_value_heads ({self.num_key_value_heads}) must divide "
                f"num_attention_heads ({self.num_attention_heads})")
        if not self.rms_norm_eps > 0:
            raise ValueError(f"LlamaConfig.rms_norm_eps must be > 0, got {self.rms_norm_eps!r}")
        if not self.rope_theta > 0:
            raise ValueError(f"LlamaConfig.rope_theta must be > 0, got {self.rope_theta!r}")

    # ---------------------------------------------------------------- Hugging Face config.json
    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["head_dim"] = self.head_dim
        d["architectures"] = ["LlamaForCausalLM"]
        d["model_type"] = "llama"
        d["hidden_act"] = "silu"
        d["attention_bias"] = False
        d["mlp_bias"] = False
        d["torch_dtype"] = "float32"
        d["rope_scaling"] = None
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
        ...     "rope_parameters": {"rope_type": "linear", "factor": 2.0}})
        Traceback (most recent call last):
        ...
        ValueError: config.json: rope_parameters asks for RoPE scaling rope_type 'linear', ...
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
