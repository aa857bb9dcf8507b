"""The backend-neutral plan: what every printer of a network agrees on, decided once from the checked IR.

A :class:`Plan` says

- the module tree: each scope (a dotted prefix of the layer names) is a ``class`` of its own (one
  entry, one exit: it gets its own straight-line forward), a ``sequence`` (numbered children that
  chain, each a class instance, called as one step), or ``inline`` (several entries or exits: its
  layers sit in the enclosing class's forward);
- which scopes share one class (the same expanded structure), and per class the numbers that differ
  between its instances: those become constructor parameters, named after the .cnn block's own
  parameters where one explains the values (``c``, ``2 * c``), ``in_channels`` where the value is the
  block's input channels, otherwise a hint made from the layer and the argument (``conv1_k``);
- per class, the forward as straight-line :class:`Step` s (a layer, a child call, a sequence call),
  each with its inputs, its source span and its output shape.

It holds no framework knowledge: the numbers are the IR's (logical ``(C, H, W)`` shapes, explicit
``(lo, hi)`` padding pairs, PyTorch-style argument meanings), and every name in it is a hint that a
printer turns into an identifier through its own :class:`~cnndsl.backends.base.Namespace`.

>>> import cnndsl
>>> plan = make_plan(cnndsl.load("resnet18").graph)
>>> [(c.name, [p.name for p in c.params]) for c in plan.classes]
[('Basic', ['c']), ('Downsample', ['in_channels', 'conv_c']), ('BasicDownsample', ['in_channels', 'c'])]
>>> plan.instances["layer2.0"].args
(('in_channels', 64), ('c', 128))
"""

from __future__ import annotations

import heapq
from collections import namedtuple
from collections.abc import Mapping
from dataclasses import MISSING, dataclass, field, fields
from functools import cached_property
from types import MappingProxyType
from typing import Any

from cnndsl.errors import CnnDslError, Span
from cnndsl.ir.graph import Fragment, Graph, Node

#: The key of a class's one outside input in its steps (no IR name can take it).
ENTRY = "<in>"


@dataclass(frozen=True)
class Ref:
    """A value that differs between the instances of a class: ``factor`` times constructor parameter ``param``.

    ``like`` is the first instance's value where a scalar parameter stands for a pair or pairs of it (a
    printer writes ``(k, k)`` for a kernel size); ``None`` where the parameter holds the value in full.
    """

    param: str
    factor: int = 1
    like: Any = None


@dataclass(frozen=True)
class Param:
    """A constructor parameter: ``origin`` is ``"block"`` (the .cnn block's own parameter),
    ``"word"`` (the numbers a block parameter given as a word stands for in a layer's argument of its name:
    ``p=same`` passed on as ``conv(p=p)``), ``"in_channels"`` (the channels the block reads) or ``"derived"``
    (any other number)."""

    name: str
    origin: str


@dataclass(frozen=True)
class Step:
    """One statement of a forward.

    ``kind`` is ``"layer"`` (the IR op ``op``), ``"call"`` (an instance of class ``child``) or
    ``"sequence"`` (instances of the classes ``children``, chained). ``output`` and ``inputs`` are keys:
    IR names relative to the class's scope (:data:`ENTRY` for its outside input). ``attr`` is the
    member's name hint (the relative dotted name). ``args`` are the layer's numbers (for a call, the
    child's constructor arguments; for a sequence, ``"<i>.<param>"``), values or :class:`Ref` s.
    ``shape`` is the output's logical shape, ``None`` where the instances differ. ``aux`` marks the steps
    that only an auxiliary head needs.
    """

    kind: str
    output: str
    inputs: tuple[str, ...]
    attr: str
    op: str | None = None
    child: str | None = None
    children: tuple[str, ...] = ()
    args: tuple[tuple[str, Any], ...] = ()
    span: Span | None = None
    shape: tuple[int | None, ...] = ()
    aux: bool = False

    def arg(self, name: str, default: Any = None) -> Any:
        return dict(self.args).get(name, default)


@dataclass(frozen=True)
class ClassPlan:
    """One class (the network's, or a block's shared by its ``instances``)."""

    id: str  # the first instance's scope ("" for the network)
    name: str  # a CamelCase hint
    kind: str  # the block's name, "Residual", "Branches", "Block", or the network's name
    is_block: bool
    params: tuple[Param, ...]
    steps: tuple[Step, ...]
    inputs: tuple[str, ...]  # keys of the forward's arguments
    output: str  # key of the main output
    aux_outputs: tuple[str, ...]
    instances: tuple[str, ...]
    span: Span | None  # where the (first) block is defined, or the network's input
    in_shape: tuple[int, ...] | None = None


@dataclass(frozen=True)
class Instance:
    """A scope that is an instance of class ``cls``, built with ``args`` (parameter name -> value)."""

    scope: str
    cls: str
    args: tuple[tuple[str, Any], ...]


@dataclass(frozen=True)
class Plan:
    """The whole network: its classes (children before parents), the network's own class ``root``."""

    network: str
    root: ClassPlan
    classes: tuple[ClassPlan, ...]
    instances: MappingProxyType  # scope -> Instance
    scope_kinds: MappingProxyType  # scope -> "class" | "sequence" | "inline"
    init: str | None
    zero_init_residual: bool
    init_fc: bool  # the scheme initialises the fc layers too (else the framework's default)
    scope_children: MappingProxyType = field(default_factory=lambda: MappingProxyType({}))  # Graph.scope_tree()

    def cls(self, class_id: str) -> ClassPlan:
        return self.root if class_id == "" else self._by_id[class_id]

    @cached_property
    def _by_id(self) -> dict[str, ClassPlan]:
        return {c.id: c for c in self.classes}


# ----------------------------------------------------------------------------- layer numbers


def _prod(shape) -> int:
    out = 1
    for d in shape:
        out *= d
    return out


def layer_args(graph: Graph, node: Node, operands: list[str] | None = None) -> tuple[tuple[str, Any], ...]:
    """The numbers a printer needs for one layer: the IR's arguments and what follows from the shapes
    (input channels or features, ceil mode's extra bottom/right padding, centre-crop windows).
    A pool keeps ``ceil`` beside its ``ceil_extra``: PyTorch prints the mode, the JAX printers the padding. A batch
    norm carries ``frozen`` (``freeze(...)``: the JAX printers keep its statistics; PyTorch's ``train`` does).
    ``operands`` are the node's (``graph.inputs_of``), where the caller has them."""
    a = node.args
    ins = [graph.node(s).shape for s in (graph.inputs_of(node.name) if operands is None else operands)]
    op = node.op
    if op == "conv":
        return (("in_channels", ins[0][0]), ("c", a["c"]), ("k", a["k"]), ("s", a["s"]), ("p", a["p"]),
                ("d", a["d"]), ("groups", a["groups"]), ("bias", a["bias"]))
    if op == "deconv":
        return (("in_channels", ins[0][0]), ("c", a["c"]), ("k", a["k"]), ("s", a["s"]), ("p", a["p"]),
                ("d", a["d"]), ("groups", a["groups"]), ("bias", a["bias"]),
                ("output_padding", a["output_padding"]))
    if op == "fc":
        return (("in_features", _prod(ins[0])), ("c", a["c"]), ("bias", a["bias"]), ("flatten", len(ins[0]) != 1))
    if op == "bn":
        zero = graph.init is not None and graph.zero_init_residual and any(
            graph.node(d).op == "add" and port == 0 for d, port in graph.consumers(node.name))
        return (("features", ins[0][0]), ("eps", a["eps"]), ("momentum", a["momentum"]), ("affine", a["affine"]),
                ("zero_init", zero), ("frozen", node.frozen))
    if op == "pointwise":
        return (("in_features", ins[0][0]), ("c", a["c"]), ("bias", a["bias"]))
    if op in ("layernorm", "groupnorm", "layerscale"):  # their tensors are one per channel (or feature)
        return (("features", ins[0][0]), *sorted(a.items()))
    if op in ("maxpool", "avgpool"):
        extra = (0, 0)
        if a["ceil"]:
            _, h, w = ins[0]
            extra = tuple(max(0, (out - 1) * s + k - (size + lo + hi))
                          for size, out, k, s, (lo, hi) in zip((h, w), node.shape[1:], a["k"], a["s"], a["p"]))
        more = (("count_include_pad", a["count_include_pad"]),) if op == "avgpool" else ()
        return (("k", a["k"]), ("s", a["s"]), ("p", a["p"]), ("ceil", a["ceil"]), ("ceil_extra", extra), *more)
    if op == "adaptiveavgpool":
        return (("size", a["size"]),)
    if op == "lrn":
        return (("size", a["size"]), ("alpha", a["alpha"]), ("beta", a["beta"]), ("k", a["k"]))
    if op == "dropout":
        return (("p", a["p"]),)
    if op == "add":
        return (("scale", a["scale"]),)
    if op == "concat":
        crops = []
        for shape in ins:
            if a["crop"] and len(shape) == 3 and shape[1:] != node.shape[1:]:
                (h, w), (th, tw) = shape[1:], node.shape[1:]
                crops.append(((h - th) // 2, (w - tw) // 2, th, tw))  # top, left, height, width
            else:
                crops.append(None)
        return (("crops", tuple(crops)),)
    if op == "padshortcut":
        return (("s", a["s"]), ("pad_channels", a["c"] - ins[0][0]))
    if op == "flatten":
        return (("flatten", len(ins[0]) != 1),)
    if node.opdef.plugin:  # its hooks may ask for its input's channels or values (cnndsl.ops.Emit.args)
        asked = {name for hook in (node.opdef.torch_emit, node.opdef.jax_emit, node.opdef.flax_emit)
                 if hook is not None for name in hook.args}
        derived = {"in_channels": ins[0][0], "in_features": _prod(ins[0])}
        return (*((k, v) for k, v in derived.items() if k in asked), *sorted(a.items()))
    return tuple(sorted(a.items()))


# ----------------------------------------------------------------------------- values


def collapse(v: Any) -> Any:
    """A tuple whose elements are all equal, as that element (recursively): ``((1, 1), (1, 1))`` -> 1."""
    if not isinstance(v, tuple) or not v:
        return v
    first = collapse(v[0])
    if not _same(first, first):  # a NaN equals nothing, itself included
        return v
    for x in v[1:]:
        if x is not first and not _same(collapse(x) if isinstance(x, tuple) else x, first):  # collapse is idempotent
            return v
    return first


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _same(a: Any, b: Any) -> bool:
    """Equal and of one kind: a bool is not a number (``True`` is not ``1``), an int and a float may be equal."""
    if type(a) is type(b):
        return a == b
    if isinstance(a, bool) or isinstance(b, bool):
        return False
    return isinstance(a, (int, float)) and isinstance(b, (int, float)) and a == b


#: :func:`_form` of the plain scalars, looked up by exact type (a subclass takes the general rule).
_SCALAR_FORMS = {bool: "bool", int: "number", float: "number", str: "str", type(None): None}
_NOT_SCALAR = object()


def _form(v: Any) -> Any:
    """The structure of a value, for deciding whether two instances can share a class."""
    form = _SCALAR_FORMS.get(type(v), _NOT_SCALAR)
    if form is not _NOT_SCALAR:
        return form
    if isinstance(v, tuple):
        return tuple(_form(x) for x in v)
    if v is None:
        return None
    return "bool" if isinstance(v, bool) else "number" if isinstance(v, (int, float)) else type(v).__name__


def _key(v: Any) -> tuple:
    """Values under one key can share a parameter: equal, and of one structure (a stride ``(2, 2)`` and a
    padding ``((2, 2), (2, 2))`` collapse alike, but a parameter holds its value in full)."""
    return (_form(v), repr(collapse(v)))


def camel(name: str) -> str:
    """``basic_block`` -> ``BasicBlock``: a class name hint."""
    parts = [p for p in name.replace("-", "_").split("_") if p]
    out = "".join(p[:1].upper() + p[1:] for p in parts) or "Net"
    return out if out[0].isalpha() else "Net" + out


# ----------------------------------------------------------------------------- the planner


#: A :class:`Step` (its fields, in its order, with its defaults) as a draft holds it: a draft is made for every
#: instance and most are only compared with the first, so its steps are plain tuples; the class's own steps are
#: made in ``_finish``.
_DraftStep = namedtuple("_DraftStep", [f.name for f in fields(Step)],
                        defaults=[f.default for f in fields(Step) if f.default is not MISSING])


@dataclass
class _Draft:
    """A scope's class before sharing: its steps hold plain values."""

    scope: str
    kind: str
    is_block: bool
    block_args: dict
    steps: list[_DraftStep]
    inputs: tuple[str, ...]
    output: str
    aux_outputs: tuple[str, ...]
    in_channels: int | None
    span: Span | None
    in_shape: tuple[int, ...] | None
    flat: list[tuple[Any, ...]] = field(default_factory=list)  # per step, its arguments' values collapsed
    origin: int = 0  # the drafts of one origin hold the same steps (the first instance's, see Planner._draft)
    steps_id: int | None = None  # the steps' part of Planner._signature, once worked out (equal parts, equal ids)


class Planner:
    """Builds the :class:`Plan` of a checked graph (see the module docstring)."""

    def __init__(self, graph: Graph, fragments: Mapping[str, Fragment] | None = None):
        self.g = graph
        self.fragments = fragments or {}  # block instance -> the fragment it was expanded from (Graph.flatten)
        self.nodes = list(graph.nodes())
        self.outputs = set(graph.outputs)
        self.operands = {n.name: graph.inputs_of(n.name) for n in self.nodes}
        self.first: dict[str, int] = {}  # scope -> the least graph order of its layers (every scope is a key)
        self.with_input: set[str] = set()  # the scopes that hold an input
        scopes_of: dict[str, list[str]] = {}  # layer -> the scopes it is in, outermost first
        chains: dict[str, list[str]] = {"": []}  # a layer's parent scope -> the scopes it is in
        children: dict[str, dict[str, None]] = {"": {}}  # Graph.scope_tree, dicts as ordered sets
        least: dict[str, int] = {}  # parent scope -> the least graph order of its own layers
        for n in self.nodes:
            name = n.name
            parent = name.rpartition(".")[0]
            chain = chains.get(parent)
            if chain is None:
                parts = parent.split(".")
                chain = chains[parent] = [".".join(parts[:i]) for i in range(1, len(parts) + 1)]
                for above, scope in zip(["", *chain], chain):
                    children.setdefault(above, {})[scope] = None
                children.setdefault(parent, {})
            lo = least.get(parent)
            if lo is None or n.order < lo:
                least[parent] = n.order
            children[parent][name] = None
            scopes_of[name] = chain
            if n.op == "input":
                self.with_input.update(chain)
        for parent, order in least.items():  # a scope's first layer is the least of its parents' (once a parent)
            for prefix in chains[parent]:
                if order < self.first.get(prefix, order + 1):
                    self.first[prefix] = order
        self.children = {scope: list(kids) for scope, kids in children.items()}  # as Graph.scope_tree() gives it
        self.boundaries = self._boundaries(scopes_of)
        self.kinds: dict[str, str] = {}
        self.class_of: dict[str, str] = {}  # scope -> class id
        self.instances: dict[str, Instance] = {}
        self.classes: list[ClassPlan] = []
        self.variants: dict[str, list[_Draft]] = {}  # block kind -> the first draft of each of its classes
        self.zero_init = graph.init is not None and graph.zero_init_residual  # a bn's zero_init reads its consumers
        self.origins = 0  # the drafts made from layers so far
        self.steps_ids: dict[tuple, int] = {}  # the steps' part of a signature -> its number

    def _boundaries(self, scopes_of: dict[str, list[str]]) -> dict[str, tuple[list[str], list[str]]]:
        """Every scope's :meth:`boundary`, from the edges that cross it (a scan of each scope's members would visit
        a layer once per scope it is in): an edge enters the scopes of its reader that its source is not in, and
        leaves the scopes of its source that its reader is not in."""
        ins: dict[str, set[str]] = {s: set() for s in self.first}
        outs: dict[str, set[str]] = {s: set() for s in self.first}
        for dst, srcs in self.operands.items():
            inner = scopes_of[dst]
            for src in set(srcs):
                outer = scopes_of[src]
                if outer is inner:  # one parent (the chains are shared): no scope between them
                    continue
                common = 0  # the scopes both are in: a common prefix of the two chains
                while common < len(inner) and common < len(outer) and inner[common] == outer[common]:
                    common += 1
                for s in inner[common:]:
                    ins[s].add(src)
                for s in outer[common:]:
                    outs[s].add(src)
        for name in self.outputs:
            for s in scopes_of[name]:
                outs[s].add(name)
        return {s: (sorted(ins[s]), sorted(outs[s])) for s in self.first}

    def boundary(self, scope: str) -> tuple[list[str], list[str]]:
        """The outside values a scope reads, and its values read outside it (or returned), sorted."""
        ins, outs = self.boundaries.get(scope, ([], []))
        return list(ins), list(outs)

    def _classify(self, scope: str) -> str:
        ins, outs = self.boundary(scope)
        if len(ins) != 1 or len(outs) != 1 or scope in self.with_input:
            return "inline"
        kids = self.children[scope]
        local = [k.rsplit(".", 1)[-1] for k in kids]
        if local == [str(i) for i in range(len(local))] and all(self.kinds.get(k) == "class" for k in kids):
            prev = ins[0]
            for i, kid in enumerate(kids):
                k_in, k_out = self.boundary(kid)
                readers = self.g.readers(k_out[0])
                last = i == len(kids) - 1
                inside_next = f"{kids[i + 1]}." if not last else ""  # the prefix of the next child's layers
                if k_in != [prev] or not last and (k_out[0] in self.outputs or not all(
                        r.startswith(inside_next) for r in readers)):
                    break
                prev = k_out[0]
            else:
                if prev == outs[0]:
                    return "sequence"
        return "class"

    def plan(self) -> Plan:
        scopes = sorted((s for s in self.children if s), key=lambda s: -s.count("."))
        for s in scopes:  # deepest first: a parent's kind and class need its children's
            if s in self.g:
                raise CnnDslError(f"'{s}' names both a layer and a group of layers", self.g.node(s).span)
            self.kinds[s] = self._classify(s)
        first = self.first
        height: dict[str, int] = {}
        for s in scopes:
            height[s] = max((height[k] for k in self.children[s] if k in height), default=0) + (
                self.kinds[s] == "class")
        for h in sorted({height[s] for s in scopes if self.kinds[s] == "class"}):
            level = sorted((s for s in scopes if self.kinds[s] == "class" and height[s] == h), key=first.get)
            drafted: dict[tuple[Fragment, str], _Draft] = {}  # (fragment, scope in it) -> its first instance's draft
            self._share([self._draft(s, drafted) for s in level])
        root = self._draft("")
        root_plan = self._finish(root.kind, [root], class_id="", name=camel(self.g.name))
        return Plan(self.g.name, root_plan, tuple(self.classes), MappingProxyType(dict(self.instances)),
                    MappingProxyType(dict(self.kinds)), self.g.init, self.g.zero_init_residual,
                    self.g.init_fc, MappingProxyType({s: tuple(kids) for s, kids in self.children.items()}))

    # -- drafts
    def _draft(self, scope: str, drafted: dict[tuple[Fragment, str], _Draft] | None = None) -> _Draft:
        """The draft of ``scope``. An instance of a fragment that ``drafted`` holds takes that draft's steps (see
        :meth:`_same_steps`) instead of collecting its layers; a new one is added there."""
        sc = self.g.scopes.get(scope) if scope else None
        if sc is not None and sc.kind == "block":
            kind, is_block, block_args = sc.block, True, dict(sc.args)
            span = sc.definition or sc.span
        elif scope:
            _, outs = self.boundary(scope)
            kind = {"add": "Residual", "concat": "Branches"}.get(self.g.node(outs[0]).op, camel(scope.rsplit(".", 1)[-1]))
            is_block, block_args, span = False, {}, sc.span if sc is not None else None
        else:
            kind, is_block, block_args = self.g.name, False, {}
            span = self.g.node(self.g.inputs[0]).span
        if scope:
            ins, outs = self.boundary(scope)
            entry = {ins[0]: ENTRY}
            inputs, output, aux_outputs = (ENTRY,), outs[0], ()
            in_shape = self.g.node(ins[0]).shape
        else:
            entry = {}
            inputs, output, aux_outputs = tuple(self.g.inputs), self.g.output, tuple(self.g.aux_outputs)
            in_shape = None

        def key(name: str) -> str:
            return entry.get(name) or (name[len(scope) + 1:] if scope else name)

        frag = self._same_steps(scope, output) if drafted is not None else None
        like = drafted.get(frag) if frag is not None else None
        if like is not None:
            return _Draft(scope, kind, is_block, block_args, like.steps, inputs, key(output), (),
                          in_shape[0] if in_shape else None, span, in_shape, like.flat, like.origin, like.steps_id)
        raw = self._collect(scope, key)
        steps = self._toposort(raw)
        if not scope and self.g.aux_outputs:
            needed = self.g.ancestors([self.g.output])
            steps = [s for s, _ in steps if s.output in needed] + [
                s._replace(aux=True) for s, _ in steps if s.output not in needed]
        else:
            steps = [s for s, _ in steps]
        draft = _Draft(scope, kind, is_block, block_args, steps, inputs, key(output), tuple(map(key, aux_outputs)),
                       in_shape[0] if in_shape else None, span, in_shape,
                       [tuple(collapse(v) if isinstance(v, tuple) else v for _, v in s.args) for s in steps],
                       self.origins)
        self.origins += 1
        if frag is not None:
            self._signature(draft)  # worked out once, for every instance that takes these steps
            drafted[frag] = draft
        return draft

    def _signature(self, d: _Draft) -> tuple:
        """What two drafts that share a class agree on: their structure and the forms of their numbers."""
        if d.steps_id is None:
            steps = tuple((s.kind, s.output, s.inputs, s.attr, s.op, s.child, s.children,
                           tuple((k, _form(v)) for (k, _), v in zip(s.args, flat)), s.aux, len(s.shape))
                          for s, flat in zip(d.steps, d.flat))
            d.steps_id = self.steps_ids.setdefault(steps, len(self.steps_ids))
        return (d.kind, d.is_block, d.inputs, d.output, d.steps_id)

    def _same_steps(self, scope: str, exit_: str) -> tuple[Fragment, str] | None:
        """The fragment, and the scope inside it (``""`` for the fragment's own), whose instances' drafts have the same
        steps as ``scope``'s; None where ``scope`` is in no fragment's instance.

        Two instances of one fragment hold the same layers under their own prefixes, with the same arguments, spans
        and shapes, in the same relative order, and the instances nested in them are of the same fragments again
        (so of the same classes, with the same arguments); so do two scopes at one place inside them (a labelled
        group in a block). Their steps differ only where something outside reads them: a class scope reads one
        outside value and is read through its exit only (its boundary), so what is left is its exit, which a batch
        norm's ``zero_init`` looks past (its consumers) where the network zero-initialises residual branches. Such
        an exit keeps the scope's own draft.
        """
        frag, rel = self.fragments.get(scope), ""
        if frag is None:  # a scope inside an instance: the innermost instance around it
            i = scope.rfind(".")
            while i > 0 and frag is None:
                frag, rel = self.fragments.get(scope[:i]), scope[i + 1:]
                i = scope.rfind(".", 0, i)
            if frag is None:
                return None
        elif exit_ != f"{scope}.{frag.output}":
            return None
        if self.zero_init and self.g.node(exit_).op == "bn":
            return None
        return frag, rel

    def _collect(self, scope: str, key) -> list[tuple[_DraftStep, int]]:
        """The steps of ``scope``'s forward (an inline child's layers included), with their graph order."""
        out = []
        for kid in self.children[scope]:
            if kid in self.g:
                node = self.g.node(kid)
                if node.op == "input":
                    continue
                name, operands = key(kid), self.operands[kid]
                out.append((_DraftStep("layer", name, tuple(map(key, operands)), name, op=node.op,
                                       args=layer_args(self.g, node, operands), span=node.span, shape=node.shape),
                            node.order))
                continue
            kind = self.kinds[kid]
            if kind == "inline":
                out += self._collect_inline(kid, key)
                continue
            ins, outs = self.boundary(kid)
            order = self.first[kid]
            sc = self.g.scopes.get(kid)
            span = sc.span if sc is not None else None
            exit_ = self.g.node(outs[0])
            if kind == "class":
                inst = self.instances[kid]
                out.append((_DraftStep("call", key(outs[0]), (key(ins[0]),), key(kid), child=inst.cls, args=inst.args,
                                 span=span or exit_.span, shape=exit_.shape), order))
            else:
                kids = self.children[kid]
                args = tuple((f"{i}.{p}", v) for i, k in enumerate(kids) for p, v in self.instances[k].args)
                out.append((_DraftStep("sequence", key(outs[0]), (key(ins[0]),), key(kid),
                                 children=tuple(self.instances[k].cls for k in kids), args=args,
                                 span=span or exit_.span, shape=exit_.shape), order))
        return out

    def _collect_inline(self, scope: str, key) -> list[tuple[_DraftStep, int]]:
        return self._collect(scope, key)

    @staticmethod
    def _toposort(steps: list[tuple[_DraftStep, int]]) -> list[tuple[_DraftStep, int]]:
        """The steps in data-flow order, the one first in the graph whenever several are ready (Kahn's algorithm
        over a heap of graph orders). Where graph order is a data-flow order it is that order (the heap's pick at
        every turn), which one pass checks."""
        producer = {s.output: i for i, (s, _) in enumerate(steps)}
        by_order = sorted(range(len(steps)), key=lambda i: steps[i][1])  # ties by position, as in the heap
        done: set[str] = set()
        for i in by_order:  # graph order is mostly data-flow order already, and then it is the answer
            if any(src in producer and src not in done for src in steps[i][0].inputs):
                break
            done.add(steps[i][0].output)
        else:
            return [steps[i] for i in by_order]
        waiting = [0] * len(steps)
        readers: list[list[int]] = [[] for _ in steps]
        for i, (s, _) in enumerate(steps):
            for src in set(s.inputs):
                j = producer.get(src)
                if j is not None:
                    waiting[i] += 1
                    readers[j].append(i)
        ready = [(order, i) for i, (_, order) in enumerate(steps) if not waiting[i]]
        heapq.heapify(ready)
        out: list[tuple[_DraftStep, int]] = []
        while ready:
            _, i = heapq.heappop(ready)
            out.append(steps[i])
            for k in readers[i]:
                waiting[k] -= 1
                if not waiting[k]:
                    heapq.heappush(ready, (steps[k][1], k))
        if len(out) != len(steps):  # pragma: no cover - the IR is acyclic
            raise AssertionError("cycle between steps")
        return out

    # -- sharing
    def _share(self, drafts: list[_Draft]) -> None:
        groups: dict[tuple, list[_Draft]] = {}
        for d in drafts:
            groups.setdefault(self._signature(d), []).append(d)
        for members in groups.values():
            kind = members[0].kind
            variants = self.variants.setdefault(kind, [])
            name = camel(kind)
            if variants:  # a second structure of the same block: named by what it adds
                first_attrs = {s.attr.split(".")[0] for s in variants[0].steps}
                extra = [s.attr for s in members[0].steps if s.attr.split(".")[0] not in first_attrs]
                name += "Downsample" if any("downsample" in a for a in extra) else str(len(variants) + 1)
            variants.append(members[0])
            self.classes.append(self._finish(kind, members, class_id=members[0].scope, name=name))

    def _finish(self, kind: str, members: list[_Draft], class_id: str, name: str) -> ClassPlan:
        """The class of ``members``: its steps, the numbers its members differ in as parameters, their arguments.

        Every decision reads each member's steps, block arguments and input channels alone, so members of one origin
        (the same steps) with the same block arguments and input channels decide alike: one of each decides
        (``distinct``), and the others take its arguments."""
        rep = members[0]
        distinct: list[_Draft] = []
        which: dict[tuple, int] = {}  # (origin, input channels, block arguments) -> its index in distinct
        of_member: list[int] = []
        for m in members:
            facts = (m.origin, m.in_channels, repr(tuple(m.block_args.items())))  # repr: True, 1 and 1.0 differ
            at = which.setdefault(facts, len(distinct))
            if at == len(distinct):
                distinct.append(m)
            of_member.append(at)
        params: list[Param] = []
        keys: dict[tuple, str] = {}
        values: list[list[tuple[str, Any]]] = [[] for _ in distinct]
        used: set[str] = set()

        block_names = set(rep.block_args)  # a derived hint never takes a block's own name
        words = {p for p in block_names if all(isinstance(m.block_args.get(p), str) for m in distinct)}
        block = []  # per block parameter: its values, collapsed, and whether they are all integers
        for p in rep.block_args:
            pv = [m.block_args.get(p) for m in distinct]
            block.append((p, pv, [collapse(q) for q in pv], all(_is_int(q) for q in pv)))

        def add(key: tuple, hint: str, origin: str, vals: list[Any]) -> str:
            if key not in keys:
                pname, n = hint, 1
                while origin != "block" and (pname in used or pname in block_names and origin != "word"):
                    n += 1
                    pname = f"{hint}{n}"
                used.add(pname)
                keys[key] = pname
                params.append(Param(pname, origin))
                for j, v in enumerate(vals):
                    values[j].append((pname, v))
            return keys[key]

        def hint(step: _DraftStep, arg: str) -> str:
            local = step.attr.rsplit(".", 1)[-1]
            arg_hint = arg.replace(".", "_")
            if local.isdigit():  # an element of a numbered sequence: named after its op, or the argument alone
                return f"{step.op}_{arg_hint}" if step.op else arg_hint
            return f"{local}_{arg_hint}"

        def resolve(i: int, j: int, arg: str) -> Any:
            """Step ``i``'s argument ``j``: its value where the members agree, else a :class:`Ref`."""
            flat = [m.flat[i][j] for m in distinct]
            first = flat[0]
            if all(v is first for v in flat) and _same(first, first) or all(_same(v, first) for v in flat):
                return rep.steps[i].args[j][1]
            vals = [m.steps[i].args[j][1] for m in distinct]
            ints = None  # whether the values are all integers, once asked
            for p, pv, collapsed, pv_ints in block:
                if all(_same(v, q) for v, q in zip(flat, collapsed)):
                    like = None if isinstance(pv[0], tuple) else vals[0]  # a scalar parameter fills a pair
                    return Ref(add(("block", p), p, "block", pv), 1, like)
                if pv[0] and pv_ints and (ints if ints is not None else (ints := all(map(_is_int, flat)))):
                    k = flat[0] // pv[0]
                    if k > 1 and all(v == k * q for v, q in zip(flat, pv)):
                        return Ref(add(("block", p), p, "block", pv), k, vals[0])
            if all(m.in_channels is not None and _same(v, m.in_channels) for v, m in zip(flat, distinct)):
                return Ref(add(("in_channels",), "in_channels", "in_channels", [m.in_channels for m in distinct]),
                           1, vals[0])
            if arg in words:  # the block's word (`p=same`) as the numbers it stands for, under its name
                return Ref(add(("word", arg, *map(_key, vals)), arg, "word", vals), 1, None)
            return Ref(add(("derived", *map(_key, vals)), hint(rep.steps[i], arg), "derived", vals), 1,
                       None)  # the values in full

        steps = []
        for i, step in enumerate(rep.steps):
            if len(distinct) == 1 and all(_same(v, v) for v in rep.flat[i]):  # one kind of member: every value its own
                steps.append(Step(*step))
                continue
            args = [(arg, resolve(i, j, arg)) for j, (arg, _) in enumerate(step.args)]
            shapes = [m.steps[i].shape for m in distinct]
            shape = step.shape
            if any(s != shape for s in shapes):  # a dimension the instances differ in is None
                shape = tuple(d if all(s[k] == d for s in shapes) else None for k, d in enumerate(step.shape))
            steps.append(Step(*step._replace(args=tuple(args), shape=shape)))
        args_of = [tuple(vals) for vals in values]
        for m, at in zip(members, of_member):
            self.instances[m.scope] = Instance(m.scope, class_id, args_of[at])
            self.class_of[m.scope] = class_id
        return ClassPlan(class_id, name, kind, rep.is_block, tuple(params), tuple(steps), rep.inputs, rep.output,
                         rep.aux_outputs, tuple(m.scope for m in members), rep.span, rep.in_shape)


def element_args(step: Step) -> list[tuple[tuple[str, Any], ...]]:
    """A sequence step's arguments (``"<i>.<param>"``) split by element: element i's ``(param, value)`` pairs."""
    out: list[list[tuple[str, Any]]] = [[] for _ in step.children]
    for k, v in step.args:
        i, _, param = k.partition(".")
        out[int(i)].append((param, v))
    return [tuple(a) for a in out]


def make_plan(graph: Graph, fragments: Mapping[str, Fragment] | None = None) -> Plan:
    """The :class:`Plan` of a checked graph (a :class:`cnndsl.Network`'s ``.graph``); ``fragments`` (from
    :func:`expand`) lets it plan the steps of each fragment's instances once."""
    return Planner(graph, fragments).plan()


def expand(net) -> tuple[Graph, dict[str, Fragment]]:
    """The layer-by-layer graph of a :class:`cnndsl.Network` (or of a graph), and the fragment each block instance
    was expanded from where this call expands them (a network read for the first time): :func:`make_plan`'s
    arguments. The network's graph is read once (a read of ``Network.graph`` is a call)."""
    built = getattr(net, "plan", None)
    if isinstance(built, Graph) and built.mounted:
        fragments: dict[str, Fragment] = {}
        return built.flatten(fragments), fragments
    return getattr(net, "graph", net), {}
