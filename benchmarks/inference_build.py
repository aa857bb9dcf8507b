"""The inference build (BN folded, dropout/aux dropped, channels-last) against torchvision's eager inference.

Also reports how far the inference build's float32 output is from the training
build's in eval mode (the equality itself, in float64, is tested in
tests/test_inference_build.py). Needs torchvision (see benchmarks.vs_torchvision).

Rows: resnet50, efficientnet_b0 and GoogLeNet at batch 1 and 8, both sides holding torchvision's weights.

Speed ratio = torchvision eager time / inference build time (target >= 1.2 on resnet50).
"""

from __future__ import annotations

import sys

from .common import QUICK, THREADS, Row, ms, side_by_side, table
from .vs_torchvision import HOW_TO_GET

MODELS = {"resnet50": ("resnet50", {}, 224), "efficientnet_b0": ("efficientnet_b0", {}, 224),
          "googlenet_torchvision": ("googlenet", {"init_weights": False}, 224)}


def run() -> list[Row]:
    try:
        import torch
        import torchvision
    except ImportError:
        return [Row("inference build", "all", "-", "-", None, "skipped: " + HOW_TO_GET)]
    from cnndsl import api

    torch.set_num_threads(THREADS)
    rows = []
    reps = 3 if QUICK else 7
    for name, (ctor, kwargs, size) in MODELS.items():
        torch.manual_seed(0)
        theirs = getattr(torchvision.models, ctor)(**kwargs).eval()
        train = api.build_torch(name).eval()
        # torchvision's weights on both sides (names match): CPU speed depends on the values (see vs_torchvision)
        train.load_state_dict(theirs.state_dict(), strict=True)
        infer = api.build_torch(name, inference=True, state_dict=train.state_dict())
        x8 = torch.randn(8, 3, size, size)
        with torch.inference_mode():
            want, got = train(x8), infer(x8)
            err = ((got - want).abs().max() / want.abs().max()).item()
            for batch in (1, 8):
                x = x8[:batch].contiguous()
                t = side_by_side({"ours": lambda m=infer, x=x: m(x), "theirs": lambda m=theirs, x=x: m(x)},
                                 reps if batch == 1 else max(3, reps - 2))
                rows.append(Row("inference build", f"{name} inference build vs torchvision eager, batch {batch}",
                                ms(t["ours"]), ms(t["theirs"]), t["theirs"] / t["ours"],
                                f"float32 max rel. diff to training build {err:.1e}" if batch == 1 else ""))
    return rows


if __name__ == "__main__":
    print(table(run()))
    sys.exit(0)
