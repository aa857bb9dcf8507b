"""Resource bombs: texts built to make the compiler loop, recurse or allocate without end.

Each must fail with a :class:`CnnLimitError` (or another :class:`CnnDslError`) at a position,
with a hint, before anything large is built or allocated. The limits are those of the text
(``syntax.MAX_TOKENS``, ``MAX_EXPRESSION_TOKENS``, ``MAX_LABELS``, ``MAX_REFERENCES``,
``MAX_BRANCHES``, ``MAX_NAME_LENGTH``, ``MAX_NESTING``, ``MAX_RANGE_VALUES``, ``MAX_USES``, numbers
below ``2**40``, files of ``MAX_SOURCE_BYTES``), of building (``resolve.MAX_NODES`` layers, ``MAX_BLOCK_DEPTH`` nested
blocks, ``MAX_NESTED`` nested sequences, ``MAX_LOOKUPS`` references followed, ``MAX_WORK``)
and of size (``passes.limits.SizeLimits``: parameters, activation values, values of one
layer's output, height and width).

The default run does not time the bombs (a loaded machine makes any time budget flaky): it
counts the work each one causes (tokens handed to the parser, layers created, expressions
evaluated, steps the pre-check sized, units of building work) and checks that it stays
bounded. ``test_bomb_is_refused_within_a_time_budget`` (``--runslow``) times them as well.
The texts are generated here because most of them are too long to keep as fixtures.
"""

from __future__ import annotations

import importlib
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

import cnndsl
from cnndsl import CnnDslError
from cnndsl.errors import CnnLimitError, Source
from cnndsl.front import syntax
from cnndsl.front.syntax import (
    MAX_BRANCHES,
    MAX_EXPRESSION_TOKENS,
    MAX_LABELS,
    MAX_NESTING,
    MAX_RANGE_VALUES,
    MAX_REFERENCES,
    MAX_SOURCE_BYTES,
    MAX_TOKENS,
    MAX_USES,
    scan,
)
from cnndsl.ir.graph import Graph
from cnndsl.passes.limits import MAX_ACTIVATIONS, MAX_PARAMS, MAX_SPATIAL, MAX_TENSOR, SizeLimits
from cnndsl.tools import cli

resolve = importlib.import_module("cnndsl.passes.resolve")  # the module (cnndsl.passes.resolve is the function)

BUDGET_S = 5.0  # wall-clock budget of one bomb in the slow run (a loaded machine included)
#: What a bomb may cost in the default run. Its text is refused before parsing or is short, so it builds a few
#: layers at most and evaluates a few expressions; building work stays within the resolver's own bound.
MAX_NODES_BUILT = 1_000
MAX_EVALUATED = 10_000
MAX_SIZED = 10_000
HEAD = "network t: input 3x8x8\n    "


def chain(n: int, body: str, uses: str = "b{next}()", params: str = "", call: str = "b0()") -> str:
    """Blocks b0 .. b{n-1}, each built from the next one; b{n} is ``body`` (``{next}`` is the next block's number)."""
    lines = [f"block b{i}({params.format(next=i + 1)}): {uses.format(next=i + 1)}\n" for i in range(n)]
    return "".join(lines) + f"block b{n}({params.format(next=n + 1)}): {body}\n" + HEAD + call + "\n"


BOMBS = {
    # repeat counts
    "huge_repeat": (HEAD + "conv3-8 x100000000", "repeat count 100000000"),
    "huge_computed_repeat": ("network t(n=100000): input 3x8x8\n    conv3-8 x{n*n}", "repeat count"),
    "nested_repeats": (HEAD + "[[conv3-8 x1000] x1000]", "at least 1,000,001 layers"),
    "four_nested_repeats": (HEAD + "[[[conv3-8 x100] x100] x100] x100", "layers"),
    "repeated_block_with_repeat": ("block b(): relu x1000\n" + HEAD + "b() x1000", "layers"),
    "many_large_steps": (HEAD + "relu x99999 relu x99999", "at least 199,999 layers by here"),
    "wide_concat_of_repeats": (HEAD + "concat< relu x50000 | relu x50000 | relu x50000 >", "layers"),
    "repeated_reference_group": (HEAD + "a: relu [[@a] x100000] x100000 relu", "steps to build"),
    # blocks
    "recursive_block": ("block a(): a()\n" + HEAD + "a()", f"more than {resolve.MAX_BLOCK_DEPTH} deep"),
    "recursive_block_with_layers": ("block a(c): conv3-{c} relu a(c)\n" + HEAD + "a(8)", "deep"),
    "mutual_recursion": ("block a(): b()\nblock b(): a()\n" + HEAD + "a()", "deep"),
    "doubling_blocks": (chain(30, "relu", "b{next}() b{next}()"), "would build at least"),
    "tenfold_blocks": (chain(10, "relu", "b{next}() x10"), "would build at least"),
    # the repeat count is a parameter: sized with its value (2), 2**30 layers
    "repeats_through_blocks": (chain(30, "relu", "b{next}(n) x{{n}}", "n", "b0(2)"), "would build at least"),
    "repeats_through_defaults": (chain(30, "relu", "b{next}() x{{n}}", "n=2"), "would build at least"),
    "block_passed_as_parameter": (chain(30, "relu", "u() u()", "u=b{next}"), "would build at least"),
    "long_block_chain": (chain(200, "relu"), f"more than {resolve.MAX_BLOCK_DEPTH} deep"),
    "blocks_times_brackets": (chain(45, "relu", "[" * 30 + "b{next}()" + "]" * 30),
                              f"more than {resolve.MAX_NESTED}"),
    "blocks_times_branches": (chain(45, "relu", "residual<" * 20 + "b{next}()" + ">" * 20), "nested"),
    "many_block_parameters": ("block b(" + ", ".join(f"p{i}=1" for i in range(2000)) + "): relu\n" + HEAD
                              + "b() x5000", "steps to build"),
    "many_defaults": ("block b() with " + ", ".join(["conv(bias=false)"] * 2000) + ": relu\n" + HEAD + "b() x5000",
                      "steps to build"),
    "derived_cycle": ("network t(c=1) = u(c=2)\nnetwork u(c=1) = t(c=3)\n", "derived from itself", "t"),
    "derived_chain": (HEAD + "relu\n" + "".join(f"network d{i + 1} = {'t' if i == 0 else f'd{i}'}\n"
                                                for i in range(5000)), "derived from one another more than", "d5000"),
    # the length of the text
    "relu_written_out": (HEAD + "relu " * 100_000, f"more than {MAX_TOKENS:,} tokens"),
    "comment_lines": (HEAD + "relu\n" + "#\n" * 1_000_000, f"more than {MAX_TOKENS:,} tokens"),
    "many_labels": (HEAD + " ".join(f"l{i}: relu" for i in range(99_000)), f"more than {MAX_LABELS:,} labels"),
    "many_references": (HEAD + "a: relu " + "@a " * 200_000 + "relu", f"more than {MAX_REFERENCES:,} references"),
    "wide_concat": (HEAD + "concat< " + " | ".join(["relu"] * 50_000) + " >", f"more than {MAX_BRANCHES:,} branches"),
    "long_name": (HEAD + "a" * 5_000 + ": relu", "a name of 5,000 characters"),
    "long_dotted_label": (HEAD + ".".join(["a"] * 600) + ": relu", "a name of 1,199 characters"),
    "many_ranges": (HEAD + " ".join(["dropout({1..9999})"] * 300), f"more than {MAX_RANGE_VALUES:,} values"),
    "many_uses": ('use "blocks.cnn"\n' * 2_000 + HEAD + "relu", f"more than {MAX_USES} `use` lines"),
    "long_full_names": ("block b(): " + "m" * 900 + ": relu\n" + HEAD + "n" * 900 + ": b()", "full name"),
    # brackets and expressions
    "deep_groups": (HEAD + "[" * 5000 + "relu" + "]" * 5000, f"brackets nested more than {MAX_NESTING} deep"),
    "deep_combinators": (HEAD + "concat<" * 5000 + "relu" + ">" * 5000, "brackets nested"),
    "deep_parentheses": (HEAD + "conv3-{" + "(" * 5000 + "8" + ")" * 5000 + "}", "brackets nested"),
    "deep_braces": (HEAD + "conv3-" + "{" * 5000 + "8" + "}" * 5000, "brackets nested"),
    "unclosed_thousands": (HEAD + "[" * 3000, "brackets nested"),
    "deep_unary_minus": (HEAD + "conv3-{" + "-" * 5000 + "8}", f"more than {MAX_EXPRESSION_TOKENS} tokens"),
    "long_sum": (HEAD + "conv3-{" + "+".join(["1"] * 1500) + "}", "an expression of more than"),
    "million_term_sum": (HEAD + "conv3-{" + "+".join(["1"] * 1_000_000) + "}", "an expression of more than"),
    "long_sum_of_parentheses": (HEAD + "conv3-{" + "+".join(["(1)"] * 300_000) + "}", "an expression of more than"),
    "long_argument": (HEAD + "conv(c=" + "+".join(["1"] * 1000) + ", k=3)", "an expression of more than"),
    # numbers
    "huge_literal": (HEAD + "conv3-" + "9" * 5000, "number too large"),
    "huge_shape": ("network t: input 3x" + "9" * 5000 + "x8\n    conv3-8", "number too large"),
    "huge_product": ("network t(c=100000): input 3x8x8\n    fc-{c*c*c*c}", "number too large"),
    "huge_float_channels": (HEAD + "conv3-{1e30}", "too large"),
    "infinite_float": (HEAD + "dropout(1e999)", "must be a finite number"),
    # sizes no machine holds
    "huge_input": ("network t: input 3x100000x100000\n    conv3-8", "100,000 pixels high"),
    "huge_conv": (HEAD + "conv3-1000000000", "64,000,000,000 values"),
    "huge_fcs": (HEAD + "fc-1000000000 fc-1000000000", "parameters, over the limit"),
    "huge_second_fc": ("network t: input 1\n    fc-1000000000 fc-1000000000", "bringing the network to"),
    "huge_deconv_stride": (HEAD + "deconv2-8/100000", "pixels high"),
    "huge_padding": (HEAD + "conv3-8(p=1000000)", "pixels high"),
    "many_large_activations": ("network t: input 64x4096x4096\n    bn x200", "values a forward pass allocates"),
}


@dataclass
class Work:
    """What loading a text cost, counted (not timed)."""

    parsed: int = 0  # tokens handed to the Lark parser
    nodes: int = 0  # layers added to a graph
    evaluated: int = 0  # expression nodes evaluated (by resolve and by its pre-check)
    sized: int = 0  # steps the pre-check sized (each a memo lookup at least)
    built: int = 0  # units of the resolver's MAX_WORK spent


@pytest.fixture
def work(monkeypatch) -> Work:
    """Count the work behind every loader, resolver and pass (the counting itself is not timed)."""
    w = Work()
    real_parser = syntax._parser()

    class CountingParser:
        def parse(self, text):
            w.parsed += scan(Source("<counted>", text)).code
            return real_parser.parse(text)

    def counting(cls, name, wrap):
        real = getattr(cls, name)
        monkeypatch.setattr(cls, name, lambda *a, **k: wrap(real, *a, **k))

    def count(field, by=lambda *a, **k: 1):
        def wrap(real, *a, **k):
            setattr(w, field, getattr(w, field) + by(*a, **k))
            return real(*a, **k)
        return wrap

    monkeypatch.setattr(syntax, "_parser", CountingParser)
    counting(Graph, "add", count("nodes"))
    counting(resolve, "evaluate", count("evaluated"))
    counting(resolve.Sizer, "step", count("sized"))
    counting(resolve.Resolver, "_spend", count("built", lambda self, units, span: units))
    return w


@pytest.fixture(scope="module", autouse=True)
def _warm_parser():
    """Build the parser and read the zoo's index (which loading a file consults) before counting anything."""
    from cnndsl.front.loader import zoo_index

    cnndsl.loads("network warm: input 1x4x4 conv3-1")
    zoo_index()


def load_bomb(name: str, tmp_path) -> CnnDslError:
    text, message, *network = BOMBS[name]
    path = tmp_path / f"{name}.cnn"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(CnnDslError) as info:
        cnndsl.load(":".join([str(path), *network]))
    err = info.value
    assert message in err.message, str(err)
    assert err.span is not None and err.span.file == str(path)
    assert str(err).startswith(f"{path}:{err.span.line}:{err.span.col}: error: ")
    return err


@pytest.mark.parametrize("name", list(BOMBS))
def test_bomb_is_refused_with_bounded_work(name, tmp_path, work):
    err = load_bomb(name, tmp_path)
    assert err.hint, str(err)
    assert work.parsed <= MAX_TOKENS, work
    assert work.nodes <= MAX_NODES_BUILT, work
    assert work.evaluated <= MAX_EVALUATED, work
    assert work.sized <= MAX_SIZED + work.built, work  # the steps of each sequence built are sized once more
    assert work.built <= resolve.MAX_WORK + 1, work


@pytest.mark.slow
@pytest.mark.parametrize("name", list(BOMBS))
def test_bomb_is_refused_within_a_time_budget(name, tmp_path):
    start = time.perf_counter()
    load_bomb(name, tmp_path)
    elapsed = time.perf_counter() - start
    assert elapsed < BUDGET_S, f"{name} took {elapsed:.2f} s"


@pytest.mark.parametrize("name", [n for n in BOMBS if n not in ("derived_cycle", "infinite_float")])
def test_limit_errors_are_limit_errors(name):
    text, _, *network = BOMBS[name]
    with pytest.raises(CnnLimitError):
        cnndsl.loads(text, network=network[0] if network else None)


def test_text_bombs_never_reach_the_parser(tmp_path, work):
    """A text over a limit of the text is refused by one pass over it that stops at the limit."""
    for name in ("relu_written_out", "comment_lines", "many_labels", "many_references", "wide_concat",
                 "million_term_sum", "long_sum_of_parentheses", "long_name", "deep_groups"):
        load_bomb(name, tmp_path)
        assert work.parsed == 0, name


def test_size_bombs_are_refused_before_any_backend(tmp_path, work, monkeypatch):
    """A network over a size limit fails while its shapes and counts are worked out: no code is generated."""
    def no_backend(*args, **kwargs):
        raise AssertionError("a backend was reached")

    monkeypatch.setattr(cnndsl.api, "compile", no_backend)
    for name in ("huge_input", "huge_conv", "huge_fcs", "huge_second_fc", "huge_deconv_stride",
                 "many_large_activations"):
        path = tmp_path / f"{name}.cnn"
        path.write_text(BOMBS[name][0], encoding="utf-8")
        with pytest.raises(CnnLimitError) as info:
            cnndsl.build_torch(str(path))
        assert BOMBS[name][1] in info.value.message
        assert "raise the limit" in info.value.hint and "--max-" in info.value.hint and "limits=" in info.value.hint
        assert work.nodes < 300


def test_size_errors_point_at_the_layer_over_the_limit():
    line = "    fc-10 fc-1000000000 fc-1000000000"
    with pytest.raises(CnnLimitError) as info:
        cnndsl.loads("network t: input 1\n" + line, "fc.cnn")
    assert (info.value.span.line, info.value.span.col) == (2, line.rindex("fc") + 1)  # fc2 is under the limit
    assert "'fc3' has 1,000,000,001,000,000,000 parameters" in info.value.message
    line = "    conv3-8 deconv2-8/2 deconv2-8/10000 relu"
    with pytest.raises(CnnLimitError) as info:
        cnndsl.loads("network t: input 3x8x8\n" + line, "d.cnn")
    assert (info.value.span.line, info.value.span.col) == (2, line.rindex("deconv") + 1)
    assert "'deconv2' outputs 8x150002x150002" in info.value.message


def test_size_limits_can_be_raised_and_lowered():
    text = BOMBS["huge_fcs"][0]
    net = cnndsl.loads(text, limits={"params": 10**19})
    assert net.params > 10**18
    net = cnndsl.loads(BOMBS["huge_input"][0], limits=SizeLimits(spatial=100_000, tensor=10**11, activations=10**12))
    assert net.input_shape == (3, 100_000, 100_000)
    with pytest.raises(CnnLimitError, match="over the limit of 1,000"):
        cnndsl.load("lenet5", limits={"params": 1000})
    with pytest.raises(CnnLimitError, match="pixels high"):
        cnndsl.load("lenet5", input_shape=(1, 100_000, 32))  # an --input override is checked too
    with pytest.raises(ValueError, match="unknown size limit 'parameters'"):
        cnndsl.load("lenet5", limits={"parameters": 10})


def test_command_line_raises_the_limits(tmp_path, capsys):
    path = tmp_path / "big.cnn"
    path.write_text(BOMBS["huge_fcs"][0])
    assert cli.main(["check", str(path)]) == 1
    assert "--max-params N" in capsys.readouterr().err
    assert cli.main(["check", str(path), "--max-params", "1e19"]) == 0
    assert "1,000,000,194,000,000,000 parameters" in capsys.readouterr().out
    assert cli.main(["summary", str(path), "--max-params", "10**12", "--format", "json"]) == 1  # fc2 is 10**18
    capsys.readouterr()
    with pytest.raises(SystemExit) as usage:
        cli.main(["check", str(path), "--max-params", "lots"])
    assert usage.value.code == 2
    with pytest.raises(CnnLimitError):  # what a command raised is undone when it ends
        cnndsl.loads(BOMBS["huge_fcs"][0])


@pytest.mark.parametrize("command", [["check"], ["summary"], ["compile"], ["train"], ["expand"],
                                     ["graph", "-o", "x.svg"], ["export", "--onnx", "x.onnx"]])
def test_every_net_command_takes_the_size_options(command):
    args = cli.parser().parse_args([*command, "net.cnn", "--max-params", "1e12", "--max-activations", "10**12",
                                    "--max-tensor", "1_000", "--max-spatial", "70000"])
    assert (args.max_params, args.max_activations, args.max_tensor, args.max_spatial) == (10**12, 10**12, 1000,
                                                                                          70_000)


def test_file_too_large_is_refused_before_parsing(tmp_path, work):
    path = tmp_path / "big.cnn"
    path.write_text(HEAD + "relu\n" + "# filler line\n" * (MAX_SOURCE_BYTES // 14 + 1))
    with pytest.raises(CnnLimitError) as info:
        cnndsl.load(str(path))
    assert "larger than 4 MiB" in info.value.message
    assert work.parsed == 0


def test_long_error_line_is_shown_as_a_window(tmp_path):
    """A 25 kB line is not printed whole under the message: a window around the caret is."""
    text = HEAD + "relu " * 5_000 + "$"
    with pytest.raises(CnnDslError) as info:
        cnndsl.loads(text, "long.cnn")
    shown = str(info.value).splitlines()
    assert shown[0] == f"long.cnn:2:{4 + 5 * 5_000 + 1}: error: unexpected character '$'"
    assert all(len(line) <= 110 for line in shown[1:3])
    assert shown[1].rstrip().endswith("$") and shown[2].rstrip().endswith("^")
    assert len(shown[1]) - len(shown[1].rstrip("$")) == 1 and shown[1].index("$") == shown[2].index("^")


def test_limits_leave_room_for_real_networks(zoo):
    """The biggest zoo networks stay far below every limit."""
    for name in ("inception_resnet_v2", "vgg19", "unet", "resnet152"):
        net = zoo(name)
        assert len(net.graph) < resolve.MAX_NODES // 100
        assert net.params < MAX_PARAMS // 100 and net.graph.total_activations < MAX_ACTIVATIONS // 100
        assert max(n.activations for n in net.graph.nodes()) < MAX_TENSOR // 100
        assert max(max(n.shape[1:], default=0) for n in net.graph.nodes()) < MAX_SPATIAL // 100


def test_zoo_files_stay_far_below_the_text_limits():
    for path in sorted((Path(__file__).resolve().parent.parent / "networks").rglob("*.cnn")):
        name = path.name
        counts = scan(Source(name, path.read_text(encoding="utf-8")))
        assert counts.tokens < MAX_TOKENS // 20, name
        assert counts.labels < MAX_LABELS // 20 and counts.references < MAX_REFERENCES // 20, name
        # ConvNeXt's stochastic-depth schedule, sd * (first + j) / (n1 + n2 + n3 + n4 - 1), is 18 tokens
        assert counts.longest_expression < MAX_EXPRESSION_TOKENS // 10, name
        assert counts.most_branches < MAX_BRANCHES // 20 and counts.deepest < MAX_NESTING // 4, name


def test_the_largest_expansion_stays_below_the_token_limit(zoo):
    """`cnndsl expand` of the zoo's largest network (its every layer written out) still loads."""
    from cnndsl.report.expand import expand

    counts = scan(Source("expanded", expand(zoo("inception_resnet_v2"))))
    assert counts.tokens < MAX_TOKENS // 1.5 and counts.labels < MAX_LABELS // 10


def test_a_big_legal_network_loads_with_bounded_work(work):
    """resnet_cifar(n=300): 1,802 weighted layers, some 7,000 in all, well within every limit."""
    net = cnndsl.load("resnet_cifar", n=300)
    assert 6_000 < len(net.graph) < resolve.MAX_NODES // 10
    assert work.built < resolve.MAX_WORK // 20
    assert work.sized < work.nodes  # each step sized about once per instance: blocks are not walked again


def test_repeats_are_sized_with_their_values(work):
    """The pre-check evaluates `x{n}` with the block's argument: 2**30 is refused before building a layer."""
    with pytest.raises(CnnLimitError) as info:
        cnndsl.loads(BOMBS["repeats_through_blocks"][0])
    assert "1,073,741,825" in info.value.message  # 2**30 relus, and the input
    assert work.nodes <= 1 and work.sized < 200


def test_choices_are_not_taken_by_the_pre_check():
    """A search's chooser sees only the choices resolving takes: the pre-check never asks it."""
    asked = []

    def choose(choice):
        asked.append(choice.span.col)
        return 0

    from cnndsl.front.loader import Library
    from cnndsl.front.syntax import parse

    line = "b({2|3}) conv3-{4|8} x{1..3}"
    lib = Library.from_module(parse("block b(n): relu x{n}\n" + HEAD + line))
    resolve.resolve(lib, "t", choose)
    # b's argument, the repeat count (read before the step), the channels: once each
    assert asked == [5 + line.index("{"), 5 + line.rindex("{"), 5 + line.index("{4")]


def test_too_deep_expression_points_at_its_brace():
    with pytest.raises(CnnLimitError) as info:
        cnndsl.loads(BOMBS["long_sum"][0], "sum.cnn")
    assert (info.value.span.line, info.value.span.col) == (2, 11)  # the '{' of conv3-{1+1+...}


def test_freezing_many_layers_is_one_pass(work, monkeypatch):
    """`freeze(a, b, ...)` walks the layers once, however many paths it names (not once a path)."""
    calls = []
    real = Graph.nodes
    monkeypatch.setattr(Graph, "nodes", lambda self: calls.append(1) or real(self))
    paths = ", ".join(f"relu{i}" for i in range(1, 2001))
    net = cnndsl.loads(f"network t: input 3x8x8\n    relu x3000\nnetwork d = t freeze({paths})", network="d")
    assert sum(n.frozen for n in net.graph.nodes()) == 2000
    calls.clear()
    cnndsl.loads(f"network t: input 3x8x8\n    relu x3000\nnetwork d = t freeze({paths})", network="d")
    assert len(calls) < 20
