"""fold_bn: fold each eval-mode batch norm into the convolution before it.

In eval mode ``bn(conv(x))`` is itself a convolution: with
``scale = gamma / sqrt(running_var + eps)``,

    weight' = weight * scale        (per output channel)
    bias'   = (bias - running_mean) * scale + beta

The pass rewrites the graph: a ``bn`` whose input is a ``conv`` that has no
other consumer (and is not an output) is removed, its consumers read the conv,
and the conv gets ``bias=True`` plus two bookkeeping arguments,
``folded_from`` (the bn's name) and ``folded_eps``. The conv keeps its name.
:func:`fold_state_dict` maps a training build's ``state_dict`` to the
inference build's with those records. The pass leaves counts stale: run
``count`` after it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ..ir import Graph


def fold_bn(g: Graph, warnings=None) -> Graph:
    """Fold every ``conv -> bn`` pair where the bn is the conv's only consumer into one conv with a bias."""
    outputs = set(g.outputs)
    for bn in list(g.nodes()):
        if not bn.opdef.foldable or bn.name in outputs:
            continue
        (src,) = g.inputs_of(bn.name)
        conv = g.node(src)
        if not conv.opdef.fold_target or src in outputs or len(g.consumers(src)) != 1 or "folded_from" in conv.args:
            continue
        consumers = g.consumers(bn.name)
        g.remove(bn.name)
        for dst, port in consumers:
            g.connect(src, dst, port)
        conv.args["folded_from"] = bn.name
        conv.args["folded_eps"] = bn.args["eps"]
        conv.args["folded_bias"] = conv.args["bias"]
        conv.args["bias"] = True
    return g


def folded_convs(g: Graph) -> dict[str, tuple[str, float, bool]]:
    """conv name -> (folded bn's name, its eps, whether the conv had a bias before folding)."""
    return {n.name: (n.args["folded_from"], n.args["folded_eps"], n.args["folded_bias"])
            for n in g.nodes() if "folded_from" in n.args}


def fold_state_dict(g: Graph, state: Mapping[str, Any]) -> dict[str, Any]:
    """Map a training build's ``state_dict`` to the inference build's for graph ``g`` (after :func:`fold_bn`).

    ``state`` holds torch tensors (or anything with the same arithmetic and
    ``reshape``). Entries of layers the inference build dropped (folded batch
    norms, auxiliary heads) are left out; everything else is copied as is.
    """
    folded = folded_convs(g)
    keep = {n.name for n in g.nodes()}
    out: dict[str, Any] = {}
    for key, value in state.items():
        owner = key.rsplit(".", 1)[0]
        if owner in keep and owner not in folded:
            out[key] = value
    for conv, (bn, eps, had_bias) in folded.items():
        weight = state[f"{conv}.weight"]
        mean, var = state[f"{bn}.running_mean"], state[f"{bn}.running_var"]
        gamma = state.get(f"{bn}.weight")
        beta = state.get(f"{bn}.bias")
        scale = 1.0 / (var + eps) ** 0.5
        if gamma is not None:
            scale = gamma * scale
        bias = state[f"{conv}.bias"] if had_bias else 0.0
        bias = (bias - mean) * scale
        if beta is not None:
            bias = bias + beta
        out[f"{conv}.weight"] = weight * scale.reshape(-1, *([1] * (weight.dim() - 1)))
        out[f"{conv}.bias"] = bias
    return out
