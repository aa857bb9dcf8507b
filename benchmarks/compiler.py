"""The compiler itself: parse-to-source time per zoo network, growth with depth, and the cost model.

- parse to PyTorch source for every zoo network (load: parse, resolve, every pass; then code generation);
- ResNet for CIFAR at 6n+2 = 20, 110, 1202 layers (``resnet_cifar(n)``, n = 3, 18, 200): time per layer
  must stay flat (linear growth);
- parameters and MACs of resnet50, resnet152, inception_v4 and efficientnet_b7 from ``cnndsl.load``, cold (the
  resolve memo emptied before each repetition, untimed: freeing the last load's fragments is not this load's
  work, as it is not in a fresh process; the parsed zoo files stay cached, as after any first load) and warm
  (the memo kept: a network loaded before is made from its skeleton), against what a user does today: build torchvision's model (timm's Inception-v4) and
  count with fvcore (needs torchvision, timm and fvcore; skipped with a hint otherwise). Ratio on the cold time.
"""

from __future__ import annotations

import statistics
import sys

from .common import QUICK, THREADS, Row, fvcore_count, ms, side_by_side, table, timed


def _best(fn, reps: int) -> float:
    return statistics.median(timed(fn) for _ in range(reps))


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


#: zoo network -> how the reference builds it (torchvision, or timm for Inception-v4) and its input size
COST_MODELS = {
    "resnet50": ("torchvision", "resnet50", 224),
    "resnet152": ("torchvision", "resnet152", 224),
    "inception_v4": ("timm", "inception_v4", 299),
    "efficientnet_b7": ("torchvision", "efficientnet_b7", 600),
}


def _clear_memo() -> None:
    """Empty the resolve memo (a fresh process's state) where this cnndsl has one."""
    import importlib

    clear = getattr(importlib.import_module("cnndsl.passes.resolve"), "clear_memo", None)
    if clear is not None:
        clear()


def _load(name: str) -> tuple[int, int]:
    import cnndsl

    net = cnndsl.load(name)
    return net.params, net.macs


def _reference(lib: str, ctor: str, size: int) -> tuple[int, int]:
    """Build the model with its own library and count parameters and conv+fc MACs with fvcore."""
    if lib == "timm":
        import timm

        model = timm.create_model(ctor)
    else:
        import torchvision

        model = getattr(torchvision.models, ctor)()
    return fvcore_count(model, size)


def cost_model() -> list[Row]:
    """Parameters and MACs from ``cnndsl.load``, cold (the resolve memo emptied before each repetition) and warm
    (the memo kept), against building the model with torchvision (timm) and counting with fvcore."""

    try:
        import torch
        import torchvision  # noqa: F401
        from fvcore.nn import FlopCountAnalysis  # noqa: F401
    except ImportError:
        rows = []
        for name in COST_MODELS:
            t = side_by_side({"cold": lambda name=name: _load(name)}, 3, setup={"cold": _clear_memo})
            rows.append(Row("compiler", f"{name} params + MACs: cnndsl.load cold", ms(t["cold"]), "-", None,
                            "fvcore comparison skipped: needs torchvision, timm and fvcore (pip install torchvision "
                            "timm fvcore)"))
        return rows
    torch.set_num_threads(THREADS)
    rows = []
    for i, (name, (lib, ctor, size)) in enumerate(COST_MODELS.items()):
        if lib == "timm":
            try:
                import timm  # noqa: F401
            except ImportError:
                rows.append(Row("compiler", f"{name} params + MACs", "-", "-", None, "skipped: needs timm"))
                continue
        out: dict[str, tuple[int, int]] = {}

        def keep(key, fn, out=out):
            return lambda: out.__setitem__(key, fn())

        t = side_by_side({"cold": keep("cold", lambda name=name: _load(name)),
                          "warm": keep("warm", lambda name=name: _load(name)),
                          "theirs": keep("theirs", lambda lib=lib, ctor=ctor, size=size: _reference(lib, ctor, size))},
                         1 if QUICK else 3, warmup=0 if QUICK and i else 1,  # QUICK: only the first warms up
                         inner={"cold": 1 if QUICK else 7, "warm": 1 if QUICK else 7},
                         setup={"cold": _clear_memo})  # a fresh process's memo: emptied, untimed
        ours = out["cold"]
        agree = "agree" if out["theirs"] == ours == out["warm"] else (
            f"differ: cnndsl {ours[0]:,} / {ours[1]:,} vs fvcore {out['theirs'][0]:,} / {out['theirs'][1]:,}")
        rows.append(Row("compiler", f"{name} params + MACs: cnndsl.load cold vs {lib} + fvcore", ms(t["cold"]),
                        ms(t["theirs"]), t["theirs"] / t["cold"],
                        f"params {ours[0]:,}, MACs {ours[1]:,}: {agree}; warm (memo kept) {ms(t['warm'])}, "
                        f"{t['theirs'] / t['warm']:.0f}x"))
    return rows


if __name__ == "__main__":
    print(table(run()))
    sys.exit(0)
