"""PyTorch and JAX agree: same weights (moved by cnndsl.backends.jax_weights), same numbers.

The torch backend's generated model is the reference (its layers are torch.nn's own
modules); each case converts its weights to JAX, runs both, and compares.
"""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
jax = pytest.importorskip("jax")

from cnndsl.backends.jax import _nhwc
from cnndsl.backends.jax_weights import jax_to_torch, torch_to_jax
from torch_helpers import randomise_batch_norms

import cnndsl
from cnndsl.front.loader import zoo_index
from cnndsl.ir.vocabulary import activation_words

RTOL = 1e-4  # relative to the output's largest magnitude


def to_torch_layout(a: np.ndarray) -> np.ndarray:
    return a.transpose(0, 3, 1, 2) if a.ndim == 4 else a


def compare(net, batch: int = 2, seed: int = 0, jit: bool = True) -> float:
    """Largest |jax - torch| over the largest |torch|, eval mode, weights converted torch -> jax."""
    torch.manual_seed(seed)
    tm = cnndsl.build_torch(net).eval()
    randomise_batch_norms(tm, seed)
    variables = torch_to_jax(net, tm.state_dict())
    jm = cnndsl.build_jax(net)
    rs = np.random.RandomState(seed)
    xs = [rs.randn(batch, *net.graph.node(i).shape).astype(np.float32) for i in net.graph.inputs]
    with torch.no_grad():
        ref = tm(*map(torch.from_numpy, xs)).numpy()
    apply = jax.jit(jm.apply) if jit else jm.apply
    out = to_torch_layout(np.asarray(apply(variables, *(x.transpose(0, 2, 3, 1) if x.ndim == 4 else x for x in xs))))
    assert out.shape == ref.shape == (batch, *net.output_shapes[0])
    return float(np.abs(out - ref).max() / np.abs(ref).max())


# One network per tricky semantic: each against torch.nn's own layers.
OP_CASES = {
    "deconv": "input 4x7x6  deconv3-6/2(p=1, output_padding=1, groups=2) relu deconv(c=3, k=(2, 3), s=(1, 2), d=2) "
              "deconv4-5/3(p=2)",
    "avgpool_ceil": "input 3x10x9  avgpool3/2(p=1, ceil) avgpool(k=3, s=2, p=1, ceil=true, count_include_pad=false) "
                    "avgpool2/2(ceil)",
    "maxpool_ceil": "input 3x10x9  maxpool3/2(p=1, ceil) maxpool3/2(ceil) maxpool(k=2, s=1, p=((0, 1), (1, 0)))",
    "avgpool_uneven": "input 3x10x9  avgpool(k=2, s=1, p=((0, 1), (1, 0))) avgpool(k=3, s=2, p=1, count_include_pad=false)",
    "adaptive": "input 3x10x9  adaptiveavgpool((4, 6)) conv1-4 adaptiveavgpool(3) fc-5",
    "lrn": "input 8x5x5  lrn(size=4, alpha=0.01, beta=0.6, k=1.5) lrn(3) lrn",
    "conv": "input 4x11x10  conv4-6 conv3-6/2(groups=3) conv(c=4, k=(3, 2), d=(2, 1), s=(1, 2)) "
            "conv5-8(p=((1, 3), (0, 2))) relu",
    "dilation": "input 2x9x9  conv(c=3, k=3, d=2, p=same) conv(c=3, k=2, p=same) "
                "deconv(c=2, k=3, s=2, p=2, d=2, output_padding=1)",
    "padshortcut": "input 4x9x9  residual(shortcut=pad)< conv3-8/2 bn relu conv3-8 bn > relu padshortcut(c=12, s=3)",
    "crop_add_scale": "input 3x12x12  a: conv3-4(valid) b: conv5-2(valid) concat(crop=true)< @a | @b | maxpool2/1 > "
                      "add< conv1-8 | identity > residual(scale=0.3)< conv1-8 >",
    "bn_on_flattened_map": "input 3x4x5  conv1-6 flatten bn relu dropout fc-7 bn(affine=false) sigmoid",
    "concat_of_flattened": "input 3x4x5  a: conv1-2 b: [flatten fc-5] concat< @a flatten | identity > fc-4 tanh softmax",
    "flattened_output": "input 3x4x5  conv1-2 relu flatten",
    "add_of_flattened": "input 3x2x2  conv1-2 f: flatten add< @f | fc-8 > fc-3",
    "flat_input": "input 20  fc-10 bn relu fc-3 softmax",
    "gap_softmax": "input 3x6x6  conv3-5 gap softmax",
}


@pytest.mark.parametrize("case", sorted(OP_CASES))
def test_op_semantics_match_torch(case):
    net = cnndsl.loads(f"network t: {OP_CASES[case]}")
    assert compare(net, batch=3, jit=False) < RTOL


@pytest.mark.parametrize("case", ["deconv", "bn_on_flattened_map", "concat_of_flattened", "conv"])
def test_weights_round_trip(case):
    net = cnndsl.loads(f"network t: {OP_CASES[case]}")
    tm = cnndsl.build_torch(net)
    randomise_batch_norms(tm)
    back = jax_to_torch(net, torch_to_jax(net, tm.state_dict()))
    assert back.keys() == tm.state_dict().keys()
    for key, value in tm.state_dict().items():
        assert torch.equal(back[key].to(value.dtype), value), key
    tm.load_state_dict(back, strict=True)


def test_training_mode_batch_norm_and_running_statistics_match_torch():
    net = cnndsl.loads("network t: input 3x8x8  conv3-4 bn(momentum=0.3) relu residual< conv3-4 bn relu > "
                       "flatten bn fc-5 bn(affine=false, eps=0.001)")
    tm = cnndsl.build_torch(net).train()
    randomise_batch_norms(tm)
    variables = torch_to_jax(net, tm.state_dict())
    x = np.random.RandomState(0).randn(6, *net.input_shape).astype(np.float32)
    ref = tm(torch.from_numpy(x)).detach().numpy()  # updates tm's running statistics
    out, stats = jax.jit(cnndsl.build_jax(net).apply, static_argnames="train")(variables, x.transpose(0, 2, 3, 1),
                                                                              train=True)
    assert np.abs(np.asarray(out) - ref).max() < 1e-4 * np.abs(ref).max()
    expected = torch_to_jax(net, tm.state_dict())["batch_stats"]
    for want, got in zip(jax.tree_util.tree_leaves(expected), jax.tree_util.tree_leaves(stats)):
        np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-5, atol=1e-6)


# The zoo: every network, big ones at batch 1. The default run keeps one of each family's
# distinctive features (LRN, groups, ceil pooling, aux heads, crop-concat, deconv, option A shortcuts);
# the rest (same ops, only bigger) run with --runslow.
DEFAULT_ZOO = {"lenet5", "resnet20", "resnet18", "alexnet", "googlenet_torchvision", "vgg11", "unet"}
# Reduced inputs where the network allows it (same weights, same code, a quarter of the work).
SMALL_INPUT = {"unet": (1, 188, 188)}


@pytest.mark.parametrize("name", [n if n in DEFAULT_ZOO else pytest.param(n, marks=pytest.mark.slow)
                                  for n in sorted(zoo_index())])
def test_zoo_network_matches_torch(name):
    net = cnndsl.load(name, input_shape=SMALL_INPUT.get(name))
    assert compare(net, batch=1) < RTOL


def test_converted_fc_rows_follow_the_flatten_order():
    """The first fc after a feature map: PyTorch flattens (C, H, W), the JAX backend (H, W, C)."""
    net = cnndsl.loads("network t: input 2x2x3  fc-1(nobias)")
    w = torch.arange(12, dtype=torch.float32)[None]  # weight of input (c, h, w) is 6c + 3h + w
    kernel = np.asarray(torch_to_jax(net, {"fc1.weight": w})["params"]["fc1"]["kernel"])[:, 0]
    # JAX's element (h, w, c) sits at 2*(3h + w) + c of its flattened vector
    expected = [6 * c + 3 * h + ww for h in range(2) for ww in range(3) for c in range(2)]
    assert kernel.tolist() == expected


def test_nhwc_shapes_helper():
    assert _nhwc((3, 4, 5)) == (4, 5, 3) and _nhwc((7,)) == (7,)


# ----------------------------------------------------------------------------- random networks

hypothesis = pytest.importorskip("hypothesis")
st = hypothesis.strategies


def _map_step(draw, c: int) -> str:
    """One random layer or combinator for a C-channel feature map, in .cnn text."""
    kind = draw(st.sampled_from(["conv", "conv", "deconv", "maxpool", "avgpool", "bn", "act", "lrn", "residual",
                                 "residual_proj", "concat", "crop", "add", "adaptive", "padshortcut", "fc", "gap",
                                 "dropout"]))
    k, s = draw(st.integers(1, 4)), draw(st.integers(1, 2))
    if kind == "conv":
        groups = draw(st.sampled_from([g for g in (1, 2, 3) if c % g == 0]))
        out = groups * draw(st.integers(1, 3))
        p = draw(st.sampled_from(["same", "valid", "1", "(0, 2)", "((1, 0), (2, 1))"]))
        return f"conv(c={out}, k={k}, s={s}, p={p}, groups={groups}, d={draw(st.integers(1, 2))})"
    if kind == "deconv":
        op = draw(st.integers(0, s - 1))
        return f"deconv(c={draw(st.integers(1, 6))}, k={k}, s={s}, p={draw(st.integers(0, k // 2))}, output_padding={op})"
    if kind in ("maxpool", "avgpool"):
        k = max(k, 2)
        extra = f", count_include_pad={draw(st.booleans())}".lower() if kind == "avgpool" else ""
        return f"{kind}(k={k}, s={s}, p={draw(st.integers(0, k // 2))}, ceil={str(draw(st.booleans())).lower()}{extra})"
    if kind == "act":
        return draw(st.sampled_from(activation_words()))
    if kind == "lrn":
        return f"lrn(size={draw(st.integers(1, 5))})"
    if kind == "residual":
        return f"residual< conv3-{c} bn relu conv3-{c} bn > relu"
    if kind == "residual_proj":
        return f"residual(shortcut={draw(st.sampled_from(['proj', 'pad', 'conv']))})< conv3-{c + 2}/{s} bn > relu"
    if kind == "concat":
        return f"concat< conv1-{draw(st.integers(1, 4))} | conv3-{draw(st.integers(1, 4))} | maxpool3/1(p=1) >"
    if kind == "crop":
        return f"concat(crop=true)< conv3-{draw(st.integers(1, 4))}(valid) | identity | maxpool2/1 >"
    if kind == "add":
        return f"add(scale={draw(st.sampled_from([1, 0.5]))})< conv1-{c} | identity >"
    if kind == "adaptive":
        return f"adaptiveavgpool(({draw(st.integers(1, 5))}, {draw(st.integers(1, 5))}))"
    if kind == "padshortcut":
        return f"padshortcut(c={c + draw(st.integers(0, 3))}, s={s})"
    if kind == "fc":
        return f"fc-{draw(st.integers(1, 12))}"
    return kind  # bn, gap, dropout


def _flat_step(draw, n: int) -> str:
    return draw(st.sampled_from([f"fc-{1 + n % 7}", "relu", "bn", "dropout(0.3)", "sigmoid", "tanh",
                                 f"add< fc-{n} | identity >", "concat< fc-3 | identity >"]))


@st.composite
def random_networks(draw):
    """A valid random network: steps are drawn one at a time and kept only if the network still checks."""
    c, h, w = draw(st.integers(1, 4)), draw(st.integers(5, 14)), draw(st.integers(5, 14))
    text = f"network rand: input {c}x{h}x{w}"
    net = cnndsl.loads(text + " identity")
    for _ in range(draw(st.integers(1, 6))):
        shape = net.output_shapes[0]
        step = _map_step(draw, shape[0]) if len(shape) == 3 else _flat_step(draw, shape[0])
        try:
            candidate = cnndsl.loads(f"{text} {step}")
        except cnndsl.CnnDslError:
            continue
        if np.prod(candidate.output_shapes[0]) > 4096:
            continue
        text, net = f"{text} {step}", candidate
    return net


@hypothesis.settings(max_examples=15, deadline=None, derandomize=True,
                     suppress_health_check=list(hypothesis.HealthCheck))
@hypothesis.given(random_networks())
def test_random_networks_predicted_jax_and_torch_shapes_and_outputs_agree(net):
    tm = cnndsl.build_torch(net).eval()
    randomise_batch_norms(tm)
    jm = cnndsl.build_jax(net)
    x = np.random.RandomState(0).randn(2, *net.input_shape).astype(np.float32)
    with torch.no_grad():
        ref = tm(torch.from_numpy(x)).numpy()
    variables = torch_to_jax(net, tm.state_dict())
    out = np.asarray(jm.apply(variables, x.transpose(0, 2, 3, 1)))
    predicted = net.output_shapes[0]
    assert out.shape == (2, *_nhwc(predicted))
    assert ref.shape == (2, *predicted)
    scale = max(np.abs(ref).max(), 1e-3)
    assert np.abs(to_torch_layout(out) - ref).max() <= RTOL * scale, cnndsl.compile(net, backend="jax")
