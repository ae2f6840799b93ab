"""Tokenizers as real models ship them (issue #20): files built by the reference libraries themselves
(`tokenizers` trainers, sentencepiece's trainer + transformers' converter), loaded by
pyllama.Tokenizer.from_pretrained and by transformers.AutoTokenizer; the ids (with and without special
tokens) and the decoded text must be equal."""
import json
import os

import pytest

import pyllama

tokenizers = pytest.importorskip("tokenizers")
transformers = pytest.importorskip("transformers")
from tokenizers import decoders, models, normalizers, pre_tokenizers, processors, trainers  # noqa: E402

CORPUS_PATH = os.path.join(os.path.dirname(pyllama.__file__), "data", "shakespeare.txt")

SAMPLES = [
    "Hello world",
    "To be, or not to be:  that is\n\n the question.",
    "def f(x):\n    return x ** 2  # square\n\tprint(f'{x!r}')\r\n",
    "中文分词测试，你好世界。",
    "emoji 👩‍👩‍👧‍👦 family 🏳️‍🌈 flag",
    "Arabic-Indic digits ١٢٣٤٥ and 12345678 and ½",
    "   leading and trailing   ",
    "\n\n\n   \t\t  \n",
    "",
    "a",
    "don't I'LL we've",
    "ünïcödé àccents Ωmega ſ ﬁ",
    "ÀÉÎÕÜ İstanbul ΣΑΣ ﬃ ① ㎏ 한국어 Ḳ́ e\u0301\u0323 \x00a\ufffd\u200b\tb 中文字",
]


def _corpus():
    with open(CORPUS_PATH, encoding="utf-8") as f:
        text = f.read()[:120000]
    extra = "中文分词测试你好世界 ١٢٣٤٥ 👩‍👩‍👧‍👦 def return print(x) {} [] ünïcödé àccents" * 20
    return [text, extra]


def _write(folder, tok, config):
    os.makedirs(folder, exist_ok=True)
    tok.save(os.path.join(folder, "tokenizer.json"))
    with open(os.path.join(folder, "tokenizer_config.json"), "w", encoding="utf-8") as f:
        json.dump(config, f)
    return folder


@pytest.fixture(scope="module")
def gpt2_dir(tmp_path_factory):
    t = tokenizers.Tokenizer(models.BPE())
    t.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    t.decoder = decoders.ByteLevel()
    t.post_processor = processors.ByteLevel(trim_offsets=False)
    tr = trainers.BpeTrainer(vocab_size=700, special_tokens=["<|endoftext|>"],
                             initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    t.train_from_iterator(_corpus(), tr)
    return _write(str(tmp_path_factory.mktemp("gpt2")), t, {
        "tokenizer_class": "PreTrainedTokenizerFast", "bos_token": "<|endoftext|>", "eos_token": "<|endoftext|>",
        "clean_up_tokenization_spaces": False})


LLAMA3_REGEX = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|"
                r"\s*[\r\n]+|\s+(?!\S)|\s+")

LLAMA3_TEMPLATE = (
    "{{- bos_token }}{%- for message in messages %}"
    "{{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n' + message['content'] | trim + "
    "'<|eot_id|>' }}{%- endfor %}{%- if add_generation_prompt %}"
    "{{- '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{%- endif %}")

MISTRAL_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
    "{% if message['role'] == 'user' %}{{ '[INST] ' + message['content'] + ' [/INST]' }}"
    "{% elif message['role'] == 'assistant' %}{{ message['content'] + eos_token}}"
    "{% else %}{{ raise_exception('Only user and assistant roles are supported!') }}{% endif %}{% endfor %}")


@pytest.fixture(scope="module")
def llama3_dir(tmp_path_factory):
    specials = ["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"]
    t = tokenizers.Tokenizer(models.BPE(ignore_merges=True))
    t.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(tokenizers.Regex(LLAMA3_REGEX), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    t.decoder = decoders.ByteLevel()
    tr = trainers.BpeTrainer(vocab_size=800, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    t.train_from_iterator(_corpus(), tr)
    bos = t.token_to_id("<|begin_of_text|>")
    t.post_processor = processors.Sequence([
        processors.ByteLevel(trim_offsets=False),
        processors.TemplateProcessing(single="<|begin_of_text|> $A", pair="<|begin_of_text|> $A <|begin_of_text|> $B",
                                      special_tokens=[("<|begin_of_text|>", bos)])])
    return _write(str(tmp_path_factory.mktemp("llama3")), t, {
        "tokenizer_class": "PreTrainedTokenizerFast", "bos_token": "<|begin_of_text|>", "eos_token": "<|eot_id|>",
        "clean_up_tokenization_spaces": True, "chat_template": LLAMA3_TEMPLATE})


@pytest.fixture(scope="module")
def sp_bpe_dir(tmp_path_factory):
    """Llama 2 / Mistral style: byte-fallback BPE, ▁ for spaces, <s> prepended (tokenizers' own model)."""
    t = tokenizers.Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True, fuse_unk=True))
    t.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    t.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(),
                                   decoders.Strip(" ", 1, 0)])
    specials = ["<unk>", "<s>", "</s>"] + [f"<0x{b:02X}>" for b in range(256)]
    tr = trainers.BpeTrainer(vocab_size=900, special_tokens=specials)
    # byte tokens are ordinary vocabulary in SentencePiece files, not special
    t.train_from_iterator([c.replace(" ", "▁") for c in _corpus()], tr)
    t.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", t.token_to_id("<s>"))])
    return _write(str(tmp_path_factory.mktemp("spbpe")), t, {
        "tokenizer_class": "PreTrainedTokenizerFast", "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>",
        "chat_template": MISTRAL_TEMPLATE})


@pytest.fixture(scope="module")
def metaspace_dir(tmp_path_factory):
    t = tokenizers.Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True, fuse_unk=True))
    t.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first", split=False)
    t.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="first", split=False)
    specials = ["<unk>", "<s>", "</s>"] + [f"<0x{b:02X}>" for b in range(256)]
    tr = trainers.BpeTrainer(vocab_size=900, special_tokens=specials)
    t.train_from_iterator(_corpus(), tr)
    t.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", t.token_to_id("<s>"))])
    return _write(str(tmp_path_factory.mktemp("metaspace")), t, {
        "tokenizer_class": "PreTrainedTokenizerFast", "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"})


@pytest.fixture(scope="module")
def wordpiece_dir(tmp_path_factory):
    t = tokenizers.Tokenizer(models.WordPiece(unk_token="[UNK]"))
    t.normalizer = normalizers.BertNormalizer(lowercase=True)  # bert-base-uncased's
    t.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    t.decoder = decoders.WordPiece()
    tr = trainers.WordPieceTrainer(vocab_size=800, special_tokens=["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"])
    t.train_from_iterator(_corpus(), tr)
    t.post_processor = processors.BertProcessing(("[SEP]", t.token_to_id("[SEP]")), ("[CLS]", t.token_to_id("[CLS]")))
    return _write(str(tmp_path_factory.mktemp("wordpiece")), t, {
        "tokenizer_class": "PreTrainedTokenizerFast", "unk_token": "[UNK]", "pad_token": "[PAD]",
        "cls_token": "[CLS]", "sep_token": "[SEP]", "clean_up_tokenization_spaces": True})


@pytest.fixture(scope="module")
def unicode_norm_dir(tmp_path_factory):
    """Byte-level BPE behind the normalizers that need Unicode data (NFKC, Lowercase, NFD + StripAccents)."""
    t = tokenizers.Tokenizer(models.BPE())
    t.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Lowercase(), normalizers.NFD(),
                                         normalizers.StripAccents(), normalizers.NFC()])
    t.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=False),
                                               pre_tokenizers.ByteLevel(add_prefix_space=True)])
    t.decoder = decoders.ByteLevel()
    tr = trainers.BpeTrainer(vocab_size=600, special_tokens=["<|endoftext|>"],
                             initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    t.train_from_iterator(_corpus(), tr)
    return _write(str(tmp_path_factory.mktemp("unorm")), t, {"tokenizer_class": "PreTrainedTokenizerFast",
                                                             "eos_token": "<|endoftext|>"})


@pytest.fixture(scope="module")
def unigram_dir(tmp_path_factory):
    t = tokenizers.Tokenizer(models.Unigram())
    t.pre_tokenizer = pre_tokenizers.Metaspace()
    t.decoder = decoders.Metaspace()
    tr = trainers.UnigramTrainer(vocab_size=500, special_tokens=["<pad>", "</s>", "<unk>"], unk_token="<unk>")
    t.train_from_iterator(_corpus(), tr)
    return _write(str(tmp_path_factory.mktemp("unigram")), t, {
        "tokenizer_class": "PreTrainedTokenizerFast", "eos_token": "</s>", "unk_token": "<unk>", "pad_token": "<pad>"})


@pytest.fixture(scope="module")
def wordlevel_dir(tmp_path_factory):
    t = tokenizers.Tokenizer(models.WordLevel(unk_token="[UNK]"))
    t.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Whitespace(), pre_tokenizers.Digits(individual_digits=True)])
    tr = trainers.WordLevelTrainer(vocab_size=400, special_tokens=["[UNK]"])
    t.train_from_iterator(_corpus(), tr)
    return _write(str(tmp_path_factory.mktemp("wordlevel")), t, {"tokenizer_class": "PreTrainedTokenizerFast",
                                                                 "unk_token": "[UNK]"})


FAMILIES = ["gpt2_dir", "llama3_dir", "sp_bpe_dir", "metaspace_dir", "wordpiece_dir", "unigram_dir", "wordlevel_dir",
            "unicode_norm_dir"]


def _pair(request, name):
    folder = request.getfixturevalue(name)
    return pyllama.Tokenizer.from_pretrained(folder), transformers.AutoTokenizer.from_pretrained(folder)


def _check(ours, ref, text):
    for add in (False, True):
        want = ref(text, add_special_tokens=add)["input_ids"]
        got = ours.encode(text, add_special_tokens=add)
        assert got == want, (text, add)
    ids = ref(text, add_special_tokens=True)["input_ids"]
    for skip in (False, True):
        assert ours.decode(ids, skip_special_tokens=skip) == ref.decode(ids, skip_special_tokens=skip), (text, skip)


@pytest.mark.parametrize("family", FAMILIES)
def test_ids_and_decode_equal_transformers(request, family):
    ours, ref = _pair(request, family)
    specials = [t for t in ref.all_special_tokens if t]
    texts = SAMPLES + [f"{specials[0]}Hello {specials[-1]} world{specials[0]}" if specials else "x"]
    for text in texts:
        _check(ours, ref, text)
    for name in ("bos_token_id", "eos_token_id", "pad_token_id", "unk_token_id"):
        assert getattr(ours, name) == getattr(ref, name), name


@pytest.mark.parametrize("family", FAMILIES)
def test_random_unicode_equal_transformers(request, family):
    hyp = pytest.importorskip("hypothesis")
    st = pytest.importorskip("hypothesis.strategies")
    ours, ref = _pair(request, family)

    @hyp.settings(max_examples=60, deadline=None, derandomize=True)
    @hyp.given(st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=40)
               | st.text(alphabet=" \t\n\r ab1é中😀'.,!‍", max_size=40))
    def run(text):
        _check(ours, ref, text)

    run()


def test_decode_of_arbitrary_ids_equal_transformers(request):
    import random

    rng = random.Random(0)
    for family in ("gpt2_dir", "sp_bpe_dir", "metaspace_dir", "wordpiece_dir", "unigram_dir"):
        ours, ref = _pair(request, family)
        for _ in range(30):
            ids = [rng.randrange(len(ref)) for _ in range(rng.randrange(1, 12))]
            for skip in (False, True):
                assert ours.decode(ids, skip_special_tokens=skip) == ref.decode(ids, skip_special_tokens=skip), ids


def test_tiktoken_style_api_on_tokenizer_json(llama3_dir):
    tok = pyllama.Tokenizer.from_pretrained(llama3_dir)
    ref = tokenizers.Tokenizer.from_file(os.path.join(llama3_dir, "tokenizer.json"))
    text = "Hi<|eot_id|> there"
    assert tok.encode_batch([text, "b"], num_threads=2) == [tok.encode(text), tok.encode("b")]
    eot = tok.token_to_id("<|eot_id|>")
    assert eot in tok.encode(text)
    # encode_ordinary: the special token's text is text (tokenizers' encode_special_tokens mode)
    ref.encode_special_tokens = True
    assert tok.encode_ordinary(text) == ref.encode(text, add_special_tokens=False).ids
    assert eot not in tok.encode_ordinary(text)
    with pytest.raises(ValueError, match="disallowed special token"):
        tok.encode(text, allowed_special=set(), disallowed_special="all")
    assert tok.decode_bytes(tok.encode("héllo")) == "héllo".encode()


def test_single_file_and_errors(tmp_path, gpt2_dir):
    tok = pyllama.Tokenizer.from_pretrained(os.path.join(gpt2_dir, "tokenizer.json"))
    assert tok.decode(tok.encode("Hello")) == "Hello"
    with pytest.raises(FileNotFoundError, match="no tokenizer"):
        pyllama.Tokenizer.from_pretrained(str(tmp_path))
    doc = json.load(open(os.path.join(gpt2_dir, "tokenizer.json"), encoding="utf-8"))
    doc["normalizer"] = {"type": "Nmt"}
    bad = tmp_path / "tokenizer.json"
    bad.write_text(json.dumps(doc), encoding="utf-8")
    with pytest.raises(ValueError, match="normalizer 'Nmt' is not supported"):
        pyllama.Tokenizer.from_pretrained(str(bad))
    doc["normalizer"] = {"type": "Precompiled", "precompiled_charsmap": "AAAA"}  # a 0-byte header: too short
    bad.write_text(json.dumps(doc), encoding="utf-8")
    with pytest.raises(ValueError, match="precompiled_charsmap"):
        pyllama.Tokenizer.from_pretrained(str(bad))
    doc["normalizer"] = None
    # any regex the engine supports is accepted (tests/test_tokenizer_regex.py); the rest is refused by name
    doc["pre_tokenizer"] = {"type": "Split", "pattern": {"Regex": r"\p{Han}+"}, "behavior": "Isolated", "invert": False}
    bad.write_text(json.dumps(doc), encoding="utf-8")
    with pytest.raises(ValueError, match=r"regex .*\\p\{Han\} is not supported"):
        pyllama.Tokenizer.from_pretrained(str(bad))
    bad.write_text("{not json", encoding="utf-8")
    with pytest.raises(ValueError):
        pyllama.Tokenizer.from_pretrained(str(bad))
    with pytest.raises(IndexError):
        tok.decode([10 ** 6])


def test_save_pretrained_round_trip(tmp_path, sp_bpe_dir):
    tok = pyllama.Tokenizer.from_pretrained(sp_bpe_dir)
    out = tmp_path / "saved"
    tok.save_pretrained(out)
    ref = transformers.AutoTokenizer.from_pretrained(str(out))
    again = pyllama.Tokenizer.from_pretrained(str(out))
    for text in SAMPLES:
        assert again.encode(text, add_special_tokens=True) == ref(text)["input_ids"] == tok.encode(text, True)


@pytest.mark.parametrize("family", ["llama3_dir", "sp_bpe_dir"])
def test_chat_template_equals_transformers(request, family):
    pytest.importorskip("jinja2")
    ours, ref = _pair(request, family)
    chat = [{"role": "user", "content": "Hello there!"}, {"role": "assistant", "content": " Hi, how can I help?"},
            {"role": "user", "content": "中文 and code: print(1)"}]
    for gen in (False, True):
        want_text = ref.apply_chat_template(chat, add_generation_prompt=gen, tokenize=False)
        assert ours.apply_chat_template(chat, add_generation_prompt=gen, tokenize=False) == want_text
        want_ids = ref.apply_chat_template(chat, add_generation_prompt=gen, tokenize=True)
        if isinstance(want_ids, dict) or hasattr(want_ids, "keys"):
            want_ids = want_ids["input_ids"]
        assert ours.apply_chat_template(chat, add_generation_prompt=gen) == list(want_ids)


def test_chat_template_errors(request, gpt2_dir, sp_bpe_dir):
    pytest.importorskip("jinja2")
    with pytest.raises(ValueError, match="no chat template"):
        pyllama.Tokenizer.from_pretrained(gpt2_dir).apply_chat_template([{"role": "user", "content": "x"}])
    tok = pyllama.Tokenizer.from_pretrained(sp_bpe_dir)
    import jinja2

    with pytest.raises(jinja2.exceptions.TemplateError, match="alternate"):
        tok.apply_chat_template([{"role": "assistant", "content": "x"}])
    with pytest.raises(jinja2.exceptions.SecurityError):
        tok.apply_chat_template([{"role": "user", "content": "x"}],
                                chat_template="{{ messages.__class__.__mro__ }}", tokenize=False)


def _model_folder(tmp_path, tok_dir):
    tok = pyllama.Tokenizer.from_pretrained(tok_dir)
    cfg = pyllama.LlamaConfig(vocab_size=tok.n_vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                              num_attention_heads=2, num_key_value_heads=2)
    folder = str(tmp_path / "model")
    pyllama.Llama(cfg, seed=0).save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder, tok


def test_generate_takes_the_folder_tokenizer_and_bos(tmp_path, llama3_dir, capsys):
    folder, tok = _model_folder(tmp_path, llama3_dir)
    model = pyllama.Llama.from_pretrained(folder)
    bos = tok.bos_token_id
    assert tok.encode_prompt("Hello there")[0] == bos
    want = model.generate([[bos] + tok.encode("Hello there")], max_new_tokens=4)
    assert model.generate("Hello there", max_new_tokens=4) == want
    events = list(model.stream("Hello there", max_new_tokens=4))
    assert [e.token_id for e in events if e.token_id >= 0] == want[0]
    assert "".join(e.text for e in events) == tok.decode(want[0])
    from pyllama import cli

    assert cli.main(["generate", "--checkpoint", folder, "--prompt", "Hello there", "--max-new-tokens", "4",
                     "--quiet"]) == 0
    assert capsys.readouterr().out == tok.decode(want[0]) + ("" if tok.decode(want[0]).endswith("\n") else "\n")


def test_chat_command_streams_the_templated_reply(tmp_path, llama3_dir):
    pytest.importorskip("jinja2")
    import argparse
    import io

    from pyllama import cli_chat

    folder, tok = _model_folder(tmp_path, llama3_dir)
    model = pyllama.Llama.from_pretrained(folder)
    first = [{"role": "user", "content": "Hello there"}]
    eos = tok.eos_token_id
    reply = model.generate([tok.apply_chat_template(first, add_generation_prompt=True)], max_new_tokens=6,
                           eos_token_id=eos)[0]
    reply = [t for t in reply if t != eos]
    second = first + [{"role": "assistant", "content": tok.decode(reply, skip_special_tokens=True)},
                      {"role": "user", "content": "More"}]
    reply2 = model.generate([tok.apply_chat_template(second, add_generation_prompt=True)], max_new_tokens=6,
                            eos_token_id=eos)[0]
    reply2 = [t for t in reply2 if t != eos]
    args = argparse.Namespace(checkpoint=folder, tokenizer=None, system=None, threads=None, max_new_tokens=6,
                              do_sample=None, temperature=None, top_k=None, top_p=None, repetition_penalty=None,
                              seed=None)
    out = io.StringIO()
    assert cli_chat.run(args, stdin=io.StringIO("Hello there\nMore\n"), stdout=out) == 0
    assert out.getvalue() == tok.decode(reply) + "\n" + tok.decode(reply2) + "\n"


# ---------------------------------------------------------------- SentencePiece .model files

@pytest.fixture(scope="module")
def sp_models(tmp_path_factory):
    spm = pytest.importorskip("sentencepiece")
    folder = tmp_path_factory.mktemp("spm")
    corpus = folder / "corpus.txt"
    corpus.write_text("\n".join(_corpus()), encoding="utf-8")
    out = {}
    for kind in ("bpe", "unigram"):
        for squeeze in (False, True):
            prefix = str(folder / f"{kind}_{int(squeeze)}")
            spm.SentencePieceTrainer.train(
                input=str(corpus), model_prefix=prefix, vocab_size=500, model_type=kind, byte_fallback=True,
                character_coverage=0.9995, split_digits=True, allow_whitespace_only_pieces=True,
                remove_extra_whitespaces=squeeze, normalization_rule_name="identity", minloglevel=2,
                user_defined_symbols=["<|im_start|>"] if kind == "bpe" else [])
            out[(kind, squeeze)] = prefix + ".model"
        # sentencepiece's default normalization (nmt_nfkc: a precompiled character map) and whitespace rules
        prefix = str(folder / f"{kind}_nfkc")
        spm.SentencePieceTrainer.train(input=str(corpus), model_prefix=prefix, vocab_size=500, model_type=kind,
                                       byte_fallback=kind == "bpe", character_coverage=0.9995, minloglevel=2)
        out[(kind, "nfkc")] = prefix + ".model"
    return out


SP_CASES = [("bpe", False), ("bpe", True), ("unigram", False), ("unigram", True), ("bpe", "nfkc"), ("unigram", "nfkc")]


@pytest.mark.parametrize("case", SP_CASES)
def test_sentencepiece_model_equals_sentencepiece(sp_models, case):
    spm = pytest.importorskip("sentencepiece")
    hyp = pytest.importorskip("hypothesis")
    st = pytest.importorskip("hypothesis.strategies")
    path = sp_models[case]
    sp = spm.SentencePieceProcessor(model_file=path)
    tok = pyllama.Tokenizer.from_pretrained(path)
    assert tok.bos_token_id == sp.bos_id() and tok.eos_token_id == sp.eos_id() and tok.unk_token_id == sp.unk_id()

    def check(text):
        ids = sp.encode(text)
        assert tok.encode(text, allowed_special=set()) == ids, text
        assert tok.encode(text, add_special_tokens=True, allowed_special=set()) == [sp.bos_id()] + ids
        if sp.unk_id() not in ids:  # sentencepiece decodes <unk> as " ⁇ ", transformers drops or names it
            assert tok.decode(ids, skip_special_tokens=True) == sp.decode(ids), text

    for text in SAMPLES + ["  two  spaces  ", " \t tab", " \n  \n ", "ﬁ ① ㎏ Ｈｅｌｌｏ\u00a0ＡＢＣ\u3000x\u200by"]:
        check(text)

    @hyp.settings(max_examples=60, deadline=None, derandomize=True)
    @hyp.given(st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=30)
               | st.text(alphabet=" \t\nab1é中😀'.,!‍", max_size=30))
    def run(text):
        check(text)

    run()


@pytest.mark.parametrize("case", [("bpe", True), ("unigram", "nfkc")])
def test_sentencepiece_model_saved_as_tokenizer_json_loads_in_transformers(tmp_path, sp_models, case):
    tok = pyllama.Tokenizer.from_pretrained(sp_models[case])
    tok.save_pretrained(tmp_path / "out")
    ref = transformers.AutoTokenizer.from_pretrained(str(tmp_path / "out"))
    again = pyllama.Tokenizer.from_pretrained(str(tmp_path / "out"))
    for text in SAMPLES + ["  two  spaces  ", "ﬁ ① ㎏ Ｈｅｌｌｏ ＡＢＣ"]:
        if case[1] == "nfkc" and "\u0323" in text:
            # tokenizers' Precompiled maps whole grapheme clusters where sentencepiece (and pyllama) take the
            # longest match: e + U+0301 + U+0323 differs (pyllama follows sentencepiece; see the test above)
            continue
        assert ref(text)["input_ids"] == tok.encode(text, True) == again.encode(text, True), text


def test_sentencepiece_model_in_a_folder_with_llama_config(tmp_path, sp_models):
    # transformers converts the .model itself (LlamaTokenizer, add_bos_token from the config)
    pytest.importorskip("google.protobuf")
    import shutil

    folder = tmp_path / "llama2"
    folder.mkdir()
    shutil.copy(sp_models[("bpe", False)], folder / "tokenizer.model")
    for add_bos in (True, False):
        (folder / "tokenizer_config.json").write_text(json.dumps({
            "tokenizer_class": "LlamaTokenizer", "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>",
            "add_bos_token": add_bos}))
        ours = pyllama.Tokenizer.from_pretrained(str(folder))
        ref = transformers.AutoTokenizer.from_pretrained(str(folder))
        for text in ["Hello world", "中文 ١٢٣", "x"]:
            assert ours.encode(text, add_special_tokens=True) == ref(text)["input_ids"], (text, add_bos)


def test_sentencepiece_model_errors(tmp_path, sp_models):
    data = open(sp_models[("bpe", False)], "rb").read()
    bad = tmp_path / "tokenizer.model"
    for blob, match in ((data[: len(data) // 2], "SentencePiece model"), (b"\x0a\xff\xff\xff\xff\x0f", "past the end"),
                        (b"\x0a\x02\x0b\x00", "wire type")):
        bad.write_bytes(blob)
        with pytest.raises(ValueError, match=match):
            pyllama.Tokenizer.from_pretrained(str(bad))


def test_sentencepiece_bpe_with_pieces_across_spaces_equals_sentencepiece(tmp_path, sp_models):
    # BPE encodes the parts of a text between "▁"s separately (and caches them) only where the merges
    # prove that gives the same ids. A model trained with split_by_whitespace=False has pieces such as
    # "▁of▁the" and "s▁a", which join across the cut: there the whole text must be merged at once.
    spm = pytest.importorskip("sentencepiece")
    with open(CORPUS_PATH, encoding="utf-8") as f:
        lines = f.read()[:200000].splitlines()
    prefix = str(tmp_path / "across")
    spm.SentencePieceTrainer.train(sentence_iterator=iter(lines), model_prefix=prefix, vocab_size=1000,
                                   model_type="bpe", byte_fallback=True, split_by_whitespace=False,
                                   normalization_rule_name="identity", minloglevel=2)
    sp = spm.SentencePieceProcessor(model_file=prefix + ".model")
    tok = pyllama.Tokenizer.from_pretrained(prefix + ".model")
    texts = [ln for ln in lines[:3000] if ln] + SAMPLES + ["I have  of the", "s a s\u2581a"]
    ref = sp.encode(texts)
    assert tok.encode_batch(texts) == ref
    across = {i for ids in ref for i in ids if "\u2581" in sp.id_to_piece(i)[1:]}
    assert len(across) > 20  # the merges do join across the spaces on this text
    # the models of sp_models (whitespace-only pieces such as "▁▁", cut before a "▁" after another character)
    for case in (("bpe", False), ("bpe", True), ("bpe", "nfkc")):
        sp = spm.SentencePieceProcessor(model_file=sp_models[case])
        tok = pyllama.Tokenizer.from_pretrained(sp_models[case])
        assert tok.encode_batch(texts) == sp.encode(texts), case


def test_bpe_word_cache_is_per_tokenizer_and_bounded(sp_models, gpt2_dir):
    # The per-thread word cache belongs to the tokenizer that used the thread last, and is emptied when
    # full (65536 words): tokenizers that give the same words ("▁question") other ids, used in turn, and
    # many distinct words give the references' ids.
    spm = pytest.importorskip("sentencepiece")
    sp_a = spm.SentencePieceProcessor(model_file=sp_models[("bpe", True)])
    sp_b = spm.SentencePieceProcessor(model_file=sp_models[("bpe", "nfkc")])
    a = pyllama.Tokenizer.from_pretrained(sp_models[("bpe", True)])
    b = pyllama.Tokenizer.from_pretrained(sp_models[("bpe", "nfkc")])
    g = pyllama.Tokenizer.from_pretrained(gpt2_dir)
    ref_g = tokenizers.Tokenizer.from_file(os.path.join(gpt2_dir, "tokenizer.json"))
    text = "To be, or not to be: that is the question"
    want = (sp_a.encode(text), sp_b.encode(text), ref_g.encode(text, add_special_tokens=False).ids)
    assert want[0] != want[1]
    for _ in range(3):
        assert (a.encode(text), b.encode(text), g.encode(text)) == want
    words = [f"w{i}q{i * 7919 % 100003}" for i in range(70000)]
    lines = [" ".join(words[i:i + 10]) for i in range(0, len(words), 10)]
    assert a.encode_batch(lines) == sp_a.encode(lines)
    assert a.encode_batch(lines[:50]) == sp_a.encode(lines[:50])  # after the cache was emptied
    big = " ".join(words[:20000])
    assert g.encode(big) == ref_g.encode(big, add_special_tokens=False).ids


def test_load_routes_model_files_to_from_pretrained(gpt2_dir):
    for path in (gpt2_dir, os.path.join(gpt2_dir, "tokenizer.json")):
        tok = pyllama.Tokenizer.load(path)
        assert tok.encode("Hello world") == pyllama.Tokenizer.from_pretrained(gpt2_dir).encode("Hello world")


def test_tokenizer_encode_command_reads_model_files(llama3_dir, capsys):
    from pyllama import cli

    tok = pyllama.Tokenizer.from_pretrained(llama3_dir)
    assert cli.main(["tokenizer", "encode", "--tokenizer", llama3_dir, "--text", "Hello world",
                     "--add-special-tokens"]) == 0
    assert capsys.readouterr().out.split() == [str(i) for i in tok.encode("Hello world", add_special_tokens=True)]


def test_wordpiece_training_matches_tokenizers_and_loads_in_transformers(tmp_path):
    texts = _corpus()
    ours = pyllama.Tokenizer.train_wordpiece(texts, vocab_size=700, min_frequency=2)
    # tokenizers' own WordPieceTrainer on the same pipeline learns a vocabulary of the same size that
    # covers the same alphabet; ours must load in transformers with identical ids.
    ours.save_pretrained(tmp_path / "wp")
    ref = transformers.AutoTokenizer.from_pretrained(str(tmp_path / "wp"))
    assert len(ref) == ours.n_vocab == 700
    for text in SAMPLES + ["[CLS] special [SEP] text [MASK]"]:
        assert ours.encode(text, add_special_tokens=True) == ref(text)["input_ids"], text
        ids = ref(text)["input_ids"]
        assert ours.decode(ids, skip_special_tokens=True) == ref.decode(ids, skip_special_tokens=True)
    assert ours.decode(ours.encode("to be or not to be")) == "to be or not to be"
    trained = tokenizers.Tokenizer(models.WordPiece(unk_token="[UNK]"))
    trained.normalizer = normalizers.BertNormalizer(lowercase=True)
    trained.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    trained.train_from_iterator(texts, trainers.WordPieceTrainer(
        vocab_size=700, min_frequency=2, special_tokens=["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]))
    theirs = set(trained.get_vocab())
    mine = {ours.id_to_token(i) for i in range(ours.n_vocab)}
    assert len(mine & theirs) >= 0.9 * len(theirs)  # the same algorithm: nearly the same vocabulary


def test_wordlevel_training(tmp_path):
    tok = pyllama.Tokenizer.train_wordlevel(["b a b c b a"], vocab_size=3)
    assert tok.encode("a b c") == [2, 1, 0]
    tok.save_pretrained(tmp_path / "wl")
    ref = transformers.AutoTokenizer.from_pretrained(str(tmp_path / "wl"))
    assert ref("a b c d")["input_ids"] == tok.encode("a b c d", True)


def test_docstring_examples_run():
    import doctest

    import pyllama.tokenizers_hf

    result = doctest.testmod(pyllama.tokenizers_hf, optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0


def test_tiktoken_format_tokenizer_model_with_its_config(tmp_path):
    # Llama 3's original files: a tiktoken-format tokenizer.model; the special tokens from the config.
    tiktoken = pytest.importorskip("tiktoken")
    import gzip
    import shutil

    src = os.path.join(os.path.dirname(__file__), "data", "cl100k_base.tiktoken.gz")
    folder = tmp_path / "l3orig"
    folder.mkdir()
    with gzip.open(src, "rb") as f, open(folder / "tokenizer.model", "wb") as out:
        shutil.copyfileobj(f, out)
    (folder / "tokenizer_config.json").write_text(json.dumps({
        "bos_token": "<|begin_of_text|>", "eos_token": "<|eot_id|>",
        "added_tokens_decoder": {"100257": {"content": "<|begin_of_text|>", "special": True},
                                 "100258": {"content": "<|eot_id|>", "special": True}}}))
    tok = pyllama.Tokenizer.from_pretrained(str(folder))
    import base64

    ranks = {}
    with open(folder / "tokenizer.model", "rb") as f:
        for line in f:
            if line.strip():
                t, r = line.split()
                ranks[base64.b64decode(t)] = int(r)
    enc = tiktoken.Encoding("cl100k_test", pat_str=_CL100K_PAT, mergeable_ranks=ranks,
                            special_tokens={"<|begin_of_text|>": 100257, "<|eot_id|>": 100258})
    assert tok.bos_token_id == 100257 and tok.eos_token_id == 100258
    for text in SAMPLES + ["hi<|eot_id|>there"]:
        assert tok.encode(text, add_special_tokens=True) == [100257] + enc.encode(text, allowed_special="all")
        assert tok.decode(enc.encode(text, allowed_special="all")) == text


_CL100K_PAT = (r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}++|\p{N}{1,3}+| ?[^\s\p{L}\p{N}]++[\r\n]*+|\s++$|"""
               r"""\s*[\r\n]|\s+(?!\S)|\s""")


def test_unigram_training_compresses_like_tokenizers_trainer(tmp_path):
    with open(CORPUS_PATH, encoding="utf-8") as f:
        full = f.read()
    texts = full[:120000].splitlines()
    ours = pyllama.Tokenizer.train_unigram(texts, vocab_size=800)
    assert ours.n_vocab == 800 and ours.unk_token_id == 0
    ref = tokenizers.Tokenizer(models.Unigram())
    ref.pre_tokenizer = pre_tokenizers.Metaspace()
    ref.train_from_iterator(texts, trainers.UnigramTrainer(vocab_size=800, special_tokens=["<unk>"], unk_token="<unk>"))
    # the same objective: the learnt vocabularies encode the whole corpus in nearly the same number of tokens
    ratio = len(ours.encode(full)) / len(ref.encode(full).ids)
    assert 0.95 < ratio < 1.05, ratio
    ours.save_pretrained(tmp_path / "uni")
    hf = transformers.AutoTokenizer.from_pretrained(str(tmp_path / "uni"))
    for text in SAMPLES:
        assert ours.encode(text, add_special_tokens=True) == hf(text)["input_ids"], text
    assert ours.decode(ours.encode("To be, or not to be")) == "To be, or not to be"
