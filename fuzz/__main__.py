"""``python -m fuzz``: run the harness and print (or write) its figures.

    python -m fuzz --inputs 25000 --workers 2 --report docs/fuzz.md

runs 25,000 inputs of each strategy (100,000 in all) on two processes. Exit status 1 when any input failed;
each failure is listed with the strategy and index that reproduce it (``--strategy S --start I --inputs 1``).
"""

from __future__ import annotations

import argparse
import multiprocessing
import sys
import time

from .harness import STRATEGIES, Tally, batches, run_job


def report(tally: Tally, seed: int, seconds: float, every: int) -> str:
    lines = [("| strategy | inputs | refused cleanly | loaded and compiled | of those, refused by a backend | "
             "imported and run in the sandbox | failures |"), "|---|---:|---:|---:|---:|---:|---:|"]
    fails: dict[str, int] = {}
    for s, _, _ in tally.failures:
        fails[s] = fails.get(s, 0) + 1
    for s in tally.inputs:
        lines.append(f"| {s} | {tally.inputs[s]:,} | {tally.refused.get(s, 0):,} | {tally.compiled.get(s, 0):,} | "
                     f"{tally.backend_refused.get(s, 0):,} | {tally.imported.get(s, 0):,} | {fails.get(s, 0)} |")
    total = sum(tally.inputs.values())
    lines.append(f"| all | {total:,} | {sum(tally.refused.values()):,} | {sum(tally.compiled.values()):,} | "
                 f"{sum(tally.backend_refused.values()):,} | {sum(tally.imported.values()):,} | "
                 f"{len(tally.failures)} |")
    lines += ["", (f"Seed {seed}; every {'' if every == 1 else f'{every}th '}compiled network small enough to run "
              f"was imported and run; {seconds:.0f} s.")]
    for s, i, detail in tally.failures[:50]:
        lines.append(f"- FAILURE {s} #{i}: {detail.splitlines()[0] if detail else ''}")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m fuzz", description=__doc__.splitlines()[0])
    p.add_argument("--inputs", type=int, default=1000, help="inputs per strategy (default 1000)")
    p.add_argument("--start", type=int, default=0, help="index of the first input (to reproduce one)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--strategy", action="append", choices=sorted(STRATEGIES), help="only these (repeatable)")
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--batch", type=int, default=500, help="inputs per worker task")
    p.add_argument("--sandbox-every", type=int, default=1, metavar="K",
                   help="import and run every K-th compiled network (default: all)")
    p.add_argument("--report", metavar="FILE", help="also write the figures (markdown) here")
    args = p.parse_args(argv)
    strategies = args.strategy or list(STRATEGIES)
    jobs = [(*b, args.sandbox_every) for b in batches(args.seed, strategies, args.start, args.inputs, args.batch)]
    start = time.perf_counter()
    total = Tally()
    if args.workers > 1:
        with multiprocessing.get_context("spawn").Pool(args.workers) as pool:
            for i, t in enumerate(pool.imap(run_job, jobs)):
                total.add(t)
                print(f"{i + 1}/{len(jobs)} batches, {len(total.failures)} failures", file=sys.stderr, flush=True)
    else:
        for job in jobs:
            total.add(run_job(job))
    text = report(total, args.seed, time.perf_counter() - start, args.sandbox_every)
    print(text, end="")
    for s, i, detail in total.failures:
        print(f"\n--- {s} #{i}\n{detail}", file=sys.stderr)
    if args.report:
        with open(args.report, "w", encoding="utf-8") as f:
            f.write(text)
    return 1 if total.failures else 0


if __name__ == "__main__":
    sys.exit(main())
