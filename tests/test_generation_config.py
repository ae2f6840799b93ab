"""generation_config.json: the defaults of generate / ``pyllama generate``, merged as transformers
merges them (explicit arguments > the file > the defaults; temperature/top_k/top_p only when
do_sample). The files are written by transformers' GenerationConfig.save_pretrained and the
greedy tokens are compared with transformers' generate on the same folder."""
import json
import warnings

import numpy as np
import pytest

import pyllama
from pyllama.cli import main
from pyllama.generation import GenerationConfig

torch = pytest.importorskip("torch", reason="torch is a test extra: pip install '.[test]'")
transformers = pytest.importorskip("transformers", reason="transformers is a test extra: pip install '.[test]'")
from test_generation_util import tiny_hf_model  # noqa: E402

PROMPTS = [[5, 17, 3, 9, 4, 22, 1], [8, 2], [30, 31, 32, 33]]


def _hf_new_tokens(hf, prompt, **kw):
    """transformers' generate on one prompt, the folder's generation config in force: the new tokens,
    cut after the first eos of the config's eos list."""
    ids = torch.tensor([prompt])
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        out = hf.generate(ids, attention_mask=torch.ones_like(ids), **kw)[0, len(prompt):].tolist()
    eos = kw.get("eos_token_id", hf.generation_config.eos_token_id)
    eos = set([eos] if isinstance(eos, int) else (eos or []))
    cut = next((j + 1 for j, t in enumerate(out) if t in eos), len(out))
    return out[:cut]


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """A transformers model folder; eos = two tokens greedy decoding reaches (a list, as Llama 3 ships)."""
    hf = tiny_hf_model(seed=0, vocab_size=40)
    d = tmp_path_factory.mktemp("gencfg")
    hf.save_pretrained(d)
    model = pyllama.Llama.from_pretrained(d)
    base = model.generate(PROMPTS, max_new_tokens=12, eos_token_id=[])
    # a token of the first prompt's greedy run and one of the second's, so that each stops at a different one
    firsts = [{t: i for i, t in reversed(list(enumerate(s)))} for s in base[:2]]
    eos = next([t0, t1] for t0, i0 in firsts[0].items() for t1, i1 in firsts[1].items()
               if i0 >= 1 and i1 >= 1 and t0 != t1 and t1 not in base[0][:i0 + 1] and t0 not in base[1][:i1 + 1])
    return d, hf, base, eos


def _write(d, **fields):
    g = transformers.GenerationConfig(**fields)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        g.save_pretrained(d)
    return json.loads((d / "generation_config.json").read_text())


def test_greedy_with_an_eos_list_matches_transformers(folder):
    d, _, base, eos = folder
    written = _write(d, bos_token_id=1, pad_token_id=0, eos_token_id=eos, max_new_tokens=10, do_sample=False)
    assert written["eos_token_id"] == eos
    # sampling settings beside do_sample=false, as transformers 4.x wrote them (5.x refuses to write them)
    (d / "generation_config.json").write_text(json.dumps(dict(written, temperature=0.7, top_p=0.5)))
    model = pyllama.Llama.from_pretrained(d)
    g = model.generation_config
    assert (g.eos_token_id, g.bos_token_id, g.pad_token_id, g.max_new_tokens, g.do_sample, g.temperature) == \
        (eos, 1, 0, 10, False, 0.7)
    hf = transformers.LlamaForCausalLM.from_pretrained(d).eval()  # reads the same generation_config.json
    out = model.generate(PROMPTS)
    ref = [_hf_new_tokens(hf, p) for p in PROMPTS]
    assert list(out) == ref
    # each of the first two prompts stopped at a different eos of the list; temperature/top_p did not apply
    assert out[0] == base[0][:base[0].index(eos[0]) + 1] and out[1] == base[1][:base[1].index(eos[1]) + 1]
    assert out.stop_reasons[:2] == ["eos", "eos"]
    # explicit arguments win over the file, as in transformers
    assert model.generate(PROMPTS, max_new_tokens=3, eos_token_id=[]) == [_hf_new_tokens(
        hf, p, max_new_tokens=3, eos_token_id=None) for p in PROMPTS]
    assert model.generate(PROMPTS, repetition_penalty=1.3) == [_hf_new_tokens(hf, p, repetition_penalty=1.3)
                                                               for p in PROMPTS]
    assert model.generate(PROMPTS, eos_token_id=[], max_new_tokens=12) == base
    # a GenerationConfig passed in keeps its own values; its unset eos takes the file's (as transformers)
    out2 = model.generate(PROMPTS, GenerationConfig(max_new_tokens=10))
    assert list(out2) == ref


def test_sampling_settings_are_taken_from_the_file(folder):
    d, _, base, eos = folder
    _write(d, eos_token_id=eos, do_sample=True, temperature=0.7, top_k=5, top_p=0.8, repetition_penalty=1.2,
           max_new_tokens=9)
    model = pyllama.Llama.from_pretrained(d)
    explicit = GenerationConfig(do_sample=True, temperature=0.7, top_k=5, top_p=0.8, repetition_penalty=1.2,
                                max_new_tokens=9, eos_token_id=eos)
    for seed in range(3):
        assert model.generate(PROMPTS, seed=seed) == model.generate(PROMPTS, explicit, seed=seed)
    # sampling really is on (and so temperature/top_k/top_p are in force)
    draws = {tuple(map(tuple, model.generate(PROMPTS, seed=s))) for s in range(6)}
    assert len(draws) > 1
    # do_sample=False given explicitly: greedy, the file's temperature/top_p ignored (as transformers)
    greedy = model.generate(PROMPTS, do_sample=False, eos_token_id=[], repetition_penalty=1.0, max_new_tokens=12)
    assert greedy == base


def test_max_length_from_the_file_counts_the_prompt(folder):
    d, _, base, eos = folder
    _write(d, max_length=9, eos_token_id=[39])
    model = pyllama.Llama.from_pretrained(d)
    hf = transformers.LlamaForCausalLM.from_pretrained(d).eval()
    out = model.generate(PROMPTS)
    assert [len(s) for s in out] == [9 - len(p) if 39 not in s else len(s) for p, s in zip(PROMPTS, out)]
    assert list(out) == [_hf_new_tokens(hf, p) for p in PROMPTS]
    assert [len(s) for s in model.generate(PROMPTS, max_new_tokens=4, eos_token_id=[])] == [4, 4, 4]


def test_cli_takes_the_file_and_flags_win(folder, capsys):
    d, _, base, eos = folder
    _write(d, eos_token_id=eos, max_new_tokens=10)
    model = pyllama.Llama.from_pretrained(d)
    assert main(["generate", "--checkpoint", str(d), "--prompt-ids", "5 17 3 9 4 22 1", "--quiet"]) == 0
    out, err = capsys.readouterr()
    assert [int(t) for t in out.split()] == model.generate([PROMPTS[0]])[0] == base[0][:base[0].index(eos[0]) + 1]
    assert main(["generate", "--checkpoint", str(d), "--prompt-ids", "5 17 3 9 4 22 1", "--quiet",
                 "--max-new-tokens", "2"]) == 0
    assert [int(t) for t in capsys.readouterr()[0].split()] == base[0][:2]
    assert main(["generate", "--checkpoint", str(d), "--prompt-ids", "5 17 3 9 4 22 1", "--quiet",
                 "--eos-token-id"]) == 0  # no ids: no eos, so the file's max_new_tokens ends it
    assert [int(t) for t in capsys.readouterr()[0].split()] == base[0][:10]


def test_unsupported_options_are_refused_by_name_and_metadata_skipped(tmp_path):
    cfg = {"do_sample": True, "top_p": 0.9, "transformers_version": "4.45.0", "use_cache": True,
           "_from_model_config": False, "typical_p": 1.0, "num_beam_groups": 1, "suppress_tokens": [],
           "temperature": None}
    (tmp_path / "generation_config.json").write_text(json.dumps(cfg))
    g = GenerationConfig.from_pretrained(tmp_path)
    assert (g.do_sample, g.top_p, g.temperature) == (True, 0.9, 1.0)
    for key, value in [("typical_p", 0.5), ("num_beam_groups", 2), ("suppress_tokens", [3]), ("min_length", 5)]:
        (tmp_path / "generation_config.json").write_text(json.dumps(dict(cfg, **{key: value})))
        with pytest.raises(ValueError, match=rf"sets {key}=.*does not implement"):
            GenerationConfig.from_pretrained(tmp_path)
    (tmp_path / "generation_config.json").write_text(json.dumps({"top_p": 3.0}))
    with pytest.raises(ValueError, match="generation_config.json.*top_p must be in"):
        GenerationConfig.from_pretrained(tmp_path)
    (tmp_path / "generation_config.json").write_text("{oops")
    with pytest.raises(ValueError, match="not valid JSON"):
        GenerationConfig.from_pretrained(tmp_path)


def test_save_pretrained_round_trips_through_transformers(tmp_path):
    cfg = pyllama.LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                              num_attention_heads=2)
    model = pyllama.Llama(cfg, seed=0)
    model.generation_config = GenerationConfig(do_sample=True, temperature=0.6, top_p=0.9, eos_token_id=[3, 7],
                                               bos_token_id=1, max_new_tokens=33)
    model.save_pretrained(tmp_path)
    hf = transformers.GenerationConfig.from_pretrained(tmp_path)
    assert (hf.do_sample, hf.temperature, hf.top_p, hf.eos_token_id, hf.bos_token_id, hf.max_new_tokens) == \
        (True, 0.6, 0.9, [3, 7], 1, 33)
    loaded = pyllama.Llama.from_pretrained(tmp_path)
    assert loaded.generation_config == model.generation_config
    assert pyllama.Llama.from_pretrained(tmp_path).generate([[1, 2]], seed=5) == model.generate([[1, 2]], seed=5)
