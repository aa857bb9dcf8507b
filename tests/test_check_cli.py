"""`cnndsl check FILE` checks every network of a file, with `--input` and `-p`, one line per network.

The expected parameter counts are worked out by hand from the layer sizes (a 3x3 conv on C channels to K:
9CK + K; an fc on N values to M: NM + M), and the expected error positions from the source text itself.
"""

from __future__ import annotations

import pytest

from cnndsl.tools.cli import main

SOURCE = """\
network a(classes=10): input 1x8x8
    conv3-4 relu fc-{classes}

network b: input 1x8x8
    conv9-4(p=valid) fc-3

network c(w=4): input 3x16x16
    conv3-{w} relu fc-2

network d: input 1x8x8
    conv3-4 maxpool5/1(p=0) maxpool5/1(p=0) fc-2
"""


def conv3(c: int, k: int) -> int:
    return 9 * c * k + k


def fc(n: int, m: int) -> int:
    return n * m + m


def where(text: str, fragment: str, path) -> str:
    """``path:line:col`` of the first ``fragment`` in ``text`` (1-based, as the compiler counts)."""
    offset = text.index(fragment)
    line = text.count("\n", 0, offset) + 1
    col = offset - (text.rfind("\n", 0, offset) + 1) + 1
    return f"{path}:{line}:{col}"


@pytest.fixture
def multi(tmp_path):
    path = tmp_path / "multi.cnn"
    path.write_text(SOURCE, encoding="utf-8")
    return path


def run(capsys, *argv):
    rc = main(list(argv))
    out, err = capsys.readouterr()
    return rc, out.splitlines(), err


def test_check_reports_every_network_and_each_error_at_its_place(capsys, multi):
    rc, lines, err = run(capsys, "check", str(multi))
    assert rc == 1
    assert [line.split(":")[1] for line in lines] == ["a", "b", "c", "d"]  # one line each, in file order
    assert lines[0] == f"{multi}:a: ok (a: 4 layers, {conv3(1, 4) + fc(4 * 8 * 8, 10):,} parameters, 0 warnings)"
    assert lines[2] == f"{multi}:c: ok (c: 4 layers, {conv3(3, 4) + fc(4 * 16 * 16, 2):,} parameters, 0 warnings)"
    # b's 9x9 kernel does not fit 8x8; d's second 5x5 pool finds a 4x4 map: both reported, each at its layer
    bad_b = where(SOURCE, "conv9-4(p=valid)", multi)
    bad_d = where(SOURCE, "maxpool5/1(p=0) fc-2", multi)
    assert lines[1].startswith(f"{multi}:b: error at {bad_b}: ")
    assert lines[3].startswith(f"{multi}:d: error at {bad_d}: ")
    assert f"{bad_b}: error: " in err and f"{bad_d}: error: " in err and "Traceback" not in err


def test_input_and_params_reach_every_network(capsys, multi):
    rc, lines, _ = run(capsys, "check", str(multi), "--input", "1x12x12", "-p", "classes=5", "-p", "w=2")
    assert rc == 0  # at 12x12 every network fits, d's pools included (12 -> 8 -> 4)
    params = {line.split(":")[1]: int(line.split(", ")[1].split()[0].replace(",", "")) for line in lines}
    assert params == {
        "a": conv3(1, 4) + fc(4 * 12 * 12, 5),  # classes=5 goes to the network that declares it
        "b": 9 * 9 * 4 + 4 + fc(4 * 4 * 4, 3),  # 12 - 9 + 1 = 4
        "c": conv3(1, 2) + fc(2 * 12 * 12, 2),  # w=2, and the input's channels are the override's
        "d": conv3(1, 4) + fc(4 * 4 * 4, 2),
    }


def test_a_parameter_no_network_declares_is_a_clean_error(capsys, multi):
    rc, lines, err = run(capsys, "check", str(multi), "-p", "depth=3")
    assert rc == 1 and lines == []
    assert "no network in" in err and "'depth'" in err and "hint: parameters here: classes, w" in err
    assert "Traceback" not in err


def test_one_network_of_the_file_is_still_one_line(capsys, multi):
    rc, lines, _ = run(capsys, "check", f"{multi}:a", "--input", "1x4x4")
    params = conv3(1, 4) + fc(4 * 4 * 4, 10)
    assert rc == 0 and lines == [f"{multi}:a: ok (a: 4 layers, {params:,} parameters, 0 warnings)"]
    rc, lines, err = run(capsys, "check", f"{multi}:b")
    assert rc == 1 and lines == [] and f"{where(SOURCE, 'conv9-4(p=valid)', multi)}: error: " in err


def test_a_syntax_error_stops_the_whole_file_at_its_place(capsys, tmp_path):
    path = tmp_path / "broken.cnn"
    tail = "network e: input 1x8x8\n    conv3-4 )\n"
    path.write_text(SOURCE + tail, encoding="utf-8")
    rc, lines, err = run(capsys, "check", str(path))
    assert rc == 1 and lines == []
    line, col = SOURCE.count("\n") + 2, tail.split("\n")[1].index(")") + 1
    assert err.startswith(f"{path}:{line}:{col}: error: ")
