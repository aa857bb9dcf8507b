"""count: parameters, conv+fc MACs and activation elements per node.

Activations count the elements each layer's forward pass allocates in eval mode
(the input included; in-place ReLU, dropout, flatten and identity allocate
nothing), which is the convention of the VGG-16 memory table in the seeds
(about 24M values, 93 MB at 4 bytes).
"""

from __future__ import annotations

import math

from cnndsl.errors import CnnDslError
from cnndsl.ir.graph import MOUNT, Graph
from cnndsl.ir.ops import OPS
from cnndsl.passes.limits import SizeLimits, Totals


def count(g: Graph, warnings=None, limits: SizeLimits | None = None) -> Graph:
    """Count every node; with ``limits``, refuse the first layer that brings the totals over them."""
    totals = Totals(limits) if limits is not None else None
    inputs_of, node_of = g.inputs_of, g.node
    for node in g.nodes():
        if node.op == MOUNT:  # a shared fragment, counted when it was built
            if totals is not None:
                try:
                    _add_mount(totals, node)
                except CnnDslError as e:
                    raise g.noted(e, e.layer) from None
            continue
        op = OPS[node.op]
        xs = [node_of(src).shape for src in inputs_of(node.name)]
        node.params = op.count_params(xs, node.args)
        node.macs = op.count_macs(xs, node.args, node.shape)
        node.activations = math.prod(node.shape) if op.materializes else 0
        if totals is not None:
            try:
                totals.add(node.name, node.params, node.activations, node.span)
            except CnnDslError as e:
                raise g.noted(e, node.name) from None
    return g


def _add_mount(totals: Totals, node) -> None:
    """Add a mounted fragment's totals; one that crosses a limit is added layer by layer, to name the layer."""
    prefix, frag = node.meta["mount"]
    limits = totals.limits
    if (totals.params + node.params <= limits.params
            and totals.activations + node.activations <= limits.activations):
        totals.params += node.params
        totals.activations += node.activations
        return
    layers: list = []
    frag.emit(prefix, "", layers)
    for layer, _ in layers:
        try:
            totals.add(layer.name, layer.params, layer.activations, layer.span)
        except CnnDslError as e:
            e.layer = layer.name  # the layer, for the notes of the instances around it
            raise
