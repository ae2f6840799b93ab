"""The checkpoint lifecycle (issue #21): where a resumed run writes, how a step is
published and pruned, start-up cleanup, the manifest, all-or-nothing resume, file modes.
The crash-at-every-operation and kill -9 tests are in test_checkpoint_faults.py."""
import json
import os
import shutil
import stat
import warnings

import numpy as np
import pytest

import pyllama
from pyllama.cli import main
from pyllama.data import prepare
from pyllama.train import MANIFEST_FILE, _write_manifest, clean_run_dir, resolve_checkpoint, verify_checkpoint

CFG = dict(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
           max_position_embeddings=32)
DATA = np.random.default_rng(0).integers(0, 64, 4000)


def trainer(out_dir, **kw):
    tc = dict(batch_size=2, seq_len=16, max_steps=8, warmup_steps=1, eval_interval=0, out_dir=str(out_dir),
              keep_last=2)
    tc.update(kw)
    return pyllama.Trainer(pyllama.Llama(pyllama.LlamaConfig(**CFG), seed=0), pyllama.TrainConfig(**tc), DATA,
                           progress=False)


def tree(path):
    """Every entry under path: name -> (kind, size, mtime, bytes or link target)."""
    out = {}
    for root, dirs, files in os.walk(path):
        for n in dirs + files:
            p = os.path.join(root, n)
            st = os.lstat(p)
            if stat.S_ISLNK(st.st_mode):
                out[os.path.relpath(p, path)] = ("link", os.readlink(p))
            elif stat.S_ISREG(st.st_mode):
                out[os.path.relpath(p, path)] = ("file", st.st_mtime_ns, open(p, "rb").read())
            else:
                out[os.path.relpath(p, path)] = ("dir",)
    return out


def snapshot(t):
    return (t.step, t.tokens_seen, t.model.flat_params().copy(), t.optimizer.exp_avg.copy(),
            t.optimizer.exp_avg_sq.copy(), t.optimizer.step_count, json.dumps(t.loader.state_dict()))


def same(a, b):
    return all(np.array_equal(x, y) if isinstance(x, np.ndarray) else x == y for x, y in zip(a, b))


# ------------------------------------------------------------------ 1. a copied run writes into the copy

def test_resuming_a_copied_run_writes_into_the_copy(tmp_path, monkeypatch, capsys):
    text = "".join(f"line {i} of the corpus.\n" for i in range(200))
    (tmp_path / "c.txt").write_text(text)

    class Bytes:
        n_vocab = 256

        def encode_ordinary(self, s):
            return list(s.encode())

    prepare(tmp_path / "c.txt", Bytes(), tmp_path / "data")
    tiny = ["--hidden-size", "32", "--intermediate-size", "64", "--layers", "1", "--heads", "2",
            "--max-position-embeddings", "32", "--batch-size", "2", "--seq-len", "16", "--warmup-steps", "1",
            "--eval-interval", "0", "--no-progress", "--threads", "1"]
    monkeypatch.chdir(tmp_path)
    assert main(["train", "--data", "data", "--out-dir", "runs/orig", "--max-steps", "3", *tiny]) == 0
    shutil.copytree("runs/orig", "runs/copy", symlinks=True)  # cp -a
    before = tree("runs/orig")
    os.mkdir("elsewhere")
    monkeypatch.chdir("elsewhere")  # a relative out_dir recorded in the checkpoint would now point elsewhere too
    assert main(["train", "--resume", str(tmp_path / "runs/copy/step-3"), "--max-steps", "5", "--no-progress"]) == 0
    assert tree(str(tmp_path / "runs/orig")) == before
    assert os.listdir(".") == []
    copy = tmp_path / "runs/copy"
    assert os.readlink(copy / "latest") == "step-5" and (copy / "step-5").is_dir()
    assert [json.loads(x)["step"] for x in open(copy / "metrics.jsonl")] == [1, 2, 3, 4, 5]
    # --resume of the run folder or its latest: the same folder; --out-dir: another one
    monkeypatch.chdir(tmp_path)
    assert main(["train", "--resume", "runs/copy/latest", "--max-steps", "6", "--no-progress"]) == 0
    assert os.readlink(copy / "latest") == "step-6" and tree("runs/orig") == before
    assert main(["train", "--resume", "runs/copy", "--out-dir", "runs/branch", "--max-steps", "7",
                 "--no-progress"]) == 0
    assert os.readlink(tmp_path / "runs/branch/latest") == "step-7" and tree("runs/orig") == before


# ------------------------------------------------------------------ 2. publishing and latest

def test_resaving_a_step_publishes_a_new_folder_and_never_renames_over_latest(tmp_path, monkeypatch):
    t = trainer(tmp_path)
    t.train(steps=2)
    first = t.last_checkpoint
    assert os.path.basename(first) == "step-2" and os.readlink(tmp_path / "latest") == "step-2"
    renames = []
    real_rename = os.rename

    def rename(a, b):
        renames.append((os.path.basename(a), os.path.basename(b)))
        return real_rename(a, b)

    monkeypatch.setattr(os, "rename", rename)
    again = t.save_checkpoint()  # the same step again (e.g. Ctrl-C right after a resume)
    assert os.path.basename(again) == "step-2.1" and os.readlink(tmp_path / "latest") == "step-2.1"
    assert not os.path.exists(first)  # superseded, pruned
    # the published name is only ever created by renaming a complete folder in; the only
    # rename away from a published name goes to a trash name, after latest moved on
    assert renames[0][0].startswith(".tmp-step-2-") and renames[0][1] == "step-2.1"
    assert renames[1][0] == "step-2" and renames[1][1].startswith(".trash-step-2-")
    assert resolve_checkpoint(tmp_path).endswith("step-2.1")
    t.save_checkpoint()
    # (loss.png too where matplotlib is installed)
    assert os.readlink(tmp_path / "latest") == "step-2.2" and sorted(
        n for n in os.listdir(tmp_path) if n != "loss.png") == ["latest", "metrics.jsonl", "step-2.2"]
    t.train(steps=1)  # the next step is step-3 again
    assert sorted(n for n in os.listdir(tmp_path) if n.startswith("step")) == ["step-2.2", "step-3"]


def test_a_crash_between_the_renames_of_a_resave_leaves_latest_on_a_complete_folder(tmp_path, monkeypatch):
    t = trainer(tmp_path)
    t.train(steps=2)
    real_symlink = os.symlink

    def crash(*a, **kw):
        raise KeyboardInterrupt("killed")

    monkeypatch.setattr(os, "symlink", crash)  # killed after the new folder is in, before latest moves
    with pytest.raises(KeyboardInterrupt):
        t.save_checkpoint()
    monkeypatch.setattr(os, "symlink", real_symlink)
    ck = resolve_checkpoint(tmp_path / "latest")
    assert verify_checkpoint(ck)
    assert os.path.basename(ck) == "step-2"  # the old one, untouched; step-2.1 is complete too
    assert verify_checkpoint(str(tmp_path / "step-2.1"))


# ------------------------------------------------------------------ 3. pruning

def test_prune_renames_to_trash_before_deleting(tmp_path, monkeypatch):
    t = trainer(tmp_path, keep_last=1)
    t.train(steps=1)

    def crash(path, *a, **kw):
        raise KeyboardInterrupt("killed while deleting")

    monkeypatch.setattr(shutil, "rmtree", crash)
    with pytest.raises(KeyboardInterrupt):
        t.train(steps=1)
    names = sorted(os.listdir(tmp_path))
    # step-1 is gone under its published name: a half-deleted folder is never a "step-N"
    assert [n for n in names if n.startswith("step")] == ["step-2"]
    assert any(n.startswith(".trash-step-1-") for n in names)
    monkeypatch.undo()
    assert clean_run_dir(str(tmp_path)) and not any(n.startswith(".") for n in os.listdir(tmp_path))


# ------------------------------------------------------------------ 4. start-up cleanup

def test_startup_removes_leftovers_and_nothing_else(tmp_path):
    t = trainer(tmp_path)
    t.train(steps=1)
    leftovers = [".tmp-step-7-abc_12", ".trash-step-3-x8Yz", ".old-step-2-k1", ".tmp-step-4.2-q"]
    for n in leftovers:
        os.makedirs(tmp_path / n / "sub")
        (tmp_path / n / "sub" / "f").write_text("x")
    (tmp_path / ".tmp-latest-1234").symlink_to("step-1")
    (tmp_path / ".tmp-ab12cd34-metrics.jsonl").write_text("{}")
    keep = [".tmp-stepX", "tmp-step-1-abc", ".trash-mine", "notes.txt", ".tmp-step-1"]
    for n in keep:
        (tmp_path / n).write_text("mine")
    t2 = trainer(tmp_path)
    t2.resume(tmp_path)
    t2.train(steps=1)
    names = set(os.listdir(tmp_path))
    assert not names & set(leftovers + [".tmp-latest-1234", ".tmp-ab12cd34-metrics.jsonl"])
    assert set(keep) <= names


# ------------------------------------------------------------------ 5. manifest and all-or-nothing resume

@pytest.fixture
def saved(tmp_path):
    t = trainer(tmp_path / "run")
    t.train(steps=2)
    return t.last_checkpoint


def damage(ckpt, what):
    from safetensors.numpy import load_file, save_file

    st = os.path.join(ckpt, "trainer_state.json")
    state = json.load(open(st))
    if what == "missing moment":
        m = load_file(os.path.join(ckpt, "optimizer.safetensors"))
        del m["exp_avg_sq.lm_head.weight"]
        save_file(m, os.path.join(ckpt, "optimizer.safetensors"))
    elif what == "wrong moment shape":
        m = load_file(os.path.join(ckpt, "optimizer.safetensors"))
        m["exp_avg.model.norm.weight"] = np.zeros(3, np.float32)
        save_file(m, os.path.join(ckpt, "optimizer.safetensors"))
    elif what == "step abc":
        state["step"] = "abc"
    elif what == "step bool":
        state["tokens_seen"] = True
    elif what == "garbage rng":
        state["data"]["rng"] = {"bit_generator": "PCG64", "state": "garbage"}
    elif what == "rng wrong type":
        state["data"]["rng"] = [1, 2, 3]
    elif what == "negative pos":
        state["data"]["pos"] = -5
    elif what == "optimizer step":
        state["optimizer"]["step"] = "x"
    elif what == "missing weight":
        m = load_file(os.path.join(ckpt, "model.safetensors"))
        del m["model.norm.weight"]
        save_file(m, os.path.join(ckpt, "model.safetensors"))
    json.dump(state, open(st, "w"))
    _write_manifest(ckpt)  # a consistent manifest: the checks past it must catch the damage


@pytest.mark.parametrize("what", ["missing moment", "wrong moment shape", "step abc", "step bool", "garbage rng",
                                  "rng wrong type", "negative pos", "optimizer step", "missing weight"])
def test_resume_is_all_or_nothing(saved, tmp_path, what):
    damage(saved, what)
    t = trainer(tmp_path / "other")
    t.train(steps=1)
    before = snapshot(t)
    with pytest.raises(ValueError, match="checkpoint"):
        t.resume(saved)
    assert same(snapshot(t), before)


@pytest.mark.parametrize("how", ["flip a byte", "truncate", "delete", "manifest garbage"])
def test_manifest_catches_damaged_files_before_anything_changes(saved, tmp_path, how):
    p = os.path.join(saved, "model.safetensors")
    data = bytearray(open(p, "rb").read())
    if how == "flip a byte":
        data[-3] ^= 1  # a float's low bit: the file still loads, only the checksum notices
        open(p, "wb").write(data)
    elif how == "truncate":
        open(p, "wb").write(data[:-4])
    elif how == "delete":
        os.unlink(p)
    else:
        open(os.path.join(saved, MANIFEST_FILE), "w").write("[1, 2")
    t = trainer(tmp_path / "other")
    before = snapshot(t)
    with pytest.raises(ValueError, match="damaged"):
        t.resume(saved)
    assert same(snapshot(t), before)


def test_checkpoint_without_manifest_resumes_with_a_warning(saved, tmp_path):
    os.unlink(os.path.join(saved, MANIFEST_FILE))
    t = trainer(tmp_path / "other")
    with pytest.warns(UserWarning, match="no manifest.json"):
        t.resume(saved)
    assert t.step == 2
    with open(os.path.join(saved, "config.json")) as f:
        assert json.load(f)["hidden_size"] == 32


# ------------------------------------------------------------------ 10. file modes

def test_written_files_get_the_umask_mode(tmp_path):
    old = os.umask(0o022)
    try:
        t = trainer(tmp_path / "run")
        t.train(steps=2)  # metrics.jsonl is rewritten atomically at the start of train()
        t.train(steps=1)
        pyllama.Llama(pyllama.LlamaConfig(**CFG)).save_pretrained(tmp_path / "hf")
        (tmp_path / "c.txt").write_text("hello world, abc def\n" * 300)
        tok = pyllama.Tokenizer.train(str(tmp_path / "c.txt"), vocab_size=270)
        tok.save(str(tmp_path / "tok" / "t.tiktoken"))
        prepare(tmp_path / "c.txt", tok, tmp_path / "data")
        paths = [tmp_path / "run" / "metrics.jsonl", tmp_path / "hf" / "config.json",
                 tmp_path / "hf" / "model.safetensors", tmp_path / "tok" / "t.tiktoken",
                 tmp_path / "tok" / "t.tiktoken.json", tmp_path / "data" / "train.json",
                 tmp_path / "run" / "step-3" / "trainer_state.json"]
        for p in paths:
            assert stat.S_IMODE(os.stat(p).st_mode) == 0o644, p
    finally:
        os.umask(old)
