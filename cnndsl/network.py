"""A checked network: the IR graph after every pass, with its totals and summary."""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass, field

from .errors import CnnDslWarning
from .ir import Graph

BYTES_PER_VALUE = 4  # float32


def fmt_shape(shape) -> str:
    return "x".join(str(d) for d in shape)


def human(n: float, unit: str = "") -> str:
    for factor, suffix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "K")):
        if abs(n) >= factor:
            return f"{n / factor:.2f}{suffix}{unit}"
    return f"{n:g}{unit}"


@dataclass
class Network:
    """A network that parsed, resolved and passed every check."""

    graph: Graph
    warnings: list[CnnDslWarning] = field(default_factory=list)

    @property
    def name(self) -> str:
        return self.graph.name

    @property
    def params(self) -> int:
        """Trainable parameters (weights, biases, batch-norm scale and shift)."""
        return self.graph.total_params

    @property
    def macs(self) -> int:
        """Multiply-accumulates of the conv and fc layers for one image (the papers' "FLOPs")."""
        return self.graph.total_macs

    @property
    def activations(self) -> int:
        """Values allocated by one image's eval-mode forward pass, the input included."""
        return self.graph.total_activations

    @property
    def input_shape(self) -> tuple[int, ...]:
        return self.graph.node(self.graph.inputs[0]).shape

    @property
    def output_shapes(self) -> list[tuple[int, ...]]:
        return [self.graph.node(o).shape for o in self.graph.outputs]

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
            "macs_convention": "conv+fc multiply-accumulates, one image",
            "activations": self.activations,
            "activation_bytes": self.activations * BYTES_PER_VALUE,
            "layers": self.layers(),
        }

    def summary(self, fmt: str = "table") -> str:
        """The per-layer table (``table``), or the same data as ``json`` or ``csv``."""
        if fmt == "json":
            return json.dumps(self.summary_dict(), indent=1)
        rows = self.layers()
        if fmt == "csv":
            buf = io.StringIO()
            w = csv.writer(buf, lineterminator="\n")
            w.writerow(["name", "op", "shape", "params", "macs", "activations"])
            for r in rows:
                w.writerow([r["name"], r["op"], fmt_shape(r["shape"]), r["params"], r["macs"], r["activations"]])
            return buf.getvalue()
        head = ("layer", "op", "output", "params", "MACs", "activations")
        body = [(r["name"], r["op"], fmt_shape(r["shape"]), f"{r['params']:,}", f"{r['macs']:,}",
                 f"{r['activations']:,}") for r in rows]
        widths = [max(len(x) for x in col) for col in zip(head, *body)]
        line = "  ".join
        out = [f"{self.name}: input {fmt_shape(self.input_shape)}", "",
               line(h.ljust(w) if i < 3 else h.rjust(w) for i, (h, w) in enumerate(zip(head, widths)))]
        out.append(line("-" * w for w in widths))
        for r in body:
            out.append(line(c.ljust(w) if i < 3 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))))
        out.append("")
        out.append(f"parameters:  {self.params:,} ({human(self.params)})")
        out.append(f"MACs:        {self.macs:,} ({human(self.macs)}, conv+fc multiply-accumulates per image)")
        mb = self.activations * BYTES_PER_VALUE / 2**20
        out.append(f"activations: {self.activations:,} ({human(self.activations)} values, {mb:.1f} MiB per image "
                   "at float32, forward only)")
        outs = ", ".join(f"{o} {fmt_shape(self.graph.node(o).shape)}" for o in self.graph.outputs)
        out.append(f"outputs:     {outs}")
        return "\n".join(out)

    def __repr__(self) -> str:
        return f"<Network {self.name}: {self.params:,} params, {self.macs:,} MACs>"
