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
from dataclasses import dataclass, field
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

    def hover(self, line: int, character: int) -> str | None:
        """Markdown for the 0-based position, or None when no layer or scope is there."""
        hits = []  # (span size, kind, network, item)
        for net in self.networks:
            for node in net.graph.nodes():
                if not isinstance(node.opdef, Input) and _contains(node.span, self.filename, line, character):
                    hits.append((_size(node.span), "node", net, node))
            for sc in net.graph.scopes.values():
                if _contains(sc.span, self.filename, line, character):
                    hits.append((_size(sc.span), "scope", net, sc))
        if not hits:
            return None
        smallest = min(h[0] for h in hits)
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
    severity = {"error": lsp.DiagnosticSeverity.Error, "warning": lsp.DiagnosticSeverity.Warning}

    def refresh(uri: str) -> None:
        doc = ls.workspace.get_text_document(uri)
        filename = uris.to_fs_path(uri) or uri
        analysis = analyse(doc.source, filename)
        cache[uri] = analysis
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
        if text is None:
            return None
        return lsp.Hover(contents=lsp.MarkupContent(kind=lsp.MarkupKind.Markdown, value=text))

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
