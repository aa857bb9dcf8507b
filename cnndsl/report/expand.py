"""expand: print a checked network fully desugared, as .cnn text that loads to the same graph.

Every layer appears once, in topological order, under its full name and in
long keyword form with every argument; blocks, repeats, defaults, implicit
activations and shortcuts are all spelled out. A layer whose input is not the
line before it starts from an explicit ``@reference``. The network's weight
initialisation (``with init(...)``) is written back as its ``with`` clause. A network with
frozen layers (``freeze(...)``) is written as two: the layers as a network ``NAME_base``, then
``network NAME = NAME_base freeze(...)`` with the fewest paths that freeze exactly those layers
(a plain network cannot say ``freeze``); the file stands for ``NAME``, the network the other is the base of.

>>> import cnndsl
>>> print(expand(cnndsl.loads("network t: input 1x8x8  conv3-4 relu")), end="")
# cnndsl expand: t
network t: input 1x8x8
    conv1: conv(c=4, k=(3, 3), s=(1, 1), p=((1, 1), (1, 1)), d=(1, 1), groups=1, bias=true)
    relu1: relu
"""

from __future__ import annotations

from cnndsl.errors import CnnDslError
from cnndsl.ir.graph import Graph
from cnndsl.ir.network import Network, fmt_shape
from cnndsl.ir.ops import COMBINATORS, Input
from cnndsl.passes.resolve import OPERAND_COMBINATORS

#: Ops of two operands written as a combinator after their first: ``@x  name: scale< @gate >``.
WRITTEN_AS = {op: combinator for combinator, op in OPERAND_COMBINATORS.items()}


def value(v) -> str:
    """A Python argument value as .cnn syntax."""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, tuple):
        inner = ", ".join(value(x) for x in v)
        return f"({inner},)" if len(v) == 1 else f"({inner})"
    if isinstance(v, float):
        return repr(v)
    if isinstance(v, str):
        return v
    return str(v)


def layer(op: str, args: dict) -> str:
    if not args:
        return op
    return f"{op}({', '.join(f'{k}={value(v)}' for k, v in args.items())})"


def options(net: Network) -> str:
    """The network's ``with`` clause for what the graph holds beside its layers: the weight initialisation
    (``with init(kaiming, zero_init_residual=true, fc=default)``), or nothing. The ``with`` defaults of
    ops are not repeated: every layer already carries its arguments in full."""
    g = net.graph
    if g.init is None:
        return ""
    args = [g.init]
    if g.zero_init_residual:
        args.append("zero_init_residual=true")
    if not g.init_fc:
        args.append("fc=default")
    return f" with init({', '.join(args)})"


def _scopes(name: str) -> list[str]:
    """The scopes a dotted layer name lies in, outermost first: ``a.b.c`` is in ``a`` and ``a.b``."""
    parts = name.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts))]


def frozen_paths(g: Graph) -> list[str]:
    """The paths of a ``freeze(...)`` that freezes exactly the graph's frozen layers, in the order of the layers:
    for each frozen layer, the outermost scope holding it whose layers are all frozen, else the layer itself
    (``freeze(conv1, bn1, layer1, layer2, layer3)`` for torchvision's ResNet frozen so, shortcuts included).

    >>> import cnndsl
    >>> frozen_paths(cnndsl.loads("network t: input 1x8x8  conv3-4 relu  b: [conv3-4 relu]  fc-2 "
    ...                           "network u = t freeze(conv1, b)", network="u").graph)
    ['conv1', 'b']
    """
    thawed = set()  # the layers not frozen, and every scope holding one
    for node in g.nodes():
        if not node.frozen:
            thawed.update((node.name, *_scopes(node.name)))
    paths: dict[str, None] = {}
    for node in g.nodes():
        if node.frozen:
            path = next((p for p in (*_scopes(node.name), node.name) if p not in thawed), None)
            if path is None:  # a frozen layer whose name is the scope of layers that are not
                raise CnnDslError(f"cannot write '{g.name}' back: its layer '{node.name}' is frozen and layers "
                                  "below its name are not, which freeze(...) cannot say", node.span)
            paths[path] = None
    return list(paths)


def expand(net: Network) -> str:
    g = net.graph
    lines = [f"# cnndsl expand: {g.name}" + (f"({', '.join(f'{k}={value(v)}' for k, v in g.params.items())})"
                                               if g.params else "")]
    inputs = []
    for name in g.inputs:
        shape = fmt_shape(g.node(name).shape)
        inputs.append(f"input {shape}" if name == Input.DEFAULT_NAME else f"input {name}={shape}")
    frozen = frozen_paths(g)
    lines.append(f"network {g.name}{'_base' if frozen else ''}{options(net)}: " + "  ".join(inputs))
    prev = g.inputs[0] if g.inputs else None
    for node in g.nodes():
        if isinstance(node.opdef, Input):
            continue
        srcs = g.inputs_of(node.name)
        if node.op in WRITTEN_AS:  # `@x  name: scale< @gate >`: the current value, then the branch
            if srcs[0] != prev:
                lines.append(f"    @{srcs[0]}")
            lines.append(f"    {node.name}: {layer(WRITTEN_AS[node.op], node.args)}< @{srcs[1]} >")
        elif node.op in COMBINATORS:  # written as `concat< @a | @b >`
            branches = " | ".join(f"@{s}" for s in srcs)
            lines.append(f"    {node.name}: {layer(node.op, node.args)}< {branches} >")
        else:
            if srcs[0] != prev:
                lines.append(f"    @{srcs[0]}")
            lines.append(f"    {node.name}: {layer(node.op, node.args)}")
        prev = node.name
    for aux in g.aux_outputs:
        lines.append(f"    aux< @{aux} >")
    if prev != g.output:
        lines.append(f"    @{g.output}")
    if frozen:
        lines.append(f"network {g.name} = {g.name}_base freeze({', '.join(frozen)})")
    return "\n".join(lines) + "\n"
