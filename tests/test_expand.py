"""`cnndsl expand` round-trips: expanded text loads to the same graph, shapes and counts."""

import pytest
from conftest import zoo_names

import cnndsl
from cnndsl.expand import expand


@pytest.mark.parametrize("name", zoo_names())
def test_expand_round_trips(zoo, name):
    net = zoo(name)
    text = expand(net)
    again = cnndsl.loads(text, f"{name}.expanded.cnn")
    assert again.graph.signature() == net.graph.signature()
    assert (again.params, again.macs, again.activations) == (net.params, net.macs, net.activations)
    assert expand(again).splitlines()[1:] == text.splitlines()[1:]  # a fixed point (bar the header comment)


def test_expand_spells_out_defaults_and_shortcuts():
    net = cnndsl.loads("""
        block unit(c, s=1): residual< conv3-{c}/{s} bn relu conv3-{c} bn > relu
        network t with conv(act=relu): input 3x8x8
            conv3-4 unit(8, 2) fc-10
    """)
    text = expand(net)
    assert "relu1: relu" in text  # the default activation after conv1
    assert "unit1.downsample.0: conv(c=8, k=(1, 1), s=(2, 2)" in text  # the projection shortcut
    assert "fc1: fc(c=10, bias=true)" in text and "relu" not in text.split("fc1:")[1]  # logits stay linear


def test_expand_keeps_aux_outputs_and_skips():
    net = cnndsl.loads("""
        network t: input 3x16x16
            stem: conv3-8  conv3-8/2  aux< gap fc-3 >  conv3-8 deconv2-8/2  concat< @stem | identity >
    """)
    again = cnndsl.loads(expand(net))
    assert again.graph.outputs == net.graph.outputs == ["concat1", "fc1"]
