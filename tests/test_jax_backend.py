"""The JAX backend on its own: parameter counts, shapes, jit/grad, training, golden output.

Agreement with PyTorch (the numbers themselves) is tests/test_cross_backend.py. The generated code is
compared with tests/golden/jax/; after a deliberate change, regenerate those files (and the torch ones)
with ``CNNDSL_REGEN_GOLDEN=1 python -m pytest tests/test_torch_backend.py tests/test_jax_backend.py``
and review the diff.
"""

from __future__ import annotations

import os
import subprocess
import sys
import zlib

import numpy as np
import pytest
from conftest import assert_ruff_clean, check_golden

jax = pytest.importorskip("jax")
jnp = pytest.importorskip("jax.numpy")

from cnndsl.backends.jax import JaxModel, _ClassPrinter, _nhwc, generate

import cnndsl
from cnndsl.front.loader import zoo_index
from cnndsl.ir.ops import OPS


def n_values(tree) -> int:
    return sum(leaf.size for leaf in jax.tree_util.tree_leaves(tree))


@pytest.mark.parametrize("name", sorted(zoo_index()))
def test_init_has_the_network_parameters_and_apply_the_predicted_shapes(name, zoo):
    """Abstract evaluation (no compute): init's parameter count and apply's output shapes, eval and train."""
    net = zoo(name)
    model = cnndsl.build_jax(net)
    variables = jax.eval_shape(model.init, jax.random.key(0))
    assert n_values(variables["params"]) == net.params
    n_bn = sum(n.shape[0] for n in net.graph.nodes() if n.op == "bn")
    assert n_values(variables["batch_stats"]) == 2 * n_bn
    x = jax.ShapeDtypeStruct((2, *_nhwc(net.input_shape)), jnp.float32)
    out = jax.eval_shape(lambda v, x: model.apply(v, x), variables, x)
    assert out.shape == (2, *_nhwc(net.output_shapes[0]))
    outputs, stats = jax.eval_shape(lambda v, x: model.apply(v, x, train=True, rng=jax.random.key(1)), variables, x)
    expected = [(2, *_nhwc(s)) for s in net.output_shapes]
    got = [o.shape for o in outputs] if net.graph.aux_outputs else [outputs.shape]
    assert got == expected
    assert jax.tree_util.tree_structure(stats) == jax.tree_util.tree_structure(variables["batch_stats"])


def test_variables_are_laid_out_as_flax():
    model = cnndsl.build_jax("resnet18")
    v = jax.eval_shape(model.init, jax.random.key(0))
    assert set(v) == {"params", "batch_stats"}
    assert v["params"]["layer1"]["0"]["conv1"]["kernel"].shape == (3, 3, 64, 64)  # HWIO
    assert set(v["params"]["layer2"]["0"]["downsample"]["1"]) == {"scale", "bias"}
    assert set(v["batch_stats"]["bn1"]) == {"mean", "var"}
    assert v["params"]["fc"]["kernel"].shape == (512, 1000)
    assert v["params"]["fc"]["bias"].shape == (1000,)
    assert "bias" not in v["params"]["conv1"]  # conv(bias=false)


def test_every_op_has_an_emitter_method():
    missing = [op for op in OPS if op != "shortcut" and not hasattr(_ClassPrinter, f"emit_{op}")]
    assert missing == []


def _loss_and_step(model):
    def loss_fn(params, stats, x, y, key):
        outputs, new_stats = model.apply({"params": params, "batch_stats": stats}, x, train=True, rng=key)
        logits = outputs[0] if isinstance(outputs, tuple) else outputs
        onehot = jax.nn.one_hot(y, logits.shape[-1])
        return -(jax.nn.log_softmax(logits) * onehot).sum(-1).mean(), new_stats

    @jax.jit
    def step(params, stats, x, y, key):
        (loss, new_stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(params, stats, x, y, key)
        return jax.tree_util.tree_map(lambda p, g: p - 0.05 * g, params, grads), new_stats, loss

    return step


@pytest.mark.parametrize("name", ["lenet5", "resnet20"])
def test_a_jitted_gradient_step_lowers_the_loss(name):
    model = cnndsl.build_jax(name)
    v = model.init(jax.random.key(0))
    params, stats = v["params"], v["batch_stats"]
    x = jax.random.normal(jax.random.key(1), (8, *model.input_shape))
    y = jnp.arange(8) % 10
    step = _loss_and_step(model)
    losses = []
    for i in range(3):
        params, stats, loss = step(params, stats, x, y, jax.random.key(2 + i))
        losses.append(float(loss))
    assert losses[2] < losses[0], losses
    for before, after in zip(jax.tree_util.tree_leaves(v["batch_stats"]), jax.tree_util.tree_leaves(stats)):
        assert not jnp.allclose(before, after)  # the running statistics moved


def test_dropout_runs_in_training_only_and_needs_a_key():
    model = cnndsl.build_jax(cnndsl.loads("network t: input 32  fc-64 dropout(0.5) fc-4"))
    v = model.init(jax.random.key(0))
    x = jnp.ones((2, 32))
    assert jnp.array_equal(model.apply(v, x), model.apply(v, x))
    with pytest.raises(ValueError, match="rng"):
        model.apply(v, x, train=True)
    a, _ = model.apply(v, x, train=True, rng=jax.random.key(1))
    b, _ = model.apply(v, x, train=True, rng=jax.random.key(2))
    assert not jnp.allclose(a, b)


def test_aux_heads_come_out_in_training_only():
    model = cnndsl.build_jax("googlenet_torchvision")
    v = jax.eval_shape(model.init, jax.random.key(0))
    x = jax.ShapeDtypeStruct((1, 224, 224, 3), jnp.float32)
    assert jax.eval_shape(lambda v, x: model.apply(v, x), v, x).shape == (1, 1000)
    (main, aux1, aux2), _ = jax.eval_shape(lambda v, x: model.apply(v, x, train=True, rng=jax.random.key(0)), v, x)
    assert main.shape == aux1.shape == aux2.shape == (1, 1000)


def test_inits_follow_the_networks_scheme():
    """Default: PyTorch's U(-1/sqrt(fan_in), 1/sqrt(fan_in)); the bias too."""
    model = cnndsl.build_jax(cnndsl.loads("network t: input 3x8x8  conv3-64"))
    k = model.init(jax.random.key(0))["params"]["conv1"]
    bound = 27 ** -0.5
    assert float(jnp.abs(k["kernel"]).max()) <= bound
    assert float(jnp.abs(k["kernel"]).max()) > 0.9 * bound
    assert float(jnp.abs(k["bias"]).max()) <= bound


@pytest.mark.parametrize("scheme", ["kaiming", "xavier"])
def test_init_schemes_have_the_papers_spread(scheme):
    """He: conv N(0, 2/fan_out), fc N(0, 0.01^2); Glorot: U with variance 2/(fan_in + fan_out); biases 0."""
    net = cnndsl.loads(f"network t with init({scheme}): input 16x8x8  conv3-64 relu fc-200")
    p = cnndsl.build_jax(net).init(jax.random.key(0))["params"]
    conv, fc = p["conv1"], p["fc1"]
    if scheme == "kaiming":
        want_conv, want_fc = (2 / (64 * 9)) ** 0.5, 0.01
    else:
        want_conv, want_fc = (2 / (16 * 9 + 64 * 9)) ** 0.5, (2 / (64 * 64 + 200)) ** 0.5
    assert float(conv["kernel"].std()) == pytest.approx(want_conv, rel=0.05)
    assert float(fc["kernel"].std()) == pytest.approx(want_fc, rel=0.05)
    assert float(jnp.abs(conv["bias"]).max()) == 0.0


def test_init_fc_default_and_zero_init_residual():
    """torchvision's recipe: He convolutions, fc at PyTorch's default, each residual body's last BN scale at 0."""
    text = """
        block unit(c, s=1): residual< conv3-{c}/{s} bn relu conv3-{c} bn > relu
        network t with init(kaiming, fc=default, zero_init_residual=true): input 3x16x16
            stem: conv3-8 bn relu  layers: [unit(8) unit(16, 2) unit(16)]  gap fc-1000
    """
    p = cnndsl.build_jax(cnndsl.loads(text)).init(jax.random.key(0))["params"]
    largest = float(jnp.abs(p["fc1"]["kernel"]).max()) * 16 ** 0.5  # U(-1/sqrt(16), 1/sqrt(16))
    assert 0.9 < largest <= 1.0 and float(jnp.abs(p["fc1"]["bias"]).max()) > 0
    for i in ("0", "1", "2"):
        assert not jnp.any(p["layers"][i]["bn2"]["scale"]) and jnp.all(p["layers"][i]["bn1"]["scale"] == 1)
    assert jnp.all(p["layers"]["1"]["downsample"]["1"]["scale"] == 1)  # the projection's BN is left alone
    assert float(p["stem"]["kernel"].std()) == pytest.approx((2 / (8 * 9)) ** 0.5, rel=0.2)  # He, fan-out
    assert not jnp.any(p["stem"]["bias"])


def test_the_variables_and_the_computation_take_init_s_dtypes():
    """init(dtype=...) sets every variable's dtype, param_dtype the parameters' alone; apply promotes."""
    model = cnndsl.build_jax(cnndsl.loads("network t: input 3x8x8  conv3-4 bn relu fc-5"))
    key = jax.random.key(0)

    def dtypes(tree):
        return {jnp.dtype(leaf.dtype) for leaf in jax.tree_util.tree_leaves(tree)}

    assert dtypes(model.init(key)) == {jnp.dtype(jnp.float32)}
    assert dtypes(model.init(key, dtype=jnp.bfloat16)) == {jnp.dtype(jnp.bfloat16)}
    v = model.init(key, param_dtype=jnp.bfloat16)
    assert dtypes(v["params"]) == {jnp.dtype(jnp.bfloat16)} and dtypes(v["batch_stats"]) == {jnp.dtype(jnp.float32)}
    x = jnp.ones((2, 8, 8, 3), jnp.bfloat16)
    assert model.apply(model.init(key, dtype=jnp.bfloat16), x).dtype == jnp.bfloat16
    assert model.apply(model.init(key), x).dtype == jnp.float32  # bfloat16 input, float32 weights
    _, stats = model.apply(v, x, train=True)
    assert dtypes(stats) == {jnp.dtype(jnp.float32)}  # the running statistics keep their dtype


def test_inserting_a_layer_keeps_the_other_layers_initial_values():
    """Each layer's key is folded from its own dotted name: no other layer shifts it."""
    base = "block unit(c): residual< conv3-{c} bn relu conv3-{c} bn > relu\nnetwork t: input 3x8x8  a: conv3-8 relu "
    rest = "b: conv3-8 bn layers: [unit(8) unit(8)] fc-10"
    before = cnndsl.build_jax(cnndsl.loads(base + rest)).init(jax.random.key(0))["params"]
    after = cnndsl.build_jax(cnndsl.loads(base + "extra: conv3-8 relu " + rest)).init(jax.random.key(0))["params"]
    assert set(after) == set(before) | {"extra"}
    for name in before:
        for a, b in zip(jax.tree_util.tree_leaves(before[name]), jax.tree_util.tree_leaves(after[name]), strict=True):
            assert jnp.array_equal(a, b), name
    assert not jnp.allclose(after["extra"]["kernel"], after["b"]["kernel"])
    blocks = before["layers"]  # two instances of one block: the same code, their own values
    assert not jnp.allclose(blocks["0"]["conv1"]["kernel"], blocks["1"]["conv1"]["kernel"])


def test_resnet152_is_printed_once_per_block_class_not_unrolled():
    """One forward and one init function per class of the plan, called with keywords (a loop for a run of
    alike blocks in init, a scan in apply): the module has fewer lines than the network has layers."""
    from cnndsl.backends.jax import HELPERS
    from cnndsl.backends.plan import make_plan

    net = cnndsl.load("resnet152")
    source = cnndsl.compile(net, backend="jax")
    n_layers = sum(1 for n in net.graph.nodes() if n.op != "input")
    lines = source.splitlines()
    assert len(lines) < n_layers, (len(lines), n_layers)
    defs = [line for line in lines if line.startswith("def ")]
    assert len(defs) <= 2 * len(make_plan(net.graph).classes) + 2 + len(HELPERS)
    assert any(line.strip().startswith("for i in range(") for line in lines)
    assert max(map(len, lines)) <= 120
    apply = source[source.index("def apply("):]
    scans = [line.strip() for line in apply.splitlines() if "_scan_blocks(" in line]
    assert ('x = _scan_blocks(bottleneck, range(1, 36), x, params["layer3"], stats["layer3"], new_stats["layer3"], '
            "train=train)") in scans  # layer3's 35 alike blocks
    assert not any("range(1, 3)" in line for line in scans)  # layer1's and layer4's two: a call each


# A sequence whose elements 2 to 5 are alike (the same class, the same arguments), with batch norms and
# dropout in the block; element 1 differs in its dropout rate. Scanned from runs of 2, whatever the default.
SCANNED = """
    block unit(c, p=0.25): residual< conv3-{c} bn relu dropout({p}) conv3-{c} bn > relu
    network t: input 8x6x6  layers: [unit(8) unit(8, 0.5) unit(8) x4]  gap fc-3
"""


def _scanned(text: str = SCANNED) -> tuple[cnndsl.Network, JaxModel]:
    net = cnndsl.loads(text)
    return net, JaxModel(net, generate(net, scan_min_run=2))


def test_a_scanned_run_computes_what_a_call_per_block_computes():
    """apply() scans layers.2 to layers.5 in evaluation (training calls them in turn); here the generated block
    function is called once per instance, each dropout key folded by hand from the layer's path, and the head
    (gap, fc) computed directly."""
    _, model = _scanned()
    assert "unit, range(2, 6), x, " in model.source and model.source.count("_scan_blocks(") == 2  # def, call
    namespace: dict = {}
    exec(compile(model.source, "<scanned>", "exec"), namespace)  # noqa: S102 - the code under test
    unit = namespace["unit"]
    v = model.init(jax.random.key(0))
    v["batch_stats"] = jax.tree.map(lambda a: a + jax.random.uniform(jax.random.key(a.size), a.shape),
                                    v["batch_stats"])  # running statistics that eval mode must use
    x = jax.random.normal(jax.random.key(1), (3, 6, 6, 8))
    rng = jax.random.key(2)

    def by_hand(x, train):
        p, s, new = v["params"], v["batch_stats"], {}
        for i, rate in enumerate([0.25, 0.5, 0.25, 0.25, 0.25, 0.25]):
            key = jax.random.fold_in(jax.random.fold_in(rng, zlib.crc32(b"layers")), i)
            x, new[str(i)] = unit(p["layers"][str(i)], s["layers"][str(i)], x, p=rate, train=train, rng=key)
        return x.mean((1, 2)) @ p["fc1"]["kernel"] + p["fc1"]["bias"], {"layers": new}

    want = by_hand(x, train=False)[0]
    np.testing.assert_allclose(jax.jit(model.apply)(v, x), want, rtol=1e-5, atol=1e-5)
    got, got_stats = jax.jit(model.apply, static_argnames="train")(v, x, train=True, rng=rng)
    want_train, want_stats = by_hand(x, train=True)
    assert not np.allclose(want_train, want, atol=1e-3)  # dropout and the batch's statistics at work
    np.testing.assert_allclose(got, want_train, rtol=1e-5, atol=1e-5)
    assert jax.tree.structure(got_stats) == jax.tree.structure(v["batch_stats"]) == jax.tree.structure(want_stats)
    for g, w in zip(jax.tree.leaves(got_stats), jax.tree.leaves(want_stats), strict=True):
        np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-6)
    half = x.astype(jnp.bfloat16)  # the sequence reads the input: the scan's value takes the float32 of the weights
    out = model.apply(v, half)
    assert out.dtype == jnp.float32
    np.testing.assert_allclose(out, by_hand(half, train=False)[0], rtol=1e-5, atol=1e-5)


def test_a_scanned_run_matches_torch_in_eval_and_in_training():
    """The generated PyTorch model (torch.nn's own layers) is the reference, its weights converted: eval mode
    with randomised running statistics; training mode without dropout, outputs and new running statistics."""
    torch = pytest.importorskip("torch")
    from cnndsl.backends.jax_weights import torch_to_jax

    for text, train in ((SCANNED, False), (SCANNED.replace("unit(8, 0.5)", "unit(8)").replace("p=0.25", "p=0.0"),
                                           True)):
        net, model = _scanned(text)
        assert model.source.count("_scan_blocks(") == 2  # its definition, its call
        torch.manual_seed(0)
        tm = cnndsl.build_torch(net).train(train)
        gen = torch.Generator().manual_seed(0)
        with torch.no_grad():
            for m in tm.modules():
                if isinstance(m, torch.nn.BatchNorm2d):
                    m.running_mean.uniform_(-0.5, 0.5, generator=gen)
                    m.running_var.uniform_(0.5, 1.5, generator=gen)
                    m.weight.uniform_(0.5, 1.5, generator=gen)
        variables = torch_to_jax(net, tm.state_dict())
        x = np.random.RandomState(0).randn(4, 8, 6, 6).astype(np.float32)
        ref = tm(torch.from_numpy(x)).detach().numpy()  # in training, updates tm's running statistics
        out = jax.jit(model.apply, static_argnames="train")(variables, x.transpose(0, 2, 3, 1), train=train)
        if train:
            out, stats = out
            want = torch_to_jax(net, tm.state_dict())["batch_stats"]
            for g, w in zip(jax.tree.leaves(stats), jax.tree.leaves(want), strict=True):
                np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(np.asarray(out), ref, rtol=1e-4, atol=1e-4 * np.abs(ref).max())


def test_a_run_of_blocks_that_change_the_shape_or_a_block_s_own_run_is_handled():
    """A scan's value keeps its shape: blocks that halve the map are called one by one. A run inside a block
    (each instance of the block has one) is scanned in the block's function, and agrees with the calls."""
    net = cnndsl.loads("block down(c): conv3-{c}/2 relu\nnetwork t: input 4x16x16  layers: down(4) x3  fc-2")
    source = generate(net, scan_min_run=2)
    assert "_scan_blocks" not in source and "for i in range(0, 3):" in source
    v = jax.eval_shape(JaxModel(net, source).init, jax.random.key(0))
    assert jax.eval_shape(JaxModel(net, source).apply, v, jnp.zeros((1, 16, 16, 4))).shape == (1, 2)
    net = cnndsl.loads("""
        block unit(c): residual< conv3-{c} bn relu > relu
        block stage(c): units: unit(c) x3  conv1-{c}
        network t: input 4x6x6  a: stage(4)  b: stage(4)  fc-3
    """)
    scanned, calls = JaxModel(net, generate(net, scan_min_run=2)), JaxModel(net, generate(net, scan_min_run=None))
    stage = scanned.source[scanned.source.index("def stage("):scanned.source.index("def init_stage(")]
    assert 'x = _scan_blocks(unit, range(0, 3), x, params["units"], stats["units"], new_stats["units"]' in stage
    v = calls.init(jax.random.key(0))
    v["batch_stats"] = jax.tree.map(lambda a: a + 0.5, v["batch_stats"])
    x = jax.random.normal(jax.random.key(1), (2, 6, 6, 4))
    np.testing.assert_allclose(scanned.apply(v, x), calls.apply(v, x), rtol=1e-5, atol=1e-5)
    namespace: dict = {}
    exec(compile(scanned.source, "<scanned>", "exec"), namespace)  # noqa: S102 - the code under test
    _, stage_stats = namespace["stage"](v["params"]["a"], v["batch_stats"]["a"], x, train=False)
    assert jax.tree.structure(stage_stats) == jax.tree.structure(v["batch_stats"]["a"])  # evaluation keeps them
    (a, a_stats), (b, b_stats) = (m.apply(v, x, train=True) for m in (scanned, calls))
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)
    for g, w in zip(jax.tree.leaves(a_stats), jax.tree.leaves(b_stats), strict=True):
        np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-6)


def test_scanned_runs_of_blocks_without_batch_norms_or_without_parameters_agree_with_the_calls():
    """The helper's other shapes of call: parameters and dropout only, dropout only, statistics only."""
    net = cnndsl.loads("""
        block u(c): conv3-{c} relu dropout(0.3)
        block v(): relu dropout(0.3)
        block w(c): bn(affine=false) relu
        network t: input 4x6x6  a: u(4) x3  b: v() x3  c: w(4) x3  fc-2
    """)
    scanned, calls = JaxModel(net, generate(net, scan_min_run=2)), JaxModel(net, generate(net, scan_min_run=None))
    apply = scanned.source[scanned.source.index("def apply("):]
    assert 'x = _scan_blocks(u, range(0, 3), x, params["a"], train=train, rng=_key(rng, ' in apply
    assert "x = _scan_blocks(v, range(0, 3), x, train=train, rng=_key(rng, " in apply
    assert 'x = _scan_blocks(w, range(0, 3), x, None, stats["c"], new_stats["c"], train=train)' in apply
    v = calls.init(jax.random.key(0))
    v["batch_stats"] = jax.tree.map(lambda a: a + 0.5, v["batch_stats"])
    x = jax.random.normal(jax.random.key(1), (2, 6, 6, 4))
    np.testing.assert_allclose(scanned.apply(v, x), calls.apply(v, x), rtol=1e-5, atol=1e-6)
    half = x.astype(jnp.bfloat16)  # the first run reads the input: the scan's value takes the weights' float32
    assert scanned.apply(v, half).dtype == calls.apply(v, half).dtype == jnp.float32
    np.testing.assert_allclose(scanned.apply(v, half), calls.apply(v, half), rtol=1e-5, atol=1e-6)
    (a, a_stats), (b, b_stats) = (m.apply(v, x, train=True, rng=jax.random.key(2)) for m in (scanned, calls))
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)  # the same dropout masks: the same keys
    assert jax.tree.structure(a_stats) == jax.tree.structure(b_stats)
    for g, w in zip(jax.tree.leaves(a_stats), jax.tree.leaves(b_stats), strict=True):
        np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", ["lenet5", "resnet18"])
def test_golden(name):
    check_golden("jax", name, cnndsl.compile(name, backend="jax"))


def test_generated_source_is_ruff_clean_and_imports_jax_only(tmp_path):
    """The rules every backend's output passes (conftest.GENERATED_CODE_RUFF), and only jax imported."""
    for source in assert_ruff_clean("jax", tmp_path).values():
        imports = {line for line in source.splitlines() if line.startswith(("import ", "from "))}
        assert {"import jax", "import jax.numpy as jnp"} <= imports <= {"import math", "import jax",
                                                                        "import jax.numpy as jnp"}


def test_output_is_deterministic_across_hash_seeds():
    code = "import cnndsl, sys; sys.stdout.write(cnndsl.compile('googlenet_torchvision', backend='jax'))"
    outs = set()
    for seed in ("0", "12345"):
        env = {**os.environ, "PYTHONHASHSEED": seed}
        outs.add(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                                check=True).stdout)
    assert len(outs) == 1


def test_cli_compiles_jax(tmp_path, capsys):
    from cnndsl.tools.cli import main

    out = tmp_path / "lenet5_jax.py"
    assert main(["compile", "lenet5", "--backend", "jax", "-o", str(out)]) == 0
    namespace: dict = {}
    exec(compile(out.read_text(), str(out), "exec"), namespace)  # noqa: S102 - the file we just generated
    v = namespace["init"](jax.random.key(0))
    assert namespace["apply"](v, jnp.zeros((1, 32, 32, 1))).shape == (1, 10)


def test_train_lenet5_on_digits_with_jax_reaches_95_percent():
    """``cnndsl train lenet5 --data digits --backend jax`` (the CLI's defaults), through the API."""
    pytest.importorskip("optax")
    pytest.importorskip("sklearn")
    import io

    from cnndsl.train.torch_loop import train

    log = io.StringIO()
    acc = train("lenet5", data="digits", backend="jax", out=log)
    assert acc >= 0.95, log.getvalue()
    assert log.getvalue().splitlines()[-1] == f"test accuracy: {acc:.2f}"
