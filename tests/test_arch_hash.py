"""The architecture hash against canonical forms that this file computes on its own.

Two references, neither using :mod:`cnndsl.search.arch_hash`:

- For small networks, a brute-force canonical form: every relabelling of the nodes is tried and the
  lexicographically smallest serialisation of (labels, operand lists, outputs) is kept, operand lists
  read in order for a concat and as a sorted multiset for a sum.
- For NAS-Bench-201 members (too big for brute force), networkx's isomorphism test on a multigraph with
  one edge per operand, run within groups of members that share a cheap invariant; members in
  different groups are never isomorphic, so that gives the exact classes.

Both read the IR graph through its public view (nodes, operands, outputs) and contract identity layers
themselves. The hash must agree with them exactly: equal hash if and only if equal canonical form, no
false merge and no false split.
"""

import collections
import itertools
import json
import os
import random
import subprocess
import sys

import networkx as nx
import pytest
from networkx.algorithms.isomorphism import categorical_multiedge_match, categorical_node_match

import cnndsl
from cnndsl.search.arch_hash import HashRegistry, arch_hash
from cnndsl.search.variants import Space

# ----------------------------------------------------------------------------- the test's own reading of a network


def _commutes(op: str, args: dict) -> bool:
    """A plain sum or product: its operands may be reordered (a scaled sum scales its first operand only)."""
    return op == "mul" or (op == "add" and args.get("scale", 1.0) == 1.0)


def _flow(graph):
    """The data flow as (labels, operands, commutes, outputs) over node indices, identity layers contracted."""
    alias, index = {}, {}
    labels, operands, commutes = [], [], []
    for node in graph.nodes():
        srcs = [alias.get(s, s) for s in graph.inputs_of(node.name)]
        if node.op == "identity" and len(srcs) == 1:
            alias[node.name] = srcs[0]
            continue
        index[node.name] = len(labels)
        labels.append(repr((node.op, sorted((k, repr(v)) for k, v in node.args.items()))))
        operands.append([index[s] for s in srcs])
        commutes.append(_commutes(node.op, node.args))
    outputs = [index[alias.get(o, o)] for o in graph.outputs]
    return labels, operands, commutes, outputs


def brute_force_form(graph) -> tuple:
    """The smallest serialisation over all relabellings of the nodes.

    Only the relabellings that sort the labels are tried: the labels come first in the serialisation, so
    any other order starts with a larger tuple and cannot be the smallest. That is every permutation
    within each group of alike labels, all combinations of them.
    """
    labels, operands, commutes, outputs = _flow(graph)
    groups = [[i for i, lab in enumerate(labels) if lab == label] for label in sorted(set(labels))]
    best = None
    for parts in itertools.product(*(itertools.permutations(g) for g in groups)):
        order = [i for part in parts for i in part]
        at = {node: k for k, node in enumerate(order)}
        ops = []
        for i in order:
            read = [at[s] for s in operands[i]]
            ops.append(tuple(sorted(read) if commutes[i] else read))
        form = (tuple(labels[i] for i in order), tuple(ops), tuple(at[o] for o in outputs))
        if best is None or form < best:
            best = form
    return best


def _errors(truth: list, hashes: list) -> tuple[int, int]:
    """(false merges, false splits): the classes beyond the first under one hash, the hashes beyond the first
    of one class."""
    classes_of, hashes_of = collections.defaultdict(set), collections.defaultdict(set)
    for t, h in zip(truth, hashes, strict=True):
        classes_of[h].add(t)
        hashes_of[t].add(h)
    return sum(len(s) - 1 for s in classes_of.values()), sum(len(s) - 1 for s in hashes_of.values())


# ----------------------------------------------------------------------------- random small networks


def random_dag(rng: random.Random) -> list[tuple[str, list[int]]]:
    """4-7 layers after the input (node 0, 4 channels): 1x1 and 3x3 convs, relu, identity, a sum and a concat
    of 2-3 operands, often repeated; every layer leads to the last one, the output."""
    n = rng.randint(4, 7)
    nodes: list[tuple[str, list[int]]] = [("input", [])]
    channels = [4]
    used = {0}

    def pick(candidates: list[int]) -> int:
        return rng.choice(candidates)

    for i in range(1, n + 1):
        before = list(range(i))
        sinks = [j for j in before if j not in used]
        if i == n and len(sinks) > 1:  # the output gathers every unused layer
            same = len({channels[j] for j in sinks}) == 1
            op = "add" if same and rng.random() < 0.5 else "concat"
            operands = sinks + [pick(sinks) for _ in range(rng.randint(0, 1))]
            rng.shuffle(operands)
        else:
            op = rng.choice(["conv1-4", "conv3-4", "relu", "identity", "add", "concat", "add", "concat"])
            first = sinks[-1] if i == n else pick(before)
            if op in ("add", "concat"):
                pool = [j for j in before if op == "concat" or channels[j] == channels[first]]
                operands = [first] + [pick(pool) if rng.random() < 0.6 else first for _ in range(rng.randint(1, 2))]
                rng.shuffle(operands)
            else:
                operands = [first]
        nodes.append((op, operands))
        used.update(operands)
        channels.append(4 if op.startswith("conv") else sum(channels[j] for j in operands) if op == "concat"
                        else channels[operands[0]])
    return nodes


def write(nodes: list[tuple[str, list[int]]], rng: random.Random | None = None) -> str:
    """The network as ``.cnn`` text. With ``rng``: the layers in another topological order, under other names, and
    the operands of each sum shuffled (the same architecture written differently)."""
    n = len(nodes)
    names = ["input"] + [f"n{i}" for i in range(1, n)]
    order = list(range(1, n))
    if rng is not None:
        shuffled = [f"v{k}" for k in rng.sample(range(100), n - 1)]
        names = ["input"] + shuffled
        order, ready, done = [], set(range(1, n)), {0}
        while ready:
            free = sorted(i for i in ready if all(s in done for s in nodes[i][1]))  # the output comes last
            i = rng.choice(free)
            order.append(i)
            ready.discard(i)
            done.add(i)
    steps = []
    for i in order:
        op, operands = nodes[i]
        if rng is not None and op == "add":
            operands = rng.sample(operands, len(operands))
        refs = " | ".join(f"@{names[s]}" for s in operands)
        steps.append(f"{names[i]}: {op}< {refs} >" if op in ("add", "concat") else f"{names[i]}: [@{names[operands[0]]} {op}]")
    return "network t: input 4x8x8  " + "  ".join(steps)


ISSUE_PAIRS = {
    # x + c3(c3(x)) + x and x + x + c3(c3(x)): one sum, ordered two ways (split by the old #dup position)
    "sum_reordered": ("network t: input 4x8x8  x: [@input relu]  c: [@x conv3-4 conv3-4]  s: add< @x | @c | @x >",
                      "network t: input 4x8x8  x: [@input relu]  c: [@x conv3-4 conv3-4]  s: add< @x | @x | @c >", True),
    # x + 2 c1(x) and 2x + c1(x): different sums (merged by the old #dup2, which did not say which operand repeats)
    "sum_other_repeat": ("network t: input 4x8x8  x: [@input relu]  c: [@x conv1-4]  s: add< @x | @c | @c >",
                         "network t: input 4x8x8  x: [@input relu]  c: [@x conv1-4]  s: add< @c | @x | @x >", False),
    # the same in a concat, where the order is part of the architecture: cat(x, c, x) and cat(x, c, c)
    "concat_other_repeat": ("network t: input 4x8x8  x: [@input relu]  c: [@x conv1-4]  s: concat< @x | @c | @x >",
                            "network t: input 4x8x8  x: [@input relu]  c: [@x conv1-4]  s: concat< @x | @c | @c >", False),
}


@pytest.mark.parametrize(("a", "b", "same"), ISSUE_PAIRS.values(), ids=ISSUE_PAIRS)
def test_the_issues_examples(a, b, same):
    na, nb = cnndsl.loads(a), cnndsl.loads(b)
    assert (brute_force_form(na.graph) == brute_force_form(nb.graph)) is same
    assert (arch_hash(na.graph) == arch_hash(nb.graph)) is same
    registry = HashRegistry()
    ha, seen_a = registry.hash(na.graph)
    hb, seen_b = registry.hash(nb.graph)
    assert not seen_a and seen_b is same and (ha == hb) is same


def test_hash_agrees_with_brute_force_on_random_networks():
    rng = random.Random(20240613)
    sources = []
    for _ in range(250):
        dag = random_dag(rng)
        sources += [write(dag), write(dag, rng)]
    nets = [cnndsl.loads(s) for s in sources]
    forms = [brute_force_form(n.graph) for n in nets]
    hashes = [arch_hash(n.graph) for n in nets]
    registry = HashRegistry()
    stream, seen_form = [], set()
    for net, form in zip(nets, forms, strict=True):
        h, seen = registry.hash(net.graph)
        assert seen is (form in seen_form)
        seen_form.add(form)
        stream.append(h)
    assert _errors(forms, hashes) == (0, 0)
    assert _errors(forms, stream) == (0, 0)
    # the test has teeth: many architectures written several ways, and many near misses (the same layers
    # wired differently) that a hash reading only the layers would merge
    written = collections.Counter(forms)
    near = collections.defaultdict(set)
    for f in forms:
        near[f[0]].add(f)
    assert sum(1 for k in written.values() if k > 1) >= 200
    assert sum(len(s) - 1 for s in near.values()) >= 30


def test_a_collision_is_told_apart_by_the_isomorphism_check():
    """Two sums of four alike sums of 1x1 convs, wired as one 8-cycle or as two 4-cycles: Weisfeiler-Lehman sees
    every conv alike and every inner sum alike in both, so the hashes agree; the registry must not."""
    def net(pairs):
        convs = "  ".join(f"a{i}: [@input conv1-4]" for i in range(4))
        sums = "  ".join(f"b{k}: add< @a{i} | @a{j} >" for k, (i, j) in enumerate(pairs))
        return cnndsl.loads(f"network t: input 4x8x8  {convs}  {sums}  add< @b0 | @b1 | @b2 | @b3 >")

    ring, halves = net([(0, 1), (1, 2), (2, 3), (3, 0)]), net([(0, 1), (0, 1), (2, 3), (2, 3)])
    ring2 = net([(2, 0), (1, 3), (0, 1), (3, 2)])  # the ring again, written in another order
    assert brute_force_form(ring.graph) != brute_force_form(halves.graph) == brute_force_form(halves.graph)
    assert brute_force_form(ring.graph) == brute_force_form(ring2.graph)
    assert arch_hash(ring.graph) == arch_hash(halves.graph)  # WL's known blind spot, reproduced
    registry = HashRegistry()
    h1, seen1 = registry.hash(ring.graph)
    h2, seen2 = registry.hash(halves.graph)
    h3, seen3 = registry.hash(ring2.graph)
    assert (seen1, seen2, seen3) == (False, False, True)
    # The collision is in the networks' one parallel piece: that piece's hash takes the -2, so the network's differs
    assert h2 != h1 and h3 == h1 and registry.collisions == 1


# ----------------------------------------------------------------------------- NAS-Bench-201 members


def _multigraph(graph) -> nx.MultiDiGraph:
    """One edge per operand, its port the operand position (0 throughout a sum); outputs marked on their node."""
    labels, operands, commutes, outputs = _flow(graph)
    g = nx.MultiDiGraph()
    for i, label in enumerate(labels):
        g.add_node(i, label=label + "".join(f"|out{k}" for k, o in enumerate(outputs) if o == i))
    for i, srcs in enumerate(operands):
        for port, s in enumerate(srcs):
            g.add_edge(s, i, port=0 if commutes[i] else port)
    return g


def iso_classes(graphs: list) -> list[int]:
    """Each graph's isomorphism class, by VF2 within the groups that share the labels and the labelled edges."""
    def invariant(g):
        lab = nx.get_node_attributes(g, "label")
        return sorted(lab.values()), sorted((lab[a], lab[b], p) for a, b, p in g.edges(data="port"))

    groups = collections.defaultdict(list)
    for i, g in enumerate(graphs):
        groups[repr(invariant(g))].append(i)
    match = {"node_match": categorical_node_match("label", None), "edge_match": categorical_multiedge_match("port", None)}
    classes = [0] * len(graphs)
    count = 0
    for members in groups.values():
        reps: list[int] = []
        for i in members:
            same = next((r for r in reps if nx.is_isomorphic(graphs[i], graphs[r], **match)), None)
            if same is None:
                reps.append(i)
                classes[i], count = count, count + 1
            else:
                classes[i] = classes[same]
    return classes


def _check_space(members) -> tuple[int, int]:
    """(members, architectures) of valid members, after asserting zero false merges and splits in both hashes, from
    the members' plans (mounted fragments, hashed first: reading the flat graph expands them) and flat graphs."""
    nets = [v.network_obj for v in members if v.valid]
    plan_registry = HashRegistry()
    from_plans = [(arch_hash(n.plan), plan_registry.hash(n.plan)[0]) for n in nets]
    assert any(n.plan.mounted for n in nets)
    graphs = [n.graph for n in nets]
    truth = iso_classes([_multigraph(g) for g in graphs])
    registry = HashRegistry()
    hashes = [arch_hash(g) for g in graphs]
    assert _errors(truth, hashes) == (0, 0)
    assert _errors(truth, [registry.hash(g)[0] for g in graphs]) == (0, 0)
    assert _errors(truth, [h for _, h in from_plans]) == (0, 0)
    assert [h for h, _ in from_plans] == hashes  # the pieces of the fragments are the flat graph's pieces
    return len(graphs), len(set(truth))


#: NAS-Bench-201's cell with three of its ops (the ones whose repeats and skips broke the old hash): 3^6 members.
SMALL_CELL = """
block rcb(c, k) with conv(bias=false): relu conv{k}-{c} bn
block cell(c):
    n0: identity
    n1: choice< rcb(c, 3) | skip | none >
    n2: add< @n0 choice< rcb(c, 3) | skip | none > | @n1 choice< rcb(c, 3) | skip | none > >
    add< @n0 choice< rcb(c, 3) | skip | none > | @n1 choice< rcb(c, 3) | skip | none >
       | @n2 choice< rcb(c, 3) | skip | none > >
network small: input 3x8x8
    stem: [conv3-8 bn]  cell(8)  bn relu gap  fc-10
"""


def test_hash_is_exact_over_a_small_cell_space(tmp_path):
    path = tmp_path / "small.cnn"
    path.write_text(SMALL_CELL, encoding="utf-8")
    space = Space.open(str(path))
    members, unique = _check_space(space.enumerate())
    assert members < 3 ** 6 and 1 < unique < members  # some are invalid (a zero output), many repeat


def test_hash_is_exact_over_a_sample_of_nb201():
    space = Space.open("nb201", params={"n": 1})  # one cell a stage: the same cells, a quarter of the layers
    _check_space(space.sample(200, seed=7))


@pytest.mark.slow
def test_hash_is_exact_over_all_of_nb201():
    """All 15,625 members, one cell a stage: the same cells as at N = 5, at a quarter of the build and check."""
    space = Space.open("nb201", params={"n": 1})
    members, unique = _check_space(space.enumerate())
    assert 1 < unique < members


def _refined(labels: list[str], ins: list, where: list[str] | None = None) -> list[str]:
    """The colour refinement as its docstring states it, every node's text the sorted list of its ``(port,
    colour)`` pairs as Python prints it: what the hash's fast paths (a lone operand, operands all of port
    ``(0,)``) must write byte for byte."""
    import hashlib

    n = len(labels)
    outs = [[] for _ in range(n)]
    for i, pairs in enumerate(ins):
        for port, j in pairs:
            outs[j].append((port, i))
    colour = [f"{label}@{where[i] if where else []}" for i, label in enumerate(labels)]
    classes, k = 0, 0
    while True:
        order, adjacent, mark = (range(n - 1, -1, -1), outs, ">") if k % 2 else (range(n), ins, "<")
        for i in order:
            text = f"{colour[i]}{mark}{sorted((port, colour[j]) for port, j in adjacent[i])}"
            colour[i] = hashlib.blake2b(text.encode(), digest_size=12).hexdigest()
        if k and len(set(colour)) == classes:
            return colour
        classes, k = len(set(colour)), k + 1


def test_the_refinement_writes_each_text_as_its_definition_does():
    """Random DAGs with every kind of neighbourhood: none, one operand of port (0,) or another, several all of
    port (0,) (a sum, a layer read by several), ports of repeated operands ((0, 0), (0, 2)) and of two digits,
    whose order as text is not their order as tuples."""
    from cnndsl.search.arch_hash import _wl

    rng = random.Random(15)
    ports = [(0,), (0,), (0,), (1,), (2,), (10,), (0, 0), (0, 2), (1, 10)]
    for _ in range(400):
        n = rng.randint(1, 14)
        labels = [rng.choice(["conv", "relu", "add", "cat"]) for _ in range(n)]
        ins = [()] + [tuple((rng.choice(ports), j) for j in rng.sample(range(i), rng.randint(1, min(4, i))))
                      for i in range(1, n)]
        where = [rng.choice(["[]", "[0]", "[1, 2]"]) for _ in range(n)]
        assert _wl(labels, ins) == _refined(labels, ins)
        assert _wl(labels, ins, where) == _refined(labels, ins, where)


# ----------------------------------------------------------------------------- determinism

_PRINT_HASHES = """
import cnndsl
from cnndsl.search.arch_hash import HashRegistry, arch_hash
registry = HashRegistry()
for src in {sources!r}:
    g = cnndsl.loads(src).graph
    print(arch_hash(g), registry.hash(g))
print(arch_hash(cnndsl.load("resnet18").graph))
"""


def test_hash_is_the_same_under_any_hash_seed():
    sources = [s for pair in ISSUE_PAIRS.values() for s in pair[:2]]
    code = _PRINT_HASHES.format(sources=sources)
    runs = [subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                           env={**os.environ, "PYTHONHASHSEED": seed}).stdout for seed in ("0", "1")]
    assert runs[0] == runs[1] and len(runs[0].splitlines()) == len(sources) + 1


# ----------------------------------------------------------------------------- values kept

#: Hashes the committed implementation gave before the per-fragment caching (issue 15, commit adfc421): weights
#: files carry them (``cnndsl.arch_hash``), so the cheaper hash must give them exactly. A network in series
#: (resnet50, densenet121, mobilenet_v2), with a parallel part holding mounts (unet, deeplabv3, lraspp), hashed
#: whole (aux heads: googlenet, inception_v3).
KEPT = {
    "resnet50": "70799b733658265aebd20f1d",
    "densenet121": "d82a48a0d5fc9e50d125682b",
    "mobilenet_v2": "d2658b29fc5faad20b9c5af3",
    "unet": "e23ccb64eade0da2898567bb",
    "deeplabv3_resnet50": "706a97e0da711b753bc01f5d",
    "lraspp_mobilenet_v3_large": "c4dc58ba4122e4d2303f5bc7",
    "googlenet": "4f7613cf284743718f76d5cd",
    "inception_v3": "0aad33717b33da458cd80dd8",
}


def test_hashes_are_those_saved_before():
    from cnndsl.search.arch_hash import whole_graph_hash

    registry = HashRegistry()
    for name, kept in KEPT.items():
        plan = cnndsl.load(name).plan
        assert (arch_hash(plan), registry.hash(plan)) == (kept, (kept, False)), name
    assert whole_graph_hash(cnndsl.load("resnet18").plan) == "4c264fa9405185b29496145b"
    first = [v.arch_hash for v in cnndsl.variants("nb201", limit=3)]
    assert first == ["7e3cbd555c089a04bc7ff7c0", "548f0fbc5fffd7c1e394e458", "3c1d95cfd91bb02e05279a5d"]


class _Shown:
    """An argument value that JSON writes with ``str`` and whose ``repr`` is the default (it names an address)."""

    def __init__(self, text: str):
        self.text = text

    def __str__(self) -> str:
        return self.text


def test_a_label_is_its_json_whatever_was_labelled_before():
    """Labels are memoised: values equal in Python but written differently in JSON (1, 1.0, True; a tuple and a
    list) must each keep their own label, in any order, and so must objects JSON writes with ``str``."""
    from cnndsl.search.arch_hash import _label

    values = [1, 1.0, True, 0, 0.0, False, None, (1, 1), [1, 1], ((1, 1), (0, 0)), "a<b", "same", {"k": 1}, 1e-5]
    rng = random.Random(5)
    for _ in range(300):
        args = {k: rng.choice(values) for k in rng.sample(["c", "k", "scale", "bias", "p"], rng.randint(0, 4))}
        assert _label("conv", args) == "conv" + json.dumps(args, sort_keys=True, default=str, separators=(",", ":"))
    for i in range(50):  # a new object may take a freed one's address, so its repr: its label must still be its own
        shown = _Shown(f"v{i}")
        assert _label("conv", {"mode": shown}) == f'conv{{"mode":"v{i}"}}'
        del shown
