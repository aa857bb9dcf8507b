"""The inference build (dropout and aux heads stripped, batch norms folded into convolutions).

For every zoo network, the inference build loaded with weights converted from a
training build's ``state_dict`` computes what the training build computes in
eval mode. The comparison runs in float64, so that the 1e-5 relative bound
measures the rewrite and not float32 rounding (the folded and unfolded orders
of operations round differently; in float32 deep ResNets drift by ~1e-6).
Inputs are shrunk where the network allows, to keep the test fast.
"""

from __future__ import annotations

import pytest
from cnndsl.backends.torch_weights import fold_state_dict  # torch state_dict keys, but no torch import

import cnndsl
from cnndsl import CnnDslError, api

torch = pytest.importorskip("torch")

from conftest import zoo_names

SIZES = (32, 64, 75, 96, 188)  # small spatial sizes to try before the network's own


def small_network(name: str) -> cnndsl.Network:
    """The network with the smallest of SIZES it accepts as input (else its own input size)."""
    native = cnndsl.load(name)
    if len(native.input_shape) != 3:
        return native
    c, h, _ = native.input_shape
    for size in SIZES:
        if size >= h:
            break
        try:
            return cnndsl.load(name, input_shape=(c, size, size))
        except CnnDslError:
            continue
    return native


def randomise_bn(model) -> None:
    """Give every batch norm statistics and an affine map far from the identity."""
    gen = torch.Generator().manual_seed(0)
    for m in model.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            n = m.num_features
            m.running_mean.copy_(torch.randn(n, generator=gen, dtype=m.running_mean.dtype) * 0.5)
            m.running_var.copy_(torch.rand(n, generator=gen, dtype=m.running_var.dtype) + 0.5)
            if m.affine:
                m.weight.data.copy_(torch.rand(n, generator=gen, dtype=m.weight.dtype) + 0.5)
                m.bias.data.copy_(torch.randn(n, generator=gen, dtype=m.bias.dtype) * 0.2)


# Two float64 copies and their state_dicts: ConvNeXt-L and RegNetY-128GF (198M and 645M parameters) would take
# 6 and 20 GiB, so they run with --runslow, as do the other networks over 100M parameters (3-5 s each, whose
# layers the smaller members of their families fold alike); vgg11_bn stays, the VGG stack with batch norms.
BIG = {"convnext_large", "regnet_y_128gf", "efficientnet_v2_l", "regnet_x_32gf", "regnet_y_32gf",
       "wide_resnet101_2", "vgg", "vgg_bn", "vgg11", "vgg11_lrn", "vgg13", "vgg13_bn", "vgg16", "vgg16_bn",
       "vgg16_c", "vgg19", "vgg19_bn"}


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow) if n in BIG else n for n in zoo_names()])
def test_inference_build_equals_training_build(name):
    torch.manual_seed(0)
    net = small_network(name)
    train = api.build_torch(net).double().eval()
    randomise_bn(train)
    infer = api.build_torch(net, inference=True, state_dict=train.state_dict()).double()
    x = torch.randn(1, *net.input_shape, dtype=torch.float64)
    with torch.no_grad():
        want = train(x)
        got = infer(x)
    if isinstance(want, (tuple, list)):
        want = want[0]
    assert not isinstance(got, (tuple, list)), "the inference build has a single output"
    assert got.shape == want.shape
    scale = want.abs().max().clamp_min(1e-30)
    assert ((got - want).abs().max() / scale).item() <= 1e-5

    inf_net = api.inference_network(net)
    ops = {n.op for n in inf_net.graph.nodes()}
    assert "dropout" not in ops and not inf_net.graph.aux_outputs
    folded = sum(1 for n in inf_net.graph.nodes() if "folded_from" in n.meta)
    main_path = net.graph.ancestors([net.graph.output])
    bns = sum(1 for n in net.graph.nodes() if n.op == "bn" and n.name in main_path)
    assert bns == sum(1 for n in inf_net.graph.nodes() if n.op == "bn") + folded
    # the parameter count drops by exactly the folded batch norms' scale and shift, less the new conv biases
    assert inf_net.params == sum(p.numel() for p in infer.parameters())


def test_fold_matches_torch_fusion_helper():
    """The folded weights agree with torch's own ``fuse_conv_bn_weights`` (an independent implementation)."""
    from torch.nn.utils.fusion import fuse_conv_bn_weights

    net = cnndsl.loads("network t with conv(bias=false): input 3x8x8  c: conv3-4  b: bn(eps=0.001)  relu")
    train = api.build_torch(net).double().eval()
    randomise_bn(train)
    sd = train.state_dict()
    folded = fold_state_dict(api.inference_network(net).graph, sd)
    w, b = fuse_conv_bn_weights(sd["c.weight"], None, sd["b.running_mean"], sd["b.running_var"], 1e-3,
                                sd["b.weight"], sd["b.bias"])
    assert torch.allclose(folded["c.weight"], w, rtol=1e-12, atol=0)
    assert torch.allclose(folded["c.bias"], b, rtol=1e-12, atol=1e-15)
    assert set(folded) == {"c.weight", "c.bias"}


def test_inference_source_has_no_batch_norm_or_dropout():
    src = api.compile("googlenet_torchvision", inference=True)
    assert "BatchNorm" not in src and "Dropout" not in src and "aux" not in src.lower().replace("auxiliary", "")
