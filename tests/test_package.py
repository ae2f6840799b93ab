import importlib.metadata
import os

import numpy as np
import pytest

import pyllama

REPO_SRC = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "pyllama")


def test_imports_installed_package_not_source_folder():
    # The source folder has no compiled _core: the extension must come from an
    # installation (site-packages, or an editable install's build folder).
    core = os.path.abspath(pyllama._core.__file__)
    assert core.endswith((".so", ".pyd"))
    assert os.path.dirname(core) != REPO_SRC, core


def test_version_has_one_source():
    assert pyllama.__version__ == importlib.metadata.version("pyllama")
    assert pyllama.build_info()["version"] == pyllama.__version__


def test_build_info_keys():
    info = pyllama.build_info()
    assert set(info) >= {"version", "cuda", "cuda_archs", "cuda_available", "simd", "openmp", "threads"}
    assert info["simd"] in ("generic", "avx2", "avx512")
    assert info["threads"] >= 1
    if not info["cuda"]:
        assert info["cuda_available"] is False


def test_tensor_numpy_zero_copy_both_ways():
    a = np.arange(12, dtype=np.float32).reshape(3, 4)
    t = pyllama.Tensor.from_numpy(a)
    assert t.shape == (3, 4) and t.dtype == "float32" and t.device == "cpu"
    v = t.numpy()
    a[2, 3] = 99.0  # same memory
    assert v[2, 3] == 99.0
    assert np.shares_memory(a, v)
    m = memoryview(t)
    assert m.shape == (3, 4)
    t2 = pyllama.Tensor([2, 5], "int32")
    n = t2.numpy()
    n[1, 4] = 7
    assert t2.numpy()[1, 4] == 7


def test_tensor_keeps_numpy_alive():
    t = pyllama.Tensor.from_numpy(np.full((1000,), 3.0, dtype=np.float32))
    import gc

    gc.collect()
    assert float(t.numpy().sum()) == 3000.0


def test_tensor_bad_input():
    with pytest.raises(ValueError, match="C-contiguous"):
        pyllama.Tensor.from_numpy(np.zeros((4, 4), np.float32)[:, ::2])
    with pytest.raises(TypeError, match="float32"):
        pyllama.Tensor.from_numpy(np.zeros(3, np.complex64))
    with pytest.raises(ValueError, match="unknown dtype"):
        pyllama.Tensor([2], "float8")
    if not pyllama.build_info()["cuda_available"]:  # tests/test_tensor_device.py covers the GPU
        with pytest.raises(ValueError, match="cuda"):
            pyllama.Tensor([2]).to("cuda")


def test_bfloat16_round_trip():
    a = np.array([1.0, -2.5, 3.140625, 0.0], np.float32)
    b = pyllama.Tensor.from_numpy(a).to("bfloat16")
    assert b.dtype == "bfloat16"
    np.testing.assert_array_equal(b.to("float32").numpy(), a)
