"""The data of ``cnndsl train``, for either backend: NumPy arrays only (no torch, no jax).

scikit-learn's 8x8 digits, or an ImageFolder-style directory (one subfolder of images per class, read with
Pillow), sized for the network's input; the fixed, stratified 80/20 train/test split; and the network to
train, loaded with as many outputs as the data has classes. :mod:`cnndsl.train.torch_loop` (torch) and
:mod:`cnndsl.train.jax_loop` both read it. Also shared by both: the recipe's defaults (:data:`EPOCHS`, ...),
the line that describes the data and its warnings, each epoch's seed and learning rate, and a run's folder
(``--out``, ``--resume``): its settings, checked on resuming, and its ``metrics.json``.
"""

from __future__ import annotations

import importlib
import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from cnndsl.errors import CnnDslError
from cnndsl.files import write_atomic
from cnndsl.ir.network import Network
from cnndsl.passes.check import check_training
from cnndsl.passes.pipeline import load
from cnndsl.report.expand import expand

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")
TEST_FRACTION = 0.2
# The recipe's defaults, the same on every backend. 8 epochs (the torch path's, before; JAX's was 10): lenet5 on
# digits then reaches 97.2% test accuracy with either backend, as much as with 10 (96.9% torch, 97.2% JAX).
EPOCHS = 8
LR = 0.05
BATCH_SIZE = 32
SEED = 0
# A test split this small reports an accuracy in steps of more than 5 points: :func:`describe` warns.
MIN_TEST = 20


def require(module: str, purpose: str, package: str, hint: str | None = None):
    """Import ``module``, or raise a :class:`CnnDslError` saying that ``purpose`` needs ``package``.

    A module that is missing and one that is installed but fails to import (a broken install)
    both become a clean message with the ``pip install`` that fixes it.
    """
    try:
        return importlib.import_module(module)
    except ImportError as e:
        top = module.split(".")[0]
        missing = isinstance(e, ModuleNotFoundError) and (e.name or top).split(".")[0] == top
        why = "which is not installed" if missing else f"which fails to import ({e})"
        raise CnnDslError(f"{purpose} needs {package}, {why}", None, hint or f"pip install {package}") from None


def digits_arrays() -> tuple[np.ndarray, np.ndarray, list[str]]:
    """scikit-learn's digits as float32 images (N, 1, 8, 8) in [0, 1] and int64 labels (NumPy only)."""
    datasets = require("sklearn.datasets", "the digits data set", "scikit-learn",
                       "pip install scikit-learn, or give --data DIR (an ImageFolder-style directory)")
    digits = datasets.load_digits()
    return ((digits.images / 16.0).astype(np.float32)[:, None], digits.target.astype(np.int64),
            [str(c) for c in digits.target_names])


def _listing(folder: Path) -> list[Path]:
    """The entries of ``folder`` without hidden ones (``.DS_Store``, ``._x.png``, ``.ipynb_checkpoints``)."""
    try:
        return sorted(p for p in folder.iterdir() if not p.name.startswith("."))
    except OSError as e:
        raise CnnDslError(f"cannot read the folder '{folder}': {e.strerror or e}", None) from None


def image_files(root: str | Path) -> tuple[list[list[Path]], list[str]]:
    """The image files of an ImageFolder-style directory, per class, and the class names (sorted).

    Raises :class:`CnnDslError` when ``root`` is not such a directory, or when its classes
    have too few images for the stratified 80/20 split (checked before any image is decoded).
    """
    root = Path(root)
    classes = [p for p in _listing(root) if p.is_dir()] if root.is_dir() else []
    if not classes:
        raise CnnDslError(f"'{root}' is not a folder of class subfolders", None,
                          "give --data digits, or a directory laid out as DIR/<class>/<image>")
    files = [[p for p in _listing(c) if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()] for c in classes]
    if not any(files):
        raise CnnDslError(f"no images under '{root}'", None, f"expected files ending in {', '.join(IMAGE_SUFFIXES)}")
    check_split([len(f) for f in files], [c.name for c in classes], root)
    return files, [c.name for c in classes]


def check_split(counts: list[int], classes: list[str], root: str | Path | None = None) -> None:
    """Raise a :class:`CnnDslError` unless classes of these sizes allow the stratified 80/20 split.

    The conditions are scikit-learn's: every class has at least 2 images, and the train and
    the test part (``ceil(0.2 * N)`` images) each have at least one image per class.
    """
    for name, n in zip(classes, counts):
        if n < 2:
            have = "no images" if n == 0 else "only 1 image"
            where = f" in '{root}'" if root is not None else ""
            raise CnnDslError(f"class '{name}'{where} has {have}; the stratified 80/20 train/test split "
                              "needs at least 2 per class", None,
                              f"add images to {Path(root) / name}, or remove that folder" if root is not None
                              else "give at least 2 examples of every class")
    total, k = sum(counts), len(classes)
    n_test = math.ceil(TEST_FRACTION * total)
    if n_test < k or total - n_test < k:
        need = next((n for n in range(2 * k, 10 * k + 10) if math.ceil(TEST_FRACTION * n) >= k
                     and n - math.ceil(TEST_FRACTION * n) >= k), 5 * k)
        raise CnnDslError(f"{total} images in {k} classes are too few for the stratified 80/20 split: "
                          f"its test fifth ({n_test}) needs one image per class", None,
                          f"give at least {need} images in all")


def image_folder_arrays(root: str | Path, size: tuple[int, int], channels: int
                        ) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """An ImageFolder-style directory (``root/<class>/<image>``) as float32 (N, C, H, W) in [0, 1] (NumPy only).

    Hidden files and folders are left out. A file that Pillow cannot decode (corrupt,
    truncated, not an image) is a :class:`CnnDslError` naming it.
    """
    files, classes = image_files(root)
    image = require("PIL.Image", "reading an image folder", "Pillow", "pip install pillow")
    images, labels = [], []
    for label, paths in enumerate(files):
        for path in paths:
            try:
                with image.open(path) as img:
                    img = img.convert("L" if channels == 1 else "RGB").resize((size[1], size[0]))
                    data = np.frombuffer(img.tobytes(), dtype=np.uint8)
            except Exception as e:  # Pillow raises OSError, ValueError, SyntaxError, ... for a bad file
                reason = str(e) or type(e).__name__
                raise CnnDslError(f"cannot read the image '{path}': {reason}", None,
                                  "remove or replace the file: every image in the folder must be one that "
                                  "Pillow can open") from e
            images.append(data.reshape(size[0], size[1], -1).transpose(2, 0, 1).astype(np.float32) / 255.0)
            labels.append(label)
    return np.stack(images), np.asarray(labels, dtype=np.int64), classes


def _split_module():
    return require("sklearn.model_selection", "the stratified train/test split", "scikit-learn")


def load_data(net: str | Network, data: str, params: dict[str, Any]) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """``--data digits`` or an image folder (sized for ``net``'s input) as NumPy images, labels, class names."""
    if data == "digits":
        return digits_arrays()
    _split_module()  # a missing scikit-learn is reported before any image is read
    probe = net if isinstance(net, Network) else load(str(net), **params)
    shape = probe.input_shape
    return image_folder_arrays(data, shape[1:] if len(shape) == 3 else (8, 8), shape[0] if len(shape) == 3 else 1)


def split_indices(y: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """The fixed, stratified 80/20 train/test split of labels ``y``, as index arrays (NumPy only)."""
    model_selection = _split_module()
    y = np.asarray(y)
    classes, counts = np.unique(y, return_counts=True)
    check_split(list(counts), [str(c) for c in classes])
    try:
        tr, te = model_selection.train_test_split(list(range(len(y))), test_size=TEST_FRACTION, random_state=seed,
                                                  stratify=y)
    except ValueError as e:  # what check_split does not foresee
        raise CnnDslError(f"cannot split the data 80/20 by class: {e}", None) from None
    return np.asarray(tr), np.asarray(te)


def describe(data: str, y: np.ndarray, names: list[str], n_train: int, n_test: int) -> tuple[str, list[str]]:
    """The line ``cnndsl train`` prints about the data it found, and its warnings (NumPy only).

    The line names the data, the number of images, the split and every class with its count
    (``data: digits, 1,797 images in 10 classes (1,437 train, 360 test): 0 178, 1 182, ...``).
    A warning is given for a single class (every prediction is then right, so the accuracy
    says nothing) and for a test split under :data:`MIN_TEST` images.
    """
    counts = np.bincount(np.asarray(y), minlength=len(names))
    listing = ", ".join(f"{name} {int(n):,}" for name, n in zip(names, counts))
    line = (f"data: {data}, {len(y):,} images in {len(names)} class{'es' if len(names) != 1 else ''} "
            f"({n_train:,} train, {n_test:,} test): {listing}")
    warnings = []
    if len(names) == 1:
        warnings.append(f"warning: the data has a single class ('{names[0]}'): every prediction is right, so the "
                        "test accuracy says nothing\nhint: give a folder with a subfolder for each of at least "
                        "2 classes")
    if n_test < MIN_TEST:
        warnings.append(f"warning: the test split has only {n_test} image{'s' if n_test != 1 else ''}: its accuracy "
                        f"moves in steps of {100 / n_test:.0f} points\nhint: give at least "
                        f"{next(n for n in range(MIN_TEST, 10 * MIN_TEST) if math.ceil(TEST_FRACTION * n) >= MIN_TEST)} "
                        f"images for a test split of {MIN_TEST}")
    return line, warnings


def classified_network(net: str | Network, classes: int, params: dict[str, Any]) -> Network:
    if isinstance(net, Network):
        network = net
    else:
        network = load(str(net), **params)
        if network.output_shapes[0] != (classes,) and "classes" in network.graph.params and "classes" not in params:
            network = load(str(net), **{**params, "classes": classes})
    if network.output_shapes[0] != (classes,):
        raise CnnDslError(f"'{network.name}' gives {network.output_shapes[0]} outputs, the data has {classes} "
                          "classes", None, f"pass -p classes={classes} if the network has that parameter")
    check_training(network.graph)  # an aux head left out for too small an input cannot be trained
    return network


# -- a run's folder (``--out DIR``, ``--resume DIR``): the same on both backends --------------------------------

OPTIMIZER_FILE = {"torch": "optimizer.pt", "jax": "optimizer.npz"}  # the optimizer's state, in each one's form


def check_folder(path: str | Path) -> Path:
    """Make ``path`` a folder to write a run into (creating it), or raise a :class:`CnnDslError` saying why not."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise CnnDslError(f"cannot make the folder '{path}': {e.strerror or e}", None,
                          "give --out a folder that can be written") from None
    return path


def run_settings(backend: str, *, data: str | None, epochs: int | None, seed: int | None, batch_size: int | None,
                 lr: float | None, params: dict[str, Any], out_dir=None, resume=None, nproc: int = 1) -> dict:
    """A run's settings: those given, the defaults for the rest, or (``resume``) the saved run's.

    The result holds ``data``, ``epochs`` (the total), ``seed``, ``batch_size``, ``lr``, ``params``,
    ``history`` (the finished epochs' metrics), ``out_dir`` (``resume`` itself unless given), ``resume``
    and ``nproc``; ``out_dir`` is created.
    """
    if resume is not None:
        run = resumed(resume, backend, {"data": data, "seed": seed, "batch_size": batch_size, "lr": lr}, epochs,
                      params)
        out_dir = resume if out_dir is None else out_dir
    else:
        run = {"data": data or "digits", "seed": SEED if seed is None else seed, "batch_size": batch_size or BATCH_SIZE,
               "lr": LR if lr is None else lr, "epochs": epochs or EPOCHS, "params": params, "history": []}
    if out_dir is not None:
        check_folder(out_dir)
    return {**run, "out_dir": None if out_dir is None else str(out_dir),
            "resume": None if resume is None else str(resume), "nproc": nproc}


def resumed(folder: str | Path, backend: str, given: dict[str, Any], epochs: int | None,
            params: dict[str, Any]) -> dict:
    """The settings and history of the run saved in ``folder``, checked against the settings given again."""
    folder = Path(folder)
    names = ("metrics.json", "weights.safetensors", OPTIMIZER_FILE[backend], "network.cnn")
    missing = [name for name in names if not (folder / name).is_file()]
    if missing:
        other = next((b for b, f in OPTIMIZER_FILE.items() if b != backend and (folder / f).is_file()), None)
        if missing == [OPTIMIZER_FILE[backend]] and other is not None:
            raise CnnDslError(f"'{folder}' is a run of the {other} backend", None, f"resume it with --backend {other}")
        raise CnnDslError(f"'{folder}' is not a saved training run: no {', '.join(missing)}", None,
                          "resume a folder that `cnndsl train NET --out DIR` wrote")
    try:
        saved = json.loads((folder / "metrics.json").read_text(encoding="utf-8"))
        settings, history = saved["settings"], saved["epochs"]
        settings = {k: settings[k] for k in ("data", "seed", "batch_size", "lr", "params", "epochs")}
    except (ValueError, KeyError, TypeError) as e:
        raise CnnDslError(f"cannot read '{folder / 'metrics.json'}': {e}", None,
                          "resume a folder that `cnndsl train` wrote") from None
    for name, value in given.items():
        if value is not None and value != settings[name]:
            flag = "--" + name.replace("_", "-")
            raise CnnDslError(f"'{folder}' was trained with {flag} {settings[name]}, not {value}", None,
                              f"a resumed run keeps its settings: drop {flag}, or start a new run with --out")
    if params and params != settings["params"]:
        raise CnnDslError(f"'{folder}' was trained with the parameters {settings['params']}, not {params}", None,
                          "a resumed run keeps its settings: drop -p, or start a new run with --out")
    total = epochs or settings["epochs"]
    if total <= len(history):
        raise CnnDslError(f"'{folder}' has trained {len(history)} epoch{'s' if len(history) != 1 else ''} already",
                          None, f"give --epochs with the total to reach, more than {len(history)}")
    return {**settings, "epochs": total, "history": history}


def check_resumed_network(run: dict, network: Network, net: str | Network) -> None:
    """Refuse to resume ``run`` with another network than the one its folder's ``network.cnn`` holds."""
    if run["resume"] is None:
        return
    saved = Path(run["resume"]) / "network.cnn"
    # bar the header comment, which names the parameters the network was loaded with (network.cnn itself has none)
    if saved.read_text(encoding="utf-8").splitlines()[1:] != expand(network).splitlines()[1:]:
        shown = net.name if isinstance(net, Network) else net
        raise CnnDslError(f"'{run['resume']}' holds a run of another network than {shown}", None,
                          f"resume with the network it was trained from, e.g. {saved}")


def epoch_seed(seed: int, epoch: int) -> int:
    """The seed of epoch ``epoch``'s shuffle and dropout: a function of ``(seed, epoch)`` alone (NumPy's
    ``SeedSequence``), so that a resumed run draws what the uninterrupted one would have."""
    return int(np.random.SeedSequence([seed, epoch]).generate_state(1)[0])


def epoch_lr(lr: float, epoch: int, epochs: int) -> float:
    """The learning rate of epoch ``epoch`` (1-based) of ``epochs``: ``lr``, divided by 10 from 2/3 of the way.

    PyTorch's ``StepLR(step_size=max(1, 2 * epochs // 3), gamma=0.1)``, computed from the epoch (so a
    resumed run needs no scheduler state).
    """
    return lr * 0.1 ** ((epoch - 1) // max(1, 2 * epochs // 3))


def write_metrics(folder: str | Path, network: Network, backend: str, names: list[str], run: dict) -> None:
    """Write ``folder/metrics.json``: the network, the backend, the classes, the settings and every epoch's
    figures (keys sorted, so the same run gives the same bytes)."""
    history = run["history"]
    metrics = {"network": network.name, "backend": backend, "classes": names,
               "settings": {k: run[k] for k in ("data", "epochs", "lr", "batch_size", "seed", "params", "nproc",
                                                "device") if k in run},  # (the torch backend's device)
               "epochs": history, "test_accuracy": history[-1]["test_accuracy"]}
    write_atomic(Path(folder) / "metrics.json", json.dumps(metrics, indent=2, sort_keys=True) + "\n")
