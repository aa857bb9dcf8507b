"""The fuzz harness (``python -m fuzz``, outside the default run for its 100,000 inputs) works and can fail.

The default run tries a few dozen inputs of every strategy, and checks that the harness's own judges
catch what they are there to catch: a side effect in generated code, a crash, a hang.
"""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from fuzz import harness

pytest.importorskip("torch")
pytest.importorskip("jax")


@pytest.mark.parametrize("strategy", sorted(harness.STRATEGIES))
def test_a_few_inputs_of_each_strategy_pass(strategy):
    # only the names strategy imports its networks here: one sandbox start (torch and jax) for the whole test
    tally = harness.run_batch(seed=1, strategy=strategy, start=0, count=40,
                              sandbox_every=1 if strategy == "names" else 0)
    assert tally.inputs[strategy] == 40
    assert tally.failures == []
    if strategy == "names":
        assert tally.imported["names"] == tally.compiled["names"] > 20


def test_inputs_depend_on_seed_strategy_and_index_alone():
    for strategy in harness.STRATEGIES:
        assert harness.make_input(3, strategy, 7) == harness.make_input(3, strategy, 7)
    assert len({harness.make_input(0, "tokens", i) for i in range(20)}) > 15


MODEL = textwrap.dedent("""\
    import torch
    from torch import nn

    {payload}

    class T(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x
""")


def test_the_sandbox_catches_side_effects(tmp_path):
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    sandbox = harness.Sandbox(cwd)
    try:
        results = {}
        for name, payload in {"clean": "", "mkdir": 'import os\nos.mkdir("pwned")',
                              "write": 'open("pwned.txt", "w").write("x")',
                              "process": 'import subprocess\nsubprocess.run(["true"])',
                              "crash": "raise RuntimeError('at import')"}.items():
            path = tmp_path / f"{name}.py"
            path.write_text(MODEL.format(payload=payload))
            results[name] = sandbox.run("torch", str(path), [(3, 4, 4)])
    finally:
        sandbox.close()
    assert results["clean"] == "ok"
    assert results["mkdir"] == "side effect: os.mkdir"
    assert results["write"] == "side effect: open"
    assert results["process"].startswith("side effect: ") and "subprocess.Popen" in results["process"]
    assert results["crash"] == "RuntimeError: at import"


def test_the_judge_fails_a_traceback_and_a_hang(tmp_path, monkeypatch):
    import cnndsl

    def crash(*args, **kwargs):
        raise KeyError("boom")

    monkeypatch.setattr(cnndsl, "load", crash)
    out = harness.check("bytes", 0, "x.cnn", b"network t: input 3x8x8 relu", tmp_path)
    assert out.result == "failure" and "KeyError" in out.detail

    def hang(*args, **kwargs):
        while True:
            pass

    monkeypatch.setattr(cnndsl, "load", hang)
    monkeypatch.setattr(harness, "TIME_LIMIT_S", 0.2)
    out = harness.check("bytes", 1, "x.cnn", b"network t: input 3x8x8 relu", tmp_path)
    assert out.result == "failure" and "more than 0.2 s" in out.detail
