"""The ops that the merging combinators are built from (issue 12): ``mul`` (squeeze-and-excitation's gating),
``slice`` (ShuffleNet v2's channel split) and ``resize`` (the segmentation heads' upsampling to another point's
size), each checked in the JAX and Flax NNX backends against PyTorch's own expressions (``a * b``,
``x[:, a:b]``, ``F.interpolate(x, size=...)``), computed here as the independent reference; and the
inference build, which drops stochastic depth as it drops dropout.

``mul`` and ``resize`` take two operands and no text spells them yet (their combinators come later), so these
tests build them through the IR API: a network is written with an ``m: add< A | B >`` stand-in, resolved, and
every node labelled ``m`` is replaced by the op over the same operands, at the same place in the source.
"""

from __future__ import annotations

import copy
import math
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
jax = pytest.importorskip("jax")
nnx = pytest.importorskip("flax.nnx")

import torch.nn.functional as F
from cnndsl.backends.flax import torch_to_flax

import cnndsl
from cnndsl import CnnDslError
from cnndsl.front.loader import Library
from cnndsl.front.syntax import parse
from cnndsl.ir.network import Network
from cnndsl.ir.ops import OPS
from cnndsl.passes import PIPELINE, SizeLimits, resolve
from cnndsl.passes.pipeline import inference_network
from cnndsl.report import graphviz
from cnndsl.report.expand import expand
from cnndsl.search.arch_hash import arch_hash

ATOL = 1e-5


def _stand_in(text: str, op: str, **args) -> Network:
    """Network ``t`` of ``text`` with each ``add`` labelled ``m`` replaced by ``op`` (with ``args``) over the same
    operands and with the same span, built through the IR API and checked by every pass."""
    g = resolve(Library.from_module(parse(text, "t.cnn"), Path.cwd()), "t")
    stand_ins = [n for n in g.nodes() if n.op == "add" and n.name.rsplit(".", 1)[-1] == "m"]
    assert stand_ins, text
    for node in stand_ins:
        operands, consumers = g.inputs_of(node.name), g.consumers(node.name)
        g.remove(node.name)
        g.add(node.name, op, OPS[op].normalize(args, node.span), node.span, operands)
        g.reorder_after(node.name, max(operands, key=lambda s: g.node(s).order))
        for dst, port in consumers:
            g.connect(node.name, dst, port)
    warnings: list = []
    for _, run in PIPELINE:
        run(g, warnings, SizeLimits.of(None))
    return Network(g, warnings)


def _net(text: str, shape: str) -> Network:
    return cnndsl.loads(f"network t: input {shape}\n    {text}", "t.cnn")


def _nhwc(x) -> np.ndarray:
    x = np.asarray(x)
    return x.transpose(0, 2, 3, 1) if x.ndim == 4 else x


def _nchw(x) -> np.ndarray:
    x = np.asarray(x)
    return x.transpose(0, 3, 1, 2) if x.ndim == 4 else x


def _batch(shape, n: int = 3, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(n, *shape, generator=gen)


def _run_both(net: Network, *xs: torch.Tensor, state_dict=None) -> tuple[np.ndarray, np.ndarray]:
    """The eval-mode outputs of the JAX and Flax NNX models on NCHW batches, back in NCHW; their weights from a
    torch ``state_dict``, where the network has any."""
    model = cnndsl.build_jax(net)
    ins = [_nhwc(x.numpy()) for x in xs]
    if state_dict is None:
        variables, fm = model.init(jax.random.key(0)), cnndsl.build_flax(net)
    else:
        variables, fm = cnndsl.torch_to_jax(net, state_dict), torch_to_flax(net, state_dict)
    fm.eval()
    return _nchw(model.apply(variables, *ins)), _nchw(fm(*ins))


def _weights(net: Network) -> dict[str, torch.Tensor]:
    """Random weights for every conv and fc of ``net``, as a torch ``state_dict`` (``conv1.weight``, ...)."""
    gen, sd = torch.Generator().manual_seed(1), {}
    for node in net.graph.nodes():
        if node.op in ("conv", "fc"):
            x = net.graph.node(net.graph.inputs_of(node.name)[0]).shape
            shape = (node.args["c"], x[0], *node.args["k"]) if node.op == "conv" else (node.args["c"], math.prod(x))
            sd[f"{node.name}.weight"] = torch.randn(*shape, generator=gen) / math.prod(shape[1:]) ** 0.5
            sd[f"{node.name}.bias"] = torch.randn(node.args["c"], generator=gen)
    return sd


def _check(net: Network, want: torch.Tensor, *xs: torch.Tensor) -> None:
    want = want.numpy()
    got_jax, got_flax = _run_both(net, *xs)
    assert got_jax.shape == want.shape == (len(xs[0]), *net.output_shapes[0])
    np.testing.assert_allclose(got_jax, want, rtol=0, atol=ATOL)
    np.testing.assert_allclose(got_flax, want, rtol=0, atol=ATOL)


# -- mul


MUL_SHAPES = [("8x5x7", "8x1x1"), ("8x1x1", "8x5x7"), ("8x5x7", "8x5x7"), ("8x1x1", "8x1x1"), ("10", "10")]


def _two_inputs(a: str, b: str) -> str:
    return f"network t: input a={a}  input b={b}\n    m: add< @a | @b >\n"


@pytest.mark.parametrize(("a", "b"), MUL_SHAPES)
def test_mul_equals_torch(a, b):
    net = _stand_in(_two_inputs(a, b), "mul")
    x, g = (_batch(net.graph.node(name).shape, seed=i) for i, name in enumerate("ab"))
    _check(net, x * g, x, g)


SE = ("block se(c, r):\n"
      "    x: conv3-{c}\n"
      "    g: [gap conv1-{c // r} relu conv1-{c} sigmoid]\n"
      "    m: add< @x | @g >\n"
      "network t: input 4x6x5\n"
      "    se(8, 4) se(12, 2) relu\n")


def test_squeeze_and_excitation_blocks_share_one_function_and_one_class():
    """SE gating as torchvision's SqueezeExcitation: ``scale * x``, the scale from gap, two 1x1 convs, a sigmoid;
    two instances of one block with different widths, so the numbers are the function's and class's parameters."""
    net = _stand_in(SE, "mul")
    assert [n.name for n in net.graph.nodes() if n.op == "mul"] == ["se1.m", "se2.m"]
    assert net.output_shapes[0] == (12, 6, 5)
    jax_code, flax_code = cnndsl.compile(net, "jax"), cnndsl.compile(net, "flax")
    assert jax_code.count("def se(") == 1 and flax_code.count("class Se(nnx.Module)") == 1
    sd = _weights(net)

    def se(x, prefix):
        x = F.conv2d(x, sd[f"{prefix}.x.weight"], sd[f"{prefix}.x.bias"], padding=1)
        s = F.adaptive_avg_pool2d(x, 1)
        s = F.relu(F.conv2d(s, sd[f"{prefix}.g.1.weight"], sd[f"{prefix}.g.1.bias"]))
        s = torch.sigmoid(F.conv2d(s, sd[f"{prefix}.g.3.weight"], sd[f"{prefix}.g.3.bias"]))
        return s * x

    x = _batch((4, 6, 5))
    want = F.relu(se(se(x, "se1"), "se2")).numpy()
    got_jax, got_flax = _run_both(net, x, state_dict=sd)
    np.testing.assert_allclose(got_jax, want, rtol=0, atol=ATOL)
    np.testing.assert_allclose(got_flax, want, rtol=0, atol=ATOL)


def test_mul_is_commutative_in_the_architecture_hash():
    assert OPS["mul"].commutative and OPS["mul"].commutes({})
    assert arch_hash(_stand_in(_two_inputs("8x5x7", "8x1x1"), "mul").graph) == \
        arch_hash(_stand_in("network t: input a=8x5x7  input b=8x1x1\n    m: add< @b | @a >\n", "mul").graph)
    swapped = SE.replace("add< @x | @g >", "add< @g | @x >")
    assert arch_hash(_stand_in(SE, "mul").graph) == arch_hash(_stand_in(swapped, "mul").graph)
    # the control: resize's operands do not commute, so swapping them changes the hash
    resize = _stand_in(_two_inputs("6x5x7", "6x10x14"), "resize")
    swapped = _stand_in("network t: input a=6x5x7  input b=6x10x14\n    m: add< @b | @a >\n", "resize")
    assert not OPS["resize"].commutative and arch_hash(resize.graph) != arch_hash(swapped.graph)
    assert arch_hash(_stand_in(SE, "mul").graph) != arch_hash(_stand_in(SE, "resize").graph)


# -- slice


SLICES = {
    # text -> (input shape, PyTorch's expression of an NCHW (or N x features) batch)
    "slice(0, 3)": ("6x5x7", lambda x: x[:, 0:3]),
    "slice(3, 6)": ("6x5x7", lambda x: x[:, 3:6]),
    "slice(2, 3)": ("6x5x7", lambda x: x[:, 2:3]),
    "slice(0, 6)": ("6x5x7", lambda x: x[:, 0:6]),
    "slice(4, 10)": ("10", lambda x: x[:, 4:10]),
    # a range of a flattened map's features: the JAX backends flatten in PyTorch's (C, H, W) order
    "flatten slice(5, 17)": ("2x3x4", lambda x: x.flatten(1)[:, 5:17]),
    "slice(1, 3) relu": ("6x5x7", lambda x: F.relu(x[:, 1:3])),
}


@pytest.mark.parametrize("text", sorted(SLICES))
def test_slice_equals_torch(text):
    shape, reference = SLICES[text]
    net = _net(text, shape)
    x = _batch(net.input_shape)
    _check(net, reference(x), x)


def test_channel_split_with_bounds_that_differ_between_instances_of_one_block():
    """ShuffleNet v2's ``x1, x2 = x.chunk(2, dim=1)``, the halves swapped: the bounds are the block's parameters."""
    net = cnndsl.loads("block swap(c): concat< slice({c}, {2 * c}) | slice(0, {c}) >\n"
                       "network t: input 4x3x5\n    swap(2) conv1-6 swap(3)", "t.cnn")
    jax_code, flax_code = cnndsl.compile(net, "jax"), cnndsl.compile(net, "flax")
    assert jax_code.count("def swap(") == 1 and flax_code.count("class Swap(nnx.Module)") == 1
    sd = _weights(net)

    def swap(x, c):
        a, b = x.chunk(2, dim=1)
        assert a.shape[1] == c
        return torch.cat([b, a], 1)

    x = _batch((4, 3, 5))
    want = swap(F.conv2d(swap(x, 2), sd["conv1.weight"], sd["conv1.bias"]), 3).numpy()
    for got in _run_both(net, x, state_dict=sd):
        np.testing.assert_allclose(got, want, rtol=0, atol=ATOL)


# -- resize


RESIZES = [(size, mode, corners) for size in ((12, 9), (10, 14), (5, 7), (3, 4), (1, 1), (11, 20), (4, 15))
           for mode, corners in (("nearest", False), ("bilinear", False), ("bilinear", True))]


@pytest.mark.parametrize(("size", "mode", "align_corners"), RESIZES)
def test_resize_equals_torch(size, mode, align_corners):
    net = _stand_in(_two_inputs("6x5x7", f"2x{size[0]}x{size[1]}"), "resize", mode=mode, align_corners=align_corners)
    x, ref = _batch((6, 5, 7)), _batch((2, *size), seed=1)
    corners = {"align_corners": align_corners} if mode == "bilinear" else {}
    _check(net, F.interpolate(x, size=ref.shape[-2:], mode=mode, **corners), x, ref)


def test_resize_to_the_input_size_as_the_segmentation_heads_do():
    """FCN's ``F.interpolate(x, size=input_shape[-2:], mode="bilinear", align_corners=False)`` after a stride-8
    backbone, in blocks whose input sizes differ (the output size is not a constant of the shared function)."""
    text = ("block head(k):\n"
            "    t: identity\n"
            "    d: conv3-3/{k}\n"
            "    m: add< @d | @t >\n"
            "network t: input 3x21x17\n"
            "    head(8) maxpool2 head(3)\n")
    net = _stand_in(text, "resize", mode="bilinear")
    assert net.output_shapes[0] == (3, 10, 8)
    assert cnndsl.compile(net, "jax").count("def head(") == 1
    sd = _weights(net)

    def head(x, prefix, k):
        d = F.conv2d(x, sd[f"{prefix}.d.weight"], sd[f"{prefix}.d.bias"], stride=k, padding=1)
        return F.interpolate(d, size=x.shape[-2:], mode="bilinear", align_corners=False)

    x = _batch((3, 21, 17))
    want = head(F.max_pool2d(head(x, "head1", 8), 2), "head2", 3).numpy()
    for got in _run_both(net, x, state_dict=sd):
        np.testing.assert_allclose(got, want, rtol=0, atol=ATOL)


# -- shapes, counts, spellings


def test_shape_rules():
    assert _stand_in(_two_inputs("8x5x7", "8x1x1"), "mul").output_shapes[0] == (8, 5, 7)
    assert _stand_in(_two_inputs("8x1x1", "8x5x7"), "mul").output_shapes[0] == (8, 5, 7)
    assert _stand_in(_two_inputs("10", "10"), "mul").output_shapes[0] == (10,)
    assert _net("slice(2, 5)", "6x5x7").output_shapes[0] == (3, 5, 7)
    assert _net("slice(2, 5)", "6").output_shapes[0] == (3,)
    assert _stand_in(_two_inputs("6x5x7", "1x9x3"), "resize").output_shapes[0] == (6, 9, 3)
    assert _stand_in(_two_inputs("6x5x7", "1x2x2"), "resize").output_shapes[0] == (6, 2, 2)


def test_no_parameters_and_no_macs():
    for net, op in ((_stand_in(SE, "mul"), "mul"), (_net("conv3-6 slice(1, 4) conv3-2", "3x8x8"), "slice"),
                    (_stand_in(_two_inputs("6x5x7", "2x9x3"), "resize"), "resize")):
        nodes = [n for n in net.graph.nodes() if n.op == op]
        assert nodes and all(n.params == 0 and n.macs == 0 for n in nodes), op
        assert net.params == sum(n.params for n in net.graph.nodes() if n.op == "conv"), op
        assert net.macs == sum(n.macs for n in net.graph.nodes() if n.op == "conv"), op
    # what each allocates in eval mode: mul and resize a fresh output, slice a view
    mul = _stand_in(_two_inputs("8x5x7", "8x1x1"), "mul").graph.node("m")
    assert mul.activations == 8 * 5 * 7
    assert _net("slice(1, 4)", "6x5x7").graph.node("slice1").activations == 0
    assert _stand_in(_two_inputs("6x5x7", "2x9x3"), "resize").graph.node("m").activations == 6 * 9 * 3


@pytest.mark.parametrize(("net", "spelling"), [
    (lambda: _stand_in(SE, "mul"), "mul"),
    (lambda: _net("slice(2, 5)", "6x5x7"), "slice 2:5"),
    (lambda: _stand_in(_two_inputs("6x5x7", "2x9x3"), "resize"), "resize"),
    (lambda: _stand_in(_two_inputs("6x5x7", "2x9x3"), "resize", mode="bilinear"), "resize bilinear"),
    (lambda: _stand_in(_two_inputs("6x5x7", "2x9x3"), "resize", mode="bilinear", align_corners=True),
     "resize bilinear align_corners"),
])
def test_summary_and_graph_show_the_paper_spelling(net, spelling):
    net = net()
    table, dot = net.summary(), graphviz.to_dot(net)
    assert f": {spelling} " in table, table
    assert spelling in dot


def test_slice_expands_to_its_long_form_and_back():
    net = _net("conv3-6 slice(1, 4) relu", "3x8x8")
    text = expand(net)
    assert "    slice1: slice(start=1, stop=4)\n" in text
    assert expand(cnndsl.loads(text)) == text


# -- errors


SLICE_ERRORS = {
    # text after the input line -> (column, a piece of the message, a piece of the hint)
    "conv1-8 slice(4, 12)": (13, "'slice' stop 12 is past the 8 channels of its input", "e.g. slice(0, 8)"),
    "conv1-8 slice(6, 10)": (13, "'slice' stop 10 is past the 8 channels", "e.g. slice(4, 8), the last 4"),
    "fc-8 slice(2, 9)": (10, "'slice' stop 9 is past the 8 features of its input", "the features are 0 to 7"),
    "slice(3, 3)": (5, "start=3, stop=3 leaves none", "slice(3, 4) takes channel 3"),
    "slice(4, 2)": (5, "start=4, stop=2 leaves none", "stop is past the last channel taken"),
    "slice(-2, 3)": (5, "'slice' counts channels from 0, got start=-2", "slice(C - n, C)"),
    "slice(0, 1.5)": (5, "'stop' must be an integer, got 1.5", "//"),
    "slice(2)": (5, "'slice' needs the argument 'stop'", "slice(start, stop)"),
    "slice(start=0, end=2)": (20, "'slice' has no argument 'end'", "did you mean 'stop'?"),
}


@pytest.mark.parametrize("text", sorted(SLICE_ERRORS))
def test_slice_errors_point_at_the_layer(text):
    col, message, hint = SLICE_ERRORS[text]
    with pytest.raises(CnnDslError) as info:
        _net(text, "3x8x8")
    err = info.value
    assert message in err.message, err.message
    assert (err.span.line, err.span.col) == (2, col), str(err)
    assert err.hint and hint in err.hint, err.hint


STAND_IN_ERRORS = [
    # (op, args, first input, second input) -> a piece of the message, a piece of the hint
    ("mul", {}, "8x5x7", "4x1x1", "'mul' operands differ in channels: 8x5x7 and 4x1x1", "end it with conv1-8"),
    ("mul", {}, "4x1x1", "8x5x7", "'mul' operands differ in channels: 4x1x1 and 8x5x7", "end it with conv1-8"),
    ("mul", {}, "8x5x7", "8x5x6", "'mul' operands differ in size: 8x5x7 and 8x5x6", "C x 1 x 1 gate"),
    ("mul", {}, "8x5x7", "8x1x7", "'mul' operands differ in size", "C x 1 x 1 gate"),
    ("mul", {}, "8x5x7", "4x5x6", "'mul' operands differ in channels: 8x5x7 and 4x5x6", "C x 1 x 1 gate"),
    ("mul", {}, "8x5x7", "8", "'mul' of a feature map and a flat vector: 8x5x7 and 8", "1x1 convolutions"),
    ("mul", {}, "10", "12", "'mul' operands differ in length: 10 and 12", "one length"),
    ("resize", {}, "8", "2x3x3", "'resize' needs a feature map (C x H x W), got a flat vector of 8", "flattened"),
    ("resize", {}, "8x3x3", "6", "'resize' takes its size from a feature map, got a flat vector of 6",
     "height and width"),
]


@pytest.mark.parametrize(("op", "args", "a", "b", "message", "hint"), STAND_IN_ERRORS)
def test_shape_errors_point_at_the_op(op, args, a, b, message, hint):
    with pytest.raises(CnnDslError) as info:
        _stand_in(_two_inputs(a, b), op, **args)
    err = info.value
    assert message in err.message, err.message
    assert (err.span.file, err.span.line, err.span.col) == ("t.cnn", 2, 8), str(err)
    assert err.hint and hint in err.hint, err.hint


@pytest.mark.parametrize(("args", "message", "hint"), [
    ({"mode": "bicubic"}, "'resize' has no mode 'bicubic'", "nearest (the default) or bilinear"),
    ({"align_corners": True}, "align_corners applies to bilinear resizing, not nearest", "mode=bilinear"),
    ({"mode": "bilinear", "align_corners": 2}, "'align_corners' must be true or false, got 2", None),
    ({"size": (2, 2)}, "'resize' has no argument 'size'", "'resize' takes: align_corners, mode"),
])
def test_resize_argument_errors(args, message, hint):
    with pytest.raises(CnnDslError) as info:
        OPS["resize"].normalize(args, None)
    assert message in info.value.message
    assert hint is None or hint in info.value.hint


def test_a_two_operand_op_written_as_a_layer_is_an_error_at_its_place():
    for op, text in (("mul", "conv3-8 mul"), ("resize", "conv3-8 resize(bilinear)")):
        with pytest.raises(CnnDslError) as info:
            _net(text, "3x8x8")
        assert info.value.message == f"'{op}' takes 2 inputs, got 1"
        assert (info.value.span.line, info.value.span.col) == (2, 13)
        assert info.value.hint == OPS[op].doc and "second" in OPS["resize"].doc and "two" in OPS["mul"].doc


# -- the inference build


DROPPATH = "network t: input 4x6x6\n    residual< conv3-4 relu conv3-4 droppath(0.2) > relu gap fc-3 droppath(0.1)"


def test_inference_build_drops_stochastic_depth_as_it_drops_dropout():
    net = cnndsl.loads(DROPPATH, "t.cnn")
    inference = inference_network(net)
    ops = [n.op for n in inference.graph.nodes()]
    assert "droppath" in [n.op for n in net.graph.nodes()] and "droppath" not in ops
    kept = [n.name for n in net.graph.nodes() if n.op != "droppath"]
    assert [n.name for n in inference.graph.nodes()] == kept  # the names, and so the weights' keys, unchanged
    assert inference.graph.output == "fc1"
    assert inference.graph.inputs_of("add1") == ["conv2", "input"]
    assert "_drop_path" not in cnndsl.compile(net, "jax", inference=True)
    assert "nnx.Dropout" not in cnndsl.compile(net, "flax", inference=True)
    # the training build's variables run the inference build, which computes its eval-mode output
    train, infer = cnndsl.build_jax(net), cnndsl.build_jax(inference)
    variables = cnndsl.torch_to_jax(net, _weights(net))
    x = _nhwc(_batch((4, 6, 6)).numpy())
    np.testing.assert_array_equal(np.asarray(infer.apply(variables, x)), np.asarray(train.apply(variables, x)))
    y, _ = infer.apply(variables, x, train=True)  # no rng needed: nothing is random any more
    np.testing.assert_array_equal(np.asarray(y), np.asarray(train.apply(variables, x)))


def test_inference_build_leaves_the_training_build_as_it_is():
    net = cnndsl.loads(DROPPATH, "t.cnn")
    before = copy.deepcopy(net.graph.signature())
    inference_network(net)
    assert net.graph.signature() == before
