"""Resource bombs: texts built to make the compiler loop, recurse or allocate without end.

Each must fail with a :class:`CnnDslError` (a limit, with a position) within one second,
before anything large is built: the limits are ``MAX_NODES`` layers, ``MAX_BLOCK_DEPTH``
nested blocks, ``MAX_NESTING`` brackets, ``MAX_NESTED`` nested sequences, numbers below
``2**40`` and files of ``MAX_SOURCE_BYTES``. The texts are generated here because most of
them are too long to keep as fixtures.
"""

from __future__ import annotations

import time

import pytest

import cnndsl
from cnndsl import CnnDslError
from cnndsl.errors import CnnLimitError
from cnndsl.passes.resolve import MAX_BLOCK_DEPTH, MAX_NESTED, MAX_NODES
from cnndsl.syntax import MAX_NESTING, MAX_SOURCE_BYTES

BUDGET_S = 1.0
HEAD = "network t: input 3x8x8\n    "


def chain(n: int, body: str, uses: str = "b{next}()") -> str:
    """Blocks b0 .. b{n-1}, each built from the next one; b{n} is ``body``."""
    lines = [f"block b{i}(): {uses.format(next=i + 1)}\n" for i in range(n)]
    return "".join(lines) + f"block b{n}(): {body}\n" + HEAD + "b0()\n"


BOMBS = {
    # repeat counts
    "huge_repeat": (HEAD + "conv3-8 x100000000", "repeat count 100000000"),
    "huge_computed_repeat": ("network t(n=100000): input 3x8x8\n    conv3-8 x{n*n}", "repeat count"),
    "nested_repeats": (HEAD + "[[conv3-8 x1000] x1000]", "at least 1,000,001 layers"),
    "four_nested_repeats": (HEAD + "[[[conv3-8 x100] x100] x100] x100", "layers"),
    "repeated_block_with_repeat": ("block b(): relu x1000\n" + HEAD + "b() x1000", "layers"),
    "many_large_steps": (HEAD + "relu x99999 relu x99999", "at least 199,999 layers by here"),
    "wide_concat_of_repeats": (HEAD + "concat< relu x50000 | relu x50000 | relu x50000 >", "layers"),
    # blocks
    "recursive_block": ("block a(): a()\n" + HEAD + "a()", f"more than {MAX_BLOCK_DEPTH} deep"),
    "recursive_block_with_layers": ("block a(c): conv3-{c} relu a(c)\n" + HEAD + "a(8)", "deep"),
    "mutual_recursion": ("block a(): b()\nblock b(): a()\n" + HEAD + "a()", "deep"),
    "doubling_blocks": (chain(30, "relu", "b{next}() b{next}()"), "would build at least"),
    "tenfold_blocks": (chain(10, "relu", "b{next}() x10"), "would build at least"),
    "long_block_chain": (chain(200, "relu"), f"more than {MAX_BLOCK_DEPTH} deep"),
    "blocks_times_brackets": (chain(45, "relu", "[" * 30 + "b{next}()" + "]" * 30), f"more than {MAX_NESTED}"),
    "blocks_times_branches": (chain(45, "relu", "residual<" * 20 + "b{next}()" + ">" * 20), "nested"),
    "derived_cycle": ("network t(c=1) = u(c=2)\nnetwork u(c=1) = t(c=3)\n", "derived from itself", "t"),
    # brackets and expressions
    "deep_groups": (HEAD + "[" * 5000 + "relu" + "]" * 5000, f"brackets nested more than {MAX_NESTING} deep"),
    "deep_combinators": (HEAD + "concat<" * 5000 + "relu" + ">" * 5000, "brackets nested"),
    "deep_parentheses": (HEAD + "conv3-{" + "(" * 5000 + "8" + ")" * 5000 + "}", "brackets nested"),
    "deep_braces": (HEAD + "conv3-" + "{" * 5000 + "8" + "}" * 5000, "brackets nested"),
    "unclosed_thousands": (HEAD + "[" * 3000, "brackets nested"),
    "deep_unary_minus": (HEAD + "conv3-{" + "-" * 5000 + "8}", "nested too deeply"),
    "long_sum": (HEAD + "conv3-{" + "+".join(["1"] * 1500) + "}", "nested too deeply"),
    # numbers
    "huge_literal": (HEAD + "conv3-" + "9" * 5000, "number too large"),
    "huge_shape": ("network t: input 3x" + "9" * 5000 + "x8\n    conv3-8", "number too large"),
    "huge_product": ("network t(c=100000): input 3x8x8\n    fc-{c*c*c*c}", "number too large"),
    "huge_float_channels": (HEAD + "conv3-{1e30}", "too large"),
    "infinite_float": (HEAD + "dropout(1e999)", "between 0.0 and 1.0"),
}


@pytest.fixture(scope="module", autouse=True)
def _warm_parser():
    cnndsl.loads("network warm: input 1x4x4 conv3-1")


@pytest.mark.parametrize("name", list(BOMBS))
def test_bomb_fails_fast_and_cleanly(name, tmp_path):
    text, message, *network = BOMBS[name]
    path = tmp_path / f"{name}.cnn"
    path.write_text(text, encoding="utf-8")
    start = time.perf_counter()
    with pytest.raises(CnnDslError) as info:
        cnndsl.load(":".join([str(path), *network]))
    elapsed = time.perf_counter() - start
    err = info.value
    assert message in err.message, str(err)
    assert err.span is not None and err.span.file == str(path)
    assert str(err).startswith(f"{path}:{err.span.line}:{err.span.col}: error: ")
    assert elapsed < BUDGET_S, f"{name} took {elapsed:.2f} s"


def test_limit_errors_are_limit_errors():
    with pytest.raises(CnnLimitError):
        cnndsl.loads(BOMBS["doubling_blocks"][0])


def test_file_too_large_is_refused_before_parsing(tmp_path):
    path = tmp_path / "big.cnn"
    path.write_text(HEAD + "relu\n" + "# filler line\n" * (MAX_SOURCE_BYTES // 14 + 1))
    start = time.perf_counter()
    with pytest.raises(CnnLimitError) as info:
        cnndsl.load(str(path))
    assert "larger than 4 MiB" in info.value.message
    assert time.perf_counter() - start < BUDGET_S


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


def test_limits_leave_room_for_real_networks():
    """The biggest zoo networks stay far below every limit."""
    net = cnndsl.load("inception_resnet_v2")
    assert len(net.graph) < MAX_NODES // 100


def test_too_deep_expression_points_at_its_brace():
    with pytest.raises(CnnLimitError) as info:
        cnndsl.loads(BOMBS["long_sum"][0], "sum.cnn")
    assert (info.value.span.line, info.value.span.col) == (2, 11)  # the '{' of conv3-{1+1+...}
