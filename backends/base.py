"""What every code generator shares: a source writer, an identifier namespace, op dispatch.

>>> w = Writer()
>>> w.line("def f(x):")
>>> with w.indent():
...     w.line("return x")
>>> print(w.text(), end="")
def f(x):
    return x
>>> ns = Namespace(["x"])
>>> ns.name("layer1.0.conv1"), ns.name("x"), ns.name("input"), ns.name("3a")
('layer1_0_conv1', 'x_1', 'input_1', 'v_3a')
"""

from __future__ import annotations

import builtins
import keyword
import re
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any

from cnndsl.errors import CnnDslError
from cnndsl.ir import Graph, Node


class Unsupported(CnnDslError):
    """An op (or a use of one) that a backend cannot generate."""


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
        self._taken = set(reserved) | set(keyword.kwlist) | set(keyword.softkwlist) | set(dir(builtins))

    def name(self, hint: str) -> str:
        """A fresh identifier that reads like ``hint`` (dots and other symbols become ``_``)."""
        base = re.sub(r"\W", "_", hint, flags=re.ASCII).strip("_") or "v"
        if base[0].isdigit():
            base = "v_" + base
        candidate, n = base, 1
        while candidate in self._taken:
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
        """Raise :class:`Unsupported` for the first node no ``emit_<op>`` method handles."""
        for node in self.graph.nodes():
            if not self.supports(node.op):
                self.unsupported(node)

    def dispatch(self, node: Node) -> Any:
        if not self.supports(node.op):
            self.unsupported(node)
        return getattr(self, f"emit_{node.op}")(node)

    def unsupported(self, node: Node, what: str | None = None) -> None:
        raise Unsupported(f"{what or repr(node.op)} is not supported by the {self.backend} backend", node.span,
                          "rewrite the layer with supported ops, or use another backend")
