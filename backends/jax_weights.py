"""Weights between the backends: a PyTorch ``state_dict`` <-> the JAX backend's ``variables``.

Both backends name a layer's tensors after its dotted IR name, so the conversion is a walk over the IR
(a checked :class:`~cnndsl.ir.network.Network` or its graph; :func:`cnndsl.torch_to_jax` also takes a name to
load). It knows no op: each op lists its tensors in its ``weights`` (:class:`cnndsl.ir.ops.Weight`), with the
``state_dict`` key, the JAX leaf and collection, and the layout in each, as einops writes one:

=============  ==========================================  ========================================
op             PyTorch (``state_dict``)                    JAX (``variables``)
=============  ==========================================  ========================================
conv           ``weight`` ``o i h w`` (O x I/g x kh x kw)  ``params/.../kernel`` ``h w i o`` (HWIO)
deconv         ``weight`` ``(g i) o h w``                  ``kernel`` ``h w i (g o)``
fc, pointwise  ``weight`` ``o i``                          ``kernel`` ``i o`` (fc: rows reordered)
bn             ``weight``, ``bias``                        ``params/.../scale``, ``bias``
               ``running_mean``, ``running_var``           ``batch_stats/.../mean``, ``var``
layerscale     the layer's name, ``c 1 1``                 ``params/...``, the leaf itself, ``c``
=============  ==========================================  ========================================

A deconv kernel in JAX is the kernel of the *forward* convolution it transposes, grouped as a conv kernel
is: entry ``[a, b, i, g*O/g + o]`` is PyTorch's ``[g*I/g + i, o, a, b]``. The generated JAX code flips it
spatially when it runs the transposed convolution as a dilated convolution; Flax NNX stores it flipped
(``Weight.flax_flipped``, which :func:`cnndsl.backends.flax.torch_to_flax` applies).

PyTorch flattens a feature map in (C, H, W) order, the JAX backend (NHWC) in (H, W, C) order, so a
vector that came from flattening a map holds the same numbers in another order. :func:`flat_orders` tracks
that order through the graph, by the rule each op declares (``Op.flat_order``); the axis of a tensor that
runs over its layer's input elements (``Weight.flat_axis``: the first fc's rows after a flatten, a batch
norm's features over such a vector) is reordered, not just transposed.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np

from cnndsl.ir.graph import Graph, Node
from cnndsl.ir.network import Network
from cnndsl.ir.ops import FlatOrder, Weight


def _graph(net: Network | Graph) -> Graph:
    if isinstance(net, Graph):
        return net
    if isinstance(net, Network):
        return net.graph
    raise TypeError(f"expected a checked Network or its Graph, got {type(net).__name__} (cnndsl.torch_to_jax and "
                    "cnndsl.jax_to_torch also take a network's name)")


# ----------------------------------------------------------------------------- flatten orders


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


def _input_order(graph: Graph, node: Node, orders: dict) -> np.ndarray | None:
    """The order in which the JAX backend holds the elements of ``node``'s input, as the op reads them
    (indices into PyTorch's order): a vector's own order, or the flatten order of a feature map that the op
    turns into a vector (an fc over a map); None where the orders agree, or the input is a map the op keeps."""
    src = graph.inputs_of(node.name)[0]
    shape = graph.node(src).shape
    if len(shape) == 1:
        return orders.get(src)
    if len(node.shape) == 1 and not flattens_channel_major(graph):
        return _hwc_order(shape)
    return None


# ----------------------------------------------------------------------------- layouts


def axes(spec: str) -> list[tuple[str, ...]]:
    """``"(g i) o h w"`` -> ``[("g", "i"), ("o",), ("h",), ("w",)]``; ``"1"`` is an axis of size one, ``()``."""
    out = []
    for token in re.findall(r"\([^)]*\)|\S+", spec):
        out.append(tuple(a for a in token.strip("()").split() if a != "1"))
    return out


def _open(a: np.ndarray, spec: str, sizes: dict[str, int], key: str) -> tuple[np.ndarray, list[str]]:
    """``a``, laid out as ``spec``, with its grouped axes split and its size-one axes dropped; its axis names."""
    groups = axes(spec)
    if a.ndim != len(groups):
        raise ValueError(f"{key}: expected {len(groups)} axes ({spec or 'a scalar'}), got shape {tuple(a.shape)}")
    shape, names = [], []
    for group, n in zip(groups, a.shape):
        known = int(np.prod([sizes[x] for x in group if x in sizes]))
        rest = [x for x in group if x not in sizes]
        if (not group and n != 1) or n % known or len(rest) > 1 or (not rest and n != known):
            raise ValueError(f"{key}: an axis of size {n} cannot be {'(' + ' '.join(group) + ')' if group else '1'}")
        for x in group:
            shape.append(sizes.get(x, n // known))
            names.append(x)
    return a.reshape(shape), names


def _close(a: np.ndarray, names: list[str], spec: str) -> np.ndarray:
    """The inverse of :func:`_open`: ``a``, whose axes are ``names``, laid out as ``spec``."""
    groups = axes(spec)
    order = [x for group in groups for x in group]
    a = a.transpose([names.index(x) for x in order])
    sizes = dict(zip(order, a.shape))
    return a.reshape([int(np.prod([sizes[x] for x in group])) for group in groups])


def rearrange(a: np.ndarray, src: str, dst: str, sizes: Mapping[str, int] | None = None, key: str = "") -> np.ndarray:
    """``a`` laid out as ``src`` (einops' notation: names, ``(g i)`` groups, ``1``), laid out as ``dst``.

    >>> rearrange(np.zeros((8, 3, 5, 7)), "(g i) o h w", "h w i (g o)", {"g": 2}).shape
    (5, 7, 4, 6)
    """
    opened, names = _open(np.asarray(a), src, dict(sizes or {}), key)
    return _close(opened, names, dst)


def _sizes(node: Node, w: Weight) -> dict[str, int]:
    return {"g": node.args[w.groups]} if w.groups else {}


def present(node: Node) -> Iterator[Weight]:
    """The tensors a layer holds, with its arguments (a bias only with ``bias=true``)."""
    for w in node.opdef.weights:
        if w.when is None or node.args[w.when]:
            yield w


def torch_key(node: Node, w: Weight) -> str:
    """The ``state_dict`` key of a layer's tensor."""
    return f"{node.name}.{w.torch}" if w.torch else node.name


def jax_path(node: Node, w: Weight) -> tuple[str, ...]:
    """Where a layer's tensor sits in its collection of the JAX variables (and, as attributes, in Flax NNX)."""
    return (*node.name.split("."), *((w.jax,) if w.jax else ()))


def _reorder(a: np.ndarray, axis: int, order: np.ndarray | None) -> np.ndarray:
    """PyTorch's values along ``axis`` in the JAX backend's order of the elements it runs over."""
    return a if order is None else np.take(a, order, axis=axis)


def _unorder(a: np.ndarray, axis: int, order: np.ndarray | None) -> np.ndarray:
    """The inverse of :func:`_reorder`."""
    if order is None:
        return a
    back = np.empty_like(a)
    index = [slice(None)] * a.ndim
    index[axis] = order
    back[tuple(index)] = a
    return back


def torch_layout_to_jax(a: np.ndarray, node: Node, w: Weight, order: np.ndarray | None = None) -> np.ndarray:
    """One tensor of ``node``, as its ``state_dict`` holds it, in the JAX backend's layout (``order``: the
    layer's input order, see :func:`_input_order`, for its ``flat_axis``)."""
    opened, names = _open(a, w.torch_axes, _sizes(node, w), torch_key(node, w))
    if w.flat_axis is not None:
        opened = _reorder(opened, names.index(w.flat_axis), order)
    return np.ascontiguousarray(_close(opened, names, w.jax_axes))


def jax_layout_to_torch(a: np.ndarray, node: Node, w: Weight, order: np.ndarray | None = None) -> np.ndarray:
    """The inverse of :func:`torch_layout_to_jax`."""
    opened, names = _open(a, w.jax_axes, _sizes(node, w), ".".join(jax_path(node, w)))
    if w.flat_axis is not None:
        opened = _unorder(opened, names.index(w.flat_axis), order)
    return np.ascontiguousarray(_close(opened, names, w.torch_axes))


# ----------------------------------------------------------------------------- the converters


def _np(t: Any) -> np.ndarray:
    if hasattr(t, "detach"):  # a torch tensor
        t = t.detach().cpu().numpy()
    return np.asarray(t)


def tree_get(tree: Mapping, path: tuple[str, ...]) -> Any:
    for part in path:
        tree = tree[part]
    return tree


def tree_put(tree: dict, path: tuple[str, ...], value: Any) -> None:
    *scopes, last = path
    for part in scopes:
        tree = tree.setdefault(part, {})
    tree[last] = value


def torch_to_jax(net: Network | Graph, state_dict: Mapping[str, Any]) -> dict:
    """Convert a PyTorch ``state_dict`` of the generated torch model to JAX ``variables``.

    ``net`` is a :class:`~cnndsl.Network` (or its graph; :func:`cnndsl.torch_to_jax` also takes a zoo name / path).
    Returns ``{"params": ..., "batch_stats": ...}`` of ``jax.numpy`` arrays, nested
    by the layers' dotted names. Missing keys raise ``KeyError`` naming the key.
    """
    import jax.numpy as jnp

    graph = _graph(net)
    orders = flat_orders(graph)
    variables: dict = {"params": {}, "batch_stats": {}}
    for node in graph.nodes():
        weights = [w for w in present(node) if w.jax is not None]
        order = _input_order(graph, node, orders) if any(w.flat_axis for w in weights) else None
        for w in weights:
            a = _np(state_dict[torch_key(node, w)]).astype(np.float32)
            tree_put(variables[w.collection], jax_path(node, w), jnp.asarray(torch_layout_to_jax(a, node, w, order)))
    return variables


def jax_to_torch(net: Network | Graph, variables: Mapping[str, Any]) -> dict:
    """Convert JAX ``variables`` to a ``state_dict`` the generated torch model loads (``strict=True``).

    The inverse of :func:`torch_to_jax`; PyTorch's own counters (a batch norm's ``num_batches_tracked``) are 0.
    """
    import torch

    graph = _graph(net)
    orders = flat_orders(graph)
    out: dict[str, Any] = {}
    for node in graph.nodes():
        weights = list(present(node))
        order = _input_order(graph, node, orders) if any(w.flat_axis for w in weights) else None
        for w in weights:
            if w.jax is None:
                out[torch_key(node, w)] = torch.tensor(0, dtype=torch.long)
                continue
            a = _np(tree_get(variables.get(w.collection, {}), jax_path(node, w)))
            out[torch_key(node, w)] = torch.from_numpy(jax_layout_to_torch(a.astype(np.float32), node, w, order))
    return out
