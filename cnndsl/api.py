"""The Python API: load, check and summarise networks (the CLI is a thin layer over it).

Loading is :mod:`cnndsl.passes.pipeline`'s (``build``, ``load``, ``loads``, ``inference_network`` are re-exported
here); this layer puts a backend behind it and takes a network by name wherever it takes a :class:`Network`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from cnndsl.errors import CnnArgumentError
from cnndsl.ir.network import Network
from cnndsl.passes import pipeline

build = pipeline.build
inference_network = pipeline.inference_network


def load(net: str, *, allow_plugins: bool | None = None, **kwargs: Any) -> Network:
    """:func:`cnndsl.passes.pipeline.load`; ``allow_plugins=True`` lets the file load the plugins it ``use``s
    (``use "myops.py"``, which runs their code: see :mod:`cnndsl.ops`). None leaves it to the caller: not allowed,
    unless inside ``cnndsl.ops.allow_plugins()`` or under the CLI's ``--allow-plugins``."""
    with _plugins(allow_plugins):
        return pipeline.load(net, **kwargs)


def loads(text: str, filename: str = "<string>", *, allow_plugins: bool | None = None, **kwargs: Any) -> Network:
    """:func:`cnndsl.passes.pipeline.loads`; ``allow_plugins`` as for :func:`load`."""
    with _plugins(allow_plugins):
        return pipeline.loads(text, filename, **kwargs)


def _plugins(allow: bool | None):
    from contextlib import nullcontext

    from cnndsl.front.loader import allow_plugins

    return nullcontext() if allow is None else allow_plugins(allow)


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


def _weights(network: Network, weights, state_dict=None):
    """The ``state_dict`` in the weights file ``weights`` (checked against the training build ``network``)."""
    if weights is None:
        return state_dict
    if state_dict is not None:
        raise TypeError("give weights= (a file) or state_dict=, not both")
    from cnndsl.weights import load_weights

    return load_weights(weights, network)


def build_torch(net: str | Network, *, inference: bool = False, state_dict=None, weights=None, strict: bool = True,
                features: list[str] | None = None, features_only: bool = False, num_classes: int | None = None,
                **params: Any):
    """Compile ``net`` to PyTorch and return an instance of the generated ``nn.Module``.

    The generated source runs in a module of its own, ``cnndsl._generated.m<hash>``, one per source text (the same
    source gives the same class), and imports torch only. The model pickles (``torch.save(model)`` too) carrying
    its source, so that it loads in a fresh process (see :func:`cnndsl.backends.torch.source_module`).

    ``inference=True`` returns the inference build (see :func:`inference_network`) in eval mode,
    without gradients, in channels-last memory format; ``state_dict`` (a training build's
    ``state_dict()``) gives it its weights, batch norms folded into the convolutions.
    ``weights`` is a weights file (:mod:`cnndsl.weights`, safetensors) to load instead, checked against the
    network first: a file of another network is a :class:`CnnDslError`.

    ``features=["layer2", "layer3"]`` (layers or scopes) returns timm's ``features_only`` model: the network cut
    after them, its ``forward`` giving their outputs as a list, and ``model.feature_info`` (per feature, timm's
    ``num_chs``, ``reduction`` and ``module``); ``features_only=True`` picks the network's stage ends
    (:func:`cnndsl.passes.features.stage_ends`). ``num_classes=5`` is ``classes=5`` for a network with a
    ``classes`` parameter.

    ``strict=False`` fine-tunes from weights of a related network (timm's ``pretrained=True, num_classes=5``):
    every tensor of ``weights`` (or ``state_dict``) whose name and shape the model has is loaded, the others
    keep their initialisation, and a :class:`cnndsl.CnnDslWarning` names them (a new head: ``fc.weight``,
    ``fc.bias``). The file's architecture is not checked then, only names and shapes.
    """
    from cnndsl.backends.torch import build

    params = _num_classes(net, num_classes, params)
    if features is not None or features_only:
        return _features_model(net, features, features_only, inference, state_dict, weights, params)
    if not strict:
        return _partially_loaded(_network(net, params), inference, state_dict, weights)

    if weights is not None:
        network = _network(net, params)
        state_dict = _weights(network, weights, state_dict)
        return build(inference_network(network) if inference else network, inference=inference,
                     state_dict=state_dict)
    return build(_network(net, params, inference), inference=inference, state_dict=state_dict)


def _partially_loaded(network: Network, inference: bool, state_dict, weights):
    """:func:`build_torch` with ``strict=False``: the training build, the tensors that fit loaded, the rest named."""
    import warnings

    from cnndsl.backends.torch import build
    from cnndsl.errors import CnnDslWarning
    from cnndsl.weights import load_weights

    if inference:
        raise CnnArgumentError("strict=False loads part of a network's weights, to train the rest: the inference "
                               "build needs them all", None, "fine-tune the training build, then build the "
                               "inference one from its state_dict")
    if weights is not None:
        if state_dict is not None:
            raise TypeError("give weights= (a file) or state_dict=, not both")
        state_dict = load_weights(weights, network, partial=True)
    model = build(network)
    if state_dict is None:
        return model
    own = model.state_dict()
    fits = {k: v for k, v in state_dict.items() if k in own and tuple(v.shape) == tuple(own[k].shape)}
    model.load_state_dict(fits, strict=False)
    left = [k for k in own if k not in fits]
    if left:
        unused = sorted(set(state_dict) - set(fits))
        warnings.warn(str(CnnDslWarning(
            f"{len(fits)} of the {len(own)} tensors of '{network.name}' loaded; {len(left)} keep their "
            f"initialisation: {', '.join(left[:8])}{', ...' if len(left) > 8 else ''}", None,
            f"the weights' {', '.join(unused[:4])}{', ...' if len(unused) > 4 else ''} have another shape or no "
            "place here" if unused else "the weights have no tensor for them")), stacklevel=3)
    return model


def _num_classes(net: str | Network, num_classes: int | None, params: dict[str, Any]) -> dict[str, Any]:
    """``params`` with ``classes=num_classes`` (timm's keyword at construction), checked."""
    if num_classes is None:
        return params
    if "classes" in params:
        raise CnnArgumentError("num_classes= and classes= both given", None, "give one of them")
    if isinstance(net, Network):
        raise CnnArgumentError("num_classes= needs a network by name or path: this one is already built", None,
                               f"load it again: build_torch({net.name!r}, num_classes={num_classes!r})")
    return {**params, "classes": num_classes}


def _features_model(net, features, features_only, inference, state_dict, weights, params):
    """:func:`build_torch`'s ``features=`` / ``features_only=`` model (weights from the whole network's)."""
    from cnndsl.backends.torch import build
    from cnndsl.passes.features import features_network

    if features is not None and features_only:
        raise CnnArgumentError("features= and features_only=True both given", None,
                               "features_only=True picks the stage ends; features= names them")
    if inference:
        raise CnnArgumentError("a feature model has no inference build", None, "leave out inference=True")
    if isinstance(features, str):
        raise CnnArgumentError("features= takes a list of names", None, f"features=[{features!r}]")
    network = _network(net, params)
    if weights is not None:
        state_dict = _weights(network, weights, state_dict)
    cut, info = features_network(network, None if features_only else list(features))
    model = build(cut, features=tuple(f.node for f in info))
    if state_dict is not None:
        keys = model.state_dict().keys()
        model.load_state_dict({k: v for k, v in state_dict.items() if k in keys})
    model.feature_info = [f.info() for f in info]
    return model


def build_jax(net: str | Network, *, weights=None, **params: Any):
    """Compile ``net`` to JAX and return the model: ``.init(key)`` and ``.apply(variables, x, *, train, rng)``.

    The generated source runs in a fresh namespace (it imports jax only); ``.source`` holds it.
    With ``weights`` (a weights file, :mod:`cnndsl.weights`) the model's ``.variables`` hold them, converted
    from the file's torch layout, for ``model.apply(model.variables, x)``.
    """
    from cnndsl.backends.jax import build

    network = _network(net, params)
    model = build(network)
    if weights is not None:
        from cnndsl.weights import load_jax

        model.variables = load_jax(weights, network)
    return model


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


def build_flax(net: str | Network, *, seed: int = 0, weights=None, **params: Any):
    """Compile ``net`` to Flax NNX and return an instance of the generated ``nnx.Module``, built with
    ``rngs=nnx.Rngs(seed)``. Weights move from and to a torch ``state_dict`` with
    :func:`cnndsl.backends.flax.torch_to_flax` and :func:`cnndsl.backends.flax.flax_to_torch`.
    With ``weights`` (a weights file, :mod:`cnndsl.weights`) the model holds them, and no random
    weights are drawn first (``seed`` then keys only the dropout streams).
    """
    if weights is not None:
        from cnndsl.weights import load_flax

        return load_flax(weights, _network(net, params), seed=seed)
    from cnndsl.backends.flax import build

    return build(_network(net, params), seed)


def build_supernet(space, *, input_shape: tuple[int, ...] | None = None, members=None, sample: int = 64,
                   seed: int = 0, **params: Any):
    """The one-shot NAS supernet of a search space (a shipped space's name, a ``.cnn`` path or a ``Space``): an
    ``nn.Module`` holding every option of every choice point once per place, whose ``forward(x, choices)`` runs
    one member (a choice dict as ``variants`` gives it) on the shared weights, and ``extract(choices)`` gives
    ``(network, state_dict)`` for :func:`build_torch`. See :mod:`cnndsl.backends.supernet_torch` and docs/nas.md.

    ``members`` (choice dicts) size the shared tensors; by default every member of a space of at most 256, else
    the first member, its one-choice neighbours and ``sample`` random ones (seeded by ``seed``).
    """
    from cnndsl.backends.supernet_torch import Supernet
    from cnndsl.search.supernet import member_layers
    from cnndsl.search.variants import Space

    if not isinstance(space, Space):
        space = Space.open(str(space), input_shape=input_shape, params=params)
    elif input_shape or params:
        raise CnnArgumentError("input_shape= and parameters go with a space by name", None,
                               "Space.open(name, input_shape=..., params=...), or build_supernet(name, ...)")
    return Supernet(space, member_layers, members, sample=sample, seed=seed)
