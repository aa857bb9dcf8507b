"""The PyTorch backend: a checked IR -> the source of a ``torch.nn.Module``.

The generated file imports torch only. Module and parameter names are the IR's
dotted node names, so ``state_dict`` keys are the IR names plus ``.weight``,
``.bias``, ``.running_mean``, ... (which is how a network written with
torchvision's names loads torchvision's weights).

Layout of the output:

- one class per network; one class per distinct block (a DSL ``block``). Instances
  of a block share a class when their expanded structure is the same; the numbers
  that differ between them (channels, strides, a residual scale) become
  constructor arguments, named after the block's parameters where the values
  match them. Instances whose structure differs (a residual block with and without
  a ``downsample`` projection) get separate classes (``Basic``, ``BasicDownsample``)
  so that every ``forward`` stays straight-line code with no optional submodules;
- a labelled sequence scope (``features``, ``layer1``) is an ``nn.Sequential``,
  called as one step when its children form a chain;
- ``forward`` is straight-line, one statement per layer, each with a comment
  giving its source line and output shape.

An op is supported when :class:`TorchEmitter` has an ``emit_<op>`` method.
"""

from __future__ import annotations

import keyword
import os
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from cnndsl.backends.base import (
    PYTHON_RESERVED,
    Emitter,
    Namespace,
    Unsupported,
    check_source,
    comment_text,
    docstring_text,
    string_literal,
)
from cnndsl.backends.torch_weights import fold_state_dict

from cnndsl.errors import CnnDslError
from cnndsl.ir import Graph, Node
from cnndsl.network import fmt_shape

#: The public attributes and methods of nn.Module, nn.Sequential and nn.ModuleDict (torch 2.1 to 2.13; a test
#: checks this covers the installed torch), and the method the generated network adds. A layer's label is
#: its attribute and its state_dict key, so a label cannot be one of these (renaming it would change the
#: state_dict); nor can it start with "_", PyTorch's private namespace (``_modules``, ``__init__``).
MODULE_ATTRS = frozenset({
    "T_destination", "add_module", "append", "apply", "bfloat16", "buffers", "call_super_init", "children", "clear",
    "compile", "cpu", "cuda", "double", "dump_patches", "eval", "extend", "extra_repr", "float", "forward",
    "get_buffer", "get_extra_state", "get_parameter", "get_submodule", "half", "insert", "ipu", "items", "keys",
    "load_state_dict", "modules", "mtia", "named_buffers", "named_children", "named_modules", "named_parameters",
    "parameters", "pop", "register_backward_hook", "register_buffer", "register_forward_hook",
    "register_forward_pre_hook", "register_full_backward_hook", "register_full_backward_pre_hook",
    "register_load_state_dict_post_hook", "register_load_state_dict_pre_hook", "register_module",
    "register_parameter", "register_state_dict_post_hook", "register_state_dict_pre_hook", "requires_grad_",
    "set_extra_state", "set_submodule", "share_memory", "state_dict", "to", "to_empty", "train", "training", "type",
    "update", "values", "xpu", "zero_grad",
    "reset_parameters",
})
#: The names the generated module defines or imports at its top level.
MODULE_GLOBALS = frozenset({"torch", "nn", "F"})
# Names a forward's local variables must not take.
_RESERVED_VARS = PYTHON_RESERVED | MODULE_GLOBALS | {"self", "aux"}


# ----------------------------------------------------------------------------- small value types


@dataclass(frozen=True)
class Slot:
    """A number in a class body that may differ between the instances sharing the class."""

    value: Any
    hint: str  # a parameter name to use when the value does not match a block parameter


@dataclass(frozen=True)
class ShapeNote:
    """A step's comment: where it comes from, then ``-> CxHxW``. Dimensions that differ between the instances
    sharing a class print as letters (``Cx56x56``); a shape with no size of its own left is left out."""

    shape: tuple[int, ...]
    where: str = ""  # "blocks.cnn:8"

    def text(self, shape: str | None) -> str:
        parts = [p for p in (self.where, shape and f"-> {shape}") if p]
        return "  # " + " ".join(parts) if parts else ""


@dataclass(frozen=True)
class OptArg:
    """A keyword argument written only when some instance differs from PyTorch's default."""

    kw: str
    value: Any
    default: Any
    hint: str


Piece = Any  # str | Slot | ShapeNote | OptArg


@dataclass
class Mod:
    """A layer that is a module: its constructor and its arguments."""

    ctor: str
    args: list[tuple[str | None, Any]]
    flatten_first: bool = False  # an fc on a feature map flattens it first
    defaults: dict = field(default_factory=dict)  # keyword -> PyTorch's default (omitted when equal)


@dataclass
class Fn:
    """A layer written inline in ``forward``: the expression, as pieces."""

    pieces: list[Piece]


@dataclass
class Unit:
    """One statement of a forward: a layer, or a call of a child module (a block, a sequence)."""

    inputs: list[str]  # IR node names whose values it reads
    output: str  # the IR node whose value it produces
    order: int
    node: Node | None = None  # a single layer
    access: str = ""  # how to reach the module from self ("self.conv1", "self.features[3]")
    span_node: Node | None = None
    call_span: Any = None
    flatten_first: bool = False  # a sequence that starts with an fc on a feature map


@dataclass
class ClassDef:
    """One generated class, before its numbers are shared out into constructor arguments."""

    scope: str
    kind: str  # the class family: the block's name, "Residual", ...
    init: list[list[Piece]] = field(default_factory=list)  # statements of __init__ after super().__init__()
    forward: list[list[Piece]] = field(default_factory=list)
    in_channels: int | None = None
    block_args: dict = field(default_factory=dict)
    name: str = ""
    call_values: list[Any] = field(default_factory=list)

    def key(self) -> tuple:
        def strip(lines):
            return tuple(tuple(p if isinstance(p, str) else (type(p).__name__, getattr(p, "hint", ""),
                                                             getattr(p, "kw", "")) for p in line)
                         for line in lines)
        return (self.kind, strip(self.init), strip(self.forward))


def camel(name: str) -> str:
    parts = [p for p in name.replace("-", "_").split("_") if p]
    out = "".join(p[:1].upper() + p[1:] for p in parts) or "Net"
    return out if out[0].isalpha() else "Net" + out


def literal(v: Any) -> str:
    """A Python literal for an argument value; square pairs collapse to one number."""
    if isinstance(v, tuple):
        if len(v) == 2 and v[0] == v[1] and not isinstance(v[0], tuple):
            return literal(v[0])
        return "(" + ", ".join(literal(x) for x in v) + ("," if len(v) == 1 else "") + ")"
    if isinstance(v, bool):
        return "True" if v else "False"
    if isinstance(v, float):
        return repr(v)
    return repr(v) if isinstance(v, str) else str(v)


def same_value(a: Any, b: Any) -> bool:
    if isinstance(a, tuple) and len(a) == 2 and a[0] == a[1]:
        a = a[0]
    if isinstance(b, tuple) and len(b) == 2 and b[0] == b[1]:
        b = b[0]
    return type(a) is type(b) and a == b or (isinstance(a, (int, float)) and isinstance(b, (int, float))
                                             and not isinstance(a, bool) and not isinstance(b, bool) and a == b)


# ----------------------------------------------------------------------------- the emitter


class TorchEmitter(Emitter):
    """Turns a checked :class:`cnndsl.ir.Graph` into PyTorch source. One ``emit_<op>`` method per op."""

    backend = "PyTorch"

    def __init__(self, graph: Graph):
        super().__init__(graph)
        self.g = graph
        self.nodes = list(graph.nodes())
        self.uses = {"F": False, "helpers": set()}
        self.outputs = set(graph.outputs)
        self._check_names()
        # module-level names: the imports, the helper classes, then the generated classes as they are named
        self.globals = Namespace(MODULE_GLOBALS | {name for name, _ in _HELPERS})
        self.class_name = self.globals.name(camel(self.g.name))
        self.scopes = self._scope_tree()
        self.kind_of: dict[str, str] = {}  # scope -> "sequential" | "chain" | "class" | "dict"
        self.classes: dict[str, ClassDef] = {}  # scope -> its class (instances)
        self.class_order: list[ClassDef] = []  # one representative per generated class
        self._rep: dict[str, _Rep] = {}  # class name -> its constructor parameters and source
        self._ctors: set[str] = set()  # module constructors used (for the init method)

    # -- structure
    def _check_names(self) -> None:
        """Refuse labels PyTorch cannot take as attribute names (they are the state_dict keys, so no renaming).

        Only the parts of a name that become attributes count: the scopes it sits in, and the layer itself
        when it is a module. An input or an inline layer (``concat``, ``add``) may be called anything.
        """
        for n in self.nodes:
            parts = n.name.split(".")
            for part in parts if n.opdef.torch_module else parts[:-1]:
                if part.isdigit():
                    continue
                if part.startswith("_"):
                    why = "names starting with '_' belong to nn.Module's internals"
                elif part in MODULE_ATTRS:
                    why = "nn.Module uses it"
                elif keyword.iskeyword(part):
                    why = "it is a Python keyword"
                else:
                    continue
                raise CnnDslError(f"'{part}' cannot name a layer in PyTorch ({why})", n.span,
                                  "pick another label: a label is the module's attribute and its state_dict key")

    def _scope_tree(self) -> dict[str, list[str]]:
        return self.g.scope_tree()

    def _members(self, scope: str) -> list[Node]:
        """The layers inside ``scope``, in graph order."""
        return self.g.scope_members(scope)

    def _boundary(self, scope: str) -> tuple[list[str], list[str]]:
        """The outside values a scope reads, and its values read outside (or returned)."""
        if not hasattr(self, "_boundaries"):
            self._boundaries: dict[str, tuple[list[str], list[str]]] = {}
        if scope not in self._boundaries:
            self._boundaries[scope] = self.g.scope_boundary(scope)
        ins, outs = self._boundaries[scope]
        return list(ins), list(outs)

    def _classify(self, scope: str) -> str:
        kids = self.scopes[scope]
        local = [k.rsplit(".", 1)[-1] for k in kids]
        ins, outs = self._boundary(scope)
        sese = len(ins) == 1 and len(outs) == 1 and outs[0] not in self.g.inputs
        if local == [str(i) for i in range(len(local))]:
            return "chain" if sese and self._is_chain(scope, ins[0], outs[0]) else "sequential"
        # children named by number with gaps (an inference build dropped some) cannot be attributes
        return "class" if sese and all(k.isidentifier() for k in local) else "dict"

    def _is_chain(self, scope: str, entry: str, exit_: str) -> bool:
        prev = entry
        kids = self.scopes[scope]
        for i, kid in enumerate(kids):
            if kid in self.g:
                node = self.g.node(kid)
                if not node.opdef.torch_module or self.g.inputs_of(kid) != [prev]:
                    return False
                if node.op == "fc" and len(self.g.node(prev).shape) != 1 and i > 0:
                    return False
                out = kid
            else:
                if self.kind_of.get(kid) not in ("chain", "class"):
                    return False
                k_in, k_out = self._boundary(kid)
                if k_in != [prev]:
                    return False
                out = k_out[0]
            last = i == len(kids) - 1
            consumers = {d for d, _ in self.g.consumers(out)}
            if not last and (out in self.outputs or any(not d.startswith(kids[i + 1]) or
                                                        (d != kids[i + 1] and not d.startswith(kids[i + 1] + "."))
                                                        for d in consumers)):
                return False
            prev = out
        return prev == exit_

    # -- units of a forward
    def _units(self, scope: str, access: str) -> list[Unit]:
        units = []
        for kid in self.scopes[scope]:
            local = kid.rsplit(".", 1)[-1]
            kid_access = self._child_access(scope, access, local)
            if kid in self.g:
                node = self.g.node(kid)
                if node.op == "input":
                    continue
                units.append(Unit(self.g.inputs_of(kid), kid, node.order, node=node, access=kid_access))
                continue
            kind = self.kind_of[kid]
            if kind in ("chain", "class"):
                ins, outs = self._boundary(kid)
                first = min(n.order for n in self._members(kid))
                head = self.scopes[kid][0]
                flat = kind == "chain" and head in self.g and self.g.node(head).op == "fc" and len(
                    self.g.node(ins[0]).shape) != 1
                units.append(Unit(ins, outs[0], first, access=kid_access, span_node=self.g.node(outs[0]),
                                  call_span=self.g.scopes[kid].span if kid in self.g.scopes else None,
                                  flatten_first=flat))
            else:
                units.extend(self._units(kid, kid_access))
        return self._toposort(units)

    def _child_access(self, scope: str, access: str, local: str) -> str:
        kind = self.kind_of.get(scope, "class")
        if kind in ("sequential", "chain"):
            return f"{access}[{local}]"
        if kind == "dict":
            return f"{access}[{string_literal(local)}]"
        return f"{access}.{local}"

    @staticmethod
    def _toposort(units: list[Unit]) -> list[Unit]:
        producer = {u.output: u for u in units}
        done: set[int] = set()
        out: list[Unit] = []
        pending = sorted(units, key=lambda u: u.order)
        while pending:
            for u in pending:
                if all(src not in producer or id(producer[src]) in done for src in u.inputs):
                    out.append(u)
                    done.add(id(u))
                    pending.remove(u)
                    break
            else:  # pragma: no cover - the IR is acyclic
                raise AssertionError("cycle between units")
        return out

    # -- generation
    def generate(self) -> str:
        self.check_supported()
        scopes = sorted((s for s in self.scopes if s), key=lambda s: -s.count("."))
        for s in scopes:  # deepest first: a parent needs its children's kinds and classes
            if s in self.g:
                raise CnnDslError(f"'{s}' names both a layer and a group of layers", self.g.node(s).span)
            self.kind_of[s] = self._classify(s)
        height: dict[str, int] = {}
        for s in scopes:  # a class's height: how deeply classes nest inside it
            inner = max((height[k] for k in self.scopes[s] if k in height), default=0)
            height[s] = inner + (self.kind_of[s] == "class")
        first = {s: min(n.order for n in self._members(s)) for s in scopes}
        for h in sorted({height[s] for s in scopes if self.kind_of[s] == "class"}):
            level = sorted((s for s in scopes if self.kind_of[s] == "class" and height[s] == h), key=first.get)
            for s in level:
                self.classes[s] = self._class_def(s)
            self._share_classes(level)
        net = self._class_def("")
        net.name = self.class_name
        body = self._render_network(net)
        return self._assemble(body)

    def _class_def(self, scope: str) -> ClassDef:
        sc = self.g.scopes.get(scope)
        if scope and sc is not None and sc.kind == "block":
            kind, args = sc.block, dict(sc.args)
        else:
            kind, args = self._generic_kind(scope), {}
        cd = ClassDef(scope, kind, block_args=args)
        for kid in self.scopes[scope]:
            local = kid.rsplit(".", 1)[-1]
            if kid in self.g and self.g.node(kid).op == "input":
                continue
            ctor = self._constructor(kid, 2)
            if ctor is not None:
                cd.init.append([f"self.{local} = ", *ctor])
        ins, _ = self._boundary(scope) if scope else ([], [])
        if ins:
            cd.in_channels = self.g.node(ins[0]).shape[0]
        cd.forward = self._forward(scope)
        return cd

    def _generic_kind(self, scope: str) -> str:
        if not scope:
            return self.g.name
        _, outs = self._boundary(scope)
        op = self.g.node(outs[0]).op if outs else ""
        return {"add": "Residual", "concat": "Branches"}.get(op, "Block")

    def _constructor(self, path: str, indent: int) -> list[Piece] | None:
        """The expression that builds the module at ``path`` (None for a layer written inline)."""
        if path in self.g:
            spec = self._emit(self.g.node(path))
            if not isinstance(spec, Mod):
                return None
            pieces: list[Piece] = [f"{spec.ctor}("]
            local = path.rsplit(".", 1)[-1]
            first = True
            for i, (kw, v) in enumerate(spec.args):
                if kw in spec.defaults:
                    pieces.append(OptArg(kw, v, spec.defaults[kw], f"{local}_{kw}" if not first else kw))
                    first = False
                    continue
                if not first:
                    pieces.append(", ")
                first = False
                if kw:
                    pieces.append(f"{kw}=")
                pieces.append(Slot(v, f"{local}_{kw or ('in' if i == 0 else 'out')}"))
            return [*pieces, ")"]
        kind = self.kind_of[path]
        if kind == "class":
            cd = self.classes[path]
            rep = self._rep[cd.name]
            pieces = [f"{cd.name}("]
            for i, (v, p) in enumerate(zip(cd.call_values, rep.params)):
                pieces += [", " if i else "", Slot(v, f"{path.rsplit('.', 1)[-1]}_{p}")]
            return [*pieces, ")"]
        pad = "    " * indent
        inner: list[Piece] = []
        for kid in self.scopes[path]:
            sub = self._constructor(kid, indent + 1)
            if sub is None:
                node = self.g.node(kid)
                raise CnnDslError(f"'{node.op}' cannot be an element of the sequence '{path}' in PyTorch", node.span,
                                  "label the sequence's layers differently, or do not label it")
            if kind == "dict":
                inner += [f"\n{pad}    {string_literal(kid.rsplit('.', 1)[-1])}: ", *sub, ","]
            else:
                inner += [f"\n{pad}    ", *sub, ","]
        if kind == "dict":
            return ["nn.ModuleDict({", *inner, f"\n{pad}}})"]
        return ["nn.Sequential(", *inner, f"\n{pad})"]

    # -- forward
    def _forward(self, scope: str) -> list[list[Piece]]:
        access = "self"
        units = self._units(scope, access)
        inputs = self.g.inputs if not scope else self._boundary(scope)[0]
        out_main = self.g.output if not scope else self._boundary(scope)[1][0]
        main, aux = units, []
        if not scope and self.g.aux_outputs:
            needed = self._ancestors(self.g.output)
            main = [u for u in units if u.output in needed]
            aux = [u for u in units if u.output not in needed]
        order = main + aux
        self._unit_outputs = {u.output for u in order}
        self._readers: dict[str, int] = {}
        for u in order:
            for src in set(u.inputs):
                self._readers[src] = self._readers.get(src, 0) + 1
        last_use: dict[str, int] = {}
        for i, u in enumerate(order):
            for src in u.inputs:
                last_use[src] = i
        end = len(order)
        for o in ([out_main] + (list(self.g.aux_outputs) if not scope else [])):
            last_use[o] = end
        var: dict[str, str] = {}
        holder: dict[str, str] = {}  # variable -> value held
        if len(inputs) == 1:
            var[inputs[0]] = "x"
            holder["x"] = inputs[0]
        else:
            for i in inputs:
                var[i] = self._ident(i)
                holder[var[i]] = i
        self._params = [var[i] for i in inputs]
        lines: list[list[Piece]] = []
        split = 0
        for i, u in enumerate(order):
            if i == len(main):
                split = len(lines)
            operands = [var[s] for s in u.inputs]
            name = self._pick_var(u, i, var, holder, last_use)
            var[u.output] = name
            holder[name] = u.output
            lines.extend(self._statement(u, name, operands))
        if not aux:
            split = len(lines)
        if scope:
            return lines + [[f"return {var[out_main]}"]]
        self._net_forward, self._net_split, self._var, self._net_params = lines, split, var, list(self._params)
        return lines

    def _ancestors(self, name: str) -> set[str]:
        seen, stack = set(), [name]
        while stack:
            n = stack.pop()
            if n not in seen:
                seen.add(n)
                stack.extend(self.g.inputs_of(n))
        return seen

    def _ident(self, name: str) -> str:
        ident = name.replace(".", "_")
        if not ident.isidentifier() or ident in _RESERVED_VARS:
            ident = "v_" + ident
        return ident

    def _pick_var(self, u: Unit, i: int, var, holder, last_use) -> str:
        def free(v: str) -> bool:
            return v not in holder or last_use.get(holder[v], -1) <= i

        multi_operand = any(self.g.node(d).op in ("add", "concat") and d in self._unit_outputs
                            for d, _ in self.g.consumers(u.output))
        joins = u.node is not None and u.node.op in ("add", "concat")
        # a branch point or an auxiliary output keeps a name of its own
        shared = self._readers.get(u.output, 0) > 1 or u.output in self.g.aux_outputs
        if u.inputs and not joins and not shared:
            first = var[u.inputs[0]]
            if last_use.get(u.inputs[0], -1) <= i and free(first) and (first != "x" or not multi_operand):
                return first
        if free("x") and not multi_operand and not shared:
            return "x"
        rel = u.access[len("self."):] if u.access.startswith("self.") else ""
        head = rel.split(".")[0].split("[")[0]
        candidates = []
        if head and (u.node is None or head != rel):
            candidates.append(head)
        candidates += ["out", self._ident(u.output.rsplit(".", 1)[-1])]
        for c in candidates:
            if c not in _RESERVED_VARS and c.isidentifier() and free(c):
                return c
        n = 2
        while not free(f"out{n}"):
            n += 1
        return f"out{n}"

    def _statement(self, u: Unit, name: str, operands: list[str]) -> list[list[Piece]]:
        stmts: list[list[Piece]] = []
        if u.node is None:
            sp = u.call_span
            if u.flatten_first:
                stmts.append([f"{operands[0]} = torch.flatten({operands[0]}, 1)"])
            stmts.append([f"{name} = {u.access}({operands[0]})", *self._note(sp, u.span_node.shape)])
            return stmts
        node = u.node
        spec = self._emit(node)
        if isinstance(spec, Mod):
            arg = operands[0]
            if spec.flatten_first:
                stmts.append([f"{arg} = torch.flatten({arg}, 1)"])
            stmts.append([f"{name} = {u.access}({arg})", *self._note(node.span, node.shape)])
        else:
            pieces = []
            for p in spec.pieces:
                if isinstance(p, str):
                    for j, o in enumerate(operands):
                        p = p.replace(f"{{{j}}}", o)
                pieces.append(p)
            stmts.append([f"{name} = ", *pieces, *self._note(node.span, node.shape)])
        return stmts

    def _note(self, span, shape) -> list[Piece]:
        if span is None:
            return [ShapeNote(tuple(shape))]
        return [ShapeNote(tuple(shape), f"{comment_text(os.path.basename(span.file))}:{span.line}")]

    # -- sharing classes between block instances
    def _share_classes(self, level: list[str]) -> None:
        groups: dict[tuple, list[ClassDef]] = {}
        for s in level:
            groups.setdefault(self.classes[s].key(), []).append(self.classes[s])
        by_kind: dict[str, list[list[ClassDef]]] = {}
        for members in groups.values():
            by_kind.setdefault(members[0].kind, []).append(members)
        for kind, variants in by_kind.items():
            base = camel(kind)
            first_name = ""
            for idx, members in enumerate(variants):
                name, variant = base, ""
                if idx:
                    def attrs(cd: ClassDef) -> list[str]:
                        return [line[0][len("self."):].split(" ")[0] for line in cd.init]
                    first = attrs(variants[0][0])
                    extra = [a for a in attrs(members[0]) if a not in first]
                    missing = [a for a in first if a not in attrs(members[0])]
                    name = base + ("Downsample" if any("downsample" in a for a in extra) else str(idx + 1))
                    if not extra and not missing:  # the same attributes: say which inline layers differ
                        ops = [Counter(n.op for n in self._members(v[0].scope)) for v in (variants[0], members)]
                        extra, missing = sorted(ops[1] - ops[0]), sorted(ops[0] - ops[1])
                    variant = _variant_note(first_name, extra, missing)
                name = self.globals.name(name)
                first_name = first_name or name
                self._finish_class(name, members, variant)

    def _finish_class(self, name: str, members: list[ClassDef], variant: str = "") -> None:
        """Decide which numbers become constructor arguments, and render the class once."""
        rep = members[0]
        params: list[str] = []  # the constructor's parameters, in order
        keys: dict[tuple, str] = {}  # what a parameter stands for -> its name
        values: list[list[Any]] = [[] for _ in members]
        # the constructor's names: clear of the module's globals (the classes it builds) and of `self`
        names = Namespace(self.globals.taken() | {"self"})
        block_params = {p: p if names.is_free(p) else names.name(p) for p in rep.block_args}  # the .cnn's own names
        for p in block_params.values():
            names.reserve(p)
        # attributes a forward reads: clear of nn.Module's and of the class's own layers
        attr_names = Namespace(MODULE_ATTRS | {line[0][len("self."):].split(" ")[0] for line in rep.init})
        attrs: dict[tuple[str, str], str] = {}  # forward numbers kept as attributes: (hint, expr) -> attribute

        def add_param(key: tuple, hint: str, vals: list[Any]) -> str:
            if key not in keys:
                keys[key] = block_params[hint] if key[0] == "block" else names.name(hint)
                params.append(keys[key])
                for j, v in enumerate(vals):
                    values[j].append(v)
            return keys[key]

        def resolve(slot_vals: list[Any], hint: str, in_forward: bool) -> str | None:
            if all(same_value(v, slot_vals[0]) for v in slot_vals):
                return None
            for p in rep.block_args:
                pv = [m.block_args.get(p) for m in members]
                if all(same_value(v, q) for v, q in zip(slot_vals, pv)):
                    return add_param(("block", p), p, pv)
                if all(isinstance(q, int) and not isinstance(q, bool) for q in pv) and all(
                        isinstance(v, int) and not isinstance(v, bool) for v in slot_vals) and pv[0]:
                    k = slot_vals[0] // pv[0]
                    if k > 1 and all(v == k * q for v, q in zip(slot_vals, pv)):
                        return f"{k} * {add_param(('block', p), p, pv)}"
            if not in_forward and all(m.in_channels is not None and same_value(v, m.in_channels) for v, m in zip(slot_vals, members)):
                return add_param(("in_channels",), "in_channels", [m.in_channels for m in members])
            return add_param(("slot", hint, *map(_value_key, slot_vals)), hint, slot_vals)

        def render(lines_of: list[list[list[Piece]]], in_forward: bool) -> list[str]:
            out = []
            for li, line in enumerate(lines_of[0]):
                text = []
                for pi, p in enumerate(line):
                    if isinstance(p, str):
                        text.append(p)
                        continue
                    if isinstance(p, OptArg):
                        vals = [lines[li][pi].value for lines in lines_of]
                        if all(same_value(v, p.default) for v in vals):
                            continue
                        expr = resolve(vals, p.hint, in_forward)
                        text.append(f"{', ' if text and not text[-1].endswith('(') else ''}{p.kw}="
                                    f"{literal(p.value) if expr is None else expr}")
                        continue
                    vals = [lines[li][pi].value if isinstance(p, Slot) else lines[li][pi].shape for lines in lines_of]
                    if isinstance(p, ShapeNote):
                        letters = "CHW" if len(p.shape) == 3 else "N"
                        same = [all(v[k] == d for v in vals) for k, d in enumerate(p.shape)]
                        shown = "x".join(str(d) if s else letters[k] for k, (d, s) in enumerate(zip(p.shape, same)))
                        text.append(p.text(shown if any(same) else None))
                        continue
                    expr = resolve(vals, p.hint, in_forward)
                    if expr is None:
                        text.append(literal(p.value))
                    elif in_forward:
                        if (p.hint, expr) not in attrs:
                            attrs[p.hint, expr] = attr_names.name(p.hint)
                        text.append(f"self.{attrs[p.hint, expr]}")
                    else:
                        text.append(expr)
                out.append("".join(text))
            return out

        init = render([m.init for m in members], False)
        forward = render([m.forward for m in members], True)
        for m, vals in zip(members, values):
            m.name = name
            m.call_values = vals
        rep_params = _Rep(params)
        self._rep = {**self._rep, name: rep_params}
        sig = ", ".join(f"{p}: {self._ptype(values[0][i])}" for i, p in enumerate(params))
        doc = self._class_doc(rep, variant)
        lines = [f"class {name}(nn.Module):", f'    """{doc}"""', ""]
        lines.append(f"    def __init__(self{', ' if sig else ''}{sig}) -> None:")
        lines.append("        super().__init__()")
        lines += [f"        {t}" for t in init]
        lines += [f"        self.{a} = {e}" for (_, e), a in attrs.items()]
        lines.append("")
        lines.append("    def forward(self, x: torch.Tensor) -> torch.Tensor:")
        lines += [f"        {t}" for t in forward]
        rep_params.source = "\n".join(lines)
        self.class_order.append(rep)

    @staticmethod
    def _ptype(v: Any) -> str:
        if isinstance(v, bool):
            return "bool"
        if isinstance(v, float):
            return "float"
        if isinstance(v, tuple):
            return "tuple[int, int]" if not (len(v) == 2 and v[0] == v[1]) else "int"
        return "int"

    def _class_doc(self, rep: ClassDef, variant: str) -> str:
        """Where the class comes from, and for a second variant of a block, what it has that the first has not."""
        sc = self.g.scopes.get(rep.scope)
        span = sc and (sc.definition or sc.span)
        where = f" ({docstring_text(os.path.basename(span.file))}:{span.line})" if span else ""
        kind = f"Block '{rep.kind}'" if sc is not None and sc.kind == "block" else rep.kind
        return f"{kind}{where}{variant}."

    # -- the network class
    def _render_network(self, net: ClassDef) -> str:
        g = self.g
        init = self._init_method() if g.init else []
        lines = [f"class {net.name}(nn.Module):", f'    """Network \'{g.name}\'{self._where()}."""', ""]
        lines.append("    def __init__(self) -> None:")
        lines.append("        super().__init__()")
        for line in net.init:
            lines.append("        " + self._plain(line))
        lines += self._freeze_lines()
        if init:
            lines.append("        self.reset_parameters()")
        lines.append("")
        params = ", ".join(f"{p}: torch.Tensor" for p in self._net_params)
        ret = "torch.Tensor" if not g.aux_outputs else "torch.Tensor | tuple[torch.Tensor, ...]"
        lines.append(f"    def forward(self, {params}) -> {ret}:")
        fwd = [self._plain(line) for line in self._net_forward]
        main, aux = fwd[:self._net_split], fwd[self._net_split:]
        lines += [f"        {t}" for t in main]
        if g.aux_outputs:
            outs = ", ".join(self._var[o] for o in g.aux_outputs)
            lines.append("        if self.training:  # the auxiliary heads run, and are returned, when training")
            lines += [f"            {t}" for t in aux]
            lines.append(f"            return {self._var[g.output]}, {outs}")
        lines.append(f"        return {self._var[g.output]}")
        if init:
            lines += [""] + init
        return "\n".join(lines)

    @staticmethod
    def _plain(line: list[Piece]) -> str:
        text: list[str] = []
        for p in line:
            if isinstance(p, OptArg):
                if not same_value(p.value, p.default):
                    text.append(f"{', ' if text and not text[-1].endswith('(') else ''}{p.kw}={literal(p.value)}")
            elif isinstance(p, str):
                text.append(p)
            elif isinstance(p, Slot):
                text.append(literal(p.value))
            else:
                text.append(p.text(fmt_shape(p.shape)))
        return "".join(text)

    def _where(self) -> str:
        n = self.g.node(self.g.inputs[0])
        return f" ({docstring_text(os.path.basename(n.span.file))}:{n.span.line})" if n.span else ""

    def _freeze_lines(self) -> list[str]:
        frozen = {n.name for n in self.nodes if n.frozen and n.params}
        if not frozen:
            return []
        out, covered = [], set()
        for n in self.nodes:
            if n.name not in frozen or n.name in covered:
                continue
            path = n.name
            parts = n.name.split(".")
            for i in range(1, len(parts)):
                prefix = ".".join(parts[:i])
                members = [m for m in self._members(prefix) if m.params]
                if all(m.name in frozen for m in members):
                    path = prefix
                    break
            covered |= {m.name for m in self._members(path)} | {path}
            out.append(f"        {self._access(path)}.requires_grad_(False)  # frozen")
        return out

    def _access(self, path: str) -> str:
        acc, scope = "self", ""
        for part in path.split("."):
            acc = self._child_access(scope, acc, part) if scope else f"self.{part}"
            scope = f"{scope}.{part}" if scope else part
        return acc

    def _init_method(self) -> list[str]:
        """``reset_parameters``, or nothing when the network has no layer the scheme initialises."""
        scheme = self.g.init
        types = {n.op for n in self.nodes}
        branches: list[tuple[str, list[str]]] = []  # (isinstance test, body)
        conv = [t for op, t in (("conv", "nn.Conv2d"), ("deconv", "nn.ConvTranspose2d")) if op in types]
        if conv:
            weight = ('nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")' if scheme == "kaiming"
                      else "nn.init.xavier_uniform_(m.weight)")
            branches.append((f"isinstance(m, {_one_or_tuple(conv)})",
                             [weight, "if m.bias is not None:", "    nn.init.zeros_(m.bias)"]))
        bns = [t for t in ("nn.BatchNorm2d", "nn.BatchNorm1d") if t in self._ctors]
        if bns:
            branches.append((f"isinstance(m, {_one_or_tuple(bns)}) and m.affine",
                             ["nn.init.ones_(m.weight)", "nn.init.zeros_(m.bias)"]))
        if "fc" in types and self.g.init_fc:
            weight = "nn.init.normal_(m.weight, 0.0, 0.01)" if scheme == "kaiming" else "nn.init.xavier_uniform_(m.weight)"
            branches.append(("isinstance(m, nn.Linear)", [weight, "if m.bias is not None:", "    nn.init.zeros_(m.bias)"]))
        zero = []
        if self.g.zero_init_residual:
            for n in self.nodes:
                if n.op == "add":
                    body = self.g.node(self.g.inputs_of(n.name)[0])
                    if body.op == "bn" and body.args["affine"]:
                        zero.append(f"        nn.init.zeros_({self._access(body.name)}.weight)")
        if not branches and not zero:
            return []
        lines = ["    def reset_parameters(self) -> None:",
                 f'        """{"He (Kaiming)" if scheme == "kaiming" else "Glorot (Xavier)"} initialisation."""']
        if branches:
            lines.append("        for m in self.modules():")
        for i, (test, body) in enumerate(branches):
            lines.append(f"            {'elif' if i else 'if'} {test}:")
            lines += [f"                {b}" for b in body]
        return lines + zero

    # -- assembly
    def _assemble(self, network_src: str) -> str:
        classes = [self._rep[c.name].source for c in self.class_order]
        src = "\n\n\n".join(classes + [network_src])
        helpers = [h for h in _HELPERS if h[0] in self.uses["helpers"]]
        header = [f'"""PyTorch model for the network \'{self.g.name}\'{self._where_file()}.',
                  "", "Generated by cnndsl; edit the .cnn source instead of this file.", '"""', ""]
        imports = ["import torch", "import torch.nn.functional as F" if ("F." in src or helpers) else None,
                   "from torch import nn"]
        body = "\n".join(i for i in imports if i)
        parts = [body] + [h[1] for h in helpers] + [src]
        return "\n".join(header) + "\n" + "\n\n\n".join(parts) + "\n"

    def _where_file(self) -> str:
        n = self.g.node(self.g.inputs[0])
        return f", from {docstring_text(os.path.basename(n.span.file))}" if n.span else ""

    # -- ops (an op's emit method returns a Mod exactly when its registry entry says ``torch_module``)
    def _emit(self, node: Node) -> Mod | Fn:
        spec = getattr(self, f"emit_{node.op}")(node, [self.g.node(s).shape for s in self.g.inputs_of(node.name)])
        if isinstance(spec, Mod):
            self._ctors.add(spec.ctor)
        return spec

    def emit_input(self, node, xs):
        return Fn(["{0}"])

    def emit_conv(self, node, xs):
        a = node.args
        (t, b), (left, r) = a["p"]
        args: list[tuple[str | None, Any]] = [(None, xs[0][0]), (None, a["c"]), ("kernel_size", a["k"]),
                                              ("stride", a["s"])]
        defaults = {"stride": 1, "padding": 0, "dilation": 1, "groups": 1, "bias": True}
        ctor = "nn.Conv2d"
        if t == b and left == r:
            args.append(("padding", (t, left)))
        else:
            ctor = "PaddedConv2d"
            self.uses["helpers"].add(ctor)
            args.append(("pad", (left, r, t, b)))
        args += [("dilation", a["d"]), ("groups", a["groups"]), ("bias", a["bias"])]
        return Mod(ctor, args, defaults=defaults)

    def emit_deconv(self, node, xs):
        a = node.args
        args: list[tuple[str | None, Any]] = [
            (None, xs[0][0]), (None, a["c"]), ("kernel_size", a["k"]), ("stride", a["s"]),
            ("padding", (a["p"][0][0], a["p"][1][0])), ("output_padding", a["output_padding"]),
            ("groups", a["groups"]), ("bias", a["bias"]), ("dilation", a["d"])]
        defaults = {"stride": 1, "padding": 0, "output_padding": 0, "groups": 1, "bias": True, "dilation": 1}
        return Mod("nn.ConvTranspose2d", args, defaults=defaults)

    def _pool(self, node, ctor: str, extra: list) -> Mod:
        a = node.args
        (t, b), (left, r) = a["p"]
        args: list[tuple[str | None, Any]] = [("kernel_size", a["k"]), ("stride", a["s"])]
        if t == b and left == r:
            args.append(("padding", (t, left)))
        else:
            if ctor == "nn.AvgPool2d" and not a["count_include_pad"]:
                raise Unsupported("uneven pooling padding with count_include_pad=false is not supported by the "
                                  "PyTorch backend", node.span)
            ctor = "Padded" + ctor[3:]
            self.uses["helpers"].add(ctor)
            args.append(("pad", (left, r, t, b)))
        args.append(("ceil_mode", a["ceil"]))
        return Mod(ctor, args + extra, defaults={"padding": 0, "ceil_mode": False, "count_include_pad": True})

    def emit_maxpool(self, node, xs):
        return self._pool(node, "nn.MaxPool2d", [])

    def emit_avgpool(self, node, xs):
        return self._pool(node, "nn.AvgPool2d", [("count_include_pad", node.args["count_include_pad"])])

    def emit_gap(self, node, xs):
        return Mod("nn.AdaptiveAvgPool2d", [(None, 1)])

    def emit_adaptiveavgpool(self, node, xs):
        return Mod("nn.AdaptiveAvgPool2d", [(None, node.args["size"])])

    def emit_fc(self, node, xs):
        args: list[tuple[str | None, Any]] = [(None, _prod(xs[0])), (None, node.args["c"]), ("bias", node.args["bias"])]
        return Mod("nn.Linear", args, flatten_first=len(xs[0]) != 1, defaults={"bias": True})

    def emit_flatten(self, node, xs):
        return Mod("nn.Flatten", [])

    def emit_relu(self, node, xs):
        return Mod("nn.ReLU", [("inplace", True)] if self._can_overwrite(self.g.inputs_of(node.name)[0]) else [])

    def emit_tanh(self, node, xs):
        return Mod("nn.Tanh", [])

    def emit_sigmoid(self, node, xs):
        return Mod("nn.Sigmoid", [])

    def emit_softmax(self, node, xs):
        return Mod("nn.Softmax", [("dim", 1)])

    def emit_identity(self, node, xs):
        return Mod("nn.Identity", [])

    def emit_dropout(self, node, xs):
        return Mod("nn.Dropout", [("p", node.args["p"])])

    def emit_bn(self, node, xs):
        a = node.args
        args = [(None, xs[0][0]), ("eps", a["eps"]), ("momentum", a["momentum"]), ("affine", a["affine"])]
        return Mod("nn.BatchNorm2d" if len(xs[0]) == 3 else "nn.BatchNorm1d", args,
                   defaults={"eps": 1e-5, "momentum": 0.1, "affine": True})

    def emit_lrn(self, node, xs):
        a = node.args
        return Mod("nn.LocalResponseNorm", [(None, a["size"]), ("alpha", a["alpha"]), ("beta", a["beta"]),
                                            ("k", a["k"])])

    def emit_concat(self, node, xs):
        refs = []
        if node.args["crop"] and len(xs[0]) == 3:
            h, w = min(x[1] for x in xs), min(x[2] for x in xs)
            for i, x in enumerate(xs):
                top, left = (x[1] - h) // 2, (x[2] - w) // 2
                if (x[1], x[2]) == (h, w):
                    refs.append(f"{{{i}}}")
                else:
                    refs.append(f"{{{i}}}[:, :, {top}:{top + h}, {left}:{left + w}]")
        else:
            refs = [f"{{{i}}}" for i in range(len(xs))]
        return Fn([f"torch.cat([{', '.join(refs)}], 1)"])

    def emit_add(self, node, xs):
        terms = [f"{{{i}}}" for i in range(len(xs))]
        if node.args["scale"] != 1.0:
            return Fn([Slot(node.args["scale"], "scale"), f" * {' + '.join(terms)}"] if len(xs) == 1 else
                      [Slot(node.args["scale"], "scale"), " * {0} + " + " + ".join(terms[1:])])
        srcs = self.g.inputs_of(node.name)
        if len(set(srcs)) == len(srcs) and self.g.node(srcs[0]).opdef.overwritable \
                and self._can_overwrite(srcs[0]):
            # torchvision's `out += identity`: no new tensor per residual block. Safe because nothing else
            # reads operand 0 and its producer's backward pass does not need its output.
            return Fn(["{0}" + "".join(f".add_({t})" for t in terms[1:])])
        return Fn([" + ".join(terms)])

    def emit_padshortcut(self, node, xs):
        s, c = node.args["s"], node.args["c"]
        sub = "{0}" if s == 1 else f"{{0}}[:, :, ::{s}, ::{s}]"
        if c == xs[0][0]:
            return Fn([sub])
        return Fn([f"F.pad({sub}, (0, 0, 0, 0, 0, ", Slot(c - xs[0][0], "pad_channels"), "))"])

    def _can_overwrite(self, name: str) -> bool:
        """Whether an in-place op may overwrite the value of ``name`` (nobody else reads it).

        An op that does not materialize its output (in-place ReLU; identity, dropout and flatten,
        whose result in eval mode is the very tensor they got) is looked through to its input.
        """
        while True:
            node = self.g.node(name)
            if node.op == "input" or name in self.outputs or len(self.g.consumers(name)) != 1:
                return False
            if node.opdef.materializes:
                return True
            name = self.g.inputs_of(name)[0]


class _Rep:
    def __init__(self, params: list[str]):
        self.params = params
        self.source = ""


def _prod(shape) -> int:
    out = 1
    for d in shape:
        out *= d
    return out


_HELPERS = [
    ("PaddedConv2d", '''class PaddedConv2d(nn.Conv2d):
    """A Conv2d whose input is first zero-padded unevenly: ``pad`` is (left, right, top, bottom)."""

    def __init__(self, *args, pad: tuple[int, int, int, int], **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.pad = pad

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._conv_forward(F.pad(x, self.pad), self.weight, self.bias)'''),
    ("PaddedMaxPool2d", '''class PaddedMaxPool2d(nn.MaxPool2d):
    """A MaxPool2d whose input is first padded unevenly with -inf: ``pad`` is (left, right, top, bottom)."""

    def __init__(self, *args, pad: tuple[int, int, int, int], **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.pad = pad

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.pad(x, self.pad, value=float("-inf"))
        return F.max_pool2d(x, self.kernel_size, self.stride, 0, self.dilation, self.ceil_mode)'''),
    ("PaddedAvgPool2d", '''class PaddedAvgPool2d(nn.AvgPool2d):
    """An AvgPool2d whose input is first zero-padded unevenly: ``pad`` is (left, right, top, bottom)."""

    def __init__(self, *args, pad: tuple[int, int, int, int], **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.pad = pad

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.avg_pool2d(F.pad(x, self.pad), self.kernel_size, self.stride, 0, self.ceil_mode)'''),
]


def _variant_note(first: str, extra: list[str], missing: list[str]) -> str:
    """What a block's second (third, ...) class differs in from its first: ``, as Basic with a downsample``."""
    def names(attrs: list[str]) -> str:
        return ", ".join(f"`{a}`" for a in attrs)
    if extra and missing:
        return f": {first} with {names(extra)} in place of {names(missing)}"
    if extra:
        return f": {first} with {names(extra)}"
    if missing:
        return f": {first} without {names(missing)}"
    return f": {first}'s layers with other settings"


def _one_or_tuple(types: list[str]) -> str:
    return types[0] if len(types) == 1 else "(" + ", ".join(types) + ")"


def _value_key(v: Any) -> tuple[str, Any]:
    """A hashable key under which :func:`same_value` values are equal (a square pair is its number)."""
    if isinstance(v, tuple) and len(v) == 2 and v[0] == v[1]:
        v = v[0]
    return ("bool" if isinstance(v, bool) else "number" if isinstance(v, (int, float)) else type(v).__name__, v)


def generate(net) -> tuple[str, str]:
    """PyTorch source for a checked :class:`cnndsl.Network` (or its graph), and the network class's name.

    The source is parsed before it is returned: code that is not valid Python is a :class:`CompilerBug`.
    """
    graph = net.graph if hasattr(net, "graph") else net
    emitter = TorchEmitter(graph)
    return check_source(emitter.generate(), "PyTorch"), emitter.class_name


def compile_torch(net) -> str:
    """PyTorch source for a checked :class:`cnndsl.Network` (or its graph)."""
    return generate(net)[0]


def build(net, *, inference: bool = False, state_dict=None):
    """Generate the PyTorch source for a checked network and return an instance of its ``nn.Module``.

    The source runs in a fresh module namespace, so the model does not depend on cnndsl.
    ``inference=True`` says ``net`` is an inference build (``cnndsl.api.inference_network``): the model
    is returned in eval mode, without gradients, in channels-last memory format, and ``state_dict`` (the
    *training* build's ``state_dict()``) gives it its weights, batch norms folded into the convolutions.
    Otherwise ``state_dict`` is loaded as it is.
    """
    import linecache
    import types

    source, class_name = generate(net)
    filename = f"<cnndsl {net.name}>"
    # tracebacks, inspect.getsource and torch.jit.script read the generated source from here
    linecache.cache[filename] = (len(source), None, source.splitlines(True), filename)
    module = types.ModuleType(f"cnndsl_generated_{net.name}")
    exec(compile(source, filename, "exec"), module.__dict__)  # noqa: S102 - our own source
    cls = getattr(module, class_name)
    if inference:
        import torch

        if state_dict is not None:  # no point initialising weights about to be replaced
            with torch.device("meta"):
                model = cls()
            weights = {k: v.detach().clone() for k, v in fold_state_dict(net.graph, state_dict).items()}
            model.load_state_dict(weights, assign=True)
        else:
            model = cls()
        model.eval().requires_grad_(False)
        if len(net.input_shape) == 3:
            model = model.to(memory_format=torch.channels_last)
        return model
    model = cls()
    if state_dict is not None:
        model.load_state_dict(state_dict)
    return model
