"""Regularised evolution against random search, on a fixed budget of trials, over seeds.

The problem is the one of ``tests/test_search_strategies.py``: a space of twelve layer decisions (one of
conv3, conv1, conv3+conv1, a 3x3 max pool, a skip; six at 8x8 and six at 4x4 after a pool; 5^12 members),
scored exactly from the IR with no training: a member's parameters when its MACs are at most 400,000,
else its excess MACs / 100, negative. The optimum is found by brute force over each half and a merge.

For each budget it prints, for both samplers, the mean (and standard deviation) over the seeds of the best
score found within that many trials, as a fraction of the optimum, and on how many seeds evolution found
more than random search with the same seed (evolution's initial population is Optuna's random sampler
with that seed, so the two runs share their first POPULATION trials). Optuna runs each sampler directly, on an
in-memory study: the search's own training loop is not involved.

    python benchmarks/search_strategies.py [SEEDS] [POPULATION] [TOURNAMENT]
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from pathlib import Path

import optuna

from cnndsl.search.evolution import RegularizedEvolutionSampler
from cnndsl.search.variants import Space

OP = "choice< conv3-16 relu | conv1-16 relu | conv3-16 relu conv1-16 relu | maxpool3/1(p=1) | skip >"
LAYERS = 6
SPACE = ("network stack(classes=10): input 1x8x8\n    conv3-16 relu\n" + f"    {OP}\n" * LAYERS
         + "    maxpool\n" + f"    {OP}\n" * LAYERS + "    gap fc-{classes}\n")
CAP = 400_000
BUDGETS = (25, 50, 100, 200, 400)


def score(params: int, macs: int) -> float:
    return params if macs <= CAP else (CAP - macs) / 100


class Problem:
    """The space and each decision's (params, MACs) per option, read from the IR one decision at a time
    (the figures add up: every decision keeps 16 channels and its resolution)."""

    def __init__(self, space: Space):
        self.space = space
        self.keys = sorted(space.points, key=lambda k: tuple(int(x) for x in k.split(":")[1:]))
        base = {k: 4 for k in self.keys}  # every decision a skip
        empty = space.member(base)
        self.base = (empty.params, empty.macs)
        self.cost = {}
        for k in self.keys:
            for o in range(len(space.points[k].options)):
                m = space.member({**base, k: o})
                self.cost[k, o] = (m.params - empty.params, m.macs - empty.macs)

    def figures(self, options: dict[str, int]) -> tuple[int, int]:
        p, m = self.base
        for k, o in options.items():
            p, m = p + self.cost[k, o][0], m + self.cost[k, o][1]
        return p, m

    def objective(self, trial) -> float:
        options = {}
        for k in self.keys:
            labels = self.space.points[k].options
            options[k] = labels.index(trial.suggest_categorical(k, labels))
        return score(*self.figures(options))

    def optimum(self) -> float:
        halves = []
        for keys in (self.keys[:LAYERS], self.keys[LAYERS:]):
            best: dict[int, int] = {}
            for combo in range(5 ** LAYERS):
                options = {}
                for k in keys:
                    options[k], combo = combo % 5, combo // 5
                p = sum(self.cost[k, o][0] for k, o in options.items())
                m = sum(self.cost[k, o][1] for k, o in options.items())
                best[m] = max(best.get(m, 0), p)
            halves.append(sorted(best.items()))
        top, running = [], 0
        for _, p in halves[1]:
            running = max(running, p)
            top.append(running)
        result = float("-inf")
        for m1, p1 in halves[0]:
            room = CAP - self.base[1] - m1
            i = sum(1 for m, _ in halves[1] if m <= room)  # (small lists: no bisection needed)
            if i:
                result = max(result, self.base[0] + p1 + top[i - 1])
        return result


def run(problem: Problem, make_sampler, seeds: int) -> dict[int, list[float]]:
    found: dict[int, list[float]] = {b: [] for b in BUDGETS}
    for seed in range(seeds):
        study = optuna.create_study(direction="maximize", sampler=make_sampler(seed))
        study.optimize(problem.objective, n_trials=max(BUDGETS))
        values = [t.value for t in study.trials]
        for b in BUDGETS:
            found[b].append(max(values[:b]))
    return found


def main(seeds: int = 20, population: int = 20, tournament: int = 5) -> None:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "stack.cnn"
        path.write_text(SPACE)
        problem = Problem(Space.open(str(path)))
    optimum = problem.optimum()
    start = time.perf_counter()
    evolution = run(problem, lambda s: RegularizedEvolutionSampler(problem.space, population, tournament, seed=s),
                    seeds)
    rand = run(problem, lambda s: optuna.samplers.RandomSampler(seed=s), seeds)
    seconds = time.perf_counter() - start
    print(f"params under a {CAP:,}-MAC cap, 5^12 members, optimum {optimum:,.0f} params; {seeds} seeds "
          f"(0..{seeds - 1}); evolution: population {population}, tournament {tournament}; {seconds:.0f} s")
    print()
    print("| trials | random search | regularised evolution | evolution ahead on |")
    print("|---:|---:|---:|---:|")
    for b in BUDGETS:
        r = [v / optimum for v in rand[b]]
        e = [v / optimum for v in evolution[b]]
        wins = sum(x > y for x, y in zip(evolution[b], rand[b]))
        ties = sum(x == y for x, y in zip(evolution[b], rand[b]))
        print(f"| {b} | {statistics.mean(r):.3f} ± {statistics.stdev(r):.3f} | "
              f"{statistics.mean(e):.3f} ± {statistics.stdev(e):.3f} | {wins} of {seeds} seeds"
              + (f" ({ties} tied)" if ties else "") + " |")


if __name__ == "__main__":
    main(*(int(a) for a in sys.argv[1:4]))
