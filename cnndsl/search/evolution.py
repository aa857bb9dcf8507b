"""Regularised evolution (Real et al., "Regularized Evolution for Image Classifier Architecture Search",
AAAI 2019) over a space's members, as an Optuna sampler.

The sampler keeps no state of its own between trials: it reads the study, so a study in a storage shared by
several workers (each with its own sampler) evolves one population. For each new trial:

1. The *population* is the ``population`` most recent finished trials (complete or pruned, by trial number:
   the order they were born in); older ones have left it. Failed trials carry no result and are not in it.
2. While fewer trials than that have finished, the trial is a random member: every reached choice drawn
   uniformly (Optuna's :class:`~optuna.samplers.RandomSampler`), which makes the initial population.
3. Otherwise ``tournament`` trials are drawn from the population at random (without replacement) and the
   best of them is the *parent*: with one objective the best value; with several, the tournament's
   first front by non-dominated sorting (:mod:`cnndsl.search.pareto`) over the study's directions. A complete
   trial beats every pruned one (those over a limit, invalid ones, those the pruner stopped). Ties, and a
   front of several trials, are broken uniformly at random.
4. The *child* is the parent with exactly one reachable choice changed, uniformly among the moves
   ``cnndsl variants --mutate`` draws from (:meth:`cnndsl.search.variants.Space.mutation`): each one-choice
   neighbour, and each reached float range's value redrawn from its law. A choice that the change makes
   reachable takes its first option (a float range newly reached: a value drawn from its law).

The trial's ``system_attrs`` record ``cnndsl:parent`` (the parent's trial number; absent for a random
member). Parameters the space does not know (a user's own ``suggest_float``, say) are sampled at random.

>>> import optuna                                                        # doctest: +SKIP
>>> space = Space.open("nb201", input_shape=(1, 8, 8))                  # doctest: +SKIP
>>> study = optuna.create_study(sampler=RegularizedEvolutionSampler(space, 20, 5, seed=0))  # doctest: +SKIP
"""

from __future__ import annotations

import random
from typing import Any

from optuna.distributions import CategoricalDistribution, FloatDistribution
from optuna.samplers import BaseSampler, RandomSampler
from optuna.trial import FrozenTrial, TrialState

from cnndsl.errors import CnnDslError
from cnndsl.search.pareto import ranks
from cnndsl.search.variants import Space

PARENT_ATTR = "cnndsl:parent"


def check_sizes(population: int, tournament: int) -> None:
    """Refuse a population or tournament that cannot work, with a hint."""
    if population < 2:
        raise CnnDslError(f"a population of {population}", None, "give --population N with N at least 2")
    if not 1 <= tournament <= population:
        raise CnnDslError(f"a tournament of {tournament} from a population of {population}", None,
                          "give --tournament S with 1 <= S <= the population")


class RegularizedEvolutionSampler(BaseSampler):
    """Regularised evolution over ``space``'s members (see the module's description): a population of the
    ``population`` most recent finished trials, a tournament of ``tournament`` of them picks the parent, the
    child changes one reachable choice, the oldest trial leaves the population."""

    def __init__(self, space: Space, population: int, tournament: int,
                 seed: int | None = None):
        check_sizes(population, tournament)
        self.space = space
        self.population = population
        self.tournament = tournament
        self._rng = random.Random(seed)
        self._random = RandomSampler(seed=seed)
        self._children: dict[int, dict[str, int | float]] = {}  # planned members, by trial id (this process's trials)

    def reseed_rng(self) -> None:
        self._rng = random.Random()
        self._random.reseed_rng()

    def infer_relative_search_space(self, study, trial) -> dict[str, Any]:
        return {}  # the members' choices are conditional: each is sampled when the member reaches it

    def sample_relative(self, study, trial, search_space) -> dict[str, Any]:
        return {}

    # -- the population and the tournament
    def _finished(self, study) -> list[FrozenTrial]:
        done = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED))
        return sorted(done, key=lambda t: t.number)[-self.population:]

    def parent(self, study, population: list[FrozenTrial]) -> FrozenTrial:
        """The winner of a tournament drawn from ``population``."""
        drawn = self._rng.sample(population, self.tournament)
        complete = [t for t in drawn if t.state == TrialState.COMPLETE and t.values is not None]
        if not complete:  # only pruned trials were drawn: any of them
            return self._rng.choice(drawn)
        directions = [d.name.lower() for d in study.directions]
        rank = ranks([t.values for t in complete], directions)
        best = [t for t, r in zip(complete, rank) if r == 0]
        return self._rng.choice(best)

    def _choices(self, trial: FrozenTrial) -> dict[str, int | float]:
        """A trial's member by choice point: option indices from its categorical parameters, and the values of
        its float ranges."""
        out: dict[str, int | float] = {}
        for key, value in trial.params.items():
            dist = trial.distributions.get(key)
            if key in self.space.points and isinstance(dist, CategoricalDistribution):
                out[key] = dist.choices.index(value)
            elif key in self.space.points and isinstance(dist, FloatDistribution):
                out[key] = float(value)
        return out

    def child(self, parent: FrozenTrial) -> dict[str, int | float]:
        """The parent's member with one reachable choice changed: uniformly among its one-choice neighbours and
        a redraw of each reached float range (:meth:`Space.mutation`, the moves of ``variants --mutate``)."""
        return self.space.mutation(self._choices(parent), self._rng)

    # -- Optuna's hooks
    def before_trial(self, study, trial: FrozenTrial) -> None:
        if "fixed_params" in trial.system_attrs:  # an enqueued trial (a retry): its member is given
            return
        population = self._finished(study)
        if len(population) < self.population:
            return
        parent = self.parent(study, population)
        self._children[trial._trial_id] = self.child(parent)
        study._storage.set_trial_system_attr(trial._trial_id, PARENT_ATTR, parent.number)

    def sample_independent(self, study, trial: FrozenTrial, param_name: str, param_distribution) -> Any:
        child = self._children.get(trial._trial_id)
        if child is not None and isinstance(param_distribution, FloatDistribution) and param_name in child:
            return child[param_name]  # a float range: the parent's value, or the one redrawn for the child
        if child is None or not isinstance(param_distribution, CategoricalDistribution) \
                or param_name not in self.space.points:
            return self._random.sample_independent(study, trial, param_name, param_distribution)
        index = child.get(param_name, 0)  # newly reachable: its first option, as Space.mutate gives it
        return param_distribution.choices[index if index < len(param_distribution.choices) else 0]

    def after_trial(self, study, trial: FrozenTrial, state, values) -> None:
        self._children.pop(trial._trial_id, None)
