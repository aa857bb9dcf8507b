"""Expressions and block structure: functions, comparisons, conditionals, ``in.c``, ``x0``, ``shortcut=none``.

Values are checked against Python's own evaluation of the same text (the expressions below are written in
the subset both languages share), ``make_divisible`` against torchvision's formula written out here (and
against torchvision itself where it is importable), and the structure against the layers a reader expects.
"""

from __future__ import annotations

import functools
import importlib
import itertools
import math

import pytest

import cnndsl
from cnndsl import CnnDslError
from cnndsl.errors import CnnLimitError, Source
from cnndsl.front.syntax import MAX_EXPRESSION_TOKENS, MAX_NESTING, parse, scan
from cnndsl.report.expand import expand

resolve = importlib.import_module("cnndsl.passes.resolve")  # the module (cnndsl.passes.resolve is the function)


@functools.cache
def parsed(expr: str):
    return parse(f"network t: input 1x1x1 conv1-{{{expr}}}").networks[0].body.steps[0].term.channels


def value(expr: str, **env):
    """``expr`` evaluated as the language does, with ``env`` as the parameters in scope."""
    return resolve.evaluate(parsed(expr), env)


def torchvision_make_divisible(v, divisor=8, min_value=None):
    """torchvision.models._utils._make_divisible, as its source states it (the oracle of ``make_divisible``)."""
    if min_value is None:
        min_value = divisor
    new_v = max(min_value, int(v + divisor / 2) // divisor * divisor)
    if new_v < 0.9 * v:  # make sure that round down does not go down by more than 10%
        new_v += divisor
    return new_v


PYTHON = {"min": min, "max": max, "round": round, "ceil": math.ceil, "floor": math.floor,
          "make_divisible": torchvision_make_divisible, "__builtins__": {}}

# Valid Python and valid .cnn, with the same meaning.
SHARED = [
    "max(8, c // 4)",
    "min(c, 64, 2 * s + 1)",
    "max(8, c // 4) if c > 16 else c",
    "c if s == 1 else c * 2",
    "1 if s != 1 and c >= 16 else 0",
    "1 if s == 2 or c < 8 else 0",
    "1 if not (s == 1 and c <= 32) else 0",
    "round(c * 0.25)",
    "round(c / 3)",
    "ceil(c * 1.1)",
    "floor(c * 1.1)",
    "ceil(c / s)",
    "make_divisible(c * 0.75)",
    "make_divisible(c * 1.4, 8)",
    "make_divisible(c / 4, divisor=8)",
    "make_divisible(c * 0.25, 4, min_value=16)",
    "c * 6 // s % 7 - (c if s > 1 else -c)",
    "(c if s == 1 else s) if c > 20 else (s if c > 10 else 1)",
]


@pytest.mark.parametrize("expr", SHARED)
def test_expressions_mean_what_python_means(expr):
    for c, s in itertools.product([1, 3, 8, 16, 17, 24, 32, 40, 96, 1280], [1, 2, 3]):
        got, want = value(expr, c=c, s=s), eval(expr, PYTHON, {"c": c, "s": s})
        # `/` gives an integer where the division is exact, Python a float of the same value
        assert got == want and (type(got) is type(want) or isinstance(want, float)), (c, s)


def test_functions_that_round_give_integers():
    for expr in ("round(c * 0.3)", "ceil(c * 0.3)", "floor(c * 0.3)", "make_divisible(c * 0.3)"):
        assert all(type(value(expr, c=c)) is int for c in range(1, 50)), expr


def test_round_is_pythons_halves_to_even():
    assert [value(f"round({x})") for x in ("0.5", "1.5", "2.5", "3.5", "2.4999", "2.5001")] == [0, 2, 2, 4, 2, 3]
    assert value("round(-2.5)") == -2 and value("round(7)") == 7


def test_make_divisible_is_torchvisions():
    values = [x / 8 for x in range(1, 2000)] + [32 * w for w in (0.35, 0.5, 0.75, 1.0, 1.3, 1.4, 1.1, 1.2, 1.8)]
    for v, divisor, min_value in itertools.product(values, (1, 3, 4, 8, 16), (None, 1, 16)):
        mv = "none" if min_value is None else min_value
        got = value(f"make_divisible(v, divisor={divisor}, min_value={mv})", v=v)
        assert got == torchvision_make_divisible(v, divisor, min_value), (v, divisor, min_value)
    # torchvision's own numbers: MobileNetV2's stem at width 0.35 and 0.75, EfficientNet-B4's 32 * 1.4, a
    # MobileNetV3 SE of 240 // 4 channels
    assert value("make_divisible(32 * 0.35)") == 16 and value("make_divisible(32 * 0.75)") == 24
    assert value("make_divisible(32 * 1.4)") == 48 and value("make_divisible(240 // 4, 8)") == 64


def test_make_divisible_against_torchvision_itself():
    utils = pytest.importorskip("torchvision.models._utils")
    for v in [x / 4 for x in range(1, 4000)]:
        assert value("make_divisible(v)", v=v) == utils._make_divisible(v, 8)
        assert value("make_divisible(v, 3, 5)", v=v) == utils._make_divisible(v, 3, 5)


def test_conditionals_and_booleans_evaluate_only_what_they_need():
    assert value("8 if s == 0 else 64 // s", s=0) == 8  # the division is not evaluated
    assert value("1 if s == 0 or 64 // s > 1 else 0", s=0) == 1
    assert value("1 if s != 0 and 64 // s > 1 else 0", s=0) == 0
    with pytest.raises(CnnDslError, match="division by zero"):
        value("1 if s == 0 and 64 // s > 1 else 0", s=0)


def test_equality_compares_kinds():
    assert value("1 if mode == proj else 0", mode=resolve.Symbol("proj")) == 1
    assert value("1 if mode != pad else 0", mode=resolve.Symbol("proj")) == 1
    assert value("1 if 2 == 2.0 else 0") == 1
    assert value("1 if true == 1 else 0") == 0  # a boolean is not a number
    assert value("1 if (1, 2) == (1, 2) else 0") == 1


def test_expressions_work_in_argument_lists_and_braces():
    net = cnndsl.loads("""
        network t(w=0.5): input 3x32x32
            conv(c=make_divisible(32 * w), k=3, s={2 if w < 1 else 1}) conv3-{max(8, 12)} fc-{min(10, 3 * 4)}
    """)
    g = net.graph
    assert g.node("conv1").args["c"] == 16 and g.node("conv1").args["s"] == (2, 2)
    assert g.node("conv2").args["c"] == 12 and g.node("fc1").args["c"] == 10


# ----------------------------------------------------------------------------- the input's shape


def test_a_block_reads_its_input_shape():
    net = cnndsl.loads("""
        block widen(t): conv1-{in.c * t} fc-{in.h * 100 + in.w}
        network t: input 3x16x12
            conv3-8/2 widen(4)
    """)
    g = net.graph
    assert g.node("widen1.conv1").args["c"] == 32  # 8 channels in, times 4
    assert g.node("widen1.fc1").args["c"] == 806  # 8 x 6 after the stride-2 conv


def test_in_is_the_blocks_input_inside_its_groups_and_branches():
    net = cnndsl.loads("""
        block b(): conv1-16 [conv1-{in.c}] concat< conv1-{in.c} | conv1-{2 * in.c} >
        network t: input 3x8x8
            conv1-5 b()
    """)
    assert [n.args["c"] for n in net.graph.nodes() if n.op == "conv"] == [5, 16, 5, 5, 10]


def test_in_in_defaults_of_block_parameters_and_of_the_network_body():
    net = cnndsl.loads("""
        block b(t, hidden=in.c * t) with conv(bias=false): conv1-{hidden}
        network t: input 3x8x8
            conv1-{in.c * 2} b(3) b(t=2)
    """)
    g = net.graph
    assert [n.args["c"] for n in g.nodes() if n.op == "conv"] == [6, 18, 36]
    assert g.scopes["b1"].args == {"t": 3, "hidden": 18}  # the input is no parameter of the block


def test_in_in_a_replacement_is_the_replaced_layers_input():
    net = cnndsl.loads("""
        network base: input 3x8x8  conv3-8 gap fc: fc-10
        network derived = base replace(fc, fc-{in.c * 2})
    """, network="derived")
    assert net.graph.node("fc").args["c"] == 16


def test_the_shapes_read_early_agree_with_infer_shapes(zoo):
    """resolve's on-demand shapes are the same rule as infer_shapes': check a deep network's every layer."""
    net = zoo("resnet50")
    r = resolve.Resolver(net_library("resnet50"))
    g = r.network("resnet50", {})
    for node in g.nodes():
        if node.op != "shortcut":
            assert r._shape(node.name) == net.graph.node(node.name).shape, node.name


def net_library(name):
    from cnndsl.front.loader import open_net

    lib, _ = open_net(name)
    return lib


# ----------------------------------------------------------------------------- x0


def test_x0_leaves_the_step_out():
    net = cnndsl.loads("""
        block stage(n): conv3-8 relu [conv3-8 relu] x{n - 1}
        network t: input 3x8x8
            stage(1) stage(3) conv3-8 x0 fc-10
    """)
    convs = [n.name for n in net.graph.nodes() if n.op == "conv"]
    assert convs == ["stage1.conv1", "stage2.conv1", "stage2.conv2", "stage2.conv3"]
    assert net.graph.inputs_of("fc1") == ["stage2.relu3"]


def test_a_labelled_x0_takes_no_number_and_names_the_point_it_leaves():
    net = cnndsl.loads("""
        block b(): conv3-8 relu
        network t: input 3x8x8
            features: [conv3-8 extra: relu x0 maxpool]
            layer1: b() x0
            head: @layer1  fc-10
    """)
    g = net.graph
    assert [n.name for n in g.nodes()] == ["input", "features.0", "features.1", "fc1"]
    assert g.node("features.1").op == "maxpool"
    assert "layer1" not in g.scopes and not any(s.startswith("layer1") for s in g.scopes)
    assert g.inputs_of("fc1") == ["features.1"]


def test_an_absent_activation_leaves_the_default_one():
    net = cnndsl.loads("""
        network t(a=0) with conv(act=relu), fc(act=relu): input 3x8x8
            conv3-8 sigmoid x{a} conv3-8 fc-10 relu x0
    """)
    ops = [n.op for n in net.graph.nodes()]
    assert ops == ["input", "conv", "relu", "conv", "relu", "fc"]  # the fc is the output: no activation


def test_a_labelled_x0_still_claims_its_name():
    with pytest.raises(CnnDslError, match="duplicate name 'a'"):
        cnndsl.loads("network t: input 3x8x8  a: relu x0  a: relu")


# ----------------------------------------------------------------------------- residual(shortcut=none)

MBCONV = """
    # torchvision's InvertedResidual: use_res_connect = stride == 1 and inp == oup
    block inverted(c, t, s=1) with conv(bias=false):
        residual(shortcut=none)<
            [conv1-{in.c * t} bn relu] x{0 if t == 1 else 1}
            conv3-{in.c * t}/{s}(groups={in.c * t}) bn relu
            conv1-{c} bn >
    network mbv2ish(w=1.0) with conv(bias=false): input 3x32x32
        conv3-{make_divisible(32 * w)}/2 bn relu
        inverted(16, 1) inverted(24, 6, 2) inverted(24, 6) inverted(24, 6) inverted(32, 6, 2)
        gap fc-10
"""


def inverted_residual_params(inp: int, oup: int, t: int) -> int:
    """Parameters of torchvision's InvertedResidual, counted by hand (bias-free convs, batch norms with affine)."""
    hidden = inp * t
    expand = 0 if t == 1 else inp * hidden + 2 * hidden
    return expand + hidden * 9 + 2 * hidden + hidden * oup + 2 * oup


def test_residual_when_the_shapes_match_else_plain():
    net = cnndsl.loads(MBCONV)
    g = net.graph
    adds = [n.name for n in g.nodes() if n.op == "add"]
    assert adds == ["inverted3.add1", "inverted4.add1"]  # only where stride 1 and inp == oup
    assert g.inputs_of("inverted3.add1") == ["inverted3.bn3", "inverted2.bn3"]
    assert not any(n.op in ("shortcut", "identity") or "downsample" in n.name for n in g.nodes())
    assert [n.name for n in g.nodes() if n.name.startswith("inverted1.")] == [
        "inverted1.conv1", "inverted1.bn1", "inverted1.relu1", "inverted1.conv2", "inverted1.bn2"]
    stem = 3 * 32 * 9 + 2 * 32  # conv and batch norm
    blocks = [(32, 16, 1), (16, 24, 6), (24, 24, 6), (24, 24, 6), (24, 32, 6)]
    assert net.params == stem + sum(inverted_residual_params(*b) for b in blocks) + 32 * 10 + 10


MOBILENET_V2 = """
    block inverted(c, t, s=1) with conv(bias=false):
        residual(shortcut=none)<
            [conv1-{in.c * t} bn relu] x{0 if t == 1 else 1}
            conv3-{in.c * t}/{s}(groups={in.c * t}) bn relu
            conv1-{c} bn >
    block stage(t, c, n, s, w): inverted(make_divisible(c * w), t, s) inverted(make_divisible(c * w), t) x{n - 1}
    network mobilenet_v2(classes=1000, w=1.0) with conv(bias=false): input 3x224x224
        conv3-{make_divisible(32 * w)}/2 bn relu
        stage(1, 16, 1, 1, w) stage(6, 24, 2, 2, w) stage(6, 32, 3, 2, w) stage(6, 64, 4, 2, w)
        stage(6, 96, 3, 1, w) stage(6, 160, 3, 2, w) stage(6, 320, 1, 1, w)
        conv1-{make_divisible(1280 * max(1.0, w))} bn relu gap dropout(0.2) fc(c=classes)
"""


@pytest.mark.parametrize(("w", "params"), [(1.0, 3_504_872), (0.5, 1_968_680), (0.75, 2_636_424),
                                           (1.4, 6_108_776), (0.35, 1_677_128)])
def test_mobilenet_v2_from_its_table_has_torchvisions_parameter_counts(w, params):
    """Table 2 of the paper as stages; the counts are torchvision's mobilenet_v2(width_mult=w)'s."""
    net = cnndsl.loads(MOBILENET_V2, w=w)
    assert net.params == params
    assert sum(n.op == "add" for n in net.graph.nodes()) == 10  # torchvision's blocks with use_res_connect


def test_an_absent_residual_leaves_no_gap_in_the_numbering():
    g = cnndsl.loads("""
        network t: input 3x8x8
            residual(shortcut=none)< conv3-16 >  r: residual(shortcut=none)< conv3-16 >
            seq: [residual(shortcut=none)< conv3-8/2 > residual(shortcut=none)< conv3-8 >]
    """).graph
    assert [n.name for n in g.nodes() if n.op == "add"] == ["r", "seq.1.add1"]
    assert [n.name for n in g.nodes() if n.op == "conv"] == ["conv1", "conv2", "seq.0.conv1", "seq.1.conv1"]


def test_expand_round_trips_the_new_constructs():
    net = cnndsl.loads(MBCONV)
    text = expand(net)
    again = cnndsl.loads(text, "mbv2ish.expanded.cnn")
    assert again.graph.signature() == net.graph.signature()
    assert (again.params, again.macs) == (net.params, net.macs)


def test_choices_inside_functions_and_conditionals_are_choice_points():
    from cnndsl.front.loader import Library
    from cnndsl.search.variants import Space

    lib = Library.from_module(parse("network s(a=1): input 3x8x8  conv3-{max(8, {16|32})} "
                                    "conv3-{{4|8} if a == 1 else 2}", "s.cnn"))
    assert Space(lib, "s").count() == 4


# ----------------------------------------------------------------------------- limits


@pytest.mark.parametrize("expr", ["max(1099511627776, 2) * 2", "ceil(c * 1e300)", "round(1e999)",
                                  "floor(1e999 - 1e999)", "make_divisible(1e300)", "make_divisible(2 ** 3)"])
def test_bounded_or_refused_cleanly(expr):
    with pytest.raises(CnnDslError):
        cnndsl.loads(f"network t(c=16): input 3x8x8  conv3-{{{expr}}}")


def test_huge_results_are_limit_errors():
    with pytest.raises(CnnLimitError, match="number too large"):
        value("max(1099511627776, 2) * 2")
    with pytest.raises(CnnLimitError, match="number too large"):
        value("ceil(1e300)")


def test_a_function_call_counts_towards_the_expression_limit():
    args = ", ".join(["1"] * MAX_EXPRESSION_TOKENS)
    with pytest.raises(CnnLimitError, match="an expression of more than"):
        cnndsl.loads(f"network t: input 3x8x8  conv3-{{max({args})}}")


def test_comparisons_are_not_brackets_to_the_scan():
    text = "network t(a=1): input 3x8x8 " + " ".join(["conv3-{8 if a < 2 else 4}"] * (2 * MAX_NESTING))
    counts, sums = scan(Source("t.cnn", text)), scan(Source("t.cnn", text.replace("<", "+")))
    assert counts.deepest == sums.deepest == 1 and counts.longest_expression == sums.longest_expression
    assert len(cnndsl.loads(text).graph) == 1 + 2 * MAX_NESTING


def test_an_unclosed_brace_with_a_comparison_in_it_is_the_one_reported():
    with pytest.raises(CnnDslError, match="'[{]' is never closed"):
        cnndsl.loads("network t(a=1): input 3x8x8  conv3-{8 if a < 2 else 4")
    with pytest.raises(CnnDslError, match="does not close the '[{]'"):
        cnndsl.loads("network t(a=1): input 3x8x8  conv3-{8 if a > 2 else 4)")


def test_the_input_shape_is_worked_out_once_a_layer(monkeypatch):
    """Reading in.c in every block instance infers each layer's shape once, not once a read."""
    calls = []
    conv = type(resolve.OPS["conv"])
    real = conv.infer_many
    monkeypatch.setattr(conv, "infer_many", lambda self, *a, **k: calls.append(1) or real(self, *a, **k))
    text = "block b(): conv1-{in.c}\nnetwork t: input 3x8x8  b() x200"
    previous = resolve.set_memo(False)
    try:
        g = cnndsl.loads(text).graph
    finally:
        resolve.set_memo(previous)
    assert len(g) == 201
    # built flat, resolve reads the 199 convs before the last block (each once), infer_shapes all 200 in both passes
    assert len(calls) == 199 + 2 * 200
    # with the memo, the block's conv is inferred when its one fragment is built (resolve's read and the passes'
    # rounds): the other instances mount it, so the count does not grow with the repeat
    counts = []
    for n in (200, 400):
        calls.clear()
        assert len(cnndsl.loads(text.replace("x200", f"x{n}")).graph) == n + 1
        counts.append(len(calls))
    assert counts[0] == counts[1] <= 4


def test_the_lexer_knows_the_expression_words():
    pygments = pytest.importorskip("pygments")  # noqa: F841 - the lexer needs it
    from pygments.token import Error, Operator

    from cnndsl.tools.lexer import CnnLexer

    tokens = list(CnnLexer().get_tokens(MBCONV + "\nnetwork u(a=1): input 3x8x8 conv3-{8 if not a != 1 or a <= 2 "
                                                 "and a >= 0 else max(1, a)}\n"))
    assert [v for t, v in tokens if t is Error] == []
    kinds = {v: t for t, v in tokens}
    assert kinds["if"] is Operator.Word and kinds["not"] is Operator.Word and kinds["!="] is Operator


def test_widths_doubled_through_in_c_are_refused_as_too_large():
    with pytest.raises(CnnLimitError, match="number too large"):
        cnndsl.loads("block wider(): conv1-{in.c * 1024}\nnetwork t: input 3x8x8  wider() x5")


def test_a_parameter_called_in_does_not_hide_the_input():
    g = cnndsl.loads("block b(in): conv1-{in.c + in}\nnetwork t: input 3x8x8  b(5)").graph
    assert g.node("b1.conv1").args["c"] == 8


def test_an_input_size_can_be_an_expression_over_the_networks_parameters():
    """EfficientNet's resolution scaling: `input 3x{res}x{res}`, and a derived network gives another size."""
    text = ("network n(res=64, c=3): input {c}x{res}x{res}\n    conv3-8/2 relu gap fc-10\n"
            "network small(classes=10) = n(res=2 * 16)\n")
    assert cnndsl.loads(text, "n.cnn", network="n").graph.node("input").shape == (3, 64, 64)
    net = cnndsl.loads(text, "n.cnn", network="small")
    assert net.graph.node("input").shape == (3, 32, 32)
    assert net.graph.node("conv1").shape == (8, 16, 16)


@pytest.mark.parametrize("value", ["1.5", "0", "true"])
def test_an_input_size_that_is_no_positive_integer_is_refused_at_the_input(value):
    text = f"network n(res={value}): input 3x{{res}}x{{res}}\n    conv3-8\n"
    with pytest.raises(cnndsl.CnnDslError, match="input size must be a positive integer") as e:
        cnndsl.loads(text, "n.cnn")
    assert (e.value.span.line, e.value.span.col) == (1, 18 + len(value))  # the input declaration
