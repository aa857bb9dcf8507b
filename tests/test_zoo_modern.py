"""The zoo's ConvNeXt, ShuffleNet v2 and RegNet families against torchvision 0.29.

The oracles are outside the compiler: ``tests/peers/fixtures/<name>.json`` (torchvision's ``state_dict`` keys
and shapes, its parameter count, fvcore's conv and linear MACs at the published weights' input size), the rules
of torchvision's builders written out again here (RegNet's ``BlockParams.from_init_params``, ConvNeXt's
stochastic depth rates), and, where torchvision is importable, torchvision's models themselves.
"""

from __future__ import annotations

import math
import re

import pytest
from conftest import peer_fixture
from test_structure import check_against_torchvision
from test_zoo_classic import network_lines

import cnndsl

CONVNEXT = {"convnext_tiny": 0.1, "convnext_small": 0.4, "convnext_base": 0.5, "convnext_large": 0.5}
SHUFFLENET = ["shufflenet_v2_x0_5", "shufflenet_v2_x1_0", "shufflenet_v2_x1_5", "shufflenet_v2_x2_0"]
# torchvision's (depth, w_0, w_a, w_m, group_width) for each model (torchvision/models/regnet.py); the Y
# models add squeeze-and-excitation with se_ratio 0.25.
REGNET = {
    "regnet_x_400mf": (22, 24, 24.48, 2.54, 16),
    "regnet_x_800mf": (16, 56, 35.73, 2.28, 16),
    "regnet_x_1_6gf": (18, 80, 34.01, 2.25, 24),
    "regnet_x_3_2gf": (25, 88, 26.31, 2.25, 48),
    "regnet_x_8gf": (23, 80, 49.56, 2.88, 120),
    "regnet_x_16gf": (22, 216, 55.59, 2.1, 128),
    "regnet_x_32gf": (23, 320, 69.86, 2.0, 168),
    "regnet_y_400mf": (16, 48, 27.89, 2.09, 8),
    "regnet_y_800mf": (14, 56, 38.84, 2.4, 16),
    "regnet_y_1_6gf": (27, 48, 20.71, 2.65, 24),
    "regnet_y_3_2gf": (21, 80, 42.63, 2.66, 24),
    "regnet_y_8gf": (17, 192, 76.82, 2.19, 56),
    "regnet_y_16gf": (18, 200, 106.23, 2.48, 112),
    "regnet_y_32gf": (20, 232, 115.89, 2.53, 232),
    "regnet_y_128gf": (27, 456, 160.83, 2.52, 264),
}
ALL = [*CONVNEXT, *SHUFFLENET, *REGNET]


@pytest.mark.parametrize("name", ALL)
def test_state_dict_params_and_macs_are_torchvisions(zoo, name):
    """Every key and shape of torchvision's state_dict, its parameter count, fvcore's conv + linear MACs."""
    net = zoo(name)
    check_against_torchvision(net, name)
    fixture = peer_fixture(name)
    assert list(net.input_shape) == fixture["input"]  # regnet_y_128gf's weights are at 384x384
    assert [1, *net.graph.node(net.graph.output).shape] == fixture["output_shape"]


# ----------------------------------------------------------------------------- RegNet's design rules


def _make_divisible(v: float, divisor: int) -> int:
    """torchvision's _make_divisible: the nearest multiple (halves up), not below the divisor nor 10% below v."""
    rounded = max(divisor, int(v + divisor / 2) // divisor * divisor)
    return rounded + divisor if rounded < 0.9 * v else rounded


def regnet_stages(depth: int, w_0: int, w_a: float, w_m: float, group_width: int) -> list[tuple[int, int, int]]:
    """(width, blocks, group width) a stage, as BlockParams.from_init_params derives them (Eq. 2-4 of the paper):
    the linear widths w_0 + w_a * j, each quantised to w_0 * w_m^k (k the nearest whole exponent) and to a
    multiple of 8; runs of one width make a stage; the group width at most the width, which it divides."""
    widths = []
    for j in range(depth):
        k = round(math.log((w_0 + w_a * j) / w_0) / math.log(w_m))
        widths.append(round(w_0 * w_m**k / 8) * 8)
    stages: list[list[int]] = []
    for w in widths:
        if stages and stages[-1][0] == w:
            stages[-1][1] += 1
        else:
            stages.append([w, 1])
    return [(_make_divisible(w, min(group_width, w)), d, min(group_width, w)) for w, d in stages]


def zoo_stages(net: cnndsl.Network) -> list[tuple[int, int, int]]:
    """(width, blocks, group width) of each of the network's four stages, read off its 3x3 group convs."""
    g, stages = net.graph, []
    for i in range(1, 5):
        blocks = [s for s in g.scopes if re.fullmatch(rf"trunk_output\.block{i}\.block{i}-\d+", s)]
        conv = g.node(f"trunk_output.block{i}.block{i}-0.f.b.0")
        stages.append((conv.args["c"], len(blocks), conv.args["c"] // conv.args["groups"]))
    return stages


@pytest.mark.parametrize("name", sorted(REGNET))
def test_regnet_stages_follow_torchvisions_rules(zoo, name):
    assert zoo_stages(zoo(name)) == regnet_stages(*REGNET[name])


def test_regnet_y_squeezes_to_a_quarter_of_the_block_input():
    """torchvision's width_se_out = int(round(0.25 * width_in)); the X models have no SE at all."""
    g = cnndsl.load("regnet_y_800mf").graph
    for name in ("trunk_output.block2.block2-0", "trunk_output.block2.block2-1"):
        width_in = g.node(g.inputs_of(f"{name}.f.a.0")[0]).shape[0]
        assert g.node(f"{name}.f.se.fc1").args["c"] == round(0.25 * width_in)
    assert not any(".se." in n.name for n in cnndsl.load("regnet_x_800mf").graph.nodes())


# ----------------------------------------------------------------------------- ConvNeXt


@pytest.mark.parametrize("name", sorted(CONVNEXT))
def test_convnext_stochastic_depth_grows_linearly_over_the_blocks(zoo, name):
    """torchvision: sd_prob = stochastic_depth_prob * stage_block_id / (total_stage_blocks - 1.0)."""
    total = sum(k.endswith("layer_scale") for k, _ in peer_fixture(name)["state_dict"])  # one a block
    drops = [n for n in zoo(name).graph.nodes() if n.op == "droppath"]
    assert len(drops) == total
    assert [n.args["p"] for n in drops] == pytest.approx([CONVNEXT[name] * k / (total - 1.0) for k in range(total)],
                                                          rel=1e-12, abs=1e-15)
    assert all(n.name.endswith(".droppath1") and n.name.startswith("features.") for n in drops)


def test_convnext_patchify_and_downsampling_convs_do_not_pad():
    """torchvision's stem is 4x4/4 and its downsampling 2x2/2, both with padding 0 (same padding would move the
    stem's windows)."""
    g = cnndsl.load("convnext_tiny").graph
    for name in ("features.0.0", "features.2.1", "features.4.1", "features.6.1"):
        assert g.node(name).args["p"] == ((0, 0), (0, 0))


# ----------------------------------------------------------------------------- lines


@pytest.mark.parametrize(("name", "bar"), [("convnext_large", 10), ("shufflenet_v2_x2_0", 9),
                                           ("regnet_y_32gf", 16), ("regnet_x_400mf", 14)])
def test_a_family_member_takes_few_lines(name, bar):
    """A network's share of the zoo: its line, its family's, its blocks' and the use lines."""
    assert network_lines(name) <= bar


# ----------------------------------------------------------------------------- torchvision itself


def randomise(model, torch) -> None:
    """Batch and layer norms with statistics and affine maps far from the identity, layer scales far from 1e-6."""
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (torch.nn.BatchNorm2d, torch.nn.LayerNorm)):
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.5, 0.5)
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 1.5)
        for key, p in model.named_parameters():
            if key.endswith("layer_scale"):
                p.uniform_(0.1, 0.5)


@pytest.mark.parametrize("name", ["convnext_tiny", "shufflenet_v2_x0_5", "regnet_x_8gf", "regnet_y_400mf"])
def test_computes_what_torchvisions_computes(name):
    """torchvision's own state_dict loads strictly and eval outputs agree (where torchvision is importable, the
    second environment of tests/test_peers.py)."""
    torch = pytest.importorskip("torch")
    tv_models = pytest.importorskip("torchvision.models")
    torch.manual_seed(0)
    peer = getattr(tv_models, name)(weights=None).eval()
    randomise(peer, torch)
    ours = cnndsl.build_torch(cnndsl.load(name)).eval()
    ours.load_state_dict(peer.state_dict(), strict=True)
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        want, got = peer(x), ours(x)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4 * want.abs().max().item())
