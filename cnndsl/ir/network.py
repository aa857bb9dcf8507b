"""A checked network: the IR graph after every pass, with its totals and summary.

The summary's data (``json``, ``csv``) is made here; its tables and pictures (``table``, ``paper``,
Jupyter's HTML and SVG) by the report modules (:mod:`cnndsl.report.summary`, :mod:`cnndsl.report.graphviz`), which sit
above this one and register them by name (:func:`register_report`) when imported; importing ``cnndsl``
imports them.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Callable
from html import escape

from cnndsl.errors import CnnDslWarning
from cnndsl.ir.graph import Graph

BYTES_PER_VALUE = 4  # float32

#: Report name -> ``render(network, depth)``: ``table``, ``paper`` and ``html`` (cnndsl.report.summary), ``svg``
#: (cnndsl.report.graphviz; None when Graphviz is not installed).
REPORTS: dict[str, Callable[..., str | None]] = {}


def register_report(name: str, render: Callable[..., str | None]) -> None:
    """Make ``render(network, depth)`` the report ``name`` that :class:`Network` shows (a report module's hook)."""
    REPORTS[name] = render


def _report(name: str) -> Callable[..., str | None]:
    try:
        return REPORTS[name]
    except KeyError:
        raise LookupError(f"no {name!r} report registered: import cnndsl (it loads cnndsl.report.summary and "
                          "cnndsl.report.graphviz)") from None


def fmt_shape(shape) -> str:
    return "x".join(str(d) for d in shape)


def human(n: float, unit: str = "") -> str:
    for factor, suffix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "K")):
        if abs(n) >= factor:
            return f"{n / factor:.2f}{suffix}{unit}"
    return f"{n:g}{unit}"


class Summary(str):
    """A summary's text that shows as itself: ``print`` it, search it or ``json.loads`` it as any ``str``; its
    ``repr`` is the text (not a quoted, escaped string) and Jupyter shows it as HTML (the table as a table,
    other formats preformatted)."""

    def __new__(cls, text: str, html: Callable[[], str] | None = None):
        obj = super().__new__(cls, text)
        obj._html = html
        return obj

    def __repr__(self) -> str:
        return str(self)

    def __reduce__(self):
        return str, (str(self),)  # pickles as the plain text (the HTML is made on demand, from the network)

    def _repr_html_(self) -> str:
        if self._html is not None:
            return self._html()
        return f"<pre>{escape(str(self))}</pre>"


class Network:
    """A network that parsed, resolved and passed every check.

    Its totals come from the plan the compiler built, in which shared block instances stand as mounted
    fragments (:meth:`Graph.mount <cnndsl.ir.graph.Graph.mount>`); :attr:`graph`, the layer-by-layer IR that
    the backends and reports read, is expanded from it the first time it is asked for.
    """

    def __init__(self, graph: Graph, warnings: list[CnnDslWarning] | None = None):
        self._plan = graph
        self.warnings: list[CnnDslWarning] = warnings if warnings is not None else []

    @property
    def graph(self) -> Graph:
        """The network's IR graph, one node a layer."""
        return self._plan.flatten()

    @property
    def plan(self) -> Graph:
        """The graph as built: mounted fragments stand for the block instances that share them (not flat yet).
        Only what reads mounts (the totals, the architecture hash) should use it."""
        return self._plan

    def __eq__(self, other) -> bool:
        if not isinstance(other, Network):
            return NotImplemented
        return self._plan is other._plan and self.warnings == other.warnings

    __hash__ = None

    @property
    def name(self) -> str:
        return self._plan.name

    @property
    def params(self) -> int:
        """Trainable parameters (weights, biases, batch-norm scale and shift)."""
        return self._plan.total_params

    @property
    def macs(self) -> int:
        """Multiply-accumulates of the conv and fc layers in one image's eval-mode forward pass (the papers'
        "FLOPs", torchvision's GFLOPS): auxiliary heads, which run only in training, are not counted."""
        return sum(self._plan.node(n).macs for n in self._eval_path())

    @property
    def macs_with_aux(self) -> int:
        """The conv and fc multiply-accumulates of a training-mode forward pass, auxiliary heads included."""
        return self._plan.total_macs

    @property
    def activations(self) -> int:
        """Values allocated by one image's eval-mode forward pass, the input included (aux heads excluded)."""
        return sum(self._plan.node(n).activations for n in self._eval_path())

    def _eval_path(self) -> set[str]:
        return self._plan.main_path()

    @property
    def input_shape(self) -> tuple[int, ...]:
        return self._plan.node(self._plan.inputs[0]).shape

    @property
    def output_shapes(self) -> list[tuple[int, ...]]:
        return [self._plan.node(o).shape for o in self._plan.outputs]

    def layers(self) -> list[dict]:
        rows = []
        for n in self.graph.nodes():
            rows.append({"name": n.name, "op": n.op, "shape": list(n.shape), "params": n.params, "macs": n.macs,
                         "activations": n.activations, "line": n.span.line if n.span else None})
        return rows

    def summary_dict(self) -> dict:
        return {
            "network": self.name,
            "input_shape": list(self.input_shape),
            "output_shapes": [list(s) for s in self.output_shapes],
            "params": self.params,
            "macs": self.macs,
            "macs_with_aux": self.macs_with_aux,
            "macs_convention": "conv+fc multiply-accumulates, one image, eval-mode forward (aux heads in macs_with_aux)",
            "activations": self.activations,
            "activation_bytes": self.activations * BYTES_PER_VALUE,
            "layers": self.layers(),
        }

    def summary(self, fmt: str = "table", depth: int | None = None) -> Summary:
        """The per-layer table (``table``, as torchinfo lays it out; ``depth`` folds scopes below that level),
        the same data as ``json`` or ``csv``, or the layout of the network's paper table (``paper``).

        The text comes back as a :class:`Summary`: a ``str`` that a notebook shows as the table itself."""
        if fmt == "json":
            return Summary(json.dumps(self.summary_dict(), indent=1))
        if fmt == "csv":
            buf = io.StringIO()
            w = csv.writer(buf, lineterminator="\n")
            w.writerow(["name", "op", "shape", "params", "macs", "activations"])
            for r in self.layers():
                w.writerow([r["name"], r["op"], fmt_shape(r["shape"]), r["params"], r["macs"], r["activations"]])
            return Summary(buf.getvalue())
        if fmt == "paper":
            return Summary(_report("paper")(self, depth))
        return Summary(_report("table")(self, depth), lambda: _report("html")(self, depth))

    def _repr_html_(self) -> str:
        """Jupyter: the summary table (folded to two levels) and the network's graph, in one HTML output.

        Front-ends show only the richest of an object's outputs, and HTML outranks SVG, so the picture goes
        inline into the HTML (Graphviz's SVG without its XML prologue); without Graphviz, a note says why
        there is no picture."""
        table = _report("html")(self, 2)
        picture = _report("svg")(self)
        if picture is None:
            figure = ("<p><i>No graph: drawing it needs Graphviz (pip install 'cnndsl[viz]', and Graphviz's dot "
                      "program).</i></p>")
        else:
            figure = f"<div>{picture[picture.index('<svg'):]}</div>"
        return f"<div>{table}{figure}</div>"

    def __repr__(self) -> str:
        return f"<Network {self.name}: {self.params:,} params, {self.macs:,} MACs>"
