"""Generation: config checks, the logits processors against Hugging Face's on fixed
logits, the sampler, and the decode driver on a numpy stand-in model (no core needed)."""
import math
import warnings

import numpy as np
import pytest

from pyllama import GenerationConfig
from pyllama import generation as G
from test_generation_util import FakeKVModel


# ============================================================================ helpers
def naive_decode(model, prompt, cfg, eos=()):
    """Greedy reference: the full forward pass on the whole sequence every step, the
    processors applied to the last row."""
    seq = list(prompt)
    out = []
    counts = np.zeros(model.config.vocab_size, np.int32)
    for _ in range(cfg.max_new_tokens):
        lg = model([seq]).logits[:, -1].copy()
        if cfg.repetition_penalty != 1.0:
            seen = np.zeros((1, lg.shape[1]), bool)
            seen[0, seq] = True
            G.apply_repetition_penalty(lg, seen, cfg.repetition_penalty)
        G.apply_presence_frequency_penalty(lg, counts[None], cfg.presence_penalty, cfg.frequency_penalty)
        G.apply_no_repeat_ngram(lg, [np.array(seq)], cfg.no_repeat_ngram_size)
        G.apply_min_new_tokens(lg, np.array([len(out)]), cfg.min_new_tokens, list(eos))
        t = int(lg[0].argmax())
        seq.append(t)
        out.append(t)
        counts[t] += 1
        if t in eos:
            break
    return out


class ByteTokenizer:
    """Token i < 256 is byte i; 256+ are two-byte tokens ("ab" pairs) to make
    stop strings span and overhang tokens."""

    def __init__(self, vocab=300):
        self.extra = {256 + i: bytes([97 + i % 26, 97 + (i * 7) % 26]) for i in range(vocab - 256)}

    def decode_bytes(self, ids):
        return b"".join(bytes([i]) if i < 256 else self.extra[i] for i in ids)

    def decode(self, ids):
        return self.decode_bytes(ids).decode("utf-8", errors="replace")

    def encode(self, text):
        return list(text.encode("utf-8"))


def chi2_critical(df, z=3.09):  # Wilson-Hilferty, upper 0.1% point
    return df * (1 - 2 / (9 * df) + z * math.sqrt(2 / (9 * df))) ** 3


# ============================================================================ config and input checks
@pytest.mark.parametrize("kw, field", [
    (dict(do_sample=True, temperature=0.0), "temperature"),
    (dict(do_sample=True, temperature=-1.0), "temperature"),
    (dict(top_p=0.0), "top_p"),
    (dict(top_p=1.5), "top_p"),
    (dict(num_beams=0), "num_beams"),
    (dict(max_new_tokens=0), "max_new_tokens"),
    (dict(min_p=2.0), "min_p"),
    (dict(top_k=-1), "top_k"),
    (dict(repetition_penalty=0.0), "repetition_penalty"),
    (dict(early_stopping="sometimes"), "early_stopping"),
    (dict(num_beams=2, num_return_sequences=3), "num_return_sequences"),
    (dict(num_return_sequences=2), "num_return_sequences"),
    (dict(eos_token_id=[1, -2]), "eos_token_id"),
    (dict(stop_strings=[""]), "stop_strings"),
    (dict(seed=-1), "seed"),
])
def test_config_rejects_bad_values_naming_the_field(kw, field):
    with pytest.raises(ValueError, match=field):
        GenerationConfig(**kw)


def test_config_greedy_ignores_temperature_and_overrides_win():
    cfg = GenerationConfig(temperature=0.0)  # greedy: temperature unused
    assert cfg.replace(num_beams=3).num_beams == 3
    with pytest.raises(TypeError, match="top_q"):
        cfg.replace(top_q=0.5)
    assert GenerationConfig.from_dict(cfg.to_dict()) == cfg


def test_generate_rejects_bad_input_naming_the_field():
    m = FakeKVModel(vocab_size=20, max_position_embeddings=16)
    with pytest.raises(ValueError, match="empty"):
        G.generate(m, [[1, 2], []])
    with pytest.raises(ValueError, match=r"input_ids\[0\].*context"):
        G.generate(m, [list(range(17))])
    with pytest.raises(ValueError, match="vocabulary"):
        G.generate(m, [[1, 25]])
    with pytest.raises(ValueError, match="temperature"):
        G.generate(m, [[1]], do_sample=True, temperature=0)
    with pytest.raises(ValueError, match="top_p"):
        G.generate(m, [[1]], do_sample=True, top_p=1.01)
    with pytest.raises(ValueError, match="num_beams"):
        G.generate(m, [[1]], num_beams=0)
    with pytest.raises(ValueError, match="stop_strings"):
        G.generate(m, [[1]], stop_strings=["x"])  # no tokenizer
    with pytest.raises(ValueError, match="input_ids"):
        G.generate(m, [])


# ============================================================================ processors vs Hugging Face
torch = None


def _hf():
    global torch
    torch = pytest.importorskip("torch", reason="torch is a test extra: pip install '.[test]'")
    return pytest.importorskip("transformers.generation.logits_process", reason="transformers is a test extra")


@pytest.fixture
def fixed_logits():
    rng = np.random.default_rng(0)
    lg = (rng.normal(size=(4, 50)) * 3).astype(np.float32)
    ids = rng.integers(0, 50, size=(4, 12))
    ids[:, -3:] = ids[:, 2:5]  # a repeated trigram so n-gram bans bite
    return lg, ids


def _t(x):
    return torch.from_numpy(np.array(x))


@pytest.mark.parametrize("k", [1, 3, 10, 49, 50, 80])
def test_top_k_equals_hf(fixed_logits, k):
    lp = _hf()
    lg, ids = fixed_logits
    for keep in (1, 3):
        ref = lp.TopKLogitsWarper(top_k=k, min_tokens_to_keep=keep)(_t(ids), _t(lg)).numpy()
        np.testing.assert_array_equal(G.apply_top_k(lg.copy(), k, keep), ref)


@pytest.mark.parametrize("p", [0.05, 0.3, 0.7, 0.9, 0.99, 1.0])
def test_top_p_equals_hf(fixed_logits, p):
    lp = _hf()
    lg, ids = fixed_logits
    for keep in (1, 3):
        ref = lp.TopPLogitsWarper(top_p=p, min_tokens_to_keep=keep)(_t(ids), _t(lg)).numpy()
        np.testing.assert_array_equal(G.apply_top_p(lg.copy(), p, keep), ref)
    # after top-k (the pipeline's order): -inf entries in the input
    lk = G.apply_top_k(lg.copy(), 12)
    ref = lp.TopPLogitsWarper(top_p=p)(_t(ids), _t(lk)).numpy()
    np.testing.assert_array_equal(G.apply_top_p(lk.copy(), p), ref)


@pytest.mark.parametrize("p", [0.1, 0.5, 0.9, 0.999])
@pytest.mark.parametrize("scale", [0.5, 3.0, 8.0])
def test_top_p_large_vocab_equals_hf(p, scale):
    # a 32000-token vocabulary exercises the partial-sort fast path (and its fallback)
    lp = _hf()
    lg = (np.random.default_rng(1).normal(size=(2, 32000)) * scale).astype(np.float32)
    ref = lp.TopPLogitsWarper(top_p=p)(_t(np.zeros((2, 1), np.int64)), _t(lg)).numpy()
    np.testing.assert_array_equal(G.apply_top_p(lg.copy(), p), ref)


@pytest.mark.parametrize("mp", [0.0, 0.01, 0.1, 0.5, 1.0])
def test_min_p_equals_hf(fixed_logits, mp):
    lp = _hf()
    lg, ids = fixed_logits
    for keep in (1, 3):
        ref = lp.MinPLogitsWarper(min_p=mp, min_tokens_to_keep=keep)(_t(ids), _t(lg)).numpy()
        np.testing.assert_array_equal(G.apply_min_p(lg.copy(), mp, keep), ref)


@pytest.mark.parametrize("penalty", [0.5, 1.0, 1.3, 2.0])
def test_repetition_penalty_equals_hf(fixed_logits, penalty):
    lp = _hf()
    lg, ids = fixed_logits
    ref = lp.RepetitionPenaltyLogitsProcessor(penalty)(_t(ids), _t(lg)).numpy()
    seen = np.zeros(lg.shape, bool)
    np.put_along_axis(seen, ids, True, axis=1)
    np.testing.assert_array_equal(G.apply_repetition_penalty(lg.copy(), seen, penalty), ref)


@pytest.mark.parametrize("n", [1, 2, 3, 4, 13])
def test_no_repeat_ngram_equals_hf(fixed_logits, n):
    lp = _hf()
    lg, ids = fixed_logits
    ref = lp.NoRepeatNGramLogitsProcessor(n)(_t(ids), _t(lg)).numpy()
    np.testing.assert_array_equal(G.apply_no_repeat_ngram(lg.copy(), list(ids), n), ref)


def test_temperature_and_min_new_tokens_equal_hf(fixed_logits):
    lp = _hf()
    lg, ids = fixed_logits
    ref = lp.TemperatureLogitsWarper(0.7)(_t(ids), _t(lg)).numpy()
    np.testing.assert_allclose(G.apply_temperature(lg.copy(), 0.7), ref, rtol=1e-6)
    proc = lp.MinNewTokensLengthLogitsProcessor(prompt_length_to_skip=8, min_new_tokens=5, eos_token_id=[3, 7])
    ref = proc(_t(ids), _t(lg)).numpy()  # 12 - 8 = 4 new tokens < 5: eos banned
    np.testing.assert_array_equal(G.apply_min_new_tokens(lg.copy(), np.full(4, 4), 5, [3, 7]), ref)
    np.testing.assert_array_equal(G.apply_min_new_tokens(lg.copy(), np.full(4, 5), 5, [3, 7]), lg)


def test_presence_frequency_penalty_is_openai_formula(fixed_logits):
    lg, ids = fixed_logits
    counts = np.zeros(lg.shape, np.int32)
    for i, row in enumerate(ids):
        for t in row:
            counts[i, t] += 1
    got = G.apply_presence_frequency_penalty(lg.copy(), counts, 0.6, 0.35)
    want = lg.astype(np.float64).copy()
    for i in range(lg.shape[0]):
        for j in range(lg.shape[1]):
            want[i, j] -= counts[i, j] * 0.35 + (counts[i, j] > 0) * 0.6
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)


def test_log_softmax_matches_torch(fixed_logits):
    _hf()
    lg, _ = fixed_logits
    ref = torch.log_softmax(_t(lg), dim=-1).numpy()
    np.testing.assert_allclose(G.log_softmax(lg), ref, rtol=1e-6, atol=1e-6)


# ============================================================================ sampler
def test_sampling_frequencies_match_renormalised_distribution():
    rng = np.random.default_rng(42)
    V, N = 30, 40000
    base = (rng.normal(size=(1, V)) * 1.5).astype(np.float32)
    warped = G.apply_top_p(G.apply_top_k(G.apply_temperature(base.copy(), 0.8), 12), 0.9)
    keep = np.isfinite(warped[0])
    p = np.where(keep, np.exp(warped[0].astype(np.float64) - warped[0][keep].max()), 0.0)
    p /= p.sum()
    draws = G.sample_from_logits(np.repeat(warped, N, axis=0), np.random.default_rng(7).random(N))
    counts = np.bincount(draws, minlength=V)
    assert counts[~keep].sum() == 0  # filtered tokens are never drawn
    expected = N * p[keep]
    stat = float(((counts[keep] - expected) ** 2 / expected).sum())
    df = int(keep.sum()) - 1
    assert df >= 3
    assert stat < chi2_critical(df), (stat, df)


def test_top_k_1_and_tiny_temperature_equal_greedy():
    m = FakeKVModel(vocab_size=40, seed=3)
    prompts = [[1, 2, 3], [4], [5, 6, 7, 8, 9]]
    greedy = G.generate(m, prompts, max_new_tokens=12)
    assert G.generate(m, prompts, max_new_tokens=12, do_sample=True, top_k=1, seed=5) == greedy
    assert G.generate(m, prompts, max_new_tokens=12, do_sample=True, temperature=1e-4, top_k=0, seed=5) == greedy


def test_seeded_sampling_is_reproducible_and_batch_independent():
    m = FakeKVModel(vocab_size=40, seed=4)
    kw = dict(max_new_tokens=15, do_sample=True, temperature=1.3, top_k=0, seed=11)
    a = G.generate(m, [[1, 2, 3], [9, 9]], **kw)
    assert G.generate(m, [[1, 2, 3], [9, 9]], **kw) == a
    assert G.generate(m, [[1, 2, 3]], **kw)[0] == a[0]  # sequence 0's stream does not depend on the batch
    assert G.generate(m, [[1, 2, 3], [9, 9]], **dict(kw, seed=12)) != a
    r = G.generate(m, [[1, 2, 3], [9, 9]], **dict(kw, num_return_sequences=3))
    assert len(r) == 6 and len({tuple(s) for s in r[:3]}) > 1


# ============================================================================ driver on the stand-in model
@pytest.mark.parametrize("kw", [
    dict(),
    dict(repetition_penalty=1.5),
    dict(presence_penalty=0.8, frequency_penalty=0.5),
    dict(no_repeat_ngram_size=2),
    dict(min_new_tokens=6, repetition_penalty=0.8, no_repeat_ngram_size=3),
])
def test_greedy_driver_equals_full_forward_reference(kw):
    m = FakeKVModel(vocab_size=30, seed=1)
    prompts = [[3, 1, 4, 1, 5], [9], [2, 6], [5, 3, 5, 8, 9, 7, 9]]
    base = G.generate(m, prompts, max_new_tokens=10, eos_token_id=[])
    eos = [base[0][2], base[1][4]]  # tokens greedy reaches, so eos stops some sequences
    cfg = GenerationConfig(max_new_tokens=10, eos_token_id=eos, **kw)
    out = G.generate(m, prompts, cfg)
    assert list(out) == [naive_decode(m, p, cfg, eos) for p in prompts]
    for s, why in zip(out, out.stop_reasons):
        assert why == ("eos" if s[-1] in eos else "max_new_tokens")
        assert len(s) <= 10
    if "min_new_tokens" in kw:
        assert all(len(s) >= 6 for s in out)


def test_input_forms_and_model_eos_default():
    m = FakeKVModel(vocab_size=30, seed=2)
    a = G.generate(m, np.array([[1, 2, 3], [4, 5, 6]]), max_new_tokens=5)
    assert a == G.generate(m, [[1, 2, 3], [4, 5, 6]], max_new_tokens=5)
    assert a[:1] == G.generate(m, [1, 2, 3], max_new_tokens=5)
    m.config.eos_token_id = a[0][1]  # the model config's eos applies when the config gives none
    b = G.generate(m, [[1, 2, 3]], max_new_tokens=5)
    assert b[0] == a[0][:2] and b.stop_reasons == ["eos"]
    assert G.generate(m, [[1, 2, 3]], max_new_tokens=5, eos_token_id=[])[0] == a[0]


def test_max_context_stops_cleanly_with_warning():
    m = FakeKVModel(vocab_size=30, max_position_embeddings=10)
    with pytest.warns(RuntimeWarning, match="maximum context"):
        out = G.generate(m, [[1, 2, 3, 4, 5, 6, 7], [1, 2]], max_new_tokens=5)
    assert [len(s) for s in out] == [3, 5]
    assert out.stop_reasons == ["max_context", "max_new_tokens"]
    with pytest.warns(RuntimeWarning):
        out = G.generate(m, [list(range(1, 11))], max_new_tokens=5)
    assert out == [[]] and out.stop_reasons == ["max_context"]
    with pytest.warns(RuntimeWarning):
        out = G.generate(m, [[1, 2, 3, 4, 5, 6, 7], [1, 2]], max_new_tokens=5, num_beams=3)
    assert [len(s) for s in out] == [3, 5] and out.stop_reasons[0] == "max_context"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        G.generate(m, [[1, 2, 3, 4, 5]], max_new_tokens=5)  # exactly fills the context: no warning


def test_stop_strings_span_and_overhang_tokens():
    tok = ByteTokenizer()
    m = FakeKVModel(vocab_size=300, seed=5)
    base = G.generate(m, [[104, 105]], max_new_tokens=12, eos_token_id=[])[0]
    text = tok.decode_bytes(base)
    assert len(text) >= 6
    # a stop string made of the middle of the text: cut where it first completes
    stop = text[3:6].decode("latin-1")
    out = G.generate(m, [[104, 105]], max_new_tokens=12, eos_token_id=[], stop_strings=[stop],
                     tokenizer=_Latin1(tok))
    got = tok.decode_bytes(out[0])
    assert out.stop_reasons == ["stop_string"]
    assert text[3:6] in got and text[3:6] not in tok.decode_bytes(out[0][:-1])
    assert base[: len(out[0])] == out[0]


class _Latin1:
    """Stop strings are str; make bytes 128-255 map 1:1 by using latin-1 text."""

    def __init__(self, tok):
        self.tok = tok

    def decode_bytes(self, ids):
        return self.tok.decode_bytes(ids).decode("latin-1").encode("utf-8")


def test_stop_string_overlapping_prompt_counts():
    tok = ByteTokenizer()
    m = FakeKVModel(vocab_size=300, seed=6)
    first = G.generate(m, [[120, 121]], max_new_tokens=1, eos_token_id=[])[0][0]
    s = (bytes([121]) + tok.decode_bytes([first])[:1]).decode("latin-1")  # prompt's last byte + new
    out = G.generate(m, [[120, 121]], max_new_tokens=8, eos_token_id=[], stop_strings=s, tokenizer=_Latin1(tok))
    assert out == [[first]] and out.stop_reasons == ["stop_string"]


def test_stream_yields_the_same_tokens_and_text():
    tok = ByteTokenizer()
    m = FakeKVModel(vocab_size=300, seed=7)
    prompts = [[104, 105], [106]]
    kw = dict(max_new_tokens=9, do_sample=True, seed=3, top_k=0)
    ref = G.generate(m, prompts, **kw)
    got = [[], []]
    text = ["", ""]
    last = {}
    for ev in G.stream(m, prompts, tokenizer=tok, **kw):
        got[ev.index].append(ev.token_id)
        text[ev.index] += ev.text
        last[ev.index] = ev.stop_reason
    assert got == list(ref)
    assert text == [tok.decode(s) for s in ref]
    assert last == {0: "max_new_tokens", 1: "max_new_tokens"}
    assert [e.token_id for e in G.stream(m, "hi", tokenizer=tok, max_new_tokens=4)] == \
        G.generate(m, [list(b"hi")], max_new_tokens=4)[0]
    with pytest.raises(ValueError, match="num_beams"):
        next(G.stream(m, prompts, num_beams=2))


def test_stream_holds_back_incomplete_utf8():
    class Tok:  # token 1 = "é" + the first byte of "€", token 2 = the rest of "€"
        table = {0: b"a", 1: "é€".encode()[:3], 2: "é€".encode()[3:]}

        def decode_bytes(self, ids):
            return b"".join(self.table[i] for i in ids)

    class Alternating(FakeKVModel):  # chooses 1, 2, 1, 2, ...
        def _kv_forward(self, tokens, slots, start_pos, last_only=True):
            out = super()._kv_forward(tokens, slots, start_pos, last_only)
            out[...] = -10.0
            out[..., 2 - (int(start_pos[0]) + tokens.shape[1]) % 2] = 10.0
            return out

    m = Alternating(vocab_size=3)
    evs = list(G.stream(m, [[0]], max_new_tokens=3, tokenizer=Tok()))
    assert [e.token_id for e in evs] == [1, 2, 1]
    assert [e.text for e in evs] == ["é", "€", "é\ufffd"]  # the dangling byte is flushed at the end


def test_docstring_examples_run():
    import doctest

    res = doctest.testmod(G, optionflags=doctest.ELLIPSIS)
    assert res.attempted > 20 and res.failed == 0


def test_stream_checks_eagerly_and_detects_a_second_generation():
    m = FakeKVModel(vocab_size=30)
    with pytest.raises(ValueError, match="top_p"):
        G.stream(m, [[1, 2]], do_sample=True, top_p=0)  # raised at the call, not at the first next()
    s = G.stream(m, [[1, 2]], max_new_tokens=5)
    next(s)
    G.generate(m, [[3]], max_new_tokens=2)  # resets the model's one KV cache
    with pytest.raises(RuntimeError, match="one generation at a time"):
        list(s)


def test_beam_search_protocol_on_stand_in():
    # the stand-in asserts that every step reads only cache positions written for its slot
    m = FakeKVModel(vocab_size=30, seed=8)
    prompts = [[1, 2, 3], [4], [5, 6]]
    base = G.generate(m, prompts, max_new_tokens=8, eos_token_id=[])
    eos = [base[0][1], base[2][3]]
    for kw in (dict(), dict(early_stopping=True, length_penalty=0.5), dict(early_stopping="never"),
               dict(no_repeat_ngram_size=2, repetition_penalty=1.3, presence_penalty=0.5, min_new_tokens=2)):
        out = G.generate(m, prompts, max_new_tokens=8, num_beams=4, num_return_sequences=3, eos_token_id=eos, **kw)
        assert len(out) == 9 and len(out.scores) == 9
        for i in range(3):
            sc = out.scores[3 * i: 3 * i + 3]
            assert sc == sorted(sc, reverse=True)
        for s, why in zip(out, out.stop_reasons):
            assert (why == "eos") == (s[-1] in eos) and len(s) <= 8
        if "min_new_tokens" in kw:
            assert all(len(s) >= 2 for s in out)


def test_beam_sampling_is_seeded():
    m = FakeKVModel(vocab_size=30, seed=9)
    kw = dict(max_new_tokens=6, num_beams=3, num_return_sequences=2, do_sample=True, temperature=1.5, top_k=0)
    a = G.generate(m, [[1, 2], [3]], seed=1, **kw)
    assert G.generate(m, [[1, 2], [3]], seed=1, **kw) == a
    assert any(G.generate(m, [[1, 2], [3]], seed=s, **kw) != a for s in (2, 3, 4))


def test_processors_equal_hf_on_random_cases():
    hyp = pytest.importorskip("hypothesis", reason="hypothesis is a test extra")
    st = pytest.importorskip("hypothesis.strategies")
    lp = _hf()

    @hyp.settings(max_examples=60, deadline=None, derandomize=True)
    @hyp.given(seqs=st.lists(st.lists(st.integers(0, 5), min_size=1, max_size=14), min_size=1, max_size=3),
               n=st.integers(1, 5), penalty=st.floats(0.3, 3.0), k=st.integers(1, 8), p=st.floats(0.01, 1.0),
               mp=st.floats(0.0, 1.0), keep=st.integers(1, 3), seed=st.integers(0, 2**31))
    def check(seqs, n, penalty, k, p, mp, keep, seed):
        L = min(len(s) for s in seqs)
        ids = np.array([s[:L] for s in seqs])
        lg = (np.random.default_rng(seed).normal(size=(len(seqs), 8)) * 2).astype(np.float32)
        ref = lp.NoRepeatNGramLogitsProcessor(n)(_t(ids), _t(lg)).numpy()
        np.testing.assert_array_equal(G.apply_no_repeat_ngram(lg.copy(), list(ids), n), ref)
        seen = np.zeros(lg.shape, bool)
        np.put_along_axis(seen, ids, True, axis=1)
        ref = lp.RepetitionPenaltyLogitsProcessor(penalty)(_t(ids), _t(lg)).numpy()
        np.testing.assert_array_equal(G.apply_repetition_penalty(lg.copy(), seen, penalty), ref)
        ref = lp.TopKLogitsWarper(top_k=k, min_tokens_to_keep=keep)(_t(ids), _t(lg)).numpy()
        np.testing.assert_array_equal(G.apply_top_k(lg.copy(), k, keep), ref)
        ref = lp.TopPLogitsWarper(top_p=p, min_tokens_to_keep=keep)(_t(ids), _t(lg)).numpy()
        np.testing.assert_array_equal(G.apply_top_p(lg.copy(), p, keep), ref)
        ref = lp.MinPLogitsWarper(min_p=mp, min_tokens_to_keep=keep)(_t(ids), _t(lg)).numpy()
        np.testing.assert_array_equal(G.apply_min_p(lg.copy(), mp, keep), ref)

    check()


def test_beam_search_with_stop_strings():
    tok = _Latin1(ByteTokenizer())
    m = FakeKVModel(vocab_size=300, seed=10)
    base = G.generate(m, [[104, 105]], max_new_tokens=10, eos_token_id=[], num_beams=3, num_return_sequences=3)
    text = ByteTokenizer().decode_bytes(base[0])
    stop = text[2:4].decode("latin-1")
    out = G.generate(m, [[104, 105]], max_new_tokens=10, eos_token_id=[], num_beams=3, num_return_sequences=3,
                     stop_strings=stop, tokenizer=tok)
    assert "stop_string" in out.stop_reasons
    for s, why in zip(out, out.stop_reasons):
        full = tok.decode_bytes([104, 105] + s)
        if why == "stop_string":
            assert stop.encode() in full and stop.encode() not in tok.decode_bytes([104, 105] + s[:-1])
        else:
            assert stop.encode() not in full and len(s) == 10


class _DeviceGreedyModel(FakeKVModel):
    """A FakeKVModel that offers the on-device greedy step (as a cuda Llama does)."""

    def __init__(self, **kw):
        super().__init__(**kw)
        self.greedy_calls = 0

    def _kv_greedy_on_device(self):
        return True

    def _kv_forward_greedy(self, tokens, slots, start_pos):
        self.greedy_calls += 1
        return self._kv_forward(tokens, slots, start_pos, True).argmax(-1).astype(np.int32)


@pytest.mark.parametrize("extra", [dict(), dict(min_new_tokens=4), dict(repetition_penalty=1.4),
                                   dict(presence_penalty=0.5), dict(no_repeat_ngram_size=2),
                                   dict(do_sample=True, seed=3, top_k=5)])
def test_plain_greedy_steps_use_the_device_argmax(extra):
    """Plain greedy steps go through _kv_forward_greedy; any processor that changes the
    logits (penalties, n-grams, min_new_tokens while it masks eos, sampling) keeps the logits
    path. Either way the tokens equal a model without the greedy step."""
    kw = dict(max_new_tokens=12, eos_token_id=[2, 5])
    kw.update(extra)
    prompts = [[1, 3, 4], [7], [8, 9, 10, 11]]
    ref = FakeKVModel(vocab_size=30, seed=7)
    m = _DeviceGreedyModel(vocab_size=30, seed=7)
    want = G.generate(ref, prompts, **kw)
    got = G.generate(m, prompts, **kw)
    assert [list(x) for x in got] == [list(x) for x in want]
    assert got.stop_reasons == want.stop_reasons
    plain = not extra.get("do_sample") and not set(extra) & {"repetition_penalty", "presence_penalty",
                                                             "no_repeat_ngram_size"}
    assert (m.greedy_calls > 0) == plain, (extra, m.greedy_calls)
    if "min_new_tokens" in extra and plain:  # the first steps (eos masked) read logits, later ones do not
        assert 0 < m.greedy_calls < m.calls


class FakeChainModel(FakeKVModel):
    """FakeKVModel with the greedy-chain interface a cuda model offers (device argmax, n
    steps per call), each chain step done as a host step: generate()'s chain bookkeeping
    (tokens past a stop dropped, chains no longer than any live sequence may take) tested
    without a GPU."""

    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        self.chains = []

    def _kv_greedy_on_device(self):
        return True

    def _kv_greedy_chain_max(self):
        return 64

    def _kv_forward_greedy(self, tokens, slots, start_pos):
        return self._kv_forward(tokens, slots, start_pos, True).argmax(-1).astype(np.int32)

    def _kv_greedy_chain(self, tokens, slots, start_pos, n):
        self.chains.append((len(slots), n))
        out = []
        for i in range(n):
            t = self._kv_forward_greedy(tokens, slots, (start_pos + i).astype(np.int32))
            out.append(t)
            tokens = t[:, None].astype(np.int32)
        return np.stack(out)


@pytest.mark.parametrize("kw", [
    dict(max_new_tokens=45, eos_token_id=[]),                      # only the limit stops: chains of 32
    dict(max_new_tokens=30, eos_token_id=[3, 17]),                 # eos inside chains of 8
    dict(max_new_tokens=30, eos_token_id=[3, 17], min_new_tokens=6),  # chains once eos may end a sequence
])
def test_greedy_chains_give_the_tokens_of_single_steps(kw):
    prompts = [[1, 2, 3], [4, 5, 6, 7, 8, 9], [10], [11, 12]]
    ref = G.generate(FakeKVModel(vocab_size=40, max_position_embeddings=64, seed=7), prompts, **kw)
    m = FakeChainModel(vocab_size=40, max_position_embeddings=64, seed=7)
    got = G.generate(m, prompts, **kw)
    assert [list(x) for x in got] == [list(x) for x in ref]
    assert got.stop_reasons == ref.stop_reasons
    assert m.chains, "no chain was asked for"
    longest = 32 if not kw["eos_token_id"] else 8
    assert max(n for _, n in m.chains) <= longest
    if not kw["eos_token_id"]:
        assert m.chains[0] == (4, 32) and m.chains[1] == (4, 45 - 1 - 32)  # never past max_new_tokens
    else:
        assert "eos" in got.stop_reasons
    # streamed: the same tokens in the same order
    m2 = FakeChainModel(vocab_size=40, max_position_embeddings=64, seed=7)
    seqs = [[] for _ in prompts]
    for st in G.stream(m2, prompts, **kw):
        if st.token_id >= 0:
            seqs[st.index].append(st.token_id)
    assert seqs == [list(x) for x in ref]


def test_greedy_chains_stop_strings_and_context():
    tok = ByteTokenizer()
    plain = FakeKVModel(vocab_size=300, max_position_embeddings=20, seed=5)
    base = G.generate(plain, [[104, 105]], max_new_tokens=12, eos_token_id=[])[0]
    stop = tok.decode_bytes(base)[3:6].decode("latin-1")
    kw = dict(max_new_tokens=12, eos_token_id=[], stop_strings=[stop], tokenizer=_Latin1(ByteTokenizer()))
    m = FakeChainModel(vocab_size=300, max_position_embeddings=20, seed=5)
    got = G.generate(m, [[104, 105], [50]], **kw)
    ref = G.generate(plain, [[104, 105], [50]], **kw)
    assert [list(x) for x in got] == [list(x) for x in ref] and got.stop_reasons == ref.stop_reasons
    assert m.chains
    # the context fills up: chains end at the cache's last position (FakeKVModel asserts it)
    with pytest.warns(RuntimeWarning):
        got = G.generate(m, [[1] * 15, [2] * 3], max_new_tokens=30, eos_token_id=[])
    with pytest.warns(RuntimeWarning):
        ref = G.generate(plain, [[1] * 15, [2] * 3], max_new_tokens=30, eos_token_id=[])
    assert [list(x) for x in got] == [list(x) for x in ref] and got.stop_reasons == ref.stop_reasons
