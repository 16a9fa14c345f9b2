"""The stages behind the CLI, callable from Python: load a model (ONNX or IR)
into a verified graph-level module, evaluate it."""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING

from ..ir import LpucError, Module, VerifyError
from ..ir.files import check_regular, read_module
from ..ir.verifier import verify

if TYPE_CHECKING:
    from .frontend import SupportReport


def load_model(path: str | Path, input_shapes: dict[str, tuple[int, ...]] | None = None
               ) -> tuple[Module, SupportReport | None]:
    """An ONNX model (imported) or an IR file (parsed), verified."""
    path = Path(path)
    check_regular(path)
    if path.suffix == ".ir":
        if input_shapes:
            raise LpucError("--shape applies to ONNX models; an IR file has static shapes already")
        return read_ir(path), None
    from .frontend import import_onnx

    module, report = import_onnx(path, input_shapes)
    return verify(module), report


def read_ir(path: str | Path) -> Module:
    """Parse and verify an IR file; a verifier error names the file too."""
    module = read_module(path)
    try:
        return verify(module)
    except VerifyError as e:
        raise VerifyError(f"{path}: {e}") from None


def compile_model(path: str | Path, machine: str | Path = "tsp-v1", options=None,
                  input_shapes: dict[str, tuple[int, ...]] | None = None, progress=None, state_layout=None):
    """Model file -> (scheduled module, CompileSummary, machine TOML text). `progress`, when
    given, is called with a line per stage. With `options.state`, the model's cache becomes resident
    state (compiler/frontend/state.py), kept where `state_layout` says when given (a partner program's)."""
    from ..ir.machine import read_machine

    from .frontend.state import make_stateful, parse_pairs
    from .pipeline import CompileOptions, compile_module

    options = options or CompileOptions()
    machine_desc, machine_text = read_machine(machine)
    graph, _ = load_model(path, input_shapes)
    if options.state != "none":
        graph = make_stateful(graph, parse_pairs(options.state), options.context)
    elif options.context is not None:
        raise LpucError("--context sizes a resident cache: give --state too")
    scheduled, summary = compile_module(graph, machine_desc, options, progress, state_layout)
    return scheduled, summary, machine_text


def compile_program(path: str | Path, machine: str | Path = "tsp-v1", *, weights: bool = True,
                    input_shapes: dict[str, tuple[int, ...]] | None = None, progress=None, state_layout=None,
                    **options):
    """Model file -> the executable Program `lpuc compile` writes (`lpuc.compile`). `options` are
    CompileOptions fields (chips=, partition=, scheduler=, effort=, state=, context=, ...); weights=False
    gives a timing-only program; `state_layout` keeps each state where a partner program keeps it
    (`state_layout(program)`)."""
    from ..backends.lpu import build_program

    from .pipeline import CompileOptions

    compile_options = CompileOptions(**options)
    scheduled, summary, machine_text = compile_model(path, machine, compile_options, input_shapes, progress,
                                                     state_layout)
    return build_program(scheduled, machine_text, lpu_options(compile_options), summary.facts(), weights=weights,
                         verified=True)


def cache_options(options) -> dict:
    """The compile options a build-cache key holds: all but the solver's thread count, which changes no byte
    (the chips asked for are held too, unlike in `lpu_options`: the same program may come of other requests)."""
    import dataclasses

    return {k: v for k, v in dataclasses.asdict(options).items() if k != "workers"}


def max_relative_error(ours, ref) -> float:
    """max |ours - ref| / max |ref| (in float64): how lpuc compares outputs with
    ONNX Runtime. Integer and bool outputs must be equal (else inf)."""
    import numpy as np

    from ..ir.evaluator import is_floating

    ours, ref = np.asarray(ours), np.asarray(ref)
    if ours.shape != ref.shape:
        return float("inf")
    if ref.dtype.kind != "c" and not is_floating(ref):
        return 0.0 if np.array_equal(ours, ref) else float("inf")
    diff = np.max(np.abs(ours.astype(np.float64) - ref.astype(np.float64)), initial=0.0)
    scale = np.max(np.abs(ref.astype(np.float64)), initial=0.0)
    return float(diff / scale) if scale else float(diff)


def precision_error(reference: Module, outputs, inputs) -> dict:
    """What a precision costs: `outputs` (a program's, or the evaluator's at that precision) against the fp32
    reference evaluator on `reference`, the model as imported, on the same inputs. -> {"max_relative_error":
    the largest over float outputs, "errors": per output, "top1_agreement": for an output named `logits`,
    the share of positions whose largest logit (argmax over the last axis) is the reference's}."""
    import numpy as np

    from ..ir.evaluator import evaluate, is_floating

    ref = evaluate(reference, inputs)
    errors = {k: max_relative_error(outputs[k], r) for k, r in ref.items() if is_floating(r)}
    out = {"max_relative_error": max(errors.values(), default=0.0), "errors": errors}
    if "logits" in ref and ref["logits"].ndim:
        agree = np.argmax(outputs["logits"], axis=-1) == np.argmax(ref["logits"], axis=-1)
        out["top1_agreement"] = float(np.mean(agree))
    return out


def lpu_options(options) -> dict:
    """The compile options an .lpu manifest records: those that shape the schedule. Not the solver's
    thread count, which does not (so worker counts give byte-identical files), nor the chips asked
    for: the manifest records those the program has (backends.lpu.build_program)."""
    import dataclasses

    recorded = {k: v for k, v in dataclasses.asdict(options).items() if k not in ("workers", "chips")}
    for key in ("state", "context", "layout"):  # recorded when given (other files stay as they were)
        if recorded[key] == getattr(type(options), key):
            del recorded[key]
    return recorded


def compile_cached(model, machine, options, shapes: dict, *, weights: bool, output, cache: Path | None,
                   progress=None, keep=None, state_layout=None) -> dict:
    """Compile `model` to `output` (.lpu) and return the compile's --json report, reusing the build
    cache's entry when `cache` (a directory) has one for the same content (compiler/cache.py). The
    report says which ("cache": status and key; none without a cache); a program taken from the cache
    is byte-identical to a fresh compile's."""
    from ..backends.lpu import build_program, write_program

    from .cache import copy_file, lookup, store

    key = cache_key(model, machine, options, shapes, weights, state_layout) if cache else None
    found = lookup(cache, key) if cache else None
    if found:
        copy_file(found.program, output)
        return {**cached_report(found.report, key), "output": str(output)}
    start = time.perf_counter()
    module, summary, machine_text = compile_model(model, machine, options, shapes, progress=progress,
                                                  state_layout=state_layout)
    (progress or (lambda line: None))(f"writing {output} ({summary.instructions:,} instructions)")
    program = build_program(module, machine_text, lpu_options(options), summary.facts(), weights=weights,
                            verified=True)
    sha = write_program(output, program)
    if keep:
        keep(module, program)
    # The SRAM peak over time (the schedule's live curve), as `lpuc run` will measure it; the
    # allocator's peak (its footprint in program order) is reported beside it.
    sram_peak_bytes = max(program.facts.sram_peak_words().values(), default=0) \
        * program.machine.sram.word_bytes
    report = {
        "output": str(output), "module": module.name, "machine": summary.machine, "chips": summary.chips,
        "chips_reason": summary.chips_reason, "clock_mhz": summary.clock_mhz,
        "partition": summary.partition, "scheduler": options.scheduler,
        "cycles": summary.cycles, "lower_bound_cycles": summary.lower_bound, "gap": round(summary.gap, 6),
        "bound": summary.bound,
        "latency_us": round(summary.microseconds, 3), "instructions": summary.instructions,
        "transfers": summary.transfers,
        "sram_peak_bytes": sram_peak_bytes, "sram_allocated_bytes": summary.sram_peak_bytes,
        "sram_image_bytes": summary.sram_image_bytes, "weights": weights,
        "solver_status": summary.solver_status, "solve_seconds": round(summary.solve_seconds, 3),
        "list_cycles": summary.list_cycles,
        "partition_chips": list(summary.partition_lines),
        "partition_candidates": {s: c for s, c in summary.candidates},
        "compile_seconds": round(time.perf_counter() - start, 3), "schedule_sha256": sha,
        **state_fields(program), **_state_layout(program),
        **per_token(program),
        "precision": summary.precision,
        "weight_bytes": summary.weight_bytes, "model_weight_bytes": summary.model_weight_bytes,
    }
    if cache:
        try:
            store(cache, key, Path(output), report)
            report["cache"] = {"status": "miss", "key": key}
        except (LpucError, OSError) as e:  # the program is written: a cache we cannot write costs a warning
            import sys

            print(f"lpuc: warning: the build cache keeps nothing: {' '.join(str(e).split())}", file=sys.stderr)
    return report


def cached_report(report: dict, key: str) -> dict:
    """A recorded compile's report as a cache hit gives it: saying so, and how long the compile took."""
    return {**report, "cache": {"status": "hit", "key": key, "compiled_seconds": report["compile_seconds"]}}


def per_token(program) -> dict:
    """A decode step's per-token latency and tokens/s (for --json); nothing for other programs."""
    from .generate import step_tokens_per_s

    rate = step_tokens_per_s(program)
    return {} if rate is None else {"per_token_us": round(program.machine.cycles_to_us(program.cycles), 3),
                                    "tokens_per_s": round(rate, 3)}


def cache_key(model, machine, options, shapes: dict, weights: bool, state_layout=None) -> str:
    """The build-cache key of compiling `model` so (compiler/cache.py)."""
    from ..ir.machine import read_machine

    from .cache import compile_key

    _, machine_text = read_machine(machine)
    layout = None if state_layout is None else _layout_json(state_layout)
    return compile_key(model, machine_text, cache_options(options), shapes, weights, layout)


def _layout_json(state_layout) -> dict:
    """A state layout (generate.state_layout: name -> (chip, extents)) as JSON data, by name."""
    return {name: [chip, list(map(list, out))] for name, (chip, out) in sorted(state_layout.items())}


def _state_layout(program) -> dict:
    """Where a stateful program keeps each state and the states' rows (its context), for a partner's compile
    (a sweep's prefill): {"state_layout": {name: [chip, extents]}, "context": rows}, or nothing."""
    from .generate import state_context, state_layout

    layout = state_layout(program)
    return {"state_layout": _layout_json(layout), "context": state_context(program)} if layout else {}


def state_fields(program) -> dict:
    """A program's resident state (its count of buffers, where its position comes from), for reports."""
    from ..ir.machine_ops import is_state

    state = sum(1 for op in program.module.ops if is_state(op.name))
    return {"state_buffers": state, "position": program.module.attrs["position"]} if state else {}
