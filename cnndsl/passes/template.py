"""Fragments with holes: a block instance whose ``choice<...>`` terms a search decides, filled in per member.

The memo (:mod:`cnndsl.passes.memo`) keeps one fragment of a block instance for each set of decisions its
build asked. In a cell-based space (NAS-Bench-201: one cell, six ``choice<...>`` edges, 15,625 members) almost
every member asks a set not seen before, so each of its cells was a full build: resolve, shapes, counts. Yet
two builds of the instance differ only inside its choices. A :class:`Template` is learnt from the builds of one
instance (one memo key): the layers no decision touches (the *fixed* parts, in ``len(holes) + 1`` segments),
and, for each ``choice<...>`` (a *hole*), the layers each option made in some build. A new set of decisions
whose options have all been seen is *filled in*: the fixed parts with the options' layers between them, named
as a build would name them, and counts that are the sum of the parts'. Nothing is resolved, inferred or
counted again; the memo keeps the result like any fragment it built.

A fill is exact where a build would make the same layers, and a build is learnt from only where that holds
(:func:`learn` says what it checks): no warnings and no rewrites (the passes change nothing a later build
would see otherwise), every decision a hole's own (no choice inside an option, none outside the holes), the
layers in the order they were added, every option making its own output (one that is a reference, ``@a``,
leaves it unclear which later reads go through the hole), and every layer reading the instance's input, a
fixed layer or a hole's output. An option's layers are named after the scope it was resolved in, by that
scope's counters (``rcb1``, ``identity2``): a fill names them from the counters that the options chosen
before it leave, as a build counts, and refuses where a fixed layer's name after it could have come from one
of those counters too (it would move in a build). Every option of a hole must give the output shape the
template was learnt with, so the fixed layers keep their shapes. What a build would refuse (a layer whose
result is not used, a name used twice, totals over the size limits) a fill leaves to a build.
tests/test_memo.py checks filled members against the flat build, layer for layer and byte for byte.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from cnndsl.ir.graph import FLOW, MOUNT, Fragment, Node, Scope
from cnndsl.ir.ops import OPS

#: A layer's operand as a template keeps it: ``(FLOW,)`` the instance's input, ``("fixed", name)`` a fixed layer,
#: ``("own", name)`` a layer of the same option, ``("hole", i)`` the output of hole ``i``.
Ref = tuple

#: What a key's template becomes when two of its builds disagree on what should be the same: never filled.
DEAD: Any = object()


@dataclass(eq=False)
class Hole:
    """One ``choice<...>`` resolved while a fragment was built: where the build stood before and after it.

    Counts are of the build's graph (``nodes``: entries added, a mount one; ``layers``: what resolve made,
    mounted layers included), its scopes, work, references, claimed labels and decisions asked."""

    choice: Any  # the choice point (:class:`cnndsl.front.syntax.Choice`) the build's choose hook is asked
    scope: Any  # the NameScope the option is resolved in
    before: dict[str, int]  # that scope's counters before
    start: tuple[int, ...]  # (nodes, scopes, layers, work, lookups, claims, asked) before
    end: tuple[int, ...] = ()
    after: dict[str, int] = field(default_factory=dict)
    out: str = ""


@dataclass(eq=False)
class _Option:
    """One option of a hole, as one build made it: its layers (operands as refs) and scopes, named as in that build."""

    nodes: list[tuple[Node, list[Ref]]]
    scopes: list[Scope]
    out: str  # its output, one of its layers
    before: dict[str, int]  # the counters of the hole's scope before it, in that build
    delta: dict[str, int]  # what it added to them
    work: int
    lookups: int
    layers: int
    claims: bool
    params: int
    macs: int
    activations: int
    asked: tuple  # (choice, decision) as the build asked it: what a fill that chooses it records


class Template:
    """A block instance's fixed layers and its holes' options seen so far (see the module's docstring)."""

    def __init__(self, structure: tuple, segments: list, prefixes: list[str], fixed_before: list[dict[str, int]],
                 deltas: list[dict[str, int]], output: Ref, shape: tuple[int, ...], totals: tuple[int, ...],
                 claims: bool) -> None:
        self.structure = structure  # what every build learnt from must share (see :func:`_learnt`)
        self.choices = structure[0]
        self.segments = segments  # (nodes with refs, scopes) before the first hole, between holes, after the last
        self.prefixes = prefixes  # each hole's scope, relative to the instance ("" its own, else "name.")
        self.fixed_before = fixed_before  # each hole's scope's counters before it, less what options added
        self.output = output
        self.shape = shape
        self.work, self.lookups, self.layers, self.params, self.macs, self.activations = totals  # fixed parts'
        self.claims = claims
        self.options: list[dict[Any, _Option]] = [{} for _ in self.choices]
        self.deltas = deltas  # what each hole's option added to its scope's counters in the build learnt from
        self._filled: set[tuple] = set()  # the decisions filled in once (tuples of numbers: the collector skips them)
        # For each hole, the first part of every fixed layer's and scope's name made after it in its scope: a
        # counter may have made it, and an option that counts otherwise would move it in a build.
        self._after: list[list[str]] = []
        for i, prefix in enumerate(prefixes):
            names = [node.name for nodes, scopes in segments[i + 1:] for node, _ in nodes] + \
                    [sc.name for nodes, scopes in segments[i + 1:] for sc in scopes]
            self._after.append([n[len(prefix):].partition(".")[0] for n in names if n.startswith(prefix)])

    def fill(self, decide, limits=None) -> Fragment | None:
        """The fragment for the decisions ``decide`` makes (asked in the order a build asks them), or None where a
        build must say what a fill cannot know: an option not seen yet, a name a build could give otherwise, a
        layer whose result is not used (an error), totals over the size ``limits`` (an error at the layer that
        crosses them)."""
        decisions = [decide(choice) for choice in self.choices]
        chosen = []
        for options, decision in zip(self.options, decisions):
            option = options.get(decision)
            if option is None:
                return None
            chosen.append(option)
        nodes: list[Node] = []
        operands: list[tuple[str, ...]] = []
        scopes: list[Scope] = []
        outs: list[str] = []
        counted: dict[str, dict[str, int]] = {}  # a hole's scope -> what the options chosen so far added
        work, lookups, layers, claims = self.work, self.lookups, self.layers, self.claims
        params, macs, activations = self.params, self.macs, self.activations
        for i, (fixed, fixed_scopes) in enumerate(self.segments):
            for node, refs in fixed:  # the layer itself: a fragment's layers are never changed, only shared
                nodes.append(node)
                operands.append(tuple([ref[1] if ref[0] == "fixed" else _at(ref, outs) for ref in refs]))
            scopes.extend(fixed_scopes)
            if i == len(chosen):
                break
            option, prefix = chosen[i], self.prefixes[i]
            added = counted.setdefault(prefix, {})
            renamed = {}
            learnt = self.deltas[i]
            if option.delta != learnt and any(
                    option.delta.get(base, 0) != learnt.get(base, 0) and
                    any(part.startswith(base) and part[len(base):].isdigit() for part in self._after[i])
                    for base in {*option.delta, *learnt}):
                return None  # a fixed name after it that this counter could have made: a build may move it
            for base, n in option.delta.items():
                was, now = option.before.get(base, 0), self.fixed_before[i].get(base, 0) + added.get(base, 0)
                if was != now:
                    renamed.update((f"{base}{was + k}", f"{base}{now + k}") for k in range(1, n + 1))
                added[base] = added.get(base, 0) + n
            name = (lambda n, p=prefix, r=renamed: _renamed(n, p, r)) if renamed else (lambda n: n)
            for node, refs in option.nodes:
                nodes.append(_copy(node, name) if renamed else node)
                operands.append(tuple([name(ref[1]) if ref[0] == "own" else ref[1] if ref[0] == "fixed"
                                       else _at(ref, outs) for ref in refs]))
            scopes.extend(sc if not renamed else _scope(sc, name(sc.name)) for sc in option.scopes)
            outs.append(name(option.out))
            work, lookups, layers = work + option.work, lookups + option.lookups, layers + option.layers
            params, macs, activations = params + option.params, macs + option.macs, activations + option.activations
            claims = claims or option.claims
        if limits is not None and (params > limits.params or activations > limits.activations):
            return None
        output = self.output[1] if self.output[0] == "fixed" else _at(self.output, outs)
        read = {src for srcs in operands for src in srcs}
        if any(node.name not in read and node.name != output for node in nodes):
            return None  # a fixed layer read only by options that this fill leaves out
        if len({node.name for node in nodes}) < len(nodes) or len({sc.name for sc in scopes}) < len(scopes):
            return None  # an option named like a label: a build says "duplicate name"
        longest = max((len(node.meta["mount"][0]) + 1 + node.meta["mount"][1].longest if node.op == MOUNT
                       else len(node.name)) for node in nodes)
        asked = tuple(option.asked if option.asked[1].__class__ is decision.__class__ else (choice, decision)
                      for option, choice, decision in zip(chosen, self.choices, decisions))
        return Fragment(tuple(nodes), tuple(operands), tuple(scopes), (), output, self.shape, params, macs,
                        activations, layers, longest, (), asked, work, lookups, claims)

    def again(self, frag: Fragment) -> bool:
        """Whether ``frag``'s decisions were filled in before: a fill worth keeping in the memo, where a lookup
        finds it (and the arch hash's facts on it) next time. A first fill is not kept: in a cell space a set
        of decisions seldom comes back, and a search that kept them all would hold three new cells a member."""
        decisions = tuple(decision for _, decision in frag.decisions)
        if decisions in self._filled:
            return True
        if len(self._filled) >= MAX_FILLED:
            self._filled.clear()
        self._filled.add(decisions)
        return False


#: How many sets of decisions a template remembers having filled (then it starts again).
MAX_FILLED = 100_000


def _at(ref: Ref, outs: list[str]) -> str:
    """A ref to the instance's input or to a hole's output, as a name in the fill."""
    return FLOW if ref[0] == FLOW else outs[ref[1]]


def _renamed(name: str, prefix: str, renamed: dict[str, str]) -> str:
    """``name`` (inside the scope ``prefix``) with its first part there renamed, where ``renamed`` says so."""
    first, dot, rest = name[len(prefix):].partition(".")
    return f"{prefix}{renamed.get(first, first)}{dot}{rest}"


def _copy(node: Node, rename) -> Node:
    """``node`` with its name (and a mount's prefix) renamed by ``rename``; its order is its place in the build
    learnt from (a fragment's order is the one its layers are stored in: nothing reads a layer's own there)."""
    meta = node.meta
    if node.op == MOUNT:
        prefix, frag = meta["mount"]
        meta = {**meta, "mount": (rename(prefix), frag)}
    elif meta:
        meta = dict(meta)
    else:
        meta = {}
    return Node(rename(node.name), node.op, node.args, node.span, node.order, node.shape, node.params, node.macs,
                node.activations, node.frozen, meta)


def _scope(sc: Scope, name: str) -> Scope:
    new = object.__new__(Scope)
    new.__dict__.update(sc.__dict__, name=name)
    return new


def learn(templates: dict, key: tuple, holes: list[Hole], decisions: list, names: list[str], frag: Fragment,
          inst: str, flow: str, claimed: int, work: int, lookups: int) -> None:
    """Learn from a fragment just built under ``key``: its holes' options join the key's template (made from this
    build when there is none), where the build shows what a fill needs (see the module's docstring).

    ``names`` are the build's layer names in the order it added them (the instance's input first), ``claimed``,
    ``work`` and ``lookups`` its totals."""
    known = templates.get(key)
    if known is DEAD:
        return
    seen = _learnt(holes, decisions, names, frag, inst, flow, claimed, work, lookups)
    if seen is None:
        return
    made, options = seen
    if known is None:
        known = templates[key] = made
    elif known.structure != made.structure:
        templates[key] = DEAD
        return
    for kept, (decision, option) in zip(known.options, options):
        kept.setdefault(decision, option)


def _learnt(holes: list[Hole], decisions: list, names: list[str], frag: Fragment, inst: str, flow: str,
            claimed: int, work: int, lookups: int) -> tuple[Template, list] | None:
    """The template this build shows, and each hole's (decision, option); None where it cannot be learnt from."""
    if frag.warnings or frag.late_scopes or len(decisions) != len(holes):
        return None
    cut = len(inst) + 1
    if len(names) != len(frag.layers) + 1 or any(a[cut:] != node.name for a, node in zip(names[1:], frag.layers)):
        return None  # not in the order added (a pass reordered them)
    prefixes = []
    for hole, (choice, _) in zip(holes, decisions):
        p = hole.scope.prefix
        if (hole.choice is not choice or hole.end[6] - hole.start[6] != 1 or hole.scope.sequential
                or not (p == inst or p.startswith(inst + "."))):
            return None
        prefixes.append("" if p == inst else p[cut:] + ".")
    outs: dict[str, int] = {}  # a hole's own output (relative) -> the hole
    relative = [None if n == flow else n[cut:] for n in names]
    rel_out = [None if h.out == flow else h.out[cut:] for h in holes]

    def ref(src: str, own: range | None, before: int) -> Ref | None:
        if src == FLOW:
            return (FLOW,)
        if src in outs and outs[src] < before:
            return ("hole", outs[src])
        at = index.get(src)
        if at is None:
            return None
        if own is not None and at in own:
            return ("own", src)
        return ("fixed", src) if at not in inside else None  # a layer inside another option: not learnt

    index = {n: i for i, n in enumerate(relative) if n is not None}
    inside = set()
    for h in holes:
        inside.update(range(h.start[0], h.end[0]))
    segments, options, fixed_before = [], [], []
    added: dict[str, dict[str, int]] = {}
    at_node, at_scope = 1, 0
    totals = [0] * 6  # work, lookups, layers, params, macs, activations of the options
    claims = 0
    for i, hole in enumerate(holes + [None]):
        stop_node = hole.start[0] if hole is not None else len(names)
        stop_scope = hole.start[1] if hole is not None else len(frag.scopes)
        fixed = []
        for k in range(at_node, stop_node):
            node, srcs = frag.layers[k - 1], frag.operands[k - 1]
            refs = [ref(s, None, i) for s in srcs]
            if None in refs:
                return None
            fixed.append((node, refs))
        segments.append((fixed, frag.scopes[at_scope:stop_scope]))
        if hole is None:
            break
        own = range(hole.start[0], hole.end[0])
        nodes = []
        for k in own:
            node, srcs = frag.layers[k - 1], frag.operands[k - 1]
            refs = [ref(s, own, i) for s in srcs]
            if None in refs:
                return None
            nodes.append((node, refs))
        out = rel_out[i]
        if out is None or index.get(out) not in own:  # the option is a reference: which reads of that value
            return None  # are through the hole, and which are not, the names do not tell
        outs[out] = i
        delta = {b: n - hole.before.get(b, 0) for b, n in hole.after.items() if n != hole.before.get(b, 0)}
        prefix = prefixes[i]
        so_far = added.setdefault(prefix, {})
        fixed_before.append({b: n - so_far.get(b, 0) for b, n in hole.before.items() if n - so_far.get(b, 0)})
        for b, n in delta.items():
            so_far[b] = so_far.get(b, 0) + n
        sums = [sum(node.params for node, _ in nodes), sum(node.macs for node, _ in nodes),
                sum(node.activations for node, _ in nodes)]
        option = _Option(nodes, frag.scopes[hole.start[1]:hole.end[1]], out, dict(hole.before), delta,
                         hole.end[3] - hole.start[3], hole.end[4] - hole.start[4], hole.end[2] - hole.start[2],
                         hole.end[5] > hole.start[5], *sums, decisions[i])
        for j, v in enumerate((option.work, option.lookups, option.layers, *sums)):
            totals[j] += v
        claims += hole.end[5] - hole.start[5]
        options.append((decisions[i][1], option))
        at_node, at_scope = hole.end[0], hole.end[1]
    shape_of = {node.name: node.shape for node in frag.layers}
    shapes = tuple(shape_of.get(o) if o is not None else None for o in rel_out)
    out_ref = ref(frag.output, None, len(holes)) if frag.output not in outs else ("hole", outs[frag.output])
    if out_ref is None:
        return None
    structure = (tuple(h.choice for h in holes), tuple(prefixes), tuple(tuple(sorted(f.items())) for f in fixed_before),
                 shapes, tuple(_segment_key(s) for s in segments), out_ref, frag.shape)
    fixed_totals = (work - totals[0], lookups - totals[1], frag.size - totals[2], frag.params - totals[3],
                    frag.macs - totals[4], frag.activations - totals[5])
    made = Template(structure, segments, prefixes, fixed_before, [option.delta for _, option in options], out_ref,
                    frag.shape, fixed_totals, claimed - claims > 0)
    return made, options


def _segment_key(segment: tuple[list, list]) -> tuple:
    """What a fixed segment is, for telling whether two builds share it: its layers, operands and scopes."""
    nodes, scopes = segment
    return (tuple((node.name, node.op, repr(sorted(node.args.items())), node.shape, tuple(refs)) for node, refs in nodes),
            tuple(sc.name for sc in scopes))


@dataclass(frozen=True)
class _Entry:
    """One node of a network's top level as a build added it: a layer (``frag`` None), or a mounted instance."""

    name: str
    srcs: list[str]
    span: Any
    op: str = ""
    args: dict = field(default_factory=dict)
    meta: dict = field(default_factory=dict)
    prefix: str = ""  # a mount's instance
    key: tuple = ()  # the memo key its fragment was found under
    frag: Fragment | None = None  # the fragment that build mounted


class Skeleton:
    """A network's top level as one build made it, for the next member of a search to make again.

    A member of a cell space differs from the last one only inside the fragments it mounts (its cells), so
    its top level (the stem, the stages' instances, the head) is the same sequence of layers and mounts. A
    skeleton keeps that sequence; a build from it (``Resolver._replayed``) adds the layers again and mounts,
    for each instance whose fragment depends on decisions, the fragment the new decisions find in the memo
    or fill in, its output named after it. It is learnt only from a build that asked every decision inside
    a fragment's lookup (a decision outside one, such as a repeat count, may change the top level itself)
    and pruned nothing; a fragment that is not known yet, has another output shape, or brings a limit in
    reach sends the member back to a build. The network-level passes then run over the graph as over any
    build's."""

    def __init__(self, g, entries: list[_Entry], work: int, lookups: int) -> None:
        self.name, self.params = g.name, dict(g.params)
        self.init = (g.init, g.zero_init_residual, g.init_fc)
        self.inputs, self.output, self.aux_outputs = list(g.inputs), g.output, list(g.aux_outputs)
        self.scopes = list(g.scopes.items())
        self.entries = entries
        self.work, self.lookups = work, lookups
        # The ops its layers were made with: a plugin op registered anew since is made by a build again.
        self.ops = {entry.op: OPS.get(entry.op) for entry in entries if entry.frag is None}

    def current(self) -> bool:
        """Whether every op its layers were made with is still the one registered under its name."""
        return all(OPS.get(name) is op for name, op in self.ops.items())

    @classmethod
    def of(cls, g, mounts: dict[str, tuple], work: int, lookups: int) -> Skeleton | None:
        """The skeleton of the top level ``g`` a build just made (``mounts``: its mounts' keys, by node), or None
        where the graph was expanded while it was built."""
        names = g.added()
        if sum(g.node(name).op == MOUNT for name in names) != len(mounts):
            return None  # expanded while it was built (a reference into an instance): its layers are no one's
        entries = []
        for name in names:
            node = g.node(name)
            srcs = g.inputs_of(name)
            if node.op != MOUNT:
                entries.append(_Entry(name, srcs, node.span, node.op, dict(node.args), dict(node.meta)))
                continue
            key = mounts.get(name)
            if key is None:
                return None
            prefix, frag = node.meta["mount"]
            entries.append(_Entry(name, srcs, node.span, prefix=prefix, key=key, frag=frag))
        return cls(g, entries, work, lookups)
