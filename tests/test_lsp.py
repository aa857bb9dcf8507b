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

    def __init__(self, *flags: str, env: dict[str, str] | None = None):
        self.proc = subprocess.Popen([sys.executable, "-m", "cnndsl", "lsp", *flags], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env)
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

    def initialize(self) -> dict:
        init = self.request("initialize", {"processId": None, "rootUri": None, "capabilities": {}})
        self.send("initialized", {}, request=False)
        return init

    def close(self) -> None:
        self.request("shutdown", None)
        self.send("exit", None, request=False)
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()

    def diagnostics(self, uri, version):
        return self.wait_for(lambda m: m.get("method") == "textDocument/publishDiagnostics"
                             and m["params"]["uri"] == uri and m["params"].get("version") == version)["params"]


@pytest.fixture
def client():
    c = Client()
    assert c.initialize()["result"]["capabilities"]["hoverProvider"]
    yield c
    c.close()


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


# ----------------------------------------------------------------------------- authoring (issue 17)

AUTHOR = """\
use "blocks.cnn"
block down(c, s=2) with conv(bias=false): conv3-{c}/{s} bn relu
network n(width=16): input 3x32x32
    stem: conv3-{width} maxpool  body: [down(32) bottleneck(8)]
    concat< @body | relu >  gap  fc-10
"""


def _labels(result) -> list[str]:
    items = result["items"] if isinstance(result, dict) else result
    return [i["label"] for i in items]


def _open(client, uri, text, version=1):
    client.send("textDocument/didOpen", {"textDocument": {"uri": uri, "languageId": "cnn", "version": version,
                                                         "text": text}}, request=False)
    return client.diagnostics(uri, version)["diagnostics"]


def _change(client, uri, text, version):
    client.send("textDocument/didChange", {"textDocument": {"uri": uri, "version": version},
                                           "contentChanges": [{"text": text}]}, request=False)
    client.diagnostics(uri, version)


def test_completion_definition_references_symbols_and_formatting(client, tmp_path):
    from cnndsl.ir.ops import OPS, lookup

    (tmp_path / "blocks.cnn").write_text((Path(__file__).resolve().parent.parent / "networks" / "blocks.cnn")
                                         .read_text())
    path = tmp_path / "n.cnn"
    uri = path.as_uri()
    assert _open(client, uri, AUTHOR) == []  # it builds: hovers have shapes

    def request(method, line, character, **extra):
        return client.request(method, {"textDocument": {"uri": uri}, "position": {"line": line,
                                                                                  "character": character}, **extra})

    # an op after a partial word: `maxp` -> maxpool and its aliases, with the registry's defaults
    typed = AUTHOR.replace("conv3-{width} maxpool", "conv3-{width} maxp")
    _change(client, uri, typed, 2)
    row = typed.splitlines()[3]
    result = request("textDocument/completion", 3, row.index("maxp") + 4)["result"]
    labels = _labels(result)
    assert "maxpool" in labels and "maxpooling" in labels and "conv" not in labels
    item = next(i for i in result["items"] if i["label"] == "maxpool")
    assert all(f"{name}=" in item["detail"] for name, _ in OPS["maxpool"].fields)
    assert lookup("maxpooling") is OPS["maxpool"]
    _change(client, uri, AUTHOR, 3)
    row = AUTHOR.splitlines()[3]
    # a block's parameters, inside its call (its own block and one from the used file)
    labels = _labels(request("textDocument/completion", 3, row.index("down(") + 5)["result"])
    assert labels[:2] == ["c=", "s="]
    labels = _labels(request("textDocument/completion", 3, row.index("bottleneck(") + 11)["result"])
    assert {"c=", "s=", "g=", "w=", "d=", "width="} <= set(labels)
    # ... and the parameters in scope in a block's body: `{c}` in `down`
    block_row = AUTHOR.splitlines()[1]
    labels = _labels(request("textDocument/completion", 1, block_row.index("{c}") + 1)["result"])
    assert "c" in labels and "s" in labels and "width" not in labels
    # an @label, while the text does not parse (the `@` just typed): the labels of the network
    typed = AUTHOR.replace("concat< @body | relu >", "concat< @ | relu >")
    _change(client, uri, typed, 4)
    row4 = typed.splitlines()[4]
    labels = _labels(request("textDocument/completion", 4, row4.index("@") + 1)["result"])
    assert labels == ["stem", "body"]
    _change(client, uri, AUTHOR, 5)

    # definition: a block call -> its `block` line, here and in the used file; a use path -> the file
    loc = request("textDocument/definition", 3, row.index("down(") + 1)["result"]
    assert loc["uri"] == uri and loc["range"]["start"] == {"line": 1, "character": 6}
    loc = request("textDocument/definition", 3, row.index("bottleneck") + 2)["result"]
    blocks = (tmp_path / "blocks.cnn").read_text().splitlines()
    assert loc["uri"] == (tmp_path / "blocks.cnn").as_uri()
    assert blocks[loc["range"]["start"]["line"]].startswith("block bottleneck(")
    loc = request("textDocument/definition", 0, 8)["result"]
    assert loc["uri"] == (tmp_path / "blocks.cnn").as_uri() and loc["range"]["start"] == {"line": 0, "character": 0}
    # an @label -> the labelled step
    row4 = AUTHOR.splitlines()[4]
    loc = request("textDocument/definition", 4, row4.index("@body") + 2)["result"]
    assert loc["range"]["start"] == {"line": 3, "character": row.index("body:")}

    # references of a block: its declaration and its calls
    refs = request("textDocument/references", 1, 8, context={"includeDeclaration": True})["result"]
    assert sorted((r["range"]["start"]["line"], r["range"]["start"]["character"]) for r in refs) == \
        [(1, 6), (3, row.index("down("))]

    # the outline: the block, then the network
    symbols = client.request("textDocument/documentSymbol", {"textDocument": {"uri": uri}})["result"]
    assert [(s["name"], s["kind"]) for s in symbols] == [("down", 5), ("n", 2)]  # Class, Module
    assert symbols[0]["detail"] == "block down(c, s=2)"
    assert symbols[1]["selectionRange"]["start"] == {"line": 2, "character": 8}

    # hover on a block call: its signature, then the instance: 16x16x16 after the maxpool, 32x8x8 after the
    # stride-2 conv, 3*3*16*32 weights (no bias) + 2*32 batch norm = 4,672 parameters
    hover = request("textDocument/hover", 3, row.index("down(") + 1)["result"]["contents"]["value"]
    assert hover.startswith("`block down(c, s=2)`") and "32x8x8" in hover and "4,672 params" in hover

    # formatting through cnndsl fmt: one edit, the whole document, what `cnndsl fmt` writes
    from cnndsl.tools.fmt import format_text

    messy = AUTHOR.replace("stem: conv3-{width}", "stem:conv3-{ width }")
    _change(client, uri, messy, 6)
    edits = client.request("textDocument/formatting", {"textDocument": {"uri": uri},
                                                       "options": {"tabSize": 4, "insertSpaces": True}})["result"]
    assert len(edits) == 1 and edits[0]["newText"] == format_text(messy) == AUTHOR
    assert edits[0]["range"]["start"] == {"line": 0, "character": 0}


@pytest.mark.slow
def test_the_vscode_package_builds(tmp_path):
    """editors/ packaged with @vscode/vsce from the npm registry: the .vsix holds the client, its dependencies and
    the grammar that the op registry generates today."""
    import shutil
    import zipfile

    from cnndsl.tools.editors import GRAMMAR_FILE, textmate_grammar

    if not (shutil.which("npm") and shutil.which("npx") and shutil.which("node")):
        pytest.skip("node and npm are not installed")
    editors = Path(__file__).resolve().parent.parent / "editors"
    work = tmp_path / "editors"
    shutil.copytree(editors, work, ignore=shutil.ignore_patterns("node_modules", "*.vsix"))
    install = subprocess.run(["npm", "install", "--omit=dev", "--no-audit", "--no-fund"], cwd=work,
                             capture_output=True, text=True, timeout=600, check=False)
    if install.returncode and any(w in install.stderr for w in ("ENOTFOUND", "EAI_AGAIN", "ECONNREFUSED", "ETIMEDOUT")):
        pytest.skip(f"npm cannot reach the registry: {install.stderr.strip().splitlines()[-1]}")
    assert install.returncode == 0, install.stderr
    package = subprocess.run(["npx", "--yes", "@vscode/vsce", "package", "--allow-missing-repository", "--skip-license",
                              "-o", str(tmp_path / "cnndsl.vsix")], cwd=work, capture_output=True, text=True,
                             timeout=600, check=False)
    assert package.returncode == 0, package.stdout + package.stderr
    with zipfile.ZipFile(tmp_path / "cnndsl.vsix") as vsix:
        names = set(vsix.namelist())
        assert vsix.read(f"extension/{GRAMMAR_FILE}").decode("utf-8") == textmate_grammar()
        manifest = json.loads(vsix.read("extension/package.json"))
        assert f"extension/{manifest['main'].removeprefix('./')}" in names
        assert "extension/node_modules/vscode-languageclient/package.json" in names
    assert manifest["contributes"]["grammars"][0]["path"] == f"./{GRAMMAR_FILE}"


def test_use_paths_parameters_and_short_forms_without_a_server(tmp_path):
    from cnndsl.front.loader import zoo_files
    from cnndsl.tools.lsp import Document

    (tmp_path / "mine.cnn").write_text("block b(c): conv3-{c}\n")
    doc = Document('use "', str(tmp_path / "n.cnn"))
    labels = [i["label"] for i in doc.complete(0, 5)]
    assert labels[0] == "mine.cnn" and set(zoo_files()) <= set(labels)
    text = "network n(w=8, unit=b): input 3x8x8\n    conv3x3(c=w, s=1) unit(w)\nnetwork m = n(4)\n"
    doc = Document(text, str(tmp_path / "n.cnn"))
    # a parameter used in the body -> its declaration; `conv3x3(` completes conv's arguments
    assert doc.definition(1, text.splitlines()[1].index("unit") + 1).start == (0, 15)
    labels = [i["label"] for i in doc.complete(1, text.splitlines()[1].index("(") + 1)]
    assert labels[:4] == ["c=", "k=", "s=", "p="] and "w" in labels
    # a derived network's base -> the base's `network` line
    assert doc.definition(2, text.splitlines()[2].index("= n") + 2).start == (0, 8)
    # the words that name nothing go nowhere
    assert doc.definition(1, 6) is None and doc.references(1, 6) == []


def test_hover_on_a_label_and_an_at_label(client, tmp_path):
    """A label (`layer1:`) or `@label` shows what it names: its shape, layers, params and MACs per network. The
    counts are torchvision's: resnet50's layer1 and layer2 hold 215,808 and 1,219,584 parameters, resnet18's
    layer1 147,968 (`sum(p.numel() for p in resnet50().layer1.parameters())`)."""
    path = Path(__file__).resolve().parent.parent / "networks" / "resnet.cnn"
    text = path.read_text(encoding="utf-8")
    assert _open(client, path.as_uri(), text) == []
    lines = text.splitlines()

    def hover(uri, line, character):
        result = client.request("textDocument/hover", {"textDocument": {"uri": uri},
                                                       "position": {"line": line, "character": character}})["result"]
        return result and result["contents"]["value"]

    row = next(i for i, line in enumerate(lines) if "layer2: [" in line)
    value = hover(path.as_uri(), row, lines[row].index("layer2:") + 3)
    assert "**layer2** `sequence` → `512x28x28`" in value and "1,219,584 params" in value and "resnet50" in value
    value = hover(path.as_uri(), row, lines[row].index("layer1:") + 6)  # on the `:` too
    entries = {e.rsplit(" (", 1)[1]: e for e in value.split("\n\n") if " (" in e}
    assert "215,808 params" in next(e for nets, e in entries.items() if "resnet50" in nets)
    assert "147,968 params" in entries["resnet18)"] and "64x56x56" in entries["resnet18)"]
    row = next(i for i, line in enumerate(lines) if "conv1: conv7-64/2" in line)
    assert "9,408 params" in hover(path.as_uri(), row, lines[row].index("conv1:") + 1)  # a labelled layer

    doc = ("network t: input 3x8x8\n  body: [conv3-4 relu conv3-4]\n  concat< @body | conv1-2 >\n"
           "  for i in (1) (2): stage{i}: conv3-{i}\n  gap fc-2\n")
    uri = (tmp_path / "t.cnn").as_uri()
    assert _open(client, uri, doc) == []
    # `@body`: the group it names, 3 layers, (3*3*3*4 + 4) + (3*3*4*4 + 4) = 112 + 148 = 260 parameters
    assert hover(uri, 2, doc.splitlines()[2].index("@body") + 2) == \
        hover(uri, 1, 3) == "**body** `sequence` → `4x8x8` · 3 layers · 260 params · 16.13KMACs (t)"
    # a label template names one thing a row: conv3-1 on the concat's 4 + 2 channels, conv3-2 on its 1
    value = hover(uri, 3, doc.splitlines()[3].index("stage{i}") + 2)
    assert "**stage1** `conv3-1` → `1x8x8` · 55 params" in value and "**stage2** `conv3-2` → `2x8x8` · 20 params" in value
