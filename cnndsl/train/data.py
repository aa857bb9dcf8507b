"""The data of ``cnndsl train``, for either backend: NumPy arrays only (no torch, no jax).

scikit-learn's 8x8 digits, or an ImageFolder-style directory (one subfolder of images per class, read with
Pillow), sized for the network's input; the fixed, stratified 80/20 train/test split; and the network to
train, loaded with as many outputs as the data has classes. :mod:`cnndsl.train.torch_loop` (torch) and
:mod:`cnndsl.train.jax_loop` both read it.
"""

from __future__ import annotations

import importlib
import math
from pathlib import Path
from typing import Any

import numpy as np

from cnndsl.errors import CnnDslError
from cnndsl.ir.network import Network
from cnndsl.passes.pipeline import load

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
    return network
