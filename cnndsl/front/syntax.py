"""Parse .cnn text into a small tree of frozen dataclasses.

The grammar lives in ``grammar/cnn.lark``; :class:`_Builder` has one method per
rule. Syntax errors become :class:`CnnSyntaxError` with the offending token's
position and a hint.

>>> module = parse('network tiny: input 1x8x8 conv3-4 relu', 'tiny.cnn')
>>> module.networks[0].name
'tiny'
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources

import lark
from lark import Lark, Token, Transformer, v_args

from cnndsl.errors import CnnLimitError, CnnSyntaxError, Source, Span

MAX_NESTING = 64
MAX_RANGE = 10_000
MAX_SOURCE_BYTES = 4 * 1024 * 1024
MAX_NUMBER = 2**40  # no size, count or channel number in a network comes near this
# Limits on the text, counted by :func:`scan` before the parser sees it. The zoo's largest file, inception.cnn,
# has about 2,000 tokens and 150 labels; no zoo file has more than 5 references, 5 branches in a combinator or
# 8 tokens in an expression; the largest expansion (`cnndsl expand inception_resnet_v2`) has about 26,000
# tokens. Parsing costs tens of microseconds a token.
MAX_TOKENS = 50_000  # tokens in one file, comments included
MAX_EXPRESSION_TOKENS = 256  # tokens in one expression (one argument, one {...} value, one option of a choice)
MAX_LABELS = 10_000  # `name:` labels in one file
MAX_REFERENCES = 10_000  # `@name` references in one file
MAX_BRANCHES = 1_000  # branches of one combinator, concat< a | b | ... >
MAX_NAME_LENGTH = 1_000  # characters in one name (a word of the text, or a layer's full dotted name)
# Counted while the parsed text is turned into syntax (each costs more than its tokens):
MAX_RANGE_VALUES = 100_000  # values of all the {a..b} ranges of one file together (each is a choice of b-a+1)
MAX_USES = 100  # `use "file.cnn"` lines in one file (each reads a file of up to MAX_SOURCE_BYTES)


# ----------------------------------------------------------------------------- expressions


@dataclass(frozen=True)
class Num:
    value: int | float
    span: Span


@dataclass(frozen=True)
class Str:
    value: str
    span: Span


@dataclass(frozen=True)
class Var:
    name: str
    span: Span


@dataclass(frozen=True)
class BinOp:
    op: str
    left: Expr
    right: Expr
    span: Span


@dataclass(frozen=True)
class Neg:
    operand: Expr
    span: Span


@dataclass(frozen=True)
class Not:
    operand: Expr
    span: Span


@dataclass(frozen=True)
class IfElse:
    """``a if cond else b``: ``cond`` is evaluated first, then only the branch it picks."""

    cond: Expr
    then: Expr
    other: Expr
    span: Span


@dataclass(frozen=True)
class FuncCall:
    """``max(a, b)``, ``make_divisible(v, divisor=8)``: one of the expression functions."""

    name: str
    args: tuple[Arg, ...]
    span: Span
    name_span: Span


@dataclass(frozen=True)
class Field:
    """``in.c``: a field of a name (today only of ``in``, the shape of the block's input)."""

    base: str
    name: str
    span: Span


@dataclass(frozen=True)
class Tuple_:
    items: tuple[Expr, ...]
    span: Span


@dataclass(frozen=True)
class Choice:
    """``{a|b|c}``: one of several values (a search space); ``{a}`` is just ``a``; ``{2..5}`` is ``{2|3|4|5}``.

    The resolver also hands ``choice< A | B >`` to its ``choose`` hook as a Choice whose options are the
    branch sequences (:class:`Seq`).
    """

    options: tuple[Expr, ...]
    span: Span

    def option(self, picked: int) -> Expr:
        """The option a ``choose`` hook picked (its index)."""
        return self.options[picked]


@dataclass(frozen=True)
class FloatRange(Choice):
    """``{0.1..0.5}``: a float drawn between ``low`` and ``high``, uniformly, or log-uniformly with ``log``
    (``{1e-4..1e-1 log}``). A choice with endless options: a ``choose`` hook picks the value itself (a float in
    the range), or 0 for the first option, ``low``, which ``options`` holds (so a resolution without a hook
    takes it, as every choice takes its first option).
    """

    low: float
    high: float
    log: bool

    def option(self, picked: float) -> Expr:
        """The value picked, as a number; 0 (an index, not a float) is the first option, ``low``."""
        if isinstance(picked, float):
            return Num(picked, self.span)
        return self.options[picked]

    def text(self) -> str:
        """The range as written in canonical form: ``{0.1..0.5}``, ``{0.0001..0.1 log}``."""
        return f"{{{self.low!r}..{self.high!r}{' log' if self.log else ''}}}"


Expr = Num | Str | Var | BinOp | Neg | Not | IfElse | FuncCall | Field | Tuple_ | Choice
#: The binary operators of :class:`BinOp`: arithmetic, comparisons, and the boolean ``and`` / ``or``.
ARITHMETIC = ("+", "-", "*", "/", "//", "%")
COMPARISONS = ("==", "!=", "<", "<=", ">", ">=")
BOOLEAN = ("and", "or")


def operands(expr: Expr) -> tuple[Expr, ...]:
    """The expressions directly inside ``expr`` (its operands, arguments, items or options), in text order."""
    if isinstance(expr, BinOp):
        return (expr.left, expr.right)
    if isinstance(expr, (Neg, Not)):
        return (expr.operand,)
    if isinstance(expr, IfElse):
        return (expr.then, expr.cond, expr.other)
    if isinstance(expr, FuncCall):
        return tuple(a.value for a in expr.args)
    if isinstance(expr, Tuple_):
        return expr.items
    if isinstance(expr, Choice):
        return expr.options
    return ()


def _float_range(expr: Expr | None) -> FloatRange | None:
    """A float range that is ``expr``'s value as written: ``expr`` itself or an option of a choice it is."""
    todo = [expr] if expr is not None else []
    while todo:
        e = todo.pop()
        if isinstance(e, FloatRange):
            return e
        if isinstance(e, Choice):
            todo.extend(e.options)
    return None


def _whole(expr: Expr | None, what: str) -> Expr | None:
    """``expr``, where a whole number goes (``what``); a float range written there is refused at its place.

    Only a range that is the value itself is refused at parse time: ``{make_divisible(32 * {0.5..2.0}, 8)}`` is a
    whole number, and a float reaching a whole-number place through a parameter is refused when it is built.
    """
    r = _float_range(expr)
    if r is not None:
        raise CnnSyntaxError(f"a float range where a whole number goes ({what})", r.span,
                             "channels, kernels, strides, repeat counts and input sizes are integers: use an integer "
                             "range {2..5} or a choice {16|32|64}; a float range {a..b} suits rates such as "
                             "dropout({0.1..0.5})")
    return expr


def _choice_in(expr: Expr) -> Choice | None:
    """The first choice in ``expr``, or None."""
    todo = [expr]
    while todo:
        e = todo.pop()
        if isinstance(e, Choice):
            return e
        todo.extend(operands(e))
    return None


# ----------------------------------------------------------------------------- steps


@dataclass(frozen=True)
class Arg:
    name: str | None
    value: Expr
    span: Span


@dataclass(frozen=True)
class Call:
    """A layer or a block instance: ``conv3-64/2(bias=false)``, ``bottleneck(128, 2)``."""

    name: str
    kernel: Expr | None
    channels: Expr | None
    stride: Expr | None
    args: tuple[Arg, ...]
    span: Span
    name_span: Span


@dataclass(frozen=True)
class Group:
    """``[ ... ]``: a sub-sequence; labelled, it becomes a numbered scope."""

    seq: Seq
    span: Span


@dataclass(frozen=True)
class Combinator:
    """``concat< a | b >``, ``residual< body >``, ``aux< head >``, ..."""

    name: str
    args: tuple[Arg, ...]
    branches: tuple[Seq, ...]
    span: Span


@dataclass(frozen=True)
class Template:
    """A dotted name with ``{expr}`` parts, filled in with the values in scope: ``block{i}-{j}``.

    ``parts`` alternate literal text (dots and hyphens included) and expressions, in text order.
    """

    parts: tuple[str | Expr, ...]
    span: Span

    def text(self) -> str:
        """The template as written, its expressions shown as ``{...}``."""
        return "".join(p if isinstance(p, str) else "{...}" for p in self.parts)


@dataclass(frozen=True)
class Ref:
    """``@name``: continue from a labelled point."""

    name: str | Template
    span: Span


@dataclass(frozen=True)
class Row:
    """One row of a table: ``(6, 24, 2, 2)``."""

    values: tuple[Expr, ...]
    span: Span


@dataclass(frozen=True)
class Table:
    """``for t, c, n, s in (1, 16, 1, 1) (6, 24, 2, 2): STEP``: ``body`` once per row, the columns bound to its
    values; ``for j in range(n): STEP`` (``count``, one column) once per ``j`` from 0 to n - 1."""

    names: tuple[str, ...]
    rows: tuple[Row, ...]
    count: Expr | None
    body: Step
    span: Span
    names_span: Span


Term = Call | Group | Combinator | Ref | Table


@dataclass(frozen=True)
class Step:
    label: str | Template | None
    term: Term
    repeat: Expr | None
    span: Span
    label_span: Span | None


@dataclass(frozen=True)
class Seq:
    steps: tuple[Step, ...]
    span: Span


# ----------------------------------------------------------------------------- declarations


@dataclass(frozen=True)
class Param:
    name: str
    default: Expr | None
    span: Span


@dataclass(frozen=True)
class OpDefault:
    op: str
    args: tuple[Arg, ...]
    span: Span


@dataclass(frozen=True)
class Input:
    name: str | None
    shape: tuple[int | Expr, ...]  # a size in braces is an expression over the network's parameters
    span: Span


@dataclass(frozen=True)
class Block:
    name: str
    params: tuple[Param, ...]
    defaults: tuple[OpDefault, ...]
    body: Seq
    span: Span


@dataclass(frozen=True)
class Network:
    name: str
    params: tuple[Param, ...]
    defaults: tuple[OpDefault, ...]
    inputs: tuple[Input, ...]
    body: Seq
    span: Span


@dataclass(frozen=True)
class Freeze:
    paths: tuple[str, ...]
    span: Span


@dataclass(frozen=True)
class Replace:
    path: str
    seq: Seq
    span: Span


@dataclass(frozen=True)
class Derived:
    """``network name(params) = base(args) freeze(...) replace(...)``."""

    name: str
    params: tuple[Param, ...]
    base: str
    args: tuple[Arg, ...]
    modifiers: tuple[Freeze | Replace, ...]
    span: Span


@dataclass(frozen=True)
class Use:
    path: str
    span: Span


@dataclass(frozen=True)
class Module:
    source: Source
    uses: tuple[Use, ...]
    blocks: tuple[Block, ...]
    networks: tuple[Network | Derived, ...]


# ----------------------------------------------------------------------------- parsing


@lru_cache(maxsize=1)
def _parser() -> Lark:
    text = resources.files("cnndsl.grammar").joinpath("cnn.lark").read_text(encoding="utf-8")
    return Lark(text, parser="lalr", lexer="contextual", propagate_positions=True, maybe_placeholders=True)


def grammar_text() -> str:
    """The grammar, as shipped (used by the property-based tests)."""
    return resources.files("cnndsl.grammar").joinpath("cnn.lark").read_text(encoding="utf-8")


def _span(source: Source, meta) -> Span:
    if getattr(meta, "empty", True) and not hasattr(meta, "line"):
        return Span.start_of(source)
    return Span(source, meta.line, meta.column, meta.end_line, meta.end_column)


def _tok_span(source: Source, tok: Token) -> Span:
    return Span(source, tok.line, tok.column, tok.end_line or tok.line, tok.end_column or tok.column + len(tok))


@v_args(meta=True)
class _Builder(Transformer):
    """One method per grammar rule; builds the dataclasses above."""

    def __init__(self, source: Source):
        super().__init__()
        self.src = source
        self.range_values = 0  # of the {a..b} ranges so far
        self.uses = 0

    def _s(self, meta) -> Span:
        return _span(self.src, meta)

    # expressions
    def int(self, meta, children):
        return Num(_literal(children[0], self._s(meta)), self._s(meta))

    def float(self, meta, children):
        return Num(float(children[0]), self._s(meta))

    def var(self, meta, children):
        return Var(str(children[0]), self._s(meta))

    def string(self, meta, children):
        return Str(str(children[0])[1:-1], self._s(meta))

    def tuple(self, meta, children):
        return Tuple_(tuple(c for c in children if c is not None), self._s(meta))

    def brace(self, meta, children):
        if len(children) == 1:
            return children[0]
        return Choice(tuple(children), self._s(meta))

    def range(self, meta, children):
        span = self._s(meta)
        low_tok, high_tok, log = children
        if log is not None or "FLOAT" in (low_tok.type, high_tok.type):
            return self._float_range(low_tok, high_tok, log is not None, span)
        low, high = int(low_tok), int(high_tok)
        if not 0 <= high - low < MAX_RANGE:
            raise CnnSyntaxError(f"the range {{{low}..{high}}} is empty" if high < low else
                                 f"the range {{{low}..{high}}} has more than {MAX_RANGE} values", span,
                                 "a range {a..b} lists the integers from a to b, both included")
        self.range_values += high - low + 1
        if self.range_values > MAX_RANGE_VALUES:
            raise CnnLimitError(f"the ranges of this file have more than {MAX_RANGE_VALUES:,} values together",
                                span, "a search space that large cannot be searched; use fewer or shorter ranges")
        return Choice(tuple(Num(v, span) for v in range(low, high + 1)), span)

    def _float_range(self, low_tok: Token, high_tok: Token, log: bool, span: Span) -> FloatRange:
        """``{0.1..0.5}`` or ``{1e-4..1e-1 log}``; empty ranges, infinite ends and log ranges from 0 are refused."""
        written = f"{{{low_tok}..{high_tok}{' log' if log else ''}}}"
        if log and "FLOAT" not in (low_tok.type, high_tok.type):
            raise CnnSyntaxError(f"the log range {written} has whole-number ends", span,
                                 f"a log range draws a float: write {{{low_tok}.0..{high_tok}.0 log}}; an integer "
                                 "range {a..b} is a choice of the integers a to b")
        low, high = float(low_tok), float(high_tok)
        if not (math.isfinite(low) and math.isfinite(high)):
            raise CnnSyntaxError(f"the range {written} has an end too large for a float", span,
                                 "the ends of a float range are finite numbers")
        if not low < high:
            raise CnnSyntaxError(f"the range {written} is empty: its low end is not below its high end", span,
                                 "a float range {a..b} draws a value between a and b, with a < b: {0.1..0.5}")
        if log and low <= 0:
            raise CnnSyntaxError(f"the log range {written} starts at {low!r}", span,
                                 "a log range draws log-uniformly, so both ends are above 0: {1e-4..1e-1 log}")
        return FloatRange((Num(low, span),), span, low, high, log)

    def neg(self, meta, children):
        return Neg(children[0], self._s(meta))

    def not_(self, meta, children):
        return Not(children[0], self._s(meta))

    def ifelse(self, meta, children):
        then, cond, other = children
        return IfElse(cond, then, other, self._s(meta))

    def func(self, meta, children):
        name, *args = children
        return FuncCall(str(name), tuple(a for a in args if a is not None), self._s(meta), _tok_span(self.src, name))

    def field(self, meta, children):
        base, name = children
        return Field(str(base), str(name), self._s(meta))

    def _bin(op):
        def method(self, meta, children):
            return BinOp(op, children[0], children[1], self._s(meta))

        return method

    add = _bin("+")
    sub = _bin("-")
    mul = _bin("*")
    div = _bin("/")
    floordiv = _bin("//")
    mod = _bin("%")
    eq = _bin("==")
    ne = _bin("!=")
    lt = _bin("<")
    le = _bin("<=")
    gt = _bin(">")
    ge = _bin(">=")
    and_ = _bin("and")
    or_ = _bin("or")
    del _bin

    # steps
    def arg(self, meta, children):
        name, value = children
        return Arg(str(name) if name is not None else None, value, self._s(meta))

    def args(self, meta, children):
        return tuple(c for c in children if c is not None)

    def kernel(self, meta, children):
        return _whole(children[0], "a kernel size")

    def segment(self, meta, children):
        """One part of a dotted name, as text and expressions: ``block1-0``, ``block{i}-{j}``."""
        parts: list[str | Expr] = []
        for c in children:
            if c is None:  # no {...} right after the name
                continue
            if isinstance(c, Token):
                parts.append(str(c))
            elif isinstance(c, Num) and isinstance(c.value, int):
                parts.append(str(c.value))
            elif _choice_in(c) is not None:
                raise CnnSyntaxError("a name cannot be a choice", _choice_in(c).span,
                                     "a label's {...} part is one value, e.g. block{i}-{j}")
            else:
                parts.append(c)
        return parts

    def path(self, meta, children):
        parts: list[str | Expr] = []
        for i, segment in enumerate(children):
            for p in (["."] if i else []) + segment:
                if isinstance(p, str) and parts and isinstance(parts[-1], str):
                    parts[-1] += p
                else:
                    parts.append(p)
        text = "".join(p for p in parts if isinstance(p, str))
        if len(text) > MAX_NAME_LENGTH:
            raise CnnLimitError(f"a name of {len(text):,} characters (the limit is {MAX_NAME_LENGTH:,})",
                                self._s(meta), "give it a shorter name")
        if len(parts) == 1 and isinstance(parts[0], str):
            return parts[0]
        return Template(tuple(parts), self._s(meta))

    def _written_out(self, path, meta, what: str) -> str:
        if isinstance(path, Template):
            raise CnnSyntaxError(f"the path in {what}(...) has a {{...}} part", path.span,
                                 f"{what}(...) names layers as written: write the name out, e.g. layer1.0")
        return path

    def call(self, meta, children):
        name, kernel, channels, stride, args = children
        _whole(channels, f"the width of {name}")
        _whole(stride, f"the stride of {name}")
        return Call(str(name), kernel, channels, stride, args or (), self._s(meta), _tok_span(self.src, name))

    def group(self, meta, children):
        return Group(children[0], self._s(meta))

    def combinator(self, meta, children):
        name, args, *branches = children
        return Combinator(str(name), args or (), tuple(branches), self._s(meta))

    def ref(self, meta, children):
        return Ref(children[0], self._s(meta))

    def label(self, meta, children):
        return (children[0], self._s(meta))

    def repeat(self, meta, children):
        return _whole(children[1], "a repeat count")

    def step(self, meta, children):
        label, term, repeat = children if len(children) == 3 else (*children, None)  # a table takes no repeat
        return Step(label[0] if label else None, term, repeat, self._s(meta), label[1] if label else None)

    def seq(self, meta, children):
        return Seq(tuple(children), self._s(meta))

    def table(self, meta, children):
        *names, source, body = children
        rows, count = (source, None) if isinstance(source, tuple) else ((), source)
        tokens = [n for n in names if isinstance(n, Token)]
        names_span = Span(self.src, tokens[0].line, tokens[0].column, tokens[-1].end_line or tokens[-1].line,
                          tokens[-1].end_column or tokens[-1].column + len(tokens[-1]))
        return Table(tuple(str(n) for n in tokens), rows, count, body, self._s(meta), names_span)

    def rows(self, meta, children):
        return tuple(children)

    def row(self, meta, children):
        return Row(tuple(children), self._s(meta))

    def count(self, meta, children):
        return _whole(children[0], "a table's range(...) count")

    # declarations
    def param(self, meta, children):
        return Param(str(children[0]), children[1], self._s(meta))

    def params(self, meta, children):
        return tuple(c for c in children if c is not None)

    def opdefault(self, meta, children):
        return OpDefault(str(children[0]), tuple(c for c in children[1:] if c is not None), self._s(meta))

    def defaults(self, meta, children):
        return tuple(children)

    def input(self, meta, children):
        name, dims = children
        return Input(str(name) if name is not None else None, dims, self._s(meta))

    def dims(self, meta, children):
        """``3x224x224`` as (3, 224, 224); a ``{...}`` part stays an expression (evaluated when the network is built)."""
        out: list = []
        for part in children:
            if isinstance(part, Token) and part.type == "REPEAT":
                continue
            if isinstance(part, Token):
                out += [_literal(d, _tok_span(self.src, part)) for d in str(part).split("x")]
            else:
                out.append(_whole(part, "an input size"))
        return tuple(out)

    def block(self, meta, children):
        name, params, defaults, body = children
        return Block(str(name), params or (), defaults or (), body, self._s(meta))

    def network(self, meta, children):
        name, params, defaults, *rest = children
        *inputs, body = rest
        return Network(str(name), params or (), defaults or (), tuple(inputs), body, self._s(meta))

    def freeze(self, meta, children):
        return Freeze(tuple(self._written_out(c, meta, "freeze") for c in children), self._s(meta))

    def replace(self, meta, children):
        return Replace(self._written_out(children[0], meta, "replace"), children[1], self._s(meta))

    def derived(self, meta, children):
        name, params, base, args, *mods = children
        return Derived(str(name), params or (), str(base), args or (), tuple(mods), self._s(meta))

    def use(self, meta, children):
        self.uses += 1
        if self.uses > MAX_USES:
            raise CnnLimitError(f"the file has more than {MAX_USES} `use` lines", self._s(meta),
                                "use each file once: its blocks are visible to the whole file")
        return Use(str(children[0])[1:-1], self._s(meta))

    def start(self, meta, children):
        return children


_EXPECT_NAMES = {
    "NAME": "a name",
    "HNAME": "a name",
    "INT": "a number",
    "FLOAT": "a number",
    "SHAPE": "a shape such as 3x224x224",
    "STRING": 'a quoted string',
    "REPEAT": "a repeat count such as x3",
    "COLON": "':'",
    "LSQB": "'['",
    "RSQB": "']'",
    "LPAR": "'('",
    "RPAR": "')'",
    "LESSTHAN": "'<'",
    "MORETHAN": "'>'",
    "LBRACE": "'{'",
    "RBRACE": "'}'",
    "VBAR": "'|'",
    "COMMA": "','",
    "EQUAL": "'='",
    "AT": "'@'",
    "DOT": "'.'",
    "MINUS": "'-'",
    "PLUS": "'+'",
    "STAR": "'*'",
    "SLASH": "'/'",
    "PERCENT": "'%'",
    "$END": "end of file",
}


def _describe(terminal: str) -> str:
    """A terminal as a hint shows it: a kind of word (``a name``), or the literal text (``'//'``, ``'if'``)."""
    if terminal in _EXPECT_NAMES:
        return _EXPECT_NAMES[terminal]
    try:
        pattern = _parser().get_terminal(terminal).pattern
    except KeyError:
        return terminal
    return repr(pattern.value) if pattern.type == "str" else terminal


def _describe_expected(expected) -> str:
    names = {_describe(e) for e in expected}
    names = sorted(names, key=lambda n: (n.startswith("'"), n))  # "a name", "a number" before punctuation
    if len(names) > 6:
        names = names[:6] + ["..."]
    return ", ".join(names)


def _check_text(source: Source) -> None:
    text = source.text
    if "\x00" in text:
        raise CnnSyntaxError("this is a binary file, not .cnn text", Span.start_of(source),
                             "pass a .cnn network description or a zoo name (see `cnndsl list`)")
    if not scan(source).code:  # nothing but comments and blanks
        raise CnnSyntaxError("empty file: no network or block in it", Span.start_of(source),
                             "a network starts with `network NAME: input CxHxW` followed by its layers")


# ----------------------------------------------------------------------------- counting before parsing

#: An approximation of the parser's tokens, cheap to find (one regular expression, no parser state).
_TOKEN = re.compile(r"""
      (?P<comment>\#[^\n]*)
    | (?P<string>"[^"\n]*"?)
    | (?P<word>[A-Za-z_][A-Za-z0-9_]*(?:-[A-Za-z_][A-Za-z0-9_]*)*)
    | (?P<number>[0-9]+(?:\.[0-9]+)?(?:[eE][-+]?[0-9]+)?(?:x[0-9]+)*)
    | (?P<punct>//|\.\.|[=!<>]=|[^\sA-Za-z0-9_"\#])
""", re.VERBOSE)
_DECLARES = ("block", "network")  # `block NAME:` and `network NAME:` end in a colon that is no label


@dataclass
class _Open:
    """A bracket still open while scanning, and the expression piece being counted inside it."""

    char: str
    expression: bool  # ( or { holding expressions (not the steps of [ ], < > or replace( ))
    piece_at: int  # where the current piece (argument, option) starts
    opened: int  # tokens seen before it
    piece: int = 0  # tokens of the current piece so far, those of brackets inside it included
    branches: int = 1


@dataclass
class TextCounts:
    """What :func:`scan` counted in a text (each at most its limit)."""

    tokens: int = 0  # comments included
    code: int = 0  # tokens other than comments
    labels: int = 0
    references: int = 0
    longest_expression: int = 0
    most_branches: int = 0
    deepest: int = 0
    deepest_tables: int = 0  # tables, each the body of the one before: for a in (1): for b in (1): ...


@dataclass
class _Tables:
    """Where :func:`scan` is in a chain of tables, each the body of the one before (``for ... : b{i}: for ...``).

    The body of a table is one step, so a table nested in another has no bracket to count: the chain is followed
    through the header's ``:`` and a label before the inner ``for``.
    """

    chain: int = 0  # tables in the current chain
    header: bool = False  # between a table's `for` and its `:`
    body: bool = False  # after a table's `:`, in a label that may come before a nested `for`
    depth: int = 0  # brackets open when the body started (a label's {...} parts are deeper)

    def step(self, kind: str, tok: str, prev: str, open_brackets: int) -> int:
        """Follow one token; the chain's length after it."""
        wordlike = prev[:1].isalnum() or prev[:1] == "_" or prev == "}"
        if kind == "word" and tok == "for":
            self.chain = self.chain + 1 if self.body and prev == ":" else 1
            self.header, self.body = True, False
        elif tok == ":" and self.header and prev == ")":
            self.header, self.body, self.depth = False, True, open_brackets
        elif self.body and not (open_brackets > self.depth or (kind in ("word", "number") and prev in ":.-")
                                or (tok in ".-:}" and wordlike) or (tok == "{" and (wordlike or prev == "-"))):
            self.body = False
        return self.chain


def scan(source: Source) -> TextCounts:
    """Count a text's tokens, labels, references, branches, expression sizes and bracket depth before parsing.

    Raise :class:`CnnLimitError` at the first place over a limit (``MAX_TOKENS``, ``MAX_EXPRESSION_TOKENS``,
    ``MAX_LABELS``, ``MAX_REFERENCES``, ``MAX_BRANCHES``, ``MAX_NAME_LENGTH``, ``MAX_NESTING``). The work is one
    pass that stops at the limit, so a text too long to parse quickly is refused before the parser sees it.

    >>> scan(Source("t.cnn", "network t: input 1x8x8 a: conv3-{2*4} concat< @a | relu >")).references
    1
    """
    counts, stack, tables = TextCounts(), [], _Tables()
    prev = prev2 = ""
    for m in _TOKEN.finditer(source.text):
        counts.tokens += 1
        if counts.tokens > MAX_TOKENS:
            _over(source, m.start(), f"the file has more than {MAX_TOKENS:,} tokens",
                  "a network this long is written with repeats (x{n}) and blocks")
        kind, tok = m.lastgroup, m.group()
        if kind == "comment":
            continue
        counts.code += 1
        seen = counts.code
        if kind == "word" and len(tok) > MAX_NAME_LENGTH:
            _over(source, m.start(), f"a name of {len(tok):,} characters (the limit is {MAX_NAME_LENGTH:,})",
                  "give it a shorter name")
        top = stack[-1] if stack else None
        bracket = not (tok in ("<", ">") and top is not None and top.expression)  # else a comparison: a < b
        chain = tables.step(kind, tok, prev, len(stack))
        if chain > counts.deepest_tables:
            counts.deepest_tables = chain
            if chain > MAX_NESTING:
                _over(source, m.start(), f"tables nested more than {MAX_NESTING} deep",
                      "a table's step is a block or a group, not a chain of tables")
        if top is not None and top.expression and tok in ",|":
            top.piece, top.piece_at = 0, m.end()
        elif top is not None and top.expression:
            top.piece += 1
            _check_piece(source, top, counts)
        if tok in _OPENS and bracket:
            if len(stack) >= MAX_NESTING:
                _over(source, m.start(), f"brackets nested more than {MAX_NESTING} deep",
                      "use a block to name the repeated structure instead")
            expression = tok == "{" or (tok == "(" and prev != "replace")
            stack.append(_Open(tok, expression, m.start(), seen))
            counts.deepest = max(counts.deepest, len(stack))
        elif tok in _CLOSES and stack and bracket:
            done = stack.pop()
            if stack and stack[-1].expression:  # the tokens inside belong to the enclosing expression too
                stack[-1].piece += seen - done.opened - 1
                _check_piece(source, stack[-1], counts)
        elif tok == "|" and top is not None and top.char == "<":
            top.branches += 1
            counts.most_branches = max(counts.most_branches, top.branches)
            if top.branches > MAX_BRANCHES:
                _over(source, m.start(), f"more than {MAX_BRANCHES:,} branches in one combinator",
                      "a combinator of that many branches cannot be compiled")
        elif tok == "@":
            counts.references += 1
            if counts.references > MAX_REFERENCES:
                _over(source, m.start(), f"the file has more than {MAX_REFERENCES:,} references (@name)",
                      "a network with that many skips cannot be compiled")
        elif tok == ":" and prev and (prev[0].isalnum() or prev[0] == "_" or prev == "}") and prev2 not in _DECLARES:
            counts.labels += 1
            if counts.labels > MAX_LABELS:
                _over(source, m.start(), f"the file has more than {MAX_LABELS:,} labels",
                      "a network this long is written with repeats (x{n}) and blocks, which number their layers")
        prev2, prev = prev, tok
    return counts


def _check_piece(source: Source, top: _Open, counts: TextCounts) -> None:
    counts.longest_expression = max(counts.longest_expression, top.piece)
    if top.piece > MAX_EXPRESSION_TOKENS:
        _over(source, top.piece_at, f"an expression of more than {MAX_EXPRESSION_TOKENS} tokens",
              "split a very long expression, e.g. into block parameters")


def _over(source: Source, pos: int, message: str, hint: str):
    raise CnnLimitError(message, _offset_span(source, pos), hint)


_CLOSES = {")": "(", "]": "[", "}": "{", ">": "<"}
_OPENS = {v: k for k, v in _CLOSES.items()}


def _offset_span(source: Source, pos: int) -> Span:
    line = source.text.count("\n", 0, pos) + 1
    col = pos - (source.text.rfind("\n", 0, pos) + 1) + 1
    return Span(source, line, col, line, col + 1)


_BRACKET_OR_SKIPPED = re.compile(r'#[^\n]*|"[^"]*"?|(?<=\breplace)(?P<steps>\s*\()|(?P<bracket>[][(){}<>])')


def _open_brackets(text: str, end: int) -> list[tuple[str, int]]:
    """The brackets still open at offset ``end``, outermost first, skipping comments and strings.

    Inside ``(...)`` and ``{...}``, which hold expressions (but for ``replace(path, steps)``), ``<`` and ``>``
    are comparisons, not brackets.
    """
    stack: list[tuple[str, int]] = []
    expression: list[bool] = []
    for m in _BRACKET_OR_SKIPPED.finditer(text, 0, end):  # one regular expression: no loop over characters
        if m.lastgroup is None:  # a comment or a string
            continue
        ch, at = m.group().lstrip(), m.end() - 1
        if ch in ("<", ">") and expression and expression[-1]:
            continue
        if ch in _OPENS:
            stack.append((ch, at))
            expression.append(ch != "[" and ch != "<" and m.lastgroup != "steps")
        elif ch in _CLOSES and stack and stack[-1][0] == _CLOSES[ch]:
            stack.pop()
            expression.pop()
    return stack


def _unmatched_closer(source: Source, pos: int) -> CnnSyntaxError | None:
    """A clearer error for a closing bracket that closes nothing, or the wrong bracket."""
    ch = source.text[pos]
    if ch not in _CLOSES:
        return None
    stack = _open_brackets(source.text, pos)
    span = _offset_span(source, pos)
    if not stack:
        return CnnSyntaxError(f"unmatched {ch!r}", span, f"there is no {_CLOSES[ch]!r} open before it")
    top, at = stack[-1]
    if top != _CLOSES[ch]:
        opened = _offset_span(source, at)
        return CnnSyntaxError(f"{ch!r} does not close the {top!r} opened at {opened.line}:{opened.col}", span,
                              f"close it with {_OPENS[top]!r} first")
    return None


def _unexpected_end(source: Source, expected) -> CnnSyntaxError:
    """The file ended inside something: point at the bracket never closed, else at the end."""
    stack = _open_brackets(source.text, len(source.text))
    if stack:
        top, at = stack[-1]
        return CnnSyntaxError(f"{top!r} is never closed", _offset_span(source, at),
                              f"the file ends before the matching {_OPENS[top]!r}")
    lines = source.text.rstrip().splitlines() or [""]
    span = Span(source, len(lines), len(lines[-1]) + 1, len(lines), len(lines[-1]) + 2)
    return CnnSyntaxError("unexpected end of file", span, f"expected {_describe_expected(expected)}")


def _longest_brace(source: Source) -> Span:
    """Where the longest ``{...}`` starts (the likely culprit of an expression too deep to build)."""
    best, best_len, opened = Span.start_of(source), 0, []
    for m in re.finditer(r"[{}]", source.text):
        i = m.start()
        if m.group() == "{":
            opened.append(i)
        elif opened:
            start = opened.pop()
            if i - start > best_len:
                best, best_len = _offset_span(source, start), i - start
    return best


_FRACTIONAL_REPEAT = re.compile(r"(?<![A-Za-z0-9_.])x[0-9]+$")


def _fractional_repeat(source: Source, pos: int | None) -> CnnSyntaxError | None:
    """The error for a repeat count written with a fraction (``x2.5``), where the parser stops at its ``.``."""
    text = source.text
    if pos is None or pos >= len(text) or text[pos] != "." or not text[pos + 1:pos + 2].isdigit():
        return None
    m = _FRACTIONAL_REPEAT.search(text, 0, pos)
    if m is None:
        return None
    end = pos + 1
    while end < len(text) and text[end].isdigit():
        end += 1
    start = _offset_span(source, m.start())
    span = Span(source, start.line, start.col, start.line, start.col + end - m.start())
    return CnnSyntaxError(f"a repeat count must be a whole number, got {text[m.start():end]}", span,
                          "a step repeats a whole number of times: x2, x3; x{n} takes the count from a parameter")


def _literal(digits, span: Span) -> int:
    """An integer literal; absurdly large ones (a typo or a resource bomb) are refused."""
    digits = str(digits)
    significant = digits.lstrip("0")
    if len(significant) > len(str(MAX_NUMBER)) or int(digits) > MAX_NUMBER:
        shown = digits if len(digits) <= 20 else digits[:17] + "..."
        raise CnnLimitError(f"number too large: {shown}", span, f"numbers in a network stay below {MAX_NUMBER:,}")
    return int(digits)


def parse(text: str, filename: str = "<string>") -> Module:
    """Parse .cnn text into a :class:`Module`; raise :class:`CnnSyntaxError` on bad input."""
    source = Source(filename, text)
    if len(text.encode("utf-8", "surrogatepass")) > MAX_SOURCE_BYTES:
        raise CnnLimitError(f"file is larger than {MAX_SOURCE_BYTES // (1024 * 1024)} MiB", Span.start_of(source))
    _check_text(source)
    try:
        tree = _parser().parse(text)
    except lark.UnexpectedCharacters as e:
        pos = e.pos_in_stream if e.pos_in_stream is not None and e.pos_in_stream < len(text) else None
        ch = text[pos] if pos is not None else "?"
        unmatched = _unmatched_closer(source, pos) if pos is not None else None
        if unmatched:
            raise unmatched from None
        repeat = _fractional_repeat(source, pos) if pos is not None else None
        if repeat is not None:
            raise repeat from None
        span = Span(source, e.line, e.column, e.line, e.column + 1)
        hint = f"expected {_describe_expected(e.allowed)}" if e.allowed else None
        raise CnnSyntaxError(f"unexpected character {ch!r}", span, hint) from None
    except lark.UnexpectedToken as e:
        tok = e.token
        if tok.type == "$END":
            raise _unexpected_end(source, e.expected) from None
        unmatched = _unmatched_closer(source, tok.start_pos) if tok.start_pos is not None else None
        if unmatched:
            raise unmatched from None
        repeat = _fractional_repeat(source, tok.start_pos)
        if repeat is not None:
            raise repeat from None
        if str(tok) in COMPARISONS and "NAME" not in e.expected:  # right after a comparison's right operand
            raise CnnSyntaxError(f"unexpected {str(tok)!r}: comparisons do not chain", _tok_span(source, tok),
                                 "write a < b and b < c") from None
        raise CnnSyntaxError(f"unexpected {str(tok)!r}", _tok_span(source, tok),
                             f"expected {_describe_expected(e.expected)}") from None
    except lark.UnexpectedEOF as e:
        raise _unexpected_end(source, e.expected) from None
    try:
        items = _Builder(source).transform(tree)
    except lark.exceptions.VisitError as e:
        if not isinstance(e.orig_exc, RecursionError):
            raise e.orig_exc from None
        raise CnnLimitError("the text is nested too deeply", _longest_brace(source),
                            "split a very long expression, e.g. into block parameters") from None
    except RecursionError:
        raise CnnLimitError("expression nested too deeply", _longest_brace(source),
                            "split a very long expression, e.g. into block parameters") from None
    return Module(
        source,
        tuple(i for i in items if isinstance(i, Use)),
        tuple(i for i in items if isinstance(i, Block)),
        tuple(i for i in items if isinstance(i, (Network, Derived))),
    )
