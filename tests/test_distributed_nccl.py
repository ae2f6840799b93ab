"""The NCCL backend and its TCP rendezvous (docs/DISTRIBUTED.md).

Without a GPU (runs everywhere): the TCP rendezvous with 2-3 real processes
(broadcast, barrier, all-gather, sums, the NCCL unique-id exchange with fake bytes,
the trainer's consistency check through it, 16 MB payloads, beside torchrun's store),
a missing rank, rank 0 absent, a dead rank, a hung rank, mismatched collectives and
shapes, strangers, duplicate ranks, bad addresses and ports; the NCCL library search
and its errors, and the loader against a stand-in libnccl compiled here;
``init("nccl")``, the Trainer and a 2-rank NCCLCommunicator without a GPU; the
trainer's NCCL step through a stand-in communicator.

With a GPU (marked ``cuda`` and ``nccl``, skipped with the reason elsewhere): NCCL
all-reduce of known buffers and of a model's gradients with a world of 1 (sum and
average, non-blocking and blocking communicators), the parameter broadcast, bad ids
and devices, a 1-rank NCCL Trainer run (env bootstrap, WORLD_SIZE=1) against the plain
cuda run, two ranks on the one GPU (refused by NCCL: clear errors; with distinct
NCCL_HOSTIDs: the Trainer's 2 x 1 equals 1 x 2, and a hung peer is aborted at the
deadline), and the creation deadline.
"""
import json
import os
import socket
import subprocess
import sys
import tempfile
import textwrap
import time

import numpy as np
import pytest

import pyllama
from pyllama import distributed as dist

from helpers import EMULATED_GPU, requires_gpu, tiny_config

INFO = pyllama.build_info()


def gpu(fn):
    """GPU tests: marked ``cuda`` and ``nccl`` (tests/gpu/run.sh runs them in their own step)."""
    return pytest.mark.nccl(pytest.mark.cuda(requires_gpu(fn)))


LAUNCH_VARS = ("PMI_SIZE", "PMI_RANK", "OMPI_COMM_WORLD_SIZE", "PMIX_SIZE", "MV2_COMM_WORLD_SIZE", "SLURM_NTASKS",
               "WORLD_SIZE", "RANK", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT",
               "TORCHELASTIC_USE_AGENT_STORE", "PYLLAMA_RDV_PORT", "PYLLAMA_NCCL_BLOCKING")


def free_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


# A rank of a rendezvous test: runs SCENARIO, prints one JSON line (or the error).
WORKER = textwrap.dedent(r"""
    import json, os, sys, time
    import numpy as np
    from pyllama import distributed as dist

    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    scenario = os.environ["SCENARIO"]
    out = {"rank": rank}
    try:
        t0 = time.monotonic()
        if os.environ.get("VIA_INIT_HOST"):  # as the Trainer does under torchrun-style variables
            c = dist.init_host(timeout_s=float(os.environ["TIMEOUT"]))
            assert isinstance(c, dist.TCPRendezvous), c
            out["port"] = c.port
        else:
            c = dist.TCPRendezvous(rank, world, os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]),
                                   timeout_s=float(os.environ["TIMEOUT"]))
        if scenario == "ops":
            out["bcast"] = c.broadcast({"from": rank, "x": [1, 2]} if rank == 0 else None)
            out["bcast_last"] = c.broadcast(f"r{rank}", root=world - 1)
            c.barrier()
            out["gather"] = c.allgather_object({"rank": rank, "sq": rank * rank})
            a = np.array([rank + 1.0, 10.0 * rank], np.float64)
            c.allreduce_sum_(a)
            out["sum"] = a.tolist()
            b = np.full(3, rank + 1, np.float32)
            c.allreduce_mean_(b)
            out["mean"] = b.tolist()
            # the NCCL unique-id exchange: 128 bytes from rank 0, as NCCLCommunicator sends them
            uid = bytes(range(128)) if rank == 0 else None
            msg = c.broadcast(("ok", uid) if rank == 0 else None, what="NCCL unique-id broadcast")
            out["uid_ok"] = msg[0] == "ok" and msg[1] == bytes(range(128))
            # payloads of many TCP segments (16 MB) in both directions
            big = c.allgather_object(np.full(2_000_000, rank, np.float64))
            out["big_ok"] = [float(b.sum()) for b in big] == [2e6 * r for r in range(world)]
            # the trainer's consistency check, through the rendezvous
            dist.check_consistent(c, {"cfg": {"lr": 0.1}, "w": np.ones(3)})
            try:
                dist.check_consistent(c, {"cfg": {"lr": 0.1 * (1 + rank)}})
                out["mismatch"] = None
            except dist.DistributedError as e:
                out["mismatch"] = str(e)
            c.barrier()
        elif scenario == "die":  # rank 1 leaves without a word after the first barrier
            c.barrier()
            if rank == 1:
                os._exit(3)
            c.barrier(what="second barrier", step=7)
        elif scenario == "hang":  # rank 1 stops responding
            c.barrier()
            if rank == 1:
                time.sleep(6)  # past rank 0's 2 s deadline
            c.barrier(what="second barrier", step=7)
        elif scenario == "nccl":  # the NCCL communicator over this rendezvous (GPU LOCAL_RANK = rank)
            n = dist.NCCLCommunicator(c, timeout_s=float(os.environ["TIMEOUT"]))
            a = np.array([rank + 1.0])
            n.allreduce_sum_(a)
            out["sum"] = a.tolist()
            n.close()
        elif scenario == "shapes":  # the ranks pass arrays of different lengths to a sum
            c.allreduce_sum_(np.zeros(2 + rank))
        elif scenario == "mismatch":  # rank 1 calls another collective
            if rank == 1:
                c.allgather_object(1)
            else:
                c.barrier()
        out["ok"] = True
    except Exception as e:
        out["error"] = f"{type(e).__name__}: {e}"
    out["seconds"] = time.monotonic() - t0
    print(json.dumps(out), flush=True)
""")


def run_ranks(tmp_path, scenario, world, timeout=10.0, ranks=None, port=None, addr="127.0.0.1", wait=60,
              extra_env=None):
    """Start the given ranks (default all) as processes; returns their JSON results by rank."""
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    port = free_port() if port is None else port
    procs = {}
    for r in (range(world) if ranks is None else ranks):
        env = {k: v for k, v in os.environ.items() if k not in LAUNCH_VARS}
        env.update(RANK=str(r), WORLD_SIZE=str(world), MASTER_ADDR=addr, MASTER_PORT=str(port),
                   SCENARIO=scenario, TIMEOUT=str(timeout), OMP_NUM_THREADS="1", **(extra_env or {}))
        procs[r] = subprocess.Popen([sys.executable, str(script)], env=env, stdout=subprocess.PIPE,
                                    stderr=subprocess.PIPE, text=True)
    results = {}
    try:
        for r, p in procs.items():
            out, err = p.communicate(timeout=wait)
            lines = [ln for ln in out.splitlines() if ln.startswith("{")]
            results[r] = json.loads(lines[-1]) if lines else {"exit": p.returncode, "stderr": err}
            results[r]["exit"] = p.returncode
    finally:
        for p in procs.values():
            if p.poll() is None:
                p.kill()
                p.wait()
    return results


@pytest.mark.parametrize("world", [2, 3])
def test_rendezvous_collectives(tmp_path, world):
    res = run_ranks(tmp_path, "ops", world)
    for r in range(world):
        o = res[r]
        assert o.get("ok"), o
        assert o["bcast"] == {"from": 0, "x": [1, 2]}
        assert o["bcast_last"] == f"r{world - 1}"
        assert o["gather"] == [{"rank": i, "sq": i * i} for i in range(world)]
        assert o["sum"] == [sum(i + 1.0 for i in range(world)), sum(10.0 * i for i in range(world))]
        assert o["mean"] == pytest.approx([sum(i + 1 for i in range(world)) / world] * 3)
        assert o["uid_ok"] is True and o["big_ok"] is True
        assert o["mismatch"] is not None and "disagree on cfg" in o["mismatch"] and "lr=0.1 vs 0.2" in o["mismatch"]


def _adjacent_free_ports():
    """A socket bound to a free port p on 127.0.0.1 such that p + 1 is free too."""
    for _ in range(50):
        a = socket.socket()
        a.bind(("127.0.0.1", 0))
        p = a.getsockname()[1]
        b = socket.socket()
        try:
            b.bind(("127.0.0.1", p + 1))
            return a, p
        except OSError:
            a.close()
        finally:
            b.close()
    pytest.skip("no two adjacent free ports on 127.0.0.1")


def test_rendezvous_beside_torchruns_agent_store(tmp_path):
    """Under torchrun (TORCHELASTIC_USE_AGENT_STORE=True) its own store holds MASTER_PORT: the
    rendezvous takes MASTER_PORT + 1 (init_host, as the Trainer), or PYLLAMA_RDV_PORT."""
    agent, p = _adjacent_free_ports()  # agent stands in for torchrun's store on MASTER_PORT = p
    agent.listen(1)
    try:
        res = run_ranks(tmp_path, "ops", 2, port=p, extra_env={"VIA_INIT_HOST": "1",
                                                             "TORCHELASTIC_USE_AGENT_STORE": "True"})
        for r in (0, 1):
            assert res[r].get("ok") and res[r]["port"] == p + 1, res[r]
        # without the variable, rank 0 finds MASTER_PORT taken and says how to choose another port
        res = run_ranks(tmp_path, "ops", 2, port=p, timeout=3.0, extra_env={"VIA_INIT_HOST": "1"})
        assert "cannot listen on 127.0.0.1:" in res[0]["error"] and "PYLLAMA_RDV_PORT" in res[0]["error"], res[0]
        q = free_port()
        res = run_ranks(tmp_path, "ops", 2, port=p, extra_env={"VIA_INIT_HOST": "1", "PYLLAMA_RDV_PORT": str(q),
                                                             "TORCHELASTIC_USE_AGENT_STORE": "True"})
        for r in (0, 1):
            assert res[r].get("ok") and res[r]["port"] == q, res[r]
    finally:
        agent.close()
    with pytest.raises(ValueError, match="PYLLAMA_RDV_PORT must be an integer"):
        dist.rendezvous_port(dist.Bootstrap(0, 2, 0, "h", 29500, "env"), {"PYLLAMA_RDV_PORT": "x"})
    with pytest.raises(ValueError, match="MASTER_PORT \\+ 1"):
        dist.rendezvous_port(dist.Bootstrap(0, 2, 0, "h", 65535, "env"), {"TORCHELASTIC_USE_AGENT_STORE": "True"})


def test_rendezvous_missing_rank_times_out_clearly(tmp_path):
    """Ranks 0 and 1 of 3 start, rank 2 never does: both fail within the deadline, naming the missing rank."""
    t0 = time.monotonic()
    res = run_ranks(tmp_path, "ops", 3, timeout=2.0, ranks=[0, 1], wait=30)
    assert time.monotonic() - t0 < 25
    assert "rank(s) 2 of 3 did not connect within 2 s" in res[0]["error"], res[0]
    assert res[0]["seconds"] < 10
    # rank 1 hears of it when rank 0 gives up (its connection closes), or at its own deadline
    assert "DistributedError" in res[1]["error"] and "rank 0" in res[1]["error"], res[1]
    assert res[1]["seconds"] < 10


def test_rendezvous_rank0_absent(tmp_path):
    res = run_ranks(tmp_path, "ops", 2, timeout=1.5, ranks=[1], wait=30)
    e = res[1]["error"]
    assert "could not connect to rank 0 at 127.0.0.1:" in e and "within 1.5 s" in e and "MASTER_PORT" in e, e
    assert res[1]["seconds"] < 8


def test_rendezvous_dead_rank_fails_the_others_at_once(tmp_path):
    res = run_ranks(tmp_path, "die", 3, timeout=30.0)
    assert res[1]["exit"] == 3
    for r in (0, 2):
        e = res[r]["error"]
        assert "second barrier at step 7" in e and "closed its connection" in e, e
        assert res[r]["seconds"] < 15  # not the 30 s deadline: the closed socket is noticed


def test_rendezvous_hung_rank_times_out(tmp_path):
    res = run_ranks(tmp_path, "hang", 2, timeout=2.0, wait=90)
    e = res[0]["error"]
    assert "second barrier at step 7 did not complete within 2 s" in e and "rank 1 did not take part" in e, e
    assert res[0]["seconds"] < 10


def test_rendezvous_mismatched_collectives(tmp_path):
    res = run_ranks(tmp_path, "mismatch", 2, timeout=10.0)
    for r in (0, 1):
        assert "different collectives" in res[r]["error"], res[r]


def test_nccl_start_failure_reaches_every_rank(tmp_path):
    """NCCLCommunicator over a 2-rank rendezvous: a rank that cannot start NCCL (no GPU here;
    on a one-GPU machine rank 1's GPU 1 does not exist) fails every rank at once, each naming
    the ranks and why; with two GPUs it starts and sums."""
    t0 = time.monotonic()
    res = run_ranks(tmp_path, "nccl", 2, timeout=20.0)
    assert time.monotonic() - t0 < 20
    for r in (0, 1):
        o = res[r]
        if o.get("ok"):
            assert o["sum"] == [3.0], o
            continue
        e = o["error"]
        assert e.startswith("DistributedError") and "NCCL cannot start" in e and "rank 1: " in e, o
        if not INFO["cuda_available"]:
            assert "rank 0: " in e and "needs" in e, o


def test_rendezvous_sum_of_different_shapes(tmp_path):
    res = run_ranks(tmp_path, "shapes", 2, timeout=10.0)
    for r in (0, 1):
        assert "different dtypes/lengths" in res[r]["error"], res[r]


def test_trainer_refuses_a_torchrun_style_cpu_run(tmp_path):
    """Torchrun-style ranks (the TCP rendezvous) train on GPUs only; the CPU gets a pointer to mpiexec."""
    from test_train import corpus, make_config

    class TwoRanks(dist.SingleProcess):
        backend, world_size = "tcp", 2

    with pytest.raises(ValueError, match="trains on GPUs.*mpiexec"):
        pyllama.Trainer(pyllama.Llama(tiny_config()), make_config(), corpus(), progress=False, comm=TwoRanks())


def test_rendezvous_bad_address_and_port():
    with pytest.raises(dist.DistributedError, match="MASTER_ADDR 'no-such-host.invalid' cannot be resolved"):
        dist.TCPRendezvous(0, 2, "no-such-host.invalid", 29500, timeout_s=2)
    with pytest.raises(dist.DistributedError, match="cannot be resolved"):
        dist.TCPRendezvous(1, 2, "no-such-host.invalid", 29500, timeout_s=2)
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen(1)
    port = busy.getsockname()[1]
    try:  # the port is taken (without SO_REUSEADDR on both sides a second listen fails)
        with pytest.raises(dist.DistributedError, match=rf"rank 0 cannot listen on 127.0.0.1:{port}.*a free one.*PYLLAMA_RDV_PORT"):
            dist.TCPRendezvous(0, 2, "127.0.0.1", port, timeout_s=2)
    finally:
        busy.close()
    # an address that is not this host's
    with pytest.raises(dist.DistributedError, match="cannot listen on 192.0.2.1"):
        dist.TCPRendezvous(0, 2, "192.0.2.1", free_port(), timeout_s=2)
    for port in (0, 70000, "29500"):
        with pytest.raises(ValueError, match="port must be an int"):
            dist.TCPRendezvous(0, 2, "127.0.0.1", port, timeout_s=2)
    with pytest.raises(ValueError, match="MASTER_ADDR and MASTER_PORT"):
        dist.TCPRendezvous(1, 2, None, None)
    with pytest.raises(ValueError, match="0 <= rank < world_size"):
        dist.TCPRendezvous(2, 2, "127.0.0.1", 29500)


def test_rendezvous_world_of_one_opens_no_socket():
    c = dist.TCPRendezvous(0, 1, None, None, timeout_s=1)
    assert c.broadcast(5) == 5 and c.allgather_object("a") == ["a"] and c.barrier() is None
    a = np.ones(2)
    assert c.allreduce_sum_(a) is a and a.tolist() == [1, 1]


def test_rendezvous_ignores_strangers_and_rejects_a_duplicate_rank(tmp_path):
    """A connection that does not speak the protocol is dropped; a second rank 1 is an error."""
    import threading

    port = free_port()
    result = {}

    def rank0():
        try:
            dist.TCPRendezvous(0, 2, "127.0.0.1", port, timeout_s=5)
            result["r0"] = "ok"
        except dist.DistributedError as e:
            result["r0"] = str(e)

    t = threading.Thread(target=rank0)
    t.start()
    deadline = time.monotonic() + 5
    while True:
        try:
            junk = socket.create_connection(("127.0.0.1", port), timeout=1)
            break
        except OSError:
            assert time.monotonic() < deadline
            time.sleep(0.05)
    junk.sendall(b"GET / HTTP/1.0\r\n\r\n")
    junk.close()
    c1 = dist.TCPRendezvous(1, 2, "127.0.0.1", port, timeout_s=5)  # the real rank 1 still gets in
    t.join(10)
    assert result["r0"] == "ok"
    c1.close()

    # two processes claim rank 1: rank 0 refuses clearly
    port = free_port()
    script_env = {k: v for k, v in os.environ.items() if k not in LAUNCH_VARS}
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    procs = []
    for r in (0, 1, 1):
        env = dict(script_env, RANK=str(r), WORLD_SIZE="3", MASTER_ADDR="127.0.0.1",
                   MASTER_PORT=str(port), SCENARIO="ops", TIMEOUT="5")
        procs.append(subprocess.Popen([sys.executable, str(script)], env=env, stdout=subprocess.PIPE,
                                      stderr=subprocess.PIPE, text=True))
    outs = [json.loads(p.communicate(timeout=30)[0].strip().splitlines()[-1]) for p in procs]
    assert "two processes connected as rank 1" in outs[0]["error"], outs[0]
    assert any("two processes connected as rank 1" in o.get("error", "") for o in outs[1:]), outs


def test_rendezvous_world_size_mismatch(tmp_path):
    port = free_port()
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    base = {k: v for k, v in os.environ.items() if k not in LAUNCH_VARS}
    procs = [subprocess.Popen([sys.executable, str(script)], text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              env=dict(base, RANK=str(r), WORLD_SIZE=str(w), MASTER_ADDR="127.0.0.1",
                                       MASTER_PORT=str(port), SCENARIO="ops", TIMEOUT="5"))
             for r, w in ((0, 2), (1, 3))]
    outs = [json.loads(p.communicate(timeout=30)[0].strip().splitlines()[-1]) for p in procs]
    assert "rank 1 has WORLD_SIZE=3, rank 0 has 2" in outs[0]["error"], outs[0]
    assert "WORLD_SIZE=3" in outs[1]["error"], outs[1]


# ---------------------------------------------------------------------- the NCCL library

def test_nccl_library_candidates(monkeypatch):
    monkeypatch.setenv("PYLLAMA_NCCL_LIBRARY", "/opt/x/libnccl.so.2")
    assert dist.nccl_library_candidates() == ["/opt/x/libnccl.so.2"]
    monkeypatch.delenv("PYLLAMA_NCCL_LIBRARY")
    c = dist.nccl_library_candidates()
    assert c[-1] == "libnccl.so.2"
    assert all(p.endswith("libnccl.so.2") for p in c)


@pytest.mark.skipif(not INFO["cuda"], reason="built without the CUDA backend (no NCCL support to load)")
def test_nccl_library_not_found_is_a_clear_error(tmp_path):
    """In a fresh process (a library, once loaded, stays loaded)."""
    code = textwrap.dedent("""
        from pyllama import distributed as dist
        try:
            dist.load_nccl()
            print("LOADED")
        except RuntimeError as e:
            print(e)
    """)
    for target, expect in (("/nonexistent/libnccl.so.2", "cannot open shared object file"),
                           ("/lib/x86_64-linux-gnu/libc.so.6" if os.path.exists("/lib/x86_64-linux-gnu/libc.so.6")
                            else None, "does not export ncclGetVersion")):
        if target is None:
            continue
        env = dict(os.environ, PYLLAMA_NCCL_LIBRARY=target)
        # cwd: not the source tree, whose pyllama/ (no built _core) would shadow the installed one
        out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60,
                             cwd=str(tmp_path))
        msg = out.stdout
        assert "LOADED" not in msg, msg
        assert target in msg and expect in msg, msg
        assert "pip install nvidia-nccl-cu13" in msg and "PYLLAMA_NCCL_LIBRARY" in msg, msg
        assert "only that path was tried" in msg, msg


# A stand-in libnccl: the functions pyllama resolves, with a version and an id it can check.
FAKE_NCCL = r"""
typedef struct { char internal[128]; } Id;
int ncclGetVersion(int* v) { *v = VERSION; return 0; }
int ncclGetUniqueId(Id* id) { for (int i = 0; i < 128; i++) id->internal[i] = (char)(255 - i); return 0; }
int ncclCommInitRank(void** c, int n, Id id, int r) { return 5; }
int ncclCommInitRankConfig(void** c, int n, Id id, int r, void* cfg) { return 5; }
int ncclCommDestroy(void* c) { return 0; }
int ncclCommAbort(void* c) { return 0; }
int ncclCommGetAsyncError(void* c, int* e) { *e = 0; return 0; }
const char* ncclGetErrorString(int r) { return "fake"; }
int ncclAllReduce(const void* s, void* d, unsigned long n, int t, int op, void* c, void* st) { return 5; }
int ncclBroadcast(const void* s, void* d, unsigned long n, int t, int root, void* c, void* st) { return 5; }
int ncclGroupStart(void) { return 0; }
int ncclGroupEnd(void) { return 0; }
"""


def _fake_nccl(tmp_path, version):
    import shutil

    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        pytest.skip("no C compiler to build the stand-in libnccl")
    src = tmp_path / "fake_nccl.c"
    src.write_text(FAKE_NCCL)
    lib = tmp_path / f"libnccl-fake-{version}.so"
    subprocess.run([cc, "-shared", "-fPIC", f"-DVERSION={version}", "-o", str(lib), str(src)], check=True,
                   capture_output=True, timeout=60)
    return str(lib)


@pytest.mark.skipif(not INFO["cuda"], reason="built without the CUDA backend (no NCCL support to load)")
def test_nccl_loader_with_a_stand_in_library(tmp_path):
    """The loader's success path and version check, without a GPU: a stand-in libnccl
    built here. In fresh processes (a library, once loaded, stays loaded)."""
    code = textwrap.dedent("""
        import json
        from pyllama import _core, distributed as dist
        out = {}
        try:
            out["path"] = dist.load_nccl()
            out["version"] = _core.nccl_version()
            out["again"] = dist.load_nccl()
            uid = _core.nccl_unique_id()
            out["uid_ok"] = uid == bytes(255 - i for i in range(128))
            try:
                _core.NcclComm(uid, 0, 1, 0, 5.0)
            except Exception as e:
                out["comm_error"] = f"{type(e).__name__}: {e}"
        except Exception as e:
            out["error"] = f"{type(e).__name__}: {e}"
        print(json.dumps(out))
    """)

    def run(lib):
        env = dict(os.environ, PYLLAMA_NCCL_LIBRARY=lib)
        p = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60,
                           cwd=str(tmp_path))
        return json.loads(p.stdout.strip().splitlines()[-1])

    good = _fake_nccl(tmp_path, 22905)
    o = run(good)
    assert o["path"] == good and o["again"] == good and o["version"] == 22905 and o["uid_ok"] is True, o
    if not INFO["cuda_available"]:
        assert o["comm_error"] == "NcclError: NCCL needs a CUDA GPU, and none is usable in this process", o
    else:  # the stand-in refuses to create communicators (ncclInvalidUsage), with its text
        assert "ncclInvalidUsage" in o["comm_error"] and "fake" in o["comm_error"], o
    old = _fake_nccl(tmp_path, 21306)
    o = run(old)
    assert "version 21306 is too old" in o["error"] and "2.14 or newer" in o["error"], o


@pytest.mark.skipif(INFO["cuda_available"], reason="a GPU is usable here: the no-GPU error cannot be seen")
def test_init_nccl_without_gpu_is_a_clear_error(monkeypatch):
    for var in LAUNCH_VARS:
        monkeypatch.delenv(var, raising=False)
    with pytest.raises(RuntimeError, match="NCCL backend needs (a CUDA GPU|the CUDA backend)"):
        dist.init("nccl")
    with pytest.raises(RuntimeError, match="NCCL backend needs"):
        dist.NCCLCommunicator()
    # the trainer: device='cuda' under a 2-rank torchrun-style launch gives the same message at once,
    # before any rendezvous (nothing listens on the port)
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", str(free_port()))
    cfg = tiny_config()
    tc = pyllama.TrainConfig(batch_size=2, seq_len=8, max_steps=1, warmup_steps=0, out_dir=None, eval_interval=0,
                             device="cuda")
    t0 = time.monotonic()
    with pytest.raises(RuntimeError, match="NCCL backend needs"):
        pyllama.Trainer(pyllama.Llama(cfg), tc, np.arange(200) % cfg.vocab_size, progress=False)
    assert time.monotonic() - t0 < 10


# ---------------------------------------------------------------------- on a GPU

@gpu
@pytest.mark.parametrize("blocking", [False, True])
def test_nccl_allreduce_world_of_one(blocking):
    comm = dist.NCCLCommunicator(dist.SingleProcess(), device=0, timeout_s=60, blocking=blocking)
    try:
        assert comm.world_size == 1 and comm.backend == "nccl"
        # (the CPU emulator's one-rank NCCL lives in the extension itself: tools/cuda_sim/sim_nccl.cpp)
        assert comm.library.endswith("libnccl.so.2") or (EMULATED_GPU and "_core" in comm.library)
        assert comm.nccl.blocking is blocking
        a = np.arange(1000, dtype=np.float32) * 0.5
        ref = a.copy()
        assert comm.allreduce_sum_(a) is a
        np.testing.assert_array_equal(a, ref)
        d = np.linspace(-1, 1, 17)
        comm.allreduce_mean_(d)
        np.testing.assert_array_equal(d, np.linspace(-1, 1, 17))
        # a model's gradient buffer: sum and average of one rank are the identity; extra numbers ride along
        cfg = tiny_config()
        model = pyllama.Llama(cfg, seed=0).to("cuda")
        rng = np.random.default_rng(0)
        g = rng.standard_normal(model.num_parameters()).astype(np.float32)
        model._core.set_gradients(g)
        extra = np.array([1.5, -2.0, 3.0])
        comm.allreduce_grads_(model, extra=extra, average=False)
        np.testing.assert_array_equal(model.flat_grads(), g)
        np.testing.assert_array_equal(extra, [1.5, -2.0, 3.0])
        comm.allreduce_grads_(model, average=True)
        np.testing.assert_array_equal(model.flat_grads(), g)
        p0 = np.array(model.flat_params())
        comm.broadcast_params_(model, 0)
        np.testing.assert_array_equal(model.flat_params(), p0)
        with pytest.raises(ValueError, match="root 1"):
            comm.broadcast_params_(model, 1)
        with pytest.raises(ValueError, match="cuda models"):
            comm.allreduce_grads_(pyllama.Llama(cfg, seed=0))
        with pytest.raises(TypeError, match="float64"):
            comm.nccl.allreduce_grads(model._core, "avg", np.ones(3, np.float32), "x")
        with pytest.raises(ValueError, match="'sum' or 'avg'"):
            comm.nccl.allreduce_host(a, "max", "x")
    finally:
        comm.close()
    with pytest.raises(dist.DistributedError, match="closed"):
        comm.allreduce_sum_(np.ones(2, np.float32))


@gpu
def test_nccl_bad_unique_id_and_device():
    from pyllama import _core

    dist.load_nccl()
    with pytest.raises(ValueError, match="128 bytes"):
        _core.NcclComm(b"short", 0, 1, 0, 10)
    with pytest.raises(ValueError, match="device 99 does not exist"):
        _core.NcclComm(_core.nccl_unique_id(), 0, 1, 99, 10)
    with pytest.raises(ValueError, match="rank must be"):
        _core.NcclComm(_core.nccl_unique_id(), 1, 1, 0, 10)


def _train_losses(tmp_path, comm, steps=5, dtype="float32"):
    cfg = tiny_config()
    data = np.random.default_rng(1).integers(0, cfg.vocab_size, 6000)
    tc = pyllama.TrainConfig(batch_size=2, seq_len=16, max_steps=steps, warmup_steps=1, eval_interval=0,
                             out_dir=None, device="cuda", dtype=dtype, lr=3e-3)
    trainer = pyllama.Trainer(pyllama.Llama(cfg, seed=0), tc, data, progress=False, comm=comm)
    losses = []
    for _ in range(steps):
        m = trainer.train_step()
        losses.append((m["loss"], m["grad_norm"]))
    return losses, trainer


@gpu
def test_trainer_one_rank_nccl_equals_plain_cuda(tmp_path, monkeypatch):
    for var in LAUNCH_VARS:
        monkeypatch.delenv(var, raising=False)
    ref, _ = _train_losses(tmp_path, dist.SingleProcess())
    monkeypatch.setenv("WORLD_SIZE", "1")
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("LOCAL_RANK", "0")
    comm = dist.init("nccl", timeout_s=60)
    assert isinstance(comm, dist.NCCLCommunicator) and isinstance(comm.host, dist.TCPRendezvous)
    try:
        got, trainer = _train_losses(tmp_path, comm)
        np.testing.assert_allclose(np.array(got), np.array(ref), rtol=0, atol=1e-6)
        m = trainer.train_step()
        assert m["world_size"] == 1 and m["comm_s"] >= 0
    finally:
        comm.close()


NCCL_WORKER = textwrap.dedent(r"""
    import json, os, time
    import numpy as np
    from pyllama import distributed as dist
    out = {"rank": int(os.environ["RANK"])}
    t0 = time.monotonic()
    try:
        comm = dist.init("nccl", timeout_s=20)
        a = np.array([comm.rank + 1.0, 2.0], np.float64)
        comm.allreduce_sum_(a)
        out["sum"] = a.tolist()
        comm.close()
        out["ok"] = True
    except Exception as e:
        out["error"] = f"{type(e).__name__}: {e}"
    out["seconds"] = time.monotonic() - t0
    print(json.dumps(out), flush=True)
""")


@gpu
def test_two_processes_env_bootstrap_on_one_gpu(tmp_path):
    """Two ranks (torchrun-style variables) on the one GPU: the TCP rendezvous, the unique-id
    exchange and ncclCommInitRank across processes. NCCL normally refuses two ranks on one
    GPU (ncclInvalidUsage); then both ranks must fail with a clear DistributedError in
    bounded time; if it accepts them, the all-reduce must be right."""
    script = tmp_path / "nccl_worker.py"
    script.write_text(NCCL_WORKER)
    port = free_port()
    base = {k: v for k, v in os.environ.items() if k not in LAUNCH_VARS}
    procs = [subprocess.Popen([sys.executable, str(script)], text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              env=dict(base, RANK=str(r), WORLD_SIZE="2", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1",
                                       MASTER_PORT=str(port)))
             for r in (0, 1)]
    outs = []
    try:
        for p in procs:
            out, err = p.communicate(timeout=120)
            assert p.returncode == 0, (p.returncode, err[-2000:])
            outs.append(json.loads(out.strip().splitlines()[-1]))
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    for o in outs:
        assert o["seconds"] < 60, o
        if o.get("ok"):
            assert o["sum"] == [3.0, 4.0], o
        else:
            assert o["error"].startswith("DistributedError") and "NCCL" in o["error"], o


# Two real NCCL ranks on the one GPU: NCCL refuses two ranks on one GPU of one host, but ranks
# that claim different hosts (NCCL_HOSTID) talk over sockets on the loopback interface.
TWO_RANKS_ONE_GPU = {"NCCL_HOSTID": None, "NCCL_P2P_DISABLE": "1", "NCCL_SHM_DISABLE": "1", "NCCL_NET": "Socket",
                     "NCCL_SOCKET_IFNAME": "lo", "NCCL_IB_DISABLE": "1", "NCCL_NVLS_ENABLE": "0",
                     "NCCL_MNNVL_ENABLE": "0"}

TRAIN_WORKER = textwrap.dedent(r"""
    import json, os, sys
    import numpy as np
    import pyllama
    from pyllama import distributed as dist
    sys.path.insert(0, os.environ["TESTS_DIR"])
    from helpers import tiny_config
    from fault_inject import fault_hook

    fault = fault_hook(os.environ.get("FAULT_INJECT"))  # tests/fault_inject.py

    out = {"rank": int(os.environ.get("RANK", "0"))}
    try:
        cfg = tiny_config()
        data = np.random.default_rng(1).integers(0, cfg.vocab_size, 6000)
        tc = pyllama.TrainConfig(batch_size=2, seq_len=16, max_steps=int(os.environ["STEPS"]), warmup_steps=1,
                                 eval_interval=0, out_dir=None, device="cuda", lr=3e-3,
                                 grad_accum_steps=int(os.environ["ACCUM"]),
                                 dist_timeout_s=float(os.environ["TIMEOUT"]))
        t = pyllama.Trainer(pyllama.Llama(cfg, seed=0), tc, data, progress=False)
        out["backend"] = getattr(t.comm, "backend", None)
        if os.environ.get("STEP_TIMEOUT"):  # a short deadline for the steps only (start-up takes longer)
            t.comm.set_timeout(float(os.environ["STEP_TIMEOUT"]))
        out["losses"] = []
        for _ in range(tc.max_steps):
            out["losses"].append(t.train_step()["loss"])
            if fault is not None and t.world_size > 1:
                fault(t)
        out["ok"] = True
    except Exception as e:
        out["error"] = f"{type(e).__name__}: {e}"
    print(json.dumps(out), flush=True)
""")


def _run_train_ranks(tmp_path, world, accum, steps, timeout, extra_env=None, wait=180, only_rank0=False):
    """Run the Trainer worker as `world` ranks; their results by rank (only rank 0's with
    ``only_rank0``: the others are killed once it is done)."""
    script = tmp_path / "train_worker.py"
    script.write_text(TRAIN_WORKER)
    port = free_port()
    base = {k: v for k, v in os.environ.items() if k not in LAUNCH_VARS}
    base.update(TESTS_DIR=os.path.dirname(os.path.abspath(__file__)), STEPS=str(steps), ACCUM=str(accum),
                TIMEOUT=str(timeout), OMP_NUM_THREADS="1")
    procs = []
    for r in range(world):
        env = dict(base, **(extra_env or {}))
        if world > 1:
            env.update({k: v for k, v in TWO_RANKS_ONE_GPU.items() if v is not None},
                       NCCL_HOSTID=f"pyllama-test-host-{r}", RANK=str(r), WORLD_SIZE=str(world), LOCAL_RANK="0",
                       MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
        procs.append(subprocess.Popen([sys.executable, str(script)], env=env, text=True, stdout=subprocess.PIPE,
                                      stderr=subprocess.PIPE))
    outs = []
    try:
        for p in procs[:1] if only_rank0 else procs:
            try:
                out, err = p.communicate(timeout=wait)
            except subprocess.TimeoutExpired:
                p.kill()
                out, err = p.communicate()
                outs.append({"timed_out": True, "stderr": err[-3000:]})
                continue
            lines = [ln for ln in out.splitlines() if ln.startswith("{")]
            o = json.loads(lines[-1]) if lines else {}
            o.update(exit=p.returncode, stderr=err[-3000:])
            outs.append(o)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    return outs


# the CPU emulator's NCCL (tools/cuda_sim/sim_nccl.cpp) has one rank: peers never join
needs_two_real_ranks = pytest.mark.skipif(
    EMULATED_GPU, reason="two NCCL ranks exchanging data: the CPU emulator's NCCL has one rank (real GPU only)")


def _skip_if_two_ranks_unsupported(outs):
    errs = [o.get("error", "") for o in outs]
    if all("NCCL communicator creation" in e and "failed" in e for e in errs if e) and any(errs) \
            and not any(o.get("ok") for o in outs):
        pytest.skip("this NCCL does not run two ranks on one GPU even with distinct NCCL_HOSTIDs: " + errs[0][:300])


@gpu
@needs_two_real_ranks
def test_two_nccl_ranks_equal_one_rank_with_accumulation(tmp_path):
    """2 ranks x grad_accum 1 (real NCCL all-reduce, torchrun-style bootstrap, the Trainer's own
    NCCLCommunicator) give the losses of 1 rank x grad_accum 2, on every rank."""
    ref = _run_train_ranks(tmp_path, 1, 2, 5, 60)[0]
    assert ref.get("ok") and ref["backend"] == "single", ref
    outs = _run_train_ranks(tmp_path, 2, 1, 5, 60)
    _skip_if_two_ranks_unsupported(outs)
    for o in outs:
        assert o.get("ok") and o["backend"] == "nccl" and o["exit"] == 0, o
        np.testing.assert_allclose(o["losses"], ref["losses"], rtol=0, atol=2e-5)


@gpu
@needs_two_real_ranks
def test_two_nccl_ranks_hung_peer_times_out(tmp_path):
    """Rank 1 stops responding after step 2: rank 0's NCCL all-reduce of step 3 hits the 5 s
    deadline, the communicator is aborted (its kernel waiting on the live peer must end) and
    a DistributedError names the step; the process exits normally."""
    t0 = time.monotonic()
    outs = _run_train_ranks(tmp_path, 2, 1, 6, 60, extra_env={"FAULT_INJECT": "hang:1:2", "STEP_TIMEOUT": "5"},
                            wait=90, only_rank0=True)
    _skip_if_two_ranks_unsupported(outs)
    o = outs[0]
    assert "error" in o, o
    assert "DistributedError" in o["error"] and "gradient all-reduce at step 3" in o["error"], o
    assert "did not complete within 5 s" in o["error"], o
    assert o["exit"] == 0 and len(o["losses"]) == 2, o
    assert time.monotonic() - t0 < 90


# ---------------------------------------------------------------------- the trainer's NCCL path, on a stand-in GPU

class FakeNccl(dist.Communicator):
    """NCCLCommunicator's surface for the trainer: rank ``rank`` of ``world``, every other
    rank mirroring this one (so the average of the gradients is this rank's), on the
    stand-in cuda model of tests/test_train_device.py."""

    backend = "nccl"

    def __init__(self, rank=0, world=1):
        self.rank, self.world_size, self.device = rank, world, 0
        self.calls = []

    def allreduce_grads_(self, model, *, extra=None, average=True, what="", step=None):
        assert model.flat_grads().dtype == np.float32 and average
        self.calls.append((what, step, None if extra is None else extra.size))
        if extra is not None:
            extra *= self.world_size

    def allreduce_sum_(self, buf, *, what="", step=None):
        buf *= self.world_size
        return buf

    def broadcast(self, obj=None, root=0, *, what="", step=None):
        return obj

    def barrier(self, *, what="", step=None, timeout_s=None):
        self.calls.append((what, step, None))

    def allgather_object(self, obj, *, what="", step=None):
        return [obj] * self.world_size


def _fake_cuda_model(seed):
    import test_train_device as ttd

    return ttd.fake_cuda_model(seed)


@pytest.mark.parametrize("world", [1, 2])
def test_trainer_nccl_path_one_grad_allreduce_per_step(tmp_path, world):
    """Through a stand-in NCCL communicator: one all-reduce of the GPU gradients per
    optimizer step (with the 4 numbers), the losses of the plain run (1 rank), and the
    metrics of a data-parallel run."""
    from test_train import corpus, make_config

    data = corpus()
    plain = pyllama.Trainer(_fake_cuda_model(0), make_config(device="cuda"), data, progress=False)
    want = [plain.train_step()["loss"] for _ in range(4)]
    comm = FakeNccl(0, world)
    t = pyllama.Trainer(_fake_cuda_model(0), make_config(device="cuda"), data, progress=False, comm=comm)
    got = [t.train_step() for _ in range(4)]
    assert [c for c in comm.calls if c[0] == "gradient all-reduce"] == [("gradient all-reduce", s, 4)
                                                                       for s in range(1, 5)]
    assert all(m["world_size"] == world and m["comm_s"] >= 0 for m in got)
    if world == 1:
        assert [m["loss"] for m in got] == want
    with pytest.raises(ValueError, match="trains on GPUs"):
        pyllama.Trainer(pyllama.Llama(tiny_config()), make_config(), data, progress=False, comm=FakeNccl())


@gpu
@pytest.mark.parametrize("blocking", [False, True])
def test_nccl_init_timeout_when_a_rank_is_missing(blocking):
    """World of 2 with only rank 0 present: creation gives up at the deadline instead of hanging
    (non-blocking: the communicator is aborted; blocking: the ncclCommInitRank thread is left
    behind), and the process still exits cleanly. In a subprocess of its own."""
    code = textwrap.dedent(f"""
        import json, time
        from pyllama import _core, distributed as dist
        dist.load_nccl()
        t0 = time.monotonic()
        out = {{}}
        try:
            _core.NcclComm(_core.nccl_unique_id(), 0, 2, 0, 3.0, {blocking!r})
            out["error"] = None
        except _core.NcclError as e:
            out["error"] = str(e)
        out["seconds"] = time.monotonic() - t0
        print(json.dumps(out), flush=True)
    """)
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=90,
                       cwd=tempfile.gettempdir())
    lines = [ln for ln in p.stdout.splitlines() if ln.startswith("{")]
    assert lines, (p.returncode, p.stderr[-3000:])
    o = json.loads(lines[-1])
    assert o["error"] and "did not complete within 3 s" in o["error"], o
    assert o["seconds"] < 25, o  # 3 s, plus at most 15 s for a bounded ncclCommAbort
    assert p.returncode == 0, (p.returncode, p.stderr[-3000:])
