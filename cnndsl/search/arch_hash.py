"""A canonical hash of a network's architecture: equal for structurally identical networks however written.

The hash ignores every name and looks only at the data flow: which ops, with which arguments (every
default filled in), feed which operand of which. Identity layers (``identity``, ``skip``) are contracted
first, and a ``none`` edge never reaches the IR, so NAS-Bench-201 cells that differ only in where a skip
sits hash alike when the networks they build are the same.

The graph it describes (:func:`canonical_graph`) has one node per layer, labelled with the op and its
arguments and nothing else, and one edge per (operand, layer) pair. Operand positions live on the edge:
its ``port`` is the tuple of positions that the operand fills, in order, so ``concat(x, y, x)`` has an
edge ``x`` with ``(0, 2)`` and an edge ``y`` with ``(1,)``. For an op whose operands commute
(:meth:`Op.commutes <cnndsl.ir.ops.Op.commutes>`, declared on the op: a plain sum) every position is
0, so the tuple only counts: ``x + x + y`` has ``(0, 0)`` for ``x`` and ``(0,)`` for ``y``, however
the sum is ordered, and it differs from ``x + y + y``.

The refinement is Weisfeiler-Lehman's run to convergence. A node's first colour is its label and the
output positions it fills; sweeps then recolour every node from its colour and its neighbours'
``(port, colour)`` multiset, alternately its operands' in topological order and its consumers' in
reverse, until one splits no colour class (:func:`colours`). The graph's hash is the multiset of the final colours (the outputs
are in them). Non-isomorphic graphs that Weisfeiler-Lehman cannot tell apart (highly symmetric ones:
parallel branches of alike layers wired regularly) share a hash, so :class:`HashRegistry` confirms a repeated hash with an
isomorphism check of the same structure, labels, output positions and edge ports, and tells genuinely
different graphs apart.
"""

from __future__ import annotations

import hashlib
import json
from collections import defaultdict

import networkx as nx

from cnndsl.ir.graph import Graph
from cnndsl.ir.ops import Identity

#: Ops that pass their input through unchanged: contracted before hashing.
IDENTITY_OPS = frozenset({Identity.name})


def _label(op: str, args: dict) -> str:
    return op + json.dumps(args, sort_keys=True, default=str, separators=(",", ":"))


def canonical_graph(graph: Graph) -> tuple[nx.DiGraph, list[str]]:
    """The unnamed data-flow graph that the hash describes, and its output nodes (in order).

    Nodes carry ``label`` (op and arguments); the edge from an operand to a layer carries ``port``,
    the sorted tuple of the operand positions it fills, all 0 for an op whose operands commute (so
    there the tuple's length is how often the layer reads that operand).
    """
    alias: dict[str, str] = {}
    g = nx.DiGraph()
    for node in graph.nodes():
        srcs = [alias.get(s, s) for s in graph.inputs_of(node.name)]
        if node.op in IDENTITY_OPS and len(srcs) == 1:
            alias[node.name] = srcs[0]
            continue
        g.add_node(node.name, label=_label(node.op, node.args))
        commutative = node.opdef.commutes(node.args)
        ports: dict[str, list[int]] = {}
        for port, src in enumerate(srcs):
            ports.setdefault(src, []).append(0 if commutative else port)
        for src, where in ports.items():
            g.add_edge(src, node.name, port=tuple(where))
    outputs = [alias.get(o, o) for o in graph.outputs]
    return g, outputs


def _digest(text: str) -> str:
    return hashlib.blake2b(text.encode(), digest_size=12).hexdigest()


def colours(g: nx.DiGraph, outputs: list[str]) -> dict[str, str]:
    """Each node's Weisfeiler-Lehman colour at convergence (a hex digest; equal colours, alike nodes).

    Sweeps alternate: forward in topological order, each node from its operands' new colours, then
    backward from its consumers'. A colour holds the one before it, so a sweep can only split classes,
    and a second sweep in one direction right after the first splits none (the first already saw all
    the way up, or down). So once a sweep (not the first) splits no class, the partition is stable both
    ways, and the colours are final.
    """
    order = list(nx.topological_sort(g))
    where: dict[str, list[int]] = defaultdict(list)
    for i, o in enumerate(outputs):
        where[o].append(i)
    ins = {n: [(port, src) for src, _, port in g.in_edges(n, data="port")] for n in order}
    outs = {n: [(port, dst) for _, dst, port in g.out_edges(n, data="port")] for n in order}
    colour = {n: f"{g.nodes[n]['label']}@{where[n]}" for n in order}
    sweeps = ((order, ins, "<"), (order[::-1], outs, ">"))
    classes, k = 0, 0
    while True:
        nodes, adjacent, mark = sweeps[k % 2]
        for n in nodes:  # the neighbours on this side, already recoloured in this sweep
            colour[n] = _digest(f"{colour[n]}{mark}{sorted((port, colour[m]) for port, m in adjacent[n])}")
        now = len(set(colour.values()))
        if k and now == classes:
            return colour
        classes, k = now, k + 1


def _fold(colour: dict[str, str]) -> str:
    return _digest(",".join(sorted(colour.values())))


def graph_hash(g: nx.DiGraph, outputs: list[str]) -> str:
    """Weisfeiler-Lehman colours to convergence over a DAG, folded into one hex digest."""
    return _fold(colours(g, outputs))


def arch_hash(graph: Graph) -> str:
    """The architecture hash of a checked network's graph (24 hex digits)."""
    g, outputs = canonical_graph(graph)
    return graph_hash(g, outputs)


def _same(a: tuple[nx.DiGraph, dict[str, str]], b: tuple[nx.DiGraph, dict[str, str]]) -> bool:
    """Whether two canonical graphs, each with its colours, are isomorphic (labels, outputs and ports kept).

    An isomorphism keeps the colours, which hold the labels and output positions, so only nodes of one
    colour may correspond. Where every colour is one node's (the usual case) that leaves one candidate
    map, checked edge by edge; otherwise VF2 searches the maps that keep the colours.
    """
    (ga, ca), (gb, cb) = a, b
    if ga.number_of_nodes() != gb.number_of_nodes() or ga.number_of_edges() != gb.number_of_edges():
        return False
    if sorted(ca.values()) != sorted(cb.values()):
        return False
    if len(set(ca.values())) == len(ca):
        node_of = {c: n for n, c in cb.items()}
        to = {n: node_of[c] for n, c in ca.items()}
        return all(gb.has_edge(to[u], to[v]) and gb.edges[to[u], to[v]]["port"] == port
                   for u, v, port in ga.edges(data="port"))
    ga, gb = ga.copy(), gb.copy()
    nx.set_node_attributes(ga, ca, "colour")
    nx.set_node_attributes(gb, cb, "colour")
    return nx.is_isomorphic(ga, gb, node_match=lambda x, y: x["colour"] == y["colour"],
                            edge_match=lambda x, y: x["port"] == y["port"])


class HashRegistry:
    """Hashes for a stream of networks, with collisions confirmed by an isomorphism check.

    A hash seen before is checked against the graphs that produced it; a graph that is not isomorphic
    to any of them (a true collision) gets the hash with a ``-2``, ``-3``, ... suffix.
    """

    def __init__(self) -> None:
        self._seen: dict[str, list[tuple[nx.DiGraph, dict[str, str]]]] = {}
        self.collisions = 0

    def hash(self, graph: Graph) -> tuple[str, bool]:
        """The network's hash and whether an identical architecture was seen before."""
        g, outputs = canonical_graph(graph)
        colour = colours(g, outputs)
        h = _fold(colour)
        known = self._seen.setdefault(h, [])
        for i, other in enumerate(known):
            if _same((g, colour), other):
                return (h if i == 0 else f"{h}-{i + 1}"), True
        if known:
            self.collisions += 1
        known.append((g, colour))
        return (h if len(known) == 1 else f"{h}-{len(known)}"), False
