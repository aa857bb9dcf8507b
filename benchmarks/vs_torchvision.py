"""Generated PyTorch models against torchvision's own: latency, training step, torch.compile, peak memory.

Needs torchvision next to torch. Run with a Python that has it, or point
``CNNDSL_TORCHVISION_PYTHON`` at one (``python -m benchmarks`` uses that
variable for this benchmark). Each model is measured in a fresh subprocess
(so peak RSS is per model and per contender), the two contenders alternating
within each repetition.

Both contenders load the same weights (torchvision's, strictly by name). Eager inference at batch 1 and 8 and an
eager training step for every model; torch.compile inference and training step for resnet18, resnet50 and
efficientnet_b0 (``CNNDSL_BENCH_QUICK=1``: resnet50 and efficientnet_b0 eager only, see ``COMPILE``).

Speed ratio = torchvision's median time / cnndsl's: >= 1 means the generated model is as fast.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

from .common import QUICK, THREADS, Row, ms, side_by_side, table

# torch.compile times are of compiling, not of reading inductor's on-disk caches: a graph compiled by an earlier
# run (one contender's, not the other's) would otherwise load in a fraction of the time. Set before torch loads.
os.environ.setdefault("TORCHINDUCTOR_FORCE_DISABLE_CACHES", "1")

MODELS = {  # cnndsl zoo name -> (torchvision constructor and kwargs, input size)
    "resnet18": ("resnet18", {}, 224),
    "resnet50": ("resnet50", {}, 224),
    "vgg16": ("vgg16", {}, 224),
    "googlenet_torchvision": ("googlenet", {"aux_logits": True, "init_weights": False}, 224),
    "inception_v3": ("inception_v3", {"aux_logits": True, "init_weights": False}, 299),
    "efficientnet_b0": ("efficientnet_b0", {}, 224),
    "convnext_tiny": ("convnext_tiny", {}, 224),
}
QUICK_MODELS = ("resnet50", "efficientnet_b0")
#: torch.compile, inference and a training step: minutes per model and contender on 2 cores (efficientnet_b0's
#: inference alone took 3 minutes on a loaded machine), so CNNDSL_BENCH_QUICK=1 leaves it out unless
#: CNNDSL_BENCH_COMPILE=1 asks for it (and CNNDSL_BENCH_COMPILE=0 leaves it out of a full run);
#: CNNDSL_BENCH_COMPILE_MODELS=resnet18 picks the models it runs on (comma-separated).
COMPILE_MODELS = tuple(os.environ.get("CNNDSL_BENCH_COMPILE_MODELS", "resnet18,resnet50,efficientnet_b0").split(","))
COMPILE = os.environ.get("CNNDSL_BENCH_COMPILE", "0" if QUICK else "1") not in ("", "0")
TRAIN_BATCH = 4
HOW_TO_GET = ("torchvision is not installed for this Python: `pip install torchvision` (the build matching your "
              "torch), or set CNNDSL_TORCHVISION_PYTHON to a Python that has both torch and torchvision")


def python() -> str:
    return os.environ.get("CNNDSL_TORCHVISION_PYTHON", sys.executable)


def has_torchvision(py: str) -> bool:
    res = subprocess.run([py, "-c", "import torch, torchvision"], capture_output=True, timeout=300, check=False)
    return res.returncode == 0


def _models(name: str):
    import torch
    import torchvision

    from cnndsl import api

    ctor, kwargs, size = MODELS[name]
    torch.manual_seed(0)
    ours = api.build_torch(name)
    theirs = getattr(torchvision.models, ctor)(**kwargs)
    # The same weights on both sides: CPU speed depends on the values (sparsity after ReLU, denormals), and
    # the two initialisations differ (GoogLeNet: 10% apart with identical code). Names match, so this is strict.
    ours.load_state_dict(theirs.state_dict(), strict=True)
    return ours, theirs, size


def _loss(out, y):
    import torch.nn.functional as F

    outs = out if isinstance(out, (tuple, list)) else (out,)
    return sum(F.cross_entropy(o, y) for o in outs)


def _train_step(model, opt, x, y):
    def step():
        opt.zero_grad(set_to_none=True)
        _loss(model(x), y).backward()
        opt.step()
    return step


def _warm_up_compiler() -> None:
    """Pay torch.compile's one-time start-up (imports, worker pool) before timing, so neither contender does."""
    import torch

    tiny = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.ReLU())
    c = torch.compile(tiny)
    x = torch.randn(2, 3, 8, 8)
    with torch.inference_mode():
        c.eval()(x)
    c.train()(x).sum().backward()


def worker(name: str) -> list[dict]:
    """Measure one model, both contenders, in this process. Returns table rows as dicts."""
    import time

    import torch

    torch.set_num_threads(THREADS)
    ours, theirs, size = _models(name)
    pair = {"ours": ours, "theirs": theirs}
    rows = []
    reps = 3 if QUICK else 9  # fewer than ~9 alternating repetitions leaves +-10% noise on 2 shared cores

    def row(what, t, note=""):
        rows.append({"section": "vs torchvision", "what": f"{name} {what}", "ours": ms(t["ours"]),
                     "theirs": ms(t["theirs"]), "ratio": t["theirs"] / t["ours"], "note": note})

    for m in pair.values():
        m.eval()
    for batch in (1, 8):
        x = torch.randn(batch, 3, size, size)
        with torch.inference_mode():
            t = side_by_side({k: (lambda m=m, x=x: m(x)) for k, m in pair.items()}, reps if batch == 1 else reps - 2)
        row(f"eager inference, batch {batch}", t)
    x = torch.randn(TRAIN_BATCH, 3, size, size)
    y = torch.randint(0, 1000, (TRAIN_BATCH,))
    steps = {}
    for k, m in pair.items():
        m.train()
        steps[k] = _train_step(m, torch.optim.SGD(m.parameters(), lr=1e-3, momentum=0.9), x, y)
    row(f"eager training step (fwd+bwd+SGD), batch {TRAIN_BATCH}", side_by_side(steps, reps - 2))

    if COMPILE and name in COMPILE_MODELS:
        _warm_up_compiler()
        x1 = torch.randn(1, 3, size, size)
        compiled, compile_s = {}, {}
        for k, m in pair.items():
            m.eval()
            c = torch.compile(m)
            t0 = time.perf_counter()
            with torch.inference_mode():
                c(x1)
            compile_s[k] = time.perf_counter() - t0
            compiled[k] = c
        with torch.inference_mode():
            t = side_by_side({k: (lambda c=c: c(x1)) for k, c in compiled.items()}, reps, warmup=1)
        row("torch.compile inference, batch 1", t, "compile time excluded")
        rows.append({"section": "vs torchvision", "what": f"{name} torch.compile time (inference, first call)",
                     "ours": ms(compile_s["ours"]), "theirs": ms(compile_s["theirs"]),
                     "ratio": compile_s["theirs"] / compile_s["ours"], "note": ""})
        csteps, compile_s = {}, {}
        for k, m in pair.items():
            m.train()
            c = torch.compile(m)
            step = _train_step(c, torch.optim.SGD(m.parameters(), lr=1e-3, momentum=0.9), x, y)
            t0 = time.perf_counter()
            step()
            compile_s[k] = time.perf_counter() - t0
            csteps[k] = step
        row(f"torch.compile training step, batch {TRAIN_BATCH}", side_by_side(csteps, reps - 2, warmup=1),
            f"compile time excluded; compile {ms(compile_s['ours'])} vs {ms(compile_s['theirs'])}")
    return rows


def memory_worker(name: str, who: str) -> dict:
    """Peak RSS (MiB) of a fresh process that builds one model and runs two training steps."""
    import resource

    import torch

    torch.set_num_threads(THREADS)
    ours, theirs, size = _models(name)
    model = ours if who == "ours" else theirs
    del ours, theirs
    model.train()
    x = torch.randn(TRAIN_BATCH, 3, size, size)
    y = torch.randint(0, 1000, (TRAIN_BATCH,))
    step = _train_step(model, torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9), x, y)
    step()
    step()
    return {"peak_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def _child(args: list[str]) -> str:
    py = python()
    res = subprocess.run([py, "-m", "benchmarks.vs_torchvision", *args], capture_output=True, text=True,
                         cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))), timeout=7200, check=False)
    if res.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} failed:\n{res.stderr[-3000:]}")
    return res.stdout.strip().splitlines()[-1]


def run(models=None) -> list[Row]:
    py = python()
    if not has_torchvision(py):
        print(HOW_TO_GET, file=sys.stderr)
        return [Row("vs torchvision", "all", "-", "-", None, "skipped: " + HOW_TO_GET)]
    rows = []
    for name in models or (QUICK_MODELS if QUICK else MODELS):
        for d in json.loads(_child(["--worker", name])):
            rows.append(Row(**d))
        peak = {who: json.loads(_child(["--memory", name, who]))["peak_mib"] for who in ("ours", "theirs")}
        rows.append(Row("vs torchvision", f"{name} peak RSS, training step batch {TRAIN_BATCH}",
                        f"{peak['ours']:.0f} MiB", f"{peak['theirs']:.0f} MiB", peak["theirs"] / peak["ours"],
                        "fresh process each; ratio = theirs/ours memory"))
    if not COMPILE:
        rows.append(Row("vs torchvision", "torch.compile rows", "-", "-", None,
                        "left out (CNNDSL_BENCH_QUICK=1 without CNNDSL_BENCH_COMPILE=1, or CNNDSL_BENCH_COMPILE=0)"))
    return rows


def main(argv: list[str]) -> None:
    if argv[:1] == ["--worker"]:
        print(json.dumps(worker(argv[1])))
    elif argv[:1] == ["--memory"]:
        print(json.dumps(memory_worker(argv[1], argv[2])))
    else:
        print(table(run(argv or None)))


if __name__ == "__main__":
    main(sys.argv[1:])
