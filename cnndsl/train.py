"""``cnndsl train``: train a generated PyTorch model on a small image data set.

The data is scikit-learn's 8x8 digits (1,797 images, 16 grey levels) resized to the
network's input, or an ImageFolder-style directory (one subfolder of images per
class, read with Pillow). A fixed, stratified 80/20 split; SGD with momentum and
weight decay, the learning rate divided by 10 at 2/3 of the epochs; one line per
epoch, and ``test accuracy: 0.97`` last.
"""

from __future__ import annotations

import importlib
import math
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from .errors import CnnDslError
from .network import Network
from .progress import progress

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")
TEST_FRACTION = 0.2


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


def load_digits_data():
    """scikit-learn's digits as float images (N, 1, 8, 8) in [0, 1] and integer labels (torch tensors)."""
    import torch

    x, y, names = digits_arrays()
    return torch.from_numpy(x), torch.from_numpy(y), names


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


def load_image_folder(root: str | Path, size: tuple[int, int], channels: int):
    """:func:`image_folder_arrays` as torch tensors."""
    import torch

    x, y, classes = image_folder_arrays(root, size, channels)
    return torch.from_numpy(x), torch.from_numpy(y), classes


def _split_module():
    return require("sklearn.model_selection", "the stratified train/test split", "scikit-learn")


def load_data(net: str | Network, data: str, params: dict[str, Any]) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """``--data digits`` or an image folder (sized for ``net``'s input) as NumPy images, labels, class names."""
    from . import api

    if data == "digits":
        return digits_arrays()
    _split_module()  # a missing scikit-learn is reported before any image is read
    probe = net if isinstance(net, Network) else api.load(str(net), **params)
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


def fit_input(x, shape: tuple[int, ...]):
    """Resize images (N, C, h, w) to the network's input C x H x W (bilinear; channels replicated)."""
    import torch.nn.functional as F

    if len(shape) != 3:
        return x.flatten(1)[:, : shape[0]] if x[0].numel() >= shape[0] else F.pad(x.flatten(1),
                                                                                   (0, shape[0] - x[0].numel()))
    c, h, w = shape
    if x.shape[2:] != (h, w):
        x = F.interpolate(x, size=(h, w), mode="bilinear", align_corners=False)
    if x.shape[1] != c:
        x = x.mean(1, keepdim=True).expand(-1, c, -1, -1).contiguous()
    return x


def _network(net: str | Network, classes: int, params: dict[str, Any]) -> Network:
    from . import api

    if isinstance(net, Network):
        network = net
    else:
        network = api.load(str(net), **params)
        if network.output_shapes[0] != (classes,) and "classes" in network.graph.params and "classes" not in params:
            network = api.load(str(net), **{**params, "classes": classes})
    if network.output_shapes[0] != (classes,):
        raise CnnDslError(f"'{network.name}' gives {network.output_shapes[0]} outputs, the data has {classes} "
                          "classes", None, f"pass -p classes={classes} if the network has that parameter")
    return network


def train(net: str | Network, data: str = "digits", epochs: int | None = None, backend: str = "torch", *,
          seed: int = 0, batch_size: int = 32, lr: float = 0.05, out=None,
          on_epoch: Callable[[int, int, float], None] | None = None, **params: Any) -> float:
    """Train ``net`` on ``data`` and return the test accuracy (also printed, last, as ``test accuracy: 0.97``).

    ``on_epoch(epoch, epochs, test_accuracy)`` is called after every epoch (a search uses it to prune);
    an exception it raises stops the training and propagates.
    """
    from . import api

    if backend == "jax":  # before any torch import: the JAX path does not need torch
        from .train_jax import train_jax

        return train_jax(net, data, epochs, seed=seed, batch_size=batch_size, lr=lr, out=out, on_epoch=on_epoch,
                         **params)
    if backend != "torch":
        raise CnnDslError(f"training runs on the torch or jax backend, not {backend!r}", None)
    torch = require("torch", "training with the torch backend", "PyTorch",
                    "pip install torch, or train with --backend jax")
    import torch.nn.functional as F
    out = out or sys.stdout
    torch.manual_seed(seed)
    x, y, names = load_data(net, data, params)
    network = _network(net, len(names), params)
    x = fit_input(torch.from_numpy(x), network.input_shape)
    y = torch.from_numpy(y)
    train_idx, test_idx = _split(y, seed)
    mean, std = x[train_idx].mean(), x[train_idx].std()
    x = (x - mean) / std
    model = api.build_torch(network)
    if network.params < 1_000_000:  # a small net on CPU is bound by per-op overhead: threads only contend
        torch.set_num_threads(1)
    epochs = epochs or 8
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=lr, momentum=0.9,
                          weight_decay=5e-4)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=max(1, 2 * epochs // 3), gamma=0.1)
    gen = torch.Generator().manual_seed(seed)
    for epoch in range(1, epochs + 1):
        model.train()
        order = train_idx[torch.randperm(len(train_idx), generator=gen)]
        batches = order.split(batch_size)
        total, correct, seen = 0.0, 0, 0
        for idx in progress(batches, f"epoch {epoch}/{epochs}", unit="batch"):
            outputs = model(x[idx])
            main, aux = (outputs[0], outputs[1:]) if isinstance(outputs, tuple) else (outputs, ())
            loss = F.cross_entropy(main, y[idx]) + sum(0.3 * F.cross_entropy(a, y[idx]) for a in aux)
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += loss.item() * len(idx)
            correct += (main.argmax(1) == y[idx]).sum().item()
            seen += len(idx)
        sched.step()
        acc = evaluate(model, x[test_idx], y[test_idx])
        print(f"epoch {epoch}/{epochs}: loss {total / seen:.4f}, train accuracy {correct / seen:.3f}, "
              f"test accuracy {acc:.3f}", file=out)
        if on_epoch is not None:
            on_epoch(epoch, epochs, acc)
    acc = evaluate(model, x[test_idx], y[test_idx])
    print(f"test accuracy: {acc:.2f}", file=out)
    return acc


def evaluate(model, x, y, batch_size: int = 256) -> float:
    """Accuracy of ``model`` (in eval mode) on ``x``, ``y``."""
    import torch

    model.eval()
    correct = 0
    with torch.no_grad():
        for i in range(0, len(x), batch_size):
            correct += (model(x[i:i + batch_size]).argmax(1) == y[i:i + batch_size]).sum().item()
    return correct / len(x)


def _split(y, seed: int):
    """A fixed, stratified 80/20 train/test split of a torch label tensor, as index tensors."""
    import torch

    tr, te = split_indices(y.numpy(), seed)
    return torch.from_numpy(tr), torch.from_numpy(te)
