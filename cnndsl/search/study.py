"""``cnndsl search``: architecture search over a space's members, on Optuna.

Each trial is one member of a search space (see :mod:`cnndsl.search.variants`): the sampler picks an
option for every choice the member reaches (:meth:`Space.suggest`), the member is checked from the
IR, and only then trained, with the PyTorch training loop of :mod:`cnndsl.train.torch_loop`, for a few epochs.

A trial ends in one of these ways, all recorded in the study and in ``results.csv``:

* **complete**: trained for every epoch; its value is the final validation accuracy (with ``objectives``,
  one value per objective: see :data:`OBJECTIVES`);
* **pruned** at an epoch: the pruner (Optuna's median pruner by default) saw its per-epoch
  validation accuracy fall below that of earlier trials at the same epoch;
* **pruned, over a limit**: its parameters, MACs or activations, read from the IR, exceed
  ``--max-params`` / ``--max-macs`` / ``--max-activations``; it is never trained;
* **pruned, invalid**: the member does not build (a shape error, an output that is always zero);
* **duplicate**: its architecture hash equals that of a trial already trained with the same
  settings; the recorded result is reused (same value and state) and nothing is trained.

Pruned trials, those over a limit included, count as bad results for the sampler, so it learns to
avoid them; failed trials (an error while training) are ignored by it.

The sampler is TPE, random search, regularised evolution (:mod:`cnndsl.search.evolution`) or NSGA-II. With
several objectives (``accuracy,params``, ...) the study is multi-objective: it has no single best value,
``pareto.csv`` lists its non-dominated trials (:mod:`cnndsl.search.pareto`) and ``pareto.png`` draws them.

The study lives in a storage: by default a journal file ``DIR/study.log`` next to the results, which
several local processes (``workers``) share safely. ``storage`` takes an SQLAlchemy URL instead
(``sqlite:///search.db``, ``postgresql+psycopg2://user:pass@host/db`` with ``pip install
psycopg2-binary``): several machines pointed at one database with the same study name run one study
together, and may create it at the same moment. In a database and in a journal file, a running trial
sends a heartbeat; one whose worker was killed is failed by the next worker and run again. Each process seeds its sampler
afresh unless given a seed (recorded per trial). Running the same command again in the same folder
continues the study with more trials.

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
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cnndsl.errors import CnnDslError
from cnndsl.progress import counter
from cnndsl.search.arch_hash import arch_hash
from cnndsl.search.pareto import front
from cnndsl.search.variants import Limits, Space

RESULTS_FILE = "results.csv"
BEST_FILE = "best.cnn"
JOURNAL_FILE = "study.log"
PARETO_FILE = "pareto.csv"
PARETO_PLOT = "pareto.png"
PARETO_DIR = "pareto"
#: What a search can optimise, and in which direction: the validation accuracy (trained), the parameters and
#: MACs (from the IR, nothing trained) and the latency (the built PyTorch model timed on this machine).
OBJECTIVES = {"accuracy": "maximize", "params": "minimize", "macs": "minimize", "latency": "minimize"}
SAMPLERS = ("tpe", "random", "evolution", "nsga2")
PRUNERS = ("median", "hyperband", "none")
#: The latency objective: forward passes at batch 1 (eval mode, no gradients, one CPU thread) run first and not
#: timed, then the timed ones, each timed alone; the latency is their median, in milliseconds.
LATENCY_WARMUP = 5
LATENCY_REPEATS = 21
#: Seconds between a running trial's heartbeats in a database storage; one silent for twice as long (its
#: worker was killed) is failed by the next worker that asks for a trial, and run again.
HEARTBEAT_SECONDS = 60
#: The defaults of ``--sampler evolution`` (cnndsl.search.evolution): sized for searches of tens to hundreds of
#: trials (Real et al. used a population of 100 and a tournament of 25 over 20,000 trials).
POPULATION = 20
TOURNAMENT = 5
#: How many times a trial whose worker died is run again (a member that kills its worker is not retried forever).
HEARTBEAT_RETRIES = 2
#: Who ran a trial (a column of results.csv): this machine and process.
WORKER = f"{socket.gethostname()}/{os.getpid()}"
COLUMNS = ("trial", "state", "reason", "accuracy", "epochs", "params", "macs", "activations", "latency_ms",
           "arch_hash", "duplicate_of", "seconds", "worker", "seed", "nb201_arch", "nb201_index", "choices")
PARETO_COLUMNS = ("trial", "accuracy", "params", "macs", "latency_ms", "arch_hash", "source", "choices")


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
    pruner: Any = "auto"
    lr: float = 0.05
    batch_size: int = 32
    heartbeat: int | None = HEARTBEAT_SECONDS
    objectives: tuple[str, ...] = ("accuracy",)
    population: int = POPULATION
    tournament: int = TOURNAMENT

    @property
    def directions(self) -> list[str]:
        return [OBJECTIVES[o] for o in self.objectives]

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
    #: The sampler seed this call used (worker ``i``: ``seed + i``): pass it as ``seed`` to reproduce a one-process run.
    seed: int | None = None
    workers: int = 1
    objectives: tuple[str, ...] = ("accuracy",)
    #: With several objectives: the non-dominated complete trials (rows), as in ``pareto.csv``.
    pareto: list[dict[str, Any]] = field(default_factory=list)
    #: Why ``pareto.png`` was not drawn (Pillow missing), else None.
    plot_note: str | None = None

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
            figures = [f"accuracy {b['accuracy']:.4f}" if b["accuracy"] is not None else None,
                       f"{b['params']:,} params", f"{b['macs']:,} MACs",
                       f"{b['latency_ms']:.3f} ms" if b["latency_ms"] is not None else None]
            out.append(f"best by {self.objectives[0]}: trial {b['trial']}, "
                       + ", ".join(f for f in figures if f))
        else:
            out.append("no trial completed")
        if len(self.objectives) > 1:
            out.append(f"Pareto front ({', '.join(self.objectives)}): {len(self.pareto)} trial"
                       f"{'s' if len(self.pareto) != 1 else ''}: " + ", ".join(str(r["trial"]) for r in self.pareto))
        if self.seed is not None:
            out.append(f"sampler seed {self.seed}" + (f" (worker i: {self.seed} + i)" if self.workers > 1 else ""))
        if self.out:
            files = [RESULTS_FILE] + ([BEST_FILE] if self.best else [])
            if len(self.objectives) > 1:
                files += [PARETO_FILE] + ([PARETO_PLOT] if self.plot_note is None else [])
            out.append(f"wrote {', '.join(str(self.out / f) for f in files)}")
            if len(self.objectives) > 1 and self.plot_note:
                out.append(self.plot_note)
        return out


# ----------------------------------------------------------------------------- optuna plumbing


def _optuna():
    try:
        import optuna
    except ImportError:
        raise CnnDslError("cnndsl search needs Optuna", None, "pip install 'cnndsl[search]'") from None
    return optuna


#: The storage URLs to suggest (the PostgreSQL one names its driver: SQLAlchemy's default is psycopg 3).
STORAGE_FORMS = ("sqlite:///FILE.db, postgresql+psycopg2://USER:PASSWORD@HOST/DATABASE, "
                 "mysql+pymysql://USER:PASSWORD@HOST/DATABASE, or the path of a journal file")
#: The package that provides each SQLAlchemy database driver, for the hint when it is missing.
DRIVER_PACKAGES = {"psycopg2": "psycopg2-binary", "psycopg": "'psycopg[binary]'", "pg8000": "pg8000",
                   "asyncpg": "asyncpg", "pymysql": "pymysql", "mysqldb": "mysqlclient",
                   "mysqlconnector": "mysql-connector-python", "mariadbconnector": "mariadb"}
#: Attempts at opening a storage and creating a study when other processes create them at the same moment.
CREATE_ATTEMPTS = 8


def _storage(url: str, heartbeat: int | None = None):
    """An Optuna storage: an SQLAlchemy URL (``sqlite:///x.db``, ``postgresql+psycopg2://...``) or a journal
    file path; every mistake (a bad URL, a missing driver or folder, a damaged file) is a CnnDslError.

    ``heartbeat`` (seconds) turns on a heartbeat: a running trial records that it is alive that often, and one
    silent for twice as long (its worker was killed) is failed by the next worker that asks for a trial, and
    retried. A database uses Optuna's own heartbeat; Optuna's journal storage has none (Optuna 5.0), so a
    journal file gets this module's (:func:`_heartbeat_journal`).
    """
    _optuna()
    if "://" in url:
        return _rdb_storage(url, heartbeat)
    return _journal_storage(Path(url), heartbeat)


def _stale_callback():
    """Optuna's callback that queues a trial failed for a stale heartbeat to run again (at most twice)."""
    import warnings

    optuna = _optuna()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        retry = getattr(optuna.storages, "RetryHeartbeatStaleTrialCallback", None)  # optuna >= 4.9
        if retry is not None:
            return "heartbeat_stale_trial_callback", retry(max_retry=HEARTBEAT_RETRIES)
        return "failed_trial_callback", optuna.storages.RetryFailedTrialCallback(max_retry=HEARTBEAT_RETRIES)


#: The system attribute where a journal file's running trial records its heartbeat (seconds since the epoch).
HEARTBEAT_ATTR = "cnndsl:heartbeat"


def _heartbeat_journal(backend, interval: int):
    """A journal storage with Optuna's heartbeat interface (``BaseHeartbeat``), which Optuna's journal lacks.

    A heartbeat is a system attribute of the running trial, :data:`HEARTBEAT_ATTR`, set to this machine's
    clock (one journal line per beat); a running trial is stale when the later of its last beat and its
    start is more than ``2 * interval`` seconds old. Optuna's own machinery does the rest, as for a
    database: the heartbeat thread, ``fail_stale_trials`` (the journal's order of entries makes exactly one
    worker fail a stale trial) and the retry callback. Machines sharing one journal file need clocks that
    agree to well within the grace period.
    """
    optuna = _optuna()
    from optuna.storages._heartbeat import BaseHeartbeat
    from optuna.storages.journal import JournalStorage

    class HeartbeatJournalStorage(JournalStorage, BaseHeartbeat):
        def __init__(self, backend, interval: int):
            super().__init__(backend)
            self._interval = int(interval)
            self._grace = 2 * int(interval)
            self._callback = _stale_callback()[1]

        def record_heartbeat(self, trial_id: int) -> None:
            try:
                self.set_trial_system_attr(trial_id, HEARTBEAT_ATTR, time.time())
            except optuna.exceptions.UpdateFinishedTrialError:  # failed as stale meanwhile by another worker
                pass

        def _get_stale_trial_ids(self, study_id: int) -> list[int]:
            now = time.time()
            stale = []
            for t in self.get_all_trials(study_id, deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
                beats = [t.system_attrs.get(HEARTBEAT_ATTR), t.datetime_start.timestamp() if t.datetime_start else None]
                last = max((b for b in beats if b is not None), default=None)
                if last is not None and now - last > self._grace:
                    stale.append(t._trial_id)
            return stale

        def get_heartbeat_interval(self) -> int | None:
            return self._interval

        def get_heartbeat_stale_trial_callback(self):
            return self._callback

        def get_failed_trial_callback(self):  # the name before Optuna 4.9
            return self._callback

    return HeartbeatJournalStorage(backend, interval)


def _rdb_storage(url: str, heartbeat: int | None):
    import warnings

    import sqlalchemy
    from sqlalchemy import exc

    optuna = _optuna()
    try:
        parsed = sqlalchemy.engine.make_url(url)
    except exc.ArgumentError:
        raise CnnDslError(f"{url!r} is not a database URL", None, f"give {STORAGE_FORMS}") from None
    shown = parsed.render_as_string(hide_password=True)
    backend = parsed.get_backend_name()
    where = parsed.database or ""
    if backend == "sqlite" and where and where != ":memory:" and not where.startswith("file:"):
        folder = Path(where).parent
        if not folder.is_dir():
            raise CnnDslError(f"the storage {shown} is in a folder that does not exist: {folder}", None,
                              f"create it first (mkdir -p {folder}) or give another path")
        if Path(where).is_dir():
            raise CnnDslError(f"the storage {shown} names a folder, not a database file", None,
                              "give the path of a file (sqlite:///DIR/search.db)")
    kwargs: dict[str, Any] = {}
    if heartbeat:
        name, callback = _stale_callback()
        kwargs = {"heartbeat_interval": int(heartbeat), "grace_period": 2 * int(heartbeat), name: callback}
    for attempt in range(CREATE_ATTEMPTS):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                return optuna.storages.RDBStorage(url, **kwargs)
        except exc.NoSuchModuleError:
            raise CnnDslError(f"the storage {shown} names an unknown kind of database ({parsed.drivername!r})",
                              None, f"give {STORAGE_FORMS}") from None
        except exc.ArgumentError as e:
            raise CnnDslError(f"the storage {shown} cannot be used: {' '.join(str(e).split())}", None,
                              f"give {STORAGE_FORMS}") from None
        except ImportError as e:
            raise _driver_error(parsed, shown, e) from None
        except exc.DBAPIError as e:
            if attempt + 1 < CREATE_ATTEMPTS and _creation_race(e):
                _back_off(attempt)
                continue
            raise _database_error(parsed, shown, e) from None
        except RuntimeError as e:  # optuna: the tables were written by another version of Optuna
            raise CnnDslError(f"the storage {shown} cannot be used: {' '.join(str(e).split())}", None,
                              "upgrade it with `optuna storage upgrade --storage URL`, or use another one") from None
    raise AssertionError("unreachable")


def _driver_error(parsed, shown: str, e: ImportError) -> CnnDslError:
    """A missing database driver, with the package to install (and, for PostgreSQL, the URL that names one)."""
    cause = e.__cause__ if isinstance(e.__cause__, ImportError) else e
    missing = getattr(cause, "name", None) or str(cause)
    backend = parsed.get_backend_name()
    if backend == "postgresql":
        hint = ("use postgresql+psycopg2://USER:PASSWORD@HOST/DATABASE and `pip install psycopg2-binary` "
                "(a plain postgresql:// asks SQLAlchemy for its default driver, psycopg 3)")
        if "+" in parsed.drivername and parsed.get_driver_name() != "psycopg2":  # a driver of its own choosing
            package = DRIVER_PACKAGES.get(parsed.get_driver_name(), parsed.get_driver_name())
            hint = f"pip install {package}, or " + hint
    elif backend in ("mysql", "mariadb"):
        package = DRIVER_PACKAGES.get(parsed.get_driver_name(), parsed.get_driver_name())
        hint = f"pip install {package}, or use mysql+pymysql://USER:PASSWORD@HOST/DATABASE and `pip install pymysql`"
    else:
        package = DRIVER_PACKAGES.get(parsed.get_driver_name(), parsed.get_driver_name())
        hint = f"install the {parsed.drivername} driver (pip install {package})"
    return CnnDslError(f"the storage {shown} needs a database driver that is not installed ({missing})", None, hint)


def _database_error(parsed, shown: str, e) -> CnnDslError:
    """The database refused (no server, a wrong password, a file that is not a database): one line and a hint."""
    text = " ".join(str(getattr(e, "orig", None) or e).split()) or type(e).__name__
    if parsed.get_backend_name() == "sqlite":
        if "not a database" in text:
            return CnnDslError(f"the storage {shown}: {parsed.database} is not an SQLite database", None,
                               "give the path of a new file, or of a database an earlier search wrote")
        return CnnDslError(f"cannot open the storage {shown}: {text}", None,
                           "check that the file can be created and written there")
    return CnnDslError(f"cannot open the storage {shown}: {text}", None,
                       "check that the database server is running and reachable, and the URL's user, password, "
                       "host, port and database name")


def _creation_race(e) -> bool:
    """Whether a database error is another process creating the same tables or rows at the same moment."""
    from sqlalchemy import exc

    text = str(getattr(e, "orig", None) or e).lower()
    if isinstance(e, exc.IntegrityError):
        return True
    return any(s in text for s in ("already exists", "duplicate", "unique constraint", "database is locked"))


def _back_off(attempt: int) -> None:
    """A short random pause before another attempt, so that racing processes fall out of step."""
    import random

    time.sleep(random.uniform(0.02, 0.1) * (attempt + 1))


def _journal_storage(path: Path, heartbeat: int | None = None):
    from optuna.storages.journal import JournalFileBackend, JournalStorage

    if path.is_dir():
        raise CnnDslError(f"the storage {path} is a folder, not a journal file", None,
                          f"give a file's path ({path / JOURNAL_FILE}) or a database URL")
    folder = path.parent
    if not folder.is_dir():
        raise CnnDslError(f"the storage {path} is in a folder that does not exist: {folder}", None,
                          f"create it first (mkdir -p {folder}) or give another path")
    if path.exists():
        _check_journal(path)
    try:
        backend = JournalFileBackend(str(path))
        return _heartbeat_journal(backend, heartbeat) if heartbeat else JournalStorage(backend)
    except OSError as e:
        raise CnnDslError(f"cannot open the journal {path}: {e.strerror or e}", None,
                          "check that the file can be created and written there") from None
    except ValueError as e:  # changed between the check and the replay
        raise CnnDslError(f"the journal {path} is damaged: {e}", None,
                          "move it away to start a new study in a new file") from None


def _check_journal(path: Path) -> None:
    """Refuse a journal file that is not Optuna's (every line a JSON object with an ``op_code``) before Optuna
    replays it, or, worse, appends to it: a damaged line stops every later read of the study."""
    problem = _journal_problem(path)
    if problem and problem[0] == "unfinished":  # perhaps another process is writing it now: look again
        time.sleep(0.5)
        problem = _journal_problem(path)
    if problem:
        what, line_no = problem
        detail = "it ends in an unfinished entry" if what == "unfinished" else \
            f"line {line_no} is not an Optuna journal entry"
        raise CnnDslError(f"the journal {path} is not an Optuna study journal, or is damaged: {detail}", None,
                          f"move it away to start a new study (a search writes a new {JOURNAL_FILE}), or give "
                          f"another --storage; to keep the trials before it, delete line {line_no} and every "
                          "line after it")


def _journal_problem(path: Path) -> tuple[str, int] | None:
    """The first bad line of a journal file: ``("bad" | "unfinished", line number)``, or None."""
    try:
        data = path.read_bytes()
    except OSError as e:
        raise CnnDslError(f"cannot read the journal {path}: {e.strerror or e}", None,
                          "check the file's permissions") from None
    line_no, start = 0, 0
    while start < len(data):
        end = data.find(b"\n", start)
        line_no += 1
        line = data[start:] if end < 0 else data[start:end]
        start = len(data) if end < 0 else end + 1
        try:
            record = json.loads(line)
        except ValueError:
            record = None
        if not (isinstance(record, dict) and "op_code" in record):
            return ("unfinished" if end < 0 else "bad"), line_no
        if end < 0:
            return "unfinished", line_no
    return None


def _sampler(cfg: SearchConfig, worker: int, space: Space | None = None):
    """Worker ``worker``'s sampler: TPE, random, regularised evolution over the space's members, or NSGA-II."""
    import warnings

    optuna = _optuna()
    seed = _worker_seed(cfg, worker)
    if cfg.sampler == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if cfg.sampler == "tpe":
        with warnings.catch_warnings():  # multivariate TPE over several objectives is experimental in Optuna
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return optuna.samplers.TPESampler(seed=seed)
    if cfg.sampler == "evolution":
        from cnndsl.search.evolution import RegularizedEvolutionSampler

        return RegularizedEvolutionSampler(space or cfg.open_space(), cfg.population, cfg.tournament, seed=seed)
    if cfg.sampler == "nsga2":
        return optuna.samplers.NSGAIISampler(seed=seed)
    raise CnnDslError(f"unknown sampler {cfg.sampler!r}", None, f"use {', '.join(SAMPLERS)}")


def _worker_seed(cfg: SearchConfig, worker: int) -> int | None:
    """Worker ``worker``'s sampler seed: distinct streams, else the workers would propose alike."""
    return None if cfg.seed is None else cfg.seed + worker


def fresh_seed() -> int:
    """A new sampler seed from the operating system's randomness (what a search uses unless given one)."""
    import secrets

    return secrets.randbits(31)


def _pruner(spec, epochs: int = 2, objectives: tuple[str, ...] = ("accuracy",)):
    """The pruner: ``"auto"`` (the default) is ``"median"`` for one objective and ``"none"`` for several, as
    Optuna cannot prune a multi-objective trial (a trial of several objectives reports no intermediate value)."""
    optuna = _optuna()
    if spec == "auto":
        spec = "median" if len(objectives) == 1 else "none"
    if spec is None or spec == "none" or isinstance(spec, optuna.pruners.NopPruner):
        return optuna.pruners.NopPruner()
    if spec not in PRUNERS and not isinstance(spec, optuna.pruners.BasePruner):
        raise CnnDslError(f"unknown pruner {spec!r}", None, f"use {', '.join(PRUNERS)}")
    if len(objectives) > 1:
        name = spec if isinstance(spec, str) else type(spec).__name__
        raise CnnDslError(f"the {name} pruner with several objectives ({','.join(objectives)})", None,
                          "Optuna cannot prune a multi-objective trial: use --pruner none (the default there)")
    if spec == "median":
        # prune from the first epoch on, once four trials have completed (a trial's last epoch is never pruned)
        return optuna.pruners.MedianPruner(n_startup_trials=4, n_warmup_steps=0)
    if spec == "hyperband":
        # successive halving brackets over the epochs: a trial's resource is its epoch count
        return optuna.pruners.HyperbandPruner(min_resource=1, max_resource=max(epochs, 1), reduction_factor=3)
    return spec


def parse_objectives(text: str | tuple[str, ...] | list[str]) -> tuple[str, ...]:
    """``"accuracy,params"`` (or a sequence of names) as a tuple of known, distinct objectives."""
    names = [n.strip() for n in text.split(",")] if isinstance(text, str) else [str(n).strip() for n in text]
    known = ", ".join(OBJECTIVES)
    if not names or any(not n for n in names):
        raise CnnDslError(f"objectives {text!r}: an empty name", None, f"give a comma-separated list of {known}")
    for n in names:
        if n not in OBJECTIVES:
            raise CnnDslError(f"unknown objective {n!r}", None, f"give a comma-separated list of {known}")
    if len(set(names)) != len(names):
        raise CnnDslError(f"objectives {text!r} name one twice", None, "give each objective once")
    return tuple(names)


def _same_objectives(study, cfg: SearchConfig):
    """Record the objectives in a new study; refuse to continue one that has other objectives."""
    had = study.user_attrs.get("objectives")
    if had is None:
        if [d.name.lower() for d in study.directions] != cfg.directions or (
                study.trials and list(cfg.objectives) != ["accuracy"]):
            raise CnnDslError(f"the study {cfg.study!r} was made by an earlier search with other objectives", None,
                              "give another --study name, or the same --objectives as before")
        study.set_user_attr("objectives", list(cfg.objectives))
    elif list(had) != list(cfg.objectives):
        raise CnnDslError(f"the study {cfg.study!r} optimises {','.join(had)}, not {','.join(cfg.objectives)}",
                          None, f"give --objectives {','.join(had)} to continue it, or another --study name")
    return study


def _load_study(cfg: SearchConfig, worker: int = 0, space: Space | None = None):
    """Open ``cfg``'s study, creating it if it does not exist: safe when several processes, on one machine or
    several, create the same fresh study (and the database tables under it) at the same moment."""
    optuna = _optuna()
    from sqlalchemy import exc

    storage = _storage(cfg.storage, cfg.heartbeat)
    for attempt in range(CREATE_ATTEMPTS):
        try:
            study = optuna.create_study(storage=storage, study_name=cfg.study, directions=cfg.directions,
                                        sampler=_sampler(cfg, worker, space), pruner=_pruner(cfg.pruner, cfg.epochs,
                                                                                             cfg.objectives),
                                        load_if_exists=True)
            return _same_objectives(study, cfg)
        except (optuna.exceptions.DuplicatedStudyError, exc.DBAPIError) as e:
            # another process created the study between this one's insert and its look-up, or is creating it
            if attempt + 1 == CREATE_ATTEMPTS or (isinstance(e, exc.DBAPIError) and not _creation_race(e)):
                if isinstance(e, exc.DBAPIError):
                    raise CnnDslError(f"cannot open the study {cfg.study!r}: {' '.join(str(e.orig).split())}",
                                      None, "check that the database server is running and reachable") from None
                raise CnnDslError(f"cannot create or open the study {cfg.study!r}: {e}", None,
                                  "run the command again") from None
            _back_off(attempt)
    raise AssertionError("unreachable")


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


def measure_latency(net) -> float:
    """The built PyTorch model's forward time at batch 1 on this machine, in milliseconds: the median of
    :data:`LATENCY_REPEATS` timed passes after :data:`LATENCY_WARMUP` untimed ones (eval mode, no gradients).

    It runs on one CPU thread: a batch of one is too small to share out, and on a busy machine a thread pool
    waits for its descheduled threads (a few-kMAC network measured 70-80 ms on two threads, 0.1 ms on one).
    """
    import torch

    from cnndsl.backends.torch import build

    model = build(net).eval()
    x = torch.zeros(1, *net.input_shape)
    times = []
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with torch.inference_mode():
            for _ in range(LATENCY_WARMUP):
                model(x)
            for _ in range(LATENCY_REPEATS):
                start = time.perf_counter()
                model(x)
                times.append(time.perf_counter() - start)
    finally:
        torch.set_num_threads(threads)
    return round(statistics.median(times) * 1000, 6)  # as results.csv writes it, so the front is the written one's


def run_trial(study, trial, space: Space, cfg: SearchConfig) -> tuple[float | list[float] | None, Any]:
    """Evaluate one asked trial; returns ``(value or values, state)`` for ``study.tell`` (the reason is a user
    attribute). The objectives' figures are also user attributes: ``accuracy`` (when trained), ``params``,
    ``macs``, ``latency_ms`` (when an objective)."""
    optuna = _optuna()
    from cnndsl.train import torch_loop as training

    State = optuna.trial.TrialState
    several = len(cfg.objectives) > 1
    member = space.suggest(trial)
    trial.set_user_attr("worker", WORKER)
    trial.set_user_attr("choices", member.choices)
    trial.set_user_attr("options", member.options)
    if member.nb201_arch is not None:  # a NAS-Bench-201 member: its cell as the benchmark writes and numbers it
        trial.set_user_attr("nb201_arch", member.nb201_arch)
        trial.set_user_attr("nb201_index", member.nb201_index)
    if not member.valid:
        trial.set_user_attr("reason", f"invalid: {member.error}")
        return None, State.PRUNED
    net = member.network_obj
    h = arch_hash(net.plan)
    for k, v in (("arch_hash", h), ("params", net.params), ("macs", net.macs), ("activations", net.activations)):
        trial.set_user_attr(k, v)
    reason = Limits(*cfg.limits).violation(member)
    if reason:
        trial.set_user_attr("reason", f"over limit: {reason}")
        return None, State.PRUNED
    key = f"{h}:{cfg.training_key()}"  # (a study has one set of objectives: _same_objectives)
    trial.set_user_attr("train_key", key)
    earlier = _previous(study, key, trial.number)
    if earlier is not None:
        trial.set_user_attr("duplicate_of", earlier.number)
        note = earlier.user_attrs.get("reason")
        trial.set_user_attr("reason", f"duplicate of trial {earlier.number}" + (f" ({note})" if note else ""))
        for k in ("accuracy", "latency_ms", "epochs"):
            if k in earlier.user_attrs:
                trial.set_user_attr(k, earlier.user_attrs[k])
        if earlier.state == State.PRUNED:
            if earlier.value is not None and not several:
                trial.report(earlier.value, earlier.last_step)
            return None, State.PRUNED
        return (earlier.values if several else earlier.value), State.COMPLETE

    figures: dict[str, float] = {"params": float(net.params), "macs": float(net.macs)}
    if "latency" in cfg.objectives:
        figures["latency"] = measure_latency(net)
        trial.set_user_attr("latency_ms", figures["latency"])
    if "accuracy" in cfg.objectives:
        def on_epoch(epoch: int, epochs: int, accuracy: float) -> None:
            trial.set_user_attr("epochs", epoch)
            if several:  # Optuna takes no intermediate values from a multi-objective trial, and prunes none
                return
            trial.report(accuracy, epoch)
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
        trial.set_user_attr("accuracy", accuracy)
        figures["accuracy"] = accuracy
    values = [figures[o] for o in cfg.objectives]
    return (values if several else values[0]), State.COMPLETE


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


def run_trials(study, space: Space, cfg: SearchConfig, n: int, on_done=None, worker: int = 0) -> None:
    """Ask, run and tell ``n`` trials of ``study``; a trial that raises is told failed and the error re-raised.

    With a storage that has a heartbeat (a database, see :func:`_storage`), each ask first fails the trials
    whose worker stopped sending heartbeats (killed mid-trial), which queues them to run again, and a
    running trial sends its heartbeat from a thread. ``worker`` is this process's index (its sampler seed
    is ``cfg.seed + worker``, recorded in each trial's ``seed``).
    """
    import warnings

    optuna = _optuna()
    from optuna.storages._heartbeat import get_heartbeat_thread, is_heartbeat_enabled  # what study.optimize uses

    _warm_up()
    beating = is_heartbeat_enabled(study._storage)
    seed = _worker_seed(cfg, worker)
    for _ in range(n):
        with warnings.catch_warnings():
            # Optuna warns that its heartbeat is meant for study.optimize; this loop does what optimize does
            warnings.filterwarnings("ignore", message="Heartbeat of storage")
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            if beating:
                optuna.storages.fail_stale_trials(study)
            trial = study.ask()
        if "choices" in trial.user_attrs:  # a retry of a trial whose worker died: its copied figures are stale
            for key, blank in (("epochs", 0), ("seconds", 0.0), ("reason", "")):
                trial.set_user_attr(key, blank)
        if seed is not None:
            trial.set_user_attr("seed", seed)
        try:
            with get_heartbeat_thread(trial._trial_id, study._storage):  # stopped before the trial is told
                value, state = run_trial(study, trial, space, cfg)
        except BaseException as e:
            trial.set_user_attr("reason", _failure(e))
            study.tell(trial, state=optuna.trial.TrialState.FAIL)
            raise
        study.tell(trial, value, state=state)
        if on_done is not None:
            on_done()


def _worker(cfg: SearchConfig, n: int, worker: int, plugins: tuple[str, ...] = ()) -> None:
    """A worker process's body: quiet Optuna, load the parent's plugins (``cnndsl.ops.plugin_sources``: a spawned
    process starts without them), run its share of the trials, report a mistake cleanly."""
    _optuna().logging.set_verbosity(_optuna().logging.WARNING)
    try:
        if plugins:
            from cnndsl.ops import allow_plugins, load_plugins

            with allow_plugins(True):  # the parent was allowed to load them: the space's `use "x.py"` too
                load_plugins(plugins)
                space = cfg.open_space()
        else:
            space = cfg.open_space()
        run_trials(_load_study(cfg, worker, space), space, cfg, n, worker=worker)
    except CnnDslError as e:
        print(e, file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:
        sys.exit(130)


# ----------------------------------------------------------------------------- the results


def _number(v) -> float | None:
    return None if v is None or (isinstance(v, float) and math.isnan(v)) else v


def _row(t, objectives: tuple[str, ...] = ("accuracy",)) -> dict[str, Any]:
    a = t.user_attrs
    values = [_number(v) for v in t.values] if t.values is not None else None
    if objectives == ("accuracy",):  # the study's value (a pruned trial's: its last epoch's accuracy)
        accuracy = values[0] if values else None
    else:
        accuracy = a.get("accuracy")
    return {"trial": t.number, "state": t.state.name.lower(), "reason": a.get("reason", ""),
            "accuracy": accuracy, "epochs": a.get("epochs", 0), "params": a.get("params"), "macs": a.get("macs"),
            "activations": a.get("activations"), "latency_ms": a.get("latency_ms"), "arch_hash": a.get("arch_hash", ""),
            "duplicate_of": a.get("duplicate_of", ""), "seconds": a.get("seconds", 0.0), "worker": a.get("worker", ""),
            "seed": a.get("seed", ""), "nb201_arch": a.get("nb201_arch", ""), "nb201_index": a.get("nb201_index", ""),
            "choices": a.get("options", {}), "_choices": a.get("choices", {}),
            "_values": values if t.state.name == "COMPLETE" and values and None not in values else None}


def objectives_of(study) -> tuple[str, ...]:
    """The objectives a study optimises (recorded when it was made; a study from before them: accuracy)."""
    return tuple(study.user_attrs.get("objectives", ["accuracy"]))


def collect(study) -> tuple[list[dict[str, Any]], dict[str, Any] | None]:
    """Every trial as a row (by trial number) and the best complete one: the best value of the first objective
    (then of the next ones), ties to fewer params, then the earlier trial."""
    objectives = objectives_of(study)
    trials = sorted(study.get_trials(deepcopy=False), key=lambda t: t.number)
    rows = [_row(t, objectives) for t in trials]
    retried_as = {t.system_attrs["retry_history"][-1]: t.number for t in trials if t.system_attrs.get("retry_history")}
    for r in rows:
        if r["state"] == "fail" and not r["reason"]:  # failed by another worker: its own died mid-trial
            r["reason"] = "failed: its worker stopped mid-trial (no heartbeat)" + (
                f", run again as trial {retried_as[r['trial']]}" if r["trial"] in retried_as else "")
    done = [r for r in rows if r["_values"] is not None]
    signs = [-1 if OBJECTIVES[o] == "maximize" else 1 for o in objectives]
    best = min(done, key=lambda r: (*(s * v for s, v in zip(signs, r["_values"])), r["params"], r["trial"])) \
        if done else None
    return rows, best


def pareto_rows(rows: list[dict[str, Any]], objectives: tuple[str, ...]) -> list[dict[str, Any]]:
    """The complete trials that no other complete trial dominates (:func:`cnndsl.search.pareto.front`), in trial
    order; a duplicate (its result reused from an earlier trial of the same architecture) is left out, its
    original stands for it."""
    done = [r for r in rows if r["_values"] is not None and r["duplicate_of"] == ""]
    return [done[i] for i in front([r["_values"] for r in done], [OBJECTIVES[o] for o in objectives])]


def concrete_source(space: Space, choices: dict[str, int]) -> tuple[str, Any]:
    """The member's ``.cnn`` text as trained (:meth:`Space.source`, overrides included), and its network."""
    member = space.member(choices)
    return member.source, member.network_obj


def _checked_best(out: Path, space: Space, choices: dict[str, int]) -> str:
    """The best member's source, confirmed to load from ``out/best.cnn`` to the network that was trained
    (the files it uses must be found from there); else its expansion, which needs no other file."""
    from cnndsl.passes.pipeline import load
    from cnndsl.report.expand import expand

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


def _cells(r: dict[str, Any]) -> dict[str, Any]:
    """A row's values as results.csv and pareto.csv write them."""
    def blank(v):
        return "" if v is None else v

    return dict(r, accuracy="" if r["accuracy"] is None else f"{r['accuracy']:.6f}", params=blank(r["params"]),
                macs=blank(r["macs"]), activations=blank(r["activations"]),
                latency_ms="" if r["latency_ms"] is None else f"{r['latency_ms']:.6f}",
                choices=json.dumps(r["choices"], separators=(",", ":")))


def write_results(out: Path, rows: list[dict[str, Any]]) -> None:
    """``results.csv``: one row per trial, in trial order."""
    out.mkdir(parents=True, exist_ok=True)
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(COLUMNS)
    for r in rows:
        cells = _cells(r)
        writer.writerow([cells[c] for c in COLUMNS])
    (out / RESULTS_FILE).write_text(buf.getvalue(), encoding="utf-8")


def write_pareto(out: Path, space: Space, rows: list[dict[str, Any]], front_rows: list[dict[str, Any]],
                 objectives: tuple[str, ...]) -> str | None:
    """``pareto.csv`` (the front, one row per trial, its member's source in ``pareto/trial_N.cnn``) and
    ``pareto.png``; returns why the plot was not drawn (Pillow missing), else None."""
    folder = out / PARETO_DIR
    folder.mkdir(parents=True, exist_ok=True)
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(PARETO_COLUMNS)
    for r in front_rows:
        name = f"{PARETO_DIR}/trial_{r['trial']:05d}.cnn"
        (out / name).write_text(concrete_source(space, r["_choices"])[0], encoding="utf-8")
        cells = dict(_cells(r), source=name)
        writer.writerow([cells[c] for c in PARETO_COLUMNS])
    (out / PARETO_FILE).write_text(buf.getvalue(), encoding="utf-8")
    try:
        draw_pareto(out / PARETO_PLOT, rows, front_rows, objectives)
    except ImportError:
        return f"{PARETO_PLOT} not drawn: it needs Pillow (pip install pillow)"
    return None


def draw_pareto(path: Path, rows: list[dict[str, Any]], front_rows: list[dict[str, Any]],
                objectives: tuple[str, ...]) -> None:
    """A scatter plot of every complete trial (grey) and the front (red, joined in order) over two objectives:
    accuracy upwards when it is one, else the first; across, the first other one. Drawn with Pillow (no
    matplotlib); the same rows give the same bytes."""
    from PIL import Image, ImageDraw, ImageFont

    y_name = "accuracy" if "accuracy" in objectives else objectives[0]
    x_name = next(o for o in objectives if o != y_name)
    index = {o: i for i, o in enumerate(objectives)}
    done = [r for r in rows if r["_values"] is not None]
    points = [(r["_values"][index[x_name]], r["_values"][index[y_name]]) for r in done]
    best = sorted((r["_values"][index[x_name]], r["_values"][index[y_name]]) for r in front_rows)
    width, height, left, right, top, bottom = 720, 480, 80, 20, 30, 60
    image = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(image)
    font = ImageFont.load_default()
    xs, ys = [p[0] for p in points] or [0.0], [p[1] for p in points] or [0.0]
    x0, x1 = min(xs), max(xs)
    y0, y1 = min(ys), max(ys)
    x0, x1 = (x0 - 1, x1 + 1) if x0 == x1 else (x0 - 0.05 * (x1 - x0), x1 + 0.05 * (x1 - x0))
    y0, y1 = (y0 - 1, y1 + 1) if y0 == y1 else (y0 - 0.05 * (y1 - y0), y1 + 0.05 * (y1 - y0))

    def at(x: float, y: float) -> tuple[float, float]:
        return (left + (x - x0) / (x1 - x0) * (width - left - right),
                height - bottom - (y - y0) / (y1 - y0) * (height - top - bottom))

    draw.rectangle([left, top, width - right, height - bottom], outline="black")
    for i in range(5):  # ticks and their values
        fx, fy = x0 + (x1 - x0) * i / 4, y0 + (y1 - y0) * i / 4
        px, _ = at(fx, y0)
        _, py = at(x0, fy)
        draw.line([px, height - bottom, px, height - bottom + 5], fill="black")
        draw.text((px - 20, height - bottom + 8), f"{fx:.4g}", fill="black", font=font)
        draw.line([left - 5, py, left, py], fill="black")
        draw.text((5, py - 6), f"{fy:.4g}", fill="black", font=font)
    arrow = {"maximize": "higher is better", "minimize": "lower is better"}
    draw.text((left, height - 22), f"{x_name} ({arrow[OBJECTIVES[x_name]]})", fill="black", font=font)
    draw.text((left, 8), f"{y_name} ({arrow[OBJECTIVES[y_name]]}); red: the Pareto front "
              f"({', '.join(objectives)}), {len(front_rows)} of {len(done)} complete trials", fill="black", font=font)
    for x, y in points:
        px, py = at(x, y)
        draw.ellipse([px - 3, py - 3, px + 3, py + 3], fill=(150, 150, 150))
    if len(best) > 1 and len(objectives) == 2:  # (with more objectives the front is no line in this plane)
        draw.line([at(x, y) for x, y in best], fill=(200, 0, 0), width=2)
    for x, y in best:
        px, py = at(x, y)
        draw.ellipse([px - 4, py - 4, px + 4, py + 4], fill=(200, 0, 0))
    image.save(path, format="PNG")


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
    from cnndsl.ops import plugin_sources

    plugins = plugin_sources()
    procs = [ctx.Process(target=_worker, args=(cfg, n, i, plugins), name=f"cnndsl-search-{i}")
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
    failed = [proc for proc in procs if proc.exitcode != 0]
    if failed:
        killed = any(proc.exitcode < 0 for proc in failed)
        raise CnnDslError("; ".join(f"search worker {proc.name} {_exit_text(proc.exitcode)}" for proc in failed), None,
                          "a trial whose worker was killed mid-trial is failed and run again by the next worker "
                          "once its heartbeat is stale (--heartbeat)" if killed else None)


def _exit_text(code: int) -> str:
    """How a worker process ended, from its exit code (negative: the signal that killed it)."""
    import signal

    if code < 0:
        try:
            name = f" ({signal.Signals(-code).name})"
        except ValueError:
            name = ""
        return f"was killed by signal {-code}{name}"
    if code == 1:  # a mistake, or an error while training: the worker printed it
        return "stopped with an error (its message is above)"
    return f"exited with status {code}"


def search(space: str, data: str = "digits", trials: int = 20, *, epochs: int = 2, out: str | Path | None = None,
           storage: str | None = None, study: str | None = None, workers: int = 1, seed: int | None = None,
           limits: Limits | None = None, sampler: str = "tpe", pruner: Any = "auto",
           input_shape: tuple[int, ...] | None = None, params: dict[str, Any] | None = None,
           lr: float = 0.05, batch_size: int = 32, heartbeat: int | None = HEARTBEAT_SECONDS,
           objectives: str | tuple[str, ...] = ("accuracy",), population: int = POPULATION, tournament: int = TOURNAMENT,
           progress: bool = False) -> SearchResult:
    """Search ``space`` for the member with the best validation accuracy on ``data``; returns a :class:`SearchResult`.

    ``trials`` is the number of trials this call runs (spread over ``workers`` local processes); each
    member is trained for ``epochs`` epochs with :func:`cnndsl.train.torch_loop.train`. ``out`` is a folder for
    ``results.csv``, ``best.cnn`` and, without ``storage``, the study's journal file ``study.log``;
    ``storage`` is an SQLAlchemy URL or a journal file path shared by other processes or machines.
    ``study`` names the study (default: the space's name); an existing one is continued. ``seed``
    seeds the sampler (worker ``i`` uses ``seed + i``); without one, each call draws a fresh seed
    (:func:`fresh_seed`), so two machines running the same search propose different trials. The seed
    used is ``result.seed`` and each trial's ``seed`` column: a one-process search given that seed is
    reproduced, a several-worker one is not (the trials interleave differently from run to run).
    ``limits`` are hard limits checked from the IR before training. ``sampler`` is ``"tpe"``, ``"random"``,
    ``"evolution"`` (regularised evolution, :mod:`cnndsl.search.evolution`, with ``population`` and
    ``tournament``) or ``"nsga2"``. ``objectives`` (``"accuracy,params"`` or a tuple; see :data:`OBJECTIVES`)
    are what the study optimises; with several, ``out`` also gets ``pareto.csv`` and ``pareto.png``.
    ``pruner`` is ``"auto"`` (median for one objective, none for several), ``"median"``, ``"hyperband"``,
    ``"none"`` or an ``optuna.pruners.BasePruner``. ``heartbeat`` (seconds; None turns it off) is the
    heartbeat of the storage: a trial whose worker was killed is failed and run again by the next worker
    once it has been silent for twice that long.

    >>> result = search("my_space.cnn", trials=20, epochs=2, out="runs/s1")  # doctest: +SKIP
    >>> result.best_accuracy, result.best_source                             # doctest: +SKIP
    """
    optuna = _optuna()
    if trials < 1 or workers < 1 or epochs < 1:
        raise CnnDslError("trials, workers and epochs must be at least 1", None)
    if heartbeat is not None and heartbeat < 1:
        raise CnnDslError(f"a heartbeat of {heartbeat} seconds", None, "give at least 1 second, or None for none")
    goals = parse_objectives(objectives)
    if sampler not in SAMPLERS:
        raise CnnDslError(f"unknown sampler {sampler!r}", None, f"use {', '.join(SAMPLERS)}")
    if sampler == "evolution":
        from cnndsl.search.evolution import check_sizes

        check_sizes(population, tournament)
    _pruner(pruner, epochs, goals)  # a pruner that cannot work with these objectives stops here
    if seed is None:
        seed = fresh_seed()
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
                       pruner=pruner, lr=lr, batch_size=batch_size, heartbeat=heartbeat, objectives=goals,
                       population=population, tournament=tournament)
    verbosity = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    if storage is None:  # one process, nothing written: an in-memory study
        the_study = optuna.create_study(directions=cfg.directions, study_name=cfg.study,
                                        sampler=_sampler(cfg, 0, probe), pruner=_pruner(pruner, epochs, goals))
        the_study.set_user_attr("objectives", list(goals))
    else:
        the_study = _load_study(cfg, 0, probe)
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
        front_rows = pareto_rows(rows, goals) if len(goals) > 1 else []
        best_source = note = None
        if out_dir is not None:
            write_results(out_dir, rows)
            if best:
                best_source = _checked_best(out_dir, probe, best["_choices"])
            if len(goals) > 1:
                note = write_pareto(out_dir, probe, rows, front_rows, goals)
        elif best:
            best_source = concrete_source(probe, best["_choices"])[0]
    timings = [r["seconds"] for r in rows if r["seconds"]]
    return SearchResult(the_study, rows, best, best_source, out_dir, trained=len(timings), timings=timings,
                        seed=seed, workers=workers, objectives=goals, pareto=front_rows, plot_note=note)


# ----------------------------------------------------------------------------- the command line


def cmd_search(args, params: dict) -> int:
    """``cnndsl search SPACE``: run the search and print its summary."""
    result = search(args.space, data=args.data, trials=args.trials, epochs=args.epochs, out=args.out,
                    storage=args.storage, study=args.study, workers=args.workers, seed=args.seed,
                    heartbeat=args.heartbeat or None,
                    limits=Limits(args.max_params, args.max_macs, args.max_activations), sampler=args.sampler,
                    pruner=args.pruner, input_shape=args.input, params=params, objectives=args.objectives,
                    population=args.population, tournament=args.tournament, progress=True)
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
    sp.add_argument("--storage", metavar="URL",
                    help="a shared study: sqlite:///FILE.db, postgresql+psycopg2://USER:PASSWORD@HOST/DB "
                         "(pip install psycopg2-binary), or a journal file path (default: DIR/study.log)")
    sp.add_argument("--study", metavar="NAME", help="the study's name (default: the space's name)")
    sp.add_argument("--workers", type=int, default=1, metavar="K", help="local processes sharing the study")
    sp.add_argument("--seed", type=int, default=None,
                    help="sampler seed, for a reproducible run (default: a fresh one per run, printed at the end "
                         "and in results.csv's seed column; worker i uses seed+i)")
    sp.add_argument("--heartbeat", type=int, default=HEARTBEAT_SECONDS, metavar="SECONDS",
                    help=f"with a database storage, a trial whose worker died is failed and run again after "
                         f"twice this long without a heartbeat (default {HEARTBEAT_SECONDS}; 0: off)")
    sp.add_argument("--sampler", choices=SAMPLERS, default="tpe",
                    help="tpe (default), random, evolution (regularised evolution: --population, --tournament) "
                         "or nsga2 (Optuna's NSGA-II)")
    sp.add_argument("--objectives", default="accuracy", metavar="LIST",
                    help="comma-separated: accuracy (maximised), params, macs, latency (minimised; latency: the "
                         "built model at batch 1 on this machine); several write pareto.csv and pareto.png "
                         "(default accuracy)")
    sp.add_argument("--pruner", choices=PRUNERS, default="auto",
                    help="median (the default with one objective), hyperband, or none (the default, and the only "
                         "one, with several objectives)")
    sp.add_argument("--population", type=int, default=POPULATION, metavar="P",
                    help=f"evolution: the population, the P most recent finished trials (default {POPULATION})")
    sp.add_argument("--tournament", type=int, default=TOURNAMENT, metavar="S",
                    help=f"evolution: trials drawn from the population to pick each parent (default {TOURNAMENT})")
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
