"""Search spaces: choice points, counting, enumeration, hashing, limits, sampling and mutation."""

from __future__ import annotations

import importlib
import json

import networkx as nx
import pytest

import cnndsl
from cnndsl.front.loader import zoo_index
from cnndsl.search.arch_hash import arch_hash, canonical_graph
from cnndsl.search.variants import Limits, Space, Tally, variants
from cnndsl.tools.cli import main

SHIPPED = {"resnet_cifar": 3 ** 4, "inception": 2 ** 5 * (2 + 2), "nb201": 5 ** 6}

# A NAS-Bench-201-style cell with three nodes and three edges (5^3 = 125 members), small enough to enumerate.
SMALL_CELL = """
block rcb(c, k) with conv(bias=false): relu conv{k}-{c} bn
block cell(c):
    n0: identity
    n1: choice< rcb(c, 3) | rcb(c, 1) | skip | avgpool3/1(p=1) | none >
    add< @n0 choice< rcb(c, 3) | rcb(c, 1) | skip | avgpool3/1(p=1) | none >
       | @n1 choice< rcb(c, 3) | rcb(c, 1) | skip | avgpool3/1(p=1) | none > >
network small(classes=10): input 3x8x8
    conv3-8 cell(8) x2 gap fc-{classes}
"""


def space_from(tmp_path, text: str, name: str = "space.cnn") -> Space:
    path = tmp_path / name
    path.write_text(text)
    return Space.open(str(path))


@pytest.mark.parametrize("name", ["resnet_cifar", "inception"])
def test_count_equals_enumeration_for_shipped_spaces(name):
    space = Space.open(name)
    members = list(space.enumerate())
    assert space.count() == len(members) == SHIPPED[name]
    assert len({tuple(sorted(m.choices.items())) for m in members}) == len(members)
    assert all(m.valid for m in members)


def test_nb201_counts_five_to_the_six_without_enumerating():
    space = Space.open("nb201")
    assert space.count() == 15_625
    assert len(space.points) == 6 and all(len(p.options) == 5 and p.branches for p in space.points.values())


def test_small_cell_space_counts_and_enumerates(tmp_path):
    space = space_from(tmp_path, SMALL_CELL)
    tally = Tally()
    kept = list(variants(space, tally=tally))
    assert space.count() == 125 == tally.members
    # the output is zero exactly when both of the output node's inputs are `none` or come from a zero:
    # edge n0->out none and (n1->out none, or n0->n1 none): 5 + 4 = 9 invalid members
    assert sum(tally.invalid.values()) == 9 and len(kept) == 116
    assert all("always zero" in reason for reason in tally.invalid)


def test_conditional_count(tmp_path):
    text = """network t: input 1x8x8
        conv3-{4|8} choice< conv3-{2|4|6} | [conv1-{2|4} conv1-2] | maxpool > gap fc-{10|5}"""
    space = space_from(tmp_path, text)
    assert space.count() == 2 * (3 + 2 + 1) * 2 == len(list(space.enumerate()))


def test_choice_in_a_repeated_block_is_one_decision(tmp_path):
    text = """block b: conv3-{4|8} relu
    network t: input 1x8x8  b x3  [conv1-{2|3}] x{1..3}  gap fc-10"""
    space = space_from(tmp_path, text)
    assert space.count() == 2 * 2 * 3 == len(list(space.enumerate()))
    v = space.member({k: 1 for k in space.points})
    convs = [n for n in v.network_obj.graph.nodes() if n.op == "conv"]
    assert [n.args["c"] for n in convs] == [8, 8, 8, 3, 3]


def test_space_defaults_to_first_options_and_is_kept_out_of_the_zoo():
    assert not any(n.endswith("_space") for n in zoo_index())
    net = cnndsl.load(str(Space.open("resnet_cifar").lib.main.source.name))
    assert net.params == Space.open("resnet_cifar").member().params


def test_concrete_sources_load_to_the_same_network():
    space = Space.open("inception")
    for v in space.sample(10, seed=4):
        text = v.source
        net = cnndsl.loads(text)
        assert (net.params, net.macs, arch_hash(net.graph)) == (v.params, v.macs, arch_hash(v.network_obj.graph))
        assert "{32|64}" not in text and "choice<" not in text


def test_concrete_sources_keep_input_and_parameter_overrides():
    space = Space.open("resnet_cifar", input_shape=(1, 8, 8), params={"classes": 7})
    for v in space.sample(3, seed=1):
        net = cnndsl.loads(v.source)
        assert net.input_shape == (1, 8, 8) and net.output_shapes == [(7,)]
        assert net.params == v.params


def test_hash_ignores_names_and_spelling():
    a = cnndsl.loads("network a: input 3x16x16  conv3-64 x2  gap fc-10")
    b = cnndsl.loads("network b: input 3x16x16  first: conv(c=64, k=3)  second: conv3-64(p=same) skip  gap "
                     "head: fc(10)")
    c = cnndsl.loads("network c: input 3x16x16  conv3-64 conv3-32  gap fc-10")
    assert arch_hash(a.graph) == arch_hash(b.graph) != arch_hash(c.graph)
    # the hash's claim, checked by networkx's isomorphism test on the graphs it hashes
    (ga, _), (gb, _), (gc, _) = (canonical_graph(n.graph) for n in (a, b, c))
    match = {"node_match": lambda x, y: x["label"] == y["label"], "edge_match": lambda x, y: x["port"] == y["port"]}
    assert nx.is_isomorphic(ga, gb, **match) and not nx.is_isomorphic(ga, gc, **match)


def test_hash_sees_sums_as_unordered_and_concats_as_ordered():
    s1 = cnndsl.loads("network s: input 4x8x8  add< conv3-4 | conv1-4 >")
    s2 = cnndsl.loads("network s: input 4x8x8  add< conv1-4 | conv3-4 >")
    c1 = cnndsl.loads("network s: input 4x8x8  concat< conv3-4 | conv1-4 >")
    c2 = cnndsl.loads("network s: input 4x8x8  concat< conv1-4 | conv3-4 >")
    assert arch_hash(s1.graph) == arch_hash(s2.graph)
    assert arch_hash(c1.graph) != arch_hash(c2.graph)


def test_one_choice_change_changes_the_hash():
    space = Space.open("nb201")
    base = space.member()
    for neighbour in space.neighbours(base.choices):
        v = space.member(neighbour)
        if v.valid:
            assert arch_hash(v.network_obj.graph) != arch_hash(base.network_obj.graph)


def test_none_edges_are_removed_and_skips_contracted():
    skip = cnndsl.loads("network t: input 4x8x8  n0: identity  add< @n0 skip | @n0 conv3-4 | @n0 none >")
    ops = [n.op for n in skip.graph.nodes()]
    assert ops.count("add") == 1 and "none" not in ops
    written = cnndsl.loads("network t: input 4x8x8  add< identity | conv3-4 >")
    assert arch_hash(skip.graph) == arch_hash(written.graph) and skip.params == written.params == 4 * 4 * 9 + 4
    # a node all of whose edges are `none` is a zero; the layers that only fed it are pruned
    zero = cnndsl.loads("network t: input 4x8x8  n0: identity  n1: [conv3-4 none]  add< @n0 conv1-4 | @n1 relu >")
    assert [n.op for n in zero.graph.nodes()] == ["input", "identity", "conv"]


@pytest.fixture(scope="module")
def inception_members():
    return {tuple(sorted(v.choices.items())): v for v in variants("inception")}


@pytest.mark.parametrize("limit", ["max_params", "max_macs", "max_activations"])
def test_limits_filter_exactly(limit, inception_members):
    what = limit.removeprefix("max_")
    values = sorted(getattr(v, what) for v in inception_members.values())
    bound = values[len(values) // 3]
    tally = Tally()
    kept = list(variants("inception", limits=Limits(**{limit: bound}), tally=tally))
    for v in kept[:5]:  # each kept member's own summary is within the limit
        assert cnndsl.loads(v.source).summary_dict()[what] <= bound
    expected = {k for k, v in inception_members.items() if getattr(v, what) <= bound}
    assert {tuple(sorted(v.choices.items())) for v in kept} == expected
    assert sum(tally.over_limit.values()) == len(inception_members) - len(expected) > 0


def test_sampling_is_seeded_and_distinct():
    first = [v.choices for v in Space.open("nb201").sample(20, seed=7)]
    again = [v.choices for v in Space.open("nb201").sample(20, seed=7)]
    other = [v.choices for v in Space.open("nb201").sample(20, seed=8)]
    assert first == again != other
    assert len({json.dumps(c, sort_keys=True) for c in first}) == 20


def test_sampling_builds_each_member_once_and_draws_as_building_every_draw(tmp_path, monkeypatch):
    """A repeat draw is recognised from the members drawn before, without a build; the members, their order
    and the invalid ones are those of the plain sampler (re-implemented here: build every draw, skip repeats)."""
    import random

    from cnndsl.search import variants as v

    space = space_from(tmp_path, SMALL_CELL)  # 125 members: 100 draws repeat often
    builds = []
    real = Space._build
    monkeypatch.setattr(Space, "_build", lambda self, chooser: builds.append(1) or real(self, chooser))
    got = [(m.choices, m.error) for m in space.sample(100, seed=3)]
    assert len(builds) == 100 == len({json.dumps(c, sort_keys=True) for c, _ in got})
    assert any(error for _, error in got)

    rng, seen, plain = random.Random(3), set(), []
    while len(plain) < 100:
        chooser = v._Chooser({}, v._random_pick(rng))
        _, error = real(space, chooser)
        ident = tuple(sorted(chooser.choices().items()))
        if ident not in seen:
            seen.add(ident)
            plain.append((chooser.choices(), error))
    assert got == plain


def test_sampled_and_mutated_members_load_and_compile_to_torch():
    torch = pytest.importorskip("torch")
    space = Space.open("nb201")
    start = next(v for v in space.sample(5, seed=1) if v.valid)
    members = list(variants(space, sample=2, seed=3)) + list(variants(space, mutate=2, start=start.choices, seed=3))
    assert len(members) >= 3  # invalid members (an output that is always zero) are left out
    for v in members[2:]:
        assert sum(v.choices[k] != start.choices.get(k) for k in v.choices) == 1
    for v in members:
        net = cnndsl.loads(v.source)
        model = cnndsl.build_torch(net)
        assert sum(p.numel() for p in model.parameters()) == v.params
        assert model.eval()(torch.zeros(1, 3, 32, 32)).shape == (1, 10)


def test_cli_count_output_dir_and_mutate(tmp_path, capsys):
    assert main(["variants", "inception", "--count"]) == 0
    assert capsys.readouterr().out.strip() == "128"
    out = tmp_path / "members"
    assert main(["variants", "inception", "--sample", "3", "--seed", "5", "-o", str(out)]) == 0
    files = sorted(out.glob("*.cnn"))
    assert len(files) == 3 and all(cnndsl.load(str(f)).params > 0 for f in files)
    capsys.readouterr()
    assert main(["variants", "inception", "--mutate", "2", "--from", str(files[0]), "--format", "jsonl"]) == 0
    lines = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert len(lines) == 2 and all(r["arch_hash"] and r["params"] > 0 for r in lines)


def test_cli_reports_invalid_members(tmp_path, capsys):
    path = tmp_path / "bad.cnn"
    path.write_text("network t: input 3x8x8  conv3-4/{1|2|4|8}(valid) conv3-4/{1|2}(valid) fc-10\n")
    assert main(["variants", str(path), "--format", "csv"]) == 0
    captured = capsys.readouterr()
    # 8x8 through a valid 3x3 at stride 4 or 8 leaves 2x2 or 1x1, too small for the next valid 3x3
    assert len(captured.out.splitlines()) == 1 + 4
    assert "4 invalid" in captured.err


def test_language_errors_have_places(tmp_path):
    for text, message in [("network t: input 1x8x8 conv3-4 x{3..1}", "empty"),
                          ("network t: input 1x8x8 concat< conv3-4 | none >", "none"),
                          ("network t: input 1x8x8 conv3-4 none", "always zero"),
                          ("network t: input 1x8x8 choice(x=1)< conv3-4 | relu >", "no arguments")]:
        with pytest.raises(cnndsl.CnnDslError, match=message) as e:
            cnndsl.loads(text)
        assert e.value.span is not None


# 100 independent two-way choices: 2^100 = 1,267,650,600,228,229,401,496,703,205,376 members, counted at once.
HUGE = "network huge: input 1x8x8\n    " + " ".join("conv1-{4|8}" for _ in range(100)) + " gap fc-10\n"


def test_enumerating_a_huge_space_is_refused_unless_limited(tmp_path, capsys):
    variants_module = importlib.import_module("cnndsl.search.variants")  # (cnndsl.search.variants is also the function)

    path = tmp_path / "huge.cnn"
    path.write_text(HUGE)
    assert Space.open(str(path)).count() == 2 ** 100 > variants_module.MAX_ENUMERATED
    out = tmp_path / "members"
    for args in (["--enumerate"], ["--enumerate", "-o", str(out)], []):
        capsys.readouterr()
        assert main(["variants", str(path), *args]) == 1
        captured = capsys.readouterr()
        assert captured.out == "" and "Traceback" not in captured.err
        assert f"huge has {2 ** 100:,} members, too many to enumerate" in captured.err
        assert "--limit N" in captured.err.split("hint: ", 1)[1]
    assert not out.exists()  # refused before anything was written
    with pytest.raises(cnndsl.CnnDslError, match="too many to enumerate"):
        variants(str(path))  # the API refuses at the call, before any member
    assert main(["variants", str(path), "--limit", "3", "-o", str(out)]) == 0
    assert len(list(out.glob("*.cnn"))) == 3
    capsys.readouterr()
    assert main(["variants", str(path), "--enumerate", "--limit", "4"]) == 0
    lines = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert len(lines) == 4 and len({json.dumps(r["choices"]) for r in lines}) == 4
    members = list(variants(str(path), limit=5))
    assert len(members) == 5 and [m.choices for m in members] == [m.choices for m in Space.open(str(path)).enumerate(5)]


def test_a_space_counted_by_enumeration_is_refused_once_past_the_limit(tmp_path, monkeypatch):
    variants_module = importlib.import_module("cnndsl.search.variants")  # (cnndsl.search.variants is also the function)

    # the block's choice is reached from two choices: no tree, so the members are counted by enumerating them
    text = "block b: conv3-{4|8}\nnetwork nt: input 1x8x8\n    choice< b | relu > choice< b | relu > gap fc-10\n"
    space = space_from(tmp_path, text)
    members = len(list(space.enumerate()))
    monkeypatch.setattr(variants_module, "MAX_ENUMERATED", members - 1)
    with pytest.raises(cnndsl.CnnDslError, match=f"more than {members - 1:,} members") as e:
        variants(space_from(tmp_path, text))
    assert "--limit N" in e.value.hint
    assert len(list(variants(space_from(tmp_path, text), limit=members - 1, keep_invalid=True))) == members - 1
    monkeypatch.setattr(variants_module, "MAX_ENUMERATED", members)
    assert len(list(variants(space_from(tmp_path, text), keep_invalid=True))) == members


def test_check_refuses_exactly_the_graphs_with_an_unused_layer():
    """A member whose layers do not all lead to an output is invalid, at the first such layer in topological order.
    ``check`` tells the usual case (none unused) from the nodes no layer reads; the reference here is networkx's
    reachability over the graph's public view, on random graphs with and without dangling branches."""
    import random

    from cnndsl.errors import CnnDslError
    from cnndsl.ir.graph import Graph
    from cnndsl.passes import check

    rng = random.Random(15)
    outcomes = set()
    for _ in range(300):
        g = Graph("t")
        g.add("x", "input", {"shape": (4, 8, 8)}, None, [])
        names = ["x"]
        for i in range(rng.randint(1, 9)):
            srcs = rng.sample(names, rng.randint(1, min(3, len(names))))
            names.append(g.add(f"n{i}", "add" if len(srcs) > 1 else "relu", {}, None, srcs).name)
        g.output = names[-1]
        if rng.random() < 0.3 and len(names) > 2:
            g.aux_outputs = [rng.choice(names[1:-1])]
        view = g.to_networkx()
        live = set(g.outputs).union(*(nx.ancestors(view, o) for o in g.outputs))
        unused = [n.name for n in g.nodes() if n.name not in live and n.op != "input"]
        try:
            check(g)
            outcome = None
        except CnnDslError as e:
            outcome = e.message
        assert outcome == (f"the result of '{unused[0]}' is never used" if unused else None)
        outcomes.add(outcome is None)
    assert outcomes == {True, False}  # both kinds drawn
