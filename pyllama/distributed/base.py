"""The communicator interface, the single-process backend and the consistency checks.

:class:`Communicator` is what :class:`pyllama.Trainer` talks to on several ranks
(``rank``, ``world_size`` and the collectives); :class:`SingleProcess` is the world
of 1 whose collectives return their input. :func:`fingerprint` and
:func:`check_consistent` let the ranks compare their configs, data and weights.
The backends live beside this file: ``mpi.py``, ``tcp.py`` and ``nccl.py``.

>>> comm = SingleProcess()
>>> comm.allgather_object({"step": 3})
[{'step': 3}]
>>> check_consistent(comm, {"step": 3})
"""
from __future__ import annotations

import hashlib
import os
from typing import Any, Dict, List, Optional, Sequence

import numpy as np

__all__ = ["DistributedError", "Communicator", "SingleProcess", "fingerprint", "check_consistent",
           "DEFAULT_TIMEOUT_S"]

DEFAULT_TIMEOUT_S = 300.0


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
