"""CBAM, the Convolutional Block Attention Module (Woo et al., ECCV 2018), as a cnndsl plugin op.

Importing this package registers the op ``cbam`` (``cbam``, ``cbam(reduction=8)``, ``cbam(16, k=3)``, ``cbam3``):
a channel gate (average- and max-pooled maps through one shared MLP of two 1x1 convolutions, C -> C/r -> C)
followed by a spatial gate (the channels' mean and max through a k x k convolution), each a sigmoid that scales
the map. Unlike the paper, the spatial convolution has no batch norm after it, so the op holds parameters only.

PyTorch and JAX write the op from source (the generated files stay self-contained); Flax NNX imports
:mod:`cnndsl_cbam.nnx_cbam`.
"""

from __future__ import annotations

import ast
from pathlib import Path

from cnndsl.errors import CnnArgumentError, CnnShapeError
from cnndsl.ops import (
    Emit,
    Family,
    FlatOrder,
    Op,
    Saved,
    Weight,
    as_int,
    register,
)

_HERE = Path(__file__).resolve().parent


def definitions(filename: str, *names: str) -> str:
    """The source text of top-level definitions ``names`` of a module of this package (read, not imported: reading
    the PyTorch class does not import torch)."""
    text = (_HERE / filename).read_text(encoding="utf-8")
    found = {d.name: ast.get_source_segment(text, d) for d in ast.parse(text).body
             if isinstance(d, (ast.ClassDef, ast.FunctionDef))}
    return "\n\n\n".join(found[n] for n in names) + "\n"


def hidden(channels: int, reduction: int) -> int:
    """The width of the channel gate's MLP."""
    return max(1, channels // reduction)


@register
class CBAM(Op):
    """CBAM attention: a channel gate then a spatial gate, ``cbam(reduction=16, k=7)``; the output has the input's
    shape."""

    api_version = 1
    name = "cbam"
    fields = (("reduction", 16), ("k", 7))
    positional = ("reduction",)
    shorthand = ("k", None, None)  # cbam3: the spatial gate's kernel
    doc = "cbam(reduction=16, k=7): CBAM attention (channel, then spatial gate), e.g. cbam(8) or cbam3"
    writable = True
    family = Family.CONV
    paper_kind = "CBAM"
    saves = Saved.INPUT | Saved.OUTPUT
    flat_order = FlatOrder.KEEPS
    torch_module = True
    overwritable = False
    commutative = False
    foldable = False
    fold_target = False
    weights = (
        Weight("fc1.weight", "fc1_kernel", torch_axes="o i 1 1", jax_axes="i o"),
        Weight("fc1.bias", "fc1_bias"),
        Weight("fc2.weight", "fc2_kernel", torch_axes="o i 1 1", jax_axes="i o"),
        Weight("fc2.bias", "fc2_bias"),
        Weight("spatial.weight", "spatial_kernel", torch_axes="o i h w", jax_axes="h w i o"),
    )
    torch_emit = Emit("CBAM", source=definitions("torch_cbam.py", "CBAM"), args=("in_channels", "reduction", "k"))
    jax_emit = Emit("cbam", init="init_cbam", source=definitions("jax_cbam.py", "init_cbam", "cbam"),
                    args=("in_channels", "reduction", "k"))
    flax_emit = Emit("CBAM", module="cnndsl_cbam.nnx_cbam", args=("in_channels", "reduction", "k"))

    def convert(self, field, value, span):
        if isinstance(value, tuple) and field == "k":
            raise CnnArgumentError("'cbam' takes one kernel size, k", span, "the spatial gate's kernel is square: cbam7")
        n = as_int(field, value, span)
        if field == "k" and n % 2 == 0:
            raise CnnArgumentError(f"'cbam' needs an odd k, got {n}", span, "the spatial gate keeps the size: k = 3, 5, 7")
        return n

    def infer(self, x, args, span, warn=None):
        if len(x) != 3:
            raise CnnShapeError(f"'cbam' needs a feature map (C x H x W), got a flat vector of {x[0]}", span,
                                "put cbam before the classifier's flatten or fc")
        return x

    def count_params(self, xs, args):
        c, h, k = xs[0][0], hidden(xs[0][0], args["reduction"]), args["k"]
        return (c * h + h) + (h * c + c) + 2 * k * k

    def count_macs(self, xs, args, out):
        c, height, width = xs[0]
        h, k = hidden(c, args["reduction"]), args["k"]
        return 2 * (c * h + h * c) + height * width * 2 * k * k

    def short_form(self, args):
        parts = ["cbam" if args["k"] == 7 else f"cbam{args['k']}"]
        if args["reduction"] != 16:
            parts.append(f"r={args['reduction']}")
        return " ".join(parts)
