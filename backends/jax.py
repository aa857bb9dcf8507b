"""The JAX backend: a printer of the :mod:`~cnndsl.backends.plan` as pure JAX functions.

The generated module imports jax alone (no Flax, no cnndsl) and defines

* one pair of functions per class of the plan (a block shared by its instances): ``init_basic(key, *, c,
  dtype, param_dtype)`` makes one instance's variables and ``basic(params, stats, x, *, train)`` runs its
  forward; each takes, as keywords, the constructor parameters of the plan it needs (named after the .cnn
  block's own parameters) and only the arguments it uses (a block without batch norms has no ``stats``,
  returns no new ones; one without dropout has no ``rng``). The network's own forward calls them: a run of
  :data:`SCAN_MIN_RUN` or more alike blocks in a sequence (one class, the same arguments) through the
  ``_scan_blocks`` helper, in evaluation one ``jax.lax.scan`` whose step picks its instance's variables
  (so that XLA compiles the block once), in training a call per block; a shorter run block by block; init
  loops over a run. ResNet-152 is a few hundred lines, not thousands, and the variables keep one entry per
  instance (``params["layer3"]["7"]``);
* ``init(key, *, dtype=jnp.float32, param_dtype=None) -> variables``, ``variables = {"params": ...,
  "batch_stats": ...}`` nested by the layers' dotted names, as Flax lays them out (conv and fc ``kernel`` /
  ``bias``, batch norm ``scale`` / ``bias`` and ``mean`` / ``var``). Each layer draws from its own key: the
  network's key folded (``jax.random.fold_in``) with each component of the layer's dotted name in turn, a
  name as its CRC-32 and an index as itself, constants computed here (:func:`path_hash`). A layer's initial
  values depend on its name and shape alone: inserting a layer before it changes none of them.
  ``dtype`` is the variables' dtype and ``param_dtype`` (``None``: ``dtype``) the parameters'; unlike Flax
  linen, whose ``param_dtype`` defaults to float32 whatever the computation's ``dtype``, one ``dtype``
  makes a whole bfloat16 model. ``apply`` computes in the promotion of its input's dtype and the
  parameters' (Flax's ``dtype=None``): a bfloat16 batch through float32 parameters computes in float32;
* ``apply(variables, x, *, train=False, rng=None)``: NHWC in, the main output out; with ``train=True`` it
  returns ``(outputs, new_batch_stats)``, where ``outputs`` is the main output, or ``(main, aux1, ...)``
  when the network has auxiliary heads (traced in training only), and ``rng`` (a ``jax.random`` key, folded
  with each dropout's path as init's key is) drives dropout. Frozen batch norms (``freeze(...)``) normalise
  with their running statistics and keep them in training too, unless ``train_frozen_bn=True`` (a keyword of
  ``apply`` only where the network has them, as the torch model's ``train_frozen_bn`` attribute).

Semantics follow PyTorch exactly (the torch backend is the reference): the IR's explicit padding pairs,
ceil-mode pooling as extra bottom/right padding that an average pool does not count, PyTorch's LRN,
adaptive pooling bins and ConvTranspose2d, and the running-statistics update of BatchNorm2d (the variance's
unbiased). Weights move between the backends with :mod:`cnndsl.backends.jax_weights`.
"""

from __future__ import annotations

import io
import os
import re
import tokenize
import zlib
from typing import Any

from cnndsl.backends.base import (
    Emitter,
    Namespace,
    PluginNames,
    Unsupported,
    Writer,
    assign_variables,
    check_source,
    comment_text,
    docstring_text,
    plugin_args,
    sorted_imports,
    source_name,
    string_literal,
    write_helpers,
)
from cnndsl.backends.jax_weights import flattens_channel_major
from cnndsl.backends.plan import ClassPlan, Plan, Ref, Step, collapse, element_args, expand, make_plan

from cnndsl.ir.network import Network
from cnndsl.ir.ops import OPS, Family, Fans

# Helper functions the generated module may define; each is emitted only if a layer uses it.
HELPERS: dict[str, str] = {
    "key": '''
def _key(key, *path):
    """The key of a layer or block: ``key`` folded with each component of its path (None stays None)."""
    for part in path:
        key = None if key is None else jax.random.fold_in(key, part)
    return key
''',
    "conv": '''
def _conv(x, p, stride, padding, dilation=(1, 1), groups=1):
    """2-D convolution of an NHWC batch with an HWIO kernel and explicit (low, high) padding."""
    dtype = jnp.result_type(x, p["kernel"])
    y = jax.lax.conv_general_dilated(x.astype(dtype), p["kernel"].astype(dtype), stride, padding,
                                     rhs_dilation=dilation, dimension_numbers=("NHWC", "HWIO", "NHWC"),
                                     feature_group_count=groups)
    return y + p["bias"] if "bias" in p else y
''',
    "conv_transpose": '''
def _conv_transpose(x, p, stride, padding, output_padding, dilation=(1, 1), groups=1):
    """PyTorch's ConvTranspose2d: a stride-1 convolution, with the kernel flipped, over the input
    dilated by the stride and padded by dilation * (kernel - 1) - padding (plus output_padding at the end)."""
    dtype = jnp.result_type(x, p["kernel"])
    kernel = p["kernel"].astype(dtype)
    pads = [(d * (k - 1) - lo, d * (k - 1) - hi + extra)
            for k, d, (lo, hi), extra in zip(kernel.shape[:2], dilation, padding, output_padding, strict=True)]
    y = jax.lax.conv_general_dilated(x.astype(dtype), jnp.flip(kernel, (0, 1)), (1, 1), pads, lhs_dilation=stride,
                                     rhs_dilation=dilation, dimension_numbers=("NHWC", "HWIO", "NHWC"),
                                     feature_group_count=groups)
    return y + p["bias"] if "bias" in p else y
''',
    "dense": '''
def _dense(x, p):
    """Fully connected layer over the last axis."""
    y = x @ p["kernel"]
    return y + p["bias"] if "bias" in p else y
''',
    "max_pool": '''
def _max_pool(x, window, stride, padding):
    """Max pooling; padding (ceil mode's extra rows and columns included) never wins the max."""
    return jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, (1, *window, 1), (1, *stride, 1),
                                 ((0, 0), *padding, (0, 0)))
''',
    "avg_pool": '''
def _avg_pool(x, window, stride, padding, ceil_extra=(0, 0), count_include_pad=True):
    """Average pooling as PyTorch divides: explicit padding counts when count_include_pad,
    the extra bottom/right padding of ceil mode never does."""
    dims, strides = (1, *window, 1), (1, *stride, 1)
    full = ((0, 0), *((lo, hi + e) for (lo, hi), e in zip(padding, ceil_extra, strict=True)), (0, 0))
    total = jax.lax.reduce_window(x, 0.0, jax.lax.add, dims, strides, full)
    if count_include_pad:
        (top, bottom), (left, right) = padding
        ones = jnp.ones((1, x.shape[1] + top + bottom, x.shape[2] + left + right, 1), x.dtype)
        counted = ((0, 0), (0, ceil_extra[0]), (0, ceil_extra[1]), (0, 0))
    else:
        ones, counted = jnp.ones((1, x.shape[1], x.shape[2], 1), x.dtype), full
    return total / jax.lax.reduce_window(ones, 0.0, jax.lax.add, dims, strides, counted)
''',
    "adaptive_avg_pool": '''
def _adaptive_avg_pool(x, size):
    """PyTorch's AdaptiveAvgPool2d: output bin i averages rows floor(i*n/out) to ceil((i+1)*n/out)."""
    def bins(n, out):
        rows = []
        for i in range(out):
            start, end = i * n // out, -(-(i + 1) * n // out)
            rows.append([1.0 / (end - start) if start <= j < end else 0.0 for j in range(n)])
        return jnp.array(rows, x.dtype)

    return jnp.einsum("nhwc,ih,jw->nijc", x, bins(x.shape[1], size[0]), bins(x.shape[2], size[1]))
''',
    "lrn": '''
def _lrn(x, size, alpha, beta, k):
    """PyTorch's LocalResponseNorm: x / (k + alpha / size * sum of x^2 over `size` channels)^beta,
    the window centred on each channel and zero-padded at the ends."""
    squares = jax.lax.reduce_window(x * x, 0.0, jax.lax.add, (1, 1, 1, size), (1, 1, 1, 1),
                                    ((0, 0), (0, 0), (0, 0), (size // 2, (size - 1) // 2)))
    return x / (k + alpha / size * squares) ** beta
''',
    "batch_norm": '''
def _batch_norm(x, p, stats, train, momentum, eps):
    """Batch norm over every axis but the channels (the last). Training normalises with the batch's
    statistics and returns PyTorch's running averages (the variance's unbiased); evaluation uses them."""
    if train:
        axes = tuple(range(x.ndim - 1))
        mean, var = x.mean(axes), x.var(axes)
        n = x.size // x.shape[-1]
        stats = {"mean": ((1 - momentum) * stats["mean"] + momentum * mean).astype(stats["mean"].dtype),
                 "var": ((1 - momentum) * stats["var"] + momentum * var * n / max(n - 1, 1)).astype(stats["var"].dtype)}
    else:
        mean, var = stats["mean"], stats["var"]
    y = (x - mean) * jax.lax.rsqrt(var + eps)
    return (y * p["scale"] + p["bias"] if p else y), stats
''',
    "layer_norm": '''
def _layer_norm(x, p, eps):
    """PyTorch's LayerNorm over the last axis (a feature map's channels at each position, a vector's features),
    with the biased variance; p holds its scale and bias, or is None."""
    mean, var = x.mean(-1, keepdims=True), x.var(-1, keepdims=True)
    y = (x - mean) * jax.lax.rsqrt(var + eps)
    return y * p["scale"] + p["bias"] if p else y
''',
    "group_norm": '''
def _group_norm(x, p, groups, eps):
    """PyTorch's GroupNorm: the channels (the last axis) in `groups` runs of consecutive channels, each
    normalised over its channels and every position, with the biased variance; p holds its scale and bias, or
    is None."""
    g = x.reshape(x.shape[0], -1, groups, x.shape[-1] // groups)
    mean, var = g.mean((1, 3), keepdims=True), g.var((1, 3), keepdims=True)
    y = ((g - mean) * jax.lax.rsqrt(var + eps)).reshape(x.shape)
    return y * p["scale"] + p["bias"] if p else y
''',
    "dropout": '''
def _dropout(x, rate, key):
    """Inverted dropout: zero each value with probability `rate`, scale the rest by 1 / (1 - rate)."""
    keep = jax.random.bernoulli(key, 1.0 - rate, x.shape)
    return jnp.where(keep, x / (1.0 - rate), 0.0)
''',
    "drop_path": '''
def _drop_path(x, rate, key):
    """Stochastic depth: zero each sample's whole value with probability `rate`, scale the rest by 1 / (1 - rate)."""
    keep = jax.random.bernoulli(key, 1.0 - rate, (x.shape[0],) + (1,) * (x.ndim - 1))
    return jnp.where(keep, x / (1.0 - rate), 0.0)
''',
    "upsample": '''
def _upsample(x, scale=None, mode="nearest", align_corners=False, size=None):
    """PyTorch's interpolate(x, scale_factor=scale, mode=mode, align_corners=...) of an NHWC batch, or with
    size=(h, w) its interpolate(x, size=size, ...): the output size floor(size * scale), or size, and the source
    pixel of each output pixel as PyTorch computes it, in float32 with the step 1 / scale, or input / output size."""
    for axis in (1, 2):
        n_in = x.shape[axis]
        if size is None:
            n_out, step = int(n_in * scale[axis - 1]), 1.0 / scale[axis - 1]
        else:
            n_out, step = size[axis - 1], jnp.float32(n_in) / size[axis - 1]
        i = jnp.arange(n_out, dtype=jnp.float32)
        if align_corners:
            src = i * ((n_in - 1) / (n_out - 1) if n_out > 1 else 0.0)
        elif mode == "nearest":  # PyTorch's nearest_idx, with its cases for the same and the double size
            src = i if n_out == n_in else jnp.floor(i / 2) if n_out == 2 * n_in else jnp.floor(i * step)
        else:
            src = jnp.maximum((i + 0.5) * step - 0.5, 0.0)
        lo = jnp.minimum(jnp.floor(src).astype(jnp.int32), n_in - 1)
        if mode == "nearest":
            x = jnp.take(x, lo, axis=axis)
            continue
        hi = jnp.minimum(lo + 1, n_in - 1)
        w = jnp.clip(src - lo, 0.0, 1.0).astype(x.dtype).reshape((-1,) + (1,) * (x.ndim - 1 - axis))
        x = jnp.take(x, lo, axis=axis) * (1 - w) + jnp.take(x, hi, axis=axis) * w
    return x
''',
    "scan_blocks": '''
def _scan_blocks(block, indices, x, params=None, stats=None, new_stats=None, /, **kwargs):
    """A run of alike blocks: ``block`` applied to ``x`` in turn with each instance str(i), i in ``indices``, of
    a sequence's ``params`` and ``stats`` and with the keywords, ``rng`` folded with the index as a call of its
    own folds it; each instance's new batch_stats go into ``new_stats``. In evaluation, one jax.lax.scan whose
    step picks its instance's variables (jax.lax.switch: nothing is copied), so that XLA compiles the block once;
    in training, a call per block (XLA:CPU differentiates a kernel inside a loop many times slower)."""
    trees = [tree for tree in (params, stats) if tree is not None]

    def step(x, i, variables):  # one instance: its output and its new batch_stats (None without)
        kws = kwargs if kwargs.get("rng") is None else {**kwargs, "rng": jax.random.fold_in(kwargs["rng"], i)}
        out = block(*variables, x, **kws)
        return out if stats is not None else (out, None)

    if kwargs.get("train"):
        for i in indices:
            x, new = step(x, i, [tree[str(i)] for tree in trees])
            if stats is not None:
                new_stats[str(i)] = new
        return x
    branches = [lambda i=i: [tree[str(i)] for tree in trees] for i in indices]
    x = x.astype(jnp.result_type(x, *jax.tree.leaves(trees)))  # the loop's value keeps the dtype the blocks make
    x, _ = jax.lax.scan(lambda x, k: (step(x, indices[0] + k, jax.lax.switch(k, branches))[0], None), x,
                        jnp.arange(len(indices)))
    if stats is not None:  # evaluation leaves the running statistics as they are
        new_stats.update({str(i): stats[str(i)] for i in indices})
    return x
''',
    "uniform": '''
def _uniform(key, shape, fan_in, bias, dtype):
    """PyTorch's default initialisation: kernel and bias U(-1/sqrt(fan_in), 1/sqrt(fan_in))."""
    bound = fan_in ** -0.5
    p = {"kernel": jax.random.uniform(jax.random.fold_in(key, 0), shape, dtype, -bound, bound)}
    if bias:
        p["bias"] = jax.random.uniform(jax.random.fold_in(key, 1), shape[-1:], dtype, -bound, bound)
    return p
''',
    "he_normal": '''
def _he_normal(key, shape, fan_out, bias, dtype):
    """He (Kaiming) normal initialisation for ReLU networks, fan-out mode: N(0, 2 / fan_out); bias 0."""
    p = {"kernel": jax.random.normal(jax.random.fold_in(key, 0), shape, dtype) * (2.0 / fan_out) ** 0.5}
    if bias:
        p["bias"] = jnp.zeros(shape[-1:], dtype)
    return p
''',
    "glorot_uniform": '''
def _glorot_uniform(key, shape, fan_in, fan_out, bias, dtype):
    """Glorot (Xavier) uniform initialisation: U(-a, a) with a = sqrt(6 / (fan_in + fan_out)); bias 0."""
    bound = (6.0 / (fan_in + fan_out)) ** 0.5
    p = {"kernel": jax.random.uniform(jax.random.fold_in(key, 0), shape, dtype, -bound, bound)}
    if bias:
        p["bias"] = jnp.zeros(shape[-1:], dtype)
    return p
''',
    "normal": '''
def _normal(key, shape, std, bias, dtype):
    """N(0, std^2); bias 0."""
    p = {"kernel": jax.random.normal(jax.random.fold_in(key, 0), shape, dtype) * std}
    if bias:
        p["bias"] = jnp.zeros(shape[-1:], dtype)
    return p
''',
    "bn_params": '''
def _bn_params(features, dtype, zero=False):
    """A batch norm's scale (ones, or zeros for a residual body's last under zero_init_residual) and bias."""
    return {"scale": (jnp.zeros if zero else jnp.ones)(features, dtype), "bias": jnp.zeros(features, dtype)}
''',
    "norm_params": '''
def _norm_params(features, dtype):
    """A layer or group norm's scale (ones) and bias (zeros)."""
    return {"scale": jnp.ones(features, dtype), "bias": jnp.zeros(features, dtype)}
''',
    "bn_stats": '''
def _bn_stats(features, dtype):
    """A batch norm's running statistics before any training: mean 0, variance 1."""
    return {"mean": jnp.zeros(features, dtype), "var": jnp.ones(features, dtype)}
''',
}

#: The longest line the generated module has (where the layer names allow): ruff's E501 limit, 120.
WIDTH = 120

#: Names the generated module defines at its top level.
MODULE_GLOBALS = frozenset({"jax", "jnp", "init", "apply", "INPUT_SHAPE", *(f"_{h}" for h in HELPERS)})
#: The arguments and locals of the generated functions: a plan's parameter or a value never takes them.
LOCALS = frozenset({"variables", "params", "stats", "new_stats", "x", "train", "rng", "key", "dtype", "param_dtype",
                    "i", "train_frozen_bn"})
#: Between a statement and its trailing comment in the printer's lines (no code or comment text holds it).
COMMENT = "\x00"
#: The ops that draw from ``rng`` in training (and are the identity in evaluation).
RANDOM_OPS = frozenset({"dropout", "droppath"})
#: The shortest run of alike blocks in a sequence that apply() runs as one jax.lax.scan (``_scan_blocks``)
#: rather than a call per block. XLA then compiles the block once, but the loop has a compile cost of its own:
#: measured on XLA:CPU, runs of 3 or more compile as fast or faster as a scan, runs of 2 slower (docs/design.md,
#: "JAX compile time"; benchmarks/jax_compile.py).
SCAN_MIN_RUN = 3


def _holds(step: Step, collection: str) -> bool:
    """Whether a layer holds tensors of one collection of the variables (``"params"``, ``"batch_stats"``)."""
    return any(w.collection == collection and w.jax is not None and (w.when is None or step.arg(w.when) is not False)
               for w in OPS[step.op].weights)


def path_hash(part: str) -> int:
    """What a key is folded with for one component of a dotted layer name: an index (a sequence's
    element) as itself, a name as the CRC-32 of its UTF-8 bytes. A compile-time constant.

    >>> path_hash("3"), hex(path_hash("conv1"))
    (3, '0x110725b5')
    """
    if re.fullmatch("[0-9]{1,9}", part):
        return int(part)
    return zlib.crc32(part.encode("utf-8"))


def _hash_text(part: str) -> str:
    h = path_hash(part)
    return str(h) if re.fullmatch("[0-9]{1,9}", part) else f"0x{h:08x}"


def _lit(v: Any) -> str:
    if isinstance(v, tuple):
        return "(" + ", ".join(_lit(x) for x in v) + ("," if len(v) == 1 else "") + ")"
    if isinstance(v, bool):
        return "True" if v else "False"
    return repr(v)


def _like(like: Any, leaf: str) -> str:
    """``leaf`` in the structure of ``like``: ``(k, k)`` for a pair."""
    if isinstance(like, tuple):
        return "(" + ", ".join(_like(x, leaf) for x in like) + ("," if len(like) == 1 else "") + ")"
    return leaf


def _text(v: int | str) -> str:
    return str(v)


def _shape_text(shape) -> str:
    """A step's logical shape in NHWC order for a comment: ``56x56x64`` (a letter where instances differ)."""
    letters = "CHW" if len(shape) == 3 else "N"
    dims = [str(d) if d is not None else letters[i] for i, d in enumerate(shape)]
    if len(dims) == 3:
        dims = [dims[1], dims[2], dims[0]]
    return "x".join(dims)


def _snake(name: str) -> str:
    """``BasicDownsample`` -> ``basic_downsample``: a function name hint."""
    return re.sub(r"(?<=[a-z0-9])(?=[A-Z])", "_", name).lower()


def _subs(parts) -> str:
    """Subscripts into a variables tree: ``["layer1"]["0"]``, from literal keys or expressions (``str(i)``)."""
    return "".join(f"[{p}]" for p in parts)


def _keys(attr: str) -> list[str]:
    return [string_literal(part) for part in attr.split(".")]


def _hashes(attr: str) -> list[str]:
    return [_hash_text(part) for part in attr.split(".")]


class NhwcLayerCode:
    """The layers whose code is the same expression in every jax-based printer (pure JAX, Flax NNX): pooling,
    LRN, joins, products and shortcuts over NHWC values, slices, resampling, flatten, the weightless activations
    and identity; also the flatten of a batch and a step's comment text. A printer provides ``val`` (a value as
    code) and ``p`` (with its ``helpers`` and ``channel_major``)."""

    def flat(self, x: str) -> str:
        """An NHWC batch flattened to vectors, in PyTorch's (C, H, W) order where the network's numbers depend on
        it (:func:`~cnndsl.backends.jax_weights.flattens_channel_major`)."""
        if self.p.channel_major:
            return f"{x}.transpose(0, 3, 1, 2).reshape({x}.shape[0], -1)"
        return f"{x}.reshape({x}.shape[0], -1)"

    @staticmethod
    def where(step) -> str:
        """Where the step comes from, and its shape when it has a size of its own (one the instances share):
        ``resnet.cnn:14 -> 56x56x64``, for its comment; ``""`` for neither."""
        parts = [f"{comment_text(os.path.basename(step.span.file))}:{step.span.line}"] if step.span else []
        if any(d is not None for d in step.shape):
            parts.append(f"-> {_shape_text(step.shape)}")
        return " ".join(parts)

    def emit_flatten(self, step, xs):
        flatten = step.arg("flatten")
        if isinstance(flatten, Ref):
            return f"{self.flat(xs[0])} if {self.val(flatten)} else {xs[0]}"
        return self.flat(xs[0]) if flatten else xs[0]

    def emit_tanh(self, step, xs):
        return f"jnp.tanh({xs[0]})"

    def emit_identity(self, step, xs):
        return xs[0]

    def emit_zero(self, step, xs):  # NAS-Bench-201's zero edge, as PyTorch's x.mul(0.)
        return f"{xs[0]} * 0.0"

    def emit_relu6(self, step, xs):
        return f"jax.nn.relu6({xs[0]})"

    def emit_silu(self, step, xs):
        return f"jax.nn.silu({xs[0]})"

    def emit_hardswish(self, step, xs):
        return f"jax.nn.hard_swish({xs[0]})"

    def emit_hardsigmoid(self, step, xs):
        return f"jax.nn.hard_sigmoid({xs[0]})"

    def emit_gelu(self, step, xs):
        how = step.arg("approximate")  # jax.nn.gelu's default is the tanh approximation, PyTorch's the exact one
        tanh = f"{self.val(how)} == \"tanh\"" if isinstance(how, Ref) else str(how == "tanh")
        return f"jax.nn.gelu({xs[0]}, approximate={tanh})"

    def emit_leakyrelu(self, step, xs):
        slope = step.arg("negative_slope")
        more = "" if slope == 0.01 else f", negative_slope={self.val(slope)}"
        return f"jax.nn.leaky_relu({xs[0]}{more})"

    def emit_elu(self, step, xs):
        alpha = step.arg("alpha")
        return f"jax.nn.elu({xs[0]}{'' if alpha == 1.0 else f', alpha={self.val(alpha)}'})"

    def emit_mish(self, step, xs):
        return f"jax.nn.mish({xs[0]})"

    def emit_shuffle(self, step, xs):
        # the channels as a (groups, C / groups) grid, transposed, as torchvision's channel_shuffle
        x = xs[0]
        return f"{x}.reshape(*{x}.shape[:3], {self.val(step.arg('groups'))}, -1).swapaxes(3, 4).reshape({x}.shape)"

    def _interpolation(self, step) -> str:
        """The ``mode`` and ``align_corners`` keywords of an ``_upsample`` call, where they are not the defaults."""
        self.p.helpers.add("upsample")
        mode, corners = step.arg("mode"), step.arg("align_corners")
        more = "" if mode == "nearest" else f", mode={self.val(mode) if isinstance(mode, Ref) else string_literal(mode)}"
        if corners is not False:
            more += f", align_corners={self.val(corners)}"
        return more

    def emit_upsample(self, step, xs):
        return f"_upsample({xs[0]}, {self.val(step.arg('scale'))}{self._interpolation(step)})"

    def emit_resize(self, step, xs):
        # to the height and width of the second operand, as torchvision's F.interpolate(x, size=input_shape[-2:])
        return f"_upsample({xs[0]}, size={xs[1]}.shape[1:3]{self._interpolation(step)})"

    def emit_mul(self, step, xs):
        return f"{xs[0]} * {xs[1]}"  # a C x 1 x 1 gate is 1 x 1 x C in NHWC: it broadcasts over the positions

    def emit_slice(self, step, xs):  # the channels are the last axis
        start = step.arg("start")
        start = "" if not isinstance(start, Ref) and start == 0 else self.val(start)
        return f"{xs[0]}[..., {start}:{self.val(step.arg('stop'))}]"

    def _pads(self, step) -> str:
        p, extra = step.arg("p"), step.arg("ceil_extra")
        if not isinstance(p, Ref) and not isinstance(extra, Ref):
            return _lit(tuple((lo, hi + e) for (lo, hi), e in zip(p, extra)))
        return f"tuple((lo, hi + e) for (lo, hi), e in zip({self.val(p)}, {self.val(extra)}, strict=True))"

    def emit_maxpool(self, step, xs):
        self.p.helpers.add("max_pool")
        return f"_max_pool({xs[0]}, {self.val(step.arg('k'))}, {self.val(step.arg('s'))}, {self._pads(step)})"

    def emit_avgpool(self, step, xs):
        self.p.helpers.add("avg_pool")
        more = ""
        if step.arg("ceil_extra") != (0, 0):
            more += f", ceil_extra={self.val(step.arg('ceil_extra'))}"
        if step.arg("count_include_pad") is not True:
            more += f", count_include_pad={self.val(step.arg('count_include_pad'))}"
        return (f"_avg_pool({xs[0]}, {self.val(step.arg('k'))}, {self.val(step.arg('s'))}, "
                f"{self.val(step.arg('p'))}{more})")

    def emit_gap(self, step, xs):
        return f"{xs[0]}.mean((1, 2), keepdims=True)"

    def emit_adaptiveavgpool(self, step, xs):
        self.p.helpers.add("adaptive_avg_pool")
        return f"_adaptive_avg_pool({xs[0]}, {self.val(step.arg('size'))})"

    def emit_lrn(self, step, xs):
        self.p.helpers.add("lrn")
        return (f"_lrn({xs[0]}, size={self.val(step.arg('size'))}, alpha={self.val(step.arg('alpha'))}, "
                f"beta={self.val(step.arg('beta'))}, k={self.val(step.arg('k'))})")

    def emit_add(self, step, xs):
        scale = step.arg("scale")
        terms = list(xs)
        if isinstance(scale, Ref) or scale != 1.0:
            terms[0] = f"{self.val(scale)} * {terms[0]}"
        return " + ".join(terms)

    def emit_concat(self, step, xs):
        parts = []
        for x, crop in zip(xs, step.arg("crops")):
            if crop is None:
                parts.append(x)
            elif isinstance(crop, Ref):
                c = self.val(crop)
                parts.append(f"{x}[:, {c}[0]:{c}[0] + {c}[2], {c}[1]:{c}[1] + {c}[3]]")
            else:
                top, left, h, w = crop
                parts.append(f"{x}[:, {top}:{top + h}, {left}:{left + w}]")
        return f"jnp.concatenate([{', '.join(parts)}], axis=-1)"

    def emit_padshortcut(self, step, xs):
        s, pad = step.arg("s"), step.arg("pad_channels")
        x = xs[0]
        if isinstance(s, Ref) or s != 1:
            x = f"{x}[:, ::{self.val(s)}, ::{self.val(s)}]"
        if not isinstance(pad, Ref) and pad == 0:
            return x
        # the new channels are zeros after the old ones, as the torch backend pads
        return f"jnp.pad({x}, ((0, 0), (0, 0), (0, 0), (0, {self.val(pad)})))"



class _ClassPrinter(NhwcLayerCode):
    """Prints one class of the plan: its forward function and its init function (the network's: apply, init)."""

    def __init__(self, printer: JaxEmitter, cls: ClassPlan):
        self.p = printer
        self.cls = cls
        self.is_root = cls.id == ""
        if self.is_root:
            self.fn, self.init_fn = "apply", "init"
        else:
            self.fn = printer.globals.name(_snake(cls.name))
            self.init_fn = printer.globals.name(f"init_{_snake(cls.name)}")
        local = Namespace(printer.globals.taken() | LOCALS)
        self.params: dict[str, str] = {}
        for prm in cls.params:
            self.params[prm.name] = prm.name if local.is_free(prm.name) else local.name(prm.name)
            local.reserve(self.params[prm.name])
        self.local_taken = local.taken()
        kids = [printer.classes[c] for s in cls.steps for c in ((s.child,) if s.kind == "call" else s.children)]
        layers = [s for s in cls.steps if s.kind == "layer"]
        self.random = any(OPS[s.op].fans is not None or OPS[s.op].plugin and _holds(s, "params") for s in layers) or any(
            k.random for k in kids)  # kernels, and plugin ops' variables
        self.has_params = self.random or any(_holds(s, "params") for s in layers) or any(k.has_params for k in kids)
        self.has_stats = any(_holds(s, "batch_stats") for s in layers) or any(k.has_stats for k in kids)
        self.has_rng = any(s.op in RANDOM_OPS and collapse(s.arg("p")) not in (0.0, 1.0) for s in layers) or any(
            k.has_rng for k in kids)
        self.needs_train = self.has_stats or any(s.op in RANDOM_OPS for s in layers) or any(k.needs_train for k in kids)
        # freeze(...)'s batch norms: the function takes train_frozen_bn, the switch that lets them train
        self.has_frozen_bn = any(s.op == "bn" and dict(s.args).get("frozen", False) is not False for s in layers) or \
            any(k.has_frozen_bn for k in kids)
        self.used: set[str] = set()
        self.fwd_used: set[str] = set()
        self.init_used: set[str] = set()
        self.created: set[tuple] = set()

    # -- values
    def ref(self, v: Ref) -> str:
        self.used.add(v.param)
        e = self.params[v.param]
        return e if v.factor == 1 else f"{v.factor} * {e}"

    def val(self, v: Any) -> str:
        """A value in full (a pair as a pair): a literal, or an expression of the function's parameters."""
        if isinstance(v, Ref):
            return _like(v.like, self.ref(v))
        return _lit(v)

    def num(self, v: Any) -> int | str:
        """A number (channels, features): an int, or an expression."""
        return self.ref(v) if isinstance(v, Ref) else v

    def pair(self, v: Any) -> list[int | str]:
        """A (height, width) pair's two numbers: ints, or expressions."""
        if isinstance(v, Ref):
            e = self.ref(v)
            return [e] * len(v.like) if isinstance(v.like, tuple) else [f"{e}[0]", f"{e}[1]"]
        return list(v)

    @staticmethod
    def prod(*terms: int | str) -> str:
        """A product as an expression, its constant part folded."""
        const, names = 1, []
        for t in terms:
            if isinstance(t, int):
                const *= t
            else:
                names.append(t)
        return " * ".join(names + ([str(const)] if const != 1 or not names else []))

    @staticmethod
    def div(a: int | str, b: int | str) -> int | str:
        if isinstance(a, int) and isinstance(b, int):
            return a // b
        return a if b == 1 else f"{a} // {b}"

    def fans(self, step: Step) -> tuple[str, str]:
        """The layer's PyTorch fans (its op's :class:`~cnndsl.ir.ops.Fans`) as two expressions of the function's
        parameters: the receptive field's factors first, then the weight axis's, constants folded."""
        fans, a = OPS[step.op].fans, dict(step.args)
        field = [t for name in fans.receptive for t in self.pair(a[name])]

        def factor(f: str | int) -> int | str:
            if isinstance(f, int):
                return f
            num, den = Fans.quotient(f)
            return self.div(self.num(a[num]), self.num(a[den])) if den else self.num(a[num])

        return (self.prod(*field, *map(factor, fans.fan_in)), self.prod(*field, *map(factor, fans.fan_out)))

    def ensure(self, lines: list[str], trees: str | list[str], parts: list[str]) -> None:
        """A statement for each dict above ``tree[parts]`` not created yet, for each tree (then it counts as created)."""
        trees = [trees] if isinstance(trees, str) else trees
        for k in range(1, len(parts)):
            missing = [t for t in trees if (t, *parts[:k]) not in self.created]
            if missing:
                lines.append(f"{', '.join(t + _subs(parts[:k]) for t in missing)} = {', '.join('{}' for _ in missing)}")
                self.created.update((t, *parts[:k]) for t in missing)
        self.created.update((t, *parts) for t in trees)

    # -- init
    def init_layer(self, step: Step) -> list[str]:
        op, a = step.op, dict(step.args)
        keys = _keys(step.attr)
        if OPS[op].plugin:
            return self.init_plugin(step)
        if op == "bn":
            out = []
            features = _text(self.num(a["features"]))
            if a["affine"] is not False:
                self.p.helpers.add("bn_params")
                zero = a["zero_init"]
                more = ", zero=True" if zero is True else (f", zero={self.val(zero)}" if isinstance(zero, Ref) else "")
                self.ensure(out, "params", keys)
                line = f"params{_subs(keys)} = _bn_params({features}, param_dtype{more})"
                if isinstance(a["affine"], Ref):
                    line = f"if {self.val(a['affine'])}:\n    {line}"
                out.append(line)
            self.p.helpers.add("bn_stats")
            self.ensure(out, "stats", keys)
            out.append(f"stats{_subs(keys)} = _bn_stats({features}, dtype)")
            return out
        if op in ("layernorm", "groupnorm"):
            if a["affine"] is False:
                return []
            self.p.helpers.add("norm_params")
            out = []
            self.ensure(out, "params", keys)
            line = f"params{_subs(keys)} = _norm_params({_text(self.num(a['features']))}, param_dtype)"
            return out + [f"if {self.val(a['affine'])}:\n    {line}" if isinstance(a["affine"], Ref) else line]
        if op == "layerscale":
            out = []
            self.ensure(out, "params", keys)
            features = _text(self.num(a["features"]))
            return out + [f"params{_subs(keys)} = jnp.full(({features},), {self.val(a['init'])}, param_dtype)"]
        fans = OPS[op].fans
        if fans is None:
            return []
        if fans.receptive:  # a convolution's kernel, HWIO (a transposed one's is the kernel of the conv it transposes)
            kh, kw = self.pair(a[fans.receptive[0]])
            shape = (kh, kw, self.div(self.num(a["in_channels"]), self.num(a["groups"])), self.num(a["c"]))
        else:
            shape = (self.num(a["in_features"]), self.num(a["c"]))
        fan_in, fan_out = self.fans(step)
        key = f"_key(key, {', '.join(_hashes(step.attr))})"
        self.p.helpers.add("key")
        shape_text = "(" + ", ".join(map(_text, shape)) + ")"
        bias = self.val(a["bias"])
        scheme, dense = self.p.plan.init, OPS[op].family is Family.DENSE  # kaiming's N(0, 0.01) for nn.Linear
        if scheme is None or dense and not self.p.plan.init_fc:  # PyTorch's own default
            call = f"_uniform({key}, {shape_text}, fan_in={fan_in}"
            helper = "uniform"
        elif scheme == "kaiming" and dense:
            call, helper = f"_normal({key}, {shape_text}, std=0.01", "normal"
        elif scheme == "kaiming":
            call, helper = f"_he_normal({key}, {shape_text}, fan_out={fan_out}", "he_normal"
        elif scheme in ("xavier", "glorot"):
            call = f"_glorot_uniform({key}, {shape_text}, fan_in={fan_in}, fan_out={fan_out}"
            helper = "glorot_uniform"
        else:
            raise Unsupported(f"initialisation '{scheme}' is not supported by the JAX backend", step.span)
        self.p.helpers.add(helper)
        out: list[str] = []
        self.ensure(out, "params", keys)
        out.append(f"params{_subs(keys)} = {call}, bias={bias}, dtype=param_dtype)")
        return out

    def init_call(self, child: _ClassPrinter, args, keys: list[str], hashes: list[str]) -> str:
        """The init of one child instance, assigned to its subtrees (``keys`` into them, ``hashes`` to its key)."""
        kws = []
        if child.random:
            self.p.helpers.add("key")
            kws.append(f"_key(key, {', '.join(hashes)})")
        kws += [f"{child.params[k]}={self.val(v)}" for k, v in args if k in child.init_used]
        if child.has_stats:
            kws.append("dtype=dtype")
        if child.has_params:
            kws.append("param_dtype=param_dtype")
        targets = ([f"params{_subs(keys)}"] if child.has_params else []) + (
            [f"stats{_subs(keys)}"] if child.has_stats else [])
        return f"{', '.join(targets)} = {child.init_fn}({', '.join(kws)})"

    def init_lines(self) -> list[str]:
        self.used, self.created = set(), set()
        lines = ["params, stats = {}, {}"]
        for step in self.cls.steps:
            if step.kind == "layer":
                lines += self.init_layer(step)
            elif step.kind == "call":
                child = self.p.classes[step.child]
                if child.has_params or child.has_stats:
                    keys = _keys(step.attr)
                    self.ensure(lines, [t for t, has in (("params", child.has_params), ("stats", child.has_stats))
                                        if has], keys)
                    lines.append(self.init_call(child, step.args, keys, _hashes(step.attr)))
            else:
                self.sequence(lines, step, init=True)
        self.init_used = set(self.used)
        return lines

    def runs(self, step: Step) -> list[tuple[int, int, str, tuple]]:
        """A sequence's elements as maximal runs of the same class built with the same arguments:
        (start, stop, class, args)."""
        out: list[tuple[int, int, str, tuple]] = []
        for i, (child, args) in enumerate(zip(step.children, element_args(step))):
            if out and out[-1][2] == child and out[-1][3] == args:
                out[-1] = (out[-1][0], i + 1, child, args)
            else:
                out.append((i, i + 1, child, args))
        return out

    def scans(self, step: Step, start: int, stop: int) -> bool:
        """Whether the forward runs a sequence's elements ``start`` to ``stop`` (a run) as one jax.lax.scan:
        at least :data:`SCAN_MIN_RUN` of them (the emitter's ``scan_min_run``), each keeping its input's
        shape in every instance of this class (the scan's carry cannot change shape)."""
        if self.p.scan_min_run is None or stop - start < self.p.scan_min_run:
            return False
        g = self.p.graph
        for scope in self.cls.instances:
            for i in range(start, stop):
                ins, outs = g.scope_boundary(".".join(part for part in (scope, step.attr, str(i)) if part))
                if g.node(ins[0]).shape != g.node(outs[0]).shape:
                    return False
        return True

    def sequence(self, lines: list[str], step: Step, init: bool, xs: list[str] | None = None,
                 target: str = "") -> None:
        """A sequence's elements, run by run: in the forward, one scan per run that :meth:`scans`; otherwise a
        loop over a run of three or more, one statement per element of a shorter one."""
        keys, hashes = _keys(step.attr), _hashes(step.attr)
        if not init and self.comment(step):  # the sequence's source and output, above its statements
            lines.append(self.comment(step).removeprefix(COMMENT))
        for start, stop, child_id, args in self.runs(step):
            child = self.p.classes[child_id]
            if not init and self.scans(step, start, stop):
                if child.has_stats:
                    self.ensure(lines, "new_stats", keys + [string_literal(str(start))])
                lines.append(self.scan(child, args, keys, hashes, start, stop, xs[0], target))
                xs = [target]
                continue
            loop = stop - start >= 3
            for first in [start] if loop else range(start, stop):
                index = ["str(i)"] if loop else [string_literal(str(first))]
                if init:
                    trees = [t for t, has in (("params", child.has_params), ("stats", child.has_stats)) if has]
                    if not trees:
                        continue
                    self.ensure(lines, trees, keys + index)
                    stmt = self.init_call(child, args, keys + index, hashes + (["i"] if loop else [str(first)]))
                else:
                    if child.has_stats:
                        self.ensure(lines, "new_stats", keys + index)
                    stmt = self.call(child, args, keys + index, hashes + (["i"] if loop else [str(first)]), xs[0],
                                     target)
                if loop:
                    lines.append(f"for i in range({start}, {stop}):")
                    lines.append(f"    {stmt}")
                else:
                    lines.append(stmt)
                xs = [target]

    def scan(self, child: _ClassPrinter, args, keys: list[str], hashes: list[str], start: int, stop: int, x: str,
             target: str) -> str:
        """A run of a sequence as one call of ``_scan_blocks``: the child's forward over the run's instances."""
        self.p.helpers.add("scan_blocks")
        trees = [child.has_params and f"params{_subs(keys)}", child.has_stats and f"stats{_subs(keys)}",
                 child.has_stats and f"new_stats{_subs(keys)}"]
        while trees and not trees[-1]:
            trees.pop()
        ins = [child.fn, f"range({start}, {stop})", x] + [tree or "None" for tree in trees]
        return f"{target} = _scan_blocks({', '.join(ins + self.keywords(child, args, hashes))})"

    # -- forward
    def keywords(self, child: _ClassPrinter, args, hashes: list[str]) -> list[str]:
        """The keywords of a child's forward: its constructor arguments, train, its dropout key (``hashes``)."""
        kws = [f"{child.params[k]}={self.val(v)}" for k, v in args if k in child.fwd_used]
        if child.needs_train:
            kws.append("train=train")
        if child.has_frozen_bn:
            kws.append("train_frozen_bn=train_frozen_bn")
        if child.has_rng:
            self.p.helpers.add("key")
            kws.append(f"rng=_key(rng, {', '.join(hashes)})")
        return kws

    def call(self, child: _ClassPrinter, args, keys: list[str], hashes: list[str], x: str, target: str) -> str:
        ins = ([f"params{_subs(keys)}"] if child.has_params else []) + (
            [f"stats{_subs(keys)}"] if child.has_stats else []) + [x]
        out = f"{target}, new_stats{_subs(keys)}" if child.has_stats else target
        return f"{out} = {child.fn}({', '.join(ins + self.keywords(child, args, hashes))})"

    def layer(self, step: Step, xs: list[str], target: str) -> list[str]:
        """The statements of one layer, its value assigned to ``target``."""
        if step.op == "bn":
            a, keys = dict(step.args), _keys(step.attr)
            self.p.helpers.add("batch_norm")
            p = "None" if a["affine"] is False else f"params{_subs(keys)}"
            if isinstance(a["affine"], Ref):
                p = f"params{_subs(keys)} if {self.val(a['affine'])} else None"
            pre: list[str] = []
            self.ensure(pre, "new_stats", keys)
            frozen = a.get("frozen", False)  # freeze(...): normalise with the running statistics, and keep them
            mode = "train" if frozen is False else "train and train_frozen_bn" if frozen is True else \
                f"train and (train_frozen_bn or not {self.val(frozen)})"
            call = (f"_batch_norm({xs[0]}, {p}, stats{_subs(keys)}, {mode}, momentum={self.val(a['momentum'])}, "
                    f"eps={self.val(a['eps'])})")
            return [*pre, f"{target}, new_stats{_subs(keys)} = {call}"]
        emit = self.emit_plugin if OPS[step.op].plugin else getattr(self, f"emit_{step.op}")
        return [f"{target} = {emit(step, xs)}"]

    # -- plugin ops (cnndsl.ops): their jax_emit functions, init(key, **args, dtype) and name(params, *xs, **args)
    def _plugin_keywords(self, step: Step) -> list[str]:
        return [f"{k}={self.val(v)}" for k, v in plugin_args(step, "jax_emit")]

    def init_plugin(self, step: Step) -> list[str]:
        if not _holds(step, "params"):
            return []
        keys, out = _keys(step.attr), []
        self.p.helpers.add("key")
        self.ensure(out, "params", keys)
        init = self.p.plugins.name(step.op, OPS[step.op].jax_emit.init)
        args = [f"_key(key, {', '.join(_hashes(step.attr))})", *self._plugin_keywords(step), "dtype=param_dtype"]
        return out + [f"params{_subs(keys)} = {init}({', '.join(args)})"]

    def emit_plugin(self, step, xs):
        params = self.weights(step) if _holds(step, "params") else "{}"
        return f"{self.p.plugins.name(step.op)}({', '.join([params, *xs, *self._plugin_keywords(step)])})"

    def weights(self, step: Step) -> str:
        return f"params{_subs(_keys(step.attr))}"

    def _conv_extra(self, a: dict) -> str:
        extra = ""
        if isinstance(a["d"], Ref) or collapse(a["d"]) != 1:
            extra += f", dilation={self.val(a['d'])}"
        if isinstance(a["groups"], Ref) or a["groups"] != 1:
            extra += f", groups={self.val(a['groups'])}"
        return extra

    def emit_input(self, step, xs):  # pragma: no cover - inputs are the arguments of apply()
        raise AssertionError("inputs are the arguments of apply()")

    def emit_conv(self, step, xs):
        a = dict(step.args)
        self.p.helpers.add("conv")
        return f"_conv({xs[0]}, {self.weights(step)}, {self.val(a['s'])}, {self.val(a['p'])}{self._conv_extra(a)})"

    def emit_deconv(self, step, xs):
        a = dict(step.args)
        self.p.helpers.add("conv_transpose")
        return (f"_conv_transpose({xs[0]}, {self.weights(step)}, {self.val(a['s'])}, {self.val(a['p'])}, "
                f"{self.val(a['output_padding'])}{self._conv_extra(a)})")

    def emit_fc(self, step, xs):
        self.p.helpers.add("dense")
        flatten, x = step.arg("flatten"), xs[0]
        if flatten is True:
            x = self.flat(x)
        elif isinstance(flatten, Ref):
            x = f"({self.flat(x)} if {self.val(flatten)} else {x})"
        return f"_dense({x}, {self.weights(step)})"

    def emit_pointwise(self, step, xs):  # over the last axis: the channels of an NHWC map
        self.p.helpers.add("dense")
        return f"_dense({xs[0]}, {self.weights(step)})"

    def _affine(self, step: Step) -> str:
        """A layer or group norm's scale and bias, or None without them."""
        affine, p = step.arg("affine"), self.weights(step)
        if isinstance(affine, Ref):
            return f"{p} if {self.val(affine)} else None"
        return p if affine else "None"

    def emit_layernorm(self, step, xs):
        self.p.helpers.add("layer_norm")
        return f"_layer_norm({xs[0]}, {self._affine(step)}, eps={self.val(step.arg('eps'))})"

    def emit_groupnorm(self, step, xs):
        self.p.helpers.add("group_norm")
        return (f"_group_norm({xs[0]}, {self._affine(step)}, {self.val(step.arg('groups'))}, "
                f"eps={self.val(step.arg('eps'))})")

    def emit_layerscale(self, step, xs):
        return f"{xs[0]} * {self.weights(step)}"

    def emit_bn(self, step, xs):  # pragma: no cover - a statement of its own: see layer()
        raise AssertionError("batch norm is written by layer()")

    def emit_relu(self, step, xs):
        return f"jax.nn.relu({xs[0]})"

    def emit_sigmoid(self, step, xs):
        return f"jax.nn.sigmoid({xs[0]})"

    def emit_softmax(self, step, xs):
        return f"jax.nn.softmax({xs[0]}, axis=-1)"

    def emit_dropout(self, step, xs):
        rate, x = step.arg("p"), xs[0]
        if not isinstance(rate, Ref) and rate == 0.0:
            return x
        if not isinstance(rate, Ref) and rate == 1.0:
            return f"jnp.zeros_like({x}) if train else {x}"
        self.p.helpers.update({"dropout", "key"})
        return f"_dropout({x}, {self.val(rate)}, _key(rng, {', '.join(_hashes(step.attr))})) if train else {x}"

    def emit_droppath(self, step, xs):
        rate, x = step.arg("p"), xs[0]
        if not isinstance(rate, Ref) and rate == 0.0:
            return x
        self.p.helpers.update({"drop_path", "key"})
        return f"_drop_path({x}, {self.val(rate)}, _key(rng, {', '.join(_hashes(step.attr))})) if train else {x}"

    def comment(self, step: Step) -> str:
        """The step's trailing comment (:meth:`where`), behind :data:`COMMENT` for :meth:`write`."""
        where = self.where(step)
        return COMMENT + "# " + where if where else ""

    def forward_lines(self) -> list[str]:
        """The forward's body: one statement per step (a loop per run of alike blocks), then the return."""
        self.used, self.created = set(), set()
        cls = self.cls
        names = Namespace(self.local_taken)
        var: dict[str, str] = {}
        for i, key in enumerate(cls.inputs):
            var[key] = "x" if i == 0 else names.name(key)
        self.args = [var[k] for k in cls.inputs]
        steps = list(cls.steps)
        assign_variables(cls, var, names)
        lines: list[str] = []

        def emit(s: Step) -> None:
            xs, name = [var[k] for k in s.inputs], var[s.output]
            if s.kind == "layer":
                stmts = self.layer(s, xs, name)
                stmts[-1] += self.comment(s)
                lines.extend(stmts)
            elif s.kind == "call":
                child = self.p.classes[s.child]
                keys = _keys(s.attr)
                if child.has_stats:
                    self.ensure(lines, "new_stats", keys)
                lines.append(self.call(child, s.args, keys, _hashes(s.attr), xs[0], name) + self.comment(s))
            else:
                self.sequence(lines, s, init=False, xs=xs, target=name)

        for s in steps:
            if not s.aux:
                emit(s)
        stats = "new_stats" if self.has_stats else "stats"
        if not self.is_root:
            lines.append(f"return {var[cls.output]}, new_stats" if self.has_stats else f"return {var[cls.output]}")
        else:
            lines.append("if not train:")
            lines.append(f"    return {var[cls.output]}")
            if cls.aux_outputs:
                lines[-1] += COMMENT + "# evaluation: the main output only"
                for s in steps:
                    if s.aux:
                        emit(s)
                outs = ", ".join(var[k] for k in (cls.output, *cls.aux_outputs))
                lines.append(f"return ({outs}), {stats}" + COMMENT + "# training: the auxiliary heads' outputs too")
            else:
                lines.append(f"return {var[cls.output]}, {stats}")
        self.fwd_used = set(self.used)
        self.out_var = var[cls.output]
        self.aux_vars = [var[k] for k in cls.aux_outputs]
        return lines

    # -- the functions
    def what(self) -> str:
        cls, span = self.cls, self.cls.span
        where = f" ({docstring_text(os.path.basename(span.file))}:{span.line})" if span else ""
        kind = f"block '{docstring_text(cls.kind)}'" if cls.is_block else docstring_text(cls.kind)
        return kind + where

    def source(self) -> str:
        """The forward and init functions of a block's class (the network's are written by the emitter)."""
        body, init = self.forward_lines(), self.init_lines()
        w = Writer()
        ins = (["params"] if self.has_params else []) + (["stats"] if self.has_stats else []) + ["x"]
        kws = [self.params[p.name] for p in self.cls.params if p.name in self.fwd_used]
        kws += (["train"] if self.needs_train else []) + (["train_frozen_bn"] if self.has_frozen_bn else [])
        kws += ["rng"] if self.has_rng else []
        w.line(f"def {self.fn}({', '.join(ins)}{', *, ' + ', '.join(kws) if kws else ''}):")
        with w.indent():
            ret = "(its output, its new batch_stats)" if self.has_stats else "its output"
            w.line(f'"""The forward of one {self.what()}: {ret}."""')
            if self.has_stats:
                w.line("new_stats = {}")
            self.write(w, body)
        if self.has_params or self.has_stats:
            w.line()
            w.line()
            kws = (["key"] if self.random else [])
            names = [self.params[p.name] for p in self.cls.params if p.name in self.init_used]
            names += (["dtype"] if self.has_stats else []) + (["param_dtype"] if self.has_params else [])
            sig = ", ".join(kws) + (", *, " if kws else "*, ") + ", ".join(names)
            w.line(f"def {self.init_fn}({sig}):")
            with w.indent():
                what = "(params, batch_stats)" if self.has_params and self.has_stats else (
                    "params" if self.has_params else "batch_stats")
                w.line(f'"""Fresh {what} of one {self.what()}."""')
                init = [line for line in init if line != "params, stats = {}, {}"]
                trees = [t for t, has in (("params", self.has_params), ("stats", self.has_stats)) if has]
                w.line(f"{', '.join(trees)} = {', '.join('{}' for _ in trees)}")
                self.write(w, init)
                w.line(f"return {', '.join(trees)}")
        return w.text()

    @staticmethod
    def write(w: Writer, lines: list[str]) -> None:
        """Statements at the writer's indentation, wrapped to :data:`WIDTH`; a trailing comment that does
        not fit goes on a line of its own above its statement."""
        for line in lines:
            for text in line.split("\n"):
                indent = len(text) - len(text.lstrip(" "))
                code, _, comment = text.partition(COMMENT)
                if comment and 4 * w.depth + len(code) + 2 + len(comment) > WIDTH:
                    w.line(" " * indent + comment)
                    comment = ""
                # a nested statement (a loop's body) wraps from its own column, its continuation indented below it
                parts = [" " * indent + part for part in _wrap(code[indent:], 4 * w.depth + indent)]
                if comment:
                    parts[-1] += "  " + comment
                for part in parts:
                    w.line(part)


class JaxEmitter(Emitter):
    """Prints the pure JAX module of a network from its plan (see the module docstring)."""

    backend = "JAX"

    def __init__(self, net: Network, scan_min_run: int | None = SCAN_MIN_RUN):
        graph, fragments = expand(net)  # the emitter's one read of the network's graph
        super().__init__(graph)
        self.net = net
        self.scan_min_run = scan_min_run  # None: a call per block (a loop over a long run), never a scan
        self.check_supported()
        self.plan: Plan = make_plan(graph, fragments)
        self.channel_major = flattens_channel_major(self.graph)
        self.globals = Namespace(MODULE_GLOBALS | LOCALS)  # a function never takes a local's name
        self.plugins = PluginNames(self.graph, "jax_emit", self.globals, "JAX")  # before any function takes a name
        self.helpers: set[str] = set()
        self.classes: dict[str, _ClassPrinter] = {}
        for cls in self.plan.classes:  # children before parents: a parent reads its children's needs
            self.classes[cls.id] = _ClassPrinter(self, cls)
        self.root = _ClassPrinter(self, self.plan.root)

    def supports(self, op: str) -> bool:
        if OPS[op].plugin:
            return OPS[op].jax_emit is not None
        return op == "input" or callable(getattr(_ClassPrinter, f"emit_{op}", None))

    def generate(self) -> str:
        bodies = [self.classes[c.id].source() for c in self.plan.classes]
        root = self.root
        body, init = root.forward_lines(), root.init_lines()
        g = self.graph
        source = source_name(g)
        out = Writer()
        out.line(f'"""{docstring_text(g.name)}: a JAX model generated by cnndsl from {source}. Do not edit.')
        out.line()
        out.line("init(key, *, dtype=jnp.float32, param_dtype=None) -> variables, a Flax-style {\"params\": ...,")
        out.line("\"batch_stats\": ...} tree; each layer's values come from the key folded with its dotted name.")
        out.line("apply(variables, x, *, train=False, rng=None): x is an NHWC batch; returns the output, or")
        out.line("(outputs, new_batch_stats) when train=True (rng, a jax.random key, drives dropout).")
        out.line("Under jax.jit, mark train static: jax.jit(apply, static_argnames=\"train\").")
        if self.root.has_frozen_bn:
            out.line("train_frozen_bn=True lets the frozen batch norms (freeze) update their statistics in training,")
            out.line("as the torch model's train_frozen_bn attribute does (static under jax.jit too).")
        out.line('"""')
        out.line()
        for line in sorted_imports(["import jax", "import jax.numpy as jnp", *self.plugins.imports]):
            out.line(line)
        out.line()
        shapes = ", ".join(_lit(_nhwc(g.node(i).shape)) for i in g.inputs)
        out.line(f"INPUT_SHAPE = {shapes}  # one example, NHWC without the batch axis")
        write_helpers(out, HELPERS, self.helpers)
        for text in self.plugins.sources:  # the plugin ops' own definitions
            out.line()
            out.line()
            out.lines += text.split("\n")
        for b in bodies:
            out.line()
            out.line()
            out.lines += b.rstrip("\n").split("\n")
        out.line()
        out.line()
        self._write_init(out, init)
        out.line()
        out.line()
        self._write_apply(out, body)
        return out.text()

    def _write_init(self, out: Writer, init: list[str]) -> None:
        out.line("def init(key, *, dtype=jnp.float32, param_dtype=None):")
        with out.indent():
            scheme = {None: "PyTorch's default", "kaiming": "He (Kaiming)"}.get(self.plan.init, "Glorot (Xavier)")
            out.line(f'"""Fresh variables for {docstring_text(self.graph.name)}: {scheme} initialisation, '
                     "in param_dtype")
            out.line('(default: dtype), batch statistics in dtype."""')
            out.line("param_dtype = dtype if param_dtype is None else param_dtype")
            _ClassPrinter.write(out, init)
            out.line('return {"params": params, "batch_stats": stats}')

    def _write_apply(self, out: Writer, body: list[str]) -> None:
        root = self.root
        switch = "train_frozen_bn=False, " if root.has_frozen_bn else ""  # as the torch model's attribute
        out.line(f"def apply(variables, {', '.join(root.args)}, *, train=False, {switch}rng=None):")
        with out.indent():
            g = self.graph
            doc = f"The forward pass of {docstring_text(g.name)}: {_shape_text(g.node(g.output).shape)} per example"
            if root.aux_vars:
                doc += f" (and {len(root.aux_vars)} auxiliary outputs when training)"
            out.line(f'"""{doc}."""')
            out.line('params, stats = variables["params"], variables["batch_stats"]')
            if root.has_rng:
                out.line("if train and rng is None:")
                with out.indent():
                    out.line('raise ValueError("apply(train=True) needs rng, a jax.random key, for dropout")')
            if root.has_stats:
                out.line("new_stats = {}")
            _ClassPrinter.write(out, body)


def _write(w: Writer, text: str) -> None:
    """One statement (or dict entry) at the writer's indentation, wrapped to :data:`WIDTH` by :func:`_wrap`."""
    for part in _wrap(text, 4 * w.depth):
        w.line(part)


def _wrap(text: str, indent: int) -> list[str]:
    """``text``, a line of code that starts ``indent`` columns in, as lines of at most :data:`WIDTH` columns
    (continuation lines indented relative to the first), broken inside brackets only: after the opening
    bracket of its widest bracketed group (after the ``=``, in an assignment) and at the commas of that
    group, recursively where an argument alone is too long. A line that cannot be broken stays as it is.

    >>> for line in _wrap("y = f(a, g(b, c), d)", 100):
    ...     print(line)
    y = f(a, g(b, c), d)
    >>> for line in _wrap("y = f(aaaa, g(bbbb, cccc), [dddd, eeee]) if train else x", 90):
    ...     print(line)
    y = f(
        aaaa, g(bbbb, cccc),
        [dddd,
         eeee]) if train else x
    """
    if indent + len(text) <= WIDTH:
        return [text]
    marks = _bracket_marks(text)
    if marks is None:
        return [text]
    brackets = _Brackets(text, marks)
    lines = brackets.lines(0, len(text), indent)
    return [" " * (col - indent) + part for col, part in lines]


#: One line's brackets, commas and ``=`` signs, and what to step over: comments, strings (an f-string whole, as
#: Python's tokenizer keeps its fields out of the line's structure) and the operators that contain ``=``.
#: A quote or a backslash left over means a line this scan does not read (Python's tokenizer does, below).
_MARKS = re.compile(
    r"#[^\n]*"
    r'|"""(?:[^"\\]|\\.|"(?!""))*"""'
    r"|'''(?:[^'\\]|\\.|'(?!''))*'''"
    r'|"(?:[^"\\\n]|\\.)*"'
    r"|'(?:[^'\\\n]|\\.)*'"
    r"|\*\*=|//=|>>=|<<=|[-+*/%&|^@<>!=:]="
    r"|(?P<mark>[()\[\]{},=])"
    r"|(?P<odd>[\"'\\])"
)


def _bracket_marks(text: str) -> list[tuple[int, str]] | None:
    """The ``(column, character)`` of each bracket, comma and ``=`` of a line of code (not inside a string or a
    comment), as Python's tokenizer finds its operators; ``None`` for a line it cannot tokenize on its own (an
    unclosed bracket or string). A line with brackets that do not pair, or a stray quote, goes to the tokenizer."""
    marks, depth = [], 0
    for m in _MARKS.finditer(text):
        if m.group("odd"):
            return _tokenized_marks(text)
        mark = m.group("mark")
        if mark:
            depth += (mark in "([{") - (mark in ")]}")
            if depth < 0:
                return _tokenized_marks(text)
            marks.append((m.start(), mark))
    return marks if depth == 0 else _tokenized_marks(text)


def _tokenized_marks(text: str) -> list[tuple[int, str]] | None:
    """:func:`_bracket_marks` by Python's tokenizer (``None`` where it fails on the line alone)."""
    try:
        tokens = list(tokenize.generate_tokens(io.StringIO(text).readline))
    except (tokenize.TokenError, SyntaxError):
        return None
    marks, in_fstring = [], 0
    for tok in tokens:
        kind = tokenize.tok_name.get(tok.type, "")
        in_fstring += (kind == "FSTRING_START") - (kind == "FSTRING_END")
        if tok.type == tokenize.OP and not in_fstring and tok.string in ("(", "[", "{", ")", "]", "}", ",", "="):
            marks.append((tok.start[1], tok.string))
    return marks


class _Brackets:
    """The bracket structure of one line of code, from its marks (:func:`_bracket_marks`): which bracket closes
    which, the commas and the ``=`` directly inside each bracket (or at the top level, ``None``)."""

    def __init__(self, text: str, marks: list[tuple[int, str]]):
        self.text = text
        self.close: dict[int, int] = {}  # column of an opening bracket -> column of its closing one
        self.parent: dict[int, int | None] = {}  # column of an opening bracket -> the bracket around it
        self.commas: dict[int | None, list[int]] = {}
        self.equals: dict[int | None, list[int]] = {}
        stack: list[int] = []
        for col, mark in marks:
            inner = stack[-1] if stack else None
            if mark in "([{":
                self.parent[col] = inner
                stack.append(col)
            elif mark in ")]}" and stack:
                self.close[stack.pop()] = col
            elif mark == ",":
                self.commas.setdefault(inner, []).append(col)
            elif mark == "=":
                self.equals.setdefault(inner, []).append(col)

    def _widest(self, lo: int, hi: int) -> int | None:
        """The opening bracket of the widest group in text[lo:hi] that no other group there contains
        (after the first ``=`` at that level, if any), or None."""
        outer = self._enclosing(lo)
        start = min([e for e in self.equals.get(outer, []) if lo <= e < hi], default=lo)
        best = None
        for o, c in self.close.items():
            inside = start <= o and c < hi and self.parent[o] == outer and c > o + 1
            if inside and (best is None or c - o > self.close[best] - best):
                best = o
        return best

    def _enclosing(self, col: int) -> int | None:
        """The innermost bracket open at column ``col``."""
        inner = None
        for o, c in self.close.items():
            if o < col <= c and (inner is None or o > inner):
                inner = o
        return inner

    def lines(self, lo: int, hi: int, indent: int) -> list[tuple[int, str]]:
        """text[lo:hi] laid out from column ``indent``: (column, text) pairs."""
        text = self.text
        if indent + hi - lo <= WIDTH:
            return [(indent, text[lo:hi])]
        o = self._widest(lo, hi)
        if o is None:
            return [(indent, text[lo:hi])]
        c = self.close[o]
        starts = [o + 1] + [comma + 1 for comma in self.commas.get(o, [])]
        starts = [s + len(text[s:c]) - len(text[s:c].lstrip()) for s in starts]
        starts = [s for s in starts if s < c]  # no item after a trailing comma
        if o == lo:  # a bracketed display: the items follow the bracket, aligned under the first
            out, (col, line), sep, item_col = [], (indent, text[o]), "", indent + 1
        else:  # a call (or subscript): a hanging indent, the arguments four columns in
            out, (col, line), sep, item_col = [(indent, text[lo:o + 1])], (indent + 4, ""), "", indent + 4
        for k, s in enumerate(starts):
            seg = text[s:starts[k + 1]].rstrip() if k + 1 < len(starts) else text[s:hi]
            if col + len(line) + len(sep) + len(seg) <= WIDTH:
                line, sep = line + sep + seg, " "
                continue
            if line:
                out.append((col, line))
            *done, (col, line) = self.lines(s, s + len(seg), item_col)
            out += done
            sep = " "
        out.append((col, line))
        return out


def _nhwc(shape: tuple[int, ...]) -> tuple[int, ...]:
    return (shape[1], shape[2], shape[0]) if len(shape) == 3 else shape


def generate(net: Network, *, scan_min_run: int | None = SCAN_MIN_RUN) -> str:
    """The source of the JAX module for a checked network (see the module docstring). ``scan_min_run`` is
    the shortest run of alike blocks that apply() scans over (``None``: none; calls per block).

    The source is parsed before it is returned: code that is not valid Python is a ``CompilerBug``.
    """
    return check_source(JaxEmitter(net, scan_min_run).generate(), "JAX")


class JaxModel:
    """A generated JAX model, executed in a fresh namespace: ``.init(key)`` and ``.apply(...)``."""

    def __init__(self, net: Network, source: str):
        self.network = net
        self.source = source
        namespace: dict[str, Any] = {"__name__": f"cnndsl_jax_{net.name}"}
        exec(compile(source, f"<cnndsl jax: {net.name}>", "exec"), namespace)  # noqa: S102 - our own source
        self.init = namespace["init"]
        self.apply = namespace["apply"]
        self.input_shape: tuple[int, ...] = namespace["INPUT_SHAPE"]

    def __repr__(self) -> str:
        return f"<JaxModel {self.network.name}>"


def build(net: Network) -> JaxModel:
    """Generate and load the JAX model for a checked network."""
    return JaxModel(net, generate(net))
