"""The shared progress bars: drawn on a terminal, silent anywhere else."""

from __future__ import annotations

import io
import os
import sys
import time

import pytest

from cnndsl.progress import progress, working
from cnndsl.tools.cli import main


class _Terminal(io.TextIOWrapper):
    """A file that says it is a terminal (a real one, a pty, passes data on asynchronously)."""

    def isatty(self) -> bool:
        return True


@pytest.fixture
def terminal(monkeypatch, tmp_path):
    """A function that puts sys.stderr on a file claiming to be a terminal and returns what was drawn on it.

    Call it first thing in the test body (pytest puts its own capture back in place between setup and call),
    and again at the end to read the file.
    """
    path = tmp_path / "terminal"
    with open(path, "wb") as raw:
        stream = _Terminal(raw, encoding="utf-8", line_buffering=True)

        def drawn() -> str:
            if sys.stderr is not stream:
                monkeypatch.setattr(sys, "stderr", stream)
            stream.flush()
            return path.read_text(encoding="utf-8")

        yield drawn
        monkeypatch.undo()
        stream.detach()


def test_progress_passes_items_through_and_is_silent_off_a_terminal(capfd):
    assert list(progress(range(5), "counting")) == [0, 1, 2, 3, 4]
    with working("waiting"):
        pass
    assert capfd.readouterr().err == ""


def test_progress_draws_a_bar_on_a_terminal(terminal):
    terminal()
    assert list(progress(range(3), "counting", unit="net")) == [0, 1, 2]
    shown = terminal()
    assert "counting:" in shown and "/3 " in shown and "net/s" in shown


def test_working_shows_the_task_and_keeps_drawing_while_fd2_is_elsewhere(terminal):
    terminal()
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


def test_cli_list_loads_the_zoo_under_a_bar(capsys, terminal):
    terminal()
    assert main(["list"]) == 0
    assert "loading the zoo" in terminal()
    assert "resnet50" in capsys.readouterr().out
