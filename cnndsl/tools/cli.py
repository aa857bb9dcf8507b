"""The ``cnndsl`` command line: a thin layer over the Python API.

Exit status: 0 on success, 1 on a mistake in the network (a clean
``file:line:col`` message on stderr), 2 on bad usage.
"""

from __future__ import annotations

import argparse
import re
import sys

from cnndsl import api
from cnndsl.errors import CnnDslError
from cnndsl.files import write_atomic

EPILOG = "NET is a zoo name (see `cnndsl list`), a .cnn file, or FILE.cnn:NETWORK."


def _shape(text: str) -> tuple[int, ...]:
    """An ``--input`` shape, in the forms a network's ``input`` takes: ``C`` (a flat vector) or ``CxHxW``.

    As in the language: decimal sizes (leading zeros allowed), each at least 1 and at most
    ``syntax.MAX_NUMBER``; anything else (``3x16``, ``0x8x8``, ``3X8X8``) is a usage error.
    """
    from cnndsl.front.syntax import MAX_NUMBER

    forms = "C (a flat vector, such as 64) or CxHxW (such as 3x224x224)"
    if not re.fullmatch(r"[0-9]+(x[0-9]+)*", text, re.ASCII):
        raise argparse.ArgumentTypeError(f"expected {forms}, got {text!r}")
    dims = text.split("x")
    if len(dims) not in (1, 3):
        raise argparse.ArgumentTypeError(f"expected {forms}, got {text!r} ({len(dims)} sizes)")
    if any(len(d.lstrip("0")) > len(str(MAX_NUMBER)) or not 1 <= int(d) <= MAX_NUMBER for d in dims):
        raise argparse.ArgumentTypeError(f"expected {forms} with sizes from 1 to {MAX_NUMBER:,}, got {text!r}")
    return tuple(int(d) for d in dims)


def _params(pairs: list[str]) -> dict:
    """``-p NAME=VALUE`` pairs as keyword arguments (int, float, true/false, else the string).

    A pair that is not ``NAME=VALUE`` with NAME an identifier raises ``argparse.ArgumentTypeError``,
    which :func:`main` reports as the usage error it is (exit 2).
    """
    out = {}
    for pair in pairs or ():
        key, sep, val = pair.partition("=")
        if not sep or not key.isidentifier():
            raise argparse.ArgumentTypeError(f"argument --param/-p: expected NAME=VALUE such as classes=10, "
                                             f"got {pair!r}")
        try:
            out[key] = int(val)
        except ValueError:
            try:
                out[key] = float(val)
            except ValueError:
                out[key] = {"true": True, "false": False}.get(val, val)
    return out


def _load(args) -> api.Network:
    net = api.load(args.net, input_shape=getattr(args, "input", None), **_params(getattr(args, "param", None)))
    for w in net.warnings:
        print(w, file=sys.stderr)
    return net


def _checked(where: str, net: api.Network) -> str:
    """``check``'s line for a network that passed."""
    return (f"{where}: ok ({net.name}: {len(net.graph)} layers, {net.params:,} parameters, "
            f"{len(net.warnings)} warning{'s' if len(net.warnings) != 1 else ''})")


def cmd_check(args) -> int:
    """Check one network, or every network of a file that defines several: one line each on stdout, each error
    (at its file:line:col) and warning on stderr; exit 1 if any network fails.

    In a file of several networks, ``-p NAME=VALUE`` goes to the networks that declare NAME (one that no
    network declares is an error), and ``--input`` to all of them.
    """
    from pathlib import Path

    from cnndsl.front.loader import Library, read_text
    from cnndsl.front.syntax import parse

    params = _params(args.param)
    names, path = [], Path(args.net)
    if path.is_file():  # a zoo name, or FILE.cnn:NETWORK, names one network
        library = Library.from_module(parse(read_text(path), str(path)), path.parent.resolve())
        names = library.local_networks()
    if len(names) < 2:
        net = _load(args)
        print(_checked(args.net, net))
        return 0
    declared = {name: {p.name for p in library.network(name).params} for name in names}
    unused = sorted(set(params) - set().union(*declared.values()))
    if unused:
        raise CnnDslError(f"no network in {args.net} has a parameter '{unused[0]}'", None,
                          "parameters here: " + (", ".join(sorted(set().union(*declared.values()))) or "none"))
    failed = 0
    for name in names:
        mine = {k: v for k, v in params.items() if k in declared[name]}
        try:
            net = api.build(library, name, args.input, **mine)
        except CnnDslError as e:
            failed += 1
            print(e, file=sys.stderr)
            where = f" at {e.span}" if e.span is not None else ""
            print(f"{args.net}:{name}: error{where}: {e.message}")
            continue
        for w in net.warnings:
            print(w, file=sys.stderr)
        print(_checked(f"{args.net}:{name}", net))
    return 1 if failed else 0


def cmd_summary(args) -> int:
    net = _load(args)
    if args.paper:
        print(net.summary("paper"))
    elif args.format == "table":
        from cnndsl.report.summary import print_table

        print_table(net, args.depth)
    else:
        print(net.summary(args.format))
    return 0


def cmd_expand(args) -> int:
    from cnndsl.report.expand import expand

    sys.stdout.write(expand(_load(args)))
    return 0


def cmd_graph(args) -> int:
    from cnndsl.progress import working
    from cnndsl.report.graphviz import render

    net = _load(args)
    with working(f"drawing {net.name}"):
        path = render(net, args.output, collapse=args.collapse)
    print(f"wrote {path}", file=sys.stderr)
    return 0


def cmd_export(args) -> int:
    from cnndsl.progress import working
    from cnndsl.tools.onnx_export import export_onnx

    net = _load(args)
    with working(f"exporting {net.name} to ONNX"):
        path = export_onnx(net, args.onnx, opset=args.opset, inference=args.inference, weights=args.weights)
    print(f"wrote {path}", file=sys.stderr)
    return 0


def cmd_weights(args) -> int:
    """``weights convert CKPT NET -o FILE``: a torchvision / timm checkpoint as a weights file, every key and shape
    checked; ``weights info FILE``: a weights file's metadata and size."""
    from cnndsl import weights

    if args.action == "info":
        print(weights.describe(args.file))
        return 0
    from cnndsl.progress import working

    net = _load(args)
    with working(f"converting {args.checkpoint} for {net.name}"):
        path, notes = weights.convert_checkpoint(args.checkpoint, net, args.output)
    for note in notes:
        print(f"note: {note}", file=sys.stderr)
    print(f"wrote {path} ({len(weights.weight_keys(net))} tensors of {net.name})", file=sys.stderr)
    return 0


def cmd_lsp(args) -> int:
    from cnndsl.tools.lsp import main as serve

    return serve()


def cmd_list(args) -> int:
    from cnndsl.front.loader import zoo_index
    from cnndsl.progress import progress

    rows = []
    for name, file in progress(zoo_index().items(), "loading the zoo", total=len(zoo_index()), unit="net"):
        net = api.load(name)
        rows.append((name, file, "x".join(map(str, net.input_shape)), f"{net.params:,}", f"{net.macs / 1e9:.2f}G"))
    head = ("network", "file", "input", "params", "MACs")
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head))]
    for r in [head, *rows]:
        print("  ".join(c.ljust(w) if i < 3 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))).rstrip())
    return 0


def cmd_compile(args) -> int:

    source = api.compile(_load(args), args.backend, inference=args.inference)
    if not args.output:
        sys.stdout.write(source)
        return 0
    write_atomic(args.output, source)  # an existing output is never left half-written
    return 0


def cmd_train(args) -> int:
    import math

    params = _params(args.param)
    for flag, value, least in (("epochs", args.epochs, 1), ("batch-size", args.batch_size, 1),
                               ("nproc", args.nproc, 1), ("seed", args.seed, 0)):
        if value is not None and value < least:
            raise argparse.ArgumentTypeError(f"argument --{flag}: expected at least {least}, got {value}")
    if args.seed is not None and args.seed >= 2**32:  # NumPy's and scikit-learn's seeds are 32-bit
        raise argparse.ArgumentTypeError(f"argument --seed: expected at most {2**32 - 1}, got {args.seed}")
    if args.lr is not None and not (math.isfinite(args.lr) and args.lr > 0):
        raise argparse.ArgumentTypeError(f"argument --lr: expected a positive number, got {args.lr}")
    from cnndsl.train.torch_loop import train

    train(args.net, data=args.data, epochs=args.epochs, backend=args.backend, seed=args.seed,
          batch_size=args.batch_size, lr=args.lr, out_dir=args.out, resume=args.resume, nproc=args.nproc or 1,
          device=args.device, **params)
    return 0


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="cnndsl", description="A language for convolutional networks and its compiler.",
                                epilog=EPILOG)
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def net_cmd(name, func, help_):
        from cnndsl.passes import limits

        sp = sub.add_parser(name, help=help_, description=help_, epilog=EPILOG)
        sp.add_argument("net", metavar="NET")
        sp.add_argument("--param", "-p", action="append", metavar="NAME=VALUE",
                        help="set a network parameter, e.g. -p classes=10")
        sizes = sp.add_argument_group("size limits", "a network over one is refused at the layer that crosses it, "
                                                     "before anything is allocated (N: 10**12, 1e12 or 1000000000000)")
        for which, flag, what in limits.OPTIONS:
            sizes.add_argument(flag, dest=f"max_{which}", type=limits.parse_limit, metavar="N",
                               help=f"{what} (default {getattr(limits.SizeLimits(), which):,})")

        def run(args):
            with limits.raised({which: getattr(args, f"max_{which}") for which, _, _ in limits.OPTIONS}):
                return func(args)

        sp.set_defaults(func=run)
        return sp

    sp = net_cmd("check", cmd_check, "parse and check a network, or every network of a file; report errors and "
                                      "warnings")
    sp.add_argument("--input", type=_shape, metavar="CxHxW", help="override the input size (of every network)")
    sp = net_cmd("summary", cmd_summary, "per-layer output shapes, parameters, MACs and activations")
    sp.add_argument("--input", type=_shape, metavar="CxHxW", help="override the input size")
    sp.add_argument("--format", choices=("table", "json", "csv"), default="table")
    sp.add_argument("--depth", type=int, metavar="N", help="fold scopes below nesting level N into one row")
    sp.add_argument("--paper", action="store_true", help="print the network in the layout of its paper's table")
    sp = net_cmd("compile", cmd_compile, "generate framework code for a network (stdout, or -o FILE)")
    sp.add_argument("--backend", choices=("torch", "jax", "flax"), default="torch")
    sp.add_argument("-o", "--output", metavar="FILE", help="write here (replaced only by a complete file)")
    sp.add_argument("--input", type=_shape, metavar="CxHxW", help="override the input size")
    sp.add_argument("--inference", action="store_true",
                    help="the inference build: batch norms folded into convolutions, dropout and aux heads dropped")
    from cnndsl.train import data as recipe

    sp = net_cmd("train", cmd_train, "train a network on a small data set and report its test accuracy")
    sp.add_argument("--data", default=None, metavar="digits|DIR",
                    help="scikit-learn's 8x8 digits (default), or an ImageFolder-style directory")
    sp.add_argument("--backend", choices=("torch", "jax"), default="torch")
    sp.add_argument("--epochs", type=int, default=None, metavar="N",
                    help=f"epochs in all (default {recipe.EPOCHS}; with --resume, the saved run's total)")
    sp.add_argument("--lr", type=float, default=None, metavar="LR", help=f"SGD learning rate (default {recipe.LR})")
    sp.add_argument("--batch-size", type=int, default=None, metavar="N", help=f"images per step (default {recipe.BATCH_SIZE})")
    sp.add_argument("--seed", type=int, default=None, metavar="N",
                    help=f"seed of the initial weights, the split, the shuffle and dropout (default {recipe.SEED})")
    sp.add_argument("--out", metavar="DIR", help="write weights.safetensors, the optimizer's state, network.cnn "
                                                 "and metrics.json here after every epoch")
    sp.add_argument("--resume", metavar="DIR", help="continue the run saved in DIR (with its settings)")
    sp.add_argument("--nproc", type=int, default=None, metavar="N",
                    help="train data-parallel in N processes (torch.distributed: nccl on CUDA, one GPU a process; "
                         "gloo on the CPU)")
    sp.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                    help="where the torch backend trains (default auto: CUDA when available, else the CPU)")
    net_cmd("expand", cmd_expand, "print the fully desugared network (itself valid .cnn)")
    sp = net_cmd("graph", cmd_graph, "draw the network with Graphviz (svg, png, pdf, or dot text)")
    sp.add_argument("-o", "--output", required=True, metavar="FILE", help="FILE.svg, .png, .pdf or .dot")
    sp.add_argument("--collapse", action="store_true", help="draw each block instance as one box")
    sp.add_argument("--input", type=_shape, metavar="CxHxW", help="override the input size")
    from cnndsl.tools.onnx_export import DEFAULT_OPSET

    sp = net_cmd("export", cmd_export, "export the network to ONNX (through its PyTorch model, in eval mode)")
    sp.add_argument("--onnx", required=True, metavar="FILE", help="write here (replaced only by a complete file)")
    sp.add_argument("--input", type=_shape, metavar="CxHxW", help="override the input size")
    sp.add_argument("--opset", type=int, default=DEFAULT_OPSET, metavar="N",
                    help=f"ONNX opset version (default {DEFAULT_OPSET})")
    sp.add_argument("--inference", action="store_true", help="export the inference build (batch norms folded)")
    sp.add_argument("--weights", metavar="FILE", help="a weights file (.safetensors) to export, not the initial ones")
    sp = sub.add_parser("weights", help="convert checkpoints to weights files (.safetensors), and describe them",
                        description="Weights files: one safetensors file per network for every backend.")
    actions = sp.add_subparsers(dest="action", required=True, metavar="ACTION")
    conv = actions.add_parser("convert", help="a torchvision / timm checkpoint (torch.save or .safetensors) as a "
                                             "weights file of NET, every key and shape checked", epilog=EPILOG)
    conv.add_argument("checkpoint", metavar="CKPT")
    conv.add_argument("net", metavar="NET")
    conv.add_argument("-o", "--output", required=True, metavar="FILE", help="the weights file to write")
    conv.add_argument("--param", "-p", action="append", metavar="NAME=VALUE",
                      help="set a network parameter, e.g. -p classes=10")
    conv.add_argument("--input", type=_shape, metavar="CxHxW", help="override the input size")
    info = actions.add_parser("info", help="a weights file's metadata, and how many tensors it holds")
    info.add_argument("file", metavar="FILE")
    sp.set_defaults(func=cmd_weights)
    from cnndsl.search.variants import add_parser as add_variants  # (cnndsl.search.variants is also the API function)

    add_variants(sub, _shape, _params)
    from cnndsl.search.study import add_parser as add_search

    add_search(sub, _shape, _params)
    from cnndsl.search.supernet import add_parser as add_supernet

    add_supernet(sub, _shape, _params)
    for name, sp in sub.choices.items():
        if name not in ("lsp", "list", "weights"):
            _plugin_flags(sp)
    _plugin_flags(conv)
    sp = sub.add_parser("lsp", help="run the language server (LSP over stdio) for editors")
    _plugin_flags(sp)  # hovers, diagnostics and summaries of plugin ops
    sp.set_defaults(func=cmd_lsp)
    sp = sub.add_parser("list", help="the networks in the zoo with their sizes")
    sp.set_defaults(func=cmd_list)
    from cnndsl.tools.fmt import add_parser as add_fmt

    add_fmt(sub)
    return p


def _plugin_flags(sp: argparse.ArgumentParser) -> None:
    """``--plugins`` and ``--allow-plugins`` (cnndsl.ops): loading a plugin runs its code, so only when asked."""
    g = sp.add_argument_group("plugins", "custom ops (docs/plugins.md); loading a plugin runs its Python code")
    g.add_argument("--plugins", action="append", metavar="NAME", help="load a plugin first: an installed package's "
                   "cnndsl.ops entry point, a module or a .py file (comma-separated, or repeat the flag); allows "
                   '`use "x.py"` too')
    g.add_argument("--allow-plugins", action="store_true", help='let the .cnn file load the plugins it `use`s '
                   '(`use "myops.py"`)')


def _run(args) -> int:
    """Run a command, with the plugins it asked for loaded and ``use "x.py"`` allowed where it asked."""
    from cnndsl.ops import allow_plugins, load_plugin

    names = [n for value in getattr(args, "plugins", None) or () for n in value.split(",") if n]
    with allow_plugins(bool(names) or getattr(args, "allow_plugins", False)):
        for name in names:
            load_plugin(name)
        return args.func(args)


def main(argv: list[str] | None = None) -> int:
    """Run the ``cnndsl`` command line; returns the exit status (argparse exits 2 on bad usage itself)."""
    p = parser()
    args = p.parse_args(argv)
    try:
        return _run(args)
    except argparse.ArgumentTypeError as e:  # bad usage found after parsing (a malformed -p NAME=VALUE, ...)
        # report it through the subcommand's parser (its usage line, then the message; exit 2), as argparse would;
        # argparse has no public accessor for a subparser, so find it among the actions
        sub = next((a.choices[args.command] for a in p._actions
                    if isinstance(a, argparse._SubParsersAction) and args.command in a.choices), p)
        sub.error(str(e))
    except CnnDslError as e:
        print(e, file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return 0


if __name__ == "__main__":
    sys.exit(main())
