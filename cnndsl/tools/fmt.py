"""``cnndsl fmt``: the canonical layout of .cnn text.

The formatter works on the parse tree of the text with every token kept (the grammar's own, parsed with
``keep_all_tokens``) and only ever changes the whitespace between tokens: before it returns, the result is
parsed again and its tokens and comments are compared with the input's, so a format can never change what a
file means (a mismatch is a :class:`FormatterBug`, and the file is left alone).

The layout:

- one space around binary operators, after commas, after a label's ``:`` and around a combinator's ``|``;
  none inside a layer's short form (``conv3-64/2(p=1)``), a path, a shape or ``{a|b}``;
- a top-level ``block`` / ``network`` starts at column 0, at most one blank line between them; the steps of
  its body continue at 4 spaces;
- a line breaks only where a step, a branch, a table row, an argument or a header part may end; where the
  author broke a line there it stays broken (and a one- or two-space gap between steps on a line is kept),
  and a line longer than :data:`WIDTH` is broken at the outermost such place that makes it fit;
- a continuation line inside ``[ ]`` or ``( )`` lines up after the bracket; inside ``name< >`` a branch's
  ``|`` lines up under the ``<`` and a branch's next line two columns further;
- a table (``for a, b in (..) (..): STEP``) written over several lines, or too long for one, is laid out in
  columns: the ``for`` starts a line, one row a line under the first, numbers right-aligned, and the step on
  its own line four columns in;
- comments stay where they were, on their own line or after the code of theirs.

>>> print(format_text("network t:input 3x8x8  conv3-4/2 ( p = 1 ) relu  fc-{2*5}"), end="")
network t: input 3x8x8  conv3-4/2(p=1) relu  fc-{2 * 5}
"""

from __future__ import annotations

import argparse
import difflib
import sys
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import ClassVar

from lark import Lark, Token, Tree

from cnndsl.errors import CnnDslError

#: The longest line the formatter makes (where a break can make it shorter), as ruff's line length.
WIDTH = 120
INDENT = 4
#: A bracket opened past this column continues at its line's indentation + 4 rather than lined up on it.
HANG = 48
#: How many places the formatter may keep a space written inside a word-like run before it gives up.
MAX_RETRIES = 32
#: A table whose rows, written on one line, are longer than this is laid out in columns.
TABLE_ROWS_WIDTH = 60


class FormatterBug(CnnDslError):
    """The formatted text would not be the same tokens as the input: a bug of the formatter, not the user's."""


# ----------------------------------------------------------------------------- parsing with every token


class _Comments:
    """Collects the comments the lexer skips (Lark's ``lexer_callbacks`` see ignored terminals too)."""

    found: ClassVar[list[Token]] = []

    @classmethod
    def add(cls, tok: Token) -> None:
        cls.found.append(tok)


@lru_cache(maxsize=1)
def _parser() -> Lark:
    from cnndsl.front.syntax import grammar_text

    return Lark(grammar_text(), parser="lalr", lexer="contextual", propagate_positions=True,
                maybe_placeholders=True, keep_all_tokens=True, lexer_callbacks={"COMMENT": _Comments.add})


def _parse(text: str) -> tuple[Tree, list[Token]]:
    _Comments.found = []
    tree = _parser().parse(text)
    comments, _Comments.found = _Comments.found, []
    return tree, comments


# ----------------------------------------------------------------------------- separators

GLUE, SPACE, SOFT, STEP, TOP = "glue", "space", "soft", "step", "top"
_BINARY = {"add", "sub", "mul", "div", "floordiv", "mod", "eq", "ne", "lt", "le", "gt", "ge", "and_", "or_",
           "ifelse", "not_"}
_GLUED = {"call", "kernel", "ref", "path", "segment", "label", "repeat", "dims", "group", "count", "field", "neg",
          "brace", "atom", "int", "float", "var", "string", "param", "arg", "func", "tuple", "args", "params",
          "row", "opdefault", "freeze", "replace"}


def _kind(x) -> str:
    return x.data if isinstance(x, Tree) else x.type


def _text(x) -> str:
    return str(x) if isinstance(x, Token) else ""


def _separator(rule: str, left, right) -> str:
    """What goes between two adjacent children of a ``rule`` node (the last token of ``left``, the first of ``right``)."""
    rk, lt, rt = _kind(right), _text(left), _text(right)
    if rule == "start":
        return TOP
    if rule == "seq":
        return STEP
    if rt in (",", ")", "(") or lt == "(":
        return GLUE
    if lt == ",":
        return SPACE if rule in ("row", "tuple", "func", "freeze", "replace", "table") else SOFT
    if rule in ("block", "network", "derived"):
        if rk == "seq" and _kind(left) == "input":
            return STEP  # `input 3x224x224  features: ...`: a step's gap
        if rk in ("defaults", "input", "seq", "freeze", "replace"):
            return SOFT
        if rt == ":" or rk in ("params", "args"):
            return GLUE
        return SPACE
    if rule == "combinator":
        if rt == "<" or rk == "args":
            return GLUE
        return SOFT if rt == "|" else SPACE
    if rule == "rows":
        return SOFT
    if rule == "table":
        if rt == ":":
            return GLUE
        return SOFT if lt == ":" else SPACE
    if rule == "range":
        return SPACE if rk == "LOG" else GLUE
    if rule in _BINARY:
        return SPACE
    if rule == "input":
        return SPACE if lt == "input" else GLUE
    if rule in _GLUED:
        return GLUE
    if rule in ("step", "use", "defaults"):
        return SPACE
    return SPACE  # never glue what is not known to be glued: the token check would catch a merge, not a split


# ----------------------------------------------------------------------------- the token stream


@dataclass
class _Ctx:
    """An open construct whose continuation lines line up on it."""

    kind: str  # "top" (indent 4), "bracket" (after it), "comb" (| under <), "rows" (under the first row), "table",
    # "with" (after `with `)
    col: int = 0  # the column it is anchored at, known when its token is placed
    line_indent: int = 0  # the indentation of the line it opened on

    @property
    def hangs(self) -> bool:
        """A bracket opened far to the right: its continuation lines are indented from its line, not lined up."""
        return self.kind in ("bracket", "comb") and self.col > HANG


@dataclass
class _Item:
    tok: Token
    sep: str = GLUE
    gap: int = 1  # spaces of a separator that stays on the line
    force: bool = False  # a break before this token whatever the width
    pushes: list[str] = field(default_factory=list)  # contexts anchored at this token
    pops: int = 0  # contexts that end after this token
    depth: int = 0  # contexts open before it (where its separator is)


class _Stream:
    def __init__(self, text: str, spaced: frozenset[int] = frozenset()):
        self.text = text
        self.spaced = spaced  # tokens that keep a space written before them, where gluing would merge tokens
        self.items: list[_Item] = []
        self.pending_sep: str | None = None
        self.pending_force = False
        self.pending_pad = 0
        self.pending_push: list[str] = []
        self.depth = 0

    def token(self, tok: Token) -> None:
        sep = self.pending_sep or GLUE
        gap = 1
        prev = self.items[-1].tok if self.items else None
        between = self.text[prev.end_pos:tok.start_pos] if prev is not None else ""
        if sep == STEP:
            gap = 2 if "  " in between.split("#", 1)[0] else 1
        if sep == GLUE:
            gap = 0
            if len(self.items) in self.spaced and between and not between.split("#", 1)[0].strip():
                sep, gap = SPACE, 1  # `conv- soft-max:` would lex as one name glued
        gap += self.pending_pad
        self.items.append(_Item(tok, sep, gap, self.pending_force, self.pending_push, 0, self.depth))
        self.depth += len(self.pending_push)
        self.pending_sep, self.pending_force, self.pending_pad, self.pending_push = None, False, 0, []

    def push(self, kind: str) -> None:
        """A context anchored at the next token."""
        self.pending_push.append(kind)

    def pop(self) -> None:
        self.items[-1].pops += 1
        self.depth -= 1


def _first_token(x) -> Token | None:
    if isinstance(x, Token):
        return x
    for c in x.children:
        if c is not None:
            t = _first_token(c)
            if t is not None:
                return t
    return None


def _last_token(x) -> Token | None:
    if isinstance(x, Token):
        return x
    for c in reversed(x.children):
        if c is not None:
            t = _last_token(c)
            if t is not None:
                return t
    return None


def _flat(x) -> str:
    """A subtree on one line, with the formatter's spacing (a table cell, to size its column)."""
    if isinstance(x, Token):
        return str(x)
    out, prev = [], None
    for c in x.children:
        if c is None:
            continue
        if prev is not None:
            out.append("" if _separator(x.data, prev, c) == GLUE else " ")
        out.append(_flat(c))
        prev = c
    return "".join(out)


def _is_number(x) -> bool:
    return isinstance(x, Tree) and (x.data in ("int", "float") or x.data == "neg" and _is_number(x.children[1]))


class _Walker:
    """Turns the tree into a :class:`_Stream` of tokens with their separators and contexts."""

    def __init__(self, text: str, spaced: frozenset[int] = frozenset()):
        self.text = text
        self.out = _Stream(text, spaced)

    def walk(self, node) -> None:
        if isinstance(node, Token):
            self.out.token(node)
            return
        rule = node.data
        handler = getattr(self, f"rule_{rule}", None)
        if handler is not None:
            handler(node)
            return
        self.children(node)

    def children(self, node, pad: dict[int, int] | None = None, seps: dict[int, str] | None = None) -> None:
        prev = None
        for i, c in enumerate(node.children):
            if c is None:
                continue
            if prev is not None:
                self.out.pending_sep = (seps or {}).get(i) or _separator(node.data, prev, c)
            if pad and i in pad:
                self.out.pending_pad += pad[i]
            opens = isinstance(c, Token) and str(c) in ("(", "[", "{", "<") and \
                (str(c) != "<" or node.data == "combinator")
            if opens:
                self.out.push("comb" if str(c) == "<" else "bracket")
            closes = isinstance(c, Token) and (str(c) in (")", "]", "}") or str(c) == ">" and node.data == "combinator")
            self.walk(c)
            if closes:
                self.out.pop()
            prev = c

    def rule_block(self, node) -> None:
        self.out.push("top")
        self.children(node)
        self.out.pop()

    rule_network = rule_derived = rule_use = rule_block

    def rule_defaults(self, node) -> None:
        self.out.push("with")
        self.children(node)
        self.out.pop()

    def rule_table(self, node) -> None:
        rows = next((c for c in node.children if isinstance(c, Tree) and c.data == "rows"), None)
        columns = rows is not None and len(rows.children) >= 2 and self._columns(rows)
        if columns:
            self.out.pending_force = self.out.pending_sep in (STEP, SOFT)
        self.out.push("table")
        prev = None
        for c in node.children:
            if c is None:
                continue
            if prev is not None:
                self.out.pending_sep = _separator("table", prev, c)
                if columns and _text(prev) == ":":
                    self.out.pending_force = True
            if c is rows:
                self._rows(c, columns)
            else:
                self.walk(c)
            prev = c
        self.out.pop()

    def _columns(self, rows: Tree) -> bool:
        start, end = _first_token(rows).start_pos, _last_token(rows).end_pos
        return "\n" in self.text[start:end] or len(" ".join(_flat(r) for r in rows.children)) > TABLE_ROWS_WIDTH

    def _rows(self, rows: Tree, columns: bool) -> None:
        cells = [[c for c in r.children if isinstance(c, Tree)] for r in rows.children]
        ncol = max(len(r) for r in cells)
        widths = [max((len(_flat(r[j])) for r in cells if j < len(r)), default=0) for j in range(ncol)]
        numeric = [all(_is_number(r[j]) for r in cells if j < len(r)) for j in range(ncol)]
        self.out.push("rows")
        for k, row in enumerate(rows.children):
            if k:
                self.out.pending_sep = SOFT if columns else SPACE
                self.out.pending_force = columns
            pad: dict[int, int] = {}
            if columns:
                index = [i for i, c in enumerate(row.children) if isinstance(c, Tree)]
                for j, i in enumerate(index):
                    w = len(_flat(row.children[i]))
                    if numeric[j]:
                        pad[i] = pad.get(i, 0) + widths[j] - w
                    elif j + 1 < len(index):
                        pad[index[j + 1]] = pad.get(index[j + 1], 0) + widths[j] - w
            self.children(row, pad)
        self.out.pop()


# ----------------------------------------------------------------------------- layout


def _layout(text: str, items: list[_Item], comments: list[Token], width: int) -> str:
    lines: list[str] = []
    cur = ""  # the line being built
    stack: list[_Ctx] = []
    at_comment = 0

    def indent_for(item: _Item) -> int:
        if item.sep == TOP or not stack:
            return 0
        top = stack[-1]
        if top.hangs:
            return top.line_indent + INDENT
        if top.kind == "top":
            return INDENT
        if top.kind == "table":
            return top.col + INDENT
        if top.kind == "comb":
            return top.col if str(item.tok) == "|" else top.col + 2
        if top.kind == "rows":
            return top.col
        if top.kind == "with":
            return top.col + len("with ")
        return top.col + 1

    def newline(blank: bool) -> None:
        nonlocal cur
        if cur.strip():
            lines.append(cur.rstrip())
        if blank and lines and lines[-1] != "":
            lines.append("")
        cur = ""

    def chunk(i: int) -> int:
        """The width from item ``i`` to the next place a line may break at the same depth or outside it."""
        w, depth = len(items[i].tok), items[i].depth
        for it in items[i + 1:]:
            if it.sep in (TOP, SOFT, STEP) and it.depth <= depth or it.force:
                break
            w += it.gap + len(it.tok)
        return w

    prev_end = 0
    for i, item in enumerate(items):
        tok = item.tok
        mine = []
        while at_comment < len(comments) and comments[at_comment].start_pos < tok.start_pos:
            mine.append(comments[at_comment])
            at_comment += 1
        gap_text = text[prev_end:tok.start_pos]
        broke = False
        pos = prev_end
        for c in mine:
            before = text[pos:c.start_pos]
            if i and "\n" not in before:
                cur = cur.rstrip() + "  " + str(c).rstrip()
            else:
                newline(before.count("\n") >= 2)
                cur = " " * indent_for(item) + str(c).rstrip()
            newline(False)
            broke, pos = True, c.end_pos
        after = text[pos:tok.start_pos]
        blank = after.count("\n") >= 2
        if i == 0 and not broke:
            cur = ""
        elif broke:
            if blank:
                newline(True)
            cur = " " * indent_for(item)
        elif item.sep == TOP:
            newline(blank)
        elif item.force or item.sep in (SOFT, STEP) and "\n" in gap_text:
            newline(blank)
            cur = " " * indent_for(item)
        elif item.sep in (SOFT, STEP) and len(cur) + item.gap + chunk(i) > width and indent_for(item) < len(cur):
            newline(False)
            cur = " " * indent_for(item)
        else:
            cur += " " * item.gap
        stack.extend(_Ctx(kind, len(cur), len(cur) - len(cur.lstrip())) for kind in item.pushes)
        cur += str(tok)
        for _ in range(item.pops):
            stack.pop()
        prev_end = tok.end_pos
    pos = prev_end
    for c in comments[at_comment:]:
        before = text[pos:c.start_pos]
        if items and "\n" not in before:
            cur = cur.rstrip() + "  " + str(c).rstrip()
        else:
            newline(before.count("\n") >= 2)
            cur = str(c).rstrip()
        pos = c.end_pos
    newline(False)
    while lines and lines[-1] == "":
        lines.pop()
    while lines and lines[0] == "":
        lines.pop(0)
    return "\n".join(lines) + "\n" if lines else ""


def _tokens(tree: Tree) -> list[tuple[str, str]]:
    return [(t.type, str(t)) for t in tree.scan_values(lambda v: isinstance(v, Token))]


def format_text(text: str, filename: str = "<string>", width: int = WIDTH) -> str:
    """``text`` in the canonical layout. Raise :class:`CnnSyntaxError` (and its kin) where it does not parse.

    The result is the same tokens and comments as ``text``, in the same order; formatting it again gives it back.
    """
    from cnndsl.front.syntax import parse

    parse(text, filename)  # the compiler's own checks and messages for bad input
    tree, comments = _parse(text)
    want = _tokens(tree)
    spaced: set[int] = set()
    for _ in range(MAX_RETRIES):
        walker = _Walker(text, frozenset(spaced))
        walker.walk(tree)
        out = _layout(text, walker.out.items, comments, width)
        again, again_comments = _parse(out)
        if [str(c).rstrip() for c in again_comments] != [str(c).rstrip() for c in comments]:
            break
        got = _tokens(again)
        if got == want:
            return out
        # two tokens glued into one (a segment `conv- soft-max`, a shape `3 x224`): keep the space written there
        first = next((i for i, (a, b) in enumerate(zip(got, want)) if a != b), min(len(got), len(want)))
        more = {first, first + 1, first + 2} - spaced
        if not more:
            break
        spaced |= more
    raise FormatterBug(f"formatting {filename} would change its tokens; the file is left as it is")


# ----------------------------------------------------------------------------- the command


def _diff(old: str, new: str, name: str) -> str:
    return "".join(difflib.unified_diff(old.splitlines(keepends=True), new.splitlines(keepends=True),
                                        f"{name} (original)", f"{name} (formatted)"))


def run(files: list[str], check: bool = False, out=None, err=None) -> int:
    """Format ``files`` in place (``-``: stdin to stdout); with ``check``, change nothing and print a unified diff
    of each file that would change. Exit status: 0, or 1 when a file would change (``check``) or has an error."""
    from cnndsl.files import write_atomic
    from cnndsl.front.loader import read_text

    out = out or sys.stdout
    err = err or sys.stderr
    status, changed = 0, 0
    for name in files:
        try:
            text = sys.stdin.read() if name == "-" else read_text(Path(name))
            new = format_text(text, "<stdin>" if name == "-" else name)
        except CnnDslError as e:
            print(e, file=err)
            status = 1
            continue
        if name == "-" and not check:
            out.write(new)
            continue
        if new == text:
            continue
        changed += 1
        if check:
            out.write(_diff(text, new, name))
            status = 1
        else:
            try:
                write_atomic(name, new)
            except CnnDslError as e:
                print(e, file=err)
                status = 1
                continue
            print(f"reformatted {name}", file=err)
    if check and changed:
        print(f"{changed} file{'s' if changed != 1 else ''} would be reformatted", file=err)
    return status


def add_parser(sub) -> None:
    """Register ``cnndsl fmt`` with the command line's subparsers."""
    sp = sub.add_parser("fmt", help="format .cnn files in the canonical layout (in place; --check: diff only)",
                        description="Format .cnn files in the canonical layout. Only whitespace changes: the tokens "
                                    "and comments stay as they are.")
    sp.add_argument("files", nargs="+", metavar="FILE", help="a .cnn file, or - for stdin to stdout")
    sp.add_argument("--check", action="store_true", help="change nothing; print a diff of each file that would "
                                                         "change and exit 1 if any would")
    sp.set_defaults(func=lambda args: run(args.files, args.check))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="cnndsl fmt")
    add_parser(p.add_subparsers(dest="command", required=True))
    args = p.parse_args(["fmt", *(argv if argv is not None else sys.argv[1:])])
    return args.func(args)


if __name__ == "__main__":
    raise SystemExit(main())
