"""The TextMate grammar for .cnn files (VS Code and other editors), generated from :mod:`cnndsl.ir.vocabulary`.

``editors/cnn.tmLanguage.json`` is this module's output, checked in; regenerate it after adding
an op or a keyword, from the repository root::

    python -m cnndsl.tools.editors            # rewrite editors/cnn.tmLanguage.json
    python -m cnndsl.tools.editors --check    # exit 1 if it is out of date

A test checks that the checked-in file is byte for byte what :func:`textmate_grammar` returns.

>>> import json
>>> json.loads(textmate_grammar())["scopeName"]
'source.cnn'
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from cnndsl.ir.vocabulary import COMBINATORS, EXPRESSION_WORDS, KEYWORDS, LAYER_FOLLOWS, flag_words, layer_words

GRAMMAR_FILE = "cnn.tmLanguage.json"
_NAME = r"[A-Za-z_][A-Za-z0-9_]*(?:\.(?:[A-Za-z_][A-Za-z0-9_]*|[0-9]+))*"  # a label or a dotted reference


def _alternatives(words) -> str:
    return "|".join(words)


def _repository() -> dict[str, dict]:
    """The grammar's rules by name, in the order the top-level patterns try them."""
    return {
        "comment": {"match": "#.*$", "name": "comment.line.number-sign.cnn"},
        "string": {"match": '"[^"\\n]*"', "name": "string.quoted.double.cnn"},
        "keywords": {"match": rf"\b({_alternatives(KEYWORDS)})\b", "name": "keyword.control.cnn"},
        "label": {"match": rf"\b({_NAME})\s*(:)(?!=)",
                  "captures": {"1": {"name": "entity.name.tag.label.cnn"}, "2": {"name": "punctuation.separator.cnn"}}},
        "reference": {"match": f"@{_NAME}", "name": "variable.other.reference.cnn"},
        "combinator": {"match": rf"\b({_alternatives(COMBINATORS)})(?=\s*[(<])",
                       "name": "keyword.other.combinator.cnn"},
        "layer": {"match": rf"(?i)\b({_alternatives(layer_words())}){LAYER_FOLLOWS}",
                  "name": "support.function.layer.cnn"},
        "repeat": {"match": r"(?<![A-Za-z0-9_])x(?=[0-9{])", "name": "keyword.operator.repeat.cnn"},
        "shape": {"match": r"\b[0-9]+(?:x[0-9]+)+\b", "name": "constant.numeric.shape.cnn"},
        "number": {"match": r"\b[0-9]+(?:\.[0-9]+)?(?:[eE][-+]?[0-9]+)?\b", "name": "constant.numeric.cnn"},
        "constant": {"match": rf"\b({_alternatives(flag_words())})\b", "name": "constant.language.cnn"},
        "expression_word": {"match": rf"\b({_alternatives(EXPRESSION_WORDS)})\b", "name": "keyword.operator.word.cnn"},
        "operator": {"match": r"//|\.\.|[=!<>]=|[-+*/%=<>|]", "name": "keyword.operator.cnn"},
    }


def textmate_grammar() -> str:
    """The text of ``editors/cnn.tmLanguage.json``: JSON, one rule a line."""
    repository = _repository()

    def one_line(value) -> str:
        return json.dumps(value, ensure_ascii=False)

    head = {"$schema": "https://raw.githubusercontent.com/martinring/tmlanguage/master/tmlanguage.json",
            "name": "cnn", "scopeName": "source.cnn", "fileTypes": ["cnn"]}
    lines = ["{"]
    lines += [f"  {one_line(k)}: {one_line(v)}," for k, v in head.items()]
    lines.append('  "patterns": [')
    lines.append(",\n".join(f"    {one_line({'include': '#' + name})}" for name in repository))
    lines.append("  ],")
    lines.append('  "repository": {')
    lines.append(",\n".join(f"    {one_line(name)}: {one_line(rule)}" for name, rule in repository.items()))
    lines.append("  }")
    lines.append("}")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    """Write (or with ``--check``, compare) the grammar in DIR (``editors`` by default); 1 when out of date."""
    p = argparse.ArgumentParser(prog="python -m cnndsl.tools.editors", description=__doc__.split("\n")[0])
    p.add_argument("dir", nargs="?", default="editors", help="the editors/ folder (default: ./editors)")
    p.add_argument("--check", action="store_true", help="only check that the file is up to date")
    args = p.parse_args(argv)
    path = Path(args.dir) / GRAMMAR_FILE
    text = textmate_grammar()
    current = path.read_text(encoding="utf-8") if path.exists() else None
    if args.check:
        if current != text:
            print(f"{path} is out of date: run python -m cnndsl.tools.editors", file=sys.stderr)
            return 1
        return 0
    if current != text:
        path.write_text(text, encoding="utf-8")
        print(f"wrote {path}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
