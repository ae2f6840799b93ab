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
