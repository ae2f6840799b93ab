"""What both benchmark suites (:mod:`pyllama.bench.cpu`, :mod:`pyllama.bench.gpu`) use:
progress lines, timing (:func:`race`, sides alternating, best and median; :func:`timed`,
median per call with a device sync), the machine's description (CPU name, load average)
and JSON results."""
from __future__ import annotations

import gc
import json
import os
import platform
import statistics
import time
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np


# --------------------------------------------------------------------------- progress
def log(msg: str) -> None:
    """A progress line (benchmarks can take minutes)."""
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", flush=True)


# --------------------------------------------------------------------------- timing
def _stats(times: Sequence[float]) -> Dict[str, Any]:
    return {"best_s": float(min(times)), "median_s": float(statistics.median(times)), "runs": len(times),
            "times_s": [float(t) for t in times]}


def best_ratio(t: Dict[str, Dict[str, Any]], ours: str, theirs: str) -> float:
    """theirs' best time / ours' best time (> 1: ours is faster). On a shared machine the
    load comes in bursts; the best of several runs is each side's undisturbed speed."""
    return t[theirs]["best_s"] / t[ours]["best_s"]


def paired_ratio(t: Dict[str, Dict[str, Any]], ours: str, theirs: str) -> float:
    """Median over rounds of theirs' time / ours' time in the same round (> 1: ours is
    faster). Each round runs both back to back, so a load change on the shared machine
    between rounds cancels out; falls back to the ratio of best times."""
    a, b = t[ours].get("times_s"), t[theirs].get("times_s")
    if a and b and len(a) == len(b):
        return float(statistics.median(y / x for x, y in zip(a, b)))
    return t[theirs]["best_s"] / t[ours]["best_s"]


def race(fns: Dict[str, Callable[[], Any]], rounds: int, warmup: int = 1) -> Dict[str, Dict[str, float]]:
    """Time each function ``rounds`` times, alternating between them (ours, theirs,
    ours, theirs, ...) so that both see the same machine load; ``warmup`` untimed
    calls each first. Returns name → {best_s, median_s, runs, times_s}; compare two
    entries with :func:`best_ratio` (or :func:`paired_ratio`)."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    times: Dict[str, List[float]] = {k: [] for k in fns}
    for _ in range(max(1, rounds)):
        for name, fn in fns.items():
            gc.collect()
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    return {k: _stats(v) for k, v in times.items()}


def timed(fn: Callable[[], Any], sync: Callable[[], Any] = lambda: None, warmup: int = 2, iters: int = 10,
          budget_s: float = float("inf")) -> Tuple[float, int]:
    """Median seconds per call: ``warmup`` untimed calls, then up to ``iters`` timed ones
    (each followed by ``sync``, e.g. a device synchronize), stopping early (after at
    least 2) once ``budget_s`` is spent. Returns (median seconds, calls timed)."""
    for _ in range(warmup):
        fn()
    sync()
    times = []
    start = time.perf_counter()
    while len(times) < iters and (len(times) < 2 or time.perf_counter() - start < budget_s):
        t0 = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t0)
    return float(np.median(times)), len(times)


# --------------------------------------------------------------------------- the machine
def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _loadavg() -> Optional[List[float]]:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None

# --------------------------------------------------------------------------- results
def write_json(path: str, obj: Any, indent: int = 1) -> None:
    """Write ``obj`` (the results) to ``path`` as JSON."""
    with open(path, "w") as f:
        json.dump(obj, f, indent=indent)
