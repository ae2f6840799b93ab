"""The CUDA backend against the CPU core (and PyTorch on CUDA when it is there).

Every GPU test carries the ``cuda`` marker and skips, with the reason, where
``pyllama.build_info()["cuda_available"]`` is False. Tolerances follow DESIGN.md:
float32 within 1e-4 of the reference's scale (max |ref|); bfloat16 loss within 0.05
of float32.

Run only these: ``pytest -m cuda tests/test_cuda.py``.
"""

import numpy as np
import pytest

import pyllama
from helpers import EMULATED_GPU, gpu, tiny_config
from pyllama.optim import segment_table


def env_options():
    """The PYLLAMA_CUDA_* variables a test sets (monkeypatch.setenv), translated into
    BackendOptions as the CLI and the benchmarks translate them: the library reads none."""
    return pyllama.BackendOptions.from_env()


INFO = pyllama.build_info()

TOL = 1e-4

# Shapes that stress the kernels' edges: head sizes below, at and above a warp (12, 32,
# 64, 128: the per-lane accumulators), sequence lengths above a warp (keys strided over
# lanes), grouped and multi-query heads, a vocabulary wider than a block, tied embeddings.
CONFIGS = {
    "tiny_gqa": dict(),
    "mha_tied": dict(num_key_value_heads=4, tie_word_embeddings=True),
    "mqa_hs32": dict(vocab_size=300, hidden_size=64, intermediate_size=96, num_attention_heads=2,
                     num_key_value_heads=1),
    "wide_hs64": dict(vocab_size=1000, hidden_size=256, intermediate_size=344, num_attention_heads=4,
                      num_key_value_heads=2, num_hidden_layers=3),
    "hs128": dict(vocab_size=515, hidden_size=256, intermediate_size=200, num_attention_heads=2,
                  num_key_value_heads=2, num_hidden_layers=1, max_position_embeddings=256),
    # RoPE scaling: the tables come from the core (rope.h), yarn's attention factor scales them
    "rope_llama3": dict(rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                      "high_freq_factor": 4.0, "original_max_position_embeddings": 16}),
    "rope_yarn": dict(rope_scaling={"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 16}),
    # dynamic NTK: past max_position_embeddings (40) the tables change with the sequence
    "rope_dynamic": dict(rope_scaling={"rope_type": "dynamic", "factor": 2.0}, max_position_embeddings=40),
    # an explicit head_dim: q rows NH*HS = 64 wider than hidden_size 48
    "head_dim16": dict(head_dim=16),
    # projection biases (random, see pair): added after each matmul, their gradients column sums
    "biases": dict(attention_bias=True, mlp_bias=True),
}
SHAPES = {"tiny_gqa": (2, 37), "mha_tied": (3, 16), "mqa_hs32": (2, 70), "wide_hs64": (2, 45), "hs128": (1, 130),
          "rope_llama3": (2, 40), "rope_yarn": (2, 40), "rope_dynamic": (2, 50), "head_dim16": (2, 37),
          "biases": (2, 37)}


def make_batch(cfg, B, T, seed=0, ignore=True):
    rng = np.random.default_rng(seed)
    ids = rng.integers(0, cfg.vocab_size, size=(B, T)).astype(np.int64)
    labels = ids.copy()
    if ignore and T > 3:
        labels[0, 1] = -100  # an ignored target (position 0 predicts labels[1])
        labels[-1, T // 2] = -100
    return ids, labels


def assert_close(got, ref, tol=TOL, what=""):
    got = np.asarray(got, dtype=np.float64)
    ref = np.asarray(ref, dtype=np.float64)
    assert got.shape == ref.shape, f"{what}: shape {got.shape} != {ref.shape}"
    assert np.all(np.isfinite(got)), f"{what}: non-finite values on the GPU"
    scale = max(float(np.abs(ref).max()), 1e-30) if ref.size else 1.0
    err = float(np.abs(got - ref).max()) if ref.size else 0.0
    assert err <= tol * scale, f"{what}: max abs error {err:.3e} > {tol:g} x scale {scale:.3e}"


def check_step_matches_cpu(cpu, dev, ids, labels, what):
    """One forward + backward on both models: logits, loss and every gradient within TOL."""
    ref, out = cpu(ids, labels=labels), dev(ids, labels=labels)
    assert_close(out.logits, ref.logits, what=f"logits ({what})")
    assert abs(out.loss - ref.loss) <= TOL * max(1.0, abs(ref.loss)), (what, out.loss, ref.loss)
    cpu.backward()
    dev.backward()
    for k, g in cpu.named_grads().items():
        assert_close(dev.named_grads()[k], g, what=f"grad {k} ({what})")
    return ref, out


def check_bf16_near(cpu, ref, b16, ids, labels):
    """A bf16 model on the batch `ref` (the float32 result of `cpu`, backward done) was computed
    on: loss within 0.05, gradient direction (cosine) above 0.95."""
    out16 = b16(ids, labels=labels)
    assert abs(out16.loss - ref.loss) <= 0.05, (out16.loss, ref.loss)
    b16.backward()
    g32, g16 = cpu.flat_grads().astype(np.float64), b16.flat_grads().astype(np.float64)
    assert np.all(np.isfinite(g16))
    cos = float(g32 @ g16 / (np.linalg.norm(g32) * np.linalg.norm(g16)))
    assert cos > 0.95, f"bf16 gradient direction differs from float32: cosine {cos:.4f}"


def pair(name, seed=0):
    """A CPU model and an identical one moved to the GPU (float32). Biases, zero at init,
    get random values first, so that a dropped bias shows."""
    cfg = tiny_config(**CONFIGS[name])
    cpu = pyllama.Llama(cfg, seed=seed)
    rng = np.random.default_rng(seed + 100)
    for n, v in cpu.named_parameters().items():
        if n.endswith(".bias"):
            v[...] = rng.normal(0.0, 0.2, v.shape)
    dev = pyllama.Llama(cfg, seed=seed)
    dev.load_flat_params(cpu.flat_params())
    dev = dev.to("cuda", options=env_options())
    return cfg, cpu, dev


# ------------------------------------------------------------------ without a GPU (runs everywhere)

def test_to_cuda_without_gpu_raises_clearly():
    """No GPU (or no CUDA build): a RuntimeError that says why, never a crash."""
    if INFO["cuda_available"]:
        pytest.skip("a GPU is available: this test covers machines without one")
    m = pyllama.Llama(tiny_config(), seed=0)
    with pytest.raises(RuntimeError, match="CUDA"):
        m.to("cuda", options=env_options())
    assert m.device == "cpu"
    out = m([[1, 2, 3]], labels=[[1, 2, 3]])  # still usable on the CPU
    assert np.isfinite(out.loss)
    assert m.to("cpu") is m
    with pytest.raises(ValueError, match="unknown device"):
        m.to("tpu")


def test_failed_move_leaves_the_model_where_it_was(monkeypatch):
    """When the core cannot make the model on the new device or dtype (out of memory, say),
    to() raises and the model stays where it was, whole and usable (device and core agree).
    Runs without a GPU: the failing move is a stand-in."""
    import pyllama.model as pm

    def failing_move(core, device, dtype, options=None):
        raise RuntimeError("CUDA error: out of memory (stand-in)")

    m = pyllama.Llama(tiny_config(), seed=0)
    before = m.flat_params().copy()
    monkeypatch.setattr(pm._core, "move_model", failing_move)
    monkeypatch.setattr(pm._core, "parse_device", lambda d: ("cuda", 0) if d.startswith("cuda") else ("cpu", 0))
    with pytest.raises(RuntimeError, match="stand-in"):
        m.to("cuda", options=env_options(), dtype="bfloat16")
    assert m.device == "cpu" and m._core.device == "cpu"
    np.testing.assert_array_equal(m.flat_params(), before)
    out = m([[1, 2, 3]], labels=[[1, 2, 3]])  # usable where it was
    assert np.isfinite(out.loss)


def test_build_info_reports_cuda_build():
    info = pyllama.build_info()
    assert isinstance(info["cuda"], bool) and isinstance(info["cuda_available"], bool)
    if not info["cuda"]:
        assert not info["cuda_available"]
        assert not hasattr(pyllama._core, "LlamaModelCuda")
    else:
        assert hasattr(pyllama._core, "LlamaModelCuda")
        assert info["cuda_archs"]  # e.g. "80,90"


# ------------------------------------------------------------------ each kernel against its CPU twin

@gpu
def test_each_kernel_matches_its_cpu_op():
    """tests/cuda/ops_check.cu: every launcher vs csrc/cpu/ops.h on random inputs (localises a failure)."""
    errors = pyllama._core.cuda_check_ops(1234)
    assert len(errors) > 30
    bad = {k: v for k, v in errors.items() if not v <= TOL}
    assert not bad, f"kernels differing from the CPU (relative error): {bad}"
    # sm_80+ (what the build targets): bf16 flash attention takes the tensor-core path
    assert "flash_attention.bf16_tensor_cores_on" in errors, [k for k in errors if "tensor_cores" in k]
    assert any(k.startswith("matmul.tiled") for k in errors)  # every back end the build has


# ------------------------------------------------------------------ float32: exact against the CPU


@gpu
@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_forward_backward_match_cpu(name):
    cfg, cpu, dev = pair(name)
    B, T = SHAPES[name]
    ids, labels = make_batch(cfg, B, T)
    ref = cpu(ids, labels=labels)
    out = dev(ids, labels=labels)
    assert out.logits.dtype == np.float32 and out.logits.shape == (B, T, cfg.vocab_size)
    assert_close(out.logits, ref.logits, what="logits")
    assert abs(out.loss - ref.loss) <= TOL * max(1.0, abs(ref.loss)), (out.loss, ref.loss)
    cpu.backward()
    dev.backward()
    g_ref, g_dev = cpu.named_grads(), dev.named_grads()
    assert g_ref.keys() == g_dev.keys()
    for k in g_ref:
        assert_close(g_dev[k], g_ref[k], what=f"grad {k}")


@gpu
def test_long_sequence_flash_attention_matches_cpu():
    """T = 2048 (many query and key blocks, no T x T buffer on the GPU): logits, loss and
    every gradient against the CPU core's flash attention."""
    cfg = tiny_config(vocab_size=211, hidden_size=256, intermediate_size=128, num_attention_heads=4,
                      num_key_value_heads=2, num_hidden_layers=1, max_position_embeddings=2048)
    cpu = pyllama.Llama(cfg, seed=4)
    dev = pyllama.Llama(cfg, seed=4).to("cuda", options=env_options())
    assert dev.backend_stats()["uses_flash_attention"]
    ids, labels = make_batch(cfg, 1, 2048, seed=11)
    ref, out = check_step_matches_cpu(cpu, dev, ids, labels, "T=2048")
    # bf16 (tensor-core flash attention) on the same batch: near float32
    b16 = pyllama.Llama(cfg, seed=4).to("cuda", options=env_options(), dtype="bfloat16")
    check_bf16_near(cpu, ref, b16, ids, labels)


@gpu
def test_naive_attention_fallback_matches_cpu(monkeypatch):
    """PYLLAMA_CUDA_ATTENTION=naive: the (B, NH, T, T) kernels, kept to tell a flash bug apart."""
    monkeypatch.setenv("PYLLAMA_CUDA_ATTENTION", "naive")
    cfg, cpu, dev = pair("tiny_gqa")
    assert not dev.backend_stats()["uses_flash_attention"]
    ids, labels = make_batch(cfg, 2, 37)
    ref, out = check_step_matches_cpu(cpu, dev, ids, labels, "naive attention")
    monkeypatch.delenv("PYLLAMA_CUDA_ATTENTION")
    assert pyllama.Llama(cfg, seed=0).to("cuda", options=env_options()).backend_stats()["uses_flash_attention"]


@gpu
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_flash_attention_backward_is_deterministic(dtype):
    """No atomics in the flash backward: two backward passes give bitwise equal gradients."""
    cfg = tiny_config(**CONFIGS["wide_hs64"])
    dev = pyllama.Llama(cfg, seed=2).to("cuda", options=env_options(), dtype=dtype)
    ids, labels = make_batch(cfg, 2, 45)
    grads = []
    for _ in range(2):
        dev.zero_grad()
        dev(ids, labels=labels)
        dev.backward()
        grads.append({k: v for k, v in dev.named_grads().items() if "self_attn" in k})
    for k in grads[0]:
        assert np.array_equal(grads[0][k], grads[1][k]), k


@gpu
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_training_backward_is_deterministic(dtype):
    """The whole backward is free of float atomics: the RMSNorm weight gradients come from
    per-block partial sums added in a fixed order, and the embedding gradient sums each
    token's rows in position order (rows grouped by token on the host). So two backward
    passes give the same bits for every parameter, with tokens repeated many times and
    enough rows for many blocks."""
    cfg = tiny_config(**dict(CONFIGS["wide_hs64"], vocab_size=50, max_position_embeddings=256))
    dev = pyllama.Llama(cfg, seed=4).to("cuda", options=env_options(), dtype=dtype)
    ids, labels = make_batch(cfg, 2, 150)
    assert len(np.unique(ids)) < ids.size // 4  # repeated tokens
    grads = []
    for extra in (False, True):
        if extra:  # some other launches in between (the emulator alternates its block order)
            dev(ids[:1, :7])
        dev.zero_grad()
        dev(ids, labels=labels)
        dev.backward()
        grads.append(dev.named_grads())
    for k in grads[0]:
        assert np.array_equal(grads[0][k], grads[1][k]), k


@gpu
def test_forward_without_labels_and_logits_are_copies():
    cfg, cpu, dev = pair("tiny_gqa")
    ids, _ = make_batch(cfg, 2, 9)
    a = dev(ids)
    assert a.loss is None
    assert_close(a.logits, cpu(ids).logits, what="logits")
    b = dev(ids[:, :4])
    assert a.logits.shape == (2, 9, cfg.vocab_size) and b.logits.shape == (2, 4, cfg.vocab_size)
    with pytest.raises(RuntimeError, match="labels"):
        dev.backward()


@gpu
def test_all_labels_ignored_and_accumulation():
    cfg, cpu, dev = pair("tiny_gqa")
    ids, labels = make_batch(cfg, 2, 8)
    none = np.full_like(labels, -100)
    out = dev(ids, labels=none)
    assert np.isnan(out.loss) and np.isnan(cpu(ids, labels=none).loss)
    dev.backward()  # no counted target: gradients stay zero
    assert all(not np.any(g) for g in dev.named_grads().values())
    # two backward passes add up, scale applies, zero_grad clears
    for m in (cpu, dev):
        m(ids, labels=labels)
        m.backward(0.5)
        m(ids, labels=labels)
        m.backward(1.5)
    for k, g in cpu.named_grads().items():
        assert_close(dev.named_grads()[k], g, what=f"accumulated grad {k}")
    dev.zero_grad()
    assert all(not np.any(g) for g in dev.named_grads().values())


@gpu
def test_batch_growth_and_shrink_reuse_buffers():
    cfg, cpu, dev = pair("mqa_hs32")
    for B, T in [(1, 5), (3, 33), (2, 7), (4, 64)]:
        ids, labels = make_batch(cfg, B, T, seed=B * 100 + T)
        ref, out = cpu(ids, labels=labels), dev(ids, labels=labels)
        assert_close(out.logits, ref.logits, what=f"logits B={B} T={T}")
        assert abs(out.loss - ref.loss) <= TOL * max(1.0, abs(ref.loss))


@gpu
def test_tiled_matmul_fallback_matches_cpu(monkeypatch):
    """The portable tiled GEMM (used when cuBLAS is not found at build time)."""
    monkeypatch.setenv("PYLLAMA_CUDA_MATMUL", "tiled")
    cfg = tiny_config(**CONFIGS["wide_hs64"])
    cpu = pyllama.Llama(cfg, seed=3)
    dev = pyllama.Llama(cfg, seed=3).to("cuda", options=env_options())
    assert not dev.backend_stats()["uses_cublas"] and dev.backend_stats()["matmul_backend"] == "tiled"
    ids, labels = make_batch(cfg, 2, 45)
    ref, out = check_step_matches_cpu(cpu, dev, ids, labels, "tiled")


@gpu
@pytest.mark.parametrize("backend", ["cublaslt", "cublas"])
def test_matmul_backends_match_cpu(monkeypatch, backend):
    """cuBLASLt (the default: a plan per shape; the residual adds folded into the output and
    down projections as D = x W^T + R) and cublasGemmEx (R copied into D, then beta 1): a
    float32 training step and KV-cache decoding against the CPU, a bf16 step near float32,
    on sizes that leave the weights and activations only 4- or 8-byte aligned; cuBLASLt
    refuses none of the model's products (the alignments it is promised hold)."""
    monkeypatch.delenv("PYLLAMA_CUDA_MATMUL", raising=False)
    cfg = tiny_config(vocab_size=101, hidden_size=36, intermediate_size=50, num_attention_heads=3,
                      num_key_value_heads=1, num_hidden_layers=2)
    if not pyllama.Llama(cfg).to("cuda", options=env_options()).backend_stats()["uses_cublas"]:
        pytest.skip("this build has no cuBLAS (test_tiled_matmul_fallback_matches_cpu covers the tiled GEMM)")
    monkeypatch.setenv("PYLLAMA_CUDA_MATMUL", backend)
    cpu = pyllama.Llama(cfg, seed=8)
    dev = pyllama.Llama(cfg, seed=8).to("cuda", options=env_options())
    ids, labels = make_batch(cfg, 3, 29)
    ref, _ = check_step_matches_cpu(cpu, dev, ids, labels, backend)
    check_bf16_near(cpu, ref, pyllama.Llama(cfg, seed=8).to("cuda", options=env_options(), dtype="bfloat16"), ids, labels)
    prompts = [[5, 9, 2, 77, 3], [40] * 11]
    ref_tokens, ref_logits = _greedy(cpu, prompts, 6)
    tokens, logits = _greedy(dev, prompts, 6)  # the prefill adds in place (x += x_attn W^T)
    assert tokens == ref_tokens
    for i, (a, b) in enumerate(zip(logits, ref_logits)):
        assert_close(a, b, what=f"{backend} decode step {i}")
    st = dev.backend_stats()["matmul_stats"]
    assert st["backend"] == dev.backend_stats()["matmul_backend"] == backend
    if backend == "cublaslt":
        assert st["lt_plans"] > 0 and st["lt_fallbacks"] == 0, st
    else:
        assert st["lt_plans"] == 0, st


@gpu
def test_unknown_matmul_backend_raises(monkeypatch):
    monkeypatch.setenv("PYLLAMA_CUDA_MATMUL", "cutlass")
    with pytest.raises(ValueError, match="cublaslt, cublas or tiled"):
        pyllama.Llama(tiny_config()).to("cuda", options=env_options())


@gpu
def test_against_pytorch_cuda():
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("torch has no CUDA here (CPU-only build of torch)")
    from helpers import hf_model_from

    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    cfg = tiny_config(**CONFIGS["wide_hs64"])
    model = pyllama.Llama(cfg, seed=5)
    hf = hf_model_from(model).cuda()
    model.to("cuda", options=env_options())
    ids, labels = make_batch(cfg, 2, 45)
    out = model(ids, labels=labels)
    model.backward()
    t_ids = torch.from_numpy(ids).cuda()
    t_lab = torch.from_numpy(labels).cuda()
    ref = hf(input_ids=t_ids, labels=t_lab)
    ref.loss.backward()
    assert_close(out.logits, ref.logits.detach().cpu().numpy(), what="logits vs torch")
    assert abs(out.loss - ref.loss.item()) <= TOL * max(1.0, abs(ref.loss.item()))
    grads = model.named_grads()
    for name, p in hf.named_parameters():
        if name == "lm_head.weight" and cfg.tie_word_embeddings:
            continue
        assert_close(grads[name], p.grad.detach().cpu().numpy(), what=f"grad {name} vs torch")


# ------------------------------------------------------------------ optimizer

@gpu
def test_grad_norm_and_clip_match_numpy():
    cfg, cpu, dev = pair("tiny_gqa")
    ids, labels = make_batch(cfg, 2, 12)
    dev(ids, labels=labels)
    dev.backward()
    g = dev.flat_grads().astype(np.float64)
    norm = float(np.sqrt((g * g).sum()))
    assert abs(pyllama.optim.grad_norm(dev) - norm) <= 1e-9 * max(norm, 1.0)
    got = pyllama.clip_grad_norm(dev, norm / 4)
    assert abs(got - norm) <= 1e-9 * max(norm, 1.0)
    coef = np.float32((norm / 4) / (norm + 1e-6))
    assert_close(dev.flat_grads(), (g.astype(np.float32) * coef), tol=1e-6, what="clipped grads")
    before = dev.flat_grads().copy()
    pyllama.clip_grad_norm(dev, 1e9)  # no-op above the norm
    np.testing.assert_array_equal(dev.flat_grads(), before)
    with pytest.raises(ValueError, match="max_norm"):
        pyllama.clip_grad_norm(dev, 0.0)


@gpu
def test_adamw_20_steps_match_torch_on_cpu():
    """GPU: forward, backward, clip, AdamW. Reference: the CPU core for forward/backward,
    torch.nn.utils.clip_grad_norm_ and torch.optim.AdamW (two groups: 2-D weights decay)
    updating the CPU model's own buffers in place."""
    torch = pytest.importorskip("torch")
    cfg, cpu, dev = pair("tiny_gqa", seed=7)
    lr, betas, eps, wd, clip = 3e-3, (0.9, 0.95), 1e-8, 0.1, 1.0
    params = {k: torch.from_numpy(v) for k, v in cpu.named_parameters().items()}  # views of the core buffers
    grads = {k: torch.from_numpy(v) for k, v in cpu.named_grads().items()}
    for k, p in params.items():
        p.grad = grads[k]
    decay = [p for k, p in params.items() if p.ndim >= 2]
    no_decay = [p for k, p in params.items() if p.ndim < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": wd}, {"params": no_decay, "weight_decay": 0.0}],
                            lr=lr, betas=betas, eps=eps, foreach=False)
    dev_opt = pyllama.AdamW(dev, lr=lr, betas=betas, eps=eps, weight_decay=wd)  # decays 2-D weights, as above
    batches = np.random.default_rng(0).integers(0, cfg.vocab_size, size=(2, 2, 16))
    losses_ref, losses_dev = [], []
    for step in range(20):
        ids = batches[step % 2]
        cpu.zero_grad()
        losses_ref.append(cpu(ids, labels=ids, return_logits=False).loss)
        cpu.backward()
        n_ref = float(torch.nn.utils.clip_grad_norm_(list(params.values()), clip))
        opt.step()

        dev.zero_grad()
        losses_dev.append(dev(ids, labels=ids, return_logits=False).loss)
        dev.backward()
        n_dev = pyllama.clip_grad_norm(dev, clip)
        dev_opt.step()
        assert abs(n_dev - n_ref) <= TOL * max(1.0, n_ref), (step, n_dev, n_ref)
    np.testing.assert_allclose(losses_dev, losses_ref, rtol=0, atol=TOL)
    assert losses_dev[-2] < losses_dev[0] and losses_dev[-1] < losses_dev[1]


@gpu
def test_adamw_moments_roundtrip_and_bad_segments():
    cfg, cpu, dev = pair("tiny_gqa")
    n = dev.num_parameters()
    g = dev._core
    m, v = g.moments()
    assert m.shape == v.shape == (n,)
    assert not m.any() and not v.any()
    rng = np.random.default_rng(1)
    m0 = rng.standard_normal(n).astype(np.float32)
    v0 = rng.random(n).astype(np.float32)
    g.set_moments(m0, v0)
    m, v = g.moments()
    np.testing.assert_array_equal(m, m0)
    np.testing.assert_array_equal(v, v0)
    segs = segment_table(dev)
    with pytest.raises(ValueError, match="segments cover"):
        g.adamw_step(segs[:-1], 1e-3, 0.9, 0.95, 1e-8, 0.1, 1)
    with pytest.raises(ValueError, match="step"):
        g.adamw_step(segs, 1e-3, 0.9, 0.95, 1e-8, 0.1, 0)


@gpu
def test_round_trip_to_cpu_and_read_only_copies():
    cfg, cpu, dev = pair("tiny_gqa")
    ids, labels = make_batch(cfg, 2, 10)
    dev(ids, labels=labels)
    dev.backward()
    pyllama.AdamW(dev, lr=1e-2, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.1).step()
    p = dev.named_parameters()
    with pytest.raises(ValueError):
        p["model.norm.weight"][0] = 3.0  # read-only: writes would not reach the GPU
    assert not dev.flat_params().flags.writeable
    on_gpu = dev.flat_params().copy()
    grads = dev.flat_grads().copy()
    loss_gpu = dev(ids, labels=labels).loss
    dev.to("cpu")
    assert dev.device == "cpu"
    np.testing.assert_array_equal(dev.flat_params(), on_gpu)
    np.testing.assert_array_equal(dev.flat_grads(), grads)
    assert abs(dev(ids, labels=labels).loss - loss_gpu) <= TOL * max(1.0, abs(loss_gpu))


@gpu
def test_save_pretrained_from_gpu(tmp_path):
    cfg, cpu, dev = pair("tiny_gqa")
    ids, labels = make_batch(cfg, 1, 6)
    dev(ids, labels=labels)
    dev.backward()
    pyllama.AdamW(dev, lr=1e-2, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.1).step()
    dev.save_pretrained(tmp_path / "m")
    back = pyllama.Llama.from_pretrained(tmp_path / "m")
    for k, v in dev.named_parameters().items():
        np.testing.assert_array_equal(back.named_parameters()[k], v)


@gpu
def test_bad_input_raises_value_error():
    cfg, cpu, dev = pair("tiny_gqa")
    with pytest.raises(ValueError, match="out of range"):
        dev([[0, cfg.vocab_size]])
    with pytest.raises(ValueError, match="label"):
        dev([[0, 1]], labels=[[0, cfg.vocab_size + 5]])
    with pytest.raises(ValueError, match="max_position_embeddings"):
        dev(np.zeros((1, cfg.max_position_embeddings + 1), np.int64))
    with pytest.raises(ValueError, match="dtype"):
        dev.to("cuda", options=env_options(), dtype="float16")
    out = dev([[1, 2, 3]], labels=[[1, 2, 3]])  # still works after the errors
    assert np.isfinite(out.loss)


# ------------------------------------------------------------------ bfloat16

@gpu
@pytest.mark.parametrize("name", ["biases", "head_dim16", "rope_llama3"])
def test_bfloat16_new_forms_close_to_float32(name):
    """bfloat16 with biases (added in the compute dtype), an explicit head_dim, scaled RoPE."""
    cfg, cpu, _ = pair(name, seed=4)
    b16 = pyllama.Llama(cfg, seed=4)
    b16.load_flat_params(cpu.flat_params())
    b16 = b16.to("cuda", options=env_options(), dtype="bfloat16")
    B, T = SHAPES[name]
    ids, labels = make_batch(cfg, B, T)
    ref = cpu(ids, labels=labels)
    cpu.backward()
    check_bf16_near(cpu, ref, b16, ids, labels)
    if name == "biases":  # the bias gradients themselves, not only the whole direction
        for n, g in cpu.named_grads().items():
            if n.endswith(".bias"):
                g16 = b16.named_grads()[n].astype(np.float64)
                cos = float(g @ g16 / (np.linalg.norm(g) * np.linalg.norm(g16)))
                assert cos > 0.95, (n, cos)


@gpu
@pytest.mark.parametrize("name", ["tiny_gqa", "wide_hs64", "mha_tied"])
def test_bfloat16_loss_close_to_float32(name):
    cfg = tiny_config(**CONFIGS[name])
    f32 = pyllama.Llama(cfg, seed=2).to("cuda", options=env_options())
    b16 = pyllama.Llama(cfg, seed=2).to("cuda", options=env_options(), dtype="bfloat16")
    assert b16.backend_stats()["dtype"] == "bfloat16"
    B, T = SHAPES[name]
    ids, labels = make_batch(cfg, B, T)
    l32 = f32(ids, labels=labels).loss
    out = b16(ids, labels=labels)
    assert np.all(np.isfinite(out.logits))
    assert abs(out.loss - l32) <= 0.05, (out.loss, l32)
    f32.backward()
    b16.backward()
    g32, g16 = f32.flat_grads().astype(np.float64), b16.flat_grads().astype(np.float64)
    assert np.all(np.isfinite(g16))
    cos = float(g32 @ g16 / (np.linalg.norm(g32) * np.linalg.norm(g16)))
    assert cos > 0.95, f"bf16 gradient direction differs from float32: cosine {cos:.4f}"


@gpu
@pytest.mark.parametrize("name", ["wide_hs64", "hs128"])
def test_bfloat16_flash_tensor_cores_and_simt_agree(name, monkeypatch):
    """bf16 flash attention on tensor cores (the default, head size <= 128) and without
    (PYLLAMA_CUDA_ATTENTION=simt): both near float32, and near each other."""
    cfg = tiny_config(**CONFIGS[name])
    B, T = SHAPES[name]
    ids, labels = make_batch(cfg, B, T)
    f32 = pyllama.Llama(cfg, seed=6).to("cuda", options=env_options())
    l32 = f32(ids, labels=labels).loss
    f32.backward()
    g32 = f32.flat_grads().astype(np.float64)
    grads = {}
    for mode in ("tc", "simt"):
        if mode == "simt":
            monkeypatch.setenv("PYLLAMA_CUDA_ATTENTION", "simt")
        m = pyllama.Llama(cfg, seed=6).to("cuda", options=env_options(), dtype="bfloat16")
        assert m.backend_stats()["uses_flash_attention"]
        assert m.backend_stats()["attention_kernels"] == ("flash" if mode == "tc" else "flash-simt")
        out = m(ids, labels=labels)
        assert abs(out.loss - l32) <= 0.05, (mode, out.loss, l32)
        m.backward()
        grads[mode] = m.flat_grads().astype(np.float64)
        assert np.all(np.isfinite(grads[mode])), mode
    cos = lambda a, b: float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))
    assert cos(grads["tc"], g32) > 0.95 and cos(grads["simt"], g32) > 0.95
    assert cos(grads["tc"], grads["simt"]) > 0.98


@gpu
def test_bfloat16_training_keeps_float32_masters():
    cfg = tiny_config()
    m = pyllama.Llama(cfg, seed=4).to("cuda", options=env_options(), dtype="bfloat16")
    opt = pyllama.AdamW(m, lr=1e-2, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.1)
    ids = np.random.default_rng(0).integers(0, cfg.vocab_size, size=(2, 16))
    losses = []
    for step in range(15):
        m.zero_grad()
        losses.append(m(ids, labels=ids, return_logits=False).loss)
        m.backward()
        pyllama.clip_grad_norm(m, 1.0)
        opt.step()
    assert losses[-1] < losses[0] - 0.5, losses
    p = m.flat_params()
    assert p.dtype == np.float32
    # master weights are not rounded to bf16: the low 16 bits are in use
    assert np.any(p.view(np.uint32) & 0xFFFF)
    # float32 <-> bfloat16 switches go through the float32 masters
    m.to("cuda", options=env_options(), dtype="float32")
    np.testing.assert_array_equal(m.flat_params(), p)


# ------------------------------------------------------------------ KV cache and greedy decoding

def _greedy(model, prompts, n_new, reorder=None):
    """Greedy decoding over the model's KV-cache steps, ragged prompts in their own slots."""
    B = len(prompts)
    max_len = max(len(p) for p in prompts) + n_new + 1
    model._kv_reset(B, max_len)
    out = [[] for _ in prompts]
    last = []
    for b, p in enumerate(prompts):  # prefill each prompt at its own length
        logits = model._kv_forward(np.array([p], np.int32), np.array([b], np.int32), np.array([0], np.int32))
        last.append(int(np.argmax(logits[0])))
    pos = np.array([len(p) for p in prompts], np.int32)
    all_logits = []
    for step in range(n_new):
        for b in range(B):
            out[b].append(last[b])
        if reorder is not None and step == n_new // 2:
            model._kv_reorder(np.array(reorder, np.int32))  # slot i now holds old slot reorder[i]
            out = [list(out[reorder[i]]) for i in range(B)]
            last = [last[reorder[i]] for i in range(B)]
            pos = pos[np.array(reorder)]
        logits = model._kv_forward(np.array(last, np.int32)[:, None], np.arange(B, dtype=np.int32), pos)
        all_logits.append(np.array(logits))
        last = [int(x) for x in np.argmax(logits, axis=-1)]
        pos = pos + 1
    return out, all_logits


@gpu
@pytest.mark.parametrize("name", ["tiny_gqa", "mqa_hs32", "hs128", "rope_llama3", "rope_yarn", "rope_dynamic",
                                  "head_dim16", "biases"])
def test_greedy_decoding_matches_cpu(name):
    cfg, cpu, dev = pair(name, seed=11)
    rng = np.random.default_rng(3)
    prompts = [rng.integers(0, cfg.vocab_size, size=n).tolist() for n in (5, 40, 1)]
    ref_tokens, ref_logits = _greedy(cpu, prompts, 24)
    got_tokens, got_logits = _greedy(dev, prompts, 24)
    for a, b in zip(got_logits, ref_logits):
        assert_close(a, b, what="kv logits")
    assert got_tokens == ref_tokens


@gpu
def test_kv_reorder_and_full_logits_match_cpu():
    cfg, cpu, dev = pair("tiny_gqa", seed=12)
    prompts = [[1, 2, 3, 4], [9, 8, 7], [5]]
    ref, ref_logits = _greedy(cpu, prompts, 12, reorder=[2, 2, 0])
    got, got_logits = _greedy(dev, prompts, 12, reorder=[2, 2, 0])
    for a, b in zip(got_logits, ref_logits):
        assert_close(a, b, what="kv logits after reorder")
    assert got == ref
    # prefill with every position's logits (last_only=False) equals the training forward
    ids = np.array([[3, 1, 4, 1, 5, 9, 2, 6]], np.int32)
    for m in (cpu, dev):
        m._kv_reset(1, 16)
    full = dev._kv_forward(ids, np.array([0], np.int32), np.array([0], np.int32), last_only=False)
    assert full.shape == (1, 8, cfg.vocab_size)
    assert_close(full, cpu._kv_forward(ids, np.array([0], np.int32), np.array([0], np.int32), last_only=False),
                 what="kv prefill logits")
    assert_close(full, dev(ids).logits, what="kv prefill vs training forward")
    with pytest.raises(ValueError, match="slot"):
        dev._kv_forward(ids[:, :1], np.array([5], np.int32), np.array([0], np.int32))
    with pytest.raises(ValueError, match="fit the cache"):
        dev._kv_forward(ids, np.array([0], np.int32), np.array([10], np.int32))


@gpu
def test_greedy_bfloat16_runs():
    cfg = tiny_config()
    m = pyllama.Llama(cfg, seed=1).to("cuda", options=env_options(), dtype="bfloat16")
    tokens, logits = _greedy(m, [[1, 2, 3], [4, 5]], 8)
    assert all(len(t) == 8 for t in tokens)
    assert all(np.all(np.isfinite(x)) for x in logits)


@gpu
def test_generate_greedy_beam_and_sampling_match_cpu():
    """The generation driver (pyllama.generation) over the GPU's KV-cache steps."""
    if not hasattr(pyllama.Llama, "generate"):
        pytest.skip("model.generate is not in this build")
    cfg, cpu, dev = pair("tiny_gqa", seed=13)
    prompts = [[1, 2, 3], [4, 5, 6, 7, 8], [9]]
    for kw in (dict(max_new_tokens=16, do_sample=False, eos_token_id=[]),
               dict(max_new_tokens=10, do_sample=True, top_k=20, seed=5, eos_token_id=[])):
        assert [list(x) for x in dev.generate(prompts, **kw)] == [list(x) for x in cpu.generate(prompts, **kw)], kw
    # beam search: the best beam of each prompt (lower-ranked beams may swap on float rounding ties)
    kw = dict(max_new_tokens=10, num_beams=3, num_return_sequences=2, do_sample=False, eos_token_id=[])
    best = lambda out: [list(x) for x in list(out)[::2]]  # prompt-major, best first
    assert best(dev.generate(prompts, **kw)) == best(cpu.generate(prompts, **kw))


# ------------------------------------------------------------------ the T = 1 decode fast path

DECODE_MODES = {  # (fast_path, cuda_graphs, skinny_gemv, fused)
    "general": (False, False, False, False),     # the general kv_forward path (as before the fast path)
    "eager": (True, False, True, True),          # fixed buffers + split attention, launched one by one
    "graphs_cublas": (True, True, False, False),  # replayed from a CUDA graph, every matmul through cuBLAS
    "graphs_unfused": (True, True, True, False),  # 128-bit-load matmuls, norm/RoPE/SwiGLU kernels apart
    "graphs": (True, True, True, True),          # the default: graphs, fused kernels for <= 4 rows
}


def _set_mode(model, mode):
    fast, graphs, gemv, fused = DECODE_MODES[mode]
    model._core.set_decode_options(fast_path=fast, cuda_graphs=graphs, skinny_gemv=gemv, fused=fused)


@gpu
@pytest.mark.parametrize("name", ["tiny_gqa", "mha_tied", "mqa_hs32", "hs128"])
def test_decode_graph_eager_general_agree_with_cpu(name):
    """Graph replay, eager fast path and general path: the CPU's logits (float32) and tokens,
    over ~90 steps of ragged sequences, with a kv_reorder."""
    cfg, cpu, dev = pair(name, seed=21)
    rng = np.random.default_rng(4)
    n_new = min(90, cfg.max_position_embeddings - 45)
    prompts = [rng.integers(0, cfg.vocab_size, size=n).tolist() for n in (3, 40, 1)]
    ref_tokens, ref_logits = _greedy(cpu, prompts, n_new, reorder=[1, 1, 0])
    got = {}
    for mode in DECODE_MODES:
        _set_mode(dev, mode)
        tokens, logits = _greedy(dev, prompts, n_new, reorder=[1, 1, 0])
        for i, (a, b) in enumerate(zip(logits, ref_logits)):
            assert_close(a, b, what=f"{mode} step {i}")
        assert tokens == ref_tokens, mode
        got[mode] = logits
        st = dev.backend_stats()["decode_stats"]
        assert st["graph_error"] == "", st
        if mode.startswith("graphs"):
            assert st["cuda_graphs"] and st["captures"] >= 1 and st["replays"] >= n_new - 2, st
        if mode == "eager":
            assert st["eager_steps"] >= n_new and st["replays"] == 0, st
    for a, b in zip(got["graphs"], got["eager"]):  # the same kernels: equal up to rounding noise
        assert_close(a, b, tol=1e-5, what="graphs vs eager")


@gpu
@pytest.mark.parametrize("name", ["tiny_gqa", "mqa_hs32"])
def test_decode_long_cache_split_attention(name):
    """A cache long enough for many attention splits (at least 32 keys each): splits that
    hold keys, splits past the sequence's end, and the merge in the last block, against the
    CPU."""
    cfg = tiny_config(**dict(CONFIGS[name], max_position_embeddings=1024))
    cpu = pyllama.Llama(cfg, seed=31)
    dev = pyllama.Llama(cfg, seed=31).to("cuda", options=env_options())
    rng = np.random.default_rng(8)
    prompts = [rng.integers(0, cfg.vocab_size, size=n).tolist() for n in (600, 7)]
    ref_tokens, ref_logits = _greedy(cpu, prompts, 40)  # cache length 641: up to 21 splits
    for mode in ("graphs", "eager", "graphs_cublas", "graphs_unfused"):
        _set_mode(dev, mode)
        tokens, logits = _greedy(dev, prompts, 40)
        for i, (a, b) in enumerate(zip(logits, ref_logits)):
            assert_close(a, b, what=f"{mode} step {i}")
        assert tokens == ref_tokens, mode


@gpu
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_greedy_on_device_equals_host_argmax(dtype):
    cfg = tiny_config(**CONFIGS["wide_hs64"])
    m = pyllama.Llama(cfg, seed=5).to("cuda", options=env_options(), dtype=dtype)
    g = m._core
    B = 4
    m._kv_reset(B, 100)
    rng = np.random.default_rng(6)
    prompt = rng.integers(0, cfg.vocab_size, size=(B, 7)).astype(np.int32)
    slots = np.arange(B, dtype=np.int32)
    zeros = np.zeros(B, np.int32)
    # T > 1 (general path, host argmax) equals argmax of the logits; re-running a step rewrites the same cache rows
    toks = m._kv_forward_greedy(prompt, slots, zeros)
    np.testing.assert_array_equal(toks, m._kv_forward(prompt, slots, zeros).argmax(-1))
    pos = np.full(B, 7, np.int32)
    for _ in range(30):
        step = toks.astype(np.int32)[:, None]
        logits = m._kv_forward(step, slots, pos)
        dev_toks = m._kv_forward_greedy(step, slots, pos)
        assert dev_toks.dtype == np.int32 and dev_toks.shape == (B,)
        np.testing.assert_array_equal(dev_toks, logits.argmax(-1))
        toks, pos = dev_toks, pos + 1
    assert g.decode_stats()["replays"] > 0


@gpu
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_greedy_chain_equals_single_steps(dtype):
    """kv_greedy_chain (n steps fed on the device) gives the tokens of n kv_forward_greedy
    calls fed on the host, on the fused path (B <= 4), the unfused one (B = 6) and the
    general path; the cache it leaves lets single steps go on; bad n or a chain past the
    cache's end raise ValueError."""
    cfg = tiny_config(**CONFIGS["tiny_gqa"])
    m = pyllama.Llama(cfg, seed=9).to("cuda", options=env_options(), dtype=dtype)
    g = m._core
    n_max = m.backend_stats()["greedy_chain_max"]
    assert n_max >= 8
    rng = np.random.default_rng(3)
    for B, fast in ((1, True), (3, True), (6, True), (2, False)):
        g.set_decode_options(fast_path=fast)
        prompt = rng.integers(0, cfg.vocab_size, size=(B, 5)).astype(np.int32)
        slots = np.arange(B, dtype=np.int32)[::-1].copy()
        pos = np.full(B, 5, np.int32)
        results = []
        for chained in (False, True):
            m._kv_reset(B, 40)
            first = m._kv_forward_greedy(prompt, slots, np.zeros(B, np.int32))
            toks = []
            if chained:
                toks = list(m._kv_greedy_chain(first[:, None], slots, pos, 9))
                t, p = toks[-1], pos + 9
            else:
                t, p = first, pos
                for _ in range(9):
                    t = m._kv_forward_greedy(t[:, None], slots, p)
                    toks.append(t)
                    p = p + 1
            for _ in range(3):  # single steps go on from the chain's cache
                t = m._kv_forward_greedy(t[:, None], slots, p)
                toks.append(t)
                p = p + 1
            results.append(np.stack(toks))
        np.testing.assert_array_equal(results[1], results[0], err_msg=f"B={B} fast_path={fast}")
        assert results[1].shape == (12, B)
    g.set_decode_options(fast_path=True)
    m._kv_reset(2, 20)
    one = np.zeros((2, 1), np.int32)
    sl = np.arange(2, dtype=np.int32)
    for n, start, what in ((0, 3, "n"), (n_max + 1, 3, "n"), (5, 16, "cache length")):
        with pytest.raises(ValueError, match=what):
            m._kv_greedy_chain(one, sl, np.full(2, start, np.int32), n)
    with pytest.raises(ValueError, match=r"\(B, 1\)"):
        m._kv_greedy_chain(np.zeros((2, 2), np.int32), sl, np.zeros(2, np.int32), 2)


@gpu
def test_greedy_chain_longer_than_the_vocabulary():
    """A chain's tokens (n * B int32) can outnumber the (B, V) logits the pinned output
    buffer holds for a single step when the vocabulary is small: the longest chain over a
    16-token vocabulary equals single steps."""
    cfg = tiny_config(vocab_size=16)
    m = pyllama.Llama(cfg, seed=4).to("cuda", options=env_options())
    n = m.backend_stats()["greedy_chain_max"]
    B = 2
    slots = np.arange(B, dtype=np.int32)
    first = np.array([[3], [5]], np.int32)
    m._kv_reset(B, n + 2)
    chain = m._kv_greedy_chain(first, slots, np.zeros(B, np.int32), n)
    m._kv_reset(B, n + 2)
    t, steps = first[:, 0], []
    for i in range(n):
        t = m._kv_forward_greedy(t[:, None].astype(np.int32), slots, np.full(B, i, np.int32))
        steps.append(t)
    np.testing.assert_array_equal(chain, np.stack(steps))


@gpu
def test_generate_greedy_chains_stop_like_the_cpu(monkeypatch):
    """generate() asks for greedy chains on a cuda model; an eos met inside a chain ends that
    sequence there (later tokens of the chain dropped) while the others go on: the CPU's
    tokens and stop reasons, with and without chains (PYLLAMA_CUDA_GREEDY_CHAIN=0)."""
    cfg, cpu, dev = pair("tiny_gqa", seed=17)
    prompts = [[1, 2, 3], [4, 5, 6, 7, 8], [9], [10, 11]]
    free = [list(x) for x in cpu.generate(prompts, max_new_tokens=30, do_sample=False, eos_token_id=[])]
    eos = free[1][4]  # the second sequence's 5th token: it stops inside the first chain
    kw = dict(max_new_tokens=30, do_sample=False, eos_token_id=[eos])
    ref = cpu.generate(prompts, **kw)
    assert any(r == "eos" for r in ref.stop_reasons)
    for chain in ("1", "0"):
        monkeypatch.setenv("PYLLAMA_CUDA_GREEDY_CHAIN", chain)
        dev.options = env_options()  # generation reads options.greedy_chain at each call
        assert (dev._kv_greedy_chain_max() > 0) == (chain == "1")
        got = dev.generate(prompts, **kw)
        assert [list(x) for x in got] == [list(x) for x in ref], chain
        assert got.stop_reasons == ref.stop_reasons, chain


@gpu
def test_device_argmax_ties_take_the_first_index():
    """All-zero output head: every logit is 0, numpy's argmax is 0 (the first index)."""
    cfg = tiny_config(vocab_size=5000)
    m = pyllama.Llama(cfg, seed=2)
    m.named_parameters()["lm_head.weight"][...] = 0.0
    m.to("cuda", options=env_options())
    m._kv_reset(3, 20)
    z = np.zeros(3, np.int32)
    for pos in range(4):
        toks = m._kv_forward_greedy(np.array([[7], [8], [9]], np.int32), np.arange(3, dtype=np.int32), z + pos)
        np.testing.assert_array_equal(toks, [0, 0, 0])


@gpu
def test_generate_plain_greedy_uses_device_argmax():
    cfg, cpu, dev = pair("tiny_gqa", seed=14)
    prompts = [[1, 2, 3], [4, 5, 6, 7, 8], [9]]
    g = dev._core
    before = g.decode_stats()
    kw = dict(max_new_tokens=20, do_sample=False, eos_token_id=[])
    assert [list(x) for x in dev.generate(prompts, **kw)] == [list(x) for x in cpu.generate(prompts, **kw)]
    after = g.decode_stats()
    assert after["replays"] + after["eager_steps"] > before["replays"] + before["eager_steps"]
    # processors that change the logits take the logits path, still equal to the CPU
    for extra in (dict(repetition_penalty=1.3), dict(min_new_tokens=5, eos_token_id=[3, 4]),
                  dict(no_repeat_ngram_size=2)):
        kw2 = dict(kw, **extra)
        assert [list(x) for x in dev.generate(prompts, **kw2)] == [list(x) for x in cpu.generate(prompts, **kw2)], extra


@gpu
def test_decode_env_switches(monkeypatch):
    monkeypatch.setenv("PYLLAMA_CUDA_GRAPHS", "0")
    cfg = tiny_config()
    m = pyllama.Llama(cfg, seed=1).to("cuda", options=env_options())
    st = m.backend_stats()["decode_stats"]
    assert st["fast_path"] and not st["cuda_graphs"]
    _greedy(m, [[1, 2, 3]], 6)
    st = m.backend_stats()["decode_stats"]
    assert st["replays"] == 0 and st["captures"] == 0 and st["eager_steps"] >= 5
    monkeypatch.setenv("PYLLAMA_CUDA_DECODE", "0")
    m2 = pyllama.Llama(cfg, seed=1).to("cuda", options=env_options())
    _greedy(m2, [[1, 2, 3]], 6)
    st2 = m2.backend_stats()["decode_stats"]
    assert not st2["fast_path"] and st2["eager_steps"] == 0 and st2["general_steps"] >= 6
    monkeypatch.delenv("PYLLAMA_CUDA_DECODE")
    monkeypatch.setenv("PYLLAMA_CUDA_DECODE_FUSED", "0")
    monkeypatch.setenv("PYLLAMA_CUDA_PDL", "off")
    m3 = pyllama.Llama(cfg, seed=1).to("cuda", options=env_options())
    st3 = m3.backend_stats()["decode_stats"]
    assert st3["fast_path"] and not st3["fused"] and not st3["pdl"], st3
    assert _greedy(m3, [[1, 2, 3]], 6)[0] == _greedy(m, [[1, 2, 3]], 6)[0]


@gpu
def test_failed_buffer_growth_leaves_the_model_usable():
    """An allocation that fails while forward() or kv_reset() regrows a buffer (far more than
    the GPU holds) raises, and leaves no stale forward or cache shape over released buffers:
    backward()/kv_forward() then refuse with ValueError instead of running kernels on null
    pointers (an illegal address would end the CUDA context), and small steps still match."""
    cfg = tiny_config(vocab_size=100_000)
    cpu = pyllama.Llama(cfg, seed=0)
    dev = pyllama.Llama(cfg, seed=0).to("cuda", options=env_options())
    ids, labels = make_batch(cfg, 2, 16)
    dev(ids, labels=labels)
    big = np.zeros((8192, 128), np.int64)  # logits alone: 8192 * 128 * 100000 * 4 bytes = 420 GB
    with pytest.raises(RuntimeError, match="CUDA"):
        dev(big, labels=big)
    with pytest.raises(ValueError):
        dev._core.backward(1.0)
    with pytest.raises(ValueError):
        dev._core.logits()
    check_step_matches_cpu(cpu, dev, ids, labels, "after a failed regrowth")

    dev._kv_reset(2, 32)
    with pytest.raises(RuntimeError, match="CUDA"):
        dev._kv_reset(20_000_000, 128)  # 2 * 20e6 * 2 * 128 * 12 * 4 bytes per cache = 491 GB
    with pytest.raises(ValueError, match="kv_reset"):
        dev._kv_forward(np.array([[1]], np.int32), np.array([0], np.int32), np.array([0], np.int32))
    prompts = [[1, 2, 3], [4, 5]]
    assert _greedy(dev, prompts, 4)[0] == _greedy(cpu, prompts, 4)[0]


@gpu
def test_allocation_counter_is_sane():
    import gc

    core = pyllama._core
    cfg = tiny_config(**CONFIGS["wide_hs64"])
    gc.collect()  # models of earlier tests go now, not between the readings below
    base = core.cuda_memory_stats()["bytes_allocated"]
    m = pyllama.Llama(cfg, seed=0).to("cuda", options=env_options())
    g = m._core
    P = g.num_parameters()
    own = g.bytes_allocated()
    assert own >= 2 * 4 * P  # float32 params + grads at least
    assert core.cuda_memory_stats()["bytes_allocated"] - base == own
    ids = np.arange(2 * 33, dtype=np.int64).reshape(2, 33) % cfg.vocab_size
    m(ids, labels=ids)
    m.backward()
    after_step = g.bytes_allocated()
    assert after_step > own  # activations
    m._kv_reset(4, 64)
    kv = 2 * cfg.num_hidden_layers * 4 * cfg.num_key_value_heads * 64 * (cfg.hidden_size // cfg.num_attention_heads) * 4
    assert g.bytes_allocated() >= after_step + kv
    st = core.cuda_memory_stats()
    assert st["peak_bytes_allocated"] >= st["bytes_allocated"] >= g.bytes_allocated()
    core.cuda_reset_peak_memory()
    st = core.cuda_memory_stats()
    assert st["peak_bytes_allocated"] == st["bytes_allocated"]
    held = g.bytes_allocated()
    del g, m
    gc.collect()
    assert core.cuda_memory_stats()["bytes_allocated"] == st["bytes_allocated"] - held


@gpu
@pytest.mark.skipif(not EMULATED_GPU, reason="counts the requests the emulated CUDA runtime sees (tools/cuda_sim)")
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_train_step_waits_once_and_decode_steps_replay_graphs(dtype):
    """Issue #8's 'no host-device synchronisation inside a step' and 'CUDA graphs for the
    decode step', counted on the emulator: a Trainer step on one GPU waits for the device
    once (losses and gradient norm read together), and each greedy decode step is one graph
    replay with no kernel launched outside it and one wait."""
    from pyllama import _core

    def counts():
        return dict(_core.cuda_sim_counters())

    cfg = tiny_config()
    data = np.random.default_rng(1).integers(0, cfg.vocab_size, 6000)
    for accum in (1, 3):
        tc = pyllama.TrainConfig(batch_size=2, seq_len=16, max_steps=5, warmup_steps=1, eval_interval=0,
                                 out_dir=None, device="cuda", dtype=dtype, grad_accum_steps=accum)
        tr = pyllama.Trainer(pyllama.Llama(cfg, seed=0), tc, data, progress=False)
        tr.train_step()
        a = counts()
        m = tr.train_step()
        b = counts()
        assert np.isfinite(m["loss"]) and np.isfinite(m["grad_norm"])
        assert b["host_waits"] - a["host_waits"] == 1, (accum, a, b)
        assert b["graph_launches"] == a["graph_launches"]
    model = pyllama.Llama(cfg, seed=0).to("cuda", options=env_options(), dtype=dtype)
    prompt = [[1, 2, 3, 4, 5]]
    runs = {}
    for n in (6, 16):
        model.generate(prompt, max_new_tokens=n)  # warm-up: a graph captured for this cache size
        a = counts()
        model.generate(prompt, max_new_tokens=n)
        b = counts()
        runs[n] = {k: b[k] - a[k] for k in a}
        # the prompt's forward, then one graph replay per further token
        assert runs[n]["graph_launches"] == n - 1, (n, runs[n])
    # ten more tokens: ten more replays, not one more kernel launched outside a graph, and no
    # more host waits (the steps after the prompt's run as one greedy chain, one wait)
    assert runs[16]["kernel_launches"] == runs[6]["kernel_launches"], runs
    assert runs[16]["cublas_calls"] == runs[6]["cublas_calls"], runs
    assert runs[16]["host_waits"] == runs[6]["host_waits"], runs


@gpu
@pytest.mark.skipif(not EMULATED_GPU, reason="counts the kernels the emulated CUDA runtime launches (tools/cuda_sim)")
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_fused_decode_step_launches_five_kernels_a_layer(dtype):
    """Issue #8, batch-1 decoding: with the fused kernels a T = 1 step launches the embedding,
    five kernels per layer (QKV + RoPE + cache store, attention with its merge, output
    projection + residual, gate/up + SwiGLU, down + residual) and the logits kernel (final
    norm, float copy and argmax included); the unfused kernels take more. Same tokens."""
    from pyllama import _core

    cfg = tiny_config(max_position_embeddings=512)
    L = cfg.num_hidden_layers
    m = pyllama.Llama(cfg, seed=0).to("cuda", options=env_options(), dtype=dtype)
    g = m._core
    prompt = [[1, 2, 3, 4, 5]]
    per_step, tokens = {}, {}
    for fused in (True, False):
        g.set_decode_options(fast_path=True, cuda_graphs=False, skinny_gemv=True, fused=fused)
        assert g.decode_stats()["fused"] is fused
        launches = {}
        for n in (6, 16):
            a = dict(_core.cuda_sim_counters())["kernel_launches"]
            tokens[fused, n] = [list(x) for x in m.generate(prompt, max_new_tokens=n, eos_token_id=[])]
            launches[n] = dict(_core.cuda_sim_counters())["kernel_launches"] - a
        per_step[fused] = (launches[16] - launches[6]) / 10
    assert per_step[True] == 2 + 5 * L, per_step
    assert per_step[False] >= 4 + 9 * L, per_step
    assert tokens[True, 16] == tokens[False, 16]


@gpu
def test_profiling_counts_each_region():
    """set_profiling / profile: each named region of forward, backward, AdamW and an eager
    decode step, counted once per layer and pass, times >= 0; off: nothing is added."""
    cfg = tiny_config()
    L = cfg.num_hidden_layers
    m = pyllama.Llama(cfg, seed=0).to("cuda", options=env_options())
    g = m._core
    ids, labels = make_batch(cfg, 2, 8)
    g.set_profiling(True)
    for _ in range(2):
        m.zero_grad()
        m(ids, labels=labels)
        m.backward()
    g.adamw_step(segment_table(m), 1e-3, 0.9, 0.95, 1e-8, 0.0, 1)
    g.set_decode_options(cuda_graphs=False)
    m._kv_reset(1, 16)
    one = np.ones(1, np.int32)
    m._kv_forward_greedy(np.array([[1, 2]], np.int32), np.zeros(1, np.int32), np.zeros(1, np.int32))
    m._kv_forward_greedy(np.array([[3]], np.int32), np.zeros(1, np.int32), 2 * one)
    prof = g.profile()
    assert all(ms >= 0.0 for ms, _ in prof.values()), prof
    assert prof["fwd matmul qkv"][1] == 2 * L and prof["fwd attention"][1] == 2 * L, prof
    assert prof["fwd rmsnorm"][1] == 2 * (2 * L + 1), prof
    assert prof["bwd attention"][1] == 2 * L and prof["bwd matmul lm_head"][1] == 2, prof
    assert prof["adamw"][1] == 1, prof
    assert prof["dec attention"][1] == L and prof["dec fused norm+lm_head+argmax"][1] == 1, prof
    g.set_profiling(False)
    assert g.profile() == {}
    m(ids, labels=labels)
    assert g.profile() == {}


@gpu
@pytest.mark.skipif(EMULATED_GPU, reason="the CPU emulator launches every kernel plainly: PDL needs a real sm_90 GPU")
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_pdl_launches_change_no_bit(dtype):
    """Programmatic dependent launch only lets a fused decode kernel start early; it must wait
    for the kernel before it before reading what that wrote. A missing wait would show as a
    difference: the logits of 50 steps (graph replays and eager launches, B = 1 and 3) with
    PDL on must equal, bit for bit, those with it off."""
    cfg = tiny_config(**CONFIGS["wide_hs64"])
    m = pyllama.Llama(cfg, seed=12).to("cuda", options=env_options(), dtype=dtype)
    g = m._core
    rng = np.random.default_rng(2)
    for B in (1, 3):
        prompt = rng.integers(0, cfg.vocab_size, size=(B, 6)).astype(np.int32)
        runs = {}
        for graphs in (True, False):
            for pdl in (True, False):
                g.set_decode_options(fast_path=True, cuda_graphs=graphs, skinny_gemv=True, fused=True, pdl=pdl)
                tokens, logits = _greedy(m, [p.tolist() for p in prompt], 50)
                runs[graphs, pdl] = (tokens, np.stack(logits))
        for graphs in (True, False):
            (t1, l1), (t0, l0) = runs[graphs, True], runs[graphs, False]
            assert t1 == t0 and np.array_equal(l1, l0), (B, graphs)
    g.set_decode_options(pdl=True)
