"""pytorch_model.bin checkpoints (csrc/core/torch_bin.cpp): read without running pickled code.

The reference is transformers loading the same files: the logits must match. Files come from
the writers real checkpoints come from: transformers' ``save_pretrained(safe_serialization=False)``
where it still writes .bin (transformers < 5), else huggingface_hub's ``save_torch_state_dict``
(what transformers 4.4x called), and plain ``torch.save`` of a state dict (tied weights sharing
one storage, non-contiguous views, the legacy non-zip stream). A pickle that names anything
outside the state-dict set (os.system, builtins.exec, ...) is refused and nothing runs.
"""
import io
import os
import pickle
import re
import zipfile

import numpy as np
import pytest

import pyllama

torch = pytest.importorskip("torch", reason="torch is a test extra (pip install '.[test]')")
transformers = pytest.importorskip("transformers", reason="transformers is a test extra")

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def _hf_model(dtype="float32", tied=False, seed=0):
    torch.manual_seed(seed)
    cfg = transformers.LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                                   num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                                   tie_word_embeddings=tied)
    return transformers.LlamaForCausalLM(cfg).to(DTYPES[dtype])


def _save_bin(hf, path, max_shard_size=None):
    """Write `hf` as pytorch_model.bin (or shards + pytorch_model.bin.index.json) the way transformers does."""
    kw = {} if max_shard_size is None else {"max_shard_size": max_shard_size}
    hf.save_pretrained(path, safe_serialization=False, **kw)
    if not any(f.startswith("pytorch_model") for f in os.listdir(path)):
        # transformers >= 5 writes safetensors only; 4.4x wrote .bin through this huggingface_hub call
        from huggingface_hub import save_torch_state_dict

        for f in os.listdir(path):
            if f.endswith((".safetensors", ".safetensors.index.json")):
                os.remove(os.path.join(path, f))
        save_torch_state_dict(hf.state_dict(), path, safe_serialization=False, **kw)
    names = sorted(f for f in os.listdir(path) if f.startswith("pytorch_model"))
    assert names and not any(f.endswith(".safetensors") for f in os.listdir(path)), os.listdir(path)
    return names


def _reference_logits(path, ids):
    """transformers' float32 logits from the files in `path`."""
    ref = transformers.LlamaForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    with torch.no_grad():
        return ref(torch.tensor(ids)).logits.numpy()


def _check_logits(path, ids):
    model = pyllama.Llama.from_pretrained(path)
    ref = _reference_logits(path, ids)
    np.testing.assert_allclose(model(ids).logits, ref, atol=1e-4 * max(1.0, np.abs(ref).max()), rtol=0)
    return model


@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16"])
@pytest.mark.parametrize("sharded", [False, True])
def test_transformers_bin_checkpoint_gives_its_logits(tmp_path, dtype, sharded):
    hf = _hf_model(dtype)
    names = _save_bin(hf, tmp_path, max_shard_size="8KB" if sharded else None)
    if sharded:
        assert "pytorch_model.bin.index.json" in names and len(names) > 3, names  # 3+ shards + the index
    else:
        assert names == ["pytorch_model.bin"]
    ids = np.random.default_rng(1).integers(0, 64, size=(2, 11))
    model = _check_logits(tmp_path, ids)
    # every weight equals torch.load's value exactly (f16/bf16 widen exactly)
    want = {}
    for f in names:
        if f.endswith(".bin"):
            want.update(torch.load(tmp_path / f, weights_only=True))
    for n, v in model.named_parameters().items():
        np.testing.assert_array_equal(v, want[n].float().numpy(), err_msg=n)


def test_shared_storages_strides_and_legacy_stream(tmp_path):
    """torch.save of a tied model (lm_head shares the embedding's storage), with views at an
    offset and transposed (non-contiguous) weights, in the zip and the legacy layout."""
    hf = _hf_model(tied=True, seed=2)
    sd = dict(hf.state_dict())
    assert sd["lm_head.weight"].data_ptr() == sd["model.embed_tokens.weight"].data_ptr()
    q = "model.layers.0.self_attn.q_proj.weight"
    sd[q] = sd[q].t().contiguous().t()  # same values, column-major strides
    assert not sd[q].is_contiguous()
    g, u = "model.layers.1.mlp.gate_proj.weight", "model.layers.1.mlp.up_proj.weight"
    both = torch.cat([sd[g], sd[u]])  # two views of one storage, the second at an offset
    sd[g], sd[u] = both[: sd[g].shape[0]], both[sd[g].shape[0]:]
    hf.config.save_pretrained(tmp_path)
    ids = np.random.default_rng(2).integers(0, 64, size=(1, 9))
    for zip_format in (True, False):
        torch.save(sd, tmp_path / "pytorch_model.bin", _use_new_zipfile_serialization=zip_format)
        assert zipfile.is_zipfile(tmp_path / "pytorch_model.bin") == zip_format
        entries = {e[0]: e for e in pyllama._core.torch_bin_entries(str(tmp_path / "pytorch_model.bin"))}
        assert entries[u][4] == sd[g].shape[0] * sd[g].shape[1]  # the storage offset, in elements
        assert list(entries[q][3]) == [1, sd[q].shape[0]]
        model = _check_logits(tmp_path, ids)
        for n, v in model.named_parameters().items():
            np.testing.assert_array_equal(v, sd[n].numpy(), err_msg=f"zip={zip_format} {n}")


class _Call:
    """An object whose unpickling calls fn(*args): what a malicious checkpoint carries."""

    def __init__(self, fn, *args):
        self.fn, self.args = fn, args

    def __reduce__(self):
        return self.fn, self.args


def _payloads(marker):
    code = f"open({str(marker)!r}, 'w').write('pwned')"
    return {
        "os.system": _Call(os.system, f"touch '{marker}'"),
        "builtins.exec": _Call(exec, code),
        "builtins.eval": _Call(eval, code),
    }


def _zip_with_pickle(path, data_pkl):
    """A stored zip laid out as torch.save lays it out, holding `data_pkl` (any bytes)."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as z:
        z.writestr("archive/data.pkl", data_pkl)
        z.writestr("archive/byteorder", "little")
        z.writestr("archive/version", "3\n")


@pytest.mark.parametrize("how", ["torch.save", "protocol4", "legacy", "inside_tensor_args"])
@pytest.mark.parametrize("call", ["os.system", "builtins.exec", "builtins.eval"])
def test_code_in_the_pickle_is_refused_and_never_runs(tmp_path, how, call):
    hf = _hf_model()
    hf.config.save_pretrained(tmp_path)
    marker = tmp_path / "pwned.txt"
    payload = _payloads(marker)[call]
    # the payload is live: Python's own unpickler runs it
    pickle.loads(pickle.dumps(payload, protocol=2))
    assert marker.exists()
    marker.unlink()
    sd = dict(hf.state_dict())
    f = tmp_path / "pytorch_model.bin"
    if how == "torch.save":
        sd["model.norm.weight"] = payload
        torch.save(sd, f)
    elif how == "legacy":
        sd["model.norm.weight"] = payload
        torch.save(sd, f, _use_new_zipfile_serialization=False)
    elif how == "protocol4":  # STACK_GLOBAL + MEMOIZE, the payload as the whole object
        _zip_with_pickle(f, pickle.dumps({"model.norm.weight": payload}, protocol=4))
    else:  # hidden as the backward-hooks argument of an allowed tensor rebuild
        torch.save({"x": torch.ones(2)}, f)
        with zipfile.ZipFile(f) as z:
            pkl = z.read(next(n for n in z.namelist() if n.endswith("/data.pkl")))
        evil = pickle.dumps(payload, protocol=2)[2:-1]  # the payload's opcodes without PROTO / STOP
        hooks = re.search(rb"ccollections\nOrderedDict\nq.\)R", pkl, re.S)  # OrderedDict() as the hooks
        assert hooks, pkl
        _zip_with_pickle(f, pkl[:hooks.start()] + evil + pkl[hooks.end():])
    module, fn = call.split(".")
    name = {"os": "(posix|os|nt)", "builtins": "(__builtin__|builtins)"}[module] + r"\." + fn
    with pytest.raises(ValueError, match=rf"pytorch_model.bin.*names '{name}'.*refuses it"):
        pyllama.Llama.from_pretrained(tmp_path)
    assert not marker.exists()


def test_unknown_opcodes_and_non_state_dicts_are_refused(tmp_path):
    f = tmp_path / "pytorch_model.bin"
    # protocol-0 INST (calls a class by name without GLOBAL + REDUCE)
    _zip_with_pickle(f, b"(X\x07\x00\x00\x00touch xios\nsystem\n.")
    with pytest.raises(ValueError, match=r"opcode 0x69 \(INST\).*never writes"):
        pyllama._core.torch_bin_entries(str(f))
    _zip_with_pickle(f, pickle.dumps([1, 2, 3], protocol=2))
    with pytest.raises(ValueError, match="holds a list, not a state dict"):
        pyllama._core.torch_bin_entries(str(f))
    _zip_with_pickle(f, pickle.dumps({"step": 3}, protocol=2))
    with pytest.raises(ValueError, match="entry 'step' is a int, not a tensor"):
        pyllama._core.torch_bin_entries(str(f))


def test_non_float_dtypes_are_refused_by_name(tmp_path):
    hf = _hf_model()
    hf.config.save_pretrained(tmp_path)
    for dt in (torch.int64, torch.float64, torch.bool, torch.int8):
        sd = dict(hf.state_dict())
        name = "model.layers.1.input_layernorm.weight"
        sd[name] = sd[name].to(dt)
        torch.save(sd, tmp_path / "pytorch_model.bin")
        with pytest.raises(ValueError, match=rf"pytorch_model.bin', tensor '{name}' has dtype .*refused rather than cast"):
            pyllama.Llama.from_pretrained(tmp_path)


def test_truncated_garbage_and_compressed_files_raise_naming_the_file(tmp_path):
    hf = _hf_model()
    hf.config.save_pretrained(tmp_path)
    f = tmp_path / "pytorch_model.bin"
    for zip_format in (True, False):
        torch.save(hf.state_dict(), f, _use_new_zipfile_serialization=zip_format)
        blob = f.read_bytes()
        for cut in np.linspace(1, len(blob) - 1, 23).astype(int):
            f.write_bytes(blob[:cut])
            with pytest.raises(ValueError, match="pytorch_model.bin"):
                pyllama.Llama.from_pretrained(tmp_path)
    rng = np.random.default_rng(0)
    for head in (b"", b"PK\x03\x04", b"\x80\x02"):
        f.write_bytes(head + rng.integers(0, 256, 3000, dtype=np.uint8).tobytes())
        with pytest.raises(ValueError, match="pytorch_model.bin"):
            pyllama.Llama.from_pretrained(tmp_path)
    # the same archive re-zipped with deflate
    torch.save(hf.state_dict(), tmp_path / "ok.bin")
    with zipfile.ZipFile(tmp_path / "ok.bin") as src, zipfile.ZipFile(f, "w", zipfile.ZIP_DEFLATED) as dst:
        for n in src.namelist():
            dst.writestr(n, src.read(n))
    with pytest.raises(ValueError, match=r"pytorch_model.bin': zip entry '.*' is compressed \(zip method 8\)"):
        pyllama.Llama.from_pretrained(tmp_path)


def test_safetensors_is_preferred_and_errors_name_what_is_missing(tmp_path):
    hf = _hf_model()
    _save_bin(hf, tmp_path)
    other = _hf_model(seed=5)
    from safetensors.torch import save_file

    save_file(dict(other.state_dict()), str(tmp_path / "model.safetensors"))
    model = pyllama.Llama.from_pretrained(tmp_path)  # the safetensors file wins, as in transformers
    np.testing.assert_array_equal(model.named_parameters()["model.norm.weight"],
                                  other.state_dict()["model.norm.weight"].numpy())
    os.remove(tmp_path / "model.safetensors")
    os.remove(tmp_path / "pytorch_model.bin")
    with pytest.raises(FileNotFoundError, match="model.safetensors nor pytorch_model.bin"):
        pyllama.Llama.from_pretrained(tmp_path)
    (tmp_path / "pytorch_model.bin.index.json").write_text("{not json")
    with pytest.raises(ValueError, match="pytorch_model.bin.index.json.*not a valid sharded-checkpoint index"):
        pyllama.Llama.from_pretrained(tmp_path)


def test_weights_stream_from_bytes_without_torch_load(tmp_path):
    """The reader needs no torch: a .bin crafted with plain pickle + zipfile (as torch lays it out) loads."""
    hf = _hf_model()
    hf.config.save_pretrained(tmp_path)
    sd = {k: v.numpy() for k, v in hf.state_dict().items()}

    class Storage:  # the persistent id torch writes: ('storage', torch.FloatStorage, key, 'cpu', numel)
        def __init__(self, key, n):
            self.key, self.n = key, n

    class Pickler(pickle.Pickler):
        def persistent_id(self, obj):
            if isinstance(obj, Storage):
                return ("storage", torch.FloatStorage, obj.key, "cpu", obj.n)
            return None

    class Tensor:
        def __init__(self, key, a):
            self.key, self.a = key, a

        def __reduce__(self):
            stride = tuple(s // 4 for s in self.a.strides)
            return torch._utils._rebuild_tensor_v2, (Storage(self.key, self.a.size), 0, self.a.shape, stride,
                                                      False, __import__("collections").OrderedDict())

    buf = io.BytesIO()
    Pickler(buf, protocol=2).dump({n: Tensor(str(i), a) for i, (n, a) in enumerate(sd.items())})
    with zipfile.ZipFile(tmp_path / "pytorch_model.bin", "w", zipfile.ZIP_STORED) as z:
        z.writestr("mymodel/data.pkl", buf.getvalue())
        z.writestr("mymodel/byteorder", "little")
        z.writestr("mymodel/version", "3\n")
        for i, a in enumerate(sd.values()):
            z.writestr(f"mymodel/data/{i}", np.ascontiguousarray(a, np.float32).tobytes())
    ids = np.random.default_rng(3).integers(0, 64, size=(1, 7))
    _check_logits(tmp_path, ids)


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_parameters_and_newer_pickle_protocols(tmp_path, protocol):
    """nn.Parameter values (_rebuild_parameter) and torch.save(pickle_protocol=4/5): STACK_GLOBAL,
    MEMOIZE, FRAME, SHORT_BINUNICODE; the values are the saved tensors'."""
    sd = {"p": torch.nn.Parameter(torch.randn(3, 5)), "h": torch.randn(4).half(), "b": torch.randn(2, 2).bfloat16()}
    f = tmp_path / "x.bin"
    torch.save(sd, f, pickle_protocol=protocol)
    entries = pyllama._core.torch_bin_entries(str(f))
    assert [(e[0], e[1], list(e[2])) for e in entries] == [("p", "F32", [3, 5]), ("h", "F16", [4]), ("b", "BF16", [2, 2])]
    hf = _hf_model()
    hf.config.save_pretrained(tmp_path)
    want = dict(hf.state_dict())
    torch.save(want, tmp_path / "pytorch_model.bin", pickle_protocol=protocol)  # torch.load's weights_only
    model = pyllama.Llama.from_pretrained(tmp_path)  # mode refuses protocol 4's FRAME; this reader does not
    for n, v in model.named_parameters().items():
        np.testing.assert_array_equal(v, want[n].numpy(), err_msg=n)
