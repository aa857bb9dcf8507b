"""resolve: lower a parsed network to the IR graph.

Instantiates blocks with their arguments, unrolls repeats, applies per-op
defaults (``with conv(act=relu)``), turns combinators into concat/add nodes,
binds labels and references, and names every node. Shapes are not known yet:
residual shortcuts stay as ``shortcut`` nodes for ``resolve_shortcuts``.

Naming (what the backends turn into module names; docs/language.md "Names" has the whole of it):
- a label names what it labels: ``fc: fc-1000`` is node ``fc``; ``block{i}-{j}:`` is filled in;
- a labelled group ``features: [...]``, a labelled repeat ``layer1: unit(64) x3``, a labelled
  table and every ``seq< ... >`` is a *sequence* scope whose children are numbered from 0
  (``features.0``), as ``nn.Sequential`` numbers them; so is a block instance whose body is one
  ``seq< ... >``;
- any other block instance is a scope (``layer1.0``); inside it, and at the top level,
  unlabelled layers are named by op and a counter (``conv1``, ``bn1``, ``relu1``);
- unlabelled groups, repeats and tables name their steps in the enclosing scope.

>>> from cnndsl.front.syntax import parse
>>> from cnndsl.front.loader import Library
>>> lib = Library.from_module(parse('network t: input 1x8x8  conv3-4 relu fc: fc-10'))
>>> [n.name for n in resolve(lib, "t").nodes()]
['input', 'conv1', 'relu1', 'fc']
"""

from __future__ import annotations

import difflib
import itertools
import math
import re
import weakref
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, fields, is_dataclass
from typing import Any, Self

from cnndsl.errors import CnnArgumentError, CnnDslError, CnnLimitError, CnnNameError, CnnShapeError, Span
from cnndsl.front import syntax as ast
from cnndsl.front.syntax import MAX_NAME_LENGTH, MAX_NUMBER
from cnndsl.ir.graph import FLOW, MOUNT, Fragment, Graph, Scope, instance_note
from cnndsl.ir.ops import COMBINATORS, OPS, Zero, lookup, spellings
from cnndsl.ir.vocabulary import activation_words, layer_words
from cnndsl.passes import memo, template
from cnndsl.passes.memo import clear_memo, memo_stats, set_memo  # noqa: F401  (the switch, re-exported)

MAX_NODES = 100_000
MAX_LOOKUPS = 100_000  # references (@name) followed while building one network, block instances included
#: Work while building one network, in units: a layer built, a sequence lowered, a reference followed, a block
#: parameter bound, a per-op default applied. Real networks take at most a few units a layer.
MAX_WORK = 1_000_000
INIT_SCHEMES = ("kaiming", "xavier")  # `with init(...)`; without one, PyTorch's own defaults
INIT_FC = ("scheme", "default")  # `with init(..., fc=...)`: the fc layers by the scheme too, or left at the default
MAX_BLOCK_DEPTH = 48
#: The flow after ``none`` (a zero tensor, NAS-Bench-201's zero edge): it builds no node. Layers applied to
#: it are dropped, ``add<...>`` leaves it out, and concat, residual, aux or the network output reject it.
#: ``zero(prune=true)`` is the same; a plain ``zero`` builds a node, as NAS-Bench-201 builds its zero edges.
ZERO = "<none>"
MAX_NESTED = 100  # sequences inside sequences: blocks, groups and branches together
MAX_SUGGESTED = 10_000  # names looked through for a "did you mean" hint (difflib takes about 10 us a name)
#: The combinators that build an op of two operands, the current value and their branch's result:
#: ``scale< BODY >`` is ``x * BODY(x)`` (squeeze-and-excitation), ``resize< @point >`` the current value resized
#: to the point's height and width. ``expand`` writes those ops back in these forms.
OPERAND_COMBINATORS = {"scale": "mul", "resize": "resize"}
_OPERAND_EXAMPLES = {"scale": "scale< gap conv1-16 relu conv1-64 sigmoid > multiplies by a gate made from x",
                     "resize": "resize(bilinear)< @input > resizes to the input's height and width"}


class Symbol:
    """A bare word used as a value: a block name passed as an argument, ``same``, ``proj``.

    Immutable and interned, one object a word while any is alive, so it compares and hashes by identity, in C:
    the memo's keys hold words (``act=swish``, a block passed as an argument) and hash them at every lookup.
    """

    __slots__ = ("__weakref__", "name")
    name: str

    def __new__(cls, name: str) -> Self:
        found = _SYMBOLS.get(name)
        if found is None:
            found = object.__new__(cls)
            object.__setattr__(found, "name", name)
            _SYMBOLS[name] = found
        return found

    def __setattr__(self, key: str, value: Any) -> None:
        raise AttributeError(f"cannot assign to field '{key}' of a Symbol")

    def __delattr__(self, key: str) -> None:
        raise AttributeError(f"cannot delete field '{key}' of a Symbol")

    def __reduce__(self):  # a copy or an unpickled word is the interned one
        return Symbol, (self.name,)

    def __repr__(self) -> str:
        return f"Symbol(name={self.name!r})"


_SYMBOLS: weakref.WeakValueDictionary[str, Symbol] = weakref.WeakValueDictionary()


# ----------------------------------------------------------------------------- expressions

#: Where an environment keeps the point a block instance (or the network, or a ``replace``) starts from. Not a
#: name a text can write, so no parameter hides it; ``in.c``, ``in.h`` and ``in.w`` read its shape.
INPUT = "<in>"
INPUT_FIELDS = {"c": (0, "channels"), "h": (1, "height"), "w": (2, "width")}


@dataclass(frozen=True)
class InputPoint:
    """The input of the body being lowered; its shape is inferred when an expression first reads it."""

    node: str
    shape_of: Callable[[str], tuple[int, ...]] = field(compare=False, repr=False)


def evaluate(expr: ast.Expr, env: dict[str, Any], choose: Callable[[ast.Choice], int] | None = None) -> Any:
    """Evaluate an expression; unbound words become :class:`Symbol` (or booleans).

    ``and``, ``or`` and ``a if c else b`` evaluate only the operands they need, as Python does.

    >>> from cnndsl.front.syntax import parse
    >>> value = parse("network t(c=24): input 3x8x8 conv3-{max(8, c // 4) if c > 16 else c}").networks[0]
    >>> evaluate(value.body.steps[0].term.channels, {"c": 24})
    8
    """
    t = type(expr)  # (compared by identity: isinstance a kind would be most of the work of a small expression)
    if t not in _EXPRESSIONS:  # a subclass (a float range is a choice)
        t = next((k for k in _EXPRESSIONS if isinstance(expr, k)), t)
    if t is ast.Num:
        return expr.value
    if t is ast.Str:
        return expr.value
    if t is ast.Var:
        if expr.name in env:
            return env[expr.name]
        if expr.name in ("true", "True"):
            return True
        if expr.name in ("false", "False"):
            return False
        return expr.__dict__.get("_cnndsl_symbol") or _kept(expr, "_cnndsl_symbol", lambda: Symbol(expr.name))
    if t is ast.Tuple_:
        return tuple([evaluate(e, env, choose) for e in expr.items])
    if t is ast.Choice:
        index = choose(expr) if choose else 0  # an index, or a float range's value
        return evaluate(expr.option(index), env, choose)
    if t is ast.Neg:
        v = evaluate(expr.operand, env, choose)
        _need_number(v, expr.operand.span)
        return -v
    if t is ast.Not:
        return not _need_bool(evaluate(expr.operand, env, choose), expr.operand.span, "not")
    if t is ast.IfElse:
        cond = _need_bool(evaluate(expr.cond, env, choose), expr.cond.span, "if")
        return evaluate(expr.then if cond else expr.other, env, choose)
    if t is ast.FuncCall:
        return _call_function(expr, env, choose)
    if t is ast.Field:
        return _input_field(expr, env)
    if t is ast.BinOp:
        if expr.op in ast.BOOLEAN:  # `false and x` is false and `true or x` true, without evaluating x
            a = _need_bool(evaluate(expr.left, env, choose), expr.left.span, expr.op)
            if a is (expr.op == "or"):
                return a
            return _need_bool(evaluate(expr.right, env, choose), expr.right.span, expr.op)
        a, b = evaluate(expr.left, env, choose), evaluate(expr.right, env, choose)
        if expr.op in ("==", "!="):
            return _equal(a, b) is (expr.op == "==")
        if type(a) not in _NUMBERS:  # (a bool is no number)
            _need_number(a, expr.left.span)
        if type(b) not in _NUMBERS:
            _need_number(b, expr.right.span)
        if expr.op in ast.COMPARISONS:
            return {"<": a < b, "<=": a <= b, ">": a > b, ">=": a >= b}[expr.op]
        if expr.op in ("/", "//", "%") and b == 0:
            raise CnnArgumentError("division by zero", expr.span, "the divisor here evaluates to 0")
        if expr.op == "+":
            r = a + b
        elif expr.op == "-":
            r = a - b
        elif expr.op == "*":
            r = a * b
        elif expr.op == "//":
            r = a // b
        elif expr.op == "%":
            r = a % b
        else:
            r = a // b if isinstance(a, int) and isinstance(b, int) and a % b == 0 else a / b
        if type(r) is float or -MAX_NUMBER <= r <= MAX_NUMBER:  # (what _bounded lets through)
            return r
        return _bounded(r, expr.span)
    raise AssertionError(expr)


#: The kinds of expression, by their exact types (what :func:`evaluate` compares a node's type with).
_EXPRESSIONS = frozenset({ast.Num, ast.Str, ast.Var, ast.Tuple_, ast.Choice, ast.Neg, ast.Not, ast.IfElse,
                          ast.FuncCall, ast.Field, ast.BinOp})
_NUMBERS = frozenset({int, float})


def _bounded(r: Any, span: Span | None) -> Any:
    """A computed number: an integer must stay below ``MAX_NUMBER``, as a literal must."""
    if isinstance(r, int) and not isinstance(r, bool) and abs(r) > MAX_NUMBER:
        raise CnnLimitError(f"number too large: {r}", span, f"numbers in a network stay below {MAX_NUMBER:,}")
    return r


def _shown(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    return v.name if isinstance(v, Symbol) else repr(v)


def _need_number(v: Any, span: Span | None) -> None:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        hint = None
        if isinstance(v, Symbol):
            hint = ("the input's shape is in.c, in.h, in.w" if v.name == "in"
                    else f"'{v.name}' is not a parameter in scope")
        raise CnnArgumentError(f"expected a number, got {_shown(v)}", span, hint)


def _need_bool(v: Any, span: Span | None, what: str) -> bool:
    if not isinstance(v, bool):
        place = "a condition" if what == "if" else f"'{what}'"
        raise CnnArgumentError(f"{place} takes true or false, got {_shown(v)}", span,
                               "compare it to get true or false, e.g. s == 1 or c > 16")
    return v


def _equal(a: Any, b: Any) -> bool:
    """``a == b`` in an expression: numbers by value (``2 == 2.0``), a boolean equal only to a boolean."""
    if isinstance(a, bool) or isinstance(b, bool):
        return type(a) is type(b) and a == b
    return a == b


def _input_field(expr: ast.Field, env: dict[str, Any]) -> int:
    if expr.base != "in":
        raise CnnNameError(f"unknown name '{expr.base}.{expr.name}'", expr.span,
                           "a dotted name in an expression is a field of the input: in.c, in.h or in.w")
    if expr.name not in INPUT_FIELDS:
        raise CnnNameError(f"the input has no field '{expr.name}'", expr.span,
                           _suggest(expr.name, list(INPUT_FIELDS)) or
                           "in.c is the input's channels, in.h its height, in.w its width")
    point = env.get(INPUT)
    if point is None:
        raise CnnNameError(f"in.{expr.name} is not known here", expr.span,
                           "in.c, in.h and in.w read the input of a block or network body (and a block's parameter "
                           "defaults); a network's parameters come before its input")
    shape = point.shape_of(point.node)
    index, what = INPUT_FIELDS[expr.name]
    if index >= len(shape):
        raise CnnShapeError(f"the input is a vector of {shape[0]} features: it has no {what}", expr.span,
                            "in.c is a vector's length; in.h and in.w are only known for a feature map")
    return shape[index]


# -- the functions an expression can call


def _number(v: Any, span: Span | None) -> int | float:
    """An argument that must be a finite number below ``MAX_NUMBER`` (what rounding can make an integer of)."""
    _need_number(v, span)
    if isinstance(v, float) and not (math.isfinite(v) and abs(v) <= MAX_NUMBER):
        raise CnnLimitError(f"number too large: {v}", span, f"numbers in a network stay below {MAX_NUMBER:,}")
    return v


def _positive_int(v: Any, span: Span | None, what: str) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or v < 1:
        raise CnnArgumentError(f"{what} must be a positive integer, got {_shown(v)}", span,
                               "make_divisible(v, divisor=8, min_value=none) rounds v to a multiple of divisor")
    return v


def _make_divisible(v: Any, divisor: Any, min_value: Any, spans: list[Span | None]) -> int:
    """torchvision's ``_make_divisible``: ``v`` to the nearest multiple of ``divisor`` (halves up), at least
    ``min_value`` (``divisor`` when none), and one ``divisor`` more where rounding lost over 10% of ``v``."""
    v = _number(v, spans[0])
    divisor = _positive_int(divisor, spans[1], "make_divisible's divisor")
    if isinstance(min_value, Symbol) and min_value.name == "none":
        min_value = divisor
    min_value = _positive_int(min_value, spans[2], "make_divisible's min_value")
    rounded = max(min_value, int(v + divisor / 2) // divisor * divisor)
    return rounded + divisor if rounded < 0.9 * v else rounded


@dataclass(frozen=True)
class Function:
    """A function an expression can call: its parameters (the first ``required`` needed, the others with
    ``defaults``), or any number of at least ``required`` numbers when ``variadic``."""

    signature: str  # as docs and hints show it
    params: tuple[str, ...]
    required: int
    compute: Callable[..., Any]  # (argument values..., their spans) -> value
    defaults: tuple[Any, ...] = ()
    variadic: bool = False


def _extreme(pick):
    def compute(*values_and_spans):
        *values, spans = values_and_spans
        for v, span in zip(values, spans):
            _need_number(v, span)
        return pick(values)

    return compute


def _rounding(to_int):
    def compute(x, spans):
        return to_int(_number(x, spans[0]))

    return compute


#: The functions of expressions, by name. ``round`` is Python's (halves to even: ``round(2.5)`` is 2), as
#: torchvision's ``int(round(...))`` is; ``make_divisible`` is torchvision's ``_make_divisible``.
FUNCTIONS: dict[str, Function] = {
    "min": Function("min(a, b, ...)", ("a", "b"), 2, _extreme(min), variadic=True),
    "max": Function("max(a, b, ...)", ("a", "b"), 2, _extreme(max), variadic=True),
    "round": Function("round(x)", ("x",), 1, _rounding(round)),
    "ceil": Function("ceil(x)", ("x",), 1, _rounding(math.ceil)),
    "floor": Function("floor(x)", ("x",), 1, _rounding(math.floor)),
    "make_divisible": Function("make_divisible(v, divisor=8, min_value=none)", ("v", "divisor", "min_value"), 1,
                               _make_divisible, (8, Symbol("none"))),
}


def _call_function(call: ast.FuncCall, env: dict[str, Any], choose) -> Any:
    fn = FUNCTIONS.get(call.name)
    if fn is None:
        raise CnnNameError(f"unknown function '{call.name}'", call.name_span,
                           _suggest(call.name, FUNCTIONS) or f"the functions are {', '.join(FUNCTIONS)}")
    given: dict[str, tuple[Any, Span]] = {}
    values, spans = [], []
    for a in call.args:  # evaluated in the order written
        if a.name is None:
            if given:
                raise CnnArgumentError(f"a positional argument after a keyword argument in {call.name}(...)", a.span,
                                       fn.signature)
            if not fn.variadic and len(values) == len(fn.params):
                n = sum(1 for b in call.args if b.name is None)
                raise CnnArgumentError(f"{call.name} takes {_count(len(fn.params), fn.required)}, got {n}",
                                       call.span, fn.signature)
            values.append(evaluate(a.value, env, choose))
            spans.append(a.span)
            continue
        if fn.variadic or a.name not in fn.params:
            raise CnnArgumentError(f"{call.name} has no argument '{a.name}'", a.span,
                                   (None if fn.variadic else _suggest(a.name, fn.params)) or fn.signature)
        if a.name in given or a.name in fn.params[:len(values)]:
            raise CnnArgumentError(f"argument '{a.name}' of {call.name} given twice", a.span, fn.signature)
        given[a.name] = (evaluate(a.value, env, choose), a.span)
    if fn.variadic:
        if len(values) < fn.required:
            raise CnnArgumentError(f"{call.name} takes at least {fn.required} arguments, got {len(values)}",
                                   call.span, fn.signature)
        return _bounded(fn.compute(*values, spans), call.span)
    for i, p in enumerate(fn.params[len(values):], len(values)):
        if p in given:
            v, span = given[p]
        elif i >= fn.required:
            v, span = fn.defaults[i - fn.required], call.span
        else:
            raise CnnArgumentError(f"{call.name} needs the argument '{p}'", call.span, fn.signature)
        values.append(v)
        spans.append(span)
    return _bounded(fn.compute(*values, spans), call.span)


def _count(most: int, least: int) -> str:
    n = f"{least} to {most}" if least < most else str(most)
    return f"{n} argument{'s' if most != 1 else ''}"


def plain(v: Any) -> Any:
    """A value as an op argument: symbols become strings."""
    t = type(v)
    if t is int or t is str or t is float or t is bool:  # (most values: no call to tell)
        return v
    if isinstance(v, Symbol):
        return v.name
    if isinstance(v, tuple):
        return tuple(plain(x) for x in v)
    return v


# ----------------------------------------------------------------------------- scopes and frames


class NameScope:
    """Hands out node names inside one scope."""

    def __init__(self, prefix: str, sequential: bool):
        self.prefix = prefix
        self.sequential = sequential
        self.counters: dict[str, int] = {}  # (a plain dict: a Counter costs more to make than a scope uses)
        self.position = 0

    def full(self, name: str) -> str:
        return f"{self.prefix}.{name}" if self.prefix else name

    def child(self, base: str, label: str | None) -> str:
        if label is not None:
            name = label
        elif self.sequential:
            name = str(self.position)
        else:
            n = self.counters[base] = self.counters.get(base, 0) + 1
            name = f"{base}{n}"
        if self.sequential:
            self.position += 1
        return self.full(name)


@dataclass
class Frame:
    """What is in scope while lowering one network or block body."""

    env: dict[str, Any]
    defaults: dict[str, dict[str, Any]]
    root: str  # name prefix of the network or block instance: references resolve below it
    blocks_active: tuple[str, ...] = ()
    labels: dict[str, str] = field(default_factory=dict)  # full name -> node
    body: ast.Seq | None = None  # the body being lowered (to tell a forward reference from a typo)
    columns: dict[str, Span] = field(default_factory=dict)  # columns of the tables before, out of scope now
    #: Block instances this frame bound, by (id of the call, input shape), for the copies of a repeat where a choice
    #: is in the binding (the others are the library's: :meth:`Resolver._prepared`). Only with the memo on.
    prepared: dict[tuple, tuple] = field(default_factory=dict)
    defaults_key: tuple | None = None  # ``defaults`` as a hashable value (made when first needed)
    _sizing: dict[str, Any] | None = field(default=None, repr=False)

    def copy(self, **changes: Any) -> Frame:
        """This frame with ``changes`` (:func:`_replaced`): builds make a frame a block instance and a table row."""
        return _replaced(self, **changes)

    def sizing_env(self) -> dict[str, Any]:
        """``env`` for the :class:`Sizer`, without the input point: each block instance starts from another
        point, which would defeat the sizer's memo, so a count read from ``in.c`` is not known to it."""
        if self._sizing is None:
            self._sizing = {k: v for k, v in self.env.items() if k != INPUT} if INPUT in self.env else self.env
        return self._sizing


#: A part of a dotted name between dots and hyphens, as the grammar reads it back (``x3`` is a repeat).
_NAME_PART = re.compile(r"(?!x[0-9])[A-Za-z_][A-Za-z0-9_]*|[0-9]+")
#: The keywords that start a declaration, and so end the steps before them: no name can start with one.
_DECLARATIONS = ("block", "network", "use")
_NAME_START = re.compile(r"[.-]")  # what ends a name's first part (split with maxsplit=1)
_SHORTHAND = re.compile(r"^(?P<base>[A-Za-z_][A-Za-z_-]*?)(?P<k>[0-9]+(?:x[0-9]+)?)$")


class Resolver:
    def __init__(self, library, choose: Callable[[ast.Choice], int] | None = None, chain: tuple[str, ...] = ()):
        self.lib = library
        self.choose = choose
        self.g: Graph | None = None
        self.zeroed = False  # a `none` was taken: layers whose only use was a zero are pruned at the end
        self.claimed: dict[str, tuple[Span | None, int]] = {}  # full name given by a label -> where, and when
        self.generation = 0  # copies built so far (of repeats and tables): one label claims its name in one copy
        self.depth = 0  # sequences being lowered, one inside the other
        self.lookups = 0  # references followed
        self.work = 0  # units of MAX_WORK spent
        self.chain = chain  # derived networks being built, outermost first (to stop `a = b`, `b = a`)
        self.shapes: dict[str, tuple[int, ...]] = {}  # nodes' shapes inferred so far (for in.c and residuals)
        self.input_shape: tuple[int, ...] | None = None  # the first input's shape, given instead of the declared one
        self.limits = None  # the size limits the passes check (a SizeLimits), part of what a fragment depends on
        self.store = memo.store(library) if memo.enabled() else None  # shared block instances (cnndsl.passes.memo)
        self.building = False  # whether this resolver builds a fragment (see _fragment)
        # While a fragment is built: its choice<...> terms resolved so far (template.Hole), and the decisions asked.
        self.holes: list[template.Hole] | None = None
        self.asked: list | None = None
        # The fragments this build found under keys whose lookups ask choices (the copies of a repeated cell): this
        # resolver's own, as each fragment build records the choices its lookups ask.
        self.found: dict[tuple, Fragment] = {}
        # While a network's top level is built for its skeleton (template.Skeleton): the mounts made, by node, with
        # their memo keys; lookups under way (a decision asked outside one makes the build no skeleton's).
        self.mounts: dict[str, tuple] | None = None
        self.looking = 0
        self.asked_outside = False
        # Lower bounds on what a step will build, before building it: one sizer for the library's builds when
        # they share instances (its memo of sizes is then shared too, and bounded), else one for this build.
        self.sizer = (Sizer(library.blocks) if self.store is None else
                      self.store.shared("sizer", Sizer, library.blocks))

    # -- entry
    def network(self, name: str, overrides: dict[str, Any], span: Span | None = None) -> Graph:
        decl = self.lib.network(name, span)
        if name in self.chain:
            raise CnnNameError(f"network '{name}' is derived from itself ({' = '.join(self.chain + (name,))})",
                               span or decl.span, "derive a network from another one, not from itself")
        if len(self.chain) >= MAX_BLOCK_DEPTH:
            raise CnnLimitError(f"networks derived from one another more than {MAX_BLOCK_DEPTH} deep "
                                f"(through '{name}')", span or decl.span, "derive from the base network directly")
        if isinstance(decl, ast.Derived):
            return self._derived(decl, overrides)
        key = self._skeleton_key(name, overrides) if self.store is not None and not self.chain else None
        if key is None:
            return self._network(decl, overrides)
        skeletons = self.store.shared("skeletons", dict)
        known = skeletons.get(key)
        if known is not None and known.current():
            g = self._replayed(known)
            if g is not None:
                memo.count("replayed")
                return g
        choose = self.choose
        if choose is not None:  # a decision asked outside a fragment's lookup may change the top level itself
            def asked(choice: ast.Choice) -> int | float:
                if not self.looking:
                    self.asked_outside = True
                return choose(choice)
            self.choose = asked
        self.mounts = {}
        try:
            g = self._network(decl, overrides)
        finally:
            self.choose = choose
        if not self.asked_outside and not self.zeroed:
            made = template.Skeleton.of(g, self.mounts, self.work, self.lookups)
            if made is not None:
                if len(skeletons) > MAX_BINDINGS:
                    skeletons.clear()
                skeletons[key] = made
        return g

    def _skeleton_key(self, name: str, overrides: dict[str, Any]) -> tuple | None:
        """What a network's top level depends on, but the decisions its fragments ask (None: a value is not
        hashable)."""
        given = values_key(overrides)
        if given is None:
            return None
        return (name, given, None if self.input_shape is None else tuple(self.input_shape), self._limits_key())

    def _replayed(self, skeleton: template.Skeleton) -> Graph | None:
        """The network's top level made from a skeleton an earlier build left: its layers again, and for each
        instance whose fragment depends on decisions, the fragment this build's decisions find (or fill in).
        None where a build must decide: a fragment not known yet, of another shape, or a limit in reach."""
        g = self.g = Graph(skeleton.name, dict(skeleton.params))
        g.init, g.zero_init_residual, g.init_fc = skeleton.init
        g.inputs = list(skeleton.inputs)
        renamed: dict[str, str] = {}
        work, lookups = skeleton.work, skeleton.lookups
        for entry in skeleton.entries:
            srcs = [renamed.get(src, src) for src in entry.srcs]
            if entry.frag is None:  # a layer
                node = g.add(entry.name, entry.op, dict(entry.args), entry.span, srcs)
                if entry.meta:
                    node.meta = dict(entry.meta)
                continue
            frag = entry.frag
            if frag.decisions:
                frag = self._known(entry.key)
                if frag is None or frag.shape != entry.frag.shape:
                    return None
                work += frag.work - entry.frag.work
                lookups += frag.lookups - entry.frag.lookups
                if not self._mountable(entry.prefix, frag) or work > MAX_WORK or lookups > MAX_LOOKUPS:
                    return None
            out = g.mount(entry.prefix, frag, srcs[0], entry.span)
            if out != entry.name:
                renamed[entry.name] = out
        if len(g) > MAX_NODES:
            return None
        g.scopes = dict(skeleton.scopes)
        g.output = renamed.get(skeleton.output, skeleton.output)
        g.aux_outputs = [renamed.get(a, a) for a in skeleton.aux_outputs]
        return g

    def _network(self, decl: ast.Network, overrides: dict[str, Any]) -> Graph:
        """A network declared with a body (not derived), built."""
        env = self._bind(decl.name, decl.params, (), overrides, {}, decl.span, "network")
        g = self.g = Graph(decl.name, {k: plain(v) for k, v in env.items()})
        for d in decl.defaults:  # `with init(kaiming)`: the weight initialisation of the generated code
            if d.op == "init":
                scheme = [plain(evaluate(a.value, env, self.choose)) for a in d.args if a.name is None]
                options = {a.name: plain(evaluate(a.value, env, self.choose)) for a in d.args if a.name}
                if (len(scheme) != 1 or scheme[0] not in INIT_SCHEMES or set(options) - {"zero_init_residual", "fc"}
                        or options.get("fc", "scheme") not in INIT_FC):
                    raise CnnArgumentError("init takes one scheme (" + ", ".join(INIT_SCHEMES) + ") and optionally "
                                           "zero_init_residual=true and fc=" + "|".join(INIT_FC), d.span,
                                           "with init(kaiming), or with init(kaiming, fc=default) to leave the fc "
                                           "layers at the framework's default, as torchvision's ResNet does")
                g.init = scheme[0]
                g.zero_init_residual = options.get("zero_init_residual") is True
                g.init_fc = options.get("fc", "scheme") == "scheme"
        defaults = tuple(d for d in decl.defaults if d.op != "init")
        labels: dict[str, str] = {}
        flow = None
        for i, inp in enumerate(decl.inputs):
            shape = tuple(self._input_size(d, env, inp.span) for d in inp.shape)
            if any(d < 1 for d in shape) or len(shape) not in (1, 3):
                raise CnnArgumentError(f"input shape {'x'.join(map(str, shape))} is not C x H x W with "
                                       "positive sizes", inp.span,
                                       "write input CxHxW (input 3x224x224), or input N for a flat vector")
            nm = inp.name or ("input" if i == 0 else f"input{i + 1}")
            if i == 0 and self.input_shape is not None:
                shape = tuple(self.input_shape)
            g.add(nm, "input", {"shape": shape}, inp.span, [])
            g.inputs.append(nm)
            labels[nm] = nm
            flow = flow or nm
        env[INPUT] = InputPoint(flow, self._shape)  # after g.params: in.c is no parameter of the network
        frame = Frame(env, self._defaults(defaults, {}, env), "", labels=labels, body=decl.body)
        scope = NameScope("", sequential=False)
        g.output = self._seq(decl.body, flow, scope, frame, tail=True, then_act=False)
        if g.output == ZERO:
            raise CnnShapeError("the network's output is always zero: every path to it goes through `none`",
                                decl.span, "a `none` branch only makes sense inside add<...> beside another")
        if self.zeroed:
            _prune(g)
        return g

    def _input_size(self, d: int | ast.Expr, env: dict[str, Any], span: Span) -> int:
        """One size of an input declaration: a number, or a ``{...}`` over the network's parameters."""
        if isinstance(d, int):
            return d
        v = plain(evaluate(d, env, self.choose))
        if isinstance(v, bool) or not isinstance(v, int) or not 0 < v < MAX_NUMBER:
            raise CnnArgumentError(f"an input size must be a positive integer, got {v!r}", span,
                                   "write input 3x{res}x{res} with res an integer parameter of the network")
        return v

    def _derived(self, decl: ast.Derived, overrides: dict[str, Any]) -> Graph:
        env = self._bind(decl.name, decl.params, (), overrides, {}, decl.span, "network")
        base = self.lib.network(decl.base, decl.span)
        base_over: dict[str, Any] = {}
        given = self._args(decl.args, env)
        pos = [v for k, v in given if k is None]
        params = base.params
        names = {p.name for p in params}
        if len(pos) > len(params):
            raise CnnArgumentError(f"'{decl.base}' takes {len(params)} parameters, got {len(pos)}", decl.span)
        for p, v in zip(params, pos):
            base_over[p.name] = v
        for k, v in given:
            if k is not None:
                if k in base_over:
                    raise CnnArgumentError(f"parameter '{k}' of '{decl.base}' given twice", decl.span)
                if k not in names:
                    raise CnnArgumentError(f"network '{decl.base}' has no parameter '{k}'", decl.span,
                                           _suggest(k, [p.name for p in params]))
                base_over[k] = v
        sub = Resolver(self.lib, self.choose, self.chain + (decl.name,))
        # freeze and replace name layers anywhere, as resolve makes them (shortcuts not decided yet): a base they
        # change is built flat, without shared instances (whose shortcuts are decided)
        sub.input_shape, sub.limits = self.input_shape, self.limits
        sub.store = None if decl.modifiers else self.store
        g = sub.network(decl.base, base_over, decl.span)
        g.name = decl.name
        g.params = {**g.params, **{k: plain(v) for k, v in env.items()}}
        self.g = g
        store, self.store = self.store, None  # what replace builds is flat too, so freeze finds it
        try:
            for mod in decl.modifiers:
                if isinstance(mod, ast.Freeze):
                    _freeze(g, mod)
                else:
                    self._replace(g, mod, env)
        finally:
            self.store = store
        return g

    def _replace(self, g: Graph, mod: ast.Replace, env: dict[str, Any]) -> None:
        if mod.path not in g:
            raise CnnNameError(f"no layer named '{mod.path}' to replace", mod.span,
                               _suggest(mod.path, [n.name for n in g.nodes()]))
        srcs = g.inputs_of(mod.path)
        if len(srcs) != 1:
            raise CnnArgumentError(f"'{mod.path}' has {len(srcs)} inputs; only a single-input layer can be replaced",
                                   mod.span)
        consumers = g.consumers(mod.path)
        was_output = mod.path == g.output
        aux_at = g.aux_outputs.index(mod.path) if mod.path in g.aux_outputs else None
        g.remove(mod.path)
        self.shapes.clear()  # the layers after the one replaced may change shape
        parent, _, last = mod.path.rpartition(".")
        single = len(mod.seq.steps) == 1 and mod.seq.steps[0].label is None and mod.seq.steps[0].repeat is None
        frame = Frame({**env, INPUT: InputPoint(srcs[0], self._shape)}, {}, "")
        if single:
            scope = NameScope(parent, sequential=False)
            step = mod.seq.steps[0]
            step = ast.Step(last, step.term, None, step.span, step.span)
            out = self._step(step, srcs[0], scope, frame, tail=was_output, then_act=False)
        else:
            scope = NameScope(mod.path, sequential=True)
            out = self._seq(mod.seq, srcs[0], scope, frame, tail=was_output, then_act=False)
        for dst, port in consumers:
            g.connect(out, dst, port)
        if was_output:
            g.output = out
        if aux_at is not None:
            g.aux_outputs[aux_at] = out

    def _spend(self, units: int, span: Span | None) -> None:
        """Count work towards ``MAX_WORK``: the layer limit alone does not bound what builds few layers slowly."""
        self.work += units
        if self.work > MAX_WORK:
            raise CnnLimitError(f"building the network takes more than {MAX_WORK:,} steps (layers, sequences, "
                                "references, block parameters and defaults)", span,
                                "a block with that many parameters or defaults used that many times cannot be "
                                "compiled; check the repeat counts")

    def _shape(self, name: str) -> tuple[int, ...]:
        """The output shape of a layer already built, inferred on demand with those of its ancestors not yet known.

        ``in.c`` and ``residual(shortcut=none)`` need shapes while the graph is built; each layer's shape is
        worked out once (``infer_shapes`` runs over the finished graph later, with the size limits and warnings).
        """
        shapes, todo = self.shapes, [name]
        while todo:
            node = todo[-1]
            if node in shapes:
                todo.pop()
                continue
            srcs = self.g.inputs_of(node)
            missing = [src for src in srcs if src not in shapes]
            if missing:
                todo.extend(missing)
                continue
            todo.pop()
            n = self.g.node(node)
            shapes[node] = (tuple(n.args["shape"]) if n.op == "input" else n.shape if n.op == MOUNT else
                            OPS[n.op].infer_many([shapes[src] for src in srcs], n.args, n.span))
        return shapes[name]

    # -- parameters and arguments
    def _args(self, args: tuple[ast.Arg, ...], env) -> list[tuple[str | None, Any]]:
        return [(a.name, evaluate(a.value, env, self.choose)) for a in args]

    def _bind(self, what: str, params: tuple[ast.Param, ...], positional: tuple, keywords: dict, caller_env,
              span, kind: str, start: InputPoint | None = None) -> dict[str, Any]:
        """The parameters' values, defaults included; with ``start`` (a block instance's input), also ``INPUT``,
        which the defaults may read (``block b(c, e=in.c)``)."""
        self._spend(len(params) + len(positional) + len(keywords), span)
        names, declared = [p.name for p in params], set()
        for p in params:
            if p.name in declared:
                raise CnnNameError(f"parameter '{p.name}' of '{what}' is declared twice", p.span,
                                   "give each parameter its own name")
            declared.add(p.name)
        if len(positional) > len(params):
            raise CnnArgumentError(f"{kind} '{what}' takes {len(params)} argument{'s' if len(params) != 1 else ''}, "
                                   f"got {len(positional)}", span,
                                   f"'{what}({', '.join(names)})'")
        env: dict[str, Any] = {}
        for p, v in zip(params, positional):
            env[p.name] = v
        if start is not None:
            env[INPUT] = start
        for k, v in keywords.items():
            if k not in declared:
                raise CnnArgumentError(f"{kind} '{what}' has no parameter '{k}'", span,
                                       _suggest(k, names) or f"'{what}({', '.join(names)})'")
            if k in env:
                raise CnnArgumentError(f"parameter '{k}' of '{what}' given twice", span)
            env[k] = v
        for p in params:
            if p.name not in env:
                if p.default is None:
                    raise CnnArgumentError(f"{kind} '{what}' needs the argument '{p.name}'", span,
                                           f"'{what}({', '.join(names)})'")
                env[p.name] = evaluate(p.default, env, self.choose)
        return env

    def _defaults(self, decls: tuple[ast.OpDefault, ...], inherited: dict, env) -> dict[str, dict[str, Any]]:
        out = {k: dict(v) for k, v in inherited.items()}
        if decls:
            self._spend(sum(1 + len(d.args) for d in decls), decls[0].span)
        for d in decls:
            op = lookup(d.op)
            if op is None:
                raise CnnNameError(f"unknown layer '{d.op}' in defaults", d.span, _suggest(d.op, spellings()))
            vals = {}
            for a in d.args:
                if a.name is None:
                    raise CnnArgumentError("defaults are keyword arguments, e.g. conv(bias=false)", a.span)
                known = {f for f, _ in op.fields} | ({"act"} if op.takes_act else set())
                if a.name not in known:
                    raise CnnArgumentError(f"'{op.name}' has no argument '{a.name}'", a.span,
                                           _suggest(a.name, sorted(known)))
                vals[a.name] = plain(evaluate(a.value, env, self.choose))
                act = vals[a.name] if a.name == "act" else None
                if act not in (None, "none", False) and not (isinstance(act, str) and lookup(act) and
                                                             lookup(act).activation):
                    raise CnnArgumentError(f"'{act}' is not an activation", a.span,
                                           f"act= takes {', '.join(activation_words())} or none")
            out.setdefault(op.name, {}).update(vals)
        return out

    # -- sequences
    def _nest(self, span: Span | None) -> None:
        """One more sequence (or table) inside the ones being lowered, up to ``MAX_NESTED``."""
        if self.depth >= MAX_NESTED:
            raise CnnLimitError(f"the network is nested more than {MAX_NESTED} levels deep "
                                "(blocks, groups, branches and tables together)", span,
                                "a block that instantiates itself, or brackets nested too deeply?")
        self.depth += 1

    def _seq(self, seq: ast.Seq, flow: str | None, scope: NameScope, frame: Frame, tail: bool, then_act: bool) -> str:
        self._nest(seq.span)
        self._spend(1, seq.span)
        steps = seq.steps
        self._check_size(seq, frame)
        following = self._following(seq, frame)
        for step, nxt in zip(steps, following):
            last = nxt is None
            nxt_act = then_act if last else self._is_activation(nxt, frame)
            flow = self._step(step, flow, scope, frame, tail and last, nxt_act)
        self.depth -= 1
        return flow

    @staticmethod
    def _following(seq: ast.Seq, frame: Frame) -> list[ast.Step | None]:
        """For each step, the next step that builds something (None for the last): a step repeated ``x0`` is
        skipped, so a layer before an absent activation keeps its default one, and one before absent steps
        only is the sequence's last. A count not known before building (a choice) counts as present.

        Where every count is written as a number (or absent) the answer is a fact of the text, kept on the
        sequence (:func:`_kept`)."""
        found = seq.__dict__.get("_cnndsl_following")  # (a sequence has a step: the list is never empty)
        if found:
            return found
        out: list[ast.Step | None] = []
        nxt = None
        for step in reversed(seq.steps):
            out.append(nxt)
            count = step.repeat.value if isinstance(step.repeat, ast.Num) else \
                known_value(step.repeat, frame.env) if step.repeat is not None else 1
            if not _is_zero(count):
                nxt = step
        out.reverse()
        if all(step.repeat is None or isinstance(step.repeat, ast.Num) for step in seq.steps):
            return _kept(seq, "_cnndsl_following", lambda: out)
        return out

    def _check_size(self, seq: ast.Seq, frame: Frame) -> None:
        """Refuse, before building any of it, a sequence of steps that adds up to too many layers.

        A repeat, a group or a block instance too large on its own is left to the checks inside it,
        which say why. The sequence's total is the sizer's (one lookup for a sequence sized before); the
        steps are sized one by one only when it is over the budget, to say which step crosses it.
        """
        budget = MAX_NODES - len(self.g)
        env = frame.sizing_env()
        if self.sizer.total(seq, env, self.depth) <= budget:
            return
        steps = seq.steps
        sizes = [self.sizer.step(step, env, self.depth) for step in steps]
        if sum(sizes) <= budget or any(size > budget and (step.repeat is not None
                                                           or isinstance(step.term, (ast.Group, ast.Table))
                                                           or (isinstance(step.term, ast.Call) and
                                                               step.term.name in self.lib.blocks))
                                       for step, size in zip(steps, sizes)):
            return
        total = len(self.g)
        for step, size in zip(steps, sizes):
            total += size
            if total > MAX_NODES:
                raise CnnLimitError(f"the network would have at least {total:,} layers by here "
                                    f"(the limit is {MAX_NODES:,})", step.span,
                                    "a network of that size cannot be compiled; check the repeat counts")

    def _claim(self, full: str, span: Span | None) -> None:
        """A label names one thing: using the same full name twice is a mistake, also when one label makes it
        twice (in two copies of a repeat, two rows of a table). ``choice<...>`` claims its label twice, at once."""
        start = _NAME_START.split(full, maxsplit=1)[0] if full.startswith(_DECLARATIONS) else ""
        if start in _DECLARATIONS:
            raise CnnNameError(f"the name '{full}' starts with the keyword '{start}'", span,
                               f"'{start}' starts a declaration, so `cnndsl expand` could not write this name back; "
                               "choose another label, or put it inside a labelled scope")
        first, generation = self.claimed.setdefault(full, (span, self.generation))
        if first is not span or generation != self.generation or full in self.g:
            if self.g.mount_of(full) is not None:
                self.g.flatten()
            where = first if first is not span or full not in self.g else self.g.node(full).span
            raise CnnNameError(f"duplicate name '{full}'", span, f"'{full}' is already defined at {where}" +
                               (" (by this label, for another copy: give the label a {...} part, or leave it out)"
                                if first is span else ""))

    def _is_activation(self, step: ast.Step, frame: Frame) -> bool:
        t = step.term
        if not isinstance(t, ast.Call) or t.name in self.lib.blocks:
            return False
        op = lookup(t.name)
        return bool(op and op.activation)

    def _step(self, step: ast.Step, flow, scope: NameScope, frame: Frame, tail: bool, then_act: bool) -> str:
        if flow is None and not isinstance(step.term, ast.Ref):
            raise CnnDslError("this network has no input to start from", step.span)
        label = self._name(step.label, frame)
        if flow == ZERO and not _decides(step.term):
            if label is not None:  # layers on a zero are dropped; a reference to them is a zero too
                frame.labels[scope.full(label)] = ZERO
            return ZERO
        if step.repeat is None:
            return self._term(step.term, label, flow, scope, frame, tail, then_act, step)
        n = evaluate(step.repeat, frame.env, self.choose)
        if not isinstance(n, int) or n < 0:
            raise CnnArgumentError(f"a repeat count must be a whole number, 0 or more, got {_shown(n)}",
                                   step.repeat.span, "x1 is a single copy; x0 leaves the step out, and a condition "
                                   "x{t != 1} builds the step where it is true")
        n = int(n)  # x{true} is once, x{false} is absent: an optional step
        if n == 0:  # the step is absent: it builds nothing and takes no number; its label names the point here
            if isinstance(step.term, ast.Ref):
                raise CnnArgumentError("a reference cannot be repeated", step.span)
            if label is not None:
                name = scope.full(label)
                self._claim(name, step.label_span or step.span)
                frame.labels[name] = flow
            return flow
        if n > MAX_NODES:
            raise CnnLimitError(f"repeat count {n} would build more than {MAX_NODES:,} layers", step.repeat.span,
                                "a network of that size cannot be compiled; check the count")
        at_least = len(self.g) + self.sizer.term(step.term, frame.sizing_env(), self.depth) * n
        if at_least > MAX_NODES:
            raise CnnLimitError(f"repeating this {n} times would build at least {at_least:,} layers "
                                f"(the limit is {MAX_NODES:,})", step.span,
                                "a network of that size cannot be compiled; check the count")
        if label is not None:
            name = scope.child("seq", label)
            self._claim(name, step.label_span or step.span)
            self.g.scopes[name] = Scope(name, "sequence", span=step.span)
        else:
            name = None
        if isinstance(step.term, ast.Ref):
            raise CnnArgumentError("a reference cannot be repeated", step.span)
        if name is None:
            return self._copies(step, n, flow, scope, frame, tail, then_act)

        def body(r: Resolver) -> str:
            fresh = frame if r is self else frame.copy(labels={}, columns={})
            return r._copies(step, n, flow, NameScope(name, sequential=True), fresh, tail, then_act)

        flow = self._scoped(step, step.term, (n,), name, flow, frame, tail, then_act, body, lambda: at_least)
        frame.labels[name] = flow
        return flow

    def _copies(self, step: ast.Step, n: int, flow, inner: NameScope, frame: Frame, tail: bool, then_act: bool) -> str:
        """The ``n`` copies of a repeated step, one after the other."""
        for i in range(n):
            before, spent = len(self.g), self.work
            self.generation += 1
            flow = self._term(step.term, None, flow, inner, frame, tail and i == n - 1,
                              then_act if i == n - 1 else self._is_activation(step, frame), step)
            if i == 0:
                self._projected(n, before, spent, step.span, "repeating this")
        return flow

    def _projected(self, n: int, before: int, spent: int, span: Span | None, what: str) -> None:
        """After the first of ``n`` copies (built from ``before`` layers and ``spent`` work), refuse what all ``n``
        would build or cost over the limits, before building the others."""
        projected = len(self.g) + (len(self.g) - before) * (n - 1)
        if projected > MAX_NODES:
            raise CnnLimitError(f"{what} {n} times would build about {projected:,} layers "
                                f"(the limit is {MAX_NODES:,})", span,
                                "a network of that size cannot be compiled; check the count")
        projected = self.work + (self.work - spent) * (n - 1)
        if projected > MAX_WORK:
            raise CnnLimitError(f"{what} {n} times would take about {projected:,} steps to build "
                                f"(the limit is {MAX_WORK:,})", span,
                                "a network that takes so long to build cannot be compiled; check the count")

    def _name(self, label: str | ast.Template | None, frame: Frame) -> str | None:
        """A label or a reference's name, its ``{...}`` parts filled in with the values in scope."""
        if label is None or isinstance(label, str):
            return label
        text = []
        for part in label.parts:
            if isinstance(part, str):
                text.append(part)
                continue
            v = evaluate(part, frame.env, self.choose)
            if isinstance(v, Symbol):
                text.append(v.name)
            elif isinstance(v, int) and not isinstance(v, bool):
                text.append(str(v))
            else:
                raise CnnArgumentError(f"a {{...}} part of a name must be a whole number or a word, got {_shown(v)}",
                                       part.span, "e.g. block{i}-{j} with i and j whole numbers")
        name = "".join(text)
        pieces = re.split(r"[.-]", name)
        bad = next((p for p in pieces if not _NAME_PART.fullmatch(p)), None)
        if bad is not None:
            why = f"'{bad}' cannot be part of a name" if bad else "it has an empty part between dots or hyphens"
            raise CnnNameError(f"the name {label.text()} comes out as '{name}', and {why}", label.span,
                               "the parts of a name, between its dots and hyphens, are words (not x and a digit, "
                               "which is a repeat) or whole numbers: layer1.0, block1-0")
        _check_name(name, label.span)
        return name

    def _term(self, term, label, flow, scope: NameScope, frame: Frame, tail, then_act, step: ast.Step) -> str:
        if label is not None:
            self._claim(scope.full(label), step.label_span or step.span)
        t = type(term)  # (each kind of term is a final class: compared by identity)
        if t is ast.Table:
            return self._table(term, label, flow, scope, frame, tail, then_act)
        if t is ast.Ref:
            target = self._lookup_label(self._name(term.name, frame), scope, frame, term.span)
            if label is not None:
                frame.labels[scope.full(label)] = target
            return target
        if t is ast.Group:
            if label is not None:
                name = scope.child("seq", label)
                self.g.scopes[name] = Scope(name, "sequence", span=term.span)
                out = self._group(term, name, flow, frame, tail, then_act)
                frame.labels[name] = out
                return out
            return self._seq(term.seq, flow, scope, frame, tail, then_act)
        if t is ast.Combinator:
            kind = term.name.lower()
            if kind == "choice":
                if self.holes is not None:
                    return self._hole(term, label, flow, scope, frame, tail, then_act, step)
                return self._term(self._chosen(term), label, flow, scope, frame, tail, then_act, step)
            if kind == "seq":
                return self._numbered(term, label, flow, scope, frame, tail, then_act)
            return self._combinator(term, label, flow, scope, frame, tail)
        if t is ast.Call and term.name.lower() == "none" and term.name not in frame.env:
            if term.kernel is not None or term.channels is not None or term.stride is not None or term.args:
                raise CnnArgumentError("`none` (a zero) takes no arguments", term.span)
            if label is not None:
                frame.labels[scope.full(label)] = ZERO
            self.zeroed = True
            return ZERO
        return self._call(term, label, flow, scope, frame, tail, then_act, step)

    def _lookup_label(self, name: str, scope: NameScope, frame: Frame, span) -> str:
        self.lookups += 1
        self._spend(1, span)
        if self.lookups > MAX_LOOKUPS:
            raise CnnLimitError(f"the network follows more than {MAX_LOOKUPS:,} references (@name)", span,
                                "a network with that many skips cannot be compiled")
        prefix = scope.prefix
        while True:
            full = f"{prefix}.{name}" if prefix else name
            if full in frame.labels:
                return frame.labels[full]
            if full in self.g and (not frame.root or full.startswith(frame.root + ".")):
                if self.g.mount_of(full) is not None:  # a layer inside a shared instance, read from outside it
                    self.g.flatten()
                return full
            if prefix == frame.root or not prefix:
                break
            prefix = prefix.rpartition(".")[0]
        later = _find_label(frame.body, name.split(".")[0]) if frame.body is not None else None
        if later is not None and (later.line, later.col) > (span.line, span.col):
            raise CnnNameError(f"'@{name}' refers to a label defined later, at {later.line}:{later.col}", span,
                               "a reference can only point back to an earlier layer; a later one would make a cycle")
        known = [k[len(frame.root) + 1:] if frame.root else k for k in frame.labels]
        raise CnnNameError(f"unknown name '@{name}'", span,
                           _suggest(name, known) or "a reference names a label defined earlier (`name: layer`); "
                           "referring to a later point would make a cycle")

    # -- tables
    def _table(self, t: ast.Table, label, flow, scope: NameScope, frame: Frame, tail, then_act) -> str:
        """``for t, c in (1, 16) (6, 24): STEP``: the step once per row, its columns bound to the row's values.

        Unlabelled, each copy is built in the enclosing scope (numbered there when it is numbered); labelled, the
        table is a numbered scope of its own, as a labelled repeat is.
        """
        self._nest(t.span)
        rows = self._rows(t, frame)
        at_least = len(self.g) + self.sizer.term(t, frame.sizing_env(), self.depth)
        if at_least > MAX_NODES:
            raise CnnLimitError(f"this table would build at least {at_least:,} layers (the limit is {MAX_NODES:,})",
                                t.span, "a network of that size cannot be compiled; check the rows and the counts")
        if label is not None and rows:
            name = scope.child("seq", label)
            self.g.scopes[name] = Scope(name, "sequence", span=t.span)
            inner = NameScope(name, sequential=True)
        else:  # no rows (range(0)): as a step repeated x0, no scope, and the label names the point here
            name, inner = None, scope
            if label is not None:
                frame.labels[scope.full(label)] = flow
        body_act = self._is_activation(t.body, frame)
        for i, (values, span) in enumerate(rows):
            env = {**frame.env, **dict(zip(t.names, values))}
            self._spend(1 + len(env), span)
            before, spent = len(self.g), self.work
            self.generation += 1
            last = i == len(rows) - 1
            flow = self._step(t.body, flow, inner, frame.copy(env=env, _sizing=None, prepared={}), tail and last,
                              then_act if last else body_act)
            if i == 0 and t.count is not None:
                self._projected(len(rows), before, spent, t.span, "building this")
        if name is not None:
            frame.labels[name] = flow
        frame.columns.update((col, t.span) for col in t.names if col not in frame.env)
        self.depth -= 1
        return flow

    def _rows(self, t: ast.Table, frame: Frame) -> list[tuple[tuple, Span]]:
        """The values of each row of a table (``range(n)``'s are 0 to n - 1), checked against its columns."""
        seen: set[str] = set()
        for col in t.names:
            if col in seen:
                raise CnnNameError(f"the column '{col}' is named twice", t.names_span, "give each column its own name")
            seen.add(col)
        if t.count is not None:
            if len(t.names) != 1:
                raise CnnArgumentError(f"range(...) gives one value a copy, and the table names {len(t.names)} "
                                       f"columns ({', '.join(t.names)})", t.names_span,
                                       "for j in range(n): STEP, or list the rows: for a, b in (1, 2) (3, 4): STEP")
            n = evaluate(t.count, frame.env, self.choose)
            if isinstance(n, bool) or not isinstance(n, int) or n < 0:
                raise CnnArgumentError(f"range(...) takes a whole number, 0 or more, got {_shown(n)}", t.count.span,
                                       "for j in range(n): STEP builds STEP for j = 0, 1, ..., n - 1")
            if n > MAX_NODES:
                raise CnnLimitError(f"range({n}) would build more than {MAX_NODES:,} layers", t.count.span,
                                    "a network of that size cannot be compiled; check the count")
            return [((j,), t.count.span) for j in range(n)]
        rows = []
        for row in t.rows:
            if len(row.values) != len(t.names):
                raise CnnArgumentError(f"this row has {len(row.values)} value{'s' if len(row.values) != 1 else ''} "
                                       f"for the {len(t.names)} column{'s' if len(t.names) != 1 else ''} "
                                       f"{', '.join(t.names)}", row.span,
                                       "give every row one value for each column, in the order of the columns")
            self._spend(len(row.values), row.span)
            rows.append((tuple(evaluate(v, frame.env, self.choose) for v in row.values), row.span))
        return rows

    # -- combinators
    def _numbered(self, c: ast.Combinator, label, flow, scope: NameScope, frame: Frame, tail, then_act,
                  name: str | None = None) -> str:
        """``seq< STEPS >``: a numbered scope (an ``nn.Sequential``) taking one name in the enclosing scope: its
        label, the next number in a numbered scope, else ``seq1``, ``seq2``, ...; ``name``: that scope, made."""
        if c.args:
            raise CnnArgumentError("seq<...> takes no arguments", c.span, "seq< conv3-64 bn relu >")
        if len(c.branches) != 1:
            raise CnnArgumentError("seq<...> holds one sequence of steps, not branches", c.span,
                                   "seq< conv3-64 bn relu >; several branches are concat<...> or add<...>")
        if name is None:
            name = scope.child("seq", label)
            self.g.scopes[name] = Scope(name, "sequence", span=c.span)
        out = self._seq(c.branches[0], flow, NameScope(name, sequential=True), frame, tail, then_act)
        frame.labels[name] = out
        return out

    def _chosen(self, c: ast.Combinator) -> ast.Group:
        """``choice< A | B | ... >``: the branch the ``choose`` hook picks (the first by default), as a group."""
        if c.args:
            raise CnnArgumentError("choice<...> takes no arguments", c.span, "choice< conv3-64 | maxpool >")
        point, branches = c.__dict__.get("_cnndsl_choice") or _kept(c, "_cnndsl_choice", lambda: (
            ast.Choice(tuple(c.branches), c.span), tuple(ast.Group(b, c.span) for b in c.branches)))
        return branches[self.choose(point) if self.choose else 0]

    def _hole(self, c: ast.Combinator, label, flow, scope: NameScope, frame: Frame, tail, then_act, step) -> str:
        """``choice<...>`` in a fragment being built: the branch chosen, resolved as anywhere, and where the build
        stood before and after it recorded (a hole of the instance's template, :mod:`cnndsl.passes.template`).
        A choice inside the branch is not a hole of its own: the branch then asks two decisions, and the build
        is not learnt from."""
        g, holes = self.g, self.holes
        hole = template.Hole(None, scope, dict(scope.counters), (
            g.stored, len(g.scopes), len(g), self.work, self.lookups, len(self.claimed), len(self.asked)))
        branch = self._chosen(c)
        hole.choice = c.__dict__["_cnndsl_choice"][0]
        self.holes = None
        try:
            out = self._term(branch, label, flow, scope, frame, tail, then_act, step)
        finally:
            self.holes = holes
        hole.end = (g.stored, len(g.scopes), len(g), self.work, self.lookups, len(self.claimed), len(self.asked))
        hole.after, hole.out = dict(scope.counters), out
        holes.append(hole)
        return out

    def _combinator(self, c: ast.Combinator, label, flow, scope: NameScope, frame: Frame, tail) -> str:
        kind = c.name.lower()
        if kind not in COMBINATORS:  # choice<...> is handled in _term
            raise CnnNameError(f"unknown combinator '{c.name}<...>'", c.span,
                               _suggest(kind, list(COMBINATORS)) or
                               "combinators are concat<...>, add<...>, residual<...>, aux<...>")
        given = dict(self._kwargs(c.args, frame, c.span, kind))
        # In a numbered sequence a combinator takes one position, as a scope of its own. Elsewhere its
        # branches are named in the enclosing scope and a label names the concat/add node itself; only
        # aux<...> makes a label a scope (the head's layers are named inside it: aux1.fc1).
        node_label, inner = None, scope
        if scope.sequential or (label is not None and kind == "aux"):
            name = scope.child(kind, label)
            self.g.scopes[name] = Scope(name, "branch", span=c.span)
            inner = NameScope(name, sequential=False)
        else:
            node_label, name = label, None
        if kind == "aux":
            self._no_args(given, kind, c.span)
            outs = [self._seq(b, flow, inner, frame, tail=True, then_act=False) for b in c.branches]
            self._no_zero(outs, kind, c.span)
            self.g.aux_outputs.extend(outs)
            if name is not None:
                frame.labels[name] = outs[-1]
            return flow
        if kind == "residual":
            out = self._residual(c, given, flow, inner, frame, node_label)
        elif kind == "split":
            out = self._split(c, given, flow, inner, frame, node_label)
        elif kind in OPERAND_COMBINATORS:
            out = self._operand(c, kind, given, flow, inner, frame, node_label)
        else:
            op = "concat" if kind in ("concat", "inception") else "add"
            outs = [self._seq(b, flow, inner, frame, tail=False, then_act=False) for b in c.branches]
            if op == "add" and len(outs) < 2:
                raise CnnArgumentError("add<...> needs at least two branches", c.span, "add< a | b >")
            args = OPS[op].normalize(given, c.span)
            if op == "concat":
                self._no_zero(outs, kind, c.span)
            live = [o for o in outs if o != ZERO]  # a `none` branch adds nothing
            if len(live) < len(outs) and len(live) < 2:
                out = live[0] if live else ZERO
                if node_label is not None:
                    frame.labels[inner.full(node_label)] = out
            else:
                out = self._add_node(inner.child(op, node_label), op, args, c.span, live)
        frame.labels[name or out] = out
        return out

    def _split(self, c: ast.Combinator, given: dict, flow, scope: NameScope, frame: Frame, label) -> str:
        """``split< A | B >``: the channels cut into as many equal parts as there are branches (``x.chunk(2, 1)``),
        branch i run on part i, the results concatenated. A branch that is only ``skip`` passes its part on."""
        self._no_args(given, "split", c.span)
        if len(c.branches) < 2:
            raise CnnArgumentError("split<...> needs at least two branches", c.span,
                                   "split< skip | conv1-58 bn relu > halves the channels (ShuffleNet v2)")
        shape = self._shape(flow)
        n = len(c.branches)
        if shape[0] % n:
            what = "channels" if len(shape) == 3 else "features"
            raise CnnShapeError(f"{shape[0]} {what} do not split into {n} equal parts for split<...>", c.span,
                                f"split<...> cuts the {what} into one equal part a branch: give it a multiple of {n}")
        part = shape[0] // n
        outs = []
        for i, branch in enumerate(c.branches):
            cut = self._add_node(scope.child("slice", None), "slice",
                                 OPS["slice"].normalize({"start": i * part, "stop": (i + 1) * part}, c.span),
                                 c.span, [flow])
            outs.append(cut if self._passes_on(branch, frame) else
                        self._seq(branch, cut, scope, frame, tail=False, then_act=False))
        self._no_zero(outs, "split", c.span)
        return self._add_node(scope.child("concat", label), "concat", OPS["concat"].normalize({}, c.span), c.span,
                              outs)

    def _passes_on(self, branch: ast.Seq, frame: Frame) -> bool:
        """Whether a branch is only ``skip`` (the identity, written without a label, arguments or repeat)."""
        if len(branch.steps) != 1:
            return False
        step = branch.steps[0]
        t = step.term
        return (step.label is None and step.repeat is None and isinstance(t, ast.Call) and not t.args
                and t.kernel is t.channels is t.stride is None and t.name not in frame.env
                and t.name not in self.lib.blocks and lookup(t.name) is OPS["identity"])

    def _operand(self, c: ast.Combinator, kind: str, given: dict, flow, scope: NameScope, frame: Frame,
                 label) -> str:
        """``scale< BODY >`` (``x * BODY(x)``) and ``resize< @point >``: an op of two operands, the current value
        and the branch's result."""
        op = OPERAND_COMBINATORS[kind]
        if given:
            self._no_operand_args(kind, OPS[op], c.span)
        if len(c.branches) != 1:
            raise CnnArgumentError(f"{kind}<...> takes one branch", c.span, _OPERAND_EXAMPLES[kind])
        other = self._seq(c.branches[0], flow, scope, frame, tail=False, then_act=False)
        self._no_zero([other], kind, c.span)
        return self._add_node(scope.child(op, label), op, OPS[op].normalize(given, c.span), c.span, [flow, other])

    @staticmethod
    def _no_operand_args(kind: str, op, span) -> None:
        if not op.fields:
            raise CnnArgumentError(f"{kind}<...> takes no arguments", span, _OPERAND_EXAMPLES[kind])

    def _kwargs(self, args, frame, span, what) -> list[tuple[str, Any]]:
        out = []
        for a in args:
            v = plain(evaluate(a.value, frame.env, self.choose))
            if a.name is None:
                if what == "residual" and isinstance(v, str):
                    out.append(("shortcut", v))
                    continue
                if what in OPERAND_COMBINATORS:  # resize(bilinear)<...>
                    op = OPS[OPERAND_COMBINATORS[what]]
                    if isinstance(v, str) and v in op.flags:
                        out.append(op.flags[v])
                        continue
                    self._no_operand_args(what, op, a.span)
                    raise CnnArgumentError(f"{what}<...> takes keyword arguments and the words {', '.join(op.flags)}",
                                           a.span, op.doc or _OPERAND_EXAMPLES[what])
                raise CnnArgumentError(f"{what}<...> takes keyword arguments, e.g. {what}(scale=0.17)<...>", a.span)
            out.append((a.name, v))
        return out

    @staticmethod
    def _no_zero(outs, kind, span):
        if ZERO in outs:
            raise CnnShapeError(f"a `none` branch (a zero) cannot be part of {kind}<...>", span,
                                "`none` only makes sense as a branch of add<...>")

    def _no_args(self, given, kind, span):
        if given:
            raise CnnArgumentError(f"{kind}<...> takes no arguments", span)

    def _residual(self, c: ast.Combinator, given: dict, flow, scope: NameScope, frame: Frame,
                  label: str | None = None) -> str:
        known = {"scale", "shortcut"}
        for k in given:
            if k not in known:
                raise CnnArgumentError(f"residual<...> has no argument '{k}'", c.span, _suggest(k, sorted(known)))
        if len(c.branches) > 2:
            raise CnnArgumentError("residual< body | shortcut > takes one or two branches", c.span)
        mode = given.get("shortcut", "auto")
        modes = (*OPS["shortcut"].MODES, "none")
        if mode not in modes:
            raise CnnArgumentError(f"unknown shortcut {mode!r}", c.span,
                                   _suggest(str(mode), modes) or f"shortcut is one of {', '.join(modes)}")
        if mode == "none" and len(c.branches) == 2:
            raise CnnArgumentError("residual(shortcut=none) takes no shortcut branch", c.span,
                                   "shortcut=none is the identity where the body keeps the shape, and no add "
                                   "elsewhere; residual< body | shortcut > always adds the shortcut written")
        body = self._seq(c.branches[0], flow, scope, frame, tail=False, then_act=False)
        self._no_zero([body], "residual", c.span)
        if mode == "none":  # decided here, with the shapes so far: whether there is an add at all is structure
            if self._shape(flow) != self._shape(body):
                if label is not None:
                    frame.labels[scope.full(label)] = body
                return body
            args = OPS["add"].normalize({"scale": given.get("scale", 1.0)}, c.span)
            return self._add_node(scope.child("add", label), "add", args, c.span, [body, flow])
        if len(c.branches) == 2:
            short = self._seq(c.branches[1], flow, scope, frame, tail=False, then_act=False)
            self._no_zero([short], "residual", c.span)
        else:
            bn = {"eps": 1e-5, "momentum": 0.1, **frame.defaults.get("bn", {})}
            args = OPS["shortcut"].normalize({"mode": mode, "bn_eps": bn["eps"],
                                              "bn_momentum": bn["momentum"]}, c.span)
            nm = scope.full("downsample")
            if nm in self.g:
                nm = scope.child("downsample", None)
            short = self._add_node(nm, "shortcut", args, c.span, [flow, body])
        args = OPS["add"].normalize({"scale": given.get("scale", 1.0)}, c.span)
        return self._add_node(scope.child("add", label), "add", args, c.span, [body, short])

    # -- calls: layers and block instances
    def _call(self, call: ast.Call, label, flow, scope: NameScope, frame: Frame, tail, then_act, step) -> str:
        name = call.name
        target = frame.env.get(name)
        if isinstance(target, Symbol):
            name = target.name
        if name in self.lib.blocks:
            if call.kernel is not None or call.channels is not None or call.stride is not None:
                raise CnnArgumentError(f"'{name}' is a block: pass its arguments in parentheses", call.span,
                                       f"{name}(...)")
            return self._instance(name, call, label, flow, scope, frame, tail, then_act)
        op, args, act, explicit_act = self._layer(name, call, frame)
        if isinstance(op, Zero) and args["prune"]:  # `zero(prune=true)` is `none`: a zero flow, its layers pruned
            if label is not None:
                frame.labels[scope.full(label)] = ZERO
            self.zeroed = True
            return ZERO
        if act in (None, "none", False):
            act = None
        if act is not None and not explicit_act and (tail or then_act):
            act = None
        node = self._add_node(scope.child(op.name, label), op.name, dict(args), call.span, [flow])
        if label is not None:
            frame.labels[node] = node
        if act is not None:
            actop = lookup(str(act))
            if actop is None or not actop.activation:
                raise CnnArgumentError(f"'{act}' is not an activation", call.span,
                                       f"act= takes {', '.join(activation_words())} or none")
            return self._add_node(scope.child(actop.name, None), actop.name, actop.normalize({}, call.span),
                                  call.span, [node])
        return node

    def _layer(self, name: str, call: ast.Call, frame: Frame) -> tuple[Any, dict, Any, bool]:
        """A layer's op, its normalised arguments, its activation and whether the call gave that itself.

        With the memo on, a call without a choice is worked out once for each set of the values it reads and the
        per-op defaults in force (:meth:`_defaults_key`): a search's members, and the instances of a block that
        differ in other arguments, share it (``bn`` and ``relu`` read nothing). A call that reads ``in.c`` is
        not kept: its value is a point of one build's graph."""
        key = None
        if self.store is not None and not _holds_choice(call):
            reads = _reads(call)
            defaults = self._defaults_key(frame)
            if defaults is not None and INPUT not in reads:
                values = tuple(map(frame.env.get, reads, _UNKNOWNS))
                key = (id(call), values, exact_types(values), defaults)
                kept = self.store.shared("layers", dict)
                try:
                    found = kept.get(key)
                except TypeError:  # a value that cannot be a key
                    found = key = None
                if found is not None and lookup(found[0].name) is found[0]:  # (a plugin's op may be replaced)
                    return found
        found = self._layer_args(name, call, frame)
        if key is not None:
            if len(kept) > MAX_BINDINGS:
                kept.clear()
            kept[key] = found
        return found

    def _layer_args(self, name: str, call: ast.Call, frame: Frame) -> tuple[Any, dict, Any, bool]:
        """:meth:`_layer`, worked out from the call."""
        op, kernel = self._op_for(name, call, frame)
        given: dict[str, Any] = {}
        kf, cf, sf = op.shorthand
        for field_name, part, what in ((kf, kernel, "kernel size"), (cf, call.channels, "channel count"),
                                       (sf, call.stride, "stride")):
            if part is None:
                continue
            if field_name is None:
                raise CnnArgumentError(f"'{op.name}' takes no {what} in its short form", call.span, op.doc or None)
            value = part if isinstance(part, (int, tuple)) else evaluate(part, frame.env, self.choose)
            if isinstance(value, Symbol):
                if isinstance(part, ast.Var) and part.name not in frame.env:
                    names = [k for k in frame.env if k != INPUT]
                    table = frame.columns.get(part.name)
                    raise CnnNameError(f"unknown name '{part.name}' in the {what}", part.span,
                                       f"'{part.name}' is a column of the table at {table.line}:{table.col}, whose "
                                       "step is the one step after its ':': put several steps in [ ] to build them "
                                       "all for each row" if table is not None else _suggest(part.name, names) or
                                       f"parameters in scope: {', '.join(names) or 'none'}")
                raise CnnArgumentError(f"the {what} must be a number, got the word '{value.name}'", part.span)
            given[field_name] = plain(value)
        act = None
        explicit_act = False
        positional = [f for f in op.positional if f not in given]
        for a in call.args:
            v = evaluate(a.value, frame.env, self.choose)
            if a.name is None:
                if isinstance(v, Symbol) and v.name in op.flags:
                    key, val = op.flags[v.name]
                elif isinstance(v, Symbol) and op.takes_act and lookup(v.name) and lookup(v.name).activation:
                    key, val = "act", v.name
                elif positional:
                    key, val = positional.pop(0), plain(v)
                else:
                    raise CnnArgumentError(f"too many arguments to '{op.name}'", a.span,
                                           op.doc or (f"use keywords: {', '.join(f for f, _ in op.fields)}"
                                                      if op.fields else f"'{op.name}' takes no arguments"))
            else:
                key, val = a.name, plain(v)
                if key in positional:
                    positional.remove(key)
                if not (key == "act" and op.takes_act) and key not in {f for f, _ in op.fields}:
                    op.unknown_argument(key, a.span)  # raises, pointing at the argument
            if key == "act" and op.takes_act:
                act, explicit_act = val, True
                continue
            if key in given:
                raise CnnArgumentError(f"argument '{key}' of '{op.name}' given twice", a.span,
                                       "the short form (convK-C/S) already sets the kernel, channels and stride"
                                       if call.kernel is not None or call.channels is not None or call.stride is not None
                                       or kernel is not None else "give each argument once")
            given[key] = val
        defaults = frame.defaults.get(op.name, {})
        for k, v in defaults.items():
            if k == "act":
                if not explicit_act:
                    act = v
            elif k not in given:
                given[k] = v
        return op, op.normalize(given, call.span), act, explicit_act

    def _op_for(self, name: str, call: ast.Call, frame: Frame):
        op = lookup(name)
        kernel = None
        if op is None:
            m = _SHORTHAND.match(name)
            if m and lookup(m["base"]):
                op = lookup(m["base"])
                dims = tuple(int(x) for x in m["k"].split("x"))
                kernel = dims[0] if len(dims) == 1 else dims
        if op is None or not op.writable:
            hint = _suggest(name, sorted(set(layer_words()) | set(self.lib.blocks)))
            base = re.match(r"^([A-Za-z_][A-Za-z_-]*?)[0-9]", name)
            if base and lookup(base[1]) and lookup(base[1]).shorthand[0]:
                b = base[1]
                hint = f"write the kernel size as {b}K or {b}KxL, e.g. {b}3-64 or {b}1x7-64"
            if re.match(r"^[A-Za-z]+[0-9]+-[A-Za-z]", name):
                hint = f"write the number in braces: {name.split('-')[0]}-{{{name.split('-', 1)[1]}}}"
            elif op is None:
                hint = _plugins_hint(name, hint)
            raise CnnNameError(f"unknown layer or block '{name}'", call.name_span, hint)
        if call.kernel is not None:
            if kernel is not None:
                raise CnnArgumentError("kernel size given twice", call.span)
            kernel = call.kernel
        return op, kernel

    def _instance(self, name: str, call: ast.Call, label, flow, scope: NameScope, frame: Frame, tail, then_act):
        block = self.lib.blocks[name]
        if len(frame.blocks_active) >= MAX_BLOCK_DEPTH:
            hint = ("a block that instantiates itself never ends" if name in frame.blocks_active
                    else "flatten the nesting: put blocks one after another")
            raise CnnLimitError(f"blocks nested more than {MAX_BLOCK_DEPTH} deep (through '{name}')", call.span, hint)

        def sized() -> None:  # refuse an instance too large before building it (a block bomb)
            at_least = len(self.g) + self.sizer.term(call, frame.sizing_env(), self.depth)
            if at_least > MAX_NODES:
                raise CnnLimitError(f"'{name}' would build at least {at_least:,} layers (the limit is {MAX_NODES:,})",
                                    call.span, "blocks that use other blocks several times grow exponentially with depth")

        if self.store is None:
            sized()
        else:  # sized only before something is built: a fragment that mounts within the limit needs no check
            #     (its size bounds the sizer's count)
            try:
                return self._bound_instance(name, block, call, label, flow, scope, frame, tail, then_act, sized)
            except CnnDslError:
                sized()  # a flat build refuses the size first
                raise
        return self._bound_instance(name, block, call, label, flow, scope, frame, tail, then_act, sized)

    def _bound_instance(self, name: str, block: ast.Block, call: ast.Call, label, flow, scope: NameScope,
                        frame: Frame, tail, then_act, sized: Callable[[], None]) -> str:
        start = InputPoint(flow, self._shape)
        cache, ready = self._prepared(frame, call, block, flow)
        if ready is not None and ready in cache:  # bound as an instance alike was (a copy of a repeat, or a member's)
            bound, defaults, units, shown, keys = cache[ready]
            self._spend(units, call.span)
            env = {**bound, INPUT: start}
            inst = scope.child(name, label)
        else:
            shown, keys = None, {}
            spent = self.work
            given = self._args(call.args, frame.env)
            pos = tuple(v for k, v in given if k is None)
            kw: dict[str, Any] = {}
            for k, v in given:
                if k is not None:
                    if k in kw:
                        raise CnnArgumentError(f"parameter '{k}' of '{name}' given twice", call.span)
                    kw[k] = v
            env = self._bind(name, block.params, pos, kw, frame.env, call.span, "block", start)
            inst = scope.child(name, label)
            defaults = self._defaults(block.defaults, frame.defaults, env)
            shown = {k: plain(v) for k, v in env.items() if k != INPUT}
            if ready is not None:
                if len(cache) > MAX_BINDINGS:
                    cache.clear()
                cache[ready] = ({k: v for k, v in env.items() if k != INPUT}, defaults, self.work - spent, shown,
                                keys)
        scope_ = self.g.scopes[inst] = Scope(inst, "block", block=name, span=call.span, definition=block.span,
                                             args=dict(shown))
        inner = Frame(env, defaults, inst, frame.blocks_active + (name,), body=block.body)
        only = block.body.steps[0] if len(block.body.steps) == 1 else None
        numbered = (only is not None and only.label is None and only.repeat is None
                    and isinstance(only.term, ast.Combinator) and only.term.name.lower() == "seq")

        def body(r: Resolver) -> str:  # the instance's layers, built by ``r`` (this resolver, or a fragment's)
            fresh = inner.copy(labels={}, columns={})  # a failed fragment build leaves no labels behind
            if numbered:  # the instance is the nn.Sequential: block.0, block.1, ...
                return r._numbered(only.term, None, flow, scope, fresh, tail, then_act, name=inst)
            return r._seq(block.body, flow, NameScope(inst, sequential=False), fresh, tail, then_act)

        try:
            if self.store is None:
                out = body(self)
            else:
                key = None
                if ready is not None:  # instances bound alike share the key too (the last copy may end the network)
                    where = (tail, then_act, self.depth, len(frame.blocks_active), self._limits_key())
                    key = keys.get(where)
                    if key is None:
                        key = keys[where] = _fragment_key(name, inner, ready[-1], tail, then_act, self.depth,
                                                          self._limits_key())
                out = self._shared(name, inst, inner, flow, tail, then_act, body, call.span, sized, key)
        except CnnDslError as e:  # a mistake inside the instance: say which instance, as it unwinds
            if e.span is not call.span:  # (not one about the call itself, e.g. a block too large to build)
                e.notes.append(instance_note(scope_))
            raise
        frame.labels[inst] = out
        return out

    def _group(self, term: ast.Group, name: str, flow: str, frame: Frame, tail: bool, then_act: bool) -> str:
        """A labelled group ``name: [ ... ]``, a numbered scope: shared through the memo (:meth:`_scoped`), so the
        members of a search that agree on what a stage reads (``layer3: [bottleneck(4 * base, 2) bottleneck(4 *
        base) x{n3 - 1}]``) mount one fragment."""
        def body(r: Resolver) -> str:
            fresh = frame if r is self else frame.copy(labels={}, columns={})
            return r._seq(term.seq, flow, NameScope(name, sequential=True), fresh, tail, then_act)

        return self._scoped(term, term.seq, (), name, flow, frame, tail, then_act, body,
                            lambda: self.sizer.total(term.seq, frame.sizing_env(), self.depth))

    def _scoped(self, owner, syntax, extra: tuple, name: str, flow: str, frame: Frame, tail: bool, then_act: bool,
                body: Callable[[Resolver], str], size: Callable[[], int]) -> str:
        """A labelled scope (a group, or a labelled repeat ``layer1: bottleneck(64) x3``) built by ``body``: shared
        through the memo like a block instance where ``syntax``, what it builds, is self-contained (see
        :func:`_self_contained`), keyed by the values it reads and ``extra`` (a repeat's count). A scope is shared
        from its second build on, so a network built once (a plain load) pays nothing for it; ``size()`` is the
        sizer's bound on the layers it builds (over the limit it is built flat, which says where)."""
        key = None
        if self.store is not None and flow != ZERO and _self_contained(owner, syntax):
            try:
                shape = self._shape(flow)
            except CnnDslError:
                shape = None
            if shape is not None and len(self.g) + size() <= MAX_NODES:
                key = _scope_key(owner, syntax, extra, frame, shape, tail, then_act, self.depth, self._limits_key())
        if key is None:
            return body(self)
        seen = self.store.shared("scopes", dict)
        if key not in seen and key not in self.store.entries:
            if len(seen) > MAX_BINDINGS:
                seen.clear()
            seen[key] = True
            return body(self)
        return self._shared("", name, frame, flow, tail, then_act, body, owner.span, lambda: None, key)

    # -- shared instances (cnndsl.passes.memo)
    def _prepared(self, frame: Frame, call: ast.Call, block: ast.Block, flow: str) -> tuple[dict, tuple | None]:
        """Where this instance's bound arguments are kept, and under what key (None: not kept, the memo is off or
        the input's shape is not known).

        Binding depends on the call, the values its arguments read, the per-op defaults in force and the input's
        shape (``in.c``): where no choice is in the arguments or the block's defaults, the bindings are the
        library's, shared by every build (a search's members bind a stage's blocks once). A choice decides once
        a build, so otherwise the frame keeps them, for the copies of a repeat."""
        if self.store is None or flow == ZERO:
            return frame.prepared, None
        try:
            shape = self._shape(flow)
        except CnnDslError:
            return frame.prepared, None
        if _holds_choice(call) or _signature_chooses(block):
            return frame.prepared, (id(call), shape)
        if self._defaults_key(frame) is None:
            return frame.prepared, (id(call), shape)
        reads = _reads(call)
        values = (tuple(map(frame.env.get, reads, _UNKNOWNS)) if INPUT not in reads else
                  tuple([frame.env.get(n, UNKNOWN) for n in reads if n != INPUT]))
        if INPUT in reads:  # in.c in the arguments: the shape of the input of the block around the call
            point = frame.env.get(INPUT)
            try:
                values += (point.shape_of(point.node) if isinstance(point, InputPoint) else point,)
            except CnnDslError:
                return frame.prepared, (id(call), shape)
        key = (id(call), values, exact_types(values), frame.defaults_key, shape)
        try:
            hash(key)
        except TypeError:
            return frame.prepared, (id(call), shape)
        return self.store.shared("bindings", dict), key

    @staticmethod
    def _defaults_key(frame: Frame) -> tuple | None:
        """The per-op defaults in force as a hashable value, made once a frame (None: a value is not hashable)."""
        if frame.defaults_key is None:
            inner = {op: values_key(vals) for op, vals in frame.defaults.items()}  # (each holds its types)
            frame.defaults_key = (None if None in inner.values() else tuple(inner.items()),)
        return frame.defaults_key[0]

    def _limits_key(self) -> Any:
        """The size limits as part of a memo key: a SizeLimits's values, a tuple (whose hash is worked out in C, where
        a frozen dataclass's is Python: keys are hashed at every lookup), made once for the limits last seen."""
        global _LIMITS_KEPT
        kept = _LIMITS_KEPT  # read once: another thread may replace it in between
        if kept[0] is not self.limits:
            limits = self.limits
            part = (limits if not is_dataclass(limits) else
                    (type(limits), *(getattr(limits, f.name) for f in fields(limits))))
            kept = _LIMITS_KEPT = (limits, part)
        return kept[1]

    def _decide(self, choice: ast.Choice) -> int | float:
        return self.choose(choice) if self.choose else 0

    def _shared(self, block: str, inst: str, inner: Frame, flow: str, tail: bool, then_act: bool,
                body: Callable[[Resolver], str], span: Span | None, sized: Callable[[], None],
                key: tuple | None = None) -> str:
        """Build the instance from the memo: mount the fragment of an instance alike (asking its choices again),
        or build one and mount it; an instance that cannot be shared, or would cross a limit, is built flat.
        ``sized()`` refuses an instance too large to build: it runs before anything is built (a fragment that
        fits needs none: the sizer's bound is at most the layers it holds)."""
        if flow == ZERO:  # an instance on a zero: its layers are dropped as they are built
            sized()
            return self._inline(body)
        try:
            shape = self._shape(flow)
        except CnnDslError:  # left for infer_shapes to report (or to leave out, on a training-only path)
            sized()
            return self._inline(body)
        key = key or _fragment_key(block, inner, shape, tail, then_act, self.depth, self._limits_key())
        if key is None:
            sized()
            return self._inline(body)
        frag = self._known(key)
        if frag is None or len(self.g) + frag.size > MAX_NODES:
            sized()
        if frag is None:
            self.looking += 1
            try:
                frag = self._fragment(flow, shape, inst, body, key)
            finally:
                self.looking -= 1
            if frag is None:
                return self._inline(body)
            if frag is _FAILED:  # built flat, its instances too: a mistake is reported as a flat build reports it
                return self._inline(body, flat=True)
            memo.count("misses")
            self._keep(key, frag)
        if not self._mountable(inst, frag):
            return self._inline(body)  # a flat build says where the limit is crossed
        self.work += frag.work
        self.lookups += frag.lookups
        out = self.g.mount(inst, frag, flow, span)
        self.shapes[out] = frag.shape
        if self.mounts is not None:
            self.mounts[out] = key
        return out

    def _known(self, key: tuple) -> Fragment | None:
        """The fragment under ``key`` for this build's decisions: found in the memo, or filled in from the key's
        template (:mod:`cnndsl.passes.template`); None when it must be built. A fill is kept in the memo when
        its decisions come back (:meth:`cnndsl.passes.template.Template.again`), else for this build's copies."""
        frag = self.found.get(key)
        if frag is not None:
            memo.count("hits")
            return frag
        self.looking += 1
        try:
            frag = self.store.find(key, self._decide)
            if frag is not None:
                memo.count("hits")
            else:
                known = self.store.shared("templates", dict).get(key)
                if known is None or known is template.DEAD:
                    return None
                frag = known.fill(self._decide, self.limits)
                if frag is None:
                    return None
                memo.count("filled")
                if known.again(frag):
                    self._keep(key, frag)
                else:
                    self.found[key] = frag
                return frag
        finally:
            self.looking -= 1
        if frag.decisions:  # a choice decides once a build: the copies of a repeat need not ask again
            self.found[key] = frag
        return frag

    def _keep(self, key: tuple, frag: Fragment) -> None:
        """Keep a fragment made for this build's decisions: in the memo, and for this build's copies."""
        self.store.add(key, frag)
        if frag.decisions:
            self.found[key] = frag

    def _mountable(self, inst: str, frag: Fragment) -> bool:
        """Whether mounting ``frag`` at ``inst`` stays within the limits a flat build checks as it goes."""
        return not (len(self.g) + frag.size > MAX_NODES or self.work + frag.work > MAX_WORK
                    or self.lookups + frag.lookups > MAX_LOOKUPS or len(inst) + 1 + frag.longest > MAX_NAME_LENGTH
                    or (frag.claims and _NAME_START.split(inst, maxsplit=1)[0] in _DECLARATIONS))

    def _inline(self, body: Callable[[Resolver], str], flat: bool = False) -> str:
        memo.count("inlined")
        if not flat:
            return body(self)
        store, self.store = self.store, None  # a retry must not try fragments again: it would be exponential
        try:
            return body(self)
        finally:
            self.store = store

    def _fragment(self, flow: str, shape: tuple[int, ...], inst: str, body: Callable[[Resolver], str],
                  key: tuple | None = None) -> Fragment | None:
        """The instance built on its own, from an input of ``shape``, through the per-layer passes; None when it
        cannot be shared (an aux head or a ``none`` inside, a layer read from outside it), :data:`_FAILED` on a
        mistake (a flat build then reports it where it would)."""
        check, count, infer_shapes, resolve_shortcuts = _AFTER_RESOLVE or _after_resolve()

        decisions: list[tuple[ast.Choice, int | float]] = []

        def record(choice: ast.Choice) -> int | float:
            decision = self._decide(choice)
            decisions.append((choice, decision))
            return decision

        sub = Resolver(self.lib, record, self.chain)
        sub.limits, sub.store, sub.sizer, sub.depth = self.limits, self.store, self.sizer, self.depth
        sub.building = True
        sub.holes, sub.asked = [], decisions  # (a fragment's choice<...> terms: its template's holes)
        sub.g = Graph(self.g.name)
        sub.g.add(flow, "input", {"shape": shape}, None, [])
        sub.shapes = {flow: shape}
        try:
            out = body(sub)
            if out in (ZERO, flow) or sub.zeroed or sub.g.aux_outputs:
                return None
            built = len(sub.g) - 1  # the layers resolve made, as a flat build counts them towards MAX_NODES
            sub.g.output = out
            warnings: list = []
            infer_shapes(sub.g, warnings, self.limits)
            if any(node.op == "shortcut" for node in sub.g.nodes()):  # rewritten: its shapes are inferred again
                resolve_shortcuts(sub.g, warnings, self.limits)
                infer_shapes(sub.g, warnings, self.limits, again=True)  # the layers it made, those after them
            for run in (count, check):
                run(sub.g, warnings, self.limits)
        except CnnDslError:
            if self.building:  # let the outermost fragment build fail: it alone is built again, flat
                raise
            return _FAILED
        frag = _as_fragment(sub, flow, inst, out, built, warnings, decisions)
        if frag is not None and sub.holes and key is not None:
            templates = self.store.shared("templates", dict)
            if len(templates) > MAX_BINDINGS:
                templates.clear()
            template.learn(templates, key, sub.holes, decisions, sub.g.added(), frag, inst, flow, len(sub.claimed),
                           sub.work, sub.lookups)
        return frag

    def _add_node(self, name: str, op: str, args: dict, span, inputs: list[str]) -> str:
        if len(self.g) >= MAX_NODES:
            raise CnnLimitError(f"the network has more than {MAX_NODES:,} layers", span,
                                "a network of that size cannot be compiled")
        _check_name(name, span)
        self._spend(1, span)
        self.g.add(name, op, args, span, inputs)
        return name


def _is_zero(v: Any) -> bool:
    """Whether a repeat count builds nothing: 0, or a condition that is false."""
    return isinstance(v, int) and v == 0


def _check_name(name: str, span: Span | None) -> None:
    """A layer's or scope's full dotted name (labels of the scopes around it included) stays short."""
    if len(name) > MAX_NAME_LENGTH:
        raise CnnLimitError(f"the full name of this layer has {len(name):,} characters "
                            f"(the limit is {MAX_NAME_LENGTH:,})", span,
                            "use shorter labels, or fewer levels of labelled blocks and groups")


class _Undecided(Exception):
    """A choice met while sizing: which option will be taken is not known before building."""


def _undecided(choice: ast.Choice) -> int:
    raise _Undecided


UNKNOWN = Symbol("<unknown>")  # a value the pre-check cannot know before building
#: UNKNOWN for every name a key reads: ``tuple(map(env.get, names, _UNKNOWNS))`` is each name's value or UNKNOWN
#: (as a generator of ``env.get(n, UNKNOWN)`` is, without a Python-level step a name).
_UNKNOWNS = itertools.repeat(UNKNOWN)


def known_value(expr: ast.Expr, env: dict[str, Any]) -> Any:
    """The value of ``expr`` if it is known before building (no choice in it, no error), else :data:`UNKNOWN`.

    Never calls a ``choose`` hook (a search records the choices it is asked): a choice is unknown.
    """
    try:
        return evaluate(expr, env, _undecided)
    except (CnnDslError, _Undecided):
        return UNKNOWN


def values_key(env: dict[str, Any]) -> tuple | None:
    """``env`` as a dictionary key, its values' types in it (:func:`exact_types`); None when a value is not
    hashable."""
    key = (tuple(env.items()), exact_types(tuple(env.values())))
    try:
        hash(key)
    except TypeError:
        return None
    return key


def exact_types(values: tuple) -> tuple:
    """The type of each of ``values`` (of each element, inside a tuple), for a memo key that holds the values:
    ``0``, ``0.0`` and ``False`` are equal and hash alike, so a key of the values alone would let what was built
    for one stand in for another (``dropout(p=p)`` refuses ``p=false`` and builds ``p=0``)."""
    types = tuple(map(type, values))
    if tuple not in types:  # (the common case: a check in C)
        return types
    return tuple(exact_types(v) if type(v) is tuple else type(v) for v in values)


class Sizer:
    """Lower bounds on the layers a piece of syntax builds, from the text and the values known (before building).

    Repeat counts are evaluated with the parameters in scope, and a block instance's body with its
    arguments' values, so ``block b(n): c(n) x{n}`` chained 30 deep is counted as it would be built; a
    count that cannot be known (a choice, a name not bound yet) counts once, as does a recursive
    instance. Each step is sized once for each set of values (and each block instance once for its
    arguments), and a sum stops once it is over ``MAX_NODES``, so the work is bounded by the text, not by
    the network it describes. It lets a block bomb (each block using the next one twice, 30 deep) fail at
    once instead of after building 100,000 layers.
    """

    MAX_MEMO = 200_000  # sizes kept: a sizer shared by a library's builds (a search's members) starts over past it

    def __init__(self, blocks: dict[str, ast.Block]):
        self.blocks = blocks
        self.memo: dict[tuple, tuple[object, int]] = {}  # (id of a step or call, values) -> (it, its size)

    def _find(self, syntax, env: dict[str, Any]) -> tuple[tuple | None, int | None]:
        """The memo key of ``syntax`` (a step or a call) under ``env`` (None: unhashable values) and its size if
        known. The key holds the values of ``env`` that it can read: a size depends on those alone (a block's
        body is sized from the values its arguments bind), so a step sized once is known for every member of a
        search whose choices it does not read."""
        facts = syntax.__dict__.get("_cnndsl_facts") or _facts(syntax)  # (_reads, inline: the sizer's hot path)
        key = (id(syntax), tuple(map(env.get, facts[0], _UNKNOWNS)))
        try:
            found = self.memo.get(key)
        except TypeError:
            return None, None
        return key, None if found is None else found[1]

    def forget_if_full(self) -> None:
        if len(self.memo) > self.MAX_MEMO:
            self.memo.clear()

    def term(self, term: ast.Term, env: dict[str, Any], depth: int, active: tuple[str, ...] = ()) -> int:
        """The lower bound of one term, inside ``depth`` sequences (resolve's count: it stops at ``MAX_NESTED``)."""
        t = type(term)  # (each kind of term is a final class: compared by identity)
        if t is ast.Ref:
            return 0
        if depth >= MAX_NESTED:  # resolve stops here with its own error
            return 1
        if t is ast.Call:
            key, size = self._find(term, env)
            if size is not None:
                return size
            size = self._call(term, env, depth, active)
            if key is not None:
                self.memo[key] = (term, size)  # the term is kept alive, so its id is not reused
            return size
        if t is ast.Group:
            return self.seq(term.seq, env, depth + 1, active)
        if t is ast.Table:
            return self._table(term, env, depth, active)
        if term.name.lower() == "choice":  # one branch is taken
            return min([self.seq(b, env, depth + 1, active) for b in term.branches])
        total = 0
        for b in term.branches:  # (sized one by one: the sum stops once it is over)
            total += self.seq(b, env, depth + 1, active)
            if total > MAX_NODES:
                break
        return total

    def total(self, seq: ast.Seq, env: dict[str, Any], depth: int) -> int:
        """:meth:`seq`, for resolve's check of a sequence before it is built."""
        return self.seq(seq, env, depth)

    def seq(self, seq: ast.Seq, env: dict[str, Any], depth: int, active: tuple[str, ...] = ()) -> int:
        """The steps' lower bounds added up (stopping once over ``MAX_NODES``), kept for each set of the values the
        sequence reads, as a step's are: so resolve's check of a block body, a group or a branch, sized already
        within the network's own check, is one lookup, not one a step (a sequence of a search's members is sized
        once). The steps' sizes are kept under keys of their own values, so the sum is the one a sum of lookups
        would give."""
        key, size = self._find(seq, env)
        if size is not None:
            return size
        total = 0
        for step in seq.steps:
            total += self.step(step, env, depth, active)
            if total > MAX_NODES:
                break
        if key is not None:
            self.memo[key] = (seq, total)  # the sequence is kept alive, so its id is not reused
        return total

    def step(self, step: ast.Step, env: dict[str, Any], depth: int, active: tuple[str, ...] = ()) -> int:
        """The step's lower bound, its repeat count included."""
        key, size = self._find(step, env)
        if size is not None:
            return size
        count = known_value(step.repeat, env) if step.repeat is not None else 1
        count = int(count) if isinstance(count, int) and count >= 0 else 1  # x{false} is absent
        size = self.term(step.term, env, depth, active) * count
        if key is not None:
            self.memo[key] = (step, size)
        return size

    def _table(self, t: ast.Table, env: dict[str, Any], depth: int, active: tuple[str, ...]) -> int:
        """A table's rows added up (``range(n)``: n copies, the column unknown)."""
        if t.count is not None:
            n = known_value(t.count, env)
            n = n if isinstance(n, int) and not isinstance(n, bool) and n >= 0 else 1
            inner = {**env, **dict.fromkeys(t.names, UNKNOWN)}
            return self.step(t.body, inner, depth, active) * n
        total = 0
        for row in t.rows:
            inner = {**env, **{name: known_value(v, env) for name, v in zip(t.names, row.values)}}
            total += self.step(t.body, inner, depth, active)
            if total > MAX_NODES:
                break
        return total

    def _call(self, call: ast.Call, env: dict[str, Any], depth: int, active: tuple[str, ...]) -> int:
        target = env.get(call.name)
        name = target.name if isinstance(target, Symbol) else call.name
        block = self.blocks.get(name)
        if block is None or name in active:
            return 1
        inner = self.bind(block, call, env)
        key = values_key(inner)
        memo = (name, key)
        if key is not None and memo in self.memo:
            return self.memo[memo][1]
        size = self.seq(block.body, inner, depth + 1, active + (name,))
        if key is not None:
            self.memo[memo] = (block, size)
        return size

    @staticmethod
    def bind(block: ast.Block, call: ast.Call, env: dict[str, Any]) -> dict[str, Any]:
        """A block instance's parameters as they will be bound (as resolve binds them), :data:`UNKNOWN` where a
        value cannot be known before building."""
        names = [p.name for p in block.params]
        positional = [a for a in call.args if a.name is None]
        given = dict(zip(names, (a.value for a in positional)))
        given.update((a.name, a.value) for a in call.args if a.name is not None)
        declared = set(names)
        values = {name: known_value(expr, env) for name, expr in given.items() if name in declared}
        for p in block.params:
            if p.name not in values:
                values[p.name] = UNKNOWN if p.default is None else known_value(p.default, values)
        return values


def _freeze(g: Graph, mod: ast.Freeze) -> None:
    """Freeze the layers named, and everything below a scope named (one pass over the layers, however many paths).

    A residual's shortcut is one ``shortcut`` layer here; ``resolve_shortcuts`` gives the layers it becomes
    (``downsample.0``, ``downsample.1``) its ``frozen`` flag."""
    paths, hit = set(mod.paths), set()
    for node in g.nodes():
        found = [p for p in (node.name, *_prefixes(node.name)) if p in paths]
        if found:
            node.frozen = True
            hit.update(found)
    for path in mod.paths:
        if path not in hit:
            shortcut = next((p for p in _prefixes(path) if p in g and g.node(p).op == "shortcut"), None)
            hint = (f"'{shortcut}' is a shortcut, its layers made once shapes are known: freeze({shortcut}) freezes "
                    "them all" if shortcut else _suggest(path, [n.name for n in g.nodes()]))
            raise CnnNameError(f"nothing named '{path}' to freeze", mod.span, hint)


def _find_label(seq: ast.Seq, name: str) -> Span | None:
    """Where ``name:`` labels a step anywhere in ``seq`` (groups and branches included), or None."""
    for step in seq.steps:
        if step.label == name:
            return step.label_span or step.span
        inner = [step.term.seq] if isinstance(step.term, ast.Group) else \
            list(step.term.branches) if isinstance(step.term, ast.Combinator) else \
            [ast.Seq((step.term.body,), step.term.span)] if isinstance(step.term, ast.Table) else []
        for sub in inner:
            found = _find_label(sub, name)
            if found is not None:
                return found
    return None


def _decides(term) -> bool:
    """Whether a step on a zero is still lowered: a reference restarts the flow, and a group, a sum, a
    concatenation or a ``choice<...>`` may hold one. A choice<...> on a zero is still decided (each
    NAS-Bench-201 edge is a decision, whatever it carries), though its layers are dropped."""
    return isinstance(term, (ast.Ref, ast.Group, ast.Table)) or (
        isinstance(term, ast.Combinator) and term.name.lower() in ("choice", "add", "concat", "inception", "seq"))


def _prune(g: Graph) -> None:
    """Remove the layers that reach no output (their results only fed `none` edges), and empty scopes."""
    g.flatten()
    live, todo = set(g.inputs), list(g.outputs)
    while todo:
        name = todo.pop()
        if name not in live:
            live.add(name)
            todo.extend(g.inputs_of(name))
    names = [n.name for n in g.nodes()]
    for node in names:
        if node not in live:
            g.remove(node)
    prefixes = {p for n in names if n in live for p in _prefixes(n)}
    for scope in [s for s in g.scopes if s not in prefixes]:
        del g.scopes[scope]


def _prefixes(name: str) -> Iterator[str]:
    parts = name.split(".")
    for i in range(1, len(parts)):
        yield ".".join(parts[:i])


def _plugins_hint(name: str, hint: str | None) -> str | None:
    """``hint`` for an unknown layer, with the installed plugins that could define it (read from the packages'
    metadata, not imported: loading one runs its code, so only ``--plugins NAME`` does)."""
    from cnndsl.ops import installed_plugins  # only for this error: it reads every installed package's metadata

    installed = installed_plugins()
    if not installed:
        return hint
    base = _SHORTHAND.match(name)
    same = [(n, d) for n, d in installed if n in (name, base and base["base"])]
    if same:
        n, d = same[0]
        return f"the installed plugin '{n}' ({d}) may define it: load it with --plugins {n} (this runs its code)"
    shown = 8  # plugins named in the hint
    listed = ", ".join(f"{n} ({d})" for n, d in installed[:shown])
    more = f" and {len(installed) - shown} more" if len(installed) > shown else ""
    if hint:
        return f"{hint} or an op of an installed plugin, loaded with --plugins NAME: {listed}{more}"
    return f"an op of an installed plugin? load it with --plugins NAME: {listed}{more}"


def _suggest(word: str, choices) -> str | None:
    """A close match among ``choices`` for a hint (looked for among the first ``MAX_SUGGESTED`` of them)."""
    close = difflib.get_close_matches(word, list(itertools.islice(choices, MAX_SUGGESTED)), 1, 0.6)
    return f"did you mean '{close[0]}'?" if close else None


def resolve(library, network: str, choose: Callable[[ast.Choice], int] | None = None, *,
            input_shape: tuple[int, ...] | None = None, limits=None, **params) -> Graph:
    """Lower network ``network`` of ``library`` (with parameter overrides) to an IR graph.

    ``input_shape`` replaces the first input's declared shape; ``limits`` are the size limits the passes will
    check (a :class:`~cnndsl.passes.limits.SizeLimits`). Block instances alike are built once and mounted
    (:mod:`cnndsl.passes.memo`): the graph may hold mounts, which :meth:`Graph.flatten` expands.
    """
    resolver = Resolver(library, choose)
    resolver.input_shape, resolver.limits = input_shape, limits
    resolver.sizer.forget_if_full()
    try:
        return resolver.network(network, params)
    except RecursionError:  # a backstop: MAX_NESTED and MAX_BLOCK_DEPTH normally stop it first
        decl = library.networks.get(network)
        raise CnnLimitError("the network is nested too deeply to build", decl.span if decl else None,
                            "use fewer levels of blocks, brackets and branches") from None


#: The size limits last made part of a memo key, and that part (:meth:`Resolver._limits_key`).
_LIMITS_KEPT: tuple = (None, None)

#: Bindings a library keeps for its builds (:meth:`Resolver._prepared`): past this many, they start over.
MAX_BINDINGS = 100_000

#: The passes a fragment goes through after resolve (check, count, infer_shapes, resolve_shortcuts), imported at the
#: first fragment (they import this module), then kept.
_AFTER_RESOLVE: tuple = ()


def _after_resolve() -> tuple:
    global _AFTER_RESOLVE
    from cnndsl.passes import check, count, infer_shapes, resolve_shortcuts

    _AFTER_RESOLVE = (check, count, infer_shapes, resolve_shortcuts)
    return _AFTER_RESOLVE


#: What :meth:`Resolver._fragment` returns for an instance whose build on its own failed.
_FAILED: Any = object()


def _self_contained(owner, syntax) -> bool:
    """Whether what a labelled scope builds (``syntax``) depends on nothing around it but the values it reads and
    its input: no label inside (the steps after it could refer to one), no ``@reference`` (to a point outside it)
    and no ``in.c`` (the enclosing block's input). A fact of the text, kept on ``owner`` (the group or step)."""
    return _kept(owner, "_cnndsl_self_contained", lambda: not any(
        (isinstance(x, ast.Step) and x.label is not None) or isinstance(x, (ast.Ref, ast.Field))
        for x in _syntax_nodes(syntax)))


def _scope_key(owner, syntax, extra: tuple, frame: Frame, shape: tuple[int, ...], tail: bool, then_act: bool,
               depth: int, limits) -> tuple | None:
    """What a self-contained scope's fragment depends on, but the choices it reaches (None: a value is not
    hashable): the values of the names it reads, ``extra``, the per-op defaults in force, its input's shape and
    where it sits. The scope is named by its place in the text (syntax lives as long as its library, as the
    memo's store does)."""
    if Resolver._defaults_key(frame) is None:
        return None
    values = tuple(map(frame.env.get, _reads(syntax), _UNKNOWNS))
    key = (("scope", id(owner)), values, exact_types(values), extra, exact_types(extra), frame.defaults_key, shape,
           tail, then_act, depth, len(frame.blocks_active), limits)
    try:
        hash(key)
    except TypeError:
        return None
    return key


def _fragment_key(block: str, inner: Frame, shape: tuple[int, ...], tail: bool, then_act: bool, depth: int,
                  limits) -> tuple | None:
    """What an instance's fragment depends on, but the choices it reaches; None when a value is not hashable."""
    env = values_key({k: v for k, v in inner.env.items() if k != INPUT})
    defaults = Resolver._defaults_key(inner)
    if env is None or defaults is None:
        return None
    return (block, env, defaults, shape, tail, then_act, depth, len(inner.blocks_active), limits)


def _as_fragment(sub: Resolver, flow: str, inst: str, out: str, built: int, warnings: list,
                 decisions: list) -> Fragment | None:
    """The fragment of the instance that ``sub`` built at ``inst``, its names made relative to the instance."""
    cut = len(inst) + 1
    inside = inst + "."
    layers, operands, longest, params, macs, activations = [], [], 0, 0, 0, 0
    for node in list(sub.g.nodes()):  # topological: a pass puts a shortcut projection after the sum reading it
        if node.name == flow:
            continue
        srcs = sub.g.inputs_of(node.name)
        if not node.name.startswith(inside):
            return None
        for s in srcs:
            if s != flow and not s.startswith(inside):
                return None
        node.name = node.name[cut:]
        if node.op == MOUNT:
            prefix, frag = node.meta["mount"]
            node.meta["mount"] = (prefix[cut:], frag)
            longest = max(longest, len(prefix) - cut + 1 + frag.longest)
        else:
            longest = max(longest, len(node.name))
        params, macs, activations = params + node.params, macs + node.macs, activations + node.activations
        layers.append(node)
        operands.append(tuple([FLOW if s == flow else s[cut:] for s in srcs]))
    late = set(sub.g.late_scopes)
    scopes = tuple([_replaced(sc, name=sc.name[cut:]) for name, sc in sub.g.scopes.items() if name not in late])
    late_scopes = tuple([_replaced(sub.g.scopes[name], name=name[cut:]) for name in sub.g.late_scopes])
    return Fragment(tuple(layers), tuple(operands), scopes, late_scopes, out[cut:], sub.g.node(out).shape, params,
                    macs, activations, built, longest, tuple(warnings), tuple(decisions), sub.work, sub.lookups,
                    bool(sub.claimed))


def _replaced(obj: Any, **changes: Any) -> Any:
    """``dataclasses.replace(obj, **changes)`` for a plain dataclass (no ``__post_init__``, no slots, no init-only
    fields), without its work a field: a frame is copied for every block instance and table row, and a fragment
    renames each of its scopes."""
    new = object.__new__(type(obj))
    new.__dict__.update(obj.__dict__, **changes)
    return new


def _syntax_nodes(syntax) -> Iterator[Any]:
    """Every syntax node in a piece of syntax (a node, or tuples of them), itself included."""
    todo = [syntax]
    while todo:
        x = todo.pop()
        if isinstance(x, tuple):
            todo.extend(x)
        elif hasattr(x, "__dataclass_fields__") and not isinstance(x, Span):
            yield x
            todo.extend(getattr(x, f) for f in x.__dataclass_fields__)


def _kept(owner, slot: str, make: Callable[[], Any]) -> Any:
    """A fact of the parsed text, ``make()`` the first time, then kept on the syntax node ``owner`` under ``slot``,
    so every build and every member of a search reads it back: syntax is immutable, and a node lives as long as
    its library. (A frozen dataclass: the fact is a cache beside its fields, not one of them.)"""
    found = owner.__dict__.get(slot)
    if found is None:
        found = make()
        object.__setattr__(owner, slot, found)
    return found


def _facts(syntax, owner=None, slot: str = "_cnndsl_facts") -> tuple[tuple[str, ...], bool]:
    """The names a piece of syntax may read from its scope, sorted, and whether it holds a choice, kept on
    ``owner`` (the node itself by default) under ``slot`` (:func:`_kept`)."""
    owner = syntax if owner is None else owner
    return owner.__dict__.get(slot) or _kept(owner, slot, lambda: _scan(syntax))  # (the pair is never empty)


def _scan(syntax) -> tuple[tuple[str, ...], bool]:
    """:func:`_facts`, worked out from the syntax."""
    names, choice = set(), False
    for x in _syntax_nodes(syntax):
        if isinstance(x, (ast.Var, ast.Call)):
            names.add(x.name)
        elif isinstance(x, ast.Field):
            names.add(INPUT)
        elif isinstance(x, ast.Choice):
            choice = True
    return tuple(sorted(names)), choice


def _reads(syntax) -> tuple[str, ...]:
    """Every name a piece of syntax may read from its scope, sorted: its words (``Var``), the names it calls (a
    call may name a parameter holding a block), and :data:`INPUT` where it reads ``in.c``. A column or a label
    it binds itself may be among them: a key with more values than needed is still exact."""
    return (syntax.__dict__.get("_cnndsl_facts") or _facts(syntax))[0]


def _holds_choice(syntax) -> bool:
    """Whether a piece of syntax holds a ``{a|b}`` choice or a float range (whose decision is a build's)."""
    return (syntax.__dict__.get("_cnndsl_facts") or _facts(syntax))[1]


def _signature_chooses(block: ast.Block) -> bool:
    """Whether a block's parameters or per-op defaults hold a choice."""
    return _facts((block.params, block.defaults), block, "_cnndsl_signature_facts")[1]

