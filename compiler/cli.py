"""The `lpuc` command line.

Each subcommand is a function taking the parsed arguments and returning an exit
code, registered with `@command` together with a function adding its arguments.
A user error (`LpucError`) is printed as one line, `lpuc: error: ...`, with exit
code 2; `--debug` shows the traceback too. Results go to stdout, progress and
reports to stderr.
"""

from __future__ import annotations

import argparse
import gc
import io
import json
import os
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path


from ..ir import LpucError
from ..ir.evaluator import evaluate
from ..ir.files import atomic_write, atomic_write_with, check_regular, npz_arrays, read_npz, write_module, write_npz
from ..ir.printer import print_module

import numpy as np

from ..backends import interpreter
from ..backends.lpu import read_lpu, schedule_sha256, write_program
from ..ir.machine import DEFAULT_MACHINE


from .cache import cache_dir, chosen_dir
from .driver import (compile_cached, compile_program, load_model, max_relative_error, per_token, precision_error,
                     read_ir, state_fields)
from .serving import physical_bound, pipelined
from .inputs import nonfinite, random_inputs
from .partition import STRATEGIES
from .pipeline import SCHEDULERS, CompileOptions
from .precision import PRECISIONS, TOLERANCE, at_precision

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
    shapes = dict(args.shape)
    if args.inputs and Path(args.model).suffix != ".ir":  # (from the arrays' headers: nothing is loaded yet)
        shapes = {**{k: a.shape for k, a in npz_arrays(args.inputs, "inputs").items()}, **shapes}
    module, _ = load_model(args.model, _known_inputs(args.model, shapes))
    inputs = read_npz(args.inputs, "inputs", module) if args.inputs else None
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

    check_regular(model)  # (onnx.load opens it by name)
    names = {i.name for i in load_onnx(model).graph.input}
    return {k: v for k, v in shapes.items() if k in names}


# --- compile, run, demo --------------------------------------------------------

def _compile_args(p):
    _add_model_args(p)
    p.add_argument("-o", "--output", metavar="FILE.lpu", required=True, help="the executable schedule to write")
    p.add_argument("--machine", default=DEFAULT_MACHINE, metavar="tsp-v1|FILE.toml",
                   help=f"machine description: a shipped name or a TOML file (default {DEFAULT_MACHINE})")
    p.add_argument("--chips", type=int, metavar="N",
                   help="chips to compile for (default: the fewest whose SRAM holds the weights, rounded to a "
                        "size the machine's topology has; an IR file with its partition written: as written)")
    p.add_argument("--partition", choices=STRATEGIES, default="auto",
                   help="how to spread the model over chips: pipeline (contiguous layer ranges), tensor "
                        "(matmuls split by columns or rows), or auto: the faster of the two (default; an IR "
                        "file with its partition written, docs/partition.md: as written)")
    p.add_argument("--layout", metavar="tp=T,pp=P[,ep=E][,kv=S]|auto",
                   help="a deployment's layout instead of --partition: P pipeline stages of T chips each "
                        "(T=8: one node), every weight split over its stage's chips (MLPs column then row) and "
                        "attention by head groups; ep=E (<= T): each layer's experts in E groups, group j on "
                        "chip j of its stage; kv=S: each KV head in at most S copies (default: as many as the stage "
                        "has chips for); takes T*P chips. auto: the fastest of T = 1, 2, 4, 8 by a quick "
                        "schedule of each (printed). Default, for a model of repeated layers on two nodes or more: "
                        "stages of whole nodes, the widest that fits within a rack (T whole nodes, dividing "
                        "the chips), else --partition's")
    p.add_argument("--scheduler", choices=SCHEDULERS, default=CompileOptions.scheduler,
                   help="cpsat: OR-Tools CP-SAT warm-started from the list schedule, never worse than it, with "
                        "a proven lower bound (default); list: the list scheduler alone (fast)")
    p.add_argument("--effort", type=float, default=CompileOptions.effort, metavar="SECONDS",
                   help=f"cpsat: CP-SAT's deterministic time budget (not wall-clock; default "
                        f"{CompileOptions.effort:g})")
    p.add_argument("--workers", type=int, default=CompileOptions.workers, metavar="N",
                   help=f"cpsat: solver threads (default {CompileOptions.workers}, whatever the machine; the "
                        "schedule does not depend on it; layer templates are solved on one)")
    p.add_argument("--window", type=int, default=CompileOptions.window, metavar="N",
                   help=f"cpsat: instructions per CP-SAT model; a larger program is solved window by window, "
                        f"reusing the solution of any window equal to one solved before (default "
                        f"{CompileOptions.window})")
    p.add_argument("--max-windows", type=int, default=CompileOptions.max_windows, metavar="N",
                   help=f"cpsat: CP-SAT models solved at most (when the model repeats layers: over all its layer "
                        f"templates, the most repeated first); later windows keep the list schedule, which bounds "
                        f"the solver's time on large programs (default {CompileOptions.max_windows})")
    p.add_argument("--no-weights", action="store_true",
                   help="compile from shapes alone: weights (e.g. ONNX external data) are never read and the "
                        ".lpu holds none; run it with `lpuc run --timing-only`")
    p.add_argument("--state", default=CompileOptions.state, metavar="auto|PAST=PRESENT,...",
                   help="keep the KV cache resident in SRAM: auto pairs Hugging Face's past_key_values.N.key/value "
                        "with present.N.key/value; each pair becomes a persistent state written at the step's "
                        "position_ids (default none: the cache is an input and an output)")
    p.add_argument("--context", type=int, metavar="C",
                   help="a prefill graph's cache slots (its decode partner's context) with --state")
    _precision_arg(p)
    p.add_argument("--inputs", metavar="IN.npz", help="inputs on which a non-fp32 precision's error against the "
                   "fp32 reference is reported (default: seeded random inputs, --seed)")
    p.add_argument("--seed", type=int, default=0, help="seed of those random inputs (default 0)")
    _cache_args(p)
    p.add_argument("--json", action="store_true", help="print one JSON object on stdout and nothing else")


def _cache_args(p):
    p.add_argument("--no-cache", action="store_true",
                   help="compile afresh: neither take nor record a build-cache entry (`lpuc cache ls`; so does "
                        "$LPUC_NO_CACHE, unless --cache-dir is given)")
    _cache_dir_arg(p)


def _cache_dir_arg(p):
    p.add_argument("--cache-dir", metavar="DIR", help="the build cache's directory (default: $LPUC_CACHE_DIR, else "
                   "the platform's cache directory, e.g. ~/.cache/lpuc)")


def _precision_arg(p):
    p.add_argument("--precision", choices=PRECISIONS, default=CompileOptions.precision,
                   help=f"the weights' storage type and the MXM's arithmetic (default {CompileOptions.precision}, "
                        "the chip's float path: fp16 operands, fp32 accumulation). int8: weights per output "
                        "channel, activations per token, int32 accumulation; fp8: e4m3 weights, only where "
                        "the machine's MXM has an fp8 path (tsp-v1 has none); fp32: the exact reference "
                        "path (tsp-v1 has no fp32 matrix unit: timed at its fp16 rate)")


@command("compile", "compile a model to an executable schedule (.lpu)",
         "Partition MODEL over chips, lower it to machine instructions and chip-to-chip transfers, allocate "
         "SRAM, schedule every instruction and transfer at an exact cycle, and write FILE.lpu. Prints cycles, "
         "the lower bound and gap, instructions, SRAM peak, the partition, the precision (default "
         f"{CompileOptions.precision}) with its error against the fp32 reference, and compile time.",
         _compile_args)
def cmd_compile(args) -> int:
    _check_chips(args.chips)
    start = time.perf_counter()
    options = CompileOptions(chips=args.chips, partition=args.partition, layout=args.layout,
                             scheduler=args.scheduler, effort=args.effort, workers=args.workers, window=args.window,
                             max_windows=args.max_windows, state=args.state, context=args.context,
                             precision=args.precision)
    progress = _after_seconds(2.0)  # stderr, so a --json compile says what it does too
    report = compile_cached(args.model, args.machine, options, dict(args.shape), weights=not args.no_weights,
                            output=args.output, cache=chosen_dir(args.no_cache, args.cache_dir),
                            progress=progress, keep=_outlive)
    report["compile_seconds"] = round(time.perf_counter() - start, 3)
    report.pop("state_layout", None)  # for a partner's compile (a sweep's prefill), not for reading
    cost = _precision_cost(args, args.precision) if args.precision != "fp32" and not args.no_weights else None
    if cost:
        report["precision_error"] = cost
    if args.json:
        print(json.dumps(report))
        return 0
    _print_compile(args.model, report, options.scheduler)
    return 0


def _print_compile(model: str, r: dict, scheduler: str) -> None:
    """The compile's report as a table: everything in it comes from the --json report `r`."""
    chips = f"{r['chips']} chip" + ("s" if r["chips"] > 1 else "")
    print(f"{model} -> {r['output']} ({r['machine']}, {chips}, {scheduler} scheduler)")
    rows = [
        *([("chips", f"{r['chips']}: {r['chips_reason']}")] if r["chips_reason"] else []),
        ("cycles", f"{r['cycles']:,}  ({r['latency_us']:.2f} us at {r['clock_mhz']:g} MHz)"),
        ("lower bound", f"{r['lower_bound_cycles']:,}  (gap {r['gap']:.1%}; bound: {r['bound']})"),
        *([("CP-SAT", f"{r['solver_status']}, {r['solve_seconds']:.1f} s; the list schedule had "
                      f"{r['list_cycles']:,} cycles")] if scheduler == "cpsat" else []),
        ("instructions", f"{r['instructions']:,}" + (f"  ({r['transfers']:,} chip-to-chip transfers)"
                                                     if r["chips"] > 1 else "")),
        ("SRAM peak", f"{_mib(r['sram_peak_bytes'])}  (allocated {_mib(r['sram_allocated_bytes'])}, "
                      f"of which weights and constants {_mib(r['sram_image_bytes'])})" if r["chips"] == 1 else
                      f"{_mib(r['sram_peak_bytes'])} on the fullest chip  (allocated "
                      f"{_mib(r['sram_allocated_bytes'])}; weights and constants {_mib(r['sram_image_bytes'])} "
                      "on all chips)"),
    ]
    if r["chips"] > 1:
        tried = ", ".join(f"{s} {c if c.isdigit() else 'does not fit'}" for s, c in r["partition_candidates"].items())
        rows.append(("partition", r["partition"] + (f"  (cycles of each: {tried})" if tried else "")))
        lines = r["partition_chips"]
        shown = lines if len(lines) <= 8 else lines[:4] + [f"... {len(lines) - 8} more chips"] + lines[-4:]
        rows += [("", line) for line in shown]
    rows += _precision_rows(r["precision"], r["machine"], r.get("precision_error"))
    if r["model_weight_bytes"]:
        rows.append(("weight bytes", f"{_mib(r['weight_bytes'])} in SRAM, scales included ("
                                     f"{r['weight_bytes'] / r['model_weight_bytes']:.3f} of the model's "
                                     f"{_mib(r['model_weight_bytes'])})"))
    if not r["weights"]:
        rows.append(("weights", "none (compiled from shapes): run with `lpuc run --timing-only`"))
    rows += _per_token_rows(r)
    cache = r.get("cache")
    if cache:
        rows.append(("cache", f"{cache['status']} {cache['key'][:16]}" + (
            f"  (compiled in {cache['compiled_seconds']:.2f} s)" if cache["status"] == "hit" else "")))
    rows += [("compile", f"{r['compile_seconds']:.2f} s"), ("schedule sha256", r["schedule_sha256"])]
    _table(rows)


def _per_token_rows(report: dict) -> list[tuple[str, str]]:
    """The resident state and a decode step's rate, from a compile's or a run's --json report."""
    rows = [("state", f"{report['state_buffers']} resident buffers (KV cache), position from "
                      f"{report['position']}")] if report.get("state_buffers") else []
    if "tokens_per_s" in report:
        rows.append(("per token", f"{report['per_token_us']:.2f} us  ({report['tokens_per_s']:,.1f} tokens/s, "
                                  "one decode step)"))
    return rows


def _precision_cost(args, precision: str) -> dict:
    """The error of `precision` against the fp32 reference, on --inputs or seeded random inputs: from the
    evaluator at that precision, which the interpreter equals bit for bit."""
    graph, _ = load_model(args.model, dict(args.shape))
    inputs = read_npz(args.inputs, "inputs", graph) if args.inputs else random_inputs(graph, args.seed)
    cost = precision_error(graph, evaluate(at_precision(graph, precision), inputs), inputs)
    cost["inputs"] = args.inputs or f"random (seed {args.seed})"
    return cost


def _precision_rows(precision: str, machine: str, cost: dict | None) -> list[tuple[str, str]]:
    default = " (the default)" if precision == CompileOptions.precision else ""
    if precision == "fp32":
        return [("precision", f"fp32: the exact reference path; {machine} has no fp32 matrix unit "
                              "(matmuls timed at its fp16 rate)")]
    rows = [("precision", f"{precision}{default}: {_PRECISION_TEXT[precision]}")]
    if cost:
        line = f"max relative error {cost['max_relative_error']:.2e} on {cost['inputs']} inputs"
        if "top1_agreement" in cost:
            line += f"; top-1 of logits agrees at {cost['top1_agreement']:.1%} of positions"
        rows.append(("vs fp32", line))
    return rows


_PRECISION_TEXT = {
    "fp16": "f16 weights and matmul operands, fp32 accumulation",
    "int8": "int8 weights (per output channel) and activations (per token), int32 accumulation",
    "fp8": "e4m3 weights (per output channel), fp16 activations, fp32 accumulation",
}


def _check_chips(chips: int | None) -> None:
    if chips is not None and chips < 1:
        raise LpucError(f"--chips {chips}: the chip count must be at least 1")


def _after_seconds(delay: float):
    """A progress printer that stays quiet for the first `delay` seconds: short compiles print nothing."""
    start = time.perf_counter()

    def progress(line: str) -> None:
        elapsed = time.perf_counter() - start
        if elapsed >= delay:
            say(f"[{elapsed:6.1f} s] {line}")
    return progress


def _run_args(p):
    p.add_argument("program", metavar="FILE.lpu", help="an executable schedule written by `lpuc compile`")
    p.add_argument("--inputs", metavar="IN.npz", help="inputs keyed by the model's input names "
                   "(default: seeded random inputs valid for each input)")
    p.add_argument("-o", "--output", metavar="OUT.npz", help="write the outputs, keyed by the model's output names")
    p.add_argument("--seed", type=int, default=0, help="seed of the random inputs (default 0)")
    p.add_argument("--reference", metavar="MODEL.onnx|MODEL.ir",
                   help="the model the program was compiled from: a program of a precision other than fp32 "
                        "reports its outputs' error against this model's fp32 reference evaluator")
    p.add_argument("--trace", metavar="TRACE.json",
                   help="write the executed instructions as Chrome trace-event JSON "
                        "(ui.perfetto.dev, chrome://tracing)")
    p.add_argument("--timing-only", action="store_true",
                   help="execute the schedule without numerics: cycles, latency and every hazard check, no "
                        "outputs; for programs compiled with --no-weights or too large to run")
    p.add_argument("--strict", action="store_true",
                   help="refuse inputs holding NaN or Inf (exit 2); without it they run with a warning on stderr")
    p.add_argument("--json", action="store_true", help="print one JSON object on stdout and nothing else")


@command("run", "run an executable schedule on the cycle-accurate interpreter",
         "Execute FILE.lpu cycle by cycle on a byte-level SRAM model, checking every hazard (units, SRAM ports, "
         "stream registers, read-before-write, overwrites, bounds, chip-to-chip links), and print cycles, "
         "latency, utilization and SRAM peak (on many chips: per chip and per link).", _run_args)
def cmd_run(args) -> int:
    if args.trace:
        _check_output(args.trace, "--trace", (".json",))
    if args.timing_only and (args.inputs or args.output):
        raise LpucError(f"--timing-only computes no numbers: it takes no {'--inputs' if args.inputs else '-o'}")
    progress = _after_seconds(2.0)  # stderr: a large program takes minutes to load and run
    program = read_lpu(args.program, progress)
    sha = schedule_sha256(args.program)
    inputs = None
    if not args.timing_only:
        interpreter.require_weights(program)
        if args.inputs:
            inputs = read_npz(args.inputs, "inputs", program.module)
            _check_finite(inputs, args.inputs, args.strict)
        else:
            inputs = random_inputs(program.module, args.seed)
            if not args.json:
                say(f"using random inputs (seed {args.seed})")
    if args.reference and args.timing_only:
        raise LpucError("--timing-only computes no numbers: it takes no --reference")
    result = interpreter.run(program, inputs, timing_only=args.timing_only, progress=progress)
    _outlive(program, result)
    stats = result.stats
    bound = physical_bound(program, stats, result.occupancy)
    precision = program.options.get("precision", "fp32")
    cost = None
    if args.reference and precision != "fp32":
        shapes = {} if Path(args.reference).suffix == ".ir" else \
            _known_inputs(args.reference, {v.name: v.type.shape for v in program.module.inputs})
        reference, _ = load_model(args.reference, shapes)
        cost = precision_error(reference, result.outputs, inputs)
    if args.output:
        write_npz(args.output, result.outputs)
    if args.trace:
        from ..backends.trace import write_trace

        atomic_write_with(args.trace, lambda f: write_trace(f, program, result.trace, source="interpreter"))
    report = {
        "program": str(args.program), "machine": program.machine.name, "cycles": stats.cycles,
        "latency_us": round(stats.latency_us, 3), "instructions": stats.instructions,
        "sram_peak_bytes": stats.sram_peak_bytes, "schedule_sha256": sha,
        "utilization": {k: round(v, 6) for k, v in sorted(stats.class_utilization.items())},
        "busy_cycles": dict(sorted(stats.class_busy.items())),
        "outputs": {k: list(v.shape) for k, v in result.outputs.items()},
        "timing_only": args.timing_only, "chips": len(stats.chips),
        "per_chip": [c.as_json() for c in stats.chips],
        "links": [{"link": x.name, "bytes": x.bytes, "busy_cycles": x.busy, "transfers": x.transfers}
                  for x in stats.links],
        "transfer_bytes": stats.transfer_bytes, "link_wait_cycles": stats.link_wait_cycles,
        "host_bytes": stats.host_bytes, **state_fields(program), **per_token(program),
        **({"pipelined": served} if (served := pipelined(program, stats)) else {}),
        "physical_bound": bound,
        "precision": precision, **({"precision_error": cost} if cost else {}),
    }
    if args.trace:
        report["trace"] = str(args.trace)
    if args.json:
        print(json.dumps(report))
        return 0
    if args.timing_only:
        say("timing only: every hazard checked, no numerics, no outputs")
    extra = (_chip_rows(stats) if len(stats.chips) > 1 else []) + _per_token_rows(report)
    extra.append(("physical bound", f"{bound['physical_bound_cycles']:,} cycles  (MXM work of each stage's busiest "
                                    f"chip {bound['mxm_cycles']:,} + exchanges inside stages "
                                    f"{bound['exchange_cycles']:,} + hand-offs {bound['hand_off_cycles']:,}); "
                                    f"the schedule is {bound['gap']:.1%} above it"))
    served = pipelined(program, stats)
    if served and served["stages"] > 1:
        extra.append(("pipelined", f"at most {served['aggregate_tokens_per_s']:,.1f} tokens/s in all, "
                                   f"{served['in_flight']} sequences in flight ({served['stages']} stages; the "
                                   f"busiest resource holds {served['busiest_cycles']:,} cycles a step)"))
    if precision != "fp32" and not args.timing_only:
        if cost:
            cost["inputs"] = args.inputs or f"random (seed {args.seed})"
        extra += _precision_rows(precision, program.machine.name, cost) if cost else \
            [("precision", f"{precision}: pass --reference MODEL to see its error against the fp32 reference")]
    _print_run(stats, program.machine, extra)
    for path in (args.output, args.trace):
        if path:
            say(f"wrote {path}")
    return 0


def _check_finite(inputs: dict, path: str, strict: bool) -> None:
    """NaN or Inf in an input makes NaN outputs, silently: say so (refuse it under --strict)."""
    for name, (bad, size) in nonfinite(inputs).items():
        line = f"{path}: input {name} holds {bad:,} NaN or Inf values (of {size:,})"
        if strict:
            raise LpucError(f"{line} (--strict)")
        say(f"lpuc: warning: {line}; its outputs may be NaN (--strict refuses such inputs)")


def _print_run(stats, machine, extra=()) -> None:
    _table([
        ("cycles", f"{stats.cycles:,}  ({stats.latency_us:.2f} us at {machine.clock_mhz:g} MHz)"),
        ("instructions", f"{stats.instructions:,}"),
        ("SRAM peak", _mib(stats.sram_peak_bytes)),
    ] + [(f"{cls} busy", f"{stats.class_busy[cls]:,} cycles  ({stats.class_utilization[cls]:.1%} utilization)")
         for cls in sorted(stats.class_busy)] + list(extra))


def _chip_rows(stats) -> list[tuple[str, str]]:
    """A many-chip run in a handful of rows: each chip (or the busiest and the fullest of many), the
    links' totals and busiest three, the cycles spent only waiting on links."""
    def util(c):
        return "  ".join(f"{cls} {u:.1%}" for cls, u in c.class_utilization.items())

    if len(stats.chips) <= 4:
        rows = [(f"chip {c.chip}", f"{util(c)}  SRAM peak {_mib(c.sram_peak_bytes)}  ({c.instructions:,} instr.)")
                for c in stats.chips]
    else:
        busiest = max(stats.chips, key=lambda c: (sum(c.class_busy.values()), -c.chip))
        fullest = max(stats.chips, key=lambda c: (c.sram_peak_bytes, -c.chip))
        rows = [("chips", f"{len(stats.chips)}; busiest chip {busiest.chip}: {util(busiest)}; "
                          f"SRAM peak {_mib(fullest.sram_peak_bytes)} on chip {fullest.chip}")]
    top = sorted(stats.links, key=lambda x: (-x.busy, x.name))[:3]
    share = (lambda b: b / stats.cycles) if stats.cycles else (lambda b: 0.0)
    rows.append(("links", f"{len(stats.links)} used, {stats.transfer_bytes:,} B sent"
                 + ("; busiest " + ", ".join(f"{x.name} {x.bytes:,} B {x.busy:,} cycles ({share(x.busy):.1%})"
                                             for x in top) if top else "")))
    rows.append(("link wait", f"{stats.link_wait_cycles:,} cycles ({share(stats.link_wait_cycles):.1%}): "
                              "transfers in flight, every other unit idle"))
    return rows


# --- generate -------------------------------------------------------------------

def _generate_args(p):
    p.add_argument("decode", metavar="DECODE.onnx|DECODE.lpu",
                   help="the decoder-with-past (Hugging Face layout), or a .lpu compiled with --state")
    p.add_argument("--prompt", required=True, metavar="PROMPT.npy", help="the prompt's token ids, int [1, L]")
    p.add_argument("--tokens", type=int, required=True, metavar="N", help="new tokens to generate")
    p.add_argument("--prefill", metavar="PREFILL.onnx|PREFILL.lpu",
                   help="the prefill graph (its present.* outputs fill the cache); without it the prompt goes "
                        "through the decode step token by token")
    p.add_argument("-o", "--output", metavar="TOKENS.npy", help="write the new token ids, int64 [1, N]")
    p.add_argument("--machine", default=DEFAULT_MACHINE, metavar="tsp-v1|FILE.toml",
                   help=f"machine description (default {DEFAULT_MACHINE})")
    p.add_argument("--chips", type=int, metavar="N", help="chips to compile for (default: as `lpuc compile`)")
    p.add_argument("--partition", choices=STRATEGIES, default="auto", help="as for `lpuc compile`")
    p.add_argument("--layout", metavar="tp=T,pp=P[,ep=E][,kv=S]|auto", help="as for `lpuc compile`")
    p.add_argument("--scheduler", choices=SCHEDULERS, default=CompileOptions.scheduler, help="as for `lpuc compile`")
    p.add_argument("--effort", type=float, default=CompileOptions.effort, metavar="SECONDS",
                   help="as for `lpuc compile`")
    _precision_arg(p)
    p.add_argument("--timing-only", action="store_true",
                   help="time the generation from the schedules without numerics (models compiled from shapes, "
                        "weights never read): each program runs once, every hazard checked; no tokens")
    p.add_argument("--json", action="store_true", help="print one JSON object on stdout and nothing else")


@command("generate", "generate tokens greedily with the KV cache resident in SRAM",
         "Compile DECODE (and PREFILL) with the KV cache as resident state, feed the prompt, generate N tokens "
         "greedily (argmax on the host) on the cycle-accurate interpreter, and print the tokens, time to first "
         "token, per-token latency, tokens/s and the bytes a step moves across the host.", _generate_args)
def cmd_generate(args) -> int:
    from .generate import compile_generation, generate

    _check_chips(args.chips)
    if args.output:
        _check_output(args.output, "-o", (".npy",))
    if args.timing_only and args.output:
        raise LpucError("--timing-only computes no tokens: it takes no -o")
    prompt = _read_prompt(args.prompt)
    step, prefill = compile_generation(args.decode, args.prefill, args.machine, weights=not args.timing_only,
                                       chips=args.chips, partition=args.partition, layout=args.layout,
                                       scheduler=args.scheduler, effort=args.effort, precision=args.precision)
    if not args.timing_only:
        interpreter.require_weights(step)
    result = generate(step, prompt, args.tokens, prefill, timing_only=args.timing_only)
    if args.output:
        buf = io.BytesIO()
        np.save(buf, result.tokens)
        atomic_write(args.output, buf.getvalue())
    report = result.report()
    if args.json:
        print(json.dumps(report))
        return 0
    if not args.timing_only:
        print(" ".join(str(t) for t in result.tokens[0]))
    _table([
        ("prompt", f"{result.prompt_tokens} tokens" + (" (prefill)" if prefill is not None else " (decode steps)")),
        ("time to first token", f"{result.ttft_us:,.2f} us"),
        ("per token", f"{result.per_token_us:,.2f} us  ({result.decode_cycles:,} cycles, one decode step)"),
        ("tokens/s", f"{result.tokens_per_s:,.1f}"),
        ("host bytes / token", f"{result.host_bytes_per_token:,} B  (the KV cache stays in SRAM)"),
        ("cache", f"{result.context} slots on {result.chips} chip" + ("s" if result.chips > 1 else "")),
    ])
    if args.output:
        say(f"wrote {args.output}")
    return 0


def _read_prompt(path: str):
    """The prompt's token ids from an .npy file: int [1, L] or [L]."""
    check_regular(path)
    try:
        with open(path, "rb") as f:
            prompt = np.load(f, allow_pickle=False)
    except (ValueError, OSError, EOFError) as e:
        raise LpucError(f"{path}: not a readable .npy array ({e})") from None
    if prompt.ndim not in (1, 2) or prompt.dtype.kind not in "iu" or prompt.size > 1 << 20:
        raise LpucError(f"{path}: a prompt is int token ids [1, L], got {prompt.dtype}{list(prompt.shape)}")
    return prompt


def _demo_args(p):
    p.add_argument("--machine", default=DEFAULT_MACHINE, metavar="tsp-v1|FILE.toml",
                   help=f"machine description (default {DEFAULT_MACHINE})")
    p.add_argument("--out-dir", default="lpuc-demo", metavar="DIR",
                   help="where to write the .lpu and report.html (default lpuc-demo)")


DEMO_SAMPLE = "llama_prefill"


@command("demo", "compile, run and check the bundled Llama sample",
         "Compile samples/llama_prefill.onnx (a tiny Llama: GQA, RoPE, SwiGLU) for one chip, run it on the "
         "interpreter, compare its logits with ONNX Runtime's (exit 1 if they differ by more than 1e-4), and "
         "write the HTML report of the run to DIR/report.html.",
         _demo_args)
def cmd_demo(args) -> int:
    samples = Path(__file__).resolve().parents[1] / "samples"
    model = samples / f"{DEMO_SAMPLE}.onnx"
    if not model.is_file():
        raise LpucError(f"bundled sample {model} not found: reinstall lpuc")
    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    lpu = out_dir / f"{DEMO_SAMPLE}.lpu"
    say(f"compiling {model.name} for {args.machine} ...")
    program = compile_program(model, args.machine, chips=1, progress=_after_seconds(2.0))
    write_program(lpu, program)
    facts = program.manifest["summary"]
    print(f"{model.name} -> {lpu}: {program.cycles:,} cycles (lower bound {facts['lower_bound_cycles']:,}), "
          f"{facts['instructions']:,} instructions")
    inputs = read_npz(samples / f"{DEMO_SAMPLE}.inputs.npz", "inputs")
    say(f"running {lpu} on the interpreter ...")
    result = interpreter.run(program, inputs)
    _print_run(result.stats, program.machine)
    reference, source = _reference_outputs(model, inputs, samples / f"{DEMO_SAMPLE}.outputs.npz")
    worst = max(max_relative_error(result.outputs[k], reference[k]) for k in reference)
    precision = program.options["precision"]
    ok = worst <= TOLERANCE[precision]
    print(f"max relative error vs {source}: {worst:.2e} ({'OK' if ok else 'MISMATCH'}, tolerance "
          f"{TOLERANCE[precision]:g} at {precision}, the default precision)")
    report = out_dir / "report.html"
    atomic_write(report, _render_html(program, result).encode())
    print(f"report: {report}")
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


# --- sweep ---------------------------------------------------------------------

def _int_list(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected comma-separated chip counts, e.g. 72,144") from None
    if any(v < 1 for v in values):
        raise argparse.ArgumentTypeError(f"{text!r}: a chip count must be at least 1")
    return values


def _names(text: str) -> tuple[str, ...]:
    return tuple(v for v in text.split(",") if v)


def _sweep_args(p):
    p.add_argument("model", metavar="MODEL.onnx|MODEL.ir", help="the model (compiled from shapes alone: a sweep "
                   "times schedules, it never reads weights)")
    p.add_argument("--chips", type=_int_list, required=True, metavar="N,N,...", help="chip counts, e.g. 72,144,288")
    p.add_argument("--layout", action="append", metavar="default|auto|tp=T,pp=P[,ep=E][,kv=S]",
                   help="a layout to try (repeat the option for several; default: lpuc's default for each chip "
                        "count); a fixed layout applies where its T*P equals the chips")
    p.add_argument("--precision", type=_names, default=(CompileOptions.precision,), metavar="P,P,...",
                   help=f"precisions ({', '.join(PRECISIONS)}; default {CompileOptions.precision})")
    p.add_argument("--machine", type=_names, default=(DEFAULT_MACHINE,), metavar="M,M,...",
                   help=f"machines: shipped names or TOML files (default {DEFAULT_MACHINE})")
    p.add_argument("--prefill", metavar="PREFILL.onnx|PREFILL.ir", help="for a decode step: its prefill graph, "
                   "compiled beside each point (laid out as the step, its cache where the step keeps it, as "
                   "`lpuc generate --prefill` does) for the time to first token")
    p.add_argument("--tokens", type=int, metavar="N", help="for a decode step: also the time to generate N tokens "
                   "at batch 1 (N steps of its schedule)")
    p.add_argument("--effort", type=float, metavar="SECONDS", help="CP-SAT's deterministic time budget per point "
                   f"(default {CompileOptions.effort:g}, as `lpuc compile`)")
    p.add_argument("--jobs", type=int, metavar="N", help="local worker processes (default: the machine's cores)")
    p.add_argument("--ray", metavar="auto|ADDRESS", help="run each point as a Ray task: auto joins the cluster "
                   "`ray start` made, or starts a local one; ADDRESS: that cluster (needs the cluster extra: "
                   "pip install 'lpuc[cluster]')")
    _cache_args(p)
    p.add_argument("--json", action="store_true", help="print one JSON object per point (a line each) and nothing "
                   "else; each object's `wall` holds its timings, the rest is the same in any job count")
    p.add_argument("--csv", metavar="OUT.csv", help="also write the rows as CSV")
    p.add_argument("--html", metavar="OUT.html", help="also write a self-contained page: the table and plots "
                   "(latency and tokens/s against chips, MXM utilization per chip), viewable offline")


@command("sweep", "compile and time a model at many chip counts, layouts, precisions and machines",
         "Every combination of --chips, --layout, --precision and --machine is compiled (the build cache "
         "first: `lpuc cache`) and run timing-only, every hazard checked, on local worker processes or on a "
         "Ray cluster. Prints a line per finished point (with an estimate of the time left) on stderr and "
         "the table on stdout: chips, the layout chosen, precision, machine, cycles, latency, tokens/s of a "
         "decode step (with --prefill, its time to first token), SRAM peak, the gap to the physical bound, compile seconds and whether the cache had "
         "the point. A failed point gets its row with its one-line error (exit 1 when every point failed). Ctrl-C "
         "stops the sweep; finished points stay in the cache.", _sweep_args)
def cmd_sweep(args) -> int:
    from .sweep import csv_text, html_page, sweep, table

    for precision in args.precision:
        if precision not in PRECISIONS:
            raise LpucError(f"--precision {precision}: unknown (expected {', '.join(PRECISIONS)})")
    if args.jobs is not None and args.jobs < 1:
        raise LpucError(f"--jobs {args.jobs}: at least 1")
    if args.tokens is not None and args.tokens < 1:
        raise LpucError(f"--tokens {args.tokens}: at least 1")
    for path, option, suffix in ((args.csv, "--csv", ".csv"), (args.html, "--html", ".html")):
        if path:
            _check_output(path, option, (suffix,))
    layouts = tuple(None if lay == "default" else lay for lay in (args.layout or ["default"]))
    rows = sweep(args.model, args.chips, layouts, args.precision, args.machine, tokens=args.tokens, jobs=args.jobs,
                 ray=args.ray, cache=chosen_dir(args.no_cache, args.cache_dir), effort=args.effort,
                 prefill=args.prefill, progress=say)
    if args.csv:
        atomic_write(args.csv, csv_text(rows).encode())
    if args.html:
        atomic_write(args.html, html_page(rows, args.model).encode())
    if args.json:
        for r in rows:
            print(json.dumps(r))
    else:
        print(table(rows))
        hits = sum(r["wall"].get("cached", False) for r in rows)
        failed = sum("error" in r for r in rows)
        print(f"{len(rows)} points: {hits} from the cache, {len(rows) - hits - failed} computed, {failed} failed")
    for path in (args.csv, args.html):
        if path:
            say(f"wrote {path}")
    return 1 if rows and all("error" in r for r in rows) else 0


# --- cache ---------------------------------------------------------------------

def _cache_cmd_args(p):
    p.add_argument("action", choices=("ls", "clear"), help="ls: list the entries; clear: remove them all")
    _cache_dir_arg(p)
    p.add_argument("--json", action="store_true", help="print one JSON object on stdout and nothing else")


@command("cache", "list or clear the build cache",
         "`lpuc compile` and `lpuc sweep` keep each program they compile in the build cache, keyed by the "
         "model's content, the options that shape the schedule, the machine file's text and lpuc's version "
         "and source, and reuse it for the same compile (byte-identical to a fresh one; `--no-cache` "
         "bypasses it). ls: one line an entry (key, model, machine, chips, layout, precision, cycles, size); "
         "clear: remove every entry.", _cache_cmd_args)
def cmd_cache(args) -> int:
    from .cache import clear, entries

    directory = cache_dir(args.cache_dir)
    if args.action == "clear":
        count, freed = clear(directory)
        if args.json:
            print(json.dumps({"cache_dir": str(directory), "removed": count, "bytes_freed": freed}))
        else:
            print(f"{directory}: removed {count} entr{'y' if count == 1 else 'ies'}, {_mib(freed)} freed")
        return 0
    found = entries(directory)
    if args.json:
        print(json.dumps({"cache_dir": str(directory), "entries": [
            {"key": e.key, "bytes": e.bytes, "ran": e.run is not None,
             **{k: e.report[k] for k in ("module", "machine", "chips", "partition", "precision", "cycles",
                                         "weights", "compile_seconds") if k in e.report}} for e in found]}))
        return 0
    total = sum(e.bytes for e in found)
    print(f"{directory}: {len(found)} entr{'y' if len(found) == 1 else 'ies'}, {_mib(total)}")
    for e in found:
        r = e.report
        print(f"  {e.key[:16]}  {r.get('module', '?'):<24} {r['machine']:<10} {r['chips']:>5} chips  "
              f"{r['partition']:<18} {r['precision']:<5} {r['cycles']:>12,} cycles  {_mib(e.bytes):>12}")
    return 0


# --- viz -----------------------------------------------------------------------

DOT_FORMATS = (".svg", ".png", ".pdf", ".dot")


def _viz_args(p):
    p.add_argument("model", metavar="MODEL.onnx|FILE.ir|FILE.lpu",
                   help="a model (its graph), an IR file, or an executable schedule (its instructions)")
    p.add_argument("--dot", metavar="OUT.svg|OUT.png|OUT.pdf|OUT.dot",
                   help="the dataflow graph, rendered by Graphviz's `dot` (or its DOT source for .dot)")
    p.add_argument("--perfetto", metavar="TRACE.json|TRACE.json.gz",
                   help="the scheduled timeline as Chrome trace-event JSON (ui.perfetto.dev, chrome://tracing); "
                        ".json.gz: gzip-compressed, as both open it")
    p.add_argument("--trace-chips", type=_chip_set, metavar="0-7,12",
                   help="--perfetto: only these chips' tracks (default: every chip)")
    p.add_argument("--html", metavar="REPORT.html", help="the self-contained HTML report of the schedule")
    p.add_argument("--detail-chips", type=_chip_set, metavar="0-7,12",
                   help="--html beyond 8 chips: the chips whose instructions' operands, results and SRAM words "
                        "the page holds; every chip's timing is there (default: as many chips as keep the page "
                        "under 10 MB, those the critical path spends the most cycles on first)")
    p.add_argument("--collapse", action=argparse.BooleanOptionalAction, default=None,
                   help="draw repeated layers once, as one 'layer × N' cluster (default: when there are "
                        "3 or more)")
    p.add_argument("--machine", default=DEFAULT_MACHINE, metavar="tsp-v1|FILE.toml",
                   help="machine to compile a model for, for --perfetto and --html (default "
                        f"{DEFAULT_MACHINE}; a .lpu names its own)")
    p.add_argument("--shape", action="append", type=_shape_arg, default=[], metavar="NAME=D0,D1",
                   help="fix the shape of an ONNX input with symbolic dims (repeatable)")


def _chip_set(text: str) -> tuple[int, ...]:
    """`0-7,12` -> (0, 1, ..., 7, 12)."""
    chips = set()
    for part in text.split(","):
        first, dash, last = part.partition("-")
        if not (first.isdigit() and (not dash or last.isdigit())) or (dash and int(last) < int(first)):
            raise argparse.ArgumentTypeError(f"{text!r}: expected chips and ranges, e.g. 0-7,12")
        chips.update(range(int(first), int(last if dash else first) + 1))
    return tuple(sorted(chips))


# --- verify ---------------------------------------------------------------------

def _workers_list(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(w) for w in text.split(","))  # counts below 1: refused by verify_determinism
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected thread counts like 1,2,8, got {text!r}") from None


def _verify_args(p):
    p.add_argument("model", metavar="MODEL.onnx|MODEL.ir", help="the model to compile and run")
    p.add_argument("--chips", type=int, metavar="N", help="chips to compile for (default: as `lpuc compile`)")
    p.add_argument("--machine", default=DEFAULT_MACHINE, metavar="tsp-v1|FILE.toml",
                   help=f"machine description (default {DEFAULT_MACHINE})")
    p.add_argument("--scheduler", choices=SCHEDULERS, default=CompileOptions.scheduler,
                   help=f"the scheduler to verify (default {CompileOptions.scheduler})")
    p.add_argument("--partition", choices=STRATEGIES, default="auto", help="as `lpuc compile` (default auto)")
    p.add_argument("--state", metavar="auto|PAST=PRESENT,...",
                   help="as `lpuc compile`: the KV cache resident; each run is then the first steps of a new "
                        "generation, each step's outputs compared")
    _precision_arg(p)
    p.add_argument("--repeat", type=int, default=3, metavar="K",
                   help="compiles, each in a fresh process, and runs of each program (default 3)")
    p.add_argument("--workers", type=_workers_list, default=(1, 2, 8), metavar="1,2,8",
                   help="solver thread counts the compiles cycle through (default 1,2,8)")
    p.add_argument("--inputs", metavar="IN.npz",
                   help="inputs of the runs (default: MODEL.inputs.npz beside the model, else seeded random ones)")
    p.add_argument("--keep", metavar="DIR", help="keep the compiled programs in DIR")
    p.add_argument("--json", action="store_true", help="print one JSON object on stdout and nothing else")


@command("verify", "check that compiles and runs are deterministic",
         "Compile MODEL K times, each in a fresh process under another PYTHONHASHSEED and --workers count, "
         "run each program K times on the interpreter, and check that every .lpu is byte-identical, every "
         "run takes the same cycles and gives bitwise-identical outputs. Exit 0 when deterministic, 1 when "
         "not (naming the first divergence, e.g. the first differing instruction), 2 on bad input.",
         _verify_args)
def cmd_verify(args) -> int:
    from .verify import verify_determinism

    _check_chips(args.chips)
    options = {"chips": args.chips, "machine": args.machine, "scheduler": args.scheduler,
               "partition": args.partition, "precision": args.precision,
               **({"state": args.state} if args.state else {})}
    verdict = verify_determinism(args.model, repeat=args.repeat, workers=args.workers, inputs=args.inputs,
                                 keep=args.keep, progress=None if args.json else say, **options)
    if args.json:
        print(json.dumps(verdict.facts()))
    else:
        print("\n".join(verdict.lines()))
    return 0 if verdict.deterministic else 1


@command("viz", "draw a model's graph or a schedule's timeline",
         "Write the dataflow graph (--dot: ops coloured by unit class, edges labelled with shapes, repeated "
         "layers collapsible), the timeline as Chrome trace-event JSON (--perfetto: a track per unit, SRAM "
         "slice port and link, SRAM occupancy counters) and/or the HTML report (--html). A model or IR file "
         "is compiled first for --perfetto and --html. Without Graphviz's `dot` program, --dot writes the "
         "DOT source beside OUT and says how to install it.", _viz_args)
def cmd_viz(args) -> int:
    path = Path(args.model)
    if path.suffix not in (".onnx", ".ir", ".lpu"):
        raise LpucError(f"{path}: expected an ONNX model (.onnx), an IR file (.ir) or a schedule (.lpu)")
    if not path.is_file():
        raise LpucError(f"{path}: no such file")
    if not (args.dot or args.perfetto or args.html):
        raise LpucError("nothing to draw: give --dot OUT.svg, --perfetto TRACE.json and/or --html REPORT.html")
    if args.dot:
        _check_output(args.dot, "--dot", DOT_FORMATS)
    if args.perfetto:
        _check_output(args.perfetto, "--perfetto", (".json", ".gz"))
        if args.perfetto.lower().endswith(".gz") and not args.perfetto.lower().endswith(".json.gz"):
            raise LpucError(f"--perfetto {args.perfetto}: expected TRACE.json or TRACE.json.gz")
    elif args.trace_chips:
        raise LpucError("--trace-chips selects the chips of --perfetto's trace: give --perfetto TRACE.json too")
    if args.html:
        _check_output(args.html, "--html", (".html", ".htm"))
    elif args.detail_chips:
        raise LpucError("--detail-chips selects the chips of --html's report: give --html REPORT.html too")
    program = module = None
    progress = _after_seconds(2.0)  # one clock for reading, the report and the trace: a large program takes minutes
    if path.suffix == ".lpu":
        if args.shape:
            raise LpucError("--shape applies to ONNX models; a .lpu program has static shapes already")
        program = read_lpu(path, progress, described=bool(args.html or args.perfetto))
        module = program.module
    elif args.dot:
        module, _ = load_model(path, dict(args.shape))
    if (args.perfetto or args.html) and program is None:
        say(f"compiling {path} for {args.machine} ...")
        program = compile_program(path, args.machine, input_shapes=dict(args.shape))
        module = module or program.module
    outputs = []  # (path, bytes): all made before any is written
    if args.dot:
        outputs += _graph_outputs(module, Path(args.dot),
                                  chips=program.target.chips if path.suffix == ".lpu" else None,
                                  collapse=args.collapse)
    for option, chips in (("--trace-chips", args.trace_chips if args.perfetto else None),
                          ("--detail-chips", args.detail_chips)):
        if chips and chips[-1] >= program.target.chips:
            n = program.target.chips
            raise LpucError(f"{option}: the program has {n} chip{'s' if n > 1 else ''} (0-{n - 1}), not chip {chips[-1]}")
    if args.html:
        outputs.append((Path(args.html), _render_html(program, progress=progress,
                                                      detail_chips=args.detail_chips).encode()))
    written = []
    if args.perfetto:  # streamed chip by chip (a trace of hundreds of chips is never held whole), atomically
        from ..backends.trace import write_trace

        out = Path(args.perfetto)
        atomic_write_with(out, lambda f: write_trace(f, program, chips=args.trace_chips,
                                                     compress=args.perfetto.lower().endswith(".gz"),
                                                     progress=progress))
        written.append((out, out.stat().st_size))
    for out, data in outputs:
        atomic_write(out, data)
        written.append((out, len(data)))
    for out, size in written:
        say(f"wrote {out} ({_size(size)}): {_OPEN_HINT.get(out.suffix.lower(), 'open it with its viewer')}")
    return 0


_OPEN_HINT = {
    ".html": "open it in a browser (it works offline)",
    ".json": "open it at ui.perfetto.dev (the page reads it in your browser) or chrome://tracing",
    ".gz": "open it at ui.perfetto.dev (the page reads it in your browser) or chrome://tracing",
    ".svg": "open it in a browser", ".png": "an image", ".pdf": "a PDF", ".dot": "Graphviz's source: dot -Tsvg",
}


def _size(n: int) -> str:
    return f"{n / 2**20:.1f} MB" if n >= 2**20 else f"{n / 1024:.1f} KB" if n >= 1024 else f"{n} bytes"


def _graph_outputs(module, out: Path, chips, collapse) -> list[tuple[Path, bytes]]:
    """The graph rendered in OUT's format; without `dot`, its DOT source beside OUT (and how to get `dot`)."""
    import graphviz

    from ..backends.graph import graph_dot

    graph = graph_dot(module, chips=chips, collapse=collapse)
    if out.suffix == ".dot":
        return [(out, graph.source.encode())]
    try:
        return [(out, graph.pipe(format=out.suffix[1:]))]
    except graphviz.ExecutableNotFound:
        source = out.with_suffix(".dot")
        say(f"lpuc: Graphviz's `dot` program was not found, so {out} was not rendered; writing the DOT source "
            f"to {source}. Install Graphviz (`apt-get install graphviz`, `brew install graphviz`, or your OS's "
            f"package) and run again, or render it yourself: dot -T{out.suffix[1:]} {source} -o {out}")
        return [(source, graph.source.encode())]
    except graphviz.CalledProcessError as e:
        detail = " ".join((e.stderr or b"").decode(errors="replace").split())[:300]
        raise LpucError(f"{out}: Graphviz's `dot` failed: {detail or e}") from None


def _check_output(path: str, option: str, suffixes: tuple[str, ...]) -> None:
    """Fail early (before any work) on an output of the wrong kind or in a directory we cannot write."""
    p = Path(path)
    if p.suffix.lower() not in suffixes:
        raise LpucError(f"{option} {path}: unknown output format {p.suffix or '(no suffix)'!r} "
                        f"(expected {', '.join(suffixes)})")
    parent = p.parent if str(p.parent) else Path(".")
    if p.is_dir():
        raise LpucError(f"{path}: cannot write: is a directory")
    if not parent.is_dir():
        raise LpucError(f"{path}: cannot write: no such directory {parent}")
    if not os.access(parent, os.W_OK):
        raise LpucError(f"{path}: cannot write: permission denied")


def _render_html(program, run_result=None, progress=None, detail_chips=None) -> str:
    """backends.report's HTML report of `program` (and of a run of it)."""
    try:
        from ..backends.report import render_html
    except ImportError as e:
        raise LpucError(f"the HTML report is not available in this lpuc (backends.report: {e})") from None
    return render_html(program, run_result, progress, detail_chips)


# --- diff --------------------------------------------------------------------

def _diff_args(p):
    p.add_argument("a", metavar="A.lpu", help="an executable schedule")
    p.add_argument("b", metavar="B.lpu", help="the executable schedule to compare it with")
    p.add_argument("--inputs", metavar="IN.npz",
                   help="also run both on these inputs (keyed by input name) and compare their outputs")
    p.add_argument("--limit", type=int, default=10, metavar="N",
                   help="differing instructions listed at most (default 10; all are counted)")
    p.add_argument("--json", action="store_true", help="print one JSON object on stdout and nothing else")


@command("diff", "explain how two executable schedules differ",
         "Compare A.lpu with B.lpu: manifest, option and machine changes; the makespan and the busy cycles "
         "of each unit class per chip; the instructions whose cycle, unit or SRAM extents moved (matched by "
         "result name, counted and grouped by op, the first N listed); with --inputs, each output's max "
         "absolute difference and whether it is bitwise identical. Exit 0 when identical, 1 when not.",
         _diff_args)
def cmd_diff(args) -> int:
    from ..backends.diff import diff_outputs, diff_programs, output_lines

    if args.limit < 0:
        raise LpucError(f"--limit {args.limit}: give the number of instructions to list, 0 or more")
    a, b = read_lpu(args.a), read_lpu(args.b)
    inputs = read_npz(args.inputs, "inputs", a.module) if args.inputs else None
    diff = diff_programs(a, b)
    outputs = diff_outputs(a, b, inputs) if inputs is not None else ()
    identical = diff.identical and all(o.bitwise_identical for o in outputs)
    if args.json:
        report = diff.facts(args.limit)
        if inputs is not None:
            report["outputs"] = [o.facts() for o in outputs]
        print(json.dumps({**report, "identical": identical}))
    else:
        print("\n".join(diff.lines(args.limit) + (output_lines(outputs, args.inputs) if inputs is not None else [])))
    return 0 if identical else 1


# --- main --------------------------------------------------------------------

class _Parser(argparse.ArgumentParser):
    """argparse, with its usage errors on one line like every other lpuc error."""

    def error(self, message):
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see `{self.prog} --help`)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
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
        print(f"lpuc: error: {' '.join(str(e).splitlines())}", file=sys.stderr)  # one line, whatever it quotes
        return EXIT_USAGE
    except MemoryError as e:  # inputs are bounded before allocation; this is the last line of defence
        if args.debug:
            traceback.print_exc()
        print(f"lpuc: error: out of memory ({' '.join(str(e).split()) or 'MemoryError'})", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("lpuc: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # stdout closed early, e.g. `lpuc import m.onnx | head`: not an error
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


_outliving: list | None = None  # under run_and_exit: what commands built, left to the process's exit


def _outlive(*built) -> None:
    """Keep what a command built until the process exits, when it is the `lpuc` command (run_and_exit): freed
    one by one when the command returns, a large program's millions of objects cost seconds."""
    if _outliving is not None:
        _outliving.extend(built)


def no_huge_pages() -> None:
    """Have numpy stop asking the kernel for huge pages for its large arrays, unless NUMPY_MADVISE_HUGEPAGE (numpy's
    own switch, read when numpy is imported, which `import lpuc` does first) says otherwise. Where the kernel
    compacts memory to find them when asked (transparent_hugepage/defrag "madvise", as on many virtual machines),
    a large program's first large arrays stall for seconds: `lpuc viz --html` of Llama-2-70B's decode step took
    33.4 s asking (11.3 s of it in the kernel), 27.1 s not (3.2 s)."""
    if "NUMPY_MADVISE_HUGEPAGE" not in os.environ:
        np._core.multiarray._set_madvise_hugepage(False)  # (what numpy does with the variable)


def run_and_exit() -> None:
    """The `lpuc` command: `main()`, then exit without tearing down what it built. A large model's compile
    holds millions of objects; freeing them one by one at exit costs as long as writing the .lpu (the
    clang driver skips freeing for the same reason). Everything is written (atomically) and flushed first.
    The cyclic collector stays paused throughout (ir/collector.py): between the stages that pause it, its
    first collection would walk every object they made (seconds at 70B), for cycles it never needs to free."""
    global _outliving
    _outliving = []
    gc.disable()  # (never enabled again: its first collection, here at the end, would walk everything made)
    no_huge_pages()
    code = main()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (BrokenPipeError, ValueError):  # a closed pipe: nothing more to say
            pass
    os._exit(code)


if __name__ == "__main__":
    run_and_exit()
