"""NAS-Bench-201's names for the members of its cell space: arch strings, benchmark indices, unique cells.

NAS-Bench-201 (Dong & Yang, ICLR 2020) writes a cell as an *arch string*, one ``|op~input|`` per edge,
grouped by the node the edges enter::

    |nor_conv_3x3~0|+|nor_conv_3x3~0|avg_pool_3x3~1|+|skip_connect~0|nor_conv_3x3~1|skip_connect~2|

that is, edges 0->1, then 0->2 and 1->2, then 0->3, 1->3 and 2->3, each one of the five ops :data:`OPS`.

Its *index* (0 to 15,624) is the cell's place in the benchmark's list of archs, which its code made by listing
every cell with the first edge changing slowest and the ops in the order of :data:`OPS`, then shuffling that
list with Python's ``random.shuffle`` after ``random.seed(88)`` (AutoDL-Projects,
``exps/NAS-Bench-201/main.py``, ``generate_meta_info``). :func:`arch_at` and :func:`index_of` rebuild that list.

Two cells compute the same function, whatever their weights, when their :func:`unique_str` is equal: the
benchmark's ``Structure.to_unique_str(consider_zero=True)``, which follows ``skip_connect`` through, writes an
edge that is ``none`` or reads a node written as a zero as ``#``, and sorts each node's sum. 6,466 of the
15,625 cells are unique under it (the paper's figure); ``cnndsl variants nb201 --dedup nb201 --unique`` keeps
one member of each.

A space is NAS-Bench-201's when it has exactly six choice points, each a choice between branches whose
five options are the benchmark's five ops as ``networks/spaces/nb201.cnn`` writes them (:data:`SPELLINGS`);
the six choices, in the order they are written in the file, are the edges in arch-string order. The file's
name plays no part.

>>> arch_at(1)
'|nor_conv_3x3~0|+|nor_conv_3x3~0|avg_pool_3x3~1|+|skip_connect~0|nor_conv_3x3~1|skip_connect~2|'
>>> index_of(arch_at(1))
1
>>> unique_str(parse_arch("|skip_connect~0|+|none~0|nor_conv_1x1~1|+|none~0|none~1|skip_connect~2|"))
'#+#+#+(0)@nor_conv_1x1'
"""

from __future__ import annotations

import functools
import itertools
import random
import re
from collections.abc import Mapping, Sequence

from cnndsl.errors import CnnArgumentError
from cnndsl.ir.ops import Identity, Zero

#: The benchmark's five ops, in its own order (``NAS_BENCH_201`` in its ``cell_operations.py``), which is the
#: order its list of archs was made in before the shuffle.
OPS = ("none", "skip_connect", "nor_conv_1x1", "nor_conv_3x3", "avg_pool_3x3")
#: The cell's edges as (to, from) nodes, in arch-string order.
EDGES = ((1, 0), (2, 0), (2, 1), (3, 0), (3, 1), (3, 2))
#: The seed of the shuffle that ordered the benchmark's archs (``random.seed(88)`` in ``generate_meta_info``).
SHUFFLE_SEED = 88
SIZE = len(OPS) ** len(EDGES)
#: How a NAS-Bench-201 space writes each op as a choice option (spaces removed): the shipped space's spellings,
#: with ``none`` (the language's pruned zero) and ``identity`` accepted for ``zero`` and ``skip``.
SPELLINGS = {
    "rcb(c,3)": "nor_conv_3x3",
    "rcb(c,1)": "nor_conv_1x1",
    "skip": "skip_connect",
    Identity.name: "skip_connect",
    "avgpool3/1(p=1,count_include_pad=false)": "avg_pool_3x3",
    Zero.name: "none",
    "none": "none",
}
EXAMPLE = "|nor_conv_3x3~0|+|nor_conv_3x3~0|avg_pool_3x3~1|+|skip_connect~0|nor_conv_3x3~1|skip_connect~2|"
HINT = (f"an arch string has 3 nodes of 1, 2 and 3 edges, |op~input|, each op one of {', '.join(OPS)}: "
        f"{EXAMPLE}; or give a benchmark index from 0 to {SIZE - 1:,}")


# ----------------------------------------------------------------------------- arch strings


#: The arch string with a ``{}`` for each edge's op, in :data:`EDGES` order: ``|{}~0|+|{}~0|{}~1|+|...|``.
_ARCH = "+".join("|" + "|".join(f"{{}}~{frm}" for to, frm in EDGES if to == node) + "|" for node in (1, 2, 3))


def arch_str(cell: Sequence[str]) -> str:
    """The arch string of a cell given as its six edges' ops, in :data:`EDGES` order."""
    if len(cell) != len(EDGES):
        raise ValueError(f"a cell has {len(EDGES)} edges, got {len(cell)}")
    return _ARCH.format(*cell)


_EDGE = re.compile(r"([a-z0-9_]+)~([0-9]+)")


def parse_arch(text: str) -> tuple[str, ...]:
    """A cell's six edge ops from its arch string, or a :class:`CnnArgumentError` saying what is wrong with it.

    The edges of a node may come in any order (each input once), as the benchmark's parser allows.
    """
    nodes = text.strip().split("+")
    if len(nodes) != 3:
        raise CnnArgumentError(f"arch string {text!r} has {len(nodes)} node{'s' if len(nodes) != 1 else ''}, not 3",
                               None, HINT)
    by_edge: dict[tuple[int, int], str] = {}
    for to, node in enumerate(nodes, 1):
        if not (node.startswith("|") and node.endswith("|")) or len(node) < 2:
            raise CnnArgumentError(f"node {to} of arch string {text!r} is not written |op~input|...|", None, HINT)
        edges = node[1:-1].split("|")
        for edge in edges:
            m = _EDGE.fullmatch(edge)
            if m is None:
                raise CnnArgumentError(f"edge {edge!r} of node {to} is not op~input", None, HINT)
            op, frm = m[1], int(m[2])
            if op not in OPS:
                raise CnnArgumentError(f"unknown NAS-Bench-201 op {op!r} in arch string {text!r}", None, HINT)
            if frm >= to or (to, frm) in by_edge:
                raise CnnArgumentError(f"node {to} of arch string {text!r} reads node {frm} "
                                       f"{'twice' if (to, frm) in by_edge else 'that comes after it'}", None, HINT)
            by_edge[(to, frm)] = op
        if len(edges) != to:
            raise CnnArgumentError(f"node {to} of arch string {text!r} has {len(edges)} edges, not {to}", None, HINT)
    return tuple(by_edge[e] for e in EDGES)


# ----------------------------------------------------------------------------- the benchmark's order


@functools.cache
def _archs() -> tuple[tuple[str, ...], ...]:
    """Every cell in the benchmark's order: listed with the first edge changing slowest, then shuffled."""
    cells = list(itertools.product(OPS, repeat=len(EDGES)))
    random.Random(SHUFFLE_SEED).shuffle(cells)
    return tuple(cells)


@functools.cache
def _indices() -> dict[tuple[str, ...], int]:
    return {cell: i for i, cell in enumerate(_archs())}


def index_of(arch: str | Sequence[str]) -> int:
    """The benchmark's index of a cell (an arch string or its six edge ops)."""
    return _indices()[parse_arch(arch) if isinstance(arch, str) else tuple(arch)]


def arch_at(index: int) -> str:
    """The arch string of the benchmark's cell ``index``."""
    if not 0 <= index < SIZE:
        raise CnnArgumentError(f"NAS-Bench-201 index {index:,} is out of range", None,
                               f"the benchmark's indices run from 0 to {SIZE - 1:,}")
    return arch_str(_archs()[index])


def cell_of(arch: str | int) -> tuple[str, ...]:
    """A cell's six edge ops from an arch string, or from a benchmark index (an int, or a string of digits)."""
    if isinstance(arch, int) or arch.strip().isdigit():
        index = int(arch)
        arch_at(index)  # the range check
        return _archs()[index]
    return parse_arch(arch)


# ----------------------------------------------------------------------------- unique cells


def unique_str(cell: Sequence[str]) -> str:
    """The benchmark's ``to_unique_str(consider_zero=True)`` of a cell: equal for cells that compute alike.

    Node 0 is ``0``; an edge is ``#`` when its op is ``none`` or its input node is written ``#``, its input node
    when it is ``skip_connect``, else ``(input)@op``; a node is its edges sorted and joined by ``+``. A node
    with several edges that are all zeros is written ``#+#``, not ``#``, as the benchmark's code writes it.
    """
    nodes = {0: "0"}
    for to in (1, 2, 3):
        parts = []
        for (t, frm), op in zip(EDGES, cell, strict=True):
            if t != to:
                continue
            if op == "none" or nodes[frm] == "#":
                parts.append("#")
            elif op == "skip_connect":
                parts.append(nodes[frm])
            else:
                parts.append(f"({nodes[frm]})@{op}")
        nodes[to] = "+".join(sorted(parts))
    return nodes[3]


def unique_count() -> int:
    """How many of the benchmark's cells are unique by :func:`unique_str`: the paper's 6,466 of 15,625."""
    return len({unique_str(cell) for cell in itertools.product(OPS, repeat=len(EDGES))})


# ----------------------------------------------------------------------------- spaces


def edge_options(points: Mapping) -> list[tuple[str, dict[int, str]]] | None:
    """For a NAS-Bench-201 space, its six choice keys in edge order, each with its options' ops by index; else None.

    ``points`` maps choice keys (``file:line:col``) to :class:`~cnndsl.search.variants.ChoicePoint`.
    """
    if len(points) != len(EDGES):
        return None
    edges = []
    for key, point in points.items():
        ops = {i: SPELLINGS.get(re.sub(r"\s+", "", text)) for i, text in enumerate(point.options)}
        if not point.branches or sorted(filter(None, ops.values())) != sorted(OPS) or len(ops) != len(OPS):
            return None
        edges.append((key, ops))
    return sorted(edges, key=lambda e: _position(e[0]))


def _position(key: str) -> tuple[str, int, int]:
    file, line, col = key.rsplit(":", 2)
    return file, int(line), int(col)


def cell_from_choices(edges: list[tuple[str, dict[int, str]]], choices: Mapping[str, int]) -> tuple[str, ...] | None:
    """A member's cell from its choices (None when one of the six edges is not among them)."""
    if any(key not in choices for key, _ in edges):
        return None
    return tuple([ops[choices[key]] for key, ops in edges])


def choices_for(edges: list[tuple[str, dict[int, str]]], cell: Sequence[str]) -> dict[str, int]:
    """The choices that build a cell (its six edge ops) in a NAS-Bench-201 space."""
    return {key: next(i for i, op in ops.items() if op == want) for (key, ops), want in zip(edges, cell, strict=True)}
