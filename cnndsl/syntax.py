"""Parse .cnn text into a small tree of frozen dataclasses.

The grammar lives in ``grammar/cnn.lark``; :class:`_Builder` has one method per
rule. Syntax errors become :class:`CnnSyntaxError` with the offending token's
position and a hint.

>>> module = parse('network tiny: input 1x8x8 conv3-4 relu', 'tiny.cnn')
>>> module.networks[0].name
'tiny'
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from importlib import resources

import lark
from lark import Lark, Token, Transformer, v_args

from .errors import CnnLimitError, CnnSyntaxError, Source, Span

MAX_NESTING = 64
MAX_RANGE = 10_000
MAX_SOURCE_BYTES = 4 * 1024 * 1024
MAX_NUMBER = 2**40  # no size, count or channel number in a network comes near this


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


Expr = Num | Str | Var | BinOp | Neg | Tuple_ | Choice


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
class Ref:
    """``@name``: continue from a labelled point."""

    name: str
    span: Span


Term = Call | Group | Combinator | Ref


@dataclass(frozen=True)
class Step:
    label: str | None
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
    shape: tuple[int, ...]
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
        low, high = int(children[0]), int(children[1])
        if not 0 <= high - low < MAX_RANGE:
            raise CnnSyntaxError(f"the range {{{low}..{high}}} is empty" if high < low else
                                 f"the range {{{low}..{high}}} has more than {MAX_RANGE} values", span,
                                 "a range {a..b} lists the integers from a to b, both included")
        return Choice(tuple(Num(v, span) for v in range(low, high + 1)), span)

    def neg(self, meta, children):
        return Neg(children[0], self._s(meta))

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
    del _bin

    # steps
    def arg(self, meta, children):
        name, value = children
        return Arg(str(name) if name is not None else None, value, self._s(meta))

    def args(self, meta, children):
        return tuple(c for c in children if c is not None)

    def kernel(self, meta, children):
        return children[0]

    def dotted(self, meta, children):
        return ".".join(str(c) for c in children)

    def call(self, meta, children):
        name, kernel, channels, stride, args = children
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
        return children[1]

    def step(self, meta, children):
        label, term, repeat = children
        return Step(label[0] if label else None, term, repeat, self._s(meta), label[1] if label else None)

    def seq(self, meta, children):
        return Seq(tuple(children), self._s(meta))

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
        name, shape = children
        dims = tuple(_literal(d, _tok_span(self.src, shape)) for d in str(shape).split("x"))
        return Input(str(name) if name is not None else None, dims, self._s(meta))

    def block(self, meta, children):
        name, params, defaults, body = children
        return Block(str(name), params or (), defaults or (), body, self._s(meta))

    def network(self, meta, children):
        name, params, defaults, *rest = children
        *inputs, body = rest
        return Network(str(name), params or (), defaults or (), tuple(inputs), body, self._s(meta))

    def freeze(self, meta, children):
        return Freeze(tuple(children), self._s(meta))

    def replace(self, meta, children):
        return Replace(children[0], children[1], self._s(meta))

    def derived(self, meta, children):
        name, params, base, args, *mods = children
        return Derived(str(name), params or (), str(base), args or (), tuple(mods), self._s(meta))

    def use(self, meta, children):
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
    "__ANON_0": "'//'",
    "PERCENT": "'%'",
    "INPUT": "'input'",
    "$END": "end of file",
}


def _describe_expected(expected) -> str:
    names = {_EXPECT_NAMES.get(e, repr(e.lower()) if e.isupper() else e) for e in expected}
    names = sorted(names, key=lambda n: (n.startswith("'"), n))  # "a name", "a number" before punctuation
    if len(names) > 6:
        names = names[:6] + ["..."]
    return ", ".join(names)


def _check_text(source: Source) -> None:
    text = source.text
    if "\x00" in text:
        raise CnnSyntaxError("this is a binary file, not .cnn text", Span.start_of(source),
                             "pass a .cnn network description or a zoo name (see `cnndsl list`)")
    if not text.strip() or all(line.strip().startswith("#") or not line.strip() for line in text.splitlines()):
        raise CnnSyntaxError("empty file: no network or block in it", Span.start_of(source),
                             "a network starts with `network NAME: input CxHxW` followed by its layers")
    depth = 0
    for lineno, line in enumerate(text.splitlines(), 1):
        for col, ch in enumerate(line.split("#", 1)[0], 1):
            if ch in "[<({":
                depth += 1
                if depth > MAX_NESTING:
                    raise CnnLimitError(f"brackets nested more than {MAX_NESTING} deep",
                                        Span(source, lineno, col, lineno, col + 1),
                                        "use a block to name the repeated structure instead")
            elif ch in "])>}":
                depth = max(0, depth - 1)


_CLOSES = {")": "(", "]": "[", "}": "{", ">": "<"}
_OPENS = {v: k for k, v in _CLOSES.items()}


def _offset_span(source: Source, pos: int) -> Span:
    line = source.text.count("\n", 0, pos) + 1
    col = pos - (source.text.rfind("\n", 0, pos) + 1) + 1
    return Span(source, line, col, line, col + 1)


def _open_brackets(text: str, end: int) -> list[tuple[str, int]]:
    """The brackets still open at offset ``end``, outermost first, skipping comments and strings."""
    stack: list[tuple[str, int]] = []
    i = 0
    while i < end:
        ch = text[i]
        if ch == "#":
            nl = text.find("\n", i)
            i = end if nl < 0 else nl
            continue
        if ch == '"':
            close = text.find('"', i + 1)
            i = end if close < 0 else close + 1
            continue
        if ch in _OPENS:
            stack.append((ch, i))
        elif ch in _CLOSES and stack and stack[-1][0] == _CLOSES[ch]:
            stack.pop()
        i += 1
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
    for i, ch in enumerate(source.text):
        if ch == "{":
            opened.append(i)
        elif ch == "}" and opened:
            start = opened.pop()
            if i - start > best_len:
                best, best_len = _offset_span(source, start), i - start
    return best


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
        raise CnnSyntaxError(f"unexpected {str(tok)!r}", _tok_span(source, tok),
                             f"expected {_describe_expected(e.expected)}") from None
    except lark.UnexpectedEOF as e:
        raise _unexpected_end(source, e.expected) from None
    try:
        items = _Builder(source).transform(tree)
    except lark.exceptions.VisitError as e:  # pragma: no cover - the builder raises nothing itself
        raise e.orig_exc from None
    except RecursionError:
        raise CnnLimitError("expression nested too deeply", _longest_brace(source),
                            "split a very long expression, e.g. into block parameters") from None
    return Module(
        source,
        tuple(i for i in items if isinstance(i, Use)),
        tuple(i for i in items if isinstance(i, Block)),
        tuple(i for i in items if isinstance(i, (Network, Derived))),
    )
