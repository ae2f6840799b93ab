"""The LLaMA model: a thin Python driver over the core's ``LlamaModel``.

>>> import numpy as np, pyllama
>>> cfg = pyllama.LlamaConfig(vocab_size=128, hidden_size=32, intermediate_size=64,
...                           num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2)
>>> model = pyllama.Llama(cfg, seed=0)
>>> ids = np.array([[1, 5, 9, 3]])
>>> out = model(ids, labels=ids)
>>> out.logits.shape, round(out.loss, 1)
((1, 4, 128), 4.9)
>>> model.backward()          # gradients of the loss, added into model.named_grads()
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Dict, Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np

from . import _core
from ._io import atomic_write
from .config import LlamaConfig, check_memory
from .options import BackendOptions

ArrayLike = Union[np.ndarray, Sequence[Sequence[int]]]


@dataclass
class CausalLMOutput:
    """What ``model(input_ids, labels)`` returns."""

    logits: Optional[np.ndarray]  # float32 [B, T, V], the caller's own array
    loss: Optional[float]  # mean cross-entropy over counted labels, or None without labels


def _as_ids(x: ArrayLike, what: str) -> np.ndarray:
    """A C-contiguous int32 [B, T] array from an int array or a list of lists."""
    if isinstance(x, np.ndarray):
        a = x
    else:
        try:
            a = np.asarray(x)
        except ValueError as e:  # ragged lists
            raise ValueError(f"{what} must be rectangular [batch, seq_len]; pad ragged rows or call one at a time") from e
    if a.ndim == 1:
        a = a[None, :]
    if a.ndim != 2:
        raise ValueError(f"{what} must be 2-D [batch, seq_len], got shape {a.shape}")
    if a.size == 0:
        raise ValueError(f"{what} is empty (shape {a.shape}): pass at least one token")
    if not np.issubdtype(a.dtype, np.integer):
        raise TypeError(f"{what} must hold integer token ids, got dtype {a.dtype}")
    if a.dtype != np.int32:
        if a.min() < np.iinfo(np.int32).min or a.max() > np.iinfo(np.int32).max:
            raise ValueError(f"{what} holds ids outside the int32 range")
        a = a.astype(np.int32)
    return np.ascontiguousarray(a)


def _core_config(cfg: LlamaConfig) -> "_core.LlamaConfigCore":
    c = _core.LlamaConfigCore()
    for name in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                 "num_key_value_heads", "max_position_embeddings", "rms_norm_eps", "rope_theta",
                 "tie_word_embeddings", "head_dim", "attention_bias", "mlp_bias"):
        setattr(c, name, getattr(cfg, name))
    c.set_rope_scaling(json.dumps(cfg.rope_scaling))
    return c


class Llama:
    """A LLaMA causal language model with fresh weights (normal, std 0.02; output
    projections scaled by 1/sqrt(2L); norms 1), seeded and reproducible.

    Parameters and gradients each live in one flat float32 buffer in the core;
    ``named_parameters()`` gives numpy views of it under Hugging Face names.

    >>> import pyllama
    >>> cfg = pyllama.LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=32,
    ...                           num_hidden_layers=1, num_attention_heads=2)
    >>> m = pyllama.Llama(cfg, seed=1)
    >>> m.num_parameters()
    3136
    >>> sorted(m.named_parameters())[0]
    'lm_head.weight'
    """

    def __init__(self, config: LlamaConfig, seed: int = 0):
        if not isinstance(config, LlamaConfig):
            raise TypeError(f"config must be a pyllama.LlamaConfig, got {type(config).__name__}")
        config.validate()
        check_memory(config)  # before the core allocates: a MemoryError with the figures, not the OOM killer
        self.config = config
        self.options = BackendOptions()  # the backend's kernels and decode paths (see ``to``)
        # generate()'s defaults: a GenerationConfig (from_pretrained reads generation_config.json), or None
        self.generation_config = None
        self._set_core(_core.make_model(_core_config(config), "cpu", "float32"))
        self._have_loss = False
        if seed is not None:
            self._core.init_weights(int(seed))

    def _set_core(self, core) -> None:
        """Hold ``core`` (the core's one model interface, whatever its device)."""
        self._core = core
        self.device = core.device.split(":")[0]  # "cpu" or "cuda"
        self._infos = core.param_infos()  # (name, offset, numel, shape)
        # the live flat buffers where they are host memory (numpy views of the core's tensors), else None
        self._params = np.asarray(core.parameters()) if core.device == "cpu" else None
        self._grads_view = None  # the gradients' view, made on first use: the core allocates them then
        if self._params is not None:
            self._named_params = {n: self._params[o:o + k].reshape(s) for n, o, k, s in self._infos}

    @property
    def _grads(self) -> Optional[np.ndarray]:
        if self._params is None:
            return None
        if self._grads_view is None:
            self._grads_view = np.asarray(self._core.gradients())
            self._named_grads = {n: self._grads_view[o:o + k].reshape(s) for n, o, k, s in self._infos}
        return self._grads_view

    # ---------------------------------------------------------------- parameters
    def named_parameters(self) -> Dict[str, np.ndarray]:
        """Name → numpy view (no copy) of each parameter, with Hugging Face names.
        On a cuda model: read-only host copies (see ``to``)."""
        if self._params is None:
            return self._named_host_copies(self._core.parameters_copy)
        return dict(self._named_params)

    def named_grads(self) -> Dict[str, np.ndarray]:
        """Name → numpy view of each parameter's gradient (same layout as the parameters).
        On a cuda model: read-only host copies (see ``to``)."""
        if self._grads is None:
            return self._named_host_copies(self._core.gradients_copy)
        return dict(self._named_grads)  # (made by the _grads property just above)

    def flat_params(self) -> np.ndarray:
        """The whole flat parameter buffer as a 1-D float32 view (no copy); a read-only
        host copy on a cuda model."""
        return self._params if self._params is not None else self._host_copy(self._core.parameters_copy)

    def flat_grads(self) -> np.ndarray:
        """The whole flat gradient buffer as a 1-D float32 view (no copy); a read-only
        host copy on a cuda model."""
        return self._grads if self._grads is not None else self._host_copy(self._core.gradients_copy)

    def load_flat_params(self, flat: np.ndarray) -> None:
        """Replace every parameter with ``flat`` (float32, ``num_parameters()`` long, flat layout)."""
        self._core.set_parameters(np.ascontiguousarray(flat, dtype=np.float32))

    @staticmethod
    def _host_copy(copy) -> np.ndarray:
        out = copy()  # a new host array
        out.flags.writeable = False
        return out

    def _named_host_copies(self, copy) -> Dict[str, np.ndarray]:
        flat = self._host_copy(copy)
        return {n: flat[o:o + k].reshape(s) for n, o, k, s in self._infos}

    def param_segments(self) -> List[Tuple[str, int, int, Tuple[int, ...]]]:
        """``(name, offset, numel, shape)`` of each parameter in flat-buffer order.
        2-D shapes are weight matrices, 1-D shapes norm weights."""
        return [(n, o, k, tuple(s)) for n, o, k, s in self._infos]

    def num_parameters(self) -> int:
        """Number of parameters (a tied output head is counted once)."""
        return int(self._core.num_parameters())

    def flops_per_token(self, seq_len: int) -> float:
        """Forward+backward FLOPs per token at sequence length ``seq_len`` (for MFU)."""
        return float(self._core.flops_per_token(int(seq_len)))

    def zero_grad(self) -> None:
        """Set every gradient to zero."""
        self._core.zero_grad()

    def to(self, device: str, dtype: Optional[str] = None,
           options: Optional[BackendOptions] = None) -> "Llama":
        """Move the model to ``device`` (``"cpu"``, ``"cuda"`` or ``"cuda:N"``, GPU N); returns ``self``.

        ``to("cuda")`` copies the parameters, gradients and AdamW moments to the GPU;
        ``model(...)``, ``backward``, ``zero_grad``, the optimizer and the KV-cache steps then
        run there and return host numpy arrays as on the CPU. ``dtype`` picks the GPU compute
        type: ``"float32"`` (default; matches the CPU) or ``"bfloat16"`` (bf16 weights and
        activations, float32 master weights, gradients and optimizer moments). On a cuda model,
        ``named_parameters()``, ``named_grads()``, ``flat_params()`` and ``flat_grads()``
        return read-only host *copies* taken at the call (writes would not reach the GPU;
        use ``load_flat_params``). ``AdamW`` and ``clip_grad_norm`` work the same on every
        device, and an optimizer made before the move keeps stepping (its moments move with
        the model). ``to("cpu")`` copies everything back. Without a usable GPU ``to("cuda")``
        raises ``RuntimeError``. ``options`` (:class:`pyllama.BackendOptions`) picks the
        backend's kernels and decode paths; the model keeps them until new ones are given.

        >>> model.to("cuda", dtype="bfloat16")   # doctest: +SKIP
        >>> model.to("cuda", options=pyllama.BackendOptions(cuda_graphs=False))  # doctest: +SKIP
        >>> model.to("cpu")                       # doctest: +SKIP
        """
        if not isinstance(device, str):
            raise TypeError(f"device must be a string ('cpu' or 'cuda'), got {type(device).__name__}")
        if dtype is not None and dtype not in ("float32", "bfloat16"):
            raise ValueError(f"unknown dtype {dtype!r}: expected 'float32' or 'bfloat16'")
        if options is not None and not isinstance(options, BackendOptions):
            raise TypeError(f"options must be a pyllama.BackendOptions, got {type(options).__name__}")
        backend, index = _core.parse_device(device)
        here = self._core.device
        if backend == "cpu":
            if dtype not in (None, "float32"):
                raise ValueError(f"the CPU model is float32; dtype={dtype!r} applies to 'cuda' only")
            target, want = "cpu", "float32"
        else:
            # plain "cuda": stay on the model's GPU when it is on one
            target = here if device == "cuda" and here.startswith("cuda") else f"cuda:{index}"
            want = dtype or self._core.dtype
        opts = self.options if options is None else options
        if target == here and want == self._core.dtype and (
                opts.core_options() == self.options.core_options() or here == "cpu"):
            self.options = opts  # nothing the core reads changed (the CPU backend reads none)
            return self
        self._set_core(_core.move_model(self._core, target, want, opts.core_options()))
        self.options = opts
        return self

    # ---------------------------------------------------------------- forward / backward
    def __call__(self, input_ids: ArrayLike, labels: Optional[ArrayLike] = None,
                 return_logits: bool = True) -> CausalLMOutput:
        """Run the model on ``input_ids`` [B, T] (ints).

        ``labels`` are aligned with ``input_ids`` (Hugging Face convention: the model
        shifts them, so position t is trained to predict ``labels[:, t+1]``); ``-100``
        marks positions to ignore. ``labels`` may also have one more column than
        ``input_ids`` — a window of T+1 tokens, ``model(window[:, :-1], labels=window)`` —
        so that the last position is trained too. Returns ``CausalLMOutput(logits, loss)``:
        ``logits`` is a new float32 array [B, T, V] (``None`` when ``return_logits=False``).
        """
        ids = _as_ids(input_ids, "input_ids")
        lab = None
        if labels is not None:
            lab = _as_ids(labels, "labels")
            if lab.shape[0] != ids.shape[0] or lab.shape[1] not in (ids.shape[1], ids.shape[1] + 1):
                raise ValueError(f"labels shape {lab.shape} must equal input_ids shape {ids.shape} "
                                 "or have one more column (a window of seq_len + 1 tokens)")
        loss = self._core.forward(ids, lab)
        self._have_loss = lab is not None
        logits = self._core.logits() if return_logits else None  # a new array
        return CausalLMOutput(logits=logits, loss=float(loss) if lab is not None else None)

    forward = __call__

    def backward(self, scale: float = 1.0) -> None:
        """Add the gradients of ``scale × last loss`` into every parameter's grad.

        Accumulates like PyTorch; call ``zero_grad()`` to clear. Needs the last call
        to have had labels."""
        if not self._have_loss:
            raise RuntimeError("backward() needs a forward call with labels first")
        self._core.backward(float(scale))
        self._have_loss = False

    def set_inference_dtype(self, dtype: str) -> "Llama":
        """Weights that generation's KV-cache steps read: ``"float32"`` (default, exact) or
        ``"bfloat16"`` (single-token steps stream bf16 copies of the weight matrices: half
        the memory traffic, so faster decoding; logits then differ from float32 by about
        1e-2 relative). The bf16 copy is taken at the start of each generation, so it always
        reflects the current weights. Training and ``model(...)`` stay float32. A cuda model
        computes in the dtype it was moved with (``to("cuda", dtype=...)``) and accepts only that.

        >>> model.set_inference_dtype("bfloat16").generate([[1, 2, 3]], max_new_tokens=4)  # doctest: +SKIP
        """
        if dtype not in ("float32", "bfloat16"):
            raise ValueError(f"inference dtype must be 'float32' or 'bfloat16', got {dtype!r}")
        self._core.set_inference_dtype(dtype)
        return self

    @property
    def inference_dtype(self) -> str:
        """``"float32"`` or ``"bfloat16"``: see :meth:`set_inference_dtype`."""
        return self._core.inference_dtype()

    # ---------------------------------------------------------------- KV cache (used by generation)
    def _kv_reset(self, n_slots: int, max_len: int) -> None:
        self._core.kv_reset(int(n_slots), int(max_len))

    def _kv_forward(self, tokens: np.ndarray, slots: np.ndarray, start_pos: np.ndarray,
                    last_only: bool = True) -> np.ndarray:
        return self._core.kv_forward(tokens, slots, start_pos, bool(last_only))

    def _kv_reorder(self, src: np.ndarray) -> None:
        self._core.kv_reorder(src)

    def _kv_greedy_on_device(self) -> bool:
        """True when :meth:`_kv_forward_greedy` takes the argmax where the logits are (the GPU)
        unless ``options.greedy_on_device`` is off: plain greedy decoding then downloads B token ids per
        step instead of the (B, V) logits."""
        return bool(self._core.greedy_on_device) and self.options.greedy_on_device

    def _kv_forward_greedy(self, tokens: np.ndarray, slots: np.ndarray, start_pos: np.ndarray) -> np.ndarray:
        """``_kv_forward(..., last_only=True).argmax(-1)`` as int32 [B] (first index on ties)."""
        return self._core.kv_forward_greedy(tokens, slots, start_pos)

    def _kv_greedy_chain_max(self) -> int:
        """Most steps one :meth:`_kv_greedy_chain` call takes: 0 where there is none (a CPU
        model, or ``options.greedy_chain`` off)."""
        if not self._kv_greedy_on_device():
            return 0
        if not self.options.greedy_chain:
            return 0
        return int(self._core.greedy_chain_max)

    def _kv_greedy_chain(self, tokens: np.ndarray, slots: np.ndarray, start_pos: np.ndarray, n: int) -> np.ndarray:
        """``n`` greedy steps in a row: step 0 runs ``tokens`` [B, 1] at ``start_pos``, step i
        the argmax of step i - 1 at ``start_pos + i`` (on the GPU: fed there, so the steps run
        back to back with one wait). Returns int32 [n, B]."""
        return self._core.kv_greedy_chain(tokens, slots, start_pos, n)

    def backend_stats(self) -> dict:
        """What the model's backend runs, and counters of what it has run: for diagnostics,
        benchmarks and tests (the keys may grow).

        Every device: ``device`` ('cpu', 'cuda:N'), ``dtype`` (compute dtype), ``greedy_chain_max``
        (greedy steps one device call may take; 0 on the CPU). CPU: ``simd``, ``threads``.
        CUDA: ``matmul_backend`` ('cublaslt', 'cublas' or 'tiled'), ``uses_cublas``,
        ``matmul_stats`` (cuBLASLt plans, fallbacks), ``attention_kernels`` ('flash',
        'flash-simt' or 'naive'), ``uses_flash_attention``, ``decode_stats`` (which decode paths ran:
        CUDA-graph replays, fused steps, ...).

        >>> import pyllama
        >>> m = pyllama.Llama(pyllama.LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=32,
        ...                                       num_hidden_layers=1, num_attention_heads=2))
        >>> s = m.backend_stats(); s["device"], s["dtype"], s["greedy_chain_max"]
        ('cpu', 'float32', 0)
        """
        c = self._core
        d = {"device": c.device, "dtype": c.dtype}
        if c.device == "cpu":
            info = _core.build_info()
            d.update(greedy_chain_max=0, simd=info.get("simd"), threads=_core.num_threads())
            return d
        d.update(greedy_chain_max=int(c.greedy_chain_max), matmul_backend=c.matmul_backend,
                 uses_cublas=bool(c.uses_cublas), matmul_stats=dict(c.matmul_stats()),
                 attention_kernels=c.attention_kernels, uses_flash_attention=bool(c.uses_flash_attention),
                 decode_stats=dict(c.decode_stats()))
        return d

    # ---------------------------------------------------------------- Hugging Face files
    def save_pretrained(self, path: Union[str, "os.PathLike[str]"], dtype: str = "float32") -> None:
        """Write ``config.json`` and ``model.safetensors`` (Hugging Face format) into the folder
        ``path``; each file is written atomically.

        ``dtype`` is what the weights are stored as: ``"float32"`` (the model's own values,
        exactly), ``"bfloat16"`` (as most Llama checkpoints ship; rounded to nearest even by the
        core) or ``"float16"``. ``config.json`` names it in ``torch_dtype``.
        ``generation_config.json`` is written too when ``model.generation_config`` is set.

        >>> model.save_pretrained("my-model")            # doctest: +SKIP
        >>> model.save_pretrained("my-model-bf16", dtype="bfloat16")   # doctest: +SKIP
        >>> transformers.LlamaForCausalLM.from_pretrained("my-model")  # doctest: +SKIP
        """
        from safetensors.numpy import save_file

        if dtype not in ("float32", "bfloat16", "float16"):
            raise ValueError(f"save_pretrained: dtype must be 'float32', 'bfloat16' or 'float16', got {dtype!r}")
        path = os.fspath(path)
        os.makedirs(path, exist_ok=True)
        params = self.named_parameters()
        if dtype == "bfloat16":
            from safetensors import TensorSpec, serialize_file

            # the core rounds to bfloat16 (nearest even); numpy sees the bits as uint16
            bits = {n: np.ascontiguousarray(np.asarray(_core.Tensor.from_numpy(np.ascontiguousarray(v))
                                                       .to("bfloat16"))) for n, v in params.items()}
            specs = {n: TensorSpec(dtype="bfloat16", shape=b.shape, data_ptr=b.ctypes.data, data_len=b.nbytes)
                     for n, b in bits.items()}
            atomic_write(os.path.join(path, "model.safetensors"),
                         lambda tmp: serialize_file(specs, tmp, metadata={"format": "pt"}))
        else:
            np_dtype = np.float32 if dtype == "float32" else np.float16
            with np.errstate(over="ignore"):  # checked just below, with a message
                tensors = {n: np.ascontiguousarray(v, dtype=np_dtype) for n, v in params.items()}
            for n, t in tensors.items():
                if not np.all(np.isfinite(t)) and np.all(np.isfinite(params[n])):
                    raise ValueError(f"save_pretrained: {n} holds values beyond float16's range (largest "
                                     f"|w| = {float(np.abs(params[n]).max()):g} > 65504); save as 'bfloat16' "
                                     "or 'float32'")
            atomic_write(os.path.join(path, "model.safetensors"),
                         lambda tmp: save_file(tensors, tmp, metadata={"format": "pt"}))
        d = self.config.to_dict()
        d["torch_dtype"] = dtype
        from ._io import atomic_write_text

        atomic_write_text(os.path.join(path, "config.json"), json.dumps(d, indent=2, sort_keys=True) + "\n")
        if self.generation_config is not None:
            self.generation_config.save_pretrained(path)

    @classmethod
    def from_pretrained(cls, path: Union[str, "os.PathLike[str]"], *, check_finite: bool = True) -> "Llama":
        """Load a Hugging Face–format folder (``config.json`` + ``model.safetensors``, or the
        shards its ``model.safetensors.index.json`` names; else ``pytorch_model.bin`` or the
        shards of ``pytorch_model.bin.index.json``).

        ``.bin`` files are read by the core's restricted unpickler, which runs no pickled code:
        it allows only the tensor rebuilds, storage types, dtypes and ``OrderedDict`` a PyTorch
        state dict uses and refuses anything else (``os.system``, ``builtins.exec``, ...) with a
        ``ValueError`` naming it, before anything runs (docs/CHECKPOINTS.md).

        Tensors may be float32, float16 or bfloat16 (converted to float32 exactly, in the
        core's one safetensors reader, memory-mapped). Integer, bool, float64 and 8-bit
        tensors are refused, not cast; NaN or Inf weights are refused unless
        ``check_finite=False`` (which skips one pass over the weights). Missing tensors,
        unexpected tensors or shapes, and unreadable or corrupt files raise ``ValueError``
        naming the file and the tensor. A ``generation_config.json`` in the folder becomes
        ``model.generation_config``: ``generate``'s defaults (``GenerationConfig.from_pretrained``).
        """
        path = os.fspath(path)
        if not os.path.isdir(path):
            raise FileNotFoundError(f"checkpoint folder {path!r} does not exist")
        cfg_path = os.path.join(path, "config.json")
        if not os.path.isfile(cfg_path):
            raise FileNotFoundError(f"{path!r} has no config.json: is it a Hugging Face model folder?")
        config = LlamaConfig.from_json(cfg_path)
        files = _weight_files(path)
        model = cls(config, seed=None)
        try:
            _core.load_weight_files(model._core, files, bool(check_finite))
        except ValueError as e:
            raise ValueError(f"checkpoint {path!r}: {e}") from None
        if os.path.isfile(os.path.join(path, "generation_config.json")):
            from .generation import GenerationConfig

            model.generation_config = GenerationConfig.from_pretrained(path)
        model._pretrained_dir = path  # generate/stream read the folder's tokenizer from here
        return model

    # ---------------------------------------------------------------- generation
    def generate(self, input_ids, generation_config=None, **kwargs):
        """Generate new tokens for each prompt; see ``pyllama.GenerationConfig``."""
        from .generation import generate

        return generate(self, input_ids, generation_config, **kwargs)

    def stream(self, input_ids, generation_config=None, tokenizer=None, **kwargs) -> Iterator:
        """Yield tokens as they are chosen; see ``pyllama.generation.stream``."""
        from .generation import stream

        return stream(self, input_ids, generation_config, tokenizer=tokenizer, **kwargs)

    def __repr__(self) -> str:
        c = self.config
        return (f"Llama(layers={c.num_hidden_layers}, hidden={c.hidden_size}, heads={c.num_attention_heads}/"
                f"{c.num_key_value_heads}, vocab={c.vocab_size}, params={self.num_parameters():,})")


def _index_shards(path: str, index: str) -> List[str]:
    """The shard files a sharded-checkpoint index names, each once, in name order."""
    try:
        with open(index, "r", encoding="utf-8") as f:
            weight_map = json.load(f)["weight_map"]
        if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
            raise TypeError("'weight_map' must map tensor names to shard file names")
    except (ValueError, KeyError, TypeError, AttributeError) as e:  # JSONDecodeError is a ValueError
        raise ValueError(f"{index!r} is not a valid sharded-checkpoint index ({type(e).__name__}: {e}); "
                         "it must be JSON with a 'weight_map' object: re-save or re-download the model") from None
    return [os.path.join(path, n) for n in sorted(set(weight_map.values()))]


def _weight_files(path: str) -> List[str]:
    """The first found of model.safetensors, its index's shards, pytorch_model.bin, its index's shards."""
    for single, index in (("model.safetensors", "model.safetensors.index.json"),
                          ("pytorch_model.bin", "pytorch_model.bin.index.json")):
        if os.path.isfile(os.path.join(path, single)):
            return [os.path.join(path, single)]
        if os.path.isfile(os.path.join(path, index)):
            return _index_shards(path, os.path.join(path, index))
    raise FileNotFoundError(f"{path!r} has no model.safetensors nor pytorch_model.bin (nor a sharded index of either)")
