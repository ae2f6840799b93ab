"""The Trainer on a model whose core is replaced mid-run, as to("cuda") / to("cpu") replace it
(the core's move_model carries parameters, gradients and AdamW moments): the run goes on as
if nothing happened. Runs everywhere (the move is CPU to CPU here); the real GPU when there
is one."""
import numpy as np
import pytest

import pyllama
from pyllama import _core

from helpers import tiny_config, too_slow_for_the_emulator
from test_train import corpus, make_config


def move_in_place(model, device="cpu", dtype="float32"):
    """What Llama.to() does, through the binding: a new core holding everything the old one held."""
    model._set_core(_core.move_model(model._core, device, dtype))


def fake_cuda_model(seed):
    """A model that reports itself as a cuda model: to("cuda[:N]") replaces its core through
    move_model (as the real move does) but the new core is a CPU one. For the Trainer's and the
    communicators' cuda code paths on machines without a GPU."""
    model = pyllama.Llama(tiny_config(), seed=seed)

    def to(device, dtype=None):
        assert device.startswith("cuda") and dtype in (None, "float32")
        if model.device != "cuda":
            move_in_place(model)
            model.device = "cuda"
        return model

    model.to = to
    return model


def test_trainer_runs_on_through_a_core_move_and_resumes_like_the_cpu(tmp_path):
    data = corpus()
    ref = pyllama.Trainer(pyllama.Llama(tiny_config(), seed=0), make_config(), data, progress=False)
    want = [ref.train_step()["loss"] for _ in range(20)]

    model = pyllama.Llama(tiny_config(), seed=0)
    first = pyllama.Trainer(model, make_config(tmp_path), data, progress=False)
    got = [first.train_step()["loss"] for _ in range(5)]
    old = model._core
    move_in_place(model)
    assert model._core is not old and model._core.has_moments
    got += [first.train_step()["loss"] for _ in range(5)]
    first.save_checkpoint()

    second = pyllama.Trainer(pyllama.Llama(tiny_config(), seed=7), make_config(tmp_path), data, progress=False)
    second.resume(tmp_path)
    got += [second.train_step()["loss"] for _ in range(10)]
    assert got == want
    np.testing.assert_array_equal(second.model.flat_params(), ref.model.flat_params())


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
