"""Training-only branches (aux heads) at input sizes only eval can run, as torchvision runs Inception v3 at 160.

Eval mode returns the main output alone, so a head too big for the input is left out with a warning, and a
training run of that build is refused at the layer that does not fit. The expected counts are worked out by
hand from the layer sizes, and torchvision's published parameter count for Inception v3.
"""

from __future__ import annotations

import pytest

import cnndsl
from cnndsl.errors import CnnShapeError
from cnndsl.passes import check_training
from cnndsl.tools.cli import main

# At 32x32 both heads fit; at 16x16 the big head's 3x3 valid conv meets a 2x2 map ((8 - 5) // 3 + 1 = 2) while
# the main path (8 -> 6) and the small head still fit; at 4x4 the main path's valid conv meets 2x2.
SOURCE = """\
network t: input 3x32x32
    conv3-8/2 relu
    aux< big: [avgpool5/3 conv3-8(p=valid) gap fc-3] >
    aux< small: [gap fc-2] >
    conv3-8(p=valid) gap fc-3
"""
STEM, MAIN = 9 * 3 * 8 + 8, 9 * 8 * 8 + 8 + 8 * 3 + 3
BIG, SMALL = 9 * 8 * 8 + 8 + 8 * 3 + 3, 8 * 2 + 2


def position(fragment: str) -> tuple[int, int]:
    offset = SOURCE.index(fragment)
    return SOURCE.count("\n", 0, offset) + 1, offset - (SOURCE.rfind("\n", 0, offset) + 1) + 1


def test_a_head_the_input_fits_is_kept():
    net = cnndsl.loads(SOURCE)
    assert len(net.graph.outputs) == 3 and net.params == STEM + MAIN + BIG + SMALL
    assert net.graph.unfit_training == [] and check_training(net.graph) is net.graph


def test_a_head_too_big_for_the_input_is_left_out_with_a_warning():
    net = cnndsl.loads(SOURCE, "t.cnn", input_shape=(3, 16, 16))
    assert net.output_shapes == [(3,), (2,)]  # the main output and the small head
    assert net.params == STEM + MAIN + SMALL and not any(n.name.startswith("big.") for n in net.graph.nodes())
    (w,) = [w for w in net.warnings if "aux head" in w.message]
    assert (w.span.line, w.span.col) == position("conv3-8(p=valid) gap fc-3]")
    assert "'big.3'" in w.message and "at 'big.1'" in w.message and "3x16x16" in w.message and "runs only in training" in w.message
    with pytest.raises(CnnShapeError) as e:  # training that build would train another network
        check_training(net.graph)
    assert (e.value.span.line, e.value.span.col) == position("conv3-8(p=valid) gap fc-3]")
    assert "cannot train 't' at 3x16x16" in e.value.message


def test_the_main_path_is_still_checked():
    with pytest.raises(CnnShapeError) as e:
        cnndsl.loads(SOURCE, input_shape=(3, 4, 4))
    assert (e.value.span.line, e.value.span.col) == position("conv3-8(p=valid) gap fc-3\n")


def test_training_refuses_the_build_without_its_head():
    from cnndsl.train.data import classified_network

    with pytest.raises(CnnShapeError, match="aux head 'big.3' runs in training"):
        classified_network(cnndsl.loads(SOURCE, input_shape=(3, 16, 16)), 3, {})


def test_check_warns_and_passes(capsys, tmp_path):
    path = tmp_path / "t.cnn"
    path.write_text(SOURCE, encoding="utf-8")
    assert main(["check", str(path), "--input", "3x16x16"]) == 0
    out, err = capsys.readouterr()
    line, col = position("conv3-8(p=valid) gap fc-3]")
    assert f"{path}:{line}:{col}: warning: the aux head 'big.3'" in err and ": ok (t:" in out


# torchvision's Inception_V3_Weights.IMAGENET1K_V1 lists 27,161,264 parameters (aux head included). Its
# InceptionAux(768, classes): conv0 1x1 768 -> 128 (no bias) + bn, conv1 5x5 128 -> 768 (no bias) + bn, fc.
TV_INCEPTION_V3 = 27_161_264
TV_AUX = (768 * 128 + 2 * 128) + (128 * 768 * 25 + 2 * 768) + (768 * 1000 + 1000)


def test_inception_v3_loads_at_160_as_torchvision_evaluates_it(zoo):
    assert zoo("inception_v3").params == TV_INCEPTION_V3
    net = cnndsl.load("inception_v3", input_shape=(3, 160, 160))
    assert net.output_shapes == [(1000,)] and net.params == TV_INCEPTION_V3 - TV_AUX
    assert any("aux head 'AuxLogits.fc'" in w.message for w in net.warnings)
    with pytest.raises(CnnShapeError, match="cannot train 'inception_v3' at 3x160x160"):
        check_training(net.graph)


@pytest.mark.slow
def test_inception_v3_runs_eval_at_160():
    torch = pytest.importorskip("torch")
    model = cnndsl.build_torch(cnndsl.load("inception_v3", input_shape=(3, 160, 160))).eval()
    with torch.no_grad():
        assert model(torch.randn(1, 3, 160, 160)).shape == (1, 1000)
