"""Search spaces: count, enumerate, sample and mutate the members of a ``.cnn`` file with choices.

A *choice point* is one syntactic choice: a ``{a|b|c}`` (or ``{2..5}``) wherever a value goes, or a
``choice< A | B >`` between branches. It is identified by where it is written (``file:line:col``)
and is **one decision** however often it is evaluated: a choice inside a block instantiated five
times, or inside a repeated step, picks the same option everywhere (every NAS-Bench-201 cell is the
same cell). Independent decisions are written as separate choices (one per stage, say).

A choice is *reachable* under an assignment when resolving the network evaluates it; one written in
an option of another choice, or in a block only instantiated there, is reachable only when that
option is taken. A *member* of the space is an assignment of options to the reachable choices, so
two assignments that differ only in an unreachable choice are the same member.

Counting does not enumerate when the conditions form a tree (every choice depends on at most one
other choice, as nesting makes them): the count is then the product over unconditional choices of,
for each, the sum over its options of the product of the counts of the choices that option
enables. A static walk over the syntax finds the tree; it is used only when it predicts exactly the
choices a real resolution reaches, and otherwise the members are counted by enumerating them.

Enumeration visits the members in a fixed order with one build each: the member with every
remaining choice at its first option, then, for each choice it reached (in the order reached) and
each later option, the members that agree with it up to that choice and differ there.

Checking a member never builds a framework model: it resolves the network to the IR and runs the
analysis passes (shapes, parameters, MACs, activations). A member that fails (a shape error, an
output that is always zero) is invalid and is reported with its reason.

>>> space = Space.open("nb201")
>>> space.count()
15625
"""

from __future__ import annotations

import itertools
import json
import math
import random
import sys
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any

from cnndsl.errors import CnnArgumentError, CnnDslError, CnnNameError
from cnndsl.front import syntax as ast
from cnndsl.front.loader import Library, open_net, read_text
from cnndsl.ir.network import Network
from cnndsl.passes.pipeline import build
from cnndsl.passes.resolve import Resolver
from cnndsl.progress import progress as progress_bar
from cnndsl.search import nb201
from cnndsl.search.arch_hash import HashRegistry

SPACES_PACKAGE = "cnndsl.networks"
SPACES_DIR = "spaces"
#: Enumerating a space with more members than this needs an explicit limit (``--limit N``, ``limit=N``):
#: big enough for every shipped space (NAS-Bench-201 has 15,625 members), small enough that the output
#: (``-o DIR`` writes a file per member) and the time it takes (a few ms a member) stay bounded.
MAX_ENUMERATED = 100_000
#: What makes two members repeats for ``--unique``: an identical architecture graph (the exact hash), or, in a
#: NAS-Bench-201 space, an equal ``to_unique_str`` of the benchmark (:func:`cnndsl.search.nb201.unique_str`).
DEDUP = ("graph", "nb201")
DEDUP_HINT = ("--dedup graph (the default) counts identical architecture graphs as repeats; --dedup nb201, in a "
              "NAS-Bench-201 space, cells that NAS-Bench-201's to_unique_str calls the same")


# ----------------------------------------------------------------------------- choice points


def choice_key(span) -> str:
    """A choice point's identity: ``file:line:col`` of where it is written (the file's base name)."""
    return f"{_base_name(span.source.name)}:{span.line}:{span.col}"


@lru_cache(maxsize=256)
def _base_name(path: str) -> str:
    return Path(path).name


def _fits(node: ast.Choice, picked) -> bool:
    """Whether ``picked`` is an option of ``node``: an index of one, or a float in a float range."""
    if isinstance(node, ast.FloatRange):
        return isinstance(picked, float) and node.low <= picked <= node.high
    return isinstance(picked, int) and not isinstance(picked, bool) and 0 <= picked < len(node.options)


def _first(node: ast.Choice) -> int | float:
    """What a choice takes by default: its first option (index 0), or a float range's low end."""
    return node.low if isinstance(node, ast.FloatRange) else 0


@dataclass(frozen=True)
class ChoicePoint:
    """One decision of a space: its key, its options as written, and whether it chooses branches.

    A float range (``{0.1..0.5}``, ``{1e-4..1e-1 log}``) is a *continuous* point: a member records the value
    drawn, not an option index, and ``options`` holds only the range as written.
    """

    key: str
    options: tuple[str, ...]
    branches: bool
    node: ast.Choice = field(repr=False, compare=False)

    @property
    def continuous(self) -> bool:
        return isinstance(self.node, ast.FloatRange)

    @property
    def low(self) -> float | None:
        return self.node.low if self.continuous else None

    @property
    def high(self) -> float | None:
        return self.node.high if self.continuous else None

    @property
    def log(self) -> bool:
        return self.continuous and self.node.log


def _offsets(text: str) -> list[int]:
    starts, pos = [0], 0
    for line in text.splitlines(keepends=True):
        pos += len(line)
        starts.append(pos)
    return starts


def _option_texts(choice: ast.Choice) -> tuple[str, ...]:
    """A choice's options as written; a float range's one "option" is the range (``{0.1..0.5}``)."""
    if isinstance(choice, ast.FloatRange):
        return (choice.text(),)
    return tuple(_option_text(choice, i) for i in range(len(choice.options)))


def _value_text(picked: float, point: ChoicePoint) -> str:
    """The option a member took at ``point``, as written; a float range's value (or a pick that is no option of
    the choice, in an invalid member) as ``repr`` writes it."""
    return point.options[picked] if not point.continuous and _fits(point.node, picked) else repr(picked)


def _draw(node: ast.FloatRange, rng: random.Random) -> float:
    """A value of a float range: uniform between its ends, or uniform in their logarithms with ``log``."""
    u = rng.random()
    if node.log:
        value = math.exp(math.log(node.low) + u * (math.log(node.high) - math.log(node.low)))
    else:
        value = node.low + u * (node.high - node.low)
    return min(max(value, node.low), node.high)  # rounding can step just outside


def _random_pick(rng: random.Random) -> Callable[[str, ast.Choice], int | float]:
    """A chooser's ``draw``: each choice's option uniformly, each float range's value from its law."""
    def pick(key: str, node: ast.Choice) -> int | float:
        return _draw(node, rng) if isinstance(node, ast.FloatRange) else rng.randrange(len(node.options))
    return pick


def _option_text(choice: ast.Choice, i: int) -> str:
    opt = choice.options[i]
    if isinstance(opt, ast.Num) and opt.span == choice.span:  # a {a..b} range
        return str(opt.value)
    span = opt.span
    lines = span.source.text.splitlines()
    if span.line == span.end_line:
        return lines[span.line - 1][span.col - 1:span.end_col - 1]
    parts = [lines[span.line - 1][span.col - 1:], *lines[span.line:span.end_line - 1],
             lines[span.end_line - 1][:span.end_col - 1]]
    return " ".join(p.strip() for p in parts)


class _Chooser:
    """The resolver's ``choose`` hook for one assignment: records the choices reached, in order.

    An assignment maps a choice's key to an option index, or a float range's key to its value (a float); a
    choice missing from it is drawn by ``draw(key, node)`` or takes its first option (a range's low end).
    """

    def __init__(self, assignment: dict[str, int | float],
                 draw: Callable[[str, ast.Choice], int | float] | None = None):
        self.assignment = dict(assignment)
        self.draw = draw
        self.reached: dict[str, ast.Choice] = {}
        #: key -> (the choice, its option), checked to fit: a build asks each choice many times (every instance of
        #: a block, every memo look-up of a fragment that holds it), and its answer does not change.
        self._answers: dict[str, tuple[ast.Choice, int | float]] = {}

    def __call__(self, node: ast.Choice) -> int | float:
        key = node.__dict__.get("_cnndsl_key")
        if key is None:  # a fact of the text, kept on the (immutable) syntax node
            key = choice_key(node.span)
            object.__setattr__(node, "_cnndsl_key", key)
        answer = self._answers.get(key)
        if answer is not None and answer[0] is node:
            return answer[1]
        if key not in self.reached:
            self.reached[key] = node
            if key not in self.assignment:
                self.assignment[key] = self.draw(key, node) if self.draw else _first(node)
        picked = self.assignment[key]
        if _fits(node, picked):
            self._answers[key] = (node, picked)
            return picked
        if isinstance(node, ast.FloatRange):
            raise CnnArgumentError(f"the value {picked!r} for the range {node.text()}", node.span,
                                   f"a float range takes a float from {node.low!r} to {node.high!r}, "
                                   "not an option index")
        raise CnnArgumentError(f"option {picked!r} of a choice with {len(node.options)} options", node.span,
                               f"a choice takes the index of one of its options, 0 to {len(node.options) - 1}")

    def choices(self) -> dict[str, int | float]:
        """The member: the options of the reached choices, in the order reached."""
        return {k: self.assignment[k] for k in self.reached}


class _Drawn:
    """The members a sample has drawn, as the tree of the decisions their builds asked in order: a node is the
    choice asked next (its key and syntax) and where each option leads; a leaf is a member."""

    _MEMBER = object()

    def __init__(self) -> None:
        self.root: list | None = None  # [key, node, {decision: child}] or _MEMBER
        self.members = 0

    def walk(self, pick: Callable[[str, ast.Choice], int | float]) -> dict[str, int | float] | None:
        """Draw down the tree: the decisions drawn (the build goes on from them), or None at a member drawn
        before."""
        drawn: dict[str, int | float] = {}
        node = self.root
        while isinstance(node, list):
            key, choice, then = node
            if key not in drawn:
                drawn[key] = pick(key, choice)
            node = then.get(drawn[key])
        return None if node is self._MEMBER else drawn

    def add(self, chooser: _Chooser) -> bool:
        """Record the member a build reached; False if it was drawn before."""
        reached = list(chooser.reached.items())
        if not reached:
            if self.root is self._MEMBER:
                return False
            self.root = self._MEMBER
            self.members += 1
            return True
        if self.root is None:
            self.root = [reached[0][0], reached[0][1], {}]
        node = self.root
        for i, (key, _) in enumerate(reached):
            if node is self._MEMBER or node[0] != key:  # pragma: no cover - builds ask in a fixed order
                return False
            decision = chooser.assignment[key]
            last = i + 1 == len(reached)
            nxt = node[2].get(decision)
            if last:
                if nxt is not None:
                    return False
                node[2][decision] = self._MEMBER
                break
            if nxt is None:
                nxt = node[2][decision] = [reached[i + 1][0], reached[i + 1][1], {}]
            node = nxt
        self.members += 1
        return True


# ----------------------------------------------------------------------------- the static walk


class _Walk:
    """Find every choice a network can reach and the choice option (if any) it depends on."""

    def __init__(self, lib: Library):
        self.lib = lib
        self.nodes: dict[str, ast.Choice] = {}
        self.branches: set[str] = set()
        self.guards: dict[str, set[tuple[tuple[str, int], ...]]] = {}
        self._blocks_done: set[tuple[str, tuple]] = set()

    def choice(self, node: ast.Choice, guard: tuple, branches: bool) -> str:
        key = choice_key(node.span)
        self.nodes[key] = node
        if branches:
            self.branches.add(key)
        self.guards.setdefault(key, set()).add(guard)
        return key

    def expr(self, e, guard: tuple) -> None:
        if isinstance(e, ast.Choice):
            key = self.choice(e, guard, False)
            for i, opt in enumerate(e.options):
                self.expr(opt, guard + ((key, i),))
        elif isinstance(e, ast.Var):
            if e.name in self.lib.blocks:
                self.block(e.name, guard, given=())
        elif isinstance(e, ast.BinOp):
            self.expr(e.left, guard)
            self.expr(e.right, guard)
        elif isinstance(e, ast.Neg):
            self.expr(e.operand, guard)
        elif isinstance(e, ast.Tuple_):
            for item in e.items:
                self.expr(item, guard)
        else:  # a function's arguments, a conditional's parts, not's operand
            for sub in ast.operands(e):
                self.expr(sub, guard)

    def args(self, args, guard) -> None:
        for a in args:
            self.expr(a.value, guard)

    def seq(self, seq: ast.Seq, guard: tuple) -> None:
        for step in seq.steps:
            if step.repeat is not None:
                self.expr(step.repeat, guard)
            self.term(step.term, guard)

    def term(self, t, guard: tuple) -> None:
        if isinstance(t, ast.Group):
            self.seq(t.seq, guard)
        elif isinstance(t, ast.Table):
            for e in (*(v for row in t.rows for v in row.values), *([t.count] if t.count is not None else [])):
                self.expr(e, guard)
            self.seq(ast.Seq((t.body,), t.span), guard)
        elif isinstance(t, ast.Combinator):
            self.args(t.args, guard)
            if t.name.lower() == "choice":
                key = self.choice(ast.Choice(tuple(t.branches), t.span), guard, True)
                for i, b in enumerate(t.branches):
                    self.seq(b, guard + ((key, i),))
            else:
                for b in t.branches:
                    self.seq(b, guard)
        elif isinstance(t, ast.Call):
            for part in (t.kernel, t.channels, t.stride):
                if part is not None:
                    self.expr(part, guard)
            self.args(t.args, guard)
            if t.name in self.lib.blocks:
                given = tuple(a.name for a in t.args if a.name) + (len([a for a in t.args if not a.name]),)
                self.block(t.name, guard, given)

    def block(self, name: str, guard: tuple, given: tuple) -> None:
        """A block instance; ``given`` is the keyword names and the positional count, () when unknown."""
        if (name, guard, given) in self._blocks_done:
            return
        self._blocks_done.add((name, guard, given))
        b = self.lib.blocks[name]
        npos = given[-1] if given else 0
        for i, p in enumerate(b.params):
            if p.default is not None and (not given or (i >= npos and p.name not in given[:-1])):
                self.expr(p.default, guard)
        for d in b.defaults:
            self.args(d.args, guard)
        self.seq(b.body, guard)

    def network(self, name: str, overrides: set[str], guard: tuple = ()) -> None:
        decl = self.lib.network(name)
        for p in decl.params:
            if p.default is not None and p.name not in overrides:
                self.expr(p.default, guard)
        if isinstance(decl, ast.Derived):
            self.args(decl.args, guard)
            base = self.lib.network(decl.base)
            npos = len([a for a in decl.args if not a.name])
            given = {p.name for p in base.params[:npos]} | {a.name for a in decl.args if a.name}
            self.network(decl.base, given, guard)
            for m in decl.modifiers:
                if isinstance(m, ast.Replace):
                    self.seq(m.seq, guard)
            return
        for d in decl.defaults:
            self.args(d.args, guard)
        self.seq(decl.body, guard)


def _tree_count(walk: _Walk) -> int | float | None:
    """The number of members when the conditions form a tree (``math.inf`` with a float range), else None."""
    parent: dict[str, tuple[str, frozenset[int]] | None] = {}
    for key, guards in walk.guards.items():
        if () in guards:
            parent[key] = None
            continue
        owners = {g[-1][0] for g in guards}
        if len(owners) != 1:
            return None
        parent[key] = (owners.pop(), frozenset(g[-1][1] for g in guards))
    children: dict[str, list[tuple[str, frozenset[int]]]] = {}
    for key, p in parent.items():
        if p is not None:
            children.setdefault(p[0], []).append((key, p[1]))

    def count(key: str, depth: int = 0) -> int | float:
        if depth > len(parent):
            raise RecursionError
        if isinstance(walk.nodes[key], ast.FloatRange):  # endless options, and none enables another choice
            return math.inf
        total = 0
        for i in range(len(walk.nodes[key].options)):
            n = 1
            for child, opts in children.get(key, ()):
                if i in opts:
                    n *= count(child, depth + 1)
            total += n
        return total

    try:
        result = 1
        for key, p in parent.items():
            if p is None:
                result *= count(key)
        return result
    except RecursionError:
        return None


# ----------------------------------------------------------------------------- variants


@dataclass
class Variant:
    """One member of a space: its choices, its concrete source and, when it is valid, its figures."""

    space: str
    network: str
    choices: dict[str, int]
    options: dict[str, str]
    #: The concrete source (see :attr:`source`), or what writes it when first read: most members of a search
    #: are scored from their IR and never written out.
    _source: str | Callable[[], str] = field(repr=False, compare=False)
    network_obj: Network | None = field(default=None, repr=False)
    error: str | None = None
    arch_hash: str | None = None
    duplicate: bool = False
    #: A member of a NAS-Bench-201 space (:mod:`cnndsl.search.nb201`): its cell's arch string and benchmark index.
    nb201_arch: str | None = None
    nb201_index: int | None = None

    @property
    def source(self) -> str:
        """The member's concrete ``.cnn`` text (:meth:`Space.source`)."""
        if callable(self._source):
            self._source = self._source()
        return self._source

    @property
    def valid(self) -> bool:
        return self.error is None

    @property
    def params(self) -> int | None:
        return self.network_obj.params if self.network_obj else None

    @property
    def macs(self) -> int | None:
        return self.network_obj.macs if self.network_obj else None

    @property
    def activations(self) -> int | None:
        return self.network_obj.activations if self.network_obj else None

    def record(self) -> dict[str, Any]:
        """A JSON-ready description (one line of ``cnndsl variants --format jsonl``); a NAS-Bench-201 member's
        also has ``nb201_arch`` and ``nb201_index``."""
        bench = {"nb201_arch": self.nb201_arch, "nb201_index": self.nb201_index} if self.nb201_arch else {}
        return {"space": self.space, "network": self.network, "choices": self.choices, "options": self.options,
                **bench, "arch_hash": self.arch_hash, "params": self.params, "macs": self.macs,
                "activations": self.activations, "error": self.error, "source": self.source}

    def _bench(self, edges: list | None) -> Variant:
        """Fill in the NAS-Bench-201 fields when the space is NAS-Bench-201's (``edges``: its
        :func:`~cnndsl.search.nb201.edge_options`, None for another space)."""
        cell = nb201.cell_from_choices(edges, self.choices) if edges else None
        if cell is not None:
            self.nb201_arch, self.nb201_index = nb201.arch_str(cell), nb201.index_of(cell)
        return self


class Space:
    """A ``.cnn`` network with choices in it, and the members it describes.

    ``Space.open(spec)`` takes a path (``space.cnn``, ``space.cnn:network``), the name of a shipped
    space (``nb201``, ``resnet_cifar``, ``inception``: ``networks/spaces/``), or a zoo network.
    ``input_shape`` and ``params`` are applied to every member, as ``cnndsl summary --input -p`` would.
    """

    def __init__(self, library: Library, network: str, *, input_shape: tuple[int, ...] | None = None,
                 params: dict[str, Any] | None = None, label: str | None = None):
        self.lib = library
        self.network = network
        self.input_shape = tuple(input_shape) if input_shape else None
        self.params = dict(params or {})
        self.label = label or network
        walk = _Walk(library)
        walk.network(network, set(self.params))
        self._walk = walk
        self.points: dict[str, ChoicePoint] = {
            k: ChoicePoint(k, _option_texts(n), k in walk.branches, n) for k, n in walk.nodes.items()}
        self._count: int | float | None = None
        self._edges: tuple[int, list | None] | None = None  # (points seen, nb201 edges)

    @classmethod
    def open(cls, spec: str, **kwargs) -> Space:
        path = Path(spec)
        if not path.exists() and ":" not in spec and not spec.endswith(".cnn"):
            shipped = resources.files(SPACES_PACKAGE).joinpath(SPACES_DIR, f"{spec}.cnn")
            if shipped.is_file():
                spec = str(shipped)
        lib, name = open_net(spec)
        return cls(lib, name, label=spec if Path(spec).suffix != ".cnn" else Path(spec).stem, **kwargs)

    # -- members
    def _build(self, chooser: _Chooser) -> tuple[Network | None, str | None]:
        try:
            return build(self.lib, self.network, self.input_shape, chooser, **self.params), None
        except CnnDslError as e:
            where = f"{Path(e.span.file).name}:{e.span.line}:{e.span.col}: " if e.span else ""
            return None, where + e.message
        except RecursionError:
            return None, "nested too deeply"

    def member(self, choose: dict[str, int | float] | Callable[[ChoicePoint], int | float] | None = None) -> Variant:
        """Build the member picked by ``choose``: a dict of option indices by key (missing keys take the
        first option) or a function of a :class:`ChoicePoint` returning an index (e.g. an Optuna trial's
        suggestion, see :meth:`suggest`). For a float range, the value itself (a float) stands for the index,
        and a missing one takes the range's low end."""
        if callable(choose):
            chooser = _Chooser({}, lambda key, n: choose(self.points.get(key) or self._point(key)))
        else:
            chooser = _Chooser(dict(choose or {}))
        net, error = self._build(chooser)
        return self._variant(chooser, net, error)

    def suggest(self, trial) -> Variant:
        """The member an Optuna ``trial`` suggests: one categorical parameter per reached choice, and one float
        parameter per reached float range (``trial.suggest_float(key, low, high, log=...)``)."""
        def pick(point: ChoicePoint) -> int | float:
            if point.continuous:
                value = float(trial.suggest_float(point.key, point.low, point.high, log=point.log))
                return min(max(value, point.low), point.high)
            labels = point.options if len(set(point.options)) == len(point.options) else \
                tuple(f"{i}:{o}" for i, o in enumerate(point.options))
            return labels.index(trial.suggest_categorical(point.key, labels))
        return self.member(pick)

    def _point(self, key: str) -> ChoicePoint:  # a choice the static walk missed (reached through a file it skipped)
        raise CnnNameError(f"choice {key} is not part of the space's network", None)

    def _variant(self, chooser: _Chooser, net: Network | None, error: str | None) -> Variant:
        choices = chooser.choices()
        for k, node in chooser.reached.items():
            if k not in self.points:
                self.points[k] = ChoicePoint(k, _option_texts(node), isinstance(node.options[0], ast.Seq), node)
        options = {k: _value_text(i, self.points[k]) for k, i in choices.items()}
        return Variant(self.label, self.network, choices, options, lambda: self.source(choices, net), net,
                       error)._bench(self._nb201_edges())

    def _nb201_edges(self) -> list | None:
        """:func:`~cnndsl.search.nb201.edge_options` of the choice points found so far (worked out again only when
        a member reaches one more)."""
        if self._edges is None or self._edges[0] != len(self.points):
            self._edges = (len(self.points), nb201.edge_options(self.points))
        return self._edges[1]

    # -- concrete source
    def source(self, choices: dict[str, int], net: Network | None = None) -> str:
        """The member's concrete ``.cnn`` text: each choice replaced by its option, in the space's own text,
        and, when the space was opened with an input size or parameters (``--input``, ``-p``), the
        network's ``input`` line and parameter defaults rewritten to match.

        A member reaching a choice written in another file (a ``use``d one), or whose overrides cannot be
        written into its text, is printed by ``expand`` instead (when it is valid).
        """
        text = self._choice_source(choices, net)
        if not text or not (self.input_shape or self.params):
            return text
        return self._with_overrides(text, net)

    def _with_overrides(self, text: str, net: Network | None) -> str:
        from cnndsl.report.expand import expand

        decl = next((d for d in ast.parse(text, "member.cnn").networks if d.name == self.network), None)
        if not isinstance(decl, ast.Network):
            return expand(net) if net is not None else ""
        starts = _offsets(text)

        def offsets(span) -> tuple[int, int]:
            return starts[span.line - 1] + span.col - 1, starts[span.end_line - 1] + span.end_col - 1

        edits = []
        if self.input_shape:
            first = decl.inputs[0]
            name = f"{first.name}=" if first.name else ""
            edits.append((*offsets(first.span), f"input {name}{'x'.join(map(str, self.input_shape))}"))
        for p in decl.params:
            if p.name in self.params:
                v = self.params[p.name]
                literal = ("true" if v else "false") if isinstance(v, bool) else str(v)
                edits.append((*offsets(p.span), f"{p.name}={literal}"))
        for lo, hi, replacement in sorted(edits, reverse=True):
            text = text[:lo] + replacement + text[hi:]
        return text

    def _choice_source(self, choices: dict[str, int], net: Network | None = None) -> str:
        main = self.lib.main.source
        here = {k: p.node for k, p in self.points.items() if p.node.span.source.name == main.name}
        if any(k in here and not _fits(here[k], v) for k, v in choices.items()):
            return ""  # an option the choice does not have: the member is invalid, and has no text
        if any(k not in here for k in choices):
            if net is None:
                return ""
            from cnndsl.report.expand import expand

            return expand(net)
        text, starts = main.text, _offsets(main.text)

        def off(line: int, col: int) -> int:
            return starts[line - 1] + col - 1

        spans = sorted(((off(n.span.line, n.span.col), off(n.span.end_line, n.span.end_col), k, n)
                        for k, n in here.items()), key=lambda s: (s[0], -s[1]))

        def render(lo: int, hi: int, inside: list) -> str:
            out, pos, i = [], lo, 0
            while i < len(inside):
                start, end, key, node = inside[i]
                nested = list(itertools.takewhile(lambda s, end=end: s[0] < end, inside[i + 1:]))
                index = choices.get(key, _first(node))
                opt = node.option(index)
                if isinstance(node, ast.FloatRange):
                    body = repr(float(opt.value))  # repr reads back as the same float
                elif isinstance(opt, ast.Num) and opt.span == node.span:
                    body = str(opt.value)
                else:
                    o_lo, o_hi = off(opt.span.line, opt.span.col), off(opt.span.end_line, opt.span.end_col)
                    body = render(o_lo, o_hi, [s for s in nested if s[0] >= o_lo and s[1] <= o_hi])
                out.append(text[pos:start])
                out.append(f"[{body}]" if key in self.points and self.points[key].branches else f"{{{body}}}")
                pos, i = end, i + 1 + len(nested)
            out.append(text[pos:hi])
            return "".join(out)

        header = json.dumps({"space": self.label, "network": self.network, "choices": choices})
        return f"# cnndsl variant: {header}\n" + render(0, len(text), spans)

    # -- the whole space
    def count(self, at_most: int | None = None) -> int | float:
        """The number of members, from the choice tree when it has one, else by enumerating them;
        ``math.inf`` when a member reaches a float range (``{0.1..0.5}``), whose options are endless.

        With ``at_most``, an enumeration stops once it has seen more members than that and returns
        ``at_most + 1``: any result over ``at_most`` means "more than ``at_most``" (the exact count,
        when the tree gives it, is returned whatever its size).
        """
        if self._count is None:
            exact = self._tree_count()
            if exact is not None:
                self._count = exact
                return exact
            seen = 0
            for chooser in itertools.islice(self._assignments(), None if at_most is None else at_most + 1):
                seen += 1
                if any(isinstance(node, ast.FloatRange) for node in chooser.reached.values()):
                    self._count = math.inf
                    return math.inf
            if at_most is None or seen <= at_most:
                self._count = seen
            return seen
        return self._count

    def continuous(self) -> list[ChoicePoint]:
        """The float ranges a member of the space can reach (by the walk over its syntax), in text order."""
        return [p for p in self.points.values() if p.continuous]

    def _tree_count(self) -> int | float | None:
        """The count from the choice tree, when it has one and it predicts what resolving the network reaches."""
        exact = _tree_count(self._walk)
        if exact is not None:
            probe = _Chooser({})
            try:
                Resolver(self.lib, probe).network(self.network, self.params)
            except CnnDslError:
                return None
            if set(probe.reached) != self._first_reachable():
                return None
        return exact

    def _first_reachable(self) -> set[str]:
        """The choices the static walk says are reached when every choice takes its first option."""
        return {k for k, guards in self._walk.guards.items() if any(all(i == 0 for _, i in g) for g in guards)}

    def _assignments(self, start: dict[str, int] | None = None) -> Iterator[_Chooser]:
        """Every member in enumeration order, each as the resolution that reached it (resolve only)."""
        stack = [dict(start or {})]
        while stack:
            fixed = stack.pop()
            chooser = _Chooser(fixed)
            try:
                Resolver(self.lib, chooser).network(self.network, self.params)
            except CnnDslError:
                pass
            yield chooser
            stack.extend(reversed(list(self._branches(fixed, chooser))))

    def _branches(self, fixed: dict[str, int], chooser: _Chooser) -> Iterator[dict[str, int]]:
        prefix = dict(fixed)
        for key, node in chooser.reached.items():
            if key in fixed:
                continue
            for option in range(1, len(node.options)):
                yield {**prefix, key: option}
            prefix[key] = _first(node)

    def enumerate(self, limit: int | None = None) -> Iterator[Variant]:
        """Every member, each built once, in a fixed order; with ``limit``, the first ``limit`` of them.

        This is lazy and has no size check of its own: :func:`variants` refuses a space over
        :data:`MAX_ENUMERATED` members unless it is given a limit. A float range's values are endless: a
        member that reaches one raises a :class:`CnnDslError` (sample such a space instead).
        """
        stack: list[dict[str, int | float]] = [{}]
        built = 0
        while stack and (limit is None or built < limit):
            built += 1
            fixed = stack.pop()
            chooser = _Chooser(fixed)
            net, error = self._build(chooser)
            endless = next((n for n in chooser.reached.values() if isinstance(n, ast.FloatRange)), None)
            if endless is not None:
                raise self._endless(endless, "enumerated")
            yield self._variant(chooser, net, error)
            stack.extend(reversed(list(self._branches(fixed, chooser))))

    def sample(self, n: int, seed: int = 0, max_tries: int | None = None) -> Iterator[Variant]:
        """``n`` distinct members, each reached choice drawn uniformly (reproducible for a seed); a float range's
        value is drawn uniformly between its ends, or uniformly in their logarithms for a ``log`` range.

        A build asks its choices in an order that depends only on the decisions before, so the members drawn
        so far form a tree of decisions: a draw is first walked down it, drawing each choice the build would
        ask, and one that ends at a member drawn before is a repeat, skipped without being built. The draws
        are the ones the build itself would make, in the same order, so the members are those of building
        every draw."""
        rng = random.Random(seed)
        pick = _random_pick(rng)
        seen = _Drawn()
        tries = max_tries if max_tries is not None else 20 * n + 100
        while seen.members < n and tries > 0:
            tries -= 1
            prefix = seen.walk(pick)
            if prefix is None:
                continue
            chooser = _Chooser(prefix, pick)
            net, error = self._build(chooser)
            if not seen.add(chooser):
                continue
            yield self._variant(chooser, net, error)

    def _reached(self, choices: dict[str, int | float]) -> _Chooser:
        """The resolution of a member: the choices it reaches and their options (resolve only)."""
        chooser = _Chooser(choices)
        try:
            Resolver(self.lib, chooser).network(self.network, self.params)
        except CnnDslError:
            pass
        return chooser

    def neighbours(self, choices: dict[str, int | float]) -> list[dict[str, int | float]]:
        """Every assignment differing from ``choices`` in one reached choice (in a fixed order).

        A float range's neighbours are endless, so none is listed for it: :meth:`mutate` redraws it instead.
        """
        chooser = self._reached(choices)
        base = chooser.choices()
        return [{**base, key: o} for key, node in chooser.reached.items() if not isinstance(node, ast.FloatRange)
                for o in range(len(node.options)) if o != base[key]]

    def mutation(self, choices: dict[str, int | float], rng: random.Random) -> dict[str, int | float]:
        """One one-choice mutant of a member, uniformly among the moves :meth:`mutate` draws from: each
        neighbour, and for each reached float range its value redrawn from its law. A member with no move
        (no reached choice with a second option, no float range) is returned as it is."""
        moves: list = self.neighbours(choices)
        chooser = self._reached(choices)
        moves += [k for k, node in chooser.reached.items() if isinstance(node, ast.FloatRange)]
        if not moves:
            return chooser.choices()
        move = rng.choice(moves)
        if isinstance(move, str):
            move = {**chooser.choices(), move: _draw(chooser.reached[move], rng)}
        return move

    def mutate(self, choices: dict[str, int | float], n: int, seed: int = 0) -> Iterator[Variant]:
        """Up to ``n`` one-choice neighbours of a member, picked at random (reproducible for a seed).

        A reached float range counts as one more neighbour, the member with that range's value redrawn from its
        law (uniform or log-uniform); as its values are endless, a member reaching one has ``n`` mutants
        whatever ``n``: once the other neighbours are used up, each further mutant redraws a float range picked
        at random.
        """
        rng = random.Random(seed)
        options: list = self.neighbours(choices)
        chooser = self._reached(choices)
        endless = [k for k, node in chooser.reached.items() if isinstance(node, ast.FloatRange)]
        if not endless:  # the draws below are only made for a space with a float range
            rng.shuffle(options)
            for assignment in options[:n]:
                yield self.member(assignment)
            return
        base = chooser.choices()
        options += endless  # a key: redraw that range
        rng.shuffle(options)
        for i in range(n):
            move = options[i] if i < len(options) else rng.choice(endless)
            if isinstance(move, str):
                move = {**base, move: _draw(chooser.reached[move], rng)}
            yield self.member(move)

    def _endless(self, point: ast.FloatRange, what: str) -> CnnDslError:
        """The refusal to count out or enumerate the members of a space with a float range."""
        return CnnDslError(f"{self.label} has a float range {point.text()} at {choice_key(point.span)}: its members "
                           f"are endless and cannot be {what}", point.span,
                           "draw N members at random with --sample N (sample=N in Python), or search it with "
                           "`cnndsl search`")


def read_choices(path: str) -> dict[str, int]:
    """The choices of a member saved by ``cnndsl variants -o DIR`` (its header) or as a JSON(L) record."""
    text = read_text(Path(path))
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("# cnndsl variant:"):
            line = line.split(":", 1)[1]
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict) and isinstance(record.get("choices"), dict):
            return {str(k): v if isinstance(v, float) else int(v) for k, v in record["choices"].items()}
    raise CnnDslError(f"{path} holds no variant's choices", None,
                      "pass a file written by `cnndsl variants -o DIR` or one line of its --format jsonl output")


# ----------------------------------------------------------------------------- filtering


@dataclass
class Limits:
    """Hard limits on a member's size; None is no limit."""

    max_params: int | None = None
    max_macs: int | None = None
    max_activations: int | None = None

    def violation(self, v: Variant) -> str | None:
        for what, limit in (("params", self.max_params), ("macs", self.max_macs),
                            ("activations", self.max_activations)):
            if limit is not None and getattr(v, what) > limit:
                return f"{what} over {limit:,}"
        return None


@dataclass
class Tally:
    """What a run produced and what it left out, with the reasons."""

    members: int = 0
    kept: int = 0
    invalid: Counter = field(default_factory=Counter)
    over_limit: Counter = field(default_factory=Counter)
    duplicates: int = 0
    confirmations: int = 0  # isomorphism checks the hash registry ran (a repeated piece hash, not a shared piece)
    collisions: int = 0  # hashes alike for graphs that are not: told apart by those checks

    def lines(self) -> list[str]:
        out = [f"{self.members:,} members checked, {self.kept:,} kept"]
        if self.invalid:
            out.append(f"{sum(self.invalid.values()):,} invalid:")
            out += [f"  {n:,} x {reason}" for reason, n in self.invalid.most_common()]
        if self.over_limit:
            out.append(f"{sum(self.over_limit.values()):,} over a limit:")
            out += [f"  {n:,} x {reason}" for reason, n in self.over_limit.most_common()]
        if self.duplicates:
            out.append(f"{self.duplicates:,} duplicates of an earlier architecture")
        if self.confirmations:
            out.append(f"{self.confirmations:,} isomorphism checks confirmed a repeated hash"
                       f" ({self.collisions:,} true collisions)")
        return out


def variants(space: str | Space, *, sample: int | None = None, mutate: int | None = None,
             start: dict[str, int] | str | None = None, seed: int = 0, limits: Limits | None = None,
             unique: bool = False, keep_invalid: bool = False, input_shape: tuple[int, ...] | None = None,
             params: dict[str, Any] | None = None, tally: Tally | None = None, limit: int | None = None,
             progress: bool = False, arch: str | int | None = None, dedup: str = "graph") -> Iterator[Variant]:
    """The members of a space, checked from the IR and hashed.

    By default every member is enumerated; ``sample=N`` draws N distinct members, ``mutate=N`` with
    ``start`` (a dict of choices, or a file written by ``cnndsl variants``) gives N one-choice
    neighbours of a member. Members over a ``limits`` value are left out, as are invalid ones unless
    ``keep_invalid``, and repeated architectures when ``unique``; ``tally`` collects what was left out.

    ``limit=N`` checks at most N members (the first N in enumeration order), so at most N are
    yielded. Enumerating a space of more than :data:`MAX_ENUMERATED` members without a ``limit`` is
    refused with a :class:`CnnDslError`, raised by this call (before anything is yielded).

    In a NAS-Bench-201 space (:mod:`cnndsl.search.nb201`), ``arch`` (an arch string, or a benchmark index)
    gives the one member with that cell, and ``dedup="nb201"`` makes a repeat the benchmark's notion of one (an
    equal ``to_unique_str``) instead of the default ``"graph"``, an identical architecture graph.

    >>> next(variants("inception", limit=1)).options  # doctest: +ELLIPSIS
    {'inception.cnn:6:24': '32', 'inception.cnn:7:24': '48', 'inception.cnn:7:38': '64', ...}
    >>> a, b = (list(variants("inception", sample=3, seed=3)) for _ in range(2))  # a seed repeats a sample
    >>> [v.choices for v in a] == [v.choices for v in b] and len(a) == 3
    True
    """
    sp = space if isinstance(space, Space) else Space.open(space, input_shape=input_shape, params=params)
    if limit is not None and limit < 0:
        raise CnnDslError(f"a limit of {limit} members", None, "give --limit N with N at least 0")
    if dedup not in DEDUP:
        raise CnnArgumentError(f"unknown dedup {dedup!r}", None, DEDUP_HINT)
    edges = nb201.edge_options(sp.points) if arch is not None or dedup == "nb201" else None
    if edges is None and (arch is not None or dedup == "nb201"):
        what = "--arch" if arch is not None else "--dedup nb201"
        raise CnnDslError(f"{sp.label} is not a NAS-Bench-201 space, so {what} does not apply", None,
                          "it needs six choices between the benchmark's five ops, written as in the shipped space: "
                          f"cnndsl variants nb201 {what} ...")
    if arch is not None:
        if sample is not None or mutate is not None:
            raise CnnArgumentError("--arch picks one member: give it without --sample or --mutate", None)
        stream, total = iter([sp.member(nb201.choices_for(edges, nb201.cell_of(arch)))]), 1
    elif mutate is not None:
        if start is None:
            raise CnnDslError("mutating needs a member to start from", None, "pass --from FILE")
        base = read_choices(start) if isinstance(start, str) else start
        stream, total = sp.mutate(base, mutate, seed), None
    elif sample is not None:
        stream, total = sp.sample(sample, seed), sample
    else:
        if sp.continuous():
            raise sp._endless(sp.continuous()[0].node, "enumerated")
        bound = MAX_ENUMERATED if limit is None else limit
        total = sp.count(at_most=bound)
        if limit is None and total > MAX_ENUMERATED:
            exact = sp._count is not None
            raise CnnDslError(f"{sp.label} has {'' if exact else 'more than '}{total if exact else MAX_ENUMERATED:,} "
                              f"members, too many to enumerate (more than {MAX_ENUMERATED:,})", None,
                              "enumerate the first N members with --limit N (limit=N in Python), "
                              "or draw N at random with --sample N")
        stream, total = sp.enumerate(limit), min(total, bound)
    if limit is not None:
        stream = itertools.islice(stream, limit)
        total = None if total is None else min(total, limit)
    if progress:
        stream = progress_bar(stream, "variants", total, unit="variant")
    key = (lambda v: nb201.unique_str(nb201.parse_arch(v.nb201_arch))) if dedup == "nb201" else None
    return _checked(stream, tally if tally is not None else Tally(), limits or Limits(), unique, keep_invalid, key)


def _checked(stream: Iterator[Variant], tally: Tally, limits: Limits, unique: bool,
             keep_invalid: bool, key: Callable[[Variant], str] | None = None) -> Iterator[Variant]:
    """The members of ``stream`` that are valid, within ``limits`` and (if ``unique``) new, hashed.

    A member is a repeat when its architecture graph was seen, or, with ``key``, when its key was."""
    hashes = HashRegistry()
    keys: set[str] = set()
    for v in stream:
        tally.members += 1
        if not v.valid:
            tally.invalid[v.error] += 1
            if keep_invalid:
                yield v
            continue
        v.arch_hash, v.duplicate = hashes.hash(v.network_obj.plan)
        tally.confirmations, tally.collisions = hashes.confirmations, hashes.collisions
        if key is not None:
            k = key(v)
            v.duplicate = k in keys
            keys.add(k)
        reason = limits.violation(v)
        if reason:
            tally.over_limit[reason.split(" over ")[0] + " over the limit"] += 1
            continue
        if unique and v.duplicate:
            tally.duplicates += 1
            continue
        tally.kept += 1
        yield v


# ----------------------------------------------------------------------------- the command line


def _csv_rows(vs: Iterator[Variant], bench: bool = False) -> Iterator[list]:
    """The rows of ``--format csv``; with ``bench`` (a NAS-Bench-201 space), each member's arch string and index."""
    yield ["arch_hash", *(["nb201_arch", "nb201_index"] if bench else []), "params", "macs", "activations", "choices"]
    for v in vs:
        yield [v.arch_hash, *([v.nb201_arch, v.nb201_index] if bench else []), v.params, v.macs, v.activations,
               json.dumps(v.options, separators=(",", ":"))]


def cmd_variants(args, params: dict) -> int:
    """``cnndsl variants SPACE``: count, enumerate, sample or mutate a space's members."""
    space = Space.open(args.space, input_shape=args.input, params=params)
    if args.count:
        if args.unique and args.dedup == "nb201" and nb201.edge_options(space.points) is not None:
            print(nb201.unique_count())  # the six edges are the space's only choices: the benchmark's unique cells
            return 0
        if args.unique:
            raise CnnArgumentError("--count counts the members as written; which of them are repeats is known "
                                   "only once each is built", None,
                                   f"cnndsl variants {args.space} --unique --format csv (one row per kept member); "
                                   "in a NAS-Bench-201 space, --count --unique --dedup nb201")
        n = space.count()
        print("infinite" if n == math.inf else n)  # a float range's values are endless
        return 0
    limits = Limits(args.max_params, args.max_macs, args.max_activations)
    tally = Tally()
    stream = variants(space, sample=args.sample, mutate=args.mutate, start=args.start, seed=args.seed,
                      limits=limits, unique=args.unique, tally=tally, limit=args.limit, progress=args.arch is None,
                      arch=args.arch, dedup=args.dedup)
    if args.output:
        out = Path(args.output)
        out.mkdir(parents=True, exist_ok=True)
        for i, v in enumerate(stream):
            (out / f"{space.network}_{i:05d}_{v.arch_hash[:8]}.cnn").write_text(v.source, encoding="utf-8")
    elif args.format == "csv":
        import csv

        writer = csv.writer(sys.stdout, lineterminator="\n")
        for row in _csv_rows(stream, bench=nb201.edge_options(space.points) is not None):
            writer.writerow(row)
    else:
        for v in stream:
            sys.stdout.write(json.dumps(v.record(), separators=(",", ":")) + "\n")
    for line in tally.lines():
        print(line, file=sys.stderr)
    return 0


def add_parser(sub, shape, parse_params) -> None:
    """Register ``cnndsl variants`` on the CLI's subparsers."""
    h = "count, enumerate, sample or mutate the members of a search space"
    sp = sub.add_parser("variants", help=h, description=h,
                        epilog="SPACE is a .cnn file with choices, FILE.cnn:NETWORK, or a shipped space "
                               "(resnet_cifar, inception, nb201).")
    sp.add_argument("space", metavar="SPACE")
    what = sp.add_mutually_exclusive_group()
    what.add_argument("--count", action="store_true", help="print the number of members (no enumeration)")
    what.add_argument("--enumerate", action="store_true",
                      help=f"every member (the default); a space of more than {MAX_ENUMERATED:,} needs --limit N")
    what.add_argument("--sample", type=int, metavar="N", help="N distinct members drawn at random")
    what.add_argument("--mutate", type=int, metavar="N", help="N members differing in one choice from --from")
    what.add_argument("--arch", metavar="STR",
                      help="in a NAS-Bench-201 space, the member with this arch string (|nor_conv_3x3~0|+|...|) or "
                           "benchmark index (0 to 15624)")
    sp.add_argument("--limit", type=int, metavar="N",
                    help="check at most N members (the first N enumerated), so at most N are output or written")
    sp.add_argument("--from", dest="start", metavar="FILE", help="a member written by -o, or a jsonl line")
    sp.add_argument("--seed", type=int, default=0, help="random seed for --sample and --mutate (default 0)")
    sp.add_argument("--max-params", type=int, metavar="N")
    sp.add_argument("--max-macs", type=int, metavar="N")
    sp.add_argument("--max-activations", type=int, metavar="N")
    sp.add_argument("--unique", action="store_true", help="leave out members whose architecture was seen")
    sp.add_argument("--dedup", default="graph", metavar="{graph,nb201}",
                    help="what --unique calls a repeat: an identical architecture graph (graph, the default) or, "
                         "in a NAS-Bench-201 space, a cell NAS-Bench-201 calls the same (nb201: 6,466 of 15,625)")
    sp.add_argument("--input", type=shape, metavar="CxHxW", help="override the input size of every member")
    sp.add_argument("--param", "-p", action="append", metavar="NAME=VALUE", help="set a network parameter")
    sp.add_argument("--format", choices=("jsonl", "csv"), default="jsonl")
    sp.add_argument("-o", "--output", metavar="DIR", help="write one .cnn per member into DIR")

    def run(args):
        if args.mutate is not None and not args.start:
            sp.error("--mutate needs --from FILE")
        return cmd_variants(args, parse_params(args.param))

    sp.set_defaults(func=run)
