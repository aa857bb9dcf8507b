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

**Series pieces.** A network with one input and one output is a chain of pieces: its *cut layers* (those
every path from the input to the output passes through, the input and output included) are totally ordered,
and a piece is what lies between two consecutive ones, the first a bare source and the second labelled.
An isomorphism maps cut layers to cut layers in order, so two such networks are isomorphic if and only if
their pieces are, one by one: the hash is the sequence of the pieces' hashes (:func:`pieces`). That makes it
incremental. A block instance that sits in series (a mounted fragment, :meth:`cnndsl.ir.graph.Graph.mount`)
contributes the pieces of its fragment, hashed once per fragment however many members and instances share
it; only a piece that holds mounts inside a parallel part is expanded to be hashed. The registry confirms a
repeated piece hash (not a whole network's), and only when the pieces are not one shared object. Networks
with several inputs or outputs (aux heads) are hashed whole, as above. A layer is a cut layer exactly when no
edge jumps over it in a topological order (the paths from the input cross every position).
"""

from __future__ import annotations

import hashlib
import itertools
import json
from collections import defaultdict

import networkx as nx

from cnndsl.ir.graph import FLOW, MOUNT, Graph
from cnndsl.ir.ops import OPS, Identity

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
        for where, src in _grouped(_operands(node.op, node.args, srcs)):
            g.add_edge(src, node.name, port=where)
    outputs = [alias.get(o, o) for o in graph.outputs]
    return g, outputs


def _operands(op: str, args: dict, srcs: list[str]) -> list[tuple[str, int]]:
    """A layer's ``(operand, position)`` pairs: position 0 throughout for an op whose operands commute."""
    commutative = OPS[op].commutes(args)
    return [(src, 0 if commutative else port) for port, src in enumerate(srcs)]


def _grouped(operands: list[tuple[str, int]]) -> list[tuple[tuple[int, ...], str]]:
    """Each operand once, with the sorted tuple of the positions it fills (an edge's ``port``)."""
    ports: dict[str, list[int]] = {}
    for src, port in operands:
        ports.setdefault(src, []).append(port)
    return [(tuple(sorted(where)), src) for src, where in ports.items()]


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
    ins = {n: [(port, src) for src, _, port in g.in_edges(n, data="port")] for n in order}
    return refine(order, {n: g.nodes[n]["label"] for n in order}, ins, outputs)


def refine(order: list[str], labels: dict[str, str], ins: dict[str, list[tuple[tuple, str]]],
           outputs: list[str]) -> dict[str, str]:
    """:func:`colours` over a graph given as its topological ``order``, node ``labels`` and operands ``ins``
    (``(port, operand)`` pairs, one an operand)."""
    where: dict[str, list[int]] = defaultdict(list)
    for i, o in enumerate(outputs):
        where[o].append(i)
    outs: dict[str, list[tuple[tuple, str]]] = {n: [] for n in order}
    for n in order:
        for port, src in ins[n]:
            outs[src].append((port, n))
    colour = {n: f"{labels[n]}@{where[n]}" for n in order}
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
    """The architecture hash of a checked network's graph, flat or with mounted fragments (24 hex digits)."""
    series = pieces(graph)
    if series is None:
        return whole_graph_hash(graph)
    head, parts = series
    return _series_digest(head, [p.hash for p in parts])


def whole_graph_hash(graph: Graph) -> str:
    """The hash of the whole graph at once, without series pieces: what ``arch_hash`` was before issue 15 (a
    weights file saved then carries it)."""
    g, outputs = canonical_graph(graph.flatten())
    return graph_hash(g, outputs)


def _series_digest(head: str, ids: list[str]) -> str:
    return _digest("series:" + head + "|" + ",".join(ids))


class Piece:
    """A piece of a network between two consecutive cut layers: a DAG from a bare source to its sink.

    ``graph`` is its canonical graph (the source labelled ``<source>``) and ``hash`` the Weisfeiler-Lehman hash
    of it. A piece of one layer reading the source is *simple*: its hash is that layer's label and operand
    ports, which say all there is to say of it (no graph is kept, and no hash of it needs confirming)."""

    __slots__ = ("_graph", "colours", "hash", "ins", "labels", "order", "simple")

    def __init__(self, order: list[str] | None = None, labels: dict[str, str] | None = None,
                 ins: dict[str, list[tuple[tuple, str]]] | None = None, simple: str | None = None):
        self.order, self.labels, self.ins = order, labels, ins
        self._graph: nx.DiGraph | None = None
        self.simple = simple is not None
        self.colours = None if simple is not None else refine(order, labels, ins, [])
        self.hash = _digest(simple) if simple is not None else _fold(self.colours)

    @property
    def graph(self) -> nx.DiGraph:
        """The piece as a networkx graph (made for the isomorphism check only)."""
        if self._graph is None:
            g = nx.DiGraph()
            for n in self.order:
                g.add_node(n, label=self.labels[n])
                for port, src in self.ins[n]:
                    g.add_edge(src, n, port=port)
            self._graph = g
        return self._graph


_SOURCE = "<source>"


class _Plan:
    """One level of a plan (a network's mounted graph, or a fragment's layers) with identity layers contracted:
    ``order`` topological, ``ins[n]`` the (operand, port) pairs, ``label[n]``, ``mounts[n]`` = (prefix, fragment)."""

    def __init__(self):
        self.order: list[str] = []
        self.ins: dict[str, list[tuple[str, int]]] = {}
        self.label: dict[str, str] = {}
        self.mounts: dict[str, tuple] = {}
        self.alias: dict[str, str] = {}


def _level(items, source: str) -> _Plan:
    """The contracted plan of ``items``: (name, op, args, operands, mount) in topological order, ``source`` first."""
    plan = _Plan()
    plan.order.append(source)
    plan.label[source] = _SOURCE
    for name, op, args, srcs, mount in items:
        srcs = [plan.alias.get(x, x) for x in srcs]
        if mount is not None:
            out = _fragment_series(mount[1])
            if out is None:  # the fragment is the identity: contracted
                plan.alias[name] = srcs[0]
                continue
            plan.mounts[name] = mount
            plan.label[name] = "<mount>"
            plan.ins[name] = [(srcs[0], 0)]
        elif op in IDENTITY_OPS and len(srcs) == 1:
            plan.alias[name] = srcs[0]
            continue
        else:
            plan.label[name] = _label(op, args)
            plan.ins[name] = _operands(op, args, srcs)
        plan.order.append(name)
    return plan


def _cuts(plan: _Plan, sink: str) -> list[str] | None:
    """The cut layers of a plan from its source to ``sink`` (both included), in order; None if a layer is not
    between them (it does not lead to the sink)."""
    position = {n: i for i, n in enumerate(plan.order)}
    if position.get(sink) != len(plan.order) - 1:
        return None
    reach = [0] * len(plan.order)  # reach[i]: the furthest position an edge from before i goes to
    for n in plan.order[1:]:
        j = position[n]
        for src, _ in plan.ins[n]:
            i = position[src]
            reach[i] = max(reach[i], j)
    cuts, furthest = [], 0
    for i, n in enumerate(plan.order):
        if furthest <= i:
            cuts.append(n)
        furthest = max(furthest, reach[i])
    if any(reach[i] == 0 for i in range(len(plan.order) - 1)):
        return None  # a layer that no later layer reads: not a two-terminal network
    return cuts


def _series(plan: _Plan, sink: str) -> list[Piece] | None:
    cuts = _cuts(plan, sink)
    if cuts is None:
        return None
    position = {n: i for i, n in enumerate(plan.order)}
    out: list[Piece] = []
    for u, v in itertools.pairwise(cuts):
        inside = plan.order[position[u] + 1:position[v] + 1]
        if len(inside) == 1 and v in plan.mounts:
            out.extend(_fragment_series(plan.mounts[v][1]))
        elif len(inside) == 1:  # one layer reading the source (an edge from the source, however many operands)
            out.append(Piece(simple=f"{plan.label[v]}<{tuple(sorted(port for _, port in plan.ins[v]))}"))
        else:
            out.append(Piece(*_piece_graph(plan, u, inside)))
    return out


def _piece_graph(plan: _Plan, source: str, inside: list[str]) -> tuple[list[str], dict, dict]:
    """A piece's topological order, labels and operands: ``source`` bare, the layers ``inside`` (mounts expanded,
    identity layers contracted), each operand once with the tuple of the ports it fills."""
    order, labels, ins = [source], {source: _SOURCE}, {source: []}
    alias: dict[str, str] = {}  # a contracted layer -> what it passes on
    for n in inside:
        srcs = [(alias.get(x, x), port) for x, port in plan.ins[n]]
        if n not in plan.mounts:
            _add(order, labels, ins, n, plan.label[n], srcs)
            continue
        prefix, frag = plan.mounts[n]
        layers: list = []
        frag.emit(prefix, srcs[0][0], layers)
        for node, operands in layers:
            operands = [alias.get(x, x) for x in operands]
            if node.op in IDENTITY_OPS and len(operands) == 1:
                alias[node.name] = operands[0]
                continue
            _add(order, labels, ins, node.name, _label(node.op, node.args), _operands(node.op, node.args, operands))
        out = f"{prefix}.{frag.output}"
        if out in alias:
            alias[n] = alias[out]
    return order, labels, ins


def _add(order: list[str], labels: dict, ins: dict, n: str, label: str, srcs: list[tuple[str, int]]) -> None:
    order.append(n)
    labels[n] = label
    ins[n] = _grouped(srcs)


def _fragment_series(frag) -> list[Piece] | None:
    """The pieces of a fragment from its input to its output (cached on it); None when it is the identity."""
    if "series" in frag.derived:
        return frag.derived["series"]
    plan = _level([(node.name, node.op, node.args, srcs, node.meta["mount"] if node.op == MOUNT else None)
                   for node, srcs in frag.nodes], FLOW)  # a fragment's layers are in topological order
    sink = plan.alias.get(frag.output, frag.output)
    result = None if sink == FLOW else _series(plan, sink)
    if result is None and sink != FLOW:
        raise AssertionError(f"fragment {frag.output}: not a two-terminal graph")
    frag.derived["series"] = result
    return result


def pieces(graph: Graph) -> tuple[str, list[Piece]] | None:
    """The network's input label and its pieces in order, or None when it is not one input to one output."""
    if len(graph.inputs) != 1 or graph.aux_outputs or graph.output is None:
        return None
    items = []
    source = graph.node(graph.inputs[0])
    for node in graph.nodes():
        if node is not source:
            items.append((node.name, node.op, node.args, graph.inputs_of(node.name),
                          node.meta["mount"] if node.op == MOUNT else None))
    plan = _level(items, source.name)
    sink = plan.alias.get(graph.output, graph.output)
    head = _label(source.op, source.args)
    if sink == source.name:
        return head, []
    series = _series(plan, sink)
    return None if series is None else (head, series)


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

    For a network of pieces, each piece's hash is confirmed: a piece whose hash was seen is compared with the
    pieces that had it (unless it is one of them: a shared fragment's), and one isomorphic to none of them (a
    true collision) gets the hash with a ``-2``, ``-3``, ... suffix; the network's hash is made of the confirmed
    ones. A network hashed whole is confirmed the same way. ``confirmations`` counts the isomorphism checks run,
    ``collisions`` the true collisions found.
    """

    def __init__(self) -> None:
        self._seen: dict[str, list[tuple[nx.DiGraph, dict[str, str]]]] = {}
        self._pieces: dict[str, list[Piece]] = {}
        self._known: dict[int, tuple[Piece, str]] = {}  # id of a piece seen -> (it, its confirmed hash)
        self._networks: set[str] = set()
        self.collisions = 0
        self.confirmations = 0

    def hash(self, graph: Graph) -> tuple[str, bool]:
        """The network's hash and whether an identical architecture was seen before."""
        series = pieces(graph)
        if series is None:
            return self._whole(graph.flatten())
        head, parts = series
        h = _series_digest(head, [self._piece(p) for p in parts])
        seen = h in self._networks
        self._networks.add(h)
        return h, seen

    def _piece(self, p: Piece) -> str:
        if p.simple:
            return p.hash
        known = self._known.get(id(p))
        if known is not None and known[0] is p:
            return known[1]
        alike = self._pieces.setdefault(p.hash, [])
        for i, other in enumerate(alike):
            self.confirmations += 1
            if _same((p.graph, p.colours), (other.graph, other.colours)):
                h = p.hash if i == 0 else f"{p.hash}-{i + 1}"
                break
        else:
            if alike:
                self.collisions += 1
            alike.append(p)
            h = p.hash if len(alike) == 1 else f"{p.hash}-{len(alike)}"
        self._known[id(p)] = (p, h)
        return h

    def _whole(self, graph: Graph) -> tuple[str, bool]:
        g, outputs = canonical_graph(graph)
        colour = colours(g, outputs)
        h = _fold(colour)
        known = self._seen.setdefault(h, [])
        for i, other in enumerate(known):
            self.confirmations += 1
            if _same((g, colour), other):
                return (h if i == 0 else f"{h}-{i + 1}"), True
        if known:
            self.collisions += 1
        known.append((g, colour))
        return (h if len(known) == 1 else f"{h}-{len(known)}"), False
