"""Feature extraction, as timm's ``features_only``: a network cut after the layers whose outputs are wanted.

A feature is a layer or a scope, named by its dotted path (``layer2``); a scope's output is its exit, the one
layer of it read outside it. :func:`stage_ends` picks a network's stage ends from the IR: on the main path,
the last *cut point* (a layer that every path from the input to the output passes through) at each spatial
resolution, up to the head (the first global pooling, or the first value that is not a feature map), one
that ends a whole block where there is one. For a ResNet that is the stem's activation and the ends of
``layer1`` to ``layer4``, timm's five features.

:func:`features_network` keeps the features' layers and everything they depend on: the head, the aux heads and
anything else after the last feature are dropped, so the cut network allocates nothing it does not return.
Each feature is described as timm's ``feature_info`` is: ``num_chs``, ``reduction`` (the input's height over
the feature's, rounded down) and ``module`` (the path).
"""

from __future__ import annotations

import copy
import difflib
import itertools
from dataclasses import dataclass

from cnndsl.errors import CnnArgumentError, CnnNameError
from cnndsl.ir.graph import Graph
from cnndsl.ir.network import Network
from cnndsl.passes.check import check
from cnndsl.passes.count import count

#: Ops that begin a classifier head: a global pooling (or a flatten) ends the feature maps.
HEAD_OPS = frozenset({"gap", "flatten"})


@dataclass(frozen=True)
class Feature:
    """One feature of a cut network: its path as named, the layer whose output it is, and timm's numbers."""

    module: str
    node: str
    num_chs: int
    reduction: int

    def info(self) -> dict:
        """timm's ``feature_info`` entry: ``{"num_chs": ..., "reduction": ..., "module": ...}``."""
        return {"num_chs": self.num_chs, "reduction": self.reduction, "module": self.module}


def exit_of(g: Graph, path: str) -> str:
    """The layer whose output is the output of ``path`` (a layer, or a scope with one exit)."""
    if path in g:
        return path
    members = g.scope_members(path)
    if not members:
        names = [n.name for n in g.nodes()] + [s for s in g.scope_tree() if s]
        close = difflib.get_close_matches(path, names, 1, 0.6)
        raise CnnNameError(f"no layer or scope named '{path}' for a feature", None,
                           f"did you mean '{close[0]}'?" if close else "name a layer or a labelled scope")
    exits = g.scope_boundary(path)[1]
    if len(exits) != 1:
        raise CnnArgumentError(f"scope '{path}' has {len(exits)} outputs; a feature is one value", None,
                               "name one of its layers: " + ", ".join(exits[:4]))
    return exits[0]


def _cut_points(g: Graph) -> list[str]:
    """The main path's layers that every path from the input to the output passes through, in graph order.

    With the layers in topological order, a layer is a cut point exactly when no edge jumps over it (an edge
    from before it to after it would be a path around it).
    """
    main = g.main_path()
    order = [n.name for n in g.nodes() if n.name in main]
    pos = {name: i for i, name in enumerate(order)}
    reach = -1  # the furthest position an edge from an earlier layer lands on
    cuts = []
    for i, name in enumerate(order):
        if reach <= i:
            cuts.append(name)
        for dst, _ in g.consumers(name):
            if dst in pos:
                reach = max(reach, pos[dst])
    return cuts


def _outermost_scope(g: Graph, node: str) -> str:
    """The outermost scope that ``node`` is the one exit of (``layer1`` for ``layer1.1.relu2``), else ``node``."""
    parts = node.split(".")
    for i in range(1, len(parts)):
        scope = ".".join(parts[:i])
        if g.scope_boundary(scope)[1] == [node]:
            return scope
    return node


def _ends_a_part(g: Graph, node: str, later: str) -> bool:
    """Whether ``node`` ends a whole part of the scope it shares with ``later``: it is a layer of that scope, or
    the exit of the child scope holding it (MobileNet's ``features.1``, not the expansion that starts
    ``features.2``)."""
    a, b = node.split("."), later.split(".")
    common = 0
    while common < min(len(a), len(b)) - 1 and a[common] == b[common]:
        common += 1
    part = ".".join(a[:common + 1])
    return part == node or g.scope_boundary(part)[1] == [node]


def stage_ends(g: Graph) -> list[str]:
    """The paths of the network's stage ends: at each spatial resolution, before the head, the last cut point
    that ends a whole part of the network (a block's output, not the first layer of the next block), else the
    last cut point."""
    runs: list[list[str]] = []  # the cut points of each run of one resolution
    for name in _cut_points(g):
        node = g.node(name)
        if node.op == "input":
            continue
        if node.op in HEAD_OPS or len(node.shape) != 3:
            break
        if runs and g.node(runs[-1][-1]).shape[1:] == node.shape[1:]:
            runs[-1].append(name)
        else:
            runs.append([name])
    ends = [next((n for n in reversed(run) if _ends_a_part(g, n, after[-1])), run[-1])
            for run, after in itertools.pairwise(runs)] + [runs[-1][-1]] if runs else []
    return [_outermost_scope(g, name) for name in ends]


def describe(g: Graph, paths: list[str]) -> list[Feature]:
    """The features at ``paths`` (each a layer or a scope), in the order given."""
    if not paths:
        raise CnnArgumentError("no features asked for", None, 'name them: features=["layer2", "layer3"]')
    height = g.node(g.inputs[0]).shape
    out = []
    for path in paths:
        node = exit_of(g, path)
        shape = g.node(node).shape
        if len(shape) != 3 or len(height) != 3:
            raise CnnArgumentError(f"feature '{path}' is not a feature map (its shape is "
                                   f"{'x'.join(map(str, shape))})", None, "name a layer before the head")
        out.append(Feature(path, node, shape[0], max(1, height[1] // shape[1])))
    if len({f.node for f in out}) != len(out):
        raise CnnArgumentError("two features name the same output", None, "name each feature once")
    return out


def features_network(net: Network, paths: list[str] | None = None) -> tuple[Network, list[Feature]]:
    """``net`` cut after the features at ``paths`` (None: its :func:`stage_ends`), and the features.

    ``net`` is left as it is. The cut network's output is the last feature in graph order.
    """
    g = copy.deepcopy(net.graph)
    features = describe(g, stage_ends(g) if paths is None else list(paths))
    keep = g.ancestors([f.node for f in features])
    for node in [n.name for n in g.nodes()][::-1]:
        if node not in keep:
            g.remove(node)
    order = [n.name for n in g.nodes()]
    g.output = max((f.node for f in features), key=order.index)
    g.aux_outputs = []
    g.scopes = {name: s for name, s in g.scopes.items() if g.scope_members(name) or name in g}
    for run in (count, check):
        run(g)
    return Network(g, list(net.warnings)), features
