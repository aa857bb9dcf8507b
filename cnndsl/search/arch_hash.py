"""A canonical hash of a network's architecture: equal for structurally identical networks however written.

The hash ignores every name and looks only at the data flow: which ops, with which arguments (every
default filled in), feed which. Identity layers (``identity``, ``skip``) are contracted first, and a
``none`` edge never reaches the IR, so NAS-Bench-201 cells that differ only in where a skip sits or in
an edge that is removed hash alike when the networks they build are the same.

The refinement is Weisfeiler-Lehman's, along the data flow and run to convergence: a node's colour is
its label together with its operands' colours (in operand order, or as a multiset for an op whose
operands commute, ``Op.commutes``: a plain sum), which for a DAG converges in one pass in topological
order; the graph's hash is the multiset of all colours plus those of the outputs. Distinct graphs can share a hash in theory, so
:class:`HashRegistry` confirms a repeated hash with an isomorphism check (networkx's VF2) and tells
genuinely different graphs apart.
"""

from __future__ import annotations

import hashlib
import json

import networkx as nx

from cnndsl.ir.graph import Graph
from cnndsl.ir.ops import Identity

#: Ops that pass their input through unchanged: contracted before hashing.
IDENTITY_OPS = frozenset({Identity.name})


def _label(op: str, args: dict) -> str:
    return op + json.dumps(args, sort_keys=True, default=str, separators=(",", ":"))


def canonical_graph(graph: Graph) -> tuple[nx.DiGraph, list[str]]:
    """The unnamed data-flow graph that the hash describes, and its output nodes.

    Nodes carry ``label`` (op and arguments); an edge carries ``port`` (the operand position),
    which is 0 for the operands of a plain sum, whose order does not matter.
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
        for port, src in enumerate(srcs):
            # a MultiDiGraph is not needed: an op reading one tensor twice (add(x, x)) keeps the count in the label
            if g.has_edge(src, node.name):
                g.nodes[node.name]["label"] += f"#dup{port}"
            else:
                g.add_edge(src, node.name, port=0 if commutative else port)
    outputs = [alias.get(o, o) for o in graph.outputs]
    return g, outputs


def _digest(text: str) -> str:
    return hashlib.blake2b(text.encode(), digest_size=12).hexdigest()


def graph_hash(g: nx.DiGraph, outputs: list[str]) -> str:
    """Weisfeiler-Lehman colours to convergence over a DAG, folded into one hex digest."""
    colour: dict[str, str] = {}
    for name in nx.topological_sort(g):
        preds = sorted(g.in_edges(name, data="port"), key=lambda e: (e[2], colour[e[0]]))
        operands = ",".join(f"{port}:{colour[src]}" for src, _, port in preds)
        colour[name] = _digest(f"{g.nodes[name]['label']}({operands})")
    everything = ",".join(sorted(colour.values())) + "|" + ",".join(colour[o] for o in outputs)
    return _digest(everything)


def arch_hash(graph: Graph) -> str:
    """The architecture hash of a checked network's graph (24 hex digits)."""
    g, outputs = canonical_graph(graph)
    return graph_hash(g, outputs)


def _same(a: tuple[nx.DiGraph, list[str]], b: tuple[nx.DiGraph, list[str]]) -> bool:
    (ga, outs_a), (gb, outs_b) = a, b
    if ga.number_of_nodes() != gb.number_of_nodes() or ga.number_of_edges() != gb.number_of_edges():
        return False
    ga, gb = ga.copy(), gb.copy()
    for g, outs in ((ga, outs_a), (gb, outs_b)):
        for i, o in enumerate(outs):
            g.nodes[o]["label"] += f"@out{i}"
    return nx.is_isomorphic(ga, gb, node_match=lambda x, y: x["label"] == y["label"],
                            edge_match=lambda x, y: x["port"] == y["port"])


class HashRegistry:
    """Hashes for a stream of networks, with collisions confirmed by an isomorphism check.

    A hash seen before is checked against the graphs that produced it; a graph that is not isomorphic
    to any of them (a true collision) gets the hash with a ``-2``, ``-3``, ... suffix.
    """

    def __init__(self) -> None:
        self._seen: dict[str, list[tuple[nx.DiGraph, list[str]]]] = {}
        self.collisions = 0

    def hash(self, graph: Graph) -> tuple[str, bool]:
        """The network's hash and whether an identical architecture was seen before."""
        canon = canonical_graph(graph)
        h = graph_hash(*canon)
        known = self._seen.setdefault(h, [])
        for i, other in enumerate(known):
            if _same(canon, other):
                return (h if i == 0 else f"{h}-{i + 1}"), True
        if known:
            self.collisions += 1
        known.append(canon)
        return (h if len(known) == 1 else f"{h}-{len(known)}"), False
