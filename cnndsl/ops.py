"""The plugin API: custom ops (CBAM, coordinate attention, a layer from your own paper) as first-class ops.

A plugin op is one class, a final subclass of :class:`Op`, registered with :func:`register`. It declares the
facts every built-in op declares (its arguments and their kinds, its shape rule, parameters, MACs, what it saves
for the backward pass, its display, its weight layout) and one emitter hook per backend (:class:`Emit`): the
PyTorch and Flax NNX module, and the JAX function pair, that the generated code calls. Once registered it is
checked, summarised, drawn, searched over and compiled like a built-in op. ``docs/plugins.md`` walks through
``examples/cbam``.

This module is the stable API, versioned by :data:`API_VERSION`: the names in ``__all__`` keep their meaning
within a major version; a plugin says which one it was written for (``api_version``), and :func:`register`
refuses another. Loading a plugin runs its code, so nothing here is loaded unless asked: ``use "myops.py"`` in
a .cnn file needs ``--plugins``/``--allow-plugins`` on the command line (``allow_plugins=True`` in the API),
and :func:`load_plugin` loads a module, a ``.py`` file or an installed package's ``cnndsl.ops`` entry point.

>>> API_VERSION
1
"""

from __future__ import annotations

import ast
import keyword
import re
import sys
from collections.abc import Callable, Iterable
from importlib import import_module, metadata
from pathlib import Path
from typing import Any

from cnndsl.errors import CnnDslError, Span
from cnndsl.front.loader import allow_plugins, import_plugin_file, plugins_allowed
from cnndsl.ir import ops as _registry
from cnndsl.ir.ops import (
    COMBINATORS,
    FACTS,
    OPS,
    REQUIRED,
    Emit,
    Family,
    Fans,
    FlatOrder,
    Op,
    Saved,
    Weight,
    as_bool,
    as_float,
    as_int,
    as_pair,
    lookup,
)

__all__ = ["API_VERSION", "ENTRY_POINT_GROUP", "REQUIRED", "CnnPluginError", "Emit", "Family", "Fans", "FlatOrder",
           "Op", "Saved", "Weight", "allow_plugins", "as_bool", "as_float", "as_int", "as_pair", "installed_plugins",
           "load_plugin", "load_plugins", "lookup", "plugin_ops", "plugin_sources", "plugins_allowed", "register",
           "unregister"]

#: The version of this API. A plugin op declares the one it was written for (``api_version = 1``).
API_VERSION = 1
#: The entry-point group an installed package lists its plugin modules under (``[project.entry-points."cnndsl.ops"]``).
ENTRY_POINT_GROUP = "cnndsl.ops"
#: What a plugin op declares beyond the built-in ops' facts (:data:`cnndsl.ir.ops.FACTS`).
PLUGIN_FACTS = ("api_version", "doc", "torch_emit", "jax_emit", "flax_emit")
#: The rules a plugin op defines itself (a built-in op may inherit the defaults: identity shape, no parameters).
RULES = (("infer", "infer_many"), ("count_params",), ("count_macs",), ("short_form",))
#: The names the generated module of each backend may use in a plugin's source, besides the source's own.
BACKEND_NAMES = {"torch_emit": ("torch", "nn", "F"), "jax_emit": ("jax", "jnp"), "flax_emit": ("jax", "jnp", "nnx")}
#: Words of the language that no op may be spelt as (besides the ops' own spellings, ``input`` among them).
KEYWORDS = frozenset({"and", "block", "else", "for", "freeze", "if", "in", "log", "network", "not", "or",
                      "range", "replace", "use", "with", "true", "false", "none", "same", "valid"})
_OP_NAME = re.compile(r"[a-z][a-z0-9_]*")
_SPELLING = re.compile(r"[a-z][a-z0-9_]*(-[a-z][a-z0-9_]*)*")
_MODULE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*")
_DERIVED = ("in_channels", "in_features")
#: The prefix of the module a ``use "x.py"`` plugin file runs as (:func:`cnndsl.front.loader.import_plugin_file`).
_FILE_MODULE = "cnndsl_plugin_"
#: What :func:`load_plugin` loaded in this process, in order (its arguments, a ``.py`` file's as an absolute path),
#: each with the plugin ops it registered (or, loaded before, those its module holds).
_LOADED: dict[str, frozenset[str]] = {}


class CnnPluginError(CnnDslError):
    """A plugin op that cannot be registered (a missing or bad fact), or a plugin that cannot be loaded."""


def _identifier(text: Any) -> bool:
    return isinstance(text, str) and text.isidentifier() and text.isascii() and not keyword.iskeyword(text) \
        and not text.startswith("__")


def _declared(cls: type, name: str) -> bool:
    """Whether ``cls`` or a base between it and :class:`Op` declares ``name``."""
    return any(name in vars(k) for k in cls.__mro__ if issubclass(k, Op) and k is not Op)


def _source_problems(where: str, emit: Emit, backend: str) -> list[str]:
    """What is wrong with an Emit's ``source``: it must parse and hold only definitions, ``name`` among them."""
    try:
        tree = ast.parse(emit.source)
    except (SyntaxError, ValueError) as e:
        return [f"{where}.source does not parse as Python ({e.msg if isinstance(e, SyntaxError) else e})"]
    problems, defined = [], []
    for i, stmt in enumerate(tree.body):
        if i == 0 and isinstance(stmt, ast.Expr) and isinstance(stmt.value, ast.Constant) \
                and isinstance(stmt.value.value, str):
            continue  # a docstring
        if not isinstance(stmt, (ast.ClassDef, ast.FunctionDef)):
            problems.append(f"{where}.source holds a top-level {type(stmt).__name__.lower()} statement at line "
                            f"{stmt.lineno}; it may only define classes and functions (import what else it needs "
                            "inside them, or name a module instead of giving source)")
            continue
        defined.append(stmt.name)
    for name in defined:
        if not _identifier(name) or name in BACKEND_NAMES[backend]:
            problems.append(f"{where}.source defines {name!r}, a name the generated module keeps")
    for name in emit.names():
        if name not in defined:
            problems.append(f"{where}.source does not define {name!r}")
    return problems


def _emit_problems(cls: type[Op], attr: str) -> list[str]:
    emit = getattr(cls, attr)
    where = f"{attr}"
    if emit is None:  # declared: the op is not supported by that backend (reported at the layer, with its span)
        return []
    if not isinstance(emit, Emit):
        return [f"{where} is {type(emit).__name__}, not an Emit (or None where the backend cannot write the op)"]
    problems = []
    for name in emit.names():
        if not _identifier(name):
            problems.append(f"{where} names {name!r}, which is not a Python identifier")
    if attr == "jax_emit" and emit.init is None and cls.weights:
        problems.append(f"{where} needs init=, the function that makes the op's variables")
    if attr != "jax_emit" and emit.init is not None:
        problems.append(f"{where}.init is JAX's (a module makes its own variables)")
    if (emit.source is None) == (emit.module is None):
        problems.append(f"{where} gives source= (its definitions) or module= (an importable module), one of them")
    elif emit.module is not None and not (isinstance(emit.module, str) and _MODULE.fullmatch(emit.module)
                                          and all(_identifier(p) for p in emit.module.split("."))):
        problems.append(f"{where}.module {emit.module!r} is not a dotted module name")
    elif emit.source is not None:
        problems += (_source_problems(where, emit, attr) if isinstance(emit.source, str)
                     else [f"{where}.source is not text"])
    known = {f for f, _ in cls.fields} | set(_DERIVED)
    for arg in emit.args:
        if not _identifier(arg) or arg not in known:
            problems.append(f"{where}.args names {arg!r}: pass the op's arguments ({', '.join(sorted(known))})")
    if len(set(emit.args)) != len(emit.args):
        problems.append(f"{where}.args names an argument twice")
    return problems


def _spelling_problems(cls: type[Op]) -> list[str]:
    name = getattr(cls, "name", None)
    if not isinstance(name, str) or not _OP_NAME.fullmatch(name) or name[-1].isdigit():
        return [(f"name {name!r} is not an op name: lower-case letters, digits and '_', starting with a letter "
                 "and ending in no digit (a trailing number is a kernel size: cbam7)")]
    problems = []
    for spelling in (name, *cls.aliases):
        if not isinstance(spelling, str) or not _SPELLING.fullmatch(spelling):
            problems.append(f"spelling {spelling!r} is not a word of the language")
        elif spelling in KEYWORDS or spelling in COMBINATORS:
            problems.append(f"spelling '{spelling}' is a word of the language")
        elif lookup(spelling) is not None:
            other = lookup(spelling)
            kind = "plugin" if other.plugin else "built-in"
            problems.append(f"short form '{spelling}' is already the {kind} op '{other.name}'")
    return problems


def problems(cls: type[Op]) -> list[str]:
    """Everything :func:`register` would refuse about ``cls``, one line each (empty when it registers)."""
    if not (isinstance(cls, type) and issubclass(cls, Op)) or cls is Op:
        return [f"{cls!r} is not a subclass of cnndsl.ops.Op"]
    out = _spelling_problems(cls)
    missing = [f for f in (*FACTS, *PLUGIN_FACTS) if not _declared(cls, f)]
    if missing:
        out.append(f"declares no {', '.join(missing)}")
    rules = [" or ".join(r) for r in RULES if not any(_declared(cls, m) for m in r)]
    if rules:
        out.append(f"defines no {', '.join(rules)}")
    if _declared(cls, "api_version") and cls.api_version != API_VERSION:
        out.append(f"was written for cnndsl.ops API {cls.api_version!r}; this cnndsl provides API {API_VERSION}")
    checks: list[tuple[str, Callable[[Any], bool], str]] = [
        ("family", lambda v: isinstance(v, Family), "a Family"),
        ("saves", lambda v: isinstance(v, Saved), "a Saved"),
        ("flat_order", lambda v: isinstance(v, FlatOrder), "a FlatOrder"),
        ("weights", lambda v: isinstance(v, tuple) and all(isinstance(w, Weight) for w in v), "a tuple of Weight"),
        ("paper_kind", lambda v: v is None or isinstance(v, str), "a string or None"),
        ("doc", lambda v: isinstance(v, str) and v.strip() != "", "a non-empty string"),
        *[(f, lambda v: isinstance(v, bool), "True or False") for f in
          ("writable", "torch_module", "overwritable", "commutative", "foldable", "fold_target")],
    ]
    for fact, ok, what in checks:
        if _declared(cls, fact) and not ok(getattr(cls, fact)):
            out.append(f"{fact} is {getattr(cls, fact)!r}, not {what}")
    if _declared(cls, "torch_module") and cls.torch_module is not True:
        out.append("torch_module is False: a plugin op is a module in PyTorch (torch_emit names its class)")
    if _declared(cls, "weights") and isinstance(cls.weights, tuple):
        for w in cls.weights:
            if isinstance(w, Weight) and w.collection != "params":
                out.append(f"weight {w.torch!r} is in {w.collection!r}: a plugin op holds parameters only (API 1)")
            if isinstance(w, Weight) and (w.jax is None or not _identifier(w.jax)):
                out.append(f"weight {w.torch!r} has JAX leaf {w.jax!r}, not an identifier (it is also Flax's attribute)")
    for attr in ("torch_emit", "jax_emit", "flax_emit"):
        if _declared(cls, attr):
            out += _emit_problems(cls, attr)
    if _declared(cls, "fans") and cls.fans is not None:
        out.append("fans are the built-in kernels' (the backends' init schemes); a plugin initialises its own")
    return out


def register(cls: type[Op]) -> type[Op]:
    """Register plugin op class ``cls`` (a decorator). Raises :class:`CnnPluginError` naming every fact that is
    missing or bad, so that nothing half-declared reaches a backend; ``cls`` is then an op like the built-in ones."""
    found = problems(cls)
    if found:
        label = getattr(cls, "name", None) or getattr(cls, "__name__", repr(cls))
        raise CnnPluginError(f"plugin op '{label}' cannot be registered: {'; '.join(found)}", None,
                             "see docs/plugins.md for what an op declares")
    cls.plugin = True
    return _registry.register(cls)


def unregister(name: str) -> None:
    """Remove plugin op ``name`` from the registry (tests, notebooks); built-in ops cannot be removed."""
    _registry.unregister(name)


def plugin_ops() -> list[Op]:
    """The registered plugin ops, by name."""
    return [OPS[n] for n in sorted(OPS) if OPS[n].plugin]


def load_plugin(name: str, span: Span | None = None) -> None:
    """Load a plugin: an installed package's ``cnndsl.ops`` entry point called ``name``, a ``.py`` file, or an
    importable module. This runs the plugin's code; call it only for plugins you trust (the CLI's ``--plugins``).

    An entry point names a module (importing it registers its ops) or a function (called with no arguments).
    """
    before = {op.name for op in plugin_ops()}
    module_name = None
    try:
        points = [ep for ep in metadata.entry_points(group=ENTRY_POINT_GROUP) if ep.name == name]
        if points:
            loaded = points[0].load()
            if callable(loaded) and not isinstance(loaded, type):
                loaded()
        elif name.endswith(".py"):
            path = Path(name).resolve()
            with allow_plugins():
                import_plugin_file(path, span)
            name = str(path)
        elif not _MODULE.fullmatch(name):
            raise CnnPluginError(f"'{name}' is neither an installed cnndsl.ops plugin, a .py file nor a module name",
                                 span, _installed_hint())
        else:
            module_name = import_module(name).__name__
    except CnnDslError:
        raise
    except ModuleNotFoundError as e:
        raise CnnPluginError(f"cannot load plugin '{name}': {e}", span, _installed_hint()) from None
    except Exception as e:  # the plugin's own code failed: say which plugin, keep the cause
        raise CnnPluginError(f"plugin '{name}' failed to load: {type(e).__name__}: {e}", span) from e
    ops = {op.name for op in plugin_ops()} - before
    if not ops and module_name is not None:  # imported before: the ops its module (or a submodule) registered
        ops = {op.name for op in plugin_ops()
               if type(op).__module__ == module_name or type(op).__module__.startswith(module_name + ".")}
    _LOADED[name] = _LOADED.get(name, frozenset()) | frozenset(ops)


def plugin_sources() -> tuple[str, ...]:
    """What a fresh process passes to :func:`load_plugins` to register the plugin ops this one has: the plugins
    :func:`load_plugin` loaded here whose ops are still registered, in order, then the file (``use "x.py"``) or module (a plain import) of every
    other plugin op. An op defined in ``__main__`` has no source a fresh process can load.

    A worker process that the parent starts fresh (``train --nproc``, ``search --workers``: spawned, not forked)
    loads these before it builds a model; the parent has run each of them already, so nothing new runs."""
    registered = {op.name for op in plugin_ops()}
    out = [source for source, ops in _LOADED.items() if ops & registered]  # not those whose ops are unregistered
    for op in plugin_ops():
        module = sys.modules.get(type(op).__module__)
        if module is None or module.__name__ == "__main__":
            continue
        source = getattr(module, "__file__", None) if module.__name__.startswith(_FILE_MODULE) else module.__name__
        if source and source not in out:
            out.append(source)
    return tuple(out)


def load_plugins(sources: Iterable[str], needed: Iterable[str] = ()) -> None:
    """Load the plugins ``sources`` names (:func:`plugin_sources` of the process that starts this one) unless
    loaded already, then check that the ops ``needed`` are registered: a :class:`CnnPluginError` names those that
    are not (an op registered from ``__main__``, or in a function no import runs)."""
    for source in sources:
        if source in _LOADED or source in sys.modules:
            continue
        load_plugin(source)
    missing = [name for name in needed if lookup(name) is None]
    if missing:
        raise CnnPluginError(f"plugin op{'s' if len(missing) > 1 else ''} {', '.join(map(repr, missing))} cannot "
                             "be loaded in a worker process", None,
                             "register it at the top level of a plugin module or .py file (--plugins NAME), "
                             "which a worker process can load again")


def installed_plugins() -> list[tuple[str, str]]:
    """The installed packages' ``cnndsl.ops`` entry points as ``(name, distribution)``, by name, read from their
    metadata: none is imported (``--plugins NAME`` loads one)."""
    found: dict[str, str] = {}
    for ep in metadata.entry_points(group=ENTRY_POINT_GROUP):
        dist = getattr(ep, "dist", None)
        found.setdefault(ep.name, dist.metadata["Name"] if dist is not None else ep.value.split(":")[0])
    return sorted(found.items())


def _installed_hint() -> str:
    names = [name for name, _ in installed_plugins()]
    return f"installed plugins: {', '.join(names)}" if names else "no package installs a cnndsl.ops entry point"
