"""The compiler's passes, each a function over the IR in its own module.

``resolve`` lowers the parsed file to a graph; :data:`PIPELINE` then runs, in
order, the analysis and rewriting passes over it. ``infer_shapes`` and ``count``
refuse a network over its :class:`~cnndsl.passes.limits.SizeLimits` at the first
layer that crosses one, before any backend allocates anything.
"""

from __future__ import annotations

from cnndsl.passes.check import check, check_training
from cnndsl.passes.count import count
from cnndsl.passes.fold_bn import fold_bn
from cnndsl.passes.infer_shapes import infer_shapes
from cnndsl.passes.limits import SizeLimits
from cnndsl.passes.resolve import resolve
from cnndsl.passes.resolve_shortcuts import resolve_shortcuts
from cnndsl.passes.strip_training import drop_unfit_training, strip_training

#: Passes run after ``resolve``, in order; each takes the graph, a warnings list and the size limits (None: not
#: checked).
PIPELINE = (
    ("infer_shapes", infer_shapes),
    ("drop_unfit_training", drop_unfit_training),  # aux heads too big for the input: left out, with a warning
    ("resolve_shortcuts", resolve_shortcuts),
    ("infer_shapes", infer_shapes),
    ("count", count),
    ("check", check),
)

__all__ = ["PIPELINE", "SizeLimits", "check", "check_training", "count", "drop_unfit_training", "fold_bn",
           "infer_shapes", "resolve", "resolve_shortcuts", "strip_training"]
