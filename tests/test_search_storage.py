"""``cnndsl search`` storages: clean errors for bad ones, a real PostgreSQL server, studies created by two
processes at once, and the heartbeat that fails and retries the trial of a worker killed mid-trial.

The PostgreSQL tests start their own server (``initdb`` and ``pg_ctl`` from ``/usr/lib/postgresql/*/bin``,
as the ``postgres`` user when run as root) on 127.0.0.1 in a temporary folder, and skip, saying why,
when there is no server binary or psycopg2, or the server does not start.
"""

from __future__ import annotations

import glob
import importlib
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from test_search import read_rows

import cnndsl
from cnndsl.tools.cli import main

optuna = pytest.importorskip("optuna")
pytest.importorskip("torch")
pytest.importorskip("sklearn")
search_module = importlib.import_module("cnndsl.search.study")  # (cnndsl.search.study is also the API function)

ROOT = Path(__file__).resolve().parents[1]
# Four members at 8x8 (see test_search.py): small and fast to train.
TINY = """\
network tiny(w={8|16}, classes=10): input 1x8x8
    conv3-{w} bn relu maxpool
    choice< conv3-{2*w} bn relu | skip >
    gap fc-{classes}
"""
TIMEOUT = 120  # seconds: generous bounds for polling, never a measure of speed


@pytest.fixture
def tiny(tmp_path):
    path = tmp_path / "tiny.cnn"
    path.write_text(TINY)
    return str(path)


def child_env():
    """The environment of a child Python: this checkout importable whatever the current folder."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return env


# ----------------------------------------------------------------------------- a real PostgreSQL server


def _postgres_bin() -> Path | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=lambda p: int(Path(p).parent.name)
                   if Path(p).parent.name.isdigit() else 0, reverse=True)
    if shutil.which("initdb"):
        found.append(str(Path(shutil.which("initdb")).parent))
    return next((Path(d) for d in found if (Path(d) / "initdb").exists() and (Path(d) / "pg_ctl").exists()), None)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Postgres:
    """A PostgreSQL server of this test run: ``database()`` makes a fresh database and returns its URL."""

    def __init__(self, port: int):
        self.port = port
        self._made = 0

    def connect(self, dbname: str = "postgres"):
        import psycopg2

        return psycopg2.connect(host="127.0.0.1", port=self.port, user="cnndsl", dbname=dbname)

    def database(self) -> str:
        self._made += 1
        name = f"cnndsl_{self._made}"
        conn = self.connect()
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute(f"CREATE DATABASE {name}")
        conn.close()
        return f"postgresql+psycopg2://cnndsl@127.0.0.1:{self.port}/{name}"


@pytest.fixture(scope="module")
def postgres_server():
    """The server (a :class:`Postgres`), or the reason there is none (a str): the tests that need one skip."""
    try:
        import psycopg2  # noqa: F401
    except ImportError:
        yield "the PostgreSQL tests need psycopg2 (pip install psycopg2-binary)"
        return
    bin_dir = _postgres_bin()
    if bin_dir is None:
        yield "no PostgreSQL server binaries (initdb, pg_ctl) found: apt-get install postgresql"
        return
    as_user: list[str] = []
    if os.geteuid() == 0:  # the server refuses to run as root
        try:
            user = pwd.getpwnam("postgres")
        except KeyError:
            yield "running as root and there is no postgres user to run the PostgreSQL server as"
            return
        if not shutil.which("runuser"):
            yield "running as root and there is no runuser to start the PostgreSQL server as postgres"
            return
        as_user = ["runuser", "-u", "postgres", "--"]
    folder = Path(tempfile.mkdtemp(prefix="cnndsl-pg-"))
    if as_user:
        os.chown(folder, user.pw_uid, user.pw_gid)
    data, log, port = folder / "data", folder / "server.log", _free_port()
    started = False
    try:
        made = subprocess.run([*as_user, str(bin_dir / "initdb"), "-D", str(data), "-A", "trust", "-U", "cnndsl",
                               "-E", "UTF8", "--no-sync"], check=False, capture_output=True, text=True,
                              timeout=TIMEOUT)
        if made.returncode != 0:
            yield f"initdb failed: {(made.stderr or made.stdout).strip()[-300:]}"
            return
        run = subprocess.run([*as_user, str(bin_dir / "pg_ctl"), "-D", str(data), "-l", str(log), "-w", "-t", "60",
                              "-o", f"-h 127.0.0.1 -p {port} -k {folder} -F", "start"],
                             check=False, capture_output=True, text=True, timeout=TIMEOUT)
        if run.returncode != 0:
            tail = log.read_text(errors="replace")[-300:] if log.exists() else run.stderr
            yield f"the PostgreSQL server did not start: {tail.strip()}"
            return
        started = True
        yield Postgres(port)
    finally:
        if started:
            subprocess.run([*as_user, str(bin_dir / "pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "stop"],
                           check=False, capture_output=True, timeout=TIMEOUT)
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture
def postgres(postgres_server):
    if isinstance(postgres_server, str):
        pytest.skip(postgres_server)
    return postgres_server


def with_postgres(postgres_server, urls, make_urls) -> list[str]:
    """``urls``, and those ``make_urls(server)`` gives when there is a PostgreSQL server (printed when there is not)."""
    if isinstance(postgres_server, str):
        print(f"not on PostgreSQL: {postgres_server}")
        return list(urls)
    return [*urls, *make_urls(postgres_server)]


# ----------------------------------------------------------------------------- mistakes in --storage


def run_cli(args, capsys):
    """``cnndsl ARGS`` in this process: its exit status and stderr (a raw exception fails the test)."""
    capsys.readouterr()
    status = main(args)
    return status, capsys.readouterr().err


@pytest.mark.parametrize("storage, message, fix", [
    ("bogus://x", "unknown kind of database ('bogus')", "postgresql+psycopg2://"),
    ("sqlite:///{tmp}/missing/search.db", "folder that does not exist: {tmp}/missing", "mkdir -p {tmp}/missing"),
    ("{tmp}/missing/study.log", "folder that does not exist: {tmp}/missing", "mkdir -p {tmp}/missing"),
    ("sqlite:///{readme}", "{readme} is not an SQLite database", "path of a new file"),
    ("{tmp}", "is a folder, not a journal file", "give a file's path"),
])
def test_bad_storages_are_clean_errors_naming_the_fix(tiny, tmp_path, capsys, storage, message, fix):
    values = {"tmp": tmp_path, "readme": ROOT / "README.md"}
    before = sorted(p.name for p in tmp_path.iterdir())
    status, err = run_cli(["search", tiny, "--trials", "1", "--epochs", "1", "--out", str(tmp_path / "run"),
                           "--storage", storage.format(**values)], capsys)
    assert status == 1
    assert err.startswith("error: ") and "Traceback" not in err
    assert message.format(**values) in err
    hint = err.split("hint: ", 1)[1]
    assert fix.format(**values) in hint
    assert not (tmp_path / "missing").exists()
    assert sorted(p.name for p in tmp_path.iterdir() if p.name != "run") == before  # no database file was made


@pytest.mark.parametrize("url", ["postgresql://user:secret@127.0.0.1/cnndsl",
                                 "postgresql+psycopg2://user:secret@127.0.0.1/cnndsl"])
def test_postgresql_without_its_driver_names_the_url_and_the_package(tiny, tmp_path, capsys, monkeypatch, url):
    # neither PostgreSQL driver importable (SQLAlchemy's default for postgresql:// is psycopg 3, not psycopg2)
    monkeypatch.setitem(sys.modules, "psycopg2", None)
    monkeypatch.setitem(sys.modules, "psycopg", None)
    status, err = run_cli(["search", tiny, "--trials", "1", "--out", str(tmp_path / "run"), "--storage", url], capsys)
    assert status == 1 and "Traceback" not in err
    assert "needs a database driver that is not installed" in err
    hint = err.split("hint: ", 1)[1]
    assert "postgresql+psycopg2://" in hint and "pip install psycopg2-binary" in hint
    assert "secret" not in err  # the password is not shown


def test_a_damaged_journal_is_refused_before_anything_is_written(tiny, tmp_path, capsys):
    out = tmp_path / "run"
    args = ["search", tiny, "--trials", "1", "--epochs", "1", "--out", str(out), "--seed", "0"]
    assert main(args) == 0
    journal = out / "study.log"
    good = journal.read_bytes()
    entries = good.count(b"\n")
    journal.write_bytes(good + b"\x00\x17 not json \xff\n")
    status, err = run_cli(args, capsys)
    assert status == 1 and "Traceback" not in err
    assert f"study.log is not an Optuna study journal, or is damaged: line {entries + 1} is not" in err
    assert f"delete line {entries + 1}" in err.split("hint: ", 1)[1]
    assert journal.read_bytes() == good + b"\x00\x17 not json \xff\n"  # nothing appended to it
    journal.write_bytes(b"garbage\n")  # not a journal at all
    status, err = run_cli(args, capsys)
    assert status == 1 and "line 1 is not an Optuna journal entry" in err
    # with the damaged line gone, as the hint says, the study continues
    journal.write_bytes(good)
    assert main(args) == 0
    assert [r["trial"] for r in read_rows(out / "results.csv")] == ["0", "1"]


def test_a_server_that_cannot_be_reached_is_a_clean_error(tiny, tmp_path, capsys):
    pytest.importorskip("psycopg2")
    url = f"postgresql+psycopg2://cnndsl:secret@127.0.0.1:{_free_port()}/cnndsl"  # nothing listens there
    status, err = run_cli(["search", tiny, "--trials", "1", "--out", str(tmp_path / "run"), "--storage", url], capsys)
    assert status == 1 and "Traceback" not in err
    assert "cannot open the storage" in err and "database server is running" in err and "secret" not in err


# ----------------------------------------------------------------------------- a search on PostgreSQL


def test_search_on_postgresql(postgres, tiny, tmp_path):
    url = postgres.database()
    result = cnndsl.search(tiny, trials=2, epochs=1, storage=url, study="pg-tiny", out=tmp_path / "run", seed=7)
    study = optuna.load_study(study_name="pg-tiny", storage=url)
    assert [t.number for t in study.trials] == [0, 1]
    assert all(t.state in (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED) for t in study.trials)
    assert [t.user_attrs["seed"] for t in study.trials] == [7, 7]
    rows = read_rows(tmp_path / "run" / "results.csv")
    assert [(r["trial"], r["state"]) for r in rows] == [(str(t.number), t.state.name.lower()) for t in study.trials]
    assert result.best is not None and (tmp_path / "run" / "best.cnn").exists()
    conn = postgres.connect(url.rsplit("/", 1)[1])
    with conn.cursor() as cur:  # each trial sent its heartbeat while it ran
        cur.execute("SELECT count(DISTINCT trial_id) FROM trial_heartbeats")
        assert cur.fetchone()[0] == 2
    conn.close()


def test_two_workers_share_one_study_on_postgresql(postgres, tiny, tmp_path):
    url = postgres.database()
    cnndsl.search(tiny, trials=4, epochs=1, workers=2, storage=url, study="pg-two", out=tmp_path / "run", seed=3,
                  sampler="evolution", population=2, tournament=2)
    study = optuna.load_study(study_name="pg-two", storage=url)
    assert sorted(t.number for t in study.trials) == [0, 1, 2, 3]  # none lost, none repeated
    assert all(t.state in (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED) for t in study.trials)
    rows = read_rows(tmp_path / "run" / "results.csv")
    assert len({r["worker"] for r in rows}) == 2 and {r["seed"] for r in rows} == {"3", "4"}
    conn = postgres.connect(url.rsplit("/", 1)[1])
    with conn.cursor() as cur:  # both workers' trials sent heartbeats
        cur.execute("SELECT count(DISTINCT trial_id) FROM trial_heartbeats")
        assert cur.fetchone()[0] == 4
    conn.close()


# ----------------------------------------------------------------------------- two processes create one study

RACER = """
import importlib, os, sys, time
import optuna
optuna.logging.set_verbosity(optuna.logging.WARNING)
search = importlib.import_module("cnndsl.search.study")
go, urls = sys.argv[1], sys.argv[2:]
open(f"{go}.{os.getpid()}", "w").close()
while not os.path.exists(go):
    time.sleep(0.001)
for url in urls:  # each a fresh storage: the two racers create it, and the study, in step
    study = search._load_study(search.SearchConfig(space="-", study="race", storage=url))
    print(url, study._study_id, flush=True)
"""


def race(tmp_path, urls, racers=2):
    """Start ``racers`` processes, let them import, then release them at once on the fresh storages ``urls``."""
    script, go = tmp_path / "racer.py", tmp_path / "go"
    script.write_text(RACER)
    procs = [subprocess.Popen([sys.executable, str(script), str(go), *urls], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, env=child_env()) for _ in range(racers)]
    try:
        deadline = time.monotonic() + TIMEOUT
        while len(list(tmp_path.glob("go.*"))) < racers and time.monotonic() < deadline:
            assert all(p.poll() is None for p in procs), [p.communicate() for p in procs]
            time.sleep(0.01)
        go.touch()
        outputs = [p.communicate(timeout=TIMEOUT) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    for p, (out, err) in zip(procs, outputs):
        assert p.returncode == 0, err
        assert [line.split()[0] for line in out.splitlines()] == urls, err
    return [dict(line.split() for line in out.splitlines()) for out, _ in outputs]


def assert_one_study(urls, seen):
    for url in urls:
        assert len({s[url] for s in seen}) == 1  # every racer opened the same study
        storage = search_module._storage(url)
        assert [s.study_name for s in storage.get_all_studies()] == ["race"]


def test_two_processes_create_one_fresh_study_at_once(postgres_server, tmp_path):
    # without the retries, about two fresh PostgreSQL databases or SQLite files in three make one of the two
    # crash (an IntegrityError on Optuna's tables or its version row, a ProgrammingError "relation already exists")
    urls = [f"sqlite:///{tmp_path}/race{i}.db" for i in range(2)] + [str(tmp_path / "race.log")]
    urls = with_postgres(postgres_server, urls, lambda pg: [pg.database() for _ in range(2)])
    assert_one_study(urls, race(tmp_path, urls))


# ----------------------------------------------------------------------------- a worker killed mid-trial


def wait_for(what, check, timeout=TIMEOUT):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.1)
    pytest.fail(f"timed out waiting for {what}")


def test_a_killed_workers_trial_is_failed_and_retried(postgres_server, tiny, tmp_path):
    """Kill -9 a worker mid-trial, start another: the stale trial becomes FAIL and runs again as a new trial
    (in PostgreSQL when there is a server, else in SQLite: the same RDB storage, the same heartbeat; and in a
    journal file, whose heartbeat is cnndsl's own, Optuna's journal storage having none)."""
    heartbeat = 1
    urls = with_postgres(postgres_server, [], lambda pg: [pg.database()]) or [f"sqlite:///{tmp_path}/hb.db"]
    urls.append(str(tmp_path / "hb.log"))
    storages = [search_module._storage(url, heartbeat) for url in urls]  # with the heartbeat's grace period
    firsts, victims = [], []
    try:
        for i, url in enumerate(urls):
            # the first worker's only trial trains for (far) longer than the test waits: it is killed mid-training
            firsts.append(subprocess.Popen(
                [sys.executable, "-m", "cnndsl", "search", tiny, "--trials", "1", "--epochs", "100000",
                 "--pruner", "none", "--storage", url, "--study", "hb", "--heartbeat", str(heartbeat),
                 "--out", str(tmp_path / f"first{i}")], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                env=child_env()))
        for first, storage in zip(firsts, storages):
            victims.append(wait_for("the first worker to train its trial", lambda s=storage: training(s)))
            assert first.poll() is None
            os.kill(first.pid, signal.SIGKILL)
            first.wait(timeout=TIMEOUT)
            assert first.returncode == -signal.SIGKILL
    finally:
        for first in firsts:
            if first.poll() is None:
                first.kill()
                first.wait()
    for i, (url, storage, victim) in enumerate(zip(urls, storages, victims)):
        study = optuna.load_study(study_name="hb", storage=storage)
        assert study.trials[victim.number].state == optuna.trial.TrialState.RUNNING  # left so by its dead worker
        # once its heartbeat is older than the grace period (the storage says so), the next worker fails it
        wait_for("the trial's heartbeat to go stale",
                 lambda v=victim, s=storage, sid=study._study_id: v._trial_id in s._get_stale_trial_ids(sid))
        out = tmp_path / f"second{i}"
        result = cnndsl.search(tiny, trials=1, epochs=1, pruner="none", storage=url, study="hb", heartbeat=heartbeat,
                               out=out)
        trials = optuna.load_study(study_name="hb", storage=storage).trials
        assert [t.state for t in trials] == [optuna.trial.TrialState.FAIL, optuna.trial.TrialState.COMPLETE]
        retry = trials[1]
        assert retry.system_attrs["failed_trial"] == victim.number  # queued by the retry callback, then run
        assert retry.params == victim.params and retry.user_attrs["epochs"] == 1
        assert result.rows[0]["reason"] == "failed: its worker stopped mid-trial (no heartbeat), run again as trial 1"
        assert read_rows(out / "results.csv")[1]["state"] == "complete"


def training(storage):
    """The study's running trial once it has trained an epoch, else None."""
    try:
        study = optuna.load_study(study_name="hb", storage=storage)
    except KeyError:  # not created yet
        return None
    trials = study.get_trials(states=(optuna.trial.TrialState.RUNNING,))
    return trials[0] if trials and trials[0].user_attrs.get("epochs", 0) >= 1 else None
