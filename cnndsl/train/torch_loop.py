"""``cnndsl train``: train a generated PyTorch model on a small image data set.

The data is scikit-learn's 8x8 digits (1,797 images, 16 grey levels) resized to the
network's input, or an ImageFolder-style directory (one subfolder of images per
class, read with Pillow), read by :mod:`cnndsl.train.data` (NumPy only, shared with
the JAX path, :mod:`cnndsl.train.jax_loop`, which ``backend="jax"`` hands over to).
A fixed, stratified 80/20 split; SGD with momentum and weight decay, the learning
rate divided by 10 at 2/3 of the epochs; one line per epoch, and
``test accuracy: 0.97`` last. A run can be saved to a folder after every epoch and resumed
from it (:func:`train`'s ``out_dir`` and ``resume``), and trained data-parallel in several
processes (``nproc``). docs/training.md is the user's account.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cnndsl.backends.torch import build as build_torch
from cnndsl.errors import CnnDslError
from cnndsl.files import write_atomic
from cnndsl.ir.network import Network
from cnndsl.ops import load_plugins, plugin_sources
from cnndsl.progress import progress
from cnndsl.report.expand import expand
from cnndsl.train.data import (  # noqa: F401 - the data helpers, shared with the JAX path, are part of this API too
    IMAGE_SUFFIXES,
    TEST_FRACTION,
    check_resumed_network,
    check_split,
    classified_network,
    describe,
    digits_arrays,
    epoch_lr,
    epoch_seed,
    image_files,
    image_folder_arrays,
    load_data,
    require,
    run_settings,
    split_indices,
    write_metrics,
)
from cnndsl.weights import load_weights, save_weights


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


def train(net: str | Network, data: str | None = None, epochs: int | None = None, backend: str = "torch", *,
          seed: int | None = None, batch_size: int | None = None, lr: float | None = None, out=None,
          on_epoch: Callable[[int, int, float], None] | None = None, out_dir: str | Path | None = None,
          resume: str | Path | None = None, nproc: int = 1, device: str = "auto", **params: Any) -> float:
    """Train ``net`` on ``data`` and return the test accuracy (also printed, last, as ``test accuracy: 0.97``).

    ``data`` is ``"digits"`` (the default) or an ImageFolder-style directory; ``epochs``, ``seed``,
    ``batch_size`` and ``lr`` default to :data:`cnndsl.train.data.EPOCHS` (8), ``SEED`` (0),
    ``BATCH_SIZE`` (32) and ``LR`` (0.05) on every backend. ``on_epoch(epoch, epochs, test_accuracy)``
    is called after every epoch (a search uses it to prune); an exception it raises stops the training
    and propagates.

    ``out_dir`` receives, after every epoch, ``weights.safetensors`` (the state_dict, whichever
    backend), ``optimizer.pt`` (the optimizer's state and the epoch it is at; ``optimizer.npz`` from
    the JAX backend), ``network.cnn`` (the concrete source, :func:`cnndsl.report.expand.expand`) and
    ``metrics.json`` (the settings and the per-epoch loss and accuracies). ``resume`` is such a folder: training continues from its last epoch with its
    settings up to ``epochs`` in all (by default the run's own total), writing to ``out_dir`` or else to
    ``resume`` itself. Every epoch draws its shuffle and dropout from ``(seed, epoch)`` alone, so a
    resumed run ends where the uninterrupted one would.

    ``nproc`` > 1 trains data-parallel in that many processes (torch.distributed, gloo, started by
    torchrun's elastic launcher): each global batch of ``batch_size`` is split among them and the
    gradients averaged, which gives the single-process gradient of the whole batch. Batch norms
    then see each process's part of the batch only, as with ``DistributedDataParallel``.

    ``device`` is ``"cpu"``, ``"cuda"`` or ``"auto"`` (CUDA where available, else the CPU): the model and each
    batch go there, and with ``nproc`` > 1 each process takes GPU ``LOCAL_RANK`` and the processes talk over
    nccl (gloo on the CPU). ``"cuda"`` without a CUDA device is an error. The JAX backend runs on JAX's default
    device and takes ``"auto"`` only.
    """
    if backend == "jax":  # before any torch import: the JAX path does not need torch
        from cnndsl.train.jax_loop import train_jax

        if nproc != 1:
            raise CnnDslError("data-parallel training (nproc) needs the torch backend", None,
                              "train with --backend torch")
        if device != "auto":
            raise CnnDslError(f"--device {device} chooses the torch backend's device", None,
                              "JAX trains on its default device (JAX_PLATFORMS=cpu or cuda chooses it)")
        return train_jax(net, data, epochs, seed=seed, batch_size=batch_size, lr=lr, out=out, on_epoch=on_epoch,
                         out_dir=out_dir, resume=resume, **params)
    if backend != "torch":
        raise CnnDslError(f"training runs on the torch or jax backend, not {backend!r}", None)
    require("torch", "training with the torch backend", "PyTorch", "pip install torch, or train with --backend jax")
    if nproc < 1:
        raise CnnDslError(f"nproc must be at least 1, not {nproc}", None)
    if nproc > 1 and (on_epoch is not None or out is not None):
        raise CnnDslError("training with nproc > 1 prints to standard output and takes no on_epoch", None)
    device = pick_device(device, nproc)
    run = run_settings("torch", data=data, epochs=epochs, seed=seed, batch_size=batch_size, lr=lr, params=params,
                       out_dir=out_dir, resume=resume, nproc=nproc)
    run["device"] = device
    x, y, names = load_data(net, run["data"], run["params"])
    network = classified_network(net, len(names), run["params"])
    check_resumed_network(run, network, net)
    if nproc == 1:
        # the data's warnings go to stderr, or, where the caller takes the output (a search), with it
        return _fit(network, x, y, names, run, out=out or sys.stdout, errors=out or sys.stderr, on_epoch=on_epoch)
    return _launch(network, x, y, names, run)


def pick_device(device: str, nproc: int = 1) -> str:
    """``"cpu"`` or ``"cuda"``: the device that ``device`` (``"auto"``, ``"cpu"`` or ``"cuda"``) names here."""
    import torch

    if device not in ("auto", "cpu", "cuda"):
        raise CnnDslError(f"the device is auto, cpu or cuda, not {device!r}", None)
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise CnnDslError("--device cuda: this PyTorch sees no CUDA device", None,
                          "train on the CPU with --device cpu (or auto), or install a CUDA build of PyTorch")
    if device == "cuda" and torch.cuda.device_count() < nproc:
        raise CnnDslError(f"--nproc {nproc} on CUDA needs a GPU a process, and there are "
                          f"{torch.cuda.device_count()}", None, "lower --nproc, or train on the CPU with --device cpu")
    return device


def _cpu(state):
    """A state (tensors in dicts and lists) with its tensors on the CPU, so that a saved run loads anywhere."""
    if isinstance(state, dict):
        return {k: _cpu(v) for k, v in state.items()}
    if isinstance(state, (list, tuple)):
        return type(state)(_cpu(v) for v in state)
    return state.cpu() if hasattr(state, "cpu") else state


def _fit(network: Network, x, y, names: list[str], run: dict, *, out, errors, on_epoch=None, rank: int = 0,
         world: int = 1) -> float:
    """Train ``network`` as ``run`` says, as process ``rank`` of ``world`` (1: no torch.distributed), on
    ``run["device"]`` (its GPU ``LOCAL_RANK`` on CUDA with several processes)."""
    import torch
    import torch.nn.functional as F

    on_cuda = run.get("device") == "cuda"
    device = torch.device("cpu")
    if on_cuda:  # one GPU a process: the launcher's LOCAL_RANK (the one :func:`_worker` made current)
        device = torch.device("cuda", int(os.environ["LOCAL_RANK"]) if world > 1 else None)

    lead = rank == 0
    say = (lambda text: print(text, file=out, flush=True)) if lead else (lambda text: None)
    torch.manual_seed(run["seed"])
    x = fit_input(torch.from_numpy(x), network.input_shape)
    y = torch.from_numpy(y)
    train_idx, test_idx = _split(y, run["seed"])
    line, warnings = describe(run["data"], y.numpy(), names, len(train_idx), len(test_idx))
    say(line)
    if lead:
        for w in warnings:
            print(w, file=errors)
    mean, std = x[train_idx].mean(), x[train_idx].std()
    x = (x - mean) / std
    model = build_torch(network).to(device)  # (before the optimizer takes its parameters)
    threads = 1 if network.params < 1_000_000 else max(1, (os.cpu_count() or 1) // world)
    if threads == 1 or world > 1:  # a small net on CPU is bound by per-op overhead: threads only contend
        torch.set_num_threads(threads)
    epochs, history = run["epochs"], list(run["history"])
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=run["lr"], momentum=0.9,
                          weight_decay=5e-4)
    if run["resume"] is not None:
        _restore(Path(run["resume"]), network, model, opt, len(history))
    folder = None if run["out_dir"] is None else Path(run["out_dir"])
    if folder is not None and lead:
        write_atomic(folder / "network.cnn", expand(network))  # (before the weights: they belong to it)
    step = model if world == 1 else torch.nn.parallel.DistributedDataParallel(
        model, device_ids=[device.index] if on_cuda else None)
    for epoch in range(len(history) + 1, epochs + 1):
        model.train()
        torch.manual_seed(epoch_seed(run["seed"], epoch))
        for group in opt.param_groups:
            group["lr"] = epoch_lr(run["lr"], epoch, epochs)
        order = train_idx[torch.randperm(len(train_idx), generator=torch.Generator().manual_seed(
            epoch_seed(run["seed"], epoch)))]
        batches = order.split(run["batch_size"])
        sums = torch.zeros(3, dtype=torch.float64)  # loss, right answers, images: over the epoch, in this process
        for batch in (progress(batches, f"epoch {epoch}/{epochs}", unit="batch") if lead else batches):
            idx, weight = share(batch, rank, world)
            xb, yb = x[idx].to(device), y[idx].to(device)
            outputs = step(xb)
            main, aux = (outputs[0], outputs[1:]) if isinstance(outputs, tuple) else (outputs, ())
            loss = F.cross_entropy(main, yb, reduction="sum")
            loss = loss + sum(0.3 * F.cross_entropy(a, yb, reduction="sum") for a in aux)
            opt.zero_grad()
            (loss * weight).backward()
            opt.step()
            if weight:
                sums += torch.tensor([loss.item(), (main.argmax(1) == yb).sum().item(), len(idx)],
                                     dtype=torch.float64)
        if world > 1:
            import torch.distributed as dist

            sums = sums.to(device)  # nccl reduces CUDA tensors only
            dist.all_reduce(sums)
            sums = sums.cpu()
        total, correct, seen = sums.tolist()
        acc = evaluate(model, x[test_idx], y[test_idx]) if lead else 0.0
        history.append({"epoch": epoch, "lr": epoch_lr(run["lr"], epoch, epochs), "loss": total / seen,
                        "train_accuracy": correct / seen, "test_accuracy": acc})
        say(f"epoch {epoch}/{epochs}: loss {total / seen:.4f}, train accuracy {correct / seen:.3f}, "
            f"test accuracy {acc:.3f}")
        if folder is not None and lead:
            _save(folder, network, model, opt, {**run, "history": history}, names)
        if on_epoch is not None:
            on_epoch(epoch, epochs, acc)
    acc = evaluate(model, x[test_idx], y[test_idx]) if lead else 0.0
    say(f"test accuracy: {acc:.2f}")
    return acc


def share(batch, rank: int, world: int):
    """Process ``rank``'s part of a global ``batch`` (an index tensor) and the weight of its summed loss.

    The parts are ``batch.tensor_split(world)``, and each process's loss is its images' summed loss
    times ``world / len(batch)``: the gradients, averaged over the processes (as
    ``DistributedDataParallel`` does), are then those of the whole batch's mean loss, however
    unevenly the batch divides. A process left without an image (a last batch smaller than
    ``world``) still runs a step, as the collective needs, on one image with weight 0.
    """
    idx = batch.tensor_split(world)[rank]
    if not len(idx):
        return batch[:1], 0.0
    return idx, world / len(batch)


def _save(folder: Path, network: Network, model, opt, run: dict, names: list[str]) -> None:
    """Write the run's weights, optimizer state and metrics into ``folder`` (each file replaced whole)."""
    import io

    import torch

    require("safetensors", "saving the trained weights", "safetensors")
    save_weights(folder / "weights.safetensors", network, _cpu(model.state_dict()),
                 extra_metadata={"cnndsl.epoch": str(len(run["history"]))})
    buffer = io.BytesIO()
    torch.save({"epoch": len(run["history"]), "optimizer": _cpu(opt.state_dict())}, buffer)
    write_atomic(folder / "optimizer.pt", buffer.getvalue())
    write_metrics(folder, network, "torch", names, run)


def _restore(folder: Path, network: Network, model, opt, epoch: int) -> None:
    """Load the weights and the optimizer state of the run in ``folder``, which must be at ``epoch``."""
    import torch

    require("safetensors", "loading the saved weights", "safetensors")
    model.load_state_dict(load_weights(folder / "weights.safetensors", network))  # checked: a clean error
    try:
        state = torch.load(folder / "optimizer.pt", weights_only=True)
        opt.load_state_dict(state["optimizer"])  # (moves the state to its parameters' device)
    except Exception as e:  # a truncated or foreign file: torch raises many kinds
        raise CnnDslError(f"cannot resume from '{folder}': {e}", None, "resume a folder that `cnndsl train` wrote"
                          ) from e
    if state.get("epoch") != epoch:
        raise CnnDslError(f"'{folder}' is inconsistent: optimizer.pt is at epoch {state.get('epoch')}, metrics.json "
                          f"at {epoch}", None, "resume a folder that a finished epoch of `cnndsl train` wrote")


def _launch(network: Network, x, y, names: list[str], run: dict) -> float:
    """Run :func:`_fit` in ``run["nproc"]`` processes with torchrun's elastic launcher; rank 0's accuracy."""
    import uuid

    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    # what `torchrun --standalone --nproc-per-node N` sets up: one node, a c10d rendezvous on a free local port
    config = LaunchConfig(min_nodes=1, max_nodes=1, nproc_per_node=run["nproc"], run_id=str(uuid.uuid4()),
                          rdzv_backend="c10d", rdzv_endpoint="localhost:0", max_restarts=0)
    # the workers are spawned, not forked: they load the plugins this process has (cnndsl.ops) before they build
    plugins = (plugin_sources(), sorted({n.op for n in network.graph.nodes() if n.opdef.plugin}))
    try:
        results = elastic_launch(config, _worker)(network, x, y, names, run, plugins)
    except ChildFailedError as e:
        raise CnnDslError(f"a training process failed: {e}", None) from None
    failed = next((r for r in results.values() if isinstance(r, tuple)), None)
    if failed is not None:
        raise CnnDslError(*failed)
    return results[0]


def _worker(network: Network, x, y, names: list[str], run: dict, plugins: tuple = ((), ())):
    """One process of a data-parallel run: load the parent's plugins (``plugins``: its
    :func:`cnndsl.ops.plugin_sources` and the plugin ops the network uses), join the process group (nccl on CUDA,
    each process on its GPU ``LOCAL_RANK``; gloo on the CPU), train, and return the accuracy.

    A :class:`CnnDslError` comes back as its ``(message, None, hint)`` for the launching process to raise.
    """
    import torch
    import torch.distributed as dist

    try:
        load_plugins(*plugins)
    except CnnDslError as e:
        return (e.message, None, e.hint)
    if run["device"] == "cuda":
        torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))
    dist.init_process_group("nccl" if run["device"] == "cuda" else "gloo")
    try:
        return _fit(network, x, y, names, run, out=sys.stdout, errors=sys.stderr, rank=dist.get_rank(),
                    world=dist.get_world_size())
    except CnnDslError as e:
        return (e.message, None, e.hint)
    finally:
        dist.destroy_process_group()


def evaluate(model, x, y, batch_size: int = 256) -> float:
    """Accuracy of ``model`` (in eval mode) on ``x``, ``y``; the batches go to the model's device."""
    import torch

    model.eval()
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    correct = 0
    with torch.no_grad():
        for i in range(0, len(x), batch_size):
            correct += (model(x[i:i + batch_size].to(device)).argmax(1).cpu() == y[i:i + batch_size]).sum().item()
    return correct / len(x)


def _split(y, seed: int):
    """A fixed, stratified 80/20 train/test split of a torch label tensor, as index tensors."""
    import torch

    tr, te = split_indices(y.numpy(), seed)
    return torch.from_numpy(tr), torch.from_numpy(te)
