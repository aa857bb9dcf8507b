"""Run every benchmark and print one table; also write it to benchmarks/RESULTS.md.

Each benchmark runs in its own process. Those that compare against torchvision (or count with fvcore)
run under ``CNNDSL_TORCHVISION_PYTHON`` when it is set (a Python with torch, torchvision and fvcore, and
cnndsl installed: ``pip install -e .``), the JAX ones under ``CNNDSL_JAX_PYTHON`` (default: this Python).
``CNNDSL_BENCH_QUICK=1`` takes fewer repetitions and models and leaves torch.compile out (a few minutes in
all, for checking that every benchmark runs; ``CNNDSL_BENCH_COMPILE=1`` puts torch.compile back). ``python -m
benchmarks compiler variants`` runs only those modules (and does not write RESULTS.md).
"""

from __future__ import annotations

import datetime
import os
import pickle
import subprocess
import sys
import time
from pathlib import Path

from .common import THREADS, Row, machine, table, versions

ROOT = Path(__file__).resolve().parent.parent
BENCHES = [  # module, the Python to run it with
    ("compiler", "CNNDSL_TORCHVISION_PYTHON"),
    ("variants", "CNNDSL_TORCHVISION_PYTHON"),
    ("inference_build", "CNNDSL_TORCHVISION_PYTHON"),
    ("jax_compile", "CNNDSL_JAX_PYTHON"),
    ("jax_vs_torch", "CNNDSL_JAX_PYTHON"),
    ("vs_torchvision", "CNNDSL_TORCHVISION_PYTHON"),
    ("supernet", "CNNDSL_TORCHVISION_PYTHON"),
]


def run_one(module: str, python: str) -> list[Row]:
    code = (f"import pickle, sys\nfrom benchmarks.{module} import run\n"
            "sys.stdout.buffer.write(b'\\n@@ROWS@@' + pickle.dumps([r.__dict__ for r in run()]))")
    res = subprocess.run([python, "-c", code], capture_output=True, cwd=ROOT, timeout=6 * 3600, check=False)
    if res.returncode != 0 or b"@@ROWS@@" not in res.stdout:
        tail = res.stderr.decode(errors="replace").strip().splitlines()[-1:] or ["no output"]
        return [Row(module, "failed", "-", "-", None, tail[0][:200])]
    return [Row(**d) for d in pickle.loads(res.stdout.split(b"@@ROWS@@", 1)[1])]


def main(only: list[str]) -> None:
    start = time.perf_counter()
    load = os.getloadavg()[0]
    rows: list[Row] = []
    for module, env in BENCHES:
        if only and module not in only:
            continue
        python = os.environ.get(env, sys.executable)
        t = time.perf_counter()
        rows += run_one(module, python)
        print(f"[{module}: {time.perf_counter() - t:.0f} s]", file=sys.stderr, flush=True)
    elapsed = time.perf_counter() - start
    tv_python = os.environ.get("CNNDSL_TORCHVISION_PYTHON", sys.executable)
    header = [f"Date: {datetime.date.today().isoformat()}",
              f"Machine: {machine()}",
              f"Versions: {versions(tv_python)}" + ("" if tv_python == sys.executable else
                                                    f"; JAX side: {versions(sys.executable)}"),
              f"Threads: {THREADS} (torch.set_num_threads; XLA intra-op threads for JAX)",
              f"Load average at the start: {load:.1f} (the ratios are only meaningful on an otherwise idle machine)",
              f"Total benchmark time: {elapsed:.0f} s",
              ("Speed ratio: reference time / cnndsl time (>= 1: cnndsl as fast or faster); medians of "
               "repetitions that alternate the two contenders.")]
    text = "\n".join(header) + "\n\n" + table(rows) + "\n"
    print(text)
    if not only:
        (ROOT / "benchmarks" / "RESULTS.md").write_text("# Benchmark results\n\n" + "\n\n".join(header) + "\n\n"
                                                        + table(rows) + "\n")


if __name__ == "__main__":
    main(sys.argv[1:])
