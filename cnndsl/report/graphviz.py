"""graph: a checked network as a picture, through Graphviz.

:func:`to_dot` writes DOT text with no dependency at all: one box per layer
(its op in the short form of the papers' tables, its output shape), edges
labelled with the tensor shapes that flow along them, and the network's
scopes (block instances, labelled sequences, aux heads) drawn as nested
clusters. ``collapse=True`` draws every outermost block instance as a single
box (its call, its output shape and its parameter count). Residual skips and
long-range ``@references`` into a merge are drawn dashed, aux heads and their
outputs in their own colour.

:func:`render` turns the DOT text into SVG, PNG or PDF with the ``graphviz``
Python package (``pip install cnndsl[viz]``) and Graphviz's ``dot`` program.

>>> import cnndsl
>>> dot = to_dot(cnndsl.loads("network t: input 1x8x8  conv3-4 relu"))
>>> print(dot.splitlines()[0])
digraph "t" {
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from cnndsl.errors import CnnDslError
from cnndsl.ir.graph import Node, scope_of
from cnndsl.ir.network import Network, human, register_report
from cnndsl.ir.ops import Concat, Family, Input

FORMATS = ("svg", "png", "pdf", "dot")

# A box's fill colour and size follow its op's display family (ops.Family: a light palette that
# prints well in black and white too).
_AUX_COLOUR = "#b45f06"
_SKIP_COLOUR = "#3d85c6"


def op_label(node: Node) -> str:
    """A layer in the papers' short form with its non-default arguments: ``conv3-64/2``, ``maxpool3/2 ceil``."""
    return node.short_form()


def _shape(shape) -> str:
    return "×".join(str(d) for d in shape) if shape else "?"


def _esc(text: str) -> str:
    """Escape text for a Graphviz HTML-like label."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace('"', "&quot;")


def _quote(text: str) -> str:
    """A DOT ID in double quotes."""
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _attrs(**kw) -> str:
    parts = []
    for k, v in kw.items():
        if v is None:
            continue
        if isinstance(v, str) and v.startswith("<") and v.endswith(">"):
            parts.append(f"{k}={v}")  # an HTML-like label
        else:
            parts.append(f"{k}={_quote(str(v))}")
    return "[" + ", ".join(parts) + "]"


def _parent_scope(scope: str, scopes) -> str | None:
    return scope_of(scope, scopes)


def call_text(scope) -> str:
    """A block instance's call as written: ``bottleneck(128, 2, proj)``."""
    return scope.call_text()


@dataclass
class _Box:
    """One box of the picture: a layer, or a collapsed block instance."""

    key: str
    label: str
    tooltip: str
    fill: str
    small: bool = False
    aux: bool = False
    output: bool = False


class _Picture:
    """Builds the DOT text of one network."""

    def __init__(self, net: Network, collapse: bool, edge_labels: bool):
        self.net, self.g = net, net.graph
        self.collapse, self.edge_labels = collapse, edge_labels
        g = self.g
        self.scopes = dict(sorted(g.scopes.items()))
        self.aux_nodes = self._aux_nodes()
        # which box each node is drawn in (itself, or its outermost block when collapsing)
        self.box_of: dict[str, str] = {}
        self.collapsed: dict[str, list[str]] = {}
        blocks = [s for s, sc in self.scopes.items() if sc.kind == "block"] if collapse else []
        for node in g.nodes():
            owner = None
            for s in blocks:
                if node.name.startswith(s + ".") and (owner is None or len(s) < len(owner)):
                    owner = s
            self.box_of[node.name] = owner or node.name
            if owner:
                self.collapsed.setdefault(owner, []).append(node.name)

    def _aux_nodes(self) -> set[str]:
        """Nodes that feed only aux outputs (the side heads)."""
        g = self.g
        return {n.name for n in g.nodes()} - g.main_path()

    # -- boxes
    def _layer_box(self, node: Node) -> _Box:
        g = self.g
        op = op_label(node)
        family = node.opdef.family
        small = family.small
        is_out = node.name in g.outputs
        if isinstance(node.opdef, Input):
            label = f"<<b>input</b><br/><font point-size=\"9\">{_esc(_shape(node.shape))}</font>>"
        elif small:
            label = f"<{_esc(op)}>"
        else:
            label = (f"<<b>{_esc(op)}</b><br/><font point-size=\"9\" color=\"#444444\">"
                     f"{_esc(_shape(node.shape))}</font>>")
        if is_out:
            kind = "aux output" if node.name in g.aux_outputs else "output"
            label = label[:-1] + f"<br/><font point-size=\"9\"><i>{kind}</i></font>>"
        tip = f"{node.name}: {op} -> {_shape(node.shape)}"
        if node.params:
            tip += f", {node.params:,} params"
        if node.macs:
            tip += f", {human(node.macs)}MACs"
        if node.span:
            tip += f" ({node.span})"
        return _Box(node.name, label, tip, family.fill, small and not is_out,
                    node.name in self.aux_nodes, is_out)

    def _block_box(self, scope_name: str) -> _Box:
        g, sc = self.g, self.scopes[scope_name]
        members = self.collapsed[scope_name]
        inside = set(members)
        out = [m for m in members
               if m in g.outputs or any(dst not in inside for dst, _ in g.consumers(m))][-1]
        params = sum(g.node(m).params for m in members)
        macs = sum(g.node(m).macs for m in members)
        call = call_text(sc)
        label = (f"<<b>{_esc(scope_name)}</b><br/>{_esc(call)}<br/><font point-size=\"9\" color=\"#444444\">"
                 f"{_esc(_shape(g.node(out).shape))} · {human(params)} params</font>>")
        tip = f"{scope_name}: {call}, {len(members)} layers, {params:,} params, {human(macs)}MACs"
        return _Box(scope_name, label, tip, "#e6e0f0", aux=all(m in self.aux_nodes for m in members),
                    output=out in g.outputs)

    # -- the picture
    def dot(self) -> str:
        g = self.g
        boxes: dict[str, _Box] = {}
        for node in g.nodes():
            key = self.box_of[node.name]
            if key not in boxes:
                boxes[key] = self._block_box(key) if key in self.collapsed else self._layer_box(node)
        # cluster tree: each box goes in its innermost (non-collapsed) scope
        visible = [s for s in self.scopes if not any(s == c or s.startswith(c + ".") for c in self.collapsed)]
        children: dict[str | None, list[str]] = {}
        for s in visible:
            children.setdefault(_parent_scope(s, visible), []).append(s)
        members: dict[str | None, list[str]] = {}
        for key in boxes:
            members.setdefault(scope_of(key, visible), []).append(key)

        graph = _attrs(rankdir="TB", nodesep="0.25", ranksep="0.3", fontname="Helvetica", fontsize="11",
                       labelloc="t", label=self._title(), newrank="true", compound="true")
        node = _attrs(shape="box", style="rounded,filled", fontname="Helvetica", fontsize="10", margin="0.08,0.03",
                      height="0.3", penwidth="0.8")
        edge = _attrs(fontname="Helvetica", fontsize="8", color="#555555", arrowsize="0.6", fontcolor="#555555")
        lines = [f"digraph {_quote(g.name)} {{", f"  graph {graph};", f"  node {node};", f"  edge {edge};"]

        def emit(scope: str | None, indent: str) -> None:
            for key in members.get(scope, []):
                b = boxes[key]
                lines.append(f"{indent}{_quote(key)} {self._box_attrs(b)};")
            for child in children.get(scope, []):
                sc = self.scopes[child]
                inside = [k for k in boxes if k.startswith(child + ".")]
                aux = bool(inside) and all(boxes[k].aux for k in inside) and not any(
                    child.startswith(a + ".") for a in self._aux_scopes(visible, boxes))
                lines.append(f"{indent}subgraph {_quote('cluster_' + child)} {{")
                lines.append(f"{indent}  graph {self._cluster_attrs(sc, aux)};")
                emit(child, indent + "  ")
                lines.append(f"{indent}}}")

        emit(None, "  ")
        seen = set()
        for node in g.nodes():
            for port, src in enumerate(g.inputs_of(node.name)):
                a, b = self.box_of[src], self.box_of[node.name]
                if a == b or (a, b) in seen:
                    continue
                seen.add((a, b))
                lines.append(f"  {_quote(a)} -> {_quote(b)} {self._edge_attrs(src, node, port)};")
        lines.append("}")
        return "\n".join(lines) + "\n"

    def _aux_scopes(self, visible, boxes) -> list[str]:
        """The outermost scopes made only of aux-head layers (only those are marked as aux heads)."""
        out = []
        for s in visible:
            inside = [k for k in boxes if k.startswith(s + ".")]
            if inside and all(boxes[k].aux for k in inside) and not any(s.startswith(o + ".") for o in out):
                out.append(s)
        return out

    def _title(self) -> str:
        n = self.net
        return (f"<<b>{_esc(self.g.name)}</b>  input {_esc(_shape(n.input_shape))} · {human(n.params)} params"
                f" · {human(n.macs)}MACs>")

    def _box_attrs(self, b: _Box) -> str:
        kw = {"label": b.label, "tooltip": b.tooltip, "fillcolor": b.fill}
        if b.small:
            kw.update(height="0.2", fontsize="9", margin="0.05,0.01")
        if b.aux:
            kw.update(color=_AUX_COLOUR)
        if b.output:
            kw.update(peripheries="2")
        return _attrs(**kw)

    def _cluster_attrs(self, sc, aux: bool) -> str:
        short = _esc(sc.name.rsplit(".", 1)[-1])
        label = f"<b>{short}</b>: {_esc(call_text(sc))}" if sc.kind == "block" else f"<b>{short}</b>"
        if sc.kind == "block":
            style, fill, pen = "rounded,filled", "#f7f5fb", "#8e7cc3"
        else:
            style, fill, pen = "rounded", "#ffffff", "#999999"
        if aux:
            label += " (aux head)"
            style, pen = style + ",dashed", _AUX_COLOUR
        return _attrs(label=f"<{label}>", style=style, fillcolor=fill, color=pen, fontsize="10", labeljust="l",
                      margin="6", tooltip=sc.name + (f" ({sc.span})" if sc.span else ""))

    def _edge_attrs(self, src: str, dst: Node, port: int) -> str:
        g = self.g
        kw: dict = {}
        if self.edge_labels and self._labelled(src, dst):
            kw["label"] = " " + _shape(g.node(src).shape)
        if self._is_skip(src, dst, port):
            kw.update(style="dashed", color=_SKIP_COLOUR, fontcolor=_SKIP_COLOUR, penwidth="1.2")
        if src in self.aux_nodes or dst.name in self.aux_nodes:
            kw.update(color=_AUX_COLOUR, fontcolor=_AUX_COLOUR)
        return _attrs(**kw)

    def _labelled(self, src: str, dst: Node) -> bool:
        """Label the edges where the structure is: forks, merges, and edges in or out of a cluster.

        Along a plain chain every box already shows its own output shape.
        """
        g = self.g
        if self.collapse or len(g.consumers(src)) > 1 or len(g.inputs_of(dst.name)) > 1:
            return True
        return scope_of(self.box_of[src], self.scopes) != scope_of(self.box_of[dst.name], self.scopes)

    def _is_skip(self, src: str, dst: Node, port: int) -> bool:
        """An edge that jumps over layers into a merge: a residual's identity, a U-Net skip."""
        if dst.opdef.family is not Family.MERGE or len(self.g.consumers(src)) < 2:
            return False
        # inception branches all start from one point too, but each runs through layers first;
        # into a sum, operand 0 is the main path (a residual's body)
        return port > 0 or isinstance(dst.opdef, Concat)


def to_dot(net: Network, *, collapse: bool = False, edge_labels: bool = True) -> str:
    """The network as Graphviz DOT text (deterministic; no dependency needed)."""
    return _Picture(net, collapse, edge_labels).dot()


def render(net: Network, path: str | Path, *, collapse: bool = False, fmt: str | None = None) -> Path:
    """Draw the network to ``path``; the format (svg, png, pdf, dot) follows the file's suffix unless given."""
    path = Path(path)
    fmt = (fmt or path.suffix.lstrip(".")).lower()
    if fmt not in FORMATS:
        raise CnnDslError(f"cannot draw to '{path}': unknown picture format '{fmt or '(none)'}'", None,
                          "name the file .svg, .png, .pdf or .dot")
    dot = to_dot(net, collapse=collapse)
    data = dot.encode("utf-8") if fmt == "dot" else pipe(dot, fmt)
    try:
        path.write_bytes(data)
    except OSError as e:
        raise CnnDslError(f"cannot write {path}: {e.strerror}") from None
    return path


def pipe(dot: str, fmt: str) -> bytes:
    """Run Graphviz's ``dot`` on DOT text and return the picture's bytes."""
    try:
        import graphviz
    except ImportError:
        raise CnnDslError("drawing svg, png or pdf needs the graphviz Python package", None,
                          "pip install 'cnndsl[viz]' (or write a .dot file)") from None
    try:
        return graphviz.Source(dot).pipe(format=fmt)
    except graphviz.ExecutableNotFound:
        raise CnnDslError("Graphviz's 'dot' program is not installed", None,
                          "install Graphviz (apt-get install graphviz, brew install graphviz), "
                          "or write a .dot file") from None


def available() -> bool:
    """Whether SVG/PNG rendering works here (the graphviz package and the dot program)."""
    try:
        import graphviz
    except ImportError:
        return False
    try:
        graphviz.version()
    except (graphviz.ExecutableNotFound, RuntimeError, OSError):
        return False
    return True


def svg(net: Network) -> str | None:
    """The network drawn as SVG, blocks collapsed (Jupyter's picture); None when Graphviz is not installed."""
    if not available():
        return None
    return pipe(to_dot(net, collapse=True), "svg").decode("utf-8")


register_report("svg", lambda net, depth=None: svg(net))

__all__ = ["FORMATS", "available", "op_label", "pipe", "render", "svg", "to_dot"]

