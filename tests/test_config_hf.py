"""config.json as transformers writes it: every field that changes the math is honoured
(same logits as transformers) or refused with a clear error; never loaded with other logits.

The files are written by transformers itself (``save_pretrained``); the transformers-4
spelling (``rope_scaling`` beside a top-level ``rope_theta``) is made from the same file by
moving the keys back, and transformers reads both spellings, so its logits are the reference
for both.
"""
import json

import numpy as np
import pytest

import pyllama

torch = pytest.importorskip("torch", reason="torch is a test extra: pip install '.[test]'")
transformers = pytest.importorskip("transformers", reason="transformers is a test extra")

BASE = dict(vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
            rms_norm_eps=1e-5)

SCALINGS = {
    "default": None,
    "linear": {"rope_type": "linear", "factor": 3.0},
    "linear-type-key": {"type": "linear", "factor": 3.0},
    "dynamic": {"rope_type": "dynamic", "factor": 2.0},
    "yarn": {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 16},
    "llama3": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
               "original_max_position_embeddings": 16},
    "yarn-mscale": {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 16, "mscale": 0.8,
                    "mscale_all_dim": 0.5, "beta_fast": 16, "beta_slow": 2},
    "longrope": {"rope_type": "longrope", "short_factor": [1.0, 1.1, 1.2, 1.3],
                 "long_factor": [2.0, 3.0, 4.0, 5.0], "original_max_position_embeddings": 16},
}
REFUSED = {"longrope"}  # pyllama implements every other type


def _write_hf(path, **kw):
    """A tiny LlamaForCausalLM with random weights, saved by transformers; returns its dir."""
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(**{**BASE, **kw})
    model = transformers.LlamaForCausalLM(cfg)
    with torch.no_grad():  # norms away from 1, sharp attention: a dropped field shows in the logits
        for n, p in model.named_parameters():
            if "norm" in n:
                p.uniform_(0.5, 1.5)
            elif "q_proj" in n or "k_proj" in n:
                p.mul_(8.0)
    model.save_pretrained(path)
    return path


def _to_v4_spelling(path):
    """The same config in transformers 4's spelling: rope_scaling + a top-level rope_theta."""
    p = path / "config.json"
    d = json.loads(p.read_text())
    rp = d.pop("rope_parameters", None)
    if rp is not None:
        rp = dict(rp)
        d["rope_theta"] = rp.pop("rope_theta", 10000.0)
        d["rope_scaling"] = None if rp.get("rope_type", rp.get("type")) == "default" else rp
    p.write_text(json.dumps(d))
    return path


def _reference_logits(path, ids):
    hf = transformers.LlamaForCausalLM.from_pretrained(path, attn_implementation="eager").float().eval()
    with torch.no_grad():
        return hf(torch.tensor(ids)).logits.numpy()


def _loads_and_matches_or_raises(path, ids, must_raise):
    """The contract: loading either raises ValueError or gives transformers' logits."""
    ref = _reference_logits(path, ids)
    try:
        model = pyllama.Llama.from_pretrained(path)
    except ValueError as e:
        assert must_raise, f"refused a config pyllama supports: {e}"
        return str(e)
    assert not must_raise, "loaded a config pyllama cannot compute with"
    np.testing.assert_allclose(model(ids).logits, ref, atol=1e-4 * max(1.0, np.abs(ref).max()))
    return None


IDS = np.random.default_rng(0).integers(0, 64, size=(2, 48))  # past the 16 original positions


@pytest.mark.parametrize("spelling", ["transformers5", "transformers4"])
@pytest.mark.parametrize("name", sorted(SCALINGS))
def test_rope_scaling_each_spelling_matches_or_raises(tmp_path, name, spelling):
    path = _write_hf(tmp_path, rope_scaling=SCALINGS[name], rope_theta=5000.0)
    written = json.loads((path / "config.json").read_text())
    if spelling == "transformers4":
        _to_v4_spelling(path)
    msg = _loads_and_matches_or_raises(path, IDS, must_raise=name in REFUSED)
    if name in REFUSED:
        assert f"rope_type '{name}'" in msg
    if name != "default":
        # the scaling really changes transformers' logits, so loading it silently would be wrong
        plain = _write_hf(tmp_path / "plain", rope_theta=5000.0)
        # (dynamic only differs past max_position_embeddings, hence the longer sequence)
        long_ids = np.random.default_rng(1).integers(0, 64, size=(1, 100))
        assert not np.allclose(_reference_logits(plain, long_ids), _reference_logits(path, long_ids), atol=1e-3)
    else:
        # rope_theta came from where that transformers version keeps it
        assert pyllama.LlamaConfig.from_json(path / "config.json").rope_theta == 5000.0
        if spelling == "transformers5" and "rope_parameters" in written:
            assert "rope_theta" not in written or written["rope_theta"] == 5000.0


@pytest.mark.parametrize("field,value,must_raise", [
    ("head_dim", 16, False),              # explicit head_dim != hidden/heads
    ("head_dim", 8, False),               # the same as hidden/heads
    ("attention_bias", True, False),
    ("mlp_bias", True, False),
    ("hidden_act", "gelu", True),
    ("hidden_act", "swish", False),       # transformers' swish is SiLU
    ("pretraining_tp", 2, False),         # a tensor-parallel split of the same products
    ("attention_dropout", 0.1, True),     # dropout while training: pyllama has none
    ("tie_word_embeddings", True, False),
])
def test_math_fields_are_honoured_or_refused(tmp_path, field, value, must_raise):
    path = _write_hf(tmp_path, **{field: value})
    assert json.loads((path / "config.json").read_text())[field] == value  # transformers wrote it
    msg = _loads_and_matches_or_raises(path, IDS[:, :20], must_raise)
    if must_raise:
        assert field in msg


def _edit(path, **changes):
    p = path / "config.json"
    d = json.loads(p.read_text())
    for k, v in changes.items():
        if v is _DROP:
            d.pop(k, None)
        else:
            d[k] = v
    p.write_text(json.dumps(d))


_DROP = object()


@pytest.mark.parametrize("changes,pattern", [
    ({"rope_parameters": {"rope_type": "default", "rope_theta": 5000.0, "frobnicate": 1}}, "frobnicate"),
    ({"rope_parameters": {"rope_type": "default", "rope_theta": 5000.0, "factor": 2.0}}, "factor"),
    ({"rope_parameters": {"rope_type": "spiral", "rope_theta": 5000.0}}, "unknown rope_type 'spiral'"),
    ({"rope_parameters": {"rope_type": "linear", "type": "yarn", "factor": 2.0}}, "must agree"),
    ({"rope_parameters": {"factor": 2.0}}, "names no rope_type"),
    ({"rope_parameters": {"rope_type": "default", "rope_theta": 5000.0}, "rope_theta": 10000.0}, "must agree"),
    ({"rope_parameters": {"rope_type": "default", "partial_rotary_factor": 0.5}}, "partial_rotary_factor"),
    ({"partial_rotary_factor": 0.5}, "partial_rotary_factor"),
    ({"rope_scaling": "linear"}, "rope_scaling must be an object"),
    ({"quantization_config": {"quant_method": "gptq"}}, "quantization_config"),
    ({"rms_norm_eps": True}, "rms_norm_eps must be a number"),
    ({"vocab_size": "64"}, "vocab_size must be a positive integer"),
    ({"hidden_size": 32.5}, "hidden_size must be a positive integer"),
    ({"num_hidden_layers": 2**40}, "num_hidden_layers must be a positive integer of at most"),
    ({"tie_word_embeddings": "yes"}, "tie_word_embeddings must be true or false"),
    ({"vocab_size": _DROP}, "lacks the required field vocab_size"),
    ({"model_type": "mistral"}, "model_type"),
    ({"rope_parameters": {"rope_type": "llama3", "factor": 8.0, "high_freq_factor": 4.0}},
     "no 'low_freq_factor'"),
    ({"rope_parameters": {"rope_type": "linear", "factor": 2.0, "low_freq_factor": 1.0}}, "does not take"),
    ({"rope_parameters": {"rope_type": "linear", "factor": 0.5}}, ">= 1"),
    ({"rope_parameters": {"rope_type": "linear"}}, "no 'factor'"),
    ({"rope_parameters": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 4.0, "high_freq_factor": 1.0}},
     "low_freq_factor < high_freq_factor"),
    ({"rope_parameters": {"rope_type": "linear", "factor": 2.0},
      "rope_scaling": {"rope_type": "linear", "factor": 3.0}}, "different RoPE scalings"),
    ({"head_dim": 7}, "even"),
])
def test_hand_edited_configs_are_refused_by_name(tmp_path, changes, pattern):
    path = _write_hf(tmp_path)
    _edit(path, **changes)
    with pytest.raises(ValueError, match=pattern):
        pyllama.Llama.from_pretrained(path)


def test_config_json_that_is_not_an_object(tmp_path):
    path = _write_hf(tmp_path)
    (path / "config.json").write_text("[1, 2]")
    with pytest.raises(ValueError, match="JSON object"):
        pyllama.Llama.from_pretrained(path)


def test_generate_cli_refuses_longrope_and_runs_llama3(tmp_path, capsys):
    from pyllama.cli import main

    path = _write_hf(tmp_path / "longrope", rope_scaling=SCALINGS["longrope"])
    rc = main(["generate", "--checkpoint", str(path), "--prompt-ids", "1,2,3", "--max-new-tokens", "2"])
    assert rc == 1
    assert "longrope" in capsys.readouterr().err
    path = _write_hf(tmp_path / "llama3", rope_scaling=SCALINGS["llama3"])
    rc = main(["generate", "--checkpoint", str(path), "--prompt-ids", "1,2,3", "--max-new-tokens", "2"])
    assert rc == 0, capsys.readouterr().err


def test_pyllama_config_round_trips_through_transformers(tmp_path):
    cfg = pyllama.LlamaConfig(**BASE, rope_theta=123456.0, tie_word_embeddings=True)
    cfg.to_json(tmp_path / "config.json")
    hf = transformers.AutoConfig.from_pretrained(tmp_path)
    hf.save_pretrained(tmp_path / "again")  # transformers' own spelling of the same settings
    again = pyllama.LlamaConfig.from_json(tmp_path / "again" / "config.json")
    assert again.rope_theta == 123456.0 and again.tie_word_embeddings
    # transformers adds its default bos/eos ids (1, 2); every field of the math is the same
    assert again.to_dict() == {**cfg.to_dict(), "bos_token_id": again.bos_token_id,
                               "eos_token_id": again.eos_token_id}


def test_config_docstring_examples():
    import doctest

    import pyllama.config

    result = doctest.testmod(pyllama.config, optionflags=doctest.ELLIPSIS)
    assert result.attempted >= 3 and result.failed == 0
