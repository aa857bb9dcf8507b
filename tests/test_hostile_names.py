"""User text never becomes code: hostile file names, labels, block, parameter and network names.

Every name a .cnn file can carry ends in one of two ways on each backend: a clean error at the
name's position (only where PyTorch itself cannot take it: a label is a module attribute and a
state_dict key, so it is never renamed), or code that parses, imports with no side effects, and
computes what the other backend computes on the same weights.
"""

from __future__ import annotations

import ast
import builtins
import keyword
import os
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import pytest
from cnndsl.backends.base import PYTHON_RESERVED
from cnndsl.backends.torch import MODULE_ATTRS
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import cnndsl
from cnndsl import CnnDslError
from cnndsl.tools.cli import main as cli_main

torch = pytest.importorskip("torch")
jax = pytest.importorskip("jax")

from test_cross_backend import compare
from test_torch_backend import ir_state_keys

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from fuzz.harness import HOSTILE_NAMES, PLACES, place_text

# -------------------------------------------------------------------------------------------- the lists


def test_reserved_python_names_cover_the_running_python():
    assert set(keyword.kwlist) | set(keyword.softkwlist) | set(dir(builtins)) - {"__build_class__", "__debug__",
                                                                                    "__doc__", "__import__",
                                                                                    "__loader__", "__name__",
                                                                                    "__package__", "__spec__"} \
        <= PYTHON_RESERVED


def test_module_attributes_cover_the_installed_torch():
    """Every attribute of nn.Module, nn.Sequential and nn.ModuleDict is refused as a label."""
    nn = torch.nn
    attrs = set(dir(nn.Module())) | set(dir(nn.Sequential())) | set(dir(nn.ModuleDict()))
    assert {a for a in attrs if not a.startswith("_")} <= MODULE_ATTRS


# -------------------------------------------------------------------------------------------- file names

HOSTILE_FILES = {
    "docstring": 'x"""; import os; os.mkdir("pwned"); """.cnn',
    "newline": 'a\nimport os; os.mkdir("pwned")\n.cnn',
    "carriage_return": 'a\rimport os; os.mkdir("pwned")\r.cnn',
    "form_feed_and_separator": "a\x0c\u2028import os\u2029.cnn",
    "backslash": "x\\.cnn",
    "single_quotes": "x'''; import os; os.mkdir('pwned'); '''.cnn",
}

NET_WITH_BLOCKS = textwrap.dedent("""\
    block unit(c, s=1): residual< conv3-{c}/{s} bn relu conv3-{c} bn > relu
    network t with init(kaiming): input 3x8x8
        conv3-4 unit(4) unit(8, 2)
        head: [gap fc-3]
""")

RUN_GENERATED = textwrap.dedent("""\
    import importlib.util, sys
    for path in sys.argv[2:]:
        spec = importlib.util.spec_from_file_location("generated", path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        if sys.argv[1] == "torch":
            import torch
            print(tuple(module.T()(torch.randn(2, 3, 8, 8)).shape))
        else:
            import jax
            variables = module.init(jax.random.PRNGKey(0))
            print(tuple(module.apply(variables, jax.numpy.zeros((2, 8, 8, 3))).shape))
""")


@pytest.mark.parametrize("backend", ["torch", "jax"])
def test_hostile_file_names_stay_text(backend, tmp_path):
    """A file name reaches comments and docstrings escaped: the output parses, and importing it runs no code."""
    outputs = []
    for case, name in sorted(HOSTILE_FILES.items()):
        folder = tmp_path / case
        folder.mkdir()
        path = folder / name
        path.write_text(NET_WITH_BLOCKS, encoding="utf-8")
        out = folder / "model.py"
        assert cli_main(["compile", str(path), "--backend", backend, "-o", str(out)]) == 0, case
        ast.parse(out.read_text(encoding="utf-8"))
        outputs.append(str(out))
    # one process imports them all (a fresh interpreter: what a user's `import model` does)
    run = subprocess.run([sys.executable, "-c", RUN_GENERATED, backend, *outputs], cwd=tmp_path, check=False,
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr
    assert run.stdout.split("\n")[:-1] == ["(2, 3)"] * len(HOSTILE_FILES)
    assert not (tmp_path / "pwned").exists()


def test_hostile_file_name_through_build_torch(tmp_path):
    path = tmp_path / HOSTILE_FILES["docstring"]
    path.write_text(NET_WITH_BLOCKS, encoding="utf-8")
    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        model = cnndsl.build_torch(str(path))
    finally:
        os.chdir(cwd)
    assert tuple(model(torch.randn(1, 3, 8, 8)).shape) == (1, 3)
    assert not (tmp_path / "pwned").exists()


# -------------------------------------------------------------------------------------------- names in the language

#: Names drawn from every namespace the generated code has (the fuzz harness's list), and every attribute of
#: an nn.Module as the installed torch has it.
NAMES = sorted(set(HOSTILE_NAMES) | set(dir(torch.nn.Module())))
#: File names with everything a file name can hold that Python source cannot hold raw.
FILE_NAMES = st.text(st.sampled_from(list("ab_.\'\" \\\n\r\t\x0c\x0b\u2028\u2029\x85é#{}()")), min_size=1, max_size=12)


def refused_by_torch(name: str) -> bool:
    """The labels PyTorch cannot take (the backend's documented rule, restated)."""
    return name.startswith("_") or name in MODULE_ATTRS or keyword.iskeyword(name)


def check_place(place: str, name: str, file_name: str = "t.cnn") -> str:
    """Load ``name`` in ``place`` from a file called ``file_name``, compile it on both backends, and check what
    comes out; return the outcome."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / file_name.replace("/", "_")
        path.write_text(place_text(place, name), encoding="utf-8")
        try:
            net = cnndsl.load(str(path))
        except CnnDslError as e:  # the language itself refuses the name (a keyword of .cnn, a reserved word)
            assert e.span is not None and e.span.file == str(path), str(e)
            return "refused by the language"
    for backend in ("torch", "jax"):
        try:
            ast.parse(cnndsl.compile(net, backend))
        except CnnDslError as e:
            assert backend == "torch", f"{place}/{name}: the JAX backend refused it: {e}"
            assert e.span is not None and f"'{name}" in e.message and "cannot name a layer in PyTorch" in e.message
            assert any(refused_by_torch(part) for n in net.graph.nodes() for part in n.name.split(".")), str(e)
            return "refused by PyTorch"
    model = cnndsl.build_torch(net)
    assert sum(p.numel() for p in model.parameters()) == net.params
    assert set(model.state_dict()) == ir_state_keys(net)
    assert compare(net, jit=False) < 1e-4  # the same numbers as the JAX backend on the same weights
    return "compiled"


@pytest.mark.parametrize("place", sorted(PLACES))
def test_issue_cases(place):
    """The names the hostile-input review found broken, in every place."""
    outcomes = {name: check_place(place, name) for name in
                ("in_channels", "nn", "super", "self", "lambda", "None", "true", "forward", "training", "__init__",
                 "_modules", "register_forward_hook", "scale", "__c")}
    if place in ("block_parameter", "residual_parameter", "scaled_residual_parameter", "network_name",
                 "network_parameter", "input_name", "block_name"):
        # none of these becomes an attribute: only the language may refuse them
        assert "refused by PyTorch" not in {o for n, o in outcomes.items() if not n.startswith("_")}, outcomes
    assert outcomes["in_channels"] == "compiled" and outcomes["scale"] == "compiled"


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(place=st.sampled_from(sorted(PLACES)),
       name=st.one_of(st.sampled_from(NAMES), st.from_regex(r"[A-Za-z_][A-Za-z0-9_]{0,12}", fullmatch=True)),
       file_name=FILE_NAMES)
def test_any_name_anywhere_compiles_or_is_refused_at_its_place(place, name, file_name):
    check_place(place, name, file_name + ".cnn")


def test_init_on_a_network_without_weights():
    """`with init(...)` where no layer has weights: no empty loop, a model that builds."""
    net = cnndsl.loads("network t with init(kaiming): input 3x8x8\n  relu maxpool flatten", "t.cnn")
    source = cnndsl.compile(net)
    ast.parse(source)
    assert "reset_parameters" not in source
    assert tuple(cnndsl.build_torch(net)(torch.randn(1, 3, 8, 8)).shape) == (1, 48)


def test_compile_error_leaves_the_output_untouched(tmp_path):
    path = tmp_path / "net.cnn"
    path.write_text("network t: input 3x8x8\n  forward: conv3-4 fc-2\n")
    out = tmp_path / "model.py"
    out.write_text("previous\n")
    assert cli_main(["compile", str(path), "-o", str(out)]) == 1
    assert out.read_text() == "previous\n"
