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

The package, by concern:

``base.py``
    :class:`DistributedError`, :class:`Communicator`, :class:`SingleProcess`,
    :func:`fingerprint`, :func:`check_consistent`, ``DEFAULT_TIMEOUT_S``.
``mpi.py``
    :class:`MPICommunicator` (and its sharded ZeRO-1 collectives).
``tcp.py``
    :class:`TCPRendezvous` and its wire protocol.
``nccl.py``
    :func:`load_nccl`, :func:`nccl_library_candidates`, :class:`NCCLCommunicator`.
``launch.py``
    :func:`launched_world_size`, :class:`Bootstrap`, :func:`bootstrap_from_env`,
    :func:`init`, :func:`init_nccl`, :func:`init_host`, :func:`rendezvous_port`,
    :func:`default_threads_per_rank`.

Every name is importable from here (``pyllama.distributed.X``), and so is
:class:`ShardedAdamW`, the ZeRO-1 optimizer, which lives in :mod:`pyllama.optim`.

>>> comm = init()            # a plain python process: the single-process backend
>>> comm.rank, comm.world_size
(0, 1)
>>> import numpy as np
>>> g = np.ones(4, np.float32)
>>> comm.allreduce_mean_(g) is g
True
"""
from __future__ import annotations

from .base import DEFAULT_TIMEOUT_S, Communicator, DistributedError, SingleProcess, check_consistent, fingerprint
from .mpi import MPICommunicator, _load_mpi
from .tcp import _RDV_HELLO, _RDV_LEN, _RDV_MAGIC, TCPRendezvous
from .nccl import NCCLCommunicator, _nccl_error, _require_gpu, load_nccl, nccl_library_candidates
from .launch import (_MPI_ENV, Bootstrap, _launched_by_mpi, bootstrap_from_env, default_threads_per_rank, init,
                     init_host, init_nccl, launched_world_size, rendezvous_port)
from ..optim import ShardedAdamW  # the ZeRO-1 optimizer; here for compatibility

__all__ = ["Communicator", "SingleProcess", "MPICommunicator", "TCPRendezvous", "NCCLCommunicator",
           "DistributedError", "Bootstrap", "ShardedAdamW", "load_nccl", "nccl_library_candidates",
           "init", "launched_world_size", "bootstrap_from_env", "default_threads_per_rank",
           "fingerprint", "check_consistent", "DEFAULT_TIMEOUT_S", "init_nccl", "init_host",
           "rendezvous_port"]
