"""The cnndsl language server: the compiler's own diagnostics as you type, shapes on hover.

Run it as ``cnndsl lsp`` or ``python -m cnndsl.lsp`` (it speaks LSP over stdio;
needs ``pip install 'cnndsl[lsp]'``). On every open and change it parses the
document, builds every network it defines through the full pass pipeline and
publishes each error and warning with its span as an LSP range. Hovering over
a layer shows its full name, op, output shape, parameters and MACs (for a
layer inside a block, one line per instance); hovering over a block call or a
labelled group shows the scope's output shape and totals.

:func:`analyse` does the work without any LSP dependency, so it is testable alone.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from .errors import CnnDslError, CnnDslWarning, Span
from .graphviz import call_text, op_label
from .network import Network, fmt_shape, human

MAX_HOVER_INSTANCES = 8


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
                if node.op != "input" and _contains(node.span, self.filename, line, character):
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
    text = f"**{node.name}** `{op_label(node)}` → `{fmt_shape(node.shape)}`"
    if node.params:
        text += f" · {node.params:,} params"
    if node.macs:
        text += f" · {human(node.macs)}MACs"
    return text


def _scope_line(net: Network, sc) -> str:
    g = net.graph
    members = [n for n in g.nodes() if n.name.startswith(sc.name + ".")]
    if not members:
        return f"**{sc.name}**"
    inside = {n.name for n in members}
    out = [n for n in members if n.name in g.outputs or any(d not in inside for d, _ in g.consumers(n.name))]
    shape = fmt_shape((out or members)[-1].shape)
    params = sum(n.params for n in members)
    macs = sum(n.macs for n in members)
    what = call_text(sc) if sc.kind == "block" else sc.kind
    return (f"**{sc.name}** `{what}` → `{shape}` · {len(members)} layers · {params:,} params"
            f" · {human(macs)}MACs")


def _diagnostic(kind: str, e: CnnDslError | CnnDslWarning, filename: str) -> Diagnostic:
    message = e.message + (f"\nhint: {e.hint}" if e.hint else "")
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
    from .api import build
    from .loader import Library
    from .syntax import parse

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


def server():
    """The pygls language server (imported lazily: pygls is an optional dependency)."""
    from lsprotocol import types as lsp
    from pygls import uris
    from pygls.lsp.server import LanguageServer

    from . import __version__

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
    """Serve LSP over stdin/stdout until the client exits."""
    try:
        ls = server()
    except ImportError:
        import sys

        print("cnndsl lsp needs pygls: pip install 'cnndsl[lsp]'", file=sys.stderr)
        return 2
    ls.start_io()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
