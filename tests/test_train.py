"""Training loop: 20 steps against transformers + torch.optim.AdamW, exact resume,
checkpoints that transformers loads, and bad input."""
import json
import os
import signal
import threading

import numpy as np
import pytest

import pyllama
from pyllama.data import DataLoader
from pyllama.train import load_trainer_state, resolve_checkpoint

from helpers import hf_model_from, tiny_config

V = 97


def corpus(n=6000, seed=0):
    # a learnable stream: a noisy repeating pattern over the vocabulary
    rng = np.random.default_rng(seed)
    base = np.arange(n) * 7 % V
    noise = rng.integers(0, V, n)
    return np.where(rng.random(n) < 0.2, noise, base).astype(np.uint16)


def make_config(tmp_path=None, **kw):
    args = dict(batch_size=2, seq_len=16, grad_accum_steps=2, max_steps=20, lr=3e-3, warmup_steps=5,
                min_lr_ratio=0.1, weight_decay=0.1, betas=(0.9, 0.95), grad_clip=1.0, eval_interval=0,
                eval_steps=2, checkpoint_interval=0, keep_last=3, seed=123,
                out_dir=None if tmp_path is None else str(tmp_path))
    args.update(kw)
    return pyllama.TrainConfig(**args)


@pytest.mark.parametrize("tie", [False, True])
def test_twenty_steps_match_transformers_and_torch_adamw(tie):
    torch = pytest.importorskip("torch", reason="PyTorch is the reference training loop")
    pytest.importorskip("transformers", reason="transformers.LlamaForCausalLM is the reference model")
    data = corpus()
    model = pyllama.Llama(tiny_config(tie_word_embeddings=tie), seed=0)
    hf = hf_model_from(model).train()  # same weights, before any step
    tc = make_config()
    trainer = pyllama.Trainer(model, tc, data, progress=False)
    ours = [trainer.train_step() for _ in range(tc.max_steps)]

    params = dict(hf.named_parameters())
    decay = [p for n, p in params.items() if p.ndim == 2]
    no_decay = [p for n, p in params.items() if p.ndim != 2]
    assert len(no_decay) == 2 * tc_layers(model) + 1
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": tc.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}], lr=tc.lr, betas=tc.betas, eps=tc.eps)
    loader = DataLoader(data, tc.batch_size, tc.seq_len, seed=tc.seed)
    ref_losses, ref_norms = [], []
    for step in range(tc.max_steps):
        opt.zero_grad()
        total = 0.0
        for _ in range(tc.grad_accum_steps):
            window = torch.from_numpy(loader.next_batch().astype(np.int64))
            # every position of the seq_len inputs predicts the next token of the window
            logits = hf(input_ids=window[:, :tc.seq_len]).logits
            loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), window[:, 1:].reshape(-1))
            (loss / tc.grad_accum_steps).backward()
            total += loss.item()
        norm = torch.nn.utils.clip_grad_norm_(hf.parameters(), tc.grad_clip).item()
        lr = pyllama.cosine_lr(step, tc.lr, tc.warmup_steps, tc.max_steps, tc.min_lr_ratio)
        for g in opt.param_groups:
            g["lr"] = lr
        opt.step()
        ref_losses.append(total / tc.grad_accum_steps)
        ref_norms.append(norm)

    losses = np.array([m["loss"] for m in ours])
    norms = np.array([m["grad_norm"] for m in ours])
    print("max |loss diff| over 20 steps:", np.abs(losses - ref_losses).max(),
          "max rel grad-norm diff:", np.max(np.abs(norms - ref_norms) / np.array(ref_norms)))
    assert losses[-1] < losses[0] - 0.1  # it learns
    np.testing.assert_allclose(losses, ref_losses, atol=1e-4, rtol=0)
    np.testing.assert_allclose(norms, ref_norms, rtol=1e-3, atol=1e-5)
    assert [m["lr"] for m in ours] == [pyllama.cosine_lr(s, tc.lr, 5, 20) for s in range(20)]
    # final weights agree too
    for name, p in model.named_parameters().items():
        np.testing.assert_allclose(p, params[name].detach().numpy(), atol=2e-4, err_msg=name)


def tc_layers(model):
    return model.config.num_hidden_layers


def test_resume_continues_exactly(tmp_path):
    data, val = corpus(), corpus(800, seed=1)
    straight = pyllama.Trainer(pyllama.Llama(tiny_config(), seed=0),
                               make_config(tmp_path / "a", eval_interval=5), data, val, progress=False)
    straight.train()
    want = [json.loads(line) for line in open(tmp_path / "a" / "metrics.jsonl")]
    assert [m["step"] for m in want] == list(range(1, 21))

    first = pyllama.Trainer(pyllama.Llama(tiny_config(), seed=0),
                            make_config(tmp_path / "b", eval_interval=5), data, val, progress=False)
    r = first.train(steps=10)
    assert r["step"] == 10 and r["checkpoint"].endswith("step-10")
    # a fresh process would build a fresh model with other weights: resume must overwrite them
    second = pyllama.Trainer(pyllama.Llama(tiny_config(), seed=99),
                             make_config(tmp_path / "b", eval_interval=5), data, val, progress=False)
    used = second.resume(tmp_path / "b")
    assert os.path.basename(used) == "latest" or used.endswith("step-10")
    assert second.step == 10 and second.tokens_seen == 10 * 2 * 16 * 2
    second.train()
    got = [json.loads(line) for line in open(tmp_path / "b" / "metrics.jsonl")]
    assert [m["step"] for m in got] == list(range(1, 21))
    assert [m["loss"] for m in got] == [m["loss"] for m in want]  # exactly equal
    assert [m["grad_norm"] for m in got] == [m["grad_norm"] for m in want]
    assert [m.get("val_loss") for m in got] == [m.get("val_loss") for m in want]
    a = straight.model.flat_params()
    b = second.model.flat_params()
    assert np.array_equal(a, b)


def test_checkpoint_layout_and_keep_last(tmp_path):
    tc = make_config(tmp_path, max_steps=8, checkpoint_interval=2, keep_last=2)
    trainer = pyllama.Trainer(pyllama.Llama(tiny_config(), seed=0), tc, corpus(), progress=False)
    trainer.train()
    names = sorted(n for n in os.listdir(tmp_path) if n.startswith("step-"))
    assert names == ["step-6", "step-8"]
    assert os.path.realpath(tmp_path / "latest") == os.path.realpath(tmp_path / "step-8")
    assert not [n for n in os.listdir(tmp_path) if n.startswith(".")]
    ck = tmp_path / "latest"
    assert {"config.json", "model.safetensors", "optimizer.safetensors", "trainer_state.json"} <= set(os.listdir(ck))
    state = load_trainer_state(str(ck))
    assert state["step"] == 8 and state["tokens_seen"] == 8 * 64
    assert state["train_config"]["max_steps"] == 8
    assert state["model_config"]["vocab_size"] == V
    assert "rng" in state["data"] and state["data"]["batches"] == 16
    # the plot, when matplotlib is there
    try:
        import matplotlib  # noqa: F401

        assert (tmp_path / "loss.png").stat().st_size > 1000
    except ImportError:
        pass
    loaded = pyllama.Llama.from_pretrained(ck)
    assert np.array_equal(loaded.flat_params(), trainer.model.flat_params())


def test_checkpoint_loads_in_transformers_with_same_logits(tmp_path):
    torch = pytest.importorskip("torch", reason="needs PyTorch")
    transformers = pytest.importorskip("transformers", reason="needs transformers")
    trainer = pyllama.Trainer(pyllama.Llama(tiny_config(), seed=0), make_config(tmp_path, max_steps=5),
                              corpus(), progress=False)
    trainer.train()
    hf = transformers.LlamaForCausalLM.from_pretrained(str(tmp_path / "latest"), attn_implementation="eager").eval()
    ids = corpus(40, seed=5).astype(np.int64).reshape(2, 20)
    with torch.no_grad():
        ref = hf(torch.from_numpy(ids)).logits.numpy()
    ours = trainer.model(ids).logits
    np.testing.assert_allclose(ours, ref, atol=1e-4, rtol=0)


def test_disk_full_during_save_keeps_previous_checkpoint(tmp_path, monkeypatch):
    import safetensors.numpy

    trainer = pyllama.Trainer(pyllama.Llama(tiny_config(), seed=0), make_config(tmp_path, max_steps=6),
                              corpus(), progress=False)
    trainer.train(steps=3)
    before = {n: (tmp_path / "step-3" / n).read_bytes() for n in os.listdir(tmp_path / "step-3")}
    trainer.train_step()

    def full(*a, **k):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(safetensors.numpy, "save_file", full)
    with pytest.raises(OSError, match="No space"):
        trainer.save_checkpoint()
    assert sorted(n for n in os.listdir(tmp_path) if not n.endswith(".jsonl") and not n.endswith(".png")) == \
        ["latest", "step-3"]
    assert {n: (tmp_path / "step-3" / n).read_bytes() for n in os.listdir(tmp_path / "step-3")} == before
    assert resolve_checkpoint(tmp_path).endswith("step-3")


def test_missing_or_corrupt_checkpoint_is_a_clear_error(tmp_path):
    trainer = pyllama.Trainer(pyllama.Llama(tiny_config(), seed=0), make_config(tmp_path, max_steps=2, warmup_steps=1),
                              corpus(), progress=False)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        trainer.resume(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="not a checkpoint"):
        trainer.resume(tmp_path / "empty")
    trainer.train()
    ck = tmp_path / "step-2"
    fresh = lambda: pyllama.Trainer(pyllama.Llama(tiny_config(), seed=0), make_config(tmp_path, max_steps=2, warmup_steps=1),  # noqa: E731
                                    corpus(), progress=False)
    opt = (ck / "optimizer.safetensors").read_bytes()
    (ck / "optimizer.safetensors").write_bytes(opt[:100])
    t = fresh()
    before = t.model.flat_params().copy()
    with pytest.raises(ValueError, match="corrupt"):
        t.resume(ck)
    assert np.array_equal(t.model.flat_params(), before) and t.step == 0  # nothing half-loaded
    (ck / "optimizer.safetensors").write_bytes(opt)
    state = (ck / "trainer_state.json").read_text()
    (ck / "trainer_state.json").write_text(state[:50])
    with pytest.raises(ValueError, match="corrupt"):
        fresh().resume(ck)
    (ck / "trainer_state.json").write_text(state)
    other = pyllama.Trainer(pyllama.Llama(tiny_config(hidden_size=32), seed=0), make_config(tmp_path, max_steps=2, warmup_steps=1),
                            corpus(), progress=False)
    with pytest.raises(ValueError, match="hidden_size"):
        other.resume(ck)
    with pytest.raises(ValueError, match="batch_size"):
        pyllama.Trainer(pyllama.Llama(tiny_config(), seed=0), make_config(tmp_path, max_steps=2, warmup_steps=1, batch_size=3),
                        corpus(), progress=False).resume(ck)


def test_ctrl_c_saves_a_checkpoint_and_returns(tmp_path):
    if threading.current_thread() is not threading.main_thread():
        pytest.skip("signals need the main thread")
    trainer = pyllama.Trainer(pyllama.Llama(tiny_config(), seed=0), make_config(tmp_path, max_steps=100000),
                              corpus(), progress=False)
    timer = threading.Timer(1.0, lambda: os.kill(os.getpid(), signal.SIGINT))
    timer.start()
    try:
        r = trainer.train()
    finally:
        timer.cancel()
    assert r["interrupted"] and 0 < r["step"] < 100000
    ck = resolve_checkpoint(tmp_path)
    assert ck.endswith(f"step-{r['step']}")
    t2 = pyllama.Trainer(pyllama.Llama(tiny_config(), seed=1), make_config(tmp_path, max_steps=100000),
                         corpus(), progress=False)
    t2.resume(tmp_path)
    assert t2.step == r["step"] and np.array_equal(t2.model.flat_params(), trainer.model.flat_params())
    assert signal.getsignal(signal.SIGINT) is not trainer._on_sigint


def test_train_config_validation_names_the_field():
    with pytest.raises(ValueError, match=r"TrainConfig\.lr"):
        pyllama.TrainConfig(lr=-1e-3)
    with pytest.raises(ValueError, match=r"TrainConfig\.batch_size"):
        pyllama.TrainConfig(batch_size=0)
    with pytest.raises(ValueError, match=r"TrainConfig\.betas"):
        pyllama.TrainConfig(betas=(0.9, 1.5))
    with pytest.raises(ValueError, match=r"TrainConfig\.warmup_steps"):
        pyllama.TrainConfig(max_steps=10, warmup_steps=20)
    with pytest.raises(ValueError, match=r"TrainConfig\.grad_clip"):
        pyllama.TrainConfig(grad_clip=float("nan"))
    with pytest.raises(ValueError, match=r"TrainConfig\.device"):
        pyllama.TrainConfig(device="tpu")
    with pytest.raises(TypeError):
        pyllama.TrainConfig(16, 128)  # keyword-only
    with pytest.raises(ValueError, match="unknown TrainConfig field"):
        pyllama.TrainConfig.from_dict({"learning_rate": 1.0})
    tc = pyllama.TrainConfig(batch_size=4)
    assert pyllama.TrainConfig.from_dict(json.loads(json.dumps(tc.to_dict()))) == tc


def test_impossible_setups_fail_before_training():
    model = pyllama.Llama(tiny_config(), seed=0)
    with pytest.raises(ValueError, match="seq_len.*max_position_embeddings"):
        pyllama.Trainer(model, make_config(seq_len=512), corpus(), progress=False)
    big = corpus().astype(np.int64)
    big[100] = V + 5
    with pytest.raises(ValueError, match="vocab_size"):
        pyllama.Trainer(model, make_config(), big, progress=False)
    with pytest.raises(ValueError, match="val_data has 10 tokens"):
        pyllama.Trainer(model, make_config(), corpus(), corpus(10), progress=False)
