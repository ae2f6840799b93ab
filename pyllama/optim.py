"""The optimizer, the gradient clip and the learning-rate schedule.

The update itself runs in the C++ core in one fused pass over the model's flat
parameter, gradient and moment buffers (they share one layout). This module
holds the policy: which segments decay, the step count, the schedule.
:class:`ShardedAdamW` is the same update with its moments sharded over
data-parallel ranks (ZeRO-1, ``TrainConfig(zero1=True)``), through the sharded
collectives of :class:`pyllama.distributed.MPICommunicator`.

>>> import pyllama
>>> cfg = pyllama.LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64,
...                           num_hidden_layers=1, num_attention_heads=2)
>>> model = pyllama.Llama(cfg, seed=0)
>>> opt = pyllama.AdamW(model, lr=1e-3)
>>> out = model([[1, 2, 3, 4]], labels=[[1, 2, 3, 4]], return_logits=False)
>>> model.backward()
>>> norm = pyllama.clip_grad_norm(model, 1.0)
>>> opt.step(lr=pyllama.cosine_lr(0, 1e-3, warmup_steps=10, total_steps=100))
>>> model.zero_grad()
"""
from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, Dict, Optional, Sequence, Tuple

import numpy as np

from . import _core

if TYPE_CHECKING:
    from .distributed.mpi import MPICommunicator

__all__ = ["AdamW", "ShardedAdamW", "clip_grad_norm", "cosine_lr", "param_segments", "segment_table"]


def _flat(model, which: str) -> np.ndarray:
    """``model.flat_params()`` / ``flat_grads()``, checked: a contiguous 1-D float32 array."""
    fn = getattr(model, which, None)
    if fn is None:
        raise TypeError(f"expected a pyllama model (with .{which}()), got {type(model).__name__}")
    a = fn()
    if not (isinstance(a, np.ndarray) and a.dtype == np.float32 and a.ndim == 1 and a.flags.c_contiguous):
        raise TypeError(f"model.{which}() must return a contiguous 1-D float32 array")
    return a


class _HostBuffers:
    """The optimizer half of the core's model interface over a stand-in model that only has
    host arrays (``flat_params()``, ``flat_grads()``, ``param_segments()``): the moments live
    here, the update runs in the core's fused kernel. pyllama models have a real core."""

    def __init__(self, model) -> None:
        self.model = model
        self.m = self.v = None

    def num_parameters(self) -> int:
        return int(_flat(self.model, "flat_params").size)

    def reset_moments(self) -> None:
        n = self.num_parameters()
        self.m, self.v = np.zeros(n, np.float32), np.zeros(n, np.float32)

    def adamw_step(self, segments, lr, beta1, beta2, eps, weight_decay, step) -> None:
        if self.m is None:
            self.reset_moments()
        _core.adamw_step(_flat(self.model, "flat_params"), _flat(self.model, "flat_grads"), self.m, self.v,
                         segments, lr, beta1, beta2, eps, weight_decay, step)

    def moments(self):
        if self.m is None:
            self.reset_moments()
        return self.m.copy(), self.v.copy()

    def set_moments(self, m, v) -> None:
        self.m, self.v = np.array(m, np.float32), np.array(v, np.float32)

    def clip_grad_norm(self, max_norm: float) -> float:
        return _core.clip_grad_norm(_flat(self.model, "flat_grads"), max_norm)

    def grad_norm(self) -> float:
        return _core.grad_global_norm(_flat(self.model, "flat_grads"))


def _core_of(model):
    """The model's core (the core's one model interface, whatever its device), or for a
    stand-in model with only host arrays, a :class:`_HostBuffers` kept on it."""
    core = getattr(model, "_core", None)
    if core is not None and hasattr(core, "adamw_step"):
        return core
    if not all(hasattr(model, a) for a in ("flat_params", "flat_grads", "param_segments")):
        raise TypeError(f"expected a pyllama model (pyllama.Llama), got {type(model).__name__}")
    host = getattr(model, "_pyllama_host_buffers", None)
    if host is None:
        host = _HostBuffers(model)
        model._pyllama_host_buffers = host
    return host


def param_segments(model, decay_embeddings: bool = True):
    """The model's flat-buffer segments as ``(name, offset, numel, shape, decay)``.

    2-D weight matrices decay; 1-D norm weights do not. The token embedding
    (``model.embed_tokens.weight``) decays like any matrix unless
    ``decay_embeddings=False``.
    """
    segs = []
    for name, offset, numel, shape in model.param_segments():
        shape = tuple(int(s) for s in shape)
        decay = len(shape) >= 2
        if not decay_embeddings and name.endswith("embed_tokens.weight"):
            decay = False
        segs.append((str(name), int(offset), int(numel), shape, decay))
    return segs


def segment_table(model, decay_embeddings: bool = True) -> np.ndarray:
    """The ``(S, 3)`` int64 rows ``(offset, numel, decay)`` the core's AdamW takes.

    >>> import pyllama
    >>> m = pyllama.Llama(pyllama.LlamaConfig(vocab_size=32, hidden_size=16, intermediate_size=32,
    ...                   num_hidden_layers=1, num_attention_heads=2), seed=0)
    >>> segment_table(m)[:2].tolist()   # the embedding decays; the first norm weight does not
    [[0, 512, 1], [512, 16, 0]]
    """
    rows = [(o, n, int(d)) for _, o, n, _, d in param_segments(model, decay_embeddings)]
    return np.array(rows, dtype=np.int64).reshape(-1, 3)


class AdamW:
    """AdamW (decoupled weight decay) over a pyllama model's flat buffers.

    Matches ``torch.optim.AdamW`` with two parameter groups: 2-D weights with
    ``weight_decay``, norm weights with none. ``step(lr=None)`` uses ``lr`` when
    given (e.g. from :func:`cosine_lr`), else the constructor's ``lr``. It reads
    the gradients as they are: call :func:`clip_grad_norm` first if you clip.
    The moments live in the model, where its parameters live (one fused pass on
    the CPU or the GPU), and move with it (``model.to(...)``); creating an AdamW
    zeroes them, so a model has one optimizer at a time. :meth:`state_dict` copies
    the moments to the host.

    >>> opt = AdamW(model, lr=3e-4, betas=(0.9, 0.95), weight_decay=0.1)  # doctest: +SKIP
    >>> opt.step()             # doctest: +SKIP
    >>> opt.step(lr=1e-4)      # doctest: +SKIP
    >>> opt.state_dict()["step"]  # doctest: +SKIP
    2
    """

    def __init__(self, model, lr: float, betas: Tuple[float, float] = (0.9, 0.95), eps: float = 1e-8,
                 weight_decay: float = 0.1, *, decay_embeddings: bool = True) -> None:
        _check_hyper(lr, betas, eps, weight_decay)
        self.model = model
        self.lr = float(lr)
        self.betas = (float(betas[0]), float(betas[1]))
        self.eps = float(eps)
        self.weight_decay = float(weight_decay)
        self.decay_embeddings = bool(decay_embeddings)
        if not hasattr(model, "param_segments"):
            raise TypeError(f"expected a pyllama model (with .param_segments()), got {type(model).__name__}")
        core = _core_of(model)
        self.segments = param_segments(model, decay_embeddings)
        self._seg_array = segment_table(model, decay_embeddings)
        n = int(sum(k for _, _, k, _, _ in self.segments))
        if n != int(core.num_parameters()):
            raise ValueError("model.param_segments() and the model disagree on the number of parameters")
        core.reset_moments()
        # host copies of the first and second moments (same layout as the parameters), filled by
        # state_dict(); the model holds the live ones
        self.exp_avg = np.zeros(n, np.float32)
        self.exp_avg_sq = np.zeros(n, np.float32)
        self.step_count = 0  # completed steps; the next step uses t = step_count + 1

    def step(self, lr: Optional[float] = None) -> None:
        """Apply one update with the current gradients (``lr`` overrides the default)."""
        lr = self.lr if lr is None else float(lr)
        if not (math.isfinite(lr) and lr >= 0):
            raise ValueError(f"AdamW.step: lr must be a finite number >= 0, got {lr!r}")
        _core_of(self.model).adamw_step(self._seg_array, lr, self.betas[0], self.betas[1], self.eps,
                                        self.weight_decay, self.step_count + 1)
        self.step_count += 1

    # ------------------------------------------------------------------ state
    def state_dict(self) -> Dict[str, object]:
        """Moments (per-parameter views, Hugging Face names) and the step count.

        >>> sd = opt.state_dict()  # doctest: +SKIP
        >>> sorted(sd)              # doctest: +SKIP
        ['exp_avg', 'exp_avg_sq', 'hyper', 'step']
        """
        self.exp_avg[...], self.exp_avg_sq[...] = _core_of(self.model).moments()

        def split(buf):
            return {name: buf[o:o + n].reshape(shape) for name, o, n, shape, _ in self.segments}

        return {
            "step": self.step_count,
            "exp_avg": split(self.exp_avg),
            "exp_avg_sq": split(self.exp_avg_sq),
            "hyper": {"lr": self.lr, "betas": list(self.betas), "eps": self.eps,
                      "weight_decay": self.weight_decay, "decay_embeddings": self.decay_embeddings},
        }

    def load_state_dict(self, state: Dict[str, object]) -> None:
        """Restore moments and step count saved by :meth:`state_dict` (exact copies)."""
        step = state.get("step")
        if not isinstance(step, (int, np.integer)) or step < 0:
            raise ValueError(f"optimizer state: 'step' must be an int >= 0, got {step!r}")
        m, v = np.empty_like(self.exp_avg), np.empty_like(self.exp_avg_sq)
        for key, buf in (("exp_avg", m), ("exp_avg_sq", v)):
            parts = state.get(key)
            if not isinstance(parts, dict):
                raise ValueError(f"optimizer state lacks {key!r}")
            for name, o, n, shape, _ in self.segments:
                buf[o:o + n] = _moment_part(parts, key, name, shape)
        _core_of(self.model).set_moments(m, v)
        self.exp_avg[...], self.exp_avg_sq[...] = m, v
        self.step_count = int(step)


def _moment_part(parts: Dict[str, object], key: str, name: str, shape: Tuple[int, ...]) -> np.ndarray:
    """Parameter ``name``'s moment from a state dict's ``key`` part, checked, flattened."""
    if name not in parts:
        raise ValueError(f"optimizer state {key!r} lacks parameter {name!r}")
    a = np.asarray(parts[name])
    if a.shape != shape or a.dtype != np.float32:
        raise ValueError(f"optimizer state {key}[{name!r}] has shape {a.shape} {a.dtype}, expected {shape} float32")
    return a.reshape(-1)


def _check_hyper(lr, betas, eps, weight_decay) -> None:
    if not (isinstance(lr, (int, float)) and math.isfinite(lr) and lr >= 0):
        raise ValueError(f"AdamW: lr must be a finite number >= 0, got {lr!r}")
    if not (isinstance(betas, Sequence) and len(betas) == 2 and all(0.0 <= float(b) < 1.0 for b in betas)):
        raise ValueError(f"AdamW: betas must be two numbers in [0, 1), got {betas!r}")
    if not (eps >= 0):
        raise ValueError(f"AdamW: eps must be >= 0, got {eps!r}")
    if not (weight_decay >= 0):
        raise ValueError(f"AdamW: weight_decay must be >= 0, got {weight_decay!r}")


def clip_grad_norm(model, max_norm: float) -> float:
    """Scale the gradients so their global L2 norm is at most ``max_norm``.

    As ``torch.nn.utils.clip_grad_norm_``: returns the norm *before* clipping
    and multiplies every gradient by ``min(1, max_norm / (norm + 1e-6))``.
    ``model`` is a pyllama model or a flat float32 gradient array.

    >>> import numpy as np
    >>> g = np.array([3.0, 4.0], np.float32)
    >>> clip_grad_norm(g, 1.0)
    5.0
    >>> [round(float(x), 4) for x in g]
    [0.6, 0.8]
    """
    if not (isinstance(max_norm, (int, float)) and max_norm > 0):
        raise ValueError(f"clip_grad_norm: max_norm must be > 0, got {max_norm!r}")
    if isinstance(model, np.ndarray):
        return float(_core.clip_grad_norm(model, float(max_norm)))
    return float(_core_of(model).clip_grad_norm(float(max_norm)))


def grad_norm(model) -> float:
    """Global L2 norm of the gradients, without clipping."""
    if isinstance(model, np.ndarray):
        return float(_core.grad_global_norm(model))
    return float(_core_of(model).grad_norm())


def cosine_lr(step: int, max_lr: float, warmup_steps: int, total_steps: int, min_lr_ratio: float = 0.1) -> float:
    """Linear warm-up, then cosine decay to ``min_lr_ratio * max_lr``.

    Steps count from 0. While ``step < warmup_steps``: ``max_lr*(step+1)/warmup_steps``;
    then ``min + (max-min)*(1+cos(pi*p))/2`` with
    ``p = (step-warmup_steps)/(total_steps-warmup_steps)``; ``min`` from ``total_steps`` on.

    >>> cosine_lr(0, 1.0, warmup_steps=10, total_steps=110)
    0.1
    >>> cosine_lr(10, 1.0, warmup_steps=10, total_steps=110)
    1.0
    >>> round(cosine_lr(60, 1.0, warmup_steps=10, total_steps=110), 6)
    0.55
    >>> cosine_lr(500, 1.0, warmup_steps=10, total_steps=110)
    0.1
    """
    if isinstance(step, bool) or not isinstance(step, (int, np.integer)) or step < 0:
        raise ValueError(f"cosine_lr: step must be an int >= 0, got {step!r}")
    if not (math.isfinite(max_lr) and max_lr >= 0):
        raise ValueError(f"cosine_lr: max_lr must be a finite number >= 0, got {max_lr!r}")
    if warmup_steps < 0 or total_steps < 0:
        raise ValueError(f"cosine_lr: warmup_steps and total_steps must be >= 0, got {warmup_steps}, {total_steps}")
    if not (0.0 <= min_lr_ratio <= 1.0):
        raise ValueError(f"cosine_lr: min_lr_ratio must be in [0, 1], got {min_lr_ratio!r}")
    min_lr = min_lr_ratio * max_lr
    if step < warmup_steps:
        return max_lr * (step + 1) / warmup_steps
    if step >= total_steps:
        return min_lr
    p = (step - warmup_steps) / (total_steps - warmup_steps)
    return min_lr + (max_lr - min_lr) * (1.0 + math.cos(math.pi * p)) / 2.0


# ---------------------------------------------------------------------- ZeRO-1 (data parallel on CPUs)

class ShardedAdamW:
    """AdamW with its moments sharded over the ranks (ZeRO stage 1,
    ``TrainConfig(zero1=True)``).

    The flat parameter range is cut into ``world_size`` contiguous blocks; rank r
    keeps the moments of block r only (2·n/world_size floats instead of 2·n). A
    step: :meth:`reduce_scatter_grads` (each rank receives the summed gradients of
    its block), the global norm from one all-reduce of the blocks' sums of squares,
    the clip, the fused AdamW update of the block (``_core.adamw_step`` with the
    segment table clipped to the block), then :meth:`allgather_params` (every rank
    gets every block of the new weights, in place). The update is the same as the
    unsharded one; checkpoints hold the full moments (:meth:`gather_moments` before
    :meth:`state_dict` on rank 0), so they resume with or without sharding and on
    any number of ranks.
    """

    def __init__(self, model, comm: "MPICommunicator", lr: float, betas=(0.9, 0.95), eps: float = 1e-8,
                 weight_decay: float = 0.1, *, decay_embeddings: bool = True) -> None:
        _check_hyper(lr, betas, eps, weight_decay)
        if getattr(model, "device", "cpu") != "cpu":
            raise NotImplementedError("ShardedAdamW runs on CPU models (the GPU path needs NCCL)")
        self.model, self.comm = model, comm
        self.lr, self.betas, self.eps = float(lr), (float(betas[0]), float(betas[1])), float(eps)
        self.weight_decay, self.decay_embeddings = float(weight_decay), bool(decay_embeddings)
        self.device = "cpu"
        self._flat = _flat
        self.segments = param_segments(model, decay_embeddings)
        n = int(sum(k for _, _, k, _, _ in self.segments))
        W, r = comm.world_size, comm.rank
        chunk = -(-n // W)
        bounds = [(min(i * chunk, n), min((i + 1) * chunk, n)) for i in range(W)]
        self.n = n
        self.counts = [b - a for a, b in bounds]
        self.displs = [a for a, _ in bounds]
        self.lo, self.hi = bounds[r]
        segs = []
        for _, o, k, _, d in self.segments:
            a, b = max(o, self.lo), min(o + k, self.hi)
            if a < b:
                segs.append((a - self.lo, b - a, int(d)))
        self._seg_array = np.array(segs, dtype=np.int64).reshape(-1, 3)
        m = self.hi - self.lo
        self.exp_avg = np.zeros(m, np.float32)
        self.exp_avg_sq = np.zeros(m, np.float32)
        self.grad_shard = np.zeros(m, np.float32)
        self.step_count = 0
        self._full: Optional[tuple] = None  # full moments on rank 0 after gather_moments()

    def reduce_scatter_grads(self, also_sum: Sequence[np.ndarray] = (), *, step: Optional[int] = None) -> None:
        """``grad_shard`` = the mean over the ranks of this rank's block of the gradients."""
        grads = self._flat(self.model, "flat_grads")
        self.comm.reduce_scatter_sum(grads, self.grad_shard, self.counts, also_sum=also_sum,
                                     what="gradient reduce-scatter", step=step)
        self.grad_shard *= np.float32(1.0 / self.comm.world_size)

    def clip_(self, max_norm: float, *, step: Optional[int] = None) -> float:
        """Global L2 norm of the (reduced) gradients, from every rank's block; scales the
        block by ``min(1, max_norm / (norm + 1e-6))`` when ``max_norm > 0``. Returns the norm."""
        sq = np.array([float(_core.grad_global_norm(self.grad_shard)) ** 2 if self.grad_shard.size else 0.0])
        self.comm.allreduce_sum_(sq, what="gradient-norm all-reduce", step=step)
        norm = float(np.sqrt(sq[0]))
        if max_norm > 0 and np.isfinite(norm):
            coef = max_norm / (norm + 1e-6)
            if coef < 1.0:
                self.grad_shard *= np.float32(coef)
        return norm

    def step(self, lr: Optional[float] = None) -> None:
        """Update this rank's block of the weights (call :meth:`allgather_params` next)."""
        lr = self.lr if lr is None else float(lr)
        params = self._flat(self.model, "flat_params")
        if self.hi > self.lo:
            _core.adamw_step(params[self.lo:self.hi], self.grad_shard, self.exp_avg, self.exp_avg_sq, self._seg_array,
                             lr, self.betas[0], self.betas[1], self.eps, self.weight_decay, self.step_count + 1)
        self.step_count += 1

    def allgather_params(self, *, step: Optional[int] = None) -> None:
        params = self._flat(self.model, "flat_params")
        self.comm.allgather_inplace(params, self.counts, self.displs, what="weight all-gather", step=step)

    # ------------------------------------------------------------------ state (full moments)
    def gather_moments(self, *, step: Optional[int] = None) -> None:
        """Collect the full moments on rank 0 (every rank calls it) for :meth:`state_dict`."""
        full = [np.empty(self.n, np.float32) if self.comm.rank == 0 else None for _ in range(2)]
        for buf, shard in zip(full, (self.exp_avg, self.exp_avg_sq)):
            self.comm.gather_to_root(shard, buf, self.counts, self.displs, what="optimizer-moment gather", step=step)
        self._full = tuple(full) if self.comm.rank == 0 else None

    def state_dict(self) -> Dict[str, Any]:
        """As ``AdamW.state_dict`` (full moments); on rank 0 after :meth:`gather_moments`."""
        if self._full is None:
            raise RuntimeError("ShardedAdamW.state_dict needs gather_moments() first (on every rank), and only "
                               "rank 0 holds the result")
        m, v = self._full
        self._full = None

        def split(buf):
            return {name: buf[o:o + k].reshape(shape) for name, o, k, shape, _ in self.segments}

        return {"step": self.step_count, "exp_avg": split(m), "exp_avg_sq": split(v),
                "hyper": {"lr": self.lr, "betas": list(self.betas), "eps": self.eps,
                          "weight_decay": self.weight_decay, "decay_embeddings": self.decay_embeddings}}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        """Take this rank's block of full moments saved by ``AdamW``/``ShardedAdamW``."""
        step = state.get("step")
        if not isinstance(step, (int, np.integer)) or step < 0:
            raise ValueError(f"optimizer state: 'step' must be an int >= 0, got {step!r}")
        for key, shard in (("exp_avg", self.exp_avg), ("exp_avg_sq", self.exp_avg_sq)):
            parts = state.get(key)
            if not isinstance(parts, dict):
                raise ValueError(f"optimizer state lacks {key!r}")
            for name, o, k, shape, _ in self.segments:
                a, b = max(o, self.lo), min(o + k, self.hi)
                if a >= b:
                    continue
                shard[a - self.lo:b - self.lo] = _moment_part(parts, key, name, shape)[a - o:b - o]
        self.step_count = int(step)
