"""The lecture notes' (seeds') worked examples of conv arithmetic, through ``cnndsl.loads``.

Each expected number is the one the slides print (000_*.txt, 001_*.txt, 002_*.txt),
with the slides' own formula written out beside it.
"""

from __future__ import annotations

import pytest

import cnndsl


def net(body: str, shape: str) -> cnndsl.Network:
    return cnndsl.loads(f"network t: input {shape}\n    {body}\n")


def test_ten_5x5_filters_stride_1_pad_2():
    """001: 32x32x3 input, ten 5x5 filters, stride 1, pad 2 -> 32x32x10; (5*5*3 + 1) * 10 = 760 parameters."""
    n = net("conv5-10/1(p=2)", "3x32x32")
    assert n.output_shapes == [(10, 32, 32)]
    assert n.params == (5 * 5 * 3 + 1) * 10 == 760


@pytest.mark.parametrize("stride, size", [(1, 5), (2, 3)])
def test_7x7_input_3x3_filter(stride, size):
    """001: N = 7, F = 3: stride 1 => (7 - 3)/1 + 1 = 5; stride 2 => (7 - 3)/2 + 1 = 3; no warning."""
    n = net(f"conv3-1/{stride}(valid)", "1x7x7")
    assert n.output_shapes == [(1, size, size)]
    assert n.warnings == []


def test_7x7_input_stride_3_does_not_fit():
    """001: stride 3 => (7 - 3)/3 + 1 = 2.33 "doesn't fit": a warning that states the floor it takes."""
    n = net("conv3-1/3(valid)", "1x7x7")
    assert n.output_shapes == [(1, 2, 2)]
    assert len(n.warnings) == 2  # rows and columns
    for w in n.warnings:
        assert "doesn't fit" in w.message and "2.33" in w.message and "floor, 2" in w.message
        assert (w.span.line, w.span.col) == (2, 5)
    assert str(n.warnings[0]).startswith("<string>:2:5: warning:")


def test_5x5_conv_without_1x1_reduction():
    """000: 14x14x480 -> 5x5 conv, 48 filters: 48*480*5*5 = 0.5M parameters, 14*14*480*5*5*48 = 113M ops."""
    n = net("conv5-48(nobias)", "480x14x14")
    assert n.output_shapes == [(48, 14, 14)]
    assert n.params == 48 * 480 * 5 * 5 == 576_000
    assert n.macs == 14 * 14 * 480 * 5 * 5 * 48 == 112_896_000
    assert round(n.macs / 1e6) == 113


def test_5x5_conv_with_1x1_reduction():
    """000: with a 1x1-16 first: 14*14*480*16 + 14*14*16*5*5*48 = 5.3M ops."""
    n = net("conv1-16(nobias) conv5-48(nobias)", "480x14x14")
    assert n.output_shapes == [(48, 14, 14)]
    assert n.macs == 14 * 14 * 480 * 16 + 14 * 14 * 16 * 5 * 5 * 48 == 5_268_480
    assert round(n.macs / 1e6, 1) == 5.3


def test_naive_inception_module():
    """000: naive inception on 28x28x256 with 1x1-128, 3x3-192, 5x5-96 and 3x3 max pooling: 854M ops."""
    n = net("concat< conv1-128 | conv3-192 | conv5-96 | maxpool3/1(p=1) >", "256x28x28")
    assert n.output_shapes == [(128 + 192 + 96 + 256, 28, 28)]
    assert n.macs == 28 * 28 * (128 * 1 * 1 + 192 * 3 * 3 + 96 * 5 * 5) * 256 == 854_196_224
    assert round(n.macs / 1e6) == 854


def test_output_size_formula():
    """000: n_out = floor((n_in + 2p - k) / s) + 1, over a grid of sizes, kernels, paddings and strides."""
    for n_in in (7, 8, 15, 32):
        for k in (1, 3, 5):
            for p in (0, 1, 2):
                for s in (1, 2, 3):
                    if k > n_in + 2 * p:
                        continue
                    out = net(f"conv{k}-1/{s}(p={p})", f"1x{n_in}x{n_in}").output_shapes[0]
                    assert out[1] == (n_in + 2 * p - k) // s + 1
