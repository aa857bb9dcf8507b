"""The cnndsl language server: the compiler's own diagnostics as you type, shapes on hover.

Run it as ``cnndsl lsp`` or ``python -m cnndsl.tools.lsp`` (it speaks LSP over stdio;
needs ``pip install 'cnndsl[lsp]'``). On every open and change it parses the
document, builds every network it defines through the full pass pipeline and
publishes each error and warning with its span as an LSP range. Hovering over
a layer shows its full name, op, output shape, parameters and MACs (for a
layer inside a block, one line per instance); hovering over a block call or a
labelled group shows the scope's output shape and totals.

:func:`analyse` does the work without any LSP dependency, so it is testable alone.
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

from cnndsl.errors import CnnDslError, CnnDslWarning, Span
from cnndsl.ir.network import Network, fmt_shape, human
from cnndsl.ir.ops import Input

MAX_HOVER_INSTANCES = 8
#: The largest message body accepted (a document is at most ``syntax.MAX_SOURCE_BYTES``, JSON-escaped).
MAX_MESSAGE_BYTES = 64 * 1024 * 1024
MAX_HEADER_LINE = 8 * 1024  # bytes in one header line
MAX_HEADER_LINES = 32

log = logging.getLogger(__name__)


@dataclass
class Diagnostic:
    """One error or warning, 0-based (line, character) range as LSP counts them."""

    severity: str  # "error" | "warning"
    message: str
    start: tuple[int, int]
    end: tuple[int, int]


@dataclass
class Analysis:
    """What the server knows about one document after a parse and build."""

    diagnostics: list[Diagnostic] = field(default_factory=list)
    networks: list[Network] = field(default_factory=list)
    filename: str = ""

    def hover(self, line: int, character: int, named: re.Pattern | None = None) -> str | None:
        """Markdown for the 0-based position, or None when no layer or scope is there. With ``named`` (a label's
        pattern), only the layers and scopes of that name whose text holds the position, the largest of them."""
        hits = []  # (span size, kind, network, item)
        for net in self.networks:
            for node in net.graph.nodes():
                if not isinstance(node.opdef, Input) and _contains(node.span, self.filename, line, character) \
                        and (named is None or named.search(node.name)):
                    hits.append((_size(node.span), "node", net, node))
            for sc in net.graph.scopes.values():
                if _contains(sc.span, self.filename, line, character) and (named is None or named.search(sc.name)):
                    hits.append((_size(sc.span), "scope", net, sc))
        if not hits:
            return None
        pick = max if named is not None else min  # a label names the whole of what it labels
        smallest = pick(h[0] for h in hits)
        best = [h for h in hits if h[0] == smallest]
        grouped: dict[str, list[str]] = {}  # one line per instance, the networks it appears in
        for _, kind, net, item in best:
            text = _node_line(item) if kind == "node" else _scope_line(net, item)
            nets = grouped.setdefault(text, [])
            if net.name not in nets:
                nets.append(net.name)
        lines = [f"{text} ({', '.join(nets)})" for text, nets in grouped.items()]
        shown = lines[:MAX_HOVER_INSTANCES]
        if len(lines) > len(shown):
            shown.append(f"... and {len(lines) - len(shown)} more instances")
        return "\n\n".join(shown)


def _size(span: Span) -> tuple[int, int]:
    return (span.end_line - span.line, span.end_col - span.col if span.end_line == span.line else 10**6)


def _contains(span: Span | None, filename: str, line: int, character: int) -> bool:
    """Whether a 1-based, end-exclusive span of this file holds the 0-based position."""
    if span is None or span.source.name != filename:
        return False
    pos = (line + 1, character + 1)
    return (span.line, span.col) <= pos < (span.end_line, span.end_col) or \
        (span.line, span.col) == (span.end_line, span.end_col) == pos


def _node_line(node) -> str:
    text = f"**{node.name}** `{node.short_form()}` → `{fmt_shape(node.shape)}`"
    if node.params:
        text += f" · {node.params:,} params"
    if node.macs:
        text += f" · {human(node.macs)}MACs"
    return text


def _scope_line(net: Network, sc) -> str:
    g = net.graph
    members = g.scope_members(sc.name)
    if not members:
        return f"**{sc.name}**"
    outs = set(g.scope_boundary(sc.name)[1])
    out = [n for n in members if n.name in outs]
    shape = fmt_shape((out or members)[-1].shape)
    params = sum(n.params for n in members)
    macs = sum(n.macs for n in members)
    what = sc.call_text() if sc.kind == "block" else sc.kind
    return (f"**{sc.name}** `{what}` → `{shape}` · {len(members)} layers · {params:,} params"
            f" · {human(macs)}MACs")


def _diagnostic(kind: str, e: CnnDslError | CnnDslWarning, filename: str) -> Diagnostic:
    message = e.message + (f"\nhint: {e.hint}" if e.hint else "")
    message += "".join(f"\nnote: {n.message} at {n.span}" for n in getattr(e, "notes", ()))
    span = e.span
    if span is None or span.source.name != filename:
        if span is not None:
            message = f"{span}: {message}"
        return Diagnostic(kind, message, (0, 0), (0, 0))
    end = (span.end_line - 1, span.end_col - 1)
    if end <= (span.line - 1, span.col - 1):
        end = (span.line - 1, span.col)
    return Diagnostic(kind, message, (span.line - 1, span.col - 1), end)


def analyse(text: str, filename: str) -> Analysis:
    """Parse ``text`` (the document ``filename``), build each network it defines, collect diagnostics."""
    from cnndsl.api import build
    from cnndsl.front.loader import Library
    from cnndsl.front.syntax import parse

    result = Analysis(filename=filename)
    try:
        module = parse(text, filename)
        library = Library.from_module(module, Path(filename).resolve().parent)
    except CnnDslError as e:
        result.diagnostics.append(_diagnostic("error", e, filename))
        return result
    seen: set[tuple] = set()
    for name in library.local_networks():
        try:
            net = build(library, name)
        except CnnDslError as e:
            d = _diagnostic("error", e, filename)
        else:
            result.networks.append(net)
            for w in net.warnings:
                d = _diagnostic("warning", w, filename)
                key = (d.severity, d.message, d.start, d.end)
                if key not in seen:
                    seen.add(key)
                    result.diagnostics.append(d)
            continue
        key = (d.severity, d.message, d.start, d.end)
        if key not in seen:
            seen.add(key)
            result.diagnostics.append(d)
    return result


# ----------------------------------------------------------------------------- authoring: completion, navigation
# (issue 17) Everything here works on the document's text and its syntax tree (cnndsl.front.syntax), so it is
# testable without a server, and it works while the text does not build: completion and navigation need only a
# parse, and when the text does not parse (a half-typed `@`), the last text that did.

_WORD_BEFORE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(?:-[A-Za-z_][A-Za-z0-9_]*)*$")
_WORD_AT = re.compile(r"@?[A-Za-z_][A-Za-z0-9_.]*(?:-[A-Za-z_0-9][A-Za-z0-9_]*)*")


@dataclass(frozen=True)
class Location:
    """A place in a file: its path and a 0-based (line, character) range, as LSP counts them."""

    path: str
    start: tuple[int, int]
    end: tuple[int, int]


@dataclass(frozen=True)
class Symbol:
    """A block or a network of the document's outline."""

    name: str
    kind: str  # "block" | "network"
    detail: str
    range: Location
    selection: Location


def _location(span: Span) -> Location:
    end = (span.end_line - 1, span.end_col - 1)
    return Location(span.source.name, (span.line - 1, span.col - 1), max(end, (span.line - 1, span.col - 1)))


def _offset(text: str, line: int, character: int) -> int:
    lines = text.split("\n")
    line = min(line, len(lines) - 1)
    return sum(len(x) + 1 for x in lines[:line]) + min(character, len(lines[line]))


@lru_cache(maxsize=16)
def _parsed(text: str, filename: str):
    """The document's syntax tree and library (its ``use``d blocks included), or None where it does not parse."""
    from cnndsl.front.loader import Library
    from cnndsl.front.syntax import parse

    try:
        module = parse(text, filename)
    except CnnDslError:
        return None
    try:
        library = Library.from_module(module, Path(filename).resolve().parent)
    except CnnDslError:
        library = None
    return module, library


class Document:
    """One open document for the authoring requests; ``previous`` is the last text of it that parsed."""

    def __init__(self, text: str, filename: str, previous: Document | None = None):
        self.text, self.filename = text, filename
        parsed = _parsed(text, filename)
        if parsed is None:  # a step half typed: `@` or `conv3-` at the cursor parses with a placeholder word
            parsed = previous.parsed if previous is not None else None
        self.parsed = parsed

    @property
    def module(self):
        return self.parsed[0] if self.parsed else None

    @property
    def library(self):
        return self.parsed[1] if self.parsed else None

    def blocks(self) -> dict:
        """The blocks visible here: the document's own and those of the files it uses."""
        if self.library is not None:
            return dict(self.library.blocks)
        return {b.name: b for b in self.module.blocks} if self.module else {}

    def networks(self) -> dict:
        if self.library is not None:
            return dict(self.library.networks)
        return {n.name: n for n in self.module.networks} if self.module else {}

    def item_at(self, line: int):
        """The document's block or network whose text holds the 0-based ``line`` (the last one starting above it)."""
        if self.module is None:
            return None
        items = sorted((*self.module.blocks, *self.module.networks), key=lambda i: i.span.line)
        best = None
        for item in items:
            if item.span.line - 1 <= line:
                best = item
        return best

    # -- completion ----------------------------------------------------------------------------------------

    def complete(self, line: int, character: int) -> list[dict]:
        """Completion items (LSP ``CompletionItem`` fields) at the 0-based position."""
        before = self.text.split("\n")[line][:character] if line < len(self.text.split("\n")) else ""
        m = _WORD_BEFORE.search(before)
        prefix = m.group() if m else ""
        head = before[:len(before) - len(prefix)]
        item = self.item_at(line)
        if re.search(r'\buse\s+"[^"]*$', before):
            return self._use_paths(before[before.rindex('"') + 1:])
        if head.endswith("@") or re.search(r"@[A-Za-z0-9_.\-]*$", before):
            return [i for i in self._labels(item) if i["label"].startswith(before[before.rindex("@") + 1:])]
        items: list[dict] = []
        call = _open_call(self.text, _offset(self.text, line, character) - len(prefix))
        if call is not None:
            items += self._arguments(call)
        if call is not None or _in_braces(self.text, _offset(self.text, line, character)):
            items += self._in_scope(item) + _functions()
        else:
            items += self._in_scope(item) + self._blocks() + _ops() + _combinators()
        seen, out = set(), []
        for i in items:
            if i["label"].lower().startswith(prefix.lower()) and i["label"] not in seen:
                seen.add(i["label"])
                out.append(i)
        return out

    def _labels(self, item) -> list[dict]:
        if item is None:
            return []
        body = item.body if hasattr(item, "body") else None
        return [{"label": name, "kind": "reference", "detail": f"@{name} (line {span.line})"}
                for name, span in _labels(body)] if body is not None else []

    def _in_scope(self, item) -> list[dict]:
        if item is None:
            return []
        out = [{"label": p.name, "kind": "variable", "detail": f"parameter of {item.name}" +
                (f" = {_expr_text(self.text, p.default)}" if p.default is not None else "")} for p in item.params]
        if hasattr(item, "body"):
            out += [{"label": n, "kind": "variable", "detail": "a table column"} for n in _columns(item.body)]
        return out

    def _blocks(self) -> list[dict]:
        return [{"label": name, "kind": "class", "detail": _signature(self.text, b),
                 "documentation": f"defined in {Path(b.span.source.name).name}:{b.span.line}"}
                for name, b in sorted(self.blocks().items())]

    def _arguments(self, call: str) -> list[dict]:
        from cnndsl.ir.ops import REQUIRED, lookup

        block = self.blocks().get(call)
        if block is None and lookup(call) is None:  # a short form: conv3x3 -> conv, maxpool3 -> maxpool
            call = re.sub(r"[0-9]+(x[0-9]+)?$", "", call)
        if block is not None:
            return [{"label": f"{p.name}=", "kind": "property", "detail": f"{block.name}({p.name}" +
                     (f"={_expr_text(_source_text(block), p.default)}" if p.default is not None else "") + ")"}
                    for p in block.params]
        op = lookup(call)
        if op is not None:
            return [{"label": f"{name}=", "kind": "property",
                     "detail": f"{op.name}({name})" if default is REQUIRED else f"{op.name}({name}={default!r})"}
                    for name, default in op.fields]
        return []

    def _use_paths(self, typed: str) -> list[dict]:
        from cnndsl.front.loader import zoo_files

        here = Path(self.filename).resolve().parent
        names = {p.relative_to(here).as_posix() for p in sorted(here.glob("**/*.cnn"))[:200]
                 if p.resolve() != Path(self.filename).resolve()} if here.is_dir() else set()
        items = [{"label": n, "kind": "file", "detail": "next to this file"} for n in sorted(names)]
        items += [{"label": n, "kind": "file", "detail": "in the shipped zoo"} for n in zoo_files() if n not in names]
        return [i for i in items if i["label"].startswith(typed)]

    # -- navigation ----------------------------------------------------------------------------------------

    def word_at(self, line: int, character: int) -> tuple[str, int] | None:
        """The word (a name, a dotted path, ``@label``) at the 0-based position and its start column."""
        lines = self.text.split("\n")
        if line >= len(lines):
            return None
        for m in _WORD_AT.finditer(lines[line]):
            if m.start() <= character <= m.end():
                return m.group(), m.start()
        return None

    def definition(self, line: int, character: int) -> Location | None:
        """Where the block, network, ``use``d file or ``@label`` at the position is defined."""
        text_line = self.text.split("\n")[line] if line < len(self.text.split("\n")) else ""
        use = re.match(r'\s*use\s+"([^"]*)"', text_line)
        if use and use.start(1) - 1 <= character <= use.end(1) + 1:
            return self._use_target(use.group(1))
        found = self.word_at(line, character)
        if found is None:
            return None
        word, _ = found
        if word.startswith("@"):
            target = word[1:].split(".")[0]
            for name, span in _labels(getattr(self.item_at(line), "body", None)):
                if name == target:
                    return _location(span)
            return None
        name = word.split(".")[0]
        item = self.item_at(line)
        for p in getattr(item, "params", ()):  # a parameter (`unit=bottleneck`): its declaration
            if p.name == name:
                return _location(p.span)
        block = self.blocks().get(name)
        if block is not None:
            return _location(_header_span(block))
        net = self.networks().get(name)
        if net is not None:
            return _location(_header_span(net))
        return None

    def _use_target(self, path: str) -> Location | None:
        from cnndsl.front.loader import _zoo_dir

        here = Path(self.filename).resolve().parent / path
        if here.is_file():
            return Location(str(here.resolve()), (0, 0), (0, 0))
        zoo = _zoo_dir().joinpath(path)
        if zoo.is_file():
            return Location(str(zoo), (0, 0), (0, 0))
        return None

    def references(self, line: int, character: int, declaration: bool = True) -> list[Location]:
        """The calls of the block (or the uses of the ``@label``) at the position, in this document."""
        from cnndsl.front.syntax import Call, Ref

        found = self.word_at(line, character)
        if found is None or self.module is None:
            return []
        word = found[0]
        out: list[Location] = []
        if word.startswith("@") or self._label_named(line, word):
            target = word.lstrip("@").split(".")[0]
            body = getattr(self.item_at(line), "body", None)
            if declaration:
                out += [_location(span) for name, span in _labels(body) if name == target]
            out += [_location(r.span) for r in _walk(body, Ref) if isinstance(r.name, str)
                    and r.name.split(".")[0] == target]
            return out
        name = word.split(".")[0]
        if name in self.blocks() or name in self.networks():
            decl = self.blocks().get(name) or self.networks().get(name)
            if declaration and decl.span.source.name == self.filename:
                out.append(_location(_header_span(decl)))
            for call in _walk(self.module, Call):
                if call.name == name:
                    out.append(_location(call.name_span))
            for net in self.module.networks:
                if getattr(net, "base", None) == name:
                    out.append(_location(_base_span(self.text, net)))
        return out

    def label_at(self, line: int, character: int) -> tuple[tuple[int, int], re.Pattern] | None:
        """For a label (``layer1:``) or an ``@label`` at the 0-based position: where the step it labels starts
        (0-based) and a pattern for the names that label gives (``block{i}-{j}`` any ``block1-0``), or None."""
        from cnndsl.front.syntax import Step, Template

        body = getattr(self.item_at(line), "body", None)
        if body is None:
            return None
        found = self.word_at(line, character)
        target = found[0][1:].split(".")[0] if found is not None and found[0].startswith("@") else None
        pos = (line + 1, character + 1)
        for step in _walk(body, Step):
            if step.label is None or step.label_span is None:
                continue
            name = step.label.text() if isinstance(step.label, Template) else step.label
            here = step.label_span.line == pos[0] and step.label_span.col <= pos[1] <= step.label_span.end_col
            if here or target is not None and name == target:
                term = step.term.span
                parts = re.split(r"(\{[^{}]*\})", name)
                pattern = "".join("[^.]+" if p.startswith("{") else re.escape(p) for p in parts)
                return (term.line - 1, term.col - 1), re.compile(rf"(^|\.){pattern}$")
        return None

    def _label_named(self, line: int, word: str) -> bool:
        return any(name == word for name, _ in _labels(getattr(self.item_at(line), "body", None)))

    def symbols(self) -> list[Symbol]:
        """The outline: the document's blocks and networks, in text order."""
        if self.module is None:
            return []
        out = []
        for item in sorted((*self.module.blocks, *self.module.networks), key=lambda i: (i.span.line, i.span.col)):
            kind = "block" if type(item).__name__ == "Block" else "network"
            out.append(Symbol(item.name, kind, _signature(self.text, item), _location(item.span),
                              _location(_header_span(item))))
        return out

    def block_hover(self, line: int, character: int) -> str | None:
        """The signature of the block called at the position (a line for the hover), or None."""
        found = self.word_at(line, character)
        if found is None:
            return None
        block = self.blocks().get(found[0].split(".")[0])
        if block is None:
            return None
        where = f"{Path(block.span.source.name).name}:{block.span.line}"
        return f"`{_signature(_source_text(block), block)}` ({where})"


def _source_text(item) -> str:
    return item.span.source.text


def _expr_text(text: str, expr) -> str:
    """An expression as written (its span's text)."""
    s = expr.span
    lines = text.split("\n")
    if s.line != s.end_line:
        return "..."
    return lines[s.line - 1][s.col - 1:s.end_col - 1]


def _signature(text: str, item) -> str:
    """``block bottleneck(c, s=1, ...)``, ``network resnet18(classes=1000) = resnet(...)``: the header as written."""
    kind = "block" if type(item).__name__ == "Block" else "network"
    params = ", ".join(p.name + (f"={_expr_text(item.span.source.text, p.default)}" if p.default is not None else "")
                       for p in item.params)
    head = f"{kind} {item.name}" + (f"({params})" if item.params else "")
    base = getattr(item, "base", None)
    return head + (f" = {base}(...)" if base else "")


def _header_span(item) -> Span:
    """The span of an item's name in its ``block NAME`` / ``network NAME`` line."""
    text = item.span.source.text
    lines = text.split("\n")
    row = lines[item.span.line - 1]
    m = re.compile(rf"\b{re.escape(item.name)}\b").search(row, item.span.col - 1)
    col = m.start() + 1 if m else item.span.col
    return Span(item.span.source, item.span.line, col, item.span.line, col + len(item.name))


def _base_span(text: str, net) -> Span:
    row = text.split("\n")[net.span.line - 1]
    m = re.compile(rf"=\s*({re.escape(net.base)})\b").search(row)
    col = m.start(1) + 1 if m else net.span.col
    return Span(net.span.source, net.span.line, col, net.span.line, col + len(net.base))


def _walk(x, kind):
    """Every syntax node of type ``kind`` inside ``x`` (a dataclass, a tuple of them), in text order."""
    import dataclasses

    todo = [x]
    while todo:
        node = todo.pop()
        if isinstance(node, (tuple, list)):
            todo.extend(reversed(node))
        elif dataclasses.is_dataclass(node) and not isinstance(node, type) and type(node).__name__ != "Source":
            if isinstance(node, kind):
                yield node
            todo.extend(reversed([getattr(node, f.name) for f in dataclasses.fields(node)]))


def _labels(body) -> list[tuple[str, Span]]:
    """The labels written in a body (as written, templates with ``{...}``) and their places, in text order."""
    from cnndsl.front.syntax import Step, Template

    out = []
    for step in _walk(body, Step) if body is not None else ():
        if step.label is not None:
            name = step.label.text() if isinstance(step.label, Template) else step.label
            out.append((name, step.label_span or step.span))
    return out


def _columns(body) -> list[str]:
    from cnndsl.front.syntax import Table

    return list(dict.fromkeys(n for t in _walk(body, Table) for n in t.names))


_CALL_BEFORE = re.compile(r"([A-Za-z_][A-Za-z0-9_]*(?:-[A-Za-z_][A-Za-z0-9_]*)*)(?:\{[^{}]*\}|[0-9]+(?:x[0-9]+)?)?"
                          r"(?:-(?:[0-9]+|\{[^{}]*\}))?(?:/(?:[0-9]+|\{[^{}]*\}))?\s*$")


def _open_call(text: str, offset: int) -> str | None:
    """The name of the call whose ``(`` is open at ``offset`` (``bottleneck(64, `` -> ``bottleneck``), or None."""
    from cnndsl.front.syntax import _open_brackets

    stack = _open_brackets(text, offset)
    if not stack or stack[-1][0] != "(":
        return None
    m = _CALL_BEFORE.search(text, max(0, stack[-1][1] - 200), stack[-1][1])
    return m.group(1) if m else None


def _in_braces(text: str, offset: int) -> bool:
    return text.rfind("{", 0, offset) > text.rfind("}", 0, offset)


def _ops() -> list[dict]:
    from cnndsl.ir.ops import OPS, REQUIRED

    out = []
    for op in OPS.values():
        if not op.writable:
            continue
        args = ", ".join(name if default is REQUIRED else f"{name}={default!r}" for name, default in op.fields)
        short = {"k": "K", "c": "C", "s": "S"}
        shorthand = op.name + "".join(("-" if f == "c" else "/" if f == "s" else "") + short[f]
                                      for f in op.shorthand if f)
        doc = (type(op).__doc__ or "").strip().split("\n")[0]
        for spelling in (op.name, *op.aliases):
            out.append({"label": spelling, "kind": "function", "detail": f"{shorthand}  {op.name}({args})",
                        "documentation": doc + (f" (an alias of {op.name})" if spelling != op.name else "")})
    return out


def _combinators() -> list[dict]:
    from cnndsl.ir.vocabulary import COMBINATORS

    return [{"label": c, "kind": "keyword", "detail": f"{c}< ... | ... >"} for c in COMBINATORS]


def _functions() -> list[dict]:
    from cnndsl.passes.resolve import FUNCTIONS

    return [{"label": name, "kind": "function", "detail": f.signature}
            for name, f in FUNCTIONS.items()]


def _authoring_features(ls, documents: dict[str, Document]) -> None:
    """Register completion, definition, references, the outline and formatting with the pygls server ``ls``."""
    from lsprotocol import types as lsp
    from pygls import uris

    kinds = {"function": lsp.CompletionItemKind.Function, "class": lsp.CompletionItemKind.Class,
             "variable": lsp.CompletionItemKind.Variable, "property": lsp.CompletionItemKind.Property,
             "reference": lsp.CompletionItemKind.Reference, "keyword": lsp.CompletionItemKind.Keyword,
             "file": lsp.CompletionItemKind.File}

    def rng(loc: Location) -> lsp.Range:
        return lsp.Range(start=lsp.Position(*loc.start), end=lsp.Position(*loc.end))

    def where(loc: Location) -> lsp.Location:
        return lsp.Location(uri=uris.from_fs_path(loc.path) or loc.path, range=rng(loc))

    @ls.feature(lsp.TEXT_DOCUMENT_COMPLETION, lsp.CompletionOptions(trigger_characters=["@", "(", "{", '"']))
    def completion(params: lsp.CompletionParams) -> lsp.CompletionList:
        doc = documents.get(params.text_document.uri)
        items = doc.complete(params.position.line, params.position.character) if doc else []
        return lsp.CompletionList(is_incomplete=False, items=[
            lsp.CompletionItem(label=i["label"], kind=kinds[i["kind"]], detail=i.get("detail"),
                               documentation=i.get("documentation")) for i in items])

    @ls.feature(lsp.TEXT_DOCUMENT_DEFINITION)
    def definition(params: lsp.DefinitionParams) -> lsp.Location | None:
        doc = documents.get(params.text_document.uri)
        loc = doc.definition(params.position.line, params.position.character) if doc else None
        return where(loc) if loc else None

    @ls.feature(lsp.TEXT_DOCUMENT_REFERENCES)
    def references(params: lsp.ReferenceParams) -> list[lsp.Location]:
        doc = documents.get(params.text_document.uri)
        if doc is None:
            return []
        return [where(loc) for loc in doc.references(params.position.line, params.position.character,
                                                     params.context.include_declaration)]

    @ls.feature(lsp.TEXT_DOCUMENT_DOCUMENT_SYMBOL)
    def symbols(params: lsp.DocumentSymbolParams) -> list[lsp.DocumentSymbol]:
        doc = documents.get(params.text_document.uri)
        kind = {"block": lsp.SymbolKind.Class, "network": lsp.SymbolKind.Module}
        return [lsp.DocumentSymbol(name=s.name, kind=kind[s.kind], detail=s.detail, range=rng(s.range),
                                   selection_range=rng(s.selection)) for s in (doc.symbols() if doc else [])]

    @ls.feature(lsp.TEXT_DOCUMENT_FORMATTING)
    def formatting(params: lsp.DocumentFormattingParams) -> list[lsp.TextEdit] | None:
        from cnndsl.tools.fmt import format_text

        doc = ls.workspace.get_text_document(params.text_document.uri)
        try:
            new = format_text(doc.source, uris.to_fs_path(params.text_document.uri) or params.text_document.uri)
        except CnnDslError:
            return None  # the diagnostics already say why
        if new == doc.source:
            return []
        lines = doc.source.split("\n")
        end = lsp.Position(line=len(lines) - 1, character=len(lines[-1]))
        return [lsp.TextEdit(range=lsp.Range(start=lsp.Position(line=0, character=0), end=end), new_text=new)]


class _Malformed(Exception):
    """A frame that breaks the base protocol (the reason is the message)."""


class FramedReader:
    """The client's byte stream as pygls reads it (``readline()``, ``read(n)``), malformed frames left out.

    The LSP base protocol frames each JSON-RPC message as ``Content-Length: N`` (and optional
    other headers), a blank line, and N bytes of body. pygls's own loop trusts the header: one
    non-numeric, negative or missing ``Content-Length`` makes it read bodies as headers and never
    find a message again, and a huge one makes it allocate that many bytes. This reader parses
    the frames itself, with bounds (header lines of at most :data:`MAX_HEADER_LINE` bytes, at most
    :data:`MAX_HEADER_LINES` of them, bodies of at most :data:`MAX_MESSAGE_BYTES`), and hands pygls
    only well-formed frames whose body is a JSON-RPC message. After a malformed frame it skips to
    the next ``Content-Length:`` in the stream (a body shorter than announced swallows the start
    of the next message: that header is looked for inside it). Input that ends inside a frame ends
    the session; :attr:`truncated` then says so.
    """

    MARKER = b"content-length:"
    CHUNK = 64 * 1024

    def __init__(self, raw):
        self.raw = raw
        self.buf = bytearray()  # read from ``raw``, not yet parsed
        self.eof = False
        self.truncated = False
        self.frame = b""  # the well-formed frame being handed to pygls
        self.pos = 0

    # -- what pygls calls -------------------------------------------------------------------------

    def readline(self) -> bytes:
        """The next line (up to and including ``\\n``) of the well-formed frames; ``b""`` at the end."""
        if not self._ready():
            return b""
        end = self.frame.find(b"\n", self.pos)
        end = len(self.frame) if end < 0 else end + 1
        line, self.pos = self.frame[self.pos:end], end
        return line

    def read(self, n: int = -1) -> bytes:
        """The next ``n`` bytes of the well-formed frames (fewer at the end)."""
        if not self._ready():
            return b""
        end = len(self.frame) if n is None or n < 0 else min(len(self.frame), self.pos + n)
        data, self.pos = self.frame[self.pos:end], end
        return data

    def _ready(self) -> bool:
        if self.pos < len(self.frame):
            return True
        body = self.next_body()
        if body is None:
            self.frame = b""
            return False
        self.frame, self.pos = b"Content-Length: %d\r\n\r\n" % len(body) + body, 0
        return True

    # -- framing ----------------------------------------------------------------------------------

    def next_body(self) -> bytes | None:
        """The body of the next well-formed message, or None when the input has ended."""
        while True:
            try:
                length = self._header()
                if length is None:
                    return None
                body = self._take(length)
                if len(body) < length:
                    log.warning("cnndsl lsp: the input ended %d bytes into a %d-byte message", len(body), length)
                    self.truncated = True
                    return None
                self._check_body(body)
                return body
            except _Malformed as e:
                log.warning("cnndsl lsp: skipped a malformed message (%s)", e)
                if not self._resync():
                    self.truncated = True
                    return None

    def _check_body(self, body: bytes) -> None:
        try:
            message = json.loads(body)
        except ValueError:
            at = body.lower().find(self.MARKER)
            if at >= 0:  # shorter than announced: the next message's header is inside; read on from there
                self.buf[:0] = body[at:]
            raise _Malformed(f"the {len(body)}-byte body is not JSON") from None
        if not isinstance(message, dict) or "jsonrpc" not in message:
            raise _Malformed("the body is not a JSON-RPC message")

    def _header(self) -> int | None:
        """Read one header block; its Content-Length, or None at the end of the input."""
        length, lines = None, 0
        while True:
            line = self._line()
            if line is None:
                if lines:
                    log.warning("cnndsl lsp: the input ended inside a message header")
                    self.truncated = True
                return None
            text = line.rstrip(b"\r\n")
            if not text:
                if not lines:
                    continue  # blank lines between messages
                if length is None:
                    raise _Malformed("no Content-Length header")
                return length
            lines += 1
            if lines > MAX_HEADER_LINES:
                raise _Malformed(f"more than {MAX_HEADER_LINES} header lines")
            name, sep, value = text.partition(b":")
            if not sep:
                raise _Malformed(f"not a header line: {_shown(text)}")
            if name.strip().lower() != b"content-length":
                continue
            value = value.strip()
            if not (value.isdigit() and len(value) <= 12):  # bytes.isdigit: ASCII digits only, no sign
                raise _Malformed(f"Content-Length {_shown(value)} is not a size in bytes")
            if int(value) > MAX_MESSAGE_BYTES:
                raise _Malformed(f"Content-Length {int(value):,} is over the limit of {MAX_MESSAGE_BYTES:,} bytes")
            if length is not None and length != int(value):
                raise _Malformed("two different Content-Length headers")
            length = int(value)

    def _line(self) -> bytes | None:
        """The next line of input (up to ``\\n``, or what is left at the end); None when nothing is left."""
        start = 0
        while True:
            i = self.buf.find(b"\n", start)
            if 0 <= i < MAX_HEADER_LINE:
                line = bytes(self.buf[:i + 1])
                del self.buf[:i + 1]
                return line
            if i >= MAX_HEADER_LINE or len(self.buf) >= MAX_HEADER_LINE:
                del self.buf[:1]  # a step forward, so that the search for the next header moves on
                raise _Malformed(f"a header line longer than {MAX_HEADER_LINE} bytes")
            start = len(self.buf)
            if not self._fill():
                if not self.buf:
                    return None
                line = bytes(self.buf)
                self.buf.clear()
                return line

    def _take(self, n: int) -> bytes:
        """The next ``n`` bytes of input (fewer if it ends first)."""
        while len(self.buf) < n and self._fill():
            pass
        body = bytes(self.buf[:n])
        del self.buf[:n]
        return body

    def _resync(self) -> bool:
        """Skip input up to the next ``Content-Length:`` (any case); False if the input ends first."""
        keep = len(self.MARKER) - 1
        while True:
            at = self.buf.lower().find(self.MARKER)
            if at >= 0:
                del self.buf[:at]
                return True
            del self.buf[:max(0, len(self.buf) - keep)]  # bounded: only a possible start of the marker stays
            if not self._fill():
                self.buf.clear()
                return False

    def _fill(self) -> bool:
        """Append what the client has sent (waiting for at least one byte); False at the end of the input."""
        if self.eof:
            return False
        read1 = getattr(self.raw, "read1", None)
        data = read1(self.CHUNK) if read1 is not None else self.raw.read(1)
        if not data:
            self.eof = True
            return False
        self.buf += data
        return True


def _shown(data: bytes, limit: int = 40) -> str:
    text = repr(data[:limit])[1:]
    return text + ("..." if len(data) > limit else "")


def server():
    """The pygls language server (imported lazily: pygls is an optional dependency)."""
    from lsprotocol import types as lsp
    from pygls import uris
    from pygls.lsp.server import LanguageServer

    from cnndsl.version import __version__

    ls = LanguageServer("cnndsl", __version__)
    cache: dict[str, Analysis] = {}
    documents: dict[str, Document] = {}  # for completion and navigation (issue 17)
    severity = {"error": lsp.DiagnosticSeverity.Error, "warning": lsp.DiagnosticSeverity.Warning}

    def refresh(uri: str) -> None:
        doc = ls.workspace.get_text_document(uri)
        filename = uris.to_fs_path(uri) or uri
        analysis = analyse(doc.source, filename)
        cache[uri] = analysis
        documents[uri] = Document(doc.source, filename, documents.get(uri))
        diagnostics = [lsp.Diagnostic(
            range=lsp.Range(start=lsp.Position(*d.start), end=lsp.Position(*d.end)),
            message=d.message, severity=severity[d.severity], source="cnndsl") for d in analysis.diagnostics]
        ls.text_document_publish_diagnostics(lsp.PublishDiagnosticsParams(uri=uri, diagnostics=diagnostics,
                                                                          version=doc.version))

    @ls.feature(lsp.TEXT_DOCUMENT_DID_OPEN)
    def did_open(params: lsp.DidOpenTextDocumentParams) -> None:
        refresh(params.text_document.uri)

    @ls.feature(lsp.TEXT_DOCUMENT_DID_CHANGE)
    def did_change(params: lsp.DidChangeTextDocumentParams) -> None:
        refresh(params.text_document.uri)

    @ls.feature(lsp.TEXT_DOCUMENT_DID_SAVE)
    def did_save(params: lsp.DidSaveTextDocumentParams) -> None:
        refresh(params.text_document.uri)

    @ls.feature(lsp.TEXT_DOCUMENT_DID_CLOSE)
    def did_close(params: lsp.DidCloseTextDocumentParams) -> None:
        cache.pop(params.text_document.uri, None)
        ls.text_document_publish_diagnostics(lsp.PublishDiagnosticsParams(uri=params.text_document.uri,
                                                                          diagnostics=[]))

    @ls.feature(lsp.TEXT_DOCUMENT_HOVER)
    def hover(params: lsp.HoverParams) -> lsp.Hover | None:
        analysis = cache.get(params.text_document.uri)
        if analysis is None:
            return None
        text = analysis.hover(params.position.line, params.position.character)
        doc = documents.get(params.text_document.uri)
        block = doc.block_hover(params.position.line, params.position.character) if doc else None
        if block is not None:  # a block call: its signature, then the instances' shapes and totals
            text = block + ("\n\n" + text if text else "")
        label = doc.label_at(params.position.line, params.position.character) if doc and block is None else None
        if label is not None:  # `layer1:` or `@layer1`: what the label names, its shape, layers, params and MACs
            text = analysis.hover(*label[0], named=label[1]) or text
        if text is None:
            return None
        return lsp.Hover(contents=lsp.MarkupContent(kind=lsp.MarkupKind.Markdown, value=text))

    _authoring_features(ls, documents)
    return ls


def main() -> int:
    """Serve LSP over stdin/stdout until the client exits; 1 when the input ended inside a message.

    Malformed frames are skipped (see :class:`FramedReader`) and logged on stderr.
    """
    try:
        ls = server()
    except ImportError:
        import sys

        print("cnndsl lsp needs pygls: pip install 'cnndsl[lsp]'", file=sys.stderr)
        return 2
    import sys

    reader = FramedReader(sys.stdin.buffer)
    ls.start_io(stdin=reader)
    return 1 if reader.truncated else 0


if __name__ == "__main__":
    raise SystemExit(main())
