"""What a one-shot supernet shares: the place of every layer of a member, and the pool key of its tensors.

A supernet (``cnndsl.build_supernet``, :mod:`cnndsl.backends.supernet_torch`) holds one tensor per *pool key*
and runs each member on slices of them. This module decides the keys, from the IR alone:

* A layer's **place** is its dotted name made stable across members. A scope or layer written inside an option
  of a branch choice (``choice< A | B >``) is renamed ``<CHOICE=OPTION>N``, the option it lies in and its rank
  among the places entering that option under the same parent, so an option's layers have one place whatever
  the other choices make of the numbering around them (NAS-Bench-201's unlabelled ``rcb`` instances are
  numbered on through the cell, and a ``skip`` edge takes no number). Every other numbered segment (``conv3``,
  ``layer1.2``) becomes its stem, the text that made it (``file:line:col``) and its rank among its siblings with
  the same stem made by the same text (``conv#0@s.cnn:3:5``, ``layer#0@s.cnn:4:9.#1@s.cnn:4:30``): a layer
  keeps its place when an optional step before it (``se(...) x{has_se}``, a repeat chosen shorter) is absent
  and takes no number.
* A tensor's **pool key** is its place, its name in the layer (``weight``, ``running_mean``), the op and the op's
  arguments, less those that only size the tensor (the op's ``sizing`` fact, :class:`cnndsl.ir.ops.Op`): a
  conv's ``c``, ``k`` and its padding, an fc's ``c``. Members whose layer has the same key share one tensor, the
  largest, each taking its slice: the leading channels, and for a kernel the centred window of its spatial axes
  (Once-for-All's elastic width and kernel). A depthwise conv (as many groups as input and output channels)
  keys its groups as ``'depthwise'``, so it slices too (Once-for-All's elastic expansion). An op without
  ``sizing`` adds the tensor's shape to its key, so each size is a candidate of its own.

>>> from cnndsl.search.variants import Space
>>> space = Space.open("nb201", input_shape=(1, 8, 8), params={"n": 1})
>>> layers = member_layers(space.member({}).network_obj, space.points)
>>> layers["cell1.rcb1.conv1"].place
'cell#0@nb201.cnn:29:26.<nb201.cnn:16:18=0>0.conv#0@nb201.cnn:12:45'
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from cnndsl.ir.network import Network
from cnndsl.search.pareto import front

_NUMBERED = re.compile(r"^(.*?)(\d+)$")


@dataclass(frozen=True)
class Layer:
    """One layer of a member as the supernet sees it: its stable place, op, the arguments in its pool key, and
    how its tensors are sliced (``sliced`` false: never, the shape is part of the key)."""

    name: str
    place: str
    op: str
    key_args: str
    sliced: bool
    centred: tuple[int, ...]

    def pool_key(self, tensor: str, shape: tuple[int, ...]) -> str:
        """The key of this layer's tensor ``tensor`` (``weight``, ``running_var``) of ``shape``."""
        size = f"|{len(shape)}d" if self.sliced else f"|{'x'.join(map(str, shape)) or 'scalar'}"
        return f"{self.place}:{tensor}|{self.op}|{self.key_args}{size}"


def _options(points) -> list[tuple[str, int, object]]:
    """Every option of every branch choice: (choice key, option index, the option's span)."""
    return [(p.key, i, o.span) for p in points.values() if p.branches for i, o in enumerate(p.node.options)]


def _inside(span, outer) -> bool:
    return (span.source.name == outer.source.name
            and (outer.line, outer.col) <= (span.line, span.col)
            and (span.end_line, span.end_col) <= (outer.end_line, outer.end_col))


def _extent(span) -> tuple[int, int]:
    return (span.end_line - span.line, span.end_col - span.col)


def _option_of(span, options) -> tuple[str, int] | None:
    """The innermost branch option whose text holds ``span``, or None."""
    best = None
    for key, i, o in options:
        if span is not None and _inside(span, o) and (best is None or _extent(o) < _extent(best[2])):
            best = (key, i, o)
    return best and (best[0], best[1])


def _written_at(span) -> str:
    """``@file:line:col`` of the text that made a layer or scope (the file's base name, so that a place does not
    depend on where the space was opened from); empty where it has no span."""
    if span is None:
        return ""
    return f"@{span.source.name.replace(chr(92), '/').rpartition('/')[2]}:{span.line}:{span.col}"


def places(network: Network, points) -> dict[str, str]:
    """The place (see the module's docstring) of every layer of ``network``, a member of a space whose choice
    points are ``points`` (``Space.points``), by layer name."""
    graph = network.graph
    options = _options(points)
    scopes = graph.scopes
    canon: dict[str, tuple[str, tuple[str, int] | None]] = {"": ("", None)}
    ranks: dict[tuple[str, str], dict[str, int]] = {}
    out: dict[str, str] = {}
    for node in graph.nodes():
        parts = node.name.split(".")
        for j in range(1, len(parts) + 1):
            prefix = ".".join(parts[:j])
            if prefix in canon:
                continue
            parent, ctx = canon[".".join(parts[:j - 1])]
            if j == len(parts):
                span = node.span
            else:
                scope = scopes.get(prefix)
                span = scope.span if scope is not None else None
            option = _option_of(span, options)
            segment = parts[j - 1]
            where = ""
            if option is not None and option != ctx:
                marker, ctx = f"<{option[0]}={option[1]}>", option
            else:
                m = _NUMBERED.match(segment)
                marker = f"{m.group(1)}#" if m else None
                where = _written_at(span)
            if marker is not None:
                rank = ranks.setdefault((parent, marker, where), {})
                segment = f"{marker}{rank.setdefault(prefix, len(rank))}{where}"
            canon[prefix] = (f"{parent}.{segment}" if parent else segment, ctx)
        out[node.name] = canon[node.name][0]
    return out


def _args_text(args: dict, left_out: frozenset[str]) -> str:
    return ",".join(f"{k}={args[k]!r}" for k in sorted(args) if k not in left_out)


def member_layers(network: Network, points) -> dict[str, Layer]:
    """Every layer of a member ``network`` as the supernet sees it (:class:`Layer`), by layer name."""
    graph = network.graph
    where = places(network, points)
    layers = {}
    for node in graph.nodes():
        left_out = node.opdef.sizing  # the arguments that only size its tensors (None: not sliced)
        centred = tuple(sorted({a for w in node.opdef.weights for a in w.spatial_axes}))  # a kernel's window
        args = node.args
        if left_out is not None and _depthwise(graph, node):
            args = {**args, "groups": "depthwise"}  # (c, 1, k, k): the leading c' channels are the c'-wide one
        layers[node.name] = Layer(node.name, where[node.name], node.op,
                                  _args_text(args, left_out or frozenset()), left_out is not None, centred)
    return layers


def _depthwise(graph, node) -> bool:
    """Whether ``node`` (of a sliced op) is depthwise: as many groups as input and output channels, more than one,
    so that its weight has one channel a group and its leading channels are the narrower depthwise layer's."""
    groups = node.args.get("groups", 1)
    if not isinstance(groups, int) or groups < 2 or node.args.get("c") != groups:
        return False
    operands = graph.inputs_of(node.name)
    shape = graph.node(operands[0]).shape if operands else None
    return bool(shape) and shape[0] == groups


def kendall_tau(a, b) -> float:
    """Kendall's tau-b of two scorings of the same members (ties in either count for neither order): the number
    of pairs both put in the same order, less those they put in opposite orders, over the geometric mean of the
    pairs each tells apart. 1 is the same ranking, -1 the reverse; nan when either scoring ties every pair.

    >>> kendall_tau([1, 2, 3, 4, 5], [3, 1, 2, 5, 4])  # 7 pairs agree, 3 disagree
    0.4
    """
    if len(a) != len(b):
        raise ValueError(f"two scorings of {len(a)} and {len(b)} members")
    agree = apart_a = apart_b = 0
    for i in range(len(a)):
        for j in range(i + 1, len(a)):
            da, db = (a[j] > a[i]) - (a[j] < a[i]), (b[j] > b[i]) - (b[j] < b[i])
            agree += da * db
            apart_a += da != 0
            apart_b += db != 0
    return agree / (apart_a * apart_b) ** 0.5 if apart_a and apart_b else float("nan")


# ----------------------------------------------------------------------------- the command line
# ``cnndsl supernet train | search | eval``. The training and evaluation run in PyTorch
# (:mod:`cnndsl.backends.supernet_torch`), imported when a command runs; what is decided here is plain data:
# the files, the data split, the members each step evaluates.

SUPERNET_FILE = "supernet.safetensors"
SPACE_FILE = "space.json"
SEARCH_FILE = "search.csv"
EVAL_FILE = "eval.csv"
SAMPLERS = ("evolution", "random")


def _space_record(space, spec: str) -> dict:
    from pathlib import Path

    where = Path(spec)
    return {"spec": str(where.resolve()) if where.exists() else spec, "input": list(space.input_shape or ()),
            "params": space.params}


def _open_space(folder):
    """The space a supernet folder was trained on (``space.json``), opened as it was."""
    import json
    from pathlib import Path

    from cnndsl.errors import CnnArgumentError
    from cnndsl.search.variants import Space

    record_path = Path(folder) / SPACE_FILE
    if not record_path.is_file():
        raise CnnArgumentError(f"{folder} holds no {SPACE_FILE}", None, "give the --out folder of `cnndsl "
                               "supernet train`")
    record = json.loads(record_path.read_text(encoding="utf-8"))
    return Space.open(record["spec"], input_shape=tuple(record["input"]) or None, params=record["params"]), record


def _data(space, data: str, seed: int = 0):
    """The data for a space's members, as ``cnndsl search`` splits it: the fixed stratified 80/20 split (seed 0),
    resized to the input, normalised by the training part's mean and deviation. Torch tensors."""
    import torch

    from cnndsl.errors import CnnArgumentError
    from cnndsl.train.data import load_data, split_indices
    from cnndsl.train.torch_loop import fit_input

    first = space.member({})
    if not first.valid:
        raise CnnArgumentError(f"the space's first member does not build: {first.error}", None,
                               "check it with `cnndsl variants --limit 1`")
    net = first.network_obj
    x, y, names = load_data(net, data, {})
    outputs = net.graph.node(net.graph.outputs[0]).shape if net.graph.outputs else None
    if outputs and outputs[0] != len(names):
        raise CnnArgumentError(f"the members have {outputs[0]} outputs, the data {len(names)} classes", None,
                               f"-p classes={len(names)}")
    x = fit_input(torch.from_numpy(x), net.input_shape)
    y = torch.from_numpy(y)
    tr, te = split_indices(y.numpy(), seed)
    tr, te = torch.from_numpy(tr), torch.from_numpy(te)
    mean, std = x[tr].mean(), x[tr].std()
    x = (x - mean) / std
    return x[tr], y[tr], x[te], y[te]


def _calibration(x, batches: int, batch_size: int, seed: int) -> list:
    """The input batches every member's batch norms are recalibrated on: the same for every member."""
    import torch

    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))
    return [x[order[i * batch_size:(i + 1) * batch_size]] for i in range(batches) if i * batch_size < len(x)]


def _load_supernet(folder):
    from pathlib import Path

    from cnndsl.backends.supernet_torch import Supernet, load_pool

    space, record = _open_space(folder)
    supernet = Supernet(space, member_layers, [])
    meta = load_pool(supernet, Path(folder) / SUPERNET_FILE)
    return supernet, record, meta


def cmd_train(args, params: dict) -> int:
    import json
    import shutil
    from pathlib import Path

    from cnndsl.backends.supernet_torch import Supernet, save_pool, train_spos
    from cnndsl.files import write_atomic
    from cnndsl.search.variants import Space
    from cnndsl.train.data import epoch_lr

    space = Space.open(args.space, input_shape=args.input, params=params)
    x, y, _, _ = _data(space, args.data)
    supernet = Supernet(space, member_layers, sample=args.sizing, seed=args.seed)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    lrs = [epoch_lr(args.lr, e, args.epochs) for e in range(1, args.epochs + 1)]
    print(f"{space.label}: supernet of {len(supernet.keys)} tensors ({sum(p.numel() for p in supernet.parameters()):,} "
          f"parameters); SPOS on {len(x)} images, {args.epochs} epochs")
    train_spos(supernet, x, y, lrs, batch_size=args.batch_size, seed=args.seed,
               on_epoch=lambda e, loss: print(f"epoch {e}/{args.epochs}: loss {loss:.4f}", flush=True))
    data = args.data if args.data == "digits" else str(Path(args.data).resolve())
    record = {**_space_record(space, args.space), "data": data, "epochs": args.epochs, "seed": args.seed}
    write_atomic(out / SPACE_FILE, json.dumps(record, indent=1, sort_keys=True) + "\n")
    source = Path(args.space)
    if source.is_file():  # the space's text, for the record (space.json names the file it was opened from)
        shutil.copyfile(source, out / source.name)
    write_atomic(out / SUPERNET_FILE, save_pool(supernet, {"cnndsl.supernet.space": json.dumps(record,
                                                                                               sort_keys=True)}))
    print(f"wrote {out / SUPERNET_FILE} and {out / SPACE_FILE}")
    return 0


def _evaluator(supernet, record, args, limits):
    """``evaluate(choices) -> (accuracy or None, member)``: inherited accuracy after BN recalibration, None over a
    limit (never evaluated)."""
    from cnndsl.backends.supernet_torch import inherited_accuracy

    x, _, xv, yv = _data(supernet.space, record.get("data", "digits"))
    calibration = _calibration(x, args.calibrate, args.batch_size, args.seed)

    def evaluate(choices: dict):
        member = supernet.path(choices).variant
        if limits.violation(member):
            return None, member
        return inherited_accuracy(supernet, choices, xv, yv, calibration), member
    return evaluate, calibration


def _row(trial: int, accuracy, member, duplicate_of=None) -> dict:
    import json

    return {"trial": trial, "accuracy": "" if accuracy is None else f"{accuracy:.6f}", "params": member.params,
            "macs": member.macs, "duplicate_of": "" if duplicate_of is None else duplicate_of,
            "choices": json.dumps(member.choices, sort_keys=True)}


def _write_csv(path, rows: list[dict]) -> None:
    import csv
    import io

    from cnndsl.files import write_atomic

    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(rows[0]) if rows else ["trial"], lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    write_atomic(path, buf.getvalue())


def evolve(space, evaluate, trials: int, *, sampler: str = "evolution", population: int = 10, tournament: int = 3,
           seed: int = 0, directions: tuple[str, ...] | None = None) -> list[tuple[dict, object, int | None]]:
    """Regularised evolution (Real et al. 2019) or random search over ``space`` with ``evaluate(choices) ->
    (score or None, member)``: ``trials`` members, each ``(choices, score, duplicate_of)`` in trial order.

    The population is the last ``population`` trials; past it, each trial mutates one choice of the best of
    ``tournament`` of them drawn at random (a score of None, a member over a limit, loses to any). A member seen
    before reuses its score (``duplicate_of`` its first trial) and still counts as a trial.

    With ``directions`` (``"maximize"`` or ``"minimize"`` per objective), a score is a tuple of objective values
    and the parent is drawn uniformly from the tournament's first front (non-dominated sorting,
    :mod:`cnndsl.search.pareto`), as ``cnndsl search --sampler evolution`` does with several objectives.
    """
    import random
    from collections import deque

    rng = random.Random(seed)
    seen: dict[tuple, int] = {}
    history: list[tuple[dict, float | None, int | None]] = []
    alive: deque = deque(maxlen=population)
    for t in range(trials):
        if sampler == "random" or len(alive) < population:
            choices = next(iter(space.sample(1, seed=rng.randrange(2 ** 31)))).choices
        else:
            drawn = rng.sample(list(alive), min(tournament, len(alive)))
            if directions is None:
                parent = max(drawn, key=lambda h: -1.0 if h[1] is None else h[1])
            else:
                complete = [h for h in drawn if h[1] is not None]
                if complete:  # a tie in the first front is broken at random
                    parent = complete[rng.choice(front([h[1] for h in complete], directions))]
                else:
                    parent = rng.choice(drawn)
            choices = space.mutation(parent[0], rng)
        key = tuple(sorted(choices.items()))
        if key in seen:
            first = seen[key]
            history.append((choices, history[first][1], first))
        else:
            seen[key] = t
            history.append((choices, evaluate(choices)[0], None))
        alive.append(history[-1])
    return history


def _limits(args):
    from cnndsl.search.variants import Limits

    return Limits(max_params=args.max_params, max_macs=args.max_macs)


#: The objectives of ``supernet search --objectives``: inherited accuracy, and the member's figures from the IR.
OBJECTIVES = {"accuracy": "maximize", "params": "minimize", "macs": "minimize"}
PARETO_FILE = "pareto.csv"


def parse_objectives(text: str) -> tuple[str, ...]:
    """``"accuracy,params"`` as a tuple of distinct known objectives, accuracy among them."""
    from cnndsl.errors import CnnArgumentError

    names = tuple(n.strip() for n in text.split(","))
    known = ", ".join(OBJECTIVES)
    bad = [n for n in names if n not in OBJECTIVES]
    if bad or len(set(names)) != len(names) or "accuracy" not in names:
        what = f"unknown objective {bad[0]!r}" if bad else ("an objective named twice" if len(set(names)) !=
                                                            len(names) else "no accuracy among the objectives")
        raise CnnArgumentError(f"--objectives {text!r}: {what}", None,
                               f"a comma-separated list of {known}, with accuracy (the supernet scores it)")
    return names


def _values(objectives: tuple[str, ...], accuracy: float, member) -> tuple:
    figures = {"accuracy": accuracy, "params": member.params, "macs": member.macs}
    return tuple(figures[o] for o in objectives)


def cmd_search(args) -> int:
    from pathlib import Path

    from cnndsl.files import write_atomic
    from cnndsl.weights import save_weights

    objectives = parse_objectives(args.objectives)
    directions = tuple(OBJECTIVES[o] for o in objectives)
    at = objectives.index("accuracy")
    supernet, record, _ = _load_supernet(args.dir)
    evaluate, calibration = _evaluator(supernet, record, args, _limits(args))

    def scored(choices):
        accuracy, member = evaluate(choices)
        if accuracy is None or len(objectives) == 1:
            return accuracy, member
        return _values(objectives, accuracy, member), member
    history = evolve(supernet.space, scored, args.trials, sampler=args.sampler, population=args.population,
                     tournament=args.tournament, seed=args.seed, directions=directions if len(objectives) > 1 else None)
    points = [(t, c, s if len(objectives) > 1 else (s,)) for t, (c, s, dup) in enumerate(history)
              if s is not None and dup is None]  # complete, first seen: (trial, choices, objective values)
    rows = [_row(t, None if s is None else (s if len(objectives) == 1 else s[at]), supernet.path(c).variant, dup)
            for t, (c, s, dup) in enumerate(history)]
    folder = Path(args.dir)
    _write_csv(folder / SEARCH_FILE, rows)
    if not points:
        print(f"no member within the limits in {args.trials} trials; wrote {folder / SEARCH_FILE}")
        return 1
    wrote = [folder / "best.cnn", folder / "best.safetensors", folder / SEARCH_FILE]
    if len(objectives) > 1:
        wrote.append(_write_pareto(folder, supernet, objectives, directions, points))

    def rank(p):  # the first objective, then the next ones, then fewer parameters, then the earlier trial
        signed = tuple(v if d == "maximize" else -v for v, d in zip(p[2], directions, strict=True))
        return (*signed, -supernet.path(p[1]).variant.params, -p[0])
    trial, best, values = max(points, key=rank)
    supernet.recalibrate(best, calibration)  # the statistics the best was scored with
    network, state = supernet.extract(best)
    write_atomic(folder / "best.cnn", supernet.source(best))
    save_weights(folder / "best.safetensors", network, state)
    print(f"best: trial {trial}, inherited accuracy {values[at]:.4f}, {network.params:,} parameters; wrote "
          f"{', '.join(str(w) for w in wrote[:-1])} and {wrote[-1]}")
    return 0


def _write_pareto(folder, supernet, objectives, directions, points):
    """``pareto.csv``: the non-dominated first-seen members in trial order, each member's source in
    ``pareto/trial_NNNNN.cnn``."""
    import json

    from cnndsl.files import write_atomic

    rows = []
    for i in sorted(front([p[2] for p in points], directions)):
        trial, choices, values = points[i]
        member = supernet.path(choices).variant
        source = f"pareto/trial_{trial:05d}.cnn"
        (folder / "pareto").mkdir(exist_ok=True)
        write_atomic(folder / source, member.source)
        accuracy = values[objectives.index("accuracy")]
        rows.append({"trial": trial, "accuracy": f"{accuracy:.6f}", "params": member.params, "macs": member.macs,
                     "source": source, "choices": json.dumps(choices, sort_keys=True)})
    _write_csv(folder / PARETO_FILE, rows)
    return folder / PARETO_FILE


def cmd_eval(args) -> int:
    import random
    from pathlib import Path

    supernet, record, _ = _load_supernet(args.dir)
    evaluate, _ = _evaluator(supernet, record, args, _limits(args))
    rng = random.Random(args.seed)
    rows = []
    for t in range(args.sample):
        choices = supernet.sample_choices(rng)
        accuracy, member = evaluate(choices)
        rows.append(_row(t, accuracy, member))
        shown = "over a limit" if accuracy is None else f"{accuracy:.4f}"
        print(f"{t:4d}  {shown}  {member.params:>10,}  {' '.join(f'{v}' for v in choices.values())}", flush=True)
    _write_csv(Path(args.dir) / EVAL_FILE, rows)
    print(f"wrote {Path(args.dir) / EVAL_FILE}")
    return 0


def cmd_source(args, params: dict) -> int:
    """``cnndsl supernet source SPACE``: the supernet's readable PyTorch source (the pool table, the members'
    slices, a runner), to ``-o FILE`` or standard output."""
    from cnndsl.backends.supernet_torch import Supernet, supernet_source
    from cnndsl.files import write_atomic
    from cnndsl.search.variants import Space

    space = Space.open(args.space, input_shape=args.input, params=params)
    supernet = Supernet(space, member_layers, sample=args.sizing, seed=args.seed)
    members = [p.variant.choices for p in supernet._paths.values()][:args.members]  # the sizing members, in order
    text = supernet_source(supernet, members, space.label)
    if args.output is None:
        print(text, end="")
    else:
        write_atomic(args.output, text)
        print(f"wrote {args.output}: {len(supernet.keys)} tensors, {len(members)} members")
    return 0


def _positive(text: str) -> int:
    import argparse

    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} is not a positive number (1 or more)")
    return value


def add_parser(sub, shape, parse_params) -> None:
    """Register ``cnndsl supernet train | search | eval | source`` on the CLI's subparsers."""
    h = "one-shot NAS: train a space's weight-sharing supernet, search it, evaluate its members"
    sp = sub.add_parser("supernet", help=h, description=h)
    actions = sp.add_subparsers(dest="action", required=True, metavar="{train,search,eval,source}")

    def common(p) -> None:
        p.add_argument("--seed", type=int, default=0, help="seed of the draws (default 0)")
        p.add_argument("--batch-size", type=_positive, default=32, metavar="N", help="batch size (default 32)")

    def judged(p) -> None:
        common(p)
        p.add_argument("--calibrate", type=_positive, default=4, metavar="K",
                       help="batches each member's batch norms are recalibrated on before it is scored (default 4)")
        p.add_argument("--max-params", type=int, metavar="N", help="leave out members with more parameters")
        p.add_argument("--max-macs", type=int, metavar="N", help="leave out members with more MACs")

    t = actions.add_parser("train", help="train the supernet of SPACE (SPOS: one uniform path a batch)")
    t.add_argument("space", metavar="SPACE")
    t.add_argument("--data", default="digits", metavar="digits|DIR",
                   help="scikit-learn's 8x8 digits (default), or an ImageFolder-style directory")
    t.add_argument("--epochs", type=_positive, default=2, metavar="N", help="epochs (default 2)")
    t.add_argument("--lr", type=float, default=0.05, help="learning rate (default 0.05, a tenth from 2/3 of the way)")
    t.add_argument("--out", required=True, metavar="DIR", help="writes DIR/supernet.safetensors and DIR/space.json")
    t.add_argument("--input", type=shape, metavar="CxHxW", help="override the input size of every member")
    t.add_argument("--param", "-p", action="append", metavar="NAME=VALUE", help="set a network parameter")
    t.add_argument("--sizing", type=_positive, default=64, metavar="N",
                   help="random members that size the shared tensors of a space of over 256 members (default 64)")
    common(t)
    t.set_defaults(func=lambda args: cmd_train(args, parse_params(args.param)))

    s = actions.add_parser("search", help="search a trained supernet by inherited accuracy")
    s.add_argument("dir", metavar="DIR", help="the --out folder of `cnndsl supernet train`")
    s.add_argument("--trials", type=_positive, default=50, metavar="N", help="members to score (default 50)")
    s.add_argument("--sampler", choices=SAMPLERS, default="evolution")
    s.add_argument("--population", type=_positive, default=10, metavar="P", help="evolution's population (default 10)")
    s.add_argument("--tournament", type=_positive, default=3, metavar="S", help="evolution's tournament (default 3)")
    s.add_argument("--objectives", default="accuracy", metavar="LIST",
                   help=f"comma-separated, accuracy among them: {', '.join(OBJECTIVES)} (default accuracy); with "
                   "several, a Pareto front in pareto.csv")
    judged(s)
    s.set_defaults(func=cmd_search)

    e = actions.add_parser("eval", help="the inherited accuracy of K random members")
    e.add_argument("dir", metavar="DIR", help="the --out folder of `cnndsl supernet train`")
    e.add_argument("--sample", type=_positive, default=10, metavar="K", help="members (default 10)")
    judged(e)
    e.set_defaults(func=cmd_eval)

    o = actions.add_parser("source", help="the readable PyTorch source of SPACE's supernet: its pool table, its "
                           "members' slices and a runner")
    o.add_argument("space", metavar="SPACE")
    o.add_argument("-o", "--output", metavar="FILE", help="write it to FILE (default: standard output)")
    o.add_argument("--input", type=shape, metavar="CxHxW", help="override the input size of every member")
    o.add_argument("--param", "-p", action="append", metavar="NAME=VALUE", help="set a network parameter")
    o.add_argument("--sizing", type=_positive, default=64, metavar="N",
                   help="random members that size the shared tensors of a space of over 256 members (default 64)")
    o.add_argument("--members", type=_positive, metavar="K", help="write the first K sizing members (default all)")
    o.add_argument("--seed", type=int, default=0, help="seed of the sizing draws (default 0)")
    o.set_defaults(func=lambda args: cmd_source(args, parse_params(args.param)))
