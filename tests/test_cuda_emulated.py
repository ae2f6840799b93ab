"""The GPU tests on the CPU emulator of the GPU (tools/cuda_sim/gpu_tests.sh): pyllama built
with PYLLAMA_CUDA=SIM, so the whole CUDA backend (model_cuda.cu's buffers, streams, CUDA
graphs of the decode step, cuBLAS calls, the NCCL path, and every kernel) runs on the CPU,
with deferred streams that expose a missing synchronisation. CI runs a selection covering
each host-side path once (the full set takes about 15 minutes on 2 cores:
``tools/cuda_sim/gpu_tests.sh``); on a machine with a GPU the same tests run for real
(tests/gpu/run.sh)."""
import os
import re
import shutil
import subprocess
import sys

import pytest

# minutes on 2 cores (the CUDA code on the CPU emulator): behind the slow marker, which CI runs
# as its own step (.ci/run); the README's test command skips it
pytestmark = pytest.mark.slow

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "tools", "cuda_sim", "gpu_tests.sh")

# one test of each host-side path: forward/backward and AdamW against the CPU, bf16,
# greedy decoding through the graph / eager / general paths, beam search's cache reorder,
# failed buffer growth, the memory counter, tensor copies, the one-rank NCCL Trainer, one
# host wait per training step, bench/gpu.py end to end, cuda_check_ops, beam search and
# sampling, bf16 masters, the README's GPU example, NCCL's missing-rank deadline, the fused
# decode step's kernel count, the cuBLASLt matmuls (plans, alignments, the folded residual
# adds), bf16 training on the tensor-core flash kernels (deterministic backward); the kernel
# lab's variants are checked by tools/cuda_sim/run.sh (tests/test_cuda_sim.py)
SELECTION = " or ".join([
    "test_forward_backward_match_cpu and (tiny_gqa or rope_ or head_dim16 or biases)",
    "test_adamw_20_steps_match_torch_on_cpu",
    "test_bfloat16_loss_close_to_float32 and tiny_gqa",
    "test_bfloat16_new_forms_close_to_float32",
    "test_decode_graph_eager_general_agree_with_cpu and tiny_gqa",
    "test_kv_reorder_and_full_logits_match_cpu",
    "test_failed_buffer_growth_leaves_the_model_usable",
    "test_allocation_counter_is_sane",
    "test_round_trip_to_cpu_and_read_only_copies",
    "test_tensor_device",
    "test_nccl_allreduce_world_of_one",
    "test_trainer_one_rank_nccl_equals_plain_cuda",
    "test_train_step_waits_once_and_decode_steps_replay_graphs and float32",
    "test_gpu_bench_script_runs_end_to_end",
    "test_each_kernel_matches_its_cpu_op",
    "test_greedy_decoding_matches_cpu and (tiny_gqa or rope_ or head_dim16 or biases)",
    "test_generate_greedy_beam_and_sampling_match_cpu",
    "test_bfloat16_training_keeps_float32_masters",
    "test_readme_gpu_example_runs",
    "test_nccl_init_timeout_when_a_rank_is_missing",
    "test_fused_decode_step_launches_five_kernels_a_layer and bfloat16",
    "test_matmul_backends_match_cpu and cublaslt",
    "test_training_backward_is_deterministic and bfloat16",
])


def missing_tools():
    try:
        import pybind11  # noqa: F401
    except ImportError:
        return "pybind11 is not installed (pip install pybind11)"
    if not shutil.which("cmake"):
        return "cmake is not installed (pip install cmake)"
    gxx = shutil.which("g++")
    if not gxx:
        return "no g++"
    out = subprocess.run([gxx, "-dumpversion"], capture_output=True, text=True).stdout
    m = re.match(r"(\d+)", out.strip())
    if not m or int(m.group(1)) < 10:
        return "the CUDA emulator needs g++ >= 10"
    return None


@pytest.mark.skipif(not os.path.isfile(SCRIPT), reason="tools/cuda_sim is not in this checkout (installed package)")
@pytest.mark.skipif(missing_tools() is not None, reason=str(missing_tools()))
def test_gpu_tests_on_the_cpu_emulator(tmp_path):
    env = dict(os.environ, PYTHON=sys.executable, SIM_OUT=str(tmp_path), TMPDIR=str(tmp_path))
    r = subprocess.run(["sh", SCRIPT, "-q", "-k", SELECTION], capture_output=True, text=True, timeout=1500,
                       env=env)
    log = r.stdout + r.stderr
    assert r.returncode == 0, log[-6000:]
    summary = log.strip().splitlines()[-1]
    m = re.search(r"(\d+) passed", summary)
    assert m and int(m.group(1)) >= 40, log[-6000:]   # the selection ran (not all skipped)
    assert "failed" not in summary and "error" not in summary, log[-6000:]
