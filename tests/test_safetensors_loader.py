"""The core's one safetensors reader (csrc/core/safetensors.cpp), through from_pretrained:
float32/float16/bfloat16 load exactly; other dtypes and non-finite weights are refused by
name, never cast; corrupt files give errors that name the file and the tensor."""
import json
import os

import numpy as np
import pytest

import pyllama

from helpers import tiny_config

safetensors_numpy = pytest.importorskip("safetensors.numpy", reason="safetensors is a dependency")


def _saved(tmp_path, tied=False):
    model = pyllama.Llama(tiny_config(tie_word_embeddings=tied), seed=3)
    model.save_pretrained(tmp_path / "m")
    return model, tmp_path / "m"


def _rewrite(path, change):
    """Re-write model.safetensors with `change(dict of arrays)` applied, by the safetensors library."""
    f = path / "model.safetensors"
    tensors = safetensors_numpy.load_file(str(f))
    change(tensors)
    safetensors_numpy.save_file(tensors, str(f))


@pytest.mark.parametrize("dtype", [np.int8, np.int32, np.bool_, np.float64, np.uint8, np.int64])
def test_non_float_and_float64_tensors_are_refused_by_name(tmp_path, dtype):
    _, path = _saved(tmp_path)
    name = "model.layers.0.input_layernorm.weight"

    def change(t):
        t[name] = (np.ones(t[name].shape) * 10).astype(dtype)

    _rewrite(path, change)
    with pytest.raises(ValueError, match=rf"tensor '{name}' has dtype .*refused rather than cast"):
        pyllama.Llama.from_pretrained(path)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_weights_are_refused_unless_asked(tmp_path, bad):
    model, path = _saved(tmp_path)
    name = "model.norm.weight"

    def change(t):
        t[name] = t[name].copy()
        t[name][3] = bad

    _rewrite(path, change)
    with pytest.raises(ValueError, match=rf"tensor '{name}' holds .* at element 3: the weights are not finite"):
        pyllama.Llama.from_pretrained(path)
    loaded = pyllama.Llama.from_pretrained(path, check_finite=False)  # the opt-out for huge trusted files
    got = loaded.named_parameters()[name][3]
    assert (np.isnan(got) and np.isnan(bad)) or got == bad


def test_float16_and_bfloat16_convert_exactly(tmp_path):
    torch = pytest.importorskip("torch", reason="torch is a test extra")
    model, path = _saved(tmp_path)
    ref = model.named_parameters()
    for dt in (torch.float16, torch.bfloat16):
        from safetensors.torch import save_file

        tensors = {n: torch.from_numpy(np.array(v)).to(dt) for n, v in ref.items()}
        save_file(tensors, str(path / "model.safetensors"))
        loaded = pyllama.Llama.from_pretrained(path)
        for n, v in loaded.named_parameters().items():
            np.testing.assert_array_equal(v, tensors[n].float().numpy(), err_msg=f"{dt} {n}")


def test_transformers_bfloat16_checkpoint_gives_its_logits(tmp_path):
    """A bf16 checkpoint as real models ship (written by transformers): loads, and the logits
    equal transformers' float32 run of the same (bf16-rounded) weights."""
    torch = pytest.importorskip("torch", reason="torch is a test extra")
    transformers = pytest.importorskip("transformers", reason="transformers is a test extra")
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                                   num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    hf = transformers.LlamaForCausalLM(cfg).to(torch.bfloat16)
    hf.save_pretrained(tmp_path)
    model = pyllama.Llama.from_pretrained(tmp_path)
    ids = np.random.default_rng(0).integers(0, 64, size=(2, 12))
    with torch.no_grad():
        ref = hf.float().eval()(torch.tensor(ids)).logits.numpy()
    np.testing.assert_allclose(model(ids).logits, ref, atol=1e-4 * max(1.0, np.abs(ref).max()))


def test_sharded_checkpoint_and_its_errors(tmp_path):
    model, path = _saved(tmp_path)
    tensors = safetensors_numpy.load_file(str(path / "model.safetensors"))
    os.remove(path / "model.safetensors")
    names = sorted(tensors)
    half = len(names) // 2
    weight_map = {}
    for i, part in enumerate((names[:half], names[half:])):
        fname = f"model-0000{i + 1}-of-00002.safetensors"
        safetensors_numpy.save_file({n: tensors[n] for n in part}, str(path / fname))
        weight_map.update({n: fname for n in part})
    (path / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    loaded = pyllama.Llama.from_pretrained(path)
    for n, v in model.named_parameters().items():
        np.testing.assert_array_equal(loaded.named_parameters()[n], v)
    # a tensor in two shards
    first = next(iter(tensors))
    safetensors_numpy.save_file({n: tensors[n] for n in names[half:]} | {first: tensors[first]},
                                str(path / "model-00002-of-00002.safetensors"))
    with pytest.raises(ValueError, match=f"tensor '{first}' is in both"):
        pyllama.Llama.from_pretrained(path)


def test_corrupt_files_name_what_is_wrong(tmp_path):
    _, path = _saved(tmp_path)
    f = path / "model.safetensors"
    blob = f.read_bytes()
    f.write_bytes(blob[: len(blob) // 2])  # truncated
    with pytest.raises(ValueError, match="model.safetensors.*outside the data.*truncated or corrupt"):
        pyllama.Llama.from_pretrained(path)
    f.write_bytes(b"\xff" * 8 + blob[8:])  # absurd header length
    with pytest.raises(ValueError, match="header length .* exceeds the file size"):
        pyllama.Llama.from_pretrained(path)
    f.write_bytes(b"abc")
    with pytest.raises(ValueError, match="too short to be a safetensors file"):
        pyllama.Llama.from_pretrained(path)
    hlen = int.from_bytes(blob[:8], "little")
    header = json.loads(blob[8:8 + hlen])
    name = "model.norm.weight"
    header[name]["data_offsets"] = [0, header[name]["data_offsets"][1] - header[name]["data_offsets"][0]]
    h = json.dumps(header).encode()
    h += b" " * (-len(h) % 8)
    f.write_bytes(len(h).to_bytes(8, "little") + h + blob[8 + hlen:])
    with pytest.raises(ValueError, match="overlap"):
        pyllama.Llama.from_pretrained(path)
    header[name]["data_offsets"] = [0, 2 ** 62]
    h = json.dumps(header).encode()
    f.write_bytes(len(h).to_bytes(8, "little") + h + blob[8 + hlen:])
    with pytest.raises(ValueError, match=f"tensor '{name}': data_offsets"):
        pyllama.Llama.from_pretrained(path)


def test_tied_checkpoint_may_carry_lm_head_and_unexpected_tensors_are_refused(tmp_path):
    model, path = _saved(tmp_path, tied=True)

    def add_head(t):
        t["lm_head.weight"] = t["model.embed_tokens.weight"].copy()
        t["model.layers.0.self_attn.rotary_emb.inv_freq"] = np.ones(4, np.float32)

    _rewrite(path, add_head)
    loaded = pyllama.Llama.from_pretrained(path)
    np.testing.assert_array_equal(loaded.flat_params(), model.flat_params())

    def add_bias(t):
        t["model.layers.0.self_attn.q_proj.bias"] = np.zeros(48, np.float32)

    _rewrite(path, add_bias)
    with pytest.raises(ValueError, match="unexpected tensor 'model.layers.0.self_attn.q_proj.bias'"):
        pyllama.Llama.from_pretrained(path)
