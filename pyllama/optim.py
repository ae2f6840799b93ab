"""The optimizer, the gradient clip and the learning-rate schedule.

The update itself runs in the C++ core in one fused pass over the model's flat
parameter, gradient and moment buffers (they share one layout). This module
holds the policy: which segments decay, the step count, the schedule.

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
from typing import Dict, Optional, Sequence, Tuple

import numpy as np

from . import _core

__all__ = ["AdamW", "clip_grad_norm", "cosine_lr", "param_segments", "segment_table"]


def _flat(model, which: str) -> np.ndarray:
    fn = getattr(model, which, None)
    if fn is None:
        raise TypeError(f"expected a pyllama model (with .{which}()), got {type(model).__name__}")
    a = fn()
    if not (isinstance(a, np.ndarray) and a.dtype == np.float32 and a.ndim == 1 and a.flags.c_contiguous):
        raise TypeError(f"model.{which}() must return a contiguous 1-D float32 array")
    return a


def _gpu(model):
    """The model's ``_core.LlamaModelCuda`` when it lives on the GPU, else None."""
    if getattr(model, "device", "cpu") != "cuda":
        return None
    gpu = getattr(getattr(model, "_core", None), "gpu", None)
    if gpu is None:
        raise TypeError("model.device is 'cuda' but it has no GPU core (model._core.gpu)")
    return gpu


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
    """The ``(S, 3)`` int64 rows ``(offset, numel, decay)`` the core's AdamW takes (CPU and
    GPU: ``model._core.gpu.adamw_step(table, ...)``).

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
    On a cuda model (create the optimizer after ``model.to("cuda")``) the moments
    and the update live on the GPU; :meth:`state_dict` copies the moments to the host.

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
        self.device = getattr(model, "device", "cpu")  # the moments live where the model lives
        self.segments = param_segments(model, decay_embeddings)
        self._seg_array = segment_table(model, decay_embeddings)
        n = int(sum(k for _, _, k, _, _ in self.segments))
        gpu = _gpu(model)
        if gpu is None:
            self._params = _flat(model, "flat_params")
            self._grads = _flat(model, "flat_grads")
            if not (self._params.shape == self._grads.shape == (n,)):
                raise ValueError("model.flat_params(), model.flat_grads() and model.param_segments() disagree "
                                 "on the number of parameters")
        # first and second moments, same layout as the parameters (on a cuda model: host
        # copies, filled by state_dict(); the GPU holds the live ones)
        self.exp_avg = np.zeros(n, np.float32)
        self.exp_avg_sq = np.zeros(n, np.float32)
        if gpu is not None:
            gpu.moments_from_host(self.exp_avg, self.exp_avg_sq)
        self._gpu_core = gpu  # the GPU core holding the live moments (None on the CPU)
        self.step_count = 0  # completed steps; the next step uses t = step_count + 1

    def step(self, lr: Optional[float] = None) -> None:
        """Apply one update with the current gradients (``lr`` overrides the default)."""
        lr = self.lr if lr is None else float(lr)
        if not (math.isfinite(lr) and lr >= 0):
            raise ValueError(f"AdamW.step: lr must be a finite number >= 0, got {lr!r}")
        device = getattr(self.model, "device", "cpu")
        if device != self.device:
            raise RuntimeError(f"the model moved from {self.device!r} to {device!r} after AdamW was created; "
                               "create the optimizer after model.to(...)")
        gpu = _gpu(self.model)
        if gpu is not self._gpu_core:
            # to("cpu") then to("cuda"), or to("cuda", dtype=...), made a new GPU core whose moments
            # are zeros: stepping would silently restart Adam with a late bias correction.
            raise RuntimeError("the model was moved (a new GPU core, without this optimizer's moments) after "
                               "AdamW was created; create the optimizer after model.to(...), or carry the "
                               "moments over with state_dict() / load_state_dict()")
        if gpu is not None:  # one fused pass on the GPU (docs/CUDA.md)
            gpu.adamw_step(self._seg_array, lr, self.betas[0], self.betas[1], self.eps, self.weight_decay,
                           self.step_count + 1)
        else:
            # The model may have re-created its buffers (e.g. after loading); follow them.
            self._params = _flat(self.model, "flat_params")
            self._grads = _flat(self.model, "flat_grads")
            _core.adamw_step(self._params, self._grads, self.exp_avg, self.exp_avg_sq, self._seg_array, lr,
                             self.betas[0], self.betas[1], self.eps, self.weight_decay, self.step_count + 1)
        self.step_count += 1

    # ------------------------------------------------------------------ state
    def state_dict(self) -> Dict[str, object]:
        """Moments (per-parameter views, Hugging Face names) and the step count.

        >>> sd = opt.state_dict()  # doctest: +SKIP
        >>> sorted(sd)              # doctest: +SKIP
        ['exp_avg', 'exp_avg_sq', 'hyper', 'step']
        """
        gpu = _gpu(self.model)
        if gpu is not None:
            gpu.moments_to_host(self.exp_avg, self.exp_avg_sq)

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
        for key, buf in (("exp_avg", self.exp_avg), ("exp_avg_sq", self.exp_avg_sq)):
            parts = state.get(key)
            if not isinstance(parts, dict):
                raise ValueError(f"optimizer state lacks {key!r}")
            for name, o, n, shape, _ in self.segments:
                if name not in parts:
                    raise ValueError(f"optimizer state {key!r} lacks parameter {name!r}")
                a = np.asarray(parts[name])
                if a.shape != shape or a.dtype != np.float32:
                    raise ValueError(f"optimizer state {key}[{name!r}] has shape {a.shape} {a.dtype}, "
                                     f"expected {shape} float32")
                buf[o:o + n] = a.reshape(-1)
        gpu = _gpu(self.model)
        if gpu is not None:
            gpu.moments_from_host(self.exp_avg, self.exp_avg_sq)
            self._gpu_core = gpu  # the moments now live on this core
        self.step_count = int(step)


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
    if not isinstance(model, np.ndarray):
        gpu = _gpu(model)
        if gpu is not None:
            return float(gpu.clip_grad_norm(float(max_norm)))
    grads = model if isinstance(model, np.ndarray) else _flat(model, "flat_grads")
    return float(_core.clip_grad_norm(grads, float(max_norm)))


def grad_norm(model) -> float:
    """Global L2 norm of the gradients, without clipping."""
    if not isinstance(model, np.ndarray):
        gpu = _gpu(model)
        if gpu is not None:
            return float(gpu.grad_norm())
    grads = model if isinstance(model, np.ndarray) else _flat(model, "flat_grads")
    return float(_core.grad_global_norm(grads))


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
