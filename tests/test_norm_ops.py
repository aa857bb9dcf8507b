"""Layer norm, group norm, layer scale and the pointwise linear: JAX and Flax NNX against torch.nn's own modules.

The reference is written here from the IR with ``torch.nn`` (``nn.LayerNorm`` on a channels-last map,
``nn.GroupNorm``, ``nn.Linear`` at each position, a bare C x 1 x 1 parameter), so it shares no code with
the backends. Its ``state_dict`` is the one torchvision's ConvNeXt blocks have: the layer's dotted name plus
the module's keys, and for a layer scale the layer's name itself. Weights move through the converters
(``backends/jax_weights.py``, ``torch_to_flax`` / ``flax_to_torch``) both ways.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
jax = pytest.importorskip("jax")
nnx = pytest.importorskip("flax.nnx")

from cnndsl.backends.flax import flax_to_torch, torch_to_flax
from cnndsl.backends.jax_weights import flattens_channel_major, jax_to_torch, rearrange, torch_to_jax
from torch import nn

import cnndsl
from cnndsl import CnnDslError

TOL = 1e-5  # relative to the output's largest magnitude
PEERS = Path(__file__).parent / "peers" / "fixtures"

CNBLOCK = """
block cnblock(c):
    residual< conv7-{c}(groups=c) ln(eps=1e-6) pointwise-{4*c} relu pointwise-{c} layerscale >
"""

CASES = {
    "layernorm_over_channels": "network t: input 6x5x4 conv3-8 ln relu conv1-4",
    "layernorm_no_affine": "network t: input 6x5x4 conv3-8 ln(eps=1e-6, affine=false) conv1-4",
    # over a flattened map: the JAX backend holds the vector in (H, W, C) order, so its weights are reordered
    "layernorm_over_a_flat_vector": "network t: input 4x3x3 conv3-6 flatten ln fc-5",
    "groupnorm": "network t: input 8x5x5 conv3-12 gn(3) relu groupnorm(12, eps=1e-3, affine=false) conv1-2",
    "groupnorm_over_a_flat_vector": "network t: input 4x3x3 conv3-6 flatten gn(2) fc-5",
    "pointwise_and_layerscale": "network t: input 6x4x4 pointwise-10 relu pointwise-6(nobias) layerscale(0.5)",
    "convnext_blocks": CNBLOCK + "network t: input 3x9x9\n    conv2-16/2(valid) ln(eps=1e-6) cnblock(16) x2 gap ln fc-3",
}


class Reference:
    """The network of a checked IR as torch.nn modules, with random weights: ``forward`` and ``state_dict``."""

    def __init__(self, net, seed: int = 0):
        self.graph = g = net.graph
        gen = torch.Generator().manual_seed(seed)
        self.layers: dict[str, nn.Module | nn.Parameter] = {}
        for node in g.nodes():
            a, ins = node.args, [g.node(s).shape for s in g.inputs_of(node.name)]
            if node.op == "conv":
                (top, bottom), (left, right) = a["p"]
                assert top == bottom and left == right, "the reference takes symmetric padding"
                layer = nn.Conv2d(ins[0][0], a["c"], a["k"], a["s"], (top, left), a["d"], a["groups"], a["bias"])
            elif node.op == "fc":
                layer = nn.Linear(math.prod(ins[0]), a["c"], a["bias"])
            elif node.op == "pointwise":
                layer = nn.Linear(ins[0][0], a["c"], a["bias"])
            elif node.op == "layernorm":
                layer = nn.LayerNorm(ins[0][0], eps=a["eps"], elementwise_affine=a["affine"])
            elif node.op == "groupnorm":
                layer = nn.GroupNorm(a["groups"], ins[0][0], eps=a["eps"], affine=a["affine"])
            elif node.op == "layerscale":
                layer = nn.Parameter(torch.full((ins[0][0], 1, 1), a["init"]))
            else:
                continue
            with torch.no_grad():  # kernels around 0; scales, biases and layer scales around 1
                for p in [layer] if isinstance(layer, nn.Parameter) else layer.parameters():
                    p.copy_(torch.randn(p.shape, generator=gen) * 0.3 if p.dim() in (2, 4) else
                            torch.rand(p.shape, generator=gen) + 0.5)
            self.layers[node.name] = layer

    def state_dict(self) -> dict:
        out = {}
        for name, layer in self.layers.items():
            if isinstance(layer, nn.Parameter):
                out[name] = layer.detach().clone()  # a bare parameter of the module around it
            else:
                out.update({f"{name}.{k}": v.clone() for k, v in layer.state_dict().items()})
        return out

    def load_state_dict(self, state: dict) -> None:
        assert set(state) == set(self.state_dict()), sorted(set(state) ^ set(self.state_dict()))
        with torch.no_grad():
            for name, layer in self.layers.items():
                if isinstance(layer, nn.Parameter):
                    assert state[name].shape == layer.shape
                    layer.copy_(state[name])
                else:
                    layer.load_state_dict({k[len(name) + 1:]: v for k, v in state.items()
                                           if k.rsplit(".", 1)[0] == name}, strict=True)

    def count(self) -> int:
        return sum(p.numel() for layer in self.layers.values()
                   for p in ([layer] if isinstance(layer, nn.Parameter) else layer.parameters()))

    @torch.no_grad()
    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        g, values = self.graph, {}
        for node in g.nodes():
            xs = [values[s] for s in g.inputs_of(node.name)]
            layer = self.layers.get(node.name)
            if node.op == "input":
                y = x
            elif node.op in ("conv", "groupnorm"):
                y = layer(xs[0])
            elif node.op == "fc":
                y = layer(xs[0].flatten(1))
            elif node.op in ("pointwise", "layernorm") and xs[0].dim() == 4:  # channels-last, as torchvision's
                y = layer(xs[0].permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
            elif node.op == "layernorm":
                y = layer(xs[0])
            elif node.op == "layerscale":
                y = layer * xs[0]
            elif node.op == "relu":
                y = torch.relu(xs[0])
            elif node.op == "gap":
                y = xs[0].mean((2, 3), keepdim=True)
            elif node.op == "flatten":
                y = xs[0].flatten(1)
            elif node.op == "add":
                assert node.args["scale"] == 1.0
                y = sum(xs[1:], xs[0])
            else:
                raise AssertionError(f"the reference has no {node.op}")
            values[node.name] = y
        return values[g.output]


def _nhwc(x: np.ndarray) -> np.ndarray:
    return x.transpose(0, 2, 3, 1) if x.ndim == 4 else x


def _nchw(y) -> np.ndarray:
    y = np.asarray(y)
    return y.transpose(0, 3, 1, 2) if y.ndim == 4 else y


def _batch(net, seed: int = 0) -> np.ndarray:
    return np.random.RandomState(seed).randn(2, *net.input_shape).astype(np.float32)


def _error(out: np.ndarray, ref: np.ndarray) -> float:
    assert out.shape == ref.shape
    return float(np.abs(out - ref).max() / np.abs(ref).max())


def _same_state(a: dict, b: dict) -> None:
    assert set(a) == set(b), sorted(set(a) ^ set(b))
    for k, v in a.items():
        assert v.shape == b[k].shape and v.dtype == b[k].dtype, k
        assert torch.equal(v, b[k]), k


@pytest.fixture(scope="module", params=sorted(CASES))
def case(request):
    net = cnndsl.loads(CASES[request.param])
    return request.param, net, Reference(net)


def test_the_flat_cases_take_the_flatten_order_they_are_about():
    # a layer norm's weights follow the NHWC flatten order; a group norm's groups make JAX flatten as PyTorch does
    assert not flattens_channel_major(cnndsl.loads(CASES["layernorm_over_a_flat_vector"]).graph)
    assert flattens_channel_major(cnndsl.loads(CASES["groupnorm_over_a_flat_vector"]).graph)


def test_jax_matches_torch(case):
    _, net, ref = case
    x = _batch(net)
    variables = torch_to_jax(net, ref.state_dict())
    out = _nchw(jax.jit(cnndsl.build_jax(net).apply)(variables, _nhwc(x)))
    assert _error(out, ref(torch.from_numpy(x)).numpy()) < TOL


def test_flax_matches_torch(case):
    _, net, ref = case
    x = _batch(net)
    model = torch_to_flax(net, ref.state_dict())
    model.eval()
    out = _nchw(model(_nhwc(x)))
    assert _error(out, ref(torch.from_numpy(x)).numpy()) < TOL


def test_weights_round_trip_exactly(case):
    _, net, ref = case
    state = ref.state_dict()
    _same_state(jax_to_torch(net, torch_to_jax(net, state)), state)
    _same_state(flax_to_torch(net, torch_to_flax(net, state)), state)


def _perturbed(tree, seed: int):
    """Every array of a tree plus noise, so that no scale is 1 and no bias 0."""
    leaves, treedef = jax.tree.flatten(tree)
    rs = np.random.RandomState(seed)
    return jax.tree.unflatten(treedef, [np.asarray(v) + rs.uniform(0.1, 0.5, np.shape(v)).astype(np.float32)
                                        for v in leaves])


def test_jax_and_flax_weights_run_in_torch(case):
    """The other way: each JAX backend's own weights (perturbed), converted to a state_dict, give torch the
    same outputs."""
    _, net, ref = case
    x = _batch(net, 1)
    model = cnndsl.build_jax(net)
    variables = _perturbed(model.init(jax.random.key(0)), 0)
    ref.load_state_dict(jax_to_torch(net, variables))
    out = _nchw(model.apply(variables, _nhwc(x)))
    assert _error(out, ref(torch.from_numpy(x)).numpy()) < TOL

    flax_model = cnndsl.build_flax(net, seed=1)
    graphdef, params, rest = nnx.split(flax_model, nnx.Param, ...)
    flax_model = nnx.merge(graphdef, _perturbed(params, 1), rest)
    flax_model.eval()
    ref.load_state_dict(flax_to_torch(net, flax_model))
    out = _nchw(flax_model(_nhwc(x)))
    assert _error(out, ref(torch.from_numpy(x)).numpy()) < TOL


def test_parameter_counts_equal_torchs(case):
    _, net, ref = case
    n_jax = sum(np.size(v) for v in jax.tree.leaves(cnndsl.build_jax(net).init(jax.random.key(0))["params"]))
    n_flax = sum(np.size(v) for v in jax.tree.leaves(nnx.state(cnndsl.build_flax(net), nnx.Param)))
    assert net.params == ref.count() == n_jax == n_flax


def _torchvision(name: str) -> dict:
    return json.loads((PEERS / f"{name}.json").read_text())


CONVNEXT_TINY = CNBLOCK + """
network convnext_tiny_like: input 3x224x224
    conv4-96/4(valid) ln(eps=1e-6)
    cnblock(96) x3
    ln(eps=1e-6) conv2-192/2(valid)
    cnblock(192) x3
    ln(eps=1e-6) conv2-384/2(valid)
    cnblock(384) x9
    ln(eps=1e-6) conv2-768/2(valid)
    cnblock(768) x3
    gap ln(eps=1e-6) fc-1000
"""


def test_convnext_tiny_counts_equal_torchvisions_and_fvcores():
    peer = _torchvision("convnext_tiny")
    net = cnndsl.loads(CONVNEXT_TINY)
    nodes = list(net.graph.nodes())
    assert net.params == peer["params"] == 28_589_128
    assert sum(n.macs for n in nodes if n.op == "conv") == peer["fvcore_by_op"]["conv"]
    assert sum(n.macs for n in nodes if n.op in ("pointwise", "fc")) == peer["fvcore_by_op"]["linear"]


def test_convnext_tiny_tensors_have_torchvisions_shapes():
    """The state_dict that the converter makes from JAX variables holds torchvision's tensor shapes: a layer
    scale C x 1 x 1, the channels-last Linear's 2-D weight, LayerNorm2d's vectors (the names are the labels')."""
    peer = _torchvision("convnext_tiny")
    net = cnndsl.loads(CONVNEXT_TINY)
    shapes = jax.eval_shape(cnndsl.build_jax(net).init, jax.random.key(0))
    variables = jax.tree.map(lambda s: np.zeros(s.shape, np.float32), shapes)
    ours = jax_to_torch(net, variables)
    assert Counter(tuple(v.shape) for v in ours.values()) == Counter(tuple(s) for _, s in peer["state_dict"])
    theirs = {k: tuple(s) for k, s in peer["state_dict"]}
    assert tuple(ours["cnblock1.layerscale1"].shape) == theirs["features.1.0.layer_scale"] == (96, 1, 1)
    assert tuple(ours["cnblock1.pointwise1.weight"].shape) == theirs["features.1.0.block.3.weight"] == (384, 96)
    assert tuple(ours["layernorm1.weight"].shape) == theirs["features.0.1.weight"] == (96,)


def test_layouts_transpose_as_einops_writes_them():
    w = np.arange(2 * 3 * 5 * 7).reshape(2, 3, 5, 7)  # a conv weight: o i h w
    np.testing.assert_array_equal(rearrange(w, "o i h w", "h w i o"), w.transpose(2, 3, 1, 0))
    np.testing.assert_array_equal(rearrange(np.arange(4).reshape(4, 1, 1), "c 1 1", "c"), np.arange(4))
    d = np.arange(4 * 3 * 2 * 2).reshape(4, 3, 2, 2)  # a deconv weight, 2 groups: (g i) o h w
    k = rearrange(d, "(g i) o h w", "h w i (g o)", {"g": 2})
    assert k.shape == (2, 2, 2, 6)
    for g in range(2):
        for i in range(2):
            for o in range(3):
                np.testing.assert_array_equal(k[:, :, i, g * 3 + o], d[g * 2 + i, o])
    np.testing.assert_array_equal(rearrange(k, "h w i (g o)", "(g i) o h w", {"g": 2}), d)
    with pytest.raises(ValueError, match="expected 4 axes"):
        rearrange(np.zeros((3, 4)), "o i h w", "h w i o", key="conv1.weight")


ERRORS = {
    "network t: input 8x6x6\n    conv3-12 gn(5)":
        (2, 14, "12 channels do not split into 5 groups for 'groupnorm'", "groupnorm(4)"),
    "network t: input 8x6x6\n    conv3-8 groupnorm":
        (2, 13, "'groupnorm' needs the argument 'groups'", "groupnorm(32)"),
    "network t: input 8x6x6\n    gap flatten layerscale":
        (2, 17, "'layerscale' needs a feature map (C x H x W), got a flat vector of 8", "flattened"),
    "network t: input 8x6x6\n    flatten pointwise-4":
        (2, 13, "'pointwise' needs a feature map (C x H x W), got a flat vector of 288", "fc-4"),
    "network t: input 8x6x6\n    ln(affine=2)": (2, 5, "'affine' must be true or false, got 2", None),
}


@pytest.mark.parametrize("text", sorted(ERRORS))
def test_errors_point_at_the_layer(text):
    line, col, message, hint = ERRORS[text]
    with pytest.raises(CnnDslError) as info:
        cnndsl.loads(text)
    err = info.value
    assert message in str(err)
    assert (err.span.line, err.span.col) == (line, col), err.span
    if hint:
        assert hint in (err.hint or ""), err.hint
