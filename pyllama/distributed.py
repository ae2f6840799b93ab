"""Data-parallel training over several processes: the communicator.

A :class:`Communicator` is what :class:`pyllama.Trainer` talks to when it runs
on several ranks. It has a ``rank``, a ``world_size`` and four collectives:

* :meth:`Communicator.allreduce_mean_` / :meth:`Communicator.allreduce_sum_`:
  in place, over one flat numpy array (the trainer passes ``model.flat_grads()``,
  a view of the core's gradient buffer: one all-reduce per step, no copies);
* :meth:`Communicator.broadcast` (a picklable object from ``root``);
* :meth:`Communicator.barrier`;
* :meth:`Communicator.allgather_object` (for consistency checks).

Backends:

``SingleProcess``
    world size 1; every collective is a no-op. What a plain ``python`` run gets.
``MPICommunicator``
    CPUs, through ``mpi4py`` (``pip install pyllama[dist]`` brings ``mpi4py`` and
    the ``mpich`` wheel; Open MPI or a system MPI work too). Launch with
    ``mpiexec -n N pyllama train ...``. Every collective is non-blocking
    (``Iallreduce``, ``Ibcast``, ...) and polled against a deadline
    (``timeout_s``): a rank that died or hangs makes the others raise
    :class:`DistributedError` naming the operation and the step instead of
    waiting for ever, and :meth:`MPICommunicator.abort` (``MPI_Abort``) is
    called at interpreter exit when a collective failed, after the error was
    printed, so that ``MPI_Finalize`` cannot hang.
``nccl``
    GPUs: **not implemented**. It needs a collective in the CUDA core over the
    device gradient buffer; :func:`bootstrap_from_env` parses the launcher's
    variables (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``,
    ``MASTER_PORT``, as torchrun sets them) that the NCCL backend will use.
    :func:`init` raises ``NotImplementedError`` for it with what is missing
    (docs/DISTRIBUTED.md).

>>> comm = init()            # a plain python process: the single-process backend
>>> comm.rank, comm.world_size
(0, 1)
>>> import numpy as np
>>> g = np.ones(4, np.float32)
>>> comm.allreduce_mean_(g) is g
True
"""
from __future__ import annotations

import atexit
import hashlib
import os
import pickle
import sys
import time
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence

import numpy as np

__all__ = ["Communicator", "SingleProcess", "MPICommunicator", "DistributedError", "Bootstrap", "ShardedAdamW",
           "init", "launched_world_size", "bootstrap_from_env", "default_threads_per_rank",
           "fingerprint", "check_consistent", "DEFAULT_TIMEOUT_S"]

DEFAULT_TIMEOUT_S = 300.0

# Environment variables that MPI launchers set in every rank: (size variable, rank variable).
_MPI_ENV = (("PMI_SIZE", "PMI_RANK"),  # MPICH / Hydra, Intel MPI
            ("OMPI_COMM_WORLD_SIZE", "OMPI_COMM_WORLD_RANK"),  # Open MPI
            ("PMIX_SIZE", "PMIX_RANK"),  # PMIx launchers
            ("MV2_COMM_WORLD_SIZE", "MV2_COMM_WORLD_RANK"),  # MVAPICH
            ("SLURM_NTASKS", "SLURM_PROCID"))  # srun --mpi=...


class DistributedError(RuntimeError):
    """A collective failed or timed out, or the ranks disagree (configs, data, step)."""


class Communicator:
    """The interface the trainer uses; subclasses implement the collectives.

    ``step`` (optional, on every collective) only labels error messages
    ("rank 0: all-reduce of the gradients at step 12 timed out ...").
    """

    backend = "none"
    rank = 0
    world_size = 1
    local_rank = 0
    local_size = 1

    @property
    def is_main(self) -> bool:
        """True on rank 0: the rank that logs, evaluates and writes checkpoints."""
        return self.rank == 0

    def allreduce_sum_(self, buf: np.ndarray, *, what: str = "all-reduce", step: Optional[int] = None) -> np.ndarray:
        """Sum ``buf`` (a contiguous 1-D numpy array) over all ranks, in place; returns ``buf``."""
        raise NotImplementedError

    def allreduce_mean_(self, buf: np.ndarray, *, what: str = "all-reduce", step: Optional[int] = None) -> np.ndarray:
        """Average ``buf`` over all ranks, in place (sum, then scale by 1/world_size); returns ``buf``."""
        self.allreduce_sum_(buf, what=what, step=step)
        if self.world_size > 1:
            buf *= buf.dtype.type(1.0 / self.world_size)
        return buf

    def allreduce_many_sum_(self, bufs: Sequence[np.ndarray], *, what: str = "all-reduce",
                            step: Optional[int] = None) -> None:
        """Sum several arrays at once (their collectives overlap); in place."""
        for b in bufs:
            self.allreduce_sum_(b, what=what, step=step)

    def broadcast(self, obj: Any = None, root: int = 0, *, what: str = "broadcast", step: Optional[int] = None) -> Any:
        """``root``'s ``obj`` (picklable), returned on every rank."""
        raise NotImplementedError

    def barrier(self, *, what: str = "barrier", step: Optional[int] = None,
                timeout_s: Optional[float] = None) -> None:
        """Wait until every rank is here (``timeout_s`` overrides the communicator's deadline)."""
        raise NotImplementedError

    def allgather_object(self, obj: Any, *, what: str = "all-gather", step: Optional[int] = None) -> List[Any]:
        """Every rank's ``obj`` (picklable), as a list indexed by rank, on every rank."""
        raise NotImplementedError

    def abort(self, code: int = 1) -> None:
        """End every rank now (last resort)."""
        os._exit(code)

    def mark_failed(self, reason: str) -> None:
        """Record that this rank left the collective sequence (an exception):
        the other ranks would wait for it, so the job is aborted when this
        process exits. A no-op on one process."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}(rank={self.rank}, world_size={self.world_size})"


class SingleProcess(Communicator):
    """World size 1: every collective returns its input."""

    backend = "single"

    def allreduce_sum_(self, buf, *, what="all-reduce", step=None):
        return buf

    def broadcast(self, obj=None, root=0, *, what="broadcast", step=None):
        if root != 0:
            raise ValueError(f"broadcast root {root} does not exist: world_size is 1")
        return obj

    def barrier(self, *, what="barrier", step=None, timeout_s=None):
        return None

    def allgather_object(self, obj, *, what="all-gather", step=None):
        return [obj]


def _load_mpi():
    """``mpi4py.MPI``, or an ImportError that says how to install it."""
    try:
        from mpi4py import MPI  # noqa: WPS433
    except ImportError as e:
        raise ImportError("the MPI backend needs mpi4py: pip install 'pyllama[dist]' (mpi4py and the mpich wheel) "
                          f"or pip install mpi4py against your MPI ({e})") from None
    return MPI


class MPICommunicator(Communicator):
    """Collectives through ``mpi4py`` over ``comm`` (default ``MPI.COMM_WORLD``).

    Each collective is started non-blocking and polled (``Test``) until done or
    until ``timeout_s`` seconds have passed; then it raises
    :class:`DistributedError` and marks the communicator broken, and an
    ``atexit`` hook calls ``MPI_Abort`` (the pending request cannot be cancelled,
    and ``MPI_Finalize`` could wait for it for ever). ``timeout_s=None`` or ``0``
    uses blocking collectives without a deadline.
    """

    backend = "mpi"

    def __init__(self, comm=None, timeout_s: Optional[float] = DEFAULT_TIMEOUT_S) -> None:
        MPI = _load_mpi()
        self.MPI = MPI
        self.comm = MPI.COMM_WORLD if comm is None else comm
        self.rank = self.comm.Get_rank()
        self.world_size = self.comm.Get_size()
        self.timeout_s = float(timeout_s) if timeout_s else None
        try:
            node = self.comm.Split_type(MPI.COMM_TYPE_SHARED, key=self.rank)
            self.local_rank, self.local_size = node.Get_rank(), node.Get_size()
            node.Free()
        except (AttributeError, NotImplementedError, MPI.Exception):
            self.local_rank, self.local_size = 0, 1
        self.broken: Optional[str] = None
        self.comm_seconds = 0.0  # wall time spent in collectives (waiting included)
        atexit.register(self._abort_if_broken)

    # -------------------------------------------------------------- waiting
    def _wait(self, reqs, what: str, step: Optional[int], timeout_s: Optional[float] = None) -> None:
        """Poll ``reqs`` until all are complete or the deadline passes."""
        t0 = time.perf_counter()
        timeout = self.timeout_s if timeout_s is None else timeout_s
        try:
            if timeout is None:
                self.MPI.Request.Waitall(reqs)
                return
            deadline = t0 + timeout
            spins = 0
            while not self.MPI.Request.Testall(reqs):
                spins += 1
                if spins > 200:  # after a short busy poll, yield the core: ranks share CPUs
                    if time.perf_counter() > deadline:
                        self._fail(what, step, f"did not complete within {timeout:g} s "
                                               "(TrainConfig.dist_timeout_s): another rank died, hangs or is "
                                               "much slower")
                    time.sleep(0.0002 if spins < 5000 else 0.002)
        except self.MPI.Exception as e:
            self._fail(what, step, f"failed: {e}")
        finally:
            self.comm_seconds += time.perf_counter() - t0

    def _fail(self, what: str, step: Optional[int], why: str):
        at = f" at step {step}" if step is not None else ""
        msg = (f"rank {self.rank}/{self.world_size}: {what}{at} {why}; "
               "the job will be aborted (MPI_Abort) when this process exits")
        self.broken = msg
        print(f"pyllama.distributed: {msg}", file=sys.stderr, flush=True)
        raise DistributedError(msg)

    def _check(self, what: str) -> None:
        if self.broken is not None:
            raise DistributedError(f"rank {self.rank}: {what} after an earlier collective failed "
                                   f"({self.broken})")

    def _abort_if_broken(self) -> None:
        if self.broken is not None:
            try:
                sys.stderr.flush()
                sys.stdout.flush()
            finally:
                self.abort(1)

    # -------------------------------------------------------------- collectives
    def allreduce_sum_(self, buf, *, what="all-reduce", step=None):
        self.allreduce_many_sum_([buf], what=what, step=step)
        return buf

    def allreduce_many_sum_(self, bufs, *, what="all-reduce", step=None):
        self._check(what)
        for b in bufs:
            if not (isinstance(b, np.ndarray) and b.ndim == 1 and b.flags.c_contiguous and b.flags.writeable):
                raise TypeError(f"{what}: expected a writable contiguous 1-D numpy array")
        if self.world_size == 1:
            return
        reqs = [self.comm.Iallreduce(self.MPI.IN_PLACE, b, op=self.MPI.SUM) for b in bufs]
        self._wait(reqs, what, step)

    def barrier(self, *, what="barrier", step=None, timeout_s=None):
        self._check(what)
        if self.world_size > 1:
            self._wait([self.comm.Ibarrier()], what, step, timeout_s)

    def broadcast(self, obj=None, root=0, *, what="broadcast", step=None):
        self._check(what)
        if not 0 <= root < self.world_size:
            raise ValueError(f"broadcast root {root} does not exist: world_size is {self.world_size}")
        if self.world_size == 1:
            return obj
        data = pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL) if self.rank == root else b""
        n = np.array([len(data)], np.int64)
        self._wait([self.comm.Ibcast(n, root=root)], what, step)
        buf = np.frombuffer(data, np.uint8).copy() if self.rank == root else np.empty(int(n[0]), np.uint8)
        self._wait([self.comm.Ibcast(buf, root=root)], what, step)
        return obj if self.rank == root else pickle.loads(buf.tobytes())

    def allgather_object(self, obj, *, what="all-gather", step=None):
        self._check(what)
        if self.world_size == 1:
            return [obj]
        data = np.frombuffer(pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL), np.uint8).copy()
        sizes = np.zeros(self.world_size, np.int64)
        self._wait([self.comm.Iallgather(np.array([data.size], np.int64), sizes)], what, step)
        out = np.empty(int(sizes.sum()), np.uint8)
        displs = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int64)
        self._wait([self.comm.Iallgatherv(data, [out, sizes.tolist(), displs.tolist(), self.MPI.BYTE])], what, step)
        return [pickle.loads(out[d:d + s].tobytes()) for d, s in zip(displs.tolist(), sizes.tolist())]

    def mark_failed(self, reason: str) -> None:
        if self.broken is None and self.world_size > 1:
            self.broken = reason

    # -------------------------------------------------------------- sharded (ZeRO-1) collectives
    def reduce_scatter_sum(self, full: np.ndarray, shard: np.ndarray, counts: Sequence[int], *,
                           also_sum: Sequence[np.ndarray] = (), what: str = "reduce-scatter",
                           step: Optional[int] = None) -> None:
        """``shard`` = this rank's block (``counts[rank]`` elements) of the sum of
        ``full`` over the ranks; the small arrays in ``also_sum`` are summed in
        place at the same time."""
        self._check(what)
        reqs = [self.comm.Ireduce_scatter(full, shard, recvcounts=list(counts), op=self.MPI.SUM)]
        reqs += [self.comm.Iallreduce(self.MPI.IN_PLACE, b, op=self.MPI.SUM) for b in also_sum]
        self._wait(reqs, what, step)

    def allgather_inplace(self, full: np.ndarray, counts: Sequence[int], displs: Sequence[int], *,
                          what: str = "all-gather", step: Optional[int] = None) -> None:
        """Every rank's block ``full[displs[r]:displs[r]+counts[r]]`` copied to every rank, in place."""
        self._check(what)
        self._wait([self.comm.Iallgatherv(self.MPI.IN_PLACE, [full, list(counts), list(displs), self.MPI.FLOAT])],
                   what, step)

    def gather_to_root(self, shard: np.ndarray, full: Optional[np.ndarray], counts: Sequence[int],
                       displs: Sequence[int], *, root: int = 0, what: str = "gather", step: Optional[int] = None) -> None:
        """The ranks' blocks into ``full`` on ``root`` (``full`` is ignored elsewhere)."""
        self._check(what)
        recv = [full, list(counts), list(displs), self.MPI.FLOAT] if self.rank == root else None
        self._wait([self.comm.Igatherv(shard, recv, root=root)], what, step)

    def abort(self, code: int = 1) -> None:
        print(f"pyllama.distributed: rank {self.rank}: calling MPI_Abort({code})", file=sys.stderr, flush=True)
        self.comm.Abort(code)

    def __repr__(self) -> str:
        return (f"MPICommunicator(rank={self.rank}, world_size={self.world_size}, local_size={self.local_size}, "
                f"timeout_s={self.timeout_s})")


# ---------------------------------------------------------------------- ZeRO-1

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
        from .optim import _check_hyper, _flat, param_segments

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
        from . import _core

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
        from . import _core

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
                if name not in parts:
                    raise ValueError(f"optimizer state {key!r} lacks parameter {name!r}")
                arr = np.asarray(parts[name])
                if arr.shape != shape or arr.dtype != np.float32:
                    raise ValueError(f"optimizer state {key}[{name!r}] has shape {arr.shape} {arr.dtype}, "
                                     f"expected {shape} float32")
                shard[a - self.lo:b - self.lo] = arr.reshape(-1)[a - o:b - o]
        self.step_count = int(step)


# ---------------------------------------------------------------------- launch detection

def launched_world_size(environ=None) -> int:
    """The number of ranks the launcher says this job has (1 when not launched by one).

    Looks at the variables MPI launchers (MPICH/Hydra, Open MPI, PMIx, MVAPICH,
    Slurm) and torchrun (``WORLD_SIZE``) set.
    """
    env = os.environ if environ is None else environ
    for size_var, _ in _MPI_ENV:
        v = env.get(size_var)
        if v and v.strip().isdigit():
            return int(v)
    v = env.get("WORLD_SIZE")
    if v and v.strip().isdigit():
        return int(v)
    return 1


def _launched_by_mpi(environ=None) -> bool:
    env = os.environ if environ is None else environ
    return any(env.get(s) and env.get(s).strip().isdigit() and int(env[s]) > 1
               for s, _ in _MPI_ENV[:-1]) or (env.get("SLURM_NTASKS", "1") != "1" and "PMI_FD" in env)


@dataclass(frozen=True)
class Bootstrap:
    """Where this process sits in the job, as the launcher described it."""

    rank: int
    world_size: int
    local_rank: int
    master_addr: Optional[str]
    master_port: Optional[int]
    source: str  # "env" (torchrun-style variables) or "mpi"


def bootstrap_from_env(environ=None) -> Optional[Bootstrap]:
    """Parse torchrun-style variables: ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``,
    ``MASTER_ADDR``, ``MASTER_PORT``. None when ``WORLD_SIZE`` is unset.

    The NCCL backend will use them: rank 0 creates the NCCL unique id and
    serves it at ``MASTER_ADDR:MASTER_PORT`` (docs/DISTRIBUTED.md). Errors name
    the variable and what it must hold.

    >>> bootstrap_from_env({"RANK": "1", "WORLD_SIZE": "2", "MASTER_ADDR": "node0", "MASTER_PORT": "29500"})
    Bootstrap(rank=1, world_size=2, local_rank=1, master_addr='node0', master_port=29500, source='env')
    >>> bootstrap_from_env({}) is None
    True
    """
    env = os.environ if environ is None else environ
    if "WORLD_SIZE" not in env:
        return None

    def intvar(name: str, lo: int, hi: Optional[int] = None, default: Optional[int] = None) -> int:
        raw = env.get(name)
        if raw is None:
            if default is not None:
                return default
            raise ValueError(f"WORLD_SIZE is set, so {name} must be set too (an integer >= {lo})")
        try:
            v = int(raw.strip())
        except ValueError:
            raise ValueError(f"{name} must be an integer, got {raw!r}") from None
        if v < lo or (hi is not None and v > hi):
            raise ValueError(f"{name}={v} is out of range: must be >= {lo}" + (f" and <= {hi}" if hi is not None else ""))
        return v

    world = intvar("WORLD_SIZE", 1)
    rank = intvar("RANK", 0, world - 1)
    local = intvar("LOCAL_RANK", 0, world - 1, default=rank)
    addr = env.get("MASTER_ADDR") or None
    port = intvar("MASTER_PORT", 1, 65535) if env.get("MASTER_PORT") else None
    if world > 1 and (addr is None or port is None):
        raise ValueError(f"WORLD_SIZE={world}: MASTER_ADDR and MASTER_PORT must name rank 0's host and a free port "
                         "(torchrun sets them)")
    return Bootstrap(rank, world, local, addr, port, "env")


def init(backend: str = "auto", timeout_s: Optional[float] = DEFAULT_TIMEOUT_S) -> Communicator:
    """The communicator for this process.

    ``backend="auto"``: MPI when an MPI launcher started more than one rank
    (``mpiexec -n N``), else the single-process backend. ``"mpi"`` insists on
    MPI (a world of 1 is fine); ``"single"`` never communicates; ``"nccl"``
    raises ``NotImplementedError`` (see the module docstring).

    Errors are explicit: a job launched with N > 1 ranks but without mpi4py,
    or a torchrun-style launch (``WORLD_SIZE`` > 1) on the CPU, raises
    instead of silently training N independent copies.
    """
    if backend not in ("auto", "mpi", "single", "nccl"):
        raise ValueError(f"distributed backend must be 'auto', 'mpi', 'single' or 'nccl', got {backend!r}")
    if backend == "nccl":
        boot = bootstrap_from_env()
        where = (f" (bootstrap from the environment: rank {boot.rank} of {boot.world_size}, "
                 f"master {boot.master_addr}:{boot.master_port})" if boot else "")
        raise NotImplementedError(
            "the NCCL backend is not implemented yet" + where + ": it needs an all-reduce over the CUDA core's "
            "device gradient buffer (ncclAllReduce) in the C++ core, built against NCCL (the nvidia-nccl-cu13 wheel "
            "or the toolkit). Train on CPUs with mpiexec -n N (backend 'mpi'); see docs/DISTRIBUTED.md")
    if backend == "single":
        return SingleProcess()
    if backend == "mpi":
        return MPICommunicator(timeout_s=timeout_s)
    # auto
    if _launched_by_mpi():
        try:
            return MPICommunicator(timeout_s=timeout_s)
        except ImportError as e:
            raise RuntimeError(f"this process was launched as one of {launched_world_size()} MPI ranks, but {e}; "
                               "without it every rank would train alone") from None
    boot = bootstrap_from_env()
    if boot is not None and boot.world_size > 1:
        raise RuntimeError(f"WORLD_SIZE={boot.world_size} is set (a torchrun-style launch), but pyllama trains on "
                           "several CPU processes only through MPI: launch with mpiexec -n N pyllama train ... "
                           "(pip install 'pyllama[dist]'); the env-var bootstrap is for the NCCL backend, which "
                           "is not implemented yet (docs/DISTRIBUTED.md)")
    return SingleProcess()


def default_threads_per_rank(comm: Communicator, cpus: Optional[int] = None) -> int:
    """CPU threads for each rank so that the ranks on one node share its cores
    (``cpus // ranks on this node``, at least 1)."""
    if cpus is None:
        try:
            cpus = len(os.sched_getaffinity(0))
        except (AttributeError, OSError):
            cpus = os.cpu_count() or 1
    return max(1, int(cpus) // max(1, int(comm.local_size)))


def _test_fault(rank: int, step: int) -> None:
    """Tests only: ``_PYLLAMA_TEST_FAULT="die:R:S"`` makes rank R exit at once
    (``os._exit(1)``, no clean-up, as a crash) after step S; ``"hang:R:S"`` makes
    it stop responding there (sleep); ``"sigint:R:S"`` sends it SIGINT (Ctrl-C)."""
    spec = os.environ.get("_PYLLAMA_TEST_FAULT")
    if not spec:
        return
    kind, r, s = spec.split(":")
    if int(r) != rank or int(s) != step:
        return
    print(f"pyllama.distributed: test fault: rank {rank} {kind} after step {step}", file=sys.stderr, flush=True)
    if kind == "die":
        os._exit(1)
    if kind == "hang":
        time.sleep(3600)
    if kind == "sigint":  # as if Ctrl-C reached this rank only
        import signal

        os.kill(os.getpid(), signal.SIGINT)
        return
    raise ValueError(f"_PYLLAMA_TEST_FAULT: unknown kind {kind!r} (die, hang or sigint)")


# ---------------------------------------------------------------------- consistency

def fingerprint(obj: Any) -> str:
    """A short stable hash of a JSON-like object, a numpy array or bytes."""
    h = hashlib.blake2b(digest_size=12)
    if isinstance(obj, np.ndarray):
        a = np.ascontiguousarray(obj)
        h.update(str(a.dtype).encode() + str(a.shape).encode())
        h.update(memoryview(a).cast("B"))
    elif isinstance(obj, (bytes, bytearray, memoryview)):
        h.update(obj)
    else:
        import json

        h.update(json.dumps(obj, sort_keys=True, default=str).encode())
    return h.hexdigest()


def check_consistent(comm: Communicator, items: Dict[str, Any], *, what: str = "start-up check",
                     step: Optional[int] = None) -> None:
    """All-gather ``items`` and raise :class:`DistributedError` naming every item
    on which some rank differs from rank 0. Dicts travel as they are (so the
    error names the differing fields and values); anything else as a
    :func:`fingerprint`."""
    mine = {k: (v if isinstance(v, (str, dict)) else fingerprint(v)) for k, v in items.items()}
    every = comm.allgather_object(mine, what=what, step=step)
    bad = []
    for name in mine:
        ranks = [r for r, d in enumerate(every) if d.get(name) != every[0].get(name)]
        if not ranks:
            continue
        desc = f"{name} (rank 0 differs from rank{'s' if len(ranks) > 1 else ''} {', '.join(map(str, ranks))}"
        first, other = every[0].get(name), every[ranks[0]].get(name)
        if isinstance(first, dict) and isinstance(other, dict):
            keys = sorted(k for k in set(first) | set(other) if first.get(k) != other.get(k))
            desc += ": " + ", ".join(f"{k}={first.get(k)!r} vs {other.get(k)!r}" for k in keys[:8])
        bad.append(desc + ")")
    extra = sorted(set().union(*every) ^ set(mine))
    if extra:
        bad.append("the set of checked items (" + ", ".join(extra) + ")")
    if bad:
        at = f" at step {step}" if step is not None else ""
        raise DistributedError(f"{what}{at}: the {comm.world_size} ranks disagree on " + "; ".join(bad)
                               + ". Every rank must run with the same configs, data and checkpoint")
