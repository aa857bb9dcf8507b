"""summary: the per-layer table people know from torchinfo, and the papers' own tables.

:func:`table` lays a checked network out as a tree of scopes and layers with
each row's output shape, parameters, MACs, forward activations and the values
kept for the backward pass; ``depth`` folds every scope below that level into
one row with its sums. :func:`paper_table` prints the network in the layout of
its paper's table: the layer-by-layer listing of the VGG case study ("CONV3-64:
[224x224x64] memory: ... weights: ...") for networks without branches, the
GoogLeNet Table 1 layout for networks built of inception blocks.

What is saved for backward follows what PyTorch's autograd keeps in training
mode, as each op declares it (``Op.saves`` in :mod:`cnndsl.ir.ops`): conv, deconv,
fc and batch norm keep their input; ReLU, sigmoid, tanh and softmax their output;
max pooling its input and its argmax indices; dropout its mask; LRN its input and
output. A tensor kept by several layers counts once, on the layer that produced it.
"""

from __future__ import annotations

import math
import os
import sys
from dataclasses import dataclass

from cnndsl.errors import CnnDslError
from cnndsl.ir.graph import scope_of
from cnndsl.ir.network import BYTES_PER_VALUE, Network, fmt_shape, human, register_report
from cnndsl.ir.ops import Family, Input, Saved

_PER_OUTPUT_VALUE = (Saved.INDICES, Saved.MASK)  # kept as one value per output value


def saved_for_backward(net: Network) -> dict[str, int]:
    """Values each layer's output and buffers hold for the backward pass (training mode, one image)."""
    g = net.graph
    kept: set[str] = set()
    extra: dict[str, int] = {}
    for node in g.nodes():
        saves = node.opdef.saves
        if Saved.INPUT in saves:
            kept.update(g.inputs_of(node.name))
        if Saved.OUTPUT in saves:
            kept.add(node.name)
        per_value = sum(part in saves for part in _PER_OUTPUT_VALUE)
        if per_value:
            extra[node.name] = per_value * math.prod(node.shape)
    out = {}
    for node in g.nodes():
        if node.frozen:
            out[node.name] = 0
            continue
        out[node.name] = (math.prod(node.shape) if node.name in kept else 0) + extra.get(node.name, 0)
    return out


@dataclass
class Row:
    """One row of the table: a layer, or a scope (expanded or folded)."""

    depth: int
    label: str
    shape: tuple | None
    params: int | None
    macs: int | None
    activations: int | None
    saved: int | None


def rows(net: Network, depth: int | None = None) -> list[Row]:
    """The table's rows in topological order; scopes deeper than ``depth`` fold into their parent's row."""
    g = net.graph
    scopes = g.scopes
    saved = saved_for_backward(net)
    chain_cache: dict[str, list[str]] = {}

    def chain(name: str) -> list[str]:
        """The scopes containing ``name``, outermost first."""
        if name not in chain_cache:
            s = scope_of(name, scopes)
            chain_cache[name] = [] if s is None else [*chain(s), s]
        return chain_cache[name]

    totals: dict[str, list[int]] = {}
    last: dict[str, str] = {}
    for node in g.nodes():
        for s in chain(node.name):
            t = totals.setdefault(s, [0, 0, 0, 0])
            t[0] += node.params
            t[1] += node.macs
            t[2] += node.activations
            t[3] += saved[node.name]
            last[s] = node.name
    out: list[Row] = []
    opened: set[str] = set()
    for node in g.nodes():
        if isinstance(node.opdef, Input):
            continue
        ch = chain(node.name)
        for level, s in enumerate(ch):
            if depth is not None and level >= depth:
                break
            if s in opened:
                continue
            opened.add(s)
            sc = scopes[s]
            name = s.rsplit(".", 1)[-1]
            label = f"{name}: {sc.call_text()}" if sc.kind == "block" else name
            folded = depth is not None and level == depth - 1
            p, m, a, sv = totals[s]
            out.append(Row(level, label, g.node(last[s]).shape, p, m, a, sv) if folded else
                       Row(level, label, g.node(last[s]).shape, None, None, None, None))
        if depth is not None and len(ch) >= depth:
            continue
        label = f"{node.name.rsplit('.', 1)[-1] if ch else node.name}: {node.short_form()}"
        out.append(Row(len(ch), label, node.shape, node.params, node.macs, node.activations, saved[node.name]))
    return out


def _tree_label(row: Row) -> str:
    return ("│ " * (row.depth - 1) + "├─" if row.depth else "") + row.label


def _num(v: int | None) -> str:
    return "--" if v is None else f"{v:,}"


HEADERS = ("Layer (scope: op)", "Output Shape", "Param #", "Mult-Adds", "Activations", "Saved for bwd")


def _cells(net: Network, depth: int | None) -> list[tuple[str, ...]]:
    return [(_tree_label(r), fmt_shape(r.shape) if r.shape else "--", _num(r.params), _num(r.macs),
             _num(r.activations), _num(r.saved)) for r in rows(net, depth)]


def totals(net: Network) -> list[tuple[str, str]]:
    """The footer: totals in the units people quote (138.36M params, 15.47 GMACs, MB per image)."""
    saved = sum(saved_for_backward(net).values())
    trainable = sum(n.params for n in net.graph.nodes() if not n.frozen)
    mb = 1e6
    act_b = net.activations * BYTES_PER_VALUE
    return [
        ("Total params", f"{net.params:,} ({human(net.params)})"),
        ("Trainable params", f"{trainable:,}"),
        ("Non-trainable params", f"{net.params - trainable:,}"),
        ("Total mult-adds", f"{human(net.macs)}MACs (conv + fc, one image)" + (
            f"; {human(net.macs_with_aux)}MACs with the aux heads (training)" if net.macs_with_aux != net.macs
            else "")),
        ("Input size", f"{math.prod(net.input_shape) * BYTES_PER_VALUE / mb:.2f} MB"),
        ("Forward activations", f"{act_b / mb:.2f} MB per image ({human(net.activations)} values, float32)"),
        ("Saved for backward", f"{saved * BYTES_PER_VALUE / mb:.2f} MB per image (training mode)"),
        ("Params size", f"{net.params * BYTES_PER_VALUE / mb:.2f} MB"),
    ]


def table(net: Network, depth: int | None = None) -> str:
    """The torchinfo-style table as plain text."""
    body = _cells(net, depth)
    widths = [max(len(c[i]) for c in [HEADERS, *body]) for i in range(len(HEADERS))]

    def line(cells):
        return "  ".join(c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths))).rstrip()

    rule = "=" * len(line(HEADERS))
    out = [f"{net.name}: input {fmt_shape(net.input_shape)}", rule, line(HEADERS), rule]
    out += [line(c) for c in body]
    out.append(rule)
    out += [f"{k}: {v}" for k, v in totals(net)]
    outs = ", ".join(f"{o} {fmt_shape(net.graph.node(o).shape)}" for o in net.graph.outputs)
    out += [f"Outputs: {outs}", rule]
    return "\n".join(out)


def rich_table(net: Network, depth: int | None = None):
    """The same table as a ``rich`` renderable (for terminals and notebooks)."""
    from rich.console import Group
    from rich.table import Table

    t = Table(title=f"{net.name}: input {fmt_shape(net.input_shape)}", title_justify="left")
    for i, h in enumerate(HEADERS):
        t.add_column(h, justify="left" if i < 2 else "right", no_wrap=i == 0)
    for c in _cells(net, depth):
        t.add_row(*c)
    foot = Table.grid(padding=(0, 2))
    foot.add_column(style="bold")
    foot.add_column()
    for k, v in totals(net):
        foot.add_row(k, v)
    return Group(t, foot)


def print_table(net: Network, depth: int | None = None, file=None) -> None:
    """Print the table: with ``rich`` on a terminal when it is installed, plain text otherwise."""
    file = file or sys.stdout
    if file.isatty() and not os.environ.get("NO_COLOR"):
        try:
            from rich.console import Console
        except ImportError:
            pass
        else:
            Console(file=file).print(rich_table(net, depth))
            return
    print(table(net, depth), file=file)


def html_table(net: Network, depth: int | None = 2) -> str:
    """The table as HTML (for Jupyter)."""
    from html import escape

    head = "".join(f"<th style='text-align:{'left' if i < 2 else 'right'}'>{escape(h)}</th>"
                   for i, h in enumerate(HEADERS))
    body = []
    for c in _cells(net, depth):
        tds = "".join(f"<td style='text-align:{'left' if i < 2 else 'right'};white-space:pre;"
                      f"font-family:monospace'>{escape(x)}</td>" for i, x in enumerate(c))
        body.append(f"<tr>{tds}</tr>")
    foot = "".join(f"<tr><th style='text-align:left'>{escape(k)}</th><td colspan='5'>{escape(v)}</td></tr>"
                   for k, v in totals(net))
    return (f"<div><b>{escape(net.name)}</b>: input {escape(fmt_shape(net.input_shape))}"
            f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody>"
            f"<tfoot>{foot}</tfoot></table></div>")


# -- the papers' tables

def _sig2(n: int) -> str:
    """Two significant digits with K/M, as the VGG case study writes them (3.2M, 800K, 25K)."""
    for factor, suffix in ((1e6, "M"), (1e3, "K")):
        if n >= factor:
            v = float(f"{n / factor:.2g}")
            return f"{v:g}{suffix}"
    return str(n)


def _hwc(shape) -> str:
    return "x".join(str(d) for d in (*shape[1:], shape[0])) if len(shape) == 3 else f"1x1x{shape[0]}"


def _case_study_rows(net: Network) -> list[tuple]:
    """(node, its name, its weights) for each layer the VGG case study lists: those with weights or a
    case-study name of their own (the pooling layers)."""
    g = net.graph
    out = []
    for node in g.nodes():
        if isinstance(node.opdef, Input):
            continue
        x = g.node(g.inputs_of(node.name)[0]).shape
        named = node.opdef.case_study(x, node.args)
        if named is not None:
            out.append((node, *named))
        elif node.params:
            out.append((node, node.short_form().upper(), f"{node.params:,}"))
    return out


def _vgg_rows(net: Network) -> list[str]:
    inp = net.input_shape
    inp_mem = "*".join(map(str, (*inp[1:], inp[0])))
    out = [f"INPUT: [{_hwc(inp)}] memory: {inp_mem}={_sig2(math.prod(inp))} weights: 0"]
    listed = _case_study_rows(net)
    for node, name, w in listed:
        size = math.prod(node.shape)
        mem = "*".join(str(d) for d in (*node.shape[1:], node.shape[0])) + "=" + _sig2(size) \
            if len(node.shape) == 3 else str(size)
        out.append(f"{name}: [{_hwc(node.shape)}] memory: {mem} weights: {w}")
    values = math.prod(inp) + sum(math.prod(n.shape) for n, _, _ in listed)
    mb = values * BYTES_PER_VALUE / 1e6
    out.append(f"TOTAL memory: {_sig2(values)} * {BYTES_PER_VALUE} bytes ~= {mb:.0f}MB / image "
               "(only forward! ~*2 for bwd)")
    out.append(f"TOTAL params: {net.params / 1e6:.0f}M parameters")
    return out


_GOOGLENET_HEAD = ("type", "patch size/stride", "output size", "depth", "#1x1", "#3x3 reduce", "#3x3",
                   "#5x5 reduce", "#5x5", "pool proj", "params", "ops")


def _inception_scopes(net: Network) -> list[str]:
    return [s for s, sc in net.graph.scopes.items()
            if sc.kind == "block" and sc.block == "inception" and "." not in s]


def _googlenet_rows(net: Network) -> list[tuple[str, ...]]:
    g = net.graph
    aux = set(net.graph.aux_outputs)
    in_aux: set[str] = set()
    for a in aux:  # the side heads are not rows of Table 1
        stack = [a]
        while stack:
            n = stack.pop()
            if n in in_aux or n in g.scopes or any(n.startswith(s + ".") for s in _inception_scopes(net)):
                continue
            in_aux.add(n)
            stack += [s for s in g.inputs_of(n) if len(g.consumers(s)) == 1]
    out, done = [], set()

    def k(v: int) -> str:
        return f"{v / 1e3:.0f}K" if v else ""

    def m(v: int) -> str:
        return f"{v / 1e6:.0f}M" if v else ""

    for node in g.nodes():
        if isinstance(node.opdef, Input) or node.name in in_aux:
            continue
        owner = next((s for s in _inception_scopes(net) if node.name.startswith(s + ".")), None)
        if owner:
            if owner in done:
                continue
            done.add(owner)
            sc = g.scopes[owner]
            members = g.scope_members(owner)
            a = sc.args
            shape = members[-1].shape
            out.append((f"inception ({owner.removeprefix('inception')})", "", _hwc(shape).replace("x", "×"), "2",
                        str(a["a"]), str(a["b1"]), str(a["b2"]), str(a["c1"]), str(a["c2"]), str(a["d"]),
                        k(sum(n.params for n in members)), m(sum(n.macs for n in members))))
            continue
        op = node.opdef
        kernel, _, stride = op.shorthand  # a window's fields: the table's "patch size/stride"
        windowed = kernel is not None and stride is not None
        # inside a block or a group (torchvision's BasicConv2d), only the windows are rows of their own
        if op.paper_kind is None or "." in node.name and not windowed:
            continue
        patch = ""
        if windowed:
            kk, ss = node.args[kernel], node.args[stride]
            patch = f"{kk[0]}×{kk[1]}/{ss[0]}"
        depth = "1" if op.family in (Family.CONV, Family.DENSE) else "0"
        out.append((op.paper_kind, patch, _hwc(node.shape).replace("x", "×"), depth, "", "", "", "", "", "",
                    k(node.params), m(node.macs)))
    return out


def paper_table(net: Network) -> str:
    """The network in its paper's table layout (VGG case study, or GoogLeNet Table 1)."""
    g = net.graph
    if _inception_scopes(net):
        body = _googlenet_rows(net)
        widths = [max(len(r[i]) for r in [_GOOGLENET_HEAD, *body]) for i in range(len(_GOOGLENET_HEAD))]
        lines = ["| " + " | ".join(c.ljust(w) for c, w in zip(r, widths)) + " |" for r in [_GOOGLENET_HEAD, *body]]
        lines.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
        return "\n".join(lines)
    if all(len(g.inputs_of(n.name)) <= 1 and len(g.consumers(n.name)) <= 1 for n in g.nodes()):
        return "\n".join(_vgg_rows(net))
    raise CnnDslError(f"no paper table layout for '{net.name}'", None,
                      "--paper knows the VGG case study's listing (networks without branches) and "
                      "GoogLeNet's Table 1 (networks of inception blocks)")


# Network.summary() and Jupyter's table (the network layer knows these by name only)
register_report("table", table)
register_report("html", html_table)
register_report("paper", lambda net, depth=None: paper_table(net))
