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
