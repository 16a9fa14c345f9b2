"""The `lpuc` command line.

Every subcommand is a function taking the parsed arguments and returning an exit
code. A user error (`LpucError`) is printed as one line, `lpuc: error: ...`,
with exit code 2; `--debug` shows the traceback instead.
"""

from __future__ import annotations

import argparse
import sys
import traceback
from pathlib import Path

from ir import LpucError
from ir.files import atomic_write, read_module
from ir.printer import print_module
from ir.verifier import verify

EXIT_USAGE = 2


def cmd_check(args) -> int:
    module = verify(read_module(args.file))
    text = print_module(module)
    if args.output:
        atomic_write(args.output, text.encode())
    else:
        sys.stdout.write(text)
    return 0


COMMANDS = {
    "check": (cmd_check, "parse and verify an IR file, and print it back",
              "Parse FILE.ir, run the verifier, and print the module in canonical form."),
}


def _add_check(p):
    p.add_argument("file", metavar="FILE.ir", help="IR text file")
    p.add_argument("-o", "--output", metavar="OUT.ir", help="write the canonical text here instead of stdout")


ARGUMENTS = {"check": _add_check}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lpuc",
        description="lpuc: a static-scheduling compiler for LPU-style inference chips.",
        epilog="Run `lpuc COMMAND --help` for a command's options.")
    parser.add_argument("--debug", action="store_true", help="show Python tracebacks on errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, (fn, summary, description) in COMMANDS.items():
        p = sub.add_parser(name, help=summary, description=description)
        p.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
        ARGUMENTS[name](p)
        p.set_defaults(func=fn)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except LpucError as e:
        if args.debug:
            traceback.print_exc()
        print(f"lpuc: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("lpuc: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
