"""The MPI backend: :class:`MPICommunicator`, collectives through ``mpi4py``.

CPUs, launched with ``mpiexec -n N`` (``pip install pyllama[dist]`` brings
``mpi4py`` and the ``mpich`` wheel; Open MPI or a system MPI work too). Every
collective is non-blocking and polled against a deadline, so a dead or hung
rank ends in a :class:`~pyllama.distributed.DistributedError` and ``MPI_Abort``
instead of a hang. It also holds the sharded collectives of ZeRO-1
(:class:`pyllama.optim.ShardedAdamW`).
"""
from __future__ import annotations

import atexit
import pickle
import sys
import time
from typing import Optional, Sequence

import numpy as np

from .base import DEFAULT_TIMEOUT_S, Communicator, DistributedError

__all__ = ["MPICommunicator"]


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
        sys.stdout.flush()
        # MPI_Abort makes the launcher kill every rank at once, and output this rank wrote
        # just before (the reason for the abort) can be lost in its forwarding: give it a moment.
        time.sleep(0.5)
        self.comm.Abort(code)

    def __repr__(self) -> str:
        return (f"MPICommunicator(rank={self.rank}, world_size={self.world_size}, local_size={self.local_size}, "
                f"timeout_s={self.timeout_s})")
