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
ValueError: BackendOptions.attention='fast': use flash, simt or naive

Kernel variants that no GPU measurement has shown faster are not options: they live in the
kernel lab (``cuda/lab/``, docs/CUDA.md "The kernel lab"), where they build, are checked
against the library's kernels and can be timed on a GPU.
"""
from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from typing import Any, Dict, Mapping, Optional

__all__ = ["BackendOptions"]

_OFF = ("0", "off", "false", "no")

# The variants that left the library for the kernel lab (cuda/lab/README.md): where each lives now.
_IN_THE_LAB = {
    "tune": "cuBLASLt algorithm tuning is in the kernel lab now (cuda/lab/matmul_tune.cu times the "
            "heuristic's candidates against its first choice)",
    "rows": "the 64-row tensor-core flash forward is in the kernel lab now (cuda/lab/flash_fwd_rows64.cu "
            "times it against the library's 128-row forward)",
    "dq": "the atomic-dQ flash backward is in the kernel lab now (cuda/lab/flash_dq_atomic.cu times it "
          "against the library's dQ kernel)",
    "gemm": "the GEMM attention is in the kernel lab now (cuda/lab/attention_gemm.cu times it against flash "
            "attention)",
}
# variable -> (the library's own behaviour, accepted and ignored; the variant it used to select)
_LAB_VARIABLES = {
    "PYLLAMA_CUDA_MATMUL_TUNE": ("0", "tune"),
    "PYLLAMA_CUDA_FLASH_FWD_ROWS": ("128", "rows"),
    "PYLLAMA_CUDA_FLASH_DQ": ("kernel", "dq"),
}


@dataclass(frozen=True)
class BackendOptions:
    """Settings of a model's backend. The CPU backend has none of its own; on the GPU:

    - ``matmul``: ``"cublaslt"``, ``"cublas"`` or ``"tiled"``; ``""`` (default) is cuBLASLt
      where cuBLAS was found at build time, else the tiled kernel.
    - ``attention``: the training attention: ``"flash"`` (tensor cores for bf16 where they
      apply), ``"simt"`` (flash without tensor cores), ``"naive"`` ((B, NH, T, T)
      probabilities: the reference the flash kernels are checked against).
    - ``decode_fast_path``, ``cuda_graphs``, ``decode_gemv``, ``decode_fused``, ``pdl``: the
      single-token decode step's fixed buffers and on-device argmax, its CUDA graphs, the
      GEMV kernel for at most 4 rows, the fused norm/RoPE/SwiGLU/residual kernels, and
      programmatic dependent launch (sm_90+) — docs/CUDA.md "Decoding".
    - ``greedy_on_device``, ``greedy_chain``: plain greedy generation takes the argmax on the
      GPU, and runs several steps per call there (generation reads them at each call).
    """

    matmul: str = ""
    attention: str = "flash"
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
        if self.attention not in ("flash", "simt", "naive"):
            raise ValueError(f"BackendOptions.attention={self.attention!r}: use flash, simt or naive"
                             + (f"; {_IN_THE_LAB['gemm']}" if self.attention == "gemm" else ""))

    def core_options(self) -> Dict[str, Any]:
        """The fields the core's backends read (the binding's ``options`` dict)."""
        d = dataclasses.asdict(self)
        d.pop("greedy_on_device")
        d.pop("greedy_chain")
        return d

    @classmethod
    def from_env(cls, environ: Optional[Mapping[str, str]] = None) -> "BackendOptions":
        """Options from the ``PYLLAMA_CUDA_*`` variables (for the CLI and the benchmarks only):
        ``PYLLAMA_CUDA_MATMUL`` (cublaslt|cublas|tiled), ``_ATTENTION`` (flash|simt|naive), and
        ``_DECODE``, ``_GRAPHS``, ``_DECODE_GEMV``, ``_DECODE_FUSED``, ``_PDL``, ``_GREEDY``,
        ``_GREEDY_CHAIN`` (0/off/false turns one off). A bad value is a ``ValueError`` naming it.

        The variables of the variants that moved to the kernel lab (``_MATMUL_TUNE``,
        ``_FLASH_FWD_ROWS``, ``_FLASH_DQ``, ``_ATTENTION=gemm``) raise a ``ValueError`` naming
        the lab program when they ask for the variant; set to the library's own behaviour
        (``0``, ``128``, ``kernel``) they are accepted and change nothing."""
        env = os.environ if environ is None else environ

        def choice(name: str, allowed, default: str, hint: str) -> str:
            v = (env.get(name) or "").strip() or default
            if v not in allowed:
                raise ValueError(f"{name}={v}: {hint}")
            return v

        def on(name: str) -> bool:
            return (env.get(name) or "").strip().lower() not in _OFF

        for name, (default, what) in _LAB_VARIABLES.items():
            v = (env.get(name) or "").strip()
            if v and v != default:
                raise ValueError(f"{name}={v}: {_IN_THE_LAB[what]}; unset it ({default} is what the library does)")
        if (env.get("PYLLAMA_CUDA_ATTENTION") or "").strip() == "gemm":
            raise ValueError(f"PYLLAMA_CUDA_ATTENTION=gemm: {_IN_THE_LAB['gemm']}; use flash, simt or naive")
        return cls(
            matmul=choice("PYLLAMA_CUDA_MATMUL", ("", "cublaslt", "cublas", "tiled"), "",
                          "use cublaslt, cublas or tiled (the matmul back end)"),
            attention=choice("PYLLAMA_CUDA_ATTENTION", ("flash", "simt", "naive"), "flash",
                             "use flash, simt or naive (the training attention)"),
            decode_fast_path=on("PYLLAMA_CUDA_DECODE"),
            cuda_graphs=on("PYLLAMA_CUDA_GRAPHS"),
            decode_gemv=on("PYLLAMA_CUDA_DECODE_GEMV"),
            decode_fused=on("PYLLAMA_CUDA_DECODE_FUSED"),
            pdl=on("PYLLAMA_CUDA_PDL"),
            greedy_on_device=on("PYLLAMA_CUDA_GREEDY"),
            greedy_chain=on("PYLLAMA_CUDA_GREEDY_CHAIN"),
        )
