"""NAS-Bench-201 as published: the shipped space builds the benchmark's networks, named as the benchmark names them.

The references are outside cnndsl: a PyTorch re-implementation of the benchmark's network written here from the
paper's description (Dong & Yang, ICLR 2020, Sec. 2.1 and Fig. 1: stem, N = 5 cells per stage at C = 16, 32, 64,
residual reduction blocks, ReLU-Conv-BN ops, average pooling without the padding in its mean, a zero op),
per-op formulas for parameters and MACs from the same description, the paper's 6,466 unique cells, and the
(index, arch string) pairs the benchmark's code asserts and its users quote.
"""

from __future__ import annotations

import itertools
import json
import random

import pytest

from cnndsl.errors import CnnArgumentError, CnnDslError
from cnndsl.search import nb201
from cnndsl.search.variants import Space, Tally, variants
from cnndsl.tools.cli import main

torch = pytest.importorskip("torch")
nn = torch.nn

ALL = list(itertools.product(nb201.OPS, repeat=6))
UNIFORM = [(op,) * 6 for op in nb201.OPS]  # all none, all skip, all conv1x1, all conv3x3, all pooling
# (index, arch string): 0, 9 and 123 are asserted by the benchmark's generate_meta_info (AutoDL-Projects,
# exps/NAS-Bench-201/main.py); 1 is quoted with its figures in D-X-Y/NATS-Bench issue 18 (NATS-Bench's topology
# space keeps NAS-Bench-201's indices: NATS-Bench issue 5), with 0.802 M parameters and 113.95 M FLOPs on CIFAR-10.
KNOWN = {
    0: "|avg_pool_3x3~0|+|nor_conv_1x1~0|skip_connect~1|+|nor_conv_1x1~0|skip_connect~1|skip_connect~2|",
    1: "|nor_conv_3x3~0|+|nor_conv_3x3~0|avg_pool_3x3~1|+|skip_connect~0|nor_conv_3x3~1|skip_connect~2|",
    9: "|avg_pool_3x3~0|+|none~0|none~1|+|skip_connect~0|none~1|nor_conv_3x3~2|",
    123: "|avg_pool_3x3~0|+|avg_pool_3x3~0|nor_conv_1x1~1|+|none~0|avg_pool_3x3~1|nor_conv_3x3~2|",
}


# ----------------------------------------------------------------------------- the benchmark's network, in PyTorch


def relu_conv_bn(c_in: int, c_out: int, k: int, stride: int = 1) -> nn.Module:
    return nn.Sequential(nn.ReLU(), nn.Conv2d(c_in, c_out, k, stride, k // 2, bias=False), nn.BatchNorm2d(c_out))


class Zero(nn.Module):
    def forward(self, x):
        return x * 0.0


def edge_op(op: str, c: int) -> nn.Module:
    return {"nor_conv_3x3": lambda: relu_conv_bn(c, c, 3), "nor_conv_1x1": lambda: relu_conv_bn(c, c, 1),
            "skip_connect": nn.Identity, "none": Zero,
            "avg_pool_3x3": lambda: nn.AvgPool2d(3, 1, 1, count_include_pad=False)}[op]()


class Cell(nn.Module):
    """Node j is the sum over i < j of edge (i, j) applied to node i; the cell's output is node 3."""

    def __init__(self, cell: tuple[str, ...], c: int):
        super().__init__()
        self.ends = nb201.EDGES
        self.ops = nn.ModuleList(edge_op(op, c) for op in cell)

    def forward(self, x):
        nodes = [x]
        for to in (1, 2, 3):
            nodes.append(sum(op(nodes[frm]) for (t, frm), op in zip(self.ends, self.ops) if t == to))
        return nodes[3]


class Reduction(nn.Module):
    """The residual block between stages: two ReLU-Conv-BN (the first of stride 2), a 2x2 average pool then a
    1x1 conv on the shortcut."""

    def __init__(self, c_in: int, c_out: int):
        super().__init__()
        self.body = nn.Sequential(relu_conv_bn(c_in, c_out, 3, 2), relu_conv_bn(c_out, c_out, 3))
        self.shortcut = nn.Sequential(nn.AvgPool2d(2, 2), nn.Conv2d(c_in, c_out, 1, bias=False))

    def forward(self, x):
        return self.body(x) + self.shortcut(x)


def benchmark_net(cell: tuple[str, ...], n: int = 5, classes: int = 10) -> nn.Module:
    layers: list[nn.Module] = [nn.Conv2d(3, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16)]
    for stage, c in enumerate((16, 32, 64)):
        if stage:
            layers.append(Reduction(c // 2, c))
        layers += [Cell(cell, c) for _ in range(n)]
    layers += [nn.BatchNorm2d(64), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, classes)]
    return nn.Sequential(*layers)


def torch_figures(model: nn.Module) -> tuple[int, int]:
    """Parameters, and the multiply-accumulates of its convs and linear layers for one 3x32x32 image."""
    macs = []

    def hook(m, inputs, out):
        if isinstance(m, nn.Conv2d):
            macs.append(out[0].numel() * m.in_channels // m.groups * m.kernel_size[0] * m.kernel_size[1])
        else:
            macs.append(m.in_features * m.out_features)

    for m in model.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            m.register_forward_hook(hook)
    with torch.no_grad():
        model.eval()(torch.zeros(1, 3, 32, 32))
    return sum(p.numel() for p in model.parameters()), sum(macs)


# ----------------------------------------------------------------------------- the per-op formulas


def formula(cell: tuple[str, ...], prune: bool = False, n: int = 5, classes: int = 10) -> tuple[int, int] | None:
    """Parameters and MACs from the paper's description, op by op. With ``prune``, an edge's op counts only when
    its input node is not always zero and its output node reaches the cell's output; None when the output is zero.
    """
    live_in = {0: True}
    for to in (1, 2, 3):
        live_in[to] = any(live_in[f] and op != "none" for (t, f), op in zip(nb201.EDGES, cell) if t == to)
    reaches = {3: True}
    for frm in (2, 1, 0):
        reaches[frm] = any(reaches[t] and op != "none" for (t, f), op in zip(nb201.EDGES, cell) if f == frm)
    if prune and not live_in[3]:
        return None
    params, macs = 3 * 16 * 9 + 2 * 16, 32 * 32 * 16 * 3 * 9
    for stage, (c, hw) in enumerate(((16, 32 * 32), (32, 16 * 16), (64, 8 * 8))):
        if stage:  # the reduction into this stage: two 3x3 convs, their batch norms and the 1x1 shortcut
            c_in = c // 2
            params += 9 * c_in * c + 9 * c * c + 4 * c + c_in * c
            macs += (9 * c_in * c + 9 * c * c + c_in * c) * hw
        for (to, frm), op in zip(nb201.EDGES, cell):
            if prune and not (live_in[frm] and reaches[to]):
                continue
            k = {"nor_conv_3x3": 3, "nor_conv_1x1": 1}.get(op)
            if k is not None:
                params += n * (k * k * c * c + 2 * c)
                macs += n * k * k * c * c * hw
    return params + 2 * 64 + 64 * classes + classes, macs + 64 * classes


@pytest.fixture(scope="module")
def space() -> Space:
    return Space.open("nb201")


def member(space: Space, cell: tuple[str, ...]):
    edges = nb201.edge_options(space.points)
    return space.member(nb201.choices_for(edges, cell))


def sample_cells(n: int, seed: int) -> list[tuple[str, ...]]:
    return random.Random(seed).sample(ALL, n)


# ----------------------------------------------------------------------------- parameters and MACs


@pytest.mark.parametrize("cell", UNIFORM + [nb201.cell_of(i) for i in KNOWN] + sample_cells(4, seed=201),
                         ids=nb201.arch_str)
def test_members_have_the_benchmark_networks_parameters_and_macs(space, cell):
    v = member(space, cell)
    assert v.valid, v.error
    reference = torch_figures(benchmark_net(cell))
    assert (v.params, v.macs) == reference == formula(cell)


def test_the_figures_quoted_for_the_benchmark():
    assert formula(("nor_conv_3x3",) * 6)[0] == 1_531_546  # "about 1.53 M" for the all-3x3 cell
    params, macs = formula(nb201.cell_of(1))
    # NATS-Bench's figures for index 1 on CIFAR-10: 0.802 MB of parameters (10^6) and 113.95 MFLOPs, which
    # counts the classifier's 10 biases too
    assert round(params / 1e6, 3) == 0.802 and round((macs + 10) / 1e6, 2) == 113.95


def test_the_formula_holds_over_a_larger_sample(space):
    for cell in sample_cells(120, seed=7):
        v = member(space, cell)
        assert (v.params, v.macs) == formula(cell), nb201.arch_str(cell)


def test_pruning_leaves_out_dead_layers_and_rejects_a_zero_output():
    pruned = Space.open("nb201", params={"prune": True})
    for cell in UNIFORM + sample_cells(60, seed=3):
        v = member(pruned, cell)
        expected = formula(cell, prune=True)
        if expected is None:
            assert not v.valid and "always zero" in v.error
        else:
            assert v.valid and (v.params, v.macs) == expected, nb201.arch_str(cell)
    # a cell whose conv only feeds a zero: built and counted as published, left out when pruned
    dead = nb201.parse_arch("|nor_conv_3x3~0|+|skip_connect~0|none~1|+|skip_connect~0|none~1|skip_connect~2|")
    assert member(Space.open("nb201"), dead).params == formula(dead)[0] > member(pruned, dead).params


def test_a_constant_output_member_is_valid_and_its_output_is_constant(space):
    v = member(space, ("none",) * 6)
    assert v.valid
    import cnndsl

    model = cnndsl.build_torch(cnndsl.loads(v.source)).eval()
    with torch.no_grad():
        a, b = model(torch.randn(2, 3, 32, 32)), model(torch.randn(2, 3, 32, 32))
    assert torch.equal(a, b) and torch.equal(a[0], model.classifier.bias)


@pytest.mark.slow
def test_every_cell_has_the_benchmarks_figures_and_6466_are_unique():
    seen = 0
    for v in variants("nb201", dedup="nb201"):
        cell = nb201.parse_arch(v.nb201_arch)
        assert (v.params, v.macs) == formula(cell), v.nb201_arch
        seen += 1
    assert seen == 15_625


# ----------------------------------------------------------------------------- the zero op in every backend

ZERO_NET = "network t: input 4x8x8  conv3-6 bn  add< zero | relu conv3-6 | zero >  relu conv1-3  gap fc-5"


def test_zero_is_the_same_in_jax():
    pytest.importorskip("jax")
    from test_cross_backend import compare

    import cnndsl

    assert compare(cnndsl.loads(ZERO_NET)) < 1e-5


def test_zero_is_the_same_in_flax():
    pytest.importorskip("flax")
    from test_flax_backend import compare

    import cnndsl

    assert compare(cnndsl.loads(ZERO_NET)) < 1e-5


# ----------------------------------------------------------------------------- arch strings and indices


def test_known_indices_are_the_benchmarks():
    for index, text in KNOWN.items():
        assert nb201.arch_at(index) == text and nb201.index_of(text) == index


def test_indices_are_a_bijection_and_strings_round_trip():
    assert sorted(nb201.index_of(c) for c in ALL) == list(range(15_625))
    for cell in ALL:
        assert nb201.parse_arch(nb201.arch_str(cell)) == cell
    # the benchmark's parser accepts a node's edges in any order
    assert nb201.parse_arch("|none~0|+|skip_connect~1|nor_conv_1x1~0|+|none~2|none~0|none~1|") == (
        "none", "nor_conv_1x1", "skip_connect", "none", "none", "none")


def test_6466_unique_cells():
    assert len({nb201.unique_str(c) for c in ALL}) == 6_466  # the paper's figure (Sec. 2.1)


@pytest.mark.parametrize("bad", ["", "|nor_conv_3x3~0|", "|nor_conv_3x3~0|+|none~0|none~1|",
                                 "|conv~0|+|none~0|none~1|+|none~0|none~1|none~2|",
                                 "|none~1|+|none~0|none~1|+|none~0|none~1|none~2|",
                                 "|none~0|+|none~0|none~0|+|none~0|none~1|none~2|",
                                 "|none~0|+|none~0|+|none~0|none~1|none~2|",
                                 "none~0+|none~0|none~1|+|none~0|none~1|none~2|", "15625", "-1"])
def test_bad_arch_strings_are_clean_errors(bad):
    with pytest.raises(CnnArgumentError) as e:
        nb201.cell_of(bad)
    assert e.value.hint


def test_members_round_trip_through_their_arch_strings(space):
    for v in space.sample(12, seed=5):
        assert v.nb201_index == nb201.index_of(v.nb201_arch)
        again = next(variants(space, arch=v.nb201_arch))
        assert again.choices == v.choices and again.nb201_arch == v.nb201_arch
        assert next(variants(space, arch=v.nb201_index)).choices == v.choices


def test_the_space_is_recognised_by_its_structure_not_its_name(tmp_path):
    text = Space.open("nb201").lib.main.source.text
    renamed = tmp_path / "cells.cnn"
    renamed.write_text(text)
    assert Space.open(str(renamed)).member().nb201_arch == nb201.arch_str(("nor_conv_3x3",) * 6)
    other = tmp_path / "nb201.cnn"  # the benchmark's name, but its pooling counts the padding: not the benchmark
    other.write_text(text.replace("(p=1, count_include_pad=false)", "(p=1)"))
    v = Space.open(str(other)).member()
    assert v.valid and v.nb201_arch is None and "nb201_arch" not in v.record()
    with pytest.raises(CnnDslError, match="not a NAS-Bench-201 space"):
        variants(str(other), arch=1)


# ----------------------------------------------------------------------------- the command line


def test_cli_arch_gives_that_member(capsys):
    assert main(["variants", "nb201", "--arch", KNOWN[1]]) == 0
    out = capsys.readouterr()
    record = json.loads(out.out)
    assert record["nb201_arch"] == KNOWN[1] and record["nb201_index"] == 1
    assert record["params"] == torch_figures(benchmark_net(nb201.cell_of(1)))[0] == 802_426
    assert main(["variants", "nb201", "--arch", "123", "--format", "csv"]) == 0
    header, row = capsys.readouterr().out.splitlines()
    assert header.split(",")[1:3] == ["nb201_arch", "nb201_index"] and row.split(",")[1:3] == [KNOWN[123], "123"]


@pytest.mark.parametrize("args", [["variants", "nb201", "--arch", "|nor_conv_3x3~0|+|bogus~0|"],
                                  ["variants", "nb201", "--arch", "99999"],
                                  ["variants", "inception", "--arch", "1"],
                                  ["variants", "inception", "--unique", "--dedup", "nb201"],
                                  ["variants", "nb201", "--dedup", "isomorphism", "--limit", "1"]])
def test_cli_bad_arch_or_dedup_is_a_clean_error(args, capsys):
    assert main(args) == 1
    err = capsys.readouterr().err
    assert "error:" in err and "hint:" in err and "Traceback" not in err


def test_dedup_nb201_drops_exactly_the_benchmarks_repeats():
    space = Space.open("nb201", params={"n": 1})  # one cell a stage: the same cells, a fifth of the layers to build
    members = list(variants(space, sample=80, seed=1, dedup="nb201"))
    first_seen = {}
    for v in members:
        first_seen.setdefault(nb201.unique_str(nb201.cell_of(v.nb201_arch)), v.nb201_arch)
    assert [v.nb201_arch for v in members if not v.duplicate] == list(first_seen.values())
    tally = Tally()
    kept = list(variants(space, sample=80, seed=1, unique=True, dedup="nb201", tally=tally))
    assert [v.nb201_arch for v in kept] == list(first_seen.values())
    assert tally.duplicates == 80 - len(kept) > 0
    # the default dedup is the exact graph: two cells the benchmark calls the same can differ as graphs
    assert sum(v.duplicate for v in variants(space, sample=80, seed=1)) < tally.duplicates


def test_cli_counts_the_benchmarks_unique_cells_and_refuses_a_graph_count(capsys):
    assert main(["variants", "nb201", "--count", "--unique", "--dedup", "nb201"]) == 0
    assert capsys.readouterr().out.strip() == "6466"  # the paper's figure (Sec. 2.1)
    assert main(["variants", "nb201", "--count"]) == 0
    assert capsys.readouterr().out.strip() == "15625"
    assert main(["variants", "nb201", "--count", "--unique"]) == 1  # repeats of the graph: only known once built
    err = capsys.readouterr().err
    assert "error:" in err and "--dedup nb201" in err and "Traceback" not in err
