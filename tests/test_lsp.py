"""The language server, spoken to over stdio as an editor does (JSON-RPC framed with Content-Length)."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from pathlib import Path

import pytest

pytest.importorskip("pygls")

from cnndsl.tools.lsp import analyse

DOC = """\
network t: input 3x32x32
    conv3-16 relu maxpool
    fc-10 conv3-4
"""
WARN = """\
network w: input 3x8x8
    conv3-4/2(p=0) relu
    fc-10
"""


class Client:
    """A minimal LSP client over a subprocess's stdin and stdout."""

    def __init__(self):
        self.proc = subprocess.Popen([sys.executable, "-m", "cnndsl", "lsp"], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        self.next_id = 0
        self.messages: list[dict] = []
        self.cond = threading.Condition()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        out = self.proc.stdout
        while True:
            length = None
            while True:
                line = out.readline()
                if not line:
                    return
                if line in (b"\r\n", b"\n"):
                    break
                key, _, value = line.decode("ascii").partition(":")
                if key.lower() == "content-length":
                    length = int(value)
            msg = json.loads(out.read(length))
            with self.cond:
                self.messages.append(msg)
                self.cond.notify_all()

    def send(self, method, params, request=True):
        msg = {"jsonrpc": "2.0", "method": method, "params": params}
        if request:
            self.next_id += 1
            msg["id"] = self.next_id
        body = json.dumps(msg).encode("utf-8")
        self.proc.stdin.write(b"Content-Length: %d\r\n\r\n" % len(body) + body)
        self.proc.stdin.flush()
        return msg.get("id")

    def wait_for(self, pred, timeout=30):
        with self.cond:
            ok = self.cond.wait_for(lambda: any(pred(m) for m in self.messages), timeout)
            assert ok, f"no such message; got {self.messages}"
            return next(m for m in self.messages if pred(m))

    def request(self, method, params):
        rid = self.send(method, params)
        return self.wait_for(lambda m: m.get("id") == rid and "method" not in m)

    def diagnostics(self, uri, version):
        return self.wait_for(lambda m: m.get("method") == "textDocument/publishDiagnostics"
                             and m["params"]["uri"] == uri and m["params"].get("version") == version)["params"]


@pytest.fixture
def client():
    c = Client()
    init = c.request("initialize", {"processId": None, "rootUri": None, "capabilities": {}})
    assert init["result"]["capabilities"]["hoverProvider"]
    c.send("initialized", {}, request=False)
    yield c
    c.request("shutdown", None)
    c.send("exit", None, request=False)
    try:
        c.proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        c.proc.kill()


def test_diagnostics_as_you_type_and_hover(client, tmp_path):
    uri = (tmp_path / "t.cnn").as_uri()
    client.send("textDocument/didOpen", {"textDocument": {"uri": uri, "languageId": "cnn", "version": 1,
                                                         "text": DOC}}, request=False)
    diags = client.diagnostics(uri, 1)["diagnostics"]
    assert len(diags) == 1 and diags[0]["severity"] == 1
    assert diags[0]["message"].startswith("'conv' needs a feature map")
    # `conv3-4` after fc-10 on line 3 (0-based 2), columns 10..17
    assert diags[0]["range"] == {"start": {"line": 2, "character": 10}, "end": {"line": 2, "character": 17}}

    # the user deletes the bad layer: the error goes away
    fixed = DOC.replace(" conv3-4", "")
    client.send("textDocument/didChange", {"textDocument": {"uri": uri, "version": 2},
                                           "contentChanges": [{"text": fixed}]}, request=False)
    assert client.diagnostics(uri, 2)["diagnostics"] == []

    # hover over `conv3-16`: its name, output shape (16x32x32) and 3*3*3*16+16 = 448 parameters
    hover = client.request("textDocument/hover", {"textDocument": {"uri": uri},
                                                  "position": {"line": 1, "character": 6}})
    value = hover["result"]["contents"]["value"]
    assert "**conv1**" in value and "16x32x32" in value and "448 params" in value
    # hover over `maxpool`: 16x16x16, no parameters
    value = client.request("textDocument/hover", {"textDocument": {"uri": uri},
                                                  "position": {"line": 1, "character": 20}})["result"]
    assert "16x16x16" in value["contents"]["value"]
    # hover on blank space: nothing
    assert client.request("textDocument/hover", {"textDocument": {"uri": uri},
                                                 "position": {"line": 0, "character": 0}})["result"] is None


def test_warnings_are_published_with_their_span(client, tmp_path):
    uri = (tmp_path / "w.cnn").as_uri()
    client.send("textDocument/didOpen", {"textDocument": {"uri": uri, "languageId": "cnn", "version": 1,
                                                         "text": WARN}}, request=False)
    diags = client.diagnostics(uri, 1)["diagnostics"]
    # 8x8 input, 3x3 kernel, stride 2, no padding: (8 - 3) / 2 + 1 = 3.5, rows and columns left out
    assert diags and all(d["severity"] == 2 for d in diags)
    assert all(d["range"]["start"] == {"line": 1, "character": 4} for d in diags)
    assert "stride 2 doesn't fit" in diags[0]["message"]


def test_syntax_errors_and_hover_inside_blocks_without_a_server():
    a = analyse("network t: input 3x8x8\n  conv3-4 (\n", "/tmp/x.cnn")
    assert [d.severity for d in a.diagnostics] == ["error"] and a.diagnostics[0].start == (1, 10)
    path = Path(__file__).resolve().parent.parent / "networks" / "resnet.cnn"
    a = analyse(path.read_text(), str(path))
    assert a.diagnostics == [] or all(d.severity == "warning" for d in a.diagnostics)
    lines = path.read_text().splitlines()
    row = next(i for i, line in enumerate(lines) if "conv7-64/2" in line)
    text = a.hover(row, lines[row].index("conv7-64/2") + 2)  # ImageNet ResNets' conv1: 9,408 weights
    assert "64x112x112" in text and "9,408 params" in text and "resnet50" in text


def frame(msg: dict) -> bytes:
    body = json.dumps(msg).encode("utf-8")
    return b"Content-Length: %d\r\n\r\n" % len(body) + body


INIT = {"jsonrpc": "2.0", "id": 1, "method": "initialize",
        "params": {"processId": None, "rootUri": None, "capabilities": {}}}
#: What a malformed frame carries: were it handled, a response with id 77 would come back.
STRAY = json.dumps({"jsonrpc": "2.0", "id": 77, "method": "initialize",
                    "params": {"processId": None, "rootUri": None, "capabilities": {}}}).encode()
MALFORMED = {
    "non-numeric length": b"Content-Length: abc\r\n\r\n" + STRAY,
    "negative length": b"Content-Length: -5\r\n\r\n" + STRAY,
    "huge length": b"Content-Length: 1000000000000\r\n\r\n" + STRAY,
    "length out of int range": b"Content-Length: " + b"9" * 5000 + b"\r\n\r\n" + STRAY,
    "no length": b"Content-Type: application/vscode-jsonrpc; charset=utf-8\r\n\r\n" + STRAY,
    "not a header": b"hello there\r\n\r\n" + STRAY,
    "garbage without newlines": bytes(range(32, 127)) * 300,
    # announced 40 bytes more than sent: the body runs into the next (valid) frame's header
    "body shorter than announced": b"Content-Length: %d\r\n\r\n" % (len(STRAY) + 40) + STRAY,
    "body not JSON": b"Content-Length: 9\r\n\r\nnot json!",
}


@pytest.mark.parametrize("bad", MALFORMED.values(), ids=MALFORMED.keys())
def test_a_malformed_frame_is_skipped_and_the_next_message_answered(bad, tmp_path):
    c = Client()
    try:
        c.proc.stdin.write(bad + frame(INIT))
        c.proc.stdin.flush()
        init = c.wait_for(lambda m: m.get("id") == 1 and "method" not in m, timeout=60)
        assert init["result"]["capabilities"]["hoverProvider"]
        assert not any(m.get("id") == 77 for m in c.messages)  # the malformed frame's body was not run
        # and the server goes on working: diagnostics for an opened document
        c.send("initialized", {}, request=False)
        uri = (tmp_path / "t.cnn").as_uri()
        c.send("textDocument/didOpen", {"textDocument": {"uri": uri, "languageId": "cnn", "version": 1,
                                                         "text": DOC}}, request=False)
        assert len(c.diagnostics(uri, 1)["diagnostics"]) == 1
        c.next_id = 1
        c.request("shutdown", None)
        c.send("exit", None, request=False)
        assert c.proc.wait(timeout=60) == 0
    finally:
        if c.proc.poll() is None:
            c.proc.kill()


@pytest.mark.parametrize("tail", [b"Content-Length: 500\r\n\r\n" + STRAY, b"Content-Length: 5", b"Content-Len"],
                         ids=["body cut short", "header cut short", "header name cut short"])
def test_input_ending_inside_a_message_ends_the_server_with_status_1(tail):
    c = Client()
    try:
        c.proc.stdin.write(frame(INIT) + tail)
        c.proc.stdin.flush()
        c.wait_for(lambda m: m.get("id") == 1 and "method" not in m, timeout=60)
        c.proc.stdin.close()
        assert c.proc.wait(timeout=60) == 1
        assert not any(m.get("id") == 77 for m in c.messages)
    finally:
        if c.proc.poll() is None:
            c.proc.kill()


def test_the_reader_bounds_what_it_buffers():
    """Unit level: 4 MiB of garbage is skipped holding little of it at a time; the frames after it come whole."""
    import io

    from cnndsl.tools.lsp import MAX_HEADER_LINE, FramedReader

    held: list[int] = []

    class Trickle(io.BytesIO):
        """A pipe that delivers 4 KiB at a time, recording how much the reader holds at each read."""

        def read1(self, n=-1):
            held.append(len(reader.buf))
            return super().read1(min(n, 4096))

    good = frame({"jsonrpc": "2.0", "method": "initialized", "params": {}})
    body = good.split(b"\r\n\r\n", 1)[1]
    garbage = b"x" * (4 * 1024 * 1024)
    reader = FramedReader(Trickle(garbage + b"\r\n" + b"Content-Length: 99999999999\r\n\r\n" + garbage + good + good))
    assert reader.next_body() == body
    assert max(held) <= MAX_HEADER_LINE + 4096
    # pygls's side: a canonical header, a blank line, the body; then b"" at the end
    assert reader.readline() == b"Content-Length: %d\r\n" % len(body)
    assert reader.readline() == b"\r\n"
    assert reader.read(len(body)) == body
    assert reader.readline() == b"" and reader.read(10) == b"" and not reader.truncated
