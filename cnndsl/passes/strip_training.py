"""strip_training: drop what only training needs, for an inference build.

- every ``dropout`` and ``droppath`` node is removed and its consumers read its
  input instead (both are the identity in eval mode);
- the auxiliary outputs (GoogLeNet's and Inception v3's side heads) are removed,
  with every layer that only they use.

Names of the remaining layers are unchanged, so their parameters keep their
``state_dict`` keys. The pass expects shapes to be inferred already and leaves
counts stale: run ``count`` after it.
"""

from __future__ import annotations

from cnndsl.errors import CnnDslWarning
from cnndsl.ir.graph import Graph
from cnndsl.ir.ops import Dropout, DropPath

#: The ops that are the identity in eval mode: an inference build leaves them out.
TRAINING_ONLY = frozenset({Dropout.name, DropPath.name})


def strip_training(g: Graph, warnings=None) -> Graph:
    """Remove dropout and stochastic depth layers, auxiliary outputs and the layers only the auxiliary outputs use."""
    g.aux_outputs = []
    live = g.ancestors(g.outputs) | set(g.inputs)
    for node in list(g.nodes()):
        if node.name not in live:
            g.remove(node.name)
    for node in list(g.nodes()):
        if node.op not in TRAINING_ONLY:
            continue
        (src,) = g.inputs_of(node.name)
        consumers = g.consumers(node.name)
        if node.name == g.output:
            g.output = src
        g.remove(node.name)
        for dst, port in consumers:
            g.connect(src, dst, port)
    return g


def drop_unfit_training(g: Graph, warnings: list[CnnDslWarning] | None = None, limits=None) -> Graph:
    """Leave out the auxiliary heads that the input is too small for, with a warning for each.

    ``infer_shapes`` leaves a training-only layer that does not fit unshaped (its error in
    ``meta["shape_error"]``). Its heads run only in training, so the network still evaluates at this size,
    as torchvision's Inception v3 does at 160 px: this pass removes those aux outputs and the layers only
    they use, and records each error in ``g.unfit_training``, which ``check_training`` raises for a
    training run. Heads that fit stay.
    """
    unfit = {n.name: n.meta["shape_error"] for n in g.nodes() if n.shape is None and "shape_error" in n.meta}
    if not unfit:
        return g
    kept = []
    for aux in g.aux_outputs:
        below = g.ancestors([aux])
        failed = next((n.name for n in g.nodes() if n.name in unfit and n.name in below), None)  # the first
        if failed is None:
            kept.append(aux)
            continue
        error = unfit[failed]
        g.unfit_training.append((aux, error))
        if warnings is not None:
            shape = "x".join(map(str, g.node(g.inputs[0]).shape))
            warnings.append(CnnDslWarning(
                f"the aux head '{aux}' does not fit a {shape} input (at '{failed}': {error.message}); it runs "
                "only in training, so this build leaves it out", error.span,
                "evaluating at this size is fine; to train, give an input the aux head fits (--input)"))
    g.aux_outputs = kept
    live = g.ancestors(g.outputs) | set(g.inputs)
    for node in list(g.nodes()):
        if node.name not in live:
            g.remove(node.name)
    return g
