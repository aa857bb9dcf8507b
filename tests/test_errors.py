"""Every user mistake ends in a clean ``file:line:col: error: ...`` message, never a traceback.

Each ``tests/errors/<case>.cnn`` starts with a header comment naming what it must produce::

    # error 3:5: unknown layer or block 'conv3x'
    # warning 3:5: stride 3 doesn't fit

(the 1-based line and column of the caret, and a piece of the message). The test loads the
file with :func:`cnndsl.load` exactly as a user would, and checks the error type, the
message, the position, and the rendered text (header line, source line, caret, hint).
Cases that cannot be written as a text fixture (empty, binary, non-UTF-8 files) are
generated into a temporary folder.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

import cnndsl
from cnndsl import CnnDslError

ERRORS = Path(__file__).parent / "errors"
HEADER = re.compile(r"^# (error|warning) (\d+):(\d+): (.+)$")
FIXTURES = sorted(ERRORS.glob("*.cnn"))


def header(path: Path) -> tuple[str, int, int, str]:
    first = path.read_text(encoding="utf-8").splitlines()[0]
    m = HEADER.match(first)
    assert m, f"{path.name}: first line must be '# error L:C: message' or '# warning L:C: message'"
    return m[1], int(m[2]), int(m[3]), m[4]


@pytest.fixture(scope="module", autouse=True)
def _warm_parser():
    """Build the Lark parser once, so that the timings below measure the checks, not the set-up."""
    cnndsl.loads("network warm: input 1x4x4 conv3-1")


def check_rendered(text: str, path: Path | str, kind: str, line: int, col: int) -> None:
    """The rendered diagnostic: ``file:line:col: kind: msg``, the source line, a caret under ``col``."""
    lines = text.splitlines()
    assert lines[0].startswith(f"{path}:{line}:{col}: {kind}: "), lines[0]
    source_line = Path(path).read_text(encoding="utf-8").splitlines()[line - 1]
    assert lines[1].startswith("    ") and lines[1][4:] in source_line.expandtabs(1), text
    caret = lines[2]
    assert set(caret.strip()) == {"^"}, text
    if len(source_line) <= 100:  # long lines are shown as a window around the caret
        assert caret.index("^") == 4 + col - 1, text
    assert "Traceback" not in text


def test_there_are_many_fixtures():
    assert len(FIXTURES) >= 50


@pytest.mark.parametrize("path", FIXTURES, ids=[p.stem for p in FIXTURES])
def test_fixture(path: Path):
    kind, line, col, message = header(path)
    if kind == "warning":
        net = cnndsl.load(str(path))
        hits = [w for w in net.warnings if message in w.message]
        assert hits, f"no warning containing {message!r}; got {[w.message for w in net.warnings]}"
        w = hits[0]
        assert (w.span.line, w.span.col) == (line, col)
        check_rendered(str(w), path, "warning", line, col)
        assert "hint: " in str(w)
    else:
        with pytest.raises(CnnDslError) as info:
            cnndsl.load(str(path))
        err = info.value
        assert message in err.message, f"expected {message!r} in {err.message!r}"
        assert err.span is not None, "every error points at the file"
        assert err.span.file == str(path)
        assert (err.span.line, err.span.col) == (line, col), str(err)
        check_rendered(str(err), path, "error", line, col)
        assert err.hint and "\nhint: " in str(err), "every error says what to do about it"


def test_warnings_are_not_repeated():
    """The shape pass runs twice (before and after the shortcuts): each warning is reported once."""
    net = cnndsl.load(str(ERRORS / "stride_does_not_fit.cnn"))
    assert len(net.warnings) == 2  # one for the rows, one for the columns
    assert len({str(w) for w in net.warnings}) == 2


def test_hints_say_what_to_do():
    """Spot checks that the hint after the caret helps, not just repeats the message."""
    def hint(case: str) -> str:
        with pytest.raises(CnnDslError) as info:
            cnndsl.load(str(ERRORS / f"{case}.cnn"))
        return info.value.hint or ""

    assert "conv3-64" in hint("unknown_layer")
    assert "did you mean 'conv'" in hint("unknown_layer_typo")
    assert "did you mean 'concat'" in hint("unknown_combinator")
    assert "did you mean 'stem'" in hint("unknown_reference")
    assert "cycle" in hint("reference_to_later_label")
    assert "parameters in scope: c" in hint("unknown_name_in_braces")
    assert "unit(c)" in hint("block_too_many_arguments")
    assert hint("unknown_keyword") == "did you mean 's'?"
    assert "conv(c=64, k=3" in hint("missing_argument")
    assert "projection shortcut" in hint("add_channel_mismatch")
    assert "concat(crop=true)" in hint("concat_spatial_mismatch")
    assert "first defined at" in hint("duplicate_block")
    assert "already defined at" in hint("duplicate_label")
    assert "next to this file" in hint("missing_use")
    assert "several_networks.cnn:b" in hint("several_networks")
    assert "@name" in hint("dead_branch")
    assert "the file ends before the matching ']'" in hint("syntax_unclosed_bracket")
    assert "there is no '(' open" in hint("syntax_unmatched_paren")


# ----------------------------------------------------------------------------- generated files


def load_error(path: Path) -> CnnDslError:
    with pytest.raises(CnnDslError) as info:
        cnndsl.load(str(path))
    return info.value


def test_empty_file(tmp_path):
    path = tmp_path / "empty.cnn"
    path.write_text("")
    err = load_error(path)
    assert "empty file" in err.message
    assert str(err).startswith(f"{path}:1:1: error: empty file")
    assert "hint: a network starts with" in str(err)


def test_whitespace_only_file(tmp_path):
    path = tmp_path / "blank.cnn"
    path.write_text("\n\n   \t\n")
    assert "empty file" in load_error(path).message


def test_binary_file(tmp_path):
    path = tmp_path / "weights.cnn"
    path.write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(range(256)))
    err = load_error(path)
    assert "binary file" in err.message
    assert str(err).startswith(f"{path}:3:1: error: ")  # the first NUL byte, after the lines "\x89PNG\r" and "\x1a"
    assert "Traceback" not in str(err)


def test_non_utf8_file(tmp_path):
    path = tmp_path / "latin1.cnn"
    path.write_bytes("# réseau\nnetwork t: input 3x8x8 conv3-8\n".encode("latin-1"))
    err = load_error(path)
    assert "not UTF-8" in err.message and "0xe9" in err.message
    assert (err.span.line, err.span.col) == (1, 4)  # the latin-1 é of "# réseau"
    assert str(err).splitlines()[2] == "       ^"
    assert err.hint == "save the file as UTF-8"


@pytest.mark.parametrize("device", ["/dev/zero", "/dev/urandom", "/dev/null"])
def test_a_device_is_refused_before_it_is_read(device):
    """/dev/zero would fill the memory, /dev/urandom never ends: neither is opened for reading past a stat."""
    if not os.path.exists(device):
        pytest.skip(f"no {device} here")
    err = load_error(Path(device))
    assert err.message == f"{device} is a character device, not a regular file"


def test_a_fifo_is_refused_without_waiting_for_a_writer(tmp_path):
    fifo = tmp_path / "net.cnn"
    os.mkfifo(fifo)
    # opened without blocking: with no writer on the other end, a blocking open would hang this test
    assert load_error(fifo).message == f"{fifo} is a FIFO, not a regular file"


def test_a_used_fifo_is_refused_at_the_use(tmp_path):
    os.mkfifo(tmp_path / "blocks.cnn")
    path = tmp_path / "net.cnn"
    path.write_text('use "blocks.cnn"\nnetwork t: input 3x8x8 conv3-8\n')
    err = load_error(path)
    assert "is a FIFO, not a regular file" in err.message and (err.span.line, err.span.col) == (1, 1)


def test_a_huge_file_is_refused_from_its_size(tmp_path):
    path = tmp_path / "huge.cnn"
    with open(path, "wb") as f:  # sparse: 100 MB that take no disk
        f.truncate(100 * 2**20)
    err = load_error(path)
    assert err.message == f"{path} is larger than 4 MiB (104,857,600 bytes)"


def test_used_file_is_binary(tmp_path):
    (tmp_path / "blocks.cnn").write_bytes(b"\x00\x01\x02")
    path = tmp_path / "net.cnn"
    path.write_text('use "blocks.cnn"\nnetwork t: input 3x8x8 conv3-8\n')
    err = load_error(path)
    assert "binary file" in err.message and "a NUL byte at 1:1" in err.message
    assert (err.span.file, err.span.line, err.span.col) == (str(path), 1, 1)


def test_syntax_error_in_used_file_points_into_that_file(tmp_path):
    (tmp_path / "blocks.cnn").write_text("block unit(c):\n    conv3-{c} relu ]\n")
    path = tmp_path / "net.cnn"
    path.write_text('use "blocks.cnn"\nnetwork t: input 3x8x8 unit(8)\n')
    err = load_error(path)
    assert err.message == "unmatched ']'"
    assert (err.span.line, err.span.col) == (2, 20)
    assert str(err).startswith(f"{(tmp_path / 'blocks.cnn').resolve()}:2:20: error:")


def test_missing_file(tmp_path):
    err = load_error(tmp_path / "nope.cnn")
    assert "no such file" in err.message


def test_directory_is_not_a_network(tmp_path):
    folder = tmp_path / "dir.cnn"
    folder.mkdir()
    assert "is a directory" in load_error(folder).message


def test_unknown_network_choice(tmp_path):
    path = tmp_path / "two.cnn"
    path.write_text("network alpha: input 3x8x8 conv3-8\nnetwork beta: input 3x8x8 conv3-8\n")
    with pytest.raises(CnnDslError) as info:
        cnndsl.load(f"{path}:alpah")
    assert "unknown network 'alpah'" in info.value.message
    assert info.value.hint == "did you mean 'alpha'?"
    assert cnndsl.load(f"{path}:beta").name == "beta"


def test_unknown_zoo_name():
    with pytest.raises(CnnDslError) as info:
        cnndsl.load("resnet5000")
    assert "neither a file nor a zoo network" in info.value.message


def test_loads_reports_string_positions():
    with pytest.raises(CnnDslError) as info:
        cnndsl.loads("network t: input 3x8x8\n  conv3-8 dropout(p=2)\n", "inline.cnn")
    assert str(info.value).startswith("inline.cnn:2:11: error: 'p' must be between 0.0 and 1.0")


# ----------------------------------------------------------------------------- the command line


def cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "cnndsl", *args], capture_output=True, text=True, cwd=cwd,
                          timeout=60, check=False)


@pytest.mark.parametrize("command", ["check", "summary", "expand"])
def test_cli_bad_file_exits_1_with_the_message(command):
    path = ERRORS / "unknown_layer.cnn"
    r = cli(command, str(path))
    assert r.returncode == 1, r.stderr
    assert r.stderr.startswith(f"{path}:3:5: error: unknown layer or block 'conv3x'")
    assert "^^^^^^" in r.stderr and "hint: " in r.stderr
    assert "Traceback" not in r.stderr


def test_cli_warning_goes_to_stderr_and_succeeds():
    path = ERRORS / "stride_does_not_fit.cnn"
    r = cli("check", str(path))
    assert r.returncode == 0, r.stderr
    assert f"{path}:3:5: warning: stride 3 doesn't fit" in r.stderr
    assert "Traceback" not in r.stderr


def test_cli_missing_file_exits_1(tmp_path):
    r = cli("check", str(tmp_path / "missing.cnn"))
    assert r.returncode == 1
    assert "no such file" in r.stderr
    assert "Traceback" not in r.stderr


def test_cli_binary_file_exits_1(tmp_path):
    path = tmp_path / "blob.cnn"
    path.write_bytes(b"\x00\xff" * 64)
    r = cli("check", str(path))
    assert r.returncode == 1
    assert "binary file" in r.stderr
    assert "Traceback" not in r.stderr


@pytest.mark.parametrize("args", [(), ("frobnicate",), ("check",), ("summary", "lenet5", "--input", "3xx"),
                                  ("summary", "lenet5", "--format", "nonsense")])
def test_cli_bad_usage_exits_2(args):
    r = cli(*args)
    assert r.returncode == 2, (r.returncode, r.stderr)
    assert "usage:" in r.stderr
    assert "Traceback" not in r.stderr


# ----------------------------------------------------------------------------- notes: the instance chain

CHAIN = """block down(c):
    conv3-{c}/2 bn relu
    conv7-{c}(p=0) bn relu
block stage(c): down(c) down(2*c)
network t: input 3x16x16
    stem: conv3-16
    stage(32)
    fc-10
"""


def _notes(e: CnnDslError) -> list[tuple[str, int, int]]:
    return [(n.message, n.span.line, n.span.col) for n in e.notes]


@pytest.mark.parametrize("memo", ["on", "off"])
def test_an_error_inside_blocks_names_each_instance_innermost_first(memo, monkeypatch):
    """16 px -> 8 -> conv7 -> 2 in the first down; the second down(64) halves 2 to 1, which a 7x7 kernel cannot
    read: the error is at the conv in the block body, and the notes at down(2*c) (line 4) then stage(32)."""
    from cnndsl.passes.memo import clear_memo, set_memo

    previous = set_memo(memo == "on")
    clear_memo()
    try:
        with pytest.raises(CnnDslError) as info:
            cnndsl.loads(CHAIN, "net.cnn")
    finally:
        set_memo(previous)
    e = info.value
    assert (e.line, e.col) == (3, 5) and "larger than its input" in e.message
    assert _notes(e) == [("in the instance `down(64)`", 4, 25), ("in the instance `stage(32)`", 7, 5)]
    text = str(e).splitlines()
    assert text[4:] == ["net.cnn:4:25: note: in the instance `down(64)`",
                        "    block stage(c): down(c) down(2*c)",
                        "                            ^^^^^^^^^",
                        "net.cnn:7:5: note: in the instance `stage(32)`",
                        "        stage(32)",
                        "        ^^^^^^^^^"]


def test_a_resolve_error_inside_a_block_names_its_instance():
    with pytest.raises(CnnDslError) as info:
        cnndsl.loads("block b(c): conv3-{c} foo\nnetwork t: input 3x8x8\n    b(8)\n", "net.cnn")
    assert "unknown layer or block 'foo'" in info.value.message and (info.value.line, info.value.col) == (1, 23)
    assert _notes(info.value) == [("in the instance `b(8)`", 3, 5)]


def test_an_error_at_the_call_itself_has_no_note_for_that_call():
    with pytest.raises(CnnDslError) as info:
        cnndsl.loads("block b(c): conv3-{c}\nnetwork t: input 3x8x8\n    b(8, 9)\n", "net.cnn")
    assert (info.value.line, info.value.col) == (3, 5) and info.value.notes == []


def test_notes_reach_the_cli_and_the_language_server(tmp_path):
    from cnndsl.tools.lsp import analyse

    path = tmp_path / "net.cnn"
    path.write_text(CHAIN, encoding="utf-8")
    run = subprocess.run([sys.executable, "-m", "cnndsl", "check", str(path)], check=False, capture_output=True,
                         text=True)
    assert run.returncode == 1 and "Traceback" not in run.stderr
    assert f"{path}:4:25: note: in the instance `down(64)`" in run.stderr
    (diag,) = [d for d in analyse(CHAIN, str(path)).diagnostics if d.severity == "error"]
    assert f"note: in the instance `down(64)` at {path}:4:25" in diag.message
