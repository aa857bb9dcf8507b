"""``cnndsl train``: train a generated PyTorch model on a small image data set.

The data is scikit-learn's 8x8 digits (1,797 images, 16 grey levels) resized to the
network's input, or an ImageFolder-style directory (one subfolder of images per
class, read with Pillow), read by :mod:`cnndsl.train.data` (NumPy only, shared with
the JAX path, :mod:`cnndsl.train.jax_loop`, which ``backend="jax"`` hands over to).
A fixed, stratified 80/20 split; SGD with momentum and weight decay, the learning
rate divided by 10 at 2/3 of the epochs; one line per epoch, and
``test accuracy: 0.97`` last.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cnndsl.backends.torch import build as build_torch
from cnndsl.errors import CnnDslError
from cnndsl.ir.network import Network
from cnndsl.progress import progress
from cnndsl.train.data import (  # noqa: F401 - the data helpers, shared with the JAX path, are part of this API too
    IMAGE_SUFFIXES,
    TEST_FRACTION,
    check_split,
    classified_network,
    digits_arrays,
    image_files,
    image_folder_arrays,
    load_data,
    require,
    split_indices,
)


def load_digits_data():
    """scikit-learn's digits as float images (N, 1, 8, 8) in [0, 1] and integer labels (torch tensors)."""
    import torch

    x, y, names = digits_arrays()
    return torch.from_numpy(x), torch.from_numpy(y), names


def load_image_folder(root: str | Path, size: tuple[int, int], channels: int):
    """:func:`image_folder_arrays` as torch tensors."""
    import torch

    x, y, classes = image_folder_arrays(root, size, channels)
    return torch.from_numpy(x), torch.from_numpy(y), classes


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


def train(net: str | Network, data: str = "digits", epochs: int | None = None, backend: str = "torch", *,
          seed: int = 0, batch_size: int = 32, lr: float = 0.05, out=None,
          on_epoch: Callable[[int, int, float], None] | None = None, **params: Any) -> float:
    """Train ``net`` on ``data`` and return the test accuracy (also printed, last, as ``test accuracy: 0.97``).

    ``on_epoch(epoch, epochs, test_accuracy)`` is called after every epoch (a search uses it to prune);
    an exception it raises stops the training and propagates.
    """
    if backend == "jax":  # before any torch import: the JAX path does not need torch
        from cnndsl.train.jax_loop import train_jax

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
    network = classified_network(net, len(names), params)
    x = fit_input(torch.from_numpy(x), network.input_shape)
    y = torch.from_numpy(y)
    train_idx, test_idx = _split(y, seed)
    mean, std = x[train_idx].mean(), x[train_idx].std()
    x = (x - mean) / std
    model = build_torch(network)
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
