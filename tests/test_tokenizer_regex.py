"""Regexes in tokenizer.json (issue #20): Split pre-tokenizers with any regex and behavior, Replace
normalizers and decoders with a Regex, run by the core's regex engine (csrc/core/regex.*, Oniguruma's
semantics). The files are built with the `tokenizers` library itself around real models' regexes (Qwen2,
DeepSeek-V3's Sequence, Mistral's Tekken, Falcon, BLOOM, cl100k as tiktoken spells it) and pyllama's pieces,
ids and decoded text are compared with `tokenizers`' on English, code, Chinese/Japanese, emoji ZWJ
sequences, Arabic-Indic digits, whitespace runs and hypothesis text."""
import os
import time

import pytest

import pyllama

tokenizers = pytest.importorskip("tokenizers")
from tokenizers import Regex, decoders, models, normalizers, pre_tokenizers, trainers  # noqa: E402

CORPUS_PATH = os.path.join(os.path.dirname(pyllama.__file__), "data", "shakespeare.txt")

# Qwen2 / Qwen2.5: like Llama 3's but one digit at a time (\p{N}, not \p{N}{1,3}).
QWEN2 = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|"
         r"\s+(?!\S)|\s+")
# DeepSeek-V3: a Sequence of three Splits (digit groups, CJK runs, the rest), then ByteLevel without regex.
# The file spells CR and LF as the characters themselves inside the classes.
DEEPSEEK_V3 = [
    r"\p{N}{1,3}",
    "[一-龥\u3040-ゟ゠-ヿ]+",
    "[!\"#$%&'()*+,\\-./:;<=>?@\\[\\\\\\]^_`{|}~][A-Za-z]+|[^\r\n\\p{L}\\p{P}\\p{S}]?[\\p{L}\\p{M}]+|"
    " ?[\\p{P}\\p{S}]+[\r\n]*|\\s*[\r\n]+|\\s+(?!\\S)|\\s+",
]
# Mistral's Tekken (NeMo, Pixtral): o200k-like letter classes, single digits, '/' kept with punctuation.
TEKKEN = (r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+|"
          r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*|\p{N}|"
          r" ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+")
# Falcon: Punctuation, ByteLevel, Digits, then three-digit groups split off.
FALCON_DIGITS = r"[0-9][0-9][0-9]"
# BLOOM: a nested class inside a negated one.
BLOOM = r" ?[^(\s|[.,!?…。，、।۔،])]+"
# cl100k as tiktoken spells it: Oniguruma reads \p{N}{1,3}+ as a repeat of \p{N}{1,3} (whole digit runs),
# so this one goes to the engine, not to the cl100k scanner.
CL100K_TIKTOKEN = (r"'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}++|\p{N}{1,3}+| ?[^\s\p{L}\p{N}]++[\r\n]*+|"
                   r"\s++$|\s*[\r\n]|\s+(?!\S)|\s")
# Spellings the preset scanners run (GPT-2's as tokenizer.json writes it, o200k's as tiktoken does):
# checked against tokenizers here too.
GPT2 = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"
O200K_TIKTOKEN = (r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?"
                  r"|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?"
                  r"|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+")

SAMPLES = [
    "Hello world",
    "To be, or not to be:  that is\n\n the question.",
    "def f(x):\n    return x ** 2  # square\n\tprint(f'{x!r}')\r\n",
    "if (a[i] >= 0x1F) { path = \"/usr/bin\"; }  // 12345678 // x/y",
    "中文分词测试，你好世界。日本語のテキスト、カタカナとひらがな。",
    "emoji 👩‍👩‍👧‍👦 family 🏳️‍🌈 flag 👍🏽",
    "Arabic-Indic digits ١٢٣٤٥ and 12345678 and ½ and ²³ and ⅫⅣ",
    "   leading and trailing   ",
    "\n\n\n   \t\t  \n",
    "\r\n\r\nx\u3000y\u00a0z\u2028",
    "",
    "a",
    "don't I'LL we've HE'S 'ſ 'K they'RE",
    "ünïcödé àccents Ωmega ſ ﬁ ÀÉÎÕÜ İstanbul ΣΑΣ 한국어 e\u0301\u0323 \x00a\ufffd\u200b\tb",
    "CamelCaseWord HTTPServer iPhone ǅungla ᾈ",
]


def _corpus():
    with open(CORPUS_PATH, encoding="utf-8") as f:
        text = f.read()[:60000]
    return [text, " ".join(SAMPLES) * 20]


def _ref_pieces(tok, text):
    if tok.normalizer is not None:
        text = tok.normalizer.normalize_str(text)
    if tok.pre_tokenizer is None:
        return [text] if text else []
    return [s for s, _ in tok.pre_tokenizer.pre_tokenize_str(text)]


def _byte_level(*splits):
    return pre_tokenizers.Sequence(list(splits) + [pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])


def _split(regex, behavior="isolated", invert=False):
    return pre_tokenizers.Split(Regex(regex), behavior=behavior, invert=invert)


PIPELINES = {
    "qwen2": lambda: _byte_level(_split(QWEN2)),
    "deepseek_v3": lambda: _byte_level(*[_split(r) for r in DEEPSEEK_V3]),
    "tekken": lambda: _byte_level(_split(TEKKEN)),
    "falcon": lambda: pre_tokenizers.Sequence([
        pre_tokenizers.Punctuation(behavior="contiguous"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
        pre_tokenizers.Digits(individual_digits=False),
        _split(FALCON_DIGITS)]),
    "bloom": lambda: _byte_level(_split(BLOOM)),
    "cl100k_tiktoken": lambda: _byte_level(_split(CL100K_TIKTOKEN)),
    "gpt2_split": lambda: _byte_level(_split(GPT2)),
    "o200k_tiktoken": lambda: _byte_level(_split(O200K_TIKTOKEN)),
}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """{name: (tokenizers.Tokenizer, pyllama tokenizer)}: byte-level BPE trained behind each pre-tokenizer."""
    out = {}
    for name, make in PIPELINES.items():
        t = tokenizers.Tokenizer(models.BPE())
        t.pre_tokenizer = make()
        t.decoder = decoders.ByteLevel()
        tr = trainers.BpeTrainer(vocab_size=500, special_tokens=["<|endoftext|>"],
                                 initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
        t.train_from_iterator(_corpus(), tr)
        path = os.path.join(str(tmp_path_factory.mktemp(name)), "tokenizer.json")
        t.save(path)
        out[name] = (tokenizers.Tokenizer.from_file(path), pyllama.Tokenizer.from_pretrained(path))
    return out


def _check(ref, ours, text):
    assert ours.split(text) == _ref_pieces(ref, text), text
    ids = ref.encode(text, add_special_tokens=False).ids
    assert ours.encode(text) == ids, text
    for skip in (False, True):
        assert ours.decode(ids, skip_special_tokens=skip) == ref.decode(ids, skip_special_tokens=skip), text


@pytest.mark.parametrize("name", list(PIPELINES))
def test_real_models_regexes_equal_tokenizers(trained, name):
    ref, ours = trained[name]
    for text in SAMPLES:
        _check(ref, ours, text)
    with open(CORPUS_PATH, encoding="utf-8") as f:
        _check(ref, ours, f.read()[200000:230000])


@pytest.mark.parametrize("name", list(PIPELINES))
def test_real_models_regexes_random_unicode(trained, name):
    hyp = pytest.importorskip("hypothesis")
    st = pytest.importorskip("hypothesis.strategies")
    ref, ours = trained[name]

    @hyp.settings(max_examples=150, deadline=None, derandomize=True)
    @hyp.given(st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=40)
               | st.text(alphabet=" \t\n\r\u3000ab1é中ぁカ😀'.,!/‍١²ſKİ\u0301", max_size=40))
    def run(text):
        _check(ref, ours, text)

    run()


def _tokenizer_file(tmp_path, tok, name="tokenizer.json"):
    path = str(tmp_path / name)
    tok.save(path)
    return pyllama.Tokenizer.from_pretrained(path)


def _word_level():
    return tokenizers.Tokenizer(models.WordLevel({"[UNK]": 0}, unk_token="[UNK]"))


BEHAVIOR_REGEXES = [r"\s+", r"\p{P}", r"\d{2}", r"(?=[A-Z])", r"x*", r"(?i)the", r"\b", r"^|$", r"(?<=\p{Ll})\p{Lu}",
                    r"[^\p{L}\p{N}\s]+"]
BEHAVIOR_TEXTS = ["The cat, the HAT; theTHE!!", "xx--axxb x", "a  b\n\nc  ", "CamelCaseWord 12345 ٣٤ ab12", "", "x",
                  "\n", "中文，日本語。 émoji 👩‍👩‍👧 end"]


@pytest.mark.parametrize("behavior", ["removed", "isolated", "merged_with_previous", "merged_with_next", "contiguous"])
@pytest.mark.parametrize("invert", [False, True])
def test_split_behaviors_equal_tokenizers(tmp_path, behavior, invert):
    for k, regex in enumerate(BEHAVIOR_REGEXES):
        t = _word_level()
        t.pre_tokenizer = _split(regex, behavior, invert)
        ours = _tokenizer_file(tmp_path, t, f"t{k}.json")
        for text in BEHAVIOR_TEXTS:
            assert ours.split(text) == _ref_pieces(t, text), (regex, text)


def test_split_string_behaviors_equal_tokenizers(tmp_path):
    # String patterns and the char-class pre-tokenizers share the behaviors' grouping with Regex ones.
    texts = ["a--b-c--", "--", "a - b", "", "x"]
    for behavior in ["removed", "isolated", "merged_with_previous", "merged_with_next", "contiguous"]:
        for k, pre in enumerate([pre_tokenizers.Split("-", behavior=behavior, invert=False),
                                 pre_tokenizers.Split("-", behavior=behavior, invert=True),
                                 pre_tokenizers.Punctuation(behavior=behavior)]):
            t = _word_level()
            t.pre_tokenizer = pre
            ours = _tokenizer_file(tmp_path, t, f"{behavior}{k}.json")
            for text in texts + ["a!!b?c.."]:
                assert ours.split(text) == _ref_pieces(t, text), (behavior, k, text)
    t = _word_level()
    t.pre_tokenizer = pre_tokenizers.Metaspace(prepend_scheme="always", split=True)
    ours = _tokenizer_file(tmp_path, t, "metaspace.json")
    for text in ["a  b   c", "  x", "x  "]:
        assert ours.split(text) == _ref_pieces(t, text), text


REPLACE_RULES = [(r"\s+", " "), (r"[\p{P}\p{S}]", ""), (r"(?i)hello", "bye"), (r"^\s+|\s+$", ""), (r"x*", "-"),
                 (r"\p{N}+", "0"), (r"(?<=\p{Ll})(?=\p{Lu})", " "), (r" {2,}", "▁"), (r"\A▁+", ""),
                 (r"[\u200b-\u200d\ufeff]", "")]


def test_replace_normalizer_equal_tokenizers(tmp_path):
    texts = SAMPLES + ["HELLO hello Hello", "xaxx", "  a  ", "▁▁a▁▁b", "CamelCase"]
    for k, (regex, content) in enumerate(REPLACE_RULES):
        t = _word_level()
        t.normalizer = normalizers.Replace(Regex(regex), content)
        ours = _tokenizer_file(tmp_path, t, f"n{k}.json")
        for text in texts:
            want = t.normalizer.normalize_str(text)
            assert "".join(ours.split(text)) == want, (regex, text)


@pytest.fixture(scope="module")
def sp_regex(tmp_path_factory):
    """SentencePiece-style BPE whose whitespace rules and decoder are Replace with Regex patterns."""
    t = tokenizers.Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True, fuse_unk=True))
    t.normalizer = normalizers.Sequence([normalizers.Replace(Regex(r"[ \t]{2,}"), " "),
                                         normalizers.Replace(Regex(r"^\s+|\s+$"), ""),
                                         normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    t.decoder = decoders.Sequence([decoders.Replace(Regex("▁+"), " "), decoders.ByteFallback(), decoders.Fuse(),
                                   decoders.Strip(" ", 1, 0)])
    specials = ["<unk>", "<s>", "</s>"] + [f"<0x{b:02X}>" for b in range(256)]
    t.train_from_iterator([c.replace(" ", "▁") for c in _corpus()],
                          trainers.BpeTrainer(vocab_size=700, special_tokens=specials, show_progress=False))
    path = os.path.join(str(tmp_path_factory.mktemp("spregex")), "tokenizer.json")
    t.save(path)
    return tokenizers.Tokenizer.from_file(path), pyllama.Tokenizer.from_pretrained(path)


def test_replace_normalizer_and_decoder_in_a_model(sp_regex):
    hyp = pytest.importorskip("hypothesis")
    st = pytest.importorskip("hypothesis.strategies")
    ref, ours = sp_regex
    for text in SAMPLES:
        _check(ref, ours, text)

    @hyp.settings(max_examples=100, deadline=None, derandomize=True)
    @hyp.given(st.text(alphabet=" \t\n▁ab1é中😀", max_size=30))
    def run(text):
        _check(ref, ours, text)

    run()


def test_unicode_properties_equal_oniguruma(tmp_path):
    """Every code point's general category, \\w, \\s, \\d and (?i) set as Oniguruma has them."""
    every = "".join(chr(c) for c in range(0x110000) if not 0xD800 <= c < 0xE000)
    rules = [r"\P{L}", r"\P{Lu}", r"\P{Lt}", r"\P{Lm}", r"\P{M}", r"\P{N}", r"\P{No}", r"\P{P}", r"\P{S}", r"\P{Z}",
             r"\P{Cf}", r"\P{Cn}", r"\W", r"\S", r"\D", r"(?i)[^a-zß-ÿ\u0370-\u03ff\u0400-\u04ff\u10a0-\u10ff\u13a0-\u13ff]"]
    for k, regex in enumerate(rules):
        t = _word_level()
        t.normalizer = normalizers.Replace(Regex(regex), "")
        ours = _tokenizer_file(tmp_path, t, f"u{k}.json")
        assert "".join(ours.split(every)) == t.normalizer.normalize_str(every), regex


def test_case_insensitive_contractions(tmp_path):
    # (?i:'s|...): ſ (U+017F) and K (U+212A, Kelvin) fold to s and k as in Oniguruma.
    t = _word_level()
    t.pre_tokenizer = _split(r"(?i:'s|'t|'k)|\p{L}+|\s+|.")
    ours = _tokenizer_file(tmp_path, t)
    for text in ["it'S 'ſ 'K 'k 'T", "'ss 'ST"]:
        assert ours.split(text) == _ref_pieces(t, text)


@pytest.mark.parametrize("regex, what", [
    (r"\p{Han}+", r"\p{Han}"),
    (r"(a)\1", r"\1 (a back-reference"),
    (r"\Ga", r"\G"),
    (r"(?x) a", "(?x)"),
    (r"\X", r"\X"),
    (r"[[:alpha:]]", "POSIX bracket"),
    (r"\xff", r"\xff"),
])
def test_unsupported_regex_refused_by_name(tmp_path, regex, what):
    for component in ("pre_tokenizer", "normalizer", "decoder"):
        t = _word_level()
        if component == "pre_tokenizer":
            t.pre_tokenizer = _split(regex)
        elif component == "normalizer":
            t.normalizer = normalizers.Replace(Regex(regex), "")
        else:
            t.decoder = decoders.Replace(Regex(regex), "")
        path = str(tmp_path / "tokenizer.json")
        t.save(path)
        with pytest.raises(ValueError, match="tokenizer.json: .*regex .*is not supported") as e:
            pyllama.Tokenizer.from_pretrained(path)
        assert what in str(e.value)


def test_regex_syntax_errors(tmp_path):
    import json

    t = _word_level()
    t.pre_tokenizer = _split("a")
    path = tmp_path / "tokenizer.json"
    t.save(str(path))
    doc = json.loads(path.read_text(encoding="utf-8"))
    for bad in ["(ab", "a)", "[a-", "[z-a]", "*a", "a{100001}", "\\p{L", "(?<n", "\\"]:
        doc["pre_tokenizer"]["pattern"] = {"Regex": bad}
        path.write_text(json.dumps(doc), encoding="utf-8")
        with pytest.raises(ValueError, match="tokenizer.json: Split pre-tokenizer: regex"):
            pyllama.Tokenizer.from_pretrained(str(path))


def test_catastrophic_backtracking_is_an_error_not_a_hang(tmp_path):
    t = _word_level()
    t.pre_tokenizer = _split(r"(a*)*c|(?:a|aa)+$")
    ours = _tokenizer_file(tmp_path, t)
    t0 = time.perf_counter()
    with pytest.raises(ValueError, match="backtracking"):
        ours.split("a" * 40 + "b")
    assert time.perf_counter() - t0 < 30
    assert ours.split("aac") == ["aac"]
