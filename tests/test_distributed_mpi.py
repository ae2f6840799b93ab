"""Data-parallel training over real MPI ranks: ``mpiexec -n 2 python -m pyllama.cli train``
as a subprocess (with a timeout). Skipped, with the reason, when mpi4py or mpiexec
is missing (``pip install 'pyllama[dist]'`` brings both)."""
import json
import os
import shutil
import subprocess
import tempfile
import sys
import time

import numpy as np
import pytest

try:
    import mpi4py  # noqa: F401
except ImportError:
    mpi4py = None

MPIEXEC = shutil.which("mpiexec", path=os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", ""))
pytestmark = [
    pytest.mark.skipif(mpi4py is None, reason="mpi4py is not installed (pip install 'pyllama[dist]')"),
    pytest.mark.skipif(MPIEXEC is None, reason="no mpiexec on PATH (pip install 'pyllama[dist]' brings mpich's)"),
]

CLI = [sys.executable, "-m", "pyllama.cli", "train"]
# pyllama train with a fault injected from $FAULT_INJECT (run by absolute path: the cwd stays outside the tree)
FAULT_CLI = [sys.executable, os.path.join(os.path.dirname(os.path.abspath(__file__)), "fault_inject.py"), "train"]
TINY = ["--vocab-size", "64", "--hidden-size", "32", "--intermediate-size", "64", "--layers", "2", "--heads", "2",
        "--max-position-embeddings", "64", "--batch-size", "2", "--seq-len", "16", "--max-steps", "6",
        "--warmup-steps", "1", "--eval-interval", "3", "--eval-steps", "2", "--checkpoint-interval", "3",
        "--no-progress"]
TIMEOUT = 120


def _env(**extra):
    env = dict(os.environ)
    env["OMP_NUM_THREADS"] = "1"  # two ranks share the (possibly two) cores
    env.pop("FAULT_INJECT", None)
    env.update(extra)
    return env


def _run(cmd, env=None, timeout=TIMEOUT):
    t0 = time.monotonic()
    # cwd outside the source tree: `python -m` puts the cwd on sys.path, and the source
    # folder's pyllama/ (no compiled _core) must not shadow the installed package.
    p = subprocess.run(cmd, env=env or _env(), capture_output=True, text=True, timeout=timeout,
                       cwd=tempfile.gettempdir())
    return p, time.monotonic() - t0


def _mpi(n, args, env=None, timeout=TIMEOUT, cli=CLI):
    return _run([MPIEXEC, "-n", str(n), *cli, *args], env=env, timeout=timeout)


def _ok(p):
    assert p.returncode == 0, f"rc={p.returncode}\nstdout:\n{p.stdout}\nstderr:\n{p.stderr}"


def _losses(run_dir):
    return {r["step"]: r for r in map(json.loads, open(os.path.join(run_dir, "metrics.jsonl")))}


def _write_tokens(folder, ids):
    os.makedirs(folder, exist_ok=True)
    n = len(ids)
    for split, a in (("train", ids[: n * 9 // 10]), ("val", ids[n * 9 // 10:])):
        a.astype(np.uint16).tofile(os.path.join(folder, f"{split}.bin"))
        with open(os.path.join(folder, f"{split}.json"), "w") as f:
            json.dump({"format": "pyllama.tokens", "version": 1, "dtype": "uint16", "count": int(a.size),
                       "max_id": 63, "n_vocab": 64, "tokenizer": None, "split": split}, f)
    return str(folder)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return _write_tokens(tmp_path_factory.mktemp("tokens"), np.random.default_rng(0).integers(0, 64, 20_000))


def test_two_ranks_equal_one_rank_with_grad_accum_and_resume_across_rank_counts(tmp_path, data):
    one, two = str(tmp_path / "one"), str(tmp_path / "two")
    p, _ = _run([*CLI, "--data", data, *TINY, "--grad-accum-steps", "2", "--out-dir", one])
    _ok(p)
    p, _ = _mpi(2, ["--data", data, *TINY, "--grad-accum-steps", "1", "--out-dir", two])
    _ok(p)
    assert "on 2 ranks" in p.stderr and p.stdout.count("finished at step 6") == 1  # rank 0 reports, once
    a, b = _losses(one), _losses(two)
    assert sorted(a) == sorted(b) == [1, 2, 3, 4, 5, 6]
    for s in a:
        assert abs(a[s]["loss"] - b[s]["loss"]) < 1e-5, (s, a[s]["loss"], b[s]["loss"])
        assert a[s]["tokens"] == b[s]["tokens"] and b[s]["world_size"] == 2
    for s in (3, 6):
        assert abs(a[s]["val_loss"] - b[s]["val_loss"]) < 1e-5
    state = json.load(open(os.path.join(two, "step-6", "trainer_state.json")))
    assert state["world_size"] == 2 and state["train_config"]["grad_accum_steps"] == 1

    # resume the 2-rank checkpoint on 1 rank (grad_accum 2 chosen for it) and the 1-rank one on 2 ranks
    r1, r2 = str(tmp_path / "r1"), str(tmp_path / "r2")
    p, _ = _run([*CLI, "--resume", os.path.join(two, "step-3"), "--out-dir", r1, "--no-progress"])
    _ok(p)
    assert "grad_accum_steps=2 keeps 2 micro-batches" in p.stderr
    p, _ = _mpi(2, ["--resume", os.path.join(one, "step-3"), "--out-dir", r2, "--no-progress"])
    _ok(p)
    for run in (r1, r2):
        c = _losses(run)
        assert sorted(c) == [4, 5, 6]
        for s in c:
            assert abs(c[s]["loss"] - a[s]["loss"]) < 1e-5, (run, s)


TRAINER_SCRIPT = """
import json, sys, numpy as np, pyllama
cfg = pyllama.LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                          num_attention_heads=2, max_position_embeddings=64)
data = np.random.default_rng(0).integers(0, 64, 5000)
tc = pyllama.TrainConfig(batch_size=2, seq_len=16, grad_accum_steps=int(sys.argv[1]), max_steps=4, warmup_steps=1,
                         eval_interval=0, out_dir=None, dist_timeout_s=60)
t = pyllama.Trainer(pyllama.Llama(cfg, seed=0), tc, data, progress=False)
losses = [t.train_step()["loss"] for _ in range(4)]
with open(f"{sys.argv[2]}.{t.rank}.json", "w") as f:
    json.dump({"rank": t.rank, "world": t.world_size, "losses": losses,
               "threads": pyllama.num_threads(), "w": float(t.model.flat_params().sum())}, f)
"""


def test_trainer_api_under_mpiexec_finds_the_ranks(tmp_path):
    env = _env()
    env.pop("OMP_NUM_THREADS")  # each rank caps its threads at cores // ranks on the node
    p, _ = _run([sys.executable, "-c", TRAINER_SCRIPT, "2", str(tmp_path / "one")], env=env)
    _ok(p)
    ref = json.load(open(tmp_path / "one.0.json"))
    p, _ = _run([MPIEXEC, "-n", "2", sys.executable, "-c", TRAINER_SCRIPT, "1", str(tmp_path / "two")], env=env)
    _ok(p)
    rows = [json.load(open(tmp_path / f"two.{r}.json")) for r in (0, 1)]
    assert [(r["rank"], r["world"]) for r in rows] == [(0, 2), (1, 2)]
    cores = len(os.sched_getaffinity(0))
    assert all(r["threads"] <= max(1, cores // 2) for r in rows)
    assert rows[0]["w"] == rows[1]["w"]  # the same weights on every rank
    for r in rows:
        assert np.allclose(r["losses"], ref["losses"], rtol=0, atol=1e-5), (r["losses"], ref["losses"])


@pytest.mark.parametrize("ranks", [2, 3])
def test_zero1_shards_the_moments_and_matches_one_rank(tmp_path, data, ranks):
    from safetensors.numpy import load_file

    one, z = str(tmp_path / "one"), str(tmp_path / "zero")
    p, _ = _run([*CLI, "--data", data, *TINY, "--grad-accum-steps", str(ranks), "--out-dir", one])
    _ok(p)
    p, _ = _mpi(ranks, ["--data", data, *TINY, "--zero1", "--out-dir", z])
    _ok(p)
    a, b = _losses(one), _losses(z)
    for s in a:
        assert abs(a[s]["loss"] - b[s]["loss"]) < 1e-5 and abs(a[s]["grad_norm"] - b[s]["grad_norm"]) < 1e-4, s
    # the checkpoint holds the full moments (gathered from the shards) and the same weights
    for f in ("optimizer.safetensors", "model.safetensors"):
        x, y = load_file(os.path.join(one, "step-6", f)), load_file(os.path.join(z, "step-6", f))
        assert sorted(x) == sorted(y)
        for k in x:
            # (with 3 ranks the 1/3 scaling rounds differently; a misplaced block would be O(1) off)
            np.testing.assert_allclose(x[k], y[k], rtol=1e-2, atol=1e-3 * float(np.abs(x[k]).max()), err_msg=f"{f}:{k}")
    # and it resumes without sharding, on one rank
    r = str(tmp_path / "r")
    p, _ = _run([*CLI, "--resume", os.path.join(z, "step-3"), "--out-dir", r, "--no-progress"])
    _ok(p)
    c = _losses(r)
    assert all(abs(c[s]["loss"] - a[s]["loss"]) < 1e-5 for s in c) and sorted(c) == [4, 5, 6]


def test_a_dead_rank_ends_the_job_with_an_error_in_bounded_time(tmp_path, data):
    out = str(tmp_path / "run")
    p, dt = _mpi(2, ["--data", data, *TINY, "--out-dir", out], env=_env(FAULT_INJECT="die:1:2"), cli=FAULT_CLI)
    assert p.returncode != 0, p.stdout + p.stderr
    assert dt < 60
    assert "test fault: rank 1 die after step 2" in p.stderr
    assert "finished at step" not in p.stdout
    assert not os.path.exists(os.path.join(out, "step-6"))


def test_a_hung_rank_trips_the_watchdog(tmp_path, data):
    out = str(tmp_path / "run")
    p, dt = _mpi(2, ["--data", data, *TINY, "--out-dir", out, "--dist-timeout-s", "3"],
                 env=_env(FAULT_INJECT="hang:1:2"), cli=FAULT_CLI)
    assert p.returncode != 0, p.stdout + p.stderr
    assert dt < 60
    assert "rank 0/2: gradient all-reduce at step 3 did not complete within 3 s" in p.stderr, p.stderr
    assert "MPI_Abort" in p.stderr
    assert "finished at step" not in p.stdout


def test_ctrl_c_on_one_rank_stops_every_rank_after_the_same_step(tmp_path, data):
    out = str(tmp_path / "run")
    p, _ = _mpi(2, ["--data", data, *TINY, "--out-dir", out], env=_env(FAULT_INJECT="sigint:1:2"), cli=FAULT_CLI)
    _ok(p)
    assert "stopped at step 3" in p.stdout  # the vote rides on step 3's all-reduce
    assert os.path.isdir(os.path.join(out, "step-3")) and not os.path.exists(os.path.join(out, "step-6"))
    assert sorted(_losses(out)) == [1, 2, 3]


@pytest.mark.parametrize("differ, message", [
    (["--lr", "0.002"], "disagree on TrainConfig"),
    (["--model-seed", "1"], "disagree on weights"),
    ("data", "disagree on training data"),
])
def test_ranks_that_disagree_are_reported(tmp_path, data, differ, message):
    out = str(tmp_path / "run")
    if differ == "data":
        other = _write_tokens(tmp_path / "other", np.random.default_rng(1).integers(0, 64, 20_000))
        differ = []
    else:
        other = data
    rank0 = [*CLI, "--data", data, *TINY, "--out-dir", out]
    rank1 = [*CLI, "--data", other, *TINY, "--out-dir", out, *differ]
    p, dt = _run([MPIEXEC, "-n", "1", *rank0, ":", "-n", "1", *rank1])
    assert p.returncode != 0
    assert message in p.stderr, p.stderr
    assert "start-up check at step 0" in p.stderr and dt < 60
