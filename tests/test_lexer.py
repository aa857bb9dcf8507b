"""The Pygments lexer and the TextMate grammar for .cnn files."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

pygments = pytest.importorskip("pygments")
from pygments.token import Comment, Error, Keyword, Name, Number

from cnndsl.front.loader import _zoo_dir, zoo_files
from cnndsl.tools.lexer import CnnLexer

EDITORS = Path(__file__).resolve().parent.parent / "editors"


@pytest.mark.parametrize("filename", zoo_files())
def test_every_zoo_file_lexes_without_error_tokens(filename):
    text = _zoo_dir().joinpath(filename).read_text(encoding="utf-8")
    tokens = list(CnnLexer().get_tokens(text))
    assert [v for t, v in tokens if t is Error] == []
    assert "".join(v for _, v in tokens) == (text if text.endswith("\n") else text + "\n")


def test_tokens_of_a_resnet_line():
    text = "block basic(c, s=1): residual< conv3-{c}/{s} bn relu > x2  # a comment\nlayer1: @conv1 x{n}\n"
    toks = [(t, v) for t, v in CnnLexer().get_tokens(text) if v.strip()]
    kinds = {v: t for t, v in toks}
    assert kinds["block"] is Keyword and kinds["residual"] is Keyword.Reserved
    assert kinds["conv"] is Name.Builtin and kinds["bn"] is Name.Builtin and kinds["relu"] is Name.Builtin
    assert kinds["layer1"] is Name.Label and kinds["@conv1"] is Name.Variable.Magic
    assert kinds["# a comment"] is Comment.Single and kinds["2"] is Number.Integer


def test_pygmentize_finds_the_lexer_by_name():
    r = subprocess.run([sys.executable, "-m", "pygments", "-l", "cnn", "-f", "html"], input="conv3-64 relu\n",
                       capture_output=True, text=True, check=False)
    if r.returncode and "no lexer" in r.stderr.lower():
        pytest.skip("cnndsl is not installed with its entry points")
    assert r.returncode == 0, r.stderr
    assert '<span class="nb">conv</span>' in r.stdout


def test_textmate_grammar_is_valid_and_matches_the_zoo():
    grammar = json.loads((EDITORS / "cnn.tmLanguage.json").read_text())
    package = json.loads((EDITORS / "package.json").read_text())
    assert grammar["scopeName"] == "source.cnn"
    assert package["contributes"]["grammars"][0]["scopeName"] == "source.cnn"
    assert package["contributes"]["languages"][0]["extensions"] == [".cnn"]
    # every regex compiles (TextMate uses Oniguruma; these stay within what Python's re shares with it)
    for pattern in grammar["repository"].values():
        for rule in pattern.get("patterns", [pattern]):
            re.compile(rule["match"])
    keywords = re.compile(grammar["repository"]["keywords"]["match"])
    assert keywords.search("network resnet18") and keywords.search("use \"blocks.cnn\"")
