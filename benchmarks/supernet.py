"""One-shot NAS validated as the papers validate it (SPOS, Guo et al. 2020; Yu et al. 2020, "Evaluating the
search phase of neural architecture search"): does the supernet rank members as training them does, and what
does weight sharing buy a search?

1. **Ranking.** K members of ``resnet_cifar`` at 1x8x8 (a seeded sample of its 81) are each trained stand-alone
   (``cnndsl.train``: SGD, momentum 0.9, weight decay 5e-4, lr 0.05 with a tenth from 2/3 of the way, batch 32, the
   fixed stratified 80/20 split of scikit-learn's digits, seed 0) and scored on the held-out fifth. A supernet is
   trained with SPOS (``train_spos``: the same optimizer, schedule and split, one uniform path a batch), and each
   member scored by its inherited accuracy after BN recalibration on 4 training batches. Kendall's tau between
   the two rankings, for supernets trained with several seeds; the median is reported.
2. **Search with and without weight sharing, on the same budget of trials.** Regularised evolution (the
   ``supernet search`` loop, ``cnndsl.search.supernet.evolve``) of N trials, once scoring members by inherited
   accuracy on the seed-0 supernet, once training each member stand-alone. Each search's best member's
   stand-alone accuracy (the one-shot winner is retrained for it), against the search's wall time (the one-shot
   time includes the supernet's training).

Every model here is tiny, so everything runs on one thread (a thread pool only contends on a shared machine).

    python -m benchmarks.supernet          # CNNDSL_BENCH_QUICK=1: fewer members, epochs and trials
"""

from __future__ import annotations

import io
import statistics
import sys
import time

from .common import QUICK, Row, table

SPACE, INPUT = "resnet_cifar", (1, 8, 8)
K = 4 if QUICK else 10  # members ranked
SEEDS = (0,) if QUICK else (0, 1, 2)  # supernets trained
ALONE_EPOCHS = 1 if QUICK else 4  # a stand-alone training
SUPERNET_EPOCHS = 2 if QUICK else 12  # SPOS: every path sees a share of them
TRIALS = 4 if QUICK else 12  # each search's budget
POPULATION, TOURNAMENT = (2, 2) if QUICK else (4, 2)
CALIBRATE = 4  # batches of BN recalibration per member
MEMBER_SEED = 7  # the K members drawn


def kendall_tau(a, b) -> float:
    """Kendall's tau-b of two rankings: scipy's when scipy is installed, else
    :func:`cnndsl.search.supernet.kendall_tau` (the same statistic)."""
    try:
        from scipy.stats import kendalltau
    except ImportError:
        from cnndsl.search.supernet import kendall_tau as own

        return own(a, b)
    return float(kendalltau(a, b).statistic)


def stand_alone(member, seed: int = 0) -> float:
    """The held-out accuracy of ``member`` trained from scratch (``seed`` draws its initialisation, its batches
    and its 80/20 split)."""
    from cnndsl.train.torch_loop import train

    return train(member.network_obj, "digits", epochs=ALONE_EPOCHS, seed=seed, out=io.StringIO())


def train_supernet(space, seed: int):
    """A SPOS-trained supernet of ``space`` (seed ``seed``), the data and the calibration batches, and its seconds."""
    from cnndsl.backends.supernet_torch import Supernet, train_spos

    from cnndsl.search.supernet import _calibration, _data, member_layers
    from cnndsl.train.data import epoch_lr

    start = time.perf_counter()
    x, y, xv, yv = _data(space, "digits")
    supernet = Supernet(space, member_layers, seed=seed)
    train_spos(supernet, x, y, [epoch_lr(0.05, e, SUPERNET_EPOCHS) for e in range(1, SUPERNET_EPOCHS + 1)],
               seed=seed)
    seconds = time.perf_counter() - start
    return supernet, (xv, yv, _calibration(x, CALIBRATE, 32, seed)), seconds


def inherited(supernet, data, choices) -> float:
    from cnndsl.backends.supernet_torch import inherited_accuracy

    xv, yv, calibration = data
    return inherited_accuracy(supernet, choices, xv, yv, calibration)


def ranking(space, members) -> tuple[list[float], list[float], list[tuple[int, float, list[float], float]]]:
    """The stand-alone accuracies of ``members`` (seed 0, and again with seed 1: the ranking's own noise), and per
    supernet seed: (seed, tau, inherited accuracies, seconds of SPOS training)."""
    alone = [stand_alone(m) for m in members]
    again = [stand_alone(m, seed=1) for m in members]
    per_seed = []
    for seed in SEEDS:
        supernet, data, seconds = train_supernet(space, seed)
        scores = [inherited(supernet, data, m.choices) for m in members]
        per_seed.append((seed, kendall_tau(alone, scores), scores, seconds))
    return alone, again, per_seed


def searches(space) -> dict[str, tuple[float, float, int, int]]:
    """Both searches: by name, (wall seconds, the best member's stand-alone accuracy, members scored, the trial
    of the best)."""
    from cnndsl.search.supernet import evolve

    out = {}
    start = time.perf_counter()
    supernet, data, _ = train_supernet(space, 0)
    history = evolve(space, lambda c: (inherited(supernet, data, c), None), TRIALS, population=POPULATION,
                     tournament=TOURNAMENT, seed=0)
    best = _best(history)
    seconds = time.perf_counter() - start
    accuracy = stand_alone(space.member(history[best][0]))  # the winner retrained, outside the search's time
    out["one-shot (weight sharing)"] = (seconds, accuracy, _scored(history), best)

    start = time.perf_counter()
    alone: dict[tuple, float] = {}

    def train_member(choices):
        accuracy = stand_alone(space.member(choices))
        alone[tuple(sorted(choices.items()))] = accuracy
        return accuracy, None
    history = evolve(space, train_member, TRIALS, population=POPULATION, tournament=TOURNAMENT, seed=0)
    best = _best(history)
    seconds = time.perf_counter() - start
    out["stand-alone training"] = (seconds, history[best][1], _scored(history), best)
    return out


def _best(history) -> int:
    """The trial with the highest score (the earlier on a tie), as ``supernet search`` picks it."""
    return max(range(len(history)), key=lambda t: (history[t][1] if history[t][1] is not None else -1.0, -t))


def _scored(history) -> int:
    return sum(1 for _, _, duplicate in history if duplicate is None)


def run() -> list[Row]:
    import torch

    from cnndsl.search.variants import Space

    torch.set_num_threads(1)
    space = Space.open(SPACE, input_shape=INPUT)
    members = list(space.sample(K, seed=MEMBER_SEED))
    alone, again, per_seed = ranking(space, members)
    taus = [tau for _, tau, _, _ in per_seed]
    what = f"{SPACE} at {'x'.join(map(str, INPUT))}, digits"
    rows = [Row("supernet", f"Kendall tau, inherited vs stand-alone accuracy, {K} members ({what})",
                f"{statistics.median(taus):.2f}", "1.00 (a perfect ranking)", None,
                f"median of {len(SEEDS)} supernet seeds: " + ", ".join(f"{t:.2f}" for t in taus)
                + f"; SPOS {SUPERNET_EPOCHS} epochs ({statistics.median(s[3] for s in per_seed):.1f} s), "
                f"stand-alone {ALONE_EPOCHS}"),
            Row("supernet", f"Kendall tau, stand-alone (seed 0) vs stand-alone again (seed 1), the same {K} members",
                f"{kendall_tau(alone, again):.2f}", "1.00", None, "how far the reference ranking repeats itself")]
    for i, m in enumerate(members):
        inherited_median = statistics.median(s[2][i] for s in per_seed)
        rows.append(Row("supernet", f"member {i} ({m.params:,} params)", f"inherited {inherited_median:.4f}",
                        f"stand-alone {alone[i]:.4f}, {again[i]:.4f}", None,
                        " ".join(str(v) for v in m.choices.values())))
    found = searches(space)
    (t1, a1, n1, b1), (t2, a2, n2, b2) = found["one-shot (weight sharing)"], found["stand-alone training"]
    rows.append(Row("supernet", f"evolution, {TRIALS} trials: wall time; best member's stand-alone accuracy",
                    f"{t1:.1f} s; {a1:.4f} (one-shot, {n1} members scored, best trial {b1})",
                    f"{t2:.1f} s; {a2:.4f} (stand-alone, {n2} members trained, best trial {b2})", t2 / t1,
                    f"SPOS {SUPERNET_EPOCHS} epochs included; the one-shot winner retrained {ALONE_EPOCHS} epochs "
                    "for its accuracy (not timed)"))
    return rows


if __name__ == "__main__":
    print(table(run()))
    sys.exit(0)
