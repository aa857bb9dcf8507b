"""Hostile input on the command line: every case ends in exit 1 with a clean message, or exit 2 for bad usage.

Each test runs the real CLI (:func:`cnndsl.tools.cli.main`, or ``python -m cnndsl`` in a subprocess where
a package must be missing: an import hook there makes importing it fail, as on a machine without it).
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from cnndsl.errors import Source
from cnndsl.front.syntax import MAX_NUMBER
from cnndsl.tools.cli import main

TINY = "network tiny(classes=10): input 1x8x8\n    conv3-4 relu gap fc-{classes}\n"


def run_main(capsys, *argv: str) -> tuple[int, str, str]:
    """``cnndsl ARGV`` in this process: (exit status, stdout, stderr); argparse's own exits included."""
    try:
        rc = main(list(argv))
    except SystemExit as e:
        rc = e.code if isinstance(e.code, int) else 1
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err
    return rc, out, err


# -- cnndsl train: data sets and missing packages ---------------------------------------------------------------

def image_folder(root: Path, counts: dict[str, int], *, real: bool) -> Path:
    """``root/<class>/<i>.png``; real PNGs when ``real`` (needs Pillow), else placeholder bytes."""
    for cls, n in counts.items():
        (root / cls).mkdir(parents=True)
        for i in range(n):
            path = root / cls / f"{i}.png"
            if real:
                from PIL import Image

                Image.new("L", (8, 8), color=40 * i).save(path)
            else:
                path.write_bytes(b"placeholder")
    return root


@pytest.mark.parametrize("broken", ["random bytes", "truncated png", "empty file"])
def test_train_on_a_corrupt_image_names_the_file(capsys, tmp_path, broken):
    pytest.importorskip("PIL")
    import random

    data = image_folder(tmp_path / "data", {"cat": 3, "dog": 3}, real=True)
    good = (data / "cat" / "0.png").read_bytes()
    bad = {"random bytes": random.Random(0).randbytes(512), "truncated png": good[:len(good) // 2],
           "empty file": b""}[broken]
    (data / "dog" / "bad.png").write_bytes(bad)
    net = tmp_path / "tiny.cnn"
    net.write_text(TINY)
    rc, out, err = run_main(capsys, "train", str(net), "--data", str(data), "--epochs", "1")
    assert rc == 1
    assert err.startswith("error: cannot read the image ") and "bad.png" in err.splitlines()[0]
    assert "hint: remove or replace the file" in err
    assert "test accuracy" not in out


@pytest.mark.parametrize(("counts", "message", "hint"), [
    ({"a": 5, "b": 1}, ("class 'b' in '{data}' has only 1 image; the stratified 80/20 train/test split needs "
                        "at least 2 per class"), "hint: add images to {data}/b, or remove that folder"),
    ({"a": 5, "b": 0}, "class 'b' in '{data}' has no images", "hint: add images to {data}/b"),
    ({"a": 2, "b": 2, "c": 2}, "6 images in 3 classes are too few for the stratified 80/20 split",
     "hint: give at least 11 images in all"),
])
def test_train_on_too_few_images_for_the_split(capsys, tmp_path, counts, message, hint):
    """Checked before any image is decoded (so the files need not even be images, nor Pillow be there)."""
    data = image_folder(tmp_path / "data", counts, real=False)
    (tmp_path / "tiny.cnn").write_text(TINY)
    for backend in ("torch", "jax"):
        rc, _, err = run_main(capsys, "train", str(tmp_path / "tiny.cnn"), "--data", str(data), "--backend", backend)
        assert rc == 1, err
        assert err.startswith("error: " + message.format(data=data)), err
        assert hint.format(data=data) in err


def test_train_needs_at_least_one_epoch(capsys):
    rc, _, err = run_main(capsys, "train", "lenet5", "--epochs", "0")
    assert rc == 2 and "usage: cnndsl train" in err and "argument --epochs: expected at least 1, got 0" in err


BLOCK = """
import importlib.abc, sys
class Missing(importlib.abc.MetaPathFinder):
    '''Importing these packages fails, as where they are not installed.'''
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {missing!r}:
            raise ModuleNotFoundError(f"No module named {{name!r}}", name=name)
sys.meta_path.insert(0, Missing())
from cnndsl.tools.cli import main
rc = main({argv!r})
assert not {missing!r} & {{m.split(".")[0] for m in sys.modules}}, "a blocked package was imported"
sys.exit(rc)
"""


def cli_without(missing: set[str], argv: list[str], cwd: Path) -> subprocess.CompletedProcess:
    """``cnndsl ARGV`` in a fresh interpreter in which importing ``missing`` packages fails."""
    code = BLOCK.format(missing=missing, argv=argv)
    return subprocess.run([sys.executable, "-c", code], cwd=cwd, capture_output=True, text=True, timeout=600,
                          check=False)


@pytest.mark.parametrize(("missing", "argv", "message", "hint"), [
    ({"sklearn"}, ["train", "tiny.cnn"], "error: the digits data set needs scikit-learn, which is not installed",
     "hint: pip install scikit-learn, or give --data DIR"),
    ({"sklearn"}, ["train", "tiny.cnn", "--backend", "jax"], "error: the digits data set needs scikit-learn",
     "hint: pip install scikit-learn"),
    ({"sklearn"}, ["train", "tiny.cnn", "--data", "data"],
     "error: the stratified train/test split needs scikit-learn, which is not installed",
     "hint: pip install scikit-learn"),
    ({"torch"}, ["train", "tiny.cnn"], "error: training with the torch backend needs PyTorch, which is not installed",
     "hint: pip install torch, or train with --backend jax"),
    ({"jax"}, ["train", "tiny.cnn", "--backend", "jax"], "error: training with the JAX backend needs JAX",
     "hint: pip install 'cnndsl[jax]'"),
    ({"optax"}, ["train", "tiny.cnn", "--backend", "jax"], "error: training with the JAX backend needs optax",
     "hint: pip install 'cnndsl[jax]'"),
], ids=["digits-no-sklearn", "jax-digits-no-sklearn", "folder-no-sklearn", "no-torch", "no-jax", "no-optax"])
def test_train_without_a_package_says_what_to_install(tmp_path, missing, argv, message, hint):
    (tmp_path / "tiny.cnn").write_text(TINY)
    image_folder(tmp_path / "data", {"a": 5, "b": 5}, real=False)
    r = cli_without(missing, argv, tmp_path)
    assert r.returncode == 1, r.stderr
    assert r.stderr.startswith(message) and hint in r.stderr, r.stderr
    assert "Traceback" not in r.stderr


def test_train_with_jax_does_not_need_torch(tmp_path):
    pytest.importorskip("jax")
    pytest.importorskip("optax")
    pytest.importorskip("sklearn")
    (tmp_path / "tiny.cnn").write_text(TINY)
    r = cli_without({"torch"}, ["train", "tiny.cnn", "--backend", "jax", "--epochs", "1"], tmp_path)
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines()[-1].startswith("test accuracy: "), r.stdout


# -- --input and -p: usage errors ----------------------------------------------------------------------------------

SHAPES = ["64", "1x8x8", "001x08x08", "3x16", "3x16x16x2", "0x8x8", "3x0x8", "0", "3X8X8", "x8", "8x", "3xx8",
          "1e3", "-3", "+3", "3.0", "\uff13x8x8", "3x\u0668x8", "3*8*8", "3,8,8"]


@pytest.mark.parametrize("shape", SHAPES)
def test_input_takes_the_shapes_the_language_takes(capsys, tmp_path, shape):
    """``--input S`` is accepted exactly when ``input S`` is a valid network input (C or CxHxW, sizes >= 1)."""
    (tmp_path / "lang.cnn").write_text(f"network t: input {shape}\n    fc-10\n", encoding="utf-8")
    (tmp_path / "cli.cnn").write_text("network t: input 1x8x8\n    fc-10\n")
    lang_rc, _, lang_err = run_main(capsys, "check", str(tmp_path / "lang.cnn"))
    cli_rc, _, cli_err = run_main(capsys, "summary", str(tmp_path / "cli.cnn"), "--input", shape)
    assert lang_rc in (0, 1) and cli_rc in (0, 2)
    assert (cli_rc == 0) == (lang_rc == 0), (lang_err, cli_err)
    if cli_rc == 2:
        assert "usage: cnndsl summary" in cli_err
        assert ("argument --input: expected C (a flat vector, such as 64) or CxHxW (such as 3x224x224)"
                in cli_err), cli_err


@pytest.mark.parametrize("size", [str(MAX_NUMBER + 1), "1" + "0" * 5000], ids=["2**40+1", "10**5000"])
def test_input_sizes_are_bounded_as_in_the_language(capsys, size):
    rc, _, err = run_main(capsys, "summary", "lenet5", "--input", f"1x{size}x8")
    assert rc == 2 and f"with sizes from 1 to {MAX_NUMBER:,}" in err


@pytest.mark.parametrize("command", [["check", "lenet5"], ["summary", "lenet5"], ["train", "lenet5"],
                                     ["variants", "resnet_cifar", "--count"]])
@pytest.mark.parametrize("pair", ["foo", "=3", "1x=3", "a b=1", "", "classes"])
def test_a_malformed_param_is_a_usage_error(capsys, command, pair):
    rc, out, err = run_main(capsys, *command, "-p", pair)
    assert rc == 2, err
    assert err.startswith(f"usage: cnndsl {command[0]} ")
    assert f"cnndsl {command[0]}: error: argument --param/-p: expected NAME=VALUE such as classes=10, " \
           f"got {pair!r}" in err
    assert out == ""


def test_a_wellformed_param_still_works(capsys):
    rc, out, _ = run_main(capsys, "check", "lenet5", "-p", "classes=7", "--param", "classes=3")
    assert rc == 0 and "lenet5: ok" in out


# -- the caret under the right character, whatever control characters the source holds ------------------------------

def position(text: str, offset: int) -> tuple[int, int]:
    """1-based (line, column) of ``offset`` with lines split at ``\\n`` only, as the parser counts."""
    return text.count("\n", 0, offset) + 1, offset - (text.rfind("\n", 0, offset) + 1) + 1


CARETS = {
    # (source, the text the error points at)
    "form feed on an earlier line": ("network t: input 1x8x8\n\x0c  conv3-4 relu\n    bogus\n", "bogus"),
    "form feed before the culprit": ("network t: input 1x8x8\n  conv3-4 \x0c\x0c relu bogus\n", "bogus"),
    "form feed after the culprit": ("network t: input 1x8x8\n  conv3-4 bogus \x0c relu\n", "bogus"),
    "vertical tab (not whitespace)": ("network t: input 1x8x8\n  conv3-4 \x0b relu\n", "\x0b"),
    "U+2028 (not whitespace)": ("network t: input 1x8x8\n  conv3-4 relu \u2028 fc-10\n", "\u2028"),
    "U+2029 after a tab": ("network t: input 1x8x8\n\tconv3-4\t\u2029 relu\n", "\u2029"),
    "CRLF line ends": ("network t: input 1x8x8\r\n  conv3-4 relu\r\n  bogus\r\n", "bogus"),
    "CRLF, culprit at the end of the line": ("network t: input 1x8x8\r\n  conv3-4 relu bogus\r\n", "bogus"),
    "a lone CR": ("network t: input 1x8x8\r  conv3-4 relu\r  bogus\n", "bogus"),
    "line separators in comments": (("network t: input 1x8x8  # a\x0cb\x1cc\x1dd\x1ee\x85f\u2028g\u2029h\x0bi\n"
                                     "  conv3-4 relu # \x0c\u2028\n    bogus\n"), "bogus"),
    "bidi override in a comment": ("network t: input 1x8x8  # \u202e\u2066 x\n  relu bogus # \u202e\n", "bogus"),
    "NEL in a string": ('use "a\x85b\u2028\x1b[2J.cnn"\nnetwork t: input 1x8x8\n  relu\n', "use"),
}


@pytest.mark.parametrize(("text", "culprit"), CARETS.values(), ids=CARETS.keys())
def test_the_caret_sits_under_the_culprit(capsys, tmp_path, text, culprit):
    path = tmp_path / "net.cnn"
    path.write_bytes(text.encode("utf-8"))
    rc, _, err = run_main(capsys, "check", str(path))
    assert rc == 1
    line, col = position(text, text.index(culprit))
    head, shown, caret, *_ = err.split("\n")
    assert head.startswith(f"{path}:{line}:{col}: error: "), err
    assert head.isprintable(), repr(head)  # a string quoted in the message shows its control characters escaped
    source_line = text.split("\n")[line - 1]
    # the line the parser counted, one character per character, controls and separators shown as spaces
    assert len(shown) == 4 + len(source_line) and shown.isprintable(), repr(shown)
    assert shown[4:] == "".join(c if c.isprintable() else " " for c in source_line), repr(shown)
    assert caret.index("^") == 4 + col - 1, err
    if culprit.isprintable():
        assert shown[caret.index("^"):].startswith(culprit)


def test_source_lines_split_at_newline_only():
    src = Source("x.cnn", "a\r\nb\x0cc\x1c\x85\u2028d\ne\n\nf")
    assert [src.line(n) for n in range(8)] == ["", "a\r", "b\x0cc\x1c\x85\u2028d", "e", "", "f", "", ""]


def test_a_control_character_is_reported_by_the_subprocess_cli_too(tmp_path):
    """The same through a real process and its stderr (no terminal control characters get out)."""
    text = textwrap.dedent("""\
        network t: input 1x8x8
        \x0c  conv3-4 \x1b[2J relu
        """)
    (tmp_path / "net.cnn").write_text(text, encoding="utf-8")
    r = subprocess.run([sys.executable, "-m", "cnndsl", "check", "net.cnn"], cwd=tmp_path, capture_output=True,
                       text=True, timeout=300, check=False)
    assert r.returncode == 1 and "Traceback" not in r.stderr
    line, col = position(text, text.index("\x1b"))
    head, shown, caret = r.stderr.split("\n")[:3]
    assert head.startswith(f"net.cnn:{line}:{col}: error: unexpected character '\\x1b'")
    assert "\x1b" not in shown and "\x0c" not in shown
    assert caret.index("^") == 4 + col - 1
