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

**Cost.** What the hash works out of a fragment is kept in its ``derived`` dict (:class:`_Facts`, as long as the
fragment lives): its pieces, their hashes joined, and, once a piece holding it is expanded, its layers expanded
and contracted. A member then costs one pass over its own plan (no graph is built: positions and lists), one
look-up per fragment in series (the registry keeps each fragment's confirmed hashes by the object), and the
Weisfeiler-Lehman sweeps of the pieces its new fragments hold. Labels and one-layer pieces' hashes are memoised
by value (bounded, started over when full), never by an object's id.
"""

from __future__ import annotations

import hashlib
import itertools
import json
from collections import defaultdict
from collections.abc import Iterable

import networkx as nx

from cnndsl.ir.graph import FLOW, MOUNT, Graph
from cnndsl.ir.ops import OPS, Identity

#: Ops that pass their input through unchanged: contracted before hashing.
IDENTITY_OPS = frozenset({Identity.name})

_ENCODER = json.JSONEncoder(sort_keys=True, default=str, separators=(",", ":"))
#: Value-keyed memos of the hot path, each started over past this many entries (never keyed by an object's id).
_MEMO_LIMIT = 1 << 14
_LABELS: dict[tuple[str, str], str] = {}  # (op, repr(args)) -> label
_SIMPLE: dict[str, str] = {}  # a one-layer piece's text -> its hash


def _label(op: str, args: dict) -> str:
    """The op and its arguments as sorted JSON (a node's label).

    Memoised on the arguments' ``repr``, which tells ``1``, ``1.0`` and ``True`` apart as JSON does (equality
    would not); a ``repr`` with a ``<`` in it (an object's default one, which an address reused later could
    repeat) is encoded every time.
    """
    text = repr(args)
    key = (op, text)
    label = _LABELS.get(key)
    if label is None:
        label = op + _ENCODER.encode(args)
        if "<" not in text:
            if len(_LABELS) >= _MEMO_LIMIT:
                _LABELS.clear()
            _LABELS[key] = label
    return label


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


def _operands(op: str, args: dict, srcs: list) -> list[tuple]:
    """A layer's ``(operand, position)`` pairs: position 0 throughout for an op whose operands commute."""
    if len(srcs) == 1:
        return [(srcs[0], 0)]
    commutative = OPS[op].commutes(args)
    return [(src, 0 if commutative else port) for port, src in enumerate(srcs)]


def _grouped(operands: list[tuple]) -> tuple[tuple[tuple[int, ...], object], ...]:
    """Each operand once, with the sorted tuple of the positions it fills (an edge's ``port``)."""
    if len(operands) == 1:
        src, port = operands[0]
        return (((port,), src),)
    ports: dict = {}
    for src, port in operands:
        ports.setdefault(src, []).append(port)
    return tuple([(tuple(sorted(where)), src) for src, where in ports.items()])


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
    index = {n: i for i, n in enumerate(order)}
    found = _wl([labels[n] for n in order], [[(port, index[m]) for port, m in ins[n]] for n in order],
                [str(where[n]) for n in order])
    return dict(zip(order, found, strict=True))


_FIRST = (0,)  # the port of an operand read once, first (or in a sum)
#: Copied for each colour: cheaper than a new hash object with its digest size (the same digests).
_BLAKE = hashlib.blake2b(digest_size=12)


def _sides(pairs: list) -> int | tuple | list:
    """One node's neighbours on one side as :func:`_wl` reads them: the index of the one neighbour of port
    ``(0,)``, the indices of several (or none) all of that port, or else the ``(port, index)`` pairs."""
    if len(pairs) == 1 and pairs[0][0] == _FIRST:
        return pairs[0][1]
    if all(port == _FIRST for port, _ in pairs):
        return tuple([j for _, j in pairs])
    return list(pairs)


def _wl(labels: list[str], ins: list, where: list[str] | None = None) -> list[str]:
    """:func:`refine` over nodes ``0 .. n-1`` in topological order: ``ins[i]`` holds ``(port, j)`` pairs, ``j < i``,
    ``where[i]`` the text of node ``i``'s output positions (``[]`` for all when None).

    A node's text in a sweep is its colour, the sweep's mark and the sorted list of its neighbours' ``(port,
    colour)`` pairs as Python prints it. A neighbour's colour there is always a digest (the sweep recoloured it
    already), which prints as ``'...'``; so where every port is ``(0,)`` the list sorts as the colours do and is
    written from them, without the tuples.
    """
    outs: list[list] = [[] for _ in labels]
    for i, pairs in enumerate(ins):
        for port, j in pairs:
            outs[j].append((port, i))
    before, after = ([pairs[0][1] if len(pairs) == 1 and pairs[0][0] == _FIRST else _sides(pairs) for pairs in side]
                     for side in (ins, outs))
    colour = [f"{label}@[]" for label in labels] if where is None else \
        [f"{label}@{w}" for label, w in zip(labels, where, strict=True)]
    new = _BLAKE.copy
    n = len(labels)
    forward, backward = range(n), range(n - 1, -1, -1)
    classes, k = 0, 0
    while True:
        nodes, adjacent, mark = (backward, after, ">") if k & 1 else (forward, before, "<")
        one, several = f"{mark}[((0,), '", "'), ((0,), '"
        for i in nodes:  # the neighbours on this side, already recoloured in this sweep
            adj = adjacent[i]
            if adj.__class__ is int:
                text = f"{colour[i]}{one}{colour[adj]}')]"
            elif adj.__class__ is tuple:
                text = f"{colour[i]}{one}{several.join(sorted([colour[j] for j in adj]))}')]" if adj else \
                    f"{colour[i]}{mark}[]"
            else:
                text = f"{colour[i]}{mark}{sorted([(port, colour[j]) for port, j in adj])}"
            digest = new()
            digest.update(text.encode())
            colour[i] = digest.hexdigest()
        now = len(set(colour))
        if k and now == classes:
            return colour
        classes, k = now, k + 1


def _fold(colour) -> str:
    """The hash of a colouring: its colours (a dict's values, or a list) as a sorted multiset."""
    return _digest(",".join(sorted(colour.values() if isinstance(colour, dict) else colour)))


def graph_hash(g: nx.DiGraph, outputs: list[str]) -> str:
    """Weisfeiler-Lehman colours to convergence over a DAG, folded into one hex digest."""
    return _fold(colours(g, outputs))


def arch_hash(graph: Graph) -> str:
    """The architecture hash of a checked network's graph, flat or with mounted fragments (24 hex digits)."""
    series = _top(graph)
    if series is None:
        return whole_graph_hash(graph)
    head, items = series
    return _series_digest(head, [it if it.__class__ is str else it.ids if it.__class__ is _Facts else it.hash
                                 for it in items])


def whole_graph_hash(graph: Graph) -> str:
    """The hash of the whole graph at once, without series pieces: what ``arch_hash`` was before issue 15 (a
    weights file saved then carries it)."""
    g, outputs = canonical_graph(graph.flatten())
    return graph_hash(g, outputs)


def _series_digest(head: str, ids: list[str]) -> str:
    """The hash of a series of pieces: ``ids`` are their hashes, or runs of them joined by commas (never empty)."""
    return _digest("series:" + head + "|" + ",".join(ids))


class Piece:
    """A piece of a network between two consecutive cut layers: a DAG from a bare source to its sink.

    Its nodes are ``0 .. n-1`` in a topological order, 0 the source (labelled ``<source>``): ``labels[i]`` and
    ``ins[i]``, the ``(port, operand)`` pairs of node ``i``; ``colours`` are the nodes' Weisfeiler-Lehman colours
    and ``hash`` the hash of them. A piece of one layer reading the source is *simple*: its hash is that layer's
    label and operand ports, which say all there is to say of it (no graph is kept, and no hash of it needs
    confirming). Pieces live as long as their fragments, so they keep tuples, which the garbage collector stops
    tracking (a search keeps thousands of pieces, and lists would make each of its full collections longer)."""

    __slots__ = ("_graph", "colours", "hash", "ins", "labels", "simple")

    def __init__(self, labels: tuple[str, ...] | None = None, ins: tuple[tuple[tuple[tuple, int], ...], ...] | None
                 = None, simple: str | None = None):
        self.labels, self.ins = labels, ins
        self._graph: nx.DiGraph | None = None
        self.simple = simple is not None
        self.colours = None if simple is not None else tuple(_wl(labels, ins))
        self.hash = _simple_hash(simple) if simple is not None else _fold(self.colours)

    @property
    def graph(self) -> nx.DiGraph:
        """The piece as a networkx graph (made for the isomorphism check only)."""
        if self._graph is None:
            g = nx.DiGraph()
            for n, label in enumerate(self.labels):
                g.add_node(n, label=label)
                for port, src in self.ins[n]:
                    g.add_edge(src, n, port=port)
            self._graph = g
        return self._graph

    @classmethod
    def known(cls, h: str) -> Piece:
        """A simple piece of hash ``h``."""
        p = cls.__new__(cls)
        p.labels = p.ins = p.colours = p._graph = None
        p.simple, p.hash = True, h
        return p


def _simple_hash(text: str) -> str:
    """The hash of a one-layer piece, from its text (label and ports)."""
    h = _SIMPLE.get(text)
    if h is None:
        if len(_SIMPLE) >= _MEMO_LIMIT:
            _SIMPLE.clear()
        h = _SIMPLE[text] = _digest(text)
    return h


_SOURCE = "<source>"


class _Level:
    """One level of a plan (a network's mounted graph, or a fragment's own layers) with identity layers and
    identity fragments contracted: positions ``0 .. n-1`` in topological order, 0 the source. ``items[i]`` is the
    layer's label, or the mounted fragment's :class:`_Facts`; ``ins[i]`` its ``(operand position, port)`` pairs,
    ``sink`` the output's position; ``chain`` when every layer reads the one before it once (then every position
    is a cut)."""

    __slots__ = ("chain", "ins", "items", "sink")

    def __init__(self, rows: Iterable, source: str, output: str):
        """``rows``: (node, its operands' names), in topological order, after ``source``."""
        at = {source: 0}
        items: list[str | _Facts] = [_SOURCE]
        ins: list = [()]
        item, read = items.append, ins.append
        chain, last = True, 0  # last: the position of the latest layer kept
        for node, srcs in rows:
            op = node.op
            if len(srcs) != 1:
                item(_label(op, node.args))
                read(_operands(op, node.args, [at[x] for x in srcs]))
                chain = False
            else:
                src = at[srcs[0]]
                if op == MOUNT:
                    frag = node.meta["mount"][1]
                    facts = frag.derived.get("arch_hash") or _facts(frag)
                    if facts.series is None:  # the fragment is the identity: contracted
                        at[node.name] = src
                        continue
                    item(facts)
                elif op in IDENTITY_OPS:
                    at[node.name] = src
                    continue
                else:
                    item(_label(op, node.args))
                read(((src, 0),))
                if src != last:
                    chain = False
            last += 1
            at[node.name] = last
        self.items, self.ins, self.chain, self.sink = items, ins, chain, at[output]

    def cuts(self) -> list[int] | None:
        """The cut positions from the source to the sink (both included), in order; None if a layer is not between
        them (the sink is not last, or a layer leads to no later one)."""
        n = len(self.ins)
        if self.sink != n - 1:
            return None
        if self.chain:
            return list(range(n))
        reach = [0] * n  # reach[i]: the furthest position reading position i
        for j, operands in enumerate(self.ins):
            for i, _ in operands:
                reach[i] = j  # j grows, so the last one is the furthest
        if 0 in reach[:-1]:
            return None  # a layer that no later layer reads: not a two-terminal network
        furthest = list(itertools.accumulate(reach, max))  # furthest[i]: the furthest an edge from i or before goes
        return [0, *(i for i in range(1, n) if furthest[i - 1] <= i)]

    def series(self, cuts: list[int]) -> list:
        """The pieces between consecutive cuts, in order: a one-layer piece's hash (a str), a fragment in series
        (its :class:`_Facts`), or an expanded :class:`Piece`."""
        items, ins = self.items, self.ins
        if self.chain:  # one layer or fragment reading the one before: the simple pieces' ports are (0,)
            return [it if it.__class__ is _Facts else _one_hash(it) for it in itertools.islice(items, 1, None)]
        out: list = []
        for u, v in itertools.pairwise(cuts):
            it = items[v]
            if v != u + 1:
                out.append(self.expand(u, v))
            elif it.__class__ is _Facts:
                out.append(it)
            else:  # one layer reading the source (an edge from the source, however many operands)
                operands = ins[v]
                out.append(_one_hash(it) if len(operands) == 1 else
                           _simple_hash(f"{it}<{tuple(sorted(port for _, port in operands))}"))
        return out

    def expand(self, u: int, v: int) -> Piece:
        """The piece from position ``u`` (bare) to ``v``: mounts expanded, each operand once with its ports."""
        labels, ins = [_SOURCE], [()]
        at = {u: 0}
        items = self.items
        for e in range(u + 1, v + 1):
            it, operands = items[e], self.ins[e]
            if it.__class__ is _Facts:
                at[e] = _splice(it.flat(), at[operands[0][0]], labels, ins)
                continue
            labels.append(it)
            if len(operands) == 1:
                ins.append((((operands[0][1],), at[operands[0][0]]),))
            else:
                ins.append(_grouped([(at[i], port) for i, port in operands]))
            at[e] = len(labels) - 1
        return Piece(tuple(labels), tuple(ins))


_ONE: dict[str, str] = {}  # a layer's label -> the hash of the piece that is that layer reading the source once


def _one_hash(label: str) -> str:
    h = _ONE.get(label)
    if h is None:
        if len(_ONE) >= _MEMO_LIMIT:
            _ONE.clear()
        h = _ONE[label] = _simple_hash(f"{label}<(0,)")
    return h


def _splice(flat: tuple[tuple[str, ...], tuple, int], src: int, labels: list[str], ins: list) -> int:
    """Append a fragment's expanded layers (its :meth:`_Facts.flat`) reading ``src``; returns its output's index."""
    layers, operands, output = flat
    base = len(labels)
    labels.extend(layers)
    for pairs in operands:
        if len(pairs) == 1:  # (most layers read one operand)
            port, i = pairs[0]
            ins.append(((port, src if i < 0 else base + i),))
        else:
            ins.append(tuple([(port, src if i < 0 else base + i) for port, i in pairs]))
    return src if output < 0 else base + output


class _Facts:
    """What the hash keeps of one fragment (in ``Fragment.derived``, so it lives as long as the fragment):
    ``series``, its pieces from input to output as :meth:`_Level.series` gives them (None when it is the
    identity); ``pieces``, those one by one, nested fragments' included (a one-layer piece as its hash); ``ids``,
    their hashes joined; and, when a piece holding it is expanded, :meth:`flat`. Tuples, as :class:`Piece` keeps."""

    __slots__ = ("_flat", "ids", "layers", "operands", "output", "pieces", "series")

    def __init__(self, frag):
        # The fragment's parts, not the fragment: it keeps its facts, and a cycle is freed only by the collector.
        self.layers, self.operands, self.output = frag.layers, frag.operands, frag.output
        self._flat = None
        self.series: tuple | None = None
        self.pieces: tuple[Piece | str, ...] = ()
        self.ids = ""
        # a fragment's layers are in topological order
        level = _Level(zip(frag.layers, frag.operands), FLOW, frag.output)
        if level.sink == 0:
            return
        cuts = level.cuts()
        if cuts is None:
            raise AssertionError(f"fragment {frag.output}: not a two-terminal graph")
        self.series = tuple(level.series(cuts))
        pieces: list[Piece | str] = []
        for it in self.series:
            if it.__class__ is _Facts:
                pieces.extend(it.pieces)
            else:
                pieces.append(it)
        self.pieces = tuple(pieces)
        self.ids = ",".join([p if p.__class__ is str else p.hash for p in pieces])

    def flat(self) -> tuple[tuple[str, ...], tuple, int]:
        """The fragment's layers expanded (nested fragments' included), identity layers contracted: their labels,
        their ``(port, operand)`` pairs (an operand ``-1`` is the fragment's input) and its output's index (-1 when
        it is the input)."""
        if self._flat is None:
            labels: list[str] = []
            ins: list = []
            at = {FLOW: -1}
            for node, srcs in zip(self.layers, self.operands):
                if node.op == MOUNT:
                    at[node.name] = _splice(_facts(node.meta["mount"][1]).flat(), at[srcs[0]], labels, ins)
                    continue
                operands = [at[s] for s in srcs]
                if node.op in IDENTITY_OPS and len(operands) == 1:
                    at[node.name] = operands[0]
                    continue
                labels.append(_label(node.op, node.args))
                ins.append(_grouped(_operands(node.op, node.args, operands)))
                at[node.name] = len(labels) - 1
            self._flat = (tuple(labels), tuple(ins), at[self.output])
        return self._flat


def _facts(frag) -> _Facts:
    facts = frag.derived.get("arch_hash")
    if facts is None:
        facts = frag.derived["arch_hash"] = _Facts(frag)
    return facts


def _top(graph: Graph) -> tuple[str, list] | None:
    """The network's input label and its series (as :meth:`_Level.series` gives it), or None when it is not one
    input to one output."""
    if len(graph.inputs) != 1 or graph.aux_outputs or graph.output is None:
        return None
    source = graph.node(graph.inputs[0])
    inputs_of = graph.inputs_of
    level = _Level([(n, inputs_of(n.name)) for n in graph.nodes() if n is not source], source.name, graph.output)
    head = _label(source.op, source.args)
    if level.sink == 0:
        return head, []
    cuts = level.cuts()
    return None if cuts is None else (head, level.series(cuts))


def pieces(graph: Graph) -> tuple[str, list[Piece]] | None:
    """The network's input label and its pieces in order, or None when it is not one input to one output."""
    series = _top(graph)
    if series is None:
        return None
    head, items = series
    out: list[Piece] = []
    for it in items:
        for p in (it.pieces if it.__class__ is _Facts else (it,)):
            out.append(Piece.known(p) if p.__class__ is str else p)
    return head, out


def _same(a: tuple[nx.DiGraph, dict], b: tuple[nx.DiGraph, dict]) -> bool:
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
    ``collisions`` the true collisions found. A fragment's confirmed hashes are kept with it, so a member costs
    one look-up per fragment in series.
    """

    def __init__(self) -> None:
        self._seen: dict[str, list[tuple[nx.DiGraph, dict[str, str]]]] = {}
        self._pieces: dict[str, list[Piece]] = {}
        self._known: dict[Piece, str] = {}  # a piece seen (by identity) -> its confirmed hash
        self._runs: dict[_Facts, str] = {}  # a fragment's facts seen (by identity) -> its pieces' confirmed hashes
        self._networks: set[str] = set()
        self.collisions = 0
        self.confirmations = 0

    def hash(self, graph: Graph) -> tuple[str, bool]:
        """The network's hash and whether an identical architecture was seen before."""
        series = _top(graph)
        if series is None:
            return self._whole(graph.flatten())
        head, items = series
        runs = self._runs
        ids = []
        for it in items:
            if it.__class__ is str:
                ids.append(it)
            elif it.__class__ is _Facts:
                ids.append(runs[it] if it in runs else self._run(it))
            else:
                ids.append(self._piece(it))
        h = _series_digest(head, ids)
        seen = h in self._networks
        self._networks.add(h)
        return h, seen

    def _run(self, facts: _Facts) -> str:
        joined = self._runs[facts] = ",".join([p if p.__class__ is str else self._piece(p) for p in facts.pieces])
        return joined

    def _piece(self, p: Piece) -> str:
        if p.simple:
            return p.hash
        if p in self._known:
            return self._known[p]
        alike = self._pieces.setdefault(p.hash, [])
        for i, other in enumerate(alike):
            self.confirmations += 1
            if _same((p.graph, dict(enumerate(p.colours))), (other.graph, dict(enumerate(other.colours)))):
                h = p.hash if i == 0 else f"{p.hash}-{i + 1}"
                break
        else:
            if alike:
                self.collisions += 1
            alike.append(p)
            h = p.hash if len(alike) == 1 else f"{p.hash}-{len(alike)}"
        self._known[p] = h
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
