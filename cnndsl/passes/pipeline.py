"""The compiler's pipeline: parse and resolve a network, run every pass over it, give a checked :class:`Network`.

This is what :func:`cnndsl.load` does, in the layer below the backends' users (search, training, export), so
they can load a network without going through the API layer above them. :mod:`cnndsl.api` re-exports it.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from cnndsl.errors import CnnDslWarning
from cnndsl.front.loader import Library, open_net, pick_network
from cnndsl.front.syntax import parse
from cnndsl.ir.network import Network
from cnndsl.passes import PIPELINE, SizeLimits, check, count, fold_bn, resolve, strip_training


def build(library: Library, name: str, input_shape: tuple[int, ...] | None = None, choose=None, *,
          limits: SizeLimits | Mapping[str, int] | None = None, **params: Any) -> Network:
    """Resolve network ``name`` from ``library`` and run every pass over it.

    ``limits`` raises (or lowers) the size limits (:class:`cnndsl.passes.limits.SizeLimits`, or a dict
    such as ``{"params": 10**12}`` of the ones to change); a network over one is refused with a
    :class:`cnndsl.CnnLimitError` at the first layer that crosses it, before anything is allocated.
    """
    sizes = SizeLimits.of(limits)
    graph = resolve(library, name, choose, input_shape=input_shape, limits=sizes, **params)
    warnings: list[CnnDslWarning] = []
    for _, run in PIPELINE:
        run(graph, warnings, sizes)
    return Network(graph, warnings)


def load(net: str, *, input_shape: tuple[int, ...] | None = None,
         limits: SizeLimits | Mapping[str, int] | None = None, **params: Any) -> Network:
    """Load a zoo network by name (``"resnet50"``) or a .cnn file by path (``"net.cnn"``, ``"file.cnn:name"``).

    Keyword arguments override the network's parameters (``classes=10``); ``limits`` the size limits
    (``limits={"params": 10**12, "spatial": 100_000}``, see :func:`build`).
    Raises :class:`cnndsl.CnnDslError` for any mistake in the network.
    """
    library, name = open_net(str(net))
    return build(library, name, input_shape, limits=limits, **params)


def loads(text: str, filename: str = "<string>", *, network: str | None = None,
          input_shape: tuple[int, ...] | None = None, limits: SizeLimits | Mapping[str, int] | None = None,
          **params: Any) -> Network:
    """Load a network from .cnn text. ``use`` finds files relative to the working directory and the zoo."""
    library = Library.from_module(parse(text, filename), Path.cwd())
    name = pick_network(library, network, filename)
    return build(library, name, input_shape, limits=limits, **params)


def inference_network(net: Network) -> Network:
    """The inference build of ``net`` (a new :class:`Network`; ``net`` is left as it is).

    Dropout and auxiliary heads are dropped (``passes.strip_training``) and each batch norm
    that follows a convolution is folded into it (``passes.fold_bn``). The training build's
    weights map to it with :func:`cnndsl.backends.torch_weights.fold_state_dict`.
    """
    graph = copy.deepcopy(net.graph)
    for run in (strip_training, fold_bn, count, check):
        run(graph)
    return Network(graph, list(net.warnings))
