"""The PyTorch backend: a printer of the :mod:`~cnndsl.backends.plan`.

The generated file imports torch only. Module and parameter names are the IR's dotted node names, so
``state_dict`` keys are the IR names plus ``.weight``, ``.bias``, ``.running_mean``, ... (which is how a
network written with torchvision's names loads torchvision's weights).

The plan decides the structure (scopes, which block instances share a class, which numbers become
constructor parameters, named after the block's own); this module prints it:

- one ``nn.Module`` class per network and per class of the plan whose members have names (a DSL
  ``block``, a group of named layers), its instances built with keywords: ``BasicDownsample(in_channels=64,
  c=128)``. A block whose instances differ in structure gets one class per structure (``Basic``,
  ``BasicDownsample``), so that every ``forward`` stays straight-line code with no optional submodules;
- a numbered scope (``features``, ``layer1``, ``downsample``) as an ``nn.Sequential``, torchvision's layout
  (``features.0.weight``, ``layer1.0.conv1.weight``), called as one step where its elements chain, else
  reached by index; numbers with gaps (an inference build drops its batch norms) as an
  ``nn.Sequential`` over an ``OrderedDict`` where they chain, else an ``nn.ModuleDict``; a scope with
  several entries or exits keeps its layers in its parent's ``forward``, its modules in a container;
- ``forward`` is straight-line, one statement per layer or child module, each with a comment giving
  its source line and its output shape where that has a size of its own;
- a network with auxiliary heads returns torchvision's namedtuple in training and its logits alone in
  evaluation (:func:`outputs_tuple`), a form TorchScript compiles.

:func:`build` runs the source in a module named by its hash (:func:`source_module`): one class per source
text, whose instances pickle with the source they came from (:func:`restore`).

An op is supported when :class:`ClassPrinter` has a ``ctor_<op>`` method (an op the registry marks
``torch_module``) or an ``emit_<op>`` method (the others); see there.
"""

from __future__ import annotations

import hashlib
import io
import keyword
import linecache
import os
import re
import sys
import textwrap
import threading
import tokenize
import types
from collections import Counter
from functools import cached_property
from typing import Any

from cnndsl.backends.base import (
    PYTHON_RESERVED,
    CompilerBug,
    Emitter,
    Namespace,
    PluginNames,
    Unsupported,
    Writer,
    check_source,
    comment_text,
    docstring_text,
    plugin_args,
    sorted_imports,
    string_literal,
)
from cnndsl.backends.jax import WIDTH, _wrap
from cnndsl.backends.plan import ENTRY, ClassPlan, Ref, Step, collapse, element_args, expand, make_plan
from cnndsl.backends.torch_weights import fold_state_dict

from cnndsl.errors import CnnDslError
from cnndsl.ir.graph import Graph
from cnndsl.ir.ops import OPS, Saved

#: The public attributes and methods of nn.Module, nn.Sequential and nn.ModuleDict (torch 2.1 to 2.13; a test
#: checks this covers the installed torch), and the methods and attribute the generated network adds. A layer's label is
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
    "reset_parameters", "train_frozen_bn",
})
#: The names the generated module defines or imports at its top level (besides its helpers and classes).
MODULE_GLOBALS = frozenset({"torch", "nn", "F", "OrderedDict", "NamedTuple"})
# Names a forward's local variables must not take.
_RESERVED_VARS = PYTHON_RESERVED | MODULE_GLOBALS | {"self", "aux"}

#: PyTorch's defaults for the keywords the ``ctor_`` methods pass: a keyword whose value is its default is left
#: out. Keyed by the class's name (a ``Padded`` helper has its base's).
TORCH_DEFAULTS: dict[str, dict[str, Any]] = {
    "Conv2d": {"stride": 1, "padding": 0, "dilation": 1, "groups": 1, "bias": True},
    "ConvTranspose2d": {"stride": 1, "padding": 0, "output_padding": 0, "groups": 1, "bias": True, "dilation": 1},
    "MaxPool2d": {"padding": 0, "ceil_mode": False},
    "AvgPool2d": {"padding": 0, "ceil_mode": False, "count_include_pad": True},
    "Linear": {"bias": True},
    "BatchNorm1d": {"eps": 1e-5, "momentum": 0.1, "affine": True},
    "BatchNorm2d": {"eps": 1e-5, "momentum": 0.1, "affine": True},
    "Dropout": {"inplace": False},
    "ReLU": {"inplace": False},
    "ReLU6": {"inplace": False},
    "SiLU": {"inplace": False},
    "Hardswish": {"inplace": False},
    "GELU": {"approximate": "none"},
    "LeakyReLU": {"negative_slope": 0.01},
    "ELU": {"alpha": 1.0},
    "LayerNorm": {"eps": 1e-5, "elementwise_affine": True},
    "LayerNorm2d": {"eps": 1e-5, "elementwise_affine": True},
    "GroupNorm": {"eps": 1e-5, "affine": True},
    "PointwiseLinear": {"bias": True},
}
#: Module ops whose input is flattened first where the plan says ``flatten`` (nn.Linear on a feature map).
FLATTEN_FIRST = frozenset({"fc"})


def _torch_padding(p: tuple) -> tuple:
    """The IR's symmetric ``((top, bottom), (left, right))`` as PyTorch's one number a side: ``(top, left)``."""
    return tuple(lo for lo, _ in p)


def _pad_order(p: tuple) -> tuple:
    """The IR's ``((top, bottom), (left, right))`` in F.pad's order: ``(left, right, top, bottom)``."""
    (top, bottom), (left, right) = p
    return (left, right, top, bottom)


#: How a keyword's value is written from the IR's, by the keyword's name (``padding=``, ``pad=``); every other
#: keyword takes the value as it is. A constructor parameter standing for the value is passed in that form.
FORMS = {"value": lambda v: v, "padding": _torch_padding, "pad": _pad_order}


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
    """Equal as :func:`literal` writes them (a square pair is its number); ``True`` is not ``1``."""
    if isinstance(a, tuple) and len(a) == 2 and a[0] == a[1]:
        a = a[0]
    if isinstance(b, tuple) and len(b) == 2 and b[0] == b[1]:
        b = b[0]
    return type(a) is type(b) and a == b or (isinstance(a, (int, float)) and isinstance(b, (int, float))
                                             and not isinstance(a, bool) and not isinstance(b, bool) and a == b)


def _type_name(v: Any) -> str:
    """The annotation of a value as :func:`literal` writes it."""
    if isinstance(v, tuple):
        if len(v) == 2 and v[0] == v[1] and not isinstance(v[0], tuple):
            return _type_name(v[0])
        return "tuple[" + ", ".join(_type_name(x) for x in v) + "]" if v else "tuple"
    return "None" if v is None else type(v).__name__


def _fill(like: Any, value: Any) -> Any:
    """``like`` with every number replaced by ``value``: ``(3, 3)``, 5 -> ``(5, 5)``."""
    return tuple(_fill(x, value) for x in like) if isinstance(like, tuple) else value


def substitute(v: Any, env: dict[str, Any]) -> Any:
    """A child's value in its caller's terms: a :class:`Ref` to the child's parameter becomes the caller's
    argument for it (a number, or a :class:`Ref` to the caller's own parameter)."""
    if not isinstance(v, Ref):
        return v
    a = env[v.param]
    if isinstance(a, Ref):
        return Ref(a.param, v.factor * a.factor, v.like if v.like is not None else a.like)
    value = a * v.factor if v.factor != 1 else a
    return _fill(v.like, value) if v.like is not None else value


#: How a child is reached in each layout (see :meth:`TorchEmitter.class_layout`); a class's child whose name is
#: an identifier is an attribute.
_ACCESS = {"sequential": "{acc}[{index}]", "dict": "{acc}[{key}]", "ordered": "{acc}.get_submodule({key})",
           "class": "getattr({acc}, {key})"}


def _join(scope: str, rel: str) -> str:
    return f"{scope}.{rel}" if scope and rel else scope or rel


def _one_or_tuple(types: list[str]) -> str:
    return types[0] if len(types) == 1 else "(" + ", ".join(types) + ")"


def outputs_tuple(aux_heads: int) -> tuple[str | None, tuple[str, ...]]:
    """The name and fields of the namedtuple a network with ``aux_heads`` auxiliary heads returns in training,
    torchvision's: with one head, Inception3's ``InceptionOutputs(logits, aux_logits)``; with more, GoogLeNet's
    ``GoogLeNetOutputs(logits, aux_logits2, aux_logits1)``, the heads last to first (numbered in the order the
    network declares them). ``(None, ())`` without heads: the network returns its one tensor."""
    if not aux_heads:
        return None, ()
    if aux_heads == 1:
        return "InceptionOutputs", ("logits", "aux_logits")
    return "GoogLeNetOutputs", ("logits", *(f"aux_logits{i}" for i in range(aux_heads, 0, -1)))


# ----------------------------------------------------------------------------- the module printer


class TorchEmitter(Emitter):
    """Prints the PyTorch module of a checked :class:`cnndsl.ir.graph.Graph` from its plan: the imports and helpers,
    one :class:`ClassPrinter` per class, and the structure they share (how each scope holds its children)."""

    backend = "PyTorch"

    def __init__(self, graph: Graph, features: tuple[str, ...] = (), fragments=None):
        super().__init__(graph)
        self.g = graph
        self.features = tuple(features)  # layers whose outputs the network returns, as a list (timm's features_only)
        self._check_names()
        self.check_supported()
        self.plan = make_plan(graph, fragments)  # fragments: see plan.expand
        self.scopes = self.plan.scope_children
        self._callable: dict[str, bool] = {}  # class id -> whether an instance is called as one step
        self._layouts: dict[str, str] = {}  # class id -> its class_layout
        # module-level names: the imports, the helpers, the network's class, then the block classes
        self.globals = Namespace(MODULE_GLOBALS | set(HELPERS))
        self.plugins = PluginNames(graph, "torch_emit", self.globals, "PyTorch")  # before any class takes a name
        # the training outputs' namedtuple, named first so that it keeps torchvision's name
        self.outputs_name, self.outputs_fields = (None, ()) if self.features else outputs_tuple(len(graph.aux_outputs))
        if self.outputs_name:
            self.outputs_name = self.globals.name(self.outputs_name)
        self.class_name = self.globals.name(self.plan.root.name)
        self.printers: dict[str, ClassPrinter] = {}
        for cls in self.plan.classes:
            if self.class_layout(cls) == "class":
                self.printers[cls.id] = ClassPrinter(self, cls, self.globals.name(cls.name))
        self.printers[""] = ClassPrinter(self, self.plan.root, self.class_name)

    def supports(self, op: str) -> bool:
        if OPS[op].plugin:
            return OPS[op].torch_emit is not None
        method = ("ctor_" if OPS[op].torch_module else "emit_") + op
        return op == "input" or callable(getattr(ClassPrinter, method, None))

    def _check_names(self) -> None:
        """Refuse labels PyTorch cannot take as attribute names (they are the state_dict keys, so no renaming).

        Only the parts of a name that become attributes count: the scopes it sits in, and the layer itself
        when it is a module. An input or an inline layer (``concat``, ``add``) may be called anything.
        """
        allowed: set[str] = set()  # the parts already checked (many layers share their scopes' names)
        checked = {""}  # the scopes whose every part is allowed (many layers share their scope)
        for n in self.g.nodes():
            scope, _, last = n.name.rpartition(".")
            parts = [] if scope in checked else scope.split(".")
            if n.opdef.torch_module or n.opdef.weights:
                parts.append(last)
            for part in parts:
                if part in allowed or part.isdigit():
                    continue
                if part.startswith("_"):
                    why = "names starting with '_' belong to nn.Module's internals"
                elif part in MODULE_ATTRS:
                    why = "nn.Module uses it"
                elif keyword.iskeyword(part):
                    why = "it is a Python keyword"
                else:
                    allowed.add(part)
                    continue
                raise CnnDslError(f"'{part}' cannot name a layer in PyTorch ({why})", n.span,
                                  "pick another label: a label is the module's attribute and its state_dict key")
            checked.add(scope)

    # -- structure: how each scope is held (functions of the plan)
    def is_module(self, step: Step) -> bool:
        """Whether the step has a module (a member of its class): a call, a sequence, a ``torch_module`` layer."""
        return step.kind != "layer" or OPS[step.op].torch_module

    def class_layout(self, cls: ClassPlan) -> str:
        """How an instance of ``cls`` holds its members: ``"class"`` (a generated class: its members have
        names), ``"sequential"`` (numbered 0..n-1: an nn.Sequential, reached by index), ``"ordered"``
        (numbered with gaps, or names that are not identifiers, chaining: an nn.Sequential over an OrderedDict)
        or ``"dict"`` (numbered with gaps, not chaining: an nn.ModuleDict). Worked out once a class."""
        layout = self._layouts.get(cls.id)
        if layout is None:
            layout = self._layouts[cls.id] = self._class_layout(cls)
        return layout

    def _class_layout(self, cls: ClassPlan) -> str:
        keys = list(dict.fromkeys(s.attr.split(".")[0] for s in cls.steps if self.is_module(s)))
        if cls.id == "" or not keys or all(k.isidentifier() for k in keys):
            return "class"
        if all(k.isdigit() for k in keys):
            return self._numbered(keys, self.chains(cls))
        return "ordered" if self.chains(cls) else "class"  # torchvision's RegNet stage: "block1-0", ...

    @staticmethod
    def _numbered(keys: list[str], chains: bool) -> str:
        if sorted(map(int, keys)) == list(range(len(keys))):
            return "sequential"
        return "ordered" if chains else "dict"

    def layout(self, scope: str) -> str:
        """How the module of IR scope ``scope`` holds its children (see :meth:`class_layout`); a scope with
        several entries or exits is an nn.Sequential (numbered 0..n-1) or an nn.ModuleDict."""
        if not scope:
            return "class"
        kind = self.plan.scope_kinds[scope]
        if kind == "sequence":
            return "sequential"
        if kind == "class":
            return self.class_layout(self.plan.cls(self.plan.instances[scope].cls))
        keys = [k.rsplit(".", 1)[-1] for k in self.scopes[scope] if self._holds_module(k)]
        return self._numbered(keys, False) if keys and all(k.isdigit() for k in keys) else "dict"

    def _holds_module(self, name: str) -> bool:
        if name in self.g:
            return self.g.node(name).opdef.torch_module
        return any(n.opdef.torch_module for n in self.g.scope_members(name))

    def chains(self, cls: ClassPlan) -> bool:
        """Whether ``cls``'s steps chain, each a module called on the one before (only the first may flatten
        its input first): its container is then called as one step."""
        prev = ENTRY
        for i, s in enumerate(cls.steps):
            if s.inputs != (prev,) or not self.is_callable(s) or i and self.wants_flat(s):
                return False
            prev = s.output
        return bool(cls.steps) and prev == cls.output

    def class_callable(self, cls: ClassPlan) -> bool:
        if cls.id not in self._callable:
            layout = self.class_layout(cls)
            self._callable[cls.id] = (layout == "class" or layout != "dict" and self.chains(cls)) and \
                not any(self._hides_feature(scope) for scope in cls.instances)
        return self._callable[cls.id]

    def _hides_feature(self, scope: str) -> bool:
        """Whether IR scope ``scope`` computes a feature (``features``) that it does not return: the network's
        forward then writes the scope's steps in place, to keep the value."""
        if not self.features:
            return False
        inside = {n.name for n in self.g.scope_members(scope)}
        exits = set(self.g.scope_boundary(scope)[1]) if inside else set()
        return any(f in inside and f not in exits for f in self.features)

    def is_callable(self, step: Step) -> bool:
        """Whether ``forward`` calls the step's module as one statement (else its steps are written in place)."""
        if step.kind == "layer":
            return OPS[step.op].torch_module
        ids = (step.child,) if step.kind == "call" else step.children
        if step.kind == "sequence" and self._hides_feature(step.attr):  # the network's steps name IR scopes
            return False
        return all(self.class_callable(self.plan.cls(c)) for c in ids)

    def wants_flat(self, step: Step) -> bool:
        """Whether the step's module takes its input flattened first (nn.Linear on a feature map)."""
        if step.kind == "layer":
            return step.op in FLATTEN_FIRST and step.arg("flatten") is not False
        cls = self.plan.cls(step.child if step.kind == "call" else step.children[0])
        return self.class_layout(cls) != "class" and bool(cls.steps) and self.wants_flat(cls.steps[0])

    def open_step(self, step: Step) -> list[Step]:
        """A call or a sequence as the steps it stands for, in the calling class's keys and values: a call
        as its class's steps (keys and attributes under the call's, values substituted), a sequence as one
        call per element."""
        if step.kind == "sequence":
            out, prev = [], step.inputs[0]
            by_element = element_args(step)
            for i, child in enumerate(step.children):
                cls = self.plan.cls(child)
                attr = f"{step.attr}.{i}"
                last = i == len(step.children) - 1
                output = step.output if last else f"{attr}.{cls.output}"
                shape = step.shape if last else next(s.shape for s in cls.steps if s.output == cls.output)
                args = by_element[i]
                out.append(Step("call", output, (prev,), attr, child=child, args=args, span=step.span, shape=shape,
                                aux=step.aux))
                prev = output
            return out
        cls = self.plan.cls(step.child)
        env = dict(step.args)

        def key(k: str) -> str:
            return step.inputs[0] if k == ENTRY else f"{step.attr}.{k}"

        return [Step(s.kind, key(s.output), tuple(map(key, s.inputs)), f"{step.attr}.{s.attr}", op=s.op,
                     child=s.child, children=s.children, args=tuple((n, substitute(v, env)) for n, v in s.args),
                     span=s.span, shape=s.shape, aux=step.aux or s.aux)
                for s in cls.steps]

    def child_access(self, acc: str, scope: str, part: str) -> str:
        """The expression of child ``part`` of the module ``acc`` (IR scope ``scope``)."""
        layout = self.layout(scope)
        if layout == "class" and part.isidentifier():
            return f"{acc}.{part}"
        return _ACCESS[layout].format(acc=acc, index=part, key=string_literal(part))

    def access(self, path: str, scope: str = "", acc: str = "self") -> str:
        """The expression of IR path ``path`` from the module ``acc`` of ``scope``: ``self.layer1[0].conv1``."""
        for part in path.split("."):
            acc = self.child_access(acc, scope, part)
            scope = _join(scope, part)
        return acc

    # -- in-place safety (a fact of the graph, so it holds in every instance of a class)
    def can_overwrite(self, name: str) -> bool:
        """Whether an in-place op may overwrite the value of ``name``: nobody else reads it, and the backward
        pass of the op that made it does not either (tanh's, sigmoid's and an in-place ReLU's read their output).

        An op that does not materialize its output (in-place ReLU; identity, dropout and flatten,
        whose result in eval mode is the very tensor they got) is looked through to its input. A feature
        (``features``) is returned, so it is never overwritten.
        """
        while True:
            node = self.g.node(name)
            if (node.op == "input" or name in self.g.outputs or name in self.features
                    or len(self.g.consumers(name)) != 1):
                return False
            if Saved.OUTPUT in node.opdef.saves:
                return False
            if node.opdef.materializes:
                return True
            name = self.g.inputs_of(name)[0]

    def add_in_place(self, name: str) -> bool:
        """torchvision's ``out += identity``: no new tensor per residual block. Safe where nothing else reads
        operand 0 and the op that made it is ``overwritable``. An op that does not materialize its output
        (stochastic depth, dropout, identity: in eval mode the very tensor they got) is looked through to the
        op that made it, as EfficientNet's and ConvNeXt's ``result = stochastic_depth(result); result +=
        input``; in training stochastic depth and out-of-place dropout make a fresh tensor, safe alike."""
        srcs = self.g.inputs_of(name)
        if len(set(srcs)) != len(srcs) or not self.can_overwrite(srcs[0]):
            return False
        made = srcs[0]
        while not self.g.node(made).opdef.materializes:  # can_overwrite went this way: a one-input chain
            made = self.g.inputs_of(made)[0]
        return self.g.node(made).opdef.overwritable

    # -- the file
    def generate(self) -> str:
        bodies = [self.printers[c.id].source() for c in self.plan.classes if c.id in self.printers]
        bodies.append(self.printers[""].source())
        src = "\n\n\n".join(bodies)
        used = _names_used(src, {*HELPERS, "F", "OrderedDict"})
        helpers = [text for name, text in HELPERS.items() if name in used]
        outputs = [self.outputs_class()] if self.outputs_name else []
        stdlib = [i for i in ("from collections import OrderedDict" if "OrderedDict" in used else None,
                              "from typing import NamedTuple" if outputs else None) if i]
        uses_f = "F" in used or helpers or any("F." in text for text in self.plugins.sources)
        imports = [*stdlib, "" if stdlib else None, *sorted_imports(
            ["import torch", *(["import torch.nn.functional as F"] if uses_f else []), "from torch import nn",
             *self.plugins.imports])]
        span = self.g.node(self.g.inputs[0]).span
        where = f", from {docstring_text(os.path.basename(span.file))}" if span else ""
        header = [f'"""PyTorch model for the network \'{docstring_text(self.g.name)}\'{where}.', "",
                  "Generated by cnndsl; edit the .cnn source instead of this file.", '"""', ""]
        parts = ["\n".join(i for i in imports if i is not None), *helpers, *self.plugins.sources, *outputs, src]
        return "\n".join(header) + "\n" + "\n\n\n".join(parts) + "\n"

    # -- the network's extras: the training outputs, frozen layers, initialisation
    def outputs_class(self) -> str:
        """The namedtuple of the outputs in training (see :func:`outputs_tuple`), each head's field commented
        with the head's layer; typed for TorchScript, where evaluation returns it too, the heads None."""
        heads = self.g.aux_outputs[::-1]  # the fields' order
        w = Writer()
        with w.block(f"class {self.outputs_name}(NamedTuple):"):
            w.line('"""What the network returns in training: the logits, then the auxiliary heads\' logits (torchvision\'s')
            w.line("layout). In evaluation it returns the logits alone; a scripted network returns this tuple, the")
            w.line('heads None."""')
            w.line()
            w.line(f"{self.outputs_fields[0]}: torch.Tensor")
            for field, head in zip(self.outputs_fields[1:], heads):
                w.line(f"{field}: torch.Tensor | None  # {comment_text(head)}")
        return w.text().rstrip("\n")

    def freeze_lines(self) -> list[str]:
        frozen = {n.name for n in self.g.nodes() if n.frozen and n.params}
        return [f"{self.access(path)}.requires_grad_(False)  # frozen"
                for path in self._covering(frozen, lambda m: m.params)]

    def _covering(self, names: set[str], among) -> list[str]:
        """The fewest paths that reach the layers ``names`` and no other layer for which ``among(node)`` holds: for
        each, the outermost scope whose every such layer is in ``names``, else the layer itself (in graph order)."""
        out, covered = [], set()
        for n in self.g.nodes():
            if n.name not in names or n.name in covered:
                continue
            path, parts = n.name, n.name.split(".")
            for i in range(1, len(parts)):
                prefix = ".".join(parts[:i])
                if all(m.name in names for m in self.g.scope_members(prefix) if among(m)):
                    path = prefix
                    break
            covered |= {m.name for m in self.g.scope_members(path)} | {path}
            out.append(path)
        return out

    def frozen_bn_method(self) -> list[str]:
        """A ``train`` that leaves the frozen batch norms in eval mode, so that they normalise with, and keep, their
        running statistics (torchvision's FrozenBatchNorm2d), unless ``train_frozen_bn`` is set; nothing when no
        batch norm is frozen. (Their weights are frozen by :meth:`freeze_lines`; this is about their statistics.)"""
        frozen = {n.name for n in self.g.nodes() if n.op == "bn" and n.frozen}
        if not frozen:
            return []
        ranks = {len(self.g.node(n).shape) for n in frozen}
        types = _one_or_tuple([t for t, rank in (("nn.BatchNorm2d", 3), ("nn.BatchNorm1d", 1)) if rank in ranks])
        paths = [self.access(p) for p in self._covering(frozen, lambda m: m.op == "bn")]
        scopes = ", ".join(paths) + ("," if len(paths) == 1 else "")
        return [f'def train(self, mode: bool = True) -> "{self.class_name}":',
                '    """Set training mode, but leave the frozen batch norms in eval mode: they normalise with their',
                "    running statistics and do not update them. Set ``train_frozen_bn = True`` to train them too.",
                '    """',
                "    super().train(mode)",
                "    if mode and not self.train_frozen_bn:",
                f"        for scope in ({scopes}):",
                "            for m in scope.modules():",
                f"                if isinstance(m, {types}):",
                "                    m.eval()",
                "    return self"]

    def init_method(self) -> list[str]:
        """``reset_parameters``, or nothing when the network has no layer the scheme initialises."""
        g = self.g
        scheme = g.init
        if not scheme:
            return []
        nodes = list(g.nodes())
        types = {n.op for n in nodes}
        branches: list[tuple[str, list[str]]] = []  # (isinstance test, body)
        conv = [t for op, t in (("conv", "nn.Conv2d"), ("deconv", "nn.ConvTranspose2d")) if op in types]
        if conv:
            weight = ('nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")' if scheme == "kaiming"
                      else "nn.init.xavier_uniform_(m.weight)")
            branches.append((f"isinstance(m, {_one_or_tuple(conv)})",
                             [weight, "if m.bias is not None:", "    nn.init.zeros_(m.bias)"]))
        ranks = {len(n.shape) for n in nodes if n.op == "bn"}
        bns = [t for t, rank in (("nn.BatchNorm2d", 3), ("nn.BatchNorm1d", 1)) if rank in ranks]
        if bns:
            branches.append((f"isinstance(m, {_one_or_tuple(bns)}) and m.affine",
                             ["nn.init.ones_(m.weight)", "nn.init.zeros_(m.bias)"]))
        if "fc" in types and g.init_fc:
            weight = "nn.init.normal_(m.weight, 0.0, 0.01)" if scheme == "kaiming" else "nn.init.xavier_uniform_(m.weight)"
            branches.append(("isinstance(m, nn.Linear)", [weight, "if m.bias is not None:", "    nn.init.zeros_(m.bias)"]))
        zero = []
        if g.zero_init_residual:
            for n in nodes:
                if n.op == "add":
                    body = g.node(g.inputs_of(n.name)[0])
                    if body.op == "bn" and body.args["affine"]:
                        zero.append(f"nn.init.zeros_({self.access(body.name)}.weight)")
        if not branches and not zero:
            return []
        w = Writer()
        with w.block("def reset_parameters(self) -> None:"):
            w.line(f'"""{"He (Kaiming)" if scheme == "kaiming" else "Glorot (Xavier)"} initialisation."""')
            if branches:
                with w.block("for m in self.modules():"):
                    for i, (test, body) in enumerate(branches):
                        with w.block(f"{'elif' if i else 'if'} {test}:"):
                            for b in body:
                                w.line(b)
            for z in zero:
                w.line(z)
        return w.lines


def _names_used_tokenized(src: str) -> set[str]:
    """The module-level names the code reads: ``F`` in ``F.pad(...)``, not in ``self.F`` nor in a comment
    (Python's own tokenizer; :func:`_names_used` finds the same for the names it is asked about, faster)."""
    used, prev = set(), None
    for tok in tokenize.generate_tokens(io.StringIO(src).readline):
        if tok.type == tokenize.NAME and not (prev is not None and prev.type == tokenize.OP and prev.string == "."):
            used.add(tok.string)
        if tok.type not in (tokenize.NL, tokenize.NEWLINE, tokenize.COMMENT, tokenize.INDENT, tokenize.DEDENT):
            prev = tok
    return used


#: What generated code holds besides code, for :func:`_names_used` to skip: comments, and string literals
#: (docstrings, JSON-escaped keys, reprs) with their backslash escapes.
_NOT_CODE = (
    r"#[^\n]*"  # a comment
    r'|"""(?:[^"\\]|\\.|"(?!""))*"""'  # a docstring
    r"|'''(?:[^'\\]|\\.|'(?!''))*'''"
    r'|"(?:[^"\\\n]|\\.)*"'  # a one-line string
    r"|'(?:[^'\\\n]|\\.)*'"
)


def _names_used(src: str, names) -> set[str]:
    """Which of ``names`` the code of ``src`` reads as module-level names: ``F`` in ``F.pad(...)``, not in
    ``self.F``, a comment or a string. One regular-expression scan that skips comments and strings and stops
    only at those names (generated identifiers are ASCII, so ``\\w`` delimits them as Python's tokenizer does;
    a test checks the two agree on the generated zoo)."""
    alternatives = "|".join(re.escape(n) for n in sorted(names, key=lambda n: (-len(n), n)))
    pattern = re.compile(rf"{_NOT_CODE}|(?<![\w.])({alternatives})\b", re.DOTALL)
    return {m.group(1) for m in pattern.finditer(src) if m.group(1)}


# ----------------------------------------------------------------------------- one class


class ClassPrinter:
    """Prints one class of the plan (a block's, or the network's): its constructor, members and ``forward``.

    The op contract, one method per op, found by name:

    - ``ctor_<op>(self, step) -> str``, for an op whose registry entry says ``torch_module``: the
      expression that builds its ``nn.Module`` (``nn.Conv2d(64, 128, kernel_size=3, padding=1)``). Build it
      with :meth:`module`, which writes each value and leaves out a keyword equal to PyTorch's default
      (:data:`TORCH_DEFAULTS`); ``forward`` calls the module on the step's input.
    - ``emit_<op>(self, step, xs) -> str``, for any other op: the expression of the step's value in
      ``forward``, given its inputs' variable names ``xs`` (``torch.cat([a, b], 1)``). A number it writes
      goes through :meth:`fwd`.

    ``step.args`` are the plan's :func:`~cnndsl.backends.plan.layer_args` (``step.arg("c")``), each a number
    or a :class:`~cnndsl.backends.plan.Ref` (a constructor parameter: the instances sharing the class
    differ there). :meth:`module` and :meth:`fwd` write either. ``step.shape`` is the output's shape
    (``None`` where the instances differ, its length always known); :meth:`ir_names` are the step's layers
    in every instance, for facts of the graph such as in-place safety (:meth:`inplace`).
    """

    def __init__(self, emitter: TorchEmitter, cls: ClassPlan, name: str):
        self.e = emitter
        self.cls = cls
        self.name = name
        self.is_root = cls.id == ""
        self.scopes = [""] if self.is_root else list(cls.instances)  # the IR scope of each instance
        names = Namespace(emitter.globals.taken() | {"self"})
        self.params: dict[str, str] = {}  # plan parameter -> constructor parameter
        for p in cls.params:
            self.params[p.name] = p.name if names.is_free(p.name) else names.name(p.name)
            names.reserve(self.params[p.name])
        self.forms: dict[str, set[str]] = {}  # parameter -> the forms it is written in (see FORMS); used ones
        self.kept: dict[str, str] = {}  # parameter -> the attribute that keeps it for forward
        members = {s.attr.split(".")[0] for s in cls.steps
                   if emitter.is_module(s) or s.kind == "layer" and OPS[s.op].weights}
        self.attrs = Namespace(MODULE_ATTRS | members)
        self.tensors: list[str] = []  # __init__ lines of the parameters the class holds itself (layer scales)

    # -- values
    def val(self, v: Any, form: str = "value") -> str:
        """A value in ``__init__``: a literal, or an expression of the constructor's parameters, in ``form``."""
        if isinstance(v, Ref):
            full = v.like is None
            self.forms.setdefault(v.param, set()).add(form if full else "value")
            e = self.params[v.param]
            e = e if v.factor == 1 else f"{v.factor} * {e}"
            return f"({e}, {e}, {e}, {e})" if form == "pad" and not full else e
        return literal(FORMS[form](v))

    def fwd(self, v: Any) -> str:
        """A value in ``forward``: a literal, or the attribute that keeps the constructor's parameter."""
        if isinstance(v, Ref):
            if v.param not in self.kept:
                self.kept[v.param] = self.attrs.name(self.params[v.param])
            self.forms.setdefault(v.param, set()).add("value")
            e = f"self.{self.kept[v.param]}"
            return e if v.factor == 1 else f"{v.factor} * {e}"
        return literal(v)

    def values(self, v: Any) -> list[Any]:
        """The value ``v`` stands for in each instance of the class."""
        if not isinstance(v, Ref):
            return [v]
        return [substitute(v, dict(self.e.plan.instances[s].args)) for s in self.scopes]

    def module(self, ctor: str, *args: Any, **kwargs: Any) -> str:
        """``ctor(args, keyword=value, ...)``, a keyword left out where its value is PyTorch's default.
        ``padding=`` and ``pad=`` take the IR's ``(lo, hi)`` pairs (see :data:`FORMS`)."""
        defaults = TORCH_DEFAULTS.get(ctor.rsplit(".", 1)[-1].removeprefix("Padded"), {})
        parts = [self.val(v) for v in args]
        for kw, v in kwargs.items():
            form = kw if kw in FORMS else "value"
            if kw in defaults and not isinstance(v, Ref) and same_value(collapse(FORMS[form](v)), defaults[kw]):
                continue
            parts.append(f"{kw}={self.val(v, form)}")
        return f"{ctor}({', '.join(parts)})"

    def ir_names(self, step: Step) -> list[str]:
        """The IR layer of ``step`` in every instance of the class."""
        return [_join(s, step.output) for s in self.scopes]

    def inplace(self, step: Step) -> bool:
        """Whether an in-place op may overwrite the step's input, in every instance."""
        return all(self.e.can_overwrite(self.e.g.inputs_of(n)[0]) for n in self.ir_names(step))

    def padding(self, step: Step, ctor: str) -> tuple[str, dict[str, Any]]:
        """``ctor`` and ``padding=`` where the padding is even in every instance, else the ``Padded`` helper
        and ``pad=`` (PyTorch pads both sides alike)."""
        p = step.arg("p")
        if all(t == b and left == r for (t, b), (left, r) in self.values(p)):
            return ctor, {"padding": p}
        return "Padded" + ctor.removeprefix("nn."), {"pad": p}

    def parameter_form(self, param: str) -> str:
        forms = self.forms[param]
        if len(forms) != 1:
            raise CompilerBug(f"the PyTorch backend writes parameter '{param}' of {self.name} in several forms",
                              self.cls.span, "this is a bug in cnndsl; please report it with the .cnn file")
        return next(iter(forms))

    def used_params(self) -> list[str]:
        return [p.name for p in self.cls.params if p.name in self.forms]

    def annotation(self, param: str) -> str:
        form = FORMS[self.parameter_form(param)]
        kinds = [_type_name(form(dict(self.e.plan.instances[s].args)[param])) for s in self.scopes]
        return " | ".join(dict.fromkeys(kinds))

    def call(self, step: Step) -> str:
        """The constructor expression of a child class: ``Basic(c=64)``."""
        child = self.e.printers[step.child]
        args = dict(step.args)
        kws = [f"{child.params[p]}={self.val(args[p], child.parameter_form(p))}" for p in child.used_params()]
        return f"{child.name}({', '.join(kws)})"

    # -- members
    def member_steps(self, steps) -> list[Step]:
        """The steps whose modules the class holds, containers opened to their elements."""
        out = []
        for s in steps:
            if s.kind == "layer":
                if OPS[s.op].torch_module:
                    out.append(s)
            elif s.kind == "call" and s.child in self.e.printers:
                out.append(s)
            else:
                out += self.member_steps(self.e.open_step(s))
        return out

    @cached_property
    def own_member_steps(self) -> list[Step]:
        """:meth:`member_steps` of the class's own steps: read by :meth:`members` and by every later variant of the
        block (:meth:`variant_note`), worked out once."""
        return self.member_steps(self.cls.steps)

    def members(self) -> list[str]:
        """The lines of ``__init__`` that build the members, in the order of the graph (the state_dict's)."""
        tree: dict[str, Any] = {}
        for s in self.own_member_steps:
            *path, leaf = s.attr.split(".")
            node = tree
            for part in path:
                node = node.setdefault(part, {})
            node[leaf] = self.call(s) if s.kind == "call" else (
                self.ctor_plugin(s) if OPS[s.op].plugin else getattr(self, f"ctor_{s.op}")(s))
        lines = []
        for key in self._ordered("", tree):
            value = self._expr(key, tree[key])
            if key.isidentifier():
                value[0] = f"self.{key} = {value[0]}"
            else:
                value[0] = f"self.add_module({string_literal(key)}, {value[0]}"
                value[-1] += ")"
            lines += value
        return lines

    def _ordered(self, rel: str, node: dict) -> list[str]:
        scope = _join(self.scopes[0], rel)
        if rel and self.e.layout(scope) == "sequential":
            return sorted(node, key=int)
        order = [k.rsplit(".", 1)[-1] for k in self.e.scopes[scope]]
        return [k for k in order if k in node]

    def _expr(self, rel: str, value: Any) -> list[str]:
        """A member's constructor as lines: a container's elements one a line, indented."""
        if isinstance(value, str):
            return [value]
        layout = self.e.layout(_join(self.scopes[0], rel))
        head, tail = {"sequential": ("nn.Sequential(", ")"), "ordered": ("nn.Sequential(OrderedDict([", "]))"),
                      "dict": ("nn.ModuleDict({", "})")}[layout]
        lines = [head]
        for key in self._ordered(rel, value):
            sub = self._expr(f"{rel}.{key}", value[key])
            if layout == "ordered":
                sub[0] = f"({string_literal(key)}, {sub[0]}"
                sub[-1] += ")"
            elif layout == "dict":
                sub[0] = f"{string_literal(key)}: {sub[0]}"
            sub[-1] += ","
            lines += ["    " + line for line in sub]
        return lines + [tail]

    # -- forward
    def forward_steps(self, steps) -> list[Step]:
        """The statements of ``forward``: a step whose module is not called whole is opened in place."""
        out = []
        for s in steps:
            out += [s] if s.kind == "layer" or self.e.is_callable(s) else self.forward_steps(self.e.open_step(s))
        return out

    def comment(self, step: Step) -> str:
        """Where the step comes from, and its shape where that has a size of its own (letters where the
        instances differ: ``Cx56x56``)."""
        parts = [f"{comment_text(os.path.basename(step.span.file))}:{step.span.line}"] if step.span else []
        if any(d is not None for d in step.shape):
            letters = "CHW" if len(step.shape) == 3 else "N"
            parts.append("-> " + "x".join(str(d) if d is not None else letters[i] for i, d in enumerate(step.shape)))
        return "  # " + " ".join(parts) if parts else ""

    def forward(self) -> tuple[list[str], list[str]]:
        """The forward's parameters and body."""
        cls = self.cls
        steps = self.forward_steps(cls.steps)
        features = self.e.features if self.is_root else ()
        outputs = (cls.output, *cls.aux_outputs, *features)
        last_use: dict[str, int] = {}
        readers: dict[str, int] = {}
        joined: set[str] = set()  # values read by a join (an add, a concat)
        for i, s in enumerate(steps):
            for src in s.inputs:
                last_use[src] = i
            for src in set(s.inputs):
                readers[src] = readers.get(src, 0) + 1
            if s.kind == "layer" and OPS[s.op].max_inputs != 1:
                joined.update(s.inputs)
        for o in outputs:
            last_use[o] = len(steps)
        var: dict[str, str] = {}
        holder: dict[str, str] = {}  # variable -> the value it holds
        if len(cls.inputs) == 1:
            var[cls.inputs[0]] = "x"
        else:
            for key in cls.inputs:
                var[key] = _ident(key)
        for key, v in var.items():
            holder[v] = key
        params = [var[k] for k in cls.inputs]

        def free(v: str, i: int) -> bool:
            return v not in holder or last_use.get(holder[v], -1) <= i

        def pick(i: int, s: Step) -> str:
            join = s.kind == "layer" and OPS[s.op].max_inputs != 1
            shared = readers.get(s.output, 0) > 1 or s.output in cls.aux_outputs  # keeps a name of its own
            multi = s.output in joined
            if s.inputs and not join and not shared:
                first = var[s.inputs[0]]
                if last_use.get(s.inputs[0], -1) <= i and free(first, i) and (first != "x" or not multi):
                    return first
            if free("x", i) and not multi and not shared:
                return "x"
            candidates = [s.attr.split(".")[0]] if s.kind != "layer" or "." in s.attr else []
            candidates += ["out", _ident(s.output.rsplit(".", 1)[-1])]
            for c in candidates:
                if c not in _RESERVED_VARS and c.isidentifier() and free(c, i):
                    return c
            n = 2
            while not free(f"out{n}", i):
                n += 1
            return f"out{n}"

        main, aux = [], []
        for i, s in enumerate(steps):
            xs = [var[k] for k in s.inputs]
            name = pick(i, s)
            lines = aux if s.aux else main
            if self.e.is_module(s):
                arg = xs[0]
                if self.e.wants_flat(s):
                    target = arg if last_use.get(s.inputs[0], -1) <= i else name
                    lines.append(f"{target} = torch.flatten({arg}, 1)")
                    arg = target
                expr = f"{self.e.access(s.attr, self.scopes[0])}({arg})"
            else:
                expr = getattr(self, f"emit_{s.op}")(s, xs)
            var[s.output] = name
            holder[name] = s.output
            lines.append(f"{name} = {expr}{self.comment(s)}")
        body = main
        if aux and self.e.outputs_name:  # torchvision's: the namedtuple in training, the logits alone in evaluation
            logits, heads = var[cls.output], [var[o] for o in reversed(cls.aux_outputs)]
            body.append("if self.training:  # the auxiliary heads run, and are returned, when training")
            body += ["    " + line for line in aux]
            body.append(f"    return {self.e.outputs_name}({', '.join([logits, *heads])})")
            body.append("if torch.jit.is_scripting():  # TorchScript has one return type: the tuple, the heads None")
            body.append(f"    return {self.e.outputs_name}({', '.join([logits, *['None'] * len(heads)])})")
            body.append(f"return {logits}  # the logits alone")
            return params, body
        if aux:
            outs = ", ".join(var[o] for o in outputs)
            body.append("if self.training:  # the auxiliary heads run, and are returned, when training")
            body += ["    " + line for line in aux]
            body.append(f"    return {outs}")
        if features:
            hidden = [f for f in features if f not in var]
            if hidden:  # every scope that hides one is written out in place (``_hides_feature``)
                raise CompilerBug(f"feature layer '{hidden[0]}' is not a value of the network's forward")
            body.append(f"return [{', '.join(var[f] for f in features)}]")
        else:
            body.append(f"return {var[cls.output]}")
        return params, body

    # -- the class
    def docstring(self) -> str:
        cls, span = self.cls, self.cls.span
        where = f" ({docstring_text(os.path.basename(span.file))}:{span.line})" if span else ""
        if self.is_root:
            return f"Network '{docstring_text(cls.kind)}'{where}."
        kind = f"Block '{docstring_text(cls.kind)}'" if cls.is_block else docstring_text(cls.kind)
        return f"{kind}{where}{self.variant_note()}."

    def variant_note(self) -> str:
        """What a block's second (third, ...) class differs in from its first: ``: Basic with `downsample```."""
        first = next(p for c in self.e.plan.classes if (p := self.e.printers.get(c.id)) is not None
                     and c.kind == self.cls.kind and c.is_block == self.cls.is_block)
        if first is self:
            return ""

        def names(attrs) -> str:
            shown = [f"`{docstring_text(a)}`" for a in attrs]
            return ", ".join(shown) if len(shown) <= 3 else f"{shown[0]} to {shown[-1]} ({len(shown)} in all)"

        def tops(p: ClassPrinter) -> list[str]:
            return list(dict.fromkeys(s.attr.split(".")[0] for s in p.own_member_steps))

        base, mine = tops(first), tops(self)
        extra, missing = [a for a in mine if a not in base], [a for a in base if a not in mine]
        if not extra and not missing:  # the same members: say which inline layers differ
            ops = [Counter(n.op for n in self.e.g.scope_members(p.scopes[0])) for p in (first, self)]
            extra, missing = sorted(ops[1] - ops[0]), sorted(ops[0] - ops[1])
        if extra and missing:
            return f": {first.name} with {names(extra)} in place of {names(missing)}"
        if extra:
            return f": {first.name} with {names(extra)}"
        if missing:
            return f": {first.name} without {names(missing)}"
        tuples = self._tuple_args(first)
        if tuples:
            return f": {first.name} with tuples for {names(tuples)}"
        return f": {first.name}'s layers with other settings"

    def _tuple_args(self, first: ClassPrinter) -> list[str]:
        """The arguments that are one number in ``first``'s first instance and a tuple in this class's
        (a kernel ``(1, 7)``, an uneven padding)."""
        theirs = {s.attr: s for s in first.cls.steps}
        out = []
        for s in self.cls.steps:
            other = theirs.get(s.attr)
            if other is None or other.kind != s.kind:
                continue
            for (arg, v), (_, w) in zip(s.args, other.args):
                mine, base = collapse(self.values(v)[0]), collapse(first.values(w)[0])
                if isinstance(mine, tuple) and not isinstance(base, tuple):
                    out.append(f"{s.attr}.{arg}")
        return out

    def source(self) -> str:
        members = self.members()
        params, body = self.forward()
        w = Writer()

        def line(text: str) -> None:  # broken inside its brackets where it is too long
            lead = len(text) - len(text.lstrip())
            for part in _wrap(text.lstrip(), 4 * w.depth + lead):
                w.line(" " * lead + part)

        with w.block(f"class {self.name}(nn.Module):"):
            for text in textwrap.wrap(f'"""{self.docstring()}"""', WIDTH - 4, break_long_words=False):
                w.line(text)
            w.line()
            frozen_bn = self.e.frozen_bn_method() if self.is_root else []
            if frozen_bn:
                w.line("#: Whether train() trains the frozen batch norms' statistics too (False: they stay in eval mode).")
                w.line("train_frozen_bn = False")
                w.line()
            sig = ", ".join(f"{self.params[p]}: {self.annotation(p)}" for p in self.used_params())
            line(f"def __init__(self{', ' if sig else ''}{sig}) -> None:")
            with w.indent():
                w.line("super().__init__()")
                for text in members + self.tensors:
                    line(text)
                for param, attr in self.kept.items():
                    w.line(f"self.{attr} = {self.params[param]}")
                init = self.e.init_method() if self.is_root else []
                if self.is_root:
                    for text in self.e.freeze_lines():
                        line(text)
                    if frozen_bn:
                        w.line("self.train()  # the frozen batch norms start in eval mode")
                    if init:
                        w.line("self.reset_parameters()")
            w.line()
            ret = self.e.outputs_name if self.is_root and self.e.outputs_name else "torch.Tensor"
            if self.cls.aux_outputs and not self.e.outputs_name:
                ret = "torch.Tensor | tuple[torch.Tensor, ...]"
            if self.is_root and self.e.features:
                ret = "list[torch.Tensor]"
            with w.block(f"def forward(self, {', '.join(f'{p}: torch.Tensor' for p in params)}) -> {ret}:"):
                for text in body:
                    line(text)
            if frozen_bn:
                w.line()
                for text in frozen_bn:
                    line(text)
            if init:
                w.line()
                for line in init:
                    w.line(line)
        return w.text().rstrip("\n")

    # -- ops with a module: ctor_<op>(step) -> the constructor expression
    def ctor_plugin(self, step):
        """A plugin op's module (its ``torch_emit`` class) built with its keywords (``cnndsl.ops``)."""
        args = plugin_args(step, "torch_emit")
        return f"{self.e.plugins.name(step.op)}({', '.join(f'{k}={self.val(v)}' for k, v in args)})"

    def ctor_conv(self, step):
        a = dict(step.args)
        ctor, pad = self.padding(step, "nn.Conv2d")
        return self.module(ctor, a["in_channels"], a["c"], kernel_size=a["k"], stride=a["s"], **pad,
                           dilation=a["d"], groups=a["groups"], bias=a["bias"])

    def ctor_deconv(self, step):
        a = dict(step.args)
        return self.module("nn.ConvTranspose2d", a["in_channels"], a["c"], kernel_size=a["k"], stride=a["s"],
                           padding=a["p"], output_padding=a["output_padding"], groups=a["groups"], bias=a["bias"],
                           dilation=a["d"])

    def _pool(self, step, ctor: str, **more):
        ctor, pad = self.padding(step, ctor)
        if ctor == "PaddedAvgPool2d" and step.arg("count_include_pad") is not True:
            raise Unsupported("uneven pooling padding with count_include_pad=false is not supported by the "
                              "PyTorch backend", step.span)
        return self.module(ctor, kernel_size=step.arg("k"), stride=step.arg("s"), **pad, ceil_mode=step.arg("ceil"),
                           **more)

    def ctor_maxpool(self, step):
        return self._pool(step, "nn.MaxPool2d")

    def ctor_avgpool(self, step):
        return self._pool(step, "nn.AvgPool2d", count_include_pad=step.arg("count_include_pad"))

    def ctor_gap(self, step):
        return self.module("nn.AdaptiveAvgPool2d", 1)

    def ctor_adaptiveavgpool(self, step):
        return self.module("nn.AdaptiveAvgPool2d", step.arg("size"))

    def ctor_fc(self, step):
        return self.module("nn.Linear", step.arg("in_features"), step.arg("c"), bias=step.arg("bias"))

    def ctor_flatten(self, step):
        return self.module("nn.Flatten")

    def ctor_relu(self, step):
        return self.module("nn.ReLU", inplace=self.inplace(step))

    def ctor_tanh(self, step):
        return self.module("nn.Tanh")

    def ctor_sigmoid(self, step):
        return self.module("nn.Sigmoid")

    def ctor_softmax(self, step):
        return self.module("nn.Softmax", dim=1)

    def ctor_identity(self, step):
        return self.module("nn.Identity")

    def ctor_dropout(self, step):
        return self.module("nn.Dropout", p=step.arg("p"), inplace=self.inplace(step))

    def ctor_bn(self, step):
        ctor = "nn.BatchNorm2d" if len(step.shape) == 3 else "nn.BatchNorm1d"
        return self.module(ctor, step.arg("features"), eps=step.arg("eps"), momentum=step.arg("momentum"),
                           affine=step.arg("affine"))

    def ctor_lrn(self, step):
        return self.module("nn.LocalResponseNorm", step.arg("size"), alpha=step.arg("alpha"), beta=step.arg("beta"),
                           k=step.arg("k"))

    def ctor_relu6(self, step):
        return self.module("nn.ReLU6", inplace=self.inplace(step))

    def ctor_silu(self, step):
        return self.module("nn.SiLU", inplace=self.inplace(step))

    def ctor_hardswish(self, step):
        return self.module("nn.Hardswish", inplace=self.inplace(step))

    def ctor_hardsigmoid(self, step):
        return self.module("nn.Hardsigmoid")

    def ctor_gelu(self, step):
        return self.module("nn.GELU", approximate=step.arg("approximate"))

    def ctor_leakyrelu(self, step):
        return self.module("nn.LeakyReLU", negative_slope=step.arg("negative_slope"))

    def ctor_elu(self, step):
        return self.module("nn.ELU", alpha=step.arg("alpha"))

    def ctor_mish(self, step):
        return self.module("nn.Mish")

    def ctor_droppath(self, step):
        return self.module("DropPath", step.arg("p"))

    def ctor_layernorm(self, step):  # over the channels of a map (ConvNeXt's LayerNorm2d), or of a vector
        ctor = "LayerNorm2d" if len(step.shape) == 3 else "nn.LayerNorm"
        return self.module(ctor, step.arg("features"), eps=step.arg("eps"), elementwise_affine=step.arg("affine"))

    def ctor_groupnorm(self, step):
        return self.module("nn.GroupNorm", step.arg("groups"), step.arg("features"), eps=step.arg("eps"),
                           affine=step.arg("affine"))

    def ctor_pointwise(self, step):
        return self.module("PointwiseLinear", step.arg("in_features"), step.arg("c"), bias=step.arg("bias"))

    # -- ops written in forward: emit_<op>(step, xs) -> the expression of the value
    def emit_concat(self, step, xs):
        crops = step.arg("crops")
        parts = []
        for i, x in enumerate(xs):
            if isinstance(crops, Ref):  # the windows differ between the instances: kept as an attribute
                c = f"{self.fwd(crops)}[{i}]"
                parts.append(f"{x} if {c} is None else {x}[:, :, {c}[0]:{c}[0] + {c}[2], {c}[1]:{c}[1] + {c}[3]]")
            elif crops[i] is None:
                parts.append(x)
            else:
                top, left, h, w = crops[i]
                parts.append(f"{x}[:, :, {top}:{top + h}, {left}:{left + w}]")
        return f"torch.cat([{', '.join(parts)}], 1)"

    def emit_add(self, step, xs):
        scale = step.arg("scale")
        if isinstance(scale, Ref) or scale != 1.0:
            return f"{self.fwd(scale)} * {xs[0]}" + "".join(f" + {x}" for x in xs[1:])
        if all(self.e.add_in_place(n) for n in self.ir_names(step)):
            return xs[0] + "".join(f".add_({x})" for x in xs[1:])
        return " + ".join(xs)

    def emit_padshortcut(self, step, xs):
        s, pad = step.arg("s"), step.arg("pad_channels")
        x = xs[0]
        if isinstance(s, Ref) or s != 1:
            x = f"{x}[:, :, ::{self.fwd(s)}, ::{self.fwd(s)}]"
        if not isinstance(pad, Ref) and pad == 0:
            return x
        return f"F.pad({x}, (0, 0, 0, 0, 0, {self.fwd(pad)}))"  # the new channels: zeros after the old ones

    def emit_shuffle(self, step, xs):  # torchvision's channel_shuffle
        return f"{xs[0]}.unflatten(1, ({self.fwd(step.arg('groups'))}, -1)).transpose(1, 2).flatten(1, 2)"

    def _interpolation(self, step) -> str:
        mode, corners = step.arg("mode"), step.arg("align_corners")
        if isinstance(mode, Ref):
            raise Unsupported("an interpolation mode that differs between block instances is not supported by the "
                              "PyTorch backend", step.span)
        if mode == "nearest":  # PyTorch takes no align_corners there
            return ""
        return f", mode={string_literal(mode)}, align_corners={self.fwd(corners)}"

    def emit_upsample(self, step, xs):
        scale = step.arg("scale")
        if not isinstance(scale, Ref):
            scale = tuple(float(v) for v in scale) if isinstance(scale, tuple) else float(scale)
        return f"F.interpolate({xs[0]}, scale_factor={self.fwd(scale)}{self._interpolation(step)})"

    def emit_resize(self, step, xs):  # to the second operand's height and width
        return f"F.interpolate({xs[0]}, size={xs[1]}.shape[-2:]{self._interpolation(step)})"

    def emit_mul(self, step, xs):
        return f"{xs[0]} * {xs[1]}"

    def emit_zero(self, step, xs):  # NAS-Bench-201's Zero: x.mul(0.), a fresh tensor of x's shape
        return f"{xs[0]} * 0.0"

    def emit_slice(self, step, xs):  # channels (or features) start to stop - 1: a view
        start = step.arg("start")
        start = "" if not isinstance(start, Ref) and start == 0 else self.fwd(start)
        return f"{xs[0]}[:, {start}:{self.fwd(step.arg('stop'))}]"

    def emit_layerscale(self, step, xs):
        """A learned per-channel scale: a parameter of the class itself (torchvision's CNBlock ``layer_scale``)."""
        if "." in step.attr or not step.attr.isidentifier():
            raise Unsupported("a layerscale inside a numbered group is not supported by the PyTorch backend, which "
                              "keeps it as the module's own parameter", step.span,
                              "label it directly in the block: layer_scale: layerscale(1e-6)")
        dims = (step.arg("features"), 1, 1) if len(step.shape) == 3 else (step.arg("features"),)
        sizes = ", ".join(self.val(d) for d in dims) + ("," if len(dims) == 1 else "")
        self.tensors.append(f"self.{step.attr} = nn.Parameter(torch.full(({sizes}), {self.val(step.arg('init'))}))")
        return f"self.{step.attr} * {xs[0]}"


def _ident(name: str) -> str:
    ident = name.replace(".", "_")
    if not ident.isidentifier() or ident in _RESERVED_VARS:
        ident = "v_" + ident
    return ident


#: Helper classes a generated module defines when a layer needs one (uneven padding, which PyTorch's own
#: layers cannot take).
HELPERS = {
    "PaddedConv2d": '''class PaddedConv2d(nn.Conv2d):
    """A Conv2d whose input is first zero-padded unevenly: ``pad`` is (left, right, top, bottom)."""

    def __init__(self, *args, pad: tuple[int, int, int, int], **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.pad = pad

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._conv_forward(F.pad(x, self.pad), self.weight, self.bias)''',
    "PaddedMaxPool2d": '''class PaddedMaxPool2d(nn.MaxPool2d):
    """A MaxPool2d whose input is first padded unevenly with -inf: ``pad`` is (left, right, top, bottom)."""

    def __init__(self, *args, pad: tuple[int, int, int, int], **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.pad = pad

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.pad(x, self.pad, value=float("-inf"))
        return F.max_pool2d(x, self.kernel_size, self.stride, 0, self.dilation, self.ceil_mode)''',
    "PaddedAvgPool2d": '''class PaddedAvgPool2d(nn.AvgPool2d):
    """An AvgPool2d whose input is first zero-padded unevenly: ``pad`` is (left, right, top, bottom)."""

    def __init__(self, *args, pad: tuple[int, int, int, int], **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.pad = pad

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.avg_pool2d(F.pad(x, self.pad), self.kernel_size, self.stride, 0, self.ceil_mode)''',

    "DropPath": '''class DropPath(nn.Module):
    """Stochastic depth (torchvision's StochasticDepth(p, "row")): in training, each sample's value is zeroed
    with probability p and the others scaled by 1 / (1 - p); the identity in evaluation."""

    def __init__(self, p: float) -> None:
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0:
            return x
        keep = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(1.0 - self.p)
        return x * keep.div_(1.0 - self.p)

    def extra_repr(self) -> str:
        return f"p={self.p}"''',
    "LayerNorm2d": '''class LayerNorm2d(nn.LayerNorm):
    """LayerNorm over the channels of an NCHW map at each position (torchvision's ConvNeXt LayerNorm2d)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.permute(0, 2, 3, 1)
        x = F.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)
        return x.permute(0, 3, 1, 2)''',
    "PointwiseLinear": '''class PointwiseLinear(nn.Linear):
    """A Linear applied at each position of an NCHW map, over its channels (a 2-D weight, as torchvision's
    ConvNeXt has between its permutes)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x.permute(0, 2, 3, 1), self.weight, self.bias).permute(0, 3, 1, 2)''',
}


def generate(net, features: tuple[str, ...] = ()) -> tuple[str, str]:
    """PyTorch source for a checked :class:`cnndsl.Network` (or its graph), and the network class's name.

    ``features`` (layer names, :mod:`cnndsl.passes.features`) makes ``forward`` return their outputs, a list.
    The source is parsed before it is returned: code that is not valid Python is a :class:`CompilerBug`.
    """
    graph, fragments = expand(net)  # one read of the network's graph
    emitter = TorchEmitter(graph, features, fragments)
    return check_source(emitter.generate(), "PyTorch"), emitter.class_name


def compile_torch(net) -> str:
    """PyTorch source for a checked :class:`cnndsl.Network` (or its graph)."""
    return generate(net)[0]


#: The package the generated modules are registered under, each as ``m`` and the first 16 hex digits of its
#: source text's SHA-256 (see :func:`source_module`).
GENERATED_PACKAGE = "cnndsl._generated"
#: The generated module's attribute that keeps its source text, which its instances pickle (see :func:`restore`).
SOURCE_ATTR = "__cnndsl_source__"
_MODULES_LOCK = threading.Lock()


def module_name(source: str) -> str:
    """The name a generated source's module is registered under: ``cnndsl._generated.m<hash>``, a function of the
    text alone, so that it is the same in every process and under any ``PYTHONHASHSEED``."""
    return f"{GENERATED_PACKAGE}.m{hashlib.sha256(source.encode('utf-8')).hexdigest()[:16]}"


def source_module(source: str) -> types.ModuleType:
    """The module of generated PyTorch ``source``, executed once per process and per source text.

    It is registered in ``sys.modules`` under :func:`module_name`, so that the same source gives the same module
    and the same classes (``type(build_torch(n)) is type(build_torch(n))``), importable by name, and so that
    TorchScript's qualified names (``__torch__.cnndsl._generated.m<hash>.ResNet``) never mix two networks. Its
    ``nn.Module`` classes pickle by value (:func:`restore`), so ``torch.save(model)`` and spawned processes
    rebuild them anywhere cnndsl is installed.
    """
    name = module_name(source)
    with _MODULES_LOCK:
        module = sys.modules.get(name)
        if module is not None and getattr(module, SOURCE_ATTR, None) == source:
            return module
        from torch import nn

        parent = sys.modules.get(GENERATED_PACKAGE)
        if parent is None:  # a namespace of its own: nothing is imported from disk under it
            parent = types.ModuleType(GENERATED_PACKAGE, "The modules cnndsl generates, one per source text.")
            parent.__path__ = []
            sys.modules[GENERATED_PACKAGE] = parent
            sys.modules["cnndsl"]._generated = parent
        filename = f"<cnndsl {name}>"
        # tracebacks, inspect.getsource and torch.jit.script read the generated source from here
        linecache.cache[filename] = (len(source), None, source.splitlines(True), filename)
        module = types.ModuleType(name)
        module.__file__ = filename
        setattr(module, SOURCE_ATTR, source)
        # dont_inherit: the source runs as written, not under this file's `from __future__ import annotations`
        exec(compile(source, filename, "exec", dont_inherit=True), module.__dict__)  # noqa: S102 - our own source
        for value in list(vars(module).values()):
            if isinstance(value, type) and value.__module__ == name and issubclass(value, nn.Module):
                value.__reduce_ex__ = _reduce_ex
        sys.modules[name] = module
        setattr(parent, name.rpartition(".")[2], module)
    return module


def _reduce_ex(self, protocol: int):
    """How pickle reduces an instance of a generated class: :func:`restore` and the module's source text (written
    once per pickle however many instances share it), then the instance's state as nn.Module keeps it."""
    cls = type(self)
    source = getattr(sys.modules.get(cls.__module__), SOURCE_ATTR, None)
    if source is None:  # a subclass defined elsewhere: pickled by reference, as any class
        return object.__reduce_ex__(self, protocol)
    return restore, (source, cls.__qualname__), self.__getstate__()


def restore(source: str, qualname: str):
    """Unpickling a generated model: an uninitialised instance of class ``qualname`` of ``source``'s module (made
    by :func:`source_module` where this process has not made it yet), whose state pickle then sets."""
    cls = getattr(source_module(source), qualname)
    return cls.__new__(cls)


def build(net, *, inference: bool = False, state_dict=None, features: tuple[str, ...] = ()):
    """Generate the PyTorch source for a checked network and return an instance of its ``nn.Module``.

    The source runs in a module of its own (:func:`source_module`), so the model does not depend on cnndsl; its
    instances pickle, and ``torch.save`` whole, carrying the source text (:func:`restore` rebuilds the class).
    ``inference=True`` says ``net`` is an inference build (``cnndsl.api.inference_network``): the model
    is returned in eval mode, without gradients, in channels-last memory format, and ``state_dict`` (the
    *training* build's ``state_dict()``) gives it its weights, batch norms folded into the convolutions.
    Otherwise ``state_dict`` is loaded as it is. ``features``: see :func:`generate`.
    """
    source, class_name = generate(net, features)
    cls = getattr(source_module(source), class_name)
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
