"""The tokenizer gives tiktoken's ids with the real cl100k_base / o200k_base vocabularies.

The reference is tiktoken itself, built offline from the gzipped vocabulary copies in
tests/data and the presets' regular expressions as tiktoken writes them.
"""
import gzip
import itertools
import os
import random

import numpy as np
import pytest

import pyllama
from pyllama.tokenizer import TokenIdError

HERE = os.path.dirname(os.path.abspath(__file__))
DATA = os.path.join(HERE, "data")
SHAKESPEARE = os.path.join(os.path.dirname(HERE), "pyllama", "data", "shakespeare.txt")

# The patterns exactly as tiktoken_ext/openai_public.py writes them.
R50K_PAT = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}++| ?\p{N}++| ?[^\s\p{L}\p{N}]++|\s++$|\s+(?!\S)|\s"""
CL100K_PAT = r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}++|\p{N}{1,3}+| ?[^\s\p{L}\p{N}]++[\r\n]*+|\s++$|\s*[\r\n]|\s+(?!\S)|\s"""
O200K_PAT = "|".join([
    r"""[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?""",
    r"""[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?""",
    r"""\p{N}{1,3}""",
    r""" ?[^\s\p{L}\p{N}]+[\r\n/]*""",
    r"""\s*[\r\n]+""",
    r"""\s+(?!\S)""",
    r"""\s+""",
])
CL100K_SPECIAL = {"<|endoftext|>": 100257, "<|fim_prefix|>": 100258, "<|fim_middle|>": 100259,
                  "<|fim_suffix|>": 100260, "<|endofprompt|>": 100276}
O200K_SPECIAL = {"<|endoftext|>": 199999, "<|endofprompt|>": 200018}

# (name, vocabulary, our preset, tiktoken's regex, special tokens). "gpt2" runs the
# r50k/gpt2 pattern over the cl100k vocabulary: a different split, the same merges.
CASES = {
    "cl100k": ("cl100k_base", "cl100k", CL100K_PAT, CL100K_SPECIAL),
    "o200k": ("o200k_base", "o200k", O200K_PAT, O200K_SPECIAL),
    "gpt2": ("cl100k_base", "gpt2", R50K_PAT, CL100K_SPECIAL),
}


@pytest.fixture(scope="session")
def vocab_paths(tmp_path_factory):
    d = tmp_path_factory.mktemp("vocab")
    out = {}
    for name in ("cl100k_base", "o200k_base"):
        with gzip.open(os.path.join(DATA, name + ".tiktoken.gz"), "rb") as f:
            data = f.read()
        p = d / (name + ".tiktoken")
        p.write_bytes(data)
        out[name] = str(p)
    return out


@pytest.fixture(scope="session")
def pairs(vocab_paths):
    """name -> (pyllama.Tokenizer, tiktoken.Encoding) built from the same vocabulary."""
    tiktoken = pytest.importorskip("tiktoken", reason="the reference implementation (pip install tiktoken)")
    import tiktoken.load

    old = os.environ.get("TIKTOKEN_CACHE_DIR")
    os.environ["TIKTOKEN_CACHE_DIR"] = ""  # read the local file, cache nothing
    try:
        ranks = {n: tiktoken.load.load_tiktoken_bpe(p) for n, p in vocab_paths.items()}
    finally:
        if old is None:
            del os.environ["TIKTOKEN_CACHE_DIR"]
        else:
            os.environ["TIKTOKEN_CACHE_DIR"] = old
    out = {}
    loaded = {}
    for name, (vocab, preset, pat, special) in CASES.items():
        ref = tiktoken.Encoding(f"{vocab}-{preset}", pat_str=pat, mergeable_ranks=ranks[vocab], special_tokens=special)
        ours = pyllama.Tokenizer.from_tiktoken(vocab_paths[vocab], preset, special)
        out[name] = (ours, ref)
        loaded[name] = ours
    return out


def check_same(pairs, texts, names=CASES):
    for name in names:
        ours, ref = pairs[name]
        for t in texts:
            want = ref.encode_ordinary(t)
            got = ours.encode_ordinary(t)
            assert got == want, f"{name}: {t!r}: {got} != {want}"
            assert ours.decode(got) == t


def test_pattern_strings_match_tiktoken(pairs):
    for name, (_, preset, pat, _) in CASES.items():
        assert pairs[name][0].pattern_regex == pat


def test_gzipped_vocab_loads_directly(pairs):
    tok = pyllama.Tokenizer.from_tiktoken(os.path.join(DATA, "cl100k_base.tiktoken.gz"), "cl100k", CL100K_SPECIAL)
    assert tok.n_vocab == pairs["cl100k"][1].n_vocab == 100277
    assert tok.encode("hello world") == [15339, 1917]


@pytest.mark.parametrize("name", list(CASES))
def test_shakespeare_same_ids(pairs, name):
    text = open(SHAKESPEARE, encoding="utf-8").read()
    ours, ref = pairs[name]
    want = ref.encode_ordinary(text)
    got = ours.encode_ordinary(text)
    assert len(got) == len(want)
    assert got == want
    assert ours.decode(got) == text
    assert ours.decode_bytes(np.array(got, dtype=np.uint32)) == text.encode()


SCRIPTS = [
    "中文分词测试：我爱北京天安门。東京都は日本の首都です。",
    "한국어 텍스트와 숫자 123개",
    "مرحبا بالعالم! هذا نص عربي مع أرقام ١٢٣٤٥٦٧ و 2024.",
    "नमस्ते दुनिया। यह हिन्दी पाठ है, क्षत्रिय ज्ञान।",
    "Привет, мир! ΚΑΛΗΜΈΡΑ κόσμε. שלום עולם. สวัสดีชาวโลก",
    "👋🏽 👨‍👩‍👧‍👦 🏳️‍🌈 👍🏿👍🏻 ❤️‍🔥 🇺🇸🇯🇵 emoji:🙂!",
    "e\u0301 a\u0308\u0304 Z\u0335\u0321\u0327a\u0336l\u0337g\u0334o\u0338 \u0301\u0302 x\u20dd",
    "ǅungla ǈ ʰello ʰ ꜰ ᾈᾉ Ǳ ǲ ǳ ｆｕｌｌｗｉｄｔｈ１２３",
    "Ⅻ ⅻ ² ³ ½ ௰ ١٢٣ ۴۵۶ ߁߂ 𝟙𝟚𝟛 ⑩⑪",
    "HelloWORLD fooBAR ABCdef abcDEF ÀÉÎõü ΣσςΣ İıIi ß ẞ",
    "tabs\tand\t\ttabs \t \t\n\r\n\r\r\n  \u00a0\u2003\u3000 \u2028\u2029\u0085 end",
    "path/to/file.txt http://x.y/z?q=1&r=2 C:\\dir\\ a//b ///\n//",
    "\x00\x01\x1f\x7f control \u200b\u200c\u200d\ufeff zero-width",
    "\U0001F600\U00010000\U0010FFFD\U000E0001 \ufffd \uffff",
]


def test_many_scripts(pairs):
    check_same(pairs, SCRIPTS + [" ".join(SCRIPTS), "".join(SCRIPTS)])


def test_contractions_every_case(pairs):
    texts = []
    for c in ["s", "t", "re", "ve", "m", "ll", "d", "ſ"]:
        for variant in {"".join(p) for p in itertools.product(*[(ch.lower(), ch.upper()) for ch in c])}:
            for ctx in ["'{}", "it'{}", "IT'{}", " '{} x", "x'{}y", "'{}'{}", "word'{}'", "''{}", "1'{}", "'{}1"]:
                texts.append(ctx.replace("{}", variant))
    texts += ["don't", "DON'T", "Don'T", "I'm I'M i'M", "we'll WE'LL We'Ll", "they've THEY'VE", "you're YOU'RE",
              "he'd HE'D", "'s's's", "’s", "rock 'n' roll", "'tis 'Twas", "O'Neill's", "l'été"]
    check_same(pairs, texts)


def test_whitespace_runs(pairs):
    alphabet = [" ", "\t", "\n", "\r", "\u00a0", "a", "1", "!", "'", "\u3000"]
    texts = ["".join(p) for n in range(1, 5) for p in itertools.product(alphabet, repeat=n)]
    texts += [" " * n + "x" for n in range(1, 20)] + ["x" + " " * n for n in range(1, 20)]
    texts += ["\n" * n + " " * m + "x" for n in range(4) for m in range(4)]
    texts += ["a \n\n  \t b", "  \n  ", "x  \n", "x\r\n\r\n", " \t\n \t", "\t\tx", "!\n\n", " !!\r\n\n x"]
    check_same(pairs, texts)


def test_digits_every_length(pairs):
    texts = []
    for n in range(1, 41):
        d = "".join(str((i * 7 + 3) % 10) for i in range(n))
        texts += [d, " " + d, "x" + d, d + "x", "$" + d + ".00", d + " " + d, "٣" * n, "１" * n]
    check_same(pairs, texts)


def test_every_code_point_in_context(pairs):
    # Each character between letters, digits, spaces and punctuation, so a wrong
    # Unicode category anywhere changes the split. Surrogates cannot be encoded.
    rng = random.Random(0)
    cps = [c for c in range(0x110000) if not 0xD800 <= c < 0xE000]
    rng.shuffle(cps)
    ctx = ["a", "A", "1", " ", "'", "!", "\u0301", "\n"]
    parts = []
    for i, c in enumerate(cps):
        ch = chr(c)
        parts.append(ch + ctx[i % 8] + ch + ch + ctx[(i // 8) % 8])
    text = "".join(parts)
    for name in CASES:
        ours, ref = pairs[name]
        assert ours.encode_ordinary(text) == ref.encode_ordinary(text), name


def test_random_unicode_hypothesis(pairs):
    hypothesis = pytest.importorskip("hypothesis", reason="property-based tests (pip install hypothesis)")
    from hypothesis import given, settings, HealthCheck, strategies as st

    tricky = st.sampled_from(list(" \t\n\r\u00a0\u3000'sStTlLdDmMvVeErRſ1٣Ⅻ!?/.,aAǅʰ中\u0301\u0308é👍🏽\u200d<|>"))
    text_st = st.one_of(st.text(max_size=60), st.text(tricky, max_size=60),
                        st.lists(st.one_of(st.text(max_size=4), tricky), max_size=20).map("".join))

    @settings(max_examples=400, deadline=None, database=None, suppress_health_check=list(HealthCheck))
    @given(text_st)
    def run(t):
        check_same(pairs, [t])

    run()


def test_random_text_with_special_tokens_hypothesis(pairs):
    pytest.importorskip("hypothesis", reason="property-based tests (pip install hypothesis)")
    from hypothesis import given, settings, HealthCheck, strategies as st

    parts = st.sampled_from(["<|endoftext|>", "<|fim_prefix|>", "<|endofprompt|>", "<|endoftext", "|>", " ", "\n",
                             "  ", "a", "B", "1", "'s", "\t", "中"])
    texts = st.lists(st.one_of(parts, st.text(max_size=3)), max_size=15).map("".join)

    @settings(max_examples=200, deadline=None, database=None, suppress_health_check=list(HealthCheck))
    @given(texts, st.sampled_from(["all", {"<|endoftext|>"}, set()]))
    def run(t, allowed):
        for name in ("cl100k", "gpt2"):
            ours, ref = pairs[name]
            assert ours.encode(t, allowed_special=allowed, disallowed_special=()) == \
                ref.encode(t, allowed_special=allowed, disallowed_special=())
            try:
                want = ref.encode(t, allowed_special=allowed)
            except ValueError:
                with pytest.raises(ValueError, match="disallowed special token"):
                    ours.encode(t, allowed_special=allowed)
            else:
                assert ours.encode(t, allowed_special=allowed) == want

    run()


def test_lone_surrogates_as_tiktoken(pairs):
    ours, ref = pairs["cl100k"]
    for t in ["\ud800", "a\udfffb", "\ud83d\ude00"]:
        assert ours.encode(t) == ref.encode(t)
        assert ours.encode_ordinary(t) == ref.encode_ordinary(t)


def test_long_pieces_take_the_heap_path(pairs):
    rng = random.Random(1)
    texts = ["a" * 1000, "ab" * 700, "".join(rng.choice("abcdefghXYZ") for _ in range(3000)),
             "中" * 500, "😀" * 200, " " * 5000 + "x", "!" * 999]
    check_same(pairs, texts)


# ---------------------------------------------------------------- special tokens

def test_special_tokens_semantics(pairs):
    ours, ref = pairs["cl100k"]
    t = "hello <|endoftext|> world<|fim_prefix|>x<|endofprompt|>"
    assert ours.encode(t, allowed_special="all") == ref.encode(t, allowed_special="all")
    assert ours.encode(t, allowed_special={"<|endoftext|>"}, disallowed_special=()) == \
        ref.encode(t, allowed_special={"<|endoftext|>"}, disallowed_special=())
    assert ours.encode(t, disallowed_special=()) == ref.encode(t, disallowed_special=()) == ours.encode_ordinary(t)
    with pytest.raises(ValueError, match="allowed_special") as e:
        ours.encode(t)
    assert "'<|endoftext|>'" in str(e.value) and "disallowed_special=()" in str(e.value)
    with pytest.raises(ValueError, match="fim_prefix"):
        ours.encode(t, allowed_special={"<|endoftext|>"})
    with pytest.raises(ValueError):
        ours.encode_batch(["fine", t])
    assert ours.encode("<|endoftext|>", allowed_special="all") == [100257]
    assert ours.decode([100257, 15339]) == "<|endoftext|>hello"
    assert ours.special_tokens == CL100K_SPECIAL and ours.special_tokens_set == set(CL100K_SPECIAL)


def test_encode_batch_threads(pairs):
    ours, ref = pairs["o200k"]
    text = open(SHAKESPEARE, encoding="utf-8").read()[:200_000]
    docs = text.split("\n\n")
    want = [ref.encode_ordinary(d) for d in docs]
    assert ours.encode_batch(docs, num_threads=2) == want
    assert ours.encode_batch(docs, num_threads=1) == want
    assert ours.encode_batch(docs) == want
    assert ours.encode_batch([]) == []
    assert ours.encode_batch(["a<|endoftext|>"], allowed_special="all") == [ref.encode("a<|endoftext|>", allowed_special="all")]


def test_custom_regex_falls_back_to_python(pairs):
    pytest.importorskip("regex", reason="custom patterns need the regex module")
    ours, ref = pairs["cl100k"]
    vocab = [ours.token_bytes(r) for r in range(100256)]
    custom = pyllama.Tokenizer.from_ranks(vocab, CL100K_PAT, {"<|endoftext|>": 100257})
    assert custom.pattern == CL100K_PAT
    texts = SCRIPTS + [open(SHAKESPEARE, encoding="utf-8").read()[:20000]]
    for t in texts:
        assert custom.encode(t) == ours.encode(t)
    t = "a<|endoftext|>b"
    assert custom.encode(t, allowed_special="all") == ours.encode(t, allowed_special="all")
    assert custom.encode_batch(texts[:3]) == ours.encode_batch(texts[:3])


GPT2_ORIGINAL_PAT = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""


def test_split_matches_regex_module():
    # Python's `regex` module as a second reference (its Unicode tables are newer than
    # tiktoken's, so only text without recently assigned characters). gpt2 is also
    # checked against GPT-2's original regex.
    regex = pytest.importorskip("regex", reason="the reference split")
    alphabet = list(" \t\n\r\u00a0'sStTlLdDmMvVeErR1٣!?/.aAǅʰ中\u0301é👍🏽")
    rng = random.Random(2)
    texts = SCRIPTS + ["".join(rng.choice(alphabet) for _ in range(rng.randint(1, 30))) for _ in range(3000)]
    for preset, pats in (("gpt2", [R50K_PAT, GPT2_ORIGINAL_PAT]), ("cl100k", [CL100K_PAT]), ("o200k", [O200K_PAT])):
        tok = pyllama.Tokenizer.from_ranks([bytes([b]) for b in range(256)], preset)
        for pat in pats:
            for t in texts:
                assert tok.split(t) == regex.findall(pat, t), (preset, pat, t)


# ---------------------------------------------------------------- decoding

def test_decode_is_lossy_only_when_cut_inside_a_character(pairs):
    ours, _ = pairs["cl100k"]
    ids = ours.encode("é😀")
    b = ours.decode_bytes(ids)
    assert b == "é😀".encode()
    cut = ours.decode_bytes(ids[-1:])
    assert ours.decode(ids[-1:]) == cut.decode("utf-8", "replace")
    with pytest.raises(UnicodeDecodeError):
        ours.decode(ids[-1:], errors="strict")
    assert ours.decode(np.array(ids, dtype=np.int64)) == "é😀"
    assert ours.decode(iter(ids)) == "é😀"
    assert ours.decode([]) == ""


# ---------------------------------------------------------------- bad input

def test_bad_ids_in_decode(pairs):
    ours, _ = pairs["cl100k"]
    for bad in ([100277], [-1], [2**40], [100256], [1, 2, 100261]):
        with pytest.raises(TokenIdError, match="not in the vocabulary"):
            ours.decode(bad)
        with pytest.raises(IndexError):
            ours.decode_bytes(bad)
        with pytest.raises(ValueError):
            ours.decode_bytes(np.array(bad, dtype=np.int64))
    with pytest.raises(TypeError):
        ours.decode(["a"])
    with pytest.raises(TypeError):
        ours.decode([1.5])
    with pytest.raises(TypeError):
        ours.decode(np.array([1.0, 2.0]))
    with pytest.raises(TokenIdError):
        ours.token_bytes(100256)


def test_non_str_input(pairs):
    ours, _ = pairs["cl100k"]
    for bad in (b"bytes", None, 3, ["a"]):
        with pytest.raises(TypeError):
            ours.encode(bad)
        with pytest.raises(TypeError):
            ours.encode_ordinary(bad)
    with pytest.raises(TypeError):
        ours.encode_batch(["ok", b"no"])
    with pytest.raises(TypeError):
        ours.encode("x", allowed_special="<|endoftext|>")


def test_unknown_preset_names(vocab_paths):
    for bad in ("cl200k", "GPT2", "llama", "o200k_base"):
        with pytest.raises(ValueError, match="unknown pattern preset"):
            pyllama.Tokenizer.from_tiktoken(vocab_paths["cl100k_base"], pattern=bad)
    with pytest.raises(ValueError, match="invalid pattern regex"):
        pyllama.Tokenizer.from_ranks([bytes([b]) for b in range(256)], pattern="([a-")
    with pytest.raises(TypeError):
        pyllama.Tokenizer.from_ranks([bytes([b]) for b in range(256)], pattern=3)


def _write(tmp_path, name, lines):
    p = tmp_path / name
    p.write_bytes(b"".join(l + b"\n" for l in lines))
    return str(p)


def test_malformed_vocabulary_files(tmp_path):
    import base64

    good = [base64.b64encode(bytes([b])) + b" " + str(b).encode() for b in range(256)]
    assert pyllama.Tokenizer.from_tiktoken(_write(tmp_path, "ok", good), "gpt2").n_vocab == 256
    cases = {
        "bad base64": (good + [b"!!!! 256"], "invalid base64"),
        "bad padding": (good + [b"YQ= 256"], "invalid base64"),
        "bad rank": (good + [b"YWI= x1"], "invalid rank"),
        "no rank": (good + [b"YWI="], "expected"),
        "duplicate rank": (good + [b"YWI= 255"], "duplicate rank"),
        "gap": (good + [b"YWI= 300"], "without gaps"),
        "duplicate token": (good + [base64.b64encode(b"a") + b" 256"], "same token"),
        "missing byte": (good[:10] + [base64.b64encode(b"ab") + b" 10"] + good[11:], "single-byte token"),
        "empty": ([], "no tokens"),
    }
    for what, (lines, msg) in cases.items():
        with pytest.raises(ValueError, match=msg):
            pyllama.Tokenizer.from_tiktoken(_write(tmp_path, what.replace(" ", "_"), lines), "gpt2")
    with pytest.raises(ValueError, match="rank of a regular token"):
        pyllama.Tokenizer.from_tiktoken(_write(tmp_path, "ok2", good), "gpt2", {"<|x|>": 5})
    with pytest.raises(FileNotFoundError):
        pyllama.Tokenizer.from_tiktoken(str(tmp_path / "missing.tiktoken"))


@pytest.mark.parametrize("name", ["cl100k", "o200k"])
def test_hf_export_of_real_vocabulary(pairs, name, tmp_path):
    tokenizers = pytest.importorskip("tokenizers", reason="loads the exported tokenizer.json")
    ours, ref = pairs[name]
    ours.save_hf(str(tmp_path / "tokenizer.json"))
    hf = tokenizers.Tokenizer.from_file(str(tmp_path / "tokenizer.json"))
    text = open(SHAKESPEARE, encoding="utf-8").read()
    assert hf.encode(text, add_special_tokens=False).ids == ref.encode_ordinary(text)
    t = "x<|endoftext|>y don't WE'LL 12345"
    assert hf.encode(t, add_special_tokens=False).ids == ref.encode(t, allowed_special="all")
    # Digit runs: Oniguruma (tokenizers) must split them in threes as tiktoken does (cl100k is exported
    # in Llama 3's spelling, since it reads tiktoken's \p{N}{1,3}+ as a repeat); pyllama reads the file alike.
    back = pyllama.Tokenizer.from_pretrained(str(tmp_path / "tokenizer.json"))
    for d in ["0413", "5256", "0123456789", "1234567", "x 98765 y", "٣٤٥٦٧"]:
        assert hf.encode(d, add_special_tokens=False).ids == ref.encode_ordinary(d) == back.encode(d), d


def test_many_special_tokens_like_o200k_harmony(pairs, vocab_paths):
    import tiktoken

    _, ref0 = pairs["o200k"]
    special = {**O200K_SPECIAL, "<|start|>": 200006, "<|end|>": 200007, "<|message|>": 200008}
    special.update({f"<|reserved_{i}|>": i for i in range(200019, 201088)})  # harmony also reuses 200018
    ref = tiktoken.Encoding("harmony", pat_str=O200K_PAT, mergeable_ranks=ref0._mergeable_ranks, special_tokens=special)
    ours = pyllama.Tokenizer.from_tiktoken(vocab_paths["o200k_base"], "o200k", special)
    assert ours.n_vocab == ref.n_vocab
    t = "<|start|>user<|message|>Hi <b>there</b> <|reserved_200500|><|reserved_2005|><|end|> a<|endoftext|>"
    for allowed in ("all", {"<|start|>", "<|end|>"}, set()):
        assert ours.encode(t, allowed_special=allowed, disallowed_special=()) == \
            ref.encode(t, allowed_special=allowed, disallowed_special=())
    with pytest.raises(ValueError, match="'<\\|start\\|>'"):
        ours.encode(t)
    assert ours.decode(ours.encode(t, allowed_special="all")) == t
