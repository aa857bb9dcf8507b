"""The ImageNet ResNet bottleneck space (networks/spaces/resnet50_space.cnn): its first member is ResNet-50.

The figures are checked against the zoo's resnet50, torchvision's models (where torchvision is installed)
and an independent count of a torchvision-layout bottleneck ResNet written out below.
"""

import pytest

import cnndsl
from cnndsl.search.variants import Space

DEPTHS = (("3", "2", "4"), ("4", "2", "3", "6"), ("6", "2", "4", "8", "23"), ("3", "2", "4"))
WIDTHS = ("64", "48", "32")


def bottleneck_resnet_params(layers, base, classes=1000):
    """Parameters of torchvision's ResNet(Bottleneck, layers) with every width scaled by base/64 (weights,
    biases of the fc, BN scale and shift): counted by hand from the layout of the paper's Table 1."""
    total = 3 * base * 7 * 7 + 2 * base  # stem conv and its BN
    cin = base
    for stage, blocks in enumerate(layers):
        c = base * 2 ** stage
        for i in range(blocks):
            total += cin * c + 2 * c + c * c * 9 + 2 * c + c * 4 * c + 2 * 4 * c
            if i == 0 and (stage > 0 or cin != 4 * c):  # the projection shortcut (1x1 conv + BN)
                total += cin * 4 * c + 2 * 4 * c
            cin = 4 * c
    return total + cin * classes + classes


@pytest.fixture(scope="module")
def space():
    return Space.open("resnet50_space")


def choices(space, n1, n2, n3, n4, base):
    picks = [DEPTHS[0].index(n1), DEPTHS[1].index(n2), DEPTHS[2].index(n3), DEPTHS[3].index(n4),
             WIDTHS.index(base)]
    keys = list(space.points)
    assert [space.points[k].options for k in keys] == [*DEPTHS, WIDTHS]  # the order written in the file
    return dict(zip(keys, picks))


def test_first_member_is_the_zoo_resnet50(space):
    first, zoo = space.member(), cnndsl.load("resnet50")
    assert first.valid
    assert (first.params, first.macs) == (zoo.params, zoo.macs) == (25_557_032, 4_089_184_256)
    assert first.network_obj.output_shapes == zoo.output_shapes == [(1000,)]


def test_member_count(space):
    assert space.count() == 3 * 4 * 5 * 3 * 3 == 540


def test_first_member_has_torchvisions_parameters(space):
    models = pytest.importorskip("torchvision.models")
    assert space.member().params == sum(p.numel() for p in models.resnet50().parameters())


@pytest.mark.parametrize("pick", [("3", "4", "23", "3", "64"), ("2", "6", "8", "4", "48"), ("4", "2", "2", "2", "32")])
def test_members_match_an_independent_count(space, pick):
    layers, base = [int(p) for p in pick[:4]], int(pick[4])
    v = space.member(choices(space, *pick))
    assert v.valid and v.params == bottleneck_resnet_params(layers, base)
    if pick == ("3", "4", "23", "3", "64"):  # stage 3 at 23 blocks is ResNet-101 (44.5M parameters)
        assert v.params == cnndsl.load("resnet101").params == 44_549_160


def test_independent_count_is_resnet50():
    assert bottleneck_resnet_params([3, 4, 6, 3], 64) == 25_557_032
