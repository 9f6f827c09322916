"""The ``r2b`` command line: each subcommand is a thin call of a library function.

Subcommands register through ``COMMANDS``: a list of ``(add_parser, run)`` pairs, where
``add_parser(subparsers)`` adds the subcommand's parser and sets ``func=run`` on it.
A ``UserError`` becomes one line on stderr and its exit status (2; 3 for a diverged run, 128 +
the signal for a run stopped by SIGTERM/SIGINT), without a traceback. Command-line mistakes that
argparse finds (an unknown flag, ``--batch-size x``) are UserErrors too: one line naming the flag,
not argparse's usage block.
"""

from __future__ import annotations

import argparse
import sys

from r2b.errors import UserError


class _Parser(argparse.ArgumentParser):
    """An ``ArgumentParser`` whose errors are one-line ``UserError``s (subparsers inherit it)."""

    def error(self, message: str):
        raise UserError(f"{self.prog}: {message}; see `{self.prog} --help`")


def _add_summary(sub: argparse._SubParsersAction) -> None:
    from r2b.models import STAGES, STEMS, list_models

    p = sub.add_parser("summary", help="per-layer parameters, size, BOPs, FLOPs and OPs of a model")
    names = ", ".join(list_models())
    p.add_argument("model", help=f"registered model name ({names}) or checkpoint file")
    p.add_argument(
        "--input-size", type=int, default=None,
        help="square input side in pixels (default: the stem's; 224 imagenet, 32 cifar)",
    )  # fmt: skip
    p.add_argument("--num-classes", type=int, default=None, help="classifier outputs (1000)")
    p.add_argument("--stem", choices=STEMS, default=None)
    p.add_argument("--stage", choices=STAGES, default=None)
    p.add_argument("--width", type=float, default=None, help="width multiplier (1.0)")
    p.add_argument("--json", action="store_true", help="print only the totals as JSON")
    p.set_defaults(func=_run_summary)


def _run_summary(args: argparse.Namespace) -> int:
    from r2b.summary import summary_command

    print(summary_command(args))
    return 0


def _add_report(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("report", help="(re)write report.md and the plots of a training run")
    p.add_argument("run_dir", help="the --out folder of an `r2b train` run")
    p.set_defaults(func=_run_report)


def _run_report(args: argparse.Namespace) -> int:
    from r2b.report import write_report

    print(write_report(args.run_dir))
    return 0


def _command_table() -> list:
    """Subcommand parsers; optional parts register only when their module imports."""
    commands = [_add_summary, _add_report]
    try:
        from r2b.train.cli import add_eval_parser, add_train_parser

        commands += [add_train_parser, add_eval_parser]
    except ImportError:
        pass
    try:
        from r2b.packed.cli import add_bench_parser, add_export_parser

        commands += [add_export_parser, add_bench_parser]
    except ImportError:
        pass
    return commands


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="r2b",
        description="Binary neural networks with Real-to-Binary convolutions (ICLR 2020).",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for add in _command_table():
        add(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    argv = sys.argv[1:] if argv is None else argv
    if not argv:
        argv = ["train"] if "train" in parser._subparsers._group_actions[0].choices else ["-h"]
    try:
        args = parser.parse_args(argv)
        if not getattr(args, "func", None):
            parser.print_help()
            return 2
        return int(args.func(args) or 0)
    except UserError as err:
        message = " ".join(str(err).split("\n"))  # one line, whatever the message holds
        print(f"{err.label}: {message}", file=sys.stderr)
        return err.exit_code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
