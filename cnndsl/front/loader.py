"""Find and read .cnn files: paths, zoo names, ``use`` imports and the shipped block library.

A :class:`Library` is everything one file can see: its own blocks and networks
plus those of the files it ``use``s (transitively, each file read once).
``use "blocks.cnn"`` looks next to the importing file first, then in the
shipped ``networks/`` folder. ``use "myops.py"`` loads a plugin (:mod:`cnndsl.ops`) from next to the
importing file, which runs its code: only inside :func:`allow_plugins`, else it is an error at the ``use``.
"""

from __future__ import annotations

import contextvars
import difflib
import hashlib
import importlib.util
import os
import stat
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import cache, lru_cache
from importlib import resources
from pathlib import Path

from cnndsl.errors import CnnDslError, CnnLimitError, CnnNameError, Source, Span
from cnndsl.front import syntax as ast
from cnndsl.front.syntax import MAX_SOURCE_BYTES, parse

ZOO_PACKAGE = "cnndsl.networks"


def read_text(path: Path, span: Span | None = None) -> str:
    """Read a .cnn file as UTF-8, refusing anything that is not a regular file of at most ``MAX_SOURCE_BYTES``.

    The file is opened without blocking (a FIFO cannot hang it), checked with ``fstat`` on the open
    descriptor (no race between the check and the read), and never read past the limit: a device
    such as ``/dev/zero`` or ``/dev/urandom``, a FIFO or a 100 MB file is refused before anything is
    read. Binary and non-UTF-8 files are user errors at the offending byte's line and column.
    """
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOCTTY", 0))
    except FileNotFoundError:
        raise CnnNameError(f"no such file: {path}", span, "give a path to a .cnn file or a zoo name (`cnndsl list`)") \
            from None
    except IsADirectoryError:
        raise CnnNameError(f"{path} is a directory, not a .cnn file", span) from None
    except OSError as e:
        raise CnnDslError(f"cannot read {path}: {e.strerror}", span) from None
    try:
        info = os.fstat(fd)
        if stat.S_ISDIR(info.st_mode):
            raise CnnNameError(f"{path} is a directory, not a .cnn file", span)
        if not stat.S_ISREG(info.st_mode):
            raise CnnDslError(f"{path} is {_file_kind(info.st_mode)}, not a regular file", span,
                              "give the path of a .cnn file")
        if info.st_size > MAX_SOURCE_BYTES:
            raise CnnLimitError(f"{path} is larger than {MAX_SOURCE_BYTES // (1024 * 1024)} MiB "
                                f"({info.st_size:,} bytes)", span, "a network description is a few kilobytes")
        chunks, size = [], 0
        while size <= MAX_SOURCE_BYTES:  # a file that grows while it is read still stops at the limit
            chunk = os.read(fd, MAX_SOURCE_BYTES + 1 - size)
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
    except OSError as e:
        raise CnnDslError(f"cannot read {path}: {e.strerror}", span) from None
    finally:
        os.close(fd)
    data = b"".join(chunks)
    if len(data) > MAX_SOURCE_BYTES:
        raise CnnLimitError(f"{path} is larger than {MAX_SOURCE_BYTES // (1024 * 1024)} MiB", span,
                            "a network description is a few kilobytes")
    return decode_source(data, str(path), span)


def decode_source(data: bytes, name: str, span: Span | None = None) -> str:
    """``data`` as UTF-8 .cnn text. A NUL byte (a binary file) or a byte that is not UTF-8 is an error at its
    line and column; for a ``use``d file (``span`` is the ``use``) the error stays at the ``use`` and says where."""
    nul = data.find(b"\x00")
    if nul < 0:
        try:
            return data.decode("utf-8")
        except UnicodeDecodeError as e:
            bad = e.start
    else:
        bad = nul
    before = data[:bad].decode("utf-8", "replace")
    line = before.count("\n") + 1
    col = len(before) - (before.rfind("\n") + 1) + 1
    if span is None:
        rest = data[bad:].split(b"\n", 1)[0].decode("utf-8", "replace")
        span, at = Span(Source(name, before + rest), line, col, line, col + 1), "here"
    else:
        at = f"at {line}:{col}"
    if bad == nul:
        raise CnnDslError(f"{name} is a binary file, not .cnn text (a NUL byte {at})", span,
                          "pass a .cnn network description or a zoo name (see `cnndsl list`)")
    raise CnnDslError(f"{name} is not UTF-8 text (the byte 0x{data[bad]:02x} {at})", span, "save the file as UTF-8")


def _file_kind(mode: int) -> str:
    kinds = ((stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
             (stat.S_ISSOCK, "a socket"))
    return next((name for test, name in kinds if test(mode)), "a special file")


def _zoo_dir():
    return resources.files(ZOO_PACKAGE)


@dataclass
class Library:
    """The blocks and networks visible from one file."""

    blocks: dict[str, ast.Block] = field(default_factory=dict)
    networks: dict[str, ast.Network | ast.Derived] = field(default_factory=dict)
    main: ast.Module | None = None

    @classmethod
    def from_module(cls, module: ast.Module, base_dir: Path | None = None) -> Library:
        lib = cls(main=module)
        lib._add(module, base_dir, seen=set(), local=True)
        return lib

    def _add(self, module: ast.Module, base_dir: Path | None, seen: set, local: bool) -> None:
        for use in module.uses:
            if use.path.endswith(".py"):
                _use_plugin(use, base_dir)
                continue
            path, shipped = _find_use(use, base_dir)
            key = str(path)
            if key in seen:  # each file is read once, however many files use it
                continue
            seen.add(key)
            text = path.read_text(encoding="utf-8") if shipped else read_text(path, use.span)
            sub = _parse_used(text, key)
            self._add(sub, path.parent, seen, local=False)
        for b in module.blocks:
            prev = self.blocks.get(b.name)
            if prev is not None and prev.span.source.name == b.span.source.name:
                raise CnnNameError(f"block '{b.name}' is defined twice", b.span, f"first defined at {prev.span}")
            self.blocks[b.name] = b
        for n in module.networks:
            prev = self.networks.get(n.name)
            if prev is not None and prev.span.source.name == n.span.source.name:
                raise CnnNameError(f"network '{n.name}' is defined twice", n.span, f"first defined at {prev.span}")
            if local or n.name not in self.networks:
                self.networks[n.name] = n

    def network(self, name: str, span: Span | None = None):
        if name not in self.networks:
            close = difflib.get_close_matches(name, list(self.networks), 1)
            raise CnnNameError(f"unknown network '{name}'", span,
                               f"did you mean '{close[0]}'?" if close else
                               f"networks here: {', '.join(self.networks) or 'none'}")
        return self.networks[name]

    def local_networks(self) -> list[str]:
        return [n.name for n in self.main.networks] if self.main else []


@lru_cache(maxsize=64)
def _parse_used(text: str, name: str) -> ast.Module:
    """Parse a ``use``d file; the same text under the same name is parsed once (modules are immutable)."""
    return parse(text, name)


def _find_use(use: ast.Use, base_dir: Path | None) -> tuple[Path, bool]:
    """The file a ``use`` names, and whether it is a shipped one: next to the using file first, then the zoo."""
    if base_dir is not None:
        candidate = base_dir / use.path
        if candidate.exists():  # whatever it is: read_text refuses what is not a regular file, and says why
            return candidate.resolve(), False
    zoo = _zoo_dir().joinpath(use.path)
    if zoo.is_file():
        return Path(str(zoo)), True
    raise CnnNameError(f"cannot find \"{use.path}\" to use", use.span,
                       "a used file is looked up next to this file, then in the shipped zoo")


# ----------------------------------------------------------------------------- plugins: `use "myops.py"`

_PLUGINS_ALLOWED: contextvars.ContextVar[bool] = contextvars.ContextVar("cnndsl_plugins_allowed", default=False)
#: How to allow plugins, for the error that refuses one.
PLUGIN_FLAG_HINT = ("loading a plugin runs its Python code: pass --allow-plugins (or --plugins MODULE) on the command "
                    "line, allow_plugins=True in the API, if you trust it")


def plugins_allowed() -> bool:
    """Whether ``use "x.py"`` may load (run) plugin files here."""
    return _PLUGINS_ALLOWED.get()


@contextmanager
def allow_plugins(allowed: bool = True) -> Iterator[None]:
    """Let ``use "x.py"`` load plugin files inside the ``with`` block (this thread or task only)."""
    token = _PLUGINS_ALLOWED.set(allowed)
    try:
        yield
    finally:
        _PLUGINS_ALLOWED.reset(token)


def _use_plugin(use: ast.Use, base_dir: Path | None) -> None:
    """Load the plugin a ``use "x.py"`` names (next to the using file only), or refuse to before touching it."""
    if not plugins_allowed():
        raise CnnDslError(f"`use \"{use.path}\"` loads a plugin, which is not allowed here", use.span,
                          PLUGIN_FLAG_HINT)
    path = (base_dir or Path.cwd()) / use.path
    if not path.exists():
        raise CnnNameError(f"cannot find plugin \"{use.path}\" to use", use.span,
                           "a plugin file is looked up next to the file that uses it")
    import_plugin_file(path.resolve(), use.span)


def import_plugin_file(path: Path, span: Span | None = None) -> None:
    """Run the plugin file ``path`` once per process (a module named after the file's path); its errors become
    a :class:`CnnDslError` at ``span``. Only inside :func:`allow_plugins`."""
    if not plugins_allowed():
        raise CnnDslError(f"loading plugin {path.name} is not allowed here", span, PLUGIN_FLAG_HINT)
    try:
        info = os.stat(path)
    except OSError as e:
        raise CnnNameError(f"cannot read plugin {path}: {e.strerror}", span) from None
    if not stat.S_ISREG(info.st_mode) or path.suffix != ".py":
        raise CnnDslError(f"plugin {path} is not a .py file", span, "a plugin is a Python file that registers ops")
    name = "cnndsl_plugin_" + hashlib.sha256(str(path).encode("utf-8")).hexdigest()[:16]
    if name in sys.modules:
        return
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except CnnDslError as e:
        del sys.modules[name]
        raise CnnDslError(f"plugin {path.name}: {e.message}", span, e.hint) from e
    except Exception as e:  # the plugin's own code failed: say where, keep the cause
        del sys.modules[name]
        raise CnnDslError(f"plugin {path.name} failed to load: {type(e).__name__}: {e}", span) from e


@cache
def _zoo_module(filename: str) -> ast.Module:
    text = _zoo_dir().joinpath(filename).read_text(encoding="utf-8")
    return parse(text, filename)


def zoo_files() -> list[str]:
    return sorted(p.name for p in _zoo_dir().iterdir() if p.name.endswith(".cnn"))


@lru_cache(maxsize=1)
def zoo_index() -> dict[str, str]:
    """Zoo network name -> the file that defines it."""
    index = {}
    for f in zoo_files():
        for n in _zoo_module(f).networks:
            index[n.name] = f
    return index


def zoo_library(name: str) -> Library:
    return _zoo_file_library(zoo_index()[name])


@cache
def _zoo_file_library(filename: str) -> Library:
    """A zoo file's library, made once: the shipped files do not change, and the compiler keeps what it builds
    of a library (its shared block instances) for as long as the library lives."""
    path = Path(str(_zoo_dir().joinpath(filename)))
    return Library.from_module(_zoo_module(filename), path.parent)


def open_net(net: str) -> tuple[Library, str]:
    """``net`` is a zoo name, a path, or ``path.cnn:network``; return the library and the network to build."""
    if net in zoo_index() and not Path(net).exists():
        return zoo_library(net), net
    path_str, choice = net, None
    if not Path(net).exists() and ":" in net:
        path_str, _, choice = net.rpartition(":")
    path = Path(path_str)
    if not path.exists() and not path_str.endswith(".cnn"):
        close = difflib.get_close_matches(net, list(zoo_index()), 1)
        raise CnnNameError(f"'{net}' is neither a file nor a zoo network", None,
                           f"did you mean '{close[0]}'?" if close else "see `cnndsl list` for the zoo")
    text = read_text(path)
    module = parse(text, str(path))
    lib = Library.from_module(module, path.parent.resolve())
    return lib, pick_network(lib, choice, str(path))


def _only_leaf(lib: Library, local: list[str]) -> str | None:
    """The local network whose chain of bases holds every other local network, if there is one."""
    for name in local:
        chain, node = set(), lib.networks.get(name)
        while isinstance(node, ast.Derived) and node.base not in chain and node.base in lib.networks:
            chain.add(node.base)
            node = lib.networks[node.base]
        if chain >= set(local) - {name}:
            return name
    return None


def pick_network(lib: Library, choice: str | None, where: str) -> str:
    """The network a file stands for: ``choice``, its one network, or the one every other network of the file
    is a base of (``network tuned = base freeze(...)``, as ``cnndsl expand`` writes a frozen network)."""
    local = lib.local_networks()
    if choice is not None:
        lib.network(choice, Span.start_of(lib.main.source) if lib.main else None)
        return choice
    if len(local) == 1:
        return local[0]
    leaf = _only_leaf(lib, local)
    if leaf is not None:
        return leaf
    if not local:
        raise CnnNameError(f"{where} defines no network (only blocks)", Span.start_of(lib.main.source),
                           "a network starts with `network NAME: input CxHxW`")
    raise CnnNameError(f"{where} defines {len(local)} networks: {', '.join(local)}", lib.main.networks[1].span,
                       f"pick one with {where}:{local[-1]}")
