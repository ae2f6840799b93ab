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
``NCCLCommunicator`` (``init("nccl")``, or a Trainer with ``device="cuda"`` on several ranks)
    GPUs: the gradients are averaged by one ``ncclAllReduce`` over the CUDA
    model's flat gradient buffer on its stream (NCCL is loaded at run time:
    ``pip install nvidia-nccl-cu13``, or ``PYLLAMA_NCCL_LIBRARY``). The small
    host-side operations go through MPI (ranks started by ``mpiexec``) or a
    :class:`TCPRendezvous` at ``MASTER_ADDR:MASTER_PORT`` (ranks started with
    torchrun-style variables, parsed by :func:`bootstrap_from_env`). Every wait
    has a deadline; a timeout aborts the NCCL communicator and raises
    :class:`DistributedError` (docs/DISTRIBUTED.md).

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
import socket
import struct
import sys
import time
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence

import numpy as np

__all__ = ["Communicator", "SingleProcess", "MPICommunicator", "TCPRendezvous", "NCCLCommunicator",
           "DistributedError", "Bootstrap", "ShardedAdamW", "load_nccl", "nccl_library_candidates",
           "init", "launched_world_size", "bootstrap_from_env", "default_threads_per_rank",
           "fingerprint", "check_consistent", "DEFAULT_TIMEOUT_S", "init_nccl", "init_host",
           "rendezvous_port"]

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
        sys.stdout.flush()
        # MPI_Abort makes the launcher kill every rank at once, and output this rank wrote
        # just before (the reason for the abort) can be lost in its forwarding: give it a moment.
        time.sleep(0.5)
        self.comm.Abort(code)

    def __repr__(self) -> str:
        return (f"MPICommunicator(rank={self.rank}, world_size={self.world_size}, local_size={self.local_size}, "
                f"timeout_s={self.timeout_s})")


# ---------------------------------------------------------------------- TCP rendezvous (torchrun-style launches)

_RDV_MAGIC = b"PYLLAMA-RDV1"
_RDV_HELLO = struct.Struct("!12sii")  # magic, rank, world_size
_RDV_LEN = struct.Struct("!Q")


class TCPRendezvous(Communicator):
    """Host-side collectives over TCP for ranks started with torchrun-style
    variables (``RANK``, ``WORLD_SIZE``, ``MASTER_ADDR``, ``MASTER_PORT``).

    Rank 0 listens on ``addr:port``; every other rank connects to it (retrying
    until ``timeout_s`` while rank 0 is not up yet). Each collective is a round
    through rank 0 (a star): every rank sends its part, rank 0 checks that all
    ranks called the same collective, combines the parts and sends the result
    back. It carries the small host-side traffic of a GPU run: the NCCL unique
    id, the trainer's consistency checks, barriers, a few numbers; not
    gradients (those go through NCCL).

    Every wait has a deadline (``timeout_s``; ``None`` or ``0``: none): a rank
    that is missing, died or hangs makes the others raise
    :class:`DistributedError` naming the rank, the operation and the step. A
    failure closes this rank's connections, so the other ranks learn of it at
    once instead of at their own deadline. A world of 1 opens no socket.

    The protocol is unauthenticated and carries pickles between the ranks, as
    torchrun's store does: ``MASTER_PORT`` must not be reachable from untrusted
    hosts.
    """

    backend = "tcp"

    def __init__(self, rank: int, world_size: int, addr: Optional[str] = None, port: Optional[int] = None, *,
                 timeout_s: Optional[float] = DEFAULT_TIMEOUT_S, local_rank: Optional[int] = None,
                 local_size: Optional[int] = None) -> None:
        for name, v in (("rank", rank), ("world_size", world_size)):
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
                raise TypeError(f"TCPRendezvous: {name} must be an int, got {v!r}")
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"TCPRendezvous: need 0 <= rank < world_size, got rank={rank}, world_size={world_size}")
        self.rank, self.world_size = int(rank), int(world_size)
        self.local_rank = self.rank if local_rank is None else int(local_rank)
        self.local_size = self.world_size if local_size is None else int(local_size)
        self.timeout_s = float(timeout_s) if timeout_s else None
        self.addr, self.port = addr, port
        self.broken: Optional[str] = None
        self.comm_seconds = 0.0
        self._seq = 0
        self._peers: Dict[int, socket.socket] = {}  # rank 0: rank -> connection
        self._sock: Optional[socket.socket] = None  # other ranks: the connection to rank 0
        if self.world_size == 1:
            return
        if not addr or port is None:
            raise ValueError(f"TCPRendezvous: world_size={world_size} needs rank 0's address and port "
                             "(MASTER_ADDR and MASTER_PORT)")
        if isinstance(port, bool) or not isinstance(port, (int, np.integer)) or not 1 <= int(port) <= 65535:
            raise ValueError(f"TCPRendezvous: port must be an int in [1, 65535] (MASTER_PORT), got {port!r}")
        self.port = int(port)
        deadline = None if self.timeout_s is None else time.monotonic() + self.timeout_s
        try:
            if self.rank == 0:
                self._serve(deadline)
            else:
                self._connect(deadline)
        except BaseException:
            self.close()
            raise

    # -------------------------------------------------------------- set-up
    def _where(self) -> str:
        return f"{self.addr}:{self.port}"

    def _resolve(self):
        try:
            infos = socket.getaddrinfo(self.addr, self.port, type=socket.SOCK_STREAM)
        except socket.gaierror as e:
            raise DistributedError(f"rank {self.rank}: MASTER_ADDR {self.addr!r} cannot be resolved ({e}); set it "
                                   "to rank 0's host name or IP address") from None
        return infos[0]

    def _serve(self, deadline: Optional[float]) -> None:
        family, stype, proto, _, sockaddr = self._resolve()
        srv = socket.socket(family, stype, proto)
        try:
            srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                srv.bind(sockaddr)
                srv.listen(self.world_size)
            except OSError as e:
                raise DistributedError(f"rank 0 cannot listen on {self._where()} ({e.strerror or e}): MASTER_ADDR must "
                                       "be an address of rank 0's host and the port a free one (>= 1024 unless run "
                                       "as root): MASTER_PORT, or PYLLAMA_RDV_PORT (the same on every rank)") from None
            while len(self._peers) < self.world_size - 1:
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    missing = [r for r in range(1, self.world_size) if r not in self._peers]
                    raise DistributedError(
                        f"rank 0: rendezvous at {self._where()}: rank(s) {', '.join(map(str, missing))} of "
                        f"{self.world_size} did not connect within {self.timeout_s:g} s (they were not started, "
                        "died, or use another MASTER_ADDR/MASTER_PORT)")
                srv.settimeout(left)
                try:
                    conn, _ = srv.accept()
                except socket.timeout:
                    continue
                conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                try:
                    conn.settimeout(5.0 if left is None else max(0.1, min(5.0, left)))
                    magic, r, w = _RDV_HELLO.unpack(self._recv_exact(conn, _RDV_HELLO.size))
                except (OSError, struct.error, DistributedError):
                    conn.close()  # not one of ours (a port scanner, a stale client): keep waiting
                    continue
                if magic != _RDV_MAGIC:
                    conn.close()
                    continue
                problem = None
                if w != self.world_size:
                    problem = f"rank {r} has WORLD_SIZE={w}, rank 0 has {self.world_size}"
                elif not 1 <= r < self.world_size:
                    problem = f"a rank connected with RANK={r}, outside 1..{self.world_size - 1}"
                elif r in self._peers:
                    problem = f"two processes connected as rank {r}"
                if problem is not None:
                    msg = f"rendezvous at {self._where()}: {problem}; every rank needs its own RANK and the same WORLD_SIZE"
                    try:
                        self._send(conn, pickle.dumps((-1, "error", msg)), deadline=time.monotonic() + 2.0)
                    except OSError:
                        pass
                    conn.close()
                    raise DistributedError(f"rank 0: {msg}")
                self._peers[r] = conn
            for r, conn in self._peers.items():
                try:
                    self._send(conn, pickle.dumps((0, "ok", b"")), deadline=deadline)
                except OSError as e:
                    raise DistributedError(f"rank 0: rendezvous at {self._where()}: rank {r} dropped its connection "
                                           f"({e.strerror or e})") from None
        finally:
            srv.close()

    def _connect(self, deadline: Optional[float]) -> None:
        family, stype, proto, _, sockaddr = self._resolve()
        last = None
        while True:
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                raise DistributedError(
                    f"rank {self.rank}: could not connect to rank 0 at {self._where()} within {self.timeout_s:g} s "
                    f"(last error: {last}): is rank 0 running, and do all ranks have the same MASTER_ADDR and "
                    "MASTER_PORT?")
            s = socket.socket(family, stype, proto)
            s.settimeout(2.0 if left is None else max(0.05, min(2.0, left)))
            try:
                s.connect(sockaddr)
            except OSError as e:
                s.close()
                last = e.strerror or str(e) or type(e).__name__
                time.sleep(0.05 if left is None else min(0.2, max(0.0, left)))
                continue
            break
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._sock = s
        try:
            self._send(s, _RDV_HELLO.pack(_RDV_MAGIC, self.rank, self.world_size), raw=True, deadline=deadline)
        except OSError as e:
            raise DistributedError(f"rank {self.rank}: rendezvous at {self._where()}: rank 0 dropped the connection "
                                   f"({e.strerror or e})") from None
        _, status, payload = self._recv_msg(s, deadline, "rendezvous", None, peer=0)
        if status != "ok":
            raise DistributedError(f"rank {self.rank}: {payload}")

    # -------------------------------------------------------------- framing
    @staticmethod
    def _send(sock: socket.socket, data: bytes, raw: bool = False, deadline: Optional[float] = None) -> None:
        """Send a frame (or ``raw`` bytes) before ``deadline`` (``socket.timeout`` past it)."""
        sock.settimeout(None if deadline is None else max(0.001, deadline - time.monotonic()))
        sock.sendall(data if raw else _RDV_LEN.pack(len(data)) + data)

    @staticmethod
    def _recv_exact(sock: socket.socket, n: int) -> bytes:
        buf = bytearray()
        while len(buf) < n:
            chunk = sock.recv(min(n - len(buf), 1 << 20))
            if not chunk:
                raise DistributedError("connection closed")
            buf += chunk
        return bytes(buf)

    def _recv_msg(self, sock: socket.socket, deadline: Optional[float], what: str, step: Optional[int], *,
                  peer: int):
        """One framed pickle from ``peer``, before ``deadline``."""
        def timed(n: int) -> bytes:
            buf = bytearray()
            while len(buf) < n:
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    raise socket.timeout()
                sock.settimeout(left)
                chunk = sock.recv(min(n - len(buf), 1 << 20))
                if not chunk:
                    raise ConnectionResetError("closed")
                buf += chunk
            return bytes(buf)

        try:
            (n,) = _RDV_LEN.unpack(timed(_RDV_LEN.size))
            return pickle.loads(timed(n))
        except socket.timeout:
            who = "rank 0" if peer == 0 else f"rank {peer}"
            self._fail(what, step, f"did not complete within {self.timeout_s:g} s (TrainConfig.dist_timeout_s): "
                                   f"{who} did not take part (it died, hangs or is much slower)")
        except (ConnectionError, OSError, EOFError) as e:
            who = "rank 0" if peer == 0 else f"rank {peer}"
            self._fail(what, step, f"failed: {who} closed its connection ({type(e).__name__}: it exited, crashed "
                                   "or failed)")

    def _fail(self, what: str, step: Optional[int], why: str):
        at = f" at step {step}" if step is not None else ""
        msg = f"rank {self.rank}/{self.world_size}: {what}{at} {why}"
        if self.broken is None:
            self.broken = msg
        self.close()
        raise DistributedError(msg)

    def _check(self, what: str) -> None:
        if self.broken is not None:
            raise DistributedError(f"rank {self.rank}: {what} after an earlier failure ({self.broken})")

    def close(self) -> None:
        """Close the connections (the other ranks then fail at once in their next collective)."""
        for s in list(self._peers.values()) + ([self._sock] if self._sock is not None else []):
            try:
                s.close()
            except OSError:
                pass
        self._peers = {}
        self._sock = None
        if self.broken is None and self.world_size > 1:
            self.broken = "the rendezvous was closed"

    # -------------------------------------------------------------- one round through rank 0
    def _round(self, op: str, payload: bytes, combine, what: str, step: Optional[int],
               timeout_s: Optional[float] = None) -> bytes:
        """Every rank sends ``payload``; rank 0 checks every rank called ``op`` as its
        ``seq``-th collective, computes ``combine(payloads by rank)`` and sends it to all."""
        self._check(what)
        timeout = self.timeout_s if timeout_s is None else (float(timeout_s) or None)
        t0 = time.monotonic()
        deadline = None if timeout is None else t0 + timeout
        self._seq += 1
        seq = self._seq
        try:
            if self.rank != 0:
                try:
                    self._send(self._sock, pickle.dumps((seq, op, payload), protocol=pickle.HIGHEST_PROTOCOL),
                               deadline=deadline)
                except socket.timeout:
                    self._fail(what, step, f"did not complete within {timeout:g} s (TrainConfig.dist_timeout_s): "
                                           "rank 0 did not take part (it died, hangs or is much slower)")
                except OSError as e:
                    self._fail(what, step, f"failed: rank 0 closed its connection ({e.strerror or e})")
                _, status, result = self._recv_msg(self._sock, deadline, what, step, peer=0)
                if status != "ok":
                    self._fail(what, step, f"failed: {result}")
                return result
            parts = [payload]
            for r in range(1, self.world_size):
                rseq, rop, rpay = self._recv_msg(self._peers[r], deadline, what, step, peer=r)
                if (rseq, rop) != (seq, op):
                    msg = (f"the ranks called different collectives: rank 0 is in {op!r} (#{seq}), rank {r} in "
                           f"{rop!r} (#{rseq}); every rank must make the same calls in the same order")
                    self._tell_all("error", msg, deadline)
                    self._fail(what, step, f"failed: {msg}")
                parts.append(rpay)
            try:
                result = combine(parts)
            except Exception as e:  # bad input on some rank (e.g. arrays of different shapes)
                msg = f"{type(e).__name__}: {e}"
                self._tell_all("error", msg, deadline)
                self._fail(what, step, f"failed: {msg}")
            self._tell_all("ok", result, deadline, what=what, step=step, timeout=timeout)
            return result
        finally:
            self.comm_seconds += time.monotonic() - t0

    def _tell_all(self, status: str, result, deadline: Optional[float], *, what: str = "",
                  step: Optional[int] = None, timeout: Optional[float] = None) -> None:
        """Rank 0: send the outcome of a round to every other rank (errors: best effort)."""
        data = pickle.dumps((self._seq, status, result), protocol=pickle.HIGHEST_PROTOCOL)
        if status != "ok" and deadline is not None:
            deadline = min(deadline, time.monotonic() + 5.0)  # we are failing anyway: do not linger
        for r, conn in list(self._peers.items()):
            try:
                self._send(conn, data, deadline=deadline)
            except socket.timeout:
                if status == "ok":
                    self._fail(what, step, f"did not complete within {timeout:g} s (TrainConfig.dist_timeout_s): "
                                           f"rank {r} does not read (it hangs or is much slower)")
            except OSError as e:
                if status == "ok":
                    self._fail(what, step, f"failed: rank {r} closed its connection ({e.strerror or e})")

    # -------------------------------------------------------------- collectives
    def barrier(self, *, what="barrier", step=None, timeout_s=None):
        if self.world_size > 1:
            self._round("barrier", b"", lambda parts: b"", what, step, timeout_s)

    def broadcast(self, obj=None, root=0, *, what="broadcast", step=None):
        if not 0 <= root < self.world_size:
            raise ValueError(f"broadcast root {root} does not exist: world_size is {self.world_size}")
        self._check(what)
        if self.world_size == 1:
            return obj
        data = pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL) if self.rank == root else b""
        out = self._round(f"broadcast from {root}", data, lambda parts: parts[root], what, step)
        return obj if self.rank == root else pickle.loads(out)

    def allgather_object(self, obj, *, what="all-gather", step=None):
        self._check(what)
        if self.world_size == 1:
            return [obj]
        data = pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
        out = self._round("allgather_object", data, lambda parts: parts, what, step)
        return [pickle.loads(p) for p in out]

    def allreduce_sum_(self, buf, *, what="all-reduce", step=None):
        """Sum a (small) numpy array over the ranks, in rank order on rank 0; in place."""
        if not (isinstance(buf, np.ndarray) and buf.ndim == 1 and buf.flags.c_contiguous and buf.flags.writeable):
            raise TypeError(f"{what}: expected a writable contiguous 1-D numpy array")
        self._check(what)
        if self.world_size == 1:
            return buf

        def total(parts):
            shapes = {(p[0], p[1]) for p in parts}
            if len(shapes) != 1:
                raise ValueError(f"the ranks passed arrays of different dtypes/lengths: {sorted(shapes)}")
            acc = np.zeros(parts[0][1], dtype=np.dtype(parts[0][0]))
            for _, _, raw in parts:
                acc += np.frombuffer(raw, dtype=acc.dtype)
            return acc.tobytes()

        out = self._round("allreduce_sum", (buf.dtype.str, buf.size, buf.tobytes()), total, what, step)
        buf[...] = np.frombuffer(out, dtype=buf.dtype)
        return buf

    def mark_failed(self, reason: str) -> None:
        if self.world_size > 1:
            if self.broken is None:
                self.broken = reason
            self.close()

    def abort(self, code: int = 1) -> None:
        self.close()
        os._exit(code)

    def __repr__(self) -> str:
        return (f"TCPRendezvous(rank={self.rank}, world_size={self.world_size}, master={self.addr}:{self.port}, "
                f"timeout_s={self.timeout_s})")


# ---------------------------------------------------------------------- NCCL (GPUs)

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
        from ..optim import _check_hyper, _flat, param_segments

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
        from .. import _core

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
        from .. import _core

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
    is :func:`init_nccl` (GPUs; a world of 1 is fine).

    Errors are explicit: a job launched with N > 1 ranks but without mpi4py,
    or a torchrun-style launch (``WORLD_SIZE`` > 1) on the CPU, raises
    instead of silently training N independent copies.
    """
    if backend not in ("auto", "mpi", "single", "nccl"):
        raise ValueError(f"distributed backend must be 'auto', 'mpi', 'single' or 'nccl', got {backend!r}")
    if backend == "nccl":
        return init_nccl(timeout_s=timeout_s)
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
                           "(pip install 'pyllama[dist]'); the env-var bootstrap is for GPUs: TrainConfig.device="
                           "'cuda' or backend 'nccl' (docs/DISTRIBUTED.md)")
    return SingleProcess()


def init_nccl(timeout_s: Optional[float] = DEFAULT_TIMEOUT_S, environ=None) -> "NCCLCommunicator":
    """The NCCL communicator for this process (GPU ``LOCAL_RANK``).

    Ranks started by an MPI launcher (``mpiexec -n N``) exchange the NCCL unique id
    and run the host-side operations through MPI (mpi4py); ranks started with
    torchrun-style variables (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``,
    ``MASTER_ADDR``, ``MASTER_PORT``) through a :class:`TCPRendezvous` at
    ``MASTER_ADDR:MASTER_PORT``; a plain process is a world of 1. Raises
    ``RuntimeError`` without a GPU or without the NCCL library, naming what is
    missing, and :class:`DistributedError` when the ranks cannot meet.
    """
    _require_gpu("the NCCL backend")
    host = init_host(timeout_s=timeout_s, environ=environ)
    return NCCLCommunicator(host, device=host.local_rank, timeout_s=timeout_s)


def init_host(timeout_s: Optional[float] = DEFAULT_TIMEOUT_S, environ=None) -> Communicator:
    """The host-side communicator of a GPU job: :class:`MPICommunicator` for ranks
    started by an MPI launcher, :class:`TCPRendezvous` for torchrun-style variables
    (``WORLD_SIZE`` set), else :class:`SingleProcess`. The Trainer with
    ``device="cuda"`` wraps it in an :class:`NCCLCommunicator` when there are
    several ranks."""
    env = os.environ if environ is None else environ
    if _launched_by_mpi(env):
        try:
            return MPICommunicator(timeout_s=timeout_s)
        except ImportError as e:
            raise RuntimeError(f"this process was launched as one of {launched_world_size(env)} MPI ranks, but {e}; "
                               "or launch with torchrun-style variables instead") from None
    boot = bootstrap_from_env(env)
    if boot is None:
        return SingleProcess()
    local_size = None
    raw = env.get("LOCAL_WORLD_SIZE")
    if raw and raw.strip().isdigit():
        local_size = int(raw)
    return TCPRendezvous(boot.rank, boot.world_size, boot.master_addr, rendezvous_port(boot, env),
                         timeout_s=timeout_s, local_rank=boot.local_rank, local_size=local_size)


def rendezvous_port(boot: Bootstrap, environ=None) -> Optional[int]:
    """The port of the :class:`TCPRendezvous` for a torchrun-style launch.

    ``$PYLLAMA_RDV_PORT`` when set; else ``MASTER_PORT + 1`` under torchrun's agent
    store (``TORCHELASTIC_USE_AGENT_STORE=True``: torchrun's own store already listens
    on ``MASTER_PORT``); else ``MASTER_PORT``. Every rank computes the same port.

    >>> b = Bootstrap(0, 2, 0, "node0", 29500, "env")
    >>> rendezvous_port(b, {}), rendezvous_port(b, {"TORCHELASTIC_USE_AGENT_STORE": "True"})
    (29500, 29501)
    >>> rendezvous_port(b, {"PYLLAMA_RDV_PORT": "31000", "TORCHELASTIC_USE_AGENT_STORE": "True"})
    31000
    """
    env = os.environ if environ is None else environ
    raw = env.get("PYLLAMA_RDV_PORT")
    if raw:
        try:
            port = int(raw.strip())
        except ValueError:
            raise ValueError(f"PYLLAMA_RDV_PORT must be an integer port, got {raw!r}") from None
        if not 1 <= port <= 65535:
            raise ValueError(f"PYLLAMA_RDV_PORT={port} is out of range: must be in [1, 65535]")
        return port
    if boot.master_port is not None and env.get("TORCHELASTIC_USE_AGENT_STORE") == "True":
        if boot.master_port >= 65535:
            raise ValueError(f"MASTER_PORT={boot.master_port}: under torchrun the rendezvous uses MASTER_PORT + 1, "
                             "which does not exist; set PYLLAMA_RDV_PORT to a free port (the same on every rank)")
        return boot.master_port + 1
    return boot.master_port


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
