"""Embedding the core in native programs (docs/EMBEDDING.md): the C API (pyllama.h,
libpyllama_c) called through ctypes and compared with the Python package on the same
checkpoint; the examples built out of tree against an installed pyllama and run.

Where the native files come from:
- "package": the installed Python package (``pyllama.cmake_dir()``; a wheel or ``pip install``);
- "prefix": an install this test makes with ``cmake --install $PYLLAMA_CMAKE_BUILD_DIR --prefix
  <tmp>`` (CI points the variable at its CTest build; skipped without it).
"""
import ctypes
import json
import os
import shutil
import subprocess

import numpy as np
import pytest

import pyllama
from helpers import tiny_config

OK, INVALID, IO, RANGE, BACKEND, TOO_SMALL = 0, 1, 2, 3, 4, 5


# ---------------------------------------------------------------- where the install is
def _package_cmake_dir():
    try:
        return pyllama.cmake_dir()
    except FileNotFoundError as e:
        pytest.skip(f"the installed package has no CMake package: {e}")


@pytest.fixture(scope="module")
def made_prefix(tmp_path_factory):
    build = os.environ.get("PYLLAMA_CMAKE_BUILD_DIR")
    if not build:
        pytest.skip("PYLLAMA_CMAKE_BUILD_DIR is not set (a CMake build of this tree to install from; "
                    ".ci/run sets it to its CTest build)")
    cmake = shutil.which("cmake")
    if not cmake:
        pytest.skip("cmake is not on PATH")
    prefix = tmp_path_factory.mktemp("prefix")
    subprocess.run([cmake, "--install", build, "--prefix", str(prefix)], check=True, capture_output=True)
    return str(prefix)


@pytest.fixture(params=["package", "prefix"])
def cmake_dir(request):
    if request.param == "package":
        return _package_cmake_dir()
    return os.path.join(request.getfixturevalue("made_prefix"), "lib", "cmake", "pyllama")


# ---------------------------------------------------------------- a checkpoint with a tokenizer
@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    d = tmp_path_factory.mktemp("ckpt")
    text = "To be, or not to be, that is the question: whether 'tis nobler in the mind to suffer. " * 20
    tok = pyllama.Tokenizer.train([text], vocab_size=300, special_tokens=["<|endoftext|>"])
    model = pyllama.Llama(tiny_config(vocab_size=tok.n_vocab, max_position_embeddings=64), seed=3)
    model.save_pretrained(str(d))
    tok.save(str(d))
    return str(d), tok


# ---------------------------------------------------------------- ctypes binding of pyllama.h
class GenParams(ctypes.Structure):
    _fields_ = [("struct_size", ctypes.c_size_t), ("max_new_tokens", ctypes.c_int32), ("do_sample", ctypes.c_int32),
                ("temperature", ctypes.c_float), ("top_k", ctypes.c_int32), ("top_p", ctypes.c_float),
                ("repetition_penalty", ctypes.c_float), ("seed", ctypes.c_uint64),
                ("stop_token_ids", ctypes.POINTER(ctypes.c_int32)), ("n_stop_token_ids", ctypes.c_size_t),
                ("use_model_eos", ctypes.c_int32)]


class TrainParams(ctypes.Structure):
    _fields_ = [("struct_size", ctypes.c_size_t), ("lr", ctypes.c_float), ("beta1", ctypes.c_float),
                ("beta2", ctypes.c_float), ("eps", ctypes.c_float), ("weight_decay", ctypes.c_float),
                ("max_grad_norm", ctypes.c_float)]


CALLBACK = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_int32, ctypes.c_void_p)
P = ctypes.c_void_p
I32P = ctypes.POINTER(ctypes.c_int32)
SZP = ctypes.POINTER(ctypes.c_size_t)


@pytest.fixture(scope="module")
def lib():
    try:
        path = pyllama.c_library_path()
    except FileNotFoundError as e:
        pytest.skip(f"no libpyllama_c in this install: {e}")
    L = ctypes.CDLL(path)
    sig = {
        "pyllama_abi_version": (ctypes.c_int, []),
        "pyllama_version": (ctypes.c_char_p, []),
        "pyllama_last_error": (ctypes.c_char_p, []),
        "pyllama_status_name": (ctypes.c_char_p, [ctypes.c_int]),
        "pyllama_build_info": (ctypes.c_char_p, []),
        "pyllama_model_load": (ctypes.c_int, [ctypes.c_char_p, ctypes.c_char_p, ctypes.POINTER(P)]),
        "pyllama_model_new": (ctypes.c_int, [ctypes.c_char_p, ctypes.c_uint64, ctypes.c_char_p, ctypes.POINTER(P)]),
        "pyllama_model_free": (None, [P]),
        "pyllama_model_save": (ctypes.c_int, [P, ctypes.c_char_p]),
        "pyllama_model_vocab_size": (ctypes.c_int32, [P]),
        "pyllama_model_num_parameters": (ctypes.c_int64, [P]),
        "pyllama_tokenizer_load": (ctypes.c_int, [ctypes.c_char_p, ctypes.POINTER(P)]),
        "pyllama_tokenizer_free": (None, [P]),
        "pyllama_tokenizer_n_vocab": (ctypes.c_int32, [P]),
        "pyllama_tokenize": (ctypes.c_int, [P, ctypes.c_char_p, ctypes.c_size_t, ctypes.c_int, I32P,
                                            ctypes.c_size_t, SZP]),
        "pyllama_detokenize": (ctypes.c_int, [P, I32P, ctypes.c_size_t, ctypes.c_char_p, ctypes.c_size_t, SZP]),
        "pyllama_tokenizer_special_id": (ctypes.c_int, [P, ctypes.c_char_p, I32P]),
        "pyllama_generate_default_params": (GenParams, []),
        "pyllama_generate": (ctypes.c_int, [P, I32P, ctypes.c_size_t, ctypes.POINTER(GenParams), CALLBACK,
                                            ctypes.c_void_p, I32P, ctypes.c_size_t, SZP]),
        "pyllama_sampling_probs": (ctypes.c_int, [ctypes.POINTER(ctypes.c_float), ctypes.c_size_t, I32P,
                                                  ctypes.c_size_t, ctypes.POINTER(GenParams),
                                                  ctypes.POINTER(ctypes.c_float)]),
        "pyllama_train_default_params": (TrainParams, []),
        "pyllama_model_forward": (ctypes.c_int, [P, I32P, I32P, ctypes.c_int32, ctypes.c_int32,
                                                 ctypes.POINTER(ctypes.c_float)]),
        "pyllama_model_logits": (ctypes.c_int, [P, ctypes.POINTER(ctypes.c_float), ctypes.c_size_t, SZP]),
        "pyllama_train_step": (ctypes.c_int, [P, I32P, I32P, ctypes.c_int32, ctypes.c_int32,
                                              ctypes.POINTER(TrainParams), ctypes.POINTER(ctypes.c_float),
                                              ctypes.POINTER(ctypes.c_double)]),
        "pyllama_model_steps": (ctypes.c_int64, [P]),
    }
    for name, (res, args) in sig.items():
        f = getattr(L, name)
        f.restype, f.argtypes = res, args
    return L


def _i32(a):
    a = np.ascontiguousarray(a, dtype=np.int32)
    return a, a.ctypes.data_as(I32P)


def _check(L, status):
    assert status == OK, f"{L.pyllama_status_name(status).decode()}: {L.pyllama_last_error().decode()}"


def _load(L, d):
    m, t = P(), P()
    _check(L, L.pyllama_model_load(d.encode(), b"cpu", ctypes.byref(m)))
    _check(L, L.pyllama_tokenizer_load(d.encode(), ctypes.byref(t)))
    return m, t


def _generate(L, m, prompt, params, capacity=64, callback=None):
    p, pp = _i32(prompt)
    out = np.zeros(capacity, np.int32)
    n = ctypes.c_size_t()
    cb = CALLBACK(callback) if callback else CALLBACK()
    _check(L, L.pyllama_generate(m, pp, len(p), ctypes.byref(params), cb, None,
                                 out.ctypes.data_as(I32P), capacity, ctypes.byref(n)))
    return out[:n.value].tolist()


def test_c_api_version(lib):
    assert lib.pyllama_abi_version() == 1
    assert lib.pyllama_version().decode() == pyllama.__version__
    info = json.loads(lib.pyllama_build_info())
    assert info["version"] == pyllama.__version__ and info["simd"] == pyllama.build_info()["simd"]


def test_c_api_tokenizer_matches_python(lib, checkpoint):
    d, tok = checkpoint
    m, t = _load(lib, d)
    try:
        for text, special in [("To be, or not to be?\n  whether 'tis", 0), ("héllo <|endoftext|> world", 1),
                              ("héllo <|endoftext|> world", 0), ("", 0)]:
            raw = text.encode()
            n = ctypes.c_size_t()
            st = lib.pyllama_tokenize(t, raw, len(raw), special, None, 0, ctypes.byref(n))
            assert st == (TOO_SMALL if raw else OK)
            ids = np.zeros(max(n.value, 1), np.int32)
            _check(lib, lib.pyllama_tokenize(t, raw, len(raw), special, ids.ctypes.data_as(I32P), n.value,
                                             ctypes.byref(n)))
            want = (tok.encode(text, allowed_special="all") if special else tok.encode_ordinary(text))
            assert ids[:n.value].tolist() == list(want)
            buf = ctypes.create_string_buffer(len(raw) + 1)
            _check(lib, lib.pyllama_detokenize(t, ids.ctypes.data_as(I32P), n.value, buf, len(buf), ctypes.byref(n)))
            assert buf.raw[:n.value] == raw
        eot = ctypes.c_int32()
        _check(lib, lib.pyllama_tokenizer_special_id(t, b"<|endoftext|>", ctypes.byref(eot)))
        assert [eot.value] == list(tok.encode("<|endoftext|>", allowed_special="all"))
        assert lib.pyllama_tokenizer_special_id(t, b"<|nope|>", ctypes.byref(eot)) == INVALID
        assert b"<|nope|>" in lib.pyllama_last_error()
        bad, badp = _i32([5, 10_000])
        assert lib.pyllama_detokenize(t, badp, 2, buf, len(buf), ctypes.byref(n)) == RANGE
        assert b"10000" in lib.pyllama_last_error()
    finally:
        lib.pyllama_tokenizer_free(t)
        lib.pyllama_model_free(m)


@pytest.mark.parametrize("family", ["byte_level_bpe", "sentencepiece_bpe"])
def test_c_api_reads_a_hugging_face_tokenizer_json(lib, tmp_path, family):
    """A model folder with only tokenizer.json (what models ship): the C API runs it through the
    core's HfTokenizer with the ids and text of the `tokenizers` library."""
    tokenizers = pytest.importorskip("tokenizers", reason="tokenizers is a test extra")
    from tokenizers import decoders, models, normalizers, pre_tokenizers, trainers

    text = open(os.path.join(os.path.dirname(pyllama.__file__), "data", "shakespeare.txt"),
                encoding="utf-8").read()[:200_000]
    if family == "byte_level_bpe":
        tk = tokenizers.Tokenizer(models.BPE())
        tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tk.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=["<|eot|>"],
                                      initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    else:  # Llama 2 style: metaspace normalizer, byte fallback
        tk = tokenizers.Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True, fuse_unk=True))
        tk.normalizer = normalizers.Sequence([normalizers.Prepend("\u2581"), normalizers.Replace(" ", "\u2581")])
        tk.decoder = decoders.Sequence([decoders.Replace("\u2581", " "), decoders.ByteFallback(), decoders.Fuse(),
                                        decoders.Strip(" ", 1, 0)])
        trainer = trainers.BpeTrainer(vocab_size=500, special_tokens=["<unk>", "<s>", "<|eot|>"] +
                                      [f"<0x{b:02X}>" for b in range(256)])
    tk.train_from_iterator([text], trainer)
    tk.save(str(tmp_path / "tokenizer.json"))
    t = P()
    _check(lib, lib.pyllama_tokenizer_load(str(tmp_path).encode(), ctypes.byref(t)))
    try:
        assert lib.pyllama_tokenizer_n_vocab(t) == tk.get_vocab_size()
        for sample, special in [("To be, or not to be?\n  whether 'tis", 0), ("h\u00e9llo <|eot|> world \u4e2d", 1),
                                ("h\u00e9llo <|eot|> world", 0)]:
            raw = sample.encode()
            ids = np.zeros(256, np.int32)
            n = ctypes.c_size_t()
            _check(lib, lib.pyllama_tokenize(t, raw, len(raw), special, ids.ctypes.data_as(I32P), 256,
                                             ctypes.byref(n)))
            got = ids[:n.value].tolist()
            if special:
                assert got == tk.encode(sample, add_special_tokens=False).ids
            buf = ctypes.create_string_buffer(1024)
            _check(lib, lib.pyllama_detokenize(t, ids.ctypes.data_as(I32P), n.value, buf, len(buf), ctypes.byref(n)))
            assert buf.raw[:n.value].decode() == tk.decode(got, skip_special_tokens=False)
        eot = ctypes.c_int32()
        _check(lib, lib.pyllama_tokenizer_special_id(t, b"<|eot|>", ctypes.byref(eot)))
        assert eot.value == tk.token_to_id("<|eot|>")
    finally:
        lib.pyllama_tokenizer_free(t)


def test_c_api_greedy_generate_matches_python(lib, checkpoint):
    d, tok = checkpoint
    model = pyllama.Llama.from_pretrained(d)
    m, t = _load(lib, d)
    try:
        prompt = tok.encode_ordinary("To be, or not")
        want = model.generate([prompt], max_new_tokens=20, do_sample=False)[0]
        params = lib.pyllama_generate_default_params()
        params.max_new_tokens = 20
        seen = []
        got = _generate(lib, m, prompt, params, callback=lambda tok_id, _: seen.append(tok_id) or 0)
        assert got == list(want) and seen == got
        # a stop token ends generation after emitting it; a callback returning non-zero stops it
        stop, stopp = _i32([got[5]])
        params.stop_token_ids, params.n_stop_token_ids = stopp, 1
        assert _generate(lib, m, prompt, params) == got[:got.index(got[5]) + 1]
        params.n_stop_token_ids = 0
        calls = []

        def stop_after_4(tok_id, _):
            calls.append(tok_id)
            return 1 if len(calls) == 4 else 0

        assert _generate(lib, m, prompt, params, callback=stop_after_4) == got[:4] == calls
        # capacity bounds the run; the context (64 positions) too
        assert _generate(lib, m, prompt, params, capacity=3) == got[:3]
        params.max_new_tokens = 500
        assert len(_generate(lib, m, prompt, params, capacity=500)) == 64 - len(prompt)
        # repetition penalty changes greedy decoding as transformers' processor does (Python: same rule)
        params.max_new_tokens, params.repetition_penalty = 20, 1.5
        want = model.generate([prompt], max_new_tokens=20, do_sample=False, repetition_penalty=1.5)[0]
        assert _generate(lib, m, prompt, params) == list(want)
        # sampling: deterministic per seed
        params.do_sample, params.temperature, params.top_p, params.repetition_penalty = 1, 1.5, 0.9, 1.0
        a = _generate(lib, m, prompt, params)
        assert a == _generate(lib, m, prompt, params)
        outs = set()
        for seed in range(1, 6):
            params.seed = seed
            outs.add(tuple(_generate(lib, m, prompt, params)))
        assert len(outs) > 1
    finally:
        lib.pyllama_tokenizer_free(t)
        lib.pyllama_model_free(m)


def test_c_api_sampling_probs_match_transformers(lib):
    torch = pytest.importorskip("torch", reason="torch is a test extra")
    gen = pytest.importorskip("transformers.generation.logits_process", reason="transformers is a test extra")
    rng = np.random.default_rng(0)
    V = 500
    for temperature, top_k, top_p, rep in [(0.7, 20, 0.9, 1.3), (1.3, 0, 0.5, 1.0), (1.0, 5, 1.0, 0.8),
                                           (0.9, 0, 0.97, 1.2)]:
        logits = rng.normal(size=V).astype(np.float32) * 3
        hist = rng.integers(0, V, size=30).astype(np.int32)
        params = pyllama_params = GenParams()
        params = _default(lib)
        params.do_sample, params.temperature, params.top_k, params.top_p = 1, temperature, top_k, top_p
        params.repetition_penalty = rep
        probs = np.zeros(V, np.float32)
        h, hp = _i32(hist)
        _check(lib, lib.pyllama_sampling_probs(logits.ctypes.data_as(ctypes.POINTER(ctypes.c_float)), V, hp, len(h),
                                               ctypes.byref(params), probs.ctypes.data_as(ctypes.POINTER(ctypes.c_float))))
        ids = torch.tensor(hist[None].astype(np.int64))
        s = torch.tensor(logits[None])
        procs = [gen.RepetitionPenaltyLogitsProcessor(rep) if rep != 1.0 else None,
                 gen.TemperatureLogitsWarper(temperature), gen.TopKLogitsWarper(top_k) if top_k else None,
                 gen.TopPLogitsWarper(top_p) if top_p < 1 else None]
        for p in procs:
            if p is not None:
                s = p(ids, s)
        want = torch.softmax(s, -1)[0].numpy()
        assert ((probs > 0) == (want > 0)).all(), (temperature, top_k, top_p, rep)
        np.testing.assert_allclose(probs, want, rtol=1e-5, atol=1e-7)
        del pyllama_params
    # greedy: one-hot on the argmax after the repetition penalty
    params = _default(lib)
    params.repetition_penalty = 2.0
    logits = np.array([1.0, 3.0, 2.5, -1.0], np.float32)
    h, hp = _i32([1])
    probs = np.zeros(4, np.float32)
    _check(lib, lib.pyllama_sampling_probs(logits.ctypes.data_as(ctypes.POINTER(ctypes.c_float)), 4, hp, 1,
                                           ctypes.byref(params), probs.ctypes.data_as(ctypes.POINTER(ctypes.c_float))))
    assert probs.tolist() == [0, 0, 1, 0]


def _default(L):
    return L.pyllama_generate_default_params()


def test_c_api_training_matches_python(lib, checkpoint, tmp_path):
    d, tok = checkpoint
    rng = np.random.default_rng(1)
    batch = rng.integers(0, 300, size=(2, 16)).astype(np.int32)
    model = pyllama.Llama.from_pretrained(d)
    opt = pyllama.AdamW(model, lr=1e-3, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.1)
    m, t = _load(lib, d)
    try:
        # logits of a forward: the same as Python's
        ids, idp = _i32(batch)
        loss = ctypes.c_float()
        _check(lib, lib.pyllama_model_forward(m, idp, idp, 2, 16, ctypes.byref(loss)))
        out = model(batch, labels=batch)
        n = ctypes.c_size_t()
        assert lib.pyllama_model_logits(m, None, 0, ctypes.byref(n)) == TOO_SMALL and n.value == out.logits.size
        logits = np.zeros(n.value, np.float32)
        _check(lib, lib.pyllama_model_logits(m, logits.ctypes.data_as(ctypes.POINTER(ctypes.c_float)), n.value,
                                             ctypes.byref(n)))
        np.testing.assert_allclose(logits.reshape(out.logits.shape), out.logits, rtol=1e-5, atol=1e-5)
        assert loss.value == pytest.approx(out.loss, rel=1e-6)
        # five training steps: zero_grad, forward, backward, clip 1.0, AdamW
        tp = lib.pyllama_train_default_params()
        tp.lr = 1e-3
        for step in range(5):
            model.zero_grad()
            want = model(batch, labels=batch).loss
            model.backward()
            want_norm = pyllama.clip_grad_norm(model, 1.0)
            opt.step()
            norm = ctypes.c_double()
            _check(lib, lib.pyllama_train_step(m, idp, idp, 2, 16, ctypes.byref(tp), ctypes.byref(loss),
                                               ctypes.byref(norm)))
            assert loss.value == pytest.approx(want, rel=1e-5), step
            assert norm.value == pytest.approx(want_norm, rel=1e-5), step
        assert lib.pyllama_model_steps(m) == 5
        out_dir = str(tmp_path / "trained")
        _check(lib, lib.pyllama_model_save(m, out_dir.encode()))
        back = pyllama.Llama.from_pretrained(out_dir)
        for name, w in model.named_parameters().items():
            np.testing.assert_allclose(back.named_parameters()[name], w, rtol=1e-5, atol=1e-6, err_msg=name)
    finally:
        lib.pyllama_tokenizer_free(t)
        lib.pyllama_model_free(m)


def test_c_api_errors_are_statuses_with_messages(lib, checkpoint, tmp_path):
    d, _ = checkpoint
    m = P()
    assert lib.pyllama_model_load(str(tmp_path / "missing").encode(), None, ctypes.byref(m)) == IO
    assert b"missing" in lib.pyllama_last_error() and not m.value
    assert lib.pyllama_model_load(None, None, ctypes.byref(m)) == INVALID
    assert b"dir is NULL" in lib.pyllama_last_error()
    assert lib.pyllama_tokenizer_load(str(tmp_path).encode(), ctypes.byref(m)) == IO
    assert b"tokenizer.tiktoken" in lib.pyllama_last_error()
    (tmp_path / "tokenizer.json").write_text("{}")
    assert lib.pyllama_tokenizer_load(str(tmp_path).encode(), ctypes.byref(m)) == INVALID
    assert b"tokenizer.json" in lib.pyllama_last_error()
    if not pyllama.build_info()["cuda_available"]:
        assert lib.pyllama_model_load(d.encode(), b"cuda", ctypes.byref(m)) == BACKEND
        assert b"cuda" in lib.pyllama_last_error().lower()
    assert lib.pyllama_model_load(d.encode(), b"tpu", ctypes.byref(m)) == INVALID
    assert b"tpu" in lib.pyllama_last_error()
    _check(lib, lib.pyllama_model_load(d.encode(), None, ctypes.byref(m)))
    try:
        params = _default(lib)
        prompt, pp = _i32([1, 2, 3])
        out = np.zeros(4, np.int32)
        n = ctypes.c_size_t()
        for field, value, word in [("top_p", 0.0, b"top_p"), ("temperature", -1.0, b"temperature"),
                                   ("top_k", -3, b"top_k"), ("max_new_tokens", -1, b"max_new_tokens"),
                                   ("struct_size", 8, b"struct_size")]:
            bad = _default(lib)
            bad.do_sample = 1
            setattr(bad, field, value)
            st = lib.pyllama_generate(m, pp, 3, ctypes.byref(bad), CALLBACK(), None, out.ctypes.data_as(I32P), 4,
                                      ctypes.byref(n))
            assert st == INVALID and word in lib.pyllama_last_error(), field
        bad_prompt, bpp = _i32([1, 100_000])
        assert lib.pyllama_generate(m, bpp, 2, ctypes.byref(params), CALLBACK(), None, out.ctypes.data_as(I32P),
                                    4, ctypes.byref(n)) == INVALID
        assert b"100000" in lib.pyllama_last_error()
        assert lib.pyllama_generate(m, pp, 0, ctypes.byref(params), CALLBACK(), None, out.ctypes.data_as(I32P),
                                    4, ctypes.byref(n)) == INVALID
        assert b"empty" in lib.pyllama_last_error()
        assert lib.pyllama_generate(None, pp, 3, ctypes.byref(params), CALLBACK(), None, out.ctypes.data_as(I32P),
                                    4, ctypes.byref(n)) == INVALID
        tp = lib.pyllama_train_default_params()
        ignored, ip = _i32(np.full((1, 3), -100))
        assert lib.pyllama_train_step(m, pp, ip, 1, 3, ctypes.byref(tp), None, None) == INVALID
        assert b"-100" in lib.pyllama_last_error()
        tp.lr = -1
        assert lib.pyllama_train_step(m, pp, pp, 1, 3, ctypes.byref(tp), None, None) == INVALID
        assert b"lr" in lib.pyllama_last_error()
        # a failure leaves the handle usable
        _check(lib, lib.pyllama_generate(m, pp, 3, ctypes.byref(params), CALLBACK(), None, out.ctypes.data_as(I32P),
                                         4, ctypes.byref(n)))
        assert n.value == 4
    finally:
        lib.pyllama_model_free(m)
    lib.pyllama_model_free(None)
    lib.pyllama_tokenizer_free(None)


def test_c_api_model_new_from_config(lib, tmp_path):
    cfg = tiny_config()
    path = tmp_path / "config.json"
    cfg.to_json(str(path))
    m = P()
    _check(lib, lib.pyllama_model_new(str(path).encode(), 7, b"cpu", ctypes.byref(m)))
    try:
        want = pyllama.Llama(cfg, seed=7)
        assert lib.pyllama_model_num_parameters(m) == want.num_parameters()
        _check(lib, lib.pyllama_model_save(m, str(tmp_path / "out").encode()))
        got = pyllama.Llama.from_pretrained(str(tmp_path / "out"))
        for name, w in want.named_parameters().items():
            np.testing.assert_array_equal(got.named_parameters()[name], w, err_msg=name)
    finally:
        lib.pyllama_model_free(m)


# ---------------------------------------------------------------- the examples, built out of tree
def test_examples_build_out_of_tree_and_run(cmake_dir, checkpoint, tmp_path):
    cmake = shutil.which("cmake")
    if not cmake:
        pytest.skip("cmake is not on PATH")
    if not (shutil.which("cc") or shutil.which("gcc")) or not (shutil.which("c++") or shutil.which("g++")):
        pytest.skip("no C/C++ compiler on PATH")
    src = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "examples")
    if not os.path.isfile(os.path.join(src, "CMakeLists.txt")):
        pytest.skip("the examples folder is not beside the tests (an sdist without it)")
    build = tmp_path / "build"
    gen = ["-G", "Ninja"] if shutil.which("ninja") else []
    # only the package's folder: nothing of this source tree's build is visible to the project
    r = subprocess.run([cmake, "-S", src, "-B", str(build), *gen, f"-Dpyllama_DIR={cmake_dir}",
                        "-DCMAKE_BUILD_TYPE=Release"], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
    r = subprocess.run([cmake, "--build", str(build), "-j", "2"], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr

    d, tok = checkpoint
    model = pyllama.Llama.from_pretrained(d)
    prompt = "To be, or not"
    ids = tok.encode_ordinary(prompt)
    eot = tok.encode("<|endoftext|>", allowed_special="all")[0]
    want = list(model.generate([ids], max_new_tokens=12, do_sample=False, eos_token_id=eot)[0])
    env = dict(os.environ, OMP_NUM_THREADS="1")
    # C++: text in, text out
    r = subprocess.run([str(build / "pyllama_chat"), d, "--prompt", prompt, "-n", "12", "--greedy"],
                       capture_output=True, env=env, timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stdout == (prompt + tok.decode([i for i in want if i != eot], errors="replace")).encode() + b"\n" or \
        r.stdout == prompt.encode() + tok.decode_bytes([i for i in want if i != eot]) + b"\n"
    # C: generate, then train 3 steps and save
    r = subprocess.run([str(build / "pyllama_generate_c"), d, prompt, "-n", "12"], capture_output=True, env=env,
                       timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines()[-1].decode() == "[ids] " + " ".join(map(str, want))
    out = tmp_path / "trained"
    r = subprocess.run([str(build / "pyllama_generate_c"), d, prompt, "-n", "4", "--train-steps", "3", "--save",
                        str(out)], capture_output=True, env=env, timeout=60)
    assert r.returncode == 0, r.stderr
    losses = [float(line.split()[3]) for line in r.stdout.splitlines() if line.startswith(b"step ")]
    assert len(losses) == 3 and losses[2] < losses[0]
    assert pyllama.Llama.from_pretrained(str(out)).num_parameters() == model.num_parameters()
    # a bad folder: a message and exit status 1, not a crash
    r = subprocess.run([str(build / "pyllama_chat"), str(tmp_path / "nope"), "--prompt", "x"], capture_output=True)
    assert r.returncode == 1 and b"nope" in r.stderr
    r = subprocess.run([str(build / "pyllama_generate_c"), str(tmp_path / "nope"), "x"], capture_output=True)
    assert r.returncode == 1 and b"PYLLAMA_ERR_IO" in r.stderr


def test_python_m_pyllama_prints_the_paths(tmp_path):
    import sys

    cmake_dir = _package_cmake_dir()
    # from another folder: `python -m` puts the working directory first on sys.path, and in the
    # source tree that is the uninstalled pyllama/ (CI tests the installed package)
    r = subprocess.run([sys.executable, "-m", "pyllama", "--cmake-dir", "--include-dir", "--c-library"],
                       capture_output=True, text=True, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0] == cmake_dir and os.path.isfile(os.path.join(lines[0], "pyllamaConfig.cmake"))
    assert os.path.isfile(os.path.join(lines[1], "pyllama.h"))
    assert os.path.isfile(os.path.join(lines[1], "pyllama", "checkpoint.h"))
    assert lines[2] == pyllama.c_library_path()
    r = subprocess.run([sys.executable, "-m", "pyllama", "--cmake-dir", "train"], capture_output=True, text=True,
                       cwd=tmp_path)
    assert r.returncode == 2 and "train" in r.stderr


def test_cuda_wheel_import_errors_say_what_to_install():
    from pyllama import _native

    e = _native.explain_import_error(ImportError("libcublas.so.13: cannot open shared object file: No such file"))
    assert "libcublas" in str(e) and "pip install 'pyllama[cuda]'" in str(e)
    e = _native.explain_import_error(ImportError("libcuda.so.1: cannot open shared object file"))
    assert "driver" in str(e)
    other = ImportError("something else")
    assert _native.explain_import_error(other) is other
