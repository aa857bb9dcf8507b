"""The compiler's passes, each a function over the IR in its own module.

``resolve`` lowers the parsed file to a graph; :data:`PIPELINE` then runs, in
order, the analysis and rewriting passes over it. ``infer_shapes`` and ``count``
refuse a network over its :class:`~cnndsl.passes.limits.SizeLimits` at the first
layer that crosses one, before any backend allocates anything.
"""

from __future__ import annotations

from .check import check
from .count import count
from .fold_bn import fold_bn
from .infer_shapes import infer_shapes
from .limits import SizeLimits
from .resolve import resolve
from .resolve_shortcuts import resolve_shortcuts
from .strip_training import strip_training

#: Passes run after ``resolve``, in order; each takes the graph, a warnings list and the size limits (None: not
#: checked).
PIPELINE = (
    ("infer_shapes", infer_shapes),
    ("resolve_shortcuts", resolve_shortcuts),
    ("infer_shapes", infer_shapes),
    ("count", count),
    ("check", check),
)

__all__ = ["PIPELINE", "SizeLimits", "check", "count", "fold_bn", "infer_shapes", "resolve", "resolve_shortcuts",
           "strip_training"]
