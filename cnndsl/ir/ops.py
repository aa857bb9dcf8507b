"""The op registry: every layer kind, its arguments and their defaults, its shape
rule, its parameter count and its MACs, and every other fact about it that a
pass, a backend or a report needs (see :class:`Op`). Passes, backends, reports
and the editor vocabularies look ops up here; adding an op is one class here
plus one method per backend.

Shapes are logical, layout-free tuples: ``(C, H, W)`` for feature maps and
``(N,)`` for flat vectors. Padding is always stored as explicit
``((top, bottom), (left, right))`` pairs, so backends never guess what "same"
means.

>>> conv = OPS["conv"]
>>> args = conv.normalize({"k": 5, "c": 10, "p": 2}, None)
>>> conv.infer((3, 32, 32), args, None), conv.count_params([(3, 32, 32)], args)
((10, 32, 32), 760)
"""

from __future__ import annotations

import difflib
import enum
import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

from cnndsl.errors import CnnArgumentError, CnnDslWarning, CnnLimitError, CnnShapeError, Span

Shape = tuple[int, ...]
Warn = Callable[[CnnDslWarning], None]

REQUIRED = object()
#: Argument names from other frameworks and papers -> ours (for "did you mean" hints).
_ARGUMENT_ALIASES = {"stride": "s", "strides": "s", "kernel": "k", "kernel_size": "k", "channels": "c",
                     "out_channels": "c", "filters": "c", "features": "c", "out_features": "c", "units": "c",
                     "padding": "p", "pad": "p", "dilation": "d", "rate": "p", "output_size": "size",
                     "drop_prob": "p", "slope": "negative_slope", "alpha": "negative_slope", "scale_factor": "scale",
                     "end": "stop"}
MAX_INT = 2**40  # no size, count or channel number in a network comes near this


# ----------------------------------------------------------------------------- argument kinds


def _bad(msg: str, span: Span | None, hint: str | None = None):
    raise CnnArgumentError(msg, span, hint)


def as_int(name: str, v: Any, span, minimum: int = 1) -> int:
    if isinstance(v, bool) or not isinstance(v, int):
        if isinstance(v, float) and v.is_integer():
            v = int(v)
        else:
            _bad(f"'{name}' must be an integer, got {v!r}", span, _value_hint(v))
    if v < minimum:
        _bad(f"'{name}' must be at least {minimum}, got {v}", span)
    if v > MAX_INT:
        raise CnnLimitError(f"'{name}' is too large: {v}", span, f"numbers in a network stay below {MAX_INT:,}")
    return v


def _value_hint(v: Any) -> str | None:
    if isinstance(v, str):
        return f"'{v}' is not a number, nor a parameter in scope"
    if isinstance(v, float):
        return "use // for a whole-number division, e.g. {c // 2}"
    return None


def as_pair(name: str, v: Any, span, minimum: int = 1) -> tuple[int, int]:
    if isinstance(v, tuple):
        if len(v) != 2:
            _bad(f"'{name}' takes one number or a pair (h, w), got {len(v)} numbers", span)
        return (as_int(name, v[0], span, minimum), as_int(name, v[1], span, minimum))
    n = as_int(name, v, span, minimum)
    return (n, n)


def as_float(name: str, v: Any, span, lo: float | None = None, hi: float | None = None) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        _bad(f"'{name}' must be a number, got {v!r}", span, _value_hint(v))
    v = float(v)
    if not math.isfinite(v):
        _bad(f"'{name}' must be a finite number, got {v}", span, "an expression overflowed, or divided infinities")
    if (lo is not None and v < lo) or (hi is not None and v > hi):
        _bad(f"'{name}' must be between {lo} and {hi}, got {v}", span,
             "a rate or a probability lies between 0 and 1" if (lo, hi) == (0.0, 1.0) else None)
    return v


def as_bool(name: str, v: Any, span) -> bool:
    if isinstance(v, bool):
        return v
    if v in (0, 1):
        return bool(v)
    _bad(f"'{name}' must be true or false, got {v!r}", span)


def as_padding(v: Any, k: tuple[int, int], d: tuple[int, int], span) -> tuple[tuple[int, int], tuple[int, int]]:
    """'same' | 'valid' | n | (ph, pw) | ((top, bottom), (left, right)) -> explicit pairs.

    'same' is the padding that keeps the size at stride 1: d*(k-1) split evenly,
    the odd pixel at the bottom/right (symmetric for odd kernels, as PyTorch pads).
    """
    if v == "same":
        out = []
        for kk, dd in zip(k, d):
            total = dd * (kk - 1)
            out.append((total // 2, total - total // 2))
        return (out[0], out[1])
    if v == "valid":
        return ((0, 0), (0, 0))
    if isinstance(v, tuple) and len(v) == 2 and all(isinstance(x, tuple) for x in v):
        pairs = tuple(tuple(as_int("p", x, span, 0) for x in pair) for pair in v)
        if any(len(pair) != 2 for pair in pairs):
            _bad("explicit padding is ((top, bottom), (left, right))", span)
        return pairs  # type: ignore[return-value]
    if isinstance(v, tuple) and len(v) == 4:
        t, b, left, r = (as_int("p", x, span, 0) for x in v)
        return ((t, b), (left, r))
    ph, pw = as_pair("p", v, span, 0)
    return ((ph, ph), (pw, pw))


# ----------------------------------------------------------------------------- the kinds of facts


class Family(enum.Enum):
    """An op's display family: the fill colour of its box in a graph picture, and whether the box is small
    (a step drawn without its output shape, such as an activation)."""

    INPUT = ("input", "#ffffff", False)
    CONV = ("convolution", "#cfe2f3", False)
    POOL = ("pooling", "#d9ead3", False)
    DENSE = ("fully connected", "#fce5cd", False)
    MERGE = ("merge", "#fff2cc", False)
    NORM = ("normalisation", "#eeeeee", True)
    ACTIVATION = ("activation", "#ffffff", True)
    RESHAPE = ("reshape", "#f3f3f3", True)
    REGULARISATION = ("regularisation", "#f3f3f3", True)
    IDENTITY = ("identity", "#ffffff", True)

    def __init__(self, title: str, fill: str, small: bool) -> None:
        self.title, self.fill, self.small = title, fill, small


class Saved(enum.Flag):
    """What an op keeps for its backward pass in training mode, as PyTorch's autograd does."""

    NOTHING = 0
    INPUT = enum.auto()  # its input
    OUTPUT = enum.auto()  # its output
    INDICES = enum.auto()  # one index per output value (max pooling's argmax)
    MASK = enum.auto()  # one value per output value (dropout's mask)


class FlatOrder(enum.Enum):
    """How an op orders the elements of a flat vector it outputs, given its operands' orders.

    PyTorch flattens a feature map in (C, H, W) order, the JAX backend in (H, W, C) order, so a
    vector can hold the same numbers in two orders; the weight converters (``backends/jax_weights.py``)
    follow them with these rules.
    """

    KEEPS = "keeps"  # elementwise, or per feature: its operand's order
    FLATTENS = "flattens"  # flattens a feature map, in the backend's layout order
    FRESH = "fresh"  # an order of its own (fc's neurons, an input vector)
    JOINS = "joins"  # its operands' elements one after the other (concat)
    ALIGNS = "aligns"  # elementwise over operands that must share one order (add)
    MIXES = "mixes"  # anything else: assumed to depend on the order of its operands' elements


@dataclass(frozen=True)
class Weight:
    """One tensor an op holds, as each backend stores it; the weight converters loop over an op's ``weights``.

    - ``torch``: its ``state_dict`` key after the layer's dotted name (``weight``, ``running_mean``); ``""`` is
      the layer's name itself, a bare ``nn.Parameter`` of the module around it (ConvNeXt's ``layer_scale``).
    - ``jax``: its leaf under the layer's dotted name in the JAX backend's variables, which is also the Flax
      NNX module's attribute (``kernel``, ``scale``, ``mean``); ``""`` is the layer's own leaf (a bare
      ``nnx.Param``); None for a PyTorch-only counter (``num_batches_tracked``), zero when converted back.
    - ``collection``: ``"params"`` (trained by the optimiser) or ``"batch_stats"`` (running statistics).
    - ``torch_axes``, ``jax_axes``: its layout in each, one name per axis as einops writes them: ``(g i)`` is
      one axis holding ``g`` groups of ``i``, ``1`` an axis of size one. A conv's kernel is ``o i h w`` in
      PyTorch and ``h w i o`` (HWIO) in JAX.
    - ``groups``: the argument that gives the size of a ``g`` axis.
    - ``flat_axis``: the axis that runs over the elements of the op's input when that input is a vector (or a
      feature map the op flattens): the converters reorder it as the JAX backend orders those elements
      (:class:`FlatOrder`).
    - ``flax_flipped``: the axes that Flax NNX stores reversed, relative to ``jax_axes`` (a transposed conv is
      an ``nnx.Conv`` whose kernel is the flipped kernel of the convolution it transposes).
    - ``when``: the boolean argument without which the tensor does not exist (``bias``, ``affine``).

    >>> Weight("weight", "kernel", torch_axes="(g i) o h w", jax_axes="h w i (g o)", groups="groups").letters
    ('g', 'i', 'o', 'h', 'w')
    """

    torch: str
    jax: str | None
    collection: str = "params"
    torch_axes: str = "c"
    jax_axes: str = "c"
    groups: str | None = None
    flat_axis: str | None = None
    flax_flipped: tuple[str, ...] = ()
    when: str | None = None

    def __post_init__(self) -> None:
        if self.collection not in ("params", "batch_stats"):
            raise ValueError(f"{self.torch!r}: unknown collection {self.collection!r}")
        if self.jax is not None and sorted(self.letters) != sorted(_letters(self.jax_axes)):
            raise ValueError(f"{self.torch!r}: {self.torch_axes!r} and {self.jax_axes!r} name different axes")
        if ("g" in self.letters) != (self.groups is not None):
            raise ValueError(f"{self.torch!r}: a 'g' axis needs the argument that sizes it (groups=), and only it")
        if not {self.flat_axis, *self.flax_flipped} <= {None, *self.letters}:
            raise ValueError(f"{self.torch!r}: flat_axis and flax_flipped name axes of the layout")

    @property
    def letters(self) -> tuple[str, ...]:
        """The axis names of the PyTorch layout, groups opened, size-one axes left out."""
        return _letters(self.torch_axes)

    @property
    def spatial_axes(self) -> tuple[int, ...]:
        """The positions of the kernel's spatial axes (``h``, ``w``) in the PyTorch tensor."""
        return tuple(i for i, axis in enumerate(re.findall(r"\([^)]*\)|\S+", self.torch_axes)) if axis in ("h", "w"))


def _letters(axes: str) -> tuple[str, ...]:
    return tuple(a for a in re.findall(r"[a-z]|1", axes) if a != "1")


#: One factor of a :class:`Fans` part: a whole number, a number's name, or ``"a/b"``.
_FACTOR = re.compile(r"[a-z_][a-z0-9_]*(/[a-z_][a-z0-9_]*)?")


@dataclass(frozen=True)
class Fans:
    """The fans of an op's kernel as PyTorch computes them from its weight (``nn.init``'s
    ``_calculate_fan_in_and_fan_out``, which the initialisation schemes read: the default U(+-1/sqrt(fan_in)),
    He's normal over fan_out, Glorot's uniform over both): ``fan_in`` is the weight's second axis times its
    ``receptive`` field, ``fan_out`` its first axis times the receptive field.

    Each part is a product of factors over the layer's numbers (its arguments, and ``in_channels`` or
    ``in_features``: the channels, or all the values, of its input), symbolic so that each printer renders
    it with its own expressions and a block's constructor parameters stay parameters. A factor of
    ``fan_in`` or ``fan_out`` is a whole number, a number's name, or ``"a/b"``, ``a`` divided by ``b``
    (which divides it); one of ``receptive`` names a (height, width) pair, the product of its two numbers.

    >>> Fans(("in_channels/groups",), ("c",), receptive=("k",)).evaluate({"in_channels": 64, "groups": 2, "c": 8,
    ...                                                                     "k": (3, 1)})
    (96, 24)
    """

    fan_in: tuple[str | int, ...]
    fan_out: tuple[str | int, ...]
    receptive: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        for f in (*self.fan_in, *self.fan_out):
            if not (isinstance(f, int) and not isinstance(f, bool) and f >= 1 or isinstance(f, str)
                    and _FACTOR.fullmatch(f)):
                raise ValueError(f"a fan's factor is a whole number, a name or 'a/b', not {f!r}")
        if not all(isinstance(f, str) and "/" not in f and _FACTOR.fullmatch(f) for f in self.receptive):
            raise ValueError(f"a receptive field is the names of pairs, not {self.receptive!r}")

    @staticmethod
    def quotient(factor: str) -> tuple[str, str | None]:
        """A named factor as (numerator, denominator): ``"in_channels/groups"`` -> ``("in_channels", "groups")``,
        ``"c"`` -> ``("c", None)``."""
        num, _, den = factor.partition("/")
        return num, den or None

    def evaluate(self, numbers: dict[str, Any]) -> tuple[int, int]:
        """(fan_in, fan_out) for a layer's numbers."""
        def factor(f: str | int) -> int:
            if isinstance(f, int):
                return f
            num, den = self.quotient(f)
            return numbers[num] // numbers[den] if den else numbers[num]

        field = math.prod(math.prod(numbers[name]) for name in self.receptive)
        return (math.prod(map(factor, self.fan_in)) * field, math.prod(map(factor, self.fan_out)) * field)


# ----------------------------------------------------------------------------- ops


#: The facts every op declares, in its own class or in an abstract base (:func:`register` checks);
#: :class:`Op` documents each one and gives none of them a default.
FACTS = ("writable", "family", "paper_kind", "saves", "flat_order", "torch_module", "overwritable",
         "commutative", "foldable", "fold_target", "weights")


def _pair_text(v) -> str:
    """A (h, w) pair as ``3`` when square, ``1x7`` otherwise."""
    if isinstance(v, tuple):
        return str(v[0]) if len(set(v)) == 1 else "x".join(str(x) for x in v)
    return str(v)


def _pad_text(p) -> str | None:
    """Explicit padding ((top, bottom), (left, right)) in the shortest form, or None when zero."""
    flat = [x for pair in p for x in pair] if isinstance(p, tuple) else [p]
    if not any(flat):
        return None
    if len(set(flat)) == 1:
        return str(flat[0])
    return ",".join(str(x) for x in flat)


class Op:
    """Abstract base: an op kind. Subclasses are final and registered in :data:`OPS`.

    Besides its arguments and its rules (shape, parameters, MACs), every op declares these facts
    (:data:`FACTS`), which the rest of cnndsl reads instead of keeping lists of op names:

    - ``writable``: it can be written as a layer in .cnn text (the editors' and the lexer's
      vocabulary); not ``input`` (declared by ``input CxHxW``) nor ``shortcut`` (made by ``residual<...>``).
    - ``family``: its :class:`Family` (a graph box's colour and size; the papers' depth counts
      the conv and fully connected families).
    - ``paper_kind``: its "type" in the papers' tables (GoogLeNet's Table 1: "convolution",
      "max pool"), or None for a layer those tables leave out (ReLU, LRN, batch norm).
    - ``saves``: what it keeps for the backward pass (:class:`Saved`; the summary's "saved for bwd").
    - ``flat_order``: how it orders the elements of a flat output (:class:`FlatOrder`; the weight
      converter and the JAX backend's flatten order).
    - ``torch_module``: PyTorch builds it as an ``nn.Module`` (a submodule and a ``state_dict`` scope);
      otherwise the forward writes it inline (``torch.cat``, ``+``).
    - ``overwritable``: its output is a fresh tensor that its backward pass does not read, so the op
      after it may overwrite it in place (a residual's ``out += identity``). Declared true only where
      that is known to hold.
    - ``commutative``: its operands may be swapped (at its default arguments; :meth:`commutes` says for
      given ones), which the architecture hash uses.
    - ``foldable``: in eval mode it is a per-channel affine map that ``fold_bn`` folds into the layer
      before it, when that layer is a ``fold_target``.
    - ``fold_target``: a ``foldable`` op right after it can be folded into its weights and bias.
    - ``weights``: the tensors it holds, each a :class:`Weight` (its ``state_dict`` key, its JAX and Flax NNX
      leaf and collection, its layout in each), which the weight converters loop over; ``()`` for none.

    An op with a kernel (a weight whose JAX leaf is ``kernel``, drawn at random) also declares ``fans``, its
    kernel's :class:`Fans` in PyTorch, which every backend's initialisation renders; None (the default, the one
    declaration on this class) for the rest.

    Its paper spellings are methods, since they depend on the arguments: :meth:`short_form` and
    :meth:`case_study`.
    """

    name: ClassVar[str]
    aliases: ClassVar[tuple[str, ...]] = ()
    # (field, default); REQUIRED marks a mandatory argument.
    fields: ClassVar[tuple[tuple[str, Any], ...]] = ()
    positional: ClassVar[tuple[str, ...]] = ()
    # bare words accepted in an argument list: word -> (field, value)
    flags: ClassVar[dict[str, tuple[str, Any]]] = {}
    # which fields the shorthand fills: convK-C/S -> kernel, channels, stride
    shorthand: ClassVar[tuple[str | None, str | None, str | None]] = (None, None, None)
    min_inputs: ClassVar[int] = 1
    max_inputs: ClassVar[int | None] = 1
    activation: ClassVar[bool] = False  # an elementwise nonlinearity
    materializes: ClassVar[bool] = True  # allocates its output in eval-mode forward (not in-place, not a view)
    takes_act: ClassVar[bool] = False  # accepts the `act=` pseudo-argument (conv, fc, deconv)
    doc: ClassVar[str] = ""

    # -- facts (see the class docstring); no defaults: each op declares them
    writable: ClassVar[bool]
    family: ClassVar[Family]
    paper_kind: ClassVar[str | None]
    saves: ClassVar[Saved]
    flat_order: ClassVar[FlatOrder]
    torch_module: ClassVar[bool]
    overwritable: ClassVar[bool]
    commutative: ClassVar[bool]
    foldable: ClassVar[bool]
    fold_target: ClassVar[bool]
    weights: ClassVar[tuple[Weight, ...]]
    fans: ClassVar[Fans | None] = None  # declared by the ops with a kernel (see the class docstring)
    #: The arguments that only size the op's tensors (a conv's ``c``, ``k`` and padding), for the ops whose tensors
    #: a smaller layer can take as a slice of a larger one's: the leading channels, the centred window of a
    #: kernel (a one-shot supernet's shared candidates, cnndsl.search.supernet). None: each size is its own.
    sizing: ClassVar[frozenset[str] | None] = None
    plugin: ClassVar[bool] = False  # registered through cnndsl.ops (a plugin op, written by its Emit hooks)

    # -- arguments
    def convert(self, field: str, value: Any, span: Span | None) -> Any:
        return value

    def finish(self, args: dict, span: Span | None) -> dict:
        return args

    def normalize(self, given: dict, span: Span | None) -> dict:
        """Fill defaults, validate and canonicalise arguments (what the IR stores)."""
        known = {f for f, _ in self.fields}
        for key in given:
            if key not in known:
                self.unknown_argument(key, span)
        args = {}
        for f, default in self.fields:
            if f in given:
                args[f] = self.convert(f, given[f], span)
            elif default is REQUIRED:
                _bad(f"'{self.name}' needs the argument '{f}'", span, self.doc or None)
            else:
                args[f] = self.convert(f, default, span) if default is not None else None
        return self.finish(args, span)

    def unknown_argument(self, key: str, span: Span | None):
        """Raise the error for an argument this op does not take, with the nearest one as a hint."""
        known = sorted(f for f, _ in self.fields)
        alias = _ARGUMENT_ALIASES.get(key.lower())
        close = [alias] if alias in known else difflib.get_close_matches(key, known, 1)
        hint = f"did you mean '{close[0]}'?" if close else \
            f"'{self.name}' takes: {', '.join(known)}" if known else f"'{self.name}' takes no arguments"
        _bad(f"'{self.name}' has no argument '{key}'", span, hint)

    # -- semantics
    def infer(self, x: Shape, args: dict, span: Span | None, warn: Warn | None = None) -> Shape:
        """Output shape for one input (ops with several inputs override :meth:`infer_many`)."""
        return x

    def infer_many(self, xs: list[Shape], args: dict, span: Span | None, warn: Warn | None = None) -> Shape:
        return self.infer(xs[0], args, span, warn)

    def count_params(self, xs: list[Shape], args: dict) -> int:
        return 0

    def count_macs(self, xs: list[Shape], args: dict, out: Shape) -> int:
        """Multiply-accumulates of conv and fc layers (the papers' "FLOPs"); 0 for the rest."""
        return 0

    def commutes(self, args: dict) -> bool:
        """Whether the operands may be swapped with these arguments (the architecture hash's question)."""
        return self.commutative

    # -- paper spellings
    def short_form(self, args: dict) -> str:
        """The layer in the papers' short form with its non-default arguments: ``conv3-64/2``, ``maxpool3/2 ceil``.

        Graph boxes, summary rows and hovers show it.
        """
        return self.name

    def case_study(self, x: Shape, args: dict) -> tuple[str, str] | None:
        """The layer's name and weights in the VGG case study's listing (``CONV3-64``, ``(3*3*3)*64 = 1,728``).

        None for a layer the listing names by its short form in capitals and counts by its
        parameters, and leaves out when it has none.
        """
        return None


OPS: dict[str, Op] = {}
_SPELLINGS: dict[str, str] = {}


def _undeclared(cls: type[Op]) -> list[str]:
    """The facts that neither ``cls`` nor an abstract base between it and :class:`Op` declares."""
    bases = [k for k in cls.__mro__ if issubclass(k, Op) and k is not Op]
    return [f for f in FACTS if not any(f in vars(k) for k in bases)]


def register(cls: type[Op]) -> type[Op]:
    """Register a final op class in :data:`OPS` (under its name and aliases); it must declare every fact."""
    missing = _undeclared(cls)
    if missing:
        raise TypeError(f"op '{cls.name}' ({cls.__name__}) declares no {', '.join(missing)}; see Op's docstring")
    op = cls()
    OPS[cls.name] = op
    for spelling in (cls.name, *cls.aliases):
        _SPELLINGS[spelling.lower()] = cls.name
    return cls


def lookup(spelling: str) -> Op | None:
    """The op for a spelling (case-insensitive, aliases included), or None."""
    name = _SPELLINGS.get(spelling.lower())
    return OPS[name] if name else None


def spellings() -> list[str]:
    """Every spelling of every op (names and aliases, lower case), sorted."""
    return sorted(_SPELLINGS)


# ----------------------------------------------------------------------------- plugin ops (see cnndsl.ops)


@dataclass(frozen=True)
class Emit:
    """How one backend writes a plugin op: one of a plugin op's ``torch_emit``, ``jax_emit`` and ``flax_emit``.

    ``name`` is what the generated code calls: the ``nn.Module`` class (PyTorch) or ``nnx.Module`` class (Flax
    NNX), built once per layer with the keywords ``args`` and called on the layer's input; for JAX, the forward
    function ``name(params, x, **args)``, whose variables ``init(key, **args, dtype=...)`` makes. It comes from
    ``source`` (its definitions, copied into the generated file, which stays self-contained) or from ``module``
    (an importable module: the generated file imports it, and runs only where it is installed). ``args`` names
    the layer's arguments to pass, and ``in_channels`` / ``in_features``, its input's channels / values.
    :func:`cnndsl.ops.register` checks every part.
    """

    name: str
    source: str | None = None
    module: str | None = None
    args: tuple[str, ...] = ()
    init: str | None = None

    def names(self) -> tuple[str, ...]:
        """The module-level names the generated file takes for this op: ``name`` (and JAX's ``init``)."""
        return (self.name,) if self.init is None else (self.name, self.init)


def unregister(name: str) -> None:
    """Remove plugin op ``name`` (and its spellings) from the registry; built-in ops stay."""
    op = OPS.get(name)
    if op is None or not op.plugin:
        raise KeyError(f"no plugin op {name!r}")
    del OPS[name]
    for spelling in [s for s, n in _SPELLINGS.items() if n == name]:
        del _SPELLINGS[spelling]


def _spatial(op: Op, x: Shape, span) -> tuple[int, int, int]:
    if len(x) != 3:
        raise CnnShapeError(f"'{op.name}' needs a feature map (C x H x W), got a flat vector of {x[0]}", span,
                            "a feature map was flattened earlier (by fc or flatten)")
    return x  # type: ignore[return-value]


def _two(op: Op, xs: list[Shape], span) -> tuple[Shape, Shape]:
    """The operands of an op that takes two, or the error for one written as a layer of its own (one operand)."""
    if len(xs) != 2:
        raise CnnArgumentError(f"'{op.name}' takes 2 inputs, got {len(xs)}", span, op.doc or None)
    return xs[0], xs[1]


def _window_out(op: Op, size: int, pad: tuple[int, int], k: int, s: int, d: int, axis: str, span, warn,
                ceil: bool = False) -> int:
    padded = size + pad[0] + pad[1]
    eff = d * (k - 1) + 1
    if eff > padded:
        raise CnnShapeError(
            f"'{op.name}' kernel {eff} is larger than its {'padded ' if sum(pad) else ''}input {axis} {padded}",
            span, "use a smaller kernel, more padding, or a larger input (--input)")
    if ceil:
        out = -(-(padded - eff) // s) + 1
        if (out - 1) * s >= size + pad[0]:
            out -= 1
        return out
    out = (padded - eff) // s + 1
    last = (out - 1) * s + eff - 1  # last padded index a window touches
    # Only windows that tile the input (kernel >= stride) can "not fit": a 1x1/2 projection skips
    # every other row by design, the last one included.
    if warn is not None and eff >= s and last < pad[0] + size - 1:
        dropped = pad[0] + size - 1 - last
        warn(CnnDslWarning(
            f"stride {s} doesn't fit: ({size} + {pad[0] + pad[1]} - {eff}) / {s} + 1 = "
            f"{(padded - eff) / s + 1:.2f}; taking the floor, {out}, and ignoring the last {dropped} input "
            f"{'row' if axis == 'height' else 'column'}{'s' if dropped > 1 else ''}",
            span, "pad the input or pick a stride that divides (input + padding - kernel)"))
    return out


class _Conv(Op):
    fields = (("c", REQUIRED), ("k", REQUIRED), ("s", 1), ("p", "same"), ("d", 1), ("groups", 1), ("bias", True))
    positional = ("c", "k", "s")
    flags: ClassVar[dict[str, tuple[str, Any]]] = {"valid": ("p", "valid"), "same": ("p", "same"), "nobias": ("bias", False)}
    shorthand = ("k", "c", "s")
    takes_act = True
    writable = True
    family = Family.CONV
    saves = Saved.INPUT
    flat_order = FlatOrder.MIXES
    torch_module = True
    overwritable = True
    commutative = False
    foldable = False

    def convert(self, field, v, span):
        if field in ("k", "s", "d"):
            return as_pair(field, v, span)
        if field in ("c", "groups"):
            return as_int(field, v, span)
        if field == "bias":
            return as_bool(field, v, span)
        return v

    def finish(self, args, span):
        args["p"] = as_padding(args["p"], args["k"], args["d"], span)
        if args["c"] % args["groups"]:
            _bad(f"{args['c']} output channels do not split into {args['groups']} groups", span,
                 "groups must divide both the input and the output channels")
        return args

    def _check_groups(self, cin, args, span):
        if cin % args["groups"]:
            raise CnnShapeError(f"{cin} input channels do not split into {args['groups']} groups", span,
                                "groups must divide both the input and the output channels")

    def short_form(self, args):
        text = f"{self.name}{_pair_text(args['k'])}-{args['c']}"
        if _pair_text(args["s"]) != "1":
            text += f"/{_pair_text(args['s'])}"
        extra = []
        if _pair_text(args["d"]) != "1":
            extra.append(f"d={_pair_text(args['d'])}")
        if args["groups"] != 1:
            extra.append(f"g={args['groups']}")
        return " ".join([text, *extra])


@register
class Conv(_Conv):
    """2-D convolution: ``convK-C/S``, ``convKxL-C``, or ``conv(c=, k=, s=, p=, d=, groups=, bias=)``."""
    sizing = frozenset({"c", "k", "p"})

    name = "conv"
    doc = "convK-C/S, e.g. conv3-64 or conv7-64/2; long form conv(c=64, k=3, s=1, p=same)"
    paper_kind = "convolution"
    fold_target = True
    weights = (Weight("weight", "kernel", torch_axes="o i h w", jax_axes="h w i o"),
               Weight("bias", "bias", when="bias"))
    fans = Fans(("in_channels/groups",), ("c",), receptive=("k",))  # of the (c, in / g, kh, kw) weight

    def infer(self, x, args, span, warn=None):
        c, h, w = _spatial(self, x, span)
        self._check_groups(c, args, span)
        (kh, kw), (sh, sw), (dh, dw) = args["k"], args["s"], args["d"]
        return (args["c"],
                _window_out(self, h, args["p"][0], kh, sh, dh, "height", span, warn),
                _window_out(self, w, args["p"][1], kw, sw, dw, "width", span, warn))

    def count_params(self, xs, args):
        kh, kw = args["k"]
        return args["c"] * (xs[0][0] // args["groups"]) * kh * kw + (args["c"] if args["bias"] else 0)

    def count_macs(self, xs, args, out):
        kh, kw = args["k"]
        return out[0] * out[1] * out[2] * (xs[0][0] // args["groups"]) * kh * kw

    def case_study(self, x, args):
        (kh, kw), c, cin = args["k"], args["c"], x[0] // args["groups"]
        return f"CONV{_pair_text(args['k'])}-{c}", f"({kh}*{kw}*{cin})*{c} = {kh * kw * cin * c:,}"


@register
class Deconv(_Conv):
    """Transposed convolution (FCN/U-Net up-convolution): ``deconvK-C/S``."""
    sizing = frozenset({"c", "k", "p", "output_padding"})

    name = "deconv"
    aliases = ("upconv", "convtranspose")
    fields = (("c", REQUIRED), ("k", REQUIRED), ("s", None), ("p", 0), ("output_padding", 0), ("d", 1),
              ("groups", 1), ("bias", True))
    flags: ClassVar[dict[str, tuple[str, Any]]] = {"nobias": ("bias", False)}
    doc = "deconvK-C/S, e.g. deconv2-512/2 (stride defaults to the kernel size)"
    paper_kind = name
    fold_target = False  # fold_state_dict scales a weight's first axis, which is a deconv's input
    # PyTorch's ConvTranspose2d weight is I x O/g x kh x kw; JAX keeps the kernel of the convolution it
    # transposes, grouped as a conv's: entry [a, b, i, g*O/g + o] is PyTorch's [g*I/g + i, o, a, b]
    weights = (Weight("weight", "kernel", torch_axes="(g i) o h w", jax_axes="h w i (g o)", groups="groups",
                      flax_flipped=("h", "w")),
               Weight("bias", "bias", when="bias"))
    fans = Fans(("c/groups",), ("in_channels",), receptive=("k",))  # of the (in, c / g, kh, kw) weight

    def convert(self, field, v, span):
        if field == "output_padding":
            return as_pair(field, v, span, 0)
        if field == "s" and v is None:
            return None
        return super().convert(field, v, span)

    def finish(self, args, span):
        if args["s"] is None:
            args["s"] = args["k"]
        args = super().finish(args, span)
        if any(lo != hi for lo, hi in args["p"]):
            _bad("a transposed convolution takes symmetric padding", span)
        return args

    def infer(self, x, args, span, warn=None):
        c, h, w = _spatial(self, x, span)
        self._check_groups(c, args, span)
        outs = []
        for size, (lo, hi), k, s, d, op in zip((h, w), args["p"], args["k"], args["s"], args["d"],
                                              args["output_padding"]):
            out = (size - 1) * s - lo - hi + d * (k - 1) + op + 1
            if out < 1:
                raise CnnShapeError(f"'deconv' output size would be {out}", span, "use less padding")
            outs.append(out)
        return (args["c"], outs[0], outs[1])

    def count_params(self, xs, args):
        kh, kw = args["k"]
        return xs[0][0] * (args["c"] // args["groups"]) * kh * kw + (args["c"] if args["bias"] else 0)

    def count_macs(self, xs, args, out):
        kh, kw = args["k"]
        c, h, w = xs[0]
        return c * h * w * (args["c"] // args["groups"]) * kh * kw


class _Pool(Op):
    fields = (("k", 2), ("s", None), ("p", 0), ("ceil", False))
    positional = ("k", "s")
    flags: ClassVar[dict[str, tuple[str, Any]]] = {"ceil": ("ceil", True), "valid": ("p", "valid"), "same": ("p", "same")}
    shorthand = ("k", None, "s")
    writable = True
    family = Family.POOL
    flat_order = FlatOrder.MIXES
    torch_module = True
    overwritable = False
    commutative = False
    foldable = False
    fold_target = False
    weights = ()

    def convert(self, field, v, span):
        if field == "k":
            return as_pair(field, v, span)
        if field == "s":
            return None if v is None else as_pair(field, v, span)
        if field in ("ceil", "count_include_pad"):
            return as_bool(field, v, span)
        return v

    def finish(self, args, span):
        if args["s"] is None:
            args["s"] = args["k"]
        args["p"] = as_padding(args["p"], args["k"], (1, 1), span)
        for (lo, hi), k in zip(args["p"], args["k"]):
            if max(lo, hi) > k // 2:
                _bad(f"pooling padding {max(lo, hi)} is more than half the kernel {k}", span,
                     "PyTorch and XLA reject windows that see only padding")
        return args

    def infer(self, x, args, span, warn=None):
        c, h, w = _spatial(self, x, span)
        (kh, kw), (sh, sw) = args["k"], args["s"]
        return (c,
                _window_out(self, h, args["p"][0], kh, sh, 1, "height", span, warn, args["ceil"]),
                _window_out(self, w, args["p"][1], kw, sw, 1, "width", span, warn, args["ceil"]))

    def short_form(self, args):
        text = f"{self.name}{_pair_text(args['k'])}"
        if _pair_text(args["s"]) != _pair_text(args["k"]):
            text += f"/{_pair_text(args['s'])}"
        pad = _pad_text(args["p"])
        return " ".join([text, *([f"p={pad}"] if pad else []), *(["ceil"] if args["ceil"] else [])])

    def case_study(self, x, args):
        return f"POOL{_pair_text(args['k'])}", "0"


@register
class MaxPool(_Pool):
    """Max pooling: ``maxpool`` (2x2, stride 2), ``maxpoolK/S``, ``maxpool3/2(ceil)``."""

    name = "maxpool"
    aliases = ("pool", "max-pool", "maxpooling")
    paper_kind = "max pool"
    saves = Saved.INPUT | Saved.INDICES


@register
class AvgPool(_Pool):
    """Average pooling: ``avgpoolK/S``; ``count_include_pad`` as PyTorch (default true)."""

    name = "avgpool"
    aliases = ("avg-pool", "avgpooling")
    fields = _Pool.fields + (("count_include_pad", True),)
    paper_kind = "avg pool"
    saves = Saved.NOTHING


@register
class GlobalAvgPool(Op):
    """Global average pooling to C x 1 x 1 (``gap``)."""

    name = "gap"
    aliases = ("globalavgpool", "global-avg-pool")
    writable = True
    family = Family.POOL
    paper_kind = "avg pool"
    saves = Saved.NOTHING
    flat_order = FlatOrder.MIXES
    torch_module = True
    overwritable = False
    commutative = False
    foldable = False
    fold_target = False
    weights = ()

    def infer(self, x, args, span, warn=None):
        c, _, _ = _spatial(self, x, span)
        return (c, 1, 1)

    def case_study(self, x, args):
        return "GAP", "0"


@register
class AdaptiveAvgPool(Op):
    """Average pooling to a fixed output size, as PyTorch's AdaptiveAvgPool2d: ``adaptiveavgpool(7)``."""

    name = "adaptiveavgpool"
    fields = (("size", REQUIRED),)
    positional = ("size",)
    writable = True
    family = Family.POOL
    paper_kind = name
    saves = Saved.NOTHING
    flat_order = FlatOrder.MIXES
    torch_module = True
    overwritable = False
    commutative = False
    foldable = False
    fold_target = False
    weights = ()

    def convert(self, field, v, span):
        return as_pair(field, v, span)

    def infer(self, x, args, span, warn=None):
        c, _, _ = _spatial(self, x, span)
        return (c, *args["size"])

    def short_form(self, args):
        return f"adaptiveavgpool {_pair_text(args['size'])}"


@register
class FC(Op):
    """Fully connected layer ``fc-N``; flattens a feature map first (C, H, W order)."""
    sizing = frozenset({"c"})

    name = "fc"
    aliases = ("linear", "dense", "fullyconnected")
    fields = (("c", REQUIRED), ("bias", True))
    positional = ("c",)
    flags: ClassVar[dict[str, tuple[str, Any]]] = {"nobias": ("bias", False)}
    shorthand = (None, "c", None)
    takes_act = True
    doc = "fc-N, e.g. fc-4096"
    writable = True
    family = Family.DENSE
    paper_kind = "linear"
    saves = Saved.INPUT
    flat_order = FlatOrder.FRESH  # over a feature map it flattens it first, but its output is its neurons
    torch_module = True
    overwritable = True
    commutative = False
    foldable = False
    fold_target = False
    weights = (Weight("weight", "kernel", torch_axes="o i", jax_axes="i o", flat_axis="i"),
               Weight("bias", "bias", when="bias"))
    fans = Fans(("in_features",), ("c",))  # of the (c, in) weight: a feature map's every value is an input

    def convert(self, field, v, span):
        return as_bool(field, v, span) if field == "bias" else as_int(field, v, span)

    def infer(self, x, args, span, warn=None):
        return (args["c"],)

    def count_params(self, xs, args):
        return math.prod(xs[0]) * args["c"] + (args["c"] if args["bias"] else 0)

    def count_macs(self, xs, args, out):
        return math.prod(xs[0]) * args["c"]

    def short_form(self, args):
        return f"fc-{args['c']}"

    def case_study(self, x, args):
        fan_in = "*".join(str(d) for d in (*x[1:], x[0])) if len(x) == 3 else str(x[0])
        return "FC", f"{fan_in}*{args['c']} = {math.prod(x) * args['c']:,}"


@register
class Pointwise(Op):
    """A fully connected layer at each position of a feature map, over its channels: ``pointwise-N``.

    ConvNeXt's channels-last ``nn.Linear``: a 1x1 convolution whose weight is 2-D (N x C), as torchvision
    stores it, so that its ``state_dict`` loads as it is.
    """
    sizing = frozenset({"c"})

    name = "pointwise"
    fields = (("c", REQUIRED), ("bias", True))
    positional = ("c",)
    flags: ClassVar[dict[str, tuple[str, Any]]] = {"nobias": ("bias", False)}
    shorthand = (None, "c", None)
    takes_act = True
    doc = "pointwise-N, e.g. pointwise-384: a linear layer over the channels at each position of a feature map"
    writable = True
    family = Family.DENSE
    paper_kind = "linear"
    saves = Saved.INPUT
    flat_order = FlatOrder.FRESH
    torch_module = True
    overwritable = True
    commutative = False
    foldable = False
    fold_target = False
    weights = (Weight("weight", "kernel", torch_axes="o i", jax_axes="i o"),
               Weight("bias", "bias", when="bias"))
    fans = Fans(("in_features",), ("c",))  # of the (c, in) weight: the input's channels are its features

    def convert(self, field, v, span):
        return as_bool(field, v, span) if field == "bias" else as_int(field, v, span)

    def infer(self, x, args, span, warn=None):
        if len(x) != 3:
            raise CnnShapeError(f"'pointwise' needs a feature map (C x H x W), got a flat vector of {x[0]}", span,
                                f"a flat vector takes fc-{args['c']}")
        return (args["c"], x[1], x[2])

    def count_params(self, xs, args):
        return xs[0][0] * args["c"] + (args["c"] if args["bias"] else 0)

    def count_macs(self, xs, args, out):
        return xs[0][0] * math.prod(out)

    def short_form(self, args):
        return f"pointwise-{args['c']}"


@register
class Flatten(Op):
    """Flatten a feature map to a vector (C, H, W order)."""

    name = "flatten"
    materializes = False
    writable = True
    family = Family.RESHAPE
    paper_kind = name
    saves = Saved.NOTHING
    flat_order = FlatOrder.FLATTENS
    torch_module = True
    overwritable = False
    commutative = False
    foldable = False
    fold_target = False
    weights = ()

    def infer(self, x, args, span, warn=None):
        return (math.prod(x),)


class _Activation(Op):
    activation = True
    materializes = False  # applied in place
    writable = True
    family = Family.ACTIVATION
    saves = Saved.OUTPUT
    flat_order = FlatOrder.KEEPS
    torch_module = True
    overwritable = False
    commutative = False
    foldable = False
    fold_target = False
    weights = ()


@register
class ReLU(_Activation):
    """Rectified linear unit."""

    name = "relu"
    paper_kind = None


@register
class Tanh(_Activation):
    name = "tanh"
    materializes = True
    paper_kind = name


@register
class Sigmoid(_Activation):
    name = "sigmoid"
    materializes = True
    paper_kind = name


@register
class Softmax(_Activation):
    """Softmax over the channels (the class scores)."""

    name = "softmax"
    aliases = ("soft-max",)
    materializes = True
    paper_kind = "softmax"


# The activations of the modern CNNs. Those torchvision applies in place (ReLU6 in MobileNetV2, Hardswish in
# MobileNetV3, SiLU in EfficientNet) allocate nothing, as ReLU; what each saves is what autograd keeps for it.


class _OutOfPlaceActivation(_Activation):
    """An activation PyTorch does not run in place: it allocates its output and keeps its input for backward
    (none of these is in the papers' tables)."""

    materializes = True
    saves = Saved.INPUT
    paper_kind = None


class _OneFloatActivation(_OutOfPlaceActivation):
    """An activation with one real parameter (its only field, positional)."""

    def convert(self, field, v, span):
        return as_float(field, v, span)


@register
class ReLU6(_Activation):
    """ReLU clipped at 6, ``min(max(x, 0), 6)`` (MobileNetV2)."""

    name = "relu6"
    paper_kind = None


@register
class SiLU(_Activation):
    """Sigmoid-weighted linear unit, ``x * sigmoid(x)``: swish with beta 1 (EfficientNet)."""

    name = "silu"
    aliases = ("swish",)
    saves = Saved.INPUT
    paper_kind = None


@register
class Hardswish(_Activation):
    """Hard swish, ``x * relu6(x + 3) / 6`` (MobileNetV3's h-swish)."""

    name = "hardswish"
    aliases = ("h-swish", "hard-swish")
    saves = Saved.INPUT
    paper_kind = None


@register
class Hardsigmoid(_OutOfPlaceActivation):
    """Hard sigmoid, ``relu6(x + 3) / 6`` (MobileNetV3's squeeze-and-excitation gate)."""

    name = "hardsigmoid"
    aliases = ("h-sigmoid", "hard-sigmoid")


@register
class GELU(_OutOfPlaceActivation):
    """Gaussian error linear unit, ``x * Phi(x)`` (ConvNeXt): exact, or ``gelu(approximate=tanh)``."""

    name = "gelu"
    fields = (("approximate", "none"),)
    positional = ("approximate",)
    APPROXIMATIONS = ("none", "tanh")  # PyTorch's names
    doc = "gelu, or gelu(approximate=tanh) for the tanh approximation"

    def convert(self, field, v, span):
        if v not in self.APPROXIMATIONS:
            _bad(f"'gelu' has no approximation {v!r}", span, "approximate=none (exact, the default) or approximate=tanh")
        return v

    def short_form(self, args):
        return "gelu" if args["approximate"] == "none" else f"gelu {args['approximate']}"


@register
class LeakyReLU(_OneFloatActivation):
    """Leaky ReLU, ``x`` for x >= 0 and ``negative_slope * x`` below: ``leakyrelu``, ``leakyrelu(0.2)``."""

    name = "leakyrelu"
    aliases = ("leaky-relu",)
    fields = (("negative_slope", 0.01),)
    positional = ("negative_slope",)

    def short_form(self, args):
        return "leakyrelu" if args["negative_slope"] == 0.01 else f"leakyrelu {args['negative_slope']:g}"


@register
class ELU(_OneFloatActivation):
    """Exponential linear unit, ``x`` for x > 0 and ``alpha * (exp(x) - 1)`` below: ``elu``, ``elu(0.5)``."""

    name = "elu"
    fields = (("alpha", 1.0),)
    positional = ("alpha",)

    def short_form(self, args):
        return "elu" if args["alpha"] == 1.0 else f"elu alpha={args['alpha']:g}"


@register
class Mish(_OutOfPlaceActivation):
    """Mish, ``x * tanh(softplus(x))``."""

    name = "mish"


@register
class Identity(Op):
    name = "identity"
    aliases = ("skip",)  # NAS-Bench-201's skip-connect edge
    materializes = False
    writable = True
    family = Family.IDENTITY
    paper_kind = name
    saves = Saved.NOTHING
    flat_order = FlatOrder.KEEPS
    torch_module = True
    overwritable = False
    commutative = False
    foldable = False
    fold_target = False
    weights = ()


@register
class Zero(Op):
    """NAS-Bench-201's ``none`` edge as the benchmark builds it: the input times zero, shape kept (its ``Zero``
    module, ``x.mul(0.)``). Unlike the language's ``none``, which builds nothing and prunes the layers that only fed
    it, the layers before and after a ``zero`` are built and counted, as in the benchmark's networks.
    ``zero(prune=true)`` is ``none``: resolving drops it, and with it those layers."""

    name = "zero"
    fields = (("prune", False),)
    doc = "zero: the input times zero (NAS-Bench-201's none edge, its layers kept); zero(prune=true) is none"
    writable = True
    family = Family.IDENTITY
    paper_kind = None
    saves = Saved.NOTHING
    flat_order = FlatOrder.KEEPS
    torch_module = False
    overwritable = True
    commutative = False
    foldable = False
    fold_target = False
    weights = ()

    def convert(self, field, v, span):
        return as_bool(field, v, span)


@register
class Dropout(Op):
    """Dropout with rate ``p`` (``dropout``, ``dropout(0.7)``); identity in eval mode."""

    name = "dropout"
    fields = (("p", 0.5),)
    positional = ("p",)
    materializes = False
    writable = True
    family = Family.REGULARISATION
    paper_kind = "dropout"
    saves = Saved.MASK
    flat_order = FlatOrder.KEEPS
    torch_module = True
    overwritable = False
    commutative = False
    foldable = False
    fold_target = False
    weights = ()

    def convert(self, field, v, span):
        return as_float(field, v, span, 0.0, 1.0)

    def short_form(self, args):
        return f"dropout {args['p']:g}"


@register
class DropPath(Op):
    """Stochastic depth (``droppath(0.2)``): in training, each sample's whole value is dropped with probability
    ``p`` and the kept ones are scaled by 1 / (1 - p), as torchvision's ``StochasticDepth(p, "row")``; the
    identity in eval mode."""

    name = "droppath"
    aliases = ("drop-path", "stochasticdepth", "stochastic-depth")
    fields = (("p", REQUIRED),)
    positional = ("p",)
    doc = "droppath(p) with 0 <= p < 1, e.g. droppath(0.2)"
    materializes = False
    writable = True
    family = Family.REGULARISATION
    paper_kind = "stochastic depth"
    saves = Saved.NOTHING  # its mask holds one value per sample, not per value
    flat_order = FlatOrder.KEEPS
    torch_module = True
    overwritable = False
    commutative = False
    foldable = False
    fold_target = False
    weights = ()

    def convert(self, field, v, span):
        p = as_float(field, v, span, 0.0, 1.0)
        if p == 1.0:
            _bad("'droppath' cannot drop every sample (p=1)", span,
                 "give a rate below 1 (the kept samples are scaled by 1 / (1 - p))")
        return p

    def short_form(self, args):
        return f"droppath {args['p']:g}"


@register
class BatchNorm(Op):
    """Batch normalisation over channels: ``bn``, ``bn(eps=0.001, momentum=0.1)``."""
    sizing = frozenset()  # its tensors follow its input's channels

    name = "bn"
    aliases = ("batchnorm",)
    fields = (("eps", 1e-5), ("momentum", 0.1), ("affine", True))
    writable = True
    family = Family.NORM
    paper_kind = None
    saves = Saved.INPUT
    flat_order = FlatOrder.KEEPS
    torch_module = True
    overwritable = True
    commutative = False
    foldable = True
    fold_target = False
    weights = (Weight("weight", "scale", flat_axis="c", when="affine"),
               Weight("bias", "bias", flat_axis="c", when="affine"),
               Weight("running_mean", "mean", "batch_stats", flat_axis="c"),
               Weight("running_var", "var", "batch_stats", flat_axis="c"),
               Weight("num_batches_tracked", None, "batch_stats", torch_axes=""))

    def convert(self, field, v, span):
        if field == "affine":
            return as_bool(field, v, span)
        return as_float(field, v, span, 0.0, 1.0)

    def count_params(self, xs, args):
        return 2 * xs[0][0] if args["affine"] else 0


@register
class LRN(Op):
    """Local response normalisation across channels, PyTorch/Caffe constants (alpha is divided by size).

    Defaults are AlexNet's: size 5, alpha 1e-4, beta 0.75, k 2.
    """

    name = "lrn"
    fields = (("size", 5), ("alpha", 1e-4), ("beta", 0.75), ("k", 2.0))
    positional = ("size",)
    writable = True
    family = Family.NORM
    paper_kind = None
    saves = Saved.INPUT | Saved.OUTPUT
    flat_order = FlatOrder.MIXES
    torch_module = True
    overwritable = False
    commutative = False
    foldable = False
    fold_target = False
    weights = ()

    def convert(self, field, v, span):
        return as_int(field, v, span) if field == "size" else as_float(field, v, span, 0.0)

    def infer(self, x, args, span, warn=None):
        return _spatial(self, x, span)

    def short_form(self, args):
        return f"lrn {args['size']}"


def _largest_divisor(c: int, at_most: int) -> int:
    """The largest divisor of ``c`` not above ``at_most`` (a hint's suggestion for a group count)."""
    return next(d for d in range(min(at_most, c, 4096), 0, -1) if c % d == 0)


@register
class LayerNorm(Op):
    """Layer normalisation, as PyTorch's LayerNorm: over the channels at each position of a feature map
    (ConvNeXt's ``LayerNorm2d``, or its ``nn.LayerNorm`` on a channels-last map), or over the features of a flat
    vector: ``layernorm``, ``ln(eps=1e-6)``."""
    sizing = frozenset()  # its tensors follow its input's channels

    name = "layernorm"
    aliases = ("ln",)
    fields = (("eps", 1e-5), ("affine", True))
    doc = "layernorm or ln, e.g. ln(eps=1e-6); affine=false leaves out the scale and the bias"
    writable = True
    family = Family.NORM
    paper_kind = None
    saves = Saved.INPUT
    flat_order = FlatOrder.KEEPS  # normalises over every feature of a vector, whatever their order
    torch_module = True
    overwritable = True
    commutative = False
    foldable = False
    fold_target = False
    weights = (Weight("weight", "scale", flat_axis="c", when="affine"),
               Weight("bias", "bias", flat_axis="c", when="affine"))

    def convert(self, field, v, span):
        return as_bool(field, v, span) if field == "affine" else as_float(field, v, span, 0.0, 1.0)

    def count_params(self, xs, args):
        return 2 * xs[0][0] if args["affine"] else 0


@register
class GroupNorm(Op):
    """Group normalisation, as PyTorch's GroupNorm: the channels in ``groups`` groups of consecutive channels,
    each normalised over its channels and every position: ``groupnorm(32)``, ``gn(32, eps=1e-6)``."""
    sizing = frozenset()  # its tensors follow its input's channels

    name = "groupnorm"
    aliases = ("gn",)
    fields = (("groups", REQUIRED), ("eps", 1e-5), ("affine", True))
    positional = ("groups",)
    doc = "groupnorm(groups), e.g. groupnorm(32); groups must divide the channels"
    writable = True
    family = Family.NORM
    paper_kind = None
    saves = Saved.INPUT
    flat_order = FlatOrder.MIXES  # its groups are runs of consecutive features
    torch_module = True
    overwritable = True
    commutative = False
    foldable = False
    fold_target = False
    weights = (Weight("weight", "scale", when="affine"), Weight("bias", "bias", when="affine"))

    def convert(self, field, v, span):
        if field == "groups":
            return as_int(field, v, span)
        return as_bool(field, v, span) if field == "affine" else as_float(field, v, span, 0.0, 1.0)

    def infer(self, x, args, span, warn=None):
        c, g = x[0], args["groups"]
        if c % g:
            raise CnnShapeError(f"{c} channels do not split into {g} groups for 'groupnorm'", span,
                                f"groups must divide the channels, e.g. groupnorm({_largest_divisor(c, g)})")
        return x

    def count_params(self, xs, args):
        return 2 * xs[0][0] if args["affine"] else 0

    def short_form(self, args):
        return f"groupnorm g={args['groups']}"


@register
class LayerScale(Op):
    """A learned scale per channel of a feature map, initialised to ``init`` (CaiT's and ConvNeXt's layer scale):
    ``layerscale``, ``layerscale(0.1)``.

    PyTorch holds it as torchvision's ConvNeXt does: no module of its own, but a bare C x 1 x 1 parameter of
    the module around it, named after the layer (``features.1.0.layer_scale``), that the forward multiplies by.
    """
    sizing = frozenset()  # its tensors follow its input's channels

    name = "layerscale"
    fields = (("init", 1e-6),)
    positional = ("init",)
    doc = "layerscale(init=1e-6), e.g. layerscale(1e-6)"
    writable = True
    family = Family.NORM  # a per-channel affine map, drawn with the normalisations
    paper_kind = None
    saves = Saved.INPUT
    flat_order = FlatOrder.KEEPS
    torch_module = False
    overwritable = True
    commutative = False
    foldable = False
    fold_target = False
    weights = (Weight("", "", torch_axes="c 1 1", jax_axes="c"),)

    def convert(self, field, v, span):
        return as_float(field, v, span)

    def infer(self, x, args, span, warn=None):
        return _spatial(self, x, span)

    def count_params(self, xs, args):
        return xs[0][0]

    def short_form(self, args):
        return "layerscale" if args["init"] == 1e-6 else f"layerscale {args['init']:g}"


@register
class ChannelShuffle(Op):
    """ShuffleNet's channel shuffle, ``shuffle(groups)``: the channels as a groups x (C / groups) grid, transposed."""

    name = "shuffle"
    aliases = ("channelshuffle", "channel-shuffle")
    fields = (("groups", REQUIRED),)
    positional = ("groups",)
    doc = "shuffle(groups), e.g. shuffle(2); groups must divide the channels"
    writable = True
    family = Family.RESHAPE
    paper_kind = "channel shuffle"
    saves = Saved.NOTHING
    flat_order = FlatOrder.MIXES
    torch_module = False  # torchvision's channel_shuffle is a function
    overwritable = False
    commutative = False
    foldable = False
    fold_target = False
    weights = ()

    def convert(self, field, v, span):
        return as_int(field, v, span)

    def infer(self, x, args, span, warn=None):
        c, h, w = _spatial(self, x, span)
        g = args["groups"]
        if c % g:
            below = next(d for d in range(min(g, c, 4096), 0, -1) if c % d == 0)
            raise CnnShapeError(f"{c} channels do not split into {g} groups for 'shuffle'", span,
                                f"groups must divide the channels, e.g. shuffle({below})")
        return (c, h, w)

    def short_form(self, args):
        return f"shuffle g={args['groups']}"


@register
class Slice(Op):
    """Channels ``start`` to ``stop - 1`` of a feature map (or features of a vector), ``slice(0, 58)``: one part of
    ShuffleNet v2's channel split, ``x.chunk(2, dim=1)``. A view of its input, as in PyTorch."""

    name = "slice"
    fields = (("start", REQUIRED), ("stop", REQUIRED))
    positional = ("start", "stop")
    doc = "slice(start, stop): channels start to stop - 1, e.g. slice(0, 58) and slice(58, 116) halve 116 channels"
    materializes = False  # a view
    writable = True
    family = Family.RESHAPE
    paper_kind = "channel split"
    saves = Saved.NOTHING
    flat_order = FlatOrder.MIXES  # which features a range takes depends on their order
    torch_module = False
    overwritable = False
    commutative = False
    foldable = False
    fold_target = False
    weights = ()

    def convert(self, field, v, span):
        if isinstance(v, int) and not isinstance(v, bool) and v < 0:
            _bad(f"'slice' counts channels from 0, got {field}={v}", span,
                 "a slice takes no negative index: slice(C - n, C) takes the last n of C channels")
        return as_int(field, v, span, minimum=0 if field == "start" else 1)

    def finish(self, args, span):
        start, stop = args["start"], args["stop"]
        if start >= stop:
            _bad(f"'slice' takes channels start to stop - 1, and start={start}, stop={stop} leaves none", span,
                 f"stop is past the last channel taken: slice({start}, {start + 1}) takes channel {start}")
        return args

    def infer(self, x, args, span, warn=None):
        what = "channels" if len(x) == 3 else "features"
        if args["stop"] > x[0]:
            n = args["stop"] - args["start"]
            hint = f"e.g. slice({x[0] - n}, {x[0]}), the last {n}" if n < x[0] else f"e.g. slice(0, {x[0]}), all of them"
            raise CnnShapeError(f"'slice' stop {args['stop']} is past the {x[0]} {what} of its input", span,
                                f"the {what} are 0 to {x[0] - 1}, and stop is one past the last taken: {hint}")
        return (args["stop"] - args["start"], *x[1:])

    def short_form(self, args):
        return f"slice {args['start']}:{args['stop']}"


@register
class Upsample(Op):
    """Upsampling by a scale, as PyTorch's ``interpolate(scale_factor=...)``: ``upsample`` (x2, nearest),
    ``upsample(2, bilinear)``, ``upsample(scale=2, mode=bilinear, align_corners=true)``, ``upsample(scale=(2, 1))``.

    The output size is the floor of the input's times the scale, and the source coordinates follow PyTorch:
    ``mode=nearest`` takes the pixel ``floor(i / scale)`` (PyTorch's ``nearest``, not ``nearest-exact``).
    """

    name = "upsample"
    aliases = ("interpolate", "upsampling")
    fields = (("scale", 2), ("mode", "nearest"), ("align_corners", False))
    positional = ("scale", "mode")
    flags: ClassVar[dict[str, tuple[str, Any]]] = {"nearest": ("mode", "nearest"), "bilinear": ("mode", "bilinear")}
    MODES = ("nearest", "bilinear")
    doc = "upsample(scale=2, mode=nearest|bilinear, align_corners=false), e.g. upsample(2, bilinear)"
    writable = True
    family = Family.RESHAPE
    paper_kind = "upsample"
    saves = Saved.NOTHING
    flat_order = FlatOrder.MIXES
    torch_module = False  # F.interpolate, as torchvision's segmentation heads
    overwritable = True
    commutative = False
    foldable = False
    fold_target = False
    weights = ()

    def convert(self, field, v, span):
        if field == "scale":
            return tuple(self._scale(x, span) for x in (v if isinstance(v, tuple) and len(v) == 2 else (v, v)))
        if field == "mode":
            if v not in self.MODES:
                _bad(f"'upsample' has no mode {v!r}", span, "mode is nearest (the default) or bilinear")
            return v
        return as_bool(field, v, span)

    @staticmethod
    def _scale(v: Any, span) -> int | float:
        if isinstance(v, tuple):
            _bad("'scale' takes one number or a pair (h, w)", span, "e.g. upsample(scale=2) or upsample(scale=(2, 1))")
        s = as_float("scale", v, span)
        if s <= 0:
            _bad(f"'scale' must be positive, got {v}", span, "upsample(2) doubles the height and the width")
        if s > MAX_INT:
            raise CnnLimitError(f"'scale' is too large: {v}", span, f"numbers in a network stay below {MAX_INT:,}")
        return int(s) if s.is_integer() else s

    def finish(self, args, span):
        if args["align_corners"] and args["mode"] != "bilinear":
            _bad(f"align_corners applies to bilinear upsampling, not {args['mode']}", span,
                 "upsample(mode=bilinear, align_corners=true), or leave align_corners out")
        return args

    def infer(self, x, args, span, warn=None):
        c, h, w = _spatial(self, x, span)
        out = []
        for size, s, axis in zip((h, w), args["scale"], ("height", "width")):
            n = math.floor(size * s)
            if n < 1:
                raise CnnShapeError(f"'upsample' by {s:g} leaves no {axis}: floor({size} * {s:g}) = 0", span,
                                    "a scale below 1 shrinks the feature map; use a larger scale")
            out.append(n)
        return (c, *out)

    def short_form(self, args):
        text = f"upsample ×{_pair_text(tuple(f'{s:g}' for s in args['scale']))}"
        return " ".join([text, *([args["mode"]] if args["mode"] != "nearest" else []),
                         *(["align_corners"] if args["align_corners"] else [])])


@register
class Resize(Op):
    """Its first operand, a feature map, resampled to the height and width of its second, as PyTorch's
    ``interpolate(x, size=...)``: the segmentation heads' ``F.interpolate(x, size=input_shape[-2:],
    mode="bilinear", align_corners=False)``. ``mode`` and ``align_corners`` are upsample's."""

    name = "resize"
    fields = (("mode", "nearest"), ("align_corners", False))
    positional = ("mode",)
    flags = Upsample.flags
    min_inputs = max_inputs = 2  # the map to resize, and the one whose size it takes
    doc = "resize(mode=nearest|bilinear, align_corners=false): to the height and width of a second operand"
    writable = True
    family = Family.RESHAPE
    paper_kind = "upsample"
    saves = Saved.NOTHING
    flat_order = FlatOrder.MIXES
    torch_module = False  # F.interpolate
    overwritable = True
    commutative = False
    foldable = False
    fold_target = False
    weights = ()

    def convert(self, field, v, span):
        if field == "mode":
            if v not in Upsample.MODES:
                _bad(f"'resize' has no mode {v!r}", span, "mode is nearest (the default) or bilinear")
            return v
        return as_bool(field, v, span)

    def finish(self, args, span):
        if args["align_corners"] and args["mode"] != "bilinear":
            _bad(f"align_corners applies to bilinear resizing, not {args['mode']}", span,
                 "resize(mode=bilinear, align_corners=true), or leave align_corners out")
        return args

    def infer_many(self, xs, args, span, warn=None):
        x, size = _two(self, xs, span)
        c, _, _ = _spatial(self, x, span)
        if len(size) != 3:
            raise CnnShapeError(f"'resize' takes its size from a feature map, got a flat vector of {size[0]}", span,
                                "the second operand gives the height and width: a feature map (an input, a label)")
        return (c, *size[1:])

    def short_form(self, args):
        return " ".join(["resize", *([args["mode"]] if args["mode"] != "nearest" else []),
                         *(["align_corners"] if args["align_corners"] else [])])


@register
class Concat(Op):
    """Channel concatenation of several branches; ``crop=true`` centre-crops them to the smallest (U-Net)."""

    name = "concat"
    fields = (("crop", False),)
    min_inputs, max_inputs = 1, None
    writable = True
    family = Family.MERGE
    paper_kind = name
    saves = Saved.NOTHING
    flat_order = FlatOrder.JOINS
    torch_module = False
    overwritable = False
    commutative = False
    foldable = False
    fold_target = False
    weights = ()

    def convert(self, field, v, span):
        return as_bool(field, v, span)

    def short_form(self, args):
        return "concat crop" if args["crop"] else "concat"

    def infer_many(self, xs, args, span, warn=None):
        ranks = {len(x) for x in xs}
        if len(ranks) > 1:
            raise CnnShapeError("concat of feature maps and flat vectors", span,
                                "flatten every branch (fc and flatten do), or none of them")
        if ranks == {1}:
            return (sum(x[0] for x in xs),)
        sizes = [x[1:] for x in xs]
        if args["crop"]:
            return (sum(x[0] for x in xs), min(s[0] for s in sizes), min(s[1] for s in sizes))
        if len(set(sizes)) > 1:
            shown = ", ".join(f"{x[0]}x{x[1]}x{x[2]}" for x in xs)
            raise CnnShapeError(f"concat branches differ in spatial size: {shown}", span,
                                "give each branch the same stride and padding, or use concat(crop=true)")
        return (sum(x[0] for x in xs), *sizes[0])


@register
class Add(Op):
    """Elementwise sum; ``scale`` multiplies the first operand (Inception-ResNet's residual scaling)."""

    name = "add"
    fields = (("scale", 1.0),)
    min_inputs, max_inputs = 2, None
    writable = True
    family = Family.MERGE
    paper_kind = name
    saves = Saved.NOTHING
    flat_order = FlatOrder.ALIGNS
    torch_module = False
    overwritable = True
    commutative = True
    foldable = False
    fold_target = False
    weights = ()

    def convert(self, field, v, span):
        return as_float(field, v, span)

    def commutes(self, args):
        return args["scale"] == 1.0  # the scale multiplies the first operand only

    def short_form(self, args):
        return "add" if args["scale"] == 1.0 else f"add ×{args['scale']:g}"

    def infer_many(self, xs, args, span, warn=None):
        if len(set(xs)) > 1:
            shown = ", ".join("x".join(map(str, x)) for x in xs)
            what = "channels" if len({x[0] for x in xs}) > 1 else "sizes"
            raise CnnShapeError(f"add operands differ in {what}: {shown}", span,
                                "a residual whose body changes the shape needs a projection shortcut")
        return xs[0]


@register
class Mul(Op):
    """Elementwise product of two operands of one shape, or of a feature map and a C x 1 x 1 gate that scales each
    of its channels: squeeze-and-excitation's ``scale * x`` (torchvision's ``SqueezeExcitation``)."""

    name = "mul"
    min_inputs = max_inputs = 2
    doc = "mul: the product of two branches, a feature map and its C x 1 x 1 gate (or two of one shape)"
    writable = True
    family = Family.MERGE
    paper_kind = "scale"  # SENet's Figure 2
    saves = Saved.INPUT  # each operand, for the other's gradient
    flat_order = FlatOrder.ALIGNS
    torch_module = False
    overwritable = True
    commutative = True
    foldable = False
    fold_target = False
    weights = ()
    SHAPE_HINT = "multiply maps of one shape, or a map by a C x 1 x 1 gate (gap, then 1x1 convolutions)"

    def infer_many(self, xs, args, span, warn=None):
        a, b = _two(self, xs, span)
        if a == b:
            return a
        shown = " and ".join("x".join(map(str, x)) for x in xs)
        if len(a) != len(b):
            raise CnnShapeError(f"'mul' of a feature map and a flat vector: {shown}", span,
                                "a gate is C x 1 x 1: squeeze with gap and excite with 1x1 convolutions "
                                "(conv1-C), which keep it a feature map, not with fc")
        if len(a) == 1:
            raise CnnShapeError(f"'mul' operands differ in length: {shown}", span, "multiply vectors of one length")
        gates = [x for x in xs if x[1:] == (1, 1)]
        full = next(x for x in xs if x not in gates) if len(gates) == 1 else None
        if a[0] != b[0]:
            raise CnnShapeError(f"'mul' operands differ in channels: {shown}", span,
                                f"the gate needs the {full[0]} channels of the map it scales: end it with "
                                f"conv1-{full[0]}" if full else self.SHAPE_HINT)
        if full is None:
            raise CnnShapeError(f"'mul' operands differ in size: {shown}", span, self.SHAPE_HINT)
        return full


@register
class PadShortcut(Op):
    """ResNet option A shortcut: subsample by the stride and zero-pad the extra channels (no parameters)."""

    name = "padshortcut"
    fields = (("c", REQUIRED), ("s", 1))
    writable = True
    family = Family.MERGE
    paper_kind = name
    saves = Saved.NOTHING
    flat_order = FlatOrder.MIXES
    torch_module = False
    overwritable = False
    commutative = False
    foldable = False
    fold_target = False
    weights = ()

    def convert(self, field, v, span):
        return as_int(field, v, span)

    def short_form(self, args):
        return f"padshortcut-{args['c']}/{args['s']}"

    def infer(self, x, args, span, warn=None):
        c, h, w = _spatial(self, x, span)
        if args["c"] < c:
            raise CnnShapeError(f"padshortcut cannot shrink {c} channels to {args['c']}", span)
        s = args["s"]
        return (args["c"], -(-h // s), -(-w // s))


@register
class Shortcut(Op):
    """A residual shortcut still to be decided (identity, projection or zero-padding).

    ``resolve_shortcuts`` replaces every one once shapes are known; no backend sees it.
    """

    name = "shortcut"
    fields = (("mode", "auto"), ("bn_eps", 1e-5), ("bn_momentum", 0.1))
    MODES = ("auto", "proj", "conv", "pad", "identity")
    min_inputs = max_inputs = 2  # the residual's input, and its body's output (for the shape to reach)
    writable = False
    family = Family.MERGE
    paper_kind = name
    saves = Saved.NOTHING
    flat_order = FlatOrder.MIXES
    torch_module = False
    overwritable = False
    commutative = False
    foldable = False
    fold_target = False
    weights = ()

    def infer_many(self, xs, args, span, warn=None):
        x, body = xs
        if args["mode"] == "identity" and x != body:
            raise CnnShapeError(f"identity shortcut of shape {'x'.join(map(str, x))} cannot be added to a body "
                                f"of shape {'x'.join(map(str, body))}", span,
                                "use residual(shortcut=proj)<...> or residual(shortcut=pad)<...>")
        if len(x) != len(body):
            raise CnnShapeError("a residual body must keep its input a feature map (or a vector)", span)
        return body

    def convert(self, field, v, span):
        if field == "mode":
            if v not in self.MODES:
                _bad(f"unknown shortcut {v!r}", span, "shortcut is one of " + ", ".join(self.MODES))
            return v
        return as_float(field, v, span, 0.0, 1.0)


@register
class Input(Op):
    """A network input (never written as a layer; ``input CxHxW`` declares it)."""

    name = "input"
    fields = (("shape", REQUIRED),)
    min_inputs, max_inputs = 0, 0
    DEFAULT_NAME = "input"  # the node name of a network's first input when the text does not name it
    writable = False
    family = Family.INPUT
    paper_kind = name
    saves = Saved.NOTHING
    flat_order = FlatOrder.FRESH
    torch_module = False
    overwritable = False
    commutative = False
    foldable = False
    fold_target = False
    weights = ()


#: The words written ``NAME< ... >`` (cnndsl/passes/resolve.py lowers them); ``choice< ... >`` is a search space's.
COMBINATORS = ("concat", "inception", "add", "residual", "aux", "seq", "scale", "split", "resize")
