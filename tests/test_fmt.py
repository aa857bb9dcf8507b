"""``cnndsl fmt``: idempotent over the zoo and the shipped spaces, and the formatted text is the same network.

The oracle is the original text: each formatted file is parsed and built again and compared with the build of
the file as it is in the repository (its syntax tree without positions, every network's parameters, MACs, graph
signature and architecture hash, and, for a few, the generated PyTorch source without its line-number comments).
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest

from cnndsl.errors import CnnDslError, CnnSyntaxError
from cnndsl.front.loader import Library
from cnndsl.front.syntax import parse
from cnndsl.passes.pipeline import build
from cnndsl.search.arch_hash import arch_hash
from cnndsl.tools import cli
from cnndsl.tools.fmt import WIDTH, FormatterBug, format_text

NETWORKS = Path(__file__).resolve().parent.parent / "networks"
FILES = sorted(NETWORKS.glob("*.cnn")) + sorted((NETWORKS / "spaces").glob("*.cnn"))
_SPANS = {"span", "name_span", "label_span", "names_span"}


def _plain(x):
    """A syntax tree as nested tuples, without its positions."""
    if dataclasses.is_dataclass(x) and not isinstance(x, type):
        if type(x).__name__ == "Source":
            return None
        return (type(x).__name__,) + tuple(_plain(getattr(x, f.name)) for f in dataclasses.fields(x)
                                           if f.name not in _SPANS)
    if isinstance(x, (tuple, list)):
        return tuple(_plain(i) for i in x)
    return x


def _library(text: str, path: Path) -> Library:
    return Library.from_module(parse(text, str(path)), path.parent)


def _facts(lib: Library, name: str) -> tuple:
    net = build(lib, name)
    return net.params, net.macs, net.graph.signature(), arch_hash(net.plan), [str(w.message) for w in net.warnings]


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.relative_to(NETWORKS).as_posix())
def test_idempotent_and_the_same_networks(path):
    text = path.read_text(encoding="utf-8")
    once = format_text(text, str(path))
    assert format_text(once, str(path)) == once
    assert all(len(line) <= WIDTH for line in once.splitlines() if not line.lstrip().startswith("#"))
    assert _plain(parse(once, str(path))) == _plain(parse(text, str(path)))
    # every comment survives, in order
    assert re.findall(r"#[^\n]*", once) == [c.rstrip() for c in re.findall(r"#[^\n]*", text)]
    before, after = _library(text, path), _library(once, path)
    assert before.local_networks() == after.local_networks()
    for name in before.local_networks()[:1]:  # every network: the slow test below
        assert _facts(after, name) == _facts(before, name), name


@pytest.mark.slow
@pytest.mark.parametrize("path", FILES, ids=lambda p: p.relative_to(NETWORKS).as_posix())
def test_every_network_is_the_same_after_fmt(path):
    text = path.read_text(encoding="utf-8")
    before, after = _library(text, path), _library(format_text(text, str(path)), path)
    for name in before.local_networks():
        assert _facts(after, name) == _facts(before, name), name


def _torch_source(net) -> str:
    from cnndsl import api

    return re.sub(r"\.cnn:\d+(:\d+)?", ".cnn:N", api.compile(net, "torch"))  # the source lines it points back to


@pytest.mark.parametrize("file, name", [("mobilenet.cnn", "mobilenet_v3_large"), ("efficientnet.cnn", "efficientnet_b0"),
                                        ("inception.cnn", "inception_v4"), ("resnet.cnn", "resnet50")])
def test_the_generated_torch_source_is_unchanged(file, name):
    path = NETWORKS / file
    text = path.read_text(encoding="utf-8")
    original = build(_library(text, path), name)
    formatted = build(_library(format_text(text, str(path)), path), name)
    assert _torch_source(formatted) == _torch_source(original)


MESSY = """\
# a header comment


network t(c=16,k=3) with conv( bias = false ),bn(eps=1e-3) :input 3x32x32   # trailing
  stem:conv{k}-{c*2}/2 ( p = 1 ) bn   relu
      # inside the body
  body: [ conv3-{c} x2  concat< @stem|conv1-{c} >  ]   # after a group
  for a,b in (1,2) (10,20):   conv1-{a+b}
  gap  fc-10
network u = t( 8 )
"""
MESSY_FORMATTED = """\
# a header comment

network t(c=16, k=3) with conv(bias=false), bn(eps=1e-3): input 3x32x32  # trailing
    stem: conv{k}-{c * 2}/2(p=1) bn  relu
    # inside the body
    body: [conv3-{c} x2  concat< @stem | conv1-{c} >]  # after a group
    for a, b in (1, 2) (10, 20): conv1-{a + b}
    gap  fc-10
network u = t(8)
"""


def test_a_messy_file_in_the_canonical_layout():
    assert format_text(MESSY) == MESSY_FORMATTED
    assert format_text(MESSY_FORMATTED) == MESSY_FORMATTED
    assert _plain(parse(MESSY)) == _plain(parse(MESSY_FORMATTED))


def test_long_lines_break_at_the_outermost_step_and_tables_flow():
    steps = "  ".join(f"layer{i}: [conv3-{64 * i} bn relu conv3-{64 * i}(groups=4) bn relu]" for i in range(1, 5))
    text = f"network w: input 3x64x64 {steps} gap fc-10\n"
    out = format_text(text)
    # each break is between two labelled steps, at the body's indentation, never inside a group
    assert out == """\
network w: input 3x64x64 layer1: [conv3-64 bn relu conv3-64(groups=4) bn relu]
    layer2: [conv3-128 bn relu conv3-128(groups=4) bn relu]  layer3: [conv3-192 bn relu conv3-192(groups=4) bn relu]
    layer4: [conv3-256 bn relu conv3-256(groups=4) bn relu] gap fc-10
"""
    # a table written on one line stays one (the zoo's RegNet and ShuffleNet stages); too long, its rows wrap
    # 4 columns in from the line they continue, never under a bracket far to the right
    table = ("network v(a=1): input 3x32x32 [for c, n in (16 * a + 16 * a + 16 * a + 16 * a + 16 * a + 16 * a, 1) "
             "(24 * a + 16 * a + 16 * a + 16 * a + 16 * a + 16 * a + 16 * a, 2) (320, 1): conv3-{c} x{n}] gap\n")
    assert format_text(table) == """\
network v(a=1): input 3x32x32
    [for c, n in (16 * a + 16 * a + 16 * a + 16 * a + 16 * a + 16 * a, 1)
        (24 * a + 16 * a + 16 * a + 16 * a + 16 * a + 16 * a + 16 * a, 2) (320, 1): conv3-{c} x{n}] gap
"""
    assert format_text("network v: input 3x8x8 [for c in (1) (2): conv3-{c}]\n") == \
        "network v: input 3x8x8 [for c in (1) (2): conv3-{c}]\n"


def test_a_table_written_one_row_a_line_goes_in_columns():
    text = "network v: input 3x32x32 [for c, n, s in (16, 1, 1)\n (24, 2, 2)\n   (320, 1, 1): conv3-{c}/{s} x{n}] gap\n"
    assert format_text(text) == """\
network v: input 3x32x32 [for c, n, s in ( 16, 1, 1)
                                         ( 24, 2, 2)
                                         (320, 1, 1):
        conv3-{c}/{s} x{n}] gap
"""
    # rows too long to share a line come out one a line, so in columns at once (formatting again changes nothing)
    long = " + ".join(["16 * a"] * 9)
    text = f"network v(a=1): input 3x8x8 [conv3-8 for c, n in ({long}, 1) ({long}, 20): conv3-{{c}} x{{n}}]\n"
    assert format_text(text) == f"""\
network v(a=1): input 3x8x8 [conv3-8
    for c, n in ({long},  1)
                ({long}, 20):
        conv3-{{c}} x{{n}}]
"""


@pytest.mark.parametrize("text, formatted", [
    # a continuation line indented by the author from the line that opens the bracket: 4 in from that line
    ("network n: input 3x8x8  features: [conv3-8 bn relu\n  conv3-8 bn relu]  gap fc-2\n",
     "network n: input 3x8x8  features: [conv3-8 bn relu\n    conv3-8 bn relu]  gap fc-2\n"),
    # lined up after the bracket by the author, it stays lined up (after the bracket's new column)
    ("network n(c=8): input 3x8x8  body: [conv3-{c*2} [conv3-8 bn relu\n" + " " * 49 + "conv3-8]]\n",
     "network n(c=8): input 3x8x8  body: [conv3-{c * 2} [conv3-8 bn relu\n" + " " * 51 + "conv3-8]]\n"),
    # ... unless the alignment makes a line too long: then it hangs
    ("network n: input 3x8x8  features: [conv3-8 bn relu\n" + " " * 36 + "conv3-8 bn relu " + "relu " * 14 + "]\n",
     "network n: input 3x8x8  features: [conv3-8 bn relu\n    conv3-8 bn relu " + "relu " * 13 + "relu]\n"),
    # a combinator ending its line (the zoo's MBConv blocks): its branches 4 in from that line, `|` too
    ("block b(c): residual<\n        conv3-{c} bn relu\n  conv3-{c} bn > relu\n",
     "block b(c): residual<\n    conv3-{c} bn relu\n    conv3-{c} bn > relu\n"),
    ("block b(c): concat< conv1-{c}\n  | conv3-{c} bn >\n", "block b(c): concat< conv1-{c}\n    | conv3-{c} bn >\n"),
    # `|` under the `<` as the Inception blocks write it, and a branch's next line two columns further
    ("block b(c): concat< conv1-{c}\n                  | conv3-{c}\n                    bn >\n",
     "block b(c): concat< conv1-{c}\n                  | conv3-{c}\n                    bn >\n"),
])
def test_continuation_lines_hang_unless_the_author_aligned_them(text, formatted):
    assert format_text(text) == formatted
    assert format_text(formatted) == formatted
    assert _plain(parse(text)) == _plain(parse(formatted))


def test_comments_everywhere_survive():
    text = ("# top\nblock b(c): # after the header\n  conv3-{c}  # after a layer\n  # before relu\n  relu\n"
            "network n: input 3x8x8 [for a in (1) # in a table\n (2): b(a)] fc-2 # last\n# the end\n")
    out = format_text(text)
    assert re.findall(r"#[^\n]*", out) == re.findall(r"#[^\n]*", text)
    assert format_text(out) == out
    assert _plain(parse(out)) == _plain(parse(text))


def test_check_prints_a_diff_and_exits_1_then_fmt_rewrites(tmp_path, capsys):
    path = tmp_path / "m.cnn"
    path.write_text(MESSY)
    assert cli.main(["fmt", "--check", str(path)]) == 1
    out = capsys.readouterr()
    assert f"--- {path} (original)" in out.out and "+    stem: conv{k}-{c * 2}/2(p=1) bn  relu" in out.out
    assert "1 file would be reformatted" in out.err
    assert path.read_text() == MESSY  # --check changes nothing
    assert cli.main(["fmt", str(path)]) == 0
    assert path.read_text() == MESSY_FORMATTED
    assert cli.main(["fmt", "--check", str(path)]) == 0
    assert capsys.readouterr().out == ""


def test_bad_input_is_a_clean_error_and_the_file_is_left_alone(tmp_path, capsys):
    bad = tmp_path / "bad.cnn"
    bad.write_text("network t: input 3x8x8\n  conv3-4 x2.5\n")
    good = tmp_path / "good.cnn"
    good.write_text(MESSY)
    assert cli.main(["fmt", str(bad), str(good)]) == 1
    err = capsys.readouterr().err
    assert f"{bad}:2:11: error: a repeat count must be a whole number" in err
    assert bad.read_text() == "network t: input 3x8x8\n  conv3-4 x2.5\n"
    assert good.read_text() == MESSY_FORMATTED  # the other files are still formatted
    assert cli.main(["fmt", "--check", str(tmp_path / "missing.cnn")]) == 1
    assert "no such file" in capsys.readouterr().err
    with pytest.raises(CnnSyntaxError):
        format_text("network t: input 3x8x8 conv3-4 (")


def test_fmt_check_passes_on_every_shipped_file(capsys):
    """The zoo and the spaces are kept formatted: `cnndsl fmt --check` over them reports nothing."""
    assert cli.main(["fmt", "--check", *map(str, FILES)]) == 0, capsys.readouterr().out
    assert capsys.readouterr().out == ""


HOOKS = Path(__file__).resolve().parent.parent / ".pre-commit-hooks.yaml"


def _hooks() -> list[dict]:
    yaml = pytest.importorskip("yaml")
    return yaml.safe_load(HOOKS.read_text(encoding="utf-8"))


def test_the_pre_commit_hooks_parse_and_run_real_commands():
    import shlex

    hooks = {h["id"]: h for h in _hooks()}
    assert set(hooks) == {"cnndsl-fmt", "cnndsl-check"}
    for hook in hooks.values():
        assert {"id", "name", "entry", "language"} <= set(hook) and hook["language"] == "python"
        assert re.search(hook["files"], "net.cnn") and not re.search(hook["files"], "net.py")
    words = shlex.split(hooks["cnndsl-fmt"]["entry"])
    assert words[0] == "cnndsl"
    args = cli.parser().parse_args([*words[1:], "a.cnn", "b.cnn"])  # pre-commit appends the file names
    assert args.command == "fmt" and args.check and args.files == ["a.cnn", "b.cnn"]
    words = shlex.split(hooks["cnndsl-check"]["entry"])
    assert words[:2] == ["sh", "-c"] and "cnndsl check \"$f\"" in words[2]
    assert cli.parser().parse_args(["check", "a.cnn"]).command == "check"


@pytest.mark.slow
def test_the_check_hook_checks_each_file_and_fails_if_one_fails(tmp_path):
    import os
    import shlex
    import subprocess
    import sys

    good, bad = tmp_path / "good.cnn", tmp_path / "bad.cnn"
    good.write_text("network g: input 3x8x8 conv3-4 relu gap fc-2\n")
    bad.write_text("network b: input 3x8x8 fc-2 conv3-4\n")
    hook = next(h for h in _hooks() if h["id"] == "cnndsl-check")
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    run = subprocess.run([*shlex.split(hook["entry"]), str(good), str(bad)], env=env, capture_output=True, text=True,
                         check=False,
                         timeout=120)
    assert run.returncode == 1
    assert f"{good}: ok" in run.stdout and f"{bad}:1:" in run.stderr


def _sentences():
    from test_fuzz import _texts  # the fuzz suite's sentences of the grammar, comments and newlines between tokens

    return _texts()


@pytest.mark.slow
def test_fmt_of_sentences_of_the_grammar_is_idempotent_or_a_clean_error():
    from hypothesis import HealthCheck, given, settings

    @settings(max_examples=300, deadline=None, derandomize=True,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much, HealthCheck.data_too_large])
    @given(text=_sentences())
    def check(text):
        try:
            once = format_text(text, "fuzz.cnn")
        except CnnSyntaxError:
            return
        except CnnDslError as e:  # a limit; never the formatter's own bug
            assert not isinstance(e, FormatterBug), (text, e)
            return
        assert format_text(once, "fuzz.cnn") == once, text

    check()


@pytest.mark.parametrize("text, formatted", [
    # gluing `conv- soft-max` would make one name of it, `3 x8x8` one shape: the space written there stays
    ("block b:conv- soft-max:conv", "block b: conv- soft-max: conv\n"),
    ("network t:input 3 x8x8 conv3-4", "network t: input 3 x8x8 conv3-4\n"),
    ("network t: input 3x8x8\r\n  conv3-4\t(p=1)  # a comment\r\n  relu\r\n",
     "network t: input 3x8x8\n    conv3-4(p=1)  # a comment\n    relu\n"),
])
def test_spaces_that_keep_tokens_apart_and_other_whitespace(text, formatted):
    assert format_text(text) == formatted
    assert format_text(formatted) == formatted
