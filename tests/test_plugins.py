"""Plugin ops (cnndsl.ops, issue 18): registering, loading only when asked, and the example CBAM package
(examples/cbam) checked against a PyTorch reference written here, the other backends and the CLI.

Every test that registers an op removes it again, so the rest of the suite sees the built-in registry only.
"""

import importlib
import json
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from conftest import GENERATED_CODE_RUFF

import cnndsl
from cnndsl import ops
from cnndsl.errors import CnnArgumentError, CnnDslError, CnnShapeError
from cnndsl.tools.cli import main

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "cbam"


def _forget(prefix: str) -> None:
    for name in [m for m in sys.modules if m == prefix or m.startswith(prefix + ".")]:
        del sys.modules[name]


@pytest.fixture
def registry():
    """The plugin ops a test registers are removed after it."""
    before = {op.name for op in ops.plugin_ops()}
    yield
    for op in ops.plugin_ops():
        if op.name not in before:
            ops.unregister(op.name)


@pytest.fixture(scope="module")
def cbam():
    """The example package on sys.path, imported (which registers ``cbam``); removed after the module's tests."""
    sys.path.insert(0, str(EXAMPLE))
    _forget("cnndsl_cbam")
    module = importlib.import_module("cnndsl_cbam")
    yield module
    ops.unregister("cbam")
    _forget("cnndsl_cbam")
    sys.path.remove(str(EXAMPLE))


# ----------------------------------------------------------------------------- registering


def _facts(**over):
    """A complete plugin op's class body (a channel-keeping op with no weights), changed by ``over``."""
    body = {
        "api_version": 1, "name": "twice", "doc": "twice: x + x", "writable": True, "family": ops.Family.MERGE,
        "paper_kind": None, "saves": ops.Saved.NOTHING, "flat_order": ops.FlatOrder.KEEPS, "torch_module": True,
        "overwritable": False, "commutative": False, "foldable": False, "fold_target": False, "weights": (),
        "torch_emit": ops.Emit("Twice", source="class Twice(nn.Module):\n    def forward(self, x):\n"
                                               "        return x + x\n"),
        "jax_emit": ops.Emit("twice", source="def twice(params, x):\n    return x + x\n"),
        "flax_emit": ops.Emit("Twice", source="class Twice(nnx.Module):\n    def __init__(self, *, rngs):\n"
                                              "        pass\n\n    def __call__(self, x):\n        return x + x\n"),
        "infer": lambda self, x, args, span, warn=None: x, "count_params": lambda self, xs, args: 0,
        "count_macs": lambda self, xs, args, out: 0, "short_form": lambda self, args: "twice",
    }
    body.update(over)
    return type("Twice", (ops.Op,), {k: v for k, v in body.items() if v is not _DROP})


_DROP = object()


def test_a_complete_op_registers_and_compiles_on_every_backend(registry):
    ops.register(_facts())
    net = cnndsl.loads("network t: input 4x6x6  conv3-8 twice gap fc: fc-10")
    assert [n.op for n in net.graph.nodes()][2] == "twice"
    torch_src = cnndsl.compile(net, "torch")
    assert "class Twice(nn.Module):" in torch_src and "self.twice1 = Twice()" in torch_src
    assert "x = twice({}, x)" in cnndsl.compile(net, "jax")
    assert "self.twice1 = Twice(rngs=rngs)" in cnndsl.compile(net, "flax")


def test_an_op_missing_required_facts_is_refused_naming_them(registry):
    with pytest.raises(ops.CnnPluginError) as e:
        ops.register(_facts(saves=_DROP, torch_emit=_DROP, count_macs=_DROP))
    assert "plugin op 'twice' cannot be registered" in e.value.message
    assert "declares no saves, torch_emit" in e.value.message
    assert "defines no count_macs" in e.value.message
    assert isinstance(e.value, CnnDslError) and ops.lookup("twice") is None


@pytest.mark.parametrize("over, expected", [
    ({"name": "conv"}, "short form 'conv' is already the built-in op 'conv'"),
    ({"aliases": ("relu",)}, "short form 'relu' is already the built-in op 'relu'"),
    ({"name": "concat"}, "spelling 'concat' is a word of the language"),
    ({"name": "cbam3"}, "ending in no digit"),
    ({"api_version": 2}, "written for cnndsl.ops API 2; this cnndsl provides API 1"),
    ({"family": "conv"}, "family is 'conv', not a Family"),
    ({"torch_emit": ops.Emit("Other", source="class Twice:\n    pass\n")}, "torch_emit.source does not define 'Other'"),
    ({"torch_emit": ops.Emit("Twice", source="import os\nclass Twice:\n    pass\n")}, "top-level import statement"),
    ({"torch_emit": ops.Emit("nn", source="class nn:\n    pass\n")}, "'nn', a name the generated module keeps"),
    ({"jax_emit": ops.Emit("twice", source="def twice(:\n")}, "jax_emit.source does not parse"),
    ({"jax_emit": ops.Emit("twice", module="os; import sys")}, "not a dotted module name"),
    ({"jax_emit": ops.Emit("a b", module="m")}, "'a b', which is not a Python identifier"),
    ({"jax_emit": ops.Emit("twice", module="m", source="def twice(p, x):\n    return x\n")}, "one of them"),
    ({"flax_emit": ops.Emit("Twice", module="m", args=("channels",))}, "flax_emit.args names 'channels'"),
    ({"flax_emit": "Twice"}, "flax_emit is str, not an Emit"),
    ({"weights": (ops.Weight("running_mean", "mean", collection="batch_stats"),)}, "parameters only"),
    ({"torch_module": False}, "a plugin op is a module in PyTorch"),
])
def test_a_bad_fact_is_refused_with_what_is_wrong(registry, over, expected):
    with pytest.raises(ops.CnnPluginError, match="cannot be registered") as e:
        ops.register(_facts(**over))
    assert expected in e.value.message
    assert ops.lookup(over.get("name", "twice")) is None or over.get("name") in ("conv", "concat")


def test_a_backend_the_op_does_not_write_is_reported_at_the_layer(registry):
    ops.register(_facts(jax_emit=None))
    net = cnndsl.loads("network t: input 4x6x6\n  conv3-8 twice")
    assert "class Twice" in cnndsl.compile(net, "torch")
    with pytest.raises(CnnDslError, match="'twice' is not supported by the JAX backend") as e:
        cnndsl.compile(net, "jax")
    assert (e.value.line, e.value.col) == (2, 11)


def test_plugin_names_go_through_the_namespace(registry):
    """A module hook's name that the generated file keeps (a helper's, DropPath) is imported under another; one
    that a generated class would take (the network's, T) stays the plugin's, and the class is named around it."""
    ops.register(_facts(torch_emit=ops.Emit("DropPath", module="my_plugin.layers", args=("in_channels",))))
    src = cnndsl.compile(cnndsl.loads("network t: input 4x6x6  conv3-8 droppath(0.1) twice"), "torch")
    assert "from my_plugin.layers import DropPath as DropPath_1\n" in src
    assert "self.twice1 = DropPath_1(in_channels=8)" in src and "self.droppath1 = DropPath(0.1)" in src
    ops.unregister("twice")
    ops.register(_facts(torch_emit=ops.Emit("T", module="my_plugin.layers")))
    src = cnndsl.compile(cnndsl.loads("network t: input 4x6x6  conv3-8 twice"), "torch")
    assert "from my_plugin.layers import T\n" in src and "class T_1(nn.Module):" in src


# ----------------------------------------------------------------------------- loading only when asked


def _plugin_dir(tmp_path: Path, plugin: str) -> Path:
    (tmp_path / "myops.py").write_text(textwrap.dedent(plugin), encoding="utf-8")
    (tmp_path / "net.cnn").write_text('use "myops.py"\n\nnetwork t: input 3x8x8  conv3-4 gap fc: fc-2\n',
                                      encoding="utf-8")
    return tmp_path / "net.cnn"


MARKER_PLUGIN = """\
    from pathlib import Path
    Path(__file__).with_name("marker").write_text("the plugin ran")
    """


def test_use_py_is_not_executed_without_the_flag(tmp_path, capsys):
    net = _plugin_dir(tmp_path, MARKER_PLUGIN)
    with pytest.raises(CnnDslError) as e:
        cnndsl.load(str(net))
    assert (e.value.line, e.value.col) == (1, 1)
    assert "loads a plugin" in e.value.message and "--plugins" in e.value.hint and "allow_plugins=True" in e.value.hint
    assert main(["check", str(net)]) == 1
    err = capsys.readouterr().err
    assert f"{net}:1:1: error: `use \"myops.py\"` loads a plugin" in err and "--allow-plugins" in err
    assert main(["summary", str(net)]) == 1
    assert not (tmp_path / "marker").exists()


def test_use_py_runs_once_with_the_flag(tmp_path, capsys):
    net = _plugin_dir(tmp_path, MARKER_PLUGIN)
    assert main(["check", str(net), "--allow-plugins"]) == 0
    assert (tmp_path / "marker").read_text() == "the plugin ran"
    (tmp_path / "marker").unlink()
    assert cnndsl.load(str(net), allow_plugins=True).params > 0
    assert not (tmp_path / "marker").exists()  # a plugin file runs once a process


def test_a_failing_plugin_is_an_error_at_its_use(tmp_path):
    net = _plugin_dir(tmp_path, "raise RuntimeError('broken plugin')\n")
    with pytest.raises(CnnDslError, match=r"plugin myops.py failed to load: RuntimeError: broken plugin") as e:
        cnndsl.load(str(net), allow_plugins=True)
    assert (e.value.line, e.value.col) == (1, 1)


def test_a_plugin_whose_op_is_bad_is_an_error_at_its_use(tmp_path):
    plugin = """\
        from cnndsl.ops import Op, register
        @register
        class Bad(Op):
            name = "bad"
        """
    with pytest.raises(CnnDslError, match=r"plugin myops.py: plugin op 'bad' cannot be registered: declares no "
                                          r"writable, family") as e:
        cnndsl.load(str(_plugin_dir(tmp_path, plugin)), allow_plugins=True)
    assert e.value.line == 1 and ops.lookup("bad") is None


def test_a_plugin_module_that_is_not_there():
    with pytest.raises(ops.CnnPluginError, match="cannot load plugin 'no_such_plugin_module'"):
        ops.load_plugin("no_such_plugin_module")
    with pytest.raises(ops.CnnPluginError, match="neither an installed cnndsl.ops plugin"):
        ops.load_plugin("not a module")


# ----------------------------------------------------------------------------- the example: CBAM


def reference_cbam(torch, channels: int, reduction: int, k: int):
    """CBAM as the paper draws it (Woo et al., 2018, Fig. 2 and 3), written here independently of the plugin: the
    shared MLP as two linear layers over the pooled vectors, the spatial gate as a convolution over [mean; max]
    (without the paper's batch norm after it, as the plugin)."""
    nn = torch.nn
    hidden = max(1, channels // reduction)

    class Reference(nn.Module):
        def __init__(self):
            super().__init__()
            self.mlp = nn.Sequential(nn.Linear(channels, hidden), nn.ReLU(), nn.Linear(hidden, channels))
            self.conv = nn.Conv2d(2, 1, k, padding=(k - 1) // 2, bias=False)

        def forward(self, x):
            n, c = x.shape[:2]
            gate = self.mlp(x.flatten(2).mean(2)) + self.mlp(x.flatten(2).max(2).values)
            x = x * torch.sigmoid(gate).view(n, c, 1, 1)
            maps = torch.stack([x.mean(1), x.max(1).values], 1)
            return x * torch.sigmoid(self.conv(maps))

    return Reference()


@pytest.mark.parametrize("shape, reduction, k", [((32, 9, 7), 16, 7), ((8, 5, 5), 4, 3), ((3, 4, 6), 16, 1)])
def test_cbam_shape_params_and_values_vs_a_reference(cbam, shape, reduction, k):
    torch = pytest.importorskip("torch")
    c = shape[0]
    net = cnndsl.loads(f"network t: input {'x'.join(map(str, shape))}  a: cbam({reduction}, k={k})")
    model = cnndsl.build_torch(net).eval()
    ref = reference_cbam(torch, c, reduction, k).eval()
    hidden = max(1, c // reduction)
    assert net.params == sum(p.numel() for p in ref.parameters()) == sum(p.numel() for p in model.parameters())
    assert net.params == 2 * c * hidden + hidden + c + 2 * k * k
    assert net.macs == 2 * 2 * c * hidden + shape[1] * shape[2] * 2 * k * k
    with torch.no_grad():  # the same weights in both: the plugin's 1x1 convs are the reference's linear layers
        ref.mlp[0].weight.copy_(model.a.fc1.weight[:, :, 0, 0])
        ref.mlp[0].bias.copy_(model.a.fc1.bias)
        ref.mlp[2].weight.copy_(model.a.fc2.weight[:, :, 0, 0])
        ref.mlp[2].bias.copy_(model.a.fc2.bias)
        ref.conv.weight.copy_(model.a.spatial.weight)
        x = torch.randn(2, *shape)
        y = model(x)
        torch.testing.assert_close(y, ref(x), rtol=1e-5, atol=1e-6)
    assert tuple(y.shape[1:]) == net.graph.node("a").shape == shape


def test_cbam_argument_and_shape_errors_have_positions(cbam):
    with pytest.raises(CnnArgumentError, match="'cbam' needs an odd k, got 4") as e:
        cnndsl.loads("network t: input 8x8x8\n  conv3-8 cbam(k=4)")
    assert (e.value.line, e.value.col) == (2, 11)
    with pytest.raises(CnnShapeError, match="'cbam' needs a feature map") as e:
        cnndsl.loads("network t: input 8x8x8\n  fc-10 cbam")
    assert (e.value.line, e.value.col) == (2, 9)
    assert cnndsl.loads("network t: input 8x8x8  cbam3").graph.node("cbam1").args == {"reduction": 16, "k": 3}


#: Blocks whose CBAM layers read different widths: the generated classes take them from the block's parameter.
STAGES = """
block unit(c, s=1): conv3-{c}/{s} bn relu cbam(4)
network t: input 3x12x12  unit(8) unit(16, 2) unit(16) gap fc: fc-5
"""


#: A block whose CBAM reads different widths that no parameter of it holds: the plan makes them one.
GATES = """
block gate: relu cbam(4)
network t: input 3x12x12  conv3-8 gate conv3-16 gate gap fc: fc-5
"""


@pytest.mark.parametrize("text", [STAGES, GATES], ids=["block-parameter", "derived"])
def test_cbam_jax_and_flax_equal_torch_on_the_same_weights(cbam, text):
    torch = pytest.importorskip("torch")
    jnp = pytest.importorskip("jax.numpy")
    from cnndsl.backends import flax as flax_backend

    net = cnndsl.loads(text)
    model = cnndsl.build_torch(net).eval()
    jax_source = cnndsl.compile(net, "jax")
    if text is STAGES:
        assert "in_channels=c, reduction=4, k=7" in jax_source  # the block's parameter, not a number
    else:
        assert "in_channels=in_channels, reduction=4, k=7" in jax_source
    x = torch.randn(2, 3, 12, 12)
    with torch.no_grad():
        y = model(x).numpy()
    nhwc = jnp.asarray(x.numpy().transpose(0, 2, 3, 1))
    variables = cnndsl.torch_to_jax(net, model.state_dict())
    np.testing.assert_allclose(np.asarray(cnndsl.build_jax(net).apply(variables, nhwc)), y, rtol=1e-4, atol=1e-5)
    flax_model = flax_backend.torch_to_flax(net, model.state_dict())
    flax_model.eval()
    np.testing.assert_allclose(np.asarray(flax_model(nhwc)), y, rtol=1e-4, atol=1e-5)
    back = flax_backend.flax_to_torch(net, flax_model)
    assert all(torch.equal(back[k], v) for k, v in model.state_dict().items() if "cbam" in k)


def test_cbam_generated_code_is_self_contained_deterministic_and_clean(cbam, tmp_path):
    net = cnndsl.loads(STAGES)
    sources = {b: cnndsl.compile(net, b) for b in ("torch", "jax", "flax")}
    assert sources == {b: cnndsl.compile(cnndsl.loads(STAGES), b) for b in sources}
    assert "class CBAM(nn.Module):" in sources["torch"] and "cnndsl_cbam" not in sources["torch"]
    assert "def init_cbam(key, *" in sources["jax"] and "cnndsl_cbam" not in sources["jax"]
    assert "from cnndsl_cbam.nnx_cbam import CBAM\n" in sources["flax"]  # the Flax hook names a module
    for backend, src in sources.items():
        (tmp_path / f"{backend}.py").write_text(src, encoding="utf-8")
    done = subprocess.run([sys.executable, "-m", "ruff", "check", *GENERATED_CODE_RUFF, str(tmp_path)],
                          capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stdout + done.stderr


def test_cbam_in_summary_graph_expand_and_variants(cbam, tmp_path):
    net = cnndsl.loads(STAGES)
    row = next(line for line in net.summary().splitlines() if "cbam1: cbam r=4" in line)  # unit1's, 8 channels
    assert row.split()[3:5] == ["8x12x12", f"{8 * 2 + 2 + 2 * 8 + 8 + 2 * 7 * 7}"]
    from cnndsl.report.graphviz import to_dot

    assert "cbam r=4" in to_dot(net)
    from cnndsl.report.expand import expand

    again = cnndsl.loads(expand(net))
    assert again.params == net.params and again.macs == net.macs
    space = tmp_path / "space.cnn"
    space.write_text("block unit(c): conv3-{c} bn relu choice< cbam({4|8}) | identity >\n"
                     "network t: input 3x8x8  unit(8) unit(16) gap fc: fc-2\n", encoding="utf-8")
    members = list(cnndsl.variants(str(space)))
    assert len(members) == 3 and all(m.error is None for m in members)  # one choice in the block, for both units
    assert sorted(m.network_obj.params for m in members) == sorted(
        cnndsl.loads(f"network t: input 3x8x8  conv3-8 bn relu {a} conv3-16 bn relu {b} gap fc: fc-2").params
        for a, b in (("cbam(4)", "cbam(4)"), ("cbam(8)", "cbam(8)"), ("identity", "identity")))


def test_cbam_through_the_cli_by_module_name(cbam, tmp_path, capsys):
    net = tmp_path / "net.cnn"
    net.write_text("network t: input 3x8x8  conv3-8 relu cbam(2) gap fc: fc-2\n", encoding="utf-8")
    assert main(["summary", str(net), "--format", "json", "--plugins", "cnndsl_cbam"]) == 0
    layer = next(r for r in json.loads(capsys.readouterr().out)["layers"] if r["op"] == "cbam")
    assert layer["params"] == 2 * 8 * 4 + 4 + 8 + 2 * 7 * 7 and layer["shape"] == [8, 8, 8]
    for backend in ("torch", "jax", "flax"):
        out = tmp_path / f"{backend}.py"
        assert main(["compile", str(net), "--backend", backend, "-o", str(out), "--plugins", "cnndsl_cbam"]) == 0
        assert "cbam" in out.read_text()


# ----------------------------------------------------------------------------- an installed package


@pytest.mark.slow
def test_cbam_installed_in_a_fresh_venv_through_its_entry_point(tmp_path):
    """``pip install`` of a copy of examples/cbam into a new venv; the CLI finds the op by the entry point's name.

    The venv sees this interpreter's packages (cnndsl, torch, jax, pip, setuptools) through a .pth file, and has no
    pip of its own (ensurepip's setuptools is too old to build the package without build isolation)."""
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    site = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          capture_output=True, text=True, check=True).stdout.strip()
    import site as this_site

    lines = [f"import site; site.addsitedir({d!r})\n" for d in this_site.getsitepackages()]  # their .pth files count
    (Path(site) / "parent.pth").write_text("".join(lines), encoding="utf-8")
    package = tmp_path / "cbam"  # a copy: building leaves build/ and *.egg-info next to the sources
    shutil.copytree(EXAMPLE, package, ignore=shutil.ignore_patterns("__pycache__", "build", "*.egg-info"))
    subprocess.run([str(python), "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation", str(package)],
                   check=True, cwd=tmp_path)
    net = tmp_path / "net.cnn"
    net.write_text("block unit(c): conv3-{c} bn relu choice< cbam(4) | identity >\n"
                   "network t: input 1x8x8  unit(8) unit(16) gap fc: fc-10\n", encoding="utf-8")

    def cli(*args: str) -> str:
        done = subprocess.run([str(python), "-m", "cnndsl", *args, "--plugins", "cbam"], capture_output=True,
                              text=True, cwd=tmp_path, check=False)
        assert done.returncode == 0, done.stdout + done.stderr
        return done.stdout

    assert "ok (t:" in cli("check", str(net))
    assert "cbam r=4" in cli("summary", str(net))
    for backend in ("torch", "jax", "flax"):
        assert "CBAM" in cli("compile", str(net), "--backend", backend)
    cli("graph", str(net), "-o", str(tmp_path / "t.dot"))
    assert "cbam r=4" in (tmp_path / "t.dot").read_text()
    assert cli("variants", str(net), "--count").strip().startswith("2")
    assert "test accuracy" in cli("train", str(net), "--epochs", "1")
    bare = subprocess.run([str(python), "-m", "cnndsl", "check", str(net)], capture_output=True, text=True,
                          cwd=tmp_path, check=False)
    assert bare.returncode == 1 and "unknown layer or block 'cbam'" in bare.stderr  # not loaded unless asked
    assert "the installed plugin 'cbam' (cnndsl-cbam) may define it: load it with --plugins cbam" in bare.stderr


# ----------------------------------------------------------------------------- the untested paths: ONNX, search, LSP,
# ----------------------------------------------------------------------------- workers, the hint at an unknown layer


@pytest.mark.parametrize("inference", [False, True], ids=["train-build", "inference-build"])
def test_cbam_exports_to_onnx_and_onnxruntime_matches_torch(cbam, tmp_path, inference):
    """``export --onnx`` of a network with CBAM (torch.onnx of the generated model), run by onnxruntime's own
    kernels against the PyTorch model on the same weights, to 1e-4 of the output's scale (as tests/test_onnx.py);
    the inference build folds the batch norms around the plugin op and keeps it."""
    torch = pytest.importorskip("torch")
    onnx = pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    source = tmp_path / "stages.cnn"
    source.write_text(STAGES, encoding="utf-8")
    out = tmp_path / "stages.onnx"
    flags = ["--inference"] if inference else []
    assert main(["export", str(source), "--onnx", str(out), *flags, "--plugins", "cnndsl_cbam"]) == 0
    onnx.checker.check_model(str(out), full_check=True)
    net = cnndsl.load(str(source))
    torch.manual_seed(0)  # the weights the export drew (its seed=0)
    model = cnndsl.build_torch(net).eval()
    gen = torch.Generator().manual_seed(5)
    if inference:  # batch-norm statistics away from the identity, so that folding them changes the weights
        with torch.no_grad():
            for key, value in model.state_dict().items():
                if key.endswith("running_mean"):
                    value.copy_(0.1 * torch.randn(value.shape, generator=gen))
                elif key.endswith("running_var"):
                    value.copy_(torch.rand(value.shape, generator=gen) + 0.5)
        data = __import__("cnndsl.tools.onnx_export", fromlist=["to_onnx"]).to_onnx(
            net, inference=True, state_dict=model.state_dict())
    else:
        data = out.read_bytes()
    assert "Sigmoid" in {n.op_type for n in onnx.load_from_string(data).graph.node}  # CBAM's gates
    x = torch.randn(3, *net.input_shape, generator=gen)
    with torch.no_grad():
        want = model(x).numpy()
    options = ort.SessionOptions()
    options.intra_op_num_threads = 2
    (got,) = ort.InferenceSession(data, options, providers=["CPUExecutionProvider"]).run(None, {"input": x.numpy()})
    scale = float(np.abs(want).max())
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * scale)


SPACE = """block unit(c): conv3-{c} bn relu choice< cbam({4|8}) | identity >
network t: input 3x8x8  unit(8) unit(16) gap fc: fc-2
"""


def _flat_params(a: str) -> int:
    """The parameters of the member whose choice is ``a``, from the network written out by hand."""
    return cnndsl.loads(f"network t: input 3x8x8  conv3-8 bn relu {a} conv3-16 bn relu {a} gap fc: fc-2").params


def test_search_over_a_choice_of_the_plugin_op(cbam, tmp_path, capsys):
    """``search`` (an Optuna study, the IR's params as its objective: nothing trains) over a space whose choice holds
    the plugin op; every trial's parameters are those of its member written out by hand, and ``variants --count``
    counts the plugin's options."""
    pytest.importorskip("optuna")
    space = tmp_path / "space.cnn"
    space.write_text(SPACE, encoding="utf-8")
    assert main(["variants", str(space), "--count", "--plugins", "cnndsl_cbam"]) == 0
    assert capsys.readouterr().out.split()[0] == "3"
    out = tmp_path / "search"
    assert main(["search", str(space), "--objectives", "params", "--trials", "6", "--sampler", "random", "--seed", "1",
                 "--out", str(out), "--plugins", "cnndsl_cbam"]) == 0
    import csv

    rows = list(csv.DictReader((out / "results.csv").open(encoding="utf-8")))
    assert len(rows) == 6 and {r["state"] for r in rows} == {"complete"}
    expected = {a: _flat_params(a) for a in ("cbam(4)", "cbam(8)", "identity")}
    for r in rows:
        choices = json.loads(r["choices"])
        width = [v for v in choices.values() if v.isdigit()]  # the reduction chosen, where cbam was
        a = "identity" if "identity" in choices.values() else f"cbam({width[0]})"
        assert int(r["params"]) == expected[a], r
    assert {int(r["params"]) for r in rows} != {expected["identity"]}  # the plugin op was chosen at least once
    best = cnndsl.load(str(out / "best.cnn"))
    assert best.params == min(expected.values())


#: A plugin file (``use "myops.py"``) registering ``twice_from_file``, a channel-keeping op with no weights.
TWICE_FILE = textwrap.dedent("""\
        from cnndsl.ops import Emit, Family, FlatOrder, Op, Saved, register
        @register
        class Twice(Op):
            api_version = 1
            name = "twice_from_file"
            doc = "x + x"
            writable, family, paper_kind, saves = True, Family.MERGE, None, Saved.NOTHING
            flat_order, torch_module, overwritable, commutative = FlatOrder.KEEPS, True, False, False
            foldable, fold_target, weights = False, False, ()
            torch_emit = Emit("Twice", source="class Twice(nn.Module):\\n    def forward(self, x):\\n        return 2 * x\\n")
            jax_emit = flax_emit = None
            def infer(self, x, args, span, warn=None):
                return x
            def count_params(self, xs, args):
                return 0
            def count_macs(self, xs, args, out):
                return 0
            def short_form(self, args):
                return "twice"
    """)


@pytest.mark.slow
def test_search_workers_load_the_plugin_too(registry, tmp_path):
    """``search --workers 2`` over a space that ``use``s a plugin file: the spawned worker starts without the
    parent's plugins and loads them (cnndsl.ops.plugin_sources), so it opens the space and checks its members
    as the parent does."""
    pytest.importorskip("optuna")
    (tmp_path / "twice_op.py").write_text(TWICE_FILE, encoding="utf-8")
    space = tmp_path / "space.cnn"
    space.write_text('use "twice_op.py"\nnetwork t: input 4x6x6  conv3-{4|8} choice< twice_from_file | identity > gap '
                     'fc: fc-2\n',
                     encoding="utf-8")
    out = tmp_path / "search"
    assert main(["search", str(space), "--objectives", "params", "--trials", "8", "--sampler", "random", "--seed", "2",
                 "--workers", "2", "--out", str(out), "--allow-plugins"]) == 0
    import csv

    rows = list(csv.DictReader((out / "results.csv").open(encoding="utf-8")))
    assert len(rows) == 8 and {r["state"] for r in rows} == {"complete"}, rows
    assert len({r["worker"] for r in rows}) == 2  # both workers ran trials


LSP_DOC = "network t: input 3x8x8\n  conv3-8 relu cbam(4)\n  cbam(k=4) gap fc: fc-2\n"


def _lsp_client(*flags: str):
    """tests/test_lsp.py's client, talking to ``cnndsl lsp FLAGS`` with the example package importable."""
    pytest.importorskip("pygls")
    import os

    from test_lsp import Client

    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(EXAMPLE), os.environ.get("PYTHONPATH", "")])}
    client = Client(*flags, env=env)
    client.initialize()
    return client


def _lsp_text(client, uri: str, text: str, version: int) -> list[dict]:
    if version == 1:
        client.send("textDocument/didOpen", {"textDocument": {"uri": uri, "languageId": "cnn", "version": 1,
                                                             "text": text}}, request=False)
    else:
        client.send("textDocument/didChange", {"textDocument": {"uri": uri, "version": version},
                                               "contentChanges": [{"text": text}]}, request=False)
    return client.diagnostics(uri, version)["diagnostics"]


def test_lsp_with_plugins_gives_the_plugin_ops_diagnostics_and_hovers(tmp_path):
    """``cnndsl lsp --plugins cnndsl_cbam``: a bad argument of the plugin op is a diagnostic at the layer; once fixed,
    hovering the layer shows its short form, shape and the parameters counted by hand; the flag also allows
    ``use "x.py"``."""
    (tmp_path / "myops.py").write_text("from cnndsl.ops import Op  # registers nothing\n", encoding="utf-8")
    uri = (tmp_path / "t.cnn").as_uri()
    client = _lsp_client("--plugins", "cnndsl_cbam")
    try:
        (bad,) = _lsp_text(client, uri, LSP_DOC, 1)
        assert bad["message"].startswith("'cbam' needs an odd k, got 4") and bad["severity"] == 1
        assert bad["range"] == {"start": {"line": 2, "character": 2}, "end": {"line": 2, "character": 11}}
        assert _lsp_text(client, uri, 'use "myops.py"\n' + LSP_DOC.replace("cbam(k=4) ", ""), 2) == []
        hover = client.request("textDocument/hover", {"textDocument": {"uri": uri},
                                                      "position": {"line": 2, "character": 16}})["result"]
        value = hover["contents"]["value"]
        hidden = 8 // 4
        assert "**cbam1** `cbam r=4`" in value and "8x8x8" in value
        assert f"{2 * 8 * hidden + hidden + 8 + 2 * 7 * 7} params" in value
    finally:
        client.close()


def test_lsp_without_plugins_refuses_use_at_the_use_naming_the_flag(tmp_path):
    (tmp_path / "marker.py").write_text("open(__file__ + '.ran', 'w').close()\n", encoding="utf-8")
    uri = (tmp_path / "t.cnn").as_uri()
    client = _lsp_client()
    try:
        (d,) = _lsp_text(client, uri, 'use "marker.py"\n' + LSP_DOC, 1)
        assert d["range"] == {"start": {"line": 0, "character": 0}, "end": {"line": 0, "character": 15}}
        assert d["message"].startswith('`use "marker.py"` loads a plugin, which is not allowed here')
        assert "--allow-plugins" in d["message"] and "--plugins" in d["message"]
        (d,) = _lsp_text(client, uri, LSP_DOC.replace("cbam(k=4) ", ""), 2)  # the op is not there unloaded
        assert d["message"].startswith("unknown layer or block 'cbam'")
    finally:
        client.close()
    assert not (tmp_path / "marker.py.ran").exists()


def _fake_distribution(root: Path, points: dict[str, str]) -> None:
    """An installed package as importlib.metadata finds it (a *.dist-info with its entry points) in ``root``, and
    the modules it names, each leaving a mark if imported."""
    info = root / "fake_ops-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: fake-ops\nVersion: 1.0\n", encoding="utf-8")
    (info / "entry_points.txt").write_text(
        "[cnndsl.ops]\n" + "".join(f"{name} = {module}\n" for name, module in points.items()), encoding="utf-8")
    for module in points.values():
        (root / f"{module}.py").write_text("open(__file__ + '.ran', 'w').close()\n", encoding="utf-8")


def test_unknown_layer_names_the_installed_plugins_without_importing_them(tmp_path, monkeypatch):
    with pytest.raises(CnnDslError) as e:
        cnndsl.loads("network t: input 3x8x8  conv3-8 coordatt")
    assert e.value.hint is None or "--plugins" not in e.value.hint  # nothing installed here: no plugin hint
    _fake_distribution(tmp_path, {"coordatt": "fake_coordatt", "deform": "fake_deform"})
    monkeypatch.syspath_prepend(str(tmp_path))
    assert ("coordatt", "fake-ops") in ops.installed_plugins()
    with pytest.raises(CnnDslError, match="unknown layer or block 'coordatt'") as e:  # the plugin's own name
        cnndsl.loads("network t: input 3x8x8\n  conv3-8 coordatt")
    assert (e.value.line, e.value.col) == (2, 11)
    assert e.value.hint == ("the installed plugin 'coordatt' (fake-ops) may define it: load it with --plugins "
                            "coordatt (this runs its code)")
    with pytest.raises(CnnDslError) as e:  # another name: every installed plugin, after the spelling hint
        cnndsl.loads("network t: input 3x8x8  conv3-8 relux")
    assert e.value.hint == ("did you mean 'relu'? or an op of an installed plugin, loaded with --plugins NAME: "
                            "coordatt (fake-ops), deform (fake-ops)")
    with pytest.raises(CnnDslError) as e:
        cnndsl.loads("network t: input 3x8x8  conv3-8 zqxw")
    assert e.value.hint == ("an op of an installed plugin? load it with --plugins NAME: coordatt (fake-ops), "
                            "deform (fake-ops)")
    with pytest.raises(CnnDslError) as e:  # a known op's kernel spelling keeps its own hint
        cnndsl.loads("network t: input 3x8x8  conv3-8 relu2")
    assert "--plugins" not in (e.value.hint or "")
    assert not list(tmp_path.glob("*.ran"))  # neither module was imported


def test_plugin_sources_load_the_same_ops_in_a_fresh_process(cbam, tmp_path):
    """What a spawned worker (``train --nproc``, ``search --workers``) is given: the plugins this process loaded
    (``use "x.py"`` files too), which a fresh interpreter loads to have the same ops; an op it cannot load is a
    clear error."""
    plugin = tmp_path / "myops.py"
    plugin.write_text(TWICE_FILE, encoding="utf-8")
    (tmp_path / "net.cnn").write_text('use "myops.py"\nnetwork t: input 3x8x8  conv3-4 twice_from_file cbam(2)\n',
                                      encoding="utf-8")
    try:
        net = cnndsl.load(str(tmp_path / "net.cnn"), allow_plugins=True)
        sources = ops.plugin_sources()
        assert "cnndsl_cbam" in sources and str(plugin.resolve()) in sources
        needed = sorted({n.op for n in net.graph.nodes() if n.opdef.plugin})
        assert needed == ["cbam", "twice_from_file"]
        probe = ("import sys, json; from cnndsl import ops; args = json.loads(sys.argv[1]); ops.load_plugins(*args); "
                 "print(sorted(op.name for op in ops.plugin_ops()))")
        env = {**__import__("os").environ, "PYTHONPATH": str(EXAMPLE)}
        done = subprocess.run([sys.executable, "-c", probe, json.dumps([sources, needed])], capture_output=True,
                              text=True, env=env, check=False, cwd=tmp_path)
        assert done.returncode == 0, done.stderr
        assert done.stdout.strip() == "['cbam', 'twice_from_file']"
    finally:
        ops.unregister("twice_from_file")
    with pytest.raises(ops.CnnPluginError, match="plugin op 'nowhere' cannot be loaded in a worker process") as e:
        ops.load_plugins(sources, ["cbam", "nowhere"])
    assert "top level of a plugin module" in e.value.hint


@pytest.mark.slow
def test_train_nproc_2_loads_the_plugin_in_every_worker(cbam, tmp_path):
    """``train --nproc 2`` with a plugin op: torchrun's elastic launcher spawns fresh processes, which load the
    plugins of the launching one (cnndsl.ops.plugin_sources) before they build the model. Against one process on
    the same seed and global batch (no batch norm, so only the order of float32 sums differs, as in
    tests/test_train_cli.py): the same loss and accuracy, weights within 1e-5."""
    torch = pytest.importorskip("torch")
    import os

    from cnndsl.weights import load_weights

    text = "network tiny: input 1x8x8  conv3-4 relu cbam(2, k=3) flatten fc-10\n"
    (tmp_path / "tiny.cnn").write_text(text, encoding="utf-8")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(EXAMPLE), str(EXAMPLE.parents[1])])}
    for n in (1, 2):
        done = subprocess.run([sys.executable, "-m", "cnndsl", "train", "tiny.cnn", "--epochs", "1", "--nproc", str(n),
                               "--device", "cpu", "--out", f"n{n}", "--plugins", "cnndsl_cbam"], capture_output=True,
                              text=True, env=env, timeout=300, check=False, cwd=tmp_path)
        assert done.returncode == 0, done.stdout + done.stderr
        assert "Traceback" not in done.stderr and done.stdout.splitlines()[-1].startswith("test accuracy: ")
    net = cnndsl.loads(text)
    one, two = (load_weights(tmp_path / f"n{n}" / "weights.safetensors", net) for n in (1, 2))
    assert any(".fc1." in k for k in one)
    for k in one:
        torch.testing.assert_close(two[k], one[k], rtol=0, atol=1e-5)
    a, b = (json.loads((tmp_path / f"n{n}" / "metrics.json").read_text()) for n in (1, 2))
    assert a["test_accuracy"] == b["test_accuracy"] and b["settings"]["nproc"] == 2
    assert a["epochs"][0]["loss"] == pytest.approx(b["epochs"][0]["loss"], rel=1e-6)
