"""The Trainer's cuda path (docs/CUDA.md hooks), driven through a stand-in GPU core
that runs the CPU kernels, so it is checked on every machine; and the real GPU when
there is one."""
import numpy as np
import pytest

import pyllama
from pyllama import _core

from helpers import tiny_config, too_slow_for_the_emulator
from test_train import corpus, make_config


class FakeGpu:
    """_core.LlamaModelCuda's optimizer surface, on the CPU core's buffers."""

    def __init__(self, cpu_model):
        self.params = cpu_model._params
        self.grads = cpu_model._grads
        self.m = np.full(self.params.size, np.nan, np.float32)  # must be set by moments_from_host
        self.v = np.full(self.params.size, np.nan, np.float32)
        self.calls = []

    def adamw_step(self, segments, lr, beta1, beta2, eps, weight_decay, step):
        self.calls.append("adamw_step")
        _core.adamw_step(self.params, self.grads, self.m, self.v, segments, lr, beta1, beta2, eps, weight_decay, step)

    def clip_grad_norm(self, max_norm):
        self.calls.append("clip_grad_norm")
        return _core.clip_grad_norm(self.grads, max_norm)

    def grad_norm(self):
        return _core.grad_global_norm(self.grads)

    def moments_to_host(self, m, v):
        m[:] = self.m
        v[:] = self.v

    def moments_from_host(self, m, v):
        self.m[:] = m
        self.v[:] = v

    def params_from_host(self, src):
        self.calls.append("params_from_host")
        self.params[:] = src


class FakeCudaCore:
    def __init__(self, cpu_core, gpu):
        self._cpu = cpu_core
        self.gpu = gpu

    def __getattr__(self, name):
        return getattr(self._cpu, name)


def fake_cuda_model(seed):
    model = pyllama.Llama(tiny_config(), seed=seed)

    def to(device, dtype=None):
        assert device == "cuda" and dtype == "float32"
        if model.device != "cuda":
            model._core = FakeCudaCore(model._core, FakeGpu(model))
            model.device = "cuda"
        return model

    def host_copy(buf):
        def get():
            c = buf.copy()
            c.flags.writeable = False
            return c
        return get

    model.to = to
    model.flat_params = host_copy(model._params)
    model.flat_grads = host_copy(model._grads)
    model.named_parameters = lambda: {n: model.flat_params()[o:o + k].reshape(s)
                                      for n, o, k, s in model.param_segments()}
    return model


def test_cuda_path_trains_and_resumes_like_the_cpu(tmp_path):
    data = corpus()
    cpu = pyllama.Trainer(pyllama.Llama(tiny_config(), seed=0), make_config(), data, progress=False)
    want = [cpu.train_step()["loss"] for _ in range(20)]

    gpu_model = fake_cuda_model(0)
    first = pyllama.Trainer(gpu_model, make_config(tmp_path, device="cuda"), data, progress=False)
    assert gpu_model.device == "cuda"
    got = [first.train_step()["loss"] for _ in range(10)]
    assert gpu_model._core.gpu.calls[:2] == ["clip_grad_norm", "adamw_step"]
    first.save_checkpoint()
    with pytest.raises(ValueError):  # read-only host copies: the CPU path must not be taken
        gpu_model.flat_params()[0] = 1.0

    second_model = fake_cuda_model(7)
    second = pyllama.Trainer(second_model, make_config(tmp_path, device="cuda"), data, progress=False)
    second.resume(tmp_path)
    assert "params_from_host" in second_model._core.gpu.calls
    got += [second.train_step()["loss"] for _ in range(10)]
    assert got == want
    assert np.array_equal(second_model._params, cpu.model.flat_params())


def test_cuda_config_errors():
    with pytest.raises(ValueError, match=r"TrainConfig\.dtype"):
        pyllama.TrainConfig(dtype="float16")
    with pytest.raises(ValueError, match=r"TrainConfig\.dtype='bfloat16' needs device='cuda'"):
        pyllama.TrainConfig(dtype="bfloat16")
    if not pyllama.build_info()["cuda_available"]:
        with pytest.raises(ValueError, match=r"TrainConfig\.device='cuda' cannot be used"):
            pyllama.Trainer(pyllama.Llama(tiny_config()), make_config(device="cuda"), corpus(), progress=False)


@pytest.mark.cuda
@pytest.mark.skipif(not pyllama.build_info()["cuda_available"], reason="needs an NVIDIA GPU")
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_real_gpu_trains_close_to_the_cpu(tmp_path, dtype):
    data = corpus()
    cpu = pyllama.Trainer(pyllama.Llama(tiny_config(), seed=0), make_config(), data, progress=False)
    want = np.array([cpu.train_step()["loss"] for _ in range(20)])
    gpu = pyllama.Trainer(pyllama.Llama(tiny_config(), seed=0), make_config(tmp_path, device="cuda", dtype=dtype),
                          data, progress=False)
    got = np.array([gpu.train_step()["loss"] for _ in range(10)])
    gpu.save_checkpoint()
    again = pyllama.Trainer(pyllama.Llama(tiny_config(), seed=5), make_config(tmp_path, device="cuda", dtype=dtype),
                            data, progress=False)
    again.resume(tmp_path)
    got = np.concatenate([got, [again.train_step()["loss"] for _ in range(10)]])
    tol = 1e-4 if dtype == "float32" else 0.05
    np.testing.assert_allclose(got, want, atol=tol, rtol=0)


@pytest.mark.cuda
@pytest.mark.skipif(not pyllama.build_info()["cuda_available"], reason="needs an NVIDIA GPU")
@too_slow_for_the_emulator
def test_bfloat16_tracks_float32_over_200_shakespeare_steps():
    """Issue #7's proof: 200 steps of the `pyllama train` preset on the bundled Shakespeare,
    bf16 (fp32 masters) against fp32 on the GPU: the loss curves, averaged over 20-step
    windows, stay within 2% of each other."""
    from pyllama.cli_train import BUNDLED_CORPUS, PRESET_MODEL

    with open(BUNDLED_CORPUS, encoding="utf-8") as f:
        text = f.read()
    tok = pyllama.Tokenizer.train([text], vocab_size=1024)
    data = np.asarray(tok.encode(text), dtype=np.uint16)
    model_cfg = dict(PRESET_MODEL, vocab_size=tok.n_vocab)
    curves = {}
    for dtype in ("float32", "bfloat16"):
        cfg = pyllama.TrainConfig(batch_size=16, seq_len=128, max_steps=200, lr=3e-3, warmup_steps=20,
                                  min_lr_ratio=0.1, weight_decay=0.1, grad_clip=1.0, eval_interval=0,
                                  checkpoint_interval=0, seed=0, device="cuda", dtype=dtype)
        trainer = pyllama.Trainer(pyllama.Llama(pyllama.LlamaConfig(**model_cfg), seed=0), cfg, data,
                                  progress=False)
        curves[dtype] = np.array([trainer.train_step()["loss"] for _ in range(200)])
    f32 = curves["float32"].reshape(10, 20).mean(axis=1)
    b16 = curves["bfloat16"].reshape(10, 20).mean(axis=1)
    assert np.all(np.isfinite(b16))
    assert f32[-1] < f32[0] - 1.0, f"float32 did not learn: {f32}"  # the run means something
    rel = np.abs(b16 - f32) / f32
    assert rel.max() <= 0.02, f"bf16 strays from fp32 by {rel.max():.2%} (windows fp32 {f32}, bf16 {b16})"
