"""fold_bn: fold each eval-mode batch norm into the convolution before it.

In eval mode ``bn(conv(x))`` is itself a convolution: with
``scale = gamma / sqrt(running_var + eps)``,

    weight' = weight * scale        (per output channel)
    bias'   = (bias - running_mean) * scale + beta

The pass rewrites the graph: a ``bn`` whose input is a ``conv`` that has no
other consumer (and is not an output) is removed, its consumers read the conv,
and the conv gets ``bias=True``. The conv keeps its name; the pass records what
it absorbed in the conv's ``meta`` (bookkeeping, not arguments: ``expand`` and the
arch hash see the plain conv): ``folded_from`` (the bn's name), ``folded_eps`` and
``folded_bias`` (whether the conv had a bias). :func:`folded_convs` reads them back;
the torch backend's ``fold_state_dict`` (:mod:`cnndsl.backends.torch_weights`) maps a
training build's weights to the inference build's with them. The pass leaves counts
stale: run ``count`` after it.
"""

from __future__ import annotations

from cnndsl.ir.graph import Graph


def fold_bn(g: Graph, warnings=None) -> Graph:
    """Fold every ``conv -> bn`` pair where the bn is the conv's only consumer into one conv with a bias."""
    outputs = set(g.outputs)
    for bn in list(g.nodes()):
        if not bn.opdef.foldable or bn.name in outputs:
            continue
        (src,) = g.inputs_of(bn.name)
        conv = g.node(src)
        if not conv.opdef.fold_target or src in outputs or len(g.consumers(src)) != 1 or "folded_from" in conv.meta:
            continue
        consumers = g.consumers(bn.name)
        g.remove(bn.name)
        for dst, port in consumers:
            g.connect(src, dst, port)
        conv.meta["folded_from"] = bn.name
        conv.meta["folded_eps"] = bn.args["eps"]
        conv.meta["folded_bias"] = conv.args["bias"]
        conv.args["bias"] = True
    return g


def folded_convs(g: Graph) -> dict[str, tuple[str, float, bool]]:
    """conv name -> (folded bn's name, its eps, whether the conv had a bias before folding)."""
    return {n.name: (n.meta["folded_from"], n.meta["folded_eps"], n.meta["folded_bias"])
            for n in g.nodes() if "folded_from" in n.meta}
