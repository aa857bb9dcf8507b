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


def _load(args) -> "api.Network":
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
    print(_load(args).summary(args.format))
    return 0


def cmd_expand(args) -> int:
    from .expand import expand

    sys.stdout.write(expand(_load(args)))
    return 0


def cmd_graph(args) -> int:
    from .graphviz import render

    path = render(_load(args), args.output, collapse=args.collapse)
    print(f"wrote {path}", file=sys.stderr)
    return 0


def cmd_list(args) -> int:
    from .loader import zoo_index

    rows = []
    for name, file in zoo_index().items():
        net = api.load(name)
        rows.append((name, file, "x".join(map(str, net.input_shape)), f"{net.params:,}", f"{net.macs / 1e9:.2f}G"))
    head = ("network", "file", "input", "params", "MACs")
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head))]
    for r in [head, *rows]:
        print("  ".join(c.ljust(w) if i < 3 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))).rstrip())
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
    net_cmd("expand", cmd_expand, "print the fully desugared network (itself valid .cnn)")
    sp = net_cmd("graph", cmd_graph, "draw the network with Graphviz (svg, png, pdf, or dot text)")
    sp.add_argument("-o", "--output", required=True, metavar="FILE", help="FILE.svg, .png, .pdf or .dot")
    sp.add_argument("--collapse", action="store_true", help="draw each block instance as one box")
    sp.add_argument("--input", type=_shape, metavar="CxHxW", help="override the input size")
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
