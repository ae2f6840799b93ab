"""Helpers for the generation tests (no tests here).

- ``FakeKVModel``: a numpy "language model" whose logits depend on the whole
  token history, with the three KV-cache steps; it checks that the driver only
  reads cache positions it has written, so bookkeeping bugs fail loudly.
- ``TorchKVModel``: the same three steps over a Hugging Face model, recomputing
  each slot's whole sequence (no real cache): the reference semantics for the
  driver, independent of the core.
- ``tiny_hf_model``: a tiny random ``LlamaForCausalLM`` (float32, eager attention).
"""
from __future__ import annotations

import types

import numpy as np


class _Out:
    def __init__(self, logits):
        self.logits = logits


class FakeKVModel:
    def __init__(self, vocab_size=50, max_position_embeddings=64, seed=0, eos_token_id=None):
        self.config = types.SimpleNamespace(vocab_size=vocab_size, max_position_embeddings=max_position_embeddings,
                                            eos_token_id=eos_token_id)
        rng = np.random.default_rng(seed)
        V = vocab_size
        self.A = rng.normal(size=(V, V)).astype(np.float32) * 2
        self.B = rng.normal(size=(V, V)).astype(np.float32)
        self.C = rng.normal(size=(7, V)).astype(np.float32)
        self.D = rng.normal(size=(13, V)).astype(np.float32)
        self.cache = None
        self.calls = 0

    def _logits_at(self, seq, t):
        prev = self.B[seq[t - 1]] if t > 0 else 0.0
        return self.A[seq[t]] + prev + self.C[t % 7] + self.D[int(np.sum(seq[: t + 1])) % 13]

    def __call__(self, input_ids):
        ids = np.asarray(input_ids)
        out = np.stack([np.stack([self._logits_at(row, t) for t in range(ids.shape[1])]) for row in ids])
        return _Out(out.astype(np.float32))

    # the core's KV-cache steps
    def _kv_reset(self, n_slots, max_len):
        assert max_len <= self.config.max_position_embeddings
        self.cache = np.full((n_slots, max_len), -1, np.int64)
        self.filled = np.zeros(n_slots, np.int64)
        self.max_len = max_len

    def _kv_forward(self, tokens, slots, start_pos, last_only=True):
        tokens = np.asarray(tokens)
        assert tokens.dtype == np.int32 and tokens.ndim == 2
        assert np.asarray(slots).dtype == np.int32 and np.asarray(start_pos).dtype == np.int32
        B, T = tokens.shape
        assert len(set(np.asarray(slots).tolist())) == B, "a slot twice in one call"
        self.calls += 1
        out = np.empty((B, T, self.config.vocab_size), np.float32)
        for b in range(B):
            s, p = int(slots[b]), int(start_pos[b])
            assert p <= self.filled[s], f"slot {s}: start_pos {p} beyond the {self.filled[s]} cached tokens"
            assert p + T <= self.max_len, f"slot {s}: positions up to {p + T - 1} beyond max_len {self.max_len}"
            self.cache[s, p: p + T] = tokens[b]
            self.filled[s] = p + T
            seq = self.cache[s, : p + T]
            for t in range(T):
                out[b, t] = self._logits_at(seq, p + t)
        return out[:, -1] if last_only else out

    def _kv_reorder(self, src):
        src = np.asarray(src)
        assert src.dtype == np.int32 and src.shape == (self.cache.shape[0],)
        self.cache = self.cache[src].copy()
        self.filled = self.filled[src].copy()


class TorchKVModel:
    """KV-cache steps over a Hugging Face model, recomputing each slot's sequence."""

    def __init__(self, hf_model):
        import torch

        self.torch = torch
        self.hf = hf_model
        c = hf_model.config
        self.config = types.SimpleNamespace(vocab_size=c.vocab_size, max_position_embeddings=c.max_position_embeddings,
                                            eos_token_id=None)

    def __call__(self, input_ids):
        with self.torch.no_grad():
            return _Out(self.hf(self.torch.as_tensor(np.asarray(input_ids), dtype=self.torch.long)).logits.numpy())

    def _kv_reset(self, n_slots, max_len):
        self.cache = np.zeros((n_slots, max_len), np.int64)
        self.filled = np.zeros(n_slots, np.int64)

    def _kv_forward(self, tokens, slots, start_pos, last_only=True):
        B, T = tokens.shape
        outs = []
        for b in range(B):
            s, p = int(slots[b]), int(start_pos[b])
            assert p <= self.filled[s]
            self.cache[s, p: p + T] = tokens[b]
            self.filled[s] = p + T
            lg = self(self.cache[s: s + 1, : p + T]).logits[0, p: p + T]
            outs.append(lg)
        out = np.stack(outs).astype(np.float32)
        return out[:, -1] if last_only else out

    def _kv_reorder(self, src):
        self.cache = self.cache[src].copy()
        self.filled = self.filled[src].copy()


def tiny_hf_config(vocab_size=96, hidden_size=32, layers=2, heads=4, kv_heads=2, max_pos=128, tie=False):
    from transformers import LlamaConfig

    return LlamaConfig(vocab_size=vocab_size, hidden_size=hidden_size, intermediate_size=64,
                       num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=kv_heads,
                       max_position_embeddings=max_pos, rms_norm_eps=1e-6, rope_theta=10000.0,
                       tie_word_embeddings=tie, bos_token_id=None, eos_token_id=None, pad_token_id=None)


def tiny_hf_model(seed=0, **kw):
    import torch
    from transformers import LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = tiny_hf_config(**kw)
    cfg._attn_implementation = "eager"
    model = LlamaForCausalLM(cfg).float().eval()
    # larger weights than the default init so that the distributions are peaked
    # enough for eos to win sometimes, and ties are unlikely
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.mul_(8.0)
    return model


def hf_generate(hf_model, prompt, **kw):
    """HF generate for one prompt: the new tokens of each returned sequence (exact
    lengths from beam_indices / eos)."""
    import torch

    ids = torch.tensor([list(prompt)], dtype=torch.long)
    eos = kw.get("eos_token_id")
    if eos == []:
        kw = {k: v for k, v in kw.items() if k != "eos_token_id"}
        eos = None
    pad = 0 if eos is None else (eos if isinstance(eos, int) else eos[0])
    with torch.no_grad():
        out = hf_model.generate(ids, attention_mask=torch.ones_like(ids), return_dict_in_generate=True,
                                output_scores=True, pad_token_id=pad, **kw)
    seqs = out.sequences[:, len(prompt):].tolist()
    if getattr(out, "beam_indices", None) is not None:
        lens = (out.beam_indices != -1).sum(dim=1).tolist()
        return [s[:L] for s, L in zip(seqs, lens)]
    res = []
    eos_set = set([eos] if isinstance(eos, int) else (eos or []))
    for s in seqs:
        cut = next((j + 1 for j, t in enumerate(s) if t in eos_set), len(s))
        res.append(s[:cut])
    return res
