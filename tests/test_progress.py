"""The shared progress bars: drawn on a terminal, silent anywhere else."""

from __future__ import annotations

import os
import sys
import time

import pytest

from cnndsl.cli import main
from cnndsl.progress import progress, working


@pytest.fixture
def terminal(monkeypatch):
    """sys.stderr on a pseudo-terminal; the fixture's value reads what was drawn on it."""
    pty = pytest.importorskip("pty")
    master, slave = pty.openpty()
    stream = os.fdopen(slave, "w", encoding="utf-8", buffering=1)
    monkeypatch.setattr(sys, "stderr", stream)

    def drawn() -> str:
        stream.flush()
        os.set_blocking(master, False)
        chunks = []
        while True:
            try:
                chunk = os.read(master, 65536)
            except (BlockingIOError, OSError):
                break
            if not chunk:
                break
            chunks.append(chunk)
        return b"".join(chunks).decode("utf-8", "replace")

    yield drawn
    stream.close()
    os.close(master)


def test_progress_passes_items_through_and_is_silent_off_a_terminal(capfd):
    assert list(progress(range(5), "counting")) == [0, 1, 2, 3, 4]
    with working("waiting"):
        pass
    assert capfd.readouterr().err == ""


def test_progress_draws_a_bar_on_a_terminal(terminal):
    assert list(progress(range(3), "counting", unit="net")) == [0, 1, 2]
    shown = terminal()
    assert "counting" in shown and "3/3" in shown


def test_working_shows_the_task_and_keeps_drawing_while_fd2_is_elsewhere(terminal):
    with working("exporting"):
        saved = os.dup(2)  # what the ONNX export does to mute native logging
        with open(os.devnull, "wb") as null:
            os.dup2(null.fileno(), 2)
        try:
            time.sleep(0.6)
        finally:
            os.dup2(saved, 2)
            os.close(saved)
    shown = terminal()
    assert shown.count("exporting") >= 2  # drawn, then redrawn by the clock


def test_cli_list_loads_the_zoo_under_a_bar(capsys, terminal):  # capsys first: the terminal replaces its stderr
    assert main(["list"]) == 0
    assert "loading the zoo" in terminal()
    assert "resnet50" in capsys.readouterr().out
