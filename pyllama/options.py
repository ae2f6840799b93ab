"""Backend options: which kernels and decode paths a model uses, as typed settings.

The library reads no environment variable to choose its kernels: a model gets its options
from ``Llama.to(device, dtype=..., options=BackendOptions(...))`` (kept across later moves
until new ones are given). The command line and the benchmarks translate their
``PYLLAMA_CUDA_*`` environment variables with :meth:`BackendOptions.from_env`.

>>> from pyllama import BackendOptions
>>> BackendOptions(matmul="cublas").matmul
'cublas'
>>> BackendOptions.from_env({"PYLLAMA_CUDA_GRAPHS": "0"}).cuda_graphs
False
>>> BackendOptions(attention="fast")
Traceback (most recent call last):
...
ValueError: BackendOptions.attention='fast': use flash, simt, gemm or naive
"""
from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from typing import Any, Dict, Mapping, Optional

__all__ = ["BackendOptions"]

_OFF = ("0", "off", "false", "no")


@dataclass(frozen=True)
class BackendOptions:
    """Settings of a model's backend. The CPU backend has none of its own; on the GPU:

    - ``matmul``: ``"cublaslt"``, ``"cublas"`` or ``"tiled"``; ``""`` (default) is cuBLASLt
      where cuBLAS was found at build time, else the tiled kernel.
    - ``matmul_tune``: cuBLASLt times up to 8 candidate algorithms per product shape once and
      keeps the fastest (the matmuls are then not bit-reproducible from run to run).
    - ``attention``: the training attention: ``"flash"`` (tensor cores for bf16 where they
      apply), ``"simt"`` (flash without tensor cores), ``"gemm"`` (batched GEMMs), ``"naive"``.
    - ``flash_fwd_rows``: 64 or 128 query rows per block of the bf16 tensor-core flash forward.
    - ``flash_dq_atomic``: the bf16 flash backward adds dQ with atomics (not deterministic).
    - ``decode_fast_path``, ``cuda_graphs``, ``decode_gemv``, ``decode_fused``, ``pdl``: the
      single-token decode step's fixed buffers and on-device argmax, its CUDA graphs, the
      GEMV kernel for at most 4 rows, the fused norm/RoPE/SwiGLU/residual kernels, and
      programmatic dependent launch (sm_90+) — docs/CUDA.md "Decoding".
    - ``greedy_on_device``, ``greedy_chain``: plain greedy generation takes the argmax on the
      GPU, and runs several steps per call there (generation reads them at each call).
    """

    matmul: str = ""
    matmul_tune: bool = False
    attention: str = "flash"
    flash_fwd_rows: int = 128
    flash_dq_atomic: bool = False
    decode_fast_path: bool = True
    cuda_graphs: bool = True
    decode_gemv: bool = True
    decode_fused: bool = True
    pdl: bool = True
    greedy_on_device: bool = True
    greedy_chain: bool = True

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            if f.type in ("bool", bool) and not isinstance(v, bool):
                raise TypeError(f"BackendOptions.{f.name} must be True or False, got {v!r}")
        if self.matmul not in ("", "cublaslt", "cublas", "tiled"):
            raise ValueError(f"BackendOptions.matmul={self.matmul!r}: use cublaslt, cublas or tiled "
                             "(the matmul back end)")
        if self.attention not in ("flash", "simt", "gemm", "naive"):
            raise ValueError(f"BackendOptions.attention={self.attention!r}: use flash, simt, gemm or naive")
        if isinstance(self.flash_fwd_rows, bool) or self.flash_fwd_rows not in (64, 128):
            raise ValueError(f"BackendOptions.flash_fwd_rows={self.flash_fwd_rows!r}: use 64 or 128 (query rows "
                             "per block of the tensor-core flash forward, head size <= 64)")

    def core_options(self) -> Dict[str, Any]:
        """The fields the core's backends read (the binding's ``options`` dict)."""
        d = dataclasses.asdict(self)
        d.pop("greedy_on_device")
        d.pop("greedy_chain")
        return d

    @classmethod
    def from_env(cls, environ: Optional[Mapping[str, str]] = None) -> "BackendOptions":
        """Options from the ``PYLLAMA_CUDA_*`` variables (for the CLI and the benchmarks only):
        ``PYLLAMA_CUDA_MATMUL`` (cublaslt|cublas|tiled), ``_MATMUL_TUNE`` (0|1), ``_ATTENTION``
        (flash|simt|gemm|naive), ``_FLASH_FWD_ROWS`` (64|128), ``_FLASH_DQ`` (kernel|atomic), and
        ``_DECODE``, ``_GRAPHS``, ``_DECODE_GEMV``, ``_DECODE_FUSED``, ``_PDL``, ``_GREEDY``,
        ``_GREEDY_CHAIN`` (0/off/false turns one off). A bad value is a ``ValueError`` naming it."""
        env = os.environ if environ is None else environ

        def choice(name: str, allowed, default: str, hint: str) -> str:
            v = (env.get(name) or "").strip() or default
            if v not in allowed:
                raise ValueError(f"{name}={v}: {hint}")
            return v

        def on(name: str) -> bool:
            return (env.get(name) or "").strip().lower() not in _OFF

        return cls(
            matmul=choice("PYLLAMA_CUDA_MATMUL", ("", "cublaslt", "cublas", "tiled"), "",
                          "use cublaslt, cublas or tiled (the matmul back end)"),
            matmul_tune=choice("PYLLAMA_CUDA_MATMUL_TUNE", ("0", "1"), "0",
                               "use 1 (time cuBLASLt's candidate algorithms once per product shape and keep "
                               "the fastest) or 0 (the heuristic's first, the default)") == "1",
            attention=choice("PYLLAMA_CUDA_ATTENTION", ("flash", "simt", "gemm", "naive"), "flash",
                             "use flash, simt, gemm or naive (the training attention)"),
            flash_fwd_rows=int(choice("PYLLAMA_CUDA_FLASH_FWD_ROWS", ("64", "128"), "128",
                                      "use 64 or 128 (query rows per block of the tensor-core flash forward, "
                                      "head size <= 64)")),
            flash_dq_atomic=choice("PYLLAMA_CUDA_FLASH_DQ", ("kernel", "atomic"), "kernel",
                                   "use kernel (the default: a dQ kernel, deterministic) or atomic (dQ added "
                                   "with atomics in the dK/dV kernel)") == "atomic",
            decode_fast_path=on("PYLLAMA_CUDA_DECODE"),
            cuda_graphs=on("PYLLAMA_CUDA_GRAPHS"),
            decode_gemv=on("PYLLAMA_CUDA_DECODE_GEMV"),
            decode_fused=on("PYLLAMA_CUDA_DECODE_FUSED"),
            pdl=on("PYLLAMA_CUDA_PDL"),
            greedy_on_device=on("PYLLAMA_CUDA_GREEDY"),
            greedy_chain=on("PYLLAMA_CUDA_GREEDY_CHAIN"),
        )
