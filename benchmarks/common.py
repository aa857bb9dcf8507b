"""Timing and reporting helpers shared by the benchmarks."""

from __future__ import annotations

import gc
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

THREADS = int(os.environ.get("CNNDSL_BENCH_THREADS", "2"))
QUICK = os.environ.get("CNNDSL_BENCH_QUICK", "") not in ("", "0")


@dataclass
class Row:
    """One line of the results table: what was measured, ours, theirs, and ours/theirs as a speed ratio."""

    section: str
    what: str
    ours: str
    theirs: str
    ratio: float | None = None  # theirs_time / ours_time: > 1 means cnndsl is faster
    note: str = ""

    def cells(self) -> list[str]:
        r = "" if self.ratio is None else f"{self.ratio:.2f}"
        return [self.section, self.what, self.ours, self.theirs, r, self.note]


HEADER = ["section", "measurement", "cnndsl", "reference", "speed ratio", "note"]


def timed(fn: Callable[[], object], setup: Callable[[], object] | None = None) -> float:
    """Seconds of one call, as timeit takes them: garbage collected before and the collector off during the
    call, so that neither side pays for a collection of what the other (or an earlier repetition) left.
    ``setup()`` runs first, untimed (emptying a cache: freeing what it held is not the call's work)."""
    if setup is not None:
        setup()
    gc.collect()
    enabled = gc.isenabled()
    gc.disable()
    try:
        t = time.perf_counter()
        fn()
        return time.perf_counter() - t
    finally:
        if enabled:
            gc.enable()


def side_by_side(fns: dict[str, Callable[[], object]], reps: int, warmup: int = 1,
                 inner: dict[str, int] | None = None,
                 setup: dict[str, Callable[[], object]] | None = None) -> dict[str, float]:
    """Median seconds of each function, the functions alternating within each repetition; ``inner[k]`` times
    function ``k`` that many times a repetition (a cheap side measured more often than a slow reference), each
    after ``setup[k]()`` (untimed, see :func:`timed`)."""
    for _ in range(warmup):
        for k, fn in fns.items():
            if setup and k in setup:
                setup[k]()
            fn()
    times: dict[str, list[float]] = {k: [] for k in fns}
    for i in range(reps):
        keys = list(fns) if i % 2 == 0 else list(reversed(list(fns)))  # neither always runs first
        for k in keys:
            for _ in range((inner or {}).get(k, 1)):
                times[k].append(timed(fns[k], (setup or {}).get(k)))
    return {k: statistics.median(v) for k, v in times.items()}


def ms(seconds: float) -> str:
    return f"{seconds * 1e3:.1f} ms" if seconds < 10 else f"{seconds:.1f} s"


def table(rows: list[Row]) -> str:
    """A Markdown table of the rows."""
    lines = ["| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
    lines += ["| " + " | ".join(r.cells()) + " |" for r in rows]
    return "\n".join(lines)


def machine() -> str:
    """nproc, the CPU model, OS and Python."""
    cpu = "unknown CPU"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return f"{os.cpu_count()} CPUs (nproc), {cpu}, {platform.system()} {platform.release()}, Python {platform.python_version()}"


def versions(python: str = sys.executable) -> str:
    """Versions of torch, torchvision, jax and cnndsl as seen by ``python``."""
    code = ("import importlib\n"
            "out = []\n"
            "for m in ('cnndsl', 'torch', 'torchvision', 'jax', 'fvcore'):\n"
            "    try: out.append(f'{m} {importlib.import_module(m).__version__}')\n"
            "    except Exception: pass\n"
            "print(', '.join(out))")
    res = subprocess.run([python, "-c", code], capture_output=True, text=True, timeout=120, check=False)
    return res.stdout.strip() or "unknown"


def fvcore_count(model, size: int) -> tuple[int, int]:
    """Parameters and conv+fc MACs of ``model`` for one 3 x size x size image, counted by fvcore (which also counts
    batch norm and pooling: conv and fc are kept, as cnndsl counts MACs)."""
    import torch
    from fvcore.nn import FlopCountAnalysis

    params = sum(p.numel() for p in model.parameters())
    flops = FlopCountAnalysis(model.eval(), torch.randn(1, 3, size, size))
    flops.unsupported_ops_warnings(False)
    flops.uncalled_modules_warnings(False)
    by_op = flops.by_operator()
    return params, sum(v for k, v in by_op.items() if k in ("conv", "linear", "addmm", "matmul"))
