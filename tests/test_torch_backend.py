"""The PyTorch backend: every zoo network builds with the IR's names, shapes and counts; small ones train.

The generated code is compared with tests/golden/torch/; after a deliberate change, regenerate those
files (and the JAX ones) with ``CNNDSL_REGEN_GOLDEN=1 python -m pytest tests/test_torch_backend.py
tests/test_jax_backend.py`` and review the diff.
"""

from __future__ import annotations

import inspect
import io
import os
import subprocess
import sys

import pytest
from conftest import assert_ruff_clean, check_golden

import cnndsl
from cnndsl import api
from cnndsl.front.loader import zoo_index

torch = pytest.importorskip("torch")

GOLDEN_NETS = ("lenet5", "resnet18", "googlenet_torchvision")
# Run a real forward pass only where it is cheap; the rest are checked on the meta device (no memory, no maths).
FORWARD_NETS = ("lenet5", "resnet20", "resnet18", "googlenet_torchvision", "alexnet")


def ir_state_keys(net) -> set[str]:
    """The state_dict keys the IR implies: each layer's name and the PyTorch names of the tensors its op
    declares (``Op.weights``; an empty name is a bare parameter, called after the layer)."""
    keys = set()
    for n in net.graph.nodes():
        for w in n.opdef.weights:
            if w.when is None or n.args[w.when]:
                keys.add(f"{n.name}.{w.torch}" if w.torch else n.name)
    return keys


@pytest.mark.parametrize("name", sorted(zoo_index()))
def test_zoo_network_builds_with_ir_names_and_counts(name):
    net = cnndsl.load(name)
    with torch.device("meta"):
        model = cnndsl.build_torch(net)
    assert sum(p.numel() for p in model.parameters()) == net.params
    assert set(model.state_dict()) == ir_state_keys(net)
    if name not in FORWARD_NETS:
        x = torch.empty(2, *net.input_shape, device="meta")
        model.eval()
        assert tuple(model(x).shape) == (2, *net.output_shapes[0])


@pytest.mark.parametrize("name", FORWARD_NETS)
def test_forward_gives_ir_output_shapes(name):
    net = cnndsl.load(name)
    model = cnndsl.build_torch(net).eval()
    with torch.no_grad():
        y = model(torch.randn(1, *net.input_shape))
    assert tuple(y.shape) == (1, *net.output_shapes[0])
    if net.graph.aux_outputs:  # aux heads only in training mode, as torchvision's GoogLeNet
        model.train()
        outs = model(torch.randn(2, *net.input_shape))
        assert [tuple(o.shape[1:]) for o in outs] == net.output_shapes


SNIPPETS = {
    "asym_pad": "network t: input 3x9x9 conv(c=4, k=2, p=((0, 1), (0, 1))) bn relu "
                "maxpool(k=2, s=1, p=((1, 0), (0, 1))) avgpool(k=3, s=2, p=((1, 0), (1, 0))) fc-5",
    "deconv_crop": "network t: input 2x16x16 d: conv3-4(p=valid) relu deconv2-4/2 concat(crop=true)< @d | identity > "
                   "conv1-3 sigmoid gap flatten fc-3",
    "misc": "network t: input 3x12x12 conv3-6 lrn tanh avgpool3/2(ceil, count_include_pad=false, p=1) dropout(0.2) "
            "residual(scale=0.5)< conv3-6 bn > adaptiveavgpool(2) fc-8 bn relu fc-4 softmax",
    "padshortcut": "network t: input 4x8x8 residual(shortcut=pad)< conv3-8/2 bn relu conv3-8 bn > relu gap fc-2",
}


@pytest.mark.parametrize("name", sorted(SNIPPETS))
def test_snippet_shapes_params_and_training_step(name):
    net = cnndsl.loads(SNIPPETS[name])
    model = cnndsl.build_torch(net)
    assert sum(p.numel() for p in model.parameters()) == net.params
    assert set(model.state_dict()) == ir_state_keys(net)
    _assert_learns(model, net)


@pytest.mark.parametrize("name", ["lenet5", "resnet20"])
def test_small_zoo_networks_learn(name):
    net = cnndsl.load(name)
    _assert_learns(cnndsl.build_torch(net), net)


def _assert_learns(model, net, steps: int = 5):
    torch.manual_seed(0)
    x = torch.randn(8, *net.input_shape)
    classes = net.output_shapes[0][0]
    y = torch.arange(8) % classes
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    losses = []
    model.train()
    for _ in range(steps):
        out = model(x)
        out = out[0] if isinstance(out, tuple) else out
        loss = torch.nn.functional.cross_entropy(out, y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]
    model.eval()
    with torch.no_grad():
        assert tuple(model(x).shape) == (8, *net.output_shapes[0])


def test_eval_mode_is_deterministic_and_channels_last_agrees():
    net = cnndsl.load("resnet20")
    model = cnndsl.build_torch(net).eval()
    x = torch.randn(2, *net.input_shape)
    with torch.no_grad():
        a = model(x)
        b = model.to(memory_format=torch.channels_last)(x.to(memory_format=torch.channels_last))
    torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_torchscript_and_export():
    net = cnndsl.load("resnet20")
    model = cnndsl.build_torch(net).eval()
    x = torch.randn(1, *net.input_shape)
    with torch.no_grad():
        ref = model(x)
        torch.testing.assert_close(torch.jit.script(model)(x), ref)
    g = cnndsl.load("googlenet_torchvision", input_shape=(3, 64, 64))  # aux heads: export traces eval mode
    gm = cnndsl.build_torch(g).eval()
    ex = torch.export.export(gm, (torch.randn(1, 3, 64, 64),))
    assert tuple(ex.module()(torch.randn(1, 3, 64, 64)).shape) == (1, 1000)


def test_frozen_layers_keep_names_and_stop_gradients():
    text = ("network base(classes=1000) with conv(act=relu): input 3x16x16 features: [conv3-8 maxpool conv3-8] "
            "classifier: [fc-32 relu fc-{classes}]\n"
            "network small = base(classes=10) freeze(features)")
    net = cnndsl.loads(text, network="small")
    model = cnndsl.build_torch(net)
    frozen = {k for k, p in model.named_parameters() if not p.requires_grad}
    assert frozen == {"features.0.weight", "features.0.bias", "features.3.weight", "features.3.bias"}
    assert set(model.state_dict()) == ir_state_keys(net)


def test_block_instances_are_built_with_keywords_named_after_the_block():
    """Instances sharing a class differ in constructor arguments named after the block's own parameters (``p``,
    given as the word ``same``, stands for the numbers it resolves to) or ``in_channels``; an uneven padding
    goes through a ``Padded`` helper, a number ``forward`` needs (the residual's scale) is kept on the module."""
    from test_cross_backend import compare

    text = ("block unit(c, k=3, p=same): conv(c=c, k=k, p=p) bn relu\n"
            "block scaled(c, scale=0.2): residual(scale={scale})< conv3-{c} bn relu conv1-{c} > relu\n"
            "network t: input 3x12x12 u1: unit(8, 1) u2: unit(8) u3: unit(16, 5) u4: unit(16, 2) u5: unit(16, 4)\n"
            "    r1: scaled(16) r2: scaled(16, 0.5) gap fc-4")
    net = cnndsl.loads(text)
    source = cnndsl.compile(net)
    for call in ("self.u1 = Unit(in_channels=3, c=8, k=1, p=0)", "self.u3 = Unit(in_channels=8, c=16, k=5, p=2)",
                 "self.u4 = Unit2(k=2, p=(0, 1, 0, 1))", "self.r2 = Scaled(scale=0.5)"):
        assert call in source
    model = cnndsl.build_torch(net)
    for name in ("u1", "u4", "r1"):
        params = set(inspect.signature(type(getattr(model, name))).parameters)
        assert params <= {"in_channels", "c", "k", "p", "scale"}, (name, params)
    assert isinstance(model.u4.conv1, torch.nn.Conv2d) and model.r2.scale == 0.5
    assert compare(net, jit=False) < 1e-4  # the JAX backend, on the same weights


def test_numbered_groups_keep_torchvisions_layout_with_or_without_gaps():
    """A labelled group is an nn.Sequential (``stem.0.weight``), called whole where its layers chain, reached by
    index where an fc must flatten first; the inference build drops its batch norms, and the numbers it leaves
    (0, 2) are an nn.Sequential over an OrderedDict where they chain, an nn.ModuleDict where they do not."""
    net = cnndsl.loads("network t: input 3x16x16 stem: [conv3-8 bn relu] head: [conv1-4 bn gap fc-3]")
    inf = api.inference_network(net)
    source, inf_source = cnndsl.compile(net), cnndsl.compile(inf)
    assert "x = self.stem(x)" in source and "x = self.head[3](x)" in source
    assert "self.stem = nn.Sequential(OrderedDict([" in inf_source and "x = self.stem(x)" in inf_source
    assert 'self.head = nn.ModuleDict({' in inf_source and 'x = self.head["3"](x)' in inf_source
    torch.manual_seed(0)
    train = cnndsl.build_torch(net).double().eval()
    infer = cnndsl.build_torch(inf, inference=True, state_dict=train.state_dict()).double()
    assert set(train.state_dict()) == ir_state_keys(net) and set(infer.state_dict()) == ir_state_keys(inf)
    assert isinstance(train.head, torch.nn.Sequential) and isinstance(infer.stem, torch.nn.Sequential)
    x = torch.randn(2, 3, 16, 16, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(infer(x), train(x))


def test_nested_and_hyphenated_groups_keep_their_names():
    """``seq< >`` inside a group nests nn.Sequentials (``features.0.0.weight``, torchvision's MobileNet); names
    that are not identifiers (torchvision's RegNet ``block1-0``) key an nn.Sequential over an OrderedDict; both
    can be frozen by path."""
    from test_cross_backend import compare

    text = ("block u(c): conv3-{c} bn relu\n"
            "network base: input 3x8x8 stage: [u-0: u(8) u-1: u(8)] features: [seq< conv3-8 bn > seq< conv3-8 relu >]\n"
            "    gap fc-2\n"
            "network t = base freeze(stage.u-0, features.1)")
    net = cnndsl.loads(text, network="t")
    model = cnndsl.build_torch(net)
    assert set(model.state_dict()) == ir_state_keys(net)
    assert isinstance(model.stage, torch.nn.Sequential) and isinstance(model.features[0], torch.nn.Sequential)
    frozen = {k for k, p in model.named_parameters() if not p.requires_grad}
    assert frozen == {k for k, _ in model.named_parameters() if k.startswith(("stage.u-0.", "features.1."))}
    assert compare(net, jit=False) < 1e-4


@pytest.mark.parametrize(("before", "inplace"), [("relu", False), ("tanh", False), ("sigmoid", False),
                                                  ("dropout(0.5)", True), ("maxpool3/1(p=1)", True)])
def test_in_place_relu_only_where_backward_does_not_read_the_tensor(before, inplace):
    """An in-place ReLU overwrites its input: not where that is a ReLU's, tanh's or sigmoid's output (their
    backward passes read it); through a dropout it reaches the conv's output, which no backward pass reads.
    Autograd is the judge: it raises where a tensor it saved was overwritten."""
    net = cnndsl.loads(f"network t: input 3x8x8 conv3-4 {before} relu conv3-4 relu gap fc-2")
    model = cnndsl.build_torch(net).train()
    model(torch.randn(2, 3, 8, 8)).sum().backward()
    relus = [m for m in model.modules() if isinstance(m, torch.nn.ReLU)]
    assert relus[-1].inplace and relus[-2].inplace is inplace


def test_init_scheme_from_the_network():
    src = "network t with init({}): input 3x8x8 conv3-16 bn relu fc-10"
    torch.manual_seed(0)
    he = cnndsl.build_torch(cnndsl.loads(src.format("kaiming")))
    # He, fan_out: std = sqrt(2 / (16 * 3 * 3))
    assert abs(he.conv1.weight.std().item() - (2 / 144) ** 0.5) < 0.03
    assert he.fc1.weight.std().item() < 0.02 and float(he.conv1.bias.abs().sum()) == 0
    xa = cnndsl.build_torch(cnndsl.loads(src.format("xavier")))
    bound = (6 / (3 * 9 + 16 * 9)) ** 0.5  # Glorot uniform
    assert xa.conv1.weight.abs().max().item() <= bound
    with pytest.raises(cnndsl.CnnDslError, match="init takes one scheme"):
        cnndsl.loads(src.format("orthogonal"))


def test_unsupported_or_reserved_names_are_clean_errors():
    with pytest.raises(cnndsl.CnnDslError) as e:
        cnndsl.compile(cnndsl.loads("network t: input 3x8x8 training: conv3-4"))
    assert e.value.span is not None and e.value.line == 1


def test_generated_code_is_ruff_clean_and_imports_torch_only(tmp_path):
    """The rules every backend's output passes (conftest.GENERATED_CODE_RUFF), and no cnndsl import."""
    for src in assert_ruff_clean("torch", tmp_path).values():
        assert "cnndsl" not in src.split('"""', 2)[2]


@pytest.mark.parametrize("name", GOLDEN_NETS)
def test_golden_files(name):
    check_golden("torch", name, cnndsl.compile(name))


def test_output_is_identical_across_hash_seeds():
    code = "import sys, cnndsl; sys.stdout.write(cnndsl.compile('googlenet_torchvision') + cnndsl.compile('resnet20'))"
    outs = []
    for seed in ("0", "12345"):
        env = {**os.environ, "PYTHONHASHSEED": seed}
        outs.append(subprocess.run([sys.executable, "-c", code], capture_output=True, env=env, check=True).stdout)
    assert outs[0] == outs[1] and outs[0]


def test_cli_compile_writes_whole_file_and_reports_errors(tmp_path):
    from cnndsl.tools.cli import main

    out = tmp_path / "lenet.py"
    out.write_text("old")
    assert main(["compile", "lenet5", "--backend", "torch", "-o", str(out)]) == 0
    assert out.read_text() == cnndsl.compile("lenet5")
    assert [p.name for p in tmp_path.iterdir()] == ["lenet.py"]
    bad = tmp_path / "bad.cnn"
    bad.write_text("network t: input 3x8x8 conv3-4 bogus\n")
    assert main(["compile", str(bad), "-o", str(out)]) == 1
    assert out.read_text() == cnndsl.compile("lenet5")


def test_lenet5_learns_digits_quickly():
    pytest.importorskip("sklearn")
    from cnndsl.train.torch_loop import train

    out = io.StringIO()
    acc = train("lenet5", data="digits", out=out)
    assert acc >= 0.95, out.getvalue()
    assert out.getvalue().splitlines()[-1] == f"test accuracy: {acc:.2f}"


def test_zero_init_residual_zeroes_the_last_bn_of_each_residual_body():
    text = """
        block unit(c, s=1): residual< conv3-{c}/{s} bn relu conv3-{c} bn > relu
        network t with init(kaiming, zero_init_residual=true): input 3x16x16
            stem: conv3-8 bn relu  layers: [unit(8) unit(16, 2)]  gap fc-10
    """
    model = cnndsl.build_torch(cnndsl.loads(text))
    model.reset_parameters()
    for i in (0, 1):  # the body's last BN starts at zero, its first at one (torchvision's recipe)
        block = model.layers[i]
        assert torch.count_nonzero(block.bn2.weight) == 0 and torch.all(block.bn1.weight == 1)
    assert torch.all(model.layers[1].downsample[1].weight == 1)  # the projection's BN is left alone
    with pytest.raises(cnndsl.CnnDslError, match="zero_init_residual"):
        cnndsl.loads("network t with init(kaiming, zero=1): input 3x8x8 conv3-4")


def test_init_fc_default_leaves_the_fc_at_pytorchs_default():
    """torchvision's ResNet initialises its convolutions (He) and batch norms, and leaves fc at nn.Linear's default."""
    src = "network t with init(kaiming{}): input 3x8x8 conv3-16 bn relu gap fc-1000"
    for option, low, high in ((", fc=default", 0.5, 1.5), ("", 0.0, 0.2)):
        torch.manual_seed(0)
        model = cnndsl.build_torch(cnndsl.loads(src.format(option)))
        # nn.Linear's default: U(-1/sqrt(fan_in), 1/sqrt(fan_in)), so the largest |w| * sqrt(16) comes close to 1
        largest = model.fc1.weight.abs().max().item() * 16 ** 0.5
        assert low < largest < high, (option, largest)
        assert (model.fc1.bias.abs().sum().item() == 0) is (option == "")
    assert "nn.Linear" not in cnndsl.compile("resnet18").split("def reset_parameters")[1]
    with pytest.raises(cnndsl.CnnDslError, match="fc="):
        cnndsl.loads(src.format(", fc=zeros"))
