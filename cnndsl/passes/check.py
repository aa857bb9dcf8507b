"""check: whole-network checks that no single layer can see.

Every layer must lead to an output (a dangling branch is a mistake: its result
would be computed and thrown away), and the graph must be well formed.
"""

from __future__ import annotations

from cnndsl.errors import CnnDslError, CnnDslWarning, CnnShapeError
from cnndsl.ir.graph import Graph


def check(g: Graph, warnings: list[CnnDslWarning] | None = None, limits=None) -> Graph:
    """Check the whole graph (``limits`` is not used here: ``infer_shapes`` and ``count`` check sizes)."""
    g.verify()
    if _all_lead_to_outputs(g):
        return g
    live = g.ancestors(g.outputs)
    for node in g.nodes():
        if node.name not in live and node.op != "input":
            if g.mounted:  # name the first unused layer itself, not the fragment that holds it
                return check(g.flatten())
            raise g.noted(CnnDslError(f"the result of '{node.name}' is never used", node.span,
                                      "every layer must lead to the output; label it and refer to it with @name, "
                                      "or put it inside aux<...> to make it an extra output"), node.name)
    return g


def _all_lead_to_outputs(g: Graph) -> bool:
    """Whether every layer leads to an output, seen from the nodes no layer reads: following the readers from any
    layer ends at one of them, so when each is an output (or an input) no layer is left unused. The usual case,
    told without walking the graph; a layer's own readers are not enough (a branch may end in a dangling one)."""
    outputs = set(g.outputs)
    return all(name in outputs or g.node(name).op == "input" for name in g.unread())


def check_training(g: Graph) -> Graph:
    """Refuse to train a build whose aux heads were left out because the input is too small for them.

    Those heads run only in training (``drop_unfit_training``): evaluating at that size is fine, but training
    it would train a different network. The error is the first head's, at the layer that does not fit.
    """
    if g.unfit_training:
        aux, error = g.unfit_training[0]  # raised at the layer that does not fit
        shape = "x".join(map(str, g.node(g.inputs[0]).shape))
        raise CnnShapeError(f"cannot train '{g.name}' at {shape}: its aux head '{aux}' runs in training and "
                            f"{error.message}", error.span,
                            "train at an input the aux head fits (the network's own input size does), or "
                            "derive a network without the aux head")
    return g
