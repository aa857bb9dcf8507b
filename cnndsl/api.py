"""The Python API: load, check and summarise networks (the CLI is a thin layer over it)."""

from __future__ import annotations

from typing import Any

from .errors import CnnDslWarning
from .loader import Library, open_net, pick_network
from .network import Network
from .passes import PIPELINE, resolve
from .syntax import parse


def build(library: Library, name: str, input_shape: tuple[int, ...] | None = None, choose=None,
          **params: Any) -> Network:
    """Resolve network ``name`` from ``library`` and run every pass over it."""
    graph = resolve(library, name, choose, **params)
    if input_shape is not None:
        graph.node(graph.inputs[0]).args["shape"] = tuple(input_shape)
    warnings: list[CnnDslWarning] = []
    for _, run in PIPELINE:
        run(graph, warnings)
    return Network(graph, warnings)


def load(net: str, *, input_shape: tuple[int, ...] | None = None, **params: Any) -> Network:
    """Load a zoo network by name (``"resnet50"``) or a .cnn file by path (``"net.cnn"``, ``"file.cnn:name"``).

    Keyword arguments override the network's parameters (``classes=10``).
    Raises :class:`cnndsl.CnnDslError` for any mistake in the network.
    """
    library, name = open_net(str(net))
    return build(library, name, input_shape, **params)


def loads(text: str, filename: str = "<string>", *, network: str | None = None,
          input_shape: tuple[int, ...] | None = None, **params: Any) -> Network:
    """Load a network from .cnn text. ``use`` finds files relative to the working directory and the zoo."""
    from pathlib import Path

    library = Library.from_module(parse(text, filename), Path.cwd())
    name = pick_network(library, network, filename)
    return build(library, name, input_shape, **params)


def _network(net: "str | Network", params: dict[str, Any]) -> Network:
    return net if isinstance(net, Network) else load(str(net), **params)


def compile(net: "str | Network", backend: str = "torch", **params: Any) -> str:  # noqa: A001 - the verb
    """Generate source code for a network (a zoo name, a .cnn path, or a :class:`Network`).

    ``backend="torch"`` gives a self-contained PyTorch module (it imports torch only).
    """
    if backend == "torch":
        from .backends.torch import compile_torch

        return compile_torch(_network(net, params))
    raise ValueError(f"unknown backend {backend!r}; expected 'torch'")


def build_torch(net: "str | Network", **params: Any):
    """Compile ``net`` to PyTorch and return an instance of the generated ``nn.Module``.

    The generated source runs in a fresh module namespace, so the model does not depend on cnndsl.
    """
    import types

    network = _network(net, params)
    source = compile(network, "torch")
    module = types.ModuleType(f"cnndsl_generated_{network.name}")
    exec(builtins_compile(source, f"<cnndsl {network.name}>", "exec"), module.__dict__)  # noqa: S102
    from .backends.torch import camel

    return getattr(module, camel(network.name))()


builtins_compile = __builtins__["compile"] if isinstance(__builtins__, dict) else __builtins__.compile
