"""``cnndsl train``: its settings, what it says about the data, saving and resuming a run, and ``--nproc``.

The training runs are checked against a re-implementation of the recipe written here with torch's own
parts (``torch.optim.SGD``, ``StepLR``, scikit-learn's split), against scikit-learn's digits counts, and
against a straight run for a resumed or a data-parallel one.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from test_cli_edges import run_main

import cnndsl

pytest.importorskip("sklearn")
torch = pytest.importorskip("torch")
pytest.importorskip("safetensors")

TINY = "network tiny(classes=10): input 1x8x8\n    conv3-4 relu flatten fc-{classes}\n"


@pytest.fixture
def tiny(tmp_path) -> str:
    path = tmp_path / "tiny.cnn"
    path.write_text(TINY)
    return str(path)


def reference_weights(text: str, *, lr: float, batch_size: int, seed: int, epochs: int) -> dict:
    """The recipe of docs/training.md, re-implemented: scikit-learn's stratified split with ``random_state=seed``,
    inputs normalised by the training images' mean and std, the model built after ``torch.manual_seed(seed)``,
    SGD (momentum 0.9, weight decay 5e-4) under ``StepLR(max(1, 2 * epochs // 3), 0.1)``, and epoch ``e``
    shuffled by ``torch.randperm`` seeded with ``SeedSequence([seed, e])``."""
    import torch.nn.functional as F
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    x = torch.from_numpy((digits.images / 16.0).astype(np.float32)[:, None])
    y = torch.from_numpy(digits.target.astype(np.int64))
    tr, _ = train_test_split(list(range(len(y))), test_size=0.2, random_state=seed, stratify=digits.target)
    tr = torch.tensor(tr)
    x = (x - x[tr].mean()) / x[tr].std()
    torch.manual_seed(seed)
    model = cnndsl.build_torch(cnndsl.loads(text))
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=5e-4)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=max(1, 2 * epochs // 3), gamma=0.1)
    for epoch in range(1, epochs + 1):
        model.train()
        shuffle = int(np.random.SeedSequence([seed, epoch]).generate_state(1)[0])
        for idx in tr[torch.randperm(len(tr), generator=torch.Generator().manual_seed(shuffle))].split(batch_size):
            opt.zero_grad()
            F.cross_entropy(model(x[idx]), y[idx]).backward()
            opt.step()
        sched.step()
    return model.state_dict()


def saved(folder: Path, text: str) -> dict:
    from cnndsl.weights import load_weights

    return load_weights(folder / "weights.safetensors", cnndsl.loads(text))


# -- --lr, --batch-size, --seed, the default epochs ---------------------------------------------------------------

def test_lr_batch_size_and_seed_train_as_the_recipe_says(capsys, tmp_path, tiny):
    rc, _, err = run_main(capsys, "train", tiny, "--lr", "0.1", "--batch-size", "16", "--seed", "3",
                          "--epochs", "2", "--out", str(tmp_path / "run"))
    assert rc == 0, err
    want = reference_weights(TINY, lr=0.1, batch_size=16, seed=3, epochs=2)
    got = saved(tmp_path / "run", TINY)
    assert want.keys() == got.keys()
    for k in want:  # the loop sums the loss then divides, the reference takes the mean: rounding apart
        torch.testing.assert_close(got[k], want[k], rtol=0, atol=1e-5)
    settings = json.loads((tmp_path / "run" / "metrics.json").read_text())["settings"]
    assert (settings["lr"], settings["batch_size"], settings["seed"], settings["epochs"]) == (0.1, 16, 3, 2)
    other = reference_weights(TINY, lr=0.05, batch_size=32, seed=0, epochs=2)  # the settings make a difference
    assert not torch.allclose(got["fc1.weight"], other["fc1.weight"], atol=1e-3)


def test_both_backends_default_to_the_same_epochs(capsys, tiny):
    """Each backend's first ``on_epoch`` call says the total it would train (the run stops there)."""
    pytest.importorskip("optax")
    from cnndsl.train.data import EPOCHS
    from cnndsl.train.torch_loop import train

    class Stop(Exception):
        pass

    def stop(epoch, epochs, acc):
        raise Stop(epochs)

    totals = {}
    for backend in ("torch", "jax"):
        with pytest.raises(Stop) as stopped:
            train(tiny, backend=backend, batch_size=2048, on_epoch=stop)
        totals[backend] = stopped.value.args[0]
        assert f"epoch 1/{totals[backend]}:" in capsys.readouterr().out
    assert totals == {"torch": EPOCHS, "jax": EPOCHS}
    assert f"default {EPOCHS}" in Path(__file__).parents[1].joinpath("docs", "training.md").read_text()
    rc, out, _ = run_main(capsys, "train", tiny, "--help")
    assert rc == 0 and f"epochs in all (default {EPOCHS};" in " ".join(out.split())


@pytest.mark.parametrize(("flag", "value", "message"), [
    ("--lr", "0", "argument --lr: expected a positive number, got 0.0"),
    ("--lr", "nan", "argument --lr: expected a positive number, got nan"),
    ("--lr=-1e-3", None, "argument --lr: expected a positive number, got -0.001"),
    ("--batch-size", "0", "argument --batch-size: expected at least 1, got 0"),
    ("--seed", "-1", "argument --seed: expected at least 0, got -1"),
    ("--seed", str(2**32), f"argument --seed: expected at most {2**32 - 1}, got {2**32}"),
    ("--nproc", "0", "argument --nproc: expected at least 1, got 0"),
])
def test_bad_training_settings_are_usage_errors(capsys, tiny, flag, value, message):
    rc, out, err = run_main(capsys, "train", tiny, flag, *([value] if value is not None else []))
    assert rc == 2 and "usage: cnndsl train" in err and message in err, err
    assert "epoch" not in out


# -- what the data holds ------------------------------------------------------------------------------------------

def test_train_prints_the_classes_and_their_counts(capsys, tiny):
    from sklearn.datasets import load_digits

    rc, out, err = run_main(capsys, "train", tiny, "--epochs", "1", "--batch-size", "256")
    assert rc == 0, err
    counts = np.bincount(load_digits().target)
    n_test = math.ceil(0.2 * counts.sum())
    listing = ", ".join(f"{c} {n}" for c, n in enumerate(counts))
    assert out.splitlines()[0] == (f"data: digits, {counts.sum():,} images in 10 classes "
                                   f"({counts.sum() - n_test:,} train, {n_test} test): {listing}")
    assert "warning" not in err


def image_folder(root: Path, counts: dict[str, int]) -> Path:
    from PIL import Image

    for cls, n in counts.items():
        (root / cls).mkdir(parents=True)
        for i in range(n):
            Image.new("L", (8, 8), color=25 * i % 256).save(root / cls / f"{i}.png")
    return root


def test_a_single_class_and_a_tiny_split_are_warned_about(capsys, tmp_path, tiny):
    pytest.importorskip("PIL")
    one = image_folder(tmp_path / "one", {"cat": 10})
    rc, out, err = run_main(capsys, "train", tiny, "--data", str(one), "--epochs", "1")
    assert rc == 0, err
    assert out.splitlines()[0] == "data: " + str(one) + ", 10 images in 1 class (8 train, 2 test): cat 10"
    assert "warning: the data has a single class ('cat'): every prediction is right" in err
    assert "warning: the test split has only 2 images: its accuracy moves in steps of 50 points" in err
    assert out.splitlines()[-1] == "test accuracy: 1.00"  # what the warning is about

    # the hint's figure: the fewest images whose 80/20 split (scikit-learn's) leaves 20 for the test
    from sklearn.model_selection import train_test_split

    need = int(err.split("give at least ")[1].split()[0])
    assert len(train_test_split(range(need), test_size=0.2)[1]) == 20
    assert len(train_test_split(range(need - 1), test_size=0.2)[1]) == 19

    # a caller that takes the output (a search's trial) gets the warnings with it, not on stderr
    import io

    from cnndsl.train.torch_loop import train

    log = io.StringIO()
    train(tiny, data=str(one), epochs=1, out=log)
    assert "warning: the data has a single class" in log.getvalue() and capsys.readouterr().err == ""

    two = image_folder(tmp_path / "two", {"cat": 60, "dog": 60})
    rc, out, err = run_main(capsys, "train", tiny, "--data", str(two), "--epochs", "1")
    assert rc == 0 and "warning" not in err, err
    assert out.splitlines()[0].endswith("(96 train, 24 test): cat 60, dog 60")


# -- --out and --resume -------------------------------------------------------------------------------------------

def test_out_writes_weights_source_and_metrics(capsys, tmp_path, tiny):
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    run = tmp_path / "run"
    rc, out, err = run_main(capsys, "train", tiny, "--epochs", "2", "--out", str(run))
    assert rc == 0, err
    assert sorted(p.name for p in run.iterdir()) == ["metrics.json", "network.cnn", "optimizer.pt",
                                                    "weights.safetensors"]
    # the concrete source loads to the same network, and the weights into its model
    source = cnndsl.load(str(run / "network.cnn"))
    assert source.params == cnndsl.load(tiny).params and source.output_shapes == [(10,)]
    model = cnndsl.build_torch(source)
    model.load_state_dict(saved(run, TINY))
    # the saved model's accuracy on the test fifth (split here, by scikit-learn) is the one reported
    digits = load_digits()
    x = torch.from_numpy((digits.images / 16.0).astype(np.float32)[:, None])
    tr, te = train_test_split(list(range(len(x))), test_size=0.2, random_state=0, stratify=digits.target)
    x = (x - x[tr].mean()) / x[tr].std()
    model.eval()
    with torch.no_grad():
        acc = (model(x[te]).argmax(1).numpy() == digits.target[te]).mean()
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["test_accuracy"] == acc
    assert out.splitlines()[-1] == f"test accuracy: {acc:.2f}"
    lines = [line for line in out.splitlines() if line.startswith("epoch ")]
    assert [e["epoch"] for e in metrics["epochs"]] == [1, 2] and len(lines) == 2
    for line, e in zip(lines, metrics["epochs"]):
        assert line.endswith(f"loss {e['loss']:.4f}, train accuracy {e['train_accuracy']:.3f}, "
                             f"test accuracy {e['test_accuracy']:.3f}")
    assert metrics["settings"] == {"data": "digits", "epochs": 2, "lr": 0.05, "batch_size": 32, "seed": 0,
                                   "params": {}, "nproc": 1, "device": "cuda" if torch.cuda.is_available() else "cpu"}
    assert metrics["classes"] == [str(c) for c in range(10)]


def test_resume_ends_where_the_uninterrupted_run_does(capsys, tmp_path, tiny):
    """Interrupted after epoch 1 of 3, then resumed: the same weights, bit for bit, as a straight run (which
    needs the optimizer's momentum restored, and the later epochs' shuffles independent of the earlier)."""
    from cnndsl.train.torch_loop import train

    rc, _, err = run_main(capsys, "train", tiny, "--epochs", "3", "--out", str(tmp_path / "straight"))
    assert rc == 0, err

    class Stop(Exception):
        pass

    def stop(epoch, epochs, acc):
        raise Stop

    with pytest.raises(Stop):
        train(tiny, epochs=3, out_dir=tmp_path / "broken", on_epoch=stop)
    capsys.readouterr()
    assert len(json.loads((tmp_path / "broken" / "metrics.json").read_text())["epochs"]) == 1
    rc, out, err = run_main(capsys, "train", tiny, "--resume", str(tmp_path / "broken"))
    assert rc == 0, err
    assert [line.split(":")[0] for line in out.splitlines() if line.startswith("epoch")] == ["epoch 2/3",
                                                                                             "epoch 3/3"]
    want, got = saved(tmp_path / "straight", TINY), saved(tmp_path / "broken", TINY)
    assert all(torch.equal(want[k], got[k]) for k in want)
    a, b = (json.loads((tmp_path / d / "metrics.json").read_text()) for d in ("straight", "broken"))
    assert a == b

    # extending a finished run: --epochs is the total; the run goes on in its folder
    rc, out, err = run_main(capsys, "train", tiny, "--resume", str(tmp_path / "straight"), "--epochs", "4",
                            "--out", str(tmp_path / "longer"))
    assert rc == 0, err
    assert len(json.loads((tmp_path / "longer" / "metrics.json").read_text())["epochs"]) == 4


def test_resume_refuses_what_does_not_continue_the_run(capsys, tmp_path, tiny):
    run = tmp_path / "run"
    assert run_main(capsys, "train", tiny, "--epochs", "1", "--out", str(run))[0] == 0
    cases = [
        (["--lr", "0.1"], f"error: '{run}' was trained with --lr 0.05, not 0.1", "hint: a resumed run keeps"),
        (["--seed", "1"], f"error: '{run}' was trained with --seed 0, not 1", "drop --seed"),
        (["-p", "classes=10"], f"error: '{run}' was trained with the parameters {{}}", "drop -p"),
        ([], f"error: '{run}' has trained 1 epoch already", "hint: give --epochs with the total to reach"),
    ]
    for extra, message, hint in cases:
        rc, _, err = run_main(capsys, "train", tiny, "--resume", str(run), *extra)
        assert rc == 1 and err.startswith(message) and hint in err, (extra, err)
    other = tmp_path / "other.cnn"
    other.write_text(TINY.replace("conv3-4", "conv3-6"))
    rc, _, err = run_main(capsys, "train", str(other), "--resume", str(run), "--epochs", "2")
    assert rc == 1 and err.startswith(f"error: '{run}' holds a run of another network"), err
    rc, _, err = run_main(capsys, "train", tiny, "--resume", str(tmp_path), "--epochs", "2")
    assert rc == 1 and "is not a saved training run: no metrics.json, weights.safetensors" in err, err
    (run / "optimizer.pt").write_bytes(b"not a checkpoint")
    rc, _, err = run_main(capsys, "train", tiny, "--resume", str(run), "--epochs", "2")
    assert rc == 1 and err.startswith(f"error: cannot resume from '{run}'"), err
    rc, _, err = run_main(capsys, "train", tiny, "--backend", "jax", "--nproc", "2")
    assert rc == 1 and "error: data-parallel training (nproc) needs the torch backend" in err


def test_a_jax_run_saves_resumes_and_its_weights_serve_torch(capsys, tmp_path, tiny):
    """The JAX path's run folder: resumed after an interruption it ends as the straight run does, bit for bit;
    its weights file, in the torch state_dict's layout, gives the torch model the accuracy the JAX run reported."""
    pytest.importorskip("optax")
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    from cnndsl.train.torch_loop import train

    train(tiny, backend="jax", epochs=2, batch_size=128, out_dir=tmp_path / "straight")

    def stop(epoch, epochs, acc):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(tiny, backend="jax", epochs=2, batch_size=128, out_dir=tmp_path / "broken", on_epoch=stop)
    capsys.readouterr()
    rc, out, err = run_main(capsys, "train", tiny, "--backend", "jax", "--resume", str(tmp_path / "broken"))
    assert rc == 0, err
    assert [line.split(":")[0] for line in out.splitlines() if line.startswith("epoch")] == ["epoch 2/2"]
    want, got = saved(tmp_path / "straight", TINY), saved(tmp_path / "broken", TINY)
    assert all(torch.equal(want[k], got[k]) for k in want)
    metrics = json.loads((tmp_path / "broken" / "metrics.json").read_text())
    assert metrics == json.loads((tmp_path / "straight" / "metrics.json").read_text())
    assert metrics["backend"] == "jax" and (tmp_path / "broken" / "optimizer.npz").is_file()

    model = cnndsl.build_torch(cnndsl.load(str(tmp_path / "broken" / "network.cnn")))
    model.load_state_dict(got)
    model.eval()
    digits = load_digits()
    x = torch.from_numpy((digits.images / 16.0).astype(np.float32)[:, None])
    tr, te = train_test_split(list(range(len(x))), test_size=0.2, random_state=0, stratify=digits.target)
    x = (x - x[tr].mean()) / x[tr].std()
    with torch.no_grad():
        right = int((model(x[te]).argmax(1).numpy() == digits.target[te]).sum())
    assert abs(right - round(metrics["test_accuracy"] * len(te))) <= 1  # two frameworks' rounding: a near tie

    rc, _, err = run_main(capsys, "train", tiny, "--resume", str(tmp_path / "broken"), "--epochs", "3")
    assert rc == 1 and "is a run of the jax backend" in err and "hint: resume it with --backend jax" in err


# -- --nproc --------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize(("size", "world"), [(32, 2), (29, 2), (7, 3), (1, 2)])
def test_the_shares_of_a_batch_give_its_mean_gradient(size, world):
    """What ``--nproc`` relies on: each process's weighted loss, its gradients averaged over the processes (as
    ``DistributedDataParallel`` averages them), is the gradient of the whole batch's mean loss; batches that do
    not divide evenly, and one smaller than the processes, included."""
    import torch.nn.functional as F

    from cnndsl.train.torch_loop import share

    gen = torch.Generator().manual_seed(size)
    x, y = torch.randn(40, 6, generator=gen), torch.randint(0, 3, (40,), generator=gen)
    w = torch.randn(6, 3, generator=gen, requires_grad=True)
    batch = torch.randperm(40, generator=gen)[:size]
    F.cross_entropy(x[batch] @ w, y[batch]).backward()
    want, w.grad = w.grad.clone(), None
    grads, seen = [], []
    for rank in range(world):
        idx, weight = share(batch, rank, world)
        (F.cross_entropy(x[idx] @ w, y[idx], reduction="sum") * weight).backward()
        grads.append(w.grad.clone())
        w.grad = None
        seen += idx.tolist() if weight else []
    torch.testing.assert_close(sum(grads) / world, want, rtol=1e-5, atol=1e-6)
    assert sorted(seen) == sorted(batch.tolist())


@pytest.mark.slow
def test_two_processes_reach_the_single_process_result(tmp_path, tiny):
    """``--nproc 2`` (two processes by torchrun's elastic launcher, gloo) against one process, one epoch of the
    same global batch and seed. The network has no batch norm, so the only difference is the order in which
    float32 gradients are summed (each process's half, then the all-reduce): a few units in the last place per
    step, over 45 steps at learning rate 0.05 well under 1e-5 for weights of size ~1 (measured: 3e-7). The
    test accuracy, from weights that close, is the same."""
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])}
    runs = {}
    for n in (1, 2):
        r = subprocess.run([sys.executable, "-m", "cnndsl", "train", tiny, "--epochs", "1", "--nproc", str(n),
                            "--out", str(tmp_path / f"n{n}")], capture_output=True, text=True, env=env, timeout=300,
                           check=False)
        assert r.returncode == 0, r.stderr
        assert "Traceback" not in r.stderr
        runs[n] = r.stdout
    assert runs[1].splitlines()[0] == runs[2].splitlines()[0]  # the data line, printed once
    assert runs[2].count("epoch 1/1:") == 1 and runs[2].splitlines()[-1].startswith("test accuracy: ")
    one, two = saved(tmp_path / "n1", TINY), saved(tmp_path / "n2", TINY)
    for k in one:
        torch.testing.assert_close(two[k], one[k], rtol=0, atol=1e-5)
    a, b = (json.loads((tmp_path / f"n{n}" / "metrics.json").read_text()) for n in (1, 2))
    assert a["test_accuracy"] == b["test_accuracy"] and b["settings"]["nproc"] == 2
    assert a["epochs"][0]["loss"] == pytest.approx(b["epochs"][0]["loss"], rel=1e-6)
    assert a["epochs"][0]["train_accuracy"] == b["epochs"][0]["train_accuracy"]


def test_train_save_export_onnx_and_onnxruntime_computes_the_trained_model(capsys, tmp_path, tiny):
    """The whole loop: `train --out`, then `export --onnx --weights` of the saved run; onnxruntime on the export
    gives what the trained PyTorch model gives (and not what a fresh, untrained one gives)."""
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    run = tmp_path / "run"
    rc, _, err = run_main(capsys, "train", tiny, "--epochs", "1", "--out", str(run))
    assert rc == 0, err
    onnx_file = tmp_path / "trained.onnx"
    rc, _, err = run_main(capsys, "export", str(run / "network.cnn"), "--onnx", str(onnx_file),
                          "--weights", str(run / "weights.safetensors"))
    assert rc == 0, err
    trained = cnndsl.build_torch(str(run / "network.cnn"), weights=str(run / "weights.safetensors")).eval()
    x = torch.randn(4, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        want, fresh = trained(x).numpy(), cnndsl.build_torch(tiny).eval()(x).numpy()
    session = ort.InferenceSession(onnx_file.read_bytes(), providers=["CPUExecutionProvider"])
    (got,) = session.run(None, {session.get_inputs()[0].name: x.numpy()})
    assert np.abs(got - want).max() <= 1e-4 * max(1.0, np.abs(want).max())
    assert np.abs(fresh - want).max() > 1e-2  # training moved the weights: the export carries them


def test_a_frozen_run_saves_and_resumes_its_freezing(capsys, tmp_path):
    """``network.cnn`` of a run with frozen layers keeps them frozen (the base and the derived network, loaded as
    ``network.cnn:NAME``): the frozen conv's saved weights are its initial ones, and the run resumes from it."""
    from cnndsl.weights import load_weights

    source = tmp_path / "tuned.cnn"
    source.write_text(TINY + "network tuned = tiny freeze(conv1)\n")
    run = tmp_path / "run"
    rc, _, err = run_main(capsys, "train", f"{source}:tuned", "--epochs", "1", "--out", str(run))
    assert rc == 0, err
    net = cnndsl.load(f"{run / 'network.cnn'}:tuned")
    assert {n.name for n in net.graph.nodes() if n.frozen} == {"conv1"}
    torch.manual_seed(0)
    start = cnndsl.build_torch(cnndsl.loads(TINY)).state_dict()
    trained = load_weights(run / "weights.safetensors", net)
    assert torch.equal(trained["conv1.weight"], start["conv1.weight"])
    assert not torch.equal(trained["fc1.weight"], start["fc1.weight"])
    rc, _, err = run_main(capsys, "train", f"{run / 'network.cnn'}:tuned", "--epochs", "2", "--resume", str(run))
    assert rc == 0, err
    assert torch.equal(load_weights(run / "weights.safetensors", net)["conv1.weight"], start["conv1.weight"])
