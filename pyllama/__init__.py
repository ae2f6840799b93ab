"""pyllama — LLaMA training and inference on a C++17 core.

>>> import pyllama
>>> cfg = pyllama.LlamaConfig(vocab_size=256, hidden_size=64, intermediate_size=172,
...                           num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2)
>>> model = pyllama.Llama(cfg, seed=0)
>>> out = model([[1, 2, 3]], labels=[[1, 2, 3]])
>>> out.logits.shape
(1, 3, 256)
"""
from ._version import __version__
from . import _core
from ._core import Tensor, num_threads, set_num_threads
from .config import LlamaConfig
from .model import CausalLMOutput, Llama
from .optim import AdamW, clip_grad_norm, cosine_lr
from .train import TrainConfig, Trainer

__all__ = [
    "__version__",
    "Tensor",
    "LlamaConfig",
    "Llama",
    "CausalLMOutput",
    "build_info",
    "num_threads",
    "set_num_threads",
    "AdamW",
    "clip_grad_norm",
    "cosine_lr",
    "TrainConfig",
    "Trainer",
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
