"""Source positions and the one error type every user mistake becomes.

Every syntax node and IR node carries a :class:`Span`. A :class:`CnnDslError`
renders as::

    vgg.cnn:3:5: error: unknown layer 'conv3x-64'
        conv3x-64 relu
        ^^^^^^^^^
    hint: did you mean 'conv3-64'?
"""

from __future__ import annotations

import unicodedata
from dataclasses import dataclass, field

MAX_SHOWN = 100  # characters of a long source line shown around the caret


def _blank(ch: str) -> str:
    """A character as the shown source line prints it: controls and separators as one space."""
    return " " if unicodedata.category(ch) in ("Cc", "Cf", "Cs", "Zl", "Zp") else ch


def shown_line(text: str) -> str:
    """One source line as a diagnostic shows it, one character per character of ``text``.

    Tabs, form feeds, carriage returns, Unicode line separators and other control or
    format characters become a space, so the caret under column ``c`` stays under the
    ``c``-th character and a character that a terminal would move the cursor for (or
    start a new line at) cannot misplace it.
    """
    return "".join(_blank(ch) for ch in text) if not text.isprintable() else text


def _escaped(text: str) -> str:
    """A message or hint as printed: newlines and tabs kept, other control characters as escapes (``\\x1b``).

    A name or file name quoted in a message can hold anything a string literal can; printed raw,
    an escape sequence or a line separator in it would act on the terminal.
    """
    if text.isprintable():
        return text
    return "".join(ch if ch in "\n\t" or _blank(ch) == ch else ch.encode("unicode_escape").decode("ascii")
                   for ch in text)


@dataclass(frozen=True)
class Source:
    """A named piece of .cnn text (a file or a string)."""

    name: str
    text: str = field(repr=False, compare=False)

    def line(self, n: int) -> str:
        """Line ``n`` (1-based) as the parser counts lines: split at ``\\n`` only.

        Not :meth:`str.splitlines`, which also splits at form feeds, ``\\x1c``-``\\x1e``,
        ``\\x85`` and U+2028/U+2029: Lark's line counter (and so every :class:`Span`)
        counts ``\\n`` alone, and a ``\\r`` before it is the previous line's last character.
        """
        if n < 1:
            return ""
        start = 0
        for _ in range(n - 1):
            start = self.text.find("\n", start) + 1
            if start == 0:
                return ""
        end = self.text.find("\n", start)
        return self.text[start:] if end < 0 else self.text[start:end]


@dataclass(frozen=True)
class Span:
    """Where a piece of syntax came from: 1-based line and column, end exclusive."""

    source: Source
    line: int
    col: int
    end_line: int
    end_col: int

    @property
    def file(self) -> str:
        return self.source.name

    def __str__(self) -> str:
        return f"{self.source.name}:{self.line}:{self.col}"

    @classmethod
    def start_of(cls, source: Source) -> Span:
        return cls(source, 1, 1, 1, 1)


@dataclass(frozen=True)
class Note:
    """A place that explains a diagnostic, printed after it as rustc prints notes: the block instance that made
    the layer at fault, then each instance around that one (``in the instance `down(32)```, at its call)."""

    message: str
    span: Span | None = None

    def __str__(self) -> str:
        return render("note", self.message, self.span, None)


def render(kind: str, message: str, span: Span | None, hint: str | None, notes=()) -> str:
    """Format a diagnostic as ``file:line:col: kind: message``, the line, a caret, a hint, then its notes."""
    message = _escaped(message)
    if span is None:
        out = [f"{kind}: {message}"]
    else:
        out = [f"{_escaped(str(span))}: {kind}: {message}"]
        text = span.source.line(span.line)
        shown = shown_line(text)
        if shown.strip():
            width = span.end_col - span.col if span.end_line == span.line else len(text) - span.col + 1
            width = max(1, min(width, len(shown) - span.col + 1))
            start = 0
            if len(shown) > MAX_SHOWN:  # a very long line: show a window around the caret
                start = max(0, min(span.col - 1 - MAX_SHOWN // 4, len(shown) - MAX_SHOWN))
                shown = shown[start:start + MAX_SHOWN]
                width = min(width, MAX_SHOWN - (span.col - 1 - start))
            out.append("    " + shown)
            out.append("    " + " " * (span.col - 1 - start) + "^" * width)
    if hint:
        out.append(f"hint: {_escaped(hint)}")
    out.extend(str(note) for note in notes)
    return "\n".join(out)


class CnnDslError(Exception):
    """A user mistake in a .cnn network, with the place it was made."""

    kind = "error"

    def __init__(self, message: str, span: Span | None = None, hint: str | None = None):
        super().__init__(message)
        self.message = message
        self.span = span
        self.hint = hint
        #: The block instances that made the layer at fault, innermost first (see :class:`Note`).
        self.notes: list[Note] = []

    @property
    def line(self) -> int | None:
        return self.span.line if self.span else None

    @property
    def col(self) -> int | None:
        return self.span.col if self.span else None

    def __str__(self) -> str:
        return render("error", self.message, self.span, self.hint, self.notes)


class CnnSyntaxError(CnnDslError):
    """The text does not parse."""


class CnnNameError(CnnDslError):
    """An unknown, duplicate or unbound name (layer, block, label, parameter, file)."""


class CnnArgumentError(CnnDslError):
    """A layer or block called with arguments it does not take, or bad values."""


class CnnShapeError(CnnDslError):
    """Tensor shapes that do not fit together."""


class CnnLimitError(CnnDslError):
    """A network too large or too deeply nested to build (a resource bomb)."""


@dataclass(frozen=True)
class CnnDslWarning:
    """Something legal but probably unintended (the papers sometimes do it on purpose)."""

    message: str
    span: Span | None = None
    hint: str | None = None

    def __str__(self) -> str:
        return render("warning", self.message, self.span, self.hint)
