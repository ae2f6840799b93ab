"""The core's model interface speaks Tensors (csrc/core/backend.h): token ids in, logits and ids
out, parameters and gradients as live views, set_* from any device. These tests exercise the
binding of that interface itself (``pyllama._core.Model``), so they reach ``model._core`` on
purpose; the public API (pyllama.Llama) is tested elsewhere and rides on the same methods."""
import numpy as np
import pytest

import pyllama
from pyllama import _core


def tiny(seed=0):
    cfg = pyllama.LlamaConfig(vocab_size=53, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                              num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=32)
    return pyllama.Llama(cfg, seed=seed)


def ids(a):
    return _core.Tensor.from_numpy(np.ascontiguousarray(a, dtype=np.int32))


def test_forward_takes_core_tensors_and_arrays_alike():
    m = tiny()
    rng = np.random.default_rng(0)
    tok = rng.integers(0, 53, (2, 7)).astype(np.int32)
    core = m._core
    loss_t = core.forward(ids(tok), ids(tok))
    logits_t = core.logits()
    loss_a = core.forward(tok, tok.astype(np.int64))
    logits_a = core.logits()
    assert loss_t == loss_a and np.isfinite(loss_t)
    np.testing.assert_array_equal(logits_t, logits_a)
    assert logits_t.shape == (2, 7, 53) and logits_t.dtype == np.float32
    # the caller's own array: a later forward does not change it
    core.forward(tok[:, :3])
    np.testing.assert_array_equal(logits_t, logits_a)


def test_checks_are_the_cores_whatever_the_caller():
    core = tiny()._core
    tok = np.zeros((2, 4), np.int32)
    with pytest.raises(TypeError, match="int32"):
        core.forward(_core.Tensor.from_numpy(np.zeros((2, 4), np.int64)))
    with pytest.raises(ValueError, match="2-D"):
        core.forward(ids(np.zeros(4)))
    with pytest.raises(ValueError, match="out of range"):
        core.forward(ids([[1, 53]]))
    with pytest.raises(ValueError, match="label -7 at flat position 1"):
        core.forward(tok, ids([[0, -7, 0, 0], [0, 0, 0, 0]]))
    with pytest.raises(ValueError, match="one more column"):
        core.forward(tok, ids(np.zeros((2, 6))))
    with pytest.raises(ValueError, match="kv_reset"):
        core.kv_forward(tok, ids([0, 0]), ids([0, 0]))
    core.kv_reset(2, 8)
    with pytest.raises(ValueError, match="slot 5 out of range"):
        core.kv_forward(tok, ids([0, 5]), ids([0, 0]))
    with pytest.raises(ValueError, match="do not fit the cache length 8"):
        core.kv_forward(tok, ids([0, 1]), ids([0, 5]))
    with pytest.raises(ValueError, match="one entry per row"):
        core.kv_forward(tok, ids([0]), ids([0, 0]))
    with pytest.raises(ValueError, match="source slot 2 out of range"):
        core.kv_reorder(ids([0, 2]))
    with pytest.raises(ValueError, match="expected 2 source slots"):
        core.kv_reorder(ids([0]))
    with pytest.raises(ValueError, match=r"n must be in \[1, 0\] on cpu"):
        core.kv_greedy_chain(ids([[1], [2]]), ids([0, 1]), ids([0, 0]), 1)


def test_kv_steps_return_new_arrays_from_tensors():
    m = tiny(1)
    core = m._core
    rng = np.random.default_rng(1)
    tok = rng.integers(0, 53, (2, 5)).astype(np.int32)
    core.forward(tok)
    full = core.logits()
    core.kv_reset(2, 8)
    a = core.kv_forward(ids(tok), ids([0, 1]), ids([0, 0]), False)
    np.testing.assert_allclose(a, full, rtol=1e-5, atol=1e-5)
    g = core.kv_forward_greedy(ids(tok[:, :1]), ids([0, 1]), ids([5, 5]))
    assert g.dtype == np.int32 and g.shape == (2,)
    b = core.kv_forward(ids(tok[:, :1]), ids([0, 1]), ids([6, 6]))
    assert b.shape == (2, 53)
    core.kv_reorder(ids([1, 0]))  # swapping slots: the same step from swapped rows gives swapped logits
    c = core.kv_forward(ids(tok[::-1, :1]), ids([0, 1]), ids([6, 6]))
    np.testing.assert_array_equal(c, b[::-1])


def test_parameters_are_live_views_and_set_takes_any_source():
    m = tiny(2)
    core = m._core
    p = core.parameters()
    assert isinstance(p, _core.Tensor) and p.device == "cpu" and p.dtype == "float32"
    assert p.shape == (m.num_parameters(),)
    view = np.asarray(p)
    assert np.shares_memory(view, m.flat_params())
    dl = np.from_dlpack(p)
    assert np.shares_memory(dl, view)
    copy = core.parameters_copy()
    assert not np.shares_memory(copy, view)
    np.testing.assert_array_equal(copy, view)
    tok = np.arange(6, dtype=np.int32).reshape(1, 6)
    before = core.forward(tok, tok)
    core.set_parameters(_core.Tensor.from_numpy(copy * 0.5))  # a core Tensor
    np.testing.assert_array_equal(view, copy * 0.5)             # the live view sees it
    assert core.forward(tok, tok) != before
    core.set_parameters(copy)                                  # a numpy array
    assert core.forward(tok, tok) == before
    with pytest.raises(ValueError, match="elements"):
        core.set_parameters(copy[:-1])
    with pytest.raises(TypeError, match="float32"):
        core.set_parameters(copy.astype(np.float64))
    # gradients: a live view, set from a tensor
    g = np.asarray(core.gradients())
    core.set_gradients(_core.Tensor.from_numpy(np.full_like(copy, 2.0)))
    assert (g == 2.0).all() and (m.flat_grads() == 2.0).all()
    # the view keeps the model's buffer alive after the Llama goes
    del m, core, view, dl
    assert p.numpy().shape == copy.shape


def test_moments_round_trip_through_tensors():
    m = tiny(3)
    core = m._core
    mm, vv = core.moments()
    assert not mm.any() and not vv.any()
    rng = np.random.default_rng(3)
    m0 = rng.standard_normal(m.num_parameters()).astype(np.float32)
    v0 = rng.random(m.num_parameters()).astype(np.float32)
    core.set_moments(_core.Tensor.from_numpy(m0), v0)
    mm, vv = core.moments()
    np.testing.assert_array_equal(mm, m0)
    np.testing.assert_array_equal(vv, v0)
    with pytest.raises(ValueError, match="exp_avg_sq must have"):
        core.set_moments(m0, v0[:3])
