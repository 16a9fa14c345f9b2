"""The `lpuc` command line.

Each subcommand is a function taking the parsed arguments and returning an exit
code, registered with `@command` together with a function adding its arguments.
A user error (`LpucError`) is printed as one line, `lpuc: error: ...`, with exit
code 2; `--debug` shows the traceback too. Results go to stdout, progress and
reports to stderr.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path


from ir import LpucError
from ir.evaluator import evaluate
from ir.files import atomic_write, read_npz, write_module, write_npz
from ir.printer import print_module

from backends import interpreter
from backends.lpu import read_lpu, schedule_sha256, write_lpu
from ir.machine import DEFAULT_MACHINE, load_machine

from .driver import compile_model, load_model, lpu_options, max_relative_error, read_ir
from .inputs import random_inputs
from .pipeline import CompileOptions

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


# --- compile, run, demo --------------------------------------------------------

def _compile_args(p):
    _add_model_args(p)
    p.add_argument("-o", "--output", metavar="FILE.lpu", required=True, help="the executable schedule to write")
    p.add_argument("--machine", default=DEFAULT_MACHINE, metavar="tsp-v1|FILE.toml",
                   help=f"machine description: a shipped name or a TOML file (default {DEFAULT_MACHINE})")
    p.add_argument("--chips", type=int, default=1, metavar="N", help="chips to compile for (default 1)")
    p.add_argument("--json", action="store_true", help="print one JSON object on stdout and nothing else")


@command("compile", "compile a model to an executable schedule (.lpu)",
         "Lower MODEL to machine instructions, allocate SRAM, schedule every instruction at an exact cycle, "
         "and write FILE.lpu. Prints cycles, the lower bound and gap, instructions, SRAM peak and compile time.",
         _compile_args)
def cmd_compile(args) -> int:
    if args.chips < 1:
        raise LpucError(f"--chips {args.chips}: the chip count must be at least 1")
    if args.chips != 1:
        raise LpucError(f"--chips {args.chips}: lpuc compiles for one chip so far (multi-chip partitioning "
                        "is not implemented yet)")
    start = time.perf_counter()
    options = CompileOptions()
    module, summary, machine_text = compile_model(args.model, args.machine, options, dict(args.shape))
    sha = write_lpu(args.output, module, machine_text, lpu_options(options, args.chips), summary.facts())
    seconds = time.perf_counter() - start
    # The SRAM peak over time, as `lpuc run` will measure it; the allocator's peak (its
    # footprint in program order) is reported beside it.
    stats = interpreter.schedule_stats(module, load_machine(args.machine))
    report = {
        "output": str(args.output), "machine": summary.machine, "chips": args.chips, "scheduler": options.scheduler,
        "cycles": summary.cycles, "lower_bound_cycles": summary.lower_bound, "gap": round(summary.gap, 6),
        "bound": summary.bound,
        "latency_us": round(summary.microseconds, 3), "instructions": summary.instructions,
        "sram_peak_bytes": stats.sram_peak_bytes, "sram_allocated_bytes": summary.sram_peak_bytes,
        "sram_image_bytes": summary.sram_image_bytes,
        "compile_seconds": round(seconds, 3), "schedule_sha256": sha,
    }
    if args.json:
        print(json.dumps(report))
        return 0
    print(f"{args.model} -> {args.output} ({summary.machine}, {args.chips} chip, {options.scheduler} scheduler)")
    _table([
        ("cycles", f"{summary.cycles:,}  ({summary.microseconds:.2f} us at {summary.clock_mhz:g} MHz)"),
        ("lower bound", f"{summary.lower_bound:,}  (gap {summary.gap:.1%}; bound: {summary.bound})"),
        ("instructions", f"{summary.instructions:,}"),
        ("SRAM peak", f"{_mib(stats.sram_peak_bytes)}  (allocated {_mib(summary.sram_peak_bytes)}, "
                      f"of which weights and constants {_mib(summary.sram_image_bytes)})"),
        ("compile", f"{seconds:.2f} s"),
        ("schedule sha256", sha),
    ])
    return 0


def _run_args(p):
    p.add_argument("program", metavar="FILE.lpu", help="an executable schedule written by `lpuc compile`")
    p.add_argument("--inputs", metavar="IN.npz", help="inputs keyed by the model's input names "
                   "(default: seeded random inputs valid for each input)")
    p.add_argument("-o", "--output", metavar="OUT.npz", help="write the outputs, keyed by the model's output names")
    p.add_argument("--seed", type=int, default=0, help="seed of the random inputs (default 0)")
    p.add_argument("--json", action="store_true", help="print one JSON object on stdout and nothing else")


@command("run", "run an executable schedule on the cycle-accurate interpreter",
         "Execute FILE.lpu cycle by cycle on a byte-level SRAM model, checking every hazard (units, SRAM ports, "
         "stream registers, read-before-write, overwrites, bounds), and print cycles, latency, utilization and "
         "SRAM peak.", _run_args)
def cmd_run(args) -> int:
    program = read_lpu(args.program)
    sha = schedule_sha256(args.program)
    if args.inputs:
        inputs = read_npz(args.inputs, "inputs")
    else:
        inputs = random_inputs(program.module, args.seed)
        if not args.json:
            say(f"using random inputs (seed {args.seed})")
    result = interpreter.run(program, inputs)
    stats = result.stats
    if args.output:
        write_npz(args.output, result.outputs)
    report = {
        "program": str(args.program), "machine": program.machine.name, "cycles": stats.cycles,
        "latency_us": round(stats.latency_us, 3), "instructions": stats.instructions,
        "sram_peak_bytes": stats.sram_peak_bytes, "schedule_sha256": sha,
        "utilization": {k: round(v, 6) for k, v in sorted(stats.class_utilization.items())},
        "busy_cycles": dict(sorted(stats.class_busy.items())),
        "outputs": {k: list(v.shape) for k, v in result.outputs.items()},
    }
    if args.json:
        print(json.dumps(report))
        return 0
    _print_run(stats, program.machine)
    if args.output:
        say(f"wrote {args.output}")
    return 0


def _print_run(stats, machine) -> None:
    _table([
        ("cycles", f"{stats.cycles:,}  ({stats.latency_us:.2f} us at {machine.clock_mhz:g} MHz)"),
        ("instructions", f"{stats.instructions:,}"),
        ("SRAM peak", _mib(stats.sram_peak_bytes)),
    ] + [(f"{cls} busy", f"{stats.class_busy[cls]:,} cycles  ({stats.class_utilization[cls]:.1%} utilization)")
         for cls in sorted(stats.class_busy)])


def _demo_args(p):
    p.add_argument("--machine", default=DEFAULT_MACHINE, metavar="tsp-v1|FILE.toml",
                   help=f"machine description (default {DEFAULT_MACHINE})")
    p.add_argument("--out-dir", default="lpuc-demo", metavar="DIR", help="where to write the .lpu (default lpuc-demo)")


DEMO_SAMPLE = "llama_prefill"


@command("demo", "compile, run and check the bundled Llama sample",
         "Compile samples/llama_prefill.onnx (a tiny Llama: GQA, RoPE, SwiGLU) for one chip, run it on the "
         "interpreter, and compare its logits with ONNX Runtime's. Exit 1 if they differ by more than 1e-4.",
         _demo_args)
def cmd_demo(args) -> int:
    samples = Path(__file__).resolve().parents[1] / "samples"
    model = samples / f"{DEMO_SAMPLE}.onnx"
    if not model.is_file():
        raise LpucError(f"bundled sample {model} not found: run the demo from a checkout (pip install -e .)")
    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    lpu = out_dir / f"{DEMO_SAMPLE}.lpu"
    say(f"compiling {model.name} for {args.machine} ...")
    cmd_compile(argparse.Namespace(model=str(model), shape=[], output=str(lpu), machine=args.machine, chips=1,
                                   json=False))
    inputs = read_npz(samples / f"{DEMO_SAMPLE}.inputs.npz", "inputs")
    say(f"running {lpu} on the interpreter ...")
    result = interpreter.run(read_lpu(lpu), inputs)
    _print_run(result.stats, load_machine(args.machine))
    reference, source = _reference_outputs(model, inputs, samples / f"{DEMO_SAMPLE}.outputs.npz")
    worst = max(max_relative_error(result.outputs[k], reference[k]) for k in reference)
    ok = worst <= 1e-4
    print(f"max relative error vs {source}: {worst:.2e} ({'OK' if ok else 'MISMATCH'}, tolerance 1e-4)")
    return 0 if ok else 1


def _reference_outputs(model: Path, inputs: dict, stored: Path) -> tuple[dict, str]:
    """ONNX Runtime's outputs when it is installed, else the stored ones it computed."""
    try:
        import onnxruntime as ort
    except ImportError:
        return read_npz(stored, "reference outputs"), "ONNX Runtime (stored reference outputs)"
    session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(names, inputs))), f"ONNX Runtime {ort.__version__}"


def _mib(n: int) -> str:
    return f"{n / 2**20:.2f} MiB"


def _table(rows) -> None:
    width = max(len(k) for k, _ in rows)
    for k, v in rows:
        print(f"  {k:<{width}}  {v}")


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
