"""Crash a training run at every file operation of a save, a prune and a resume, and
kill -9 real training processes at random times; then check every invariant of the
checkpoint lifecycle (docs/TRAINING.md, "Checkpoint lifecycle"):

* ``latest`` resolves to a checkpoint that passes its manifest and loads;
* every published ``step-*`` folder passes its manifest (or is absent);
* a new process resumes and continues bit-exactly: its losses, the final weights and the
  whole ``metrics.jsonl`` equal an uninterrupted run's;
* after that restart no leftover (``.tmp-*``, ``.trash-*``) remains;
* resuming a copied run never touches the original folder.

A simulated crash raises ``Crash`` (a ``BaseException``, like ``KeyboardInterrupt``) at
the k-th patched call (``open``, ``os.open``, ``rename``, ``replace``, ``symlink``,
``unlink``, ``rmdir``, ``mkdir``, ``fsync``, ``chmod``), and at every later one: the
process is dead, so no ``except``/``finally`` cleanup may touch the disk either.
Files written by native code (safetensors) are not interrupted halfway; they are
written into temporary folders, which is what the test is about.
"""
import builtins
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

import pyllama
from pyllama.cli import main
from pyllama.data import prepare
from pyllama.train import _STEP_DIR, load_trainer_state, resolve_checkpoint, verify_checkpoint

CFG = dict(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
           max_position_embeddings=16)
TC = dict(batch_size=2, seq_len=8, max_steps=6, warmup_steps=1, eval_interval=0, checkpoint_interval=1, keep_last=2)


class Crash(BaseException):
    """The simulated kill."""


class Injector:
    """Counts the file operations made inside ``with``; the ``crash_at``-th one and all
    after it raise :class:`Crash`. ``crash_at=None`` only counts."""

    PATCHED = [(os, "rename"), (os, "replace"), (os, "symlink"), (os, "unlink"), (os, "rmdir"), (os, "mkdir"),
               (os, "fsync"), (os, "chmod"), (os, "open"), (builtins, "open")]

    def __init__(self, crash_at=None):
        self.crash_at = crash_at
        self.count = 0
        self.crashed = False
        self.where = None

    def _wrap(self, name, real):
        def op(*a, **kw):
            self.count += 1
            if self.crashed or (self.crash_at is not None and self.count >= self.crash_at):
                if not self.crashed:
                    self.where = f"{name}({a[0] if a else ''})"
                self.crashed = True
                raise Crash(name)
            return real(*a, **kw)

        return op

    def __enter__(self):
        self.saved = [(mod, name, getattr(mod, name)) for mod, name in self.PATCHED]
        for mod, name, real in self.saved:
            setattr(mod, name, self._wrap(name, real))
        return self

    def __exit__(self, *exc):
        for mod, name, real in self.saved:
            setattr(mod, name, real)
        return exc[0] is Crash  # the "dead process" ends here


# ------------------------------------------------------------------ fixtures

@pytest.fixture(autouse=True)
def no_fsync(monkeypatch):
    """fsync only matters for power loss, which these in-process crashes do not simulate;
    it is still counted (and crashed at) as an operation. Saves most of the run time."""
    monkeypatch.setattr(os, "fsync", lambda fd: None)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """Token data on disk, a run folder trained for 3 steps (step-2, step-3, latest) and the
    per-step losses and final weights of an uninterrupted 6-step run."""
    base = tmp_path_factory.mktemp("faults")
    data = base / "data"
    ids = np.random.default_rng(0).integers(0, 64, 3000).astype(np.uint16)
    os.makedirs(data)
    ids.tofile(data / "train.bin")
    (data / "train.json").write_text(json.dumps({"format": "pyllama.tokens", "version": 1, "dtype": "uint16",
                                                 "count": int(ids.size), "max_id": int(ids.max()),
                                                 "n_vocab": 64, "split": "train"}))
    ref = make_trainer(str(data / "train.bin"), None)
    losses = [ref.train_step()["loss"] for _ in range(TC["max_steps"])]
    template = base / "template"
    t = make_trainer(str(data / "train.bin"), str(template))
    t.train(steps=3)
    return {"data": str(data / "train.bin"), "template": str(template), "losses": losses,
            "weights": ref.model.flat_params().copy()}


def make_trainer(data, out_dir, **kw):
    tc = dict(TC, out_dir=out_dir)
    tc.update(kw)
    return pyllama.Trainer(pyllama.Llama(pyllama.LlamaConfig(**CFG), seed=0), pyllama.TrainConfig(**tc), data,
                           progress=False)


def published(run):
    return sorted(n for n in os.listdir(run) if _STEP_DIR.match(n))


def check_invariants(world, run):
    """Everything a crash may not break; then a restart finishes the run exactly."""
    ck = resolve_checkpoint(os.path.join(run, "latest"))
    assert verify_checkpoint(ck), ck
    load_trainer_state(ck)
    pyllama.Llama.from_pretrained(ck)
    for n in published(run):
        assert verify_checkpoint(os.path.join(run, n)), n
    # restart: resume from the run folder, finish, compare with the uninterrupted run
    t = make_trainer(world["data"], run, checkpoint_interval=0)
    t.resume(run)
    start = t.step
    got = [t.train_step()["loss"] for _ in range(start, 5)]
    assert got == world["losses"][start:5]
    t.train()  # the last step through train(): cleanup, metrics, final save
    if start < 6:
        assert t.last_metrics["loss"] == world["losses"][5]
    assert np.array_equal(t.model.flat_params(), world["weights"])
    rows = [json.loads(line) for line in open(os.path.join(run, "metrics.jsonl"))]
    assert [r["step"] for r in rows][-1] == 6
    logged = {r["step"]: r["loss"] for r in rows}
    assert all(logged[s] == world["losses"][s - 1] for s in logged)
    assert not [n for n in os.listdir(run) if n.startswith(".")], os.listdir(run)
    return start


def every_crash(world, tmp_path, prepare_run, operation, check=check_invariants):
    """Run ``operation(run)`` once per k, crashing at its k-th file operation, until it
    completes uncrashed; check the invariants after each. Returns the number of crashes."""
    k = 0
    while True:
        k += 1
        run = str(tmp_path / f"k{k}")
        shutil.copytree(world["template"], run, symlinks=True)
        state = prepare_run(run)
        with Injector(crash_at=k) as inj:
            operation(run, state)
        check(world, run)
        if not inj.crashed:
            return k - 1, inj.count
        shutil.rmtree(run)


def resumed(world):
    def prep(run):
        t = make_trainer(world["data"], run)
        t.resume(run)
        return t
    return prep


# ------------------------------------------------------------------ crash at every operation

def test_crash_at_every_operation_of_a_save_and_prune(world, tmp_path):
    """Step 4: start-up cleanup, metrics rewrite and append, build .tmp-step-4-*, publish,
    point latest, prune step-2."""
    crashes, ops = every_crash(world, tmp_path, resumed(world), lambda run, t: t.train(steps=1))
    print(f"\nsave + prune: {crashes} crash points of {ops} file operations")
    assert crashes >= 30


def test_crash_at_every_operation_of_a_resave(world, tmp_path):
    """step-3 again: published as step-3.1, latest moves, step-3 pruned."""
    crashes, ops = every_crash(world, tmp_path, resumed(world), lambda run, t: t.save_checkpoint())
    print(f"\nre-save: {crashes} crash points of {ops} file operations")
    assert crashes >= 20


def test_crash_at_every_operation_of_a_resume_with_leftovers(world, tmp_path):
    """A run folder left by a killed save (.tmp-step-4-*, .trash-step-1-*, a metrics line
    past the checkpoint): resume, then start-up cleanup and one step."""
    def prep(run):
        for n in (".tmp-step-4-abc", ".trash-step-1-xyz"):
            shutil.copytree(os.path.join(run, "step-3"), os.path.join(run, n))
        with open(os.path.join(run, "metrics.jsonl"), "a") as f:
            f.write(json.dumps({"step": 4, "loss": 1.0}) + "\n{\"step\": 5, \"lo")
        return None

    def op(run, _):
        t = make_trainer(world["data"], run)
        t.resume(run)
        t.train(steps=1)

    crashes, ops = every_crash(world, tmp_path, prep, op)
    print(f"\nresume + cleanup: {crashes} crash points of {ops} file operations")
    assert crashes >= 30


def test_crash_at_every_operation_of_resuming_a_copy_from_the_cli(world, tmp_path):
    """`pyllama train --resume copy/step-3` of a copied run: the original stays untouched
    whatever the moment of the crash."""
    def prep(run):
        orig = run + "-orig"
        os.rename(run, orig)
        shutil.copytree(orig, run, symlinks=True)
        return {p: open(os.path.join(orig, p), "rb").read() if os.path.isfile(os.path.join(orig, p)) else None
                for p in sorted(os.listdir(orig))}

    originals = {}

    def op(run, before):
        originals[run] = before
        main(["train", "--resume", os.path.join(run, "step-3"), "--max-steps", "6", "--checkpoint-interval", "1",
              "--no-progress"])

    def check(world, run):
        orig = run + "-orig"
        now = {p: open(os.path.join(orig, p), "rb").read() if os.path.isfile(os.path.join(orig, p)) else None
               for p in sorted(os.listdir(orig))}
        assert now == originals[run]
        assert os.readlink(os.path.join(orig, "latest")) == "step-3"
        check_invariants(world, run)

    crashes, ops = every_crash(world, tmp_path, prep, op, check)
    print(f"\nCLI resume of a copy: {crashes} crash points of {ops} file operations")
    assert crashes >= 50


# ------------------------------------------------------------------ kill -9

CHILD = textwrap.dedent("""
    import json, os, sys
    import pyllama
    from pyllama.train import clean_run_dir
    pyllama.set_num_threads(1)
    run, data, until = sys.argv[1], sys.argv[2], int(sys.argv[3])
    cfg = pyllama.LlamaConfig(**json.loads(sys.argv[4]))
    tc = pyllama.TrainConfig(**json.loads(sys.argv[5]), out_dir=run)
    t = pyllama.Trainer(pyllama.Llama(cfg, seed=0), tc, data, progress=False)
    left = clean_run_dir(run)
    if os.path.lexists(os.path.join(run, "latest")):
        t.resume(run)
    print(json.dumps({"step": t.step, "leftovers": left}), flush=True)
    t.train(steps=until - t.step if until else None)
""")


def test_kill_9_at_random_times(world, tmp_path):
    """Training processes (a checkpoint every step, keep_last 2) killed with SIGKILL at
    random moments, >= 30 times; after each kill the invariants hold, and the final run's
    metrics.jsonl equals an uninterrupted run's loss for loss."""
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    run = str(tmp_path / "run")
    tc = dict(TC, max_steps=100000)
    args = [sys.executable, str(script), run, world["data"]]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    rng = random.Random(21)
    kills = hit = 0
    t0 = time.perf_counter()
    while kills < 30 or time.perf_counter() - t0 < 10:
        p = subprocess.Popen([*args, "0", json.dumps(CFG), json.dumps(tc)], stdout=subprocess.PIPE, env=env,
                             text=True)
        info = json.loads(p.stdout.readline())
        hit += bool(info["leftovers"])
        time.sleep(rng.uniform(0.0, 0.2))
        p.send_signal(signal.SIGKILL)
        p.wait()
        p.stdout.close()
        kills += 1
        if os.path.lexists(os.path.join(run, "latest")):
            ck = resolve_checkpoint(os.path.join(run, "latest"))
            assert verify_checkpoint(ck)
            for n in published(run):
                assert verify_checkpoint(os.path.join(run, n))
    # finish a few steps past the last checkpoint, uninterrupted
    last = load_trainer_state(resolve_checkpoint(run))["step"]
    until = last + 3
    p = subprocess.run([*args, str(until), json.dumps(CFG), json.dumps(tc)], env=env, capture_output=True,
                       text=True)
    assert p.returncode == 0, p.stderr
    assert not [n for n in os.listdir(run) if n.startswith(".")]
    rows = [json.loads(line) for line in open(os.path.join(run, "metrics.jsonl"))]
    assert [r["step"] for r in rows] == list(range(1, until + 1))
    threads = pyllama.num_threads()
    pyllama.set_num_threads(1)
    try:
        ref = make_trainer(world["data"], None, max_steps=100000)
        ref_losses = [ref.train_step()["loss"] for _ in range(until)]
    finally:
        pyllama.set_num_threads(threads)
    assert [r["loss"] for r in rows] == ref_losses
    print(f"\nkill -9: {kills} kills, {hit} left leftovers of an interrupted save/prune, "
          f"{until} steps, {time.perf_counter() - t0:.1f} s")
