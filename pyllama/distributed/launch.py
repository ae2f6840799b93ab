"""Launch detection and start-up: which communicator this process gets.

:func:`launched_world_size` and :func:`bootstrap_from_env` read what the launcher
(``mpiexec``, Slurm, torchrun) set; :func:`init`, :func:`init_nccl` and
:func:`init_host` build the communicator (``base.py``, ``mpi.py``, ``tcp.py``,
``nccl.py``); :func:`rendezvous_port` picks the TCP rendezvous' port and
:func:`default_threads_per_rank` shares a node's cores between its ranks.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Optional

from .base import DEFAULT_TIMEOUT_S, Communicator, SingleProcess
from .mpi import MPICommunicator
from .nccl import NCCLCommunicator, _require_gpu
from .tcp import TCPRendezvous

__all__ = ["launched_world_size", "Bootstrap", "bootstrap_from_env", "init", "init_nccl", "init_host",
           "rendezvous_port", "default_threads_per_rank"]

# Environment variables that MPI launchers set in every rank: (size variable, rank variable).
_MPI_ENV = (("PMI_SIZE", "PMI_RANK"),  # MPICH / Hydra, Intel MPI
            ("OMPI_COMM_WORLD_SIZE", "OMPI_COMM_WORLD_RANK"),  # Open MPI
            ("PMIX_SIZE", "PMIX_RANK"),  # PMIx launchers
            ("MV2_COMM_WORLD_SIZE", "MV2_COMM_WORLD_RANK"),  # MVAPICH
            ("SLURM_NTASKS", "SLURM_PROCID"))  # srun --mpi=...


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
