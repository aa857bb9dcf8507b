"""``cnndsl search``: architecture search over a space's members, on Optuna.

Each trial is one member of a search space (see :mod:`cnndsl.search.variants`): the sampler picks an
option for every choice the member reaches (:meth:`Space.suggest`), the member is checked from the
IR, and only then trained, with the PyTorch training loop of :mod:`cnndsl.train.torch_loop`, for a few epochs.

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
(``sqlite:///search.db``, ``postgresql+psycopg2://user:pass@host/db`` with ``pip install
psycopg2-binary``): several machines pointed at one database with the same study name run one study
together, and may create it at the same moment. In a database, a running trial sends a heartbeat; one
whose worker was killed is failed by the next worker and run again. Each process seeds its sampler
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
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cnndsl.errors import CnnDslError
from cnndsl.progress import counter
from cnndsl.search.arch_hash import arch_hash
from cnndsl.search.variants import Limits, Space

RESULTS_FILE = "results.csv"
BEST_FILE = "best.cnn"
JOURNAL_FILE = "study.log"
#: Seconds between a running trial's heartbeats in a database storage; one silent for twice as long (its
#: worker was killed) is failed by the next worker that asks for a trial, and run again.
HEARTBEAT_SECONDS = 60
#: How many times a trial whose worker died is run again (a member that kills its worker is not retried forever).
HEARTBEAT_RETRIES = 2
#: Who ran a trial (a column of results.csv): this machine and process.
WORKER = f"{socket.gethostname()}/{os.getpid()}"
COLUMNS = ("trial", "state", "reason", "accuracy", "epochs", "params", "macs", "activations", "arch_hash",
           "duplicate_of", "seconds", "worker", "seed", "choices")


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
    heartbeat: int | None = HEARTBEAT_SECONDS

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
        if self.seed is not None:
            out.append(f"sampler seed {self.seed}" + (f" (worker i: {self.seed} + i)" if self.workers > 1 else ""))
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

    ``heartbeat`` (seconds) turns on Optuna's heartbeat for a database: a running trial records that it is
    alive that often, and one silent for twice as long (its worker was killed) is failed by the next
    worker that asks for a trial, and retried. Optuna's journal storage has no heartbeat.
    """
    _optuna()
    if "://" in url:
        return _rdb_storage(url, heartbeat)
    return _journal_storage(Path(url))


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
        kwargs = {"heartbeat_interval": int(heartbeat), "grace_period": 2 * int(heartbeat)}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            retry = getattr(optuna.storages, "RetryHeartbeatStaleTrialCallback", None)  # optuna >= 4.9
            if retry is not None:
                kwargs["heartbeat_stale_trial_callback"] = retry(max_retry=HEARTBEAT_RETRIES)
            else:
                kwargs["failed_trial_callback"] = optuna.storages.RetryFailedTrialCallback(max_retry=HEARTBEAT_RETRIES)
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


def _journal_storage(path: Path):
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
        return JournalStorage(JournalFileBackend(str(path)))
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


def _sampler(cfg: SearchConfig, worker: int):
    optuna = _optuna()
    seed = _worker_seed(cfg, worker)
    if cfg.sampler == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if cfg.sampler == "tpe":
        return optuna.samplers.TPESampler(seed=seed)
    raise CnnDslError(f"unknown sampler {cfg.sampler!r}", None, "use tpe or random")


def _worker_seed(cfg: SearchConfig, worker: int) -> int | None:
    """Worker ``worker``'s sampler seed: distinct streams, else the workers would propose alike."""
    return None if cfg.seed is None else cfg.seed + worker


def fresh_seed() -> int:
    """A new sampler seed from the operating system's randomness (what a search uses unless given one)."""
    import secrets

    return secrets.randbits(31)


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
    """Open ``cfg``'s study, creating it if it does not exist: safe when several processes, on one machine or
    several, create the same fresh study (and the database tables under it) at the same moment."""
    optuna = _optuna()
    from sqlalchemy import exc

    storage = _storage(cfg.storage, cfg.heartbeat)
    for attempt in range(CREATE_ATTEMPTS):
        try:
            return optuna.create_study(storage=storage, study_name=cfg.study, direction="maximize",
                                       sampler=_sampler(cfg, worker), pruner=_pruner(cfg.pruner),
                                       load_if_exists=True)
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


def run_trial(study, trial, space: Space, cfg: SearchConfig) -> tuple[float | None, Any]:
    """Evaluate one asked trial; returns ``(value, state)`` for ``study.tell`` (the reason is a user attribute)."""
    optuna = _optuna()
    from cnndsl.train import torch_loop as training

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


def _worker(cfg: SearchConfig, n: int, worker: int) -> None:
    """A worker process's body: quiet Optuna, run its share of the trials, report a mistake cleanly."""
    _optuna().logging.set_verbosity(_optuna().logging.WARNING)
    try:
        run_trials(_load_study(cfg, worker), cfg.open_space(), cfg, n, worker=worker)
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
            "seed": a.get("seed", ""), "choices": a.get("options", {}), "_choices": a.get("choices", {})}


def collect(study) -> tuple[list[dict[str, Any]], dict[str, Any] | None]:
    """Every trial as a row (by trial number) and the best complete one (ties: fewer params, then earlier)."""
    trials = sorted(study.get_trials(deepcopy=False), key=lambda t: t.number)
    rows = [_row(t) for t in trials]
    retried_as = {t.system_attrs["retry_history"][-1]: t.number for t in trials if t.system_attrs.get("retry_history")}
    for r in rows:
        if r["state"] == "fail" and not r["reason"]:  # failed by another worker: its own died mid-trial
            r["reason"] = "failed: its worker stopped mid-trial (no heartbeat)" + (
                f", run again as trial {retried_as[r['trial']]}" if r["trial"] in retried_as else "")
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
    failed = [proc for proc in procs if proc.exitcode != 0]
    if failed:
        killed = any(proc.exitcode < 0 for proc in failed)
        raise CnnDslError("; ".join(f"search worker {proc.name} {_exit_text(proc.exitcode)}" for proc in failed), None,
                          "a worker killed mid-trial leaves that trial running in a journal file; in a database "
                          "(--storage URL) the next worker fails it and runs it again" if killed else None)


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
           limits: Limits | None = None, sampler: str = "tpe", pruner: Any = "median",
           input_shape: tuple[int, ...] | None = None, params: dict[str, Any] | None = None,
           lr: float = 0.05, batch_size: int = 32, heartbeat: int | None = HEARTBEAT_SECONDS,
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
    ``limits`` are hard limits checked from the IR before training. ``pruner`` is ``"median"``,
    ``"none"`` or an ``optuna.pruners.BasePruner``. ``heartbeat`` (seconds; None turns it off) is the
    heartbeat of a database storage: a trial whose worker was killed is failed and run again by the
    next worker once it has been silent for twice that long.

    >>> result = search("my_space.cnn", trials=20, epochs=2, out="runs/s1")  # doctest: +SKIP
    >>> result.best_accuracy, result.best_source                             # doctest: +SKIP
    """
    optuna = _optuna()
    if trials < 1 or workers < 1 or epochs < 1:
        raise CnnDslError("trials, workers and epochs must be at least 1", None)
    if heartbeat is not None and heartbeat < 1:
        raise CnnDslError(f"a heartbeat of {heartbeat} seconds", None, "give at least 1 second, or None for none")
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
                       pruner=pruner, lr=lr, batch_size=batch_size, heartbeat=heartbeat)
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
    return SearchResult(the_study, rows, best, best_source, out_dir, trained=len(timings), timings=timings,
                        seed=seed, workers=workers)


# ----------------------------------------------------------------------------- the command line


def cmd_search(args, params: dict) -> int:
    """``cnndsl search SPACE``: run the search and print its summary."""
    result = search(args.space, data=args.data, trials=args.trials, epochs=args.epochs, out=args.out,
                    storage=args.storage, study=args.study, workers=args.workers, seed=args.seed,
                    heartbeat=args.heartbeat or None,
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
