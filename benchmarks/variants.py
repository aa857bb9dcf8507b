"""How fast are members of a search space checked? From the IR (cnndsl) against PyTorch.

For a sample of a shipped space, times (1) ``cnndsl.search.variants``: resolve, infer shapes, count
parameters/MACs/activations and hash, one core; and (2) building the same members as PyTorch
modules (``cnndsl.build_torch`` from the same checked IR) and counting their parameters: a member is
checked by a framework model only once it is built, so that path costs both. Prints both and the ratio.

    python benchmarks/variants.py [SPACE] [N]
"""

from __future__ import annotations

import sys
import time

import torch

import cnndsl
from cnndsl.search.variants import Space


def main(space_name: str = "nb201", n: int = 200) -> None:
    torch.set_num_threads(1)
    space = Space.open(space_name)
    start = time.perf_counter()
    members = [v for v in cnndsl.variants(space, sample=n, seed=0)]
    ir_s = time.perf_counter() - start
    checked = n  # invalid members are checked too, then left out
    start = time.perf_counter()
    for v in members:
        model = cnndsl.build_torch(v.network_obj)
        assert sum(p.numel() for p in model.parameters()) == v.params
    torch_s = time.perf_counter() - start
    ir_ms = 1000 * ir_s / checked
    build_ms = 1000 * torch_s / len(members)
    print(f"space {space_name}: {checked} members sampled, {len(members)} valid")
    print(f"checked from the IR (cnndsl.search.variants):           {ir_ms:7.1f} ms per member")
    print(f"checked by building the PyTorch model (IR + build): {ir_ms + build_ms:7.1f} ms per member")
    print(f"ratio:                                            {(ir_ms + build_ms) / ir_ms:7.1f}x")

if __name__ == "__main__":
    main(*(sys.argv[1:2] or ["nb201"]), *(int(a) for a in sys.argv[2:3]))
