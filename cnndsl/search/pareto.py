"""Pareto dominance over several objectives: the front a multi-objective search writes, and the ranking that
regularised evolution's tournament uses.

Every point is a tuple of objective values with a direction each (``"maximize"`` or ``"minimize"``). A point
*dominates* another when it is at least as good in every objective and strictly better in one; two equal
points do not dominate each other. The *first front* of a set is its non-dominated points; non-dominated
sorting peels fronts off in turn (the first front, then the first front of what is left, ...), so a point's
rank is the number of the front it is in, counting from 0.

>>> dominates((0.9, 100), (0.8, 100), ("maximize", "minimize"))
True
>>> front([(0.9, 500), (0.8, 100), (0.7, 300), (0.9, 500)], ("maximize", "minimize"))
[0, 1, 3]
>>> ranks([(0.9, 500), (0.8, 100), (0.7, 300)], ("maximize", "minimize"))
[0, 0, 1]
"""

from __future__ import annotations

from collections.abc import Sequence

from cnndsl.errors import CnnDslError

DIRECTIONS = ("maximize", "minimize")


def _minimised(point: Sequence[float], directions: Sequence[str]) -> tuple[float, ...]:
    """The point with every objective turned into one to minimise."""
    if len(point) != len(directions):
        raise CnnDslError(f"a point of {len(point)} values for {len(directions)} objectives", None)
    return tuple(-v if d == "maximize" else v for v, d in zip(point, directions))


def dominates(a: Sequence[float], b: Sequence[float], directions: Sequence[str]) -> bool:
    """Whether ``a`` is at least as good as ``b`` in every objective and strictly better in one."""
    x, y = _minimised(a, directions), _minimised(b, directions)
    return all(p <= q for p, q in zip(x, y)) and any(p < q for p, q in zip(x, y))


def ranks(points: Sequence[Sequence[float]], directions: Sequence[str]) -> list[int]:
    """Each point's front by non-dominated sorting (0: not dominated by any point of ``points``).

    Quadratic in the number of points, which is at most a study's trials (or a tournament's size here).
    """
    for d in directions:
        if d not in DIRECTIONS:
            raise CnnDslError(f"unknown direction {d!r}", None, "use maximize or minimize")
    flat = [_minimised(p, directions) for p in points]
    dominated_by = [0] * len(flat)  # how many points dominate each point
    beats: list[list[int]] = [[] for _ in flat]  # the points each point dominates
    for i, x in enumerate(flat):
        for j, y in enumerate(flat):
            if i != j and all(p <= q for p, q in zip(x, y)) and any(p < q for p, q in zip(x, y)):
                beats[i].append(j)
                dominated_by[j] += 1
    rank = [-1] * len(flat)
    current = [i for i, n in enumerate(dominated_by) if n == 0]
    level = 0
    while current:
        following = []
        for i in current:
            rank[i] = level
            for j in beats[i]:
                dominated_by[j] -= 1
                if dominated_by[j] == 0:
                    following.append(j)
        current, level = sorted(following), level + 1
    return rank


def front(points: Sequence[Sequence[float]], directions: Sequence[str]) -> list[int]:
    """The indices of the non-dominated points, in their order in ``points`` (equal points are all kept)."""
    return [i for i, r in enumerate(ranks(points, directions)) if r == 0]
