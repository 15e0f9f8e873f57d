"""The ``glfa`` command: parses arguments, loads the config, calls library code.

It stays thin: every subcommand is a ``_cmd_*`` function that calls into the library.
Bad input (any :class:`~glfa.errors.GlfaError`) becomes one line on stderr and exit status 2.
Library modules are imported inside the handlers so ``glfa --help`` stays fast.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from glfa import __version__
from glfa.errors import GlfaError


def _config(args: argparse.Namespace):
    from glfa.config import load_config

    return load_config(getattr(args, "config", None))


# ----------------------------------------------------------------------------- prepare


def _cmd_prepare(args: argparse.Namespace) -> int:
    config = _config(args)
    from glfa.data.prepare import prepare_study

    store = prepare_study(
        Path(args.source), Path(args.store), config, layout=args.layout, overwrite=args.overwrite
    )
    print(f"study store written to {store}")
    return 0


def _register_prepare(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("prepare", help="turn a raw study into a windowed study store")
    p.add_argument("source", help="the raw study folder")
    p.add_argument("store", help="the study store to write (a folder)")
    p.add_argument("--layout", choices=["wen2017", "fudan", "generic"], default=None,
                   help="the study's file layout (default: data.layout of the config)")
    p.add_argument("-c", "--config", help="YAML config (default: built-in defaults)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing store")
    p.set_defaults(func=_cmd_prepare)


# ----------------------------------------------------------------------------- simulate / demo


def _cmd_simulate(args: argparse.Namespace) -> int:
    config = _config(args)
    from glfa.data.synthetic import simulate_study

    out = simulate_study(Path(args.out), config, seed=args.seed)
    print(f"synthetic study written to {out}")
    return 0


def _register_simulate(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("simulate", help="write a simulated multi-subject video-fMRI study (generic layout)")
    p.add_argument("out", help="folder to write the study to")
    p.add_argument("-c", "--config", help="YAML config whose 'simulation' section is used")
    p.add_argument("--seed", type=int, default=None, help="override simulation.seed")
    p.set_defaults(func=_cmd_simulate)


def _cmd_demo(args: argparse.Namespace) -> int:
    from glfa.demo import run_demo

    run_demo(Path(args.out), quick=args.quick)
    return 0


def _register_demo(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="run the whole method on the built-in synthetic study")
    p.add_argument("--out", default="glfa-demo", help="output folder (default: ./glfa-demo)")
    p.add_argument("--quick", action="store_true", help="a smaller, faster run (used by the tests)")
    p.set_defaults(func=_cmd_demo)


# ----------------------------------------------------------------------------- main

# Each entry adds one subcommand; new subcommands add a _register_* function here.
_REGISTRY = [_register_prepare, _register_simulate, _register_demo]


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``glfa`` command."""
    parser = argparse.ArgumentParser(
        prog="glfa",
        description="Cross-subject fMRI-to-video decoding with Global-Local Functional Alignment.",
    )
    parser.add_argument("--version", action="version", version=f"glfa {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for register in _REGISTRY:
        register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``glfa`` command; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except GlfaError as exc:
        print(f"glfa: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("glfa: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
