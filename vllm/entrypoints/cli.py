"""The `vllm` command line: `vllm serve [MODEL] ...`, `vllm --version`.

Subcommands are CLISubcommand objects in SUBCOMMANDS (add one with ``register``); each adds
its own argparse sub-parser and runs with the parsed namespace. Heavy imports (torch, the
server) happen only inside ``run`` / ``add_parser`` of the chosen command.
"""
from __future__ import annotations

import argparse
import sys
from typing import Optional, Sequence

from vllm.version import __version__


class CLISubcommand:
    name: str = ""
    help: str = ""

    def add_parser(self, subparsers) -> argparse.ArgumentParser:
        return subparsers.add_parser(self.name, help=self.help, description=self.help)

    def run(self, args: argparse.Namespace) -> int:
        raise NotImplementedError


class ServeSubcommand(CLISubcommand):
    name = "serve"
    help = "Start the OpenAI-compatible HTTP server."

    def add_parser(self, subparsers) -> argparse.ArgumentParser:
        from vllm.entrypoints.openai.api_server import add_server_args
        p = super().add_parser(subparsers)
        p.usage = "vllm serve [MODEL] [options]"
        add_server_args(p)
        return p

    def run(self, args: argparse.Namespace) -> int:
        from vllm.entrypoints.openai.api_server import run_server
        return run_server(args)


SUBCOMMANDS: list[CLISubcommand] = [ServeSubcommand()]


def register(cmd: CLISubcommand) -> None:
    """Add (or replace) a subcommand, e.g. `bench`."""
    SUBCOMMANDS[:] = [c for c in SUBCOMMANDS if c.name != cmd.name] + [cmd]


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vllm", description="vllm command line")
    parser.add_argument("-v", "--version", action="version", version=__version__)
    sub = parser.add_subparsers(dest="subcommand", metavar="COMMAND")
    for cmd in SUBCOMMANDS:
        p = cmd.add_parser(sub)
        p.set_defaults(_run=cmd.run)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    # `vllm --version` must not pay for building every sub-parser (torch imports).
    args_list = list(sys.argv[1:] if argv is None else argv)
    if args_list and args_list[0] in ("-v", "--version"):
        print(__version__)
        return 0
    parser = make_parser()
    args = parser.parse_args(args_list)
    run = getattr(args, "_run", None)
    if run is None:
        parser.print_help()
        return 1
    try:
        return int(run(args) or 0)
    except KeyboardInterrupt:
        return 130
    except ValueError as e:        # bad engine arguments (model, lengths, ...)
        print(f"vllm {args.subcommand}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
