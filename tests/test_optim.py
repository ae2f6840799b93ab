"""AdamW, clip_grad_norm and cosine_lr against PyTorch on random flat buffers."""
import math

import numpy as np
import pytest

import pyllama
from pyllama.optim import grad_norm

from helpers import tiny_config


class FlatModel:
    """Stands in for a model: flat params/grads with named segments."""

    def __init__(self, shapes, seed=0):
        rng = np.random.default_rng(seed)
        self.shapes = shapes
        n = sum(int(np.prod(s)) for _, s in shapes)
        self.params = rng.standard_normal(n).astype(np.float32)
        self.grads = np.zeros(n, np.float32)

    def flat_params(self):
        return self.params

    def flat_grads(self):
        return self.grads

    def param_segments(self):
        out, off = [], 0
        for name, shape in self.shapes:
            n = int(np.prod(shape))
            out.append((name, off, n, shape))
            off += n
        return out


SHAPES = [
    ("model.embed_tokens.weight", (50, 16)),
    ("model.layers.0.input_layernorm.weight", (16,)),
    ("model.layers.0.self_attn.q_proj.weight", (16, 16)),
    ("model.norm.weight", (16,)),
    ("lm_head.weight", (50, 16)),
]


def torch_params(model, torch):
    return {name: torch.nn.Parameter(torch.tensor(model.params[o:o + n].reshape(shape)))
            for name, o, n, shape in model.param_segments()}


@pytest.mark.parametrize("decay_embeddings", [True, False])
def test_adamw_matches_torch(decay_embeddings):
    torch = pytest.importorskip("torch", reason="PyTorch is the reference for AdamW")
    model = FlatModel(SHAPES)
    tp = torch_params(model, torch)
    decay = [p for n, p in tp.items() if p.ndim == 2 and (decay_embeddings or "embed" not in n)]
    no_decay = [p for n, p in tp.items() if not (p.ndim == 2 and (decay_embeddings or "embed" not in n))]
    topt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}],
                             lr=1e-2, betas=(0.9, 0.95), eps=1e-8)
    opt = pyllama.AdamW(model, lr=1e-2, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.1,
                        decay_embeddings=decay_embeddings)
    rng = np.random.default_rng(1)
    for step in range(20):
        g = (rng.standard_normal(model.grads.size) * 3).astype(np.float32)
        model.grads[:] = g
        for name, o, n, shape in model.param_segments():
            tp[name].grad = torch.tensor(g[o:o + n].reshape(shape))
        lr = pyllama.cosine_lr(step, 1e-2, 5, 20)
        norm = pyllama.clip_grad_norm(model, 1.0)
        tnorm = torch.nn.utils.clip_grad_norm_(list(tp.values()), 1.0).item()
        assert abs(norm - tnorm) <= 1e-6 * tnorm
        for group in topt.param_groups:
            group["lr"] = lr
        topt.step()
        opt.step(lr=lr)
        for name, o, n, shape in model.param_segments():
            np.testing.assert_allclose(model.params[o:o + n].reshape(shape), tp[name].detach().numpy(),
                                       atol=1e-6, rtol=1e-5, err_msg=f"step {step} {name}")
    sd = opt.state_dict()
    assert sd["step"] == 20
    for name, p in tp.items():
        st = topt.state[p]
        np.testing.assert_allclose(sd["exp_avg"][name], st["exp_avg"].numpy(), atol=1e-7, rtol=1e-5)
        np.testing.assert_allclose(sd["exp_avg_sq"][name], st["exp_avg_sq"].numpy(), atol=1e-9, rtol=1e-5)


def test_adamw_state_round_trip_is_exact():
    a, b = FlatModel(SHAPES, seed=3), FlatModel(SHAPES, seed=3)
    oa = pyllama.AdamW(a, lr=1e-3)
    ob = pyllama.AdamW(b, lr=1e-3)
    rng = np.random.default_rng(0)
    gs = [rng.standard_normal(a.grads.size).astype(np.float32) for _ in range(6)]
    for g in gs[:3]:
        a.grads[:] = g
        oa.step()
    state = {k: (dict((n, v.copy()) for n, v in val.items()) if isinstance(val, dict) and k != "hyper" else val)
             for k, val in oa.state_dict().items()}
    b.params[:] = a.params
    ob.load_state_dict(state)
    for g in gs[3:]:
        a.grads[:] = g
        b.grads[:] = g
        oa.step()
        ob.step()
    assert np.array_equal(a.params, b.params)
    assert ob.step_count == 6


def test_norm_weights_do_not_decay():
    model = FlatModel(SHAPES)
    before = model.params.copy()
    opt = pyllama.AdamW(model, lr=0.5, weight_decay=0.1)
    opt.step()  # zero gradients: only decay moves weights
    for name, o, n, shape in model.param_segments():
        want = before[o:o + n] * (0.95 if len(shape) == 2 else 1.0)
        np.testing.assert_allclose(model.params[o:o + n], want, rtol=1e-6, err_msg=name)


def test_clip_grad_norm_on_arrays():
    g = np.array([3.0, 4.0], np.float32)
    assert pyllama.clip_grad_norm(g, 10.0) == pytest.approx(5.0)
    assert g.tolist() == [3.0, 4.0]
    assert pyllama.clip_grad_norm(g, 1.0) == pytest.approx(5.0)
    assert grad_norm(g) == pytest.approx(1.0, rel=1e-6)
    big = np.random.default_rng(0).standard_normal(300_001).astype(np.float32)
    ref = math.sqrt(float(np.sum(big.astype(np.float64) ** 2)))
    assert pyllama.clip_grad_norm(big.copy(), 1e9) == pytest.approx(ref, rel=1e-12)


def test_optimizer_bad_input():
    model = FlatModel(SHAPES)
    with pytest.raises(ValueError, match="lr"):
        pyllama.AdamW(model, lr=-1.0)
    with pytest.raises(ValueError, match="betas"):
        pyllama.AdamW(model, lr=1e-3, betas=(0.9, 1.0))
    with pytest.raises(ValueError, match="weight_decay"):
        pyllama.AdamW(model, lr=1e-3, weight_decay=-0.1)
    with pytest.raises(TypeError, match="pyllama model"):
        pyllama.AdamW(object(), lr=1e-3)
    with pytest.raises(ValueError, match="max_norm"):
        pyllama.clip_grad_norm(model, 0.0)
    opt = pyllama.AdamW(model, lr=1e-3)
    with pytest.raises(ValueError, match="lr"):
        opt.step(lr=float("nan"))
    with pytest.raises(TypeError, match="float32"):
        pyllama._core.clip_grad_norm(np.zeros(4, np.float64), 1.0)


def test_cosine_lr_formula():
    max_lr, w, total = 3e-4, 10, 100
    assert pyllama.cosine_lr(0, max_lr, w, total) == pytest.approx(max_lr / w)
    assert pyllama.cosine_lr(9, max_lr, w, total) == pytest.approx(max_lr)
    assert pyllama.cosine_lr(w, max_lr, w, total) == pytest.approx(max_lr)
    mid = w + (total - w) // 2
    assert pyllama.cosine_lr(mid, max_lr, w, total) == pytest.approx(0.1 * max_lr + 0.9 * max_lr / 2)
    assert pyllama.cosine_lr(total, max_lr, w, total) == pytest.approx(0.1 * max_lr)
    assert pyllama.cosine_lr(10 * total, max_lr, w, total, min_lr_ratio=0.0) == 0.0
    lrs = [pyllama.cosine_lr(s, max_lr, w, total) for s in range(w, total + 1)]
    assert all(a >= b for a, b in zip(lrs, lrs[1:]))
    assert pyllama.cosine_lr(0, 1.0, 0, 10) == 1.0  # no warm-up
    for bad in (dict(step=-1), dict(max_lr=-1.0), dict(min_lr_ratio=2.0)):
        kw = dict(step=0, max_lr=1.0, warmup_steps=1, total_steps=10)
        kw.update(bad)
        with pytest.raises(ValueError):
            pyllama.cosine_lr(**kw)


def test_cosine_lr_properties():
    hypothesis = pytest.importorskip("hypothesis", reason="property test")
    st = hypothesis.strategies

    @hypothesis.given(st.integers(0, 5000), st.floats(1e-6, 1.0), st.integers(0, 200), st.integers(0, 2000),
                      st.floats(0.0, 1.0))
    @hypothesis.settings(max_examples=150, deadline=None)
    def check(step, max_lr, warmup, extra, ratio):
        total = warmup + extra
        lr = pyllama.cosine_lr(step, max_lr, warmup, total, ratio)
        lo = min(ratio * max_lr, max_lr / max(warmup, 1))
        assert lo * (1 - 1e-12) <= lr <= max_lr * (1 + 1e-12)
        if step >= total and step >= warmup:
            assert lr == pytest.approx(ratio * max_lr)
        if warmup <= step < total:  # decay never increases
            assert pyllama.cosine_lr(step + 1, max_lr, warmup, total, ratio) <= lr * (1 + 1e-12)

    check()


def test_adamw_moments_move_with_the_model():
    """The moments live in the model's core and travel with it: an optimizer made before a
    move (what to("cuda") / to("cpu") do, here CPU to CPU through the binding's move_model)
    steps on exactly as if the model had stayed; a new AdamW starts from zero moments."""
    from pyllama import _core

    def run(move):
        model = pyllama.Llama(tiny_config(), seed=3)
        opt = pyllama.AdamW(model, lr=1e-2)
        ids = np.arange(18).reshape(2, 9) % 97
        for step in range(4):
            if move and step == 2:
                model._set_core(_core.move_model(model._core, "cpu", "float32"))
            model.zero_grad()
            model(ids, labels=ids)
            model.backward()
            opt.step()
        return model.flat_params().copy(), opt.state_dict()["exp_avg"]

    stayed, m_stayed = run(False)
    moved, m_moved = run(True)
    np.testing.assert_array_equal(moved, stayed)
    for k in m_stayed:
        np.testing.assert_array_equal(m_moved[k], m_stayed[k])
    model = pyllama.Llama(tiny_config(), seed=3)
    opt = pyllama.AdamW(model, lr=1e-2)
    model(np.ones((1, 4), np.int64), labels=np.ones((1, 4), np.int64))
    model.backward()
    opt.step()
    assert any(np.abs(v).max() > 0 for v in opt.state_dict()["exp_avg"].values())
    pyllama.AdamW(model, lr=1e-2)  # a new optimizer: fresh moments
    assert model._core.has_moments
    m, v = model._core.moments()
    assert not m.any() and not v.any()
