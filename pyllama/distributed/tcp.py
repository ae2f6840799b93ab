"""The TCP rendezvous: :class:`TCPRendezvous`, host-side collectives for ranks
started with torchrun-style variables (``RANK``, ``WORLD_SIZE``, ``MASTER_ADDR``,
``MASTER_PORT``).

A star through rank 0 over TCP, with its own small framed protocol (a hello of
magic, rank and world size, then length-prefixed pickles). It carries the small
host-side traffic of a GPU run (the NCCL unique id, consistency checks,
barriers); the gradients go through NCCL (``nccl.py``).
"""
from __future__ import annotations

import os
import pickle
import socket
import struct
import time
from typing import Dict, Optional

import numpy as np

from .base import DEFAULT_TIMEOUT_S, Communicator, DistributedError

__all__ = ["TCPRendezvous"]


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
