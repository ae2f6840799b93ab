"""BackendOptions: typed settings passed to Llama.to(); the library reads no environment
variable (the CLI and the benchmarks translate PYLLAMA_CUDA_* with from_env)."""
import dataclasses

import pytest

import pyllama
from pyllama import _core

from helpers import tiny_config


def test_fields_are_checked_by_name():
    with pytest.raises(ValueError, match="BackendOptions.matmul='cutlass'"):
        pyllama.BackendOptions(matmul="cutlass")
    with pytest.raises(ValueError, match="BackendOptions.attention"):
        pyllama.BackendOptions(attention="fast")
    with pytest.raises(TypeError, match="cuda_graphs must be True or False"):
        pyllama.BackendOptions(cuda_graphs="no")


def test_from_env_translates_every_variable():
    env = {"PYLLAMA_CUDA_MATMUL": "cublas", "PYLLAMA_CUDA_ATTENTION": "naive", "PYLLAMA_CUDA_DECODE": "0",
           "PYLLAMA_CUDA_GRAPHS": "off", "PYLLAMA_CUDA_DECODE_GEMV": "false", "PYLLAMA_CUDA_DECODE_FUSED": "0",
           "PYLLAMA_CUDA_PDL": "OFF", "PYLLAMA_CUDA_GREEDY": "0", "PYLLAMA_CUDA_GREEDY_CHAIN": "0"}
    o = pyllama.BackendOptions.from_env(env)
    assert o == pyllama.BackendOptions(matmul="cublas", attention="naive", decode_fast_path=False, cuda_graphs=False,
                                       decode_gemv=False, decode_fused=False, pdl=False, greedy_on_device=False,
                                       greedy_chain=False)
    assert pyllama.BackendOptions.from_env({}) == pyllama.BackendOptions()
    assert pyllama.BackendOptions.from_env({"PYLLAMA_CUDA_ATTENTION": "simt"}).attention == "simt"
    with pytest.raises(ValueError, match="PYLLAMA_CUDA_ATTENTION=fast: use flash, simt or naive"):
        pyllama.BackendOptions.from_env({"PYLLAMA_CUDA_ATTENTION": "fast"})


@pytest.mark.parametrize("name,value,program", [
    ("PYLLAMA_CUDA_FLASH_DQ", "atomic", "flash_dq_atomic.cu"),
    ("PYLLAMA_CUDA_FLASH_FWD_ROWS", "64", "flash_fwd_rows64.cu"),
    ("PYLLAMA_CUDA_MATMUL_TUNE", "1", "matmul_tune.cu"),
    ("PYLLAMA_CUDA_ATTENTION", "gemm", "attention_gemm.cu"),
])
def test_variants_moved_to_the_kernel_lab_are_refused_by_name(name, value, program):
    """The variables of the variants that left the library (no GPU measurement showed them
    faster) name the lab program that has them now; the library's own value is accepted."""
    with pytest.raises(ValueError, match=f"{name}={value}: .*kernel lab now \\(cuda/lab/{program}"):
        pyllama.BackendOptions.from_env({name: value})
    default = {"PYLLAMA_CUDA_FLASH_DQ": "kernel", "PYLLAMA_CUDA_FLASH_FWD_ROWS": "128",
               "PYLLAMA_CUDA_MATMUL_TUNE": "0", "PYLLAMA_CUDA_ATTENTION": "flash"}[name]
    assert pyllama.BackendOptions.from_env({name: default}) == pyllama.BackendOptions()
    with pytest.raises(ValueError, match="kernel lab"):
        pyllama.BackendOptions.from_env({name: "anything"} if name != "PYLLAMA_CUDA_ATTENTION" else {name: "gemm"})
    if name == "PYLLAMA_CUDA_ATTENTION":
        with pytest.raises(ValueError, match="use flash, simt or naive; the GEMM attention is in the kernel lab"):
            pyllama.BackendOptions(attention="gemm")
        cfg = pyllama.model._core_config(pyllama.Llama(tiny_config(), seed=0).config)
        with pytest.raises(ValueError, match="use flash, simt or naive; the GEMM attention is in the kernel lab"):
            _core.make_model(cfg, "cpu", "float32", {"attention": "gemm"})
    else:
        field = {"PYLLAMA_CUDA_FLASH_DQ": "flash_dq_atomic", "PYLLAMA_CUDA_FLASH_FWD_ROWS": "flash_fwd_rows",
                 "PYLLAMA_CUDA_MATMUL_TUNE": "matmul_tune"}[name]
        with pytest.raises(TypeError):
            pyllama.BackendOptions(**{field: True})
        with pytest.raises(TypeError, match=f"unknown BackendOptions field '{field}'"):
            _core.make_model(pyllama.model._core_config(pyllama.Llama(tiny_config(), seed=0).config), "cpu",
                             "float32", {field: True})


def test_the_library_ignores_the_environment(monkeypatch):
    """A bad PYLLAMA_CUDA_* value reaches no model: only from_env (the CLI, the benchmarks) reads it."""
    monkeypatch.setenv("PYLLAMA_CUDA_MATMUL", "cutlass")
    monkeypatch.setenv("PYLLAMA_CUDA_GREEDY_CHAIN", "0")
    m = pyllama.Llama(tiny_config(), seed=0)
    assert m.options == pyllama.BackendOptions()
    assert m.to("cpu") is m and m.generate([[1, 2, 3]], max_new_tokens=2)


def test_models_keep_their_options_and_the_core_checks_them():
    m = pyllama.Llama(tiny_config(), seed=0)
    opts = pyllama.BackendOptions(cuda_graphs=False, matmul="tiled")
    m.to("cpu", options=opts)
    assert m.options is opts
    m.to("cpu")  # no new options: kept
    assert m.options is opts
    with pytest.raises(TypeError, match="BackendOptions"):
        m.to("cpu", options={"cuda_graphs": False})
    cfg = pyllama.model._core_config(m.config)  # the binding itself: a dict of the fields
    with pytest.raises(TypeError, match="unknown BackendOptions field 'graphs'"):
        _core.make_model(cfg, "cpu", "float32", {"graphs": False})
    with pytest.raises(ValueError, match="BackendOptions.attention='x'"):
        _core.make_model(cfg, "cpu", "float32", {"attention": "x"})
    assert _core.make_model(cfg, "cpu", "float32", opts.core_options()).device == "cpu"
    assert set(opts.core_options()) == {f.name for f in dataclasses.fields(opts)} - {"greedy_on_device",
                                                                                    "greedy_chain"}
