"""Tensors between the CPU and the GPU: ``Tensor.to('cuda')``, ``.cpu()``, zeros on the
device, clones, dtype conversion of device tensors, and ``__cuda_array_interface__``
(zero-copy views from PyTorch). GPU tests carry the ``cuda`` marker and skip with the
reason where no GPU is usable; the first tests run everywhere.
"""
import numpy as np
import pytest

import pyllama
from helpers import gpu

INFO = pyllama.build_info()


def test_to_cpu_shares_storage_and_dtype_conversion():
    a = np.arange(6, dtype=np.float32).reshape(2, 3)
    t = pyllama.Tensor.from_numpy(a)
    c = t.to("cpu")
    assert c.device == "cpu" and c.data_ptr == t.data_ptr  # no copy on the same device
    assert t.cpu().data_ptr == t.data_ptr
    assert t.clone().data_ptr != t.data_ptr
    np.testing.assert_array_equal(t.to("bfloat16").to("float32").numpy(), a)  # small ints are exact in bf16
    with pytest.raises(AttributeError, match="only on cuda"):
        t.__cuda_array_interface__
    # every device Llama.to takes: "cuda:N" too; a GPU this machine does not have is refused
    n_gpus = pyllama._core.cuda_device_count()
    with pytest.raises(ValueError, match="no CUDA backend|no CUDA device|does not exist"):
        t.to(f"cuda:{n_gpus}")
    with pytest.raises(ValueError, match="unknown device 'cuda:x'"):
        t.to("cuda:x")
    with pytest.raises(ValueError, match=r"unknown device or dtype; expected 'cpu', 'cuda'"):
        t.to("tpu")


def test_cuda_without_gpu_raises_clearly():
    if INFO["cuda_available"]:
        pytest.skip("a GPU is available: this test covers machines without one")
    t = pyllama.Tensor.from_numpy(np.ones(4, np.float32))
    want = "no CUDA device" if INFO["cuda"] else "no CUDA backend"
    for make in (lambda: t.to("cuda"), t.cuda, lambda: pyllama.Tensor([2, 2], "float32", "cuda")):
        with pytest.raises(ValueError, match=want):
            make()


@gpu
@pytest.mark.parametrize("dtype", ["float32", "int32", "int64", "uint16", "uint32"])
def test_round_trip_through_the_gpu(dtype):
    rng = np.random.default_rng(0)
    a = (rng.standard_normal((3, 5, 7)) * 100).astype(dtype)
    t = pyllama.Tensor.from_numpy(a)
    g = t.to("cuda")
    assert g.device == "cuda" and g.shape == (3, 5, 7) and g.dtype == dtype
    assert g.data_ptr != t.data_ptr
    with pytest.raises(ValueError, match="to\\('cpu'\\)"):
        g.numpy()
    np.testing.assert_array_equal(g.to("cpu").numpy(), a)
    np.testing.assert_array_equal(g.cpu().numpy(), a)
    g2 = g.clone()  # a device-to-device copy
    assert g2.device == "cuda" and g2.data_ptr != g.data_ptr
    np.testing.assert_array_equal(g2.view([105]).cpu().numpy(), a.reshape(-1))
    np.testing.assert_array_equal(g.cuda().cpu().numpy(), a)
    g0 = t.to("cuda:0")  # GPU 0 by its index: the same device as "cuda"
    assert g0.device == "cuda" and g0.__dlpack_device__() == (2, 0)
    np.testing.assert_array_equal(g0.cpu().numpy(), a)
    n = pyllama._core.cuda_device_count()
    if n > 1:
        g1 = t.to(f"cuda:{n - 1}")
        assert g1.device == f"cuda:{n - 1}" and g1.__dlpack_device__() == (2, n - 1)
        np.testing.assert_array_equal(g1.clone().to("cuda").cpu().numpy(), a)
    with pytest.raises(ValueError, match=f"CUDA device {n} does not exist"):
        t.to(f"cuda:{n}")


@gpu
def test_zeros_and_dtype_conversion_on_the_gpu():
    z = pyllama.Tensor([4, 3], "float32", "cuda")
    assert z.device == "cuda"
    np.testing.assert_array_equal(z.cpu().numpy(), np.zeros((4, 3), np.float32))
    a = np.array([1.0, -2.5, 3.140625, 1e-3], np.float32)
    b = pyllama.Tensor.from_numpy(a).cuda().to("bfloat16")
    assert b.device == "cuda" and b.dtype == "bfloat16"
    ref = pyllama.Tensor.from_numpy(a).to("bfloat16").numpy()
    np.testing.assert_array_equal(b.cpu().numpy(), ref)
    empty = pyllama.Tensor([0, 3], "float32", "cuda")
    assert empty.cpu().numpy().shape == (0, 3)


@gpu
def test_cuda_array_interface_with_torch():
    torch = pytest.importorskip("torch", reason="torch is a test extra (pip install -e '.[test]')")
    if not torch.cuda.is_available():
        pytest.skip("this torch build has no CUDA")
    a = np.arange(12, dtype=np.float32).reshape(3, 4)
    g = pyllama.Tensor.from_numpy(a).cuda()
    iface = g.__cuda_array_interface__
    assert iface["shape"] == (3, 4) and iface["typestr"] == "<f4" and iface["data"][0] == g.data_ptr
    v = torch.as_tensor(g, device="cuda")  # a view, no copy
    assert v.data_ptr() == g.data_ptr
    np.testing.assert_array_equal(v.cpu().numpy(), a)
    with pytest.raises(AttributeError, match="bfloat16"):
        g.to("bfloat16").__cuda_array_interface__
    assert g.__dlpack_device__() == (2, 0)  # kDLCUDA
    d = torch.from_dlpack(g)  # DLPack too, bfloat16 included
    assert d.is_cuda and d.data_ptr() == g.data_ptr
    np.testing.assert_array_equal(d.cpu().numpy(), a)
    db = torch.from_dlpack(g.to("bfloat16"))
    assert db.dtype == torch.bfloat16 and np.array_equal(db.float().cpu().numpy(), a)


def test_dlpack_views_without_a_copy():
    """Tensor.__dlpack__: numpy and torch view a core tensor's memory (no copy), the view
    keeps the storage alive after the tensor is gone, and every dtype maps (bfloat16 to torch's)."""
    import gc

    a = np.arange(12, dtype=np.float32).reshape(3, 4)
    t = pyllama.Tensor.from_numpy(a.copy())
    assert t.__dlpack_device__() == (1, 0)  # kDLCPU
    v = np.from_dlpack(t)
    assert v.shape == (3, 4) and v.dtype == np.float32
    np.testing.assert_array_equal(v, a)
    t.numpy()[0, 0] = 42.0  # the same memory
    assert v[0, 0] == 42.0
    del t
    gc.collect()
    assert v[2, 3] == 11.0  # still alive through the capsule's holder
    for dt, npdt in (("int32", np.int32), ("int64", np.int64), ("uint16", np.uint16), ("uint32", np.uint32)):
        z = pyllama.Tensor([2, 5], dt)
        w = np.from_dlpack(z)
        assert w.dtype == npdt and w.shape == (2, 5) and not w.any()
    cap = pyllama.Tensor([3], "float32").__dlpack__()  # never consumed: freed with the capsule
    del cap
    torch = pytest.importorskip("torch", reason="torch is a test extra")
    tb = pyllama.Tensor.from_numpy(a).to("bfloat16")
    x = torch.from_dlpack(tb)
    assert x.dtype == torch.bfloat16 and tuple(x.shape) == (3, 4)
    np.testing.assert_array_equal(x.float().numpy(), a)  # small ints are exact in bf16
    y = torch.from_dlpack(pyllama.Tensor.from_numpy(a))
    assert y.dtype == torch.float32 and float(y.sum()) == float(a.sum())
