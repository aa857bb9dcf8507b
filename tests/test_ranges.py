"""Float and log ranges in search spaces: ``{0.1..0.5}``, ``{1e-4..1e-1 log}``.

The laws are checked against scipy's distributions (Kolmogorov-Smirnov), members' texts round-trip to the same
floats, Optuna sees float distributions with the right scale, and bad ranges are refused at their place.
"""

from __future__ import annotations

import json
import math

import pytest
from scipy import stats

import cnndsl
from cnndsl.front import syntax as ast
from cnndsl.search.variants import Space, read_choices, variants
from cnndsl.tools.cli import main

# Two float ranges (a dropout rate, a log-scaled network parameter) and one integer choice of two widths.
RATES = """\
network rates(lr={1e-4..1e-1 log}): input 1x8x8
    conv3-{4|8} relu dropout({0.1..0.5}) gap fc-3
"""
LR, WIDTH, RATE = "rates.cnn:1:18", "rates.cnn:2:11", "rates.cnn:2:30"
# The critical value of the KS statistic is about 1.95 / sqrt(n) at a level of 0.001: a wrong law (uniform for
# log-uniform, or a range shifted by a quarter of its width) is far above it for these sample sizes, while the
# right law fails this check one seed in a thousand (the seeds are fixed, so the test is deterministic).
KS_LEVEL = 1e-3


@pytest.fixture
def rates(tmp_path) -> Space:
    path = tmp_path / "rates.cnn"
    path.write_text(RATES)
    return Space.open(str(path))


def dropout_p(net) -> float:
    (p,) = [n.args["p"] for n in net.graph.nodes() if n.op == "dropout"]
    return p


def parse_one(value: str) -> ast.Expr:
    """The expression of ``dropout(VALUE)`` in a one-layer network."""
    module = ast.parse(f"network t: input 1x8x8\n    dropout({value})\n", "t.cnn")
    return module.networks[0].body.steps[0].term.args[0].value


# ----------------------------------------------------------------------------- syntax


def test_float_and_log_ranges_parse_and_integer_ranges_stay_choices():
    r = parse_one("{0.1..0.5}")
    assert isinstance(r, ast.FloatRange) and (r.low, r.high, r.log) == (0.1, 0.5, False)
    r = parse_one("{1e-4..1e-1 log}")
    assert isinstance(r, ast.FloatRange) and (r.low, r.high, r.log) == (1e-4, 1e-1, True)
    r = parse_one("{0..0.5}")  # one end written as a float makes a float range
    assert isinstance(r, ast.FloatRange) and (r.low, r.high) == (0.0, 0.5)
    r = parse_one("{2..5}")
    assert type(r) is ast.Choice and [o.value for o in r.options] == [2, 3, 4, 5]


def test_a_space_with_float_ranges_loads_as_its_first_member():
    net = cnndsl.loads(RATES.replace("rates", "r"))
    assert dropout_p(net) == 0.1  # every choice takes its first option: a range its low end


BAD = [
    ("dropout({0.5..0.1})", "{0.5..0.1}", "is empty", "a < b"),
    ("dropout({0.5..0.5})", "{0.5..0.5}", "is empty", "a < b"),
    ("dropout({0.0..0.1 log})", "{0.0..0.1 log}", "starts at 0.0", "above 0"),
    ("dropout({0..1.0 log})", "{0..1.0 log}", "starts at 0.0", "above 0"),
    ("dropout({1..10 log})", "{1..10 log}", "whole-number ends", "{1.0..10.0 log}"),
    ("dropout({0.1..1e400})", "{0.1..1e400}", "too large", "finite"),
    ("conv3-{0.5..2.0}", "{0.5..2.0}", "whole number goes (the width of conv3)", "integer range"),
    ("conv3-4/{1.0..2.0}", "{1.0..2.0}", "(the stride of conv3)", "integer range"),
    ("conv{{1.0..3.0}}-4", "{1.0..3.0}", "(a kernel size)", "integer range"),
    ("conv3-4 x{0.5..2.0}", "{0.5..2.0}", "(a repeat count)", "integer range"),
    ("conv3-{ {4|{0.5..2.0}} }", "{0.5..2.0}", "(the width of conv3)", "integer range"),
    ("for j in range({1.0..3.0}): conv3-4", "{1.0..3.0}", "range(...) count", "integer range"),
]


@pytest.mark.parametrize("step, written, message, hint", BAD, ids=[b[0] for b in BAD])
def test_bad_ranges_are_refused_at_their_place(step, written, message, hint, tmp_path, capsys):
    text = f"network t: input 1x8x8\n    {step} gap fc-2\n"
    with pytest.raises(cnndsl.CnnDslError) as e:
        cnndsl.loads(text)
    err = e.value
    assert message in err.message and hint in err.hint
    line = text.splitlines()[err.span.line - 1]
    assert (err.span.line, line[err.span.col - 1:err.span.end_col - 1]) == (2, written)
    path = tmp_path / "t.cnn"
    path.write_text(text)
    assert main(["variants", str(path), "--sample", "1"]) == 1
    captured = capsys.readouterr()
    assert f"t.cnn:2:{err.span.col}: error:" in captured.err and "Traceback" not in captured.err


def test_an_input_size_cannot_be_a_float_range():
    with pytest.raises(cnndsl.CnnDslError, match=r"\(an input size\)"):
        cnndsl.loads("network t: input 1x{4.0..8.0}x8\n    gap fc-2\n")


def test_a_float_reaching_a_width_through_a_parameter_makes_an_invalid_member(tmp_path):
    path = tmp_path / "w.cnn"
    path.write_text("network w(m={0.5..2.0}): input 1x8x8\n    conv3-{m} gap fc-2\n")
    (v,) = variants(str(path), sample=1, keep_invalid=True)
    assert not v.valid and "must be an integer" in v.error
    path.write_text("network w(m={0.5..2.0}): input 1x8x8\n    conv3-{round(8 * m)} gap fc-2\n")
    (v,) = variants(str(path), sample=1, seed=4)  # a width computed from the float is a whole number
    m = v.choices["w.cnn:1:13"]
    assert v.valid and v.network_obj.graph.node("conv1").args["c"] == round(8 * m)


# ----------------------------------------------------------------------------- the laws


def test_sampled_values_follow_the_uniform_and_log_uniform_laws(rates):
    n = 400
    members = list(rates.sample(n, seed=7))
    assert len(members) == n and all(v.valid for v in members)
    rate = [v.choices[RATE] for v in members]
    lr = [v.choices[LR] for v in members]
    assert all(0.1 <= x <= 0.5 for x in rate) and all(1e-4 <= x <= 1e-1 for x in lr)
    uniform = stats.uniform(loc=0.1, scale=0.4).cdf
    log_uniform = stats.loguniform(1e-4, 1e-1).cdf
    assert stats.kstest(rate, uniform).pvalue > KS_LEVEL
    assert stats.kstest(lr, log_uniform).pvalue > KS_LEVEL
    # the check has the power to see a wrong law: the draws are far from the other law, or a shifted range
    assert stats.kstest(lr, stats.uniform(loc=1e-4, scale=0.1 - 1e-4).cdf).pvalue < 1e-12
    assert stats.kstest(rate, stats.uniform(loc=0.2, scale=0.4).cdf).pvalue < 1e-12
    # each member builds with the value it records
    assert all(dropout_p(v.network_obj) == v.choices[RATE] for v in members)
    # the integer choice is still drawn uniformly: a binomial count of the first width, within 4 sigma
    first = sum(v.choices[WIDTH] == 0 for v in members)
    assert abs(first - n / 2) < 4 * math.sqrt(n / 4)


def test_sampling_is_seeded(rates):
    a = [v.source for v in rates.sample(5, seed=3)]
    assert a == [v.source for v in rates.sample(5, seed=3)]
    assert a != [v.source for v in rates.sample(5, seed=4)]


# ----------------------------------------------------------------------------- members


def test_a_members_text_round_trips_its_floats_exactly(rates, tmp_path):
    out = tmp_path / "members"
    assert main(["variants", str(tmp_path / "rates.cnn"), "--sample", "6", "--seed", "1", "-o", str(out)]) == 0
    files = sorted(out.glob("*.cnn"))
    assert len(files) == 6
    for f in files:
        text = f.read_text()
        choices = read_choices(str(f))
        assert isinstance(choices[RATE], float) and isinstance(choices[LR], float)
        assert isinstance(choices[WIDTH], int)
        again = rates.member(choices)
        assert again.source == text  # byte for byte
        net = cnndsl.load(str(f))  # the concrete member, loaded as a plain network
        assert dropout_p(net) == choices[RATE] and net.params == again.params
        assert f"lr={{{choices[LR]!r}}}" in text and f"dropout({{{choices[RATE]!r}}})" in text
        assert json.loads(text.splitlines()[0].split(":", 1)[1])["choices"] == choices


def test_values_outside_a_range_and_indices_for_it_make_invalid_members(rates):
    v = rates.member({RATE: 0.7})  # a hand-edited --from file, say
    assert not v.valid and v.error == f"{RATE}: the value 0.7 for the range {{0.1..0.5}}"
    assert rates.member({RATE: 1}).error == f"{RATE}: the value 1 for the range {{0.1..0.5}}"
    assert rates.member({WIDTH: 0.5}).error == f"{WIDTH}: option 0.5 of a choice with 2 options"
    assert rates.member({RATE: 0.5, LR: 1e-4}).valid  # both ends belong to the range


def test_mutation_changes_one_choice_and_redraws_a_range(rates):
    base = next(rates.sample(1, seed=2)).choices
    mutants = list(rates.mutate(base, 8, seed=0))
    assert len(mutants) == 8  # a float range's neighbours are endless
    widths = 0
    for m in mutants:
        changed = [k for k in base if m.choices[k] != base[k]]
        assert len(changed) == 1
        (k,) = changed
        if k == WIDTH:
            widths += 1
        else:
            low, high = (1e-4, 1e-1) if k == LR else (0.1, 0.5)
            assert low <= m.choices[k] <= high
    assert widths == 1  # the one discrete neighbour, once
    assert [m.choices for m in rates.mutate(base, 8, seed=0)] == [m.choices for m in mutants]
    assert rates.neighbours(base) == [{**base, WIDTH: 1 - base[WIDTH]}]


# ----------------------------------------------------------------------------- counting and enumerating


def test_counting_says_infinite_and_enumerating_is_refused(rates, tmp_path, capsys):
    assert rates.count() == math.inf
    space = str(tmp_path / "rates.cnn")
    assert main(["variants", space, "--count"]) == 0
    assert capsys.readouterr().out.strip() == "infinite"
    for args in (["--enumerate"], ["--enumerate", "--limit", "3"], []):
        assert main(["variants", space, *args]) == 1
        captured = capsys.readouterr()
        assert captured.out == "" and "Traceback" not in captured.err
        assert "cannot be enumerated" in captured.err and "--sample N" in captured.err.split("hint: ", 1)[1]
    with pytest.raises(cnndsl.CnnDslError, match="cannot be enumerated"):
        variants(space)
    with pytest.raises(cnndsl.CnnDslError, match="cannot be enumerated"):
        list(rates.enumerate())


def test_a_range_reached_only_under_an_option_counts_once_that_option_is_possible(tmp_path):
    path = tmp_path / "c.cnn"
    # by the tree: the dropout branch has endless members, the relu branch one
    path.write_text("network c: input 1x8x8\n    conv3-4 choice< dropout({0.1..0.5}) | relu > gap fc-2\n")
    assert Space.open(str(path)).count() == math.inf
    # two paths to the range (a choice written in two options' blocks): counted by enumeration, still endless
    path.write_text("block d: dropout({0.1..0.5})\nnetwork c(k={1|2}): input 1x8x8\n"
                    "    conv3-4 choice< d | relu > choice< d | relu > x{k} gap fc-2\n")
    assert Space.open(str(path)).count() == math.inf
    path.write_text("network c: input 1x8x8\n    conv3-4 choice< dropout(0.2) | relu > gap fc-2\n")
    assert Space.open(str(path)).count() == 2


# ----------------------------------------------------------------------------- Optuna


def test_an_optuna_study_suggests_floats_in_the_range_on_its_scale(rates):
    optuna = pytest.importorskip("optuna")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    lr, rate = [], []
    for _ in range(200):
        trial = study.ask()
        member = rates.suggest(trial)
        assert member.valid and member.choices[RATE] == trial.params[RATE] == dropout_p(member.network_obj)
        study.tell(trial, member.params)
        lr.append(member.choices[LR])
        rate.append(member.choices[RATE])
    dists = study.trials[0].distributions
    assert isinstance(dists[LR], optuna.distributions.FloatDistribution)
    assert (dists[LR].low, dists[LR].high, dists[LR].log) == (1e-4, 1e-1, True)
    assert (dists[RATE].low, dists[RATE].high, dists[RATE].log) == (0.1, 0.5, False)
    assert isinstance(dists[WIDTH], optuna.distributions.CategoricalDistribution)
    assert all(1e-4 <= x <= 1e-1 for x in lr) and all(0.1 <= x <= 0.5 for x in rate)
    assert stats.kstest(lr, stats.loguniform(1e-4, 1e-1).cdf).pvalue > KS_LEVEL
    assert stats.kstest(rate, stats.uniform(loc=0.1, scale=0.4).cdf).pvalue > KS_LEVEL
    # TPE works on the same parameters (it models a log range in log space)
    tpe = optuna.create_study(sampler=optuna.samplers.TPESampler(seed=0, n_startup_trials=3))
    tpe.optimize(lambda t: rates.suggest(t).choices[RATE], n_trials=8)
    assert all(0.1 <= t.params[RATE] <= 0.5 and 1e-4 <= t.params[LR] <= 1e-1 for t in tpe.trials)


def test_cnndsl_search_explores_a_float_range(tmp_path):
    pytest.importorskip("optuna")
    pytest.importorskip("torch")
    pytest.importorskip("sklearn")
    import csv

    path = tmp_path / "drop.cnn"
    path.write_text("network drop(classes=10): input 1x8x8\n    conv3-4 relu dropout({0.1..0.5}) gap fc-{classes}\n")
    out = tmp_path / "run"
    assert main(["search", str(path), "--trials", "3", "--epochs", "1", "--out", str(out), "--seed", "0"]) == 0
    with open(out / "results.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    rates = [float(json.loads(r["choices"])["drop.cnn:2:26"]) for r in rows]
    assert len(rows) == 3 and len(set(rates)) == 3 and all(0.1 <= x <= 0.5 for x in rates)
    best = cnndsl.load(str(out / "best.cnn"))
    assert dropout_p(best) in rates
