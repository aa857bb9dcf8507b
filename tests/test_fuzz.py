"""Property-based tests: whatever text the compiler is given, it loads or fails cleanly.

Two sources of text:

* sentences of the shipped grammar (``hypothesis.extra.lark.from_lark`` over
  ``grammar/cnn.lark``), with the terminals drawn from realistic values (layer
  names, small and absurd numbers) so that many of them get past the parser;
* mutants of the zoo files (a token deleted, duplicated or swapped, a number set to
  zero, a huge or a negative value, a stray character inserted).

Either way, :func:`cnndsl.loads` must return a network or raise :class:`CnnDslError`
whose rendered message is ``file:line:col: error: ...``; any other exception (a
traceback) fails the test. The example counts are bounded to keep the run short.
"""

from __future__ import annotations

import re
from functools import cache, lru_cache
from pathlib import Path

import lark
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from hypothesis.extra.lark import from_lark

import cnndsl
from cnndsl import CnnDslError
from cnndsl.front.syntax import grammar_text, parse

ZOO = Path(__file__).resolve().parent.parent / "networks"
ZOO_FILES = sorted(p for p in ZOO.rglob("*.cnn"))


def fuzz(examples: int) -> settings:
    """Bounded, reproducible runs: a fixed number of examples, each within a deadline."""
    return settings(max_examples=examples, deadline=3000, derandomize=True,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much,
                                           HealthCheck.data_too_large])


def load_or_clean_error(text: str, filename: str = "fuzz.cnn", network: str | None = None) -> None:
    """The property: a network, or a CnnDslError that renders with a position when it has one."""
    try:
        net = cnndsl.loads(text, filename, network=network)
    except CnnDslError as e:
        rendered = str(e)
        assert "Traceback" not in rendered
        if e.span is not None:
            assert re.match(rf"^{re.escape(e.span.file)}:\d+:\d+: error: ", rendered), rendered
        return
    assert net.params >= 0 and net.macs >= 0


# ----------------------------------------------------------------------------- sentences of the grammar

_NAMES = ["conv", "deconv", "fc", "relu", "bn", "maxpool", "avgpool", "gap", "dropout", "lrn", "flatten",
          "softmax", "identity", "adaptiveavgpool", "padshortcut", "concat", "add", "residual", "aux",
          "inception", "same", "valid", "ceil", "nobias", "true", "false", "none", "c", "k", "s", "p",
          "groups", "scale", "shortcut", "crop", "act", "unit", "net", "a", "b", "input", "x", "conv3",
          "maxpool3", "conv1x7", "fc1000", "block", "with"]


@lru_cache(maxsize=1)
def _grammar() -> lark.Lark:
    return lark.Lark(grammar_text(), parser="lalr", lexer="contextual", start=["start", "seq"])


def _texts(start: str = "start") -> st.SearchStrategy[str]:
    grammar = _grammar()
    ignored = list(grammar.ignore_tokens)
    explicit = {
        "REPEAT": st.just("x"),
        "NAME": st.one_of(st.sampled_from(_NAMES), st.from_regex(r"\A[a-z_][a-z0-9_]{0,6}\Z")),
        "HNAME": st.sampled_from(["soft-max", "max-pool", "avg-pool", "global-avg-pool", "conv-net"]),
        "INT": st.one_of(st.integers(0, 12).map(str), st.sampled_from(["16", "64", "224", "1000",
                                                                         "100000000", "9" * 40])),
        "FLOAT": st.sampled_from(["0.5", "0.001", "1e-5", "2.0", "1e999", "0.17"]),
        "SHAPE": st.sampled_from(["3x32x32", "1x8x8", "3x224x224", "784", "0x8x8", "3x1x1", "3x8x8x8", "10"]),
        "STRING": st.sampled_from(['"blocks.cnn"', '"missing.cnn"', '""', '"x"']),
    }
    for name in ignored:  # whitespace and comments between tokens; a comment always ends its line
        explicit[name] = st.sampled_from([" ", "\n", "  # a comment\n"])
    if start == "seq":  # a body has no input line, no `use` and no declarations
        for terminal in ("SHAPE", "STRING"):
            explicit.pop(terminal)
    return from_lark(grammar, start=start, explicit=explicit)


@fuzz(60)
@given(text=_texts())
def test_sentences_of_the_grammar_load_or_fail_cleanly(text):
    load_or_clean_error(text)


@fuzz(50)  # drawing sentences of `seq` dominates (most draws exceed hypothesis's depth and are thrown away)
@given(steps=_texts("seq"))
def test_grammar_step_sequences_inside_a_network_load_or_fail_cleanly(steps):
    """Sentences of the grammar's ``seq`` rule as a network body, to reach resolve and the shape passes."""
    load_or_clean_error(f"block unit(c, s=1): conv3-{{c}}/{{s}} bn relu\nnetwork t(c=8): input 3x16x16\n"
                        f"    conv3-{{c}} relu {steps}\n")


_STEP_TEXT = st.recursive(
    st.sampled_from(["conv3-8", "conv1-4/2", "relu", "bn", "maxpool", "gap", "fc-10", "dropout", "unit(8)",
                     "unit(16, 2)", "@input", "@a", "a: conv3-8", "deconv2-8/2", "flatten", "conv3-{c}",
                     "avgpool3/2(p=1)", "conv(c=4, k=3, groups=2)", "lrn", "softmax", "x2", "x0"]),
    lambda inner: st.one_of(
        st.lists(inner, min_size=1, max_size=4).map(lambda xs: "[" + " ".join(xs) + "]"),
        st.tuples(st.sampled_from(["concat", "add", "residual", "aux", "residual(shortcut=pad)"]),
                  st.lists(st.lists(inner, min_size=1, max_size=3).map(" ".join), min_size=1, max_size=3))
        .map(lambda t: f"{t[0]}< {' | '.join(t[1])} >"),
        inner.map(lambda s: s + " x3"),
        inner.map(lambda s: "b: " + s),
    ),
    max_leaves=12,
)


@fuzz(80)
@given(steps=st.lists(_STEP_TEXT, min_size=1, max_size=6))
def test_random_layer_sequences_load_or_fail_cleanly(steps):
    """Well-formed but mostly ill-typed networks: the errors come from resolve and the shape passes."""
    load_or_clean_error("block unit(c, s=1): conv3-{c}/{s} bn relu\n"
                        f"network t(c=8): input 3x16x16\n    {' '.join(steps)}\n")


# ----------------------------------------------------------------------------- mutants of the zoo

_TOKEN = re.compile(r"#[^\n]*|\"[^\"\n]*\"|[A-Za-z_][A-Za-z0-9_-]*|[0-9]+(?:\.[0-9]+)?(?:x[0-9]+)*|\s+|.", re.DOTALL)


@cache
def _zoo_file(path: Path) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """A zoo file's tokens (whitespace and comments kept), and the networks it defines."""
    text = path.read_text(encoding="utf-8")
    names = tuple(n.name for n in parse(text, str(path)).networks)
    return tuple(_TOKEN.findall(text)), names


_HUGE = ["0", "-1", "-64", "100000000", "9" * 30, "1e999", "{0}", "{-3}", "{1/0}", "{2**3}"]
_STRAY = list("[]<>(){}|@:=,.-/x$#\"\\'`~!?;\x00\t") + ["\u00e9", "\u2014", "\ufeff", "\U0001f600", "\r"]


@st.composite
def _mutants(draw):
    path = draw(st.sampled_from(ZOO_FILES))
    tokens, networks = _zoo_file(path)
    tokens = list(tokens)
    assume(tokens)
    for _ in range(draw(st.integers(1, 3))):
        i = draw(st.integers(0, len(tokens) - 1))
        kind = draw(st.sampled_from(["delete", "duplicate", "swap", "number", "insert"]))
        if kind == "delete":
            del tokens[i]
        elif kind == "duplicate":
            tokens.insert(i, tokens[i])
        elif kind == "swap" and i + 1 < len(tokens):
            tokens[i], tokens[i + 1] = tokens[i + 1], tokens[i]
        elif kind == "number":
            numbers = [j for j, t in enumerate(tokens) if t[:1].isdigit()]
            if numbers:
                tokens[draw(st.sampled_from(numbers))] = draw(st.sampled_from(_HUGE))
        else:
            tokens.insert(i, draw(st.sampled_from(_STRAY)))
        if not tokens:
            break
    network = draw(st.sampled_from(networks)) if networks else None
    return str(path), "".join(tokens), network


@fuzz(60)
@given(mutant=_mutants())
def test_zoo_mutants_load_or_fail_cleanly(mutant):
    filename, text, network = mutant
    load_or_clean_error(text, filename, network)


@pytest.mark.parametrize("path", ZOO_FILES, ids=[str(p.relative_to(ZOO)) for p in ZOO_FILES])
def test_every_zoo_file_truncated_anywhere_fails_cleanly(path):
    """Cut each zoo file at 25 places: an unexpected end, never a traceback."""
    text = path.read_text(encoding="utf-8")
    _, networks = _zoo_file(path)
    for cut in range(1, len(text), max(1, len(text) // 25)):
        load_or_clean_error(text[:cut], str(path), networks[0] if networks else None)
