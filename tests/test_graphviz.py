"""`cnndsl graph`: the DOT text matches the IR, and Graphviz renders every zoo network."""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET

import pytest

import cnndsl
from cnndsl.front.loader import zoo_index
from cnndsl.report import graphviz as gv
from cnndsl.tools.cli import main

ZOO = sorted(zoo_index())
needs_dot = pytest.mark.skipif(not gv.available(), reason="needs the graphviz package and Graphviz's dot")
BOX = re.compile(r'^\s*("(?:[^"\\]|\\.)*") \[label=', re.MULTILINE)
EDGE = re.compile(r'^\s*("(?:[^"\\]|\\.)*") -> ("(?:[^"\\]|\\.)*") \[(.*)\];$', re.MULTILINE)
# the full pictures of the largest networks take Graphviz seconds each; their collapsed form is drawn instead
BIG = 500


@pytest.fixture(scope="module")
def nets():
    return {}


def _net(cache, name):
    if name not in cache:
        cache[name] = cnndsl.load(name)
    return cache[name]


def _unquote(s: str) -> str:
    return s[1:-1].replace('\\"', '"').replace("\\\\", "\\")


@pytest.mark.parametrize("name", ZOO)
def test_dot_has_one_box_per_layer_and_every_edge(nets, name):
    net = _net(nets, name)
    dot = gv.to_dot(net)
    boxes = [_unquote(b) for b in BOX.findall(dot)]
    assert sorted(boxes) == sorted(n.name for n in net.graph.nodes())
    edges = {(_unquote(a), _unquote(b)) for a, b, _ in EDGE.findall(dot)}
    want = {(src, n.name) for n in net.graph.nodes() for src in net.graph.inputs_of(n.name)}
    assert edges == want
    assert gv.to_dot(net) == dot  # deterministic


@pytest.mark.parametrize("name", ZOO)
def test_collapsed_dot_draws_each_outer_block_once(nets, name):
    net = _net(nets, name)
    g = net.graph
    blocks = [s for s, sc in g.scopes.items() if sc.kind == "block"]
    outer = {s for s in blocks if not any(s.startswith(o + ".") for o in blocks)}
    loose = {n.name for n in g.nodes() if not any(n.name.startswith(b + ".") for b in outer)}
    boxes = [_unquote(b) for b in BOX.findall(gv.to_dot(net, collapse=True))]
    assert sorted(boxes) == sorted(outer | loose)


def test_edge_labels_are_the_tensor_shapes(nets):
    net = _net(nets, "googlenet_torchvision")
    for a, _, attrs in EDGE.findall(gv.to_dot(net)):
        m = re.search(r'label=" ([0-9×]+)"', attrs)
        if m:
            assert m.group(1) == "×".join(map(str, net.graph.node(_unquote(a)).shape))
    # the fork after maxpool2 into inception3a's four branches carries 192x28x28 (Table 1 of the paper)
    assert gv.to_dot(net).count('label=" 192×28×28"') >= 4


def test_skips_and_aux_heads_are_visible(nets):
    # resnet18 has 8 basic blocks, 3 of them with a projection (torchvision: layer2-4 downsample): 5 identity skips
    dot = gv.to_dot(_net(nets, "resnet18"))
    assert len(re.findall(r"style=\"dashed\"", dot)) == 5
    dot = gv.to_dot(_net(nets, "googlenet"))
    assert dot.count("aux output") == 2 and dot.count("<i>output</i>") == 1
    assert dot.count("(aux head)") == 2


def test_op_labels_follow_the_papers_short_forms():
    net = cnndsl.loads("network t: input 3x32x32  conv7-64/2 maxpool3/2(ceil) conv1x7-8 fc-10 dropout(0.7)")
    labels = [gv.op_label(n) for n in net.graph.nodes()]
    assert labels[1:] == ["conv7-64/2", "maxpool3/2 ceil", "conv1x7-8", "fc-10", "dropout 0.7"]


@needs_dot
@pytest.mark.parametrize("name", ZOO)
def test_every_zoo_network_renders_to_svg(nets, name):
    net = _net(nets, name)
    collapse = len(net.graph) > BIG
    svg = gv.pipe(gv.to_dot(net, collapse=collapse), "svg")
    root = ET.fromstring(svg)
    assert root.tag.endswith("svg")
    nodes = [e for e in root.iter() if e.get("class") == "node"]
    assert len(nodes) == len(BOX.findall(gv.to_dot(net, collapse=collapse)))


@needs_dot
@pytest.mark.parametrize("name, collapse", [("googlenet", False), ("googlenet", True), ("resnet152", True),
                                            ("resnet18", False)])
def test_png_pictures_are_tall_and_narrow(nets, name, collapse, tmp_path):
    path = gv.render(_net(nets, name), tmp_path / f"{name}.png", collapse=collapse)
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    assert 200 < width < 1500 and height > width  # top to bottom, not a hairball sideways


def test_cli_writes_dot_and_rejects_unknown_formats(tmp_path, capsys):
    assert main(["graph", "lenet5", "-o", str(tmp_path / "l.dot"), "--collapse"]) == 0
    assert (tmp_path / "l.dot").read_text().startswith('digraph "lenet5"')
    assert main(["graph", "lenet5", "-o", str(tmp_path / "l.jpg")]) == 1
    assert "unknown picture format 'jpg'" in capsys.readouterr().err
