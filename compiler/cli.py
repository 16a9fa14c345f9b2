"""The `lpuc` command line.

Each subcommand is a function taking the parsed arguments and returning an exit
code, registered with `@command` together with a function adding its arguments.
A user error (`LpucError`) is printed as one line, `lpuc: error: ...`, with exit
code 2; `--debug` shows the traceback too. Results go to stdout, progress and
reports to stderr.
"""

from __future__ import annotations

import argparse
import os
import sys
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ir import LpucError
from ir.evaluator import evaluate
from ir.files import atomic_write, read_npz, write_module, write_npz
from ir.printer import print_module

from .driver import load_model, read_ir
from .inputs import random_inputs

EXIT_USAGE = 2


@dataclass(frozen=True)
class Command:
    run: Callable[[argparse.Namespace], int]
    add_arguments: Callable[[argparse.ArgumentParser], None]
    summary: str
    description: str


COMMANDS: dict[str, Command] = {}


def command(name: str, summary: str, description: str, add_arguments):
    def register(fn):
        COMMANDS[name] = Command(fn, add_arguments, summary, description)
        return fn

    return register


def say(*parts) -> None:
    """Progress and reports: stderr, so stdout stays the command's result."""
    print(*parts, file=sys.stderr)


def _shape_arg(text: str) -> tuple[str, tuple[int, ...]]:
    name, sep, dims = text.partition("=")
    try:
        if not sep or not name:
            raise ValueError
        return name, tuple(int(d) for d in dims.split(",")) if dims else ()
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected NAME=D0,D1,... (e.g. input_ids=1,7), got {text!r}") from None


def _add_model_args(p, what="MODEL.onnx|MODEL.ir"):
    p.add_argument("model", metavar=what, help="an ONNX model, or an IR file written by `lpuc import`")
    p.add_argument("--shape", action="append", type=_shape_arg, default=[], metavar="NAME=D0,D1",
                   help="fix the shape of an ONNX input with symbolic dims (repeatable)")


# --- check -------------------------------------------------------------------

def _check_args(p):
    p.add_argument("file", metavar="FILE.ir", help="IR text file")
    p.add_argument("-o", "--output", metavar="OUT.ir", help="write the canonical text here instead of stdout")


@command("check", "parse and verify an IR file, and print it back",
         "Parse FILE.ir, run the verifier, and print the module in canonical form.", _check_args)
def cmd_check(args) -> int:
    module = read_ir(args.file)
    text = print_module(module)
    if args.output:
        atomic_write(args.output, text.encode())
    else:
        sys.stdout.write(text)
    return 0


# --- import ------------------------------------------------------------------

def _import_args(p):
    p.add_argument("model", metavar="MODEL.onnx", help="the ONNX model")
    p.add_argument("-o", "--output", metavar="MODEL.ir",
                   help="write the IR here (large constants to MODEL.blobs.npz beside it) instead of stdout")
    p.add_argument("--shape", action="append", type=_shape_arg, default=[], metavar="NAME=D0,D1",
                   help="fix the shape of an input with symbolic dims (repeatable)")


@command("import", "convert an ONNX model to graph IR",
         "Print the op-support report (stderr), then convert MODEL.onnx to graph-level IR. Unsupported ops are "
         "all listed at once. Shapes must be static; --shape fixes symbolic input dims.", _import_args)
def cmd_import(args) -> int:
    module, report = load_model(args.model, dict(args.shape))
    say(f"{args.model}: {report.summary()}; {len(module.ops)} ops, "
        f"{len(module.inputs)} inputs, {len(module.outputs)} outputs")
    if args.output:
        write_module(module, args.output)
        say(f"wrote {args.output}")
    else:
        sys.stdout.write(print_module(module))
    return 0


# --- eval --------------------------------------------------------------------

def _eval_args(p):
    _add_model_args(p)
    p.add_argument("--inputs", metavar="IN.npz", help="inputs keyed by the graph's input names "
                   "(default: seeded random inputs valid for each input)")
    p.add_argument("-o", "--output", metavar="OUT.npz", help="write the outputs, keyed by the graph's output names; "
                   "random inputs are saved beside them as OUT.inputs.npz")
    p.add_argument("--seed", type=int, default=0, help="seed of the random inputs (default 0)")


@command("eval", "run a model with the reference evaluator",
         "Evaluate MODEL (ONNX or IR) with lpuc's numpy reference evaluator and print a summary of each output.",
         _eval_args)
def cmd_eval(args) -> int:
    inputs = read_npz(args.inputs, "inputs") if args.inputs else None
    shapes = dict(args.shape)
    if inputs is not None and Path(args.model).suffix != ".ir":
        shapes = {**{k: tuple(v.shape) for k, v in inputs.items()}, **shapes}
    module, _ = load_model(args.model, _known_inputs(args.model, shapes))
    if inputs is None:
        inputs = random_inputs(module, args.seed)
        say(f"using random inputs (seed {args.seed})")
    outputs = evaluate(module, inputs)
    for name, a in outputs.items():
        stats = f" mean {a.mean():.6g} min {a.min():.6g} max {a.max():.6g}" if a.size and a.dtype.kind in "fiu" else ""
        print(f"{name}: {a.dtype}{list(a.shape)}{stats}")
    if args.output:
        write_npz(args.output, outputs)
        say(f"wrote {args.output}")
        if not args.inputs:
            path = Path(args.output)
            in_path = path.with_name(path.name.removesuffix(".npz") + ".inputs.npz")
            write_npz(in_path, inputs)
            say(f"wrote {in_path}")
    return 0


def _known_inputs(model: str, shapes: dict) -> dict:
    """Keep only shapes for inputs the model has, so extra npz keys are reported by the evaluator."""
    if not shapes or Path(model).suffix == ".ir":
        return shapes
    from .frontend import load_onnx

    names = {i.name for i in load_onnx(model).graph.input}
    return {k: v for k, v in shapes.items() if k in names}


# --- main --------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lpuc",
        description="lpuc: a static-scheduling compiler for LPU-style inference chips.",
        epilog="Run `lpuc COMMAND --help` for a command's options.")
    parser.add_argument("--debug", action="store_true", help="show Python tracebacks on errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, cmd in COMMANDS.items():
        p = sub.add_parser(name, help=cmd.summary, description=cmd.description)
        p.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
        cmd.add_arguments(p)
        p.set_defaults(func=cmd.run)
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
    except BrokenPipeError:  # stdout closed early, e.g. `lpuc import m.onnx | head`: not an error
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


if __name__ == "__main__":
    sys.exit(main())
