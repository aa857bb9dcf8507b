"""The IR: one directed graph per network, kept behind a small class.

Nodes are layers keyed by a stable, readable, unique dotted name
(``layer1.0.conv1``) that the backends reuse for module and parameter names.
Each node holds its op kind, its arguments with every default filled in, and
its source span; passes add ``shape``, ``params``, ``macs`` and
``activations``, and keep their own records in ``meta`` (never in ``args``,
which are the layer as written: what ``expand`` prints and the arch hash reads). Edges carry the operand position (``port``), so concat order
and ``add(x, x)`` are explicit. The graph's own adjacency is the only store;
:meth:`Graph.to_networkx` builds a networkx view on demand for its algorithms.

>>> g = Graph("tiny")
>>> _ = g.add("x", "input", {"shape": (1, 8, 8)}, None, [])
>>> _ = g.add("relu1", "relu", {}, None, ["x"])
>>> g.inputs_of("relu1"), [n.name for n in g.nodes()]
(['x'], ['x', 'relu1'])
"""

from __future__ import annotations

import heapq
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from typing import Any

import networkx as nx

from cnndsl.errors import CnnDslError, CnnNameError, Note, Span
from cnndsl.ir.ops import OPS


@dataclass
class Node:
    """A view of one node's data (mutable annotations live in the graph)."""

    name: str
    op: str
    args: dict
    span: Span | None
    order: int
    shape: tuple[int, ...] | None = None
    params: int = 0
    macs: int = 0
    activations: int = 0
    frozen: bool = False
    #: Pass bookkeeping (``fold_bn``'s ``folded_from``, ...): not part of the layer, so not in ``args``.
    meta: dict = field(default_factory=dict)

    @property
    def opdef(self):
        return OPS[self.op]

    def short_form(self) -> str:
        """The layer in the papers' short form with its non-default arguments: ``conv3-64/2``, ``maxpool3/2 ceil``."""
        return self.opdef.short_form(self.args)


@dataclass
class Scope:
    """A named group of nodes: a block instance, a labelled sequence, or a shortcut."""

    name: str
    kind: str  # "block" | "sequence" | "branch"
    block: str | None = None
    args: dict = field(default_factory=dict)
    span: Span | None = None  # where the scope was made (a block's call site)
    definition: Span | None = None  # for a block instance, where the block is defined

    def call_text(self) -> str:
        """A block instance's call as written (``bottleneck(128, 2, proj)``); any other scope's name."""
        if self.kind != "block":
            return self.name
        return f"{self.block}({', '.join(str(v) for v in self.args.values())})"


def instance_note(scope: Scope) -> Note:
    """The note that says a diagnostic comes from inside this block instance, pointing at its call."""
    return Note(f"in the instance `{scope.call_text()}`", scope.span)


def scope_of(name: str, scopes) -> str | None:
    """The innermost of ``scopes`` that contains node (or scope) ``name``: scopes are dotted prefixes."""
    best = None
    for s in scopes:
        if name.startswith(s + ".") and (best is None or len(s) > len(best)):
            best = s
    return best


#: The op of a node that stands for a mounted fragment (:meth:`Graph.mount`); no op of the language.
MOUNT = "<mount>"
#: In a fragment, the name of the instance's input (the layer before it, outside the fragment).
FLOW = "<flow>"


@dataclass(eq=False)
class Fragment:
    """A block instance's layers, through every pass that works layer by layer, named relative to the instance.

    Built once and shared: each instance with the same block, arguments, defaults, input shape and choices
    mounts it (:meth:`Graph.mount`). Its ``layers`` are stored in the instance's topological order (the graph's
    deterministic one), ``operands[i]`` the names ``layers[i]`` reads (relative; :data:`FLOW` for the instance's
    input); a nested instance it mounts is a :data:`MOUNT` node whose ``meta["mount"]`` is ``(relative prefix,
    fragment)``. Nothing in it changes once made (its layers are shared with other fragments and templates).
    ``derived`` keeps what a later stage works out of it once (the arch hash's series pieces).

    Tuples of names, not a pair a layer: a search keeps thousands of fragments, and every container that holds
    another tracked object is one more the garbage collector walks in each full collection (a tuple of strings
    is untracked at its first collection); see docs/design.md.
    """

    layers: tuple[Node, ...]
    operands: tuple[tuple[str, ...], ...]
    scopes: tuple[Scope, ...]  # the scopes resolve made inside the instance, in order (relative names)
    late_scopes: tuple[Scope, ...]  # those the passes made (shortcut projections)
    output: str  # the instance's output layer (relative)
    shape: tuple[int, ...]
    params: int
    macs: int
    activations: int
    size: int  # the layers resolve made for it (shortcuts not decided yet), nested fragments' included
    longest: int  # the longest relative name among them
    warnings: tuple = ()
    decisions: tuple = ()  # (choice, decision) in the order the build asked them
    work: int = 0  # resolve's units of work and references followed, as a flat build of the instance spends them
    lookups: int = 0
    claims: bool = False  # whether a label inside claimed a name
    derived: dict = field(default_factory=dict, repr=False)
    _names: frozenset | None = field(default=None, repr=False)

    @property
    def names(self) -> frozenset:
        """Every layer's relative name, nested fragments' included."""
        if self._names is None:
            names = set()
            for node in self.layers:
                if node.op == MOUNT:
                    rel, sub = node.meta["mount"]
                    names.update(f"{rel}.{n}" for n in sub.names)
                else:
                    names.add(node.name)
            self._names = frozenset(names)
        return self._names

    def emit(self, prefix: str, src: str, out: list) -> None:
        """Append to ``out`` a copy of each layer, named under ``prefix`` and reading ``src`` where it reads the
        instance's input, as ``(node, operands)``; nested fragments are expanded in their place."""
        for node, srcs in zip(self.layers, self.operands):
            ins = [src if s == FLOW else f"{prefix}.{s}" for s in srcs]
            if node.op == MOUNT:
                rel, sub = node.meta["mount"]
                sub.emit(f"{prefix}.{rel}", ins[0], out)
            else:
                out.append((Node(f"{prefix}.{node.name}", node.op, dict(node.args), node.span, 0, node.shape,
                                 node.params, node.macs, node.activations, node.frozen, dict(node.meta)), ins))

    def add_scopes(self, prefix: str, scopes: dict[str, Scope], late: list[Scope]) -> None:
        """Add the scopes inside the instance at ``prefix``, named under it, in place: resolve's to ``scopes`` (after
        the instance's own), the passes' to ``late``."""
        mounts = {node.meta["mount"][0]: node.meta["mount"][1] for node in self.layers if node.op == MOUNT}
        for sc in self.scopes:
            full = f"{prefix}.{sc.name}"
            scopes[full] = replace(sc, name=full)
            if sc.name in mounts:
                mounts[sc.name].add_scopes(full, scopes, late)
        late.extend(replace(sc, name=f"{prefix}.{sc.name}") for sc in self.late_scopes)


#: Up to this many readers a layer's reverse index is a tuple, from it on a set (see :class:`Graph`).
_FEW_READERS = 8


class Graph:
    """A network as a DAG of layers.

    The adjacency below is the one store of nodes and edges: ``_in`` (operands by port) and ``_out``
    (its reverse index, the consumers) change together, only in :meth:`_link` and :meth:`_unlink`. ``_out``
    holds a tuple while a layer has few readers, made again at each change (a tuple of names is untracked by the
    garbage collector, a set is walked in every full collection, and a search keeps thousands of graphs), and a
    set from :data:`_FEW_READERS` on (so that linking stays linear in a layer's readers).
    networkx is a view built on demand (:meth:`to_networkx`); all networkx use stays inside this class.
    """

    def __init__(self, name: str, params: dict | None = None):
        self._nodes: dict[str, Node] = {}
        self._counter = 0
        self._in: dict[str, dict[int, str]] = {}  # node -> {port: operand}
        self._out: dict[str, tuple | set] = {}  # node -> its (consumer, port) pairs
        # Caches derived from the store; every mutation clears them (:meth:`_changed`).
        self._topo: list[str] | None = None  # topological order
        self._members: dict[str, list[Node]] | None = None  # scope -> its layers, in topological order
        self.name = name
        self.params: dict[str, Any] = dict(params or {})
        self.inputs: list[str] = []
        self.output: str | None = None
        self.aux_outputs: list[str] = []
        self.scopes: dict[str, Scope] = {}
        self.init: str | None = None  # weight initialisation scheme, e.g. "kaiming"
        self.zero_init_residual = False  # zero the last BN scale of every residual body (with init(...))
        self.init_fc = True  # the scheme initialises the fc layers too (else they keep the framework's default)
        self.unfit_training: list = []  # (aux output, CnnShapeError): training-only heads left out, too small an input
        self.late_scopes: list[str] = []  # scopes a pass made after resolve (shortcut projections), in its order
        # Mounted fragments (see :meth:`mount`): prefix -> the mount's node name, and the layers they hold
        # beyond the one node each stands for.
        self._mounts: dict[str, str] = {}
        self._mounted = 0

    # -- building
    def add(self, name: str, op: str, args: dict, span: Span | None, inputs: list[str]) -> Node:
        if name in self._nodes:
            raise CnnNameError(f"duplicate name '{name}'", span,
                               f"'{name}' is already defined at {self._nodes[name].span}")
        for src in inputs:
            if src not in self._nodes:
                raise CnnNameError(f"unknown node '{src}'", span)
        node = Node(name, op, args, span, self._counter)
        self._counter += 1
        self._nodes[name] = node
        self._in[name], self._out[name] = {}, ()
        for port, src in enumerate(inputs):
            self._link(src, name, port)
        self._changed()
        return node

    def _changed(self) -> None:
        """Drop the caches derived from the store: every mutating method calls this."""
        self._topo = None
        self._members = None

    def _link(self, src: str, dst: str, port: int) -> None:
        self._in[dst][port] = src
        out = self._out[src]
        if out.__class__ is tuple and len(out) < _FEW_READERS:
            self._out[src] = (*out, (dst, port))
        else:
            if out.__class__ is tuple:
                out = self._out[src] = set(out)
            out.add((dst, port))

    def _unlink(self, src: str, dst: str, port: int) -> None:
        del self._in[dst][port]
        out = self._out[src]
        if out.__class__ is tuple:
            self._out[src] = tuple([e for e in out if e != (dst, port)])
        else:
            out.discard((dst, port))

    def remove(self, name: str) -> None:
        """Remove a node and its edges; its consumers' operands are left to :meth:`connect`."""
        for port, src in list(self._in[name].items()):
            self._unlink(src, name, port)
        for dst, port in list(self._out[name]):
            self._unlink(name, dst, port)
        del self._nodes[name], self._in[name], self._out[name]
        self._changed()

    def rewire(self, name: str, port: int, new_src: str) -> None:
        """Make operand ``port`` of ``name`` come from ``new_src``."""
        self._unlink(self._in[name][port], name, port)
        self._link(new_src, name, port)
        self._changed()

    def connect(self, src: str, dst: str, port: int) -> None:
        """Add operand ``port`` of ``dst`` (after its old source was removed)."""
        self._link(src, dst, port)
        self._changed()

    def reorder_after(self, name: str, anchor: str) -> None:
        """Give a node an order just after ``anchor`` (for nodes added by a rewrite)."""
        self._nodes[name].order = self._nodes[anchor].order  # ties broken by name in topo_order
        self._changed()

    # -- mounted fragments
    def mount(self, prefix: str, frag: Fragment, src: str, span: Span | None) -> str:
        """Stand the shared, checked ``frag`` in at scope ``prefix``, reading ``src``; returns its output's name.

        One node (op :data:`MOUNT`) stands for all of the fragment's layers until :meth:`flatten` expands it: it
        has the name, shape and totals of what it stands for, so the passes and the totals treat it as one layer.
        """
        name = f"{prefix}.{frag.output}"
        node = self.add(name, MOUNT, {}, span, [src])
        node.shape, node.params, node.macs, node.activations = frag.shape, frag.params, frag.macs, frag.activations
        node.meta["mount"] = (prefix, frag)
        self._mounts[prefix] = name
        self._mounted += frag.size - 1
        return name

    @property
    def mounted(self) -> bool:
        """Whether fragments stand in for some of the layers (the graph is a plan, not yet flat)."""
        return bool(self._mounts)

    def mount_of(self, name: str) -> str | None:
        """The prefix of the mount whose fragment holds layer ``name``, if one does."""
        if self._mounts:
            i = name.rfind(".")
            while i > 0:
                prefix = name[:i]
                if prefix in self._mounts:
                    node = self._nodes[self._mounts[prefix]]
                    return prefix if name[i + 1:] in node.meta["mount"][1].names else None
                i = name.rfind(".", 0, i)
        return None

    def flatten(self, instances: dict[str, Fragment] | None = None) -> Graph:
        """Expand every mount into the layers it stands for, in place (and return the graph).

        The layers take their instance's place in the topological order, and their orders are renumbered in
        that sequence, so names, the topological order, scopes and edges are those a build without mounts makes
        (tests/test_memo.py): scopes in the order resolve made them, then those the passes made
        (:attr:`late_scopes`) in the order of the layers they hold.

        ``instances``, where given, receives the fragment each block instance this call expands came from
        (its scope -> the :class:`Fragment`, nested instances included): what the caller may take as equal
        between two instances without reading their layers (the code generators plan each fragment once).
        Returned rather than kept: the graph's later changes would leave a kept record behind.
        """
        if not self._mounts:
            return self
        late_names = set(self.late_scopes)
        scopes: dict[str, Scope] = {}
        late = [self.scopes[s] for s in self.late_scopes if s in self.scopes]
        for name, scope in self.scopes.items():
            if name not in late_names:
                scopes[name] = scope
                if name in self._mounts:
                    self._nodes[self._mounts[name]].meta["mount"][1].add_scopes(name, scopes, late)
        nodes: list[tuple[Node, list[str]]] = []
        for node in list(self.nodes()):  # topological, each fragment's layers in its own topological order
            srcs = self.inputs_of(node.name)
            if node.op == MOUNT:
                prefix, frag = node.meta["mount"]
                frag.emit(prefix, srcs[0], nodes)
                if instances is not None:
                    self._note_instances(prefix, frag, instances)
            else:
                nodes.append((node, srcs))
        if instances:
            self._forget_mixed(instances, [node.meta["mount"][0] if node.op == MOUNT else node.name
                                           for node in self._nodes.values()])
        self._nodes, self._in, self._out = {}, {}, {}
        self._mounts, self._mounted, self._counter = {}, 0, 0
        for node, _ in nodes:
            node.order = self._counter
            self._counter += 1
            self._nodes[node.name] = node
            self._in[node.name], self._out[node.name] = {}, ()
        for node, srcs in nodes:
            for port, src in enumerate(srcs):
                self._link(src, node.name, port)
        self._changed()
        # The expansion is a topological order numbered in sequence, so it is the one Kahn's heap would pick.
        self._topo = [node.name for node, _ in nodes]
        if late:
            position = {name: i for i, name in enumerate(self._topo)}
            late.sort(key=lambda sc: position.get(f"{sc.name}.0", len(position)))
            scopes.update((sc.name, sc) for sc in late)
        self.scopes = scopes
        self.late_scopes = [sc.name for sc in late]
        return self

    @staticmethod
    def _note_instances(prefix: str, frag: Fragment, out: dict[str, Fragment]) -> None:
        """Record ``frag`` as the instance at ``prefix``, and each fragment it mounts at its own scope."""
        out[prefix] = frag
        for node in frag.layers:
            if node.op == MOUNT:
                rel, sub = node.meta["mount"]
                Graph._note_instances(f"{prefix}.{rel}", sub, out)

    @staticmethod
    def _forget_mixed(instances: dict[str, Fragment], outside: list[str]) -> None:
        """Drop the instances that also hold something from ``outside`` their fragments (a layer a pass named into
        the instance's scope, or another mount's prefix): their layers are no longer their fragment's alone."""
        for name in outside:
            i = name.find(".")
            while i > 0:
                instances.pop(name[:i], None)
                i = name.find(".", i + 1)

    # -- reading
    def __contains__(self, name: str) -> bool:
        return name in self._nodes or (bool(self._mounts) and self.mount_of(name) is not None)

    def __len__(self) -> int:
        """The layers, those that mounted fragments stand for included (as resolve made them)."""
        return len(self._nodes) + self._mounted

    def node(self, name: str) -> Node:
        return self._nodes[name]

    @property
    def stored(self) -> int:
        """The nodes held (a mount is one): how many :meth:`add` has added, less those removed."""
        return len(self._nodes)

    def added(self) -> list[str]:
        """The nodes' names in the order they were added (the topological order differs after a rewrite)."""
        return list(self._nodes)

    def inputs_of(self, name: str) -> list[str]:
        """The node's operands, in port order."""
        ports = self._in[name]
        return [ports[p] for p in sorted(ports)] if len(ports) > 1 else list(ports.values())

    def readers(self, name: str) -> set[str]:
        """The layers reading the node (unordered: :meth:`consumers` gives them in source order, with ports)."""
        return {dst for dst, _ in self._out[name]}

    def unread(self) -> list[str]:
        """The nodes no layer reads (the outputs, and any input or layer left unused), in the order stored."""
        return [name for name, readers in self._out.items() if not readers]

    def consumers(self, name: str) -> list[tuple[str, int]]:
        """``(consumer, port)`` pairs reading the node, in source order."""
        return sorted(self._out[name], key=lambda e: (self._nodes[e[0]].order, e[0], e[1]))

    def nodes(self) -> Iterator[Node]:
        """Nodes in a deterministic topological order (source order where free)."""
        if self._topo is None:
            self._topo = self._topological_order()
        return map(self._nodes.__getitem__, self._topo)  # (lazy, as a generator, without a Python-level step a node)

    def _topological_order(self) -> list[str]:
        """Kahn's algorithm, always taking the ready node that came first in the source (then by name)."""
        if self._in_order():
            return list(self._nodes)
        order = self._kahn()
        if len(order) != len(self._nodes):
            self.verify()  # reports the cycle
        return order

    def _in_order(self) -> bool:
        """Whether the nodes, as stored, come in strictly increasing ``order`` and every edge goes from an earlier
        node to a later one: Kahn's order is then the stored one (the first node left is always ready), which
        is what a graph built layer by layer, with nothing rewired, is. A loop without a call a node."""
        nodes, last = self._nodes, -1
        for node in nodes.values():
            if node.order <= last:
                return False
            last = node.order
        for dst, ports in self._in.items():
            at = nodes[dst].order
            for port in ports:
                if nodes[ports[port]].order >= at:
                    return False
        return True

    def _kahn(self) -> list[str]:
        """The deterministic topological order; shorter than the graph when there is a cycle."""
        waiting = {name: len(ports) for name, ports in self._in.items()}
        ready = [(node.order, name) for name, node in self._nodes.items() if not waiting[name]]
        heapq.heapify(ready)
        order = []
        while ready:
            _, name = heapq.heappop(ready)
            order.append(name)
            for dst, _port in self._out[name]:
                waiting[dst] -= 1
                if not waiting[dst]:
                    heapq.heappush(ready, (self._nodes[dst].order, dst))
        return order

    def to_networkx(self) -> nx.MultiDiGraph:
        """A new networkx view of the graph, for its algorithms: edges keyed and labelled by ``port``.

        Built on demand and not kept: changing it does not change the graph.

        >>> g = Graph("tiny")
        >>> _ = g.add("x", "input", {"shape": (1, 8, 8)}, None, [])
        >>> _ = g.add("sum", "add", {}, None, ["x", "x"])
        >>> sorted(g.to_networkx().edges(keys=True, data="port"))
        [('x', 'sum', 0, 0), ('x', 'sum', 1, 1)]
        """
        view = nx.MultiDiGraph()
        view.add_nodes_from(self._nodes)
        for dst, ports in self._in.items():
            view.add_edges_from((ports[p], dst, p, {"port": p}) for p in sorted(ports))
        return view

    def scope_tree(self) -> dict[str, list[str]]:
        """Every scope (a dotted prefix of a layer name, ``""`` the network) -> its direct children, in order."""
        children: dict[str, dict[str, None]] = {"": {}}  # dicts as ordered sets: a list's `in` would be quadratic
        for n in self.nodes():
            parent = ""
            for part in n.name.split("."):
                child = f"{parent}.{part}" if parent else part
                kids = children.get(parent)
                if kids is None:
                    kids = children[parent] = {}
                kids[child] = None
                parent = child
        return {scope: list(kids) for scope, kids in children.items()}

    def ancestors(self, names) -> set[str]:
        """The given nodes and every node they depend on (e.g. the main output's path, aux heads excluded)."""
        seen: set[str] = set()
        stack = list(names)
        while stack:
            name = stack.pop()
            if name not in seen:
                seen.add(name)
                stack.extend(self.inputs_of(name))
        return seen

    def main_path(self) -> set[str]:
        """The main output and every node it depends on (what eval mode runs: aux heads excluded)."""
        return self.ancestors([self.output] if self.output else [])

    def noted(self, error: CnnDslError, name: str) -> CnnDslError:
        """``error``, raised at layer ``name``, with a :class:`~cnndsl.errors.Note` for each block instance the
        layer is in, innermost first (unless it has its notes already: resolve adds them as it unwinds)."""
        if not error.notes:
            self.flatten()  # a mistake ends the build: the instances inside shared fragments are named too
            parts = name.split(".")
            for i in range(len(parts) - 1, 0, -1):
                sc = self.scopes.get(".".join(parts[:i]))
                if sc is not None and sc.kind == "block" and sc.span is not None:
                    error.notes.append(instance_note(sc))
        return error

    def scope_members(self, scope: str) -> list[Node]:
        """The layers inside ``scope`` (a dotted prefix of their names), in graph order; none for ``""``.

        Indexed once per graph version: a scan per scope would be quadratic.
        """
        if not scope:
            return []
        if self._members is None:
            members: dict[str, list[Node]] = {}
            for n in self.nodes():
                parts = n.name.split(".")
                for i in range(1, len(parts)):
                    members.setdefault(".".join(parts[:i]), []).append(n)
            self._members = members
        return list(self._members.get(scope, []))

    def scope_boundary(self, scope: str) -> tuple[list[str], list[str]]:
        """The outside values ``scope`` reads, and its values read outside it or returned (each sorted by name)."""
        inside = {n.name for n in self.scope_members(scope)}
        outputs = set(self.outputs)
        ins: set[str] = set()
        outs = []
        for name in inside:
            ins.update(src for src in self.inputs_of(name) if src not in inside)
            if name in outputs or any(dst not in inside for dst, _ in self._out[name]):
                outs.append(name)
        return sorted(ins), sorted(outs)

    @property
    def outputs(self) -> list[str]:
        return [self.output, *self.aux_outputs] if self.output else list(self.aux_outputs)

    def verify(self) -> None:
        """Check well-formedness: acyclic, contiguous ports, operand counts, outputs exist."""
        if self._topo is None and len(self._kahn()) != len(self._nodes):  # a cached order is a full one
            cycle = nx.find_cycle(self.to_networkx())
            raise CnnDslError(f"the network has a cycle through '{cycle[0][0]}'",
                              self._nodes[cycle[0][0]].span)
        for node in self._nodes.values():
            ins = self._in[node.name]
            n = len(ins)
            if (0 not in ins) if n == 1 else (n > 1 and sorted(ins) != list(range(n))):  # (one port: no sort)
                raise AssertionError(f"{node.name}: operand ports {sorted(ins)} are not contiguous")
            if node.op == MOUNT:  # a checked fragment, reading one value
                continue
            op = OPS[node.op]
            if n < op.min_inputs or (op.max_inputs is not None and n > op.max_inputs):
                raise CnnDslError(f"'{node.op}' takes {op.min_inputs}"
                                  f"{'' if op.max_inputs == op.min_inputs else '+'} inputs, got {n}",
                                  node.span)
        for out in self.outputs:
            assert out in self._nodes, f"output {out} is not a node"

    # -- totals
    @property
    def total_params(self) -> int:
        return sum(n.params for n in self._nodes.values())

    @property
    def total_macs(self) -> int:
        return sum(n.macs for n in self._nodes.values())

    @property
    def total_activations(self) -> int:
        return sum(n.activations for n in self._nodes.values())

    def signature(self) -> list[tuple]:
        """A comparable description of the whole graph (names, ops, args, inputs, shapes)."""
        return [(n.name, n.op, tuple(sorted(n.args.items())), tuple(self.inputs_of(n.name)), n.shape, n.params)
                for n in self.nodes()] + [("outputs", tuple(self.outputs))]
