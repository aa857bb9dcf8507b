"""``cnndsl search``: architecture search over a space's members, on Optuna.

Each trial is one member of a search space (see :mod:`cnndsl.variants`): the sampler picks an
option for every choice the member reaches (:meth:`Space.suggest`), the member is checked from the
IR, and only then trained, with the PyTorch training loop of :mod:`cnndsl.train`, for a few epochs.

A trial ends in one of these ways, all recorded in the study and in ``results.csv``:

* **complete**: trained for every epoch; its value is the final validation accuracy;
* **pruned** at an epoch: the pruner (Optuna's median pruner by default) saw its per-epoch
  validation accuracy fall below that of earlier trials at the same epoch;
* **pruned, over a limit**: its parameters, MACs or activations, read from the IR, exceed
  ``--max-params`` / ``--max-macs`` / ``--max-activations``; it is never trained;
* **pruned, invalid**: the member does not build (a shape error, an output that is always zero);
* **duplicate**: its architecture hash equals that of a trial already trained with the same
  settings; the recorded result is reused (same value and state) and nothing is trained.

Pruned trials, those over a limit included, count as bad results for the sampler, so it learns to
avoid them; failed trials (an error while training) are ignored by it.

The study lives in a storage: by default a journal file ``DIR/study.log`` next to the results, which
several local processes (``workers``) share safely. ``storage`` takes an SQLAlchemy URL instead
(``sqlite:///search.db``, ``postgresql://user:pass@host/db``): several machines pointed at one
database with the same study name run one study together. Running the same command again in the
same folder continues the study with more trials.

The validation accuracy is measured on the training loop's fixed held-out 20% split (stratified,
the same for every trial), which this search uses for selection: keep a separate test set for the
final word on the chosen architecture.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import socket
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .arch_hash import arch_hash
from .errors import CnnDslError
from .progress import counter
from .variants import Limits, Space

RESULTS_FILE = "results.csv"
BEST_FILE = "best.cnn"
JOURNAL_FILE = "study.log"
#: Who ran a trial (a column of results.csv): this machine and process.
WORKER = f"{socket.gethostname()}/{os.getpid()}"
COLUMNS = ("trial", "state", "reason", "accuracy", "epochs", "params", "macs", "activations", "arch_hash",
           "duplicate_of", "seconds", "worker", "choices")


@dataclass(frozen=True)
class SearchConfig:
    """Everything a worker needs to run trials: plain values only, so it crosses process boundaries."""

    space: str
    study: str
    storage: str
    data: str = "digits"
    epochs: int = 2
    input_shape: tuple[int, ...] | None = None
    params: tuple[tuple[str, Any], ...] = ()
    limits: tuple[int | None, int | None, int | None] = (None, None, None)
    sampler: str = "tpe"
    seed: int | None = 0
    pruner: Any = "median"
    lr: float = 0.05
    batch_size: int = 32

    def open_space(self) -> Space:
        return Space.open(self.space, input_shape=self.input_shape, params=dict(self.params))

    def training_key(self) -> str:
        """What must match for a recorded result to stand for a new trial of the same architecture."""
        return json.dumps([self.data, self.epochs, self.lr, self.batch_size])


@dataclass
class SearchResult:
    """The outcome of :func:`search`: the Optuna study, one row per trial, and the best member."""

    study: Any
    rows: list[dict[str, Any]]
    best: dict[str, Any] | None
    best_source: str | None
    out: Path | None = None
    trained: int = 0
    timings: list[float] = field(default_factory=list)

    @property
    def best_accuracy(self) -> float | None:
        return self.best["accuracy"] if self.best else None

    def lines(self) -> list[str]:
        """A short human summary (what ``cnndsl search`` prints at the end)."""
        states: dict[str, int] = {}
        for r in self.rows:
            key = r["state"]
            if r["state"] == "pruned" and r["reason"].startswith(("over limit", "invalid")):
                key = r["reason"].split(":")[0]
            states[key] = states.get(key, 0) + 1
        dups = sum(1 for r in self.rows if r["duplicate_of"] != "")
        out = [f"{len(self.rows)} trials: " + ", ".join(f"{n} {s}" for s, n in sorted(states.items()))
               + (f" ({dups} duplicate{'s' if dups > 1 else ''} reused)" if dups else "")]
        if self.best:
            b = self.best
            out.append(f"best: trial {b['trial']}, accuracy {b['accuracy']:.4f}, {b['params']:,} params, "
                       f"{b['macs']:,} MACs")
        else:
            out.append("no trial completed")
        if self.out:
            out.append(f"wrote {self.out / RESULTS_FILE}" + (f" and {self.out / BEST_FILE}" if self.best else ""))
        return out


# ----------------------------------------------------------------------------- optuna plumbing


def _optuna():
    try:
        import optuna
    except ImportError:
        raise CnnDslError("cnndsl search needs Optuna", None, "pip install 'cnndsl[search]'") from None
    return optuna


def _storage(url: str):
    """An Optuna storage: an SQLAlchemy URL (``sqlite:///x.db``, ``postgresql://...``) or a journal file path."""
    optuna = _optuna()
    if "://" in url:
        try:
            return optuna.storages.RDBStorage(url)
        except ImportError as e:
            raise CnnDslError(f"the storage {url} needs a database driver: {e}", None) from None
    from optuna.storages.journal import JournalFileBackend, JournalStorage

    return JournalStorage(JournalFileBackend(url))


def _sampler(cfg: SearchConfig, worker: int):
    optuna = _optuna()
    seed = None if cfg.seed is None else cfg.seed + worker  # distinct streams, else workers propose alike
    if cfg.sampler == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if cfg.sampler == "tpe":
        return optuna.samplers.TPESampler(seed=seed)
    raise CnnDslError(f"unknown sampler {cfg.sampler!r}", None, "use tpe or random")


def _pruner(spec):
    optuna = _optuna()
    if spec is None or spec == "none":
        return optuna.pruners.NopPruner()
    if spec == "median":
        # prune from the first epoch on, once four trials have completed (a trial's last epoch is never pruned)
        return optuna.pruners.MedianPruner(n_startup_trials=4, n_warmup_steps=0)
    if isinstance(spec, optuna.pruners.BasePruner):
        return spec
    raise CnnDslError(f"unknown pruner {spec!r}", None, "use median or none")


def _load_study(cfg: SearchConfig, worker: int = 0):
    optuna = _optuna()
    return optuna.create_study(storage=_storage(cfg.storage), study_name=cfg.study, direction="maximize",
                               sampler=_sampler(cfg, worker), pruner=_pruner(cfg.pruner), load_if_exists=True)


# ----------------------------------------------------------------------------- one trial


class _Pruned(Exception):
    def __init__(self, epoch: int):
        self.epoch = epoch


def _previous(study, key: str, number: int):
    """The earliest trained trial (complete or pruned by the pruner) with this training key, if any."""
    optuna = _optuna()
    states = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
    for t in study.get_trials(deepcopy=False, states=states):
        if t.number != number and t.user_attrs.get("train_key") == key and "duplicate_of" not in t.user_attrs:
            return t
    return None


def run_trial(study, trial, space: Space, cfg: SearchConfig) -> tuple[float | None, Any]:
    """Evaluate one asked trial; returns ``(value, state)`` for ``study.tell`` (the reason is a user attribute)."""
    optuna = _optuna()
    from . import train as training

    State = optuna.trial.TrialState
    member = space.suggest(trial)
    trial.set_user_attr("worker", WORKER)
    trial.set_user_attr("choices", member.choices)
    trial.set_user_attr("options", member.options)
    if not member.valid:
        trial.set_user_attr("reason", f"invalid: {member.error}")
        return None, State.PRUNED
    net = member.network_obj
    h = arch_hash(net.graph)
    for k, v in (("arch_hash", h), ("params", net.params), ("macs", net.macs), ("activations", net.activations)):
        trial.set_user_attr(k, v)
    reason = Limits(*cfg.limits).violation(member)
    if reason:
        trial.set_user_attr("reason", f"over limit: {reason}")
        return None, State.PRUNED
    key = f"{h}:{cfg.training_key()}"
    trial.set_user_attr("train_key", key)
    earlier = _previous(study, key, trial.number)
    if earlier is not None:
        trial.set_user_attr("duplicate_of", earlier.number)
        note = earlier.user_attrs.get("reason")
        trial.set_user_attr("reason", f"duplicate of trial {earlier.number}" + (f" ({note})" if note else ""))
        if earlier.state == State.PRUNED:
            if earlier.value is not None:
                trial.report(earlier.value, earlier.last_step)
            return None, State.PRUNED
        return earlier.value, State.COMPLETE

    def on_epoch(epoch: int, epochs: int, accuracy: float) -> None:
        trial.report(accuracy, epoch)
        trial.set_user_attr("epochs", epoch)
        if epoch < epochs and trial.should_prune():
            raise _Pruned(epoch)

    start = time.perf_counter()
    try:
        accuracy = training.train(net, cfg.data, cfg.epochs, seed=0, batch_size=cfg.batch_size, lr=cfg.lr,
                                  out=io.StringIO(), on_epoch=on_epoch)
    except _Pruned as p:
        trial.set_user_attr("seconds", round(time.perf_counter() - start, 3))
        trial.set_user_attr("reason", f"pruned at epoch {p.epoch}")
        return None, State.PRUNED
    trial.set_user_attr("seconds", round(time.perf_counter() - start, 3))
    return accuracy, State.COMPLETE


def _warm_up() -> None:
    """Pay the training loop's one-time costs (importing torch and scikit-learn, the optimizer's first
    step) before the first trial, so that a trial's ``seconds`` measure its training alone."""
    import importlib

    import torch

    for module in ("sklearn.datasets", "sklearn.model_selection"):
        importlib.import_module(module)

    weight = torch.zeros(1, requires_grad=True)
    weight.sum().backward()
    torch.optim.SGD([weight], lr=0.1, momentum=0.9).step()


def _failure(e: BaseException) -> str:
    """A failed trial's reason: one line."""
    if not isinstance(e, Exception):
        return "interrupted"
    text = e.message if isinstance(e, CnnDslError) else f"{type(e).__name__}: {e}"
    return "failed: " + " ".join(text.split())


def run_trials(study, space: Space, cfg: SearchConfig, n: int, on_done=None) -> None:
    """Ask, run and tell ``n`` trials of ``study``; a trial that raises is told failed and the error re-raised."""
    optuna = _optuna()
    _warm_up()
    for _ in range(n):
        trial = study.ask()
        try:
            value, state = run_trial(study, trial, space, cfg)
        except BaseException as e:
            trial.set_user_attr("reason", _failure(e))
            study.tell(trial, state=optuna.trial.TrialState.FAIL)
            raise
        study.tell(trial, value, state=state)
        if on_done is not None:
            on_done()


def _worker(cfg: SearchConfig, n: int, worker: int) -> None:
    """A worker process's body: quiet Optuna, run its share of the trials, report a mistake cleanly."""
    _optuna().logging.set_verbosity(_optuna().logging.WARNING)
    try:
        run_trials(_load_study(cfg, worker), cfg.open_space(), cfg, n)
    except CnnDslError as e:
        print(e, file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:
        sys.exit(130)


# ----------------------------------------------------------------------------- the results


def _row(t) -> dict[str, Any]:
    a = t.user_attrs
    value = t.value if t.value is not None and not (isinstance(t.value, float) and math.isnan(t.value)) else None
    return {"trial": t.number, "state": t.state.name.lower(), "reason": a.get("reason", ""),
            "accuracy": value, "epochs": a.get("epochs", 0), "params": a.get("params"), "macs": a.get("macs"),
            "activations": a.get("activations"), "arch_hash": a.get("arch_hash", ""),
            "duplicate_of": a.get("duplicate_of", ""), "seconds": a.get("seconds", 0.0), "worker": a.get("worker", ""),
            "choices": a.get("options", {}), "_choices": a.get("choices", {})}


def collect(study) -> tuple[list[dict[str, Any]], dict[str, Any] | None]:
    """Every trial as a row (by trial number) and the best complete one (ties: fewer params, then earlier)."""
    rows = [_row(t) for t in sorted(study.get_trials(deepcopy=False), key=lambda t: t.number)]
    done = [r for r in rows if r["state"] == "complete" and r["accuracy"] is not None]
    best = min(done, key=lambda r: (-r["accuracy"], r["params"], r["trial"])) if done else None
    return rows, best


def concrete_source(space: Space, choices: dict[str, int]) -> tuple[str, Any]:
    """The member's ``.cnn`` text as trained (:meth:`Space.source`, overrides included), and its network."""
    member = space.member(choices)
    return member.source, member.network_obj


def _checked_best(out: Path, space: Space, choices: dict[str, int]) -> str:
    """The best member's source, confirmed to load from ``out/best.cnn`` to the network that was trained
    (the files it uses must be found from there); else its expansion, which needs no other file."""
    from .api import load
    from .expand import expand

    text, net = concrete_source(space, choices)
    path = out / BEST_FILE
    path.write_text(text, encoding="utf-8")
    try:
        again = load(f"{path}:{space.network}")
        if (again.input_shape, again.output_shapes, again.params, again.macs) == \
                (net.input_shape, net.output_shapes, net.params, net.macs):
            return text
    except CnnDslError:
        pass
    text = expand(net)
    path.write_text(text, encoding="utf-8")
    return text


def write_results(out: Path, rows: list[dict[str, Any]]) -> None:
    """``results.csv``: one row per trial, in trial order."""
    out.mkdir(parents=True, exist_ok=True)
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(COLUMNS)
    for r in rows:
        cells = dict(r, accuracy="" if r["accuracy"] is None else f"{r['accuracy']:.6f}",
                     params="" if r["params"] is None else r["params"], macs="" if r["macs"] is None else r["macs"],
                     activations="" if r["activations"] is None else r["activations"],
                     choices=json.dumps(r["choices"], separators=(",", ":")))
        writer.writerow([cells[c] for c in COLUMNS])
    (out / RESULTS_FILE).write_text(buf.getvalue(), encoding="utf-8")


# ----------------------------------------------------------------------------- the search


def _finished(study) -> int:
    optuna = _optuna()
    S = optuna.trial.TrialState
    return len(study.get_trials(deepcopy=False, states=(S.COMPLETE, S.PRUNED, S.FAIL)))


def _run_workers(cfg: SearchConfig, trials: int, workers: int, bar, study, space: Space) -> None:
    """Run ``trials`` trials in ``workers`` processes: this one (worker 0) and ``workers - 1`` started here."""
    import multiprocessing

    ctx = multiprocessing.get_context("spawn")  # a fork would copy torch's thread pools half-made
    shares = [trials // workers + (i < trials % workers) for i in range(workers)]
    procs = [ctx.Process(target=_worker, args=(cfg, n, i), name=f"cnndsl-search-{i}")
             for i, n in enumerate(shares) if n and i]
    for proc in procs:
        proc.start()
    start_count = _finished(study) if bar is not None else 0

    def tick() -> None:
        if bar is not None:
            bar.n = _finished(study) - start_count
            bar.refresh()

    try:
        run_trials(study, space, cfg, shares[0], on_done=tick)
        while any(proc.is_alive() for proc in procs):
            for proc in procs:
                proc.join(timeout=0.5)
            tick()
    except BaseException:  # an error here, or Ctrl-C: stop the other workers too
        for proc in procs:
            proc.terminate()
            proc.join()
        raise
    failed = [proc.name for proc in procs if proc.exitcode != 0]
    if failed:
        raise CnnDslError(f"search worker{'s' if len(failed) > 1 else ''} {', '.join(failed)} stopped with an "
                          "error (its message is above)", None)


def search(space: str, data: str = "digits", trials: int = 20, *, epochs: int = 2, out: str | Path | None = None,
           storage: str | None = None, study: str | None = None, workers: int = 1, seed: int | None = 0,
           limits: Limits | None = None, sampler: str = "tpe", pruner: Any = "median",
           input_shape: tuple[int, ...] | None = None, params: dict[str, Any] | None = None,
           lr: float = 0.05, batch_size: int = 32, progress: bool = False) -> SearchResult:
    """Search ``space`` for the member with the best validation accuracy on ``data``; returns a :class:`SearchResult`.

    ``trials`` is the number of trials this call runs (spread over ``workers`` local processes); each
    member is trained for ``epochs`` epochs with :func:`cnndsl.train.train`. ``out`` is a folder for
    ``results.csv``, ``best.cnn`` and, without ``storage``, the study's journal file ``study.log``;
    ``storage`` is an SQLAlchemy URL or a journal file path shared by other processes or machines.
    ``study`` names the study (default: the space's name); an existing one is continued. ``seed``
    seeds the sampler (worker ``i`` uses ``seed + i``): a one-process search is reproducible, a
    several-worker one is not (the trials interleave differently from run to run). ``limits`` are
    hard limits checked from the IR before training. ``pruner`` is ``"median"``, ``"none"`` or an
    ``optuna.pruners.BasePruner``.

    >>> result = search("my_space.cnn", trials=20, epochs=2, out="runs/s1")  # doctest: +SKIP
    >>> result.best_accuracy, result.best_source                             # doctest: +SKIP
    """
    optuna = _optuna()
    if trials < 1 or workers < 1 or epochs < 1:
        raise CnnDslError("trials, workers and epochs must be at least 1", None)
    probe = Space.open(space, input_shape=input_shape, params=params)  # a mistake in the space stops here
    out_dir = Path(out) if out is not None else None
    if storage is None:
        if out_dir is None:
            if workers > 1:
                raise CnnDslError("several workers share a study through a storage", None,
                                  "give an output folder (--out DIR) or --storage URL")
        else:
            out_dir.mkdir(parents=True, exist_ok=True)
            storage = str(out_dir / JOURNAL_FILE)
    lim = limits or Limits()
    cfg = SearchConfig(space=space, study=study or probe.label, storage=storage or "", data=data, epochs=epochs,
                       input_shape=tuple(input_shape) if input_shape else None,
                       params=tuple(sorted((params or {}).items())),
                       limits=(lim.max_params, lim.max_macs, lim.max_activations), sampler=sampler, seed=seed,
                       pruner=pruner, lr=lr, batch_size=batch_size)
    verbosity = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    if storage is None:  # one process, nothing written: an in-memory study
        the_study = optuna.create_study(direction="maximize", study_name=cfg.study, sampler=_sampler(cfg, 0),
                                        pruner=_pruner(pruner))
    else:
        the_study = _load_study(cfg)
    bar = counter(trials, "search", unit="trial") if progress else None
    try:
        if workers == 1:
            run_trials(the_study, probe, cfg, trials, on_done=(lambda: bar.update(1)) if bar is not None else None)
        else:
            _run_workers(cfg, trials, workers, bar, the_study, probe)
    finally:  # also after an error or Ctrl-C: the results so far are written
        if bar is not None:
            bar.close()
        optuna.logging.set_verbosity(verbosity)
        rows, best = collect(the_study)
        best_source = None
        if out_dir is not None:
            write_results(out_dir, rows)
            if best:
                best_source = _checked_best(out_dir, probe, best["_choices"])
        elif best:
            best_source = concrete_source(probe, best["_choices"])[0]
    timings = [r["seconds"] for r in rows if r["seconds"]]
    return SearchResult(the_study, rows, best, best_source, out_dir, trained=len(timings), timings=timings)


# ----------------------------------------------------------------------------- the command line


def cmd_search(args, params: dict) -> int:
    """``cnndsl search SPACE``: run the search and print its summary."""
    result = search(args.space, data=args.data, trials=args.trials, epochs=args.epochs, out=args.out,
                    storage=args.storage, study=args.study, workers=args.workers, seed=args.seed,
                    limits=Limits(args.max_params, args.max_macs, args.max_activations), sampler=args.sampler,
                    pruner=args.pruner, input_shape=args.input, params=params, progress=True)
    for line in result.lines():
        print(line)
    return 0


def add_parser(sub, shape, parse_params) -> None:
    """Register ``cnndsl search`` on the CLI's subparsers."""
    h = "search a space for the member that trains best (Optuna: sampling, pruning, constraints)"
    sp = sub.add_parser("search", help=h, description=h,
                        epilog="SPACE is a .cnn file with choices, FILE.cnn:NETWORK, or a shipped space "
                               "(resnet_cifar, inception, nb201). See docs/search.md.")
    sp.add_argument("space", metavar="SPACE")
    sp.add_argument("--data", default="digits", metavar="digits|DIR",
                    help="scikit-learn's 8x8 digits (default), or an ImageFolder-style directory")
    sp.add_argument("--trials", type=int, default=20, metavar="N", help="trials to run (default 20)")
    sp.add_argument("--epochs", type=int, default=2, metavar="N", help="training epochs per trial (default 2)")
    sp.add_argument("--out", default=None, metavar="DIR",
                    help="results.csv, best.cnn and the study journal go here (default: search-SPACE)")
    sp.add_argument("--storage", metavar="URL", help="a shared study: sqlite:///FILE, postgresql://..., or a "
                                                     "journal file path (default: DIR/study.log)")
    sp.add_argument("--study", metavar="NAME", help="the study's name (default: the space's name)")
    sp.add_argument("--workers", type=int, default=1, metavar="K", help="local processes sharing the study")
    sp.add_argument("--seed", type=int, default=0, help="sampler seed (default 0; worker i uses seed+i)")
    sp.add_argument("--sampler", choices=("tpe", "random"), default="tpe")
    sp.add_argument("--pruner", choices=("median", "none"), default="median")
    sp.add_argument("--max-params", type=int, metavar="N")
    sp.add_argument("--max-macs", type=int, metavar="N")
    sp.add_argument("--max-activations", type=int, metavar="N")
    sp.add_argument("--input", type=shape, metavar="CxHxW", help="override the input size of every member")
    sp.add_argument("--param", "-p", action="append", metavar="NAME=VALUE", help="set a network parameter")

    def run(args):
        if args.out is None:
            args.out = f"search-{Path(args.space).stem}"
        return cmd_search(args, parse_params(args.param))

    sp.set_defaults(func=run)
