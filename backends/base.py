"""What every code generator shares: a source writer, an identifier namespace, op dispatch.

>>> w = Writer()
>>> w.line("def f(x):")
>>> with w.indent():
...     w.line("return x")
>>> print(w.text(), end="")
def f(x):
    return x
>>> ns = Namespace(["x"])
>>> ns.name("layer1.0.conv1"), ns.name("x"), ns.name("input"), ns.name("3a"), ns.name("class")
('layer1_0_conv1', 'x_1', 'input_1', 'v_3a', 'class_1')

User text (file names, labels) reaches generated code only as an identifier from a
:class:`Namespace`, a literal (``repr``), or through :func:`comment_text` and
:func:`docstring_text`, which escape whatever could end a comment or a docstring:

>>> print("# " + comment_text("net.cnn\\nimport os"))
# net.cnn\\nimport os
>>> print(docstring_text('x"; import os'))
x\\"; import os
"""

from __future__ import annotations

import ast
import json
import keyword
import os
import re
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any

from cnndsl.backends.plan import Step

from cnndsl.errors import CnnDslError
from cnndsl.ir.graph import Graph, Node
from cnndsl.ir.ops import OPS, Emit, Op


class Unsupported(CnnDslError):
    """An op (or a use of one) that a backend cannot generate."""


#: Python's keywords, soft keywords and builtins, 3.10 to 3.13 (a fixed list, so that the generated
#: names do not depend on the Python that runs the compiler; a test checks it covers the running one).
PYTHON_RESERVED = frozenset(keyword.kwlist) | frozenset({
    "_", "case", "match", "type",
    "ArithmeticError", "AssertionError", "AttributeError", "BaseException", "BaseExceptionGroup",
    "BlockingIOError", "BrokenPipeError", "BufferError", "BytesWarning", "ChildProcessError",
    "ConnectionAbortedError", "ConnectionError", "ConnectionRefusedError", "ConnectionResetError",
    "DeprecationWarning", "EOFError", "Ellipsis", "EncodingWarning", "EnvironmentError", "Exception",
    "ExceptionGroup", "False", "FileExistsError", "FileNotFoundError", "FloatingPointError", "FutureWarning",
    "GeneratorExit", "IOError", "ImportError", "ImportWarning", "IndentationError", "IndexError",
    "InterruptedError", "IsADirectoryError", "KeyError", "KeyboardInterrupt", "LookupError", "MemoryError",
    "ModuleNotFoundError", "NameError", "None", "NotADirectoryError", "NotImplemented", "NotImplementedError",
    "OSError", "OverflowError", "PendingDeprecationWarning", "PermissionError", "ProcessLookupError",
    "PythonFinalizationError", "RecursionError", "ReferenceError", "ResourceWarning", "RuntimeError",
    "RuntimeWarning", "StopAsyncIteration", "StopIteration", "SyntaxError", "SyntaxWarning", "SystemError",
    "SystemExit", "TabError", "TimeoutError", "True", "TypeError", "UnboundLocalError", "UnicodeDecodeError",
    "UnicodeEncodeError", "UnicodeError", "UnicodeTranslateError", "UnicodeWarning", "UserWarning",
    "ValueError", "Warning", "ZeroDivisionError", "abs", "aiter", "all", "anext", "any", "ascii", "bin", "bool",
    "breakpoint", "bytearray", "bytes", "callable", "chr", "classmethod", "compile", "complex", "copyright",
    "credits", "delattr", "dict", "dir", "divmod", "enumerate", "eval", "exec", "exit", "filter", "float",
    "format", "frozenset", "getattr", "globals", "hasattr", "hash", "help", "hex", "id", "input", "int",
    "isinstance", "issubclass", "iter", "len", "license", "list", "locals", "map", "max", "memoryview", "min",
    "next", "object", "oct", "open", "ord", "pow", "print", "property", "quit", "range", "repr", "reversed",
    "round", "set", "setattr", "slice", "sorted", "staticmethod", "str", "sum", "super", "tuple", "vars", "zip",
})


def is_dunder(name: str) -> bool:
    """``__init__``, ``__class__``: the names Python keeps for itself."""
    return len(name) > 4 and name.startswith("__") and name.endswith("__")


def _escape(char: str) -> str:
    return char.encode("unicode_escape").decode("ascii")


def comment_text(text: str) -> str:
    """``text`` made safe to follow ``#``: every character that is not printable (a newline, a carriage
    return, a form feed, a NUL, U+2028) is written as its backslash escape, so the comment cannot end early."""
    if text.isprintable():  # the common case: nothing to escape
        return text
    return "".join(c if c.isprintable() else _escape(c) for c in text)


def docstring_text(text: str) -> str:
    """``text`` made safe inside a triple-quoted docstring: backslashes and quotes escaped, as
    :func:`comment_text` escapes the rest."""
    return comment_text(text.replace("\\", "\\\\").replace('"', '\\"'))


def string_literal(text: str) -> str:
    """A double-quoted Python string literal for ``text`` (JSON's escapes are Python's too)."""
    return json.dumps(text)


def check_source(source: str, backend: str) -> str:
    """``source`` if it parses as Python; otherwise a :class:`CompilerBug`, so that nothing is written or run.

    Compiled rather than ``ast.parse``d: the same parser and a stricter check (the compiler's own, such as
    ``return`` outside a function), without building the Python objects of the tree, which took most of the time."""
    try:
        compile(source, "<generated>", "exec", dont_inherit=True)
    except (SyntaxError, ValueError) as e:
        raise CompilerBug(f"the {backend} backend generated code that does not parse ({e})", None,
                          "this is a bug in cnndsl; please report it with the .cnn file") from None
    return source


class CompilerBug(CnnDslError):
    """cnndsl itself went wrong: generated code that is not valid Python."""


class Writer:
    """Lines of Python source, indented by :meth:`indent` blocks (four spaces a level)."""

    def __init__(self) -> None:
        self.lines: list[str] = []
        self.depth = 0

    def line(self, text: str = "") -> None:
        """Append one line at the current indentation (an empty line stays empty)."""
        self.lines.append("    " * self.depth + text if text else "")

    @contextmanager
    def indent(self) -> Iterator[None]:
        """Indent the lines written inside the ``with`` block one level more."""
        self.depth += 1
        try:
            yield
        finally:
            self.depth -= 1

    @contextmanager
    def block(self, header: str) -> Iterator[None]:
        """Write ``header`` (``def f(x):``) and indent the lines written inside the ``with`` block."""
        self.line(header)
        with self.indent():
            yield

    def text(self) -> str:
        """The source, ending in one newline."""
        return "\n".join(self.lines) + "\n"


class Namespace:
    """Hands out unique, legal Python identifiers, clear of keywords, builtins and reserved names."""

    def __init__(self, reserved: Iterable[str] = ()) -> None:
        self._taken = set(reserved) | PYTHON_RESERVED

    def is_free(self, name: str) -> bool:
        """Whether ``name`` is a legal identifier that nothing has taken. Never a name starting with ``__``:
        a dunder is Python's, and any other is mangled inside a class body (``__c`` becomes ``_Block__c``),
        so a keyword argument of that name would not reach the constructor that declares it."""
        return name.isidentifier() and name.isascii() and not name.startswith("__") and name not in self._taken

    def taken(self) -> frozenset[str]:
        """Every name handed out or reserved so far."""
        return frozenset(self._taken)

    def reserve(self, name: str) -> None:
        """Take ``name`` as it is (a fixed name: a state_dict key, a method the module defines)."""
        self._taken.add(name)

    def name(self, hint: str) -> str:
        """A fresh identifier that reads like ``hint`` (dots and other symbols become ``_``)."""
        base = re.sub(r"\W", "_", hint, flags=re.ASCII).strip("_") or "v"
        if base[0].isdigit():
            base = "v_" + base
        candidate, n = base, 1
        while candidate in self._taken or is_dunder(candidate):
            candidate = f"{base}_{n}"
            n += 1
        self._taken.add(candidate)
        return candidate


class Emitter:
    """Base of a backend's emitter: finds the ``emit_<op>`` method for each node.

    An op without a method is reported, with the node's source span, as unsupported
    by this backend (:attr:`backend` names it in the message).
    """

    backend = "this"

    def __init__(self, graph: Graph) -> None:
        self.graph = graph

    def supports(self, op: str) -> bool:
        return callable(getattr(self, f"emit_{op}", None))

    def check_supported(self) -> None:
        """Raise :class:`Unsupported` for the first node no ``emit_<op>`` method handles (each op asked once)."""
        supported: set[str] = set()
        for node in self.graph.nodes():
            if node.op not in supported:
                if not self.supports(node.op):
                    self.unsupported(node)
                supported.add(node.op)

    def dispatch(self, node: Node) -> Any:
        if not self.supports(node.op):
            self.unsupported(node)
        return getattr(self, f"emit_{node.op}")(node)

    def unsupported(self, node: Node, what: str | None = None) -> None:
        raise Unsupported(f"{what or repr(node.op)} is not supported by the {self.backend} backend", node.span,
                          "rewrite the layer with supported ops, or use another backend")


def assign_variables(cls: Any, var: dict[str, str], names: Namespace) -> None:
    """Name the variable that holds each step's value in a forward, into ``var`` (keyed by the step's output;
    ``var`` holds the forward's arguments already), as the jax-based printers write it.

    A value that only the next step reads goes on in its input's variable (``x = conv(x)``); a join overwrites
    its first operand when nothing reads that operand later (``out += identity``); any other value takes a
    fresh ``out``, or its layer's name when ``out`` is taken. ``cls`` is a :class:`~cnndsl.backends.plan.ClassPlan`:
    the main steps are named first, then the auxiliary heads', the order the printers write them in.
    """
    steps = list(cls.steps)
    last_use: dict[str, int] = {}
    readers: dict[str, int] = {}
    for i, s in enumerate(steps):
        for src in s.inputs:
            last_use[src] = i
        for src in dict.fromkeys(s.inputs):
            readers[src] = readers.get(src, 0) + 1
    for out in (cls.output, *cls.aux_outputs):
        last_use[out] = len(steps)
    held = {v: k for k, v in var.items()}  # variable -> the key it holds
    for i in [i for i, s in enumerate(steps) if not s.aux] + [i for i, s in enumerate(steps) if s.aux]:
        s = steps[i]
        xs = [var[k] for k in s.inputs]
        name = None
        reuse = readers.get(s.output, 0) <= 1 and s.output not in cls.aux_outputs
        if len(s.inputs) == 1 and last_use.get(s.inputs[0]) == i and reuse:
            name = xs[0]
        if name is None and s.inputs and last_use.get(s.inputs[0]) == i and held.get(xs[0]) == s.inputs[0] \
                and reuse and xs[0] not in xs[1:]:
            name = xs[0]
        if name is None:
            name = names.name("out") if names.is_free("out") else names.name(s.output.rsplit(".", 1)[-1])
        var[s.output] = name
        held[name] = s.output


def source_name(graph: Graph) -> str:
    """The file a network was read from, as a generated module's docstring names it (``<unknown>`` for text)."""
    span = graph.node(graph.inputs[0]).span
    return docstring_text(os.path.basename(span.file)) if span else "<unknown>"


def write_helpers(out: Writer, helpers: dict[str, str], used: Iterable[str]) -> None:
    """The helper functions of a generated module that it ``used``, from ``helpers`` (name -> source) in its
    order, two blank lines before each."""
    used = set(used)
    for name, text in helpers.items():
        if name in used:
            out.line()
            out.line()
            for line in text.strip("\n").split("\n"):
                out.line(line)


# ----------------------------------------------------------------------------- plugin ops (cnndsl.ops)


def plugin_emit(op: str, hook: str) -> Emit | None:
    """The :class:`~cnndsl.ir.ops.Emit` of plugin op ``op`` for one backend (``hook``: ``"torch_emit"``,
    ``"jax_emit"``, ``"flax_emit"``), or None for a built-in op or one the plugin does not write there."""
    opdef = OPS.get(op)
    return getattr(opdef, hook, None) if opdef is not None and opdef.plugin else None


def plugin_ops(graph: Graph) -> list[Op]:
    """The plugin ops a graph uses, by name (so that the generated module lists them in one order)."""
    return [OPS[name] for name in sorted({n.op for n in graph.nodes() if n.opdef.plugin})]


class PluginNames:
    """The module-level names the plugin ops' hooks take in one generated module, and the lines that bring them
    in: a ``source`` hook's definitions (copied as they are, so its names are taken as written) or an import of
    a ``module`` hook's names (aliased where the namespace has taken them)."""

    def __init__(self, graph: Graph, hook: str, names: Namespace, backend: str) -> None:
        self.hook = hook
        self.ident: dict[tuple[str, str], str] = {}  # (op, name) -> identifier in the generated module
        self.imports: list[str] = []
        self.sources: list[str] = []
        for op in plugin_ops(graph):
            emit = getattr(op, hook)
            if emit is None:
                continue
            if emit.source is not None:
                text = emit.source.strip("\n")
                defined = [d.name for d in ast.parse(text).body if isinstance(d, (ast.ClassDef, ast.FunctionDef))]
                if text in self.sources:  # two ops sharing one source: written once
                    self.ident.update(((op.name, n), n) for n in emit.names())
                    continue
                for name in defined:
                    if not names.is_free(name):
                        raise Unsupported(f"plugin op '{op.name}' defines '{name}', a name the generated {backend} "
                                          "module already uses", None, "rename it in the plugin's source")
                    names.reserve(name)
                self.ident.update(((op.name, n), n) for n in emit.names())
                self.sources.append(text)
            else:
                parts = []
                for name in emit.names():
                    ident = name if names.is_free(name) else names.name(name)
                    names.reserve(ident)
                    self.ident[(op.name, name)] = ident
                    parts.append(name if ident == name else f"{name} as {ident}")
                self.imports.append(f"from {emit.module} import {', '.join(parts)}")

    def name(self, op: str, which: str | None = None) -> str:
        """The identifier of plugin op ``op``'s callable (``which``: JAX's init function's name)."""
        emit = getattr(OPS[op], self.hook)
        return self.ident[(op, which or emit.name)]


def sorted_imports(lines: Iterable[str]) -> list[str]:
    """One section's import lines as isort orders them: ``import m`` lines, then ``from m import n`` lines, each by
    module (so that a plugin's import joins the framework's in the order a linter expects)."""
    def key(line: str) -> tuple[int, str]:
        words = line.split()
        return (words[0] == "from", words[1].lower())

    return sorted(dict.fromkeys(lines), key=key)


def plugin_args(step: Step, hook: str) -> list[tuple[str, object]]:
    """The keywords a plugin op's hook is called with: each name of its ``args`` with the step's value (a
    :class:`~cnndsl.backends.plan.Ref` where the instances of the class differ), the input's channels
    (``in_channels``) and values (``in_features``) included: the plan carries them for the hooks that ask."""
    return [(name, step.arg(name)) for name in getattr(OPS[step.op], hook).args]
