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

#: String constants in cnndsl/*.py that are op spellings but do not name an op.
NOT_AN_OP = {
    ("cli.py", "input"),  # the --input option and the `list` table's column
    ("onnx_export.py", "input"),  # the ONNX graph input's name
    ("syntax.py", "INPUT"),  # the grammar's token for the `input` keyword
    ("train_jax.py", "linear"),  # jax.image.resize's interpolation
    ("vocabulary.py", "input"),  # the `input` keyword
}
#: Modules that still name op kinds, left for a later change.
DEFERRED: dict[str, str] = {}


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


def _op_strings(path: Path) -> set[str]:
    words = set(OPS) | set(ops.spellings())
    return {node.value for node in ast.walk(ast.parse(path.read_text(encoding="utf-8")))
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value.lower() in words}


@pytest.mark.parametrize("module", sorted(p.name for p in PACKAGE.glob("*.py") if p.name != "ops.py"))
def test_no_module_outside_the_registry_names_an_op(module):
    if module in DEFERRED:
        pytest.skip(f"deferred: {DEFERRED[module]}")
    named = {s for s in _op_strings(PACKAGE / module) if (module, s) not in NOT_AN_OP}
    assert named == set(), f"{module} names ops {sorted(named)}: read the fact from cnndsl.ir.ops instead"


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
              "layer_scale: layerscale pointwise-8 resize< @input > gap fc-3 ln")]
    seen = set()
    for text in texts:
        net = cnndsl.loads(text)
        modules = dict(build(net).named_modules())  # the generated model's modules, by their state_dict names
        for node in net.graph.nodes():
            assert (node.name in modules) == node.opdef.torch_module, node.op
            seen.add(node.op)
    assert seen == {name for name in OPS if name != "shortcut"}  # resolve_shortcuts replaces every shortcut
