"""Weights between the backends: a PyTorch ``state_dict`` <-> JAX ``variables``.

Both backends name parameters after the IR's dotted node names, so the
conversion is a walk over the IR (a checked :class:`~cnndsl.network.Network` or its
graph; :func:`cnndsl.torch_to_jax` also takes a name to load) that reshapes each
layer's tensors between the layouts:

=================  ==============================  ===================================
layer              PyTorch (``state_dict``)         JAX (``variables``)
=================  ==============================  ===================================
conv               ``weight`` O x I/g x kh x kw     ``params/.../kernel`` kh x kw x I/g x O
deconv             ``weight`` I x O/g x kh x kw     ``kernel`` kh x kw x I/g x O (see below)
fc                 ``weight`` out x in              ``kernel`` in x out (rows permuted)
bn                 ``weight``, ``bias``             ``params/.../scale``, ``bias``
                   ``running_mean``, ``running_var``  ``batch_stats/.../mean``, ``var``
=================  ==============================  ===================================

A deconv kernel in JAX is stored as the kernel of the *forward* convolution
whose transpose it is, grouped as a conv kernel is: entry ``[a, b, i, g*O/g + o]``
is PyTorch's ``[g*I/g + i, o, a, b]``. The generated code flips it spatially
when it runs the transposed convolution as a dilated convolution.

PyTorch flattens a feature map in (C, H, W) order, the JAX backend (NHWC) in
(H, W, C) order, so a vector that came from flattening a map holds the same
numbers in another order. :func:`flat_orders` tracks that order through the
graph, by the rule each op declares (``Op.flat_order``); the first fc after a
flatten gets its weight rows permuted, not just transposed (and a batch norm
over such a vector its features).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from .ir import Graph
from .network import Network
from .ops import FlatOrder


def _graph(net: Network | Graph) -> Graph:
    if isinstance(net, Graph):
        return net
    if isinstance(net, Network):
        return net.graph
    raise TypeError(f"expected a checked Network or its Graph, got {type(net).__name__} (cnndsl.torch_to_jax and "
                    "cnndsl.jax_to_torch also take a network's name)")


def _hwc_order(shape: tuple[int, ...]) -> np.ndarray | None:
    """Positions in the (C, H, W) flattening of each element of the (H, W, C) flattening."""
    c, h, w = shape
    if c == 1 or h * w == 1:
        return None
    return np.arange(c * h * w).reshape(c, h, w).transpose(1, 2, 0).ravel()


def flattens_channel_major(graph: Graph) -> bool:
    """Whether the JAX backend must flatten feature maps in PyTorch's (C, H, W) order.

    It flattens in NHWC order (no transpose) unless that would change the numbers a
    network computes, not just how its weights are stored: an ``add`` of vectors that
    hold their elements in different orders, or a network output that is a flattened map.
    """
    orders = _propagate(graph, channel_major=False)
    if any(orders.get(out, None) is not None for out in graph.outputs):
        return True
    return any(orders.get(n.name, None) is _MIXED for n in graph.nodes())


_MIXED = np.array([], dtype=np.int64)  # marker: operands disagree (forces channel-major flattening)


def _propagate(graph: Graph, channel_major: bool) -> dict[str, np.ndarray | None]:
    orders: dict[str, np.ndarray | None] = {}
    for node in graph.nodes():
        if node.shape is None or len(node.shape) != 1:
            continue
        ins = graph.inputs_of(node.name)
        rule = node.opdef.flat_order
        if rule is FlatOrder.FLATTENS and len(graph.node(ins[0]).shape) == 3:
            orders[node.name] = None if channel_major else _hwc_order(graph.node(ins[0]).shape)
        elif rule is FlatOrder.FRESH:
            orders[node.name] = None
        elif rule is FlatOrder.KEEPS:
            orders[node.name] = orders.get(ins[0])
        elif rule is FlatOrder.JOINS:
            parts = [orders.get(i) for i in ins]
            if any(p is _MIXED for p in parts):
                orders[node.name] = _MIXED
            elif all(p is None for p in parts):
                orders[node.name] = None
            else:
                offset, pieces = 0, []
                for i, p in zip(ins, parts):
                    n = graph.node(i).shape[0]
                    pieces.append(offset + (np.arange(n) if p is None else p))
                    offset += n
                orders[node.name] = np.concatenate(pieces)
        elif rule is FlatOrder.ALIGNS:
            parts = [orders.get(i) for i in ins]
            first = parts[0]
            same = all((p is None and first is None) or (p is not None and first is not None
                                                         and np.array_equal(p, first)) for p in parts)
            orders[node.name] = first if same else _MIXED
        else:  # MIXES (and flattening a vector): assume it mixes elements in an order-dependent way
            orders[node.name] = _MIXED if any(orders.get(i) is not None for i in ins) else None
    return orders


def flat_orders(net: Network | Graph) -> dict[str, np.ndarray | None]:
    """For each flat (vector) node, how the JAX backend orders its elements relative to PyTorch.

    ``jax_vector == torch_vector[order]``; ``None`` where the orders agree. Keys are
    node names; feature-map nodes are absent.
    """
    graph = _graph(net)
    orders = _propagate(graph, flattens_channel_major(graph))
    return {k: (None if v is _MIXED else v) for k, v in orders.items()}


def _fc_row_order(graph: Graph, name: str, orders: dict) -> np.ndarray | None:
    """The order of the fc's input features as JAX sees them (indices into PyTorch's order)."""
    src = graph.inputs_of(name)[0]
    shape = graph.node(src).shape
    if len(shape) == 3:
        return None if flattens_channel_major(graph) else _hwc_order(shape)
    return orders.get(src)


def _tree_get(tree: Mapping, dotted: str) -> Mapping:
    for part in dotted.split("."):
        tree = tree[part]
    return tree


def _tree_put(tree: dict, dotted: str, leaf: dict) -> None:
    *scopes, last = dotted.split(".")
    for part in scopes:
        tree = tree.setdefault(part, {})
    tree[last] = leaf


def _np(t: Any) -> np.ndarray:
    if hasattr(t, "detach"):  # a torch tensor
        t = t.detach().cpu().numpy()
    return np.asarray(t)


def _deconv_to_jax(w: np.ndarray, groups: int) -> np.ndarray:
    cin, cout_g, kh, kw = w.shape
    w = w.reshape(groups, cin // groups, cout_g, kh, kw)  # g, i, o, a, b
    return w.transpose(3, 4, 1, 0, 2).reshape(kh, kw, cin // groups, groups * cout_g)


def _deconv_to_torch(k: np.ndarray, groups: int) -> np.ndarray:
    kh, kw, cin_g, cout = k.shape
    k = k.reshape(kh, kw, cin_g, groups, cout // groups)  # a, b, i, g, o
    return k.transpose(3, 2, 4, 0, 1).reshape(groups * cin_g, cout // groups, kh, kw)


def _reorder(a: np.ndarray, order: np.ndarray | None) -> np.ndarray:
    """PyTorch's per-feature values in the JAX backend's feature order."""
    return a if order is None else a[order]


def _unorder(a: np.ndarray, order: np.ndarray | None) -> np.ndarray:
    """The inverse of :func:`_reorder`."""
    if order is None:
        return a
    back = np.empty_like(a)
    back[order] = a
    return back


def torch_to_jax(net: Network | Graph, state_dict: Mapping[str, Any]) -> dict:
    """Convert a PyTorch ``state_dict`` of the generated torch model to JAX ``variables``.

    ``net`` is a :class:`~cnndsl.Network` (or its graph; :func:`cnndsl.torch_to_jax` also takes a zoo name / path).
    Returns ``{"params": ..., "batch_stats": ...}`` of ``jax.numpy`` arrays, nested
    by the layers' dotted names. Missing keys raise ``KeyError`` naming the key.
    """
    import jax.numpy as jnp

    graph = _graph(net)
    orders = flat_orders(graph)
    params: dict = {}
    stats: dict = {}
    for node in graph.nodes():
        if node.op not in ("conv", "deconv", "fc", "bn"):
            continue
        name, args = node.name, node.args
        get = {suffix: _np(state_dict[f"{name}.{suffix}"]).astype(np.float32) for suffix in _torch_keys(node)}
        if node.op == "bn":
            order = orders.get(name)
            _tree_put(stats, name, {"mean": jnp.asarray(_reorder(get["running_mean"], order)),
                                    "var": jnp.asarray(_reorder(get["running_var"], order))})
            if args["affine"]:
                _tree_put(params, name, {"scale": jnp.asarray(_reorder(get["weight"], order)),
                                         "bias": jnp.asarray(_reorder(get["bias"], order))})
            continue
        w = get["weight"]
        if node.op == "conv":
            leaf = {"kernel": w.transpose(2, 3, 1, 0)}
        elif node.op == "deconv":
            leaf = {"kernel": _deconv_to_jax(w, args["groups"])}
        else:
            rows = _fc_row_order(graph, name, orders)
            leaf = {"kernel": (w if rows is None else w[:, rows]).T}
        if "bias" in get:
            leaf["bias"] = get["bias"]
        _tree_put(params, name, {k: jnp.asarray(np.ascontiguousarray(v)) for k, v in leaf.items()})
    return {"params": params, "batch_stats": stats}


def _torch_keys(node) -> tuple[str, ...]:
    """The ``state_dict`` suffixes of a layer's tensors (those the converter reads)."""
    if node.op == "bn":
        return ("weight", "bias", "running_mean", "running_var") if node.args["affine"] else \
            ("running_mean", "running_var")
    return ("weight", "bias") if node.args["bias"] else ("weight",)


def jax_to_torch(net: Network | Graph, variables: Mapping[str, Any]) -> dict:
    """Convert JAX ``variables`` to a ``state_dict`` the generated torch model loads (``strict=True``).

    The inverse of :func:`torch_to_jax`; batch norms get ``num_batches_tracked = 0``.
    """
    import torch

    graph = _graph(net)
    orders = flat_orders(graph)
    params, stats = variables["params"], variables.get("batch_stats", {})
    out: dict[str, Any] = {}

    def put(key: str, a: np.ndarray) -> None:
        out[key] = torch.from_numpy(np.array(a, dtype=np.float32))

    for node in graph.nodes():
        name, args = node.name, node.args
        if node.op == "bn":
            order = orders.get(name)
            if args["affine"]:
                leaf = _tree_get(params, name)
                put(f"{name}.weight", _unorder(_np(leaf["scale"]), order))
                put(f"{name}.bias", _unorder(_np(leaf["bias"]), order))
            s = _tree_get(stats, name)
            put(f"{name}.running_mean", _unorder(_np(s["mean"]), order))
            put(f"{name}.running_var", _unorder(_np(s["var"]), order))
            out[f"{name}.num_batches_tracked"] = torch.tensor(0, dtype=torch.long)
        elif node.op in ("conv", "deconv", "fc"):
            leaf = _tree_get(params, name)
            k = _np(leaf["kernel"])
            if node.op == "conv":
                put(f"{name}.weight", k.transpose(3, 2, 0, 1))
            elif node.op == "deconv":
                put(f"{name}.weight", _deconv_to_torch(k, args["groups"]))
            else:
                rows = _fc_row_order(graph, name, orders)
                put(f"{name}.weight", _unorder(k, rows).T if rows is not None else k.T)
            if args["bias"]:
                put(f"{name}.bias", _np(leaf["bias"]))
    return out
