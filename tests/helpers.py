"""Shared helpers for the tests: `from helpers import tiny_config, hf_model_from`."""
import numpy as np
import pytest


def _gpu_skip():
    import pyllama

    info = pyllama.build_info()
    return pytest.mark.skipif(
        not info["cuda_available"],
        reason=("no usable CUDA GPU (build_info()['cuda_available'] is False)" if info["cuda"]
                else "pyllama was built without the CUDA backend (build_info()['cuda'] is False)"))


requires_gpu = _gpu_skip()


def _emulated():
    import pyllama

    return pyllama.build_info().get("cuda_archs") == "sim"


# A PYLLAMA_CUDA=SIM build: the CUDA backend on the CPU emulator of tools/cuda_sim (a
# "GPU" thousands of times slower than a real one; tools/cuda_sim/gpu_tests.sh).
EMULATED_GPU = _emulated()


def too_slow_for_the_emulator(fn):
    """Skips a GPU test on the CPU emulator (it runs on a real GPU): only for tests whose
    sizes are the point (long sequences, hundreds of steps), never to hide a failure."""
    return pytest.mark.skipif(EMULATED_GPU, reason="too slow for the CPU emulator of the GPU "
                              "(tools/cuda_sim); runs on a real GPU (tests/gpu/run.sh)")(fn)


def gpu(fn):
    """A GPU test: marked ``cuda`` (``pytest -m cuda``) and skipped, with the reason, without a usable GPU."""
    return pytest.mark.cuda(requires_gpu(fn))


def tiny_config(**overrides):
    import pyllama

    kw = dict(vocab_size=97, hidden_size=48, intermediate_size=80, num_hidden_layers=2,
              num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
              rms_norm_eps=1e-5, rope_theta=10000.0, tie_word_embeddings=False)
    kw.update(overrides)
    return pyllama.LlamaConfig(**kw)


def hf_model_from(model):
    """A transformers.LlamaForCausalLM (float32, eager attention) holding `model`'s weights."""
    torch = pytest.importorskip("torch", reason="torch is a test extra: pip install '.[test]'")
    transformers = pytest.importorskip("transformers", reason="transformers is a test extra")
    c = model.config
    hf_cfg = transformers.LlamaConfig(
        vocab_size=c.vocab_size, hidden_size=c.hidden_size, intermediate_size=c.intermediate_size,
        num_hidden_layers=c.num_hidden_layers, num_attention_heads=c.num_attention_heads,
        num_key_value_heads=c.num_key_value_heads, max_position_embeddings=c.max_position_embeddings,
        rms_norm_eps=c.rms_norm_eps, rope_theta=c.rope_theta, tie_word_embeddings=c.tie_word_embeddings,
        attention_bias=False, mlp_bias=False, hidden_act="silu", attn_implementation="eager",
    )
    torch.manual_seed(0)
    hf = transformers.LlamaForCausalLM(hf_cfg).float().eval()
    sd = {k: torch.from_numpy(np.array(v)) for k, v in model.named_parameters().items()}
    missing, unexpected = hf.load_state_dict(sd, strict=False)
    missing = [m for m in missing if not (m == "lm_head.weight" and c.tie_word_embeddings)]
    assert not missing and not unexpected, (missing, unexpected)
    if c.tie_word_embeddings:
        hf.tie_weights()
    return hf
