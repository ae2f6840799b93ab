"""The references the benchmarks measure pyllama against: a plain PyTorch LLaMA
(:func:`build_plain_llama`) and Hugging Face ``transformers.LlamaForCausalLM`` built from a
pyllama config (:func:`hf_llama_config`), with a pyllama model's weights or fresh ones;
and the imports of torch / transformers with a message when they are missing."""
from __future__ import annotations

from typing import Any, Dict, Optional

import numpy as np

import pyllama

from .common import log


# --------------------------------------------------------------------------- imports
def _import_torch(threads: int):
    """torch (threads set) or None with a message."""
    try:
        import torch
    except ImportError:
        log("torch is not installed (pip install 'pyllama[bench]'): PyTorch references skipped")
        return None
    torch.set_num_threads(threads)
    return torch


def _import_transformers():
    try:
        import transformers
    except ImportError:
        log("transformers is not installed (pip install 'pyllama[bench]'): Hugging Face references skipped")
        return None
    try:
        transformers.logging.set_verbosity_error()
    except Exception:  # older versions
        pass
    return transformers


def torch_ok() -> Optional[str]:
    """None when torch and transformers import and torch sees a CUDA GPU; else why not."""
    try:
        import torch
        import transformers  # noqa: F401
    except ImportError as e:
        return f"torch/transformers not importable: {e}"
    if not torch.cuda.is_available():
        return "torch.cuda is not available"
    return None


# --------------------------------------------------------------------------- plain PyTorch LLaMA
def build_plain_llama(cfg: "pyllama.LlamaConfig", torch_mod=None):
    """A compact plain-PyTorch LLaMA (RMSNorm, rotate-half RoPE, grouped-query attention
    through ``F.scaled_dot_product_attention(is_causal=True)``, SwiGLU) whose
    ``state_dict`` names equal Hugging Face's, so ``load_state_dict`` takes a pyllama
    model's ``named_parameters()``. ``model(ids, labels)`` returns (logits, loss) with the
    Hugging Face label shift."""
    import torch
    import torch.nn as nn
    import torch.nn.functional as F

    C, NH, NKV = cfg.hidden_size, cfg.num_attention_heads, cfg.num_key_value_heads
    HS = C // NH

    class RMSNorm(nn.Module):
        def __init__(self, n: int, eps: float):
            super().__init__()
            self.weight = nn.Parameter(torch.ones(n))
            self.eps = eps

        def forward(self, x):
            return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight

    def rotate_half(x):
        a, b = x.chunk(2, dim=-1)
        return torch.cat((-b, a), dim=-1)

    class Attention(nn.Module):
        def __init__(self):
            super().__init__()
            self.q_proj = nn.Linear(C, NH * HS, bias=False)
            self.k_proj = nn.Linear(C, NKV * HS, bias=False)
            self.v_proj = nn.Linear(C, NKV * HS, bias=False)
            self.o_proj = nn.Linear(NH * HS, C, bias=False)

        def forward(self, x, cos, sin):
            B, T, _ = x.shape
            q = self.q_proj(x).view(B, T, NH, HS).transpose(1, 2)
            k = self.k_proj(x).view(B, T, NKV, HS).transpose(1, 2)
            v = self.v_proj(x).view(B, T, NKV, HS).transpose(1, 2)
            q = q * cos + rotate_half(q) * sin
            k = k * cos + rotate_half(k) * sin
            if NKV != NH:
                k = k.repeat_interleave(NH // NKV, dim=1)
                v = v.repeat_interleave(NH // NKV, dim=1)
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
            return self.o_proj(y.transpose(1, 2).reshape(B, T, NH * HS))

    class MLP(nn.Module):
        def __init__(self):
            super().__init__()
            self.gate_proj = nn.Linear(C, cfg.intermediate_size, bias=False)
            self.up_proj = nn.Linear(C, cfg.intermediate_size, bias=False)
            self.down_proj = nn.Linear(cfg.intermediate_size, C, bias=False)

        def forward(self, x):
            return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))

    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.input_layernorm = RMSNorm(C, cfg.rms_norm_eps)
            self.self_attn = Attention()
            self.post_attention_layernorm = RMSNorm(C, cfg.rms_norm_eps)
            self.mlp = MLP()

        def forward(self, x, cos, sin):
            x = x + self.self_attn(self.input_layernorm(x), cos, sin)
            return x + self.mlp(self.post_attention_layernorm(x))

    class Body(nn.Module):
        def __init__(self):
            super().__init__()
            self.embed_tokens = nn.Embedding(cfg.vocab_size, C)
            self.layers = nn.ModuleList(Block() for _ in range(cfg.num_hidden_layers))
            self.norm = RMSNorm(C, cfg.rms_norm_eps)

    class PlainLlama(nn.Module):
        def __init__(self):
            super().__init__()
            self.model = Body()
            self.lm_head = nn.Linear(C, cfg.vocab_size, bias=False)
            if cfg.tie_word_embeddings:
                self.lm_head.weight = self.model.embed_tokens.weight
            inv = 1.0 / (cfg.rope_theta ** (torch.arange(0, HS, 2, dtype=torch.int64).float() / HS))
            self.register_buffer("inv_freq", inv, persistent=False)

        def forward(self, ids, labels=None):
            T = ids.shape[1]
            freqs = torch.outer(torch.arange(T, dtype=torch.float32), self.inv_freq)
            emb = torch.cat((freqs, freqs), dim=-1)
            cos, sin = emb.cos(), emb.sin()
            x = self.model.embed_tokens(ids)
            for layer in self.model.layers:
                x = layer(x, cos, sin)
            logits = self.lm_head(self.model.norm(x))
            loss = None
            if labels is not None:
                loss = F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), labels[:, 1:].reshape(-1),
                                       ignore_index=-100)
            return logits, loss

    return PlainLlama()


def _state_dict_of(model: "pyllama.Llama", torch) -> Dict[str, Any]:
    return {k: torch.from_numpy(np.array(v)) for k, v in model.named_parameters().items()}


def plain_llama_from(model: "pyllama.Llama", torch):
    """:func:`build_plain_llama` holding ``model``'s weights (float32, train mode)."""
    plain = build_plain_llama(model.config)
    sd = _state_dict_of(model, torch)
    if model.config.tie_word_embeddings:
        sd.pop("lm_head.weight", None)
    plain.load_state_dict(sd, strict=not model.config.tie_word_embeddings)
    return plain.float()


def hf_llama_config(c: "pyllama.LlamaConfig", transformers, attn: str = "sdpa", **overrides):
    """``transformers.LlamaConfig`` of the pyllama config ``c`` (``attn``: the attention
    implementation; ``overrides``: more fields, or other values)."""
    kw = dict(vocab_size=c.vocab_size, hidden_size=c.hidden_size, intermediate_size=c.intermediate_size,
              num_hidden_layers=c.num_hidden_layers, num_attention_heads=c.num_attention_heads,
              num_key_value_heads=c.num_key_value_heads, max_position_embeddings=c.max_position_embeddings,
              rms_norm_eps=c.rms_norm_eps, rope_theta=c.rope_theta, tie_word_embeddings=c.tie_word_embeddings,
              attn_implementation=attn)
    kw.update(overrides)
    return transformers.LlamaConfig(**kw)


def hf_model(c: "pyllama.LlamaConfig", attn: str = "sdpa"):
    """``transformers.LlamaForCausalLM`` of the pyllama config ``c``, fresh weights."""
    import transformers

    return transformers.LlamaForCausalLM(hf_llama_config(c, transformers, attn))


def hf_llama_from(model: "pyllama.Llama", torch, transformers, attn: str = "sdpa"):
    """``transformers.LlamaForCausalLM`` holding ``model``'s weights (float32)."""
    c = model.config
    hcfg = hf_llama_config(c, transformers, attn, attention_bias=False, mlp_bias=False, hidden_act="silu",
                           bos_token_id=None, eos_token_id=None, pad_token_id=0)
    hf = transformers.LlamaForCausalLM(hcfg).float()
    sd = _state_dict_of(model, torch)
    missing, unexpected = hf.load_state_dict(sd, strict=False)
    missing = [m for m in missing if not (m == "lm_head.weight" and c.tie_word_embeddings)]
    if missing or unexpected:
        raise RuntimeError(f"Hugging Face model does not take pyllama's weights: missing {missing}, "
                           f"unexpected {unexpected}")
    if c.tie_word_embeddings:
        hf.tie_weights()
    return hf

