"""The summary table: its numbers against the IR, the papers' tables, and torchinfo."""

from __future__ import annotations

import io
import re

import pytest

import cnndsl
from cnndsl.report.summary import paper_table, rows, saved_for_backward, table
from cnndsl.tools.cli import main


@pytest.fixture(scope="module")
def vgg16():
    return cnndsl.load("vgg16")


@pytest.fixture(scope="module")
def resnet50():
    return cnndsl.load("resnet50")


def test_full_table_rows_are_the_layers(resnet50):
    leaves = [r for r in rows(resnet50) if r.params is not None]
    assert len(leaves) == len(resnet50.graph) - 1  # every layer but the input
    assert sum(r.params for r in leaves) == resnet50.params
    assert sum(r.macs for r in leaves) == resnet50.macs


@pytest.mark.parametrize("depth", [1, 2, 3])
def test_folded_rows_sum_to_the_totals(resnet50, depth):
    shown = [r for r in rows(resnet50, depth) if r.params is not None]
    assert all(r.depth < depth for r in shown)
    assert sum(r.params for r in shown) == resnet50.params == 25_557_032  # torchvision resnet50
    assert sum(r.macs for r in shown) == resnet50.macs


def test_depth_one_is_the_top_level_scopes(resnet50):
    labels = [r.label.split(":")[0] for r in rows(resnet50, 1)]
    assert labels == ["conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4", "avgpool", "fc"]


def test_totals_in_human_units(vgg16):
    text = table(vgg16, depth=1)
    assert "138,357,544 (138.36M)" in text
    assert "15.47GMACs" in text
    # 15.26M values at 4 bytes: the VGG case study's per-layer memory column, summed
    assert "Forward activations: 61.05 MB per image" in text


def test_saved_for_backward_follows_autograd(vgg16):
    saved = saved_for_backward(vgg16)
    g = vgg16.graph
    # features.0 (conv) output feeds features.1 (ReLU, keeps its output); the conv output itself is not kept
    assert saved["features.0"] == 0 and saved["features.1"] == 64 * 224 * 224
    # a max pool keeps its argmax indices, one per output value; the next conv keeps the pooled map itself
    assert saved["features.4"] == 2 * 64 * 112 * 112
    assert saved["input"] == 3 * 224 * 224  # the first conv keeps the image
    assert sum(saved.values()) > vgg16.activations - sum(n.activations for n in g.nodes() if n.op == "relu")


# The VGG case study's listing (shared/seeds/001, VGG-16 "D"): layer, [HxWxC], memory, weights.
VGG_SEED = [
    ("INPUT", "224x224x3", "150K", "0"),
    ("CONV3-64", "224x224x64", "3.2M", "1,728"), ("CONV3-64", "224x224x64", "3.2M", "36,864"),
    ("POOL2", "112x112x64", "800K", "0"),
    ("CONV3-128", "112x112x128", "1.6M", "73,728"), ("CONV3-128", "112x112x128", "1.6M", "147,456"),
    ("POOL2", "56x56x128", "400K", "0"),
    ("CONV3-256", "56x56x256", "800K", "294,912"), ("CONV3-256", "56x56x256", "800K", "589,824"),
    ("CONV3-256", "56x56x256", "800K", "589,824"), ("POOL2", "28x28x256", "200K", "0"),
    ("CONV3-512", "28x28x512", "400K", "1,179,648"), ("CONV3-512", "28x28x512", "400K", "2,359,296"),
    ("CONV3-512", "28x28x512", "400K", "2,359,296"), ("POOL2", "14x14x512", "100K", "0"),
    ("CONV3-512", "14x14x512", "100K", "2,359,296"), ("CONV3-512", "14x14x512", "100K", "2,359,296"),
    ("CONV3-512", "14x14x512", "100K", "2,359,296"), ("POOL2", "7x7x512", "25K", "0"),
    ("FC", "1x1x4096", "4096", "102,760,448"), ("FC", "1x1x4096", "4096", "16,777,216"),
    ("FC", "1x1x1000", "1000", "4,096,000"),
]


def test_paper_layout_of_vgg16_is_the_case_study(vgg16):
    lines = paper_table(vgg16).splitlines()
    got = []
    for line in lines[:len(VGG_SEED)]:
        m = re.fullmatch(r"(\S+): \[(\S+)\] memory: (?:\S+=)?(\S+) weights: (?:.* = )?(\S+)", line)
        assert m, line
        got.append(m.groups())
    assert got == VGG_SEED
    assert lines[-1] == "TOTAL params: 138M parameters"


# GoogLeNet Table 1 (shared/seeds/003): output size, #1x1, #3x3 reduce, #3x3, #5x5 reduce, #5x5, pool proj, ops
GOOGLENET_SEED = {
    "inception (3a)": ("28×28×256", "64", "96", "128", "16", "32", "32", 128),
    "inception (3b)": ("28×28×480", "128", "128", "192", "32", "96", "64", 304),
    "inception (4a)": ("14×14×512", "192", "96", "208", "16", "48", "64", 73),
    "inception (4b)": ("14×14×512", "160", "112", "224", "24", "64", "64", 88),
    "inception (4c)": ("14×14×512", "128", "128", "256", "24", "64", "64", 100),
    "inception (4d)": ("14×14×528", "112", "144", "288", "32", "64", "64", 119),
}


def test_paper_layout_of_googlenet_is_table_1():
    text = paper_table(cnndsl.load("googlenet"))
    seen = 0
    for line in text.splitlines()[2:]:
        cells = [c.strip() for c in line.strip("|").split("|")]
        if cells[0] in GOOGLENET_SEED:
            want = GOOGLENET_SEED[cells[0]]
            assert tuple(cells[2:3] + cells[4:10]) == want[:7]
            assert abs(int(cells[11].rstrip("M")) - want[7]) <= 1  # ops in millions, the paper rounds
            seen += 1
    assert seen == len(GOOGLENET_SEED)


def test_paper_layout_is_refused_where_no_table_exists(capsys):
    assert main(["summary", "resnet18", "--paper"]) == 1
    assert "no paper table layout for 'resnet18'" in capsys.readouterr().err


def test_cli_table_is_plain_in_a_pipe(capsys):
    assert main(["summary", "lenet5", "--depth", "1"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("lenet5: input") and "\x1b[" not in out


def test_rich_table_renders():
    pytest.importorskip("rich")
    from rich.console import Console

    from cnndsl.report.summary import rich_table

    buf = io.StringIO()
    Console(file=buf, width=140).print(rich_table(cnndsl.load("lenet5")))
    assert "Output Shape" in buf.getvalue() and "61,706" in buf.getvalue()


def test_jupyter_reprs():
    """One HTML output holds the table and, where Graphviz runs, the picture inline (front-ends show only the
    richest output, so a separate SVG would never be seen); the summary's text shows as the table."""
    from cnndsl.report.graphviz import available

    net = cnndsl.load("lenet5")
    html = net._repr_html_()
    assert html.startswith("<div>") and "Output Shape" in html
    assert ("<svg" in html) == available() and "<?xml" not in html
    assert ("needs Graphviz" in html) != available()
    assert not hasattr(net, "_repr_svg_")
    text = net.summary()
    assert isinstance(text, str) and repr(text) == str(text) == table(net)
    assert "<table>" in text._repr_html_() and "61,706" in text._repr_html_()
    assert net.summary("json")._repr_html_().startswith("<pre>")


def test_jupyter_html_without_graphviz(monkeypatch):
    from cnndsl.report import graphviz

    monkeypatch.setattr(graphviz, "available", lambda: False)
    html = cnndsl.load("lenet5")._repr_html_()
    assert "<svg" not in html and "needs Graphviz" in html and "Output Shape" in html


# torchinfo (pip install torchinfo) counts parameters and mult-adds of a torch module itself. Its mult-adds
# also count bias additions (one per output value) and batch-norm parameters, which the papers' MACs leave out.
TORCHINFO_NETS = ["resnet18", "alexnet_torchvision", "googlenet_torchvision"]


def _torch_model(name):
    """torchvision's own model where torchvision is installed, else the generated PyTorch model."""
    try:
        import torchvision.models as tvm
    except ImportError:
        return cnndsl.build_torch(name)
    ctor = {"resnet18": tvm.resnet18, "alexnet_torchvision": tvm.alexnet,
            "googlenet_torchvision": lambda: tvm.googlenet(aux_logits=True, init_weights=False)}[name]
    return ctor()


@pytest.mark.parametrize("name", TORCHINFO_NETS)
def test_params_and_macs_agree_with_torchinfo(name):
    torchinfo = pytest.importorskip("torchinfo")
    pytest.importorskip("torch")
    if not hasattr(cnndsl, "build_torch"):
        pytest.skip("needs the PyTorch backend")
    net = cnndsl.load(name)
    model = _torch_model(name)
    info = torchinfo.summary(model, input_size=(1, *net.input_shape), verbose=0, mode="train")
    assert info.total_params == net.params
    g = net.graph
    extra = 0
    for node in g.nodes():
        if node.op in ("conv", "fc", "deconv") and node.args.get("bias"):
            extra += node.activations or 0
        if node.op == "bn":
            extra += node.params
    assert info.total_mult_adds == net.macs_with_aux + extra  # torchinfo ran in training mode: aux heads too
