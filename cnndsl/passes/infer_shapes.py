"""infer_shapes: give every node its output shape, from the inputs forward.

Raises :class:`CnnShapeError` at the node's source span when shapes do not fit
(a kernel larger than its input, channels that differ at an add, ...) and
collects warnings (a stride that does not fit).

>>> from cnndsl import loads
>>> loads("network t: input 3x32x32  conv5-10(p=2)").graph.node("conv1").shape
(10, 32, 32)
"""

from __future__ import annotations

from cnndsl.errors import CnnDslWarning
from cnndsl.ir.graph import Graph
from cnndsl.ir.ops import OPS
from cnndsl.passes.limits import SizeLimits, check_shape


def infer_shapes(g: Graph, warnings: list[CnnDslWarning] | None = None, limits: SizeLimits | None = None) -> Graph:
    """Give every node its shape; with ``limits``, refuse the first layer whose output is over them."""
    seen = {(w.message, str(w.span)) for w in warnings or ()}  # the pipeline runs this pass twice

    def warn(w: CnnDslWarning) -> None:
        key = (w.message, str(w.span))
        if warnings is not None and key not in seen and w not in warnings:  # the pass runs twice
            seen.add(key)
            warnings.append(w)

    for node in g.nodes():
        if node.op == "input":
            node.shape = tuple(node.args["shape"])
        else:
            xs = [g.node(src).shape for src in g.inputs_of(node.name)]
            node.shape = OPS[node.op].infer_many(xs, node.args, node.span, warn)
        if limits is not None:
            check_shape(node, limits)
    return g
