"""``cnndsl train NET --backend jax``: the training loop of :mod:`cnndsl.train.torch_loop` on the generated JAX model.

Same data, split, normalisation and recipe as the torch path (SGD with momentum 0.9 and
weight decay 5e-4 via optax, the learning rate divided by 10 at 2/3 of the epochs,
cross-entropy plus 0.3 x each auxiliary head's), one jitted step per batch, batch norm
statistics carried between steps. Frozen layers (``freeze(...)``) are not updated.
Nothing here imports torch: the data comes from :func:`cnndsl.train.data.load_data` as NumPy arrays.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import numpy as np

from cnndsl.backends.jax import build as build_jax
from cnndsl.errors import CnnDslError
from cnndsl.files import write_atomic
from cnndsl.ir.network import Network
from cnndsl.report.expand import expand
from cnndsl.train.data import (
    check_resumed_network,
    classified_network,
    describe,
    digits_arrays,
    epoch_lr,
    epoch_seed,
    load_data,
    require,
    run_settings,
    split_indices,
    write_metrics,
)
from cnndsl.weights import load_jax, save_jax


def digits_images() -> tuple[np.ndarray, np.ndarray, list[str]]:
    """scikit-learn's digits as float images (N, 1, 8, 8) in [0, 1] and integer labels."""
    x, y, names = digits_arrays()
    return x, y.astype(np.int32), names


def fit_input(x: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """Images (N, C, h, w) to the network's NHWC input, as :func:`cnndsl.train.torch_loop.fit_input` does.

    Bilinear resizing with half-pixel centres (PyTorch's ``align_corners=False``), channels
    averaged then replicated; a flat input takes the first pixels (zero-padded if short).
    """
    import jax

    if len(shape) != 3:
        flat = x.reshape(len(x), -1)
        return flat[:, :shape[0]] if flat.shape[1] >= shape[0] else np.pad(flat, ((0, 0), (0, shape[0] - flat.shape[1])))
    c, h, w = shape
    x = x.transpose(0, 2, 3, 1)
    if x.shape[1:3] != (h, w):
        x = np.asarray(jax.image.resize(x, (len(x), h, w, x.shape[3]), "linear", antialias=False))
    if x.shape[3] != c:
        x = np.repeat(x.mean(3, keepdims=True), c, axis=3)
    return x


def split(y: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """The torch path's fixed, stratified 80/20 train/test split, as index arrays."""
    return split_indices(y, seed)


def _labels(tree: Any, frozen: set[str], prefix: str = "") -> Any:
    """An optax label per parameter leaf: ``"frozen"`` under a frozen layer, else ``"train"``."""
    if isinstance(tree, dict):
        return {k: _labels(v, frozen, f"{prefix}.{k}" if prefix else k) for k, v in tree.items()}
    return "frozen" if prefix.rsplit(".", 1)[0] in frozen else "train"


def train_jax(net: str | Network, data: str | None = None, epochs: int | None = None, *, seed: int | None = None,
              batch_size: int | None = None, lr: float | None = None, out=None, on_epoch=None, out_dir=None,
              resume=None, **params: Any) -> float:
    """Train ``net`` with the JAX backend and return the test accuracy (printed last, as the torch path does).

    The settings, their defaults, ``on_epoch(epoch, epochs, test_accuracy)``, ``out_dir`` and ``resume`` are those
    of :func:`cnndsl.train.torch_loop.train`; the run's folder holds the optimizer's state as ``optimizer.npz``
    (optax's state, its leaves in order) in place of ``optimizer.pt``, and the same ``weights.safetensors``
    (the torch ``state_dict``'s keys and layouts: :func:`cnndsl.weights.save_jax`).
    """
    jax = require("jax", "training with the JAX backend", "JAX", "pip install 'cnndsl[jax]'")
    jnp = require("jax.numpy", "training with the JAX backend", "JAX", "pip install 'cnndsl[jax]'")
    optax = require("optax", "training with the JAX backend", "optax", "pip install 'cnndsl[jax]'")

    run = run_settings("jax", data=data, epochs=epochs, seed=seed, batch_size=batch_size, lr=lr, params=params,
                       out_dir=out_dir, resume=resume)
    data, epochs, seed, batch_size, lr = (run[k] for k in ("data", "epochs", "seed", "batch_size", "lr"))
    errors = out or sys.stderr  # the data's warnings: stderr, or with the output where the caller takes it
    out = out or sys.stdout
    x, y, names = load_data(net, data, run["params"])  # NumPy (and Pillow, scikit-learn) only: no torch here
    y = y.astype(np.int32)
    network = classified_network(net, len(names), run["params"])
    check_resumed_network(run, network, net)
    x = fit_input(x, network.input_shape)
    train_idx, test_idx = split(y, seed)
    line, warnings = describe(data, y, names, len(train_idx), len(test_idx))
    print(line, file=out)
    for w in warnings:
        print(w, file=errors)
    mean, std = x[train_idx].mean(), x[train_idx].std(ddof=1)
    x = ((x - mean) / std).astype(np.float32)

    model = build_jax(network)
    steps_per_epoch = -(-len(train_idx) // batch_size)
    schedule = optax.piecewise_constant_schedule(lr, {max(1, 2 * epochs // 3) * steps_per_epoch: 0.1})
    sgd = optax.chain(optax.add_decayed_weights(5e-4), optax.sgd(schedule, momentum=0.9))
    frozen = {n.name for n in network.graph.nodes() if n.frozen}
    variables = model.init(jax.random.key(seed))
    params_, stats = variables["params"], variables["batch_stats"]
    opt = optax.multi_transform({"train": sgd, "frozen": optax.set_to_zero()}, _labels(params_, frozen))
    opt_state = opt.init(params_)
    history = list(run["history"])
    if run["resume"] is not None:
        params_, stats, opt_state = _restore(Path(run["resume"]), network, opt_state, len(history))
    folder = None if run["out_dir"] is None else Path(run["out_dir"])
    if folder is not None:
        write_atomic(folder / "network.cnn", expand(network))

    def loss_fn(p, stats, xb, yb, key):
        outputs, new_stats = model.apply({"params": p, "batch_stats": stats}, xb, train=True, rng=key)
        main, aux = (outputs[0], outputs[1:]) if isinstance(outputs, tuple) else (outputs, ())
        loss = optax.softmax_cross_entropy_with_integer_labels(main, yb).mean()
        loss += sum(0.3 * optax.softmax_cross_entropy_with_integer_labels(a, yb).mean() for a in aux)
        return loss, (new_stats, (main.argmax(-1) == yb).sum())

    @jax.jit
    def step(p, stats, opt_state, xb, yb, key):
        (loss, (stats, correct)), grads = jax.value_and_grad(loss_fn, has_aux=True)(p, stats, xb, yb, key)
        updates, opt_state = opt.update(grads, opt_state, p)
        return optax.apply_updates(p, updates), stats, opt_state, loss, correct

    predict = jax.jit(lambda v, xb: model.apply(v, xb).argmax(-1))

    def evaluate() -> float:
        v = {"params": params_, "batch_stats": stats}
        correct = sum(int((predict(v, x[test_idx[i:i + 256]]) == jnp.asarray(y[test_idx[i:i + 256]])).sum())
                      for i in range(0, len(test_idx), 256))
        return correct / len(test_idx)

    for epoch in range(len(history) + 1, epochs + 1):
        # each epoch's shuffle and dropout from (seed, epoch) alone, as on the torch path: a resumed run draws alike
        order = train_idx[np.random.RandomState(epoch_seed(seed, epoch)).permutation(len(train_idx))]
        key = jax.random.key(epoch_seed(seed, epoch))
        total, correct = 0.0, 0
        for i in range(0, len(order), batch_size):
            idx = order[i:i + batch_size]
            key, sub = jax.random.split(key)
            params_, stats, opt_state, loss, right = step(params_, stats, opt_state, x[idx], y[idx], sub)
            total += float(loss) * len(idx)
            correct += int(right)
        acc = evaluate()
        history.append({"epoch": epoch, "lr": epoch_lr(lr, epoch, epochs), "loss": total / len(order),
                        "train_accuracy": correct / len(order), "test_accuracy": acc})
        print(f"epoch {epoch}/{epochs}: loss {total / len(order):.4f}, train accuracy {correct / len(order):.3f}, "
              f"test accuracy {acc:.3f}", file=out)
        if folder is not None:
            _save(folder, network, {"params": params_, "batch_stats": stats}, opt_state, {**run, "history": history},
                  names)
        if on_epoch is not None:
            on_epoch(epoch, epochs, acc)
    acc = evaluate()
    print(f"test accuracy: {acc:.2f}", file=out)
    return acc


def _save(folder: Path, network: Network, variables: dict, opt_state: Any, run: dict, names: list[str]) -> None:
    """Write the run's weights, optimizer state and metrics into ``folder`` (each file replaced whole)."""
    import io

    import jax

    require("safetensors", "saving the trained weights", "safetensors")
    epoch = len(run["history"])
    save_jax(folder / "weights.safetensors", network, jax.device_get(variables),
             extra_metadata={"cnndsl.epoch": str(epoch)})
    buffer = io.BytesIO()
    leaves = [np.asarray(leaf) for leaf in jax.tree_util.tree_leaves(opt_state)]
    np.savez(buffer, epoch=np.asarray(epoch), **{f"leaf{i}": leaf for i, leaf in enumerate(leaves)})
    write_atomic(folder / "optimizer.npz", buffer.getvalue())
    write_metrics(folder, network, "jax", names, run)


def _restore(folder: Path, network: Network, opt_state: Any, epoch: int) -> tuple[Any, Any, Any]:
    """The parameters, batch statistics and optimizer state of the run in ``folder``, which must be at ``epoch``.

    ``opt_state`` (a fresh one) gives the optimizer state's structure; the saved leaves must fit it.
    """
    import jax
    import jax.numpy as jnp

    require("safetensors", "loading the saved weights", "safetensors")
    variables = load_jax(folder / "weights.safetensors", network)  # checked against the network: a clean error
    leaves, tree = jax.tree_util.tree_flatten(opt_state)
    try:
        with np.load(folder / "optimizer.npz", allow_pickle=False) as saved:
            at = int(saved["epoch"])
            stored = [saved[f"leaf{i}"] for i in range(len(leaves))]
            extra = len(saved.files) - 1 - len(leaves)
    except (OSError, ValueError, KeyError) as e:
        raise CnnDslError(f"cannot resume from '{folder}': optimizer.npz: {e}", None,
                          "resume a folder that `cnndsl train --backend jax` wrote") from None
    if extra or any(np.shape(a) != np.shape(b) for a, b in zip(stored, leaves)):
        raise CnnDslError(f"cannot resume from '{folder}': optimizer.npz does not fit the network's optimizer", None,
                          "resume a folder that `cnndsl train --backend jax` wrote")
    if at != epoch:
        raise CnnDslError(f"'{folder}' is inconsistent: optimizer.npz is at epoch {at}, metrics.json at {epoch}",
                          None, "resume a folder that a finished epoch of `cnndsl train` wrote")
    restored = [jnp.asarray(s, dtype=jnp.asarray(leaf).dtype) for s, leaf in zip(stored, leaves)]
    as_jax = jax.tree_util.tree_map(jnp.asarray, variables)
    return as_jax["params"], as_jax.get("batch_stats", {}), jax.tree_util.tree_unflatten(tree, restored)
