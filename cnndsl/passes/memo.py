"""The resolve memo: block instances resolved, shape-inferred and counted once, then shared.

A block instance is a function of its block, its arguments' values, the per-op defaults in force, its
input shape, the size limits, where it sits (nesting depth, whether it ends the network or an activation
follows it) and the choices it reaches. ``resolve`` looks an instance up here by all of that but the
choices (``cnndsl.passes.resolve._fragment_key``); under a key, the fragments sit at the leaves of a tree of
the choices their builds asked, so a lookup asks the build's ``choose`` hook the same questions, in the same
order, as a build would (:class:`Store`).

An entry is a :class:`cnndsl.ir.graph.Fragment`: the instance's layers, already through every pass that
works per layer (shapes, shortcuts, counts), named relative to the instance. A repeated instance mounts
it (:meth:`cnndsl.ir.graph.Graph.mount`) instead of building it again; the flat graph is expanded from
the mounts when something asks for it. Nothing here changes a result: ``set_memo(False)`` builds every
instance flat, and tests/test_memo.py checks that both builds agree layer for layer and byte for byte.

The memo keeps at most :data:`MAX_FRAGMENTS` fragments for each library (the oldest go first), so a long
search holds a bounded number.
"""

from __future__ import annotations

import os
import weakref
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

from cnndsl.ir.graph import Fragment

MAX_FRAGMENTS = 5_000

_enabled = os.environ.get("CNNDSL_NO_MEMO", "") in ("", "0")
_stats = {"hits": 0, "misses": 0, "filled": 0, "inlined": 0, "replayed": 0}
_stores: dict[int, Store] = {}  # id of a library -> its store, dropped with the library (libraries are unhashable)


def set_memo(enabled: bool) -> bool:
    """Turn the memo on or off (off: every block instance is built flat); returns the previous setting."""
    global _enabled
    previous, _enabled = _enabled, bool(enabled)
    return previous


def enabled() -> bool:
    return _enabled


def clear_memo() -> None:
    """Forget every fragment (and reset the counters)."""
    _stores.clear()
    for k in _stats:
        _stats[k] = 0


def memo_stats() -> dict[str, int]:
    """Counters since the last :func:`clear_memo`: ``hits`` (instances mounted from a fragment), ``misses``
    (fragments built), ``filled`` (fragments filled in from a template: :mod:`cnndsl.passes.template`),
    ``inlined`` (instances built flat: not shareable, e.g. an aux head or a ``none`` flow inside, or over a
    limit), ``replayed`` (networks whose top level was made from an earlier build's skeleton:
    :class:`cnndsl.passes.template.Skeleton`) and ``fragments`` (kept now)."""
    return {**_stats, "fragments": sum(len(s) for s in _stores.values())}


def count(what: str) -> None:
    _stats[what] += 1


class _Ask:
    """A node of a key's decision tree: the choice the build asks next, and where each decision leads."""

    __slots__ = ("choice", "then")

    def __init__(self, choice) -> None:
        self.choice = choice
        self.then: dict[Any, _Ask | Fragment] = {}


class Store:
    """One library's fragments: key -> a tree of the choices their builds asked, the fragments at its leaves.

    A build asks its choices in an order that depends only on the key and the decisions before, so the tree
    asks each once: a lookup costs one question a choice, however many fragments share the key.
    """

    def __init__(self) -> None:
        self.entries: OrderedDict[tuple, _Ask | Fragment] = OrderedDict()
        self.size = 0
        self._sizes: dict[tuple, int] = {}
        self._shared: dict[str, Any] = {}

    def shared(self, name: str, make: Callable[..., Any], *args) -> Any:
        """An object the library's builds share (``make(*args)`` the first time): resolve's sizer, bindings."""
        found = self._shared.get(name)
        if found is None:
            found = self._shared[name] = make(*args)
        return found

    def __len__(self) -> int:
        return self.size

    def find(self, key: tuple, decide: Callable[[Any], Any]) -> Fragment | None:
        """The fragment under ``key`` whose choices ``decide`` decides alike, asked in the order a build asks."""
        node = self.entries.get(key)
        while isinstance(node, _Ask):
            node = node.then.get(decide(node.choice))
        return node

    def add(self, key: tuple, frag: Fragment) -> None:
        if not frag.decisions:
            if key in self.entries:
                return
            self.entries[key] = frag
        else:
            root = self.entries.get(key)
            if root is None:
                root = self.entries[key] = _Ask(frag.decisions[0][0])
            if not isinstance(root, _Ask):
                return
            node = root
            for i, (_, decision) in enumerate(frag.decisions):
                nxt = node.then.get(decision)
                if i + 1 == len(frag.decisions):
                    if nxt is not None:
                        return
                    node.then[decision] = frag
                    break
                if nxt is None:
                    nxt = node.then[decision] = _Ask(frag.decisions[i + 1][0])
                if not isinstance(nxt, _Ask):
                    return
                node = nxt
        self._sizes[key] = self._sizes.get(key, 0) + 1
        self.size += 1
        while self.size > MAX_FRAGMENTS:
            old, _ = self.entries.popitem(last=False)
            self.size -= self._sizes.pop(old, 0)


def store(library) -> Store:
    """The store of ``library``'s fragments (made on first use, forgotten when the library is)."""
    key = id(library)
    found = _stores.get(key)
    if found is None:
        found = _stores[key] = Store()
        if key not in _watched:  # one finalizer a library: a store made again after clear_memo reuses it
            _watched[key] = weakref.finalize(library, _forget, key)
    return found


_watched: dict[int, weakref.finalize] = {}  # id of a library -> the finalizer that drops its store


def _forget(key: int) -> None:
    _stores.pop(key, None)
    _watched.pop(key, None)
