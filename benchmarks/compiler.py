"""The compiler itself: parse-to-source time per zoo network, growth with depth, and the cost model.

- parse to PyTorch source for every zoo network (load: parse, resolve, every pass; then code generation);
- ResNet for CIFAR at 6n+2 = 20, 110, 1202 layers (``resnet_cifar(n)``, n = 3, 18, 200): time per layer
  must stay flat (linear growth);
- parameters and MACs of resnet152 from cnndsl against what a user does today: build torchvision's
  model and count with fvcore (needs torchvision and fvcore; skipped with a hint otherwise).
"""

from __future__ import annotations

import statistics
import sys
import time

from .common import QUICK, Row, table


def _best(fn, reps: int) -> float:
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def run() -> list[Row]:
    import cnndsl
    from cnndsl import api
    from cnndsl.front.loader import zoo_index

    rows = []
    cnndsl.load("lenet5")  # warm the parser and the zoo cache
    per_net = {}
    for name in sorted(zoo_index()):
        per_net[name] = _best(lambda name=name: api.compile(cnndsl.load(name), "torch"), 1)
    slowest = max(per_net, key=per_net.get)
    rows.append(Row("compiler", f"parse-to-PyTorch-source, all {len(per_net)} zoo networks",
                    f"{sum(per_net.values()):.2f} s total", "-", None,
                    f"median {statistics.median(per_net.values()) * 1e3:.0f} ms, slowest {slowest} "
                    f"{per_net[slowest]:.2f} s"))
    base = None
    for n in (3, 18, 200):
        layers = 6 * n + 2
        t = _best(lambda n=n: api.compile(cnndsl.load("resnet_cifar", n=n), "torch"), 1 if QUICK or n == 200 else 3)
        per_layer = t / layers
        base = base or per_layer
        rows.append(Row("compiler", f"resnet_cifar(n={n}): {layers} layers, parse to source", f"{t:.2f} s", "-",
                        None, f"{per_layer * 1e3:.2f} ms/layer ({per_layer / base:.2f}x the 20-layer rate)"))
    rows.extend(cost_model())
    return rows


def cost_model() -> list[Row]:
    import cnndsl

    t_ours = _best(lambda: cnndsl.load("resnet152"), 3)
    net = cnndsl.load("resnet152")
    try:
        import torch
        import torchvision
        from fvcore.nn import FlopCountAnalysis
    except ImportError:
        return [Row("compiler", "resnet152 params+MACs", f"{t_ours:.2f} s", "-", None,
                    "fvcore comparison skipped: needs torchvision and fvcore (pip install torchvision fvcore)")]

    def fvcore_count():
        model = torchvision.models.resnet152()
        params = sum(p.numel() for p in model.parameters())
        flops = FlopCountAnalysis(model.eval(), torch.randn(1, 3, 224, 224))
        flops.unsupported_ops_warnings(False)
        flops.uncalled_modules_warnings(False)
        by_op = flops.by_operator()  # fvcore also counts batch norm and pooling: keep conv and fc, as cnndsl
        return params, sum(v for k, v in by_op.items() if k in ("conv", "linear", "addmm", "matmul"))

    t0 = time.perf_counter()
    params, macs = fvcore_count()
    t_theirs = time.perf_counter() - t0
    agree = "agree" if (params, macs) == (net.params, net.macs) else \
        f"cnndsl {net.params}/{net.macs} vs fvcore {params}/{macs}"
    return [Row("compiler", "resnet152 params + MACs: cnndsl.load vs torchvision + fvcore", f"{t_ours:.2f} s",
                f"{t_theirs:.2f} s", t_theirs / t_ours, f"params {net.params:,}, MACs {net.macs:,}: {agree}")]


if __name__ == "__main__":
    print(table(run()))
    sys.exit(0)
