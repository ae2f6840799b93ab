"""Checkpoints in the forms real Llama 2 / 3.x files take, written by transformers itself:
RoPE scaling (linear, dynamic, yarn, llama3), attention/MLP biases and an explicit head_dim.

For each form: logits equal transformers' float32 logits from the same folder, gradients
equal torch autograd, greedy and beam tokens equal Hugging Face ``generate``, and a folder
saved by pyllama loads in transformers with the same logits. Each form is also checked to
matter: the same weights without it give other logits, so none of these can pass by
ignoring the field.
"""
import json

import numpy as np
import pytest

import pyllama

torch = pytest.importorskip("torch", reason="torch is a test extra: pip install '.[test]'")
transformers = pytest.importorskip("transformers", reason="transformers is a test extra")

BASE = dict(vocab_size=61, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, max_position_embeddings=24, rms_norm_eps=1e-5, rope_theta=500.0)

FORMS = {
    "linear": dict(rope_scaling={"rope_type": "linear", "factor": 3.0}),
    "dynamic": dict(rope_scaling={"rope_type": "dynamic", "factor": 2.0}),
    "yarn": dict(rope_scaling={"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 8}),
    "yarn-attention-factor": dict(rope_scaling={"rope_type": "yarn", "factor": 2.0, "attention_factor": 1.3,
                                                "original_max_position_embeddings": 12, "truncate": False}),
    "llama3": dict(rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                 "high_freq_factor": 4.0, "original_max_position_embeddings": 8}),
    "attention_bias": dict(attention_bias=True),
    "mlp_bias": dict(mlp_bias=True),
    "head_dim": dict(head_dim=12),
    "llama3+biases+head_dim+tied": dict(
        rope_scaling={"rope_type": "llama3", "factor": 4.0, "low_freq_factor": 1.0, "high_freq_factor": 2.0,
                      "original_max_position_embeddings": 8},
        attention_bias=True, mlp_bias=True, head_dim=16, tie_word_embeddings=True),
}
# the field to take away to show that a form matters
PLAIN = {"rope_scaling": None, "attention_bias": False, "mlp_bias": False}


def _hf_model(**kw):
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(transformers.LlamaConfig(**{**BASE, **kw}))
    with torch.no_grad():  # biases away from 0, sharp attention: a dropped field shows in the logits
        for n, p in model.named_parameters():
            if n.endswith(".bias"):
                p.normal_(0.0, 0.3)
            elif "norm" in n:
                p.uniform_(0.5, 1.5)
            elif "q_proj" in n or "k_proj" in n:
                p.mul_(6.0)
    return model.eval()


def _hf_logits(model, ids):
    with torch.no_grad():
        return model(torch.tensor(ids)).logits.numpy()


def _close(a, b, rel=1e-4):
    np.testing.assert_allclose(a, b, atol=rel * max(1.0, float(np.abs(b).max())), rtol=0)


IDS = np.random.default_rng(0).integers(0, 61, size=(2, 20))
LONG = np.random.default_rng(1).integers(0, 61, size=(1, 40))  # past max_position_embeddings (dynamic)


@pytest.fixture(scope="module", params=sorted(FORMS))
def form(request, tmp_path_factory):
    name = request.param
    path = tmp_path_factory.mktemp(name.replace("+", "_"))
    hf = _hf_model(**FORMS[name])
    hf.save_pretrained(path)
    return name, hf, path


def test_logits_equal_transformers_and_the_form_matters(form):
    name, hf, path = form
    model = pyllama.Llama.from_pretrained(path)
    ids = LONG if name == "dynamic" else IDS
    ref = _hf_logits(transformers.LlamaForCausalLM.from_pretrained(path).eval(), ids)  # fresh: dynamic keeps state
    _close(model(ids).logits, ref)
    # the same weights without the form give other logits
    plain_kw = {k: PLAIN[k] for k in FORMS[name] if k in PLAIN}
    if plain_kw:
        cfg = json.loads((path / "config.json").read_text())
        cfg.pop("rope_parameters", None)
        cfg.update(plain_kw)
        cfg["rope_theta"] = BASE["rope_theta"]
        plain = transformers.LlamaForCausalLM(transformers.LlamaConfig(**{
            k: v for k, v in cfg.items() if k in BASE or k in ("head_dim", "tie_word_embeddings", *PLAIN)}))
        plain.load_state_dict({k: v for k, v in hf.state_dict().items() if k in plain.state_dict()}, strict=False)
        assert not np.allclose(_hf_logits(plain.eval(), ids), ref, atol=1e-3)


def test_gradients_equal_autograd(form):
    name, hf, path = form
    model = pyllama.Llama.from_pretrained(path)
    ids = LONG if name == "dynamic" else IDS
    ref_model = transformers.LlamaForCausalLM.from_pretrained(path).eval()
    loss = ref_model(torch.tensor(ids), labels=torch.tensor(ids)).loss
    loss.backward()
    out = model(ids, labels=ids)
    assert abs(out.loss - loss.item()) < 1e-5
    model.backward()
    grads = model.named_grads()
    ref = {n: p.grad.numpy() for n, p in ref_model.named_parameters()}
    assert set(grads) == set(ref)
    for n, g in ref.items():
        _close(grads[n], g, rel=2e-4)
    if "bias" in name:
        assert any(n.endswith(".bias") and np.abs(g).max() > 0 for n, g in ref.items())


def _generate_pair(path, prompt, **kw):
    from test_generation_util import hf_generate

    hf = transformers.LlamaForCausalLM.from_pretrained(path).eval()  # fresh: dynamic keeps state
    ref = hf_generate(hf, prompt, **kw)
    model = pyllama.Llama.from_pretrained(path)
    ours = model.generate([prompt], eos_token_id=[], **kw)
    return ours, ref


def test_greedy_and_beam_tokens_equal_hf_generate(form):
    name, _, path = form
    # dynamic: the prompt fits max_position_embeddings (24), the new tokens go past it, where
    # transformers recomputes the frequencies at every step; the others stay within it
    prompt = [5, 17, 3, 9, 4, 22, 1, 8, 30, 2] if name == "dynamic" else [5, 17, 3, 9]
    n = 24 if name == "dynamic" else 12
    ours, ref = _generate_pair(path, prompt, max_new_tokens=n, do_sample=False)
    assert [list(s) for s in ours] == ref
    ours, ref = _generate_pair(path, prompt, max_new_tokens=8, do_sample=False, num_beams=3,
                               num_return_sequences=2, length_penalty=1.0, early_stopping=True)
    assert [list(s) for s in ours] == ref


def test_saved_by_pyllama_loads_in_transformers(form, tmp_path):
    name, _, path = form
    model = pyllama.Llama.from_pretrained(path)
    model.save_pretrained(tmp_path / "again")
    ids = LONG if name == "dynamic" else IDS
    again = transformers.LlamaForCausalLM.from_pretrained(tmp_path / "again").eval()
    _close(model(ids).logits, _hf_logits(again, ids))
    back = pyllama.Llama.from_pretrained(tmp_path / "again")
    assert back.config == model.config


def test_bias_gradients_do_not_decay():
    cfg = pyllama.LlamaConfig(**{**BASE, "attention_bias": True, "mlp_bias": True})
    model = pyllama.Llama(cfg)
    segs = {name: decay for name, _, _, _, decay in pyllama.optim.param_segments(model)}
    assert not segs["model.layers.0.self_attn.q_proj.bias"] and not segs["model.layers.1.mlp.down_proj.bias"]
    assert segs["model.layers.0.self_attn.q_proj.weight"]
    assert all(np.all(v == 0) for n, v in model.named_parameters().items() if n.endswith(".bias"))


def test_dynamic_scaling_lengthens_the_context():
    cfg = pyllama.LlamaConfig(**{**BASE, "rope_scaling": {"rope_type": "dynamic", "factor": 2.0}})
    assert cfg.max_positions == 48
    model = pyllama.Llama(cfg)
    model(np.zeros((1, 48), dtype=np.int64))
    with pytest.raises(ValueError, match="rope_scaling factor"):
        model(np.zeros((1, 49), dtype=np.int64))
    plain = pyllama.Llama(pyllama.LlamaConfig(**BASE))
    with pytest.raises(ValueError, match="max_position_embeddings"):
        plain(np.zeros((1, 25), dtype=np.int64))


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_save_in_half_precision_loads_in_transformers(tmp_path, dtype):
    name = "llama3+biases+head_dim+tied"
    hf = _hf_model(**FORMS[name])
    hf.save_pretrained(tmp_path / "src")
    model = pyllama.Llama.from_pretrained(tmp_path / "src")
    model.save_pretrained(tmp_path / dtype, dtype=dtype)
    from safetensors import safe_open

    with safe_open(str(tmp_path / dtype / "model.safetensors"), "pt") as f:
        t = f.get_tensor("model.layers.0.self_attn.q_proj.bias")
        assert str(t.dtype) == f"torch.{dtype}"
        # rounded to nearest (even), as torch rounds float32 to that dtype
        ref = torch.tensor(model.named_parameters()["model.layers.0.self_attn.q_proj.bias"]).to(t.dtype)
        assert torch.equal(t, ref)
    assert json.loads((tmp_path / dtype / "config.json").read_text())["torch_dtype"] == dtype
    again = transformers.LlamaForCausalLM.from_pretrained(tmp_path / dtype, torch_dtype=torch.float32).eval()
    back = pyllama.Llama.from_pretrained(tmp_path / dtype)
    _close(back(IDS).logits, _hf_logits(again, IDS))
    # the weights are the rounded ones: close to float32's, not equal
    assert not np.array_equal(back.flat_params(), model.flat_params())
    np.testing.assert_allclose(back.flat_params(), model.flat_params(), rtol=1e-2, atol=1e-3)


def test_save_refuses_float16_overflow_and_unknown_dtypes(tmp_path):
    model = pyllama.Llama(pyllama.LlamaConfig(**BASE))
    with pytest.raises(ValueError, match="dtype must be"):
        model.save_pretrained(tmp_path / "x", dtype="int8")
    model.named_parameters()["model.norm.weight"][0] = 1e6
    with pytest.raises(ValueError, match="float16's range"):
        model.save_pretrained(tmp_path / "y", dtype="float16")
    model.save_pretrained(tmp_path / "z", dtype="bfloat16")  # bfloat16 has float32's range


def test_tied_config_with_a_different_lm_head_is_refused(tmp_path):
    """transformers unties a 'tied' model whose file holds another lm_head.weight (and warns);
    pyllama refuses it, naming the fix, rather than load other logits."""
    from safetensors.numpy import load_file, save_file

    hf = _hf_model(tie_word_embeddings=True)
    hf.save_pretrained(tmp_path)
    pyllama.Llama.from_pretrained(tmp_path)  # as transformers writes it: no lm_head.weight
    w = load_file(str(tmp_path / "model.safetensors"))
    w["lm_head.weight"] = w["model.embed_tokens.weight"].copy()
    save_file(w, str(tmp_path / "model.safetensors"), metadata={"format": "pt"})
    pyllama.Llama.from_pretrained(tmp_path)  # an equal copy loads
    w["lm_head.weight"] = w["lm_head.weight"] + 1.0
    save_file(w, str(tmp_path / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(ValueError, match="tie_word_embeddings.*false"):
        pyllama.Llama.from_pretrained(tmp_path)
