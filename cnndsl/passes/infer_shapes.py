"""infer_shapes: give every node its output shape, from the inputs forward.

Raises :class:`CnnShapeError` at the node's source span when shapes do not fit
(a kernel larger than its input, channels that differ at an add, ...) and
collects warnings (a stride that does not fit).

Layers that only the auxiliary outputs use run only in training (eval mode
returns the main output alone), so an input too small for them is a size to
evaluate at, as torchvision runs Inception v3's eval at 160 px: such a layer's
shape stays None (its error in ``meta["shape_error"]``), so do the layers
after it, and ``drop_unfit_training`` then leaves their heads out with a
warning; training refuses such a build (``check_training``).

>>> from cnndsl import loads
>>> loads("network t: input 3x32x32  conv5-10(p=2)").graph.node("conv1").shape
(10, 32, 32)
"""

from __future__ import annotations

from cnndsl.errors import CnnDslError, CnnDslWarning, CnnShapeError
from cnndsl.ir.graph import MOUNT, Graph
from cnndsl.ir.ops import OPS
from cnndsl.passes.limits import SizeLimits, check_shape


def infer_shapes(g: Graph, warnings: list[CnnDslWarning] | None = None, limits: SizeLimits | None = None, *,
                 again: bool = False) -> Graph:
    """Give every node its shape; with ``limits``, refuse the first layer whose output is over them.

    ``again=True`` after a rewrite of a graph whose shapes were inferred (``resolve_shortcuts``): only the
    layers without a shape, and those reading a layer whose shape was given or changed in this run, are
    inferred. Resolve's fragments use it; a rewrite that changes a layer's arguments in place needs the full pass.
    """
    redone: set[str] = set()
    seen = {(w.message, str(w.span)) for w in warnings or ()}  # the pipeline runs this pass twice

    def warn(w: CnnDslWarning) -> None:
        key = (w.message, str(w.span))
        if warnings is not None and key not in seen and w not in warnings:  # the pass runs twice
            seen.add(key)
            warnings.append(w)

    training_only: set[str] | None = None  # what only the aux heads use: worked out at the first misfit
    inputs_of, node_of = g.inputs_of, g.node
    for node in g.nodes():
        op = node.op
        if op == MOUNT:  # a shared fragment, checked when it was built: its shape and warnings are known
            for w in node.meta["mount"][1].warnings:
                warn(w)
            continue
        if op == "input":
            node.shape = tuple(node.args["shape"])
        else:
            srcs = inputs_of(node.name)
            if again and node.shape is not None and not (redone and any(src in redone for src in srcs)):
                continue
            before = node.shape
            xs = [node_of(src).shape for src in srcs]
            if None in xs:  # after a training-only layer that does not fit
                node.shape = None
                continue
            try:
                node.shape = OPS[op].infer_many(xs, node.args, node.span, warn)
            except CnnShapeError as e:
                if training_only is None:
                    training_only = g.ancestors(g.aux_outputs) - g.main_path()
                if node.name not in training_only:  # the main path, or a dangling layer (check reports it)
                    raise g.noted(e, node.name) from None
                node.shape = None  # training-only: the aux heads it feeds are left out (drop_unfit_training)
                node.meta["shape_error"] = g.noted(e, node.name)
                continue
            except CnnDslError as e:  # a bad argument only the shapes show
                raise g.noted(e, node.name) from None
            if again and node.shape != before:
                redone.add(node.name)
        if limits is not None:
            try:
                check_shape(node, limits)
            except CnnDslError as e:
                raise g.noted(e, node.name) from None
    return g
