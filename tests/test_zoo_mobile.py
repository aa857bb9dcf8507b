"""The mobile zoo (networks/mobilenet.cnn, networks/efficientnet.cnn) against torchvision 0.29.

The oracle is outside the compiler: ``tests/peers/fixtures/<name>.json`` records each torchvision model's
``state_dict`` (keys and shapes, in order), its parameter count and fvcore's conv and linear MACs at the crop
size of its published weights; the batch-norm settings, dropout and stochastic-depth rates and the
width-multiplier parameter counts below are read from torchvision's sources (``mobilenetv2.py``,
``mobilenetv3.py``, ``mnasnet.py``, ``efficientnet.py``) and its models.
"""

from __future__ import annotations

import re

import pytest
from conftest import peer_fixture
from test_structure import torch_state

import cnndsl

MOBILE = ["mobilenet_v2", "mobilenet_v3_large", "mobilenet_v3_small", "mnasnet0_5", "mnasnet0_75", "mnasnet1_0",
          "mnasnet1_3"]
EFFICIENTNET_V1 = [f"efficientnet_b{i}" for i in range(8)]
EFFICIENTNET_V2 = ["efficientnet_v2_s", "efficientnet_v2_m", "efficientnet_v2_l"]
ALL = MOBILE + EFFICIENTNET_V1 + EFFICIENTNET_V2


@pytest.mark.parametrize("name", ALL)
def test_torchvisions_state_dict_parameters_and_macs(name):
    """Every key and shape of torchvision's state_dict, in its order; its parameters; fvcore's MACs at the crop size
    of its weights, the input the network declares."""
    fixture = peer_fixture(name)
    net = cnndsl.load(name)
    assert list(torch_state(net).items()) == [(k, shape) for k, shape in fixture["state_dict"]]
    assert net.params == fixture["params"]
    assert net.macs == fixture["fvcore_by_op"]["conv"] + fixture["fvcore_by_op"]["linear"]
    assert list(net.graph.node(net.graph.output).shape) == fixture["output_shape"][1:]
    assert list(net.graph.node(net.graph.inputs[0]).args["shape"]) == fixture["input"]  # its weights' crop size


# torchvision's norm_layer: MobileNetV3 partial(BatchNorm2d, eps=0.001, momentum=0.01); MNASNet momentum
# 1 - 0.9997; EfficientNet-B5..B7 eps 0.001, momentum 0.01; EfficientNetV2 eps 1e-3; the rest PyTorch's.
BATCH_NORM = {"mobilenet_v2": (1e-5, 0.1), "mobilenet_v3_large": (0.001, 0.01), "mobilenet_v3_small": (0.001, 0.01),
              **{n: (1e-5, 1 - 0.9997) for n in MOBILE if n.startswith("mnasnet")},
              **{n: (1e-5, 0.1) for n in EFFICIENTNET_V1[:5]}, **{n: (0.001, 0.01) for n in EFFICIENTNET_V1[5:]},
              **{n: (1e-3, 0.1) for n in EFFICIENTNET_V2}}
# The classifier's dropout: kwargs.pop("dropout", ...) of each torchvision builder.
DROPOUT = {**{n: 0.2 for n in MOBILE}, "efficientnet_b0": 0.2, "efficientnet_b1": 0.2, "efficientnet_b2": 0.3,
           "efficientnet_b3": 0.3, "efficientnet_b4": 0.4, "efficientnet_b5": 0.4, "efficientnet_b6": 0.5,
           "efficientnet_b7": 0.5, "efficientnet_v2_s": 0.2, "efficientnet_v2_m": 0.3, "efficientnet_v2_l": 0.4}


@pytest.mark.parametrize("name", ALL)
def test_batch_norm_and_dropout_are_torchvisions(name):
    nodes = list(cnndsl.load(name).graph.nodes())
    assert {(n.args["eps"], n.args["momentum"]) for n in nodes if n.op == "bn"} == {BATCH_NORM[name]}
    assert [n.args["p"] for n in nodes if n.op == "dropout"] == [DROPOUT[name]]


def _blocks(net: cnndsl.Network) -> dict[tuple[int, int], set[str]]:
    """features.<stage>.<block> -> the ops in that block, for EfficientNet's stage blocks."""
    blocks: dict[tuple[int, int], set[str]] = {}
    for n in net.graph.nodes():
        m = re.match(r"features\.(\d+)\.(\d+)\.", n.name)
        if m:
            blocks.setdefault((int(m[1]), int(m[2])), set()).add(n.op)
    return blocks


@pytest.mark.parametrize("name", EFFICIENTNET_V1 + EFFICIENTNET_V2)
def test_stochastic_depth_only_where_there_is_a_residual(name):
    """torchvision applies StochasticDepth only with the residual (use_res_connect): never drop a whole block."""
    blocks = _blocks(cnndsl.load(name))
    assert all(("droppath" in ops) == ("add" in ops) for ops in blocks.values())
    assert any("add" in ops for ops in blocks.values())


@pytest.mark.parametrize("name", EFFICIENTNET_V2)
def test_stochastic_depth_grows_with_the_block_index(name):
    """torchvision: sd_prob = 0.2 * stage_block_id / total_stage_blocks, the blocks counted over all stages."""
    net = cnndsl.load(name)
    order = sorted(_blocks(net))  # (stage, block) pairs: sorted, the order torchvision numbers them in
    index = {f"features.{i}.{j}": k for k, (i, j) in enumerate(order)}
    rates = {n.name.rsplit(".", 1)[0]: n.args["p"] for n in net.graph.nodes() if n.op == "droppath"}
    assert rates and rates == {b: 0.2 * float(index[b]) / len(order) for b in rates}


# torchvision's parameter counts, sum(p.numel() for p in model.parameters()) with torchvision 0.29.1:
# mobilenet_v3_large/small(width_mult=w) and MNASNet(alpha).
@pytest.mark.parametrize(("name", "params", "expected"), [
    ("mobilenet_v3_large", {"width": 0.5}, 1_734_576), ("mobilenet_v3_large", {"width": 0.75}, 3_377_576),
    ("mobilenet_v3_large", {"width": 1.25}, 8_164_744), ("mobilenet_v3_small", {"width": 0.5}, 917_264),
    ("mobilenet_v3_small", {"width": 0.75}, 1_653_920), ("mobilenet_v3_small", {"width": 1.25}, 3_644_912),
    ("mnasnet1_0", {"alpha": 0.35}, 1_788_232), ("mnasnet1_0", {"alpha": 2.0}, 12_469_944)])
def test_width_multipliers_are_torchvisions(name, params, expected):
    assert cnndsl.load(name, **params).params == expected
