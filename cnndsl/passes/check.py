"""check: whole-network checks that no single layer can see.

Every layer must lead to an output (a dangling branch is a mistake: its result
would be computed and thrown away), and the graph must be well formed.
"""

from __future__ import annotations

from cnndsl.errors import CnnDslError, CnnDslWarning
from cnndsl.ir.graph import Graph


def check(g: Graph, warnings: list[CnnDslWarning] | None = None, limits=None) -> Graph:
    """Check the whole graph (``limits`` is not used here: ``infer_shapes`` and ``count`` check sizes)."""
    g.verify()
    live = g.ancestors(g.outputs)
    for node in g.nodes():
        if node.name not in live and node.op != "input":
            raise CnnDslError(f"the result of '{node.name}' is never used", node.span,
                              "every layer must lead to the output; label it and refer to it with @name, "
                              "or put it inside aux<...> to make it an extra output")
    return g
