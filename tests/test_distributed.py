"""pyllama.distributed without MPI: the single-process backend, the launcher
bootstrap, the consistency check, and the trainer's data-parallel bookkeeping
through a stand-in communicator (tests/test_distributed_mpi.py runs real ranks)."""
import json
import os
import sys

import numpy as np
import pytest

import pyllama
from pyllama import distributed as dist
from pyllama.data import DataLoader, TokenData

from helpers import tiny_config


# ---------------------------------------------------------------------- single process

def test_single_process_collectives_are_identities():
    c = dist.SingleProcess()
    assert (c.rank, c.world_size, c.is_main) == (0, 1, True)
    g = np.arange(5, dtype=np.float32)
    assert c.allreduce_mean_(g) is g and g.tolist() == [0, 1, 2, 3, 4]
    assert c.broadcast({"a": 1}) == {"a": 1}
    assert c.allgather_object("x") == ["x"]
    assert c.barrier() is None
    with pytest.raises(ValueError, match="root 1"):
        c.broadcast(1, root=1)


def test_init_picks_single_process_without_a_launcher(monkeypatch):
    for var in ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "PMIX_SIZE", "MV2_COMM_WORLD_SIZE", "SLURM_NTASKS",
                "WORLD_SIZE"):
        monkeypatch.delenv(var, raising=False)
    assert isinstance(dist.init(), dist.SingleProcess)
    assert dist.launched_world_size() == 1
    with pytest.raises(ValueError, match="backend must be"):
        dist.init("gloo")


def test_mpi_launch_without_mpi4py_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("PMI_SIZE", "2")
    monkeypatch.setenv("PMI_RANK", "0")
    monkeypatch.setitem(sys.modules, "mpi4py", None)  # import fails
    assert dist.launched_world_size() == 2
    with pytest.raises(RuntimeError, match=r"one of 2 MPI ranks.*pyllama\[dist\]"):
        dist.init()


def test_torchrun_style_launch_on_cpu_is_refused(monkeypatch):
    for var in ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "PMIX_SIZE", "MV2_COMM_WORLD_SIZE", "SLURM_NTASKS"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", "29500")
    with pytest.raises(RuntimeError, match="mpiexec"):
        dist.init()
    if not pyllama.build_info()["cuda_available"]:  # GPU machines: tests/test_distributed_nccl.py
        with pytest.raises(RuntimeError, match=r"NCCL backend needs"):
            dist.init("nccl")


def test_bootstrap_from_env_parses_and_names_bad_variables():
    b = dist.bootstrap_from_env({"RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "1",
                                 "MASTER_ADDR": "node0", "MASTER_PORT": "29500"})
    assert (b.rank, b.world_size, b.local_rank, b.master_addr, b.master_port) == (3, 4, 1, "node0", 29500)
    assert dist.bootstrap_from_env({"WORLD_SIZE": "1", "RANK": "0"}).world_size == 1
    assert dist.bootstrap_from_env({}) is None
    with pytest.raises(ValueError, match="RANK must be set"):
        dist.bootstrap_from_env({"WORLD_SIZE": "2"})
    with pytest.raises(ValueError, match="RANK=2 is out of range"):
        dist.bootstrap_from_env({"WORLD_SIZE": "2", "RANK": "2", "MASTER_ADDR": "h", "MASTER_PORT": "1"})
    with pytest.raises(ValueError, match="WORLD_SIZE must be an integer"):
        dist.bootstrap_from_env({"WORLD_SIZE": "two", "RANK": "0"})
    with pytest.raises(ValueError, match="MASTER_ADDR and MASTER_PORT"):
        dist.bootstrap_from_env({"WORLD_SIZE": "2", "RANK": "0"})
    with pytest.raises(ValueError, match="MASTER_PORT=70000"):
        dist.bootstrap_from_env({"WORLD_SIZE": "2", "RANK": "0", "MASTER_ADDR": "h", "MASTER_PORT": "70000"})


def test_default_threads_per_rank():
    class Node(dist.SingleProcess):
        local_size = 2

    assert dist.default_threads_per_rank(Node(), cpus=2) == 1
    assert dist.default_threads_per_rank(Node(), cpus=16) == 8
    assert dist.default_threads_per_rank(dist.SingleProcess(), cpus=1) == 1


# ---------------------------------------------------------------------- consistency check

class Gathered(dist.SingleProcess):
    """Pretends to be rank 0 of len(others)+1 ranks whose allgather returns `others` after its own."""

    def __init__(self, others):
        self.others = others
        self.world_size = len(others) + 1

    def allgather_object(self, obj, *, what="all-gather", step=None):
        return [obj] + [o if o is not None else obj for o in self.others]


def test_check_consistent_names_what_differs_and_where():
    items = {"TrainConfig": {"lr": 1e-3}, "weights": np.ones(3, np.float32)}
    dist.check_consistent(Gathered([None, None]), items)  # all agree
    other = {"TrainConfig": {"lr": 2e-3}, "weights": dist.fingerprint(np.ones(3, np.float32))}
    with pytest.raises(dist.DistributedError, match=r"step 5: the 3 ranks disagree on TrainConfig "
                                                    r"\(rank 0 differs from rank 2: lr=0.001 vs 0.002\)"):
        dist.check_consistent(Gathered([None, other]), items, step=5)
    other = {"TrainConfig": {"lr": 1e-3}, "weights": dist.fingerprint(np.zeros(3, np.float32))}
    with pytest.raises(dist.DistributedError, match=r"disagree on weights \(rank 0 differs from ranks 1, 2\)"):
        dist.check_consistent(Gathered([other, other]), items)
    assert dist.fingerprint(np.ones(3, np.float32)) != dist.fingerprint(np.ones(3, np.float64))


def test_data_fingerprint_and_skip_batch():
    a = TokenData.from_array(np.arange(100_000) % 50)
    b = TokenData.from_array(np.r_[np.arange(99_999) % 50, 7])
    assert a.fingerprint() == TokenData.from_array(np.arange(100_000) % 50).fingerprint()
    assert a.fingerprint() != b.fingerprint()
    for mode in ("random", "sequential"):
        x, y = DataLoader(a, 3, 8, seed=4, mode=mode), DataLoader(a, 3, 8, seed=4, mode=mode)
        x.skip_batch()
        y.next_batch()
        assert x.state_dict() == y.state_dict()
        assert (x.next_batch() == y.next_batch()).all()


# ---------------------------------------------------------------------- trainer bookkeeping

class Mirror(dist.SingleProcess):
    """A stand-in for `world_size` ranks that all hold this rank's data: sums multiply by world_size."""

    backend = "mirror"

    def __init__(self, rank, world_size):
        self.rank, self.world_size = rank, world_size
        self.calls = []

    def allreduce_many_sum_(self, bufs, *, what="all-reduce", step=None):
        self.calls.append((what, step, [b.size for b in bufs]))
        for b in bufs:
            b *= self.world_size

    def allreduce_sum_(self, buf, *, what="all-reduce", step=None):
        self.allreduce_many_sum_([buf], what=what, step=step)
        return buf

    def allgather_object(self, obj, *, what="all-gather", step=None):
        self.calls.append((what, step, None))
        return [obj] * self.world_size

    def barrier(self, *, what="barrier", step=None, timeout_s=None):
        self.calls.append((what, step, None))


def _data(n=6000):
    return np.random.default_rng(0).integers(0, 64, n)


def _tc(tmp_path, **kw):
    args = dict(batch_size=2, seq_len=16, grad_accum_steps=1, max_steps=4, lr=3e-3, warmup_steps=1,
                eval_interval=2, eval_steps=2, out_dir=str(tmp_path), seed=3)
    args.update(kw)
    return pyllama.TrainConfig(**args)


def test_rank_r_runs_micro_batches_r_of_the_global_stream(tmp_path):
    # one step on "rank 1 of 2" (accum 1) runs the second micro-batch a single rank with accum 2 draws
    cfg = tiny_config(vocab_size=64, num_hidden_layers=1)
    one = pyllama.Trainer(pyllama.Llama(cfg, seed=0), _tc(tmp_path / "a", grad_accum_steps=2), _data(),
                          progress=False)
    windows = [one.loader.next_batch() for _ in range(2)]
    m = pyllama.Llama(cfg, seed=0)
    ids = np.ascontiguousarray(windows[1][:, :16])
    want = m(ids, labels=windows[1], return_logits=False).loss  # the whole window as labels, as the Trainer
    comm = Mirror(1, 2)
    t = pyllama.Trainer(pyllama.Llama(cfg, seed=0), _tc(tmp_path / "b"), _data(), progress=False, comm=comm)
    r = t.train_step()
    assert r["loss"] == pytest.approx(want, abs=1e-6)  # the mirror's "mean over ranks" is its own loss
    assert t.loader.batches == 2 and r["tokens"] == 2 * 2 * 16 and r["world_size"] == 2 and r["comm_s"] >= 0
    grads = [c for c in comm.calls if c[0] == "gradient all-reduce"]
    assert grads == [("gradient all-reduce", 1, [m.num_parameters(), 4])]  # one flat all-reduce (+ 4 numbers)
    assert comm.calls[0][0] == "start-up check"


def test_only_rank_0_writes(tmp_path):
    cfg = tiny_config(vocab_size=64, num_hidden_layers=1)
    for rank in (1, 0):
        out = tmp_path / f"r{rank}"
        t = pyllama.Trainer(pyllama.Llama(cfg, seed=0), _tc(out), _data(), _data(800), progress=False,
                            comm=Mirror(rank, 2))
        r = t.train()
        assert r["step"] == 4
        if rank == 1:
            assert not out.exists() and r["val_loss"] is None
        else:
            rows = [json.loads(line) for line in open(out / "metrics.jsonl")]
            assert [row["step"] for row in rows] == [1, 2, 3, 4] and "val_loss" in rows[1]
            assert all(row["world_size"] == 2 for row in rows)
            state = json.load(open(out / "step-4" / "trainer_state.json"))
            assert state["world_size"] == 2 and state["data"]["batches"] == 8


def test_resume_needs_the_same_micro_batches_per_step(tmp_path):
    cfg = tiny_config(vocab_size=64, num_hidden_layers=1)
    t = pyllama.Trainer(pyllama.Llama(cfg, seed=0), _tc(tmp_path / "run", grad_accum_steps=2, max_steps=2), _data(),
                        progress=False)
    t.train()
    ckpt = str(tmp_path / "run" / "latest")
    # 2 ranks x accum 1 = 2 micro-batches: exact, accepted
    ok = pyllama.Trainer(pyllama.Llama(cfg, seed=1), _tc(tmp_path / "x", max_steps=4), _data(), progress=False,
                         comm=Mirror(0, 2))
    ok.resume(ckpt)
    assert ok.step == 2
    np.testing.assert_array_equal(ok.model.flat_params(), t.model.flat_params())
    bad = pyllama.Trainer(pyllama.Llama(cfg, seed=1), _tc(tmp_path / "y", grad_accum_steps=2), _data(),
                          progress=False, comm=Mirror(0, 2))
    with pytest.raises(ValueError, match=r"1 rank\(s\) x grad_accum_steps=2 .* 2 rank\(s\) x grad_accum_steps=2; "
                                         r"use grad_accum_steps=1"):
        bad.resume(ckpt)


def test_zero1_on_cuda_is_not_implemented(tmp_path):
    cfg = tiny_config(vocab_size=64, num_hidden_layers=1)
    with pytest.raises(NotImplementedError, match="zero1 is not implemented on GPUs"):
        pyllama.Trainer(pyllama.Llama(cfg), _tc(tmp_path, device="cuda", zero1=True), _data(), comm=Mirror(0, 2))


@pytest.mark.skipif(pyllama.build_info()["cuda_available"], reason="a GPU is usable: NCCL would really start")
def test_data_parallel_on_cuda_without_gpu_is_a_clear_error(tmp_path):
    """A host communicator with 2 ranks and device='cuda': the trainer wraps it in NCCL, which needs a GPU."""
    cfg = tiny_config(vocab_size=64, num_hidden_layers=1)
    with pytest.raises(RuntimeError, match="NCCL backend needs"):
        pyllama.Trainer(pyllama.Llama(cfg), _tc(tmp_path, device="cuda"), _data(), comm=Mirror(0, 2))


def test_dist_timeout_is_validated():
    with pytest.raises(ValueError, match="dist_timeout_s"):
        pyllama.TrainConfig(dist_timeout_s=-1)


@pytest.mark.parametrize("module", ["", ".base", ".mpi", ".tcp", ".nccl", ".launch"])
def test_docstring_examples(module):
    import doctest
    import importlib

    mod = importlib.import_module("pyllama.distributed" + module)
    assert doctest.testmod(mod, optionflags=doctest.ELLIPSIS).failed == 0
