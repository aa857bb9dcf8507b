"""jit time of the generated JAX models: a run of alike blocks in a sequence as one ``jax.lax.scan`` against a
call per block.

Three forms of each network's module: the JAX backend's default (runs of ``SCAN_MIN_RUN`` or more scanned),
``scan_min_run=None`` (a call per block: the backend's output before the scan) and ``scan_min_run=2`` (every
run scanned), so the table shows both what the default gains and why shorter runs are not scanned.

For resnet50/101/152 at batch 1 and 8: ``jax.jit(apply)``'s trace, lower and compile times (inference), each
the median over PROCESSES fresh processes (a process compiles one model once; the forms alternate, so none
always meets a warmer machine), and one compiled forward's time, the median of FORWARDS after a warm-up, the
forms compiled in one process and run in turn (``side_by_side``: a busy spell slows them all). Speed ratio =
the calls' time / the other form's (> 1: the scan is faster).

The variables are shaped by ``jax.eval_shape(init)`` and filled from numpy (kernels N(0, 1/fan_in), batch
norms as init leaves them): an eager init of ResNet-152 takes longer than its compile.

``python -m benchmarks.jax_compile`` prints the table (``CNNDSL_BENCH_QUICK=1``: resnet50 at batch 1 only,
fewer processes and forwards).
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from .common import QUICK, THREADS, Row, side_by_side, table

NETS = ("resnet50",) if QUICK else ("resnet50", "resnet101", "resnet152")
BATCHES = (1,) if QUICK else (1, 8)
PROCESSES = 2 if QUICK else 3
FORWARDS = 5 if QUICK else 20
PHASES = ("trace", "lower", "compile")
ROOT = Path(__file__).resolve().parent.parent


def _model(source: str, batch: int):
    """The module ``source`` executed, its variables (shaped by init, filled from numpy) and an input batch."""
    import jax
    import numpy as np

    namespace: dict = {"__name__": "cnndsl_bench_model"}
    exec(compile(source, "<generated>", "exec"), namespace)  # noqa: S102 - code cnndsl generated
    rng = np.random.default_rng(0)

    def fill(path, leaf):
        name = path[-1].key
        if name == "kernel":
            return rng.standard_normal(leaf.shape, np.float32) / np.sqrt(np.prod(leaf.shape[:-1]))
        return (np.ones if name in ("scale", "var") else np.zeros)(leaf.shape, leaf.dtype)

    shapes = jax.eval_shape(namespace["init"], jax.random.key(0))
    variables = jax.device_put(jax.tree_util.tree_map_with_path(fill, shapes))
    x = jax.device_put(rng.standard_normal((batch, *namespace["INPUT_SHAPE"]), np.float32))
    return namespace["apply"], variables, x


def _phases(path: str, batch: int) -> dict[str, float]:
    """In a fresh process: the jit phases of one module's apply (inference), in seconds."""
    import jax

    apply, variables, x = _model(Path(path).read_text(), batch)
    jitted = jax.jit(lambda v, x: apply(v, x, train=False))
    times = {}
    t = time.perf_counter()
    traced = jitted.trace(variables, x)
    times["trace"] = time.perf_counter() - t
    t = time.perf_counter()
    lowered = traced.lower()
    times["lower"] = time.perf_counter() - t
    t = time.perf_counter()
    lowered.compile()
    times["compile"] = time.perf_counter() - t
    return times


def _forwards(paths: list[str], batch: int, reps: int) -> list[float]:
    """In one process: each module's compiled forward, the modules alternating (side_by_side), median seconds."""
    import jax

    runs = {}
    for path in paths:
        apply, variables, x = _model(Path(path).read_text(), batch)
        compiled = jax.jit(lambda v, x, apply=apply: apply(v, x, train=False)).lower(variables, x).compile()
        runs[path] = lambda c=compiled, v=variables, x=x: c(v, x).block_until_ready()
    times = side_by_side(runs, reps, warmup=2)
    return [times[p] for p in paths]


def _in_fresh_process(call: str):
    env = {**os.environ, "XLA_FLAGS": f"--xla_cpu_multi_thread_eigen=true intra_op_parallelism_threads={THREADS}"}
    code = f"import json\nfrom benchmarks.jax_compile import _forwards, _phases\nprint(json.dumps({call}))"
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, env=env,
                         timeout=1800, check=True)
    return json.loads(res.stdout.strip().splitlines()[-1])


def _seconds(s: float) -> str:
    return f"{s:.2f} s"


def measure(forms: dict[str, Path], batch: int) -> dict[str, dict[str, float]]:
    """Each form's jit phases (medians of fresh processes, the forms alternating) and its forward time."""
    runs: dict[str, list[dict[str, float]]] = {f: [] for f in forms}
    for i in range(PROCESSES):
        for form in list(forms) if i % 2 == 0 else list(reversed(list(forms))):
            runs[form].append(_in_fresh_process(f"_phases({str(forms[form])!r}, {batch})"))
    forwards = _in_fresh_process(f"_forwards({[str(p) for p in forms.values()]!r}, {batch}, {FORWARDS})")
    return {form: {**{p: statistics.median(r[p] for r in rs) for p in PHASES}, "forward": t}
            for (form, rs), t in zip(runs.items(), forwards)}


def _rows(what: str, a: dict[str, float], b: dict[str, float]) -> list[Row]:
    """Two rows comparing form ``a`` with form ``b``: the jit phases together (each in the note), a forward."""
    split = ", ".join(f"{p} {a[p]:.2f} vs {b[p]:.2f}" for p in PHASES)
    total_a, total_b = sum(a[p] for p in PHASES), sum(b[p] for p in PHASES)
    return [Row("JAX jit", f"{what}: jit trace + lower + compile", _seconds(total_a), _seconds(total_b),
                total_b / total_a, f"{split} s"),
            Row("JAX jit", f"{what}: one compiled forward", f"{a['forward'] * 1e3:.1f} ms",
                f"{b['forward'] * 1e3:.1f} ms", b["forward"] / a["forward"],
                f"median of {FORWARDS}, the forms alternating in one process")]


def run() -> list[Row]:
    try:
        import jax  # noqa: F401
    except ImportError as e:
        return [Row("JAX jit", "all", "-", "-", None, f"skipped: {e.name} is not installed (pip install jax)")]
    from cnndsl.backends.jax import SCAN_MIN_RUN, generate

    import cnndsl

    # the backend's default, against a call per block (the output before the scan) and a scan of every run
    forms = {"default": SCAN_MIN_RUN, "calls": None, "every run": 2}
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in NETS:
            net = cnndsl.load(name)
            sources = {form: generate(net, scan_min_run=m) for form, m in forms.items()}
            paths: dict[str, Path] = {}
            for form, source in sources.items():  # a form whose code is another's is measured once
                same = [f for f in paths if sources[f] == source]
                paths[form] = paths[same[0]] if same else Path(tmp) / f"{name}_{form.replace(' ', '_')}.py"
                paths[form].write_text(source)
            lines = {f: len(s.splitlines()) for f, s in sources.items()}
            rows.append(Row("JAX jit", f"{name}: lines of the generated module, default vs calls", str(lines["default"]),
                            str(lines["calls"]), None, f"{lines['every run']} with every run scanned"))
            for batch in BATCHES:
                got = measure({str(p): p for p in dict.fromkeys(paths.values())}, batch)
                by_form = {f: got[str(p)] for f, p in paths.items()}
                same = " (the same code)" if sources["default"] == sources["calls"] else ""
                rows += _rows(f"{name} batch {batch}, default vs calls{same}", by_form["default"], by_form["calls"])
                rows += _rows(f"{name} batch {batch}, every run of 2+ scanned vs calls", by_form["every run"],
                              by_form["calls"])
    rows.append(Row("JAX jit", "SCAN_MIN_RUN, the backend's default", str(SCAN_MIN_RUN), "-", None, ""))
    return rows


if __name__ == "__main__":
    print(table(run()))
    sys.exit(0)
