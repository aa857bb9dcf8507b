"""A one-shot NAS supernet in PyTorch: every option of every choice point of a space, its weights shared.

:class:`Supernet` holds a pool of tensors keyed by :mod:`cnndsl.search.supernet` (a layer's stable place, its op
and the arguments that give the tensor its meaning). A member runs as its own generated model, a stateless
template on the meta device made once per member source, through ``torch.func.functional_call`` with slices of
the pool in place of its parameters and buffers: the path is exactly the member's network, gradients reach the
pool, and batch-norm statistics updated in training land in the pool. ``extract`` copies the slices out as the
member's ``state_dict``, which loads strictly into ``cnndsl.build_torch(member)``.
"""

from __future__ import annotations

import hashlib
import math
import random
import re
from collections import OrderedDict
from collections.abc import Iterable
from contextlib import contextmanager

import torch
from cnndsl.backends.torch import generate, source_module
from torch import nn

from cnndsl.errors import CnnArgumentError

#: Members a supernet visits to size its pool when the space is at most this large: all of them. A larger space
#: is sized from its first member, every one-choice neighbour of it and a sample (see :class:`Supernet`).
ENUMERATE_UP_TO = 256
#: Member templates kept (each a model on the meta device, no memory for its tensors).
TEMPLATES = 512


def storage_name(key: str) -> str:
    """A pool key as an attribute name: its readable place, then 10 hex digits of its SHA-256 (unique, stable)."""
    readable = re.sub(r"[^0-9A-Za-z]+", "_", key.partition("|")[0]).strip("_")[:72]
    return f"{readable}_{hashlib.sha256(key.encode('utf-8')).hexdigest()[:10]}"


def _key(choices: dict) -> tuple:
    return tuple(sorted(choices.items()))


class _Path:
    """One member as the supernet runs it: its network, template, and for each state_dict entry, its pool key
    and how its slice is cut."""

    def __init__(self, variant, template: nn.Module, entries: dict[str, tuple[str, tuple[int, ...], object]]):
        self.variant = variant
        self.template = template
        self.entries = entries
        self.params = {n for n, _ in template.named_parameters()}


class Supernet(nn.Module):
    """The weight-sharing supernet of a :class:`~cnndsl.search.variants.Space` (see :func:`cnndsl.build_supernet`).

    The pool is sized at construction from the members ``members`` (choice dicts), or else every member of a
    space of at most :data:`ENUMERATE_UP_TO` members, or else the first member, its one-choice neighbours and
    ``sample`` random members. A member met later whose tensor is larger than its pool entry grows the entry
    (the old values kept in their slice), and a new key gets a new entry: build the optimizer after the members
    to train are known (:meth:`prepare`).

    ``layers(network, points)`` gives each layer of a member its place and pool key
    (:func:`cnndsl.search.supernet.member_layers`, which :func:`cnndsl.build_supernet` passes): the backend imports
    no search module, as the layers of the package have it.
    """

    def __init__(self, space, layers, members: Iterable | None = None, *, sample: int = 64, seed: int = 0):
        super().__init__()
        self.space = space
        self.layers = layers
        self.weights = nn.ParameterDict()
        self.stats = nn.Module()
        self.keys: dict[str, str] = {}  # storage name -> pool key
        self._paths: OrderedDict[tuple, _Path] = OrderedDict()
        self._templates: OrderedDict[str, nn.Module] = OrderedDict()
        self._filled: set[str] = set()
        self.seed = seed
        if members is None:
            members = self._sizing_members(sample, seed)
        self.prepare(members)

    # -- sizing
    def _sizing_members(self, sample: int, seed: int) -> list:
        count = self.space.count(at_most=ENUMERATE_UP_TO + 1)
        if count <= ENUMERATE_UP_TO:
            return [v for v in self.space.enumerate() if v.valid]
        first = self.space.member({})
        return [first, *self.space.neighbours(first.choices), *self.space.sample(sample, seed=seed)]

    def prepare(self, members: Iterable) -> None:
        r"""Give the pool room for every member in ``members`` (choice dicts or built
        :class:`~cnndsl.search.variants.Variant`\ s): first the largest shape each key
        takes over them, then each entry initialised from the fresh model of the largest member holding it."""
        paths = [p for p in (self._path(m, grow=False) for m in members) if p is not None]
        shapes: dict[str, list[int]] = {}
        known = set(self.keys.values())
        for p in paths:
            for key, shape, _ in p.entries.values():
                if key in known:
                    continue
                old = shapes.setdefault(key, list(shape))
                shapes[key] = [max(a, b) for a, b in zip(old, shape, strict=True)]
        if shapes:
            self._allocate(paths, shapes)
        for p in paths:  # a known entry that a member needs larger grows now, before any optimizer holds it
            self._grow(p)

    @contextmanager
    def _seeded(self, what: str):
        """A private random stream for new entries, seeded by the supernet's seed and ``what`` (the user's global
        stream is left as it was), so that the same members give the same pool."""
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int.from_bytes(hashlib.sha256(f"{self.seed}:{what}".encode()).digest()[:6], "big"))
            yield

    def _allocate(self, paths: list[_Path], shapes: dict[str, list[int]]) -> None:
        with self._seeded("allocate"):
            self._allocate_seeded(paths, shapes)

    def _allocate_seeded(self, paths: list[_Path], shapes: dict[str, list[int]]) -> None:
        fresh = {key: torch.empty(shape) for key, shape in sorted(shapes.items())}
        # Each entry starts as the fresh model of the largest member holding it (its own init scheme), only
        # as many models made as it takes to cover the keys; what no member's slice covers is filled alike.
        order = sorted(paths, key=lambda p: -sum(math.prod(s) for _, s, _ in p.entries.values()))
        for p in order:
            todo = [(name, e) for name, e in p.entries.items() if e[0] in fresh and e[0] not in self._filled]
            if not todo:
                continue
            state = self._fresh_state(p)
            for name, (key, shape, layer) in todo:
                if key in self._filled:  # a key a path holds twice
                    continue
                _fill_like(fresh[key], state[name])
                fresh[key][_slices(fresh[key].shape, shape, layer)] = state[name]
                self._filled.add(key)
        params = {key for p in paths for name, (key, _, _) in p.entries.items() if name in p.params}
        for key, value in fresh.items():
            self._add(key, value, is_param=key in params)

    def _fresh_state(self, path: _Path) -> dict[str, torch.Tensor]:
        cls = type(path.template)
        with torch.no_grad():
            return cls().state_dict()

    def _add(self, key: str, value: torch.Tensor, is_param: bool) -> None:
        name = storage_name(key)
        self.keys[name] = key
        device = next(iter(self.parameters()), torch.empty(0)).device
        if is_param:
            self.weights[name] = nn.Parameter(value.to(device))
        else:
            self.stats.register_buffer(name, value.to(device))

    def _tensor(self, key: str) -> torch.Tensor:
        name = storage_name(key)
        return self.weights[name] if name in self.weights else getattr(self.stats, name)

    # -- paths
    def path(self, choices: dict) -> _Path:
        """The member ``choices`` as the supernet runs it (cached), its pool entries made or grown if need be."""
        return self._path(choices, grow=True)

    def _path(self, member, grow: bool) -> _Path | None:
        """:meth:`path` of a choice dict or a built member; None for an invalid member when ``grow`` is false."""
        choices = member if isinstance(member, dict) else member.choices
        k = _key(choices)
        hit = self._paths.get(k)
        if hit is not None:
            self._paths.move_to_end(k)
            return hit
        variant = self.space.member(dict(choices)) if isinstance(member, dict) else member
        if not variant.valid:
            if not grow:
                return None
            raise CnnArgumentError(f"the member {choices} does not build: {variant.error}", None,
                                   "pass a valid member's choices, as `variants` gives them")
        source, class_name = generate(variant.network_obj)
        template = self._templates.get(source)
        if template is None:
            cls = getattr(source_module(source), class_name)
            with torch.device("meta"):
                template = cls()
            self._templates[source] = template
            while len(self._templates) > TEMPLATES:
                self._templates.popitem(last=False)
        self._templates.move_to_end(source)
        layers = self.layers(variant.network_obj, self.space.points)
        entries = {}
        for name, t in template.state_dict(keep_vars=True).items():
            owner, _, tensor = name.rpartition(".")
            layer = layers.get(owner)
            if layer is None:
                raise CnnArgumentError(f"the supernet cannot place the tensor {name}", None, "a backend name "
                                       "that is no layer's: report it")
            entries[name] = (layer.pool_key(tensor, tuple(t.shape)), tuple(t.shape), layer)
        path = _Path(variant, template, entries)
        self._paths[k] = path
        while len(self._paths) > TEMPLATES:
            self._paths.popitem(last=False)
        if grow:
            self._grow(path)
        return path

    def _grow(self, path: _Path) -> None:
        """Make room for ``path`` in the pool: new keys get entries, smaller entries grow."""
        missing = [k for k, s, _ in path.entries.values()
                   if storage_name(k) not in self.keys
                   or any(a > b for a, b in zip(s, self._tensor(k).shape, strict=True))]
        if not missing:
            return
        with self._seeded(repr(_key(path.variant.choices))):
            state = self._fresh_state(path)
        for name, (key, shape, layer) in path.entries.items():
            if key not in missing:
                continue
            sname = storage_name(key)
            if sname not in self.keys:
                self._add(key, state[name].clone(), name in path.params)
                continue
            old = self._tensor(key).detach()
            big = torch.empty([max(a, b) for a, b in zip(old.shape, shape, strict=True)], dtype=old.dtype,
                              device=old.device)
            _fill_like(big, state[name])
            big[_slices(big.shape, shape, layer)] = state[name].to(big.device)
            big[_slices(big.shape, tuple(old.shape), layer)] = old
            if sname in self.weights:
                self.weights[sname] = nn.Parameter(big)
            else:
                self.stats.register_buffer(sname, big)

    def tensors(self, choices: dict) -> dict[str, torch.Tensor]:
        """The member's parameters and buffers by its own ``state_dict`` names: views of the pool."""
        path = self.path(choices)
        return {name: self._tensor(key)[_slices(self._tensor(key).shape, shape, layer)]
                for name, (key, shape, layer) in path.entries.items()}

    def forward(self, x: torch.Tensor, choices: dict) -> torch.Tensor:
        """The member ``choices`` (a choice dict as ``variants`` gives it) on ``x``, with the supernet's weights.

        The member runs in the supernet's mode (``train()``: batch statistics, which update the pool's running
        statistics of this path).
        """
        path = self.path(choices)
        path.template.train(self.training)
        return torch.func.functional_call(path.template, self.tensors(choices), (x,))

    # -- members
    def extract(self, choices: dict):
        """``(network, state_dict)``: the member's concrete network and the weights it inherits (copies), which
        load strictly into ``cnndsl.build_torch(network, state_dict=state_dict)``."""
        path = self.path(choices)
        return path.variant.network_obj, {k: v.detach().clone() for k, v in self.tensors(choices).items()}

    def source(self, choices: dict) -> str:
        """The member's concrete ``.cnn`` text."""
        return self.path(choices).variant.source

    def sample_choices(self, rng: random.Random, tries: int = 100) -> dict:
        """A valid member drawn uniformly, choice by choice (SPOS's single-path sampling), its path made."""
        for _ in range(tries):
            member = next(iter(self.space.sample(1, seed=rng.randrange(2 ** 31))))
            if member.valid:
                self._path(member, grow=True)
                return member.choices
        raise CnnArgumentError(f"no valid member in {tries} draws", None, "check the space with `cnndsl variants`")

    @torch.no_grad()
    def recalibrate(self, choices: dict, batches: Iterable[torch.Tensor]) -> int:
        """SPOS's batch-norm recalibration of one path: its running statistics reset, then re-estimated over
        ``batches`` (inputs) in training mode as a cumulative average (momentum None); the supernet is left in
        evaluation mode. Returns the number of batches seen."""
        path = self.path(choices)
        tensors = self.tensors(choices)
        norms = [(n, m) for n, m in path.template.named_modules()
                 if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
        saved = [m.momentum for _, m in norms]
        for n, m in norms:
            prefix = f"{n}." if n else ""
            tensors[prefix + "running_mean"].zero_()
            tensors[prefix + "running_var"].fill_(1.0)
            tensors[prefix + "num_batches_tracked"].zero_()
            m.momentum = None
        seen = 0
        self.train()
        try:
            for x in batches:
                self(x, choices)
                seen += 1
        finally:
            for (_, m), momentum in zip(norms, saved, strict=True):
                m.momentum = momentum
            self.eval()
        return seen

    # -- saving
    def pool_state(self) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
        """The pool by storage name (what ``supernet.safetensors`` holds), and each entry's pool key, a buffer's
        marked with a leading ``buffer `` (the file's metadata)."""
        tensors = {**{n: p.detach() for n, p in self.weights.items()}, **dict(self.stats.named_buffers())}
        keys = {n: ("" if n in self.weights else "buffer ") + self.keys[n] for n in sorted(tensors)}
        return tensors, keys

    def load_pool(self, tensors: dict[str, torch.Tensor], keys: dict[str, str]) -> None:
        """Replace the pool by one saved with :meth:`pool_state` (of a supernet of the same space): its entries
        and shapes are the saved ones."""
        missing = sorted(set(tensors) ^ set(keys))
        if missing:
            raise CnnArgumentError(f"a saved supernet whose tensors and keys differ ({', '.join(missing[:3])})",
                                   None, "save it with Supernet.pool_state()")
        device = next(iter(self.parameters()), torch.empty(0)).device
        self.weights = nn.ParameterDict()
        self.stats = nn.Module()
        self.keys = {}
        self._filled = set()
        for name in sorted(tensors):
            is_buffer = keys[name].startswith("buffer ")
            key = keys[name].removeprefix("buffer ")
            if storage_name(key) != name:
                raise CnnArgumentError(f"the saved tensor {name} does not match its key {key!r}", None,
                                       "save it with Supernet.pool_state()")
            self._add(key, tensors[name].detach().clone().to(device), not is_buffer)
            self._filled.add(key)


def _slices(pool: torch.Size | tuple, shape: tuple[int, ...], layer) -> tuple[slice, ...]:
    """The member's slice of a pool tensor: the leading part of every axis, the centred window of a kernel's."""
    out = []
    for axis, (big, small) in enumerate(zip(pool, shape, strict=True)):
        start = (big - small) // 2 if axis in layer.centred else 0
        out.append(slice(start, start + small))
    return tuple(out)


def _fill_like(target: torch.Tensor, like: torch.Tensor) -> None:
    """Fill a new pool tensor where no member's fresh values will land: a constant where ``like`` is one (batch
    norm's ones and zeros), else PyTorch's default uniform draw for its fans."""
    with torch.no_grad():
        if like.numel() and bool((like == like.flatten()[0]).all()):
            target.fill_(like.flatten()[0].item())
        elif target.dim() >= 2:
            nn.init.kaiming_uniform_(target, a=math.sqrt(5))
        else:
            bound = float(like.abs().max()) if like.numel() else 0.0
            nn.init.uniform_(target, -bound, bound)


# ----------------------------------------------------------------------------- training and evaluation


def train_spos(supernet: Supernet, x: torch.Tensor, y: torch.Tensor, lrs: list[float], *, batch_size: int = 32,
               seed: int = 0, on_epoch=None) -> list[float]:
    """Train ``supernet`` the SPOS way (Guo et al. 2020): every batch runs one member drawn uniformly, choice by
    choice, and steps the tensors it holds (SGD with momentum 0.9, weight decay 5e-4; epoch ``e`` at learning
    rate ``lrs[e]``). Every member is drawn first, so that the pool has its final entries before the optimizer
    takes them. Returns the mean training loss of each epoch; ``on_epoch(epoch, loss)`` after each."""
    rng = random.Random(seed)
    gen = torch.Generator().manual_seed(seed)
    per_epoch = math.ceil(len(x) / batch_size)
    plan = [supernet.sample_choices(rng) for _ in range(per_epoch * len(lrs))]
    supernet.prepare(plan)
    device = next(iter(supernet.parameters())).device
    opt = torch.optim.SGD(supernet.parameters(), lr=lrs[0], momentum=0.9, weight_decay=5e-4)
    losses = []
    supernet.train()
    for epoch, lr in enumerate(lrs):
        for group in opt.param_groups:
            group["lr"] = lr
        order = torch.randperm(len(x), generator=gen)
        total = 0.0
        for step in range(per_epoch):
            idx = order[step * batch_size:(step + 1) * batch_size]
            opt.zero_grad(set_to_none=True)
            loss = nn.functional.cross_entropy(supernet(x[idx].to(device), plan[epoch * per_epoch + step]),
                                               y[idx].to(device))
            loss.backward()
            opt.step()
            total += loss.item() * len(idx)
        losses.append(total / len(x))
        if on_epoch is not None:
            on_epoch(epoch + 1, losses[-1])
    supernet.eval()
    return losses


def inherited_accuracy(supernet: Supernet, choices: dict, x: torch.Tensor, y: torch.Tensor, calibration,
                       batch_size: int = 256) -> float:
    """A member's accuracy on ``x``, ``y`` with the weights it inherits, after recalibrating its batch norms over
    the input batches ``calibration`` (SPOS's evaluation)."""
    device = next(iter(supernet.parameters())).device
    supernet.recalibrate(choices, (b.to(device) for b in calibration))
    correct = 0
    with torch.no_grad():
        for i in range(0, len(x), batch_size):
            out = supernet(x[i:i + batch_size].to(device), choices)
            correct += int((out.argmax(1).cpu() == y[i:i + batch_size]).sum())
    return correct / len(x)


# ----------------------------------------------------------------------------- readable source

_RUNNER = '''

class Supernet(nn.Module):
    """The pool of POOL, and each member of MEMBERS run on its slices of it."""

    def __init__(self):
        super().__init__()
        self.weights = nn.ParameterDict()
        self.stats = nn.Module()
        for name, (shape, kind, _key) in POOL.items():
            if kind == "parameter":
                self.weights[name] = nn.Parameter(torch.zeros(shape))
            else:
                self.stats.register_buffer(name, torch.zeros(shape))

    def load_pool(self, tensors):
        """The pool from ``supernet.safetensors`` (``safetensors.torch.load_file``), by storage name."""
        with torch.no_grad():
            for name, value in tensors.items():
                target = self.weights[name] if name in self.weights else getattr(self.stats, name)
                target.copy_(value)

    def tensors(self, member):
        """Member ``member``'s (an index of MEMBERS) parameters and buffers by its state_dict names: pool views."""
        out = {}
        for entry, (name, window) in MEMBERS[member]["entries"].items():
            pool = self.weights[name] if name in self.weights else getattr(self.stats, name)
            out[entry] = pool[tuple(slice(a, b) for a, b in window)]
        return out

    def forward(self, x, member, model):
        """Member ``member`` on ``x``: ``model`` is its own model (``cnndsl compile`` of its .cnn; any module with
        its state_dict names), run with the pool's slices in place of its own tensors."""
        model.train(self.training)
        return torch.func.functional_call(model, self.tensors(member), (x,))
'''


def supernet_source(supernet: Supernet, members: Iterable[dict], origin: str) -> str:
    """Readable PyTorch source of ``supernet`` for the members ``members`` (choice dicts): the pool table
    (``POOL``: each storage name's shape, kind and pool key), each member's choices, concrete ``.cnn`` text and
    slices (``MEMBERS``), and a small ``Supernet`` runner that needs only torch and the members' own models.
    ``origin`` names the space in the header."""
    from cnndsl.backends.base import check_source, comment_text, string_literal

    from cnndsl.version import __version__

    members = [dict(m) for m in members]
    tensors, keys = supernet.pool_state()
    lines = [
        f"# Generated by cnndsl {__version__} from {comment_text(origin)}:",
        f"# a one-shot supernet of {len(tensors)} tensors and {len(members)} of its members. Each member runs as",
        "# its own model (`cnndsl compile` of its source, below) with the pool's slices in place of its tensors;",
        "# `cnndsl supernet train` writes the pool's values (supernet.safetensors).",
        "import torch", "from torch import nn", "", "",
        "#: storage name: (shape, parameter or buffer, pool key: place:tensor|op|arguments|rank or shape)",
        "POOL = {"]
    for name in sorted(tensors):
        kind = "buffer" if keys[name].startswith("buffer ") else "parameter"
        lines.append(f"    {string_literal(name)}: ({tuple(tensors[name].shape)!r}, {string_literal(kind)},")
        lines.append(f"        {string_literal(keys[name].removeprefix('buffer '))}),")
    lines += ["}", "",
              "#: Each member: its choices, its concrete .cnn source, and for each of its state_dict entries the",
              "#: pool's storage name and the (start, stop) of each axis it takes.",
              "MEMBERS = ["]
    for choices in members:
        path = supernet.path(choices)
        pools = {k: tuple(supernet._tensor(k).shape) for k, _, _ in path.entries.values()}
        lines.append("    {")
        lines.append(f"        \"choices\": {{{', '.join(f'{string_literal(k)}: {v!r}' for k, v in choices.items())}}},")
        source = path.variant.source.splitlines(keepends=True)
        lines.append("        \"source\": (" + "\n            ".join(string_literal(t) for t in source) + "),")
        lines.append("        \"entries\": {")
        for entry, (key, shape, layer) in path.entries.items():
            window = tuple((sl.start, sl.stop) for sl in _slices(pools[key], shape, layer))
            lines.append(f"            {string_literal(entry)}: ({string_literal(storage_name(key))}, {window!r}),")
        lines += ["        },", "    },"]
    lines.append("]")
    return check_source("\n".join(lines) + "\n" + _RUNNER, "torch")


def save_pool(supernet: Supernet, metadata: dict[str, str]) -> bytes:
    """The pool as safetensors bytes, its keys in the metadata (``cnndsl.supernet.keys``) beside ``metadata``."""
    import json

    from safetensors.torch import save

    tensors, keys = supernet.pool_state()
    return save({k: v.detach().cpu().contiguous() for k, v in tensors.items()},
                {**metadata, "cnndsl.supernet.keys": json.dumps(keys, sort_keys=True)})


def load_pool(supernet: Supernet, path) -> dict[str, str]:
    """Load a pool written by :func:`save_pool` into ``supernet``; returns the file's metadata."""
    import json

    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata() or {}
        tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 - safe_open has no iteration
    if "cnndsl.supernet.keys" not in meta:
        raise CnnArgumentError(f"{path} is no supernet file (it has no cnndsl.supernet.keys)", None,
                               "write one with `cnndsl supernet train`")
    supernet.load_pool(tensors, json.loads(meta["cnndsl.supernet.keys"]))
    return meta
