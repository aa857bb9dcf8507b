"""The Flax NNX backend: a printer of the backend-neutral plan, checked against PyTorch's numbers."""

from __future__ import annotations

import ast
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
jax = pytest.importorskip("jax")
nnx = pytest.importorskip("flax.nnx")
optax = pytest.importorskip("optax")

from cnndsl.backends.flax import abstract, flax_to_torch, torch_to_flax
from cnndsl.backends.plan import make_plan
from conftest import assert_ruff_clean, check_golden
from test_cross_backend import DEFAULT_ZOO, OP_CASES, SMALL_INPUT, to_torch_layout
from torch_helpers import randomise_batch_norms

import cnndsl
from cnndsl import CnnDslError
from cnndsl.front.loader import zoo_index

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from fuzz.harness import HOSTILE_NAMES, PLACES, place_text

RTOL = 1e-4  # relative to the output's largest magnitude


def _forward(model, *xs):
    return nnx.jit(lambda m, *a: m(*a))(model, *xs)


def compare(net, batch: int = 2, seed: int = 0) -> float:
    """Largest |flax - torch| over the largest |torch|, eval mode, weights converted from the torch model."""
    torch.manual_seed(seed)
    tm = cnndsl.build_torch(net).eval()
    randomise_batch_norms(tm, seed)
    fm = torch_to_flax(net, tm.state_dict())
    fm.eval()
    rs = np.random.RandomState(seed)
    xs = [rs.randn(batch, *net.graph.node(i).shape).astype(np.float32) for i in net.graph.inputs]
    with torch.no_grad():
        ref = tm(*map(torch.from_numpy, xs)).numpy()
    out = to_torch_layout(np.asarray(_forward(fm, *(x.transpose(0, 2, 3, 1) if x.ndim == 4 else x for x in xs))))
    assert out.shape == ref.shape == (batch, *net.output_shapes[0])
    return float(np.abs(out - ref).max() / np.abs(ref).max())


def n_params(model) -> int:
    return sum(math.prod(leaf.shape) for leaf in jax.tree.leaves(nnx.state(model, nnx.Param)))


def test_resnet18_has_torchvisions_parameter_count():
    assert n_params(abstract(cnndsl.load("resnet18"))) == 11_689_512


@pytest.mark.parametrize("case", sorted(OP_CASES))
def test_op_semantics_match_torch(case):
    net = cnndsl.loads(f"network t: {OP_CASES[case]}")
    assert compare(net, batch=3) < RTOL


# googlenet_torchvision's eval outputs are compared (at 96x96) by test_aux_heads_only_in_training_mode
# mnasnet0_5: a scalar block parameter (k) passed to a child class that takes the kernel pair in full
FLAX_DEFAULT_ZOO = DEFAULT_ZOO - {"unet", "googlenet_torchvision"} | {"alexnet", "vgg11", "mnasnet0_5"}


@pytest.mark.parametrize("name", [n if n in FLAX_DEFAULT_ZOO else pytest.param(n, marks=pytest.mark.slow)
                                  for n in sorted(zoo_index())])
def test_zoo_network_matches_torch(name):
    net = cnndsl.load(name, input_shape=SMALL_INPUT.get(name))
    assert compare(net, batch=1) < RTOL


def test_aux_heads_only_in_training_mode():
    """googlenet_torchvision at 96x96: eval outputs, then training mode's main and aux outputs, against torch."""
    net = cnndsl.load("googlenet_torchvision", input_shape=(3, 96, 96))
    torch.manual_seed(0)
    tm = cnndsl.build_torch(net).eval()
    randomise_batch_norms(tm)
    fm = torch_to_flax(net, tm.state_dict())
    x = np.random.RandomState(0).randn(2, 3, 96, 96).astype(np.float32)
    fm.eval()
    out = np.asarray(_forward(fm, x.transpose(0, 2, 3, 1)))
    with torch.no_grad():
        ref = tm(torch.from_numpy(x)).numpy()
    assert out.shape == ref.shape == (2, 1000)
    assert np.abs(out - ref).max() <= RTOL * np.abs(ref).max()
    fm.train()
    tm.train()
    for m in tm.modules():  # dropout off on both sides: training-mode batch norm and the aux heads are compared
        if isinstance(m, torch.nn.Dropout):
            m.p = 0.0
    for m in jax.tree.leaves(fm, is_leaf=lambda v: isinstance(v, nnx.Dropout)):
        if isinstance(m, nnx.Dropout):
            m.rate = 0.0
    outs = _forward(fm, x.transpose(0, 2, 3, 1))
    with torch.no_grad():
        refs = tm(torch.from_numpy(x))
    refs = (refs.logits, refs.aux_logits1, refs.aux_logits2)  # torch: torchvision's GoogLeNetOutputs; flax: as declared
    assert len(outs) == len(refs) == 3
    for out, ref in zip(outs, refs):
        ref = ref.numpy()
        assert np.abs(np.asarray(out) - ref).max() <= RTOL * np.abs(ref).max()


def test_weights_round_trip():
    net = cnndsl.loads(f"network t: {OP_CASES['deconv']} conv1-4 bn flatten bn fc-3")
    tm = cnndsl.build_torch(net)
    randomise_batch_norms(tm)
    back = flax_to_torch(net, torch_to_flax(net, tm.state_dict()))
    assert back.keys() == tm.state_dict().keys()
    for key, value in tm.state_dict().items():
        assert torch.equal(back[key].to(value.dtype), value), key


def test_initialisation_follows_the_network():
    """PyTorch's default U(-1/sqrt(fan_in), ..) for weights and biases; He (fan-out) normal with init(kaiming)."""
    plain = cnndsl.build_flax(cnndsl.loads("network t: input 16x8x8  conv3-64 fc-256"))
    bound = (16 * 9) ** -0.5
    for leaf in (plain.conv1.kernel.get_value(), plain.conv1.bias.get_value()):
        assert float(np.abs(leaf).max()) <= bound and float(np.abs(leaf).max()) > 0.9 * bound
    assert float(np.abs(plain.fc1.kernel.get_value()).max()) <= (64 * 64) ** -0.5
    he = cnndsl.build_flax(cnndsl.loads("network t with init(kaiming): input 16x8x8  conv3-64 bn fc-256"))
    std = float(np.std(np.asarray(he.conv1.kernel.get_value())))
    assert abs(std / (2 / (64 * 9)) ** 0.5 - 1) < 0.05
    assert abs(float(np.std(np.asarray(he.fc1.kernel.get_value()))) / 0.01 - 1) < 0.05
    assert he.bn1.momentum == pytest.approx(0.9)


def test_jitted_training_step_lowers_the_loss():
    net = cnndsl.load("lenet5")
    model = cnndsl.build_flax(net)
    model.train()
    optimizer = nnx.Optimizer(model, optax.adam(1e-3), wrt=nnx.Param)
    rs = np.random.RandomState(0)
    x = rs.randn(16, *net.input_shape).astype(np.float32).transpose(0, 2, 3, 1)
    y = rs.randint(0, net.output_shapes[0][0], 16)

    @nnx.jit
    def step(model, optimizer, x, y):
        def loss_fn(model):
            return optax.softmax_cross_entropy_with_integer_labels(model(x), y).mean()

        loss, grads = nnx.value_and_grad(loss_fn)(model)
        optimizer.update(model, grads)
        return loss

    losses = [float(step(model, optimizer, x, y)) for _ in range(20)]
    assert losses[-1] < 0.75 * losses[0]  # 2.30 -> 1.43 in 20 steps


@pytest.mark.parametrize("name", ["lenet5", "resnet18"])
def test_golden(name):
    check_golden("flax", name, cnndsl.compile(name, backend="flax"))


def test_generated_code_is_ruff_clean(tmp_path):
    sources = assert_ruff_clean("flax", tmp_path)
    for source in sources.values():
        imports = {n.names[0].name if isinstance(n, ast.Import) else n.module for n in ast.walk(ast.parse(source))
                   if isinstance(n, (ast.Import, ast.ImportFrom))}
        assert imports <= {"jax", "jax.numpy", "flax"}


def test_output_is_the_same_under_any_hash_seed():
    code = ("import sys, cnndsl\nfor n in ('resnet18', 'googlenet_torchvision', 'inception_v4'):\n"
            "    sys.stdout.write(cnndsl.compile(n, backend='flax'))")
    outs = {subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                           env={**os.environ, "PYTHONHASHSEED": seed}).stdout for seed in ("0", "1", "12345")}
    assert len(outs) == 1


def test_plan_shares_classes_and_names_parameters_after_the_block():
    plan = make_plan(cnndsl.load("resnet50").graph)
    by_name = {c.name: [p.name for p in c.params] for c in plan.classes}
    assert by_name["Bottleneck"] == ["c"]
    assert by_name["BottleneckDownsample"] == ["in_channels", "c", "s"]
    assert len(next(c for c in plan.classes if c.name == "Bottleneck").instances) == 12


def check_place(place: str, name: str) -> str:
    try:
        net = cnndsl.loads(place_text(place, name), "t.cnn")
    except CnnDslError:
        return "refused by the language"
    try:
        cnndsl.compile(net, "torch")
    except CnnDslError:
        return "refused by PyTorch"  # no torch model to compare with
    source = cnndsl.compile(net, "flax")
    ast.parse(source)
    assert n_params(abstract(net)) == net.params
    assert compare(net) < RTOL
    return "compiled"


@pytest.mark.parametrize("place", sorted(PLACES))
def test_hostile_names_compile_and_run(place):
    names = ["self", "rngs", "nnx", "deterministic", "x", "in_channels", "__init__", "__c"]
    outcomes = {name: check_place(place, name) for name in names}
    assert outcomes["in_channels"] == "compiled"


@pytest.mark.slow
@pytest.mark.parametrize("place", sorted(PLACES))
def test_every_hostile_name_in_every_place(place):
    for name in HOSTILE_NAMES:
        check_place(place, name)
