"""Smoke tests of the benchmark suite (``python -m pyllama.bench``) on tiny sizes.

They check the suite's plumbing (options, JSON keys, positive figures, the checks that
both sides compute the same thing), not speed: timings on a shared machine vary."""
import importlib.util
import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest

import pyllama
from pyllama import bench

REFERENCES = ("torch", "transformers", "tiktoken", "tokenizers")
MISSING = [m for m in REFERENCES if importlib.util.find_spec(m) is None]


def run_bench(tmp_path, *args, check=True):
    out = tmp_path / "results.json"
    proc = subprocess.run([sys.executable, "-m", "pyllama.bench", "--quick", "--json", str(out), *args],
                          cwd=tmp_path, capture_output=True, text=True, timeout=600)
    if check:
        assert proc.returncode == 0, proc.stdout + proc.stderr
        return json.loads(out.read_text()), proc.stdout
    return proc


def positive(x):
    return isinstance(x, (int, float)) and np.isfinite(x) and x > 0


@pytest.fixture(scope="module")
def full_quick(tmp_path_factory):
    """The whole suite, --quick, with every reference that is installed."""
    tmp = tmp_path_factory.mktemp("bench")
    args = ["--plot", str(tmp / "curves.png")] + (["--no-reference"] if MISSING else [])
    res, stdout = run_bench(tmp, *args)
    return res, stdout, tmp


def test_suite_json_has_every_benchmark(full_quick):
    res, stdout, _ = full_quick
    assert set(res) == {"meta", "results", "table"}
    assert set(res["results"]) == set(bench.BENCHMARKS)
    m = res["results"]["machine"]
    assert positive(m["peak_gflops"]) and positive(m["bandwidth_GB_s"])
    for name in ("train", "train_large"):
        r = res["results"][name]
        assert positive(r["pyllama"]["tok_s"]) and positive(r["pyllama"]["gflops"])
        assert positive(r["pyllama"]["fraction_of_peak"])
    d = res["results"]["decode"]
    assert positive(d["pyllama"]["decode_tok_s"]) and positive(d["weight_bytes_per_token"])
    assert positive(d["fraction_of_bandwidth"])
    assert positive(res["results"]["prefill"]["pyllama"]["tok_s"])
    assert all(positive(s["pyllama_gflops"]) for s in res["results"]["matmul"]["shapes"])
    assert positive(res["results"]["encode"]["single"]["pyllama"]["MB_s"])
    assert positive(res["results"]["bpe"]["sizes"][0]["pyllama"]["best_s"])
    for name, key in (("scale_t", "T"), ("scale_width", "hidden")):
        pts = res["results"][name]["points"]
        assert len(pts) >= 2 and all(positive(p["pyllama"]["us_per_token"]) for p in pts)
        assert [p[key] for p in pts] == sorted(p[key] for p in pts)
    assert res["table"] and all(r["ours"] is None or positive(r["ours"]) for r in res["table"])
    assert "ratio" in stdout and "target" in stdout  # the final table was printed


@pytest.mark.skipif(bool(MISSING), reason=f"references not installed: {', '.join(MISSING)} "
                                          "(pip install 'pyllama[bench]')")
def test_suite_references_side_by_side(full_quick):
    res, _, _ = full_quick
    r = res["results"]
    for name in ("train", "train_large"):
        losses = r[name]["loss_first_step"]
        assert abs(losses["torch_hf"] - losses["pyllama"]) < 1e-3, losses  # the same model on every side
        assert abs(losses["torch_plain"] - losses["pyllama"]) < 1e-3, losses
        assert positive(r[name]["ratio_vs_torch_hf"]) and positive(r[name]["ratio_vs_torch_plain"])
    assert r["decode"]["same_tokens"] is True
    assert positive(r["decode"]["ratio_vs_hf"]) and positive(r["prefill"]["ratio_vs_hf"])
    assert all(positive(s["ratio"]) and s["max_abs_err"] < 1e-2 for s in r["matmul"]["shapes"])
    assert r["encode"]["same_ids"] is True and positive(r["encode"]["batch"]["pyllama"]["ratio"])
    assert positive(r["bpe"]["sizes"][0]["ratio"])
    assert all(positive(p["ratio"]) for p in r["scale_t"]["points"])
    targets = [row for row in res["table"] if row["target"] is not None]
    assert targets and all(isinstance(row["ok"], bool) for row in targets)


def test_plot_written_when_matplotlib_present(full_quick):
    pytest.importorskip("matplotlib", reason="matplotlib draws the scaling plot")
    _, _, tmp = full_quick
    assert (tmp / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_only_and_no_reference(tmp_path):
    res, stdout = run_bench(tmp_path, "--only", "matmul,bpe", "--no-reference", "--threads", "1")
    assert set(res["results"]) == {"matmul", "bpe"}
    assert res["meta"]["threads"]["pyllama"] == 1 and res["meta"]["reference"] is False
    assert all("numpy_gflops" not in s for s in res["results"]["matmul"]["shapes"])
    assert all(row["theirs"] is None for row in res["table"])


def test_unknown_benchmark_is_a_clear_error(tmp_path):
    proc = run_bench(tmp_path, "--only", "train,nope", check=False)
    assert proc.returncode == 2
    assert "unknown benchmark(s) nope" in proc.stderr and "decode" in proc.stderr


def test_cli_subcommand_registered():
    from pyllama.cli import build_parser

    args = build_parser().parse_args(["bench", "--quick", "--only", "matmul", "--threads", "3"])
    assert args.func is bench.run_from_args and args.threads == 3 and args.quick


def test_plain_pytorch_module_matches_pyllama():
    torch = pytest.importorskip("torch", reason="torch is a bench extra: pip install 'pyllama[bench]'")
    cfg = pyllama.LlamaConfig(vocab_size=97, hidden_size=48, intermediate_size=80, num_hidden_layers=2,
                              num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    model = pyllama.Llama(cfg, seed=0)
    ids = np.random.default_rng(0).integers(0, cfg.vocab_size, (2, 16))
    out = model(ids, labels=ids)
    model.zero_grad()
    model.backward()
    plain = bench.plain_llama_from(model, torch)
    logits, loss = plain(torch.from_numpy(ids), torch.from_numpy(ids))
    loss.backward()
    np.testing.assert_allclose(logits.detach().numpy(), out.logits, atol=1e-4)
    assert abs(loss.item() - out.loss) < 1e-5
    grads = model.named_grads()
    for name, p in plain.named_parameters():
        np.testing.assert_allclose(p.grad.numpy(), grads[name], atol=1e-5, err_msg=name)


def test_decode_weight_bytes_counts_one_embedding_row():
    cfg = pyllama.LlamaConfig(vocab_size=100, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                              num_attention_heads=2, tie_word_embeddings=False)
    model = pyllama.Llama(cfg, seed=0)
    assert bench.decode_weight_bytes(model) == 4 * (model.num_parameters() - 100 * 16 + 16)


ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GPU_BENCH = os.path.join(ROOT, "bench", "gpu.py")


@pytest.mark.cuda
@pytest.mark.skipif(not os.path.isfile(GPU_BENCH), reason="bench/ is not in this checkout (installed package)")
@pytest.mark.skipif(not pyllama.build_info()["cuda_available"], reason="no usable CUDA GPU (or emulator build)")
def test_gpu_bench_script_runs_end_to_end(tmp_path):
    """bench/gpu.py at its tiny size, every row of pyllama's side (bf16 and float32 training,
    the cublasGemmEx row, decoding at batch 1 and 16): the script the GPU session relies on
    must not fail there (it runs here on the CPU emulator, tools/cuda_sim)."""
    out = tmp_path / "gpu.json"
    p = subprocess.run([sys.executable, GPU_BENCH, "--size", "tiny", "--decode-tokens", "6", "--prompt-len", "5",
                        "--budget", "600", "--no-compile", "--json", str(out)],
                       capture_output=True, text=True, timeout=900, cwd=tmp_path)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    rows = json.loads(out.read_text())
    text = json.dumps(rows)
    assert "# train bfloat16" in p.stdout and "# train float32" in p.stdout, p.stdout[-3000:]
    assert "with cublasGemmEx matmuls" in p.stdout, p.stdout[-3000:]  # the emulated build has cuBLAS(Lt)
    assert len(rows) >= 4 and all(r.get("tok_s", 1) > 0 for r in rows), text[:3000]
    # the per-op profile the GPU session reads (training step, fused and unfused decode steps)
    p = subprocess.run([sys.executable, GPU_BENCH, "--size", "tiny", "--profile", "--decode-tokens", "6",
                        "--prompt-len", "5"], capture_output=True, text=True, timeout=900, cwd=tmp_path)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    for want in ("# profile: train bfloat16", "fwd attention", "bwd matmul lm_head", "adamw",
                 "# profile: decode bfloat16 B=1, fused", "dec fused norm+qkv+rope", "# profile: decode bfloat16 B=1, unfused",
                 "dec rope+store"):
        assert want in p.stdout, (want, p.stdout[-3000:])
    # the steps tests/gpu/run.sh hands to Nsight Compute
    p = subprocess.run([sys.executable, GPU_BENCH, "--size", "tiny", "--eager-decode", "2", "--prompt-len", "5"],
                       capture_output=True, text=True, timeout=900, cwd=tmp_path)
    assert p.returncode == 0 and "# eager decode: 2 steps" in p.stdout, p.stdout[-3000:] + p.stderr[-3000:]


def test_gpu_bench_module_and_script_share_one_command_line(tmp_path):
    """``python -m pyllama.bench.gpu`` is the GPU benchmark; bench/gpu.py (what tests/gpu/run.sh
    runs) only wraps it: the same options, and without a usable GPU the same clear exit 2."""
    cmds = [[sys.executable, "-m", "pyllama.bench.gpu"]]
    if os.path.isfile(GPU_BENCH):
        cmds.append([sys.executable, GPU_BENCH])
    helps = []
    for cmd in cmds:
        p = subprocess.run(cmd + ["--help"], capture_output=True, text=True, timeout=300, cwd=tmp_path)
        assert p.returncode == 0 and "--budget" in p.stdout and "--check" in p.stdout, p.stdout + p.stderr
        helps.append(sorted(set(re.findall(r"--[a-z][a-z-]*", p.stdout))))  # the options (prog names differ)
        if not pyllama.build_info()["cuda_available"]:
            p = subprocess.run(cmd + ["--size", "tiny"], capture_output=True, text=True, timeout=300, cwd=tmp_path)
            assert p.returncode == 2 and "nothing to benchmark" in p.stderr, p.stdout + p.stderr
    assert all(h == helps[0] for h in helps)
