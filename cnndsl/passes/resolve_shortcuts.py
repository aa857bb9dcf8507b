"""resolve_shortcuts: decide every residual shortcut once shapes are known.

A ``shortcut`` node becomes the identity when the residual body keeps the shape,
and otherwise a projection (ResNet option B: 1x1 conv with the body's stride and
no bias, then batch norm, as ``downsample.0`` and ``downsample.1``), a 1x1 conv
with bias (``shortcut=conv``), or zero-padding (option A, ``shortcut=pad``).
A rewriting pass: run ``infer_shapes`` again afterwards. The layers made keep the shortcut's ``frozen`` flag
(``freeze(layer2)`` reaches ``layer2.0.downsample.*``).
"""

from __future__ import annotations

from cnndsl.errors import CnnShapeError
from cnndsl.ir.graph import Graph, Scope
from cnndsl.ir.ops import OPS


def resolve_shortcuts(g: Graph, warnings=None, limits=None) -> Graph:
    """Decide every shortcut (``limits`` is not used here: the projections are counted by ``count``)."""
    for node in [n for n in g.nodes() if n.op == "shortcut"]:
        (add, port), = g.consumers(node.name)
        src, target = g.inputs_of(node.name)
        x, body = g.node(src).shape, g.node(target).shape
        mode = node.args["mode"]
        if mode == "auto":
            mode = "identity" if x == body else "proj"
        elif mode == "pad" and x == body:
            mode = "identity"  # option A pads only where the shape changes
        if mode == "identity":
            g.remove(node.name)
            _connect(g, add, port, src)
            continue
        if len(x) != 3 or len(body) != 3:
            raise CnnShapeError("a projection shortcut needs feature maps", node.span)
        stride = (-(-x[1] // body[1]), -(-x[2] // body[2]))
        span, name, frozen = node.span, node.name, node.frozen
        g.remove(name)
        if mode == "pad":
            args = OPS["padshortcut"].normalize({"c": body[0], "s": stride[0]}, span)
            g.add(name, "padshortcut", args, span, [src])
            g.reorder_after(name, add)
            _connect(g, add, port, name)
            continue
        conv = OPS["conv"].normalize({"c": body[0], "k": 1, "s": stride, "p": 0, "bias": mode == "conv"}, span)
        if mode == "conv":
            g.add(name, "conv", conv, span, [src]).frozen = frozen
            g.reorder_after(name, add)
            _connect(g, add, port, name)
            continue
        g.scopes[name] = Scope(name, "sequence", span=span)
        g.late_scopes.append(name)
        g.add(f"{name}.0", "conv", conv, span, [src]).frozen = frozen
        bn = OPS["bn"].normalize({"eps": node.args["bn_eps"], "momentum": node.args["bn_momentum"]}, span)
        g.add(f"{name}.1", "bn", bn, span, [f"{name}.0"]).frozen = frozen
        g.reorder_after(f"{name}.0", add)
        g.reorder_after(f"{name}.1", add)
        _connect(g, add, port, f"{name}.1")
    return g


def _connect(g: Graph, dst: str, port: int, src: str) -> None:
    g.connect(src, dst, port)
