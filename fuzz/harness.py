"""The fuzz harness: hostile .cnn inputs through the whole compiler, and the generated code through Python.

Each input comes from one strategy:

* ``bytes``: a corpus file (the zoo, the search spaces, the error fixtures) with a few bytes flipped,
  inserted, deleted or duplicated, NULs, invalid UTF-8, form feeds and Unicode separators among them;
* ``tokens``: a corpus file with tokens deleted, duplicated, swapped, repeated many times, or replaced
  by layer names, brackets and numbers from tiny to absurd;
* ``grammar``: a random sentence of ``grammar/cnn.lark`` (a random derivation of its rules, depth-bounded,
  with realistic terminals), as a whole file or as the body of a small network;
* ``names``: a small network with a hostile name (a Python keyword or builtin, an ``nn.Module``
  attribute, a dunder, a name the generated module uses itself) in one of the places a name can stand.

An input passes when it ends in one of two ways:

* a clean error: :class:`cnndsl.CnnDslError` rendered as ``file:line:col: error: ...`` (or ``error: ...``
  for a whole-file problem), no traceback;
* a network, whose PyTorch, JAX and Flax NNX sources each either parse as Python or are refused with a clean,
  positioned error; a sample of the ones that parse are imported and run in a sandbox process (below).

Anything else fails: another exception, generated code that does not parse, an input that takes more than
``TIME_LIMIT_S`` (a hang) or more memory than the worker's limit, or generated code that does anything but
compute when imported and run. The sandbox is a separate interpreter with an audit hook: once torch and
jax are imported, any file written or deleted, process started, socket opened or directory made fails
the input (``sys.addaudithook``).

Every input is made from ``(seed, strategy, index)`` alone, so a failure reproduces with
``python -m fuzz --strategy S --start I --inputs 1``.
"""

from __future__ import annotations

import ast
import dataclasses
import os
import random
import re
import signal
import subprocess
import sys
import tempfile
import traceback
from collections.abc import Callable, Iterator
from functools import cache
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TIME_LIMIT_S = 20  # one input: load and compile on both backends (a legal 100,000-layer file takes a few seconds)
MEMORY_LIMIT = 8 * 2**30  # bytes of address space for a worker process
#: Networks up to this size are also imported and run in the sandbox (bigger ones only compile and parse).
RUN_MAX_PARAMS = 2_000_000
RUN_MAX_MACS = 50_000_000
#: Flax NNX models initialise eagerly (an XLA compilation per kernel shape on a CPU): every compiled network's
#: Flax source is parsed, and every FLAX_RUN_EVERY-th one is also built and run in the sandbox.
FLAX_RUN_EVERY = 10
BACKENDS = ("torch", "jax", "flax")

# ----------------------------------------------------------------------------- the corpus


@cache
def corpus() -> tuple[tuple[tuple[str, bytes], ...], tuple[tuple[str, bytes], ...]]:
    """The seed files: the shipped networks and search spaces, and the error fixtures."""
    def read(paths):
        return tuple((p.name, p.read_bytes()) for p in sorted(paths))
    return read((ROOT / "networks").rglob("*.cnn")), read((ROOT / "tests" / "errors").glob("*.cnn"))


def seed_file(rng: random.Random) -> tuple[str, bytes]:
    """A corpus file: a shipped network three times in four (mutants of those get furthest), else a fixture."""
    zoo, fixtures = corpus()
    return rng.choice(zoo if rng.random() < 0.75 else fixtures)


#: Hostile names: Python's, the generated modules' own, nn.Module's, and the language's.
HOSTILE_NAMES = (
    "False", "None", "True", "and", "as", "assert", "async", "await", "break", "class", "continue", "def", "del",
    "elif", "else", "except", "finally", "for", "from", "global", "if", "import", "in", "is", "lambda",
    "nonlocal", "not", "or", "pass", "raise", "return", "try", "while", "with", "yield", "match", "case", "type",
    "_", "print", "input", "len", "super", "id", "object", "max", "exec", "eval", "open", "__import__",
    "torch", "nn", "F", "jax", "jnp", "lax", "math", "self", "x", "out", "aux", "v_x", "x_1",
    "forward", "training", "train", "eval", "parameters", "state_dict", "register_forward_hook", "keys", "items",
    "reset_parameters", "add_module", "_modules", "_parameters", "__init__", "__class__", "__dict__", "__c",
    "init", "apply", "params", "variables", "stats", "new_stats", "rng", "rngs", "key", "u", "n", "INPUT_SHAPE",
    "scale", "in_channels", "out_channels", "kernel_size", "Net", "T", "B", "PaddedConv2d", "Residual", "Block",
    "conv", "relu", "block", "network", "use", "freeze", "replace", "none", "skip", "concat", "residual",
)

#: The places a name can stand in a .cnn file (``{N}`` is the name).
PLACES = {
    "label": "network t: input 3x8x8\n  {N}: conv3-4 relu fc-2",
    "sequence_label": "network t: input 3x8x8\n  {N}: [conv3-4 relu] fc-2",
    "label_in_block": "block b(c): {N}: conv3-{{c}} bn relu\nnetwork t: input 3x8x8\n  b(4) b(8) fc-2",
    "branch_label": "network t: input 3x8x8\n  concat< {N}: conv1-2 | conv3-2 > {N}b: fc-2",
    "block_parameter": "block b({N}): conv3-{{{N}}} bn relu\nnetwork t: input 3x8x8\n  b(4) b(8) fc-2",
    "residual_parameter": "block b({N}, s=1): residual< conv3-{{{N}}}/{{s}} bn relu conv3-{{{N}}} bn > relu\n"
                          "network t: input 3x8x8\n  conv3-4 b(4) b(4, 1) b(8, 2) fc-2",
    "scaled_residual_parameter": "block b(k, {N}=0.5): residual(scale={{{N}}})< conv3-{{k}} bn >\n"
                                 "network t: input 3x8x8\n  conv3-3 b(3) b(3, 0.2) fc-2",
    "block_name": "block {N}(c): conv3-{{c}} bn relu\nnetwork t: input 3x8x8\n  {N}(4) {N}(8) fc-2",
    "network_name": "network {N}: input 3x8x8\n  conv3-4 relu fc-2",
    "network_parameter": "network t({N}=4): input 3x8x8\n  conv3-{{{N}}} relu fc-2",
    "input_name": "network t: input {N}=3x8x8 input y=3x8x8\n  concat< @{N} | @y > conv3-4 fc-2",
    "init_without_weights": "network {N} with init(kaiming): input 3x8x8\n  {N}: relu flatten",
}



def place_text(place: str, name: str) -> str:
    """The network of ``PLACES[place]`` with ``name`` in its place."""
    return PLACES[place].format(N=name)


# ----------------------------------------------------------------------------- the strategies

_SPECIAL_BYTES = [b"\x00", b"\xff", b"\xc3", b"\x0c", b"\r", b"\x0b", b"\x1c", "\u2028".encode(), "\u0085".encode(),
                  b"\xef\xbb\xbf", b'"', b"\\", b"\n", b"{", b"}", b"[", b"<", b"x", b"9"]


def mutate_bytes(rng: random.Random) -> tuple[str, bytes]:
    name, data = seed_file(rng)
    data = bytearray(data)
    for _ in range(rng.choice([1, 1, 1, 2, 3, 5, 8])):
        i = rng.randrange(len(data) + 1)
        kind = rng.randrange(5)
        if kind == 0 and data:
            data[min(i, len(data) - 1)] ^= 1 << rng.randrange(8)
        elif kind == 1:
            data[i:i] = rng.choice(_SPECIAL_BYTES)
        elif kind == 2:
            del data[i:i + rng.randint(1, 64)]
        elif kind == 3:
            piece = data[i:i + rng.randint(1, 200)]
            data[i:i] = piece * rng.randint(1, 50)
        else:
            data[i:i] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 8)))
    return name, bytes(data)


_TOKEN = re.compile(r"#[^\n]*|\"[^\"\n]*\"|[A-Za-z_][A-Za-z0-9_-]*|[0-9]+(?:\.[0-9]+)?(?:x[0-9]+)*|\s+|.", re.DOTALL)
_VOCAB = ["conv3-8", "relu", "bn", "fc-10", "maxpool", "gap", "flatten", "dropout", "[", "]", "<", ">", "|", "@",
          "x", "x{", "{", "}", "(", ")", ",", ":", "=", ".", "-", "/", "*", "//", "..", "concat", "residual", "add",
          "aux", "choice", "none", "skip", "block", "network", "input", "use", "with", "freeze", "replace",
          "0", "1", "-1", "3", "64", "1000", "100000", "1000000000", "9" * 30, "1e999", "0.5", "{1/0}", "{2*3}",
          "3x8x8", "3x100000x100000", '"blocks.cnn"', '"/dev/zero"', '"../x.cnn"', "\n", " ", "\t", "\x0c",
          *HOSTILE_NAMES[:40]]


def mutate_tokens(rng: random.Random) -> tuple[str, bytes]:
    name, data = seed_file(rng)
    tokens = _TOKEN.findall(data.decode("utf-8", "replace"))
    for _ in range(rng.choice([1, 1, 1, 2, 3, 5])):
        if not tokens:
            break
        i = rng.randrange(len(tokens))
        kind = rng.randrange(6)
        if kind == 0:
            del tokens[i]
        elif kind == 1:
            tokens.insert(i, tokens[i])
        elif kind == 2 and i + 1 < len(tokens):
            tokens[i], tokens[i + 1] = tokens[i + 1], tokens[i]
        elif kind == 3:
            tokens[i] = rng.choice(_VOCAB)
        elif kind == 4:
            tokens.insert(i, rng.choice(_VOCAB))
        else:  # a token or a run of tokens many times over
            run = tokens[i:i + rng.randint(1, 6)]
            tokens[i:i] = run * rng.choice([2, 10, 100, 1000])
    return name, "".join(tokens).encode("utf-8", "surrogatepass")


@cache
def _grammar():
    import lark

    from cnndsl.front.syntax import grammar_text

    g = lark.Lark(grammar_text(), parser="lalr", lexer="contextual", start=["start", "seq"])
    rules: dict[str, list[tuple]] = {}
    for r in g.rules:
        rules.setdefault(r.origin.name, []).append(tuple(r.expansion))
    terminals = {t.name: t.pattern for t in g.terminals}
    # the cheapest expansion of each rule (how many derivation steps it takes at the least), to end deep ones
    cost = {name: float("inf") for name in rules}
    changed = True
    while changed:
        changed = False
        for name, alts in rules.items():
            for alt in alts:
                c = 1 + sum(cost.get(s.name, 0) if not s.is_term else 0 for s in alt)
                if c < cost[name]:
                    cost[name], changed = c, True
    return rules, terminals, cost


_TERMINALS: dict[str, list[str]] = {
    "NAME": ["conv", "relu", "bn", "fc", "maxpool", "avgpool", "gap", "dropout", "concat", "add", "residual", "aux",
             "choice", "none", "skip", "c", "k", "s", "p", "unit", "t", "a", "b", "x", "same", "ceil", "true",
             "kaiming", "init", *HOSTILE_NAMES[::3]],
    "HNAME": ["soft-max", "max-pool", "conv-net", "global-avg-pool"],
    "INT": ["0", "1", "2", "3", "7", "16", "64", "224", "1000", "100000000", "9" * 30],
    "FLOAT": ["0.5", "1e-5", "2.0", "1e999", "0.0"],
    "SHAPE": ["3x8x8", "1x4x4", "3x32x32", "10", "0x8x8", "3x100000x100000", "3x8"],
    "STRING": ['"blocks.cnn"', '"missing.cnn"', '""', '"/dev/zero"'],
    "REPEAT": ["x"],
}


def grammar_sentence(rng: random.Random) -> tuple[str, bytes]:
    rules, terminals, cost = _grammar()
    start = rng.choice(["start", "seq"])
    budget = [rng.randint(20, 400)]  # derivation steps before every rule takes its cheapest way out
    out: list[str] = []

    def derive(symbol: str, depth: int) -> None:
        alts = rules[symbol]
        if budget[0] <= 0 or depth > 40:
            alt = min(alts, key=lambda a: sum(cost.get(s.name, 0) for s in a if not s.is_term))
        else:
            alt = rng.choice(alts)
        budget[0] -= 1
        for s in alt:
            if s.is_term:
                pattern = terminals[s.name]
                if s.name in _TERMINALS:
                    out.append(rng.choice(_TERMINALS[s.name]))
                else:
                    out.append(pattern.value if pattern.type == "str" else "x")
                out.append(rng.choice([" ", " ", "\n", "  # note\n"]))
            else:
                derive(s.name, depth + 1)

    derive(start, 0)
    text = "".join(out)
    if start == "seq":
        text = f"block unit(c, s=1): conv3-{{c}}/{{s}} bn relu\nnetwork t(c=8): input 3x16x16\n    conv3-8 {text}\n"
    return "grammar.cnn", text.encode("utf-8")


def hostile_name(rng: random.Random) -> tuple[str, bytes]:
    place = rng.choice(sorted(PLACES))
    if rng.random() < 0.8:
        name = rng.choice(HOSTILE_NAMES)
    else:
        name = rng.choice("_abcxT") + "".join(rng.choice("_abcdefxyz0123456789") for _ in range(rng.randint(0, 8)))
    return f"{place}.cnn", place_text(place, name).encode()


STRATEGIES: dict[str, Callable[[random.Random], tuple[str, bytes]]] = {
    "bytes": mutate_bytes, "tokens": mutate_tokens, "grammar": grammar_sentence, "names": hostile_name,
}


def make_input(seed: int, strategy: str, index: int) -> tuple[str, bytes]:
    """Input ``index`` of ``strategy``: a function of the three numbers alone."""
    return STRATEGIES[strategy](random.Random(f"{seed}:{strategy}:{index}"))


# ----------------------------------------------------------------------------- checking one input


@dataclasses.dataclass
class Outcome:
    strategy: str
    index: int
    result: str  # "refused" | "compiled" | "failure"
    detail: str = ""
    backend_refused: int = 0  # backends that refused the network with a clean, positioned error
    run: tuple | None = None  # (backend, source path, input shapes) for the sandbox


class _Timeout(BaseException):  # not an Exception: no handler in the code under test may swallow it
    pass


def _alarm(signum, frame):
    raise _Timeout


def _clean(e, where: str) -> str | None:
    """Why ``e`` is not a clean user error, or None when it is."""
    from cnndsl import CnnDslError

    if not isinstance(e, CnnDslError):
        return f"{where}: {type(e).__name__}: {e}\n{''.join(traceback.format_exception(e)[-6:])}"
    from cnndsl.backends.base import CompilerBug

    if isinstance(e, CompilerBug):
        return f"{where}: {e}"
    rendered = str(e)
    if e.span is not None and not re.match(rf"{re.escape(e.span.file)}:\d+:\d+: error: ", rendered):
        return f"{where}: badly rendered error: {rendered[:300]}"
    if e.span is None and not rendered.startswith("error: "):
        return f"{where}: badly rendered error: {rendered[:300]}"
    if "Traceback" in rendered:
        return f"{where}: a traceback in the message"
    return None


def check(strategy: str, index: int, name: str, data: bytes, workdir: Path) -> Outcome:
    """Load the input from a file, compile it on both backends, and judge the outcome."""
    import cnndsl

    path = workdir / name
    path.write_bytes(data)
    signal.signal(signal.SIGALRM, _alarm)
    signal.setitimer(signal.ITIMER_REAL, TIME_LIMIT_S)
    stage = "load"
    try:
        try:
            net = cnndsl.load(str(path))
        except Exception as e:  # noqa: BLE001 - judging every exception is the point
            why = _clean(e, "load")
            return Outcome(strategy, index, "failure" if why else "refused", why or "")
        runs, refused = [], 0
        for backend in BACKENDS:
            stage = f"compile --backend {backend}"
            try:
                source = cnndsl.compile(net, backend)
            except Exception as e:  # noqa: BLE001
                why = _clean(e, stage)
                if why or e.span is None:
                    return Outcome(strategy, index, "failure", why or f"{stage}: refused with no position: {e}")
                refused += 1
                continue
            ast.parse(source)  # compile already parses it; a second look costs little and checks the claim
            if net.params <= RUN_MAX_PARAMS and net.macs <= RUN_MAX_MACS and (
                    backend != "flax" or index % FLAX_RUN_EVERY == 0):
                out = workdir / f"{strategy}_{index}_{backend}.py"
                out.write_text(source, encoding="utf-8")
                shapes = [net.graph.node(i).shape for i in net.graph.inputs]
                runs.append((backend, str(out), shapes))
        return Outcome(strategy, index, "compiled", backend_refused=refused, run=tuple(runs) or None)
    except _Timeout:
        return Outcome(strategy, index, "failure", f"{stage}: more than {TIME_LIMIT_S} s")
    except MemoryError:
        return Outcome(strategy, index, "failure", f"{stage}: out of memory")
    except Exception as e:  # noqa: BLE001
        return Outcome(strategy, index, "failure", f"{stage}: {type(e).__name__}: {e}")
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        path.unlink(missing_ok=True)


# ----------------------------------------------------------------------------- the sandbox

SANDBOX = r'''
import importlib.util, json, os, resource, sys
resource.setrlimit(resource.RLIMIT_AS, (int(sys.argv[1]),) * 2)
import numpy as np
import torch
import jax, jax.numpy as jnp
from flax import nnx

BAD = ("os.system", "os.exec", "os.posix_spawn", "os.spawn", "os.fork", "subprocess.Popen", "os.remove",
       "os.rename", "os.rmdir", "os.mkdir", "os.chmod", "os.symlink", "os.link", "os.truncate", "shutil.",
       "socket.", "ctypes.", "webbrowser.", "urllib.", "http.")
events = []

def hook(event, args):
    if event.startswith(BAD) or event == "open" and len(args) > 1 and isinstance(args[1], str) and any(
            c in args[1] for c in "wax+"):
        events.append(event)

sys.addaudithook(hook)
for line in sys.stdin:
    backend, path, shapes = json.loads(line)
    events.clear()
    try:
        spec = importlib.util.spec_from_file_location("generated", path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        if backend == "torch":
            classes = [v for v in vars(module).values()
                       if isinstance(v, type) and issubclass(v, torch.nn.Module) and v.__module__ == "generated"]
            model = classes[-1]().eval()
            with torch.no_grad():
                model(*(torch.randn(2, *s) for s in shapes))
        elif backend == "flax":
            classes = [v for v in vars(module).values()
                       if isinstance(v, type) and issubclass(v, nnx.Module) and v.__module__ == "generated"]
            model = classes[-1](rngs=nnx.Rngs(0))
            model.eval()
            model(*(jnp.zeros((2, s[1], s[2], s[0]) if len(s) == 3 else (2, *s)) for s in shapes))
        else:
            variables = module.init(jax.random.PRNGKey(0))
            xs = [jnp.zeros((2, s[1], s[2], s[0]) if len(s) == 3 else (2, *s)) for s in shapes]
            module.apply(variables, *xs)
        result = "side effect: " + ", ".join(sorted(set(events))) if events else "ok"
    except Exception as e:
        result = f"{type(e).__name__}: {e}"[:500]
    print(json.dumps(result), flush=True)
'''


class Sandbox:
    """One interpreter that imports and runs generated modules, one per line of its standard input."""

    def __init__(self, cwd: Path):
        self.proc = subprocess.Popen([sys.executable, "-c", SANDBOX, str(MEMORY_LIMIT)], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, cwd=cwd, text=True)

    def run(self, backend: str, path: str, shapes) -> str:
        import json

        self.proc.stdin.write(json.dumps([backend, path, [list(s) for s in shapes]]) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            code = self.proc.wait()
            raise RuntimeError(f"the sandbox died (status {code})")
        return json.loads(line)

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait(timeout=60)


# ----------------------------------------------------------------------------- running a batch


@dataclasses.dataclass
class Tally:
    """What a run found, per strategy."""

    inputs: dict[str, int] = dataclasses.field(default_factory=dict)
    refused: dict[str, int] = dataclasses.field(default_factory=dict)
    compiled: dict[str, int] = dataclasses.field(default_factory=dict)
    imported: dict[str, int] = dataclasses.field(default_factory=dict)
    backend_refused: dict[str, int] = dataclasses.field(default_factory=dict)
    failures: list[tuple[str, int, str]] = dataclasses.field(default_factory=list)

    def add(self, other: Tally) -> None:
        for f in ("inputs", "refused", "compiled", "imported", "backend_refused"):
            mine = getattr(self, f)
            for k, v in getattr(other, f).items():
                mine[k] = mine.get(k, 0) + v
        self.failures += other.failures


def run_batch(seed: int, strategy: str, start: int, count: int, sandbox_every: int = 1) -> Tally:
    """Inputs ``start .. start+count-1`` of ``strategy``; every ``sandbox_every``-th compiled one is also run
    (none with 0)."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    if soft == resource.RLIM_INFINITY or soft > MEMORY_LIMIT:
        resource.setrlimit(resource.RLIMIT_AS, (MEMORY_LIMIT, hard))
    tally = Tally()
    with tempfile.TemporaryDirectory(prefix="cnndsl-fuzz-") as tmp:
        workdir, cwd = Path(tmp) / "in", Path(tmp) / "cwd"
        workdir.mkdir()
        cwd.mkdir()
        sandbox = None
        compiled_seen = 0
        try:
            for index in range(start, start + count):
                name, data = make_input(seed, strategy, index)
                outcome = check(strategy, index, name, data, workdir)
                tally.inputs[strategy] = tally.inputs.get(strategy, 0) + 1
                if outcome.result == "failure":
                    tally.failures.append((strategy, index, outcome.detail))
                    continue
                counts = getattr(tally, outcome.result)
                counts[strategy] = counts.get(strategy, 0) + 1
                if outcome.backend_refused:
                    tally.backend_refused[strategy] = tally.backend_refused.get(strategy, 0) + 1
                if outcome.result != "compiled" or not outcome.run:
                    continue
                compiled_seen += 1
                if not sandbox_every or compiled_seen % sandbox_every:
                    continue
                sandbox = sandbox or Sandbox(cwd)
                for backend, path, shapes in outcome.run:
                    try:
                        result = sandbox.run(backend, path, shapes)
                    except RuntimeError as e:
                        result, sandbox = str(e), None
                    if result != "ok":
                        tally.failures.append((strategy, index, f"running the {backend} model: {result}"))
                    os.unlink(path)
                    if any(cwd.iterdir()):
                        tally.failures.append((strategy, index, f"the {backend} model wrote files"))
                        for p in cwd.iterdir():
                            p.unlink() if p.is_file() else None
                tally.imported[strategy] = tally.imported.get(strategy, 0) + 1
        finally:
            if sandbox is not None:
                sandbox.close()
    return tally


def run_job(job: tuple) -> Tally:
    """:func:`run_batch` on ``(seed, strategy, start, count, sandbox_every)``: a worker pool's task."""
    return run_batch(*job)


def batches(seed: int, strategies: list[str], start: int, inputs: int, size: int) -> Iterator[tuple]:
    """Split ``inputs`` inputs per strategy into batches for the worker pool."""
    for strategy in strategies:
        for s in range(start, start + inputs, size):
            yield seed, strategy, s, min(size, start + inputs - s)
