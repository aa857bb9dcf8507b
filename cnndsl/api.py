"""The Python API: load, check and summarise networks (the CLI is a thin layer over it).

Loading is :mod:`cnndsl.passes.pipeline`'s (``build``, ``load``, ``loads``, ``inference_network`` are re-exported
here); this layer puts a backend behind it and takes a network by name wherever it takes a :class:`Network`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from cnndsl.ir.network import Network
from cnndsl.passes import pipeline

build = pipeline.build
load = pipeline.load
loads = pipeline.loads
inference_network = pipeline.inference_network


def _network(net: str | Network, params: dict[str, Any], inference: bool = False) -> Network:
    network = net if isinstance(net, Network) else load(str(net), **params)
    return inference_network(network) if inference else network


def compile(net: str | Network, backend: str = "torch", *, inference: bool = False,
            **params: Any) -> str:
    """Generate source code for a network (a zoo name, a .cnn path, or a :class:`Network`).

    ``backend="torch"`` gives a self-contained PyTorch module (it imports torch only),
    ``backend="jax"`` a pure-function JAX model (it imports jax only),
    ``backend="flax"`` a Flax NNX module (it imports jax and flax.nnx only).
    ``inference=True`` generates the inference build (see :func:`inference_network`).
    """
    if backend == "torch":
        from cnndsl.backends.torch import generate as generate_torch

        return generate_torch(_network(net, params, inference))[0]
    if backend == "jax":
        from cnndsl.backends.jax import generate

        return generate(_network(net, params, inference))
    if backend == "flax":
        from cnndsl.backends.flax import compile_flax

        return compile_flax(_network(net, params, inference))
    raise ValueError(f"unknown backend {backend!r}; expected 'torch', 'jax' or 'flax'")


def build_torch(net: str | Network, *, inference: bool = False, state_dict=None, **params: Any):
    """Compile ``net`` to PyTorch and return an instance of the generated ``nn.Module``.

    The generated source runs in a fresh module namespace, so the model does not depend on cnndsl.

    ``inference=True`` returns the inference build (see :func:`inference_network`) in eval mode,
    without gradients, in channels-last memory format; ``state_dict`` (a training build's
    ``state_dict()``) gives it its weights, batch norms folded into the convolutions.
    """
    from cnndsl.backends.torch import build

    return build(_network(net, params, inference), inference=inference, state_dict=state_dict)


def build_jax(net: str | Network, **params: Any):
    """Compile ``net`` to JAX and return the model: ``.init(key)`` and ``.apply(variables, x, *, train, rng)``.

    The generated source runs in a fresh namespace (it imports jax only); ``.source`` holds it.
    """
    from cnndsl.backends.jax import build

    return build(_network(net, params))


def torch_to_jax(net: str | Network, state_dict: Mapping[str, Any]) -> dict:
    """A PyTorch ``state_dict`` of ``net`` (a :class:`Network`, its graph, or a name to load) as JAX ``variables``.

    See :func:`cnndsl.backends.jax_weights.torch_to_jax`.
    """
    from cnndsl.backends.jax_weights import torch_to_jax as convert

    return convert(load(net) if isinstance(net, str) else net, state_dict)


def jax_to_torch(net: str | Network, variables: Mapping[str, Any]) -> dict:
    """JAX ``variables`` of ``net`` (a :class:`Network`, its graph, or a name to load) as a PyTorch ``state_dict``.

    See :func:`cnndsl.backends.jax_weights.jax_to_torch`.
    """
    from cnndsl.backends.jax_weights import jax_to_torch as convert

    return convert(load(net) if isinstance(net, str) else net, variables)


def build_flax(net: str | Network, *, seed: int = 0, **params: Any):
    """Compile ``net`` to Flax NNX and return an instance of the generated ``nnx.Module``, built with
    ``rngs=nnx.Rngs(seed)``. Weights move from and to a torch ``state_dict`` with
    :func:`cnndsl.backends.flax.torch_to_flax` and :func:`cnndsl.backends.flax.flax_to_torch`.
    """
    from cnndsl.backends.flax import build

    return build(_network(net, params), seed)
