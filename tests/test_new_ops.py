"""The weightless ops of the modern CNNs (issue 12): the activations, stochastic depth, channel shuffle and
upsampling, each checked in the JAX and Flax NNX backends against PyTorch's own functions, called here
directly (torch.nn.functional and torch.nn), as the independent reference."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
jax = pytest.importorskip("jax")
nnx = pytest.importorskip("flax.nnx")

import torch.nn.functional as F

import cnndsl
from cnndsl import CnnDslError
from cnndsl.ir import vocabulary
from cnndsl.report import graphviz
from cnndsl.report.expand import expand

ATOL = 1e-5

#: text -> (input shape, PyTorch's own function of an NCHW (or N x features) batch)
CASES = {
    "relu6": ("6x5x7", F.relu6),
    "silu": ("6x5x7", F.silu),
    "swish": ("6x5x7", F.silu),
    "hardswish": ("6x5x7", F.hardswish),
    "h-swish": ("6x5x7", F.hardswish),
    "hardsigmoid": ("6x5x7", F.hardsigmoid),
    "gelu": ("6x5x7", F.gelu),
    "gelu(approximate=tanh)": ("6x5x7", lambda x: F.gelu(x, approximate="tanh")),
    "gelu(tanh)": ("6x5x7", lambda x: F.gelu(x, approximate="tanh")),
    "leakyrelu": ("6x5x7", F.leaky_relu),
    "leakyrelu(0.2)": ("6x5x7", lambda x: F.leaky_relu(x, 0.2)),
    "elu": ("6x5x7", F.elu),
    "elu(alpha=0.5)": ("6x5x7", lambda x: F.elu(x, alpha=0.5)),
    "mish": ("6x5x7", F.mish),
    "droppath(0.3)": ("6x5x7", lambda x: x),  # the identity in eval mode
    "shuffle(3)": ("6x5x7", lambda x: F.channel_shuffle(x, 3)),
    "shuffle(1)": ("6x5x7", lambda x: x),
    "upsample": ("6x5x7", lambda x: F.interpolate(x, scale_factor=2)),
    "upsample(3)": ("6x5x7", lambda x: F.interpolate(x, scale_factor=3, mode="nearest")),
    # PyTorch's nearest treats an output of twice the input (7 * 2.05 -> 14) as a scale of 2
    "upsample(scale=(1.5, 2.05))": ("6x5x7", lambda x: F.interpolate(x, scale_factor=(1.5, 2.05))),
    "upsample(2, bilinear)": ("6x5x7", lambda x: F.interpolate(x, scale_factor=2, mode="bilinear",
                                                              align_corners=False)),
    "upsample(scale=2, mode=bilinear, align_corners=true)": (
        "6x5x7", lambda x: F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=True)),
    "upsample(scale=1.5, mode=bilinear, align_corners=true)": (
        "6x5x7", lambda x: F.interpolate(x, scale_factor=1.5, mode="bilinear", align_corners=True)),
    "upsample(scale=(0.5, 2.5), mode=bilinear)": (
        "6x5x7", lambda x: F.interpolate(x, scale_factor=(0.5, 2.5), mode="bilinear", align_corners=False)),
    # on flat vectors (after fc)
    "gelu ": ("10", F.gelu),
    "hardswish ": ("10", F.hardswish),
    "leakyrelu(0.1) ": ("10", lambda x: F.leaky_relu(x, 0.1)),
    "droppath(0.5) ": ("10", lambda x: x),
}


def _net(text: str, shape: str):
    return cnndsl.loads(f"network t: input {shape}\n    {text.strip()}")


def _nhwc(x: np.ndarray) -> np.ndarray:
    return x.transpose(0, 2, 3, 1) if x.ndim == 4 else x


def _nchw(x) -> np.ndarray:
    x = np.asarray(x)
    return x.transpose(0, 3, 1, 2) if x.ndim == 4 else x


def _batch(shape, n: int = 3, seed: int = 0) -> torch.Tensor:
    torch.manual_seed(seed)
    return 3 * torch.randn(n, *shape)  # reaches past relu6's 6 and the hard sigmoid's +-3


@pytest.mark.parametrize("text", sorted(CASES))
def test_jax_and_flax_equal_torch(text):
    shape, reference = CASES[text]
    net = _net(text, shape)
    x = _batch(net.input_shape)
    want = reference(x).numpy()
    model = cnndsl.build_jax(net)
    got = _nchw(model.apply(model.init(jax.random.key(0)), _nhwc(x.numpy())))
    assert got.shape == want.shape == (3, *net.output_shapes[0])
    np.testing.assert_allclose(got, want, rtol=0, atol=ATOL)
    fm = cnndsl.build_flax(net)
    fm.eval()
    np.testing.assert_allclose(_nchw(fm(_nhwc(x.numpy()))), want, rtol=0, atol=ATOL)


def test_arguments_that_differ_between_instances_of_one_block():
    """Each argument as a constructor parameter of the block's one function (JAX) or class (Flax)."""
    net = cnndsl.loads("block b(m, g, s, a, u): gelu(approximate={m}) shuffle({g}) leakyrelu({s}) elu({a}) "
                       "upsample(scale=2, mode={u})\n"
                       "network t: input 6x3x4\n    b(none, 2, 0.1, 0.5, nearest) b(tanh, 3, 0.3, 2.0, bilinear)")

    def reference(x):
        x = F.interpolate(F.elu(F.leaky_relu(F.channel_shuffle(F.gelu(x), 2), 0.1), 0.5), scale_factor=2)
        x = F.elu(F.leaky_relu(F.channel_shuffle(F.gelu(x, approximate="tanh"), 3), 0.3), 2.0)
        return F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)

    x = _batch(net.input_shape)
    want = reference(x).numpy()
    assert cnndsl.compile(net, "jax").count("def b(") == 1
    model = cnndsl.build_jax(net)
    np.testing.assert_allclose(_nchw(model.apply(model.init(jax.random.key(0)), _nhwc(x.numpy()))), want,
                               rtol=0, atol=ATOL)
    fm = cnndsl.build_flax(net)
    fm.eval()
    np.testing.assert_allclose(_nchw(fm(_nhwc(x.numpy()))), want, rtol=0, atol=ATOL)


# -- stochastic depth in training


def _samples_dropped(x: np.ndarray, y: np.ndarray, p: float) -> np.ndarray:
    """Which samples were dropped; every other one must be its input scaled by 1 / (1 - p)."""
    x, y = x.reshape(len(x), -1), y.reshape(len(y), -1)
    dropped = (y == 0).all(1)
    np.testing.assert_allclose(y[~dropped], x[~dropped] / (1 - p), rtol=1e-6)
    return dropped


def _check_rate(dropped: np.ndarray, p: float) -> None:
    n = len(dropped)
    assert abs(dropped.mean() - p) < 5 * (p * (1 - p) / n) ** 0.5, dropped.mean()


@pytest.mark.parametrize("shape", ["3x2x2", "5"])
def test_droppath_drops_whole_samples_in_jax_training(shape):
    net = _net("droppath(0.3)", shape)
    model = cnndsl.build_jax(net)
    v = model.init(jax.random.key(0))
    x = _nhwc(_batch(net.input_shape, n=4000).numpy())
    with pytest.raises(ValueError, match="rng"):
        model.apply(v, x, train=True)
    y, _ = model.apply(v, x, train=True, rng=jax.random.key(1))
    dropped = _samples_dropped(x, np.asarray(y), 0.3)
    _check_rate(dropped, 0.3)
    y2, _ = model.apply(v, x, train=True, rng=jax.random.key(2))
    assert not np.array_equal(dropped, _samples_dropped(x, np.asarray(y2), 0.3))
    assert np.array_equal(np.asarray(model.apply(v, x)), x)


@pytest.mark.parametrize("shape", ["3x2x2", "5"])
def test_droppath_drops_whole_samples_in_flax_training(shape):
    net = _net("droppath(0.3)", shape)
    model = cnndsl.build_flax(net)
    x = _nhwc(_batch(net.input_shape, n=4000).numpy())
    model.train()
    first = _samples_dropped(x, np.asarray(model(x)), 0.3)
    _check_rate(first, 0.3)
    assert not np.array_equal(first, _samples_dropped(x, np.asarray(model(x)), 0.3))  # a fresh mask a call
    model.eval()
    assert np.array_equal(np.asarray(model(x)), x)


def test_torchs_stochastic_depth_has_the_same_statistics():
    """The reference the backends follow, written out as torchvision's stochastic_depth(p, "row") does it."""
    torch.manual_seed(0)
    x = torch.randn(4000, 3, 2, 2)
    noise = torch.empty(4000, 1, 1, 1).bernoulli_(0.7).div_(0.7)
    dropped = _samples_dropped(x.numpy(), (x * noise).numpy(), 0.3)
    _check_rate(dropped, 0.3)


def test_droppath_rate_can_differ_between_instances_of_one_block():
    net = cnndsl.loads("block b(p): residual< conv3-4 droppath({p}) >\n"
                       "network t: input 4x6x6\n    b(0.1) b(0.2) b(0.0)")
    assert [n.args["p"] for n in net.graph.nodes() if n.op == "droppath"] == [0.1, 0.2, 0.0]
    jax_code = cnndsl.compile(net, "jax")
    assert jax_code.count("def b(") == 1 and "p=0.1" in jax_code and "p=0.2" in jax_code
    flax_code = cnndsl.compile(net, "flax")
    assert flax_code.count("class B(nnx.Module)") == 1
    assert "nnx.Dropout(p, broadcast_dims=(1, 2, 3), rngs=rngs)" in flax_code


def test_droppath_of_zero_is_the_identity_in_training():
    net = _net("droppath(0.0)", "3x2x2")
    model = cnndsl.build_jax(net)
    x = _nhwc(_batch(net.input_shape).numpy())
    y, _ = model.apply(model.init(jax.random.key(0)), x, train=True, rng=jax.random.key(1))
    assert np.array_equal(np.asarray(y), x)
    assert "_drop_path" not in cnndsl.compile(net, "jax")


# -- act=


@pytest.mark.parametrize("word", vocabulary.activation_words())
def test_act_takes_every_activation(word):
    for text in (f"network t: input 3x8x8  conv3-4(act={word}) gap fc-2",
                 f"network t with conv(act={word}), fc(act={word}): input 3x8x8  conv3-4 gap fc-6 fc-2"):
        ops = [n.op for n in cnndsl.loads(text).graph.nodes()]
        assert ops[:3] == ["input", "conv", word], ops
        assert ops.count(word) == (1 if "with" not in text else 2)  # not after the logits


def test_act_with_an_alias_adds_the_op_itself():
    ops = [n.op for n in cnndsl.loads("network t: input 3x8x8  conv3-4(act=swish) conv3-4(act=HardSwish)").graph.nodes()]
    assert ops == ["input", "conv", "silu", "conv", "hardswish"]


# -- shapes, counts, spellings


def test_shape_rules():
    def out(text, shape="6x5x7"):
        return _net(text, shape).output_shapes[0]

    for text in ("relu6", "silu", "hardswish", "hardsigmoid", "gelu", "leakyrelu", "elu", "mish", "droppath(0.1)",
                 "shuffle(2)", "shuffle(6)"):
        assert out(text) == (6, 5, 7), text
    assert out("upsample") == (6, 10, 14)
    assert out("upsample(scale=(1.5, 2.05))") == (6, 7, 14)  # the floor of size * scale, as PyTorch's
    assert out("upsample(0.5, bilinear)") == (6, 2, 3)
    assert out("mish", "10") == (10,) and out("droppath(0.1)", "10") == (10,)


def test_no_parameters_and_no_macs():
    base = cnndsl.loads("network t: input 6x8x8  conv3-6 gap fc-4")
    for text in ("relu6", "silu", "hardswish", "hardsigmoid", "gelu", "leakyrelu", "elu", "mish", "droppath(0.1)",
                 "shuffle(3)", "upsample(2, bilinear)"):
        net = cnndsl.loads(f"network t: input 6x8x8  conv3-6 {text} gap fc-4")
        added = [n for n in net.graph.nodes() if n.name not in base.graph]
        assert len(added) == 1 and added[0].params == 0 and added[0].macs == 0, text
        assert (net.params, net.macs) == (base.params, base.macs), text


ALL_OPS = ("network t: input 6x8x8\n    conv3-12 relu6 silu hardswish hardsigmoid gelu gelu(approximate=tanh) "
           "leakyrelu(0.2) elu(alpha=0.5) mish residual< conv3-12 shuffle(3) droppath(0.1) > "
           "upsample(2, bilinear) upsample(scale=(1, 2), align_corners=false) gap fc-4")
SPELLINGS = ("relu6", "silu", "hardswish", "hardsigmoid", "gelu", "gelu tanh", "leakyrelu 0.2", "elu alpha=0.5",
             "mish", "shuffle g=3", "droppath 0.1", "upsample ×2 bilinear", "upsample ×1x2")


def test_summary_and_graph_show_the_paper_spelling():
    net = cnndsl.loads(ALL_OPS)
    assert sorted(n.short_form() for n in net.graph.nodes() if n.op not in ("input", "conv", "add", "gap", "fc")) \
        == sorted(SPELLINGS)
    table, dot = net.summary(), graphviz.to_dot(net)
    for spelling in SPELLINGS:
        assert f": {spelling} " in table, spelling
        assert spelling in dot, spelling


def test_expand_round_trips():
    net = cnndsl.loads(ALL_OPS)
    text = expand(net)
    for line in ("gelu2: gelu(approximate=tanh)", "leakyrelu1: leakyrelu(negative_slope=0.2)",
                 "shuffle1: shuffle(groups=3)", "droppath1: droppath(p=0.1)",
                 "upsample1: upsample(scale=(2, 2), mode=bilinear, align_corners=false)"):
        assert f"    {line}\n" in text, line
    again = cnndsl.loads(text)
    assert expand(again) == text
    assert [(n.name, n.op, n.args, n.shape) for n in again.graph.nodes()] == \
        [(n.name, n.op, n.args, n.shape) for n in net.graph.nodes()]


def test_the_generated_code_runs_the_whole_list_in_both_backends():
    net = cnndsl.loads(ALL_OPS)
    model = cnndsl.build_jax(net)
    v = model.init(jax.random.key(0))
    x = _nhwc(_batch(net.input_shape, n=2).numpy())
    out = np.asarray(model.apply(v, x))
    fm = cnndsl.build_flax(net)
    fm.eval()
    assert out.shape == np.asarray(fm(x)).shape == (2, 4)
    y, _ = model.apply(v, x, train=True, rng=jax.random.key(1))
    assert np.isfinite(np.asarray(y)).all()


# -- errors


ERRORS = {
    # text after the input line -> (column, a piece of the message, a piece of the hint)
    "conv1-58 shuffle(4)": (14, "58 channels do not split into 4 groups for 'shuffle'", "e.g. shuffle(2)"),
    "fc-8 shuffle(2)": (10, "'shuffle' needs a feature map", "flattened"),
    "fc-8 upsample": (10, "'upsample' needs a feature map", "flattened"),
    "droppath": (5, "'droppath' needs the argument 'p'", "0 <= p < 1"),
    "droppath(1)": (5, "cannot drop every sample (p=1)", "below 1"),
    "droppath(1.5)": (5, "'p' must be between 0.0 and 1.0, got 1.5", "between 0 and 1"),
    "gelu(approximate=erf)": (5, "'gelu' has no approximation 'erf'", "approximate=tanh"),
    "upsample(mode=bicubic)": (5, "'upsample' has no mode 'bicubic'", "bilinear"),
    "upsample(align_corners=true)": (5, "align_corners applies to bilinear upsampling, not nearest",
                                     "mode=bilinear"),
    "upsample(-2)": (5, "'scale' must be positive, got -2", "upsample(2)"),
    "upsample(scale=(1, 2, 3))": (5, "'scale' takes one number or a pair", "scale=(2, 1)"),
    "upsample(0.1)": (5, "leaves no height: floor(8 * 0.1) = 0", "larger scale"),
    "upsample(scale_factor=2)": (14, "'upsample' has no argument 'scale_factor'", "did you mean 'scale'?"),
    "leakyrelu(alpha=0.1)": (15, "'leakyrelu' has no argument 'alpha'", "did you mean 'negative_slope'?"),
    "relu6(2)": (11, "too many arguments to 'relu6'", "takes no arguments"),
    "hardswsh": (5, "unknown layer or block 'hardswsh'", "did you mean 'hardswish'?"),
    "conv3-8(act=upsample)": (5, "'upsample' is not an activation", "relu6"),
}


@pytest.mark.parametrize("text", sorted(ERRORS))
def test_errors_point_at_the_layer(text):
    col, message, hint = ERRORS[text]
    with pytest.raises(CnnDslError) as info:
        _net(text, "3x8x8")
    err = info.value
    assert message in err.message
    assert (err.span.line, err.span.col) == (2, col), str(err)
    assert err.hint and hint in err.hint, err.hint


@pytest.mark.parametrize("word", ["relu6", "gelu", "GELU", "ReLU6", "swish", "Mish", "h-swish", "hard-sigmoid", "ln"])
def test_the_words_that_were_misread_are_layers(word):
    """``relu6`` was read as relu with a kernel size of 6; ``gelu`` got "did you mean 'relu'", ``ln`` 'lrn'."""
    assert len(_net(word, "3x8x8").graph) == 2
