"""torchvision's remaining classifiers (DenseNet, SqueezeNet, ResNeXt, Wide ResNet, VGG-13/19 with batch norm) and
its segmentation models (FCN, DeepLabV3, LR-ASPP), against outside numbers.

The oracle is torchvision 0.29 itself: ``tests/peers/fixtures/<name>.json`` records each model's state_dict (keys and
shapes, in registration order), its parameter count, fvcore's conv and linear MACs, the input size of its published
weights and its output's shape. Parameter counts and MACs do not see a dilation, a stride that keeps the size or a
layer's place in the sequence, so those are checked against torchvision's own rules (``_make_layer``,
``_mobilenet_v3_conf``), written out again here, and against the papers' tables.
"""

from __future__ import annotations

import pytest
from conftest import peer_fixture
from test_structure import torch_state

import cnndsl
from cnndsl.report.expand import expand

CLASSIFIERS = ("densenet121", "densenet161", "densenet169", "densenet201", "squeezenet1_0", "squeezenet1_1",
               "resnext50_32x4d", "resnext101_32x8d", "resnext101_64x4d", "wide_resnet50_2", "wide_resnet101_2",
               "vgg13_bn", "vgg19_bn")
SEGMENTATION = ("fcn_resnet50", "fcn_resnet101", "deeplabv3_resnet50", "deeplabv3_resnet101",
                "deeplabv3_mobilenet_v3_large", "lraspp_mobilenet_v3_large")


@pytest.mark.parametrize("name", CLASSIFIERS + SEGMENTATION)
def test_torchvisions_state_dict_params_and_macs(zoo, name):
    """Every key torchvision has, in its order, with its shape; its parameters; fvcore's conv + linear MACs; the
    input its weights were trained at and the output's shape."""
    fixture, net = peer_fixture(name), zoo(name)
    assert list(torch_state(net).items()) == [(key, shape) for key, shape in fixture["state_dict"]]
    assert net.params == fixture["params"]
    assert net.macs == fixture["fvcore_by_op"]["conv"] + fixture["fvcore_by_op"].get("linear", 0)
    assert list(net.input_shape) == fixture["input"]
    assert net.output_shapes == [tuple(fixture["output_shape"][1:])]


@pytest.mark.parametrize("name", ["squeezenet1_1", "densenet121", "resnext50_32x4d"])
def test_the_generated_pytorch_model_loads_torchvisions_keys_strictly(name):
    torch = pytest.importorskip("torch")
    model = cnndsl.build_torch(cnndsl.load(name))
    fixture = peer_fixture(name)
    model.load_state_dict({k: torch.zeros(shape) if shape else torch.tensor(0) for k, shape in fixture["state_dict"]},
                          strict=True)
    assert [(k, list(v.shape)) for k, v in model.state_dict().items()] == [tuple(e) for e in fixture["state_dict"]]


@pytest.mark.parametrize("name", ["densenet121", "squeezenet1_0", "resnext50_32x4d", "deeplabv3_resnet50",
                                  "lraspp_mobilenet_v3_large"])
def test_expand_writes_them_back(zoo, name):
    net = zoo(name)
    again = cnndsl.loads(expand(net), f"{name}.expanded.cnn")
    assert again.graph.signature() == net.graph.signature()


# ----------------------------------------------------------------------------- ResNeXt and Wide ResNet


@pytest.mark.parametrize(("name", "groups", "width_per_group"), [
    ("resnext50_32x4d", 32, 4), ("resnext101_32x8d", 32, 8), ("resnext101_64x4d", 64, 4),
    ("wide_resnet50_2", 1, 128), ("wide_resnet101_2", 1, 128), ("resnet50", 1, 64)])
def test_the_bottlenecks_grouped_3x3(zoo, name, groups, width_per_group):
    """torchvision's Bottleneck: ``width = int(planes * (base_width / 64.)) * groups`` in conv1, conv2 (grouped),
    and ``planes * 4`` out of conv3."""
    g = zoo(name).graph
    for stage, planes in enumerate((64, 128, 256, 512), 1):
        width = int(planes * (width_per_group / 64.0)) * groups
        convs = [n for n in g.nodes() if n.op == "conv" and n.name.startswith(f"layer{stage}.")
                 and n.name.rpartition(".")[2] in ("conv1", "conv2", "conv3")]
        assert {(n.name.rpartition(".")[2], n.args["c"], n.args["groups"]) for n in convs} == {
            ("conv1", width, 1), ("conv2", width, groups), ("conv3", planes * 4, 1)}


# ----------------------------------------------------------------------------- DenseNet


@pytest.mark.parametrize(("name", "growth", "blocks", "init_features", "final"), [
    ("densenet121", 32, (6, 12, 24, 16), 64, 1024), ("densenet161", 48, (6, 12, 36, 24), 96, 2208),
    ("densenet169", 32, (6, 12, 32, 32), 64, 1664), ("densenet201", 32, (6, 12, 48, 32), 64, 1920)])
def test_densenet_table1(zoo, name, growth, blocks, init_features, final):
    """DenseNet paper, Table 1: dense blocks at 56, 28, 14 and 7, each layer adding k maps, each transition halving
    them and the size; torchvision's widths (1024 maps before the classifier of DenseNet-121, ...)."""
    g = zoo(name).graph
    maps = init_features
    for i, n in enumerate(blocks, 1):
        size = 56 >> (i - 1)
        layers = [g.node(f"features.denseblock{i}.denselayer{j}.concat1") for j in range(1, n + 1)]
        assert [x.shape for x in layers] == [(maps + growth * j, size, size) for j in range(1, n + 1)]
        maps += growth * n
        if i < len(blocks):
            maps //= 2
            assert g.node(f"features.transition{i}.pool").shape == (maps, size // 2, size // 2)
    assert f"features.denseblock{len(blocks)}.denselayer{blocks[-1] + 1}.conv1" not in g
    assert maps == final and g.node("features.norm5").shape == (final, 7, 7)


# ----------------------------------------------------------------------------- SqueezeNet


def test_squeezenet1_0_table1():
    """SqueezeNet paper, Table 1 (one row a layer: output size, maps), at the 227x227 crop of its Caffe model: the
    7x7/2 conv without padding gives 111x111, then the pools round up (torchvision's ceil_mode=True)."""
    g = cnndsl.load("squeezenet1_0", input_shape=(3, 227, 227)).graph
    rows = [("features.0", 111, 96), ("features.2", 55, 96), ("features.3.concat1", 55, 128),
            ("features.4.concat1", 55, 128), ("features.5.concat1", 55, 256), ("features.6", 27, 256),
            ("features.7.concat1", 27, 256), ("features.8.concat1", 27, 384), ("features.9.concat1", 27, 384),
            ("features.10.concat1", 27, 512), ("features.11", 13, 512), ("features.12.concat1", 13, 512),
            ("classifier.1", 13, 1000), ("classifier.3", 1, 1000)]
    assert [(name, g.node(name).shape) for name, _, _ in rows] == [(n, (c, s, s)) for n, s, c in rows]
    squeeze = [g.node(f"features.{i}.squeeze").args["c"] for i in (3, 4, 5, 7, 8, 9, 10, 12)]
    assert squeeze == [16, 16, 32, 32, 48, 48, 64, 64]  # Table 1's s1x1 column


# ----------------------------------------------------------------------------- segmentation


def _make_layers(blocks: tuple[int, ...], dilate: tuple[bool, ...]) -> list[tuple[str, int, int]]:
    """torchvision's ResNet._make_layer, for the 3x3 conv of every bottleneck: (name, stride, dilation)."""
    out, dilation = [], 1
    for i, (n, stride, dilated) in enumerate(zip(blocks, (1, 2, 2, 2), (False, *dilate)), 1):
        previous = dilation
        if dilated:
            dilation, stride = dilation * stride, 1
        out.append((f"backbone.layer{i}.0.conv2", stride, previous))
        out += [(f"backbone.layer{i}.{j}.conv2", 1, dilation) for j in range(1, n)]
    return out


@pytest.mark.parametrize(("name", "blocks"), [("fcn_resnet50", (3, 4, 6, 3)), ("fcn_resnet101", (3, 4, 23, 3)),
                                              ("deeplabv3_resnet50", (3, 4, 6, 3)),
                                              ("deeplabv3_resnet101", (3, 4, 23, 3))])
def test_resnet_backbones_dilate_as_torchvision(zoo, name, blocks):
    """replace_stride_with_dilation=[False, True, True]: every 3x3's stride, dilation and padding, output stride 8."""
    g = zoo(name).graph
    want = _make_layers(blocks, (False, True, True))
    got = [(n.name, n.args["s"][0], n.args["d"][0]) for n in g.nodes() if n.name.endswith(".conv2")]
    assert got == want
    assert all(g.node(n).args["p"] == ((d, d), (d, d)) for n, _, d in want)
    assert g.node(f"backbone.layer4.{blocks[3] - 1}.add1").shape == (2048, 65, 65)
    assert [g.node(f"backbone.layer{i}.0.downsample.0").args["s"] for i in (1, 2, 3, 4)] == [
        (1, 1), (2, 2), (1, 1), (1, 1)]


@pytest.mark.parametrize("name", ["deeplabv3_resnet50", "deeplabv3_mobilenet_v3_large"])
def test_aspp(zoo, name):
    """DeepLabV3's ASPP: a 1x1 conv, 3x3 convs at rates 12, 24 and 36 (padded by the rate, so the size is kept),
    and image pooling resized back (bilinear) to the others' size, concatenated in that order."""
    g = zoo(name).graph
    convs = [g.node(f"classifier.0.convs.{i}.0") for i in range(4)]
    assert [(c.args["k"], c.args["d"], c.args["p"]) for c in convs] == [((1, 1), (1, 1), ((0, 0), (0, 0)))] + [
        ((3, 3), (r, r), ((r, r), (r, r))) for r in (12, 24, 36)]
    pooled = g.node("classifier.0.resize1")
    assert g.node("classifier.0.convs.4.1").shape[1:] == (1, 1) and pooled.args["mode"] == "bilinear"
    assert pooled.shape == convs[0].shape
    assert g.inputs_of("classifier.0.concat1") == [f"classifier.0.convs.{i}.2" for i in range(4)] + [pooled.name]


@pytest.mark.parametrize("name", SEGMENTATION)
def test_the_output_is_resized_to_the_input(zoo, name):
    g = zoo(name).graph
    last = g.node(g.output)
    assert last.op == "resize" and g.inputs_of(last.name)[1] == "input"
    assert last.args == {"mode": "bilinear", "align_corners": False}


def _dilated_mobilenet_v3_large() -> list[tuple[int, int, int]]:
    """torchvision's _mobilenet_v3_conf("mobilenet_v3_large", dilated=True): each inverted residual's depthwise
    (kernel, stride, dilation); a dilated block keeps stride 1."""
    rows = [(3, 1, 1), (3, 2, 1), (3, 1, 1), (5, 2, 1), (5, 1, 1), (5, 1, 1), (3, 2, 1), (3, 1, 1), (3, 1, 1),
            (3, 1, 1), (3, 1, 1), (3, 1, 1), (5, 2, 2), (5, 1, 2), (5, 1, 2)]
    return [(k, 1 if d > 1 else s, d) for k, s, d in rows]


@pytest.mark.parametrize("name", ["deeplabv3_mobilenet_v3_large", "lraspp_mobilenet_v3_large"])
def test_mobilenet_backbones_dilate_as_torchvision(zoo, name):
    g = zoo(name).graph
    depthwise = [n for n in g.nodes() if n.op == "conv" and n.args["groups"] > 1]
    assert [(n.args["k"][0], n.args["s"][0], n.args["d"][0]) for n in depthwise] == _dilated_mobilenet_v3_large()
    for n in depthwise:  # Conv2dNormActivation's padding: (kernel_size - 1) // 2 * dilation
        pad = (n.args["k"][0] - 1) // 2 * n.args["d"][0]
        assert n.args["p"] == ((pad, pad), (pad, pad))
    assert {n.args["eps"] for n in g.nodes() if n.op == "bn" and n.name.startswith("backbone.")} == {0.001}
    assert {n.args["eps"] for n in g.nodes() if n.op == "bn" and n.name.startswith("classifier.")} == {1e-5}
    assert g.node("backbone.16.2").shape == (960, 33, 33)  # output stride 16 at 520


def test_lraspp_head():
    """torchvision's LRASPPHead: low = features[4] (output stride 8), high = features[16];
    ``low_classifier(low) + high_classifier(interpolate(cbr(high) * scale(high), low's size))``."""
    g = cnndsl.load("lraspp_mobilenet_v3_large").graph
    low, high = "backbone.4.block.3.1", "backbone.16.2"
    assert g.node(low).shape == (40, 65, 65)
    assert g.inputs_of("backbone.5.block.0.0") == [low]  # what features[5] starts from: features[4]'s output
    assert g.inputs_of("classifier.cbr.0") == [high] and g.inputs_of("classifier.scale.0") == [high]
    assert g.inputs_of("mul1") == ["classifier.cbr.2", "classifier.scale.2"]
    assert g.node("classifier.scale.2").op == "sigmoid"
    assert g.inputs_of("high") == ["mul1", low] and g.node("high").args["mode"] == "bilinear"
    assert g.inputs_of("classifier.low_classifier") == [low] and g.inputs_of("classifier.high_classifier") == ["high"]
    assert sorted(g.inputs_of("add1")) == ["classifier.high_classifier", "classifier.low_classifier"]
