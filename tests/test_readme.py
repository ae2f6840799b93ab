"""The README's Python tour runs as written (against the installed package)."""
import os
import re

import pytest

import pyllama

README = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "README.md")


def test_readme_python_tour_runs(tmp_path, monkeypatch):
    if not os.path.isfile(README):
        pytest.skip("README.md is not beside the tests (installed without the source tree)")
    text = open(README, encoding="utf-8").read()
    blocks = re.findall(r"```python\n(.*?)```", text, flags=re.S)
    assert blocks, "the README has no Python example"
    corpus = os.path.join(os.path.dirname(pyllama.__file__), "data", "shakespeare.txt")
    code = blocks[0].replace('"pyllama/data/shakespeare.txt"', repr(corpus))
    monkeypatch.chdir(tmp_path)
    namespace = {"__name__": "readme"}
    exec(compile(code, "README.md", "exec"), namespace)
    assert os.path.isfile(tmp_path / "my-model" / "model.safetensors")
    assert os.path.isfile(tmp_path / "runs" / "demo" / "metrics.jsonl")


@pytest.mark.cuda
@pytest.mark.skipif(not pyllama.build_info()["cuda_available"], reason="needs an NVIDIA GPU (the README's GPU example)")
def test_readme_gpu_example_runs():
    if not os.path.isfile(README):
        pytest.skip("README.md is not beside the tests (installed without the source tree)")
    import numpy as np

    text = open(README, encoding="utf-8").read()
    blocks = re.findall(r"```python\n(.*?)```", text, flags=re.S)
    gpu_blocks = [b for b in blocks if '.to("cuda"' in b]
    assert gpu_blocks, "the README has no GPU example"
    cfg = pyllama.LlamaConfig(vocab_size=300, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                              num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128)
    namespace = {"__name__": "readme", "np": np, "pyllama": pyllama, "cfg": cfg,
                 "batch": np.random.default_rng(0).integers(0, 300, (2, 32)), "prompt": [1, 2, 3]}
    exec(compile(gpu_blocks[0], "README.md", "exec"), namespace)
    assert len(namespace["new"][0]) == 40 and namespace["t"].device == "cuda"
