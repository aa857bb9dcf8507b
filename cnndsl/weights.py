"""Weights files: one safetensors file per network, the same for every backend.

A file holds the network's PyTorch ``state_dict``, keyed by its names (the IR's dotted layer names plus
``.weight``, ``.running_mean``, ...: :func:`weight_keys`); the JAX and Flax backends read and write it
through the converters of :mod:`cnndsl.backends.jax_weights` and :mod:`cnndsl.backends.flax`, so one file
serves all three. Its metadata (safetensors' string map) records which network it belongs to:

==========================  ==============================================================================
``format``                  ``pt`` (what the safetensors tools expect of a torch-keyed file)
``cnndsl.network``          the network's name
``cnndsl.arch_hash``        :func:`cnndsl.search.arch_hash.arch_hash` of its graph (names aside, its structure)
``cnndsl.input``            its input shape, ``3x224x224``
``cnndsl.version``          the cnndsl that wrote it
==========================  ==============================================================================

Loading checks the file against the network before a single tensor reaches a model: a file of another
architecture is refused by its hash, and every key and shape is compared with what the network holds
(:func:`weight_shapes`); what is missing, unexpected or mis-shaped is listed in one :class:`CnnDslError`.
A safetensors file without cnndsl's metadata (one written by other tools) is checked by keys and shapes only.

Writing is deterministic (the same tensors and metadata give the same bytes under any ``PYTHONHASHSEED``:
the header's metadata is sorted) and atomic (:func:`cnndsl.files.write_atomic`).

:func:`convert_checkpoint` turns a torchvision or timm checkpoint (a ``state_dict`` saved with ``torch.save``,
bare or wrapped in ``{"state_dict": ...}`` or ``{"model": ...}``, or a ``.safetensors`` file) into such a file.
"""

from __future__ import annotations

import json
import os
import re
import struct
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from cnndsl.backends.jax_weights import present, torch_key
from cnndsl.errors import CnnDslError
from cnndsl.files import write_atomic
from cnndsl.ir.network import Network
from cnndsl.search.arch_hash import arch_hash, whole_graph_hash
from cnndsl.version import __version__

NETWORK, ARCH_HASH, INPUT, VERSION = "cnndsl.network", "cnndsl.arch_hash", "cnndsl.input", "cnndsl.version"
SHOWN = 5  # keys named per kind of mismatch in an error; the rest are counted
_WRAPPERS = ("state_dict", "model_state_dict", "model", "state_dict_ema", "model_ema")  # checkpoint containers
_PREFIXES = ("module.", "_orig_mod.", "model.")  # DDP's, torch.compile's and a wrapper module's prefix on every key


def _network(net: Network | str) -> Network:
    if isinstance(net, Network):
        return net
    from cnndsl.passes.pipeline import load

    return load(str(net))


# ----------------------------------------------------------------------------- the network's weight facts


def weight_keys(network: Network) -> list[str]:
    """Every ``state_dict`` key of ``network``'s PyTorch model, in graph order, from the ops' declared tensors
    (:class:`cnndsl.ir.ops.Weight`); no framework involved."""
    return [torch_key(node, w) for node in network.graph.nodes() for w in present(node)]


def weight_shapes(network: Network) -> dict[str, tuple[int, ...] | None]:
    """Every ``state_dict`` key of ``network`` and its tensor's shape.

    The shapes are those of the generated PyTorch model, built on the ``meta`` device: no memory, and no
    initialisation (its ``reset_parameters`` is skipped: PyTorch draws ``normal_`` on the meta device through
    its compiler stack, seconds to import, for numbers that a meta tensor does not hold anyway). Without
    torch installed the shapes are unknown (None for every key); the JAX converters then check the
    layouts as they convert.
    """
    try:
        import torch
    except ImportError:
        return dict.fromkeys(weight_keys(network))
    from cnndsl.backends.torch import generate

    source, class_name = generate(network)
    namespace: dict[str, Any] = {"__name__": f"cnndsl_shapes_{network.name}"}
    exec(compile(source, f"<cnndsl shapes: {network.name}>", "exec"), namespace)  # noqa: S102 - our own source
    cls = namespace[class_name]
    uninitialised = type(class_name, (cls,), {"reset_parameters": lambda self: None})
    with torch.device("meta"):
        model = uninitialised()
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def _listing(keys: list[str], what: str) -> str:
    shown = ", ".join(keys[:SHOWN]) + (f" and {len(keys) - SHOWN} more" if len(keys) > SHOWN else "")
    return f"{len(keys)} key{'s' if len(keys) != 1 else ''} {what} ({shown})"


def _dims(shape: tuple[int, ...]) -> str:
    return "x".join(map(str, shape)) or "a scalar"


def check_state_dict(network: Network, shapes: Mapping[str, tuple[int, ...]], source: str) -> None:
    """Raise a :class:`CnnDslError` unless ``shapes`` (a key -> shape map, as read from ``source``) has exactly
    ``network``'s keys, each with its shape; the message lists the missing, unexpected and mis-shaped keys."""
    want = weight_shapes(network)
    missing = [k for k in want if k not in shapes]
    unexpected = sorted(k for k in shapes if k not in want)
    wrong = [f"{k} is {_dims(tuple(shapes[k]))} not {_dims(want[k])}"
             for k in want if k in shapes and want[k] is not None and tuple(shapes[k]) != want[k]]
    if not (missing or unexpected or wrong):
        return
    parts = [_listing(missing, "missing")] if missing else []
    parts += [_listing(unexpected, "unexpected")] if unexpected else []
    parts += [_listing(wrong, "mis-shaped")] if wrong else []
    hint = ("a checkpoint of another model, or of this one with other parameters (-p classes=N, --input)"
            if missing or wrong else "keys the network does not have: a checkpoint of a larger model?")
    raise CnnDslError(f"{source} does not fit '{network.name}': " + "; ".join(parts), None, hint)


# ----------------------------------------------------------------------------- writing


def _header_sorted(data: bytes) -> bytes:
    """A safetensors file's bytes with its header's metadata in key order (safetensors writes it in hash order,
    which changes from process to process); padded with spaces to 8 bytes, as the format aligns it."""
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + n])
    if "__metadata__" in header:
        header["__metadata__"] = dict(sorted(header["__metadata__"].items()))
    text = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode()
    text += b" " * (-len(text) % 8)
    return struct.pack("<Q", len(text)) + text + data[8 + n:]


def _is_torch(value: Any) -> bool:
    return type(value).__module__.startswith("torch")


def metadata(network: Network) -> dict[str, str]:
    """The metadata that ties a weights file to ``network``."""
    return {"format": "pt", NETWORK: network.name, ARCH_HASH: arch_hash(network.plan),
            INPUT: "x".join(map(str, network.input_shape)), VERSION: __version__}


def _serialise(tensors: Mapping[str, Any], meta: dict[str, str]) -> bytes:
    if tensors and all(_is_torch(v) for v in tensors.values()):
        from safetensors.torch import save

        # contiguous copies: safetensors refuses tensors that share storage (tied weights, views)
        data = save({k: v.detach().cpu().contiguous().clone() for k, v in tensors.items()}, metadata=meta)
    else:
        from safetensors.numpy import save

        data = save({k: np.asarray(_numpy(v), order="C") for k, v in tensors.items()}, metadata=meta)
    return _header_sorted(data)


def _numpy(value: Any) -> np.ndarray:
    if _is_torch(value):
        return value.detach().cpu().numpy()
    return np.asarray(value)


def save_weights(path: str | os.PathLike, network: Network | str, state_dict: Mapping[str, Any], *,
                 extra_metadata: Mapping[str, str] | None = None) -> Path:
    """Write ``state_dict`` (torch tensors, or numpy/JAX arrays) of ``network`` to the safetensors file ``path``.

    The keys and shapes are checked first (the file is always loadable into the network); ``extra_metadata``
    adds string entries to the file's metadata (beside those of :func:`metadata`, which it cannot replace).
    Returns the path; the file is replaced only by a complete one.
    """
    network = _network(network)
    check_state_dict(network, {k: tuple(np.shape(v)) for k, v in state_dict.items()}, "the state_dict")
    return _write(path, network, state_dict, extra_metadata)


def _write(path: str | os.PathLike, network: Network, state_dict: Mapping[str, Any],
           extra_metadata: Mapping[str, str] | None) -> Path:
    """:func:`save_weights` of a ``state_dict`` already checked."""
    meta = metadata(network)
    for key, value in (extra_metadata or {}).items():
        if not isinstance(key, str) or not isinstance(value, str):
            raise CnnDslError(f"weights metadata must map strings to strings, got {key!r}: {type(value).__name__}",
                              None, "json.dumps the value")
        if key in meta:
            raise CnnDslError(f"weights metadata {key!r} is written by cnndsl itself", None, "choose another key")
        meta[key] = value
    ordered = {k: state_dict[k] for k in weight_keys(network)}
    return write_atomic(path, _serialise(ordered, meta))


# ----------------------------------------------------------------------------- reading


def _open(path: str | os.PathLike, framework: str):
    from safetensors import SafetensorError, safe_open

    path = Path(path)
    if not path.is_file():
        raise CnnDslError(f"no weights file {path}", None, "give the path of a .safetensors file")
    try:
        return safe_open(str(path), framework=framework)
    except (SafetensorError, OSError) as e:  # a header that is not safetensors', or an unreadable file
        raise CnnDslError(f"{path} is not a safetensors file ({str(e).splitlines()[0] if str(e) else e})", None,
                          "convert a torch.save checkpoint with `cnndsl weights convert CKPT NET -o FILE`") from None


def read_metadata(path: str | os.PathLike) -> dict[str, str]:
    """The metadata of a safetensors file (empty where it has none)."""
    with _open(path, "np") as f:
        return dict(f.metadata() or {})


def check_metadata(meta: Mapping[str, str], network: Network, source: str) -> None:
    """Refuse weights that cnndsl saved for a network of another architecture than ``network``."""
    saved, mine = meta.get(ARCH_HASH), arch_hash(network.plan)
    if saved is None or saved == mine or saved == whole_graph_hash(network.graph):  # or as 0.1 hashed it
        return
    name = meta.get(NETWORK, "?")
    whose = (f"another '{name}' (other parameters?)" if name == network.name else f"'{network.name}'")
    raise CnnDslError(
        f"{source} holds the weights of '{name}' (input {meta.get(INPUT, '?')}, architecture {saved[:12]}), not of "
        f"{whose} (input {'x'.join(map(str, network.input_shape))}, architecture {mine[:12]})", None,
        "load it into the network it was saved from (the same parameters); check_arch=False checks only the keys "
        "and shapes")


def load_weights(path: str | os.PathLike, network: Network | str, *, numpy: bool = False,
                 check_arch: bool = True, partial: bool = False) -> dict[str, Any]:
    """The ``state_dict`` of ``network`` in the weights file ``path``: torch tensors, or numpy arrays with
    ``numpy=True`` (no torch needed). The file is checked first: its architecture hash (unless
    ``check_arch=False``), then every key and shape (:func:`check_state_dict`). ``partial=True`` checks
    neither and gives every tensor of the file (to load those that fit a related network: a new head)."""
    network = _network(network)
    with _open(path, "np" if numpy else "pt") as f:
        if partial:
            names = list(f.keys())  # a safetensors file, not a dict: it has no __iter__
            return {k: f.get_tensor(k) for k in names}
        if check_arch:
            check_metadata(f.metadata() or {}, network, str(path))
        keys = list(f.keys())
        check_state_dict(network, {k: tuple(f.get_slice(k).get_shape()) for k in keys}, str(path))
        if numpy and any(f.get_slice(k).get_dtype() == "BF16" for k in keys):
            return _bfloat16_as_float32(path, f, weight_keys(network))
        return {k: f.get_tensor(k) for k in weight_keys(network)}


def _bfloat16_as_float32(path: str | os.PathLike, f, keys: list[str]) -> dict[str, np.ndarray]:
    """The tensors ``keys`` of an open file as numpy arrays, its bfloat16 ones (which numpy has no type for)
    widened to float32 exactly: a bfloat16 is the top half of the float32 of the same value."""
    with open(path, "rb") as raw:
        (n,) = struct.unpack("<Q", raw.read(8))
        header = json.loads(raw.read(n))
        out = {}
        for k in keys:
            if f.get_slice(k).get_dtype() != "BF16":
                out[k] = f.get_tensor(k)
                continue
            start, stop = header[k]["data_offsets"]
            raw.seek(8 + n + start)
            half = np.frombuffer(raw.read(stop - start), dtype="<u2").astype(np.uint32)
            out[k] = (half << 16).view(np.float32).reshape(header[k]["shape"])
    return out


def load_jax(path: str | os.PathLike, network: Network | str, **kwargs: Any) -> dict:
    """The weights file ``path`` as the JAX backend's ``variables`` of ``network`` (``params``, ``batch_stats``)."""
    from cnndsl.backends.jax_weights import torch_to_jax

    network = _network(network)
    return torch_to_jax(network, load_weights(path, network, numpy=True, **kwargs))


def save_jax(path: str | os.PathLike, network: Network | str, variables: Mapping[str, Any], **kwargs: Any) -> Path:
    """Write JAX ``variables`` of ``network`` as a weights file (keyed as its torch ``state_dict``)."""
    from cnndsl.backends.jax_weights import jax_to_torch

    network = _network(network)
    return save_weights(path, network, jax_to_torch(network, variables), **kwargs)


def load_flax(path: str | os.PathLike, network: Network | str, model=None, *, seed: int = 0, **kwargs: Any):
    """The Flax NNX model of ``network`` with the weights of ``path`` (``model`` given: loaded into it in place)."""
    from cnndsl.backends.flax import torch_to_flax

    network = _network(network)
    return torch_to_flax(network, load_weights(path, network, numpy=True, **kwargs), model, seed)


def save_flax(path: str | os.PathLike, network: Network | str, model, **kwargs: Any) -> Path:
    """Write a Flax NNX model's weights as a weights file (keyed as the torch ``state_dict``)."""
    from cnndsl.backends.flax import flax_to_torch

    network = _network(network)
    return save_weights(path, network, flax_to_torch(network, model), **kwargs)


# ----------------------------------------------------------------------------- converting checkpoints


def _is_safetensors(path: Path) -> bool:
    """Whether ``path`` starts as a safetensors file does: a little-endian header length, then a JSON object."""
    with open(path, "rb") as f:
        head = f.read(9)
    return len(head) == 9 and head[8:9] == b"{" and 8 + struct.unpack("<Q", head[:8])[0] <= path.stat().st_size


def _tensors(obj: Any) -> dict[str, Any] | None:
    """``obj`` as a flat key -> tensor map, unwrapping the containers trainers save (``{"state_dict": ...}``)."""
    if not isinstance(obj, Mapping):
        return None
    if obj and all(isinstance(k, str) and hasattr(v, "shape") for k, v in obj.items()):
        return dict(obj)
    for key in _WRAPPERS:
        found = _tensors(obj.get(key))
        if found is not None:
            return found
    return None


def read_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """The tensors of a checkpoint: a safetensors file, or a ``state_dict`` saved with ``torch.save`` (loaded with
    ``weights_only=True``: no code runs), possibly wrapped as trainers save it (``{"state_dict": ...}``)."""
    path = Path(path)
    if not path.is_file():
        raise CnnDslError(f"no checkpoint {path}", None, "give a .pth / .pt / .bin / .safetensors file")
    if _is_safetensors(path):
        with _open(path, "pt") as f:
            tensors: dict[str, Any] | None = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (not iterable)
    else:
        try:
            import torch
        except ImportError:
            raise CnnDslError(f"reading the torch checkpoint {path} needs torch", None,
                              "pip install 'cnndsl[torch]'") from None
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:  # a pickle error, a zip error, or a refused global: not a loadable state_dict
            text = str(e).strip()
            refused = re.search(r"Unsupported global: GLOBAL (\S+)", text)
            if refused:  # a real checkpoint that also pickles objects (a trainer's settings): not run
                raise CnnDslError(f"{path} holds Python objects besides its tensors ({refused.group(1)}), which "
                                  "would run code to load", None,
                                  "if you trust the file, save its state_dict alone: torch.save(torch.load(CKPT, "
                                  "weights_only=False)['state_dict'], 'clean.pth')") from e
            first = text.splitlines()[0] if text else type(e).__name__
            raise CnnDslError(f"{path} is neither a safetensors file nor a torch.save checkpoint ({first[:200]})",
                              None, "save the model's state_dict() with torch.save, or use safetensors") from e
        tensors = _tensors(obj)
    if not tensors:
        raise CnnDslError(f"{path} holds no state_dict (a map of names to tensors)", None,
                          "torch.save(model.state_dict(), path)")
    return tensors


def _unwrapped(tensors: dict[str, Any], keys: list[str]) -> dict[str, Any]:
    """``tensors`` without a wrapper's prefix on every key (``module.`` from DDP, ``_orig_mod.`` from
    ``torch.compile``, ``model.``), where the network's own ``keys`` do not carry it."""
    for prefix in _PREFIXES:
        if all(k.startswith(prefix) for k in tensors) and not any(k.startswith(prefix) for k in keys):
            tensors = {k.removeprefix(prefix): v for k, v in tensors.items()}
    return tensors


def convert_checkpoint(checkpoint: str | os.PathLike, network: Network | str, out: str | os.PathLike, *,
                       extra_metadata: Mapping[str, str] | None = None) -> tuple[Path, list[str]]:
    """Write the weights file ``out`` of ``network`` from a torchvision / timm checkpoint; return the path and
    the notes worth telling (counters filled in).

    Every key and shape is checked against the network first. Batch norms' ``num_batches_tracked`` counters,
    which older torchvision checkpoints lack (PyTorch itself fills them in on loading), are set to 0.
    """
    network = _network(network)
    tensors = _unwrapped(read_checkpoint(checkpoint), weight_keys(network))
    notes = []
    filled = [k for k in weight_keys(network) if k.endswith(".num_batches_tracked") and k not in tensors
              and k.removesuffix("num_batches_tracked") + "running_mean" in tensors]
    if filled:
        import torch

        tensors.update({k: torch.tensor(0, dtype=torch.long) for k in filled})
        notes.append(f"set {len(filled)} missing num_batches_tracked counter{'s' if len(filled) != 1 else ''} to 0")
    check_state_dict(network, {k: tuple(v.shape) for k, v in tensors.items()}, str(checkpoint))
    meta = dict(extra_metadata or {})
    meta.setdefault("cnndsl.converted_from", Path(checkpoint).name)
    return _write(out, network, tensors, meta), notes


def describe(path: str | os.PathLike) -> str:
    """A few lines about a weights file: its metadata, and how many tensors and numbers it holds."""
    with _open(path, "np") as f:
        meta = dict(f.metadata() or {})
        shapes = [f.get_slice(k).get_shape() for k in f.keys()]  # noqa: SIM118 (not iterable)
    lines = [f"{path}: {len(shapes)} tensors, {sum(int(np.prod(s)) for s in shapes):,} numbers"]
    lines += [f"  {k}: {v}" for k, v in sorted(meta.items())]
    return "\n".join(lines)


__all__ = ["check_state_dict", "convert_checkpoint", "describe", "load_flax", "load_jax", "load_weights",
           "metadata", "read_checkpoint", "read_metadata", "save_flax", "save_jax", "save_weights", "weight_keys",
           "weight_shapes"]
