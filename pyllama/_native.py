"""Where the installed package keeps what native programs build against: the headers
(``include/``), the libraries and the CMake package (``lib/``, ``lib/cmake/pyllama``),
and ``libpyllama_c.so`` (the C API of ``pyllama.h``). docs/EMBEDDING.md.

A C++ project finds the core of a pip-installed pyllama as it finds pybind11::

    cmake -S . -B build -Dpyllama_DIR="$(python -m pyllama --cmake-dir)"

>>> import os, pyllama
>>> os.path.isfile(os.path.join(pyllama.cmake_dir(), "pyllamaConfig.cmake"))
True
"""
import os
from typing import List

__all__ = ["cmake_dir", "include_dir", "c_library_path"]


def _roots() -> List[str]:
    # the package's folders: one for a wheel install; an editable install has two (the
    # built files in site-packages, the Python files in the source tree)
    import pyllama

    return [os.path.abspath(p) for p in getattr(pyllama, "__path__", [os.path.dirname(pyllama.__file__)])]


def _find(rel: str, what: str) -> str:
    for root in _roots():
        p = os.path.join(root, *rel.split("/"))
        if os.path.exists(p):
            return p
    raise FileNotFoundError(
        f"this pyllama install has no {what} ({rel} under {', '.join(_roots())}); it was built without the "
        "install rules (PYLLAMA_INSTALL=OFF) or installed from a wheel made before they existed: reinstall with "
        "`pip install pyllama` or build a wheel with tools/build_wheel.sh")


def cmake_dir() -> str:
    """The folder holding ``pyllamaConfig.cmake``: pass it as ``-Dpyllama_DIR=...`` (or add
    its prefix to ``CMAKE_PREFIX_PATH``), then ``find_package(pyllama CONFIG)`` and link
    ``pyllama::core`` (C++) or ``pyllama::c`` (C). ``python -m pyllama --cmake-dir`` prints it.

    >>> import os, pyllama
    >>> os.path.basename(pyllama.cmake_dir())
    'pyllama'
    """
    return _find("lib/cmake/pyllama", "CMake package")


def include_dir() -> str:
    """The folder holding ``pyllama.h`` (the C API) and ``pyllama/`` (the C++ headers).

    >>> import os, pyllama
    >>> os.path.isfile(os.path.join(pyllama.include_dir(), "pyllama.h"))
    True
    """
    return _find("include", "headers")


def c_library_path() -> str:
    """The path of ``libpyllama_c.so``, the C API, for ``ctypes.CDLL`` or a linker.

    >>> import ctypes, pyllama
    >>> lib = ctypes.CDLL(pyllama.c_library_path())
    >>> lib.pyllama_abi_version()
    1
    """
    return _find("lib/libpyllama_c.so", "C library")


def _cuda_library_dirs() -> List[str]:
    # where the nvidia-cublas wheel (pyllama[cuda]) puts libcublas.so.13 / libcublasLt.so.13
    import sys

    dirs = []
    for base in sys.path:
        d = os.path.join(base or ".", "nvidia", "cu13", "lib")
        if os.path.isfile(os.path.join(d, "libcublas.so.13")) and d not in dirs:
            dirs.append(d)
    return dirs


def preload_cuda_libraries() -> List[str]:
    """Load cuBLAS/cuBLASLt from the nvidia-cublas wheel (when installed) before the extension,
    so a CUDA wheel's ``_core`` finds them wherever pip put them (as torch does). A no-op for
    CPU builds and machines without the wheel. Returns the files loaded."""
    import ctypes

    loaded = []
    for d in _cuda_library_dirs()[:1]:
        for name in ("libcublasLt.so.13", "libcublas.so.13"):
            try:
                ctypes.CDLL(os.path.join(d, name), mode=ctypes.RTLD_GLOBAL)
                loaded.append(os.path.join(d, name))
            except OSError:
                pass
    return loaded


def explain_import_error(e: ImportError) -> ImportError:
    """A clearer ImportError when the extension misses a CUDA library at load time."""
    msg = str(e)
    for lib, fix in (("libcublas", "pip install 'pyllama[cuda]' (the nvidia-cublas wheel, cuBLAS 13)"),
                     ("libcudart", "install the CUDA 13 runtime, or use the CPU wheel"),
                     ("libcuda.so", "install the NVIDIA driver, or use the CPU wheel")):
        if lib in msg:
            return ImportError(f"pyllama's CUDA build cannot load {lib}: {msg}. Fix: {fix}.")
    return e
