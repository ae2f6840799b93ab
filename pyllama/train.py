"""The training loop: ``TrainConfig``, ``Trainer`` and checkpoints.

A step runs forward+backward over ``grad_accum_steps`` micro-batches (each
``batch_size`` windows of ``seq_len`` tokens), clips the global gradient norm,
sets the learning rate from :func:`pyllama.cosine_lr` and applies
:class:`pyllama.AdamW`. Every step appends one JSON line to
``out_dir/metrics.jsonl``; checkpoints are folders ``out_dir/step-N/``.

>>> import numpy as np, pyllama
>>> cfg = pyllama.LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64,
...                           num_hidden_layers=1, num_attention_heads=2, max_position_embeddings=64)
>>> data = np.random.default_rng(0).integers(0, 64, 5000)
>>> tc = pyllama.TrainConfig(batch_size=2, seq_len=16, max_steps=3, warmup_steps=1, out_dir=None,
...                          eval_interval=0)
>>> trainer = pyllama.Trainer(pyllama.Llama(cfg), tc, data, progress=False)
>>> result = trainer.train()
>>> result["step"]
3
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import re
import shutil
import signal
import sys
import tempfile
import threading
import time
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Tuple

import numpy as np

from ._io import atomic_write_text
from .data import TOKENIZER_FILE, DataLoader, TokenData, as_token_data, save_tokenizer
from .optim import AdamW, ShardedAdamW, _core_of, clip_grad_norm, cosine_lr, grad_norm
from . import distributed as _dist

__all__ = ["TrainConfig", "Trainer", "resolve_checkpoint", "load_trainer_state", "verify_checkpoint",
           "clean_run_dir", "plot_metrics", "STATE_FILE", "OPTIMIZER_FILE", "MANIFEST_FILE"]

STATE_FILE = "trainer_state.json"
OPTIMIZER_FILE = "optimizer.safetensors"
METRICS_FILE = "metrics.jsonl"
STATE_FORMAT = "pyllama.trainer_state"
STATE_VERSION = 1
MANIFEST_FILE = "manifest.json"
MANIFEST_FORMAT = "pyllama.checkpoint_manifest"
# A test hook, for tests only: when set, Trainer.train calls it with the trainer after
# every optimizer step (self.step is the step just completed), before the step is
# evaluated, logged or checkpointed. The fault-injection tests set it (in the rank's
# process) to kill, hang or interrupt one rank at a chosen step (tests/fault_inject.py).
_after_step_hook: Optional[Callable[["Trainer"], None]] = None

# A published checkpoint: step-N, or step-N.K (K = 1, 2, ...) when step N was saved again
# while step-N existed (docs/TRAINING.md, "Checkpoint lifecycle").
_STEP_DIR = re.compile(r"^step-(\d+)(?:\.(\d+))?$")
# What an interrupted save, prune or pointer update leaves in a run folder; the random
# part is tempfile's. Start-up cleanup removes these names and nothing else.
_LEFTOVER = re.compile(r"^(?:\.tmp-step-\d+(?:\.\d+)?-[A-Za-z0-9_]+"      # a checkpoint being written
                       r"|\.trash-step-\d+(?:\.\d+)?-[A-Za-z0-9_]+"       # a checkpoint being deleted
                       r"|\.old-step-\d+-[A-Za-z0-9_]+"                    # pyllama <= 0.1's re-save swap
                       r"|\.tmp-latest-\d+(?:-[A-Za-z0-9_]+)?"              # a new latest symlink
                       r"|\.tmp-[A-Za-z0-9_]+-(?:latest|metrics\.jsonl|loss\.png))$")  # atomic_write temps

_KW_ONLY = {"kw_only": True} if sys.version_info >= (3, 10) else {}


@dataclass(**_KW_ONLY)
class TrainConfig:
    """How to train (the model's shape lives in ``LlamaConfig``).

    Keyword-only; every field is checked when the config is built, and an
    error names the field and the allowed values.

    >>> TrainConfig(batch_size=8, seq_len=128, max_steps=500, lr=1e-3).tokens_per_step
    1024
    >>> TrainConfig(lr=-1.0)
    Traceback (most recent call last):
    ...
    ValueError: TrainConfig.lr must be a finite number > 0, got -1.0
    """

    batch_size: int = 16  # B: sequences per micro-batch
    seq_len: int = 128  # T: tokens per sequence (at most the model's max_position_embeddings)
    grad_accum_steps: int = 1  # micro-batches per optimizer step
    max_steps: int = 500  # optimizer steps in the whole run (the schedule's total_steps)
    lr: float = 3e-3  # peak learning rate
    warmup_steps: int = 50  # linear warm-up steps
    min_lr_ratio: float = 0.1  # final lr = min_lr_ratio * lr
    weight_decay: float = 0.1  # decoupled decay on 2-D weight matrices
    betas: Tuple[float, float] = (0.9, 0.95)  # AdamW moment decay rates
    eps: float = 1e-8  # AdamW epsilon
    grad_clip: float = 1.0  # max global gradient L2 norm; 0 disables clipping
    decay_embeddings: bool = True  # whether the token embedding decays like other matrices
    eval_interval: int = 100  # evaluate every N steps and at the end; 0 disables evaluation
    eval_steps: int = 20  # validation batches per evaluation
    checkpoint_interval: int = 0  # checkpoint every N steps; 0: only at the end (and on Ctrl-C)
    keep_last: int = 3  # checkpoints kept in out_dir; 0 keeps all
    seed: int = 0  # seeds the data order
    out_dir: Optional[str] = "runs/train"  # metrics, checkpoints and plot; None writes nothing
    device: str = "cpu"  # "cpu" or "cuda" (the model is moved there; needs a GPU build and device)
    dtype: str = "float32"  # compute type on "cuda": "float32" or "bfloat16" (float32 master weights)
    dist_timeout_s: float = 300.0  # data-parallel runs: a collective waiting longer raises (a rank died or hangs); 0: wait for ever
    zero1: bool = False  # data-parallel runs: shard the AdamW moments over the ranks (ZeRO stage 1)

    def __post_init__(self) -> None:
        if isinstance(self.betas, list):
            self.betas = tuple(self.betas)
        if self.out_dir is not None:
            self.out_dir = os.fspath(self.out_dir)
        self.validate()

    @property
    def tokens_per_step(self) -> int:
        return self.batch_size * self.seq_len * self.grad_accum_steps

    def validate(self) -> None:
        def intf(name: str, lo: int) -> None:
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < lo:
                raise ValueError(f"TrainConfig.{name} must be an int >= {lo}, got {v!r}")

        def num(name: str, lo: float, hi: float = math.inf, lo_open: bool = False) -> None:
            v = getattr(self, name)
            ok = isinstance(v, (int, float, np.floating)) and not isinstance(v, bool) and math.isfinite(v)
            ok = ok and (v > lo if lo_open else v >= lo) and v <= hi
            if not ok:
                rng = (f"> {lo:g}" if lo_open else f">= {lo:g}") + ("" if hi == math.inf else f" and <= {hi:g}")
                raise ValueError(f"TrainConfig.{name} must be a finite number {rng}, got {v!r}")

        for name in ("batch_size", "seq_len", "grad_accum_steps", "max_steps", "eval_steps"):
            intf(name, 1)
        for name in ("warmup_steps", "eval_interval", "checkpoint_interval", "keep_last", "seed"):
            intf(name, 0)
        num("lr", 0.0, lo_open=True)
        num("min_lr_ratio", 0.0, 1.0)
        num("weight_decay", 0.0)
        num("eps", 0.0)
        num("grad_clip", 0.0)
        num("dist_timeout_s", 0.0)
        if self.warmup_steps > self.max_steps:
            raise ValueError(f"TrainConfig.warmup_steps ({self.warmup_steps}) must be <= max_steps ({self.max_steps})")
        b = self.betas
        if not (isinstance(b, tuple) and len(b) == 2 and all(isinstance(x, (int, float)) and 0.0 <= x < 1.0
                                                              for x in b)):
            raise ValueError(f"TrainConfig.betas must be two numbers in [0, 1), got {b!r}")
        if not isinstance(self.zero1, bool):
            raise ValueError(f"TrainConfig.zero1 must be True or False, got {self.zero1!r}")
        if not isinstance(self.decay_embeddings, bool):
            raise ValueError(f"TrainConfig.decay_embeddings must be True or False, got {self.decay_embeddings!r}")
        if self.out_dir is not None and not isinstance(self.out_dir, str):
            raise ValueError(f"TrainConfig.out_dir must be a path or None, got {self.out_dir!r}")
        if self.device not in ("cpu", "cuda"):
            raise ValueError(f"TrainConfig.device must be 'cpu' or 'cuda', got {self.device!r}")
        if self.dtype not in ("float32", "bfloat16"):
            raise ValueError(f"TrainConfig.dtype must be 'float32' or 'bfloat16', got {self.dtype!r}")
        if self.dtype == "bfloat16" and self.device != "cuda":
            raise ValueError("TrainConfig.dtype='bfloat16' needs device='cuda' (the CPU trains in float32)")

    def to_dict(self) -> Dict[str, Any]:
        d = dataclasses.asdict(self)
        d["betas"] = list(self.betas)
        return d

    @classmethod
    def from_dict(cls, d: Dict[str, Any]) -> "TrainConfig":
        """Build from a dict (e.g. JSON); unknown keys are an error that lists them."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ValueError(f"unknown TrainConfig field(s): {', '.join(unknown)}; known: {', '.join(sorted(names))}")
        return cls(**d)

    def replace(self, **changes) -> "TrainConfig":
        return dataclasses.replace(self, **changes)


# ---------------------------------------------------------------------- helpers

def _peak_flops(device: str = "cpu", dtype: str = "float32") -> float:
    """Nominal peak FLOP/s (for MFU). CPU: threads × FP32 FLOPs/cycle × clock; CUDA:
    the dense H100/H200 SXM figure for the dtype (989 TFLOP/s bf16, 67 TFLOP/s fp32).

    ``PYLLAMA_PEAK_FLOPS`` overrides it. The clock comes from /proc/cpuinfo
    (3 GHz when unknown); FLOPs/cycle from the SIMD path (2 FMA units).
    """
    env = os.environ.get("PYLLAMA_PEAK_FLOPS")
    if env:
        return float(env)
    if device == "cuda":  # nominal dense H100/H200 SXM figures
        return 989.4e12 if dtype == "bfloat16" else 66.9e12
    from . import build_info

    info = build_info()
    per_cycle = {"avx512": 64, "avx2": 32}.get(info.get("simd"), 8)
    ghz = 3.0
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            mhz = [float(line.split(":")[1]) for line in f if line.startswith("cpu MHz")]
        if mhz:
            ghz = max(mhz) / 1000.0
    except (OSError, ValueError):
        pass
    return float(info.get("threads", 1)) * per_cycle * ghz * 1e9


def _cap_threads(comm) -> None:
    """Data parallel: the ranks on one node share its cores; cap each rank's
    threads at cores // ranks-on-this-node unless OMP_NUM_THREADS was set."""
    if os.environ.get("OMP_NUM_THREADS"):
        return
    from . import num_threads, set_num_threads

    cap = _dist.default_threads_per_rank(comm)
    if num_threads() > cap:
        set_num_threads(cap)


def _fsync_dir(path: str) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _fsync_tree(path: str) -> None:
    for root, _, files in os.walk(path):
        for name in files:
            with open(os.path.join(root, name), "rb") as f:
                os.fsync(f.fileno())
        _fsync_dir(root)


def _make_readable(path: str) -> None:
    """Give a folder built from temporary files (mode 0600/0700) the usual umask-based modes."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(path, 0o777 & ~umask)
    for root, dirs, files in os.walk(path):
        for d in dirs:
            os.chmod(os.path.join(root, d), 0o777 & ~umask)
        for f in files:
            os.chmod(os.path.join(root, f), 0o666 & ~umask)


def _step_dirs(run_dir: str) -> List[Tuple[int, str]]:
    """The published checkpoints of a run folder as ``(step, path)``, oldest first
    (``step-N`` before its re-saves ``step-N.1``, ``step-N.2``, ...)."""
    out = []
    if os.path.isdir(run_dir):
        for name in os.listdir(run_dir):
            m = _STEP_DIR.match(name)
            p = os.path.join(run_dir, name)
            if m and os.path.isdir(p) and not os.path.islink(p):
                out.append((int(m.group(1)), int(m.group(2) or 0), p))
    return [(n, p) for n, _, p in sorted(out)]


def _free_step_name(run_dir: str, step: int) -> str:
    """``step-N`` when free, else ``step-N.K`` with K one past the highest re-save of N."""
    taken = [int(m.group(2) or 0) for m in map(_STEP_DIR.match, os.listdir(run_dir))
             if m and int(m.group(1)) == step]
    return f"step-{step}" if not taken else f"step-{step}.{max(taken) + 1}"


def clean_run_dir(run_dir: str) -> List[str]:
    """Remove what interrupted saves, prunes and pointer updates left in ``run_dir``:
    only names matching the temporary patterns (``.tmp-step-*``, ``.trash-step-*``,
    ``.old-step-*``, ``.tmp-latest-*``, atomic-write temporaries of ``latest``,
    ``metrics.jsonl`` and ``loss.png``); never a published ``step-N`` or ``latest``.
    Returns the names removed. Only one process may write a run folder at a time."""
    removed: List[str] = []
    if not os.path.isdir(run_dir):
        return removed
    for name in sorted(os.listdir(run_dir)):
        if not _LEFTOVER.match(name):
            continue
        p = os.path.join(run_dir, name)
        if os.path.isdir(p) and not os.path.islink(p):
            shutil.rmtree(p, ignore_errors=True)
        else:
            try:
                os.unlink(p)
            except FileNotFoundError:
                pass
        removed.append(name)
    return removed


def _sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _write_manifest(folder: str) -> None:
    """Write ``folder/manifest.json``: every other file's name, size and SHA-256."""
    files = {}
    for name in sorted(os.listdir(folder)):
        p = os.path.join(folder, name)
        if name != MANIFEST_FILE and os.path.isfile(p):
            files[name] = {"size": os.path.getsize(p), "sha256": _sha256(p)}
    with open(os.path.join(folder, MANIFEST_FILE), "w", encoding="utf-8") as f:
        json.dump({"format": MANIFEST_FORMAT, "version": 1, "files": files}, f, indent=1)
        f.write("\n")


def verify_checkpoint(ckpt: str) -> bool:
    """Check a checkpoint folder against its ``manifest.json`` (every listed file present,
    with its size and SHA-256); raises ``ValueError`` naming the first damaged file.

    Checkpoints written before manifests existed have none: that gives a warning and
    returns False (resume then relies on reading and checking every file); True when
    the manifest was checked."""
    p = os.path.join(ckpt, MANIFEST_FILE)
    if not os.path.isfile(p):
        warnings.warn(f"checkpoint {ckpt!r} has no {MANIFEST_FILE} (written by an older pyllama): "
                      "its files cannot be checked against checksums", stacklevel=2)
        return False
    try:
        with open(p, encoding="utf-8") as f:
            man = json.load(f)
        files = man["files"]
        if man.get("format") != MANIFEST_FORMAT or not isinstance(files, dict):
            raise ValueError("not a pyllama checkpoint manifest")
    except (ValueError, KeyError, TypeError, UnicodeDecodeError) as e:
        raise ValueError(f"checkpoint {ckpt!r} is damaged: {MANIFEST_FILE} is unreadable ({e}); "
                         "resume from another step-N folder") from None
    for name, want in files.items():
        fp = os.path.join(ckpt, name)
        if not isinstance(want, dict) or os.path.basename(name) != name:
            raise ValueError(f"checkpoint {ckpt!r} is damaged: {MANIFEST_FILE} has a bad entry {name!r}")
        if not os.path.isfile(fp):
            raise ValueError(f"checkpoint {ckpt!r} is damaged: {name} is missing; resume from another step-N folder")
        size = os.path.getsize(fp)
        if size != want.get("size"):
            raise ValueError(f"checkpoint {ckpt!r} is damaged: {name} has {size} bytes, the manifest says "
                             f"{want.get('size')!r}; resume from another step-N folder")
        if _sha256(fp) != want.get("sha256"):
            raise ValueError(f"checkpoint {ckpt!r} is damaged: {name}'s SHA-256 differs from the manifest's; "
                             "resume from another step-N folder")
    return True


def resolve_checkpoint(path) -> str:
    """The checkpoint folder that ``path`` names: a ``step-N`` folder, a ``latest``
    link, or a run folder (its ``latest``, else its highest ``step-N``).

    Raises ``FileNotFoundError`` with what was expected when there is none.
    """
    path = os.fspath(path)
    if os.path.islink(path):
        path = os.path.realpath(path)
    if os.path.isfile(path) and os.path.basename(path) == "latest":  # pointer file (no symlinks)
        with open(path, encoding="utf-8") as f:
            path = os.path.join(os.path.dirname(path), f.read().strip())
    if not os.path.exists(path):
        raise FileNotFoundError(f"checkpoint {path!r} does not exist")
    if not os.path.isdir(path):
        raise FileNotFoundError(f"checkpoint {path!r} is not a folder")
    if os.path.isfile(os.path.join(path, STATE_FILE)):
        return path
    latest = os.path.join(path, "latest")
    if os.path.exists(latest):
        return resolve_checkpoint(os.path.realpath(latest) if os.path.islink(latest) else latest)
    steps = _step_dirs(path)
    if steps:
        return steps[-1][1]
    raise FileNotFoundError(f"{path!r} is not a checkpoint: it has no {STATE_FILE} and no step-N folders")


def load_trainer_state(ckpt: str) -> Dict[str, Any]:
    """Read and check ``trainer_state.json`` of a checkpoint folder."""
    p = os.path.join(ckpt, STATE_FILE)
    if not os.path.isfile(p):
        raise FileNotFoundError(f"{ckpt!r} is not a checkpoint: {STATE_FILE} is missing")
    try:
        with open(p, encoding="utf-8") as f:
            state = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"checkpoint {ckpt!r} is corrupt: {STATE_FILE} is not valid JSON ({e})") from None
    if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
        raise ValueError(f"checkpoint {ckpt!r} is corrupt: {STATE_FILE} is not a pyllama trainer state")
    if state.get("version") != STATE_VERSION:
        raise ValueError(f"checkpoint {ckpt!r} has trainer-state version {state.get('version')!r}; "
                         f"this pyllama reads version {STATE_VERSION}")
    for key in ("step", "tokens_seen", "data", "train_config", "model_config"):
        if key not in state:
            raise ValueError(f"checkpoint {ckpt!r} is corrupt: {STATE_FILE} lacks {key!r}")

    def bad(what: str, v: Any, want: str) -> ValueError:
        return ValueError(f"checkpoint {ckpt!r} is corrupt: {STATE_FILE} has {what}={v!r}, expected {want}")

    def count(v: Any) -> bool:
        return isinstance(v, int) and not isinstance(v, bool) and 0 <= v < 2 ** 63

    for key in ("step", "tokens_seen"):
        if not count(state[key]):
            raise bad(key, state[key], "an int >= 0")
    for key in ("data", "train_config", "model_config"):
        if not isinstance(state[key], dict):
            raise bad(key, state[key], "a JSON object")
    opt = state.get("optimizer", {})
    if not isinstance(opt, dict) or not count(opt.get("step", state["step"])):
        raise bad("optimizer", opt, 'an object with "step": an int >= 0')
    ws = state.get("world_size", 1)
    if not count(ws) or ws < 1:
        raise bad("world_size", ws, "an int >= 1")
    if not isinstance(state.get("metrics") or {}, dict):
        raise bad("metrics", state.get("metrics"), "a JSON object")
    return state


def _load_safetensors(path: str, what: str) -> Dict[str, np.ndarray]:
    from safetensors.numpy import load_file

    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint file {path!r} ({what}) is missing")
    try:
        return load_file(path)
    except Exception as e:  # safetensors raises its own error types
        raise ValueError(f"checkpoint file {path!r} ({what}) is corrupt: {e}") from None


# ---------------------------------------------------------------------- Trainer

# ---------------------------------------------------------------------- gradient synchronisation
# A step: micro-batches (forward + backward) -> sync -> clip -> optimizer step. The Trainer
# picks how the gradients are synchronised and clipped once, in __init__: _LocalSync (one
# process), _MPIAllReduceSync / _NCCLAllReduceSync (data parallel, every rank holds every
# gradient) or _ZeroSync (ZeRO-1: every rank holds its block). Each returns the step's mean
# loss, the gradient norm and the seconds spent communicating (None on one process).

class _GradSync:
    """The interface: ``begin`` before the micro-batches, ``abort`` when one raised,
    ``sync_and_clip`` after them, ``after_step`` after the optimizer step."""

    def begin(self, t: "Trainer") -> None:
        pass

    def abort(self, t: "Trainer") -> None:
        pass

    def sync_and_clip(self, t: "Trainer", loss: float) -> Tuple[float, float, Optional[float]]:
        """``loss``: this rank's mean over its micro-batches. Returns (the step's mean loss,
        the gradient norm, seconds spent communicating or None)."""
        raise NotImplementedError

    def after_step(self, t: "Trainer", comm_s: Optional[float]) -> Optional[float]:
        """After the optimizer step; returns ``comm_s`` plus any time spent communicating."""
        return comm_s


class _LocalSync(_GradSync):
    """One process: the step waits for the device once. The losses stay in the model until
    the gradient norm is read (the core's ``set_defer_loss`` / ``norm_and_losses``)."""

    def __init__(self) -> None:
        self._core = None

    def begin(self, t: "Trainer") -> None:
        self._core = _core_of(t.model)
        self._core.set_defer_loss(True)

    def abort(self, t: "Trainer") -> None:
        self._core.set_defer_loss(False)

    def sync_and_clip(self, t: "Trainer", loss: float) -> Tuple[float, float, Optional[float]]:
        c, core = t.config, self._core
        core.set_defer_loss(False)
        norm, losses = core.norm_and_losses(c.grad_clip if c.grad_clip > 0 else 0.0)
        return float(sum(losses)) / c.grad_accum_steps, norm, None


class _MPIAllReduceSync(_GradSync):
    """Data parallel through a host communicator (MPI, or a stand-in): one all-reduce over the
    flat gradient buffer, with a 4-number all-reduce riding along (the loss, the Ctrl-C votes
    and the step, which must agree); then the average and the clip on every rank."""

    def _allreduce(self, t: "Trainer", local_loss: float) -> Tuple[float, float]:
        grads = t.model.flat_grads()
        t._fill_small(local_loss)
        t0 = time.perf_counter()
        t.comm.allreduce_many_sum_([grads, t._small], what="gradient all-reduce", step=t.step + 1)
        grads *= np.float32(1.0 / t.world_size)
        dt = time.perf_counter() - t0
        return t._read_small(), dt

    def sync_and_clip(self, t: "Trainer", loss: float) -> Tuple[float, float, Optional[float]]:
        loss, comm_s = self._allreduce(t, loss)
        c = t.config
        norm = clip_grad_norm(t.model, c.grad_clip) if c.grad_clip > 0 else grad_norm(t.model)
        return loss, norm, comm_s


class _NCCLAllReduceSync(_MPIAllReduceSync):
    """GPUs (also one rank): one NCCL all-reduce (average) over the GPU gradient buffer, the
    4 numbers in its group."""

    def _allreduce(self, t: "Trainer", local_loss: float) -> Tuple[float, float]:
        t._fill_small(local_loss)
        t0 = time.perf_counter()
        t.comm.allreduce_grads_(t.model, extra=t._small, what="gradient all-reduce", step=t.step + 1)
        return t._read_small(), time.perf_counter() - t0


class _ZeroSync(_GradSync):
    """ZeRO-1 (:class:`pyllama.optim.ShardedAdamW`): reduce-scatter (the 4 numbers summed
    alongside), the norm from the blocks, the clip of the own block; after the step, the
    all-gather of the new weights."""

    def sync_and_clip(self, t: "Trainer", loss: float) -> Tuple[float, float, Optional[float]]:
        t1 = time.perf_counter()
        t._fill_small(loss)
        t.optimizer.reduce_scatter_grads(also_sum=[t._small], step=t.step + 1)
        loss = t._read_small()
        norm = t.optimizer.clip_(t.config.grad_clip, step=t.step + 1)
        return loss, norm, time.perf_counter() - t1

    def after_step(self, t: "Trainer", comm_s: Optional[float]) -> Optional[float]:
        t1 = time.perf_counter()
        t.optimizer.allgather_params(step=t.step + 1)
        return comm_s + (time.perf_counter() - t1)


class Trainer:
    """Trains ``model`` on token data with AdamW, clipping and a cosine schedule.

    ``train_data`` / ``val_data``: a :class:`pyllama.data.TokenData`, a path
    written by ``pyllama prepare`` (``.../train.bin``), or an array of ids.
    ``tokenizer`` (optional) is saved into every checkpoint (``tokenizer.tiktoken``
    and its ``.json``, plus a Hugging Face ``tokenizer.json``); ``tokenizer_ref`` is
    recorded in ``trainer_state.json``.

    Data parallel: started as N ranks (``mpiexec -n N python train.py``), the
    trainer finds the MPI communicator itself (``comm`` passes one explicitly,
    see :mod:`pyllama.distributed`). Each step then covers ``N × grad_accum_steps``
    micro-batches of one global stream: rank r runs micro-batches
    ``r·grad_accum_steps … (r+1)·grad_accum_steps − 1`` of it, the gradients are
    averaged in one all-reduce over the flat gradient buffer, and every rank
    applies the same AdamW step; so N ranks give the losses of one rank with
    ``N × grad_accum_steps``. Only rank 0 logs, evaluates and writes checkpoints.
    Every rank must build the Trainer (and call ``train``/``resume``) alike.
    With ``device="cuda"`` the ranks (``mpiexec`` or torchrun-style variables) use
    NCCL: one all-reduce of the GPU gradient buffer per step, GPU ``LOCAL_RANK``
    (``comm=pyllama.distributed.init("nccl")`` also on one rank; docs/DISTRIBUTED.md).

    >>> trainer = Trainer(model, TrainConfig(max_steps=100, out_dir="runs/x"),
    ...                   "data/train.bin", "data/val.bin")          # doctest: +SKIP
    >>> trainer.train()                                             # doctest: +SKIP
    >>> trainer.resume("runs/x/latest"); trainer.train()            # doctest: +SKIP
    """

    def __init__(self, model, config: TrainConfig, train_data, val_data=None, *, tokenizer=None,
                 tokenizer_ref: Optional[str] = None, progress: Optional[bool] = None,
                 comm: Optional["_dist.Communicator"] = None) -> None:
        if not isinstance(config, TrainConfig):
            raise TypeError(f"config must be a pyllama.TrainConfig, got {type(config).__name__}")
        config.validate()
        if comm is None:
            if config.device == "cuda":  # mpiexec or torchrun-style ranks on GPUs: NCCL; one process: none
                if _dist.launched_world_size() > 1:
                    _dist._require_gpu("the NCCL backend")  # before any rendezvous: fail at once, not at a deadline
                comm = _dist.init_host(timeout_s=config.dist_timeout_s)
            else:
                comm = _dist.init("auto", timeout_s=config.dist_timeout_s)
        if config.zero1 and int(comm.world_size) > 1 and config.device == "cuda":
            raise NotImplementedError("TrainConfig.zero1 is not implemented on GPUs (the NCCL backend): train "
                                      "with zero1=False, or on CPUs with mpiexec (docs/DISTRIBUTED.md)")
        if config.device == "cuda" and int(comm.world_size) > 1 and getattr(comm, "backend", "") != "nccl":
            # a host-side communicator (MPI or the TCP rendezvous): the gradients go through NCCL
            comm = _dist.NCCLCommunicator(comm, timeout_s=config.dist_timeout_s)
        backend = getattr(comm, "backend", "")
        if config.device != "cuda" and (backend == "nccl" or (backend == "tcp" and int(comm.world_size) > 1)):
            raise ValueError(f"a {type(comm).__name__} communicator trains on GPUs: set TrainConfig.device='cuda', "
                             "or train on CPUs with mpiexec -n N (the MPI backend)")
        self.comm = comm
        self.rank, self.world_size = int(comm.rank), int(comm.world_size)
        self._nccl = backend == "nccl"  # gradients all-reduced on the GPU (also with one rank)
        self.model = model
        self.config = config
        mc = model.config
        from .config import check_memory

        check_memory(mc, training=True, batch_tokens=config.batch_size * config.seq_len)
        if config.seq_len > mc.max_positions:
            raise ValueError(f"TrainConfig.seq_len ({config.seq_len}) exceeds the model's "
                             f"max_position_embeddings ({mc.max_position_embeddings})")
        if config.device == "cuda":
            try:  # NCCL: the communicator's GPU (LOCAL_RANK)
                model.to(f"cuda:{comm.device}" if self._nccl else "cuda", dtype=config.dtype)
            except (RuntimeError, NotImplementedError) as e:
                raise ValueError(f"TrainConfig.device='cuda' cannot be used: {e}; use device='cpu'") from None
        elif getattr(model, "device", "cpu") != "cpu":
            model.to("cpu")
        self.train_data = as_token_data(train_data)
        self.val_data = as_token_data(val_data) if val_data is not None else None
        for what, d in (("train_data", self.train_data), ("val_data", self.val_data)):
            if d is None:
                continue
            if len(d) and d.max_id >= mc.vocab_size:
                raise ValueError(f"LlamaConfig.vocab_size ({mc.vocab_size}) is smaller than {what}'s largest "
                                 f"token id + 1 ({d.max_id + 1}): use a model with a larger vocab_size or the "
                                 "tokenizer the data was prepared with")
            if len(d) < config.seq_len + 1:
                raise ValueError(f"{what} has {len(d)} tokens, fewer than TrainConfig.seq_len + 1 "
                                 f"({config.seq_len + 1})")
        self.tokenizer = tokenizer
        self.tokenizer_ref = tokenizer_ref
        self.progress = (sys.stderr.isatty() if progress is None else bool(progress)) and self.rank == 0
        self.loader = DataLoader(self.train_data, config.batch_size, config.seq_len, seed=config.seed)
        self._zero = self.world_size > 1 and config.zero1
        if self._zero:
            if not hasattr(comm, "reduce_scatter_sum"):
                raise ValueError(f"TrainConfig.zero1 needs the MPI communicator, got {type(comm).__name__}")
            self.optimizer = ShardedAdamW(model, comm, lr=config.lr, betas=config.betas, eps=config.eps,
                                          weight_decay=config.weight_decay, decay_embeddings=config.decay_embeddings)
        else:
            self.optimizer = AdamW(model, lr=config.lr, betas=config.betas, eps=config.eps,
                                   weight_decay=config.weight_decay, decay_embeddings=config.decay_embeddings)
        self.step = 0  # completed optimizer steps
        self.tokens_seen = 0
        self.last_metrics: Dict[str, Any] = {}
        self.last_checkpoint: Optional[str] = None
        self._stop = False  # the loop stops (every rank agrees on it)
        self._stop_request = False  # Ctrl-C seen by this process
        # how a step's gradients are synchronised and clipped, chosen once
        if self._zero:
            self._sync = _ZeroSync()
        elif self._nccl:
            self._sync = _NCCLAllReduceSync()
        elif self.world_size > 1:
            self._sync = _MPIAllReduceSync()
        else:
            self._sync = _LocalSync()
        self._flops_per_token = self._compute_flops_per_token()
        self._peak = _peak_flops(config.device, config.dtype)
        if self.world_size > 1 or self._nccl:
            self._small = np.zeros(4, np.float64)  # loss, stop votes, step, step² (all-reduced with the grads)
        if self.world_size > 1:
            self._peak *= self.world_size
            _cap_threads(comm)
            self.check_ranks("start-up check")

    # ------------------------------------------------------------------ ranks
    def _before_checkpoint(self) -> None:
        """Every rank: check the ranks agree; with ZeRO-1, gather the moments on rank 0."""
        self.check_ranks("checkpoint check")
        if self._zero:
            self.optimizer.gather_moments(step=self.step)

    def check_ranks(self, what: str = "consistency check") -> None:
        """Data parallel: all-gather fingerprints of the configs, the data, the
        step, the data position and the weights, and raise
        :class:`pyllama.distributed.DistributedError` naming whatever differs
        between ranks. A no-op on one rank. Every rank must call it."""
        if self.world_size == 1:
            return
        from ._version import __version__

        items = {
            "pyllama version": __version__,
            "TrainConfig": self.config.to_dict(),
            "LlamaConfig": self.model.config.to_dict(),
            "training data": self.train_data.fingerprint(),
            "validation data": self.val_data.fingerprint() if self.val_data is not None else None,
            "step": [self.step, self.optimizer.step_count, self.tokens_seen],
            "data position": self.loader.state_dict(),
            "weights": _dist.fingerprint(self.model.flat_params()),
        }
        _dist.check_consistent(self.comm, items, what=what, step=self.step)

    # ------------------------------------------------------------------ one step
    def _compute_flops_per_token(self) -> float:
        fn = getattr(self.model, "flops_per_token", None)
        if fn is not None:
            return float(fn(self.config.seq_len))
        c = self.model.config
        return 6.0 * self.model.num_parameters() + 12.0 * c.num_hidden_layers * c.hidden_size * self.config.seq_len

    def lr_at(self, step: int) -> float:
        """The learning rate of step ``step`` (0-based)."""
        c = self.config
        return cosine_lr(step, c.lr, c.warmup_steps, c.max_steps, c.min_lr_ratio)

    def train_step(self) -> Dict[str, Any]:
        """One optimizer step; returns its metrics (loss is the mean over micro-batches).

        Micro-batches (forward + backward) -> sync -> clip -> optimizer step; how the
        gradients are synchronised and clipped was chosen in ``__init__`` (``self._sync``)."""
        c = self.config
        t0 = time.perf_counter()
        lr = self.lr_at(self.step)
        self.model.zero_grad()
        loss_sum = 0.0
        A, W = c.grad_accum_steps, self.world_size
        sync = self._sync
        sync.begin(self)
        # The step's W*A micro-batches come from one stream that every rank draws;
        # rank r runs micro-batches r*A .. r*A+A-1 and skips the others.
        for j in range(W * A):
            if j // A != self.rank:
                self.loader.skip_batch()
                continue
            window = self.loader.next_batch()
            ids = np.ascontiguousarray(window[:, :c.seq_len])
            # the whole window of seq_len + 1 tokens as labels: the model shifts them, so
            # every one of the seq_len positions has a target (the last one too)
            try:
                out = self.model(ids, labels=window, return_logits=False)
                self.model.backward(1.0 / A)
            except BaseException:
                sync.abort(self)
                raise
            loss_sum += out.loss
        loss, norm, comm_s = sync.sync_and_clip(self, loss_sum / A)
        if not (math.isfinite(loss) and math.isfinite(norm)):
            raise FloatingPointError(f"step {self.step + 1}: loss={loss} grad_norm={norm} is not finite; "
                                     f"lower TrainConfig.lr (now {c.lr}) or check the data")
        self.optimizer.step(lr=lr)
        comm_s = sync.after_step(self, comm_s)
        self.step += 1
        tokens = c.batch_size * c.seq_len * c.grad_accum_steps * W
        self.tokens_seen += tokens
        dt = time.perf_counter() - t0
        tps = tokens / dt if dt > 0 else float("inf")
        m = {"step": self.step, "loss": loss, "lr": lr, "grad_norm": norm, "tokens_per_s": tps,
             "mfu": self._flops_per_token * tps / self._peak, "tokens": self.tokens_seen}
        if comm_s is not None:
            m["world_size"] = W
            m["comm_s"] = comm_s
        return m

    def _fill_small(self, local_loss: float) -> None:
        self._small[:] = (local_loss, 1.0 if self._stop_request else 0.0, float(self.step), float(self.step) ** 2)

    def _read_small(self) -> float:
        """After the sum over ranks: check the steps agree, take the Ctrl-C votes; the mean loss."""
        W, small = self.world_size, self._small
        if small[2] != W * self.step or small[3] != W * float(self.step) ** 2:
            raise _dist.DistributedError(f"rank {self.rank}: gradient all-reduce at step {self.step + 1}: the ranks "
                                         "are at different steps (they were started from different checkpoints or "
                                         "one skipped a step)")
        if small[1] > 0:
            self._stop = True  # some rank saw Ctrl-C: every rank stops after this step
        return float(small[0] / W)

    def evaluate(self, eval_steps: Optional[int] = None) -> float:
        """Mean loss over the first ``eval_steps`` batches of the validation data
        (the same batches every time, so evaluations compare)."""
        if self.val_data is None:
            raise ValueError("Trainer has no val_data to evaluate on")
        c = self.config
        loader = DataLoader(self.val_data, c.batch_size, c.seq_len, mode="sequential")
        total = 0.0
        n = eval_steps or c.eval_steps
        for _ in range(n):
            window = loader.next_batch()
            ids = np.ascontiguousarray(window[:, :c.seq_len])
            total += self.model(ids, labels=window, return_logits=False).loss
        return total / n

    # ------------------------------------------------------------------ the loop
    def _on_sigint(self, signum, frame) -> None:
        if self._stop_request:  # second Ctrl-C: stop now, without a checkpoint
            raise KeyboardInterrupt
        self._stop_request = True
        if self.world_size == 1:  # data parallel: the ranks agree on stopping in the next all-reduce
            self._stop = True
        print("\ninterrupt: finishing this step, then saving a checkpoint (Ctrl-C again to abort)",
              file=sys.stderr, flush=True)

    def _log(self, metrics: Dict[str, Any]) -> None:
        self.last_metrics = metrics
        if self.config.out_dir is None or self.rank != 0:
            return
        os.makedirs(self.config.out_dir, exist_ok=True)
        with open(os.path.join(self.config.out_dir, METRICS_FILE), "a", encoding="utf-8") as f:
            f.write(json.dumps(metrics) + "\n")

    def train(self, steps: Optional[int] = None) -> Dict[str, Any]:
        """Train until ``max_steps`` (or for at most ``steps`` more steps), then
        save a checkpoint (when ``out_dir`` is set) and plot the loss curve.
        Ctrl-C finishes the current step, saves a checkpoint and returns.
        Returns ``{"step", "loss", "val_loss", "checkpoint", "interrupted", "seconds"}``.

        Data parallel: every rank calls it; rank 0 evaluates (``val_loss`` is
        None on the others), logs and checkpoints, and all ranks return after
        the last checkpoint is written. An exception on one rank makes the job
        abort (``MPI_Abort``) when that process exits, so the others cannot hang."""
        try:
            return self._train(steps)
        except BaseException as e:
            if self.world_size > 1:
                mark = getattr(self.comm, "mark_failed", None)
                if mark is not None:
                    mark(f"{type(e).__name__} during training at step {self.step}: {e}")
            raise

    def _train(self, steps: Optional[int]) -> Dict[str, Any]:
        c = self.config
        main = self.rank == 0
        end = c.max_steps if steps is None else min(c.max_steps, self.step + int(steps))
        self._stop = False
        self._stop_request = False
        if c.out_dir is not None and main:
            clean_run_dir(c.out_dir)  # leftovers of an earlier process killed while saving
        self._truncate_metrics()  # metrics.jsonl holds this run's history only
        handler_installed = False
        if threading.current_thread() is threading.main_thread():
            prev = signal.signal(signal.SIGINT, self._on_sigint)
            handler_installed = True
        bar = None
        if self.progress:
            from tqdm import tqdm

            bar = tqdm(total=c.max_steps, initial=self.step, unit="step", dynamic_ncols=True)
        t_start = time.perf_counter()
        val_loss = None
        saved_at = None
        try:
            while self.step < end and not self._stop:
                m = self.train_step()
                if _after_step_hook is not None:
                    _after_step_hook(self)
                last = self.step == c.max_steps
                if main and self.val_data is not None and c.eval_interval > 0 and (self.step % c.eval_interval == 0 or last):
                    val_loss = self.evaluate()
                    m["val_loss"] = val_loss
                self._log(m)
                if bar is not None:
                    post = {"loss": f"{m['loss']:.4f}", "lr": f"{m['lr']:.2e}", "tok/s": f"{m['tokens_per_s']:.0f}"}
                    if "val_loss" in m:
                        post["val"] = f"{m['val_loss']:.4f}"
                    bar.set_postfix(post, refresh=False)
                    bar.update(1)
                if c.out_dir is not None and c.checkpoint_interval > 0 and self.step % c.checkpoint_interval == 0:
                    self._before_checkpoint()
                    self.save_checkpoint()
                    saved_at = self.step
        finally:
            if bar is not None:
                bar.close()
            if handler_installed:
                signal.signal(signal.SIGINT, prev)
        if c.out_dir is not None and saved_at != self.step and self.step > 0:
            self._before_checkpoint()
            self.save_checkpoint()
        if c.out_dir is not None and main:
            try:
                plot_metrics(os.path.join(c.out_dir, METRICS_FILE), os.path.join(c.out_dir, "loss.png"))
            except ImportError:
                pass
        self.comm.barrier(what="end-of-training barrier", step=self.step)
        return {"step": self.step, "loss": self.last_metrics.get("loss"), "val_loss": val_loss,
                "checkpoint": self.last_checkpoint, "interrupted": self._stop,
                "seconds": time.perf_counter() - t_start}

    # ------------------------------------------------------------------ checkpoints
    def state(self) -> Dict[str, Any]:
        """What ``trainer_state.json`` holds."""
        from ._version import __version__

        return {
            "format": STATE_FORMAT,
            "version": STATE_VERSION,
            "pyllama_version": __version__,
            "step": self.step,
            "tokens_seen": self.tokens_seen,
            "data": self.loader.state_dict(),  # position and RNG state of the training batches
            "optimizer": {"file": OPTIMIZER_FILE, "step": self.optimizer.step_count},
            "world_size": self.world_size,  # ranks that trained it (the data stream is global: any count resumes)
            "train_config": self.config.to_dict(),
            "model_config": self.model.config.to_dict(),
            "tokenizer": self.tokenizer_ref if self.tokenizer_ref is not None else
            (TOKENIZER_FILE if self.tokenizer is not None else None),
            "train_data": self.train_data.describe(),
            "val_data": self.val_data.describe() if self.val_data is not None else None,
            "metrics": self.last_metrics,
        }

    def save_checkpoint(self, path: Optional[str] = None) -> str:
        """Write a checkpoint of this step: Hugging Face model files,
        ``optimizer.safetensors``, ``trainer_state.json``, the tokenizer and
        ``manifest.json`` (every file's size and SHA-256). Returns the folder.

        Into the run folder (``path`` None, or a ``step-N`` name inside ``out_dir``):
        leftovers of interrupted saves are removed first (:func:`clean_run_dir`); the
        folder is built as ``.tmp-step-N-*``, fsynced and renamed, complete, to
        ``step-N`` (``step-N.K`` when ``step-N`` exists already: a published folder is
        never renamed over), then ``latest`` is replaced atomically to point at it, then
        all but the last ``keep_last`` steps are pruned. A crash at any point leaves
        ``latest`` on a complete checkpoint (docs/TRAINING.md, "Checkpoint lifecycle").

        Any other ``path``: built the same way; an existing folder there is renamed aside,
        the new one renamed in, the old one deleted.

        Data parallel: only rank 0 writes; the other ranks return the path
        without writing (every rank holds the same weights and moments).
        """
        c = self.config
        if path is None:
            if c.out_dir is None:
                raise ValueError("TrainConfig.out_dir is None: pass a path to save_checkpoint")
            path = os.path.join(c.out_dir, f"step-{self.step}")
        path = os.path.abspath(os.fspath(path))
        parent, base = os.path.split(path)
        in_run = (c.out_dir is not None and os.path.abspath(c.out_dir) == parent
                  and _STEP_DIR.match(base) is not None)
        if self.rank != 0:
            self.last_checkpoint = path
            return path
        os.makedirs(parent, exist_ok=True)
        if in_run:
            clean_run_dir(parent)
            base = f"step-{self.step}"
        tmp = tempfile.mkdtemp(prefix=f".tmp-{base}-", dir=parent)
        try:
            self._write_checkpoint_files(tmp)
            _write_manifest(tmp)  # last: a folder with a manifest is complete
            _make_readable(tmp)
            _fsync_tree(tmp)
            if in_run:
                path = os.path.join(parent, _free_step_name(parent, self.step))
                os.rename(tmp, path)  # complete, under its final name, in one step
            elif os.path.lexists(path):
                trash = tempfile.mkdtemp(prefix=f".trash-{base}-", dir=parent)
                os.rmdir(trash)  # only the unique name is wanted
                os.rename(path, trash)
                os.rename(tmp, path)
                shutil.rmtree(trash, ignore_errors=True)
            else:
                os.rename(tmp, path)
            _fsync_dir(parent)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        self.last_checkpoint = path
        if in_run:
            _point_latest(parent, os.path.basename(path))
            self._prune(parent)
        return path

    def _write_checkpoint_files(self, folder: str) -> None:
        """The files of a checkpoint (all but the manifest), into ``folder``."""
        from safetensors.numpy import save_file

        self.model.save_pretrained(folder)
        sd = self.optimizer.state_dict()
        tensors = {}
        for key in ("exp_avg", "exp_avg_sq"):
            for name, a in sd[key].items():
                tensors[f"{key}.{name}"] = np.ascontiguousarray(a)
        save_file(tensors, os.path.join(folder, OPTIMIZER_FILE),
                  metadata={"format": "pyllama.adamw", "step": str(sd["step"]), "hyper": json.dumps(sd["hyper"])})
        if self.tokenizer is not None:
            save_tokenizer(self.tokenizer, folder)
        with open(os.path.join(folder, STATE_FILE), "w", encoding="utf-8") as f:
            json.dump(self.state(), f, indent=2)
            f.write("\n")

    def _prune(self, run_dir: str) -> None:
        """Delete older saves of the newest step (``step-N`` once ``step-N.1`` holds it) and
        all but the newest ``keep_last`` steps (``keep_last = 0`` keeps every step). Each
        folder is first renamed to ``.trash-step-...`` (atomic: it is whole or gone under its
        published name), then deleted; never the checkpoint ``latest`` points at."""
        k = self.config.keep_last
        steps = _step_dirs(run_dir)
        keep = {os.path.realpath(self.last_checkpoint)} if self.last_checkpoint else set()
        newest: Dict[int, str] = {}
        for n, p in steps:
            newest[n] = p  # _step_dirs sorts the re-saves of a step after it
        kept_steps = sorted(newest)[-k:] if k > 0 else sorted(newest)
        keep.update(os.path.realpath(newest[n]) for n in kept_steps)
        latest = os.path.join(run_dir, "latest")
        if os.path.islink(latest):
            keep.add(os.path.realpath(latest))
        for n, p in steps:
            if os.path.realpath(p) in keep:
                continue
            trash = tempfile.mkdtemp(prefix=f".trash-{os.path.basename(p)}-", dir=run_dir)
            os.rmdir(trash)
            os.rename(p, trash)
            shutil.rmtree(trash, ignore_errors=True)

    def resume(self, path) -> str:
        """Continue from a checkpoint (``step-N`` folder, ``latest`` or run folder):
        loads the weights, optimizer moments, step, tokens seen and the data
        position/RNG, so the following steps equal an uninterrupted run's.
        Returns the checkpoint folder used.

        All or nothing: the files are checked against the checkpoint's manifest, and
        every piece (weights, both moments of every parameter, the state's fields and
        their types, the data position and RNG state) is read and checked before this
        trainer changes; an error (a ``ValueError`` naming the file or field) leaves it
        as it was. A checkpoint without a manifest (older pyllama) gives a warning."""
        ckpt = resolve_checkpoint(path)
        verify_checkpoint(ckpt)
        state = load_trainer_state(ckpt)
        # the model must have the checkpoint's shape
        from .config import LlamaConfig

        try:
            saved_cfg = LlamaConfig.from_dict(state["model_config"])
        except (TypeError, ValueError) as e:
            raise ValueError(f"checkpoint {ckpt!r} is corrupt: bad model_config ({e})") from None
        mine = self.model.config
        diff = [f.name for f in dataclasses.fields(LlamaConfig)
                if f.name not in ("bos_token_id", "eos_token_id") and getattr(saved_cfg, f.name) != getattr(mine, f.name)]
        if diff:
            raise ValueError(f"checkpoint {ckpt!r} was trained with a different model: LlamaConfig "
                             + ", ".join(f"{n}={getattr(saved_cfg, n)!r} (this model: {getattr(mine, n)!r})" for n in diff))
        saved_tc = state["train_config"]
        for name in ("batch_size", "seq_len", "seed"):
            if saved_tc.get(name) != getattr(self.config, name):
                raise ValueError(f"cannot resume exactly: checkpoint has TrainConfig.{name}={saved_tc.get(name)!r}, "
                                 f"this trainer has {getattr(self.config, name)!r}")
        # The data stream is global: any number of ranks resumes exactly when the
        # micro-batches per step (ranks × grad_accum_steps) stay the same.
        saved_w = int(state.get("world_size", 1))
        saved_a = saved_tc.get("grad_accum_steps")
        if not isinstance(saved_a, int) or saved_a * saved_w != self.config.grad_accum_steps * self.world_size:
            if saved_w == 1 and self.world_size == 1:
                raise ValueError(f"cannot resume exactly: checkpoint has TrainConfig.grad_accum_steps={saved_a!r}, "
                                 f"this trainer has {self.config.grad_accum_steps!r}")
            total = saved_a * saved_w if isinstance(saved_a, int) else None
            hint = (f"; use grad_accum_steps={total // self.world_size}" if total and total % self.world_size == 0
                    else "")
            raise ValueError(f"cannot resume exactly: checkpoint {ckpt!r} ran {saved_w} rank(s) x grad_accum_steps="
                             f"{saved_a} micro-batches per step, this run has {self.world_size} rank(s) x "
                             f"grad_accum_steps={self.config.grad_accum_steps}{hint}")
        # weights: every parameter, its shape, a float type
        weights = _load_safetensors(os.path.join(ckpt, "model.safetensors"), "model weights")
        named = self.model.named_parameters()
        for name, view in named.items():
            if name not in weights:
                raise ValueError(f"checkpoint {ckpt!r} is corrupt: model.safetensors lacks {name!r}")
            if weights[name].shape != view.shape:
                raise ValueError(f"checkpoint {ckpt!r}: {name!r} has shape {weights[name].shape}, "
                                 f"expected {view.shape}")
            if weights[name].dtype.kind != "f":
                raise ValueError(f"checkpoint {ckpt!r}: {name!r} has dtype {weights[name].dtype}, expected floats")
        # optimizer moments: both moments of every parameter, float32, the parameter's shape
        moments = _load_safetensors(os.path.join(ckpt, OPTIMIZER_FILE), "optimizer moments")
        opt_state = {"step": int(state.get("optimizer", {}).get("step", state["step"])), "exp_avg": {}, "exp_avg_sq": {}}
        for kind in ("exp_avg", "exp_avg_sq"):
            for name, view in named.items():
                a = moments.get(f"{kind}.{name}")
                if a is None:
                    raise ValueError(f"checkpoint {ckpt!r} is corrupt: {OPTIMIZER_FILE} lacks {kind}.{name}")
                if a.shape != view.shape or a.dtype != np.float32:
                    raise ValueError(f"checkpoint {ckpt!r} is corrupt: {OPTIMIZER_FILE} has {kind}.{name} of shape "
                                     f"{a.shape} {a.dtype}, expected {view.shape} float32")
                opt_state[kind][name] = a
        # data position and RNG: restored into a new loader, which replaces ours below
        loader = DataLoader(self.train_data, self.config.batch_size, self.config.seq_len, seed=self.config.seed)
        try:
            loader.load_state_dict(state["data"])
            d = state["data"]
            if not all(isinstance(d.get(k), int) and not isinstance(d.get(k), bool) and d[k] >= 0
                       for k in ("pos", "batches")):
                raise ValueError(f"pos={d.get('pos')!r}, batches={d.get('batches')!r} must be ints >= 0")
            loader.rng.bit_generator.random_raw()  # a state numpy accepted but cannot run raises here
            loader.rng.bit_generator.state = d["rng"]
        except Exception as e:  # numpy raises several types for a bad generator state
            raise ValueError(f"checkpoint {ckpt!r} is corrupt: {STATE_FILE} has a bad data position or RNG "
                             f"state ({type(e).__name__}: {e})") from None
        # everything read and checked: now change this trainer
        flat = np.empty(self.model.num_parameters(), np.float32)
        for name, o, n, _ in self.model.param_segments():
            flat[o:o + n] = weights[name].reshape(-1)
        self.model.load_flat_params(flat)
        self.optimizer.load_state_dict(opt_state)
        self.loader = loader
        self.step = state["step"]
        self.tokens_seen = state["tokens_seen"]
        self.last_metrics = dict(state.get("metrics") or {})
        self.last_checkpoint = os.path.abspath(ckpt)
        self._truncate_metrics()
        self.check_ranks("resume check")
        return ckpt

    def _truncate_metrics(self) -> None:
        """Drop metric lines past the resumed step (from a run that went on after its last checkpoint)."""
        if self.config.out_dir is None or self.rank != 0:
            return
        p = os.path.join(self.config.out_dir, METRICS_FILE)
        if not os.path.isfile(p):
            return
        keep = []
        with open(p, encoding="utf-8") as f:
            for line in f:
                try:
                    if json.loads(line).get("step", 0) <= self.step:
                        keep.append(line if line.endswith("\n") else line + "\n")
                except json.JSONDecodeError:
                    continue
        atomic_write_text(p, "".join(keep))


def _point_latest(run_dir: str, target: str) -> None:
    """Make ``run_dir/latest`` a relative symlink to ``target``, replacing the old one
    atomically (a new link under a temporary name, then ``os.replace``): a reader sees
    the old target or the new one, never none. Where symlinks fail, a text file naming
    the target, also replaced atomically."""
    link = os.path.join(run_dir, "latest")
    tmp = os.path.join(run_dir, f".tmp-latest-{os.getpid()}")
    try:
        if os.path.lexists(tmp):
            os.unlink(tmp)
        os.symlink(target, tmp, target_is_directory=True)
    except OSError:  # no symlinks here (some file systems, Windows without the privilege)
        atomic_write_text(link, target + "\n")
        _fsync_dir(run_dir)
        return
    if os.path.isdir(link) and not os.path.islink(link):  # a real folder named latest: not ours to keep
        shutil.rmtree(link)
    os.replace(tmp, link)
    _fsync_dir(run_dir)


# ---------------------------------------------------------------------- plot

def read_metrics(path) -> List[Dict[str, Any]]:
    out = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            line = line.strip()
            if line:
                out.append(json.loads(line))
    return out


def plot_metrics(metrics_path, png_path) -> str:
    """Plot training (and validation) loss against step into a PNG. Needs matplotlib
    (``ImportError`` otherwise)."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    rows = read_metrics(metrics_path)
    fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
    ax.plot([r["step"] for r in rows], [r["loss"] for r in rows], lw=1, label="train loss")
    ev = [r for r in rows if "val_loss" in r]
    if ev:
        ax.plot([r["step"] for r in ev], [r["val_loss"] for r in ev], "o-", ms=3, label="validation loss")
    ax.set_xlabel("step")
    ax.set_ylabel("cross-entropy (nats/token)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    from ._io import atomic_write

    def write(tmp: str) -> None:
        fig.savefig(tmp, format="png")
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)

    atomic_write(png_path, write)
    plt.close(fig)
    return os.fspath(png_path)
