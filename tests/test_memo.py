"""The resolve memo changes nothing: every build with it (``set_memo(True)``) equals the flat build (``False``).

``resolve`` shares block instances alike (same block, arguments, defaults, input shape and choices) through
:mod:`cnndsl.passes.memo`; the flat build, which resolves every instance on its own, is the reference. Each
test builds the same thing with the memo off, then on from a cold memo, then on again from the memo that the
first build left (a :class:`~cnndsl.Space` keeps one library, so its second member mounts the first's
fragments; every ``cnndsl.load`` starts a library, and so a memo, of its own), and compares what a user can
see: the layers in order with every annotation, the scopes, the outputs, the warnings, the totals, the
generated PyTorch source byte for byte, and for errors the exception's type, message, hint and position.

The default run takes a fixed subset of the zoo; ``--runslow`` adds every other zoo network.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

import cnndsl
from cnndsl import CnnDslError, Space
from cnndsl.front.loader import zoo_index
from cnndsl.passes.limits import raised
from cnndsl.passes.resolve import clear_memo, memo_stats, set_memo
from cnndsl.search.arch_hash import arch_hash

ZOO_DIR = Path(__file__).parents[1] / "networks"
ERRORS = sorted((Path(__file__).parent / "errors").glob("*.cnn"))

#: The zoo networks of the default run: long runs of alike blocks (resnet152), branches and reductions
#: (inception_v4), squeeze-excitation and stochastic depth by index (efficientnet_b0, convnext_tiny), dense
#: concatenation (densenet121), aux heads (googlenet_torchvision), an encoder-decoder (unet), dilation
#: (deeplabv3_resnet50), inherited defaults (inception_v3), ``x{se}`` rows (mobilenet_v3_large).
DEFAULT_ZOO = ("resnet50", "resnet152", "inception_v4", "efficientnet_b0", "densenet121", "unet", "resnet56",
               "googlenet_torchvision", "inception_v3", "mobilenet_v3_large", "convnext_tiny", "deeplabv3_resnet50",
               "regnet_y_400mf", "shufflenet_v2_x1_0")
SLOW_ZOO = tuple(n for n in sorted(zoo_index()) if n not in DEFAULT_ZOO)

#: Hand-written networks at the memo's edges: (name, text). Each is built from ``tests`` as its folder.
EDGES = {
    # a warning inside a shared instance is reported once, at the block's line, as in the flat build
    "warning_in_shared_block": """
block b(c): conv3-{c}/3(valid) conv2-{c}(p=3)
network n: input 3x7x7 conv1-3 b(3) b(3) b(3)
""",
    # an error that only the third instance meets (its input is too small by then)
    "error_in_later_instance": """
block b(c): conv3-{c} maxpool3/2
network n: input 3x16x16 b(4) b(4) b(4) b(4)
""",
    # freeze and replace reach inside instances that the memo shares with untouched ones
    "freeze_inside_shared": """
use "resnet.cnn"
network r = resnet50(classes=7) freeze(conv1, layer1.1, layer3.2, layer3.4.conv2)
""",
    "replace_inside_shared": """
use "resnet.cnn"
network r = resnet50 replace(layer2.1.conv2, conv3-128) replace(layer3.3.bn3, identity)
""",
    "freeze_and_replace_resnet18": """
use "resnet.cnn"
network r = resnet18(classes=5) freeze(layer1.0, layer2) replace(layer4.1.conv1, conv3-512)
""",
    # a labelled group is shared from its second build on (cnndsl.passes.resolve._group): rows alike build it twice
    "group_in_table_rows": """
block b(c) with conv(act=relu): s{c}: [conv3-{c} bn conv1-{c}]
network n with bn(eps=0.01): input 3x8x8 for c, i in (4, 0) (4, 1) (8, 2) (8, 3): t{i}: [conv1-{c} relu b(c)]
    g: [conv3-{8} bn] tail: [conv3-8 conv3-8]
""",
    # a group with a label inside, or a reference out of it, is not self-contained: built flat every time
    "group_not_self_contained": """
block b(c): s: [a: conv1-{c} add< @a | conv1-{c} >] r: [conv1-{c} add< @s | identity >]
network n: input 4x8x8 b(4) b(4) b(4)
""",
    # a group ending the network: its last layer takes no default activation
    "group_at_tail": """
block b(c) with conv(act=relu): s: [conv3-{c} conv3-{c}]
network n with conv(act=relu): input 3x8x8 b(4) b(4) last: [conv3-4 conv3-4]
""",
    # labels inside the block, read by @label
    "label_inside_block": """
block b(c): a: conv1-{c} conv3-{c} add< @a | identity >
network n: input 8x8x8 b(8) b(8) b(8)
""",
    # in.c decides the widths
    "input_channels": """
block b: conv1-{in.c} relu conv1-{2*in.c}
network n: input 4x8x8 b b b conv1-16 b b
""",
    # the default activation: skipped at the network's end and before an explicit activation
    "default_activation_at_tail": """
block b(c): conv3-{c}
network n with conv(act=relu): input 3x8x8 b(4) b(4) b(4)
""",
    "default_activation_before_explicit": """
block b(c): conv3-{c}
network n with conv(act=relu): input 3x8x8 b(4) relu b(4) b(4) b(4) sigmoid
""",
    # defaults inherited from the network, and a group around one instance
    "inherited_defaults": """
block b(c): conv3-{c} bn
network n with bn(eps=0.001): input 3x8x8 b(4) b(4) [ b(4) ] s: [b(4) b(4)]
""",
    "nested_blocks": """
block inner(c): conv3-{c} bn relu
block outer(c): inner(c) inner(c) add< identity | inner(c) >
network n: input 4x8x8 outer(4) outer(4) outer(4) outer(4)
""",
    "absent_steps": """
block b(c, t): conv1-{c} x{t} conv3-{c}
network n: input 4x8x8 b(4, 0) b(4, 1) b(4, 0) b(4, 1)
""",
    "shortcut_none": """
block b(c, s=1): residual(shortcut=none)< conv3-{c}/{s} bn >
network n: input 4x8x8 b(4) b(8) b(8) b(8, 2) b(8)
""",
    "choice_inside_block": """
block b(c): conv3-{4|8} conv1-{c}
network n: input 4x8x8 b(4) b(4) b(4)
""",
    "numbered_scopes": """
block b(c): conv1-{c}
network n: input 4x8x8 s: [b(4) b(4) b(4)] t: [b(4) x3] b(4) b(4)
""",
    "aux_head_between": """
block b(c): conv3-{c}
network n: input 3x32x32 b(8) b(8) aux< h: [gap fc-10] > b(8) b(8) gap fc-10
""",
    "dilation_same_padding": """
block b(c, d): conv3-{c}(d={d}, p=same)
network n: input 3x16x16 b(4, 1) b(4, 2) b(4, 1) b(4, 2)
""",
    "concat_inside_block": """
block b(c): concat< conv1-{c} | conv3-{c} >
network n: input 3x8x8 b(4) b(4) b(4)
""",
    "projection_shortcuts": """
block u(c, s=1): residual< conv3-{c}/{s} bn relu conv3-{c} bn > relu
network n: input 8x16x16 u(8) u(8) u(16, 2) u(16) u(16) u(16)
""",
    "aux_head_inside_block": """
block h(k): gap fc-{k}
block b(c): conv3-{c} aux< a: h(10) >
network n: input 3x16x16 b(4) b(4) b(4) gap fc-10
""",
    "labelled_instances_with_inner_labels": """
block b(c): x1: conv1-{c} y: add< @x1 | conv1-{c} >
network n: input 4x8x8 p: b(4) q: b(4) r: b(4)
""",
    # a block that instantiates itself: the nesting limit, reached once (it once took exponential time ON)
    "self_recursive_block": """
block a: conv1-3 a
network t: input 3x8x8 a
""",
    "recursion_below_a_chain": """
block b0: conv1-3 b0
block b1: conv1-3 b0
block b2: relu b1 b1
network t: input 3x8x8 b2
""",
    # 0, 0.0 and false are equal and hash alike, but are not the same argument: an instance built for one must
    # not stand in for another (the flat build refuses `p=false`; a memo keyed by values alone built it as p=0)
    "equal_values_of_other_types": """
block b(p): dropout(p=p) relu
network n: input 3x8x8 b(0) b(0.0) b(false)
""",
    "equal_values_of_other_types_in_a_group": """
network n: input 3x8x8 for p, i in (0, 0) (0.0, 1) (false, 2): t{i}: [dropout(p=p) relu]
""",
    # over the size limit (a tensor of 512x64x64 values is fine; the parameters are counted per instance)
    "many_wide_instances": """
block b(c): conv3-{c}
network n: input 3x64x64 b(512) b(512) b(512) b(512) b(512)
""",
}

#: NAS-Bench-201 cells built whole (every backend-visible result), as option indices of its six edges.
NB201_CELLS = ({}, {"a": 1}, "all-skip", "all-zero", "mixed")


@contextlib.contextmanager
def memo(enabled: bool):
    """The memo switched ``enabled`` for the block, and put back as it was afterwards."""
    previous = set_memo(enabled)
    try:
        yield
    finally:
        set_memo(previous)


@pytest.fixture(autouse=True)
def _restore_switch():
    """Every test leaves the switch as it found it, and no fragment behind."""
    previous = set_memo(True)
    set_memo(previous)
    try:
        yield
    finally:
        set_memo(previous)
        clear_memo()


def memo_is_live() -> bool:
    """Whether the memo does anything yet (the stub's counters stay at zero)."""
    with memo(True):
        clear_memo()
        cnndsl.loads("block b: conv3-4\nnetwork n: input 4x8x8 b b b")
        live = any(memo_stats().values())
        clear_memo()
    return live


def error_facts(e: CnnDslError) -> tuple:
    return type(e), e.message, e.hint, e.span, str(e)


def facts(net) -> dict:
    """Everything a user sees of a network, comparable with ``==``."""
    plan_hash = arch_hash(net.plan)  # from the mounts, before anything expands them: the flat build's hash
    g = net.graph
    layers = [(n.name, n.op, repr(sorted(n.args.items())), n.span, n.shape, n.params, n.macs, n.activations,
               n.frozen, repr(sorted(n.meta.items()))) for n in g.nodes()]
    try:
        torch = cnndsl.compile(net, "torch")
    except CnnDslError as e:  # a label the PyTorch backend refuses: the refusal must be the same
        torch = error_facts(e)
    return {
        "signature": g.signature(),
        "order": [n.name for n in g.nodes()],
        "layers": layers,
        "scopes": list(g.scopes.items()),
        "inputs": list(g.inputs),
        "output": g.output,
        "aux_outputs": list(g.aux_outputs),
        "warnings": [(w.message, w.span, w.hint, str(w)) for w in net.warnings],
        "params": net.params,
        "macs": net.macs,
        "macs_with_aux": net.macs_with_aux,
        "activations": net.activations,
        "input_shape": net.input_shape,
        "output_shapes": net.output_shapes,
        "torch": torch,
        "arch_hash": plan_hash,
        "arch_hash_flat": arch_hash(g),
    }


def outcome(build) -> dict | tuple:
    """:func:`facts` of what ``build()`` returns, or the facts of the error it raises."""
    try:
        return facts(build())
    except CnnDslError as e:
        return error_facts(e)


def first_difference(reference, other) -> str:
    """Where two lists first differ (or their lengths), for a readable failure."""
    for i, (a, b) in enumerate(zip(reference, other)):
        if a != b:
            return f"item {i}:\n  OFF {a!r}\n  ON  {b!r}"
    return f"lengths {len(reference)} (OFF) and {len(other)} (ON)"


def assert_same(off, on, what: str) -> None:
    if isinstance(off, tuple) or isinstance(on, tuple):  # an error on either side
        assert off == on, f"{what}: OFF gave {off!r}, ON gave {on!r}"
        return
    for key, reference in off.items():
        got = on[key]
        if got == reference:
            continue
        if isinstance(reference, list) and isinstance(got, list):
            detail = first_difference(reference, got)
        elif isinstance(reference, str) and isinstance(got, str):
            detail = first_difference(reference.splitlines(), got.splitlines())
        else:
            detail = f"OFF {reference!r}, ON {got!r}"
        pytest.fail(f"{what}: {key} differs with the memo on: {detail}")


def member_outcome(space: Space, choices: dict | None = None) -> dict | tuple:
    """:func:`facts` of a member of ``space``, or its error as :func:`as_member_error` writes it."""
    v = space.member(choices)
    return facts(v.network_obj) if v.network_obj is not None else ("member error", v.error)


def as_member_error(reference: dict | tuple) -> dict | tuple:
    """A load's outcome as a space's member reports it (an error is ``file:line:col: message`` there)."""
    if not isinstance(reference, tuple):
        return reference
    span, message = reference[3], reference[1]
    return "member error", f"{Path(span.file).name}:{span.line}:{span.col}: {message}" if span else message


# ----------------------------------------------------------------------------- 1. the zoo


def zoo_space(name: str) -> Space:
    """The zoo network ``name`` as a space of one member (by its file where a shipped space has the name)."""
    shadowed = (ZOO_DIR / "spaces" / f"{name}.cnn").exists()
    return Space.open(f"{ZOO_DIR / zoo_index()[name]}:{name}" if shadowed else name)


def check_zoo(name: str) -> None:
    with memo(False):
        reference = outcome(lambda: cnndsl.load(name))
        member = member_outcome(zoo_space(name))
    with memo(True):
        clear_memo()
        assert_same(reference, outcome(lambda: cnndsl.load(name)), f"{name}, cold memo")
        space = zoo_space(name)
        assert_same(member, member_outcome(space), f"{name}, first member")
        assert_same(member, member_outcome(space), f"{name}, warm memo")
        assert_same(member, member_outcome(space), f"{name}, warm memo, labelled groups mounted")


@pytest.mark.parametrize("name", DEFAULT_ZOO)
def test_zoo_network_is_the_flat_build(name):
    check_zoo(name)


@pytest.mark.slow
@pytest.mark.parametrize("name", SLOW_ZOO)
def test_every_zoo_network_is_the_flat_build(name):
    check_zoo(name)


def test_default_subset_is_in_the_zoo():
    assert set(DEFAULT_ZOO) <= set(zoo_index())


@pytest.mark.parametrize("case", sorted(EDGES))
def test_edge_case_is_the_flat_build(case, tmp_path):
    path = tmp_path / f"{case}.cnn"
    path.write_text(EDGES[case], encoding="utf-8")
    with memo(False):
        reference = outcome(lambda: cnndsl.load(str(path)))
    with memo(True):
        clear_memo()
        assert_same(reference, outcome(lambda: cnndsl.load(str(path))), f"{case}, cold memo")
        space = Space.open(str(path))
        assert_same(as_member_error(reference), member_outcome(space), f"{case}, first member")
        assert_same(as_member_error(reference), member_outcome(space), f"{case}, warm memo")
        assert_same(as_member_error(reference), member_outcome(space), f"{case}, labelled groups mounted")


#: Size limits that a later instance of a shared block crosses: the error names that instance's layer.
LIMITED = {"params": ({"params": 120_000}, "b5.conv1"), "activations": ({"activations": 60_000}, "b4.conv1")}
LIMITED_TEXT = "block b(c): conv3-{c}\nnetwork n: input 3x16x16 b(64) b(64) b(64) b(64) b(64)"


@pytest.mark.parametrize("limit", sorted(LIMITED))
def test_limit_crossed_in_a_shared_instance_is_the_flat_error(limit):
    limits, layer = LIMITED[limit]
    with memo(False):
        reference = outcome(lambda: cnndsl.loads(LIMITED_TEXT, limits=limits))
    assert isinstance(reference, tuple) and f"'{layer}'" in reference[1], reference
    with memo(True):
        clear_memo()
        assert_same(reference, outcome(lambda: cnndsl.loads(LIMITED_TEXT, limits=limits)), "cold memo")


def nb201_choices(space: Space, cell) -> dict:
    keys = sorted(space.points)
    if cell == "all-skip":
        return dict.fromkeys(keys, 2)
    if cell == "all-zero":
        return dict.fromkeys(keys, 4)
    if cell == "mixed":
        return {k: i % 5 for i, k in enumerate(keys)}
    return {keys[0]: cell["a"]} if cell else {}


@pytest.mark.parametrize("prune", [False, True])
@pytest.mark.parametrize("cell", NB201_CELLS, ids=str)
def test_nb201_member_is_the_flat_build(cell, prune):
    params = {"prune": True} if prune else {}
    with memo(False):
        space = Space.open("nb201", params=params)
        choices = nb201_choices(space, cell)
        reference = member_outcome(space, choices)
    with memo(True):
        clear_memo()
        space = Space.open("nb201", params=params)
        assert_same(reference, member_outcome(space, choices), "cold memo")
        for other in NB201_CELLS:  # fill the memo with other cells first
            space.member(nb201_choices(space, other))
        assert_same(reference, member_outcome(space, choices), "warm memo")


# ----------------------------------------------------------------------------- 2. the spaces


#: Every shipped space, and NAS-Bench-201 with ``-p prune=true``.
SPACES = [(p.stem, {}) for p in sorted((ZOO_DIR / "spaces").glob("*.cnn"))] + [("nb201", {"prune": True})]


def member_facts(v) -> dict:
    net = v.network_obj
    return {"choices": v.choices, "options": v.options, "source": v.source, "error": v.error, "valid": v.valid,
            "params": v.params, "macs": v.macs, "activations": v.activations, "arch_hash": v.arch_hash,
            "duplicate": v.duplicate, "nb201": (v.nb201_arch, v.nb201_index),
            "signature": net.graph.signature() if net is not None else None,
            "warnings": [str(w) for w in net.warnings] if net is not None else None}


@pytest.mark.parametrize(("name", "params"), SPACES, ids=[f"{n}{'-prune' if p else ''}" for n, p in SPACES])
def test_space_members_are_the_flat_build(name, params):
    seed = 20240515
    with memo(False):
        reference = [member_facts(v) for v in Space.open(name, params=params).sample(30, seed=seed)]
    assert len(reference) == 30
    with memo(True):
        clear_memo()
        space = Space.open(name, params=params)
        cold = [member_facts(v) for v in space.sample(30, seed=seed)]
        warm = [member_facts(v) for v in space.sample(30, seed=seed)]  # the same members, from a full memo
    for i, (ref, c, w) in enumerate(zip(reference, cold, warm, strict=True)):
        for key in ref:
            assert c[key] == ref[key], f"{name} member {i} ({ref['choices']}): {key} differs (memo on, first pass)"
            assert w[key] == ref[key], f"{name} member {i} ({ref['choices']}): {key} differs (memo on, warm)"


#: Cell spaces at the edges of fragments with holes (cnndsl.passes.template): (text, whether fills happen).
HOLES = {
    # a fixed layer before the options, named by the counter they count too (`conv`): their names go on from it
    "fixed_layer_counted_like_options_before_them": ("""
block cell(k): conv1-{k}
    add< choice< conv3-{k} | conv1-{k} | identity > | choice< conv3-{k} | maxpool3/1(p=1) | identity > >
network n: input 4x8x8 cell(4) cell(4) conv1-8 cell(8)
""", True),
    # ... and after them: an option that counts otherwise moves it (conv3, conv2, conv1), so the template is
    # given up at the first build that shows it, and no fill names it
    "fixed_layer_counted_like_options_after_them": ("""
block cell(k): add< choice< conv3-{k} | conv1-{k} | identity > | choice< conv3-{k} | maxpool3/1(p=1) | identity > >
    conv1-{k}
network n: input 4x8x8 cell(4) cell(4) conv1-8 cell(8)
""", False),
    # options that count the same word in the same scope (rcb1, rcb2, ...): renumbered in a fill
    "options_counting_one_word": ("""
block rcb(c, k): relu conv{k}-{c} bn
block cell(c): n1: choice< rcb(c, 3) | rcb(c, 1) | identity >
    add< @n1 choice< rcb(c, 3) | identity | avgpool3/1(p=1) > | choice< rcb(c, 1) | rcb(c, 3) | zero > >
network n: input 4x8x8 cell(4) cell(4) cell(4)
""", True),
    # an option that is a reference (here to a fixed layer, and to another hole): which of the later reads of the
    # value go through the hole the names do not tell, so no build with one is learnt from
    "options_that_are_references": ("""
block cell(c): a: conv1-{c} b: choice< @a | relu > add< @a | choice< @b | conv3-{c} | @a > >
network n: input 4x8x8 cell(4) cell(4) cell(4)
""", False),
    # a fixed layer (f) read by one option of each hole: the member with the two that do not read it is an error
    # ("never used"), which a fill from the options other builds taught must not hide (it is the one member
    # whose options are all known before it is built)
    "fixed_layer_read_only_by_options": ("""
block cell(c): x: conv1-{c} f: conv1-{c} add< choice< relu | [@x relu] > | choice< [@f sigmoid] | [@x sigmoid] > >
network n: input 4x8x8 cell(4) cell(4) cell(4)
""", False),
    # a label before the options that their counter reaches (relu2): the member with two relu options is a
    # "duplicate name" error, also when both were learnt (each from a member with one); it is the one member
    # whose options are all known before it is built
    "option_named_like_a_label": ("""
block cell(c): relu2: conv1-{c} add< choice< relu | identity > | choice< relu | sigmoid > >
network n: input 4x8x8 cell(4) cell(4) cell(4)
""", False),
    # a reference from the top level into an instance: the top level is expanded as it is built, so it is no
    # skeleton, and each member's top level is built
    "reference_into_an_instance": ("""
block cell(c): a: conv1-{c} add< choice< relu | sigmoid > | choice< conv3-{c} | identity > >
network n: input 4x8x8 cell(4) cell(4) add< @cell1.a | identity > cell(4)
""", True),
    # a cell whose output is named by its option (conv1, relu1): the layers after it read the new name
    "instance_output_named_by_its_option": ("""
block cell(c): conv1-{c} choice< conv3-{c} | relu | maxpool3/1(p=1) >
network n: input 4x8x8 cell(4) relu cell(4) add< @cell2 | identity > cell(4) gap
""", False),
    # a choice inside an option: the branch asks two decisions, so no build is learnt from
    "choice_inside_an_option": ("""
block cell(c): choice< [conv1-{c} choice< relu | sigmoid >] | identity | conv3-{c} > bn
network n: input 4x8x8 cell(4) cell(4) cell(4)
""", False),
    # options of other output shapes: the fixed layers after them change, so the template is given up
    "options_of_other_shapes": ("""
block cell(c): choice< conv3-{c} | conv3-{2 * c} | maxpool2/2 > bn relu
network n: input 4x8x8 cell(4) cell(4)
""", False),
    # options in a numbered scope (their positions name the layers after them): not learnt
    "options_in_a_numbered_scope": ("""
block cell(c): seq< choice< [conv1-{c} relu] | identity | conv3-{c} > conv1-{c} >
network n: input 4x8x8 cell(4) cell(4) cell(4)
""", False),
    # a value choice beside the holes: its decision is not a hole's, so no build is learnt from
    "value_choice_beside_a_hole": ("""
block cell(c): conv1-{c * {1|2}} choice< relu | identity > conv1-{c}
network n: input 4x8x8 cell(4) cell(4)
""", False),
}


@pytest.mark.parametrize("case", sorted(HOLES))
def test_filled_members_are_the_flat_build(case, tmp_path):
    """Every member of a cell space, twice over from one memo (so the second pass fills what the first learnt),
    against the flat build: layers, names, scopes, counts, the generated PyTorch and the arch hash."""
    text, fills = HOLES[case]
    path = tmp_path / f"{case}.cnn"
    path.write_text(text, encoding="utf-8")
    with memo(False):
        space = Space.open(str(path))
        members = [v.choices for v in space.enumerate()]
        reference = [member_outcome(space, choices) for choices in members]
    assert len(members) > 2
    with memo(True):
        clear_memo()
        space = Space.open(str(path))
        for round_ in ("learning", "filling"):
            for choices, ref in zip(members, reference):
                assert_same(ref, member_outcome(space, choices), f"{case}, {choices}, {round_}")
        filled = memo_stats()["filled"]
    assert (filled > 0) == fills, f"{case}: {filled} fragments filled"


def test_a_fill_that_would_move_a_fixed_name_is_built(tmp_path):
    """Two holes whose options count `conv`, a fixed conv after both: builds (conv, identity) and (identity,
    conv) name it conv2 alike, so both are learnt; (conv, conv) and (identity, identity) would name it conv3
    and conv1, so they are built, not filled from those options."""
    path = tmp_path / "cell.cnn"
    path.write_text("block cell(k): choice< conv1-{k} | identity > choice< conv1-{k} | identity > conv3-{k}\n"
                    "network n: input 4x8x8 cell(4) cell(4)\n", encoding="utf-8")
    space = Space.open(str(path))
    first, second = list(space.points)
    order = [(0, 1), (1, 0), (0, 0), (1, 1)]
    with memo(False):
        reference = [member_outcome(space, {first: a, second: b}) for a, b in order]
    with memo(True):
        clear_memo()
        space = Space.open(str(path))
        for (a, b), ref in zip(order, reference):
            assert_same(ref, member_outcome(space, {first: a, second: b}), f"({a}, {b})")
        stats = memo_stats()
    assert stats["filled"] == 0 and stats["misses"] >= 4, stats


def test_a_fill_over_the_size_limits_is_built(tmp_path):
    """(conv3, conv3) is over a parameter limit that (conv3, conv1) and (conv1, conv3) are not: filled from their
    options it would pass, so it is built, and refused at the layer that crosses the limit."""
    path = tmp_path / "cell.cnn"
    path.write_text("block cell(c): choice< conv3-{c} | conv1-{c} > choice< conv3-{c} | conv1-{c} >\n"
                    "network n: input 16x8x8 cell(16) relu\n", encoding="utf-8")
    order = [(0, 1), (1, 0), (0, 0)]
    outcomes = {}
    for on in (False, True):
        with memo(on), raised({"params": 3000}):
            clear_memo()
            space = Space.open(str(path))
            first, second = list(space.points)
            outcomes[on] = [member_outcome(space, {first: a, second: b}) for a, b in order]
            filled = memo_stats()["filled"]
    for (a, b), off, on in zip(order, outcomes[False], outcomes[True]):
        assert_same(off, on, f"({a}, {b})")
    assert outcomes[True][-1][0] == "member error" and filled == 0, (outcomes[True][-1], filled)


def test_nb201_filled_members_are_the_flat_build():
    """NAS-Bench-201 members drawn one after another (a search's order): most cells are filled from the template
    the first builds taught, and each member is its flat build."""
    seed = 7
    with memo(False):
        space = Space.open("nb201")
        drawn = [v.choices for v in space.sample(40, seed=seed)]
        reference = [member_outcome(space, choices) for choices in drawn]
    with memo(True):
        clear_memo()
        space = Space.open("nb201")
        for choices, ref in zip(drawn, reference):
            assert_same(ref, member_outcome(space, choices), f"nb201 {choices}")
        stats = memo_stats()
    assert stats["filled"] > stats["misses"], stats  # 3 cells a member: after a few, cells are filled, not built
    assert stats["replayed"] > len(drawn) // 2, stats  # and most top levels are made from a skeleton


def test_a_fill_is_kept_when_its_decisions_come_back():
    """A cell filled in once is not kept in the memo (a search seldom asks its decisions again); filled a second
    time it is, and the third member with those decisions finds it. Each is the flat build."""
    space = Space.open("nb201")
    drawn = [v.choices for v in space.sample(12, seed=3)]
    again = drawn.pop()
    with memo(False):
        reference = member_outcome(space, again)
    with memo(True):
        clear_memo()
        for choices in drawn:  # the templates learn the options
            member_outcome(space, choices)
        seen = []
        for _ in range(3):
            before = memo_stats()
            assert_same(reference, member_outcome(space, again), f"nb201 {again}")
            after = memo_stats()
            seen.append((after["filled"] - before["filled"], after["fragments"] - before["fragments"],
                         after["hits"] - before["hits"]))
    (filled1, kept1, _), (filled2, kept2, _), (filled3, kept3, hits3) = seen
    assert filled1 == 3 and kept1 == 0, seen  # one cell a stage, filled, not kept
    assert filled2 == 3 and kept2 == 3, seen  # filled again: kept
    assert filled3 == 0 and kept3 == 0 and hits3 >= 3, seen  # found


def test_a_search_member_leaves_few_objects_in_the_memo():
    """What the memo keeps of a NAS-Bench-201 member is counted, not timed: every object it holds that holds
    another is one more the garbage collector walks in each full collection (about 0.5 us each, a full
    collection every time the objects kept since grow by a quarter). Kept fills and a (layer, operands) pair a
    layer made it 186 objects a member; it is about 20 now (the top-level skeleton, the choice tree's
    branches, the rare fragment built)."""
    import gc

    space = Space.open("nb201")
    with memo(True):
        clear_memo()
        for v in space.sample(30, seed=1):  # the templates and the skeleton are learnt
            assert v.valid
        gc.collect()
        start = len(gc.get_objects())
        n = 0
        for v in space.sample(100, seed=2):
            n += v.valid
            del v
        gc.collect()
        kept = (len(gc.get_objects()) - start) / 100
    assert n == 100
    assert kept < 60, f"{kept:.0f} tracked objects kept a member"


# ----------------------------------------------------------------------------- 3. the error files


def load_outcome(path: Path):
    """An error file's error, or (for a warning file) its network's warnings and layers."""
    try:
        net = cnndsl.load(str(path))
    except CnnDslError as e:
        return error_facts(e)
    return [str(w) for w in net.warnings], net.graph.signature(), net.params, net.macs


@pytest.mark.parametrize("path", ERRORS, ids=[p.stem for p in ERRORS])
def test_error_file_is_the_flat_build(path):
    with memo(False):
        reference = load_outcome(path)
    with memo(True):
        clear_memo()
        got = load_outcome(path)
    assert got == reference, f"{path.name}: OFF {reference!r}\nON {got!r}"


# ----------------------------------------------------------------------------- 4. the memo is used


def test_resnet152_shares_its_bottlenecks():
    """ResNet-152's 50 bottlenecks are 8 kinds (arguments and input shape): 8 are built, 42 mounted."""
    if not memo_is_live():
        pytest.skip("the memo is a stub: memo_stats() stays at zero")
    with memo(True):
        clear_memo()
        cnndsl.load("resnet152")
        stats = memo_stats()
        assert stats["hits"] > 0, stats
        assert stats["hits"] + stats["misses"] + stats["inlined"] >= 50, stats
        assert stats["misses"] <= 12, stats  # far fewer built than the 50 instances
        clear_memo()
        space = Space.open("resnet152")
        space.member()
        kept = memo_stats()
        assert 0 < kept["fragments"] <= kept["misses"] <= 12, kept
        space.member()  # the labelled stages (layer1..layer4) are shared from their second build on
        second = memo_stats()
        assert second["misses"] - kept["misses"] <= 4, (kept, second)
        space.member()  # all from the memo now: a mount a labelled group, not one a bottleneck
        again = memo_stats()
        assert again["misses"] == second["misses"] and 0 < again["hits"] - second["hits"] < 10, (second, again)


def test_off_builds_nothing_shared():
    with memo(False):
        clear_memo()
        cnndsl.load("resnet50")
        assert memo_stats() == {"hits": 0, "misses": 0, "filled": 0, "inlined": 0, "replayed": 0, "fragments": 0}


def test_clearing_the_memo_leaves_nothing_behind():
    """A long run that empties the memo between loads (a benchmark's cold loads, a test suite) holds no more
    objects after many rounds than after a few: each store is dropped whole, and its library watched once."""
    import gc

    def live_after(rounds: int) -> int:
        for _ in range(rounds):
            clear_memo()
            cnndsl.load("resnet18")
        gc.collect()
        return len(gc.get_objects())

    with memo(True):
        live_after(3)
        few = live_after(3)
        many = live_after(30)
    assert many - few < 30, (few, many)


def test_switch_returns_the_previous_setting():
    with memo(True):
        assert set_memo(False) is True
        assert set_memo(True) is False
        assert set_memo(True) is True


# ----------------------------------------------------------------------------- 5. hash seeds

SCRIPT = """
import sys
import cnndsl
from cnndsl.passes.resolve import set_memo
set_memo(True)
space = cnndsl.Space.open("resnet50")
space.member()
warm = space.member().network_obj
sys.stdout.write(cnndsl.compile("resnet50", "torch") + cnndsl.compile(warm, "torch")
                 + repr(warm.graph.signature()) + repr(list(warm.graph.scopes)))
"""


def test_output_does_not_depend_on_the_hash_seed():
    runs = []
    for seed in ("0", "1"):
        env = {k: v for k, v in os.environ.items() if k != "CNNDSL_NO_MEMO"}
        env["PYTHONHASHSEED"] = seed
        done = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, env=env, check=False)
        assert done.returncode == 0, done.stderr.decode()
        runs.append(done.stdout)
    assert runs[0] == runs[1]
    with memo(False):
        flat = cnndsl.load("resnet50")
        expected = cnndsl.compile(flat, "torch") * 2 + repr(flat.graph.signature()) + repr(list(flat.graph.scopes))
    assert runs[0].decode() == expected


# ----------------------------------------------------------------------------- 6. the cold path's shortcuts
# A cold load takes a few shortcuts that must change nothing: a graph built layer by layer, nothing rewired, takes
# its stored order as its topological order without running Kahn's algorithm; a bare word is one interned Symbol.


@pytest.mark.parametrize("name", ["resnet152", "inception_v4", "densenet121", "googlenet_torchvision", "unet"])
def test_topological_order_is_networkx_lexicographic_order(name):
    import networkx as nx

    net = cnndsl.load(name)
    for g in (net.plan, net.graph):  # the plan (mounts), then the flat graph (shortcut projections rewired in)
        view = g.to_networkx()
        want = list(nx.lexicographical_topological_sort(view, key=lambda n, g=g: (g.node(n).order, n)))
        assert [n.name for n in g.nodes()] == want


def test_topological_order_after_a_rewire_reads_the_edges():
    from cnndsl.ir.graph import Graph

    g = Graph("t")
    g.add("x", "input", {"shape": (4, 8, 8)}, None, [])
    g.add("a", "relu", {}, None, ["x"])
    g.add("b", "relu", {}, None, ["x"])
    g.add("c", "relu", {}, None, ["x"])
    assert [n.name for n in g.nodes()] == ["x", "a", "b", "c"]  # as stored
    g.rewire("a", 0, "c")  # a now reads a later layer: the stored order is no longer a topological one
    assert [n.name for n in g.nodes()] == ["x", "b", "c", "a"]


def test_a_word_is_one_symbol():
    import copy
    import pickle

    from cnndsl.passes.resolve import Symbol

    word = Symbol("proj")
    assert Symbol("proj") is word and word == Symbol("proj") and word != Symbol("pad")
    assert {word: 1}[Symbol("proj")] == 1
    assert copy.deepcopy(word) is word and pickle.loads(pickle.dumps(word)) is word
    with pytest.raises(AttributeError):
        word.name = "pad"
