"""The JAX backend: a checked IR -> the source of a pure-function JAX model.

The generated module imports jax alone (no Flax, no cnndsl) and defines

* ``init(key) -> variables``, ``variables = {"params": ..., "batch_stats": ...}``
  nested by the layers' dotted names, as Flax lays them out (conv and fc
  ``kernel`` / ``bias``, batch norm ``scale`` / ``bias`` and ``mean`` / ``var``);
* ``apply(variables, x, *, train=False, rng=None)``: NHWC in, the main output
  out; with ``train=True`` it returns ``(outputs, new_batch_stats)``, where
  ``outputs`` is the main output, or ``(main, aux1, ...)`` when the network has
  auxiliary heads, and ``rng`` (a ``jax.random`` key) drives dropout.

Semantics follow PyTorch exactly (the torch backend is the reference): the IR's
explicit padding pairs, ceil-mode pooling as extra bottom/right padding that an
average pool does not count, PyTorch's LRN, adaptive pooling bins and
ConvTranspose2d, and the running-statistics update of BatchNorm2d. Weights move
between the backends with :mod:`cnndsl.convert`.
"""

from __future__ import annotations

import io
import math
import tokenize
from pathlib import Path
from typing import Any

from cnndsl.backends.base import (
    Emitter,
    Namespace,
    Unsupported,
    Writer,
    check_source,
    comment_text,
    docstring_text,
    string_literal,
)

from cnndsl.convert import flattens_channel_major
from cnndsl.ir import Graph, Node
from cnndsl.network import Network

# Helper functions the generated module may define; each is emitted only if a layer uses it.
HELPERS: dict[str, str] = {
    "conv": '''
def _conv(x, p, stride, padding, dilation=(1, 1), groups=1):
    """2-D convolution of an NHWC batch with an HWIO kernel and explicit (low, high) padding."""
    y = jax.lax.conv_general_dilated(x, p["kernel"], stride, padding, rhs_dilation=dilation,
                                     dimension_numbers=("NHWC", "HWIO", "NHWC"), feature_group_count=groups)
    return y + p["bias"] if "bias" in p else y
''',
    "conv_transpose": '''
def _conv_transpose(x, p, stride, padding, output_padding, dilation=(1, 1), groups=1):
    """PyTorch's ConvTranspose2d: a stride-1 convolution, with the kernel flipped, over the input
    dilated by the stride and padded by dilation * (kernel - 1) - padding (plus output_padding at the end)."""
    kernel = p["kernel"]
    pads = [(d * (k - 1) - lo, d * (k - 1) - hi + extra)
            for k, d, (lo, hi), extra in zip(kernel.shape[:2], dilation, padding, output_padding, strict=True)]
    y = jax.lax.conv_general_dilated(x, jnp.flip(kernel, (0, 1)), (1, 1), pads, lhs_dilation=stride,
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
        stats = {"mean": (1 - momentum) * stats["mean"] + momentum * mean,
                 "var": (1 - momentum) * stats["var"] + momentum * var * n / max(n - 1, 1)}
    else:
        mean, var = stats["mean"], stats["var"]
    y = (x - mean) * jax.lax.rsqrt(var + eps)
    return (y * p["scale"] + p["bias"] if p else y), stats
''',
    "dropout": '''
def _dropout(x, rate, key):
    """Inverted dropout: zero each value with probability `rate`, scale the rest by 1 / (1 - rate)."""
    keep = jax.random.bernoulli(key, 1.0 - rate, x.shape)
    return jnp.where(keep, x / (1.0 - rate), 0.0)
''',
    "uniform": '''
def _uniform(u, start, shape, fan_in):
    """PyTorch's default initialisation, U(-1/sqrt(fan_in), 1/sqrt(fan_in)), from u[start:], a U(-1, 1) draw."""
    size = math.prod(shape)
    return u[start:start + size].reshape(shape) * fan_in ** -0.5
''',
    "he_normal": '''
def _he_normal(n, start, shape, fan_out):
    """He (Kaiming) normal initialisation for ReLU networks, fan-out mode, N(0, 2 / fan_out), from n[start:]."""
    size = math.prod(shape)
    return n[start:start + size].reshape(shape) * (2.0 / fan_out) ** 0.5
''',
    "glorot_uniform": '''
def _glorot_uniform(u, start, shape, fan_in, fan_out):
    """Glorot (Xavier) uniform initialisation, U(-a, a) with a = sqrt(6 / (fan_in + fan_out)), from u[start:]."""
    size = math.prod(shape)
    return u[start:start + size].reshape(shape) * (6.0 / (fan_in + fan_out)) ** 0.5
''',
    "normal": '''
def _normal(n, start, shape, std):
    """N(0, std^2), from n[start:], a standard normal draw."""
    size = math.prod(shape)
    return n[start:start + size].reshape(shape) * std
''',
}

#: The longest line the generated module has (where the layer names allow): ruff's E501 limit, 120.
WIDTH = 120

# Names the generated module uses for itself; layer variables never take them.
RESERVED = ("jax", "jnp", "math", "init", "apply", "key", "key_u", "key_n", "u", "n", "variables", "params", "stats",
            "new_stats", "train", "rng", "rngs", "x", "INPUT_SHAPE", *(f"_{h}" for h in HELPERS))


def _shape(shape: tuple[int, ...]) -> str:
    """A logical (C, H, W) shape in the generated code's NHWC order."""
    if len(shape) == 3:
        c, h, w = shape
        return f"{h}x{w}x{c}"
    return "x".join(map(str, shape))


def _tuple(values) -> str:
    values = tuple(values)
    return f"({values[0]},)" if len(values) == 1 else "(" + ", ".join(map(str, values)) + ")"


def _path(name: str) -> str:
    """A dotted layer name as the subscripts into the variable tree: ``["layer1"]["0"]["conv1"]``."""
    return "".join(f"[{string_literal(part)}]" for part in name.split("."))


def _ceil_extra(node: Node, in_shape: tuple[int, ...]) -> tuple[int, int]:
    """The extra bottom/right padding ceil mode needs for the output size the IR inferred."""
    _, h, w = in_shape
    extra = []
    for size, out, k, s, (lo, hi) in zip((h, w), node.shape[1:], node.args["k"], node.args["s"], node.args["p"]):
        extra.append(max(0, (out - 1) * s + k - (size + lo + hi)))
    return (extra[0], extra[1])


class JaxEmitter(Emitter):
    """Writes the JAX module for one network: one ``emit_<op>`` method per op kind."""

    backend = "JAX"

    def __init__(self, net: Network):
        super().__init__(net.graph)
        self.net = net
        self.graph: Graph = net.graph
        self.names = Namespace(RESERVED)
        self.var: dict[str, str] = {}  # node name -> its variable in apply()
        self.helpers: set[str] = set()
        self.params: dict = {}  # nested tree of init expressions
        self.stats: dict = {}
        self.draws = {"u": 0, "n": 0}  # values taken so far from init's one uniform and one normal draw
        self.n_dropout = 0
        self.channel_major = flattens_channel_major(self.graph)

    # -- variables and init
    def _take(self, draw: str, shape: tuple[int, ...]) -> str:
        """The next values of init's uniform (``u``) or normal (``n``) draw: ``u, 1234``."""
        start = self.draws[draw]
        self.draws[draw] += math.prod(shape)
        return f"{draw}, {start}"

    @staticmethod
    def _put(tree: dict, name: str, leaf: dict) -> None:
        *scopes, last = name.split(".")
        for part in scopes:
            tree = tree.setdefault(part, {})
        tree[last] = leaf

    def _init_weight(self, node: Node, shape: tuple[int, ...], fan_in: int, fan_out: int) -> dict:
        """Init expressions for a kernel (and bias), by the network's scheme, as the torch backend does.

        ``fan_in`` and ``fan_out`` are PyTorch's, computed from its own weight layout.
        """
        scheme = self.graph.init
        if scheme is None or node.op == "fc" and not self.graph.init_fc:  # PyTorch's own default
            self.helpers.add("uniform")
            leaf = {"kernel": f"_uniform({self._take('u', shape)}, {_tuple(shape)}, fan_in={fan_in})"}
            if node.args.get("bias"):
                leaf["bias"] = f"_uniform({self._take('u', shape[-1:])}, ({shape[-1]},), fan_in={fan_in})"
            return leaf
        if scheme == "kaiming" and node.op == "fc":
            self.helpers.add("normal")
            kernel = f"_normal({self._take('n', shape)}, {_tuple(shape)}, std=0.01)"
        elif scheme == "kaiming":
            self.helpers.add("he_normal")
            kernel = f"_he_normal({self._take('n', shape)}, {_tuple(shape)}, fan_out={fan_out})"
        elif scheme in ("xavier", "glorot"):
            self.helpers.add("glorot_uniform")
            kernel = f"_glorot_uniform({self._take('u', shape)}, {_tuple(shape)}, fan_in={fan_in}, fan_out={fan_out})"
        else:
            raise Unsupported(f"initialisation '{scheme}' is not supported by the JAX backend",
                              self.graph.node(self.graph.inputs[0]).span)
        leaf = {"kernel": kernel}
        if node.args.get("bias"):
            leaf["bias"] = f"jnp.zeros({shape[-1]})"
        return leaf

    # -- apply() helpers
    def _in(self, node: Node, i: int = 0) -> str:
        return self.var[self.graph.inputs_of(node.name)[i]]

    def _in_shape(self, node: Node, i: int = 0) -> tuple[int, ...]:
        return self.graph.node(self.graph.inputs_of(node.name)[i]).shape

    def _p(self, node: Node) -> str:
        return f"params{_path(node.name)}"

    # -- ops: each returns the expression (or statement list) computing the node's value
    def emit_input(self, node: Node) -> str:
        raise AssertionError("inputs are the arguments of apply()")  # handled in apply()

    def emit_conv(self, node: Node) -> str:
        a, cin = node.args, self._in_shape(node)[0]
        kh, kw = a["k"]
        fan_in, fan_out = cin // a["groups"] * kh * kw, a["c"] * kh * kw  # of PyTorch's (O, I/g, kh, kw)
        self._put(self.params, node.name, self._init_weight(node, (kh, kw, cin // a["groups"], a["c"]),
                                                            fan_in, fan_out))
        self.helpers.add("conv")
        extra = ""
        if a["d"] != (1, 1):
            extra += f", dilation={_tuple(a['d'])}"
        if a["groups"] != 1:
            extra += f", groups={a['groups']}"
        return f"_conv({self._in(node)}, {self._p(node)}, {_tuple(a['s'])}, {_tuple(a['p'])}{extra})"

    def emit_deconv(self, node: Node) -> str:
        a, cin = node.args, self._in_shape(node)[0]
        kh, kw = a["k"]
        # PyTorch's fans for a ConvTranspose2d weight, laid out (in, out/groups, kh, kw)
        fan_in, fan_out = a["c"] // a["groups"] * kh * kw, cin * kh * kw
        self._put(self.params, node.name, self._init_weight(node, (kh, kw, cin // a["groups"], a["c"]),
                                                            fan_in, fan_out))
        self.helpers.add("conv_transpose")
        extra = ""
        if a["d"] != (1, 1):
            extra += f", dilation={_tuple(a['d'])}"
        if a["groups"] != 1:
            extra += f", groups={a['groups']}"
        return (f"_conv_transpose({self._in(node)}, {self._p(node)}, {_tuple(a['s'])}, {_tuple(a['p'])}, "
                f"{_tuple(a['output_padding'])}{extra})")

    def emit_fc(self, node: Node) -> str:
        in_shape = self._in_shape(node)
        x = self._in(node)
        if len(in_shape) == 3:
            x = self._flat(x)
        n_in = math.prod(in_shape)
        self._put(self.params, node.name, self._init_weight(node, (n_in, node.args["c"]), n_in, node.args["c"]))
        self.helpers.add("dense")
        return f"_dense({x}, {self._p(node)})"

    def _flat(self, x: str) -> str:
        if self.channel_major:  # PyTorch's (C, H, W) order, where the network's numbers depend on it
            return f"{x}.transpose(0, 3, 1, 2).reshape({x}.shape[0], -1)"
        return f"{x}.reshape({x}.shape[0], -1)"

    def emit_flatten(self, node: Node) -> str:
        return self._flat(self._in(node)) if len(self._in_shape(node)) == 3 else self._in(node)

    def _pool_padding(self, node: Node) -> tuple[tuple, tuple[int, int]]:
        extra = _ceil_extra(node, self._in_shape(node)) if node.args["ceil"] else (0, 0)
        return node.args["p"], extra

    def emit_maxpool(self, node: Node) -> str:
        a = node.args
        pad, extra = self._pool_padding(node)
        pad = tuple((lo, hi + e) for (lo, hi), e in zip(pad, extra))
        self.helpers.add("max_pool")
        return f"_max_pool({self._in(node)}, {_tuple(a['k'])}, {_tuple(a['s'])}, {_tuple(pad)})"

    def emit_avgpool(self, node: Node) -> str:
        a = node.args
        pad, extra = self._pool_padding(node)
        self.helpers.add("avg_pool")
        more = "" if extra == (0, 0) else f", ceil_extra={_tuple(extra)}"
        if not a["count_include_pad"] and any(sum(p) for p in pad):
            more += ", count_include_pad=False"
        return f"_avg_pool({self._in(node)}, {_tuple(a['k'])}, {_tuple(a['s'])}, {_tuple(pad)}{more})"

    def emit_gap(self, node: Node) -> str:
        return f"{self._in(node)}.mean((1, 2), keepdims=True)"

    def emit_adaptiveavgpool(self, node: Node) -> str:
        self.helpers.add("adaptive_avg_pool")
        return f"_adaptive_avg_pool({self._in(node)}, {_tuple(node.args['size'])})"

    def emit_relu(self, node: Node) -> str:
        return f"jax.nn.relu({self._in(node)})"

    def emit_tanh(self, node: Node) -> str:
        return f"jnp.tanh({self._in(node)})"

    def emit_sigmoid(self, node: Node) -> str:
        return f"jax.nn.sigmoid({self._in(node)})"

    def emit_softmax(self, node: Node) -> str:
        return f"jax.nn.softmax({self._in(node)}, axis=-1)"

    def emit_identity(self, node: Node) -> str:
        return self._in(node)

    def emit_dropout(self, node: Node) -> str:
        rate, x = node.args["p"], self._in(node)
        if rate == 0.0:
            return x
        if rate == 1.0:
            return f"jnp.zeros_like({x}) if train else {x}"
        self.helpers.add("dropout")
        self.n_dropout += 1
        return f"_dropout({x}, {rate}, rngs[{self.n_dropout - 1}]) if train else {x}"

    def emit_bn(self, node: Node) -> list[str]:
        a, c = node.args, node.shape[0]
        if a["affine"]:
            scale = "jnp.zeros" if self._zero_init(node) else "jnp.ones"
            self._put(self.params, node.name, {"scale": f"{scale}({c})", "bias": f"jnp.zeros({c})"})
        self._put(self.stats, node.name, {"mean": f"jnp.zeros({c})", "var": f"jnp.ones({c})"})
        self.helpers.add("batch_norm")
        p = self._p(node) if a["affine"] else "None"
        target = f"{self.var[node.name]}, new_stats{_path(node.name)}"
        call = (f"{self._in(node)}, {p}, stats{_path(node.name)}, train, momentum={a['momentum']}, "
                f"eps={a['eps']}")
        return [f"{target} = _batch_norm({call})"]

    def _zero_init(self, node: Node) -> bool:
        """A residual body's last batch norm starts at zero under ``zero_init_residual`` (as torchvision)."""
        if not (self.graph.init and self.graph.zero_init_residual):
            return False
        return any(self.graph.node(dst).op == "add" and port == 0 for dst, port in self.graph.consumers(node.name))

    def emit_lrn(self, node: Node) -> str:
        a = node.args
        self.helpers.add("lrn")
        return f"_lrn({self._in(node)}, size={a['size']}, alpha={a['alpha']}, beta={a['beta']}, k={a['k']})"

    def emit_concat(self, node: Node) -> str:
        parts = []
        for i, src in enumerate(self.graph.inputs_of(node.name)):
            x, shape = self.var[src], self.graph.node(src).shape
            if len(shape) == 3 and node.args["crop"] and shape[1:] != node.shape[1:]:
                # centre crop: offset (size - target) // 2, as the torch backend
                (h, w), (th, tw) = shape[1:], node.shape[1:]
                top, left = (h - th) // 2, (w - tw) // 2
                x = f"{x}[:, {top}:{top + th}, {left}:{left + tw}]"
            parts.append(x)
        return f"jnp.concatenate([{', '.join(parts)}], axis=-1)"

    def emit_add(self, node: Node) -> str:
        xs = [self.var[src] for src in self.graph.inputs_of(node.name)]
        scale = node.args["scale"]
        if scale != 1.0:
            xs[0] = f"{scale} * {xs[0]}"
        return " + ".join(xs)

    def emit_padshortcut(self, node: Node) -> str:
        s, cin = node.args["s"], self._in_shape(node)[0]
        x = self._in(node)
        if s != 1:
            x = f"{x}[:, ::{s}, ::{s}]"
        if node.args["c"] == cin:
            return x
        # the new channels are zeros after the old ones, as the torch backend pads
        return f"jnp.pad({x}, ((0, 0), (0, 0), (0, 0), (0, {node.args['c'] - cin})))"

    # -- the module
    def _comment(self, node: Node) -> str:
        where = ""
        if node.span is not None:
            where = f"{comment_text(Path(node.span.file).name)}:{node.span.line}  "
        return f"# {where}{node.name}: {_describe(node)} -> {_shape(node.shape)}"

    def _tree_lines(self, w: Writer, tree: dict, head: str, tail: str) -> None:
        if not tree:
            w.line(f"{head}{{}}{tail}")
            return
        flat = all(not isinstance(v, dict) for v in tree.values())
        inline = head + "{" + ", ".join(f"{string_literal(k)}: {v}" for k, v in tree.items()) + "}" + tail
        if flat and len(inline) + 4 * w.depth <= 110:
            w.line(inline)
            return
        w.line(head + "{")
        with w.indent():
            for k, v in tree.items():
                if isinstance(v, dict):
                    self._tree_lines(w, v, f"{string_literal(k)}: ", ",")
                else:
                    _write(w, f"{string_literal(k)}: {v},")
        w.line("}" + tail)

    def generate(self) -> str:
        g = self.graph
        self.check_supported()
        body = Writer()
        inputs = g.inputs
        for i, name in enumerate(inputs):
            self.var[name] = "x" if i == 0 else self.names.name(name)
        for node in g.nodes():
            if node.op == "input":
                continue
            self.var[node.name] = self.names.name(node.name)
            code = self.dispatch(node)
            body.line(self._comment(node))
            for text in code if isinstance(code, list) else [f"{self.var[node.name]} = {code}"]:
                body.lines += _wrap(text, 4)  # apply()'s body, one level in

        out = Writer()
        source = Path(g.node(inputs[0]).span.file).name if g.node(inputs[0]).span else "<unknown>"
        out.line(f'"""{g.name}: a JAX model generated by cnndsl from {docstring_text(source)}. Do not edit.')
        out.line()
        out.line("init(key) -> variables, a Flax-style {\"params\": ..., \"batch_stats\": ...} tree.")
        out.line("apply(variables, x, *, train=False, rng=None): x is an NHWC batch; returns the output, or")
        out.line("(outputs, new_batch_stats) when train=True (rng, a jax.random key, drives dropout).")
        out.line("Under jax.jit, mark train static: jax.jit(apply, static_argnames=\"train\").")
        out.line('"""')
        out.line()
        if self.draws["u"] or self.draws["n"]:
            out.line("import math")
            out.line()
        out.line("import jax")
        out.line("import jax.numpy as jnp")
        out.line()
        shapes = ", ".join(_tuple(_nhwc(g.node(i).shape)) for i in inputs)
        out.line(f"INPUT_SHAPE = {shapes}  # one example, NHWC without the batch axis")
        for helper, source in HELPERS.items():
            if helper in self.helpers:
                out.line()
                out.line()
                for text in source.strip("\n").split("\n"):
                    out.line(text)
        out.line()
        out.line()
        self._write_init(out)
        out.line()
        out.line()
        self._write_apply(out, body)
        return out.text()

    def _write_init(self, out: Writer) -> None:
        out.line("def init(key):")
        with out.indent():
            scheme = {None: "PyTorch's default", "kaiming": "He (Kaiming)"}.get(self.graph.init, "Glorot (Xavier)")
            out.line(f'"""Fresh variables for {self.graph.name}: {scheme} initialisation."""')
            u, n = self.draws["u"], self.draws["n"]
            if u and n:
                out.line("key_u, key_n = jax.random.split(key)")
            if u:  # one draw for all the weights (one random kernel to compile), sliced among them below
                out.line(f"u = jax.random.uniform({'key_u' if n else 'key'}, ({u},), jnp.float32, -1.0, 1.0)"
                         "  # shared out below")
            if n:
                out.line(f"n = jax.random.normal({'key_n' if u else 'key'}, ({n},), jnp.float32)  # shared out below")
            if not u and not n:
                out.line("del key  # nothing random to initialise")
            self._tree_lines(out, self.params, "params = ", "")
            self._tree_lines(out, self.stats, "batch_stats = ", "")
            out.line('return {"params": params, "batch_stats": batch_stats}')

    def _write_apply(self, out: Writer, body: Writer) -> None:
        g = self.graph
        args = ", ".join(self.var[i] for i in g.inputs)
        out.line(f"def apply(variables, {args}, *, train=False, rng=None):")
        with out.indent():
            main = self.var[g.output]
            aux = [self.var[a] for a in g.aux_outputs]
            doc = f"The forward pass of {g.name}: {main}, {_shape(g.node(g.output).shape)} per example"
            if aux:
                doc += f" (and {', '.join(aux)} when training)"
            out.line(f'"""{doc}."""')
            out.line('params, stats = variables["params"], variables["batch_stats"]')
            if self.stats:
                out.line("new_stats = jax.tree_util.tree_map(lambda v: v, stats)  # a copy the batch norms update")
            if self.n_dropout:
                out.line("if train and rng is None:")
                with out.indent():
                    out.line('raise ValueError("apply(train=True) needs rng, a jax.random key, for dropout")')
                out.line(f"rngs = jax.random.split(rng, {self.n_dropout}) if train else None")
            for text in body.lines:
                out.line(text)
            out.line("if not train:")
            with out.indent():
                out.line(f"return {main}")
            outputs = f"({', '.join([main, *aux])})" if aux else main
            out.line(f"return {outputs}, {'new_stats' if self.stats else 'stats'}")


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
    try:
        tokens = list(tokenize.generate_tokens(io.StringIO(text).readline))
    except (tokenize.TokenError, SyntaxError):
        return [text]
    brackets = _Brackets(text, tokens)
    lines = brackets.lines(0, len(text), indent)
    return [" " * (col - indent) + part for col, part in lines]


class _Brackets:
    """The bracket structure of one line of code, from its tokens: which bracket closes which, the
    commas and the ``=`` directly inside each bracket (or at the top level, ``None``)."""

    def __init__(self, text: str, tokens: list[tokenize.TokenInfo]):
        self.text = text
        self.close: dict[int, int] = {}  # column of an opening bracket -> column of its closing one
        self.parent: dict[int, int | None] = {}  # column of an opening bracket -> the bracket around it
        self.commas: dict[int | None, list[int]] = {}
        self.equals: dict[int | None, list[int]] = {}
        stack: list[int] = []
        in_fstring = 0
        for tok in tokens:
            kind = tokenize.tok_name.get(tok.type, "")
            in_fstring += (kind == "FSTRING_START") - (kind == "FSTRING_END")
            if tok.type != tokenize.OP or in_fstring:
                continue
            col, inner = tok.start[1], stack[-1] if stack else None
            if tok.string in "([{":
                self.parent[col] = inner
                stack.append(col)
            elif tok.string in ")]}" and stack:
                self.close[stack.pop()] = col
            elif tok.string == ",":
                self.commas.setdefault(inner, []).append(col)
            elif tok.string == "=":
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


def _describe(node: Node) -> str:
    """A layer in the papers' short notation, for comments: ``conv3-64/2``, ``maxpool3/2 ceil``, ``fc-10``."""
    a = node.args

    def size(k: tuple[int, int]) -> str:
        return str(k[0]) if k[0] == k[1] else f"{k[0]}x{k[1]}"

    if node.op in ("conv", "deconv"):
        stride = "" if a["s"] == (1, 1) else f"/{size(a['s'])}"
        groups = f" groups={a['groups']}" if a["groups"] != 1 else ""
        return f"{node.op}{size(a['k'])}-{a['c']}{stride}{groups}"
    if node.op in ("maxpool", "avgpool"):
        return f"{node.op}{size(a['k'])}/{size(a['s'])}{' ceil' if a['ceil'] else ''}"
    if node.op == "fc":
        return f"fc-{a['c']}"
    if node.op == "dropout":
        return f"dropout({a['p']})"
    return node.op


def _nhwc(shape: tuple[int, ...]) -> tuple[int, ...]:
    return (shape[1], shape[2], shape[0]) if len(shape) == 3 else shape


def generate(net: Network) -> str:
    """The source of the JAX module for a checked network (see the module docstring).

    The source is parsed before it is returned: code that is not valid Python is a ``CompilerBug``.
    """
    return check_source(JaxEmitter(net).generate(), "JAX")


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
