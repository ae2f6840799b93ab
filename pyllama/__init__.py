"""pyllama — LLaMA training and inference on a C++17 core.

>>> import pyllama
>>> cfg = pyllama.LlamaConfig(vocab_size=256, hidden_size=64, intermediate_size=172,
...                           num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2)
>>> model = pyllama.Llama(cfg, seed=0)
>>> out = model([[1, 2, 3]], labels=[[1, 2, 3]])
>>> out.logits.shape
(1, 3, 256)
"""
import os as _os

# OpenMP threads that spin while waiting collapse throughput on a busy machine (a spinning
# thread holds a core that its partner needs); sleeping waits cost microseconds per
# parallel region instead. Set before the core (and its OpenMP runtime) loads; users
# who set OMP_WAIT_POLICY or GOMP_SPINCOUNT themselves keep their choice.
if "OMP_WAIT_POLICY" not in _os.environ and "GOMP_SPINCOUNT" not in _os.environ:
    _os.environ["OMP_WAIT_POLICY"] = "PASSIVE"

from ._version import __version__  # noqa: E402
from . import _native as _native_paths  # noqa: E402

try:
    from . import _core  # noqa: E402
except ImportError as _e:
    # a CUDA wheel links cuBLAS from the nvidia-cublas wheel (pyllama[cuda]): load it from
    # where pip put it and try again; else say what is missing and how to get it
    if "libcublas" not in str(_e) or not _native_paths.preload_cuda_libraries():
        raise _native_paths.explain_import_error(_e) from _e
    from . import _core  # noqa: E402
from ._core import Tensor, num_threads  # noqa: E402
from .config import LlamaConfig, memory_limit  # noqa: E402
from .options import BackendOptions  # noqa: E402
from .model import CausalLMOutput, Llama  # noqa: E402
from .generation import GenerationConfig  # noqa: E402
from .tokenizer import Tokenizer  # noqa: E402
from .optim import AdamW, clip_grad_norm, cosine_lr  # noqa: E402
from .train import TrainConfig, Trainer  # noqa: E402
from ._native import c_library_path, cmake_dir, include_dir  # noqa: E402

__all__ = [
    "__version__",
    "Tensor",
    "LlamaConfig",
    "memory_limit",
    "Llama",
    "BackendOptions",
    "CausalLMOutput",
    "GenerationConfig",
    "Tokenizer",
    "build_info",
    "num_threads",
    "set_num_threads",
    "AdamW",
    "clip_grad_norm",
    "cosine_lr",
    "TrainConfig",
    "Trainer",
    "cmake_dir",
    "include_dir",
    "c_library_path",
]


def build_info() -> dict:
    """What the core was built with and what this machine offers.

    Keys: ``version``, ``cuda`` (CUDA kernels compiled in), ``cuda_archs``,
    ``cuda_available`` (a GPU is usable now), ``simd`` (``"avx512"``, ``"avx2"``
    or ``"generic"``), ``openmp``, ``threads``.

    >>> import pyllama
    >>> pyllama.build_info()["version"] == pyllama.__version__
    True
    """
    return dict(_core.build_info())


MAX_THREADS = 4096  # more OpenMP threads than any machine has cores: a mistake, refused


def set_num_threads(n: int) -> None:
    """Use ``n`` threads (1 to ``MAX_THREADS`` = 4096) in the core's parallel loops.

    >>> import pyllama
    >>> pyllama.set_num_threads(2**31 - 1)
    Traceback (most recent call last):
    ...
    ValueError: set_num_threads: n must be an int from 1 to 4096, got 2147483647
    """
    import numpy as _np

    if isinstance(n, bool) or not isinstance(n, (int, _np.integer)) or not 1 <= n <= MAX_THREADS:
        raise ValueError(f"set_num_threads: n must be an int from 1 to {MAX_THREADS}, got {n!r}")
    _core.set_num_threads(int(n))
