"""``cnndsl search``: Optuna trials over a space's members, constraints, pruning, duplicates, workers."""

from __future__ import annotations

import csv
import io

import pytest

import cnndsl
from cnndsl.search.variants import Limits, Space
from cnndsl.tools.cli import main

optuna = pytest.importorskip("optuna")
pytest.importorskip("torch")
pytest.importorskip("sklearn")

# Four members at the digits' own 8x8: width 8 or 16, with or without a second conv stage. Their
# (params, activations) from the layer formulas: w=8 skip (186, 1234), w=8 conv (1466, 1754),
# w=16 skip (362, 2394), w=16 conv (5226, 3434).
TINY = """\
network tiny(w={8|16}, classes=10): input 1x8x8
    conv3-{w} bn relu maxpool
    choice< conv3-{2*w} bn relu | skip >
    gap fc-{classes}
"""
SIZES = {(8, False): (186, 1234), (8, True): (1466, 1754), (16, False): (362, 2394), (16, True): (5226, 3434)}


@pytest.fixture
def tiny(tmp_path):
    path = tmp_path / "tiny.cnn"
    path.write_text(TINY)
    return str(path)


def read_rows(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_sizes_match_the_layer_formulas(tiny):
    # conv3-w on 1 channel: 9w + w, bn 2w, conv3-2w: 9*w*2w + 2w, bn 4w, fc: (c+1)*10
    for (w, deep), (params, _) in SIZES.items():
        c = 2 * w if deep else w
        expected = 10 * w + 2 * w + (18 * w * w + 2 * w + 4 * w if deep else 0) + (c + 1) * 10
        assert params == expected
    members = {(int(v.options["tiny.cnn:1:16"]), v.options["tiny.cnn:3:5"] != "skip"): (v.params, v.activations)
               for v in Space.open(tiny).enumerate()}
    assert members == SIZES


def test_cli_search_writes_results_and_a_best_architecture_that_compiles(tiny, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["search", tiny, "--trials", "5", "--epochs", "1", "--out", str(out), "--seed", "0"]) == 0
    assert "5 trials" in capsys.readouterr().out
    rows = read_rows(out / "results.csv")
    assert [int(r["trial"]) for r in rows] == [0, 1, 2, 3, 4]
    assert {r["state"] for r in rows} <= {"complete", "pruned"}
    assert set(rows[0]) >= {"trial", "choices", "arch_hash", "params", "macs", "accuracy", "state"}
    trained = [r for r in rows if float(r["seconds"]) > 0]
    assert len({r["arch_hash"] for r in trained}) == len(trained)  # no architecture trained twice
    for r in rows:
        if r["duplicate_of"] != "":
            original = rows[int(r["duplicate_of"])]
            assert (r["arch_hash"], r["accuracy"]) == (original["arch_hash"], original["accuracy"])
    best = max((r for r in rows if r["state"] == "complete"), key=lambda r: float(r["accuracy"]))
    net = cnndsl.load(str(out / "best.cnn"))
    assert net.params == int(best["params"]) and net.macs == int(best["macs"])
    import torch

    model = cnndsl.build_torch(net)
    assert model(torch.zeros(2, 1, 8, 8)).shape == (2, 10)
    assert float(best["accuracy"]) > 0.3  # ten classes: chance is 0.1


@pytest.mark.parametrize("limit", [{"max_params": 1000}, {"max_activations": 2000}])
def test_constraints_prune_exactly_the_violating_trials_without_training_them(tiny, monkeypatch, limit):
    import cnndsl.train.torch_loop

    trained = []
    real_train = cnndsl.train.torch_loop.train

    def recording_train(net, *args, **kwargs):
        trained.append(net)
        return real_train(net, *args, **kwargs)

    monkeypatch.setattr(cnndsl.train.torch_loop, "train", recording_train)
    result = cnndsl.search(tiny, trials=6, epochs=1, sampler="random", seed=3, pruner="none",
                           limits=Limits(**limit))
    (what, bound), = limit.items()
    figure = what.removeprefix("max_")
    over_seen = 0
    for row in result.rows:
        # the member's figures, from its own concrete source, checked against the limit
        member = cnndsl.loads(Space.open(tiny).member(row["_choices"]).source)
        over = getattr(member, figure) > bound
        over_seen += over
        assert (row["state"] == "pruned" and row["reason"].startswith("over limit")) == over
        if over:
            assert row["epochs"] == 0 and row["seconds"] == 0 and row["accuracy"] is None
    assert 0 < over_seen < len(result.rows)
    assert trained and all(getattr(net, figure) <= bound for net in trained)
    assert len(trained) == len({row["arch_hash"] for row in result.rows if row["seconds"]})


def test_pruner_stops_a_training_at_an_epoch(tiny):
    result = cnndsl.search(tiny, trials=2, epochs=3, sampler="random", seed=0,
                           pruner=optuna.pruners.ThresholdPruner(lower=0.999))
    for row, trial in zip(result.rows, result.study.trials):
        assert row["state"] == "pruned"
        if row["duplicate_of"] == "":
            assert row["reason"] == "pruned at epoch 1" and list(trial.intermediate_values) == [1]
            assert row["accuracy"] == trial.intermediate_values[1] < 0.999
    assert result.best is None and result.best_source is None


def test_best_cnn_keeps_the_input_size_and_parameters_the_search_trained_with(tiny, tmp_path):
    out = tmp_path / "resized"
    result = cnndsl.search(tiny, trials=2, epochs=1, input_shape=(1, 12, 12), params={"classes": 10}, out=out)
    net = cnndsl.load(str(out / "best.cnn"))
    assert net.input_shape == (1, 12, 12) and net.output_shapes[0] == (10,)
    assert (net.params, net.macs) == (result.best["params"], result.best["macs"])
    assert "input 1x12x12" in result.best_source


def test_two_workers_share_one_study_and_its_best_trains_to_the_reported_accuracy(tiny, tmp_path):
    from optuna.storages.journal import JournalFileBackend, JournalStorage

    from cnndsl.train.torch_loop import train

    out = tmp_path / "shared"
    result = cnndsl.search(tiny, trials=6, epochs=1, workers=2, out=out, study="two")
    study = optuna.load_study(study_name="two", storage=JournalStorage(JournalFileBackend(str(out / "study.log"))))
    numbers = sorted(t.number for t in study.trials)
    assert numbers == list(range(6))  # none lost, none repeated
    assert all(t.state in (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED) for t in study.trials)
    rows = read_rows(out / "results.csv")
    assert [int(r["trial"]) for r in rows] == numbers
    assert len({r["worker"] for r in rows}) == 2  # both processes ran trials
    # no seed given: one drawn for the run, worker i seeding its sampler with it + i
    seeds = {r["worker"]: {r2["seed"] for r2 in rows if r2["worker"] == r["worker"]} for r in rows}
    assert sorted(int(s) for ss in seeds.values() for s in ss) == [result.seed, result.seed + 1]
    # the best architecture, loaded from best.cnn and trained again here, reaches the accuracy its trial reported
    accuracy = train(str(out / "best.cnn"), "digits", 1, out=io.StringIO())
    assert accuracy == pytest.approx(result.best_accuracy, abs=1e-6)
    # above chance (0.1 on ten classes): the seed is drawn per run, and one epoch's best of six ranged 0.29-0.6
    assert accuracy > 0.2


def test_mistakes_are_clean_errors(tiny):
    with pytest.raises(cnndsl.CnnDslError):
        cnndsl.search("no_such_space.cnn", trials=1)
    with pytest.raises(cnndsl.CnnDslError, match="storage"):
        cnndsl.search(tiny, trials=2, workers=2)


def test_each_run_draws_its_own_sampler_seed_and_records_it(tiny, tmp_path, capsys):
    first = cnndsl.search(tiny, trials=3, epochs=1, sampler="random", pruner="none")
    second = cnndsl.search(tiny, trials=3, epochs=1, sampler="random", pruner="none")
    assert first.seed != second.seed  # a fresh seed per run (two equal in 2**31 draws: a one-in-2-billion failure)
    assert {r["seed"] for r in first.rows} == {first.seed} and {r["seed"] for r in second.rows} == {second.seed}
    again = cnndsl.search(tiny, trials=3, epochs=1, sampler="random", pruner="none", seed=first.seed)
    assert [r["_choices"] for r in again.rows] == [r["_choices"] for r in first.rows]  # the recorded seed reproduces
    out = tmp_path / "run"
    assert main(["search", tiny, "--trials", "2", "--epochs", "1", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    seeds = {r["seed"] for r in read_rows(out / "results.csv")}
    assert len(seeds) == 1 and f"sampler seed {seeds.pop()}" in printed


def test_a_worker_killed_by_a_signal_is_reported_as_such(tiny, tmp_path):
    import multiprocessing
    import os
    import signal
    import threading

    killed = []

    def kill_the_other_worker():  # as soon as the search has started it, before it can have finished a trial
        for _ in range(6000):
            others = [p for p in multiprocessing.active_children() if p.name == "cnndsl-search-1" and p.pid]
            if others:
                os.kill(others[0].pid, signal.SIGKILL)
                killed.append(others[0].pid)
                return
            threading.Event().wait(0.01)

    killer = threading.Thread(target=kill_the_other_worker)
    killer.start()
    try:
        with pytest.raises(cnndsl.CnnDslError) as e:
            cnndsl.search(tiny, trials=2, epochs=1, workers=2, out=tmp_path / "killed", seed=0)
    finally:
        killer.join()
    assert killed
    assert e.value.message == "search worker cnndsl-search-1 was killed by signal 9 (SIGKILL)"
    assert "message is above" not in str(e.value)
    assert read_rows(tmp_path / "killed" / "results.csv")  # this process's trial was still written
