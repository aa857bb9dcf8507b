"""PyTorch weights for the inference build: a training build's ``state_dict`` with its batch norms folded.

In eval mode ``bn(conv(x))`` is itself a convolution: with ``scale = gamma / sqrt(running_var + eps)``,

    weight' = weight * scale        (per output channel)
    bias'   = (bias - running_mean) * scale + beta

:func:`cnndsl.passes.fold_bn.fold_bn` rewrites the graph (and records, in each conv's ``meta``, which
batch norm it absorbed); this module does the same to the weights, by their torch ``state_dict`` keys
(the IR's dotted names plus ``.weight``, ``.bias``, ``.running_mean``, ``.running_var``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from cnndsl.ir.graph import Graph
from cnndsl.passes.fold_bn import folded_convs


def fold_state_dict(g: Graph, state: Mapping[str, Any]) -> dict[str, Any]:
    """Map a training build's ``state_dict`` to the inference build's for graph ``g`` (after ``fold_bn``).

    ``state`` holds torch tensors (or anything with the same arithmetic and
    ``reshape``). Entries of layers the inference build dropped (folded batch
    norms, auxiliary heads) are left out; everything else is copied as is.
    """
    folded = folded_convs(g)
    keep = {n.name for n in g.nodes()}
    out: dict[str, Any] = {}
    for key, value in state.items():
        owner = _owner(key, keep)
        if owner is not None and owner not in folded:
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


def _owner(key: str, layers: set[str]) -> str | None:
    """The layer a ``state_dict`` key belongs to: the longest prefix of it (the key itself for a bare parameter,
    a layer scale) that is a layer. A plugin op's module may hold tensors deeper (``cbam1.fc1.weight``)."""
    while True:
        if key in layers:
            return key
        if "." not in key:
            return None
        key = key.rsplit(".", 1)[0]
