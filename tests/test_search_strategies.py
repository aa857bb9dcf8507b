"""Search strategies: regularised evolution against random search, multi-objective studies and their Pareto
fronts, the objectives, pruners and samplers of ``cnndsl search``, and their mistakes.

The evolution-against-random comparison runs the samplers through Optuna directly on an objective this file
computes exactly from the choices (parameters under a MACs cap, from the layer formulas; checked against the
IR), with no training.
"""

from __future__ import annotations

import csv
import json
import math
import random
import statistics

import pytest
from test_search import TINY, read_rows

import cnndsl
from cnndsl.search.pareto import dominates, front, ranks
from cnndsl.search.variants import Space
from cnndsl.tools.cli import main

optuna = pytest.importorskip("optuna")
pytest.importorskip("torch")
pytest.importorskip("sklearn")
from cnndsl.search.evolution import PARENT_ATTR, RegularizedEvolutionSampler  # (needs optuna)

optuna.logging.set_verbosity(optuna.logging.WARNING)

# ----------------------------------------------------------------------------- a knapsack of layers

# Twelve decisions: a layer kind at 8x8 (six) and at 4x4 after a pool (six), widths fixed at 16. Parameters
# and MACs add up layer by layer, and a layer after the pool costs a quarter of the MACs for the same
# parameters: the best member under a MACs cap is a knapsack solution that random draws rarely hit.
OP = "choice< conv3-16 relu | conv1-16 relu | conv3-16 relu conv1-16 relu | maxpool3/1(p=1) | skip >"
LAYERS = 6
KNAPSACK = ("network stack(classes=10): input 1x8x8\n    conv3-16 relu\n" + f"    {OP}\n" * LAYERS
            + "    maxpool\n" + f"    {OP}\n" * LAYERS + "    gap fc-{classes}\n")
CAP = 400_000


def layer_cost(option: int, hw: int) -> tuple[int, int]:
    """(params, MACs) of one decision's option at a resolution of ``hw`` positions: a kxk conv from 16 to 16
    channels has 16*16*k*k weights and 16 biases, and 16*16*k*k MACs per position; pools and skips none."""
    conv3, conv1 = (16 * 16 * 9 + 16, 16 * 16 * 9 * hw), (16 * 16 + 16, 16 * 16 * hw)
    return [conv3, conv1, (conv3[0] + conv1[0], conv3[1] + conv1[1]), (0, 0), (0, 0)][option]


def knapsack_figures(options: list[int]) -> tuple[int, int]:
    """A member's (params, MACs): the stem conv3-16 on one channel (8x8), the layers, gap and fc-10."""
    params, macs = 9 * 16 + 16, 9 * 16 * 64
    for i, o in enumerate(options):
        p, m = layer_cost(o, 64 if i < LAYERS else 16)
        params, macs = params + p, macs + m
    return params + 16 * 10 + 10, macs + 16 * 10


def knapsack_score(options: list[int]) -> float:
    """Parameters under the MACs cap; a member over it scores its excess, negative, so it still ranks."""
    params, macs = knapsack_figures(options)
    return params if macs <= CAP else (CAP - macs) / 100


def knapsack_optimum() -> int:
    """The best score, by brute force over each half (5^6 members) and a sorted merge of the two."""
    halves = []
    for hw in (64, 16):
        costs = {}
        for combo in range(5 ** LAYERS):
            p = m = 0
            for _ in range(LAYERS):
                pp, mm = layer_cost(combo % 5, hw)
                p, m, combo = p + pp, m + mm, combo // 5
            costs[m] = max(costs.get(m, 0), p)
        halves.append(sorted(costs.items()))
    fixed_p, fixed_m = knapsack_figures([3] * (2 * LAYERS))  # pools add nothing: the stem, gap and fc
    after = halves[1]
    best_after, running = [], 0
    for _, p in after:
        running = max(running, p)
        best_after.append(running)
    best = 0
    for m1, p1 in halves[0]:
        room = CAP - fixed_m - m1
        lo, hi = 0, len(after)
        while lo < hi:
            mid = (lo + hi) // 2
            lo, hi = (mid + 1, hi) if after[mid][0] <= room else (lo, mid)
        if lo:
            best = max(best, fixed_p + p1 + best_after[lo - 1])
    return best


@pytest.fixture(scope="module")
def knapsack(tmp_path_factory):
    path = tmp_path_factory.mktemp("knapsack") / "stack.cnn"
    path.write_text(KNAPSACK)
    space = Space.open(str(path))
    keys = sorted(space.points, key=lambda k: tuple(int(x) for x in k.split(":")[1:]))
    assert len(keys) == 2 * LAYERS
    return space, keys


def knapsack_objective(space, keys):
    def objective(trial):
        options = []
        for k in keys:
            labels = space.points[k].options
            options.append(labels.index(trial.suggest_categorical(k, labels)))
        return knapsack_score(options)
    return objective


def test_the_knapsack_figures_are_the_irs(knapsack):
    space, keys = knapsack
    rng = random.Random(0)
    for _ in range(12):
        options = [rng.randrange(5) for _ in keys]
        member = space.member(dict(zip(keys, options)))
        assert (member.params, member.macs) == knapsack_figures(options)


def best_found(make_sampler, space, keys, budgets, seeds) -> dict[int, list[float]]:
    """For each budget, the best score each seed's run had found after that many trials."""
    found: dict[int, list[float]] = {b: [] for b in budgets}
    for seed in seeds:
        study = optuna.create_study(direction="maximize", sampler=make_sampler(seed))
        study.optimize(knapsack_objective(space, keys), n_trials=max(budgets))
        values = [t.value for t in study.trials]
        for b in budgets:
            found[b].append(max(values[:b]))
    return found


def compare(space, keys, budgets, seeds):
    evolution = best_found(lambda s: RegularizedEvolutionSampler(space, 20, 5, seed=s), space, keys, budgets, seeds)
    rand = best_found(lambda s: optuna.samplers.RandomSampler(seed=s), space, keys, budgets, seeds)
    return evolution, rand


def test_regularised_evolution_beats_random_search_on_a_fixed_budget(knapsack):
    space, keys = knapsack
    optimum = knapsack_optimum()
    evolution, rand = compare(space, keys, [150], range(8))
    assert max(evolution[150] + rand[150]) <= optimum  # nothing beats the brute-force optimum
    assert statistics.mean(evolution[150]) > statistics.mean(rand[150])
    assert sum(e > r for e, r in zip(evolution[150], rand[150])) >= 5  # and on most seeds, run for run


@pytest.mark.slow
def test_regularised_evolution_beats_random_search_over_many_seeds(knapsack):
    space, keys = knapsack
    evolution, rand = compare(space, keys, [100, 200, 400], range(30))
    for budget in (100, 200, 400):
        assert statistics.mean(evolution[budget]) > statistics.mean(rand[budget])
    assert sum(e > r for e, r in zip(evolution[400], rand[400])) >= 20


# ----------------------------------------------------------------------------- the sampler's rules


def differing(a: dict, b: dict) -> set:
    return {k for k in a.keys() | b.keys() if a.get(k) != b.get(k)}


def test_each_child_is_its_parent_with_one_choice_changed_and_the_parent_a_recent_trial(knapsack):
    space, keys = knapsack
    population = 6
    study = optuna.create_study(direction="maximize",
                                sampler=RegularizedEvolutionSampler(space, population, 3, seed=1))
    study.optimize(knapsack_objective(space, keys), n_trials=40)
    for t in study.trials:
        parent = t.system_attrs.get(PARENT_ATTR)
        if t.number < population:  # the random initial population
            assert parent is None
            continue
        assert t.number - population <= parent < t.number  # one of the `population` most recent trials
        assert len(differing(t.params, study.trials[parent].params)) == 1


FLOAT_SPACE = """network f(w={8|16|24}) with conv(bias=false): input 1x8x8
    conv3-{w} bn relu dropout({0.1..0.5}) conv3-{16|32} gap fc-10
"""


def test_a_child_in_a_space_with_a_float_range_changes_one_choice_or_redraws_the_range(tmp_path):
    """Evolution mutates a float range as `variants --mutate` does (one more move: the value redrawn), and a
    child keeps its parent's value otherwise: never an independent redraw of every float."""
    path = tmp_path / "f.cnn"
    path.write_text(FLOAT_SPACE, encoding="utf-8")
    space = Space.open(str(path))
    (rate,) = [k for k, p in space.points.items() if p.continuous]

    def objective(trial):  # any score of the member: the test looks only at parents and children
        member = space.suggest(trial)
        return float(member.network_obj.params) * member.choices[rate]

    population = 6
    study = optuna.create_study(direction="maximize",
                                sampler=RegularizedEvolutionSampler(space, population, 3, seed=4))
    study.optimize(objective, n_trials=60)
    redrawn = changed = 0
    for t in study.trials[population:]:
        parent = study.trials[t.system_attrs[PARENT_ATTR]]
        diff = differing(t.params, parent.params)
        assert len(diff) == 1, (t.params, parent.params)
        assert 0.1 <= t.params[rate] <= 0.5
        redrawn += diff == {rate}
        changed += diff != {rate}
    assert redrawn and changed  # both kinds of move happen (3 moves in 5 are categorical ones)


def test_a_tournament_of_the_whole_population_picks_its_best(knapsack):
    # with the tournament as large as the population, the parent is the best of the last P trials
    space, keys = knapsack
    population = 5
    study = optuna.create_study(direction="maximize",
                                sampler=RegularizedEvolutionSampler(space, population, population, seed=2))
    study.optimize(knapsack_objective(space, keys), n_trials=30)
    for t in study.trials[population:]:
        window = study.trials[t.number - population:t.number]
        assert study.trials[t.system_attrs[PARENT_ATTR]].value == max(w.value for w in window)


def test_with_several_objectives_the_parent_is_on_its_tournaments_first_front(knapsack):
    space, keys = knapsack
    population = 6

    def objective(trial):
        options = [space.points[k].options.index(trial.suggest_categorical(k, space.points[k].options)) for k in keys]
        params, macs = knapsack_figures(options)
        return params, macs

    study = optuna.create_study(directions=["maximize", "minimize"],
                                sampler=RegularizedEvolutionSampler(space, population, population, seed=3))
    study.optimize(objective, n_trials=30)
    for t in study.trials[population:]:
        window = study.trials[t.number - population:t.number]
        parent = study.trials[t.system_attrs[PARENT_ATTR]]
        # an independent check: no trial of the window has at least its params and at most its MACs, one strictly
        assert not any(w.values[0] >= parent.values[0] and w.values[1] <= parent.values[1]
                       and tuple(w.values) != tuple(parent.values) for w in window)


def test_the_same_seed_evolves_the_same_trials(knapsack):
    space, keys = knapsack
    runs = []
    for _ in range(2):
        study = optuna.create_study(direction="maximize", sampler=RegularizedEvolutionSampler(space, 5, 2, seed=7))
        study.optimize(knapsack_objective(space, keys), n_trials=20)
        runs.append([t.params for t in study.trials])
    assert runs[0] == runs[1]


# ----------------------------------------------------------------------------- dominance


def test_the_front_and_ranks_agree_with_optuna_and_with_brute_force():
    rng = random.Random(5)
    directions = ("maximize", "minimize", "minimize")
    for _ in range(20):
        points = [(rng.randrange(6) / 5, rng.randrange(8), rng.randrange(4)) for _ in range(rng.randrange(1, 25))]
        # brute force: a point is on the front when no point is at least as good everywhere and better somewhere
        def beaten(p, q):
            return q[0] >= p[0] and q[1] <= p[1] and q[2] <= p[2] and q != p
        expected = [i for i, p in enumerate(points) if not any(beaten(p, q) for q in points)]
        assert front(points, directions) == expected
        study = optuna.create_study(directions=list(directions))
        for p in points:
            study.add_trial(optuna.trial.create_trial(values=list(p)))
        assert sorted(t.number for t in study.best_trials) == expected  # optuna's own front
        r = ranks(points, directions)  # every point of front k is dominated by one of front k-1
        for i, p in enumerate(points):
            if r[i] > 0:
                assert any(r[j] == r[i] - 1 and dominates(points[j], p, directions) for j in range(len(points)))
            assert not any(r[j] == r[i] and dominates(points[j], p, directions) for j in range(len(points)))


# ----------------------------------------------------------------------------- cnndsl search


@pytest.fixture
def tiny(tmp_path):
    path = tmp_path / "tiny.cnn"
    path.write_text(TINY)
    return str(path)


def number(cell: str) -> float | None:
    return float(cell) if cell != "" else None


def test_evolution_on_accuracy_and_params_writes_a_front_no_finished_trial_dominates(tiny, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["search", tiny, "--sampler", "evolution", "--population", "3", "--tournament", "2", "--objectives",
                 "accuracy,params", "--trials", "7", "--epochs", "1", "--out", str(out), "--seed", "0"]) == 0
    printed = capsys.readouterr().out
    assert "Pareto front (accuracy, params)" in printed and "pareto.png" in printed
    results = read_rows(out / "results.csv")
    finished = [(number(r["accuracy"]), int(r["params"])) for r in results if r["state"] == "complete"]
    with open(out / "pareto.csv", newline="") as f:
        pareto = list(csv.DictReader(f))
    assert pareto
    for row in pareto:
        point = (float(row["accuracy"]), int(row["params"]))
        # independent dominance check over results.csv: higher accuracy is better, fewer parameters are
        assert not any(a >= point[0] and p <= point[1] and (a, p) != point for a, p in finished)
        member = cnndsl.load(str(out / row["source"]))  # its source is the member that was trained
        assert member.params == int(row["params"]) and member.macs == int(row["macs"])
    # and every non-dominated architecture is listed once
    originals = {(number(r["accuracy"]), int(r["params"])) for r in results
                 if r["state"] == "complete" and r["duplicate_of"] == ""}
    undominated = {q for q in originals if not any(a >= q[0] and p <= q[1] and (a, p) != q for a, p in finished)}
    assert {(float(r["accuracy"]), int(r["params"])) for r in pareto} == undominated
    assert len({r["arch_hash"] for r in pareto}) == len(pareto)
    evolved = [t for t in optuna.load_study(study_name="tiny", storage=optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(str(out / "study.log")))).trials if PARENT_ATTR in t.system_attrs]
    assert evolved and all(t.number >= 3 for t in evolved)
    from PIL import Image

    with Image.open(out / "pareto.png") as image:
        assert image.format == "PNG" and image.size == (720, 480)
        red = image.convert("RGB").getcolors(1 << 16)
    assert any(colour == (200, 0, 0) for _, colour in red)  # the front is drawn
    before = (out / "pareto.png").read_bytes()
    from cnndsl.search.study import collect, draw_pareto, pareto_rows

    study = optuna.load_study(study_name="tiny", storage=optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(str(out / "study.log"))))
    rows, _ = collect(study)
    draw_pareto(tmp_path / "again.png", rows, pareto_rows(rows, ("accuracy", "params")), ("accuracy", "params"))
    assert (tmp_path / "again.png").read_bytes() == before  # the same rows draw the same bytes


def test_objectives_from_the_ir_train_nothing_and_nsga2_searches_them(tiny, monkeypatch):
    import cnndsl.train.torch_loop

    def no_training(*args, **kwargs):
        raise AssertionError("trained a member for an objective that needs no training")

    monkeypatch.setattr(cnndsl.train.torch_loop, "train", no_training)
    result = cnndsl.search(tiny, trials=6, objectives="params,macs", sampler="nsga2", seed=0)
    assert isinstance(result.study.sampler, optuna.samplers.NSGAIISampler)
    members = {v.arch_hash: (v.params, v.macs) for v in cnndsl.variants(tiny)}
    for row, trial in zip(result.rows, result.study.trials):
        assert row["accuracy"] is None and row["seconds"] == 0
        assert tuple(trial.values) == members[row["arch_hash"]]  # the values are the IR's figures
    # the smallest member is better in both: the whole front
    smallest = min(members.values())
    assert [tuple(r["_values"]) for r in result.pareto] == [smallest]


def test_the_latency_objective_times_the_built_model_at_batch_one(tiny, monkeypatch):
    import cnndsl.backends.torch as torch_backend

    from cnndsl.search import study as study_module

    calls, real_build = [], torch_backend.build

    def counting_build(net, *args, **kwargs):
        model = real_build(net, *args, **kwargs)
        model.register_forward_pre_hook(lambda module, inputs: calls.append(tuple(inputs[0].shape)))
        return model

    monkeypatch.setattr(torch_backend, "build", counting_build)
    result = cnndsl.search(tiny, trials=3, objectives=("params", "latency"), sampler="random", seed=1)
    timed = [r for r in result.rows if r["duplicate_of"] == ""]
    assert len(calls) == len(timed) * (study_module.LATENCY_WARMUP + study_module.LATENCY_REPEATS)
    assert set(calls) == {(1, 1, 8, 8)}  # batch 1 at the member's input size
    for row, trial in zip(result.rows, result.study.trials):
        assert trial.values[1] == row["latency_ms"] > 0 and math.isfinite(row["latency_ms"])


def test_hyperband_is_optunas_over_the_epochs_and_the_median_pruner_gets_each_epoch(tiny):
    result = cnndsl.search(tiny, trials=3, epochs=2, pruner="hyperband", sampler="random", seed=0)
    pruner = result.study.pruner
    assert isinstance(pruner, optuna.pruners.HyperbandPruner)
    assert (pruner._min_resource, pruner._max_resource) == (1, 2)
    for row, trial in zip(result.rows, result.study.trials):
        if row["duplicate_of"] == "" and row["state"] == "complete":
            assert sorted(trial.intermediate_values) == [1, 2]  # one report per epoch
    median = cnndsl.search(tiny, trials=1, epochs=2, sampler="random", seed=0)
    assert isinstance(median.study.pruner, optuna.pruners.MedianPruner)
    assert sorted(median.study.trials[0].intermediate_values) == [1, 2]


@pytest.mark.parametrize("args, message, hint", [
    (["--objectives", "accuracy,speed"], "unknown objective 'speed'", "accuracy, params, macs, latency"),
    (["--objectives", "params,params"], "name one twice", "each objective once"),
    (["--objectives", "accuracy,params", "--pruner", "median"], "median pruner with several objectives",
     "--pruner none"),
    (["--objectives", "accuracy,params", "--pruner", "hyperband"], "hyperband pruner with several objectives",
     "--pruner none"),
    (["--sampler", "evolution", "--population", "1"], "a population of 1", "at least 2"),
    (["--sampler", "evolution", "--population", "4", "--tournament", "5"], "a tournament of 5", "1 <= S"),
])
def test_mistakes_are_clean_errors(tiny, tmp_path, capsys, args, message, hint):
    capsys.readouterr()
    assert main(["search", tiny, "--trials", "1", "--epochs", "1", "--out", str(tmp_path / "run"), *args]) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err and message in err and hint in err.split("hint: ", 1)[1]
    assert not (tmp_path / "run" / "results.csv").exists()  # refused before any trial


def test_a_study_is_continued_only_with_its_own_objectives(tiny, tmp_path, capsys):
    out = str(tmp_path / "run")
    assert main(["search", tiny, "--trials", "1", "--objectives", "params,macs", "--out", out]) == 0
    capsys.readouterr()
    assert main(["search", tiny, "--trials", "1", "--objectives", "params", "--out", out]) == 1
    err = capsys.readouterr().err
    assert "optimises params,macs, not params" in err and "--objectives params,macs" in err
    assert main(["search", tiny, "--trials", "1", "--objectives", "params,macs", "--out", out]) == 0
    assert [json.loads(r["choices"]) != {} for r in read_rows(tmp_path / "run" / "results.csv")] == [True, True]
