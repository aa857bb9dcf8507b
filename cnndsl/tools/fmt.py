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
- a continuation line is indented 4 from the line that opens its bracket or combinator, unless the author lined
  it up on the bracket (after ``[``/``(``; ``|`` under a ``<``, a branch's next line two further) and that still
  fits the width;
- a table's rows fill their lines (the author's breaks kept), continuing 4 in from their line, its step 4 in from
  where its ``for`` starts a line; a table written (or coming out) one row a line is put in columns, numbers
  right-aligned;
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
#: How many places the formatter may keep a space written inside a word-like run before it gives up.
MAX_RETRIES = 32
#: How many times the layout is redone with a decision changed (an alignment too wide, a table gone in columns).
MAX_RELAYOUTS = 64
ALIGN, HANG = "align", "hang"


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
        if lt == "<":
            return SOFT  # `residual<` ending a line, its branches 4 in from that line (the zoo's MBConv blocks)
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
    """An open construct whose continuation lines are indented from it."""

    kind: str  # "top" (indent 4), "bracket", "comb" (`name< >`), "rows" (a table's), "columns" (a table's, one row
    # a line), "table", "with" (after `with `)
    col: int = 0  # the column it is anchored at, known when its token is placed
    line_indent: int = 0  # the indentation of the line it opened on
    key: tuple[int, int] = (0, 0)  # (the item it is anchored at, which of that item's contexts)
    mode: str = HANG  # ALIGN: lined up on the anchor, as the author wrote it; HANG: 4 in from `line_indent`
    base: int = 0  # a table's: the column its `for` starts a line at (or would); its step is 4 further in


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

    def __init__(self, text: str, spaced: frozenset[int] = frozenset(), columns: frozenset[int] = frozenset(),
                 broken: frozenset[int] = frozenset()):
        self.text = text
        self.out = _Stream(text, spaced)
        self.columns = columns  # tables (by the offset of their first row) to lay out in columns
        self.broken = broken  # tables in columns too wide after their `in`: the first row starts a line too
        self.tables: list[tuple[int, bool, list[int]]] = []  # (that offset, in columns, each row's first item)

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
        columns = rows is not None and len(rows.children) >= 2 and (
            _first_token(rows).start_pos in self.columns or self._columns(rows))
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
                if columns:  # the first row may start a line (where the columns are too wide after `in`)
                    self.out.pending_sep = SOFT
                    self.out.pending_force = _first_token(rows).start_pos in self.broken
                self._rows(c, columns)
            else:
                self.walk(c)
            prev = c
        self.out.pop()

    def _columns(self, rows: Tree) -> bool:
        """The author wrote the table one row a line."""
        return all(_starts_line(self.text, _first_token(r)) for r in rows.children[1:])

    def _rows(self, rows: Tree, columns: bool) -> None:
        cells = [[c for c in r.children if isinstance(c, Tree)] for r in rows.children]
        ncol = max(len(r) for r in cells)
        widths = [max((len(_flat(r[j])) for r in cells if j < len(r)), default=0) for j in range(ncol)]
        numeric = [all(_is_number(r[j]) for r in cells if j < len(r)) for j in range(ncol)]
        self.out.push("columns" if columns else "rows")
        starts: list[int] = []
        self.tables.append((_first_token(rows).start_pos, columns, starts))
        for k, row in enumerate(rows.children):
            starts.append(len(self.out.items))
            if k:
                self.out.pending_sep = SOFT
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


def _starts_line(text: str, tok: Token) -> bool:
    """``tok`` is the first thing on its line of ``text``."""
    return not text[tok.start_pos - (tok.column - 1):tok.start_pos].strip()


def _modes(text: str, items: list[_Item], hang: frozenset[tuple[int, int]]) -> dict[tuple[int, int], str]:
    """Which brackets, combinators and table rows keep the author's alignment: those whose first line written
    inside them starts lined up on them (after a ``[``, ``|`` under a ``<``, a row under the first row), unless
    ``hang`` says that alignment went past the width. The others hang: 4 columns in from the line they open on."""
    modes: dict[tuple[int, int], str] = {}
    stack: list[tuple[tuple[int, int], str, int]] = []
    for i, item in enumerate(items):
        if stack and _starts_line(text, item.tok) and stack[-1][0] not in modes and stack[-1][1] != "columns":
            key, kind, col = stack[-1]
            at = item.tok.column - 1
            aligned = (kind == "bracket" and at == col + 1 or kind == "rows" and at == col
                       or kind == "comb" and at == (col if str(item.tok) == "|" else col + 2))
            modes[key] = ALIGN if aligned and key not in hang else HANG
        for k, kind in enumerate(item.pushes):
            stack.append(((i, k), kind, item.tok.column - 1))
            if kind == "columns":
                modes[i, k] = ALIGN  # rows one a line line up whatever was written (too wide: see _format_once)
        del stack[len(stack) - item.pops:]
    return modes


@dataclass
class _Laid:
    text: str
    too_wide: set[tuple[int, int]]  # aligned contexts a line too long was indented by (the innermost of each)
    line_starts: set[int]  # the items that begin a line


def _layout(text: str, items: list[_Item], comments: list[Token], width: int,
            modes: dict[tuple[int, int], str]) -> _Laid:
    lines: list[str] = []
    cur = ""  # the line being built
    cur_align: tuple[int, int] | None = None  # the innermost aligned context the line being built is indented by
    too_wide: set[tuple[int, int]] = set()
    line_starts: set[int] = set()
    stack: list[_Ctx] = []
    at_comment = 0
    breaks_here = [False] * len(items)  # a break the author wrote (or the layout forces) before the item
    for i, item in enumerate(items):
        before = text[items[i - 1].tok.end_pos:item.tok.start_pos] if i else ""
        breaks_here[i] = item.force or item.sep in (TOP, SOFT, STEP) and "\n" in before

    def indent_for(item: _Item) -> int:
        if item.sep == TOP or not stack:
            return 0
        top = stack[-1]
        if top.kind == "top":
            return INDENT
        if top.kind == "with":
            return top.col + len("with ")
        if top.kind == "table":
            return top.base + INDENT
        if top.mode == HANG:
            return top.line_indent + INDENT
        if top.kind == "comb":
            return top.col if str(item.tok) == "|" else top.col + 2
        if top.kind in ("rows", "columns"):
            return top.col
        return top.col + 1

    def newline(blank: bool) -> None:
        nonlocal cur, cur_align
        if cur.strip():
            lines.append(cur.rstrip())
            if len(lines[-1]) > width and cur_align is not None and not cur.lstrip().startswith("#"):
                too_wide.add(cur_align)
        if blank and lines and lines[-1] != "":
            lines.append("")
        cur, cur_align = "", None

    def start_line(item: _Item) -> None:
        nonlocal cur, cur_align
        cur = " " * indent_for(item)
        cur_align = next((c.key for c in reversed(stack) if c.mode == ALIGN), None)

    def chunk(i: int) -> int:
        """The width from item ``i`` to the next place a line may break at the same depth or outside it, or
        must break at any depth."""
        w, depth = len(items[i].tok), items[i].depth
        for j in range(i + 1, len(items)):
            it = items[j]
            if it.sep in (TOP, SOFT, STEP) and it.depth <= depth or breaks_here[j]:
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
        broke = False
        pos = prev_end
        for c in mine:
            before = text[pos:c.start_pos]
            if i and "\n" not in before:
                cur = cur.rstrip() + "  " + str(c).rstrip()
            else:
                newline(before.count("\n") >= 2)
                start_line(item)
                cur += str(c).rstrip()
            newline(False)
            broke, pos = True, c.end_pos
        after = text[pos:tok.start_pos]
        blank = after.count("\n") >= 2
        if i == 0 and not broke:
            cur = ""
            line_starts.add(i)
        elif broke:
            if blank:
                newline(True)
            start_line(item)
            line_starts.add(i)
        elif item.sep == TOP:
            newline(blank)
            line_starts.add(i)
        elif breaks_here[i]:
            newline(blank)
            start_line(item)
            line_starts.add(i)
        elif item.sep in (SOFT, STEP) and len(cur) + item.gap + chunk(i) > width and indent_for(item) < len(cur):
            newline(False)
            start_line(item)
            line_starts.add(i)
        else:
            cur += " " * item.gap
        base = indent_for(item) if "table" in item.pushes else 0
        for k, kind in enumerate(item.pushes):
            stack.append(_Ctx(kind, len(cur), len(cur) - len(cur.lstrip()), (i, k), modes.get((i, k), HANG), base))
        cur += str(tok)
        del stack[len(stack) - item.pops:]
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
    return _Laid("\n".join(lines) + "\n" if lines else "", too_wide, line_starts)


def _format_once(text: str, tree: Tree, comments: list[Token], spaced: frozenset[int], width: int) -> str:
    """The layout of ``text``, redone until its decisions hold: an alignment that makes a line too long hangs
    instead, and a table that came out one row a line is put in columns (as it would be when formatted again)."""
    hang: set[tuple[int, int]] = set()
    columns: set[int] = set()
    broken: set[int] = set()
    laid = None
    for _ in range(MAX_RELAYOUTS):
        walker = _Walker(text, spaced, frozenset(columns), frozenset(broken))
        walker.walk(tree)
        items = walker.out.items
        laid = _layout(text, items, comments, width, _modes(text, items, frozenset(hang)))
        more_columns = {key for key, cols, starts in walker.tables
                        if not cols and len(starts) >= 2 and all(s in laid.line_starts for s in starts[1:])}
        if laid.too_wide <= hang and more_columns <= columns:
            break
        # an alignment too wide hangs; a table's columns too wide start on the line after its `in`
        broken |= {key for key, cols, starts in walker.tables if cols and (starts[0], 0) in laid.too_wide}
        hang |= laid.too_wide
        columns |= more_columns
    return laid.text


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
        out = _format_once(text, tree, comments, frozenset(spaced), width)
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
