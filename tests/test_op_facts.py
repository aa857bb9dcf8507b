"""One home per op: every fact about an op is declared on its class in the registry, and read from there."""

from __future__ import annotations

import ast
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

import cnndsl
from cnndsl.ir import ops, vocabulary
from cnndsl.ir.ops import FACTS, OPS, Family, FlatOrder, Op, Saved
from cnndsl.tools.editors import GRAMMAR_FILE, textmate_grammar

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "cnndsl"

FACT_TYPES = {"writable": bool, "family": Family, "paper_kind": (str, type(None)), "saves": Saved,
              "flat_order": FlatOrder, "torch_module": bool, "overwritable": bool, "commutative": bool,
              "foldable": bool, "fold_target": bool, "weights": tuple}

#: String constants in the modules outside the registry and the passes that equal an op kind but do not name an
#: op: (path under cnndsl/, the string).
NOT_AN_OP = {
    ("tools/cli.py", "input"),  # the --input option and the `list` table's column
    ("tools/onnx_export.py", "input"),  # the ONNX graph input's name
    ("search/supernet.py", "input"),  # the input shape's key in a supernet folder's space.json
    ("tools/fmt.py", "add"), ("tools/fmt.py", "mul"),  # the grammar's rules for + and * in expressions
    ("tools/fmt.py", "input"),  # the grammar's rule for a network's input
}


def test_every_op_declares_every_fact():
    assert set(FACT_TYPES) == set(FACTS)
    for name, op in OPS.items():
        cls = type(op)
        owners = [k for k in cls.__mro__ if issubclass(k, Op) and k is not Op]
        for fact in FACTS:
            assert any(fact in vars(k) for k in owners), f"{name} declares no {fact}"
            assert isinstance(getattr(op, fact), FACT_TYPES[fact]), (name, fact)


def test_op_base_gives_no_fact_a_default_and_documents_each():
    for fact in FACTS:
        assert fact not in vars(Op), fact
        assert f"``{fact}``" in Op.__doc__, f"Op's docstring does not document {fact}"


def test_register_refuses_an_op_that_leaves_out_a_fact():
    class Hardswish(Op):
        name = "hardswish_without_facts"
        family = Family.ACTIVATION

    with pytest.raises(TypeError, match="declares no writable, paper_kind, saves"):
        ops.register(Hardswish)
    assert "hardswish_without_facts" not in OPS and ops.lookup("hardswish_without_facts") is None


def test_facts_agree_with_the_op_semantics():
    for name, op in OPS.items():
        assert op.activation == (op.family is Family.ACTIVATION), name
        assert not (op.foldable and op.fold_target), name
        if op.commutative:
            assert op.max_inputs != 1, name
        if op.overwritable:  # a fresh tensor its backward does not read
            assert op.materializes and Saved.OUTPUT not in op.saves, name
    assert OPS["add"].commutes({"scale": 1.0}) and not OPS["add"].commutes({"scale": 0.5})


def test_checked_in_textmate_grammar_is_the_generated_one():
    path = ROOT / "editors" / GRAMMAR_FILE
    assert path.read_bytes() == textmate_grammar().encode("utf-8"), "run: python -m cnndsl.tools.editors"
    r = subprocess.run([sys.executable, "-m", "cnndsl.tools.editors", "--check", str(path.parent)], capture_output=True,
                       text=True, check=False)
    assert r.returncode == 0, r.stderr


def test_editors_check_reports_a_stale_grammar(tmp_path):
    (tmp_path / GRAMMAR_FILE).write_text("{}\n")
    r = subprocess.run([sys.executable, "-m", "cnndsl.tools.editors", "--check", str(tmp_path)], capture_output=True,
                       text=True, check=False)
    assert r.returncode == 1 and "out of date" in r.stderr
    r = subprocess.run([sys.executable, "-m", "cnndsl.tools.editors", str(tmp_path)], capture_output=True, text=True,
                       check=False)
    assert r.returncode == 0 and (tmp_path / GRAMMAR_FILE).read_text() == textmate_grammar()


def test_textmate_grammar_highlights_exactly_the_writable_spellings():
    layer = re.compile(json.loads(textmate_grammar())["repository"]["layer"]["match"])
    for op in OPS.values():
        for spelling in (op.name, *op.aliases):
            hit = layer.match(f"{spelling}3 ")
            assert bool(hit and hit.group(1) == spelling) == op.writable, spelling
    flags = re.compile(json.loads(textmate_grammar())["repository"]["constant"]["match"])
    for op in OPS.values():
        for word in op.flags:
            assert flags.fullmatch(word), word


def test_lexer_highlights_the_same_words():
    pytest.importorskip("pygments")
    from pygments.token import Keyword, Name

    from cnndsl.tools.lexer import CnnLexer

    for word in vocabulary.layer_words():
        toks = [(t, v) for t, v in CnnLexer().get_tokens(f"{word}3 ") if v.strip()]
        assert toks[0] == (Name.Builtin, word), toks
    for word in vocabulary.flag_words():
        toks = [(t, v) for t, v in CnnLexer().get_tokens(f"conv3-8({word})") if v.strip()]
        assert (Keyword.Constant, word) in toks, toks


def op_kind_strings(source: str) -> list[tuple[int, str]]:
    """(line, string) for each string constant in Python ``source`` that equals an op kind (a key of OPS), leaving
    out docstrings (a module's, a class's, a function's first statement)."""
    tree = ast.parse(source)
    docs = {id(node.body[0].value) for node in ast.walk(tree)
            if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body
            and isinstance(node.body[0], ast.Expr) and isinstance(node.body[0].value, ast.Constant)}
    return sorted((node.lineno, node.value) for node in ast.walk(tree)
                  if isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value in OPS
                  and id(node) not in docs)


def test_the_op_kind_scan_finds_strings_but_not_docstrings():
    source = ('"""conv"""\nclass A:\n    """bn"""\n    def f(self):\n        """fc"""\n'
              '        return self.op in ("conv", "bn") or f"{x}" == "relu" or "skip" == "none"\n')
    assert op_kind_strings(source) == [(6, "bn"), (6, "conv"), (6, "relu")]


def test_no_module_outside_the_registry_and_the_passes_names_an_op_kind():
    """Only cnndsl/ir (the registry), cnndsl/passes and backends/ name op kinds; the rest read the facts."""
    modules = sorted(p for p in PACKAGE.rglob("*.py") if p.relative_to(PACKAGE).parts[0] not in ("ir", "passes"))
    assert len(modules) > 20 and PACKAGE / "report" / "graphviz.py" in modules and PACKAGE / "tools" / "lsp.py" in modules
    named = [f"cnndsl/{path.relative_to(PACKAGE).as_posix()}:{line}: {s!r}" for path in modules
             for line, s in op_kind_strings(path.read_text(encoding="utf-8"))
             if (path.relative_to(PACKAGE).as_posix(), s) not in NOT_AN_OP]
    assert named == [], "these name ops; read the fact from cnndsl.ir.ops instead:\n" + "\n".join(named)


def test_torch_builds_a_module_exactly_for_the_torch_module_ops():
    pytest.importorskip("torch")
    from cnndsl.backends.torch import build

    texts = [("network t: input 2x16x16 d: conv3-4(p=valid) relu deconv2-4/2 concat(crop=true)< @d | identity > "
              "conv1-3 sigmoid maxpool2/1 gap flatten fc-3"),
             ("network t: input 3x12x12 conv3-6 lrn tanh avgpool3/2 dropout(0.2) residual(scale=0.5)< conv3-6 bn > "
              "adaptiveavgpool(2) fc-8 bn relu fc-4 softmax"),
             "network t: input 4x8x8 residual(shortcut=pad)< conv3-8/2 bn relu conv3-8 bn > relu gap fc-2",
             ("network t: input 8x8x8 relu6 silu hardswish hardsigmoid gelu leakyrelu elu mish droppath(0.1) "
              "shuffle(2) upsample(2) scale< gap conv1-8 sigmoid > split< skip | conv1-4 > ln gn(2) "
              "layer_scale: layerscale pointwise-8 resize< @input > add< zero | skip > gap fc-3 ln")]
    seen = set()
    for text in texts:
        net = cnndsl.loads(text)
        modules = dict(build(net).named_modules())  # the generated model's modules, by their state_dict names
        for node in net.graph.nodes():
            assert (node.name in modules) == node.opdef.torch_module, node.op
            seen.add(node.op)
    assert seen == {name for name in OPS if name != "shortcut"}  # resolve_shortcuts replaces every shortcut


#: Every kind of kernel in a block whose numbers differ between its instances (so that the printers write the fans
#: as expressions of a constructor's parameters), grouped and rectangular, then a dense layer over a feature map.
KERNELS = """
block kernels(c, k, g): conv(c={c}, k={k}, groups={g}) relu deconv(c={2 * c}, k={k}, s=1, groups={g}) pointwise-{c}
network kernels: input 4x12x12
    a: kernels(8, 3, 2)  b: kernels(12, (1, 3), 4)  d: kernels(6, 1, 1)  fc-5
"""


def test_every_op_with_a_kernel_declares_its_fans_and_no_other():
    assert vars(Op)["fans"] is None  # the one default
    for name, op in OPS.items():
        assert (op.fans is not None) == any(w.jax == "kernel" for w in op.weights), name
        assert op.fans is None or isinstance(op.fans, ops.Fans), name


def _torch_fans(net) -> dict[str, tuple[int, int]]:
    """Each kernel layer's (fan_in, fan_out) as torch's own init computes it, on the built module's weight."""
    torch = pytest.importorskip("torch")
    from cnndsl.backends.torch import build

    modules = dict(build(net).named_modules())
    return {n.name: torch.nn.init._calculate_fan_in_and_fan_out(modules[n.name].weight)
            for n in net.graph.nodes() if n.opdef.fans is not None}


def test_fans_are_the_ones_torch_computes_for_each_op_with_a_kernel():
    from cnndsl.backends.plan import layer_args

    net = cnndsl.loads(KERNELS)
    want = _torch_fans(net)
    assert {net.graph.node(n).op for n in want} == {name for name, op in OPS.items() if op.fans is not None}
    assert len({w for w in want.values()}) >= 8  # groups, rectangles and channel counts tell the axes apart
    for name, fans in want.items():
        node = net.graph.node(name)
        assert node.opdef.fans.evaluate(dict(layer_args(net.graph, node))) == fans, (name, node.op)


def test_the_jax_and_flax_printers_write_torchs_fans_in_every_instance():
    """The fans each printer writes, evaluated with each instance's constructor arguments, are torch's."""
    from cnndsl.backends.flax import FlaxPrinter
    from cnndsl.backends.jax import JaxEmitter

    net = cnndsl.loads(KERNELS)
    want = _torch_fans(net)
    jax_printer, flax_printer = JaxEmitter(net), FlaxPrinter(net)
    plan = jax_printer.plan
    checked, symbolic = {"jax": 0, "flax": 0}, set()
    for cls in (*plan.classes, plan.root):
        for backend, printer in (("jax", jax_printer.classes.get(cls.id, jax_printer.root)),
                                 ("flax", flax_printer.classes[cls.id])):
            for step in cls.steps:
                if step.kind != "layer" or OPS[step.op].fans is None:
                    continue
                texts = printer.fans(step)
                symbolic |= {(backend, step.op) for text in texts if not text.isdigit()}
                for scope in cls.instances:
                    args = dict(plan.instances[scope].args) if scope else {}
                    env = {printer.params[k]: v for k, v in args.items()}
                    got = tuple(eval(text, {}, env) for text in texts)  # the printer's own expressions
                    assert got == want[f"{scope}.{step.output}" if scope else step.output], (backend, scope, texts)
                    checked[backend] += 1
    assert checked == {"jax": len(want), "flax": len(want)}
    # the shared block's fans are expressions of its parameters, in both printers
    assert symbolic == {(b, op) for b in ("jax", "flax") for op in ("conv", "deconv", "pointwise")}
