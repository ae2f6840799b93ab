"""The model against transformers.LlamaForCausalLM and PyTorch autograd on the same weights."""
import os

import numpy as np
import pytest

import pyllama
from helpers import hf_model_from, tiny_config

torch = pytest.importorskip("torch", reason="torch is a test extra: pip install '.[test]'")
pytest.importorskip("transformers", reason="transformers is a test extra")

CONFIGS = {
    "gqa2-untied": dict(),
    "mha-tied": dict(num_key_value_heads=4, tie_word_embeddings=True),
    "odd-sizes": dict(vocab_size=131, hidden_size=36, intermediate_size=70, num_attention_heads=3,
                      num_key_value_heads=1, num_hidden_layers=3, rope_theta=500000.0),
}


def _batch(rng, cfg, B, T, ignore_frac=0.2):
    ids = rng.integers(0, cfg.vocab_size, size=(B, T))
    labels = ids.copy()
    labels[rng.random((B, T)) < ignore_frac] = -100
    return ids, labels


@pytest.mark.parametrize("name", list(CONFIGS))
@pytest.mark.parametrize("B,T", [(2, 37), (1, 8)])
def test_logits_loss_and_grads_match_transformers(name, B, T, rng):
    cfg = tiny_config(**CONFIGS[name])
    model = pyllama.Llama(cfg, seed=3)
    hf = hf_model_from(model)
    ids, labels = _batch(rng, cfg, B, T)

    out = model(ids, labels=labels)
    model.zero_grad()
    model.backward()

    ref = hf(input_ids=torch.from_numpy(ids), labels=torch.from_numpy(labels))
    ref.loss.backward()
    ref_logits = ref.logits.detach().numpy()
    scale = max(1.0, np.abs(ref_logits).max())
    assert np.abs(out.logits - ref_logits).max() <= 1e-4 * scale
    assert abs(out.loss - ref.loss.item()) <= 1e-4 * max(1.0, abs(ref.loss.item()))

    ref_grads = {n: p.grad.numpy() for n, p in hf.named_parameters()}
    grads = model.named_grads()
    for n, g in grads.items():
        r = ref_grads[n]
        tol = 1e-4 * np.abs(r).max() + 1e-6
        err = np.abs(g - r).max()
        assert err <= tol, f"{n}: max abs error {err:.3g} > {tol:.3g}"


def test_grads_accumulate_and_scale(rng):
    cfg = tiny_config()
    model = pyllama.Llama(cfg, seed=0)
    ids, labels = _batch(rng, cfg, 2, 16)
    model(ids, labels=labels)
    model.backward()
    g1 = model.flat_grads().copy()
    model(ids, labels=labels)
    model.backward(scale=0.5)
    np.testing.assert_allclose(model.flat_grads(), 1.5 * g1, rtol=1e-5, atol=1e-8)
    model.zero_grad()
    assert not model.flat_grads().any()


def test_logits_are_callers_own_array(rng):
    cfg = tiny_config()
    model = pyllama.Llama(cfg, seed=0)
    a = model(rng.integers(0, 97, (1, 5))).logits
    keep = a.copy()
    model(rng.integers(0, 97, (1, 5)))
    np.testing.assert_array_equal(a, keep)


def test_init_is_seeded_and_scaled():
    cfg = tiny_config(num_hidden_layers=4, hidden_size=64, intermediate_size=128)
    a, b, c = pyllama.Llama(cfg, seed=7), pyllama.Llama(cfg, seed=7), pyllama.Llama(cfg, seed=8)
    np.testing.assert_array_equal(a.flat_params(), b.flat_params())
    assert not np.array_equal(a.flat_params(), c.flat_params())
    p = a.named_parameters()
    assert abs(p["model.embed_tokens.weight"].std() - 0.02) < 0.002
    assert abs(p["model.layers.0.self_attn.o_proj.weight"].std() - 0.02 / np.sqrt(8)) < 0.001
    assert abs(p["model.layers.0.mlp.down_proj.weight"].std() - 0.02 / np.sqrt(8)) < 0.001
    assert (p["model.norm.weight"] == 1).all()


def test_save_pretrained_loads_in_transformers(tmp_path, rng):
    transformers = pytest.importorskip("transformers")
    for tied in (False, True):
        cfg = tiny_config(tie_word_embeddings=tied)
        model = pyllama.Llama(cfg, seed=5)
        d = tmp_path / f"m{tied}"
        model.save_pretrained(d)
        hf = transformers.LlamaForCausalLM.from_pretrained(d, attn_implementation="eager").float().eval()
        ids = rng.integers(0, cfg.vocab_size, (2, 11))
        with torch.no_grad():
            ref = hf(input_ids=torch.from_numpy(ids)).logits.numpy()
        assert np.abs(model(ids).logits - ref).max() <= 1e-4 * max(1, np.abs(ref).max())


def test_from_pretrained_reads_transformers_folder(tmp_path, rng):
    transformers = pytest.importorskip("transformers")
    hf_cfg = transformers.LlamaConfig(vocab_size=101, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                                      rope_theta=10000.0, rms_norm_eps=1e-6)
    torch.manual_seed(1)
    hf = transformers.LlamaForCausalLM(hf_cfg).float().eval()
    hf.save_pretrained(tmp_path)
    model = pyllama.Llama.from_pretrained(tmp_path)
    ids = rng.integers(0, 101, (3, 9))
    with torch.no_grad():
        ref = hf(input_ids=torch.from_numpy(ids)).logits.numpy()
    assert np.abs(model(ids).logits - ref).max() <= 1e-4 * max(1, np.abs(ref).max())


def test_kv_cache_matches_full_forward(rng):
    cfg = tiny_config()
    model = pyllama.Llama(cfg, seed=2)
    ids = rng.integers(0, cfg.vocab_size, (2, 20))
    full = model(ids).logits
    model._kv_reset(2, 32)
    # prefill 7 tokens of row 0 into slot 1, 12 of row 1 into slot 0, then step one token at a time
    out0 = model._kv_forward(ids[0:1, :7], np.array([1]), np.array([0]), last_only=False).copy()
    np.testing.assert_allclose(out0[0], full[0, :7], atol=1e-4)
    out1 = model._kv_forward(ids[1:2, :12], np.array([0]), np.array([0]), last_only=True).copy()
    np.testing.assert_allclose(out1[0], full[1, 11], atol=1e-4)
    p0, p1 = 7, 12
    while p1 < 20:
        step = model._kv_forward(np.array([[ids[0, p0]], [ids[1, p1]]]), np.array([1, 0]), np.array([p0, p1]))
        np.testing.assert_allclose(step[0], full[0, p0], atol=1e-4)
        np.testing.assert_allclose(step[1], full[1, p1], atol=1e-4)
        p0 += 1
        p1 += 1
    # reorder: both slots take slot 0's content (row 1's prefix up to p1)
    model._kv_reorder(np.array([0, 0]))
    nxt = model._kv_forward(np.array([[5], [5]]), np.array([0, 1]), np.array([p1, p1]))
    np.testing.assert_allclose(nxt[0], nxt[1], atol=1e-6)


def test_bad_input_raises_clear_errors(tmp_path):
    cfg = tiny_config(max_position_embeddings=16)
    model = pyllama.Llama(cfg, seed=0)
    with pytest.raises(ValueError, match="out of range"):
        model([[1, 2, 97]])
    with pytest.raises(ValueError, match="out of range"):
        model([[1, 2, -1]])
    with pytest.raises(ValueError, match="max_position_embeddings"):
        model(np.zeros((1, 17), np.int64))
    with pytest.raises(ValueError, match="2-D"):
        model(np.zeros((1, 2, 3), np.int64))
    with pytest.raises(TypeError, match="integer"):
        model(np.zeros((1, 3), np.float32))
    with pytest.raises(ValueError, match="labels shape"):
        model([[1, 2, 3]], labels=[[1, 2]])
    with pytest.raises(ValueError, match="out of range"):
        model([[1, 2, 3]], labels=[[1, 2, 500]])
    with pytest.raises(ValueError, match="empty"):
        model(np.zeros((1, 0), np.int64))
    with pytest.raises(RuntimeError, match="labels"):
        model([[1, 2]])
        model.backward()
    with pytest.raises(ValueError, match="divisible"):
        tiny_config(hidden_size=50)
    with pytest.raises(ValueError, match="num_key_value_heads"):
        tiny_config(num_key_value_heads=3)
    with pytest.raises(FileNotFoundError, match="config.json"):
        pyllama.Llama.from_pretrained(tmp_path)
    model.save_pretrained(tmp_path / "m")
    cfg_json = (tmp_path / "m" / "config.json").read_text().replace('"hidden_size": 48', '"hidden_size": 64')
    (tmp_path / "m" / "config.json").write_text(cfg_json.replace('"head_dim": 12', '"head_dim": 16'))
    with pytest.raises(ValueError, match="shape"):
        pyllama.Llama.from_pretrained(tmp_path / "m")
    model.save_pretrained(tmp_path / "n")
    os.remove(tmp_path / "n" / "model.safetensors")
    with pytest.raises(FileNotFoundError, match="model.safetensors"):
        pyllama.Llama.from_pretrained(tmp_path / "n")
    with pytest.raises(RuntimeError, match="CUDA|cuda"):
        model.to("cuda")


def test_bfloat16_inference_weights_track_float32(rng):
    cfg = tiny_config(vocab_size=301, hidden_size=64, intermediate_size=128)
    model = pyllama.Llama(cfg, seed=4)
    ids = rng.integers(0, cfg.vocab_size, (1, 12))
    ref = model(ids).logits[0]
    assert model.inference_dtype == "float32"
    model.set_inference_dtype("bfloat16")
    assert model.inference_dtype == "bfloat16"
    model._kv_reset(1, 16)
    model._kv_forward(ids[:, :4], np.array([0]), np.array([0]))  # prefill stays float32
    for p in range(4, 12):
        step = model._kv_forward(ids[:, p:p + 1], np.array([0]), np.array([p]))[0]
        err = np.abs(step - ref[p]).max()
        assert 0 < err <= 2e-2 * np.abs(ref[p]).max(), err  # bf16 weights: close, not identical
    # the bf16 copy is taken at kv_reset, so later weight changes are seen by the next generation
    model.named_parameters()["lm_head.weight"][:] = 0
    model._kv_reset(1, 16)
    model._kv_forward(ids[:, :4], np.array([0]), np.array([0]))
    assert not model._kv_forward(ids[:, 4:5], np.array([0]), np.array([4])).any()
    model.set_inference_dtype("float32")
    with pytest.raises(ValueError, match="bfloat16"):
        model.set_inference_dtype("int4")


def test_window_labels_train_every_position(rng):
    """labels with one more column (a window of T+1 tokens) give every position a target,
    equal to PyTorch's cross-entropy of the logits against window[:, 1:]."""
    cfg = tiny_config()
    model = pyllama.Llama(cfg, seed=6)
    hf = hf_model_from(model)
    window = rng.integers(0, cfg.vocab_size, (2, 17))
    labels = window.copy()
    labels[1, 9] = -100  # an ignored target
    out = model(window[:, :-1], labels=labels)
    model.zero_grad()
    model.backward()
    logits = hf(input_ids=torch.from_numpy(window[:, :-1])).logits
    ref = torch.nn.functional.cross_entropy(logits.reshape(-1, cfg.vocab_size),
                                            torch.from_numpy(labels[:, 1:]).reshape(-1), ignore_index=-100)
    ref.backward()
    assert abs(out.loss - ref.item()) <= 1e-5 * max(1.0, ref.item())
    for n, p in hf.named_parameters():
        g = model.named_grads()[n]
        assert np.abs(g - p.grad.numpy()).max() <= 1e-4 * np.abs(p.grad.numpy()).max() + 1e-6, n
    with pytest.raises(ValueError, match="one more column"):
        model(window[:, :-3], labels=window)
