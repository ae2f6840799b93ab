"""``pyllama generate`` on a saved checkpoint."""
import os

import numpy as np
import pytest

import pyllama
from pyllama.cli import main


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    cfg = pyllama.LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                              num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    model = pyllama.Llama(cfg, seed=3)
    d = tmp_path_factory.mktemp("run") / "step-5"
    model.save_pretrained(d)
    return d, model


def _ids(text):
    return [int(t) for t in text.split()]


def test_cli_prompt_ids_greedy_streams_the_generate_tokens(ckpt, capsys):
    d, model = ckpt
    assert main(["generate", "--checkpoint", str(d), "--prompt-ids", "1,2,3", "--max-new-tokens", "7"]) == 0
    out, err = capsys.readouterr()
    assert _ids(out) == [1, 2, 3] + model.generate([[1, 2, 3]], max_new_tokens=7)[0]
    assert "stopped: max_new_tokens" in err and "tokens/s" in err


def test_cli_follows_run_folder_and_takes_every_option(ckpt, capsys):
    d, model = ckpt
    kw = dict(max_new_tokens=6, do_sample=True, temperature=0.9, top_k=20, top_p=0.9, min_p=0.01,
              repetition_penalty=1.2, presence_penalty=0.1, frequency_penalty=0.2, no_repeat_ngram_size=3, seed=4)
    ref = model.generate([[5, 6]], **kw)[0]
    argv = ["generate", "--checkpoint", str(d.parent), "--prompt-ids", "5 6", "--quiet", "--max-new-tokens", "6",
            "--do-sample", "--temperature", "0.9", "--top-k", "20", "--top-p", "0.9", "--min-p", "0.01",
            "--repetition-penalty", "1.2", "--presence-penalty", "0.1", "--frequency-penalty", "0.2",
            "--no-repeat-ngram-size", "3", "--seed", "4"]
    assert main(argv) == 0
    assert _ids(capsys.readouterr().out) == ref


def test_cli_beam_search_prints_each_sequence(ckpt, capsys):
    d, model = ckpt
    ref = model.generate([[7, 8, 9]], num_beams=3, num_return_sequences=2, max_new_tokens=5, length_penalty=0.6,
                         early_stopping=True, eos_token_id=[])
    argv = ["generate", "--checkpoint", str(d), "--prompt-ids", "7 8 9", "--num-beams", "3", "--max-new-tokens",
            "5", "--num-return-sequences", "2", "--length-penalty", "0.6", "--early-stopping", "true",
            "--eos-token-id", "--quiet"]
    assert main(argv) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert [_ids(x) for x in lines] == list(ref)


def test_cli_errors_are_clear(ckpt, capsys, tmp_path):
    d, _ = ckpt
    assert main(["generate", "--checkpoint", str(d), "--prompt-ids", "1", "--top-p", "0"]) == 1
    assert "top_p" in capsys.readouterr().err
    assert main(["generate", "--checkpoint", str(tmp_path / "nope"), "--prompt-ids", "1"]) == 1
    assert "does not exist" in capsys.readouterr().err
    assert main(["generate", "--checkpoint", str(d), "--prompt", "hello"]) == 1
    assert "tokenizer" in capsys.readouterr().err
    assert main(["generate", "--checkpoint", str(d), "--prompt-ids", " ".join(["1"] * 65)]) == 1
    assert "context" in capsys.readouterr().err


def test_cli_reports_max_context(ckpt, capsys):
    d, _ = ckpt
    assert main(["generate", "--checkpoint", str(d), "--prompt-ids", " ".join(["1"] * 60),
                 "--max-new-tokens", "10"]) == 0
    out, err = capsys.readouterr()
    assert len(_ids(out)) == 64
    assert "maximum context" in err and "stopped: max_context" in err


@pytest.fixture(scope="module")
def text_ckpt(tmp_path_factory):
    if not hasattr(pyllama, "Tokenizer"):
        pytest.skip("pyllama.Tokenizer is not in this build yet")
    text = open(os.path.join(os.path.dirname(pyllama.__file__), "data", "shakespeare.txt"), encoding="utf-8").read()
    tok = pyllama.Tokenizer.train([text[:20000]], vocab_size=320)
    cfg = pyllama.LlamaConfig(vocab_size=320, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                              num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128)
    model = pyllama.Llama(cfg, seed=5)
    d = tmp_path_factory.mktemp("textrun") / "step-10"
    model.save_pretrained(d)
    tok.save(os.path.join(d, "tokenizer.json"))  # as the Trainer saves it in each checkpoint
    return d, model, tok


def test_cli_prompt_text_streams_decoded_text(text_ckpt, capsys):
    d, model, tok = text_ckpt
    ids = tok.encode("ROMEO:")
    new = model.generate([ids], max_new_tokens=12, do_sample=True, seed=2)[0]
    argv = ["generate", "--checkpoint", str(d), "--prompt", "ROMEO:", "--max-new-tokens", "12", "--do-sample",
            "--seed", "2"]
    assert main(argv) == 0
    out, err = capsys.readouterr()
    assert out == "ROMEO:" + tok.decode(new) + "\n"
    assert "12 tokens" in err


def test_cli_stop_string_with_the_checkpoint_tokenizer(text_ckpt, capsys):
    d, model, tok = text_ckpt
    ids = tok.encode("ROMEO:")
    full = tok.decode(model.generate([ids], max_new_tokens=30, eos_token_id=[])[0])
    i = next(i for i in range(4, len(full) - 1) if full[i: i + 2].isascii())
    stop = full[i: i + 2]
    assert main(["generate", "--checkpoint", str(d), "--prompt", "ROMEO:", "--max-new-tokens", "30",
                 "--eos-token-id", "--stop-string", stop]) == 0
    out, err = capsys.readouterr()
    gen = out[len("ROMEO:"):-1]
    assert stop in gen and full.startswith(gen)  # the same tokens, cut once the stop string appeared
    assert "stopped: stop_string" in err


def test_cli_finds_a_tokenizer_saved_into_the_folder(text_ckpt, tmp_path, capsys):
    d, model, tok = text_ckpt
    model.save_pretrained(tmp_path)
    tok.save(tmp_path)  # Tokenizer.save(folder): tokenizer.tiktoken + tokenizer.tiktoken.json
    assert main(["generate", "--checkpoint", str(tmp_path), "--prompt", "JULIET:", "--max-new-tokens", "5",
                 "--quiet"]) == 0
    new = model.generate([tok.encode("JULIET:")], max_new_tokens=5)[0]
    assert capsys.readouterr().out == tok.decode(new) + "\n"


def test_stream_text_and_stop_strings_with_the_real_tokenizer(text_ckpt):
    _, model, tok = text_ckpt
    ids = tok.encode("ROMEO:")
    new = model.generate([ids], max_new_tokens=20, do_sample=True, seed=9, eos_token_id=[])[0]
    evs = list(model.stream("ROMEO:", tokenizer=tok, max_new_tokens=20, do_sample=True, seed=9, eos_token_id=[]))
    assert [e.token_id for e in evs] == new
    assert "".join(e.text for e in evs) == tok.decode(new)
    text = tok.decode(new)
    i = next(i for i in range(4, len(text) - 1) if text[i: i + 2].isascii())  # (random weights: some bytes are not UTF-8)
    stop = text[i: i + 2]
    out = model.generate([ids], max_new_tokens=20, do_sample=True, seed=9, eos_token_id=[], stop_strings=[stop],
                         tokenizer=tok)
    got = tok.decode(out[0])
    assert out.stop_reasons == ["stop_string"] and stop in got
    assert stop not in tok.decode(out[0][:-1])  # cut where it first appeared
    assert new[: len(out[0])] == out[0]
