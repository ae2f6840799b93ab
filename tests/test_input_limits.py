"""Sizes, types and thread counts are checked in Python before the core allocates (#21 items 6, 7)."""
import math
import os

import numpy as np
import pytest

import pyllama

SMALL = dict(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
             max_position_embeddings=32)


@pytest.mark.parametrize("field", ["rms_norm_eps", "rope_theta"])
@pytest.mark.parametrize("bad", [True, False, "1e-5", math.nan, math.inf, -1.0, 0.0, None, [1.0]])
def test_float_fields_refuse_bools_strings_and_nan(field, bad):
    with pytest.raises(ValueError, match=f"LlamaConfig.{field}"):
        pyllama.LlamaConfig(**SMALL, **{field: bad})


@pytest.mark.parametrize("field", ["vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                                   "num_attention_heads", "num_key_value_heads", "max_position_embeddings",
                                   "bos_token_id", "eos_token_id"])
def test_int_fields_beyond_int32_name_the_field(field):
    with pytest.raises(ValueError, match=f"LlamaConfig.{field}"):
        pyllama.LlamaConfig(**dict(SMALL, **{field: 2 ** 31}))


def test_huge_rope_table_is_refused_with_the_figure_before_allocating():
    # RoPE tables of 10**9 positions x head_dim 1024 floats: 4 TB (a config alone is fine)
    cfg = pyllama.LlamaConfig(**dict(SMALL, hidden_size=2048, max_position_embeddings=10 ** 9))
    with pytest.raises(MemoryError, match=r"needs about [\d,.]+ GB .*max_position_embeddings=1000000000.*memory"):
        pyllama.Llama(cfg)


def test_memory_limit_setting():
    cfg = pyllama.LlamaConfig(**SMALL)
    need = cfg.memory_bytes(training=False)
    assert need == 4 * pyllama.Llama(cfg).num_parameters() + 32 * 16 * 4  # weights; gradients come later
    assert pyllama.memory_limit(need - 1) == need - 1  # returns the limit in force
    try:
        with pytest.raises(MemoryError, match="pyllama.memory_limit"):
            pyllama.Llama(cfg)
        pyllama.memory_limit(need)
        model = pyllama.Llama(cfg)  # weights fit; training needs 16 bytes per parameter
        tc = pyllama.TrainConfig(batch_size=2, seq_len=16, max_steps=1, warmup_steps=0, out_dir=None)
        with pytest.raises(MemoryError, match="Trainer: training this model needs"):
            pyllama.Trainer(model, tc, np.arange(200) % 64, progress=False)
        with pytest.raises(ValueError, match="memory_limit"):
            pyllama.memory_limit(-5)
    finally:
        import os

        assert pyllama.memory_limit(reset=True) == os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    pyllama.Trainer(pyllama.Llama(cfg), tc, np.arange(200) % 64, progress=False)


@pytest.mark.parametrize("n", [2 ** 31 - 1, 4097, 0, -1, 2.0, True, "4"])
def test_set_num_threads_refuses_absurd_counts(n):
    before = pyllama.num_threads()
    with pytest.raises(ValueError, match="set_num_threads"):
        pyllama.set_num_threads(n)
    assert pyllama.num_threads() == before


def test_cli_threads_flag_is_checked(capsys):
    from pyllama.cli import main

    assert main(["train", "--threads", str(2 ** 31 - 1), "--max-steps", "1"]) != 0
    assert "set_num_threads" in capsys.readouterr().err


# ------------------------------------------------------------------ 9. messages that say what was wrong

def test_config_json_list_or_strings_name_the_problem(tmp_path):
    (tmp_path / "config.json").write_text("[1, 2]")
    with pytest.raises(ValueError, match="JSON object"):
        pyllama.LlamaConfig.from_json(tmp_path / "config.json")
    d = dict(SMALL, hidden_size="32")
    with pytest.raises(ValueError, match="hidden_size"):
        pyllama.LlamaConfig.from_dict(d)


def test_malformed_sharded_index_names_the_file(tmp_path):
    model = pyllama.Llama(pyllama.LlamaConfig(**SMALL))
    model.save_pretrained(tmp_path)
    os.unlink(tmp_path / "model.safetensors")
    for text in ("{not json", '{"metadata": {}}', '{"weight_map": [1]}'):
        (tmp_path / "model.safetensors.index.json").write_text(text)
        with pytest.raises(ValueError, match="model.safetensors.index.json.*not a valid sharded-checkpoint index"):
            pyllama.Llama.from_pretrained(tmp_path)


@pytest.mark.parametrize("field", ["max_new_tokens", "min_new_tokens"])
def test_huge_token_counts_name_the_field(field):
    from pyllama.generation import GenerationConfig

    with pytest.raises(ValueError, match=f"GenerationConfig.{field}"):
        GenerationConfig(**{field: 2 ** 63})


def test_binary_file_as_tiktoken_names_the_file(tmp_path):
    p = tmp_path / "model.tiktoken"
    p.write_bytes(bytes(range(256)) * 4)
    with pytest.raises(ValueError, match="model.tiktoken.*not a .tiktoken file.*binary"):
        pyllama.Tokenizer.from_tiktoken(str(p), "cl100k", {})
    p.write_text("hello there\n")
    with pytest.raises(ValueError, match="model.tiktoken.*not a .tiktoken file"):
        pyllama.Tokenizer.from_tiktoken(str(p), "cl100k", {})


def test_gradients_are_allocated_at_first_use():
    model = pyllama.Llama(pyllama.LlamaConfig(**SMALL))
    assert pyllama.clip_grad_norm(model, 1.0) == 0.0  # reading them allocates zeros
    assert not model.flat_grads().any()
    ids = np.arange(32).reshape(2, 16) % 64
    model(ids, labels=ids)
    model.backward()
    assert model.flat_grads().any()
