"""The shortcuts that keep code generation fast (issue 15) give what the slow, obvious ways give.

Counts and outside oracles, no clock: the scan for the helpers a PyTorch module uses against Python's own
tokenizer, ``collapse`` against its recursive definition, and how often a backend reads ``Network.graph``
(a property: the first read expands the shared parts, each one is a call); the planner's scope tree and
boundaries against the graph's own, its data-flow order against the definition, the plan made once per
fragment (each instance's steps taken from the first instance of its fragment) against the plan made from the
layers alone, and the check of generated code (compiled, no longer ``ast.parse``d) against what Python refuses.
Speed itself is measured by ``python -m benchmarks``.
"""

import math

import pytest
from cnndsl.backends import flax as flax_backend
from cnndsl.backends import jax as jax_backend
from cnndsl.backends import torch as torch_backend
from cnndsl.backends.base import CompilerBug, check_source
from cnndsl.backends.plan import Planner, _same, collapse, expand, make_plan
from cnndsl.backends.plan import _DraftStep as DraftStep
from hypothesis import given
from hypothesis import strategies as st

import cnndsl
from cnndsl.front.loader import zoo_index

#: The names whose use decides a generated module's imports and helpers.
WATCHED = {*torch_backend.HELPERS, "F", "OrderedDict"}


@pytest.mark.parametrize("name", sorted(zoo_index()))
def test_names_used_agrees_with_the_tokenizer(name):
    source = cnndsl.compile(name)
    assert torch_backend._names_used(source, WATCHED) == torch_backend._names_used_tokenized(source) & WATCHED


@pytest.mark.parametrize("text", [
    '"""F and OrderedDict in a docstring; \\""" an escaped quote F"""\nx = 1\n',
    "x = self.F(1)  # F.pad in a comment\ny = 'F' + \"OrderedDict\" + 'it\\'s F'\n",
    "x = F.pad(y, (1, 1))\nz = {'a': OrderedDict()}\n",
    "x = F_1 + xF + PaddedConv2dX(1)\ny = [\n    F.relu(x),\n]\n",
    "x = '''F\n''' + PaddedConv2d(3, 4, 1, pad=(0, 1, 0, 1))\n",
])
def test_names_used_skips_strings_comments_and_attributes(text):
    assert torch_backend._names_used(text, WATCHED) == torch_backend._names_used_tokenized(text) & WATCHED


@pytest.mark.parametrize("name", sorted(zoo_index()))
def test_line_marks_agree_with_the_tokenizer(name):
    """Every line the JAX backend writes, and each whole function or class it wraps (its lines joined back
    into one): the brackets, commas and ``=`` that the line breaker reads, as Python's tokenizer finds them."""
    source = cnndsl.compile(name, backend="jax")
    lines = source.split("\n")
    joined = [" ".join(line.strip() for line in chunk.split("\n")) for chunk in source.split("\n\n")]
    for line in lines + joined + ['x = f"{a}, {b}" + g(c, d="=")', "y = (a == b, c <= d, e)", 'z = "unclosed(']:
        assert jax_backend._bracket_marks(line) == jax_backend._tokenized_marks(line), line


def _collapse_by_definition(v):
    """``collapse`` as its docstring defines it: recursively, every element compared with the first."""
    if isinstance(v, tuple) and v and all(_same_by_definition(_collapse_by_definition(x),
                                                              _collapse_by_definition(v[0])) for x in v):
        return _collapse_by_definition(v[0])
    return v


def _same_by_definition(a, b):
    if isinstance(a, bool) or isinstance(b, bool):
        return type(a) is type(b) and a == b
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return a == b
    return type(a) is type(b) and a == b


_scalars = st.one_of(st.integers(-2, 2), st.booleans(), st.sampled_from([0.0, 1.0, 2.5, math.nan]), st.none(),
                     st.sampled_from(["same", "valid"]))
_values = st.recursive(_scalars, lambda inner: st.lists(inner, max_size=3).map(tuple), max_leaves=12)


@given(_values, _values)
def test_collapse_and_same_follow_their_definitions(a, b):
    assert repr(collapse(a)) == repr(_collapse_by_definition(a))
    assert type(collapse(a)) is type(_collapse_by_definition(a))
    assert _same(a, b) == _same_by_definition(a, b)


class _CountingNet:
    """A network that counts the reads of its ``graph`` and of its ``plan`` (the graph as built, which a backend
    expands itself to learn where each block instance came from)."""

    def __init__(self, net):
        self._net = net
        self.graph_reads = 0

    @property
    def graph(self):
        self.graph_reads += 1
        return self._net.graph

    @property
    def plan(self):
        self.graph_reads += 1
        return self._net.plan

    def __getattr__(self, name):
        return getattr(self._net, name)


@pytest.mark.parametrize("generate", [lambda n: torch_backend.generate(n)[0], jax_backend.generate,
                                      flax_backend.compile_flax], ids=["torch", "jax", "flax"])
def test_a_backend_flattens_the_graph_once(generate):
    """Once, and the first generation (which plans each fragment once) gives what the second (from the graph
    already flat) gives."""
    net = cnndsl.load("resnet18")
    counting = _CountingNet(net)
    assert generate(counting) == generate(net)
    assert counting.graph_reads == 1


def _count_collected(monkeypatch) -> list[int]:
    """A counter of the layers the planner turns into steps (the scopes it collects, their direct members)."""
    counted = [0]
    collect = Planner._collect

    def counting(self, scope, key):
        counted[0] += len(self.children[scope])
        return collect(self, scope, key)

    monkeypatch.setattr(Planner, "_collect", counting)
    return counted


@pytest.mark.parametrize("name", sorted(zoo_index()))
def test_planning_each_fragment_once_gives_the_flat_plan(name, monkeypatch):
    """The plan from the fragments the graph was expanded from equals the plan from its layers alone; the
    fragments' record (Graph.flatten) names exactly the layers each instance holds, and the topological order
    flatten keeps is the one the graph works out."""
    graph, fragments = expand(cnndsl.load(name))
    assert [n.name for n in graph.nodes()] == graph._kahn()  # the order flatten keeps is the heap's
    members: dict[str, set[str]] = {}
    for node in graph.nodes():
        parts = node.name.split(".")
        for i in range(1, len(parts)):
            members.setdefault(".".join(parts[:i]), set()).add(".".join(parts[i:]))
    for scope, frag in fragments.items():
        assert members[scope] == set(frag.names), scope
    counted = _count_collected(monkeypatch)
    shared = make_plan(graph, fragments)
    with_fragments, counted[0] = counted[0], 0
    assert shared == make_plan(graph)
    assert with_fragments <= counted[0]


def test_a_repeated_block_is_planned_once_per_kind(monkeypatch):
    """ResNet-152's 50 bottlenecks are 8 fragments (per stage, its first block and the repeated one): the planner
    collects the layers of those 8 (103 members against 523 from the layers alone), not of all 50."""
    graph, fragments = expand(cnndsl.load("resnet152"))
    counted = _count_collected(monkeypatch)
    make_plan(graph, fragments)
    with_fragments, counted[0] = counted[0], 0
    make_plan(graph)
    assert len(fragments) >= 50 and len(set(fragments.values())) <= 12  # 8 today; the memo may share more
    assert with_fragments * 4 < counted[0]


def _place(scope: str, fragments) -> tuple | None:
    """The fragment of the innermost instance around (or at) ``scope``, and ``scope``'s place in it."""
    parts = scope.split(".")
    for i in range(len(parts), 0, -1):
        frag = fragments.get(".".join(parts[:i]))
        if frag is not None:
            return id(frag), ".".join(parts[i:])
    return None


@pytest.mark.parametrize("name", ["efficientnet_b0", "mobilenet_v3_large", "inception_v3", "regnet_y_400mf"])
def test_a_scope_is_collected_once_per_place_in_a_fragment(name, monkeypatch):
    """The planner collects the layers of one scope per fragment and place in it (the fragment's own scope, or a
    group inside it): two instances of EfficientNet's MBConv with one fragment, whose exit is a batch norm, or two
    ``block`` groups at one place in RegNet's units, are collected once. The plan is the flat plan (above)."""
    graph, fragments = expand(cnndsl.load(name))
    collected: list[str] = []
    collect = Planner._collect

    def recording(self, scope, key):
        collected.append(scope)
        return collect(self, scope, key)

    monkeypatch.setattr(Planner, "_collect", recording)
    plan = make_plan(graph, fragments)
    classes = [s for s, kind in plan.scope_kinds.items() if kind == "class"]  # the scopes drafted
    in_instances = [p for p in (_place(s, fragments) for s in classes) if p is not None]
    placed = [p for p in (_place(s, fragments) for s in collected if s in classes) if p is not None]
    assert sorted(placed) == sorted(set(in_instances)) and len(placed) < len(in_instances)


ZERO_INIT_NET = """
    block cbn(c) with conv(bias=false): conv3-{c} bn
    network t with init(kaiming, zero_init_residual=true): input 4x8x8
        relu cbn(4) relu cbn(4) residual< relu cbn(4) > residual< relu cbn(4) > gap fc-3
"""


def test_a_zero_initialised_exit_is_planned_as_the_flat_plan():
    """Where the network zero-initialises its residual branches, a block whose exit is a batch norm that an add reads
    is planned from its own layers (the batch norm's ``zero_init`` looks outside the block): the fragments' plan
    is the flat plan, and the instances before an add are the ones built with ``zero_init``."""
    graph, fragments = expand(cnndsl.loads(ZERO_INIT_NET))
    plan = make_plan(graph, fragments)
    assert plan == make_plan(graph)
    zeroed = {scope: dict(inst.args) for scope, inst in plan.instances.items() if inst.scope.startswith("cbn")}
    assert [any(args.values()) for _, args in sorted(zeroed.items())] == [False, False, True, True]


@pytest.mark.parametrize("name", sorted(zoo_index()))
def test_the_planners_scopes_are_the_graphs(name):
    """The planner works out the scope tree and every scope's boundary in one pass over the layers and the edges;
    the graph's own methods (a walk of the names, a scan of each scope's members) give the same."""
    graph = cnndsl.load(name).graph
    planner = Planner(graph)
    assert planner.children == graph.scope_tree()
    for scope in planner.children:
        if scope:
            assert planner.boundary(scope) == graph.scope_boundary(scope), scope


def _toposort_by_definition(steps):
    """Data-flow order that takes, whenever several steps are ready, the first in the graph (then by position)."""
    producer = {s.output: i for i, (s, _) in enumerate(steps)}
    needs = [{producer[src] for src in s.inputs if src in producer} for s, _ in steps]
    done: set[int] = set()
    out = []
    while len(out) < len(steps):
        i = min((i for i in range(len(steps)) if i not in done and needs[i] <= done), key=lambda i: (steps[i][1], i))
        done.add(i)
        out.append(steps[i])
    return out


@st.composite
def _step_lists(draw):
    """Steps of a forward: each reads some earlier outputs (or outside values), with graph orders that may tie
    and may disagree with the data flow."""
    n = draw(st.integers(0, 8))
    steps = []
    for i in range(n):
        reads = draw(st.lists(st.integers(-2, i - 1), max_size=3))
        inputs = tuple(f"v{j}" if j >= 0 else f"outside{j}" for j in reads)
        steps.append((DraftStep("layer", f"v{i}", inputs, f"v{i}"), draw(st.integers(0, 5))))
    return draw(st.permutations(steps))


@given(_step_lists())
def test_toposort_is_the_heap_order(steps):
    assert Planner._toposort(steps) == _toposort_by_definition(steps)


@pytest.mark.parametrize("source", ["def f(:\n    pass\n", "return 1\n", "x = 1\0\n", "def f():\n    nonlocal x\n"])
def test_check_source_refuses_what_python_refuses(source):
    with pytest.raises(CompilerBug):
        check_source(source, "PyTorch")
