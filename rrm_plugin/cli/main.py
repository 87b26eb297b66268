"""`rrm` command line. Each sub-command lives in its own module with `add_parser` and `run`.

The parser is built without importing torch, SAELens or ViT-Prisma (`rrm --help` stays fast):
command modules import their heavy dependencies inside `run`. Before `run`, the module's
`check_args(args)` checks every option and path with the standard library alone and returns the
outputs the run writes; each is locked (`runs.lock`) so a second run on the same output is
refused. Errors a user can fix (bad file, unknown name, bad option value) are the
`rrm_plugin.errors.RRMUserError` family (and argparse's own): they print one line,
`rrm <command>: error: <message>`, and exit 2. Any other exception, a `ValueError` from deep in
a library included, is an internal error: its traceback and exit status 1. `--debug` shows every
traceback.
`--threads N` sets torch's CPU thread count for the run; this process is the command's own, so
`main` sets it, and no library function ever does (default: torch's own choice).
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import traceback
from contextlib import ExitStack
from pathlib import Path

from rrm_plugin.errors import RRMUserError

# Explicit registry: sub-command name -> module under rrm_plugin.cli.
COMMANDS: dict[str, str] = {
    "demo": "rrm_plugin.cli.demo",
    "train-model": "rrm_plugin.cli.train",
    "train-saes": "rrm_plugin.cli.train",
    "eval-saes": "rrm_plugin.cli.eval_saes",
    "baselines": "rrm_plugin.cli.baselines",
    "trace": "rrm_plugin.cli.trace",
    "faithfulness": "rrm_plugin.cli.faithfulness",
    "lens": "rrm_plugin.cli.lens",
    "features": "rrm_plugin.cli.features",
    "debias": "rrm_plugin.cli.debias",
    "list": "rrm_plugin.cli.listing",
    "view": "rrm_plugin.cli.view",
}

USER_ERROR_EXIT = 2


class OneLineParser(argparse.ArgumentParser):
    """argparse's errors as one line, `rrm <command>: error: <message>`, exit status 2."""

    def error(self, message: str):  # noqa: D401 - argparse's API
        self.exit(USER_ERROR_EXIT, f"{self.prog}: error: {message} (see `{self.prog} --help`)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(
        prog="rrm", description="Residual replacement model circuits for vision transformers"
    )
    parser.add_argument("--debug", action="store_true",
                        help="show Python tracebacks for every error (also after the command)")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, module_name in COMMANDS.items():
        importlib.import_module(module_name).add_parser(sub, name)
    parser.command_parsers = sub.choices
    for command_parser in sub.choices.values():
        command_parser.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                                    help="show Python tracebacks for every error")
        command_parser.add_argument(
            "--threads", type=thread_count, default=None, metavar="N",
            help="torch CPU threads for this run (default: torch's own, usually one per core; "
                 "the training recipes use their recorded count inside)")
    return parser


def thread_count(text: str) -> int:
    """argparse type of `--threads`: a whole number >= 1."""
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a whole number >= 1, got {text!r}") from None
    if n < 1:
        raise argparse.ArgumentTypeError(f"must be a whole number >= 1, got {n}")
    return n


def apply_threads(threads: int | None) -> None:
    """Set torch's CPU thread count for this process when `--threads` was given."""
    if threads is not None:
        import torch

        torch.set_num_threads(threads)


def _message(err: BaseException) -> str:
    # Messages may span lines (an upstream library's, quoted); the contract is one line.
    return " ".join(str(err).split()) or type(err).__name__


def _check_and_run(args: argparse.Namespace) -> int:
    """The command's cheap checks, then its run while holding the lock of every output."""
    check = getattr(importlib.import_module(COMMANDS[args.command]), "check_args", None)
    outputs: list[Path] = list(check(args) or []) if check is not None else []
    apply_threads(getattr(args, "threads", None))  # after the cheap checks: it imports torch
    with ExitStack() as stack:
        # Under torchrun every rank runs this; only rank 0 writes the outputs, so only it locks.
        if os.environ.get("RANK", "0") == "0":
            from rrm_plugin.runs.lock import output_lock

            for out in outputs:
                stack.enter_context(output_lock(out, command=args.command))
        return int(args.run(args) or 0)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra:  # reported by the command's own parser, so the message names the command
        parser.command_parsers[args.command].error(f"unrecognized arguments: {' '.join(extra)}")
    prog = f"rrm {args.command}"
    try:
        return _check_and_run(args)
    except SystemExit as err:  # a command's own `raise SystemExit("message")`
        if isinstance(err.code, str):
            if args.debug:
                raise
            print(f"{prog}: error: {' '.join(err.code.split())}", file=sys.stderr)
            return USER_ERROR_EXIT
        raise
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
    except RRMUserError as err:
        if args.debug:
            raise
        print(f"{prog}: error: {_message(err)}", file=sys.stderr)
        return USER_ERROR_EXIT
    except Exception:
        traceback.print_exc()
        print(f"{prog}: internal error (a bug in rrm-plugin; please report the traceback above)",
              file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
