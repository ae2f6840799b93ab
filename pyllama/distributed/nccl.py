"""The NCCL backend (GPUs): loading the NCCL library and :class:`NCCLCommunicator`.

NCCL is loaded at run time (:func:`load_nccl`: ``pip install nvidia-nccl-cu13``,
or ``PYLLAMA_NCCL_LIBRARY``); builds without the CUDA backend have no NCCL
support and say so. :class:`NCCLCommunicator` averages the gradients with one
``ncclAllReduce`` over the CUDA model's flat gradient buffer and sends the small
host-side operations through a host communicator (``mpi.py`` or ``tcp.py``).
"""
from __future__ import annotations

import atexit
import os
import sys
import time
from typing import List, Optional

import numpy as np

from .base import DEFAULT_TIMEOUT_S, Communicator, DistributedError, SingleProcess
from .tcp import TCPRendezvous

__all__ = ["NCCLCommunicator", "load_nccl", "nccl_library_candidates"]


def nccl_library_candidates(environ=None) -> List[str]:
    """Where :func:`load_nccl` looks for libnccl, in order: ``$PYLLAMA_NCCL_LIBRARY``
    alone when set; else the ``nvidia-nccl-cu13`` wheel's ``nvidia/nccl/lib/libnccl.so.2``
    (when the ``nvidia.nccl`` package is importable), then plain ``libnccl.so.2``
    (the dynamic loader's search path)."""
    env = os.environ if environ is None else environ
    forced = env.get("PYLLAMA_NCCL_LIBRARY")
    if forced:
        return [forced]
    out = []
    try:
        import importlib.util

        spec = importlib.util.find_spec("nvidia.nccl")
    except (ImportError, ValueError):
        spec = None
    for base in (list(spec.submodule_search_locations or []) if spec is not None else []):
        p = os.path.join(base, "lib", "libnccl.so.2")
        if os.path.isfile(p):
            out.append(p)
    out.append("libnccl.so.2")
    return out


def load_nccl() -> str:
    """Load the NCCL library (once per process; see :func:`nccl_library_candidates`);
    returns its path. Raises ``RuntimeError`` naming every path tried and what to
    install (``pip install nvidia-nccl-cu13``) or set (``PYLLAMA_NCCL_LIBRARY``)."""
    from .. import _core

    if not hasattr(_core, "nccl_load"):
        raise RuntimeError("this pyllama build has no CUDA backend, so no NCCL support (build_info()['cuda'] is "
                           "False): reinstall with nvcc available (docs/CUDA.md)")
    if _core.nccl_loaded():
        return _core.nccl_loaded_path()
    candidates = nccl_library_candidates()
    try:
        return _core.nccl_load(candidates)
    except _nccl_error() as e:
        hint = (" (PYLLAMA_NCCL_LIBRARY is set, so only that path was tried)"
                if os.environ.get("PYLLAMA_NCCL_LIBRARY") else "")
        raise RuntimeError(f"{e}{hint}") from None


def _nccl_error():
    """The core's NCCL error type; builds without the CUDA backend have none (nothing raises it)."""
    from .. import _core

    return getattr(_core, "NcclError", ())


def _require_gpu(what: str) -> None:
    from .. import _core

    info = _core.build_info()
    if not info["cuda"]:
        raise RuntimeError(f"{what} needs the CUDA backend, and this pyllama build has none (build_info()['cuda'] "
                           "is False); reinstall with nvcc available, or train on CPUs with mpiexec (backend 'mpi')")
    if not info["cuda_available"]:
        raise RuntimeError(f"{what} needs a CUDA GPU, and none is usable in this process "
                           "(build_info()['cuda_available'] is False); train on CPUs with mpiexec -n N "
                           "(backend 'mpi') instead")


class NCCLCommunicator(Communicator):
    """Data parallel on GPUs: NCCL for the gradients, a host communicator for the rest.

    ``host`` carries the small host-side operations (the NCCL unique id, the
    trainer's consistency checks, barriers, object broadcasts): a
    :class:`TCPRendezvous` (torchrun-style variables), an :class:`MPICommunicator`
    (``mpiexec``) or :class:`SingleProcess`. Rank 0 creates the NCCL unique id and
    ``host`` broadcasts it; every rank then creates its NCCL communicator on GPU
    ``device`` (default: ``host.local_rank``). The trainer calls
    :meth:`allreduce_grads_` once per step: one ``ncclAllReduce`` (average) over the
    model's flat float32 gradient buffer on the model's CUDA stream, with a few
    float64 numbers summed in the same NCCL group.

    Every NCCL wait has the deadline ``timeout_s`` (``None``/``0``: none); past it,
    or on an NCCL error, the NCCL communicator is aborted and
    :class:`DistributedError` is raised. The NCCL communicator is non-blocking
    (creation and calls are polled, so even a rank missing at creation ends in an
    abort at the deadline); ``blocking=True`` (or ``PYLLAMA_NCCL_BLOCKING=1``) uses
    blocking NCCL calls instead, with creation on a helper thread that is abandoned
    at the deadline. Host arrays passed to
    :meth:`allreduce_sum_` (float32/float64) are staged through the GPU.
    """

    backend = "nccl"

    def __init__(self, host: Optional[Communicator] = None, device: Optional[int] = None,
                 timeout_s: Optional[float] = DEFAULT_TIMEOUT_S, *, blocking: Optional[bool] = None) -> None:
        from .. import _core

        if blocking is None:  # PYLLAMA_NCCL_BLOCKING=1: the blocking fallback (see _core.NcclComm)
            blocking = os.environ.get("PYLLAMA_NCCL_BLOCKING", "0").strip().lower() in ("1", "true", "yes")

        self.host = SingleProcess() if host is None else host
        self.rank, self.world_size = int(self.host.rank), int(self.host.world_size)
        self.local_rank, self.local_size = int(self.host.local_rank), int(self.host.local_size)
        self.device = self.local_rank if device is None else int(device)
        self.timeout_s = float(timeout_s) if timeout_s else None
        self.broken: Optional[str] = None
        self.comm_seconds = 0.0
        self.nccl = None
        self.library = None
        if self.world_size == 1:
            _require_gpu("the NCCL backend")
        try:
            # Every rank checks its GPU and loads NCCL, rank 0 makes the unique id; the outcomes
            # are all-gathered, so a rank that cannot start fails every rank at once (instead of
            # leaving the others in ncclCommInitRank until the deadline).
            try:
                _require_gpu("the NCCL backend")
                ndev = int(_core.cuda_device_count())
                if not 0 <= self.device < ndev:
                    raise RuntimeError(f"GPU {self.device} (LOCAL_RANK) does not exist: {ndev} GPU(s) visible; "
                                       "start at most one rank per GPU on each node")
                self.library = load_nccl()
                mine = ("ok", _core.nccl_unique_id() if self.rank == 0 else None)
            except (RuntimeError, OSError) as e:
                mine = ("error", str(e))
            every = self.host.allgather_object(mine, what="NCCL start-up (library, GPU and unique id)")
            bad = [(r, m[1]) for r, m in enumerate(every) if m[0] != "ok"]
            if bad:
                raise DistributedError(f"rank {self.rank}/{self.world_size}: NCCL cannot start: "
                                       + "; ".join(f"rank {r}: {why}" for r, why in bad))
            self.nccl = _core.NcclComm(every[0][1], self.rank, self.world_size, self.device,
                                       self.timeout_s or 0.0, bool(blocking))
        except _nccl_error() as e:
            self.mark_failed(str(e))
            raise DistributedError(f"rank {self.rank}/{self.world_size}: {e}") from None
        except BaseException as e:
            self.mark_failed(f"{type(e).__name__}: {e}")
            raise
        atexit.register(self.close)

    # -------------------------------------------------------------- helpers
    def _nccl_call(self, method: str, what: str, step: Optional[int], *args):
        """self.nccl.<method>(*args), NcclError -> DistributedError (after a close: a clear error too)."""
        from .. import _core

        if self.broken is not None:
            raise DistributedError(f"rank {self.rank}: {what} after an earlier failure ({self.broken})")
        if self.nccl is None:
            raise DistributedError(f"rank {self.rank}: {what}: the NCCL communicator is closed")
        fn = getattr(self.nccl, method)
        t0 = time.perf_counter()
        try:
            return fn(*args)
        except _nccl_error() as e:
            at = f" at step {step}" if step is not None else ""
            msg = f"rank {self.rank}/{self.world_size}: {what}{at}: {e}"
            print(f"pyllama.distributed: {msg}", file=sys.stderr, flush=True)
            self.mark_failed(msg)
            raise DistributedError(msg) from None
        finally:
            self.comm_seconds += time.perf_counter() - t0

    @staticmethod
    def _gpu_core(model):
        """The model's core, which NCCL reads in GPU memory: a cuda model's only."""
        core = getattr(model, "_core", None)
        if core is None or not str(getattr(core, "device", "cpu")).startswith("cuda"):
            raise ValueError("the NCCL backend works on cuda models: move the model with model.to('cuda') "
                             "(TrainConfig.device='cuda') first")
        return core

    # -------------------------------------------------------------- GPU collectives
    def allreduce_grads_(self, model, *, extra: Optional[np.ndarray] = None, average: bool = True,
                         what: str = "gradient all-reduce", step: Optional[int] = None) -> None:
        """Average (or sum) ``model``'s GPU gradients over the ranks, in place, in one
        NCCL all-reduce on the model's stream; ``extra`` (a float64 1-D array) is
        summed over the ranks in the same NCCL group."""
        gpu = self._gpu_core(model)
        self._nccl_call("allreduce_grads", what, step, gpu, "avg" if average else "sum", extra, what)

    def broadcast_params_(self, model, root: int = 0, *, what: str = "weight broadcast",
                          step: Optional[int] = None) -> None:
        """Copy rank ``root``'s GPU weights to every rank (in place)."""
        if not 0 <= root < self.world_size:
            raise ValueError(f"broadcast root {root} does not exist: world_size is {self.world_size}")
        gpu = self._gpu_core(model)
        self._nccl_call("broadcast_params", what, step, gpu, int(root), what)

    def allreduce_sum_(self, buf, *, what="all-reduce", step=None):
        if not (isinstance(buf, np.ndarray) and buf.ndim == 1 and buf.flags.c_contiguous and buf.flags.writeable):
            raise TypeError(f"{what}: expected a writable contiguous 1-D numpy array")
        if buf.dtype in (np.float32, np.float64):
            self._nccl_call("allreduce_host", what, step, buf, "sum", what)
        else:
            self.host.allreduce_sum_(buf, what=what, step=step)
        return buf

    # -------------------------------------------------------------- host-side operations
    def broadcast(self, obj=None, root=0, *, what="broadcast", step=None):
        return self.host.broadcast(obj, root, what=what, step=step)

    def barrier(self, *, what="barrier", step=None, timeout_s=None):
        return self.host.barrier(what=what, step=step, timeout_s=timeout_s)

    def allgather_object(self, obj, *, what="all-gather", step=None):
        return self.host.allgather_object(obj, what=what, step=step)

    def set_timeout(self, timeout_s: Optional[float]) -> None:
        """Change the deadline of every wait (NCCL and host side); ``None``/``0``: none."""
        self.timeout_s = float(timeout_s) if timeout_s else None
        if self.nccl is not None:
            self.nccl.timeout_s = self.timeout_s or 0.0
        if hasattr(self.host, "timeout_s"):
            self.host.timeout_s = self.timeout_s

    def mark_failed(self, reason: str) -> None:
        """Abort the NCCL communicator (pending collectives end) and tell the host side."""
        if self.broken is None:
            self.broken = reason
        if self.nccl is not None:
            try:
                self.nccl.abort()
            except Exception:  # noqa: BLE001 - already failing
                pass
        if self.world_size > 1 or isinstance(self.host, TCPRendezvous):
            self.host.mark_failed(reason)

    def close(self) -> None:
        """Free the NCCL communicator and close the host side (also at interpreter exit).
        ``ncclCommAbort``: every collective was waited for, so it only frees resources,
        and unlike ``ncclCommDestroy`` it cannot wait on ranks that already exited."""
        if self.nccl is not None:
            try:
                self.nccl.abort()
            except Exception:  # noqa: BLE001 - at exit nothing more can be done
                pass
            self.nccl = None
        if isinstance(self.host, TCPRendezvous):
            self.host.close()

    def abort(self, code: int = 1) -> None:
        if self.nccl is not None:
            try:
                self.nccl.abort()
            except Exception:  # noqa: BLE001
                pass
        self.host.abort(code)

    def __repr__(self) -> str:
        return (f"NCCLCommunicator(rank={self.rank}, world_size={self.world_size}, device={self.device}, "
                f"host={self.host!r})")
