"""How fast are members of a search space checked? From the IR (cnndsl) against torchvision-style checking.

For each space, ``cnndsl.variants(space, sample=K, seed=rep)`` checks K members (resolve, infer shapes, count
parameters/MACs/activations, hash), the resolve memo cleared before each repetition so that every repetition is
a search started from nothing. Every member sampled counts, invalid ones too; members whose architecture graph
repeats an earlier one in the same sample are counted as duplicates (they are checked all the same). A draw
that repeats an earlier draw's choices is built, then skipped by the sampler: its time counts, the member not.

The reference is what a user does without cnndsl: build the member as a PyTorch model and count its parameters
and MACs (conv and fc, as cnndsl counts them) with fvcore. For the ResNet-50 space a member with the base
width 64 is built with torchvision's own ``ResNet(Bottleneck, layers)``; the other widths do not map onto
torchvision's constructor (its stem is fixed at 64), so those, and every NAS-Bench-201 member, are built from
the generated PyTorch model. The reference runs on the space's first member and the first few of a sample;
the note says whether both sides agree on every such member's parameters and MACs.

Speed ratio = reference ms per member / cnndsl ms per member (medians).

    python -m benchmarks.variants [SPACE] [K]
"""

from __future__ import annotations

import importlib
import statistics
import sys
import time

if __package__ in (None, ""):  # run as a path (python benchmarks/variants.py)
    import pathlib

    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))
    __package__ = "benchmarks"

from .common import QUICK, Row, fvcore_count, table

#: space -> (parameters of every member, input size, members per sample, members the reference builds) per mode
SPACES = {
    "nb201": ({}, 32, (40, 200), (3, 10)),  # N=5 is the network's default: a parameter given would be written
    # into every member's source text (the search's -p), which is not what this measures
    "resnet50_space": ({}, 224, (20, 100), (2, 6)),
}


def _memo():
    """The resolve memo's controls (``clear_memo``, ``memo_stats``) where this cnndsl has them, else None."""
    resolve = importlib.import_module("cnndsl.passes.resolve")
    if hasattr(resolve, "clear_memo") and hasattr(resolve, "memo_stats"):
        return resolve
    return None


def clear_memo() -> None:
    memo = _memo()
    if memo is not None:
        memo.clear_memo()


def memo_note() -> str:
    memo = _memo()
    if memo is None:
        return ""
    stats = memo.memo_stats()
    return "memo " + ", ".join(f"{k} {v:,}" for k, v in stats.items())


def reference_model(space, variant):
    """The member as a PyTorch model built without cnndsl's IR where torchvision has a constructor for it."""
    import cnndsl

    if space.network == "resnet50_space":
        texts = [variant.options.get(k) for k in space.points]  # n1, n2, n3, n4, base: in the order written
        if len(texts) == 5 and texts[4] == "64":
            from torchvision.models.resnet import Bottleneck, ResNet

            return ResNet(Bottleneck, [int(t) for t in texts[:4]]), "torchvision"
    return cnndsl.build_torch(variant.network_obj), "generated"


def _sample(space, k: int, seed: int, cold: bool = True):
    """Check K members (from an empty memo when ``cold``); return them, the seconds taken, and the tally."""
    import cnndsl
    from cnndsl.search.variants import Tally

    tally = Tally()
    if cold:
        clear_memo()
    t = time.perf_counter()
    members = list(cnndsl.variants(space, sample=k, seed=seed, keep_invalid=True, tally=tally))
    return members, time.perf_counter() - t, tally


def bench_space(name: str, k: int | None = None) -> list[Row]:
    import torch

    from cnndsl.search.variants import Space

    torch.set_num_threads(1)  # one core on both sides: a search checks members in parallel processes
    params, size, ks, ms_ = SPACES[name]
    k = k or ks[0 if QUICK else 1]
    n_ref = ms_[0 if QUICK else 1]
    reps = 2 if QUICK else 5
    t = time.perf_counter()
    space = Space.open(name, params=params)
    open_s = time.perf_counter() - t
    _sample(space, 2, seed=10_000)  # warm-up: imports, the parser's tables
    times, counted, dups, invalid = [], 0, 0, 0
    for rep in range(reps):
        members, seconds, tally = _sample(space, k, seed=rep)
        times.append(seconds / max(tally.members, 1))
        counted += tally.members
        dups += sum(1 for v in members if v.valid and v.duplicate)
        invalid += sum(tally.invalid.values())
    memo = memo_note()  # after the last repetition: one search of K members from an empty memo
    warm = []  # a search under way: the memo holds what the members before built (a sample of K before each)
    _sample(space, k, seed=20_000)
    for rep in range(reps):
        _, seconds, tally = _sample(space, k, seed=30_000 + rep, cold=False)
        warm.append(seconds / max(tally.members, 1))
    steady = statistics.median(warm)
    ours = statistics.median(times)
    rows = [Row("search", f"{name}: members checked per second (cnndsl.variants, sample {k}, 1 thread)",
                f"{1 / ours:,.0f} members/s", "-", None,
                f"{reps} samples of {k} ({counted:,} members counted, {invalid} invalid, {dups} duplicates "
                f"of an earlier architecture); median {ours * 1e3:.2f} ms per member; Space.open "
                f"{open_s * 1e3:.0f} ms not included" + (f"; {memo}" if memo else "")),
            Row("search", f"{name}: members checked per second in a search under way (memo kept)",
                f"{1 / steady:,.0f} members/s", "-", None,
                f"{reps} samples of {k} after {k} others, the memo kept; median {steady * 1e3:.2f} ms per member")]
    try:
        import fvcore  # noqa: F401
    except ImportError:
        rows.append(Row("search", f"{name}: ms per member, cnndsl vs build + fvcore", f"{ours * 1e3:.2f} ms", "-",
                        None, "reference skipped: needs fvcore (and torchvision) in this Python"))
        return rows
    first = space.member({})  # the first member (resnet50 in the ResNet-50 space), then the sample's first ones
    members = [first] + [v for v in _sample(space, k, seed=0)[0] if v.valid and v.choices != first.choices]
    members = [v for v in members if v.valid][:n_ref]
    ref_times, kinds, differ = [], set(), 0
    for v in members:
        t = time.perf_counter()
        model, kind = reference_model(space, v)
        got = fvcore_count(model, size)
        ref_times.append(time.perf_counter() - t)
        kinds.add(kind)
        differ += got != (v.params, v.macs)
    theirs = statistics.median(ref_times)
    agree = "params and MACs agree" if not differ else f"params or MACs differ on {differ}"
    rows.append(Row("search", f"{name}: ms per member, cnndsl.variants vs building the model + fvcore",
                    f"{ours * 1e3:.2f} ms", f"{theirs * 1e3:.0f} ms", theirs / ours,
                    f"reference on {len(members)} members ({' and '.join(sorted(kinds))} models): {agree}"))
    return rows


def run() -> list[Row]:
    rows = []
    for name in SPACES:
        rows += bench_space(name)
    return rows


if __name__ == "__main__":
    args = sys.argv[1:]
    if args:
        print(table(bench_space(args[0], int(args[1]) if args[1:] else None)))
    else:
        print(table(run()))
    sys.exit(0)
