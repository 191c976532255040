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


class BenchSubcommand(CLISubcommand):
    name = "bench"
    help = "Benchmarks: `vllm bench serve` loads a running server."

    def add_parser(self, subparsers) -> argparse.ArgumentParser:
        from vllm.benchmarks import serve as bench_serve
        p = super().add_parser(subparsers)
        sub = p.add_subparsers(dest="bench_type", metavar="BENCH", required=True)
        sp = sub.add_parser("serve", help="throughput and latency of an OpenAI-compatible "
                                          "server under load", description=bench_serve.__doc__,
                            formatter_class=argparse.RawDescriptionHelpFormatter)
        bench_serve.add_cli_args(sp)
        return p

    def run(self, args: argparse.Namespace) -> int:
        from vllm.benchmarks import serve as bench_serve
        return bench_serve.main(args)


SUBCOMMANDS: list[CLISubcommand] = [ServeSubcommand(), BenchSubcommand()]


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
