"""The ``cnndsl`` command line: a thin layer over the Python API.

Exit status: 0 on success, 1 on a mistake in the network (a clean
``file:line:col`` message on stderr), 2 on bad usage.
"""

from __future__ import annotations

import argparse
import re
import sys

from . import api
from .errors import CnnDslError
from .files import write_atomic

EPILOG = "NET is a zoo name (see `cnndsl list`), a .cnn file, or FILE.cnn:NETWORK."


def _shape(text: str) -> tuple[int, ...]:
    if not re.fullmatch(r"[1-9][0-9]*(x[1-9][0-9]*){0,2}", text):
        raise argparse.ArgumentTypeError(f"expected CxHxW such as 3x224x224, got {text!r}")
    return tuple(int(d) for d in text.split("x"))


def _params(pairs: list[str]) -> dict:
    out = {}
    for pair in pairs or ():
        key, sep, val = pair.partition("=")
        if not sep or not key.isidentifier():
            raise SystemExit(f"cnndsl: error: --param takes NAME=VALUE, got {pair!r}")
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


def cmd_check(args) -> int:
    net = _load(args)
    print(f"{args.net}: ok ({net.name}: {len(net.graph)} layers, {net.params:,} parameters, "
          f"{len(net.warnings)} warning{'s' if len(net.warnings) != 1 else ''})")
    return 0


def cmd_summary(args) -> int:
    net = _load(args)
    if args.paper:
        print(net.summary("paper"))
    elif args.format == "table":
        from .summary import print_table

        print_table(net, args.depth)
    else:
        print(net.summary(args.format))
    return 0


def cmd_expand(args) -> int:
    from .expand import expand

    sys.stdout.write(expand(_load(args)))
    return 0


def cmd_graph(args) -> int:
    from .graphviz import render
    from .progress import working

    net = _load(args)
    with working(f"drawing {net.name}"):
        path = render(net, args.output, collapse=args.collapse)
    print(f"wrote {path}", file=sys.stderr)
    return 0


def cmd_export(args) -> int:
    from .onnx_export import export_onnx
    from .progress import working

    net = _load(args)
    with working(f"exporting {net.name} to ONNX"):
        path = export_onnx(net, args.onnx, opset=args.opset, inference=args.inference)
    print(f"wrote {path}", file=sys.stderr)
    return 0


def cmd_lsp(args) -> int:
    from .lsp import main as serve

    return serve()


def cmd_list(args) -> int:
    from .loader import zoo_index
    from .progress import progress

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
    from .train import train

    train(args.net, data=args.data, epochs=args.epochs, backend=args.backend, **_params(args.param))
    return 0


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="cnndsl", description="A language for convolutional networks and its compiler.",
                                epilog=EPILOG)
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def net_cmd(name, func, help_):
        sp = sub.add_parser(name, help=help_, description=help_, epilog=EPILOG)
        sp.add_argument("net", metavar="NET")
        sp.add_argument("--param", "-p", action="append", metavar="NAME=VALUE",
                        help="set a network parameter, e.g. -p classes=10")
        sp.set_defaults(func=func)
        return sp

    net_cmd("check", cmd_check, "parse and check a network; report errors and warnings")
    sp = net_cmd("summary", cmd_summary, "per-layer output shapes, parameters, MACs and activations")
    sp.add_argument("--input", type=_shape, metavar="CxHxW", help="override the input size")
    sp.add_argument("--format", choices=("table", "json", "csv"), default="table")
    sp.add_argument("--depth", type=int, metavar="N", help="fold scopes below nesting level N into one row")
    sp.add_argument("--paper", action="store_true", help="print the network in the layout of its paper's table")
    sp = net_cmd("compile", cmd_compile, "generate framework code for a network (stdout, or -o FILE)")
    sp.add_argument("--backend", choices=("torch", "jax"), default="torch")
    sp.add_argument("-o", "--output", metavar="FILE", help="write here (replaced only by a complete file)")
    sp.add_argument("--input", type=_shape, metavar="CxHxW", help="override the input size")
    sp.add_argument("--inference", action="store_true",
                    help="the inference build: batch norms folded into convolutions, dropout and aux heads dropped")
    sp = net_cmd("train", cmd_train, "train a network on a small data set and report its test accuracy")
    sp.add_argument("--data", default="digits", metavar="digits|DIR",
                    help="scikit-learn's 8x8 digits (default), or an ImageFolder-style directory")
    sp.add_argument("--backend", choices=("torch", "jax"), default="torch")
    sp.add_argument("--epochs", type=int, default=None, metavar="N")
    net_cmd("expand", cmd_expand, "print the fully desugared network (itself valid .cnn)")
    sp = net_cmd("graph", cmd_graph, "draw the network with Graphviz (svg, png, pdf, or dot text)")
    sp.add_argument("-o", "--output", required=True, metavar="FILE", help="FILE.svg, .png, .pdf or .dot")
    sp.add_argument("--collapse", action="store_true", help="draw each block instance as one box")
    sp.add_argument("--input", type=_shape, metavar="CxHxW", help="override the input size")
    from .onnx_export import DEFAULT_OPSET

    sp = net_cmd("export", cmd_export, "export the network to ONNX (through its PyTorch model, in eval mode)")
    sp.add_argument("--onnx", required=True, metavar="FILE", help="write here (replaced only by a complete file)")
    sp.add_argument("--input", type=_shape, metavar="CxHxW", help="override the input size")
    sp.add_argument("--opset", type=int, default=DEFAULT_OPSET, metavar="N",
                    help=f"ONNX opset version (default {DEFAULT_OPSET})")
    sp.add_argument("--inference", action="store_true", help="export the inference build (batch norms folded)")
    from .variants import add_parser as add_variants  # (cnndsl.variants is also the API function)

    add_variants(sub, _shape, _params)
    from .search import add_parser as add_search

    add_search(sub, _shape, _params)
    sp = sub.add_parser("lsp", help="run the language server (LSP over stdio) for editors")
    sp.set_defaults(func=cmd_lsp)
    sp = sub.add_parser("list", help="the networks in the zoo with their sizes")
    sp.set_defaults(func=cmd_list)
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        return args.func(args)
    except CnnDslError as e:
        print(e, file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return 0


if __name__ == "__main__":
    sys.exit(main())
