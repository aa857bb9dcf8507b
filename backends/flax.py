"""The Flax NNX backend: a printer of the :mod:`~cnndsl.backends.plan`.

The generated module imports ``jax`` and ``flax.nnx`` only and defines one ``nnx.Module`` per class of
the plan (a block shared by its instances, built with keyword arguments) and the network's class, built
as ``Resnet18(rngs=nnx.Rngs(0))`` and called on an NHWC batch. ``model.train()`` / ``model.eval()`` switch
BatchNorm (``use_running_average``) and Dropout (``deterministic``) as NNX does; a network with auxiliary
heads returns ``(main, aux1, ...)`` in training mode, the main output in evaluation mode.

Semantics are PyTorch's (the torch backend is the reference), with the JAX backend's helpers for what
``nnx`` has no layer for: explicit ``(lo, hi)`` padding, ceil-mode pooling, average-pool divisors, LRN,
adaptive pooling. BatchNorm's momentum is ``1 - `` PyTorch's; NNX keeps the biased batch variance in its
running average (PyTorch the unbiased one), so running variances drift apart by ``n / (n - 1)`` in training.
A transposed convolution is an ``nnx.Conv`` over the input dilated by the stride, its kernel stored flipped.

:func:`torch_to_flax` and :func:`flax_to_torch` move weights between a torch ``state_dict`` and the model,
through :mod:`cnndsl.backends.jax_weights` (which permutes the first fc's rows for the NHWC flatten order).
"""

from __future__ import annotations

import os
from typing import Any

from cnndsl.backends.base import (
    Emitter,
    Namespace,
    PluginNames,
    Unsupported,
    Writer,
    assign_variables,
    check_source,
    docstring_text,
    plugin_args,
    sorted_imports,
    source_name,
    write_helpers,
)
from cnndsl.backends.jax import HELPERS as JAX_HELPERS
from cnndsl.backends.jax import NhwcLayerCode, _like, _lit, _wrap
from cnndsl.backends.jax_weights import (
    axes,
    flattens_channel_major,
    jax_path,
    jax_to_torch,
    present,
    torch_to_jax,
    tree_get,
    tree_put,
)
from cnndsl.backends.plan import ClassPlan, Plan, Ref, Step, collapse, element_args, expand, make_plan

from cnndsl.ir.network import Network
from cnndsl.ir.ops import OPS, Family, Fans, Op

#: Helpers of the generated module beyond the JAX backend's: initialisers and the transposed conv's padding.
HELPERS: dict[str, str] = {
    "uniform": '''
def _uniform(bound):
    """U(-bound, bound): PyTorch's default initialisation has bound = 1 / sqrt(fan_in)."""
    def init(key, shape, dtype=jnp.float32):
        return jax.random.uniform(key, shape, dtype, -bound, bound)

    return init
''',
    "transposed_padding": '''
def _transposed_padding(kernel, dilation, padding, output_padding):
    """PyTorch's ConvTranspose2d as a convolution over the input dilated by the stride: its (low, high) padding."""
    return tuple((d * (k - 1) - lo, d * (k - 1) - hi + extra)
                 for k, d, (lo, hi), extra in zip(kernel, dilation, padding, output_padding, strict=True))
''',
    "FrozenBatchNorm": '''
class _FrozenBatchNorm(nnx.BatchNorm):
    """A frozen layer's batch norm (freeze(...)): it normalises with its running statistics and keeps them, in
    training too (torchvision's FrozenBatchNorm2d), unless model.set_attributes(train_frozen_bn=True)."""

    train_frozen_bn = False

    def __call__(self, x, use_running_average=None, **kwargs):
        return super().__call__(x, use_running_average if self.train_frozen_bn else True, **kwargs)
''',
    **{h: JAX_HELPERS[h] for h in ("max_pool", "avg_pool", "adaptive_avg_pool", "lrn", "upsample")},
}
#: Module-level initialisers, written when a layer uses them.
CONSTANTS = {
    "HE_NORMAL": 'nnx.initializers.variance_scaling(2.0, "fan_out", "normal")  # kaiming_normal_(mode="fan_out")',
    "GLOROT_UNIFORM": "nnx.initializers.xavier_uniform()",
    "FC_NORMAL": "nnx.initializers.normal(0.01)",
}
#: Names the generated module defines at its top level.
MODULE_GLOBALS = frozenset({"jax", "jnp", "nnx", *(f"_{h}" for h in HELPERS), *CONSTANTS})
#: nnx.Module's public methods (flax 0.10 to 0.12), and the attributes ``train()`` / ``eval()`` set.
NNX_ATTRS = frozenset({"eval", "iter_children", "iter_modules", "perturb", "set_attributes", "sow", "train",
                       "deterministic", "use_running_average", "layers"})
#: The ops held as submodules (the rest are written inline in ``__call__``).
MODULE_OPS = frozenset({"conv", "deconv", "fc", "bn", "dropout", "droppath", "pointwise", "layernorm", "groupnorm"})
#: The ops held as a bare ``nnx.Param`` attribute (made by ``ctor_<op>``), which their ``emit_<op>`` reads.
PARAM_OPS = frozenset({"layerscale"})


def _nnx_finds_torch_fans(op: Op) -> bool:
    """Whether nnx's initialisers, which read a kernel's fans from its last two axes (input, output) and its
    receptive field from the others, find PyTorch's in the op's kernel: whether the kernel's JAX layout ends
    in the two axes PyTorch's starts with, swapped (a transposed conv's does not: PyTorch's is (in, out, ...))."""
    kernel = next(w for w in op.weights if w.jax == "kernel")
    return axes(kernel.jax_axes)[-2:] == axes(kernel.torch_axes)[1::-1]


class _ClassPrinter(NhwcLayerCode):
    """Prints one class of the plan: its constructor parameters, members and ``__call__``."""

    def __init__(self, printer: FlaxPrinter, cls: ClassPlan, name: str):
        self.p = printer
        self.cls = cls
        self.name = name
        self.is_root = cls.id == ""
        locals_ = Namespace(printer.globals.taken() | {"self", "rngs"})
        self.params = {}
        for prm in cls.params:
            self.params[prm.name] = prm.name if locals_.is_free(prm.name) else locals_.name(prm.name)
            locals_.reserve(self.params[prm.name])
        self.attrs = Namespace(NNX_ATTRS)
        self.member: dict[str, str] = {}  # step attr hint -> attribute
        for step in cls.steps:
            if step.kind != "layer" or step.op in MODULE_OPS or step.op in PARAM_OPS or OPS[step.op].plugin:
                local = step.attr.rsplit(".", 1)[-1]
                hint = f"{step.op or 'block'}{local}" if local.isdigit() else step.attr  # conv0, not v_0
                self.member[step.attr] = self.attrs.name(hint)
        self.kept: dict[str, str] = {}  # constructor parameter -> attribute holding it (forward numbers)
        self.init_lines: list[str] = []

    # -- values
    def ctor(self, v: Any, full: bool = False) -> str:
        """A value in ``__init__``: a literal, or an expression of the constructor's parameters."""
        if isinstance(v, Ref):
            e = self.params[v.param] if v.factor == 1 else f"{v.factor} * {self.params[v.param]}"
            return _like(v.like, e) if full else e
        c = collapse(v)
        return _lit(v if full or isinstance(c, tuple) else c)

    def val(self, v: Any) -> str:
        """A value as the shared layer code (:class:`NhwcLayerCode`) writes it: as in ``__call__``."""
        return self.fwd(v)

    def fwd(self, v: Any) -> str:
        """A value in ``__call__`` (full form): a literal, or the attribute that keeps the parameter."""
        if isinstance(v, Ref):
            if v.param not in self.kept:
                self.kept[v.param] = self.attrs.name(v.param)
            e = f"self.{self.kept[v.param]}"
            return _like(v.like, e if v.factor == 1 else f"{v.factor} * {e}")
        return _lit(v)

    def fan(self, *terms: Any) -> str:
        """A product of values (channels, kernel sizes) as an expression, its constant part folded."""
        const, names = 1, []
        for t in terms:
            if isinstance(t, Ref) and t.like is None:  # the parameter holds the value in full: a pair is k[0] * k[1]
                first = dict(self.p.plan.instances[self.cls.instances[0]].args)[t.param]
                e = self.ctor(t)
                names += [f"{e}[{i}]" for i in range(len(first))] if isinstance(first, tuple) else [e]
            elif isinstance(t, Ref):
                names += [self.ctor(t)] * (len(t.like) if isinstance(t.like, tuple) else 1)
            elif isinstance(t, tuple):
                for x in t:
                    const *= x
            elif isinstance(t, str):  # an expression already written
                names.append(t)
            else:
                const *= t
        parts = names + ([str(const)] if const != 1 or not names else [])
        return " * ".join(parts)

    # -- members
    def module(self, step: Step) -> str:
        if step.kind == "call":
            return self.call(step.child, step.args)
        if step.kind == "sequence":
            items = []
            for child, args in zip(step.children, element_args(step)):
                items.append(self.call(child, args))
            return "nnx.Sequential(" + ", ".join(items) + ")"
        if OPS[step.op].plugin:  # its flax_emit class, built with its keywords (cnndsl.ops)
            args = plugin_args(step, "flax_emit")
            kws = [f"{k}={self.ctor(v, full=True)}" for k, v in args]
            return f"{self.p.plugins.name(step.op)}({', '.join([*kws, 'rngs=rngs'])})"
        return getattr(self, f"ctor_{step.op}")(step)

    def call(self, child: str, args) -> str:
        cp = self.p.classes[child]
        derived = {q.name for q in cp.cls.params if q.origin == "derived"}  # the child takes these in full
        kws = [f"{cp.params[k]}={self.ctor(v, full=k in derived)}" for k, v in args]
        return f"{cp.name}({', '.join([*kws, 'rngs=rngs'])})"

    def fans(self, step: Step) -> tuple[str, str]:
        """The layer's PyTorch fans (its op's :class:`~cnndsl.ir.ops.Fans`) as two expressions of the constructor's
        parameters: the weight axis's factors first, then the receptive field's, constants folded."""
        fans, a = OPS[step.op].fans, dict(step.args)

        def factor(f: str | int) -> Any:
            if isinstance(f, int):
                return f
            num, den = Fans.quotient(f)
            n, d = a[num], (a[den] if den else 1)
            if not isinstance(n, Ref) and not isinstance(d, Ref):
                return n // d
            if not isinstance(d, Ref) and d == 1:
                return n
            return f"{self.ctor(n)} // {self.ctor(d)}"

        field = [a[name] for name in fans.receptive]
        return self.fan(*map(factor, fans.fan_in), *field), self.fan(*map(factor, fans.fan_out), *field)

    def _kernel_init(self, step: Step) -> list[str]:
        scheme, bias = self.p.plan.init, step.arg("bias")
        fan_in, fan_out = self.fans(step)
        dense = OPS[step.op].family is Family.DENSE  # kaiming's N(0, 0.01) for nn.Linear
        if scheme is None or dense and not self.p.plan.init_fc:  # PyTorch's own default
            self.p.helpers.add("uniform")
            bound = f"({fan_in}) ** -0.5" if " " in fan_in else f"{fan_in} ** -0.5"
            return [f"kernel_init=_uniform({bound})"] + ([f"bias_init=_uniform({bound})"] if bias else [])
        if not _nnx_finds_torch_fans(OPS[step.op]):  # PyTorch's fans computed here, not by nnx
            if scheme == "kaiming":
                return [f"kernel_init=nnx.initializers.normal((2 / ({fan_out})) ** 0.5)"]
            self.p.helpers.add("uniform")
            return [f"kernel_init=_uniform((6 / ({fan_in} + {fan_out})) ** 0.5)"]
        if scheme == "kaiming":
            const = "FC_NORMAL" if dense else "HE_NORMAL"
        elif scheme in ("xavier", "glorot"):
            const = "GLOROT_UNIFORM"
        else:
            raise Unsupported(f"initialisation '{scheme}' is not supported by the Flax backend", step.span)
        self.p.constants.add(const)
        return [f"kernel_init={const}"]

    def _conv_options(self, a: dict) -> list[str]:
        """An nnx.Conv's dilation, groups and bias keywords, where they are not its defaults."""
        out = []
        if collapse(a["d"]) != 1:
            out.append(f"kernel_dilation={self.ctor(a['d'])}")
        if a["groups"] != 1:
            out.append(f"feature_group_count={self.ctor(a['groups'])}")
        if a["bias"] is not True:
            out.append(f"use_bias={self.ctor(a['bias'])}")
        return out

    def ctor_conv(self, step: Step) -> str:
        a = dict(step.args)
        parts = [self.ctor(a["in_channels"]), self.ctor(a["c"]), self.ctor(a["k"], full=True)]
        if collapse(a["s"]) != 1:
            parts.append(f"strides={self.ctor(a['s'])}")
        parts.append(f"padding={self.ctor(a['p'])}")
        parts += self._conv_options(a)
        parts += self._kernel_init(step)
        return f"nnx.Conv({', '.join([*parts, 'rngs=rngs'])})"

    def ctor_deconv(self, step: Step) -> str:
        a = dict(step.args)
        self.p.helpers.add("transposed_padding")
        parts = [self.ctor(a["in_channels"]), self.ctor(a["c"]), self.ctor(a["k"], full=True)]
        pad = (f"_transposed_padding({self.ctor(a['k'], True)}, {self.ctor(a['d'], True)}, "
               f"{self.ctor(a['p'], True)}, {self.ctor(a['output_padding'], True)})")
        parts.append(f"padding={pad}")
        if collapse(a["s"]) != 1:
            parts.append(f"input_dilation={self.ctor(a['s'])}")
        parts += self._conv_options(a)
        parts += self._kernel_init(step)
        return f"nnx.Conv({', '.join([*parts, 'rngs=rngs'])})"

    def ctor_fc(self, step: Step) -> str:
        a = dict(step.args)
        parts = [self.ctor(a["in_features"]), self.ctor(a["c"])]
        if a["bias"] is not True:
            parts.append(f"use_bias={self.ctor(a['bias'])}")
        parts += self._kernel_init(step)
        return f"nnx.Linear({', '.join([*parts, 'rngs=rngs'])})"

    def ctor_bn(self, step: Step) -> str:
        a = dict(step.args)
        m = a["momentum"]
        momentum = f"1 - {self.ctor(m)}" if isinstance(m, Ref) else repr(round(1 - m, 12))
        parts = [self.ctor(a["features"]), f"momentum={momentum}"]
        if isinstance(a["eps"], Ref) or a["eps"] != 1e-5:
            parts.append(f"epsilon={self.ctor(a['eps'])}")
        if a["affine"] is not True:
            parts += [f"use_scale={self.ctor(a['affine'])}", f"use_bias={self.ctor(a['affine'])}"]
        if a["zero_init"] is True:
            parts.append("scale_init=nnx.initializers.zeros")
        elif isinstance(a["zero_init"], Ref):
            parts.append(f"scale_init=nnx.initializers.zeros if {self.ctor(a['zero_init'])} else nnx.initializers.ones")
        frozen = a.get("frozen", False)  # freeze(...): a batch norm that keeps its running statistics
        if frozen is not False:
            self.p.helpers.add("FrozenBatchNorm")
        cls = ("nnx.BatchNorm" if frozen is False else "_FrozenBatchNorm" if frozen is True
               else f"(_FrozenBatchNorm if {self.ctor(frozen)} else nnx.BatchNorm)")
        return f"{cls}({', '.join([*parts, 'rngs=rngs'])})"

    def ctor_dropout(self, step: Step) -> str:
        return f"nnx.Dropout({self.ctor(step.arg('p'))}, rngs=rngs)"

    def ctor_droppath(self, step: Step) -> str:
        # stochastic depth: a dropout whose mask is one value per sample, shared by all the sample's values
        dims = tuple(range(1, len(step.shape) + 1))
        return f"nnx.Dropout({self.ctor(step.arg('p'))}, broadcast_dims={_lit(dims)}, rngs=rngs)"

    def ctor_pointwise(self, step: Step) -> str:
        return self.ctor_fc(step)  # an nnx.Linear: it applies over the last axis, an NHWC map's channels

    def _norm(self, step: Step, groups: str | None = None) -> list[str]:
        """A layer or group norm's arguments: nnx's default epsilon is 1e-6, PyTorch's 1e-5, and nnx's fast
        variance, E[x^2] - E[x]^2, is not PyTorch's."""
        a = dict(step.args)
        parts = [self.ctor(a["features"]), *([groups] if groups else [])]
        if isinstance(a["eps"], Ref) or a["eps"] != 1e-6:
            parts.append(f"epsilon={self.ctor(a['eps'])}")
        if a["affine"] is not True:
            parts += [f"use_scale={self.ctor(a['affine'])}", f"use_bias={self.ctor(a['affine'])}"]
        return [*parts, "use_fast_variance=False", "rngs=rngs"]

    def ctor_layernorm(self, step: Step) -> str:
        return f"nnx.LayerNorm({', '.join(self._norm(step))})"

    def ctor_groupnorm(self, step: Step) -> str:
        groups = f"num_groups={self.ctor(step.arg('groups'))}"
        return f"nnx.GroupNorm({', '.join(self._norm(step, groups))})"

    def ctor_layerscale(self, step: Step) -> str:
        return f"nnx.Param(jnp.full(({self.ctor(step.arg('features'))},), {self.ctor(step.arg('init'))}))"

    def emit_layerscale(self, step, xs):
        return f"{xs[0]} * self.{self.member[step.attr]}"

    # -- __call__
    def expr(self, step: Step, xs: list[str]) -> tuple[list[str], str]:
        """Statements to run first, and the expression of the step's value."""
        if step.kind == "layer" and OPS[step.op].plugin:
            return [], f"self.{self.member[step.attr]}({', '.join(xs)})"
        if step.kind != "layer" or step.op in MODULE_OPS:
            pre = []
            if step.op == "fc" and step.arg("flatten") is True:
                pre = [f"{xs[0]} = {self.flat(xs[0])}"]
            return pre, f"self.{self.member[step.attr]}({xs[0]})"
        return [], getattr(self, f"emit_{step.op}")(step, xs)

    def emit_relu(self, step, xs):
        return f"nnx.relu({xs[0]})"

    def emit_sigmoid(self, step, xs):
        return f"nnx.sigmoid({xs[0]})"

    def emit_softmax(self, step, xs):
        return f"nnx.softmax({xs[0]}, axis=-1)"

    # -- the class
    def comment(self, step: Step) -> str:
        """The step's trailing comment (:meth:`where`)."""
        where = self.where(step)
        return "  # " + where if where else ""

    def forward(self) -> list[str]:
        cls = self.cls
        names = Namespace(self.p.globals.taken() | {"self"})
        var: dict[str, str] = {}
        if len(cls.inputs) == 1:
            var[cls.inputs[0]] = "x"
            names.reserve("x")
        else:
            for key in cls.inputs:
                var[key] = names.name(key)
        steps = list(cls.steps)
        assign_variables(cls, var, names)
        main = [s for s in steps if not s.aux]
        aux = [s for s in steps if s.aux]
        lines: list[str] = []

        def emit(s: Step) -> None:
            pre, e = self.expr(s, [var[k] for k in s.inputs])
            lines.extend(pre)
            lines.append(f"{var[s.output]} = {e}{self.comment(s)}")

        for s in main:
            emit(s)
        if aux:
            lines.append("if self.deterministic:  # evaluation: the main output only")
            lines.append(f"    return {var[cls.output]}")
            for s in aux:
                emit(s)
            outs = ", ".join(var[k] for k in (cls.output, *cls.aux_outputs))
            lines.append(f"return {outs}  # training: the auxiliary heads' outputs too")
        else:
            lines.append(f"return {var[cls.output]}")
        self.args = [var[k] for k in cls.inputs]
        return lines

    def source(self) -> str:
        cls = self.cls
        members = []
        for step in cls.steps:
            if step.attr in self.member:
                members.append(f"self.{self.member[step.attr]} = {self.module(step)}")
        body = self.forward()
        w = Writer()
        w.line(f"class {self.name}(nnx.Module):")
        with w.indent():
            span = cls.span
            where = f" ({docstring_text(os.path.basename(span.file))}:{span.line})" if span else ""
            what = f"Block '{docstring_text(cls.kind)}'" if cls.is_block else (
                f"Network '{docstring_text(cls.kind)}'" if self.is_root else docstring_text(cls.kind))
            w.line(f'"""{what}{where}."""')
            w.line()
            sig = "".join(f"{self.params[p.name]}: {self._ptype(p.name)}, " for p in cls.params)
            w.line(f"def __init__(self, {sig}*, rngs: nnx.Rngs) -> None:")
            with w.indent():
                for m in members:
                    for part in _wrap(m, 4 * w.depth):
                        w.line(part)
                for param, attr in self.kept.items():
                    w.line(f"self.{attr} = {self.params[param]}")
                if cls.aux_outputs:
                    w.line("self.deterministic = False  # model.train() / model.eval() set it, as on nnx.Dropout")
                if not members and not self.kept and not cls.aux_outputs:
                    w.line("del rngs  # no layer with weights")
            w.line()
            args = ", ".join(f"{a}: jax.Array" for a in self.args)
            ret = "jax.Array" if not cls.aux_outputs else "jax.Array | tuple[jax.Array, ...]"
            w.line(f"def __call__(self, {args}) -> {ret}:")
            with w.indent():
                for line in body:
                    for part in _wrap(line, 4 * w.depth):
                        w.line(part)
        return w.text()

    def _ptype(self, param: str) -> str:
        inst = self.p.plan.instances.get(self.cls.instances[0]) if self.cls.instances[0] else None
        v = dict(inst.args).get(param) if inst else None
        if isinstance(v, bool):
            return "bool"
        if isinstance(v, float):
            return "float"
        if isinstance(v, tuple):
            return "tuple"
        if isinstance(v, str):
            return "str"
        return "int"


class FlaxPrinter(Emitter):
    """Prints the Flax NNX module of a network from its plan."""

    backend = "Flax"

    def __init__(self, net: Network):
        graph, fragments = expand(net)  # the emitter's one read of the network's graph
        super().__init__(graph)
        self.net = net
        self.check_supported()
        self.plan: Plan = make_plan(graph, fragments)
        self.channel_major = flattens_channel_major(self.graph)
        self.globals = Namespace(MODULE_GLOBALS)
        self.plugins = PluginNames(self.graph, "flax_emit", self.globals, "Flax")  # before any class takes a name
        self.helpers: set[str] = set()
        self.constants: set[str] = set()
        self.classes: dict[str, Any] = {}
        for cls in self.plan.classes:
            self.classes[cls.id] = _ClassPrinter(self, cls, self.globals.name(cls.name))
        self.class_name = self.globals.name(self.plan.root.name)
        self.classes[""] = _ClassPrinter(self, self.plan.root, self.class_name)

    def supports(self, op: str) -> bool:
        if OPS[op].plugin:
            return OPS[op].flax_emit is not None
        return op == "input" or op in MODULE_OPS or callable(getattr(_ClassPrinter, f"emit_{op}", None))

    def generate(self) -> str:
        bodies = [self.classes[c.id].source() for c in self.plan.classes] + [self.classes[""].source()]
        g = self.graph
        source = source_name(g)
        out = Writer()
        out.line(f'"""{docstring_text(g.name)}: a Flax NNX model generated by cnndsl from {source}. Do not edit.')
        out.line()
        out.line(f"model = {self.class_name}(rngs=nnx.Rngs(0)); model(x) on an NHWC batch x. model.train() (the")
        out.line("default) and model.eval() switch batch norm and dropout, as NNX does.")
        out.line('"""')
        out.line()
        jnp_used = any("jnp." in b for b in [*bodies, *self.plugins.sources]) or any(
            "jnp." in HELPERS[h] for h in self.helpers)
        for line in sorted_imports(["import jax", *(["import jax.numpy as jnp"] if jnp_used else []),
                                    "from flax import nnx", *self.plugins.imports]):
            out.line(line)
        used = [(name, value) for name, value in CONSTANTS.items() if name in self.constants]
        if used:
            out.line()
        for name, value in used:
            out.line(f"{name} = {value}")
        write_helpers(out, HELPERS, self.helpers)
        for source in self.plugins.sources:  # the plugin ops' own definitions
            out.line()
            out.line()
            out.lines += source.split("\n")
        text = out.text()
        return text + "".join("\n\n" + b for b in bodies)

    def paths(self) -> dict[str, tuple]:
        """Each IR layer with weights or statistics -> its path of attributes (and indices) in the model."""
        out: dict[str, tuple] = {}

        def walk(class_id: str, scope: str, path: tuple) -> None:
            cp = self.classes[class_id]
            for step in cp.cls.steps:
                if step.attr not in cp.member:
                    continue
                here = path + (cp.member[step.attr],)
                name = f"{scope}.{step.attr}" if scope else step.attr
                if step.kind == "layer":
                    out[name] = here
                elif step.kind == "call":
                    walk(step.child, name, here)
                else:
                    for i, child in enumerate(step.children):
                        walk(child, f"{name}.{i}", here + ("layers", i))

        walk("", "", ())
        return out


def generate(net: Network) -> tuple[str, str]:
    """The Flax NNX source of a checked network, and its class's name (the source is parsed first)."""
    printer = FlaxPrinter(net)
    return check_source(printer.generate(), "Flax"), printer.class_name


def compile_flax(net: Network) -> str:
    """The Flax NNX source of a checked network."""
    return generate(net)[0]


def model_class(net: Network):
    """The generated ``nnx.Module`` class of a checked network (its source run in a fresh namespace)."""
    source, name = generate(net)
    namespace: dict[str, Any] = {"__name__": f"cnndsl_flax_{net.name}"}
    exec(compile(source, f"<cnndsl flax: {net.name}>", "exec"), namespace)  # noqa: S102 - our own source
    return namespace[name]


def build(net: Network, seed: int = 0):
    """Generate, load and instantiate the Flax NNX model of a checked network (``rngs=nnx.Rngs(seed)``)."""
    from flax import nnx

    return model_class(net)(rngs=nnx.Rngs(seed))


def abstract(net: Network, seed: int = 0):
    """The model with shapes but no values (``nnx.eval_shape``): nothing initialised, nothing compiled."""
    from flax import nnx

    cls = model_class(net)
    return nnx.eval_shape(lambda: cls(rngs=nnx.Rngs(seed)))


# ----------------------------------------------------------------------------- weights


def _at(model, path: tuple):
    for part in path:
        model = model[part] if isinstance(part, int) else getattr(model, part)
    return model


def _layers(net: Network, printer: FlaxPrinter):
    """Each layer that holds tensors converted to JAX (its :class:`~cnndsl.ir.ops.Weight` s) and its module in the
    model's attribute path."""
    paths = printer.paths()
    for node in net.graph.nodes():
        weights = [w for w in present(node) if w.jax is not None]
        if weights:
            yield node, paths[node.name], weights


def _variable(module, w):
    """The ``nnx.Variable`` of tensor ``w`` of a layer's module (a bare ``nnx.Param`` is the layer's own)."""
    return getattr(module, w.jax) if w.jax else module


def _flipped(w) -> tuple[int, ...]:
    """The axes of ``w``'s JAX layout that Flax NNX stores reversed."""
    groups = axes(w.jax_axes)
    return tuple(groups.index((name,)) for name in w.flax_flipped)


def torch_to_flax(net: Network, state_dict, model=None, seed: int = 0):
    """Load a torch ``state_dict`` of the generated torch model into ``model`` (in place) and return it.

    Without ``model`` one is made for the weights without initialising any (no random kernels to compile),
    its dropout keys from ``seed``.
    """
    import jax.numpy as jnp

    if model is None:
        model = _with_values(abstract(net, seed), net, state_dict, seed)
        return model
    variables = torch_to_jax(net, state_dict)
    for node, path, weights in _layers(net, FlaxPrinter(net)):
        module = _at(model, path)
        for w in weights:
            value = tree_get(variables[w.collection], jax_path(node, w))
            _variable(module, w).set_value(jnp.flip(value, _flipped(w)) if w.flax_flipped else value)
    return model


def _with_values(model, net: Network, state_dict, seed: int):
    """An abstract model given the torch weights, and concrete random-stream state (keys from ``seed``)."""
    import jax
    import jax.numpy as jnp
    from flax import nnx

    graphdef, state = nnx.split(model)

    def concrete(leaf):
        if not isinstance(leaf, jax.ShapeDtypeStruct):
            return leaf
        if jax.dtypes.issubdtype(leaf.dtype, jax.dtypes.prng_key):
            return jax.random.split(jax.random.key(seed), leaf.shape) if leaf.shape else jax.random.key(seed)
        return jnp.zeros(leaf.shape, leaf.dtype)

    model = nnx.merge(graphdef, jax.tree.map(concrete, state))
    return torch_to_flax(net, state_dict, model)


def flax_to_torch(net: Network, model) -> dict:
    """The torch ``state_dict`` of ``model``'s weights (the inverse of :func:`torch_to_flax`)."""
    import numpy as np

    variables: dict = {"params": {}, "batch_stats": {}}
    for node, path, weights in _layers(net, FlaxPrinter(net)):
        module = _at(model, path)
        for w in weights:
            value = np.asarray(_variable(module, w).get_value())
            tree_put(variables[w.collection], jax_path(node, w), np.flip(value, _flipped(w)) if w.flax_flipped else value)
    return jax_to_torch(net, variables)
