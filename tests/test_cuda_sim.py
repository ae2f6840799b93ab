"""Every CUDA kernel of cuda/ runs on the CPU emulator (tools/cuda_sim): every CUDA thread
a fiber, checked barriers, emulated shuffles, mma.sync, ldmatrix and cp.async, ASan/UBSan, against
double-precision references. It needs no GPU and no CUDA toolkit, only g++ >= 10 and
python3, so CI checks the kernels' indexing, masking and barriers on every change (not
their speed)."""
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
SIM = os.path.join(ROOT, "tools", "cuda_sim", "run.sh")


def gxx_major():
    gxx = shutil.which("g++")
    if not gxx:
        return 0
    out = subprocess.run([gxx, "-dumpversion"], capture_output=True, text=True).stdout
    m = re.match(r"(\d+)", out.strip())
    return int(m.group(1)) if m else 0


@pytest.mark.skipif(not os.path.isfile(SIM), reason="tools/cuda_sim is not in this checkout (installed package)")
@pytest.mark.skipif(gxx_major() < 10, reason="the CUDA emulator needs g++ >= 10 with AddressSanitizer")
def test_cuda_kernels_on_the_cpu_emulator(tmp_path):
    env = dict(os.environ, TMPDIR=str(tmp_path), PYTHON=sys.executable)
    r = subprocess.run(["sh", SIM], capture_output=True, text=True, timeout=900, env=env)
    log = r.stdout + r.stderr
    assert r.returncode == 0, log[-4000:]
    assert "ALL OK" in log, log[-4000:]
    assert not re.search(r"^FAIL", log, re.M), log[-4000:]
