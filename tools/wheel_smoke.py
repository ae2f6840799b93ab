"""Smoke test of an installed pyllama wheel (tools/build_wheel.sh and cibuildwheel run it in a
fresh virtual environment, from a folder outside the source tree): train 5 steps, generate,
save, reload; the C API through ctypes; the CMake package and headers present.

    python tools/wheel_smoke.py          # exit status 0 and a JSON summary line when it passes
    python tools/wheel_smoke.py --save-checkpoint DIR   # a small model folder with a tokenizer
"""
import ctypes
import json
import os
import sys
import tempfile

import numpy as np


def save_checkpoint(d: str) -> None:
    """A small model folder with a tokenizer (for the examples built against the wheel)."""
    import pyllama

    corpus = os.path.join(os.path.dirname(pyllama.__file__), "data", "shakespeare.txt")
    with open(corpus, encoding="utf-8") as f:
        text = f.read(20000)
    tok = pyllama.Tokenizer.train([text], vocab_size=300, special_tokens=["<|endoftext|>"])
    cfg = pyllama.LlamaConfig(vocab_size=tok.n_vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                              num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    pyllama.Llama(cfg, seed=0).save_pretrained(d)
    tok.save(d)


def main() -> int:
    if len(sys.argv) == 3 and sys.argv[1] == "--save-checkpoint":
        save_checkpoint(sys.argv[2])
        return 0
    import pyllama

    here = os.path.dirname(os.path.abspath(pyllama.__file__))
    assert "site-packages" in here or "dist-packages" in here, f"pyllama imported from {here}, not an install"
    info = pyllama.build_info()
    cfg = pyllama.LlamaConfig(vocab_size=128, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                              num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    model = pyllama.Llama(cfg, seed=0)
    opt = pyllama.AdamW(model, lr=3e-3)
    rng = np.random.default_rng(0)
    batch = rng.integers(0, 128, size=(2, 16))
    losses = []
    for _ in range(5):  # the same batch five times: the loss must fall
        model.zero_grad()
        losses.append(float(model(batch, labels=batch).loss))
        model.backward()
        pyllama.clip_grad_norm(model, 1.0)
        opt.step()
    assert losses[-1] < losses[0], f"5 training steps did not lower the loss: {losses}"
    gen = model.generate([[1, 2, 3]], max_new_tokens=8, do_sample=False)[0]
    with tempfile.TemporaryDirectory() as d:
        model.save_pretrained(d)
        back = pyllama.Llama.from_pretrained(d)
        assert back.generate([[1, 2, 3]], max_new_tokens=8, do_sample=False)[0] == gen, "reloaded model differs"
        np.testing.assert_array_equal(back(batch).logits, model(batch).logits)
        # the C API of the same wheel on the same checkpoint
        lib = ctypes.CDLL(pyllama.c_library_path())
        assert lib.pyllama_abi_version() == 1
        lib.pyllama_model_load.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.POINTER(ctypes.c_void_p)]
        lib.pyllama_model_free.argtypes = [ctypes.c_void_p]
        lib.pyllama_model_num_parameters.argtypes = [ctypes.c_void_p]
        lib.pyllama_model_num_parameters.restype = ctypes.c_int64
        lib.pyllama_last_error.restype = ctypes.c_char_p
        h = ctypes.c_void_p()
        st = lib.pyllama_model_load(d.encode(), b"cpu", ctypes.byref(h))
        assert st == 0, lib.pyllama_last_error()
        assert lib.pyllama_model_num_parameters(h) == model.num_parameters()
        lib.pyllama_model_free(h)
    assert os.path.isfile(os.path.join(pyllama.cmake_dir(), "pyllamaConfig.cmake"))
    assert os.path.isfile(os.path.join(pyllama.include_dir(), "pyllama.h"))
    print(json.dumps({"smoke": "ok", "version": pyllama.__version__, "losses": [round(x, 4) for x in losses],
                      "generated": list(gen), "simd": info["simd"], "cuda": info["cuda"],
                      "cuda_available": info["cuda_available"]}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
