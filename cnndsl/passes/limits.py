"""limits: how large a network may be, checked layer by layer before anything is allocated for it.

The compiler only does arithmetic on shapes, but a backend allocates what they say: a
``conv3-1000000000`` or an ``input 3x100000x100000`` would take the JAX or PyTorch model down
with it. :func:`check_shape` (called by ``infer_shapes`` as each layer gets its shape) and
:class:`Totals` (kept by ``count`` as each layer gets its parameters) refuse the first layer
over a limit, at its place in the source, with a hint saying how to raise it.

The defaults are far above any real network: the zoo's largest are VGG-19 (143,667,240
parameters), U-Net (182,717,488 activation values, 20,793,600 in its largest activation) and
U-Net's 572x572 input. Raise them with ``cnndsl.load(net, limits={"params": 10**12})`` (or a
:class:`SizeLimits`), or on the command line with ``--max-params N`` and its siblings.

(Not to be confused with :class:`cnndsl.search.variants.Limits`, which leaves the members of a search
space over a size out of a search.)
"""

from __future__ import annotations

import contextlib
import math
import re
from collections.abc import Iterator, Mapping
from contextvars import ContextVar
from dataclasses import dataclass, fields, replace

from cnndsl.errors import CnnLimitError, Span

MAX_PARAMS = 10**11  # trainable parameters of one network (400 GB of float32); VGG-19 has 1.4e8
MAX_ACTIVATIONS = 10**11  # values one forward pass allocates, all layers together; U-Net's are 1.8e8
MAX_TENSOR = 10**10  # values in one layer's output (40 GB of float32); U-Net's largest is 2.1e7
MAX_SPATIAL = 2**16  # height or width of one feature map, 65,536; U-Net's input is 572


@dataclass(frozen=True)
class SizeLimits:
    """The most a network may hold; a network over one is refused at the layer that crosses it."""

    params: int = MAX_PARAMS
    activations: int = MAX_ACTIVATIONS
    tensor: int = MAX_TENSOR
    spatial: int = MAX_SPATIAL

    def __post_init__(self):
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"size limit {f.name} must be a positive integer, got {value!r}")

    @classmethod
    def of(cls, limits: SizeLimits | Mapping[str, int] | None) -> SizeLimits:
        """``limits`` as SizeLimits: a mapping overrides some of the defaults in force (see :func:`raised`);
        None is those defaults."""
        if isinstance(limits, SizeLimits):
            return limits
        base = _current.get()
        if limits is None:
            return base
        unknown = set(limits) - {f.name for f in fields(cls)}
        if unknown:
            raise ValueError(f"unknown size limit {min(unknown)!r}; the limits are "
                             + ", ".join(f.name for f in fields(cls)))
        return replace(base, **{k: v for k, v in limits.items() if v is not None})


_current: ContextVar[SizeLimits] = ContextVar("cnndsl_size_limits", default=SizeLimits())  # noqa: B039 - frozen

#: Each limit's command-line option (every command that takes a NET has them) and what it bounds.
OPTIONS = (
    ("params", "--max-params", "most trainable parameters"),
    ("activations", "--max-activations", "most values one forward pass allocates, all layers together"),
    ("tensor", "--max-tensor", "most values in one layer's output"),
    ("spatial", "--max-spatial", "largest height or width of a feature map"),
)
_FLAG = {which: flag for which, flag, _ in OPTIONS}


_LIMIT = re.compile(r"([0-9]+)(?:(e|\*\*)([0-9]{1,3}))?", re.ASCII | re.IGNORECASE)


def parse_limit(text: str) -> int:
    """A limit as the command line writes it: ``1000000000000``, ``1_000_000_000_000``, ``1e12`` or ``10**12``."""
    import argparse

    m = _LIMIT.fullmatch(text.strip().replace("_", ""))
    if m is None:
        raise argparse.ArgumentTypeError(f"expected a whole number such as 1000000, 1e6 or 10**6, got {text!r}")
    base, power = int(m[1]), int(m[3] or 1)
    value = base if not m[2] else base * 10**power if m[2].lower() == "e" else base**power
    if value < 1:
        raise argparse.ArgumentTypeError(f"a limit is at least 1, got {text!r}")
    return value


@contextlib.contextmanager
def raised(limits: SizeLimits | Mapping[str, int] | None) -> Iterator[SizeLimits]:
    """Make ``limits`` the defaults of every network built inside the ``with`` (the command line's options
    reach the networks a command builds this way, wherever it builds them)."""
    token = _current.set(SizeLimits.of(limits))
    try:
        yield _current.get()
    finally:
        _current.reset(token)


def _refuse(message: str, span: Span | None, which: str, limit: int) -> CnnLimitError:
    return CnnLimitError(f"{message}, over the limit of {limit:,}", span,
                         f"if that is meant, raise the limit: {_FLAG[which]} N on the command line, "
                         f"limits={{'{which}': N}} in cnndsl.load")


def check_shape(node, limits: SizeLimits) -> None:
    """A layer's output shape: each spatial size at most ``limits.spatial``, its values at most ``limits.tensor``."""
    shape = node.shape
    spatial = limits.spatial
    if len(shape) == 3 and (shape[1] > spatial or shape[2] > spatial):
        side = "high" if shape[1] >= shape[2] else "wide"
        raise _refuse(f"{_outputs(node)}: {max(shape[1:]):,} pixels {side}", node.span, "spatial", spatial)
    values = math.prod(shape)
    if values > limits.tensor:
        raise _refuse(f"{_outputs(node)}: {values:,} values", node.span, "tensor", limits.tensor)


def _outputs(node) -> str:
    """What a refusal of a layer's shape starts with: ``'conv1' outputs 64x9000x9000`` (made only to refuse)."""
    what, does = ("the input", "is") if node.op == "input" else (f"'{node.name}'", "outputs")
    return f"{what} {does} {'x'.join(map(str, node.shape))}"


@dataclass
class Totals:
    """Running totals of the layers counted so far, checked as each is added."""

    limits: SizeLimits
    params: int = 0
    activations: int = 0

    def add(self, name: str, params: int, activations: int, span: Span | None) -> None:
        self.params += params
        self.activations += activations
        if self.params > self.limits.params:
            total = "" if self.params == params else f", bringing the network to {self.params:,}"
            raise _refuse(f"'{name}' has {params:,} parameters{total}", span, "params", self.limits.params)
        if self.activations > self.limits.activations:
            raise _refuse(f"'{name}' brings the values a forward pass allocates to {self.activations:,}", span,
                          "activations", self.limits.activations)
