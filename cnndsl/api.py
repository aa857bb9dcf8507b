"""The Python API: load, check and summarise networks (the CLI is a thin layer over it)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .errors import CnnDslWarning
from .loader import Library, open_net, pick_network
from .network import Network
from .passes import PIPELINE, SizeLimits, resolve
from .syntax import parse


def build(library: Library, name: str, input_shape: tuple[int, ...] | None = None, choose=None, *,
          limits: SizeLimits | Mapping[str, int] | None = None, **params: Any) -> Network:
    """Resolve network ``name`` from ``library`` and run every pass over it.

    ``limits`` raises (or lowers) the size limits (:class:`cnndsl.passes.limits.SizeLimits`, or a dict
    such as ``{"params": 10**12}`` of the ones to change); a network over one is refused with a
    :class:`cnndsl.CnnLimitError` at the first layer that crosses it, before anything is allocated.
    """
    sizes = SizeLimits.of(limits)
    graph = resolve(library, name, choose, **params)
    if input_shape is not None:
        graph.node(graph.inputs[0]).args["shape"] = tuple(input_shape)
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
    from pathlib import Path

    library = Library.from_module(parse(text, filename), Path.cwd())
    name = pick_network(library, network, filename)
    return build(library, name, input_shape, limits=limits, **params)


def _network(net: str | Network, params: dict[str, Any], inference: bool = False) -> Network:
    network = net if isinstance(net, Network) else load(str(net), **params)
    return inference_network(network) if inference else network


def inference_network(net: Network) -> Network:
    """The inference build of ``net`` (a new :class:`Network`; ``net`` is left as it is).

    Dropout and auxiliary heads are dropped (``passes.strip_training``) and each batch norm
    that follows a convolution is folded into it (``passes.fold_bn``). The training build's
    weights map to it with :func:`cnndsl.passes.fold_bn.fold_state_dict`.
    """
    import copy

    from .passes import check, count, fold_bn, strip_training

    graph = copy.deepcopy(net.graph)
    for run in (strip_training, fold_bn, count, check):
        run(graph)
    return Network(graph, list(net.warnings))


def compile(net: str | Network, backend: str = "torch", *, inference: bool = False,
            **params: Any) -> str:
    """Generate source code for a network (a zoo name, a .cnn path, or a :class:`Network`).

    ``backend="torch"`` gives a self-contained PyTorch module (it imports torch only),
    ``backend="jax"`` a pure-function JAX model (it imports jax only).
    ``inference=True`` generates the inference build (see :func:`inference_network`).
    """
    if backend == "torch":
        from .backends.torch import generate as generate_torch

        return generate_torch(_network(net, params, inference))[0]
    if backend == "jax":
        from .backends.jax import generate

        return generate(_network(net, params, inference))
    raise ValueError(f"unknown backend {backend!r}; expected 'torch' or 'jax'")


def build_torch(net: str | Network, *, inference: bool = False, state_dict=None, **params: Any):
    """Compile ``net`` to PyTorch and return an instance of the generated ``nn.Module``.

    The generated source runs in a fresh module namespace, so the model does not depend on cnndsl.

    ``inference=True`` returns the inference build (see :func:`inference_network`) in eval mode,
    without gradients, in channels-last memory format; ``state_dict`` (a training build's
    ``state_dict()``) gives it its weights, batch norms folded into the convolutions.
    """
    import linecache
    import types

    from .backends.torch import generate as generate_torch

    network = _network(net, params, inference)
    source, class_name = generate_torch(network)
    filename = f"<cnndsl {network.name}>"
    # tracebacks, inspect.getsource and torch.jit.script read the generated source from here
    linecache.cache[filename] = (len(source), None, source.splitlines(True), filename)
    module = types.ModuleType(f"cnndsl_generated_{network.name}")
    exec(builtins_compile(source, filename, "exec"), module.__dict__)  # noqa: S102
    cls = getattr(module, class_name)
    if inference:
        import torch

        from .passes.fold_bn import fold_state_dict

        if state_dict is not None:  # no point initialising weights about to be replaced
            with torch.device("meta"):
                model = cls()
            weights = {k: v.detach().clone() for k, v in fold_state_dict(network.graph, state_dict).items()}
            model.load_state_dict(weights, assign=True)
        else:
            model = cls()
        model.eval().requires_grad_(False)
        if len(network.input_shape) == 3:
            model = model.to(memory_format=torch.channels_last)
        return model
    model = cls()
    if state_dict is not None:
        model.load_state_dict(state_dict)
    return model


def build_jax(net: str | Network, **params: Any):
    """Compile ``net`` to JAX and return the model: ``.init(key)`` and ``.apply(variables, x, *, train, rng)``.

    The generated source runs in a fresh namespace (it imports jax only); ``.source`` holds it.
    """
    from .backends.jax import build

    return build(_network(net, params))


builtins_compile = __builtins__["compile"] if isinstance(__builtins__, dict) else __builtins__.compile
