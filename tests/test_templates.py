"""Layer templates (compiler/templates.py) and the chained lower bound (schedule_list.lower_bounds).

A model with repeated layers is scheduled from one template per distinct block, stamped at exact offsets:
the program must still run hazard-free on the interpreter and give the reference evaluator's numbers, on
one chip and over several. The lower bound must never exceed an optimal schedule (CP-SAT proves it
optimal on small programs)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from functools import lru_cache

import numpy as np
import pytest

import lpuc
from lpuc.backends.graph import find_layers
from lpuc.backends.interpreter import _Plan, find_hazards
from lpuc.backends.lpu import FORMAT_VERSION, _pack, _unpack, build_program, load_lpu, program_bytes, sha256
from lpuc.compiler.driver import load_model, read_ir
from lpuc.compiler.partition import partition
from lpuc.compiler.pipeline import CompileOptions, compile_module
from lpuc.compiler.templates import MIN_REPEATS
from lpuc.ir import DType, Module, TensorType, parse, print_module, schedule_facts
from lpuc.ir.builder import Builder
from lpuc.ir.evaluator import evaluate
from lpuc.ir.machine import read_machine
from lpuc.ir.target import Target

from helpers import ROOT, assert_one_line_error, max_rel_error, run_cli

LAYERS = 5


@lru_cache(maxsize=None)
def _tiny(tmp: str, mode: str) -> str:
    path = f"{tmp}/tiny_{mode}_{LAYERS}.onnx"
    subprocess.run([sys.executable, str(ROOT / "samples" / "shape_only.py"), "tiny", "--mode", mode, "--seq", "5",
                    "--past", "6", "--layers", str(LAYERS), "--dtype", "float32", "--weights", "random", "-o", path],
                   check=True, capture_output=True)
    return path


def _inputs(module) -> dict:
    """Hugging Face's: token ids, a mask of ones over the context, the new tokens' positions, a random past."""
    rng = np.random.default_rng(0)
    shapes = {v.name: v.type.shape for v in module.inputs}
    context, tokens = shapes["attention_mask"][1], shapes["input_ids"][1]
    out = {"input_ids": rng.integers(0, 400, (1, tokens)), "attention_mask": np.ones((1, context), np.int64),
           "position_ids": np.arange(context - tokens, context)[None]}
    for v in module.inputs:
        if v.name not in out:
            out[v.name] = rng.standard_normal(v.type.shape).astype(v.type.dtype.numpy)
    return {v.name: out[v.name].astype(v.type.dtype.numpy) for v in module.inputs}


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    return str(tmp_path_factory.mktemp("tiny"))


@pytest.mark.parametrize("mode, chips, partition, scheduler", [
    ("decode", 1, "auto", "list"), ("decode", 2, "tensor", "cpsat"), ("prefill", 4, "pipeline", "list"),
    ("decode", 7, "auto", "list")])
def test_templated_program_runs_and_matches_the_evaluator(tiny_dir, mode, chips, partition, scheduler):
    path = _tiny(tiny_dir, mode)
    module, _ = load_model(path)
    inputs = _inputs(module)
    program = lpuc.compile(path, chips=chips, partition=partition, scheduler=scheduler, precision="fp32")
    status = program.manifest["summary"]["solver_status"]
    assert status.startswith("templates: "), status
    templates, pieces = (int(w) for w in status.split()[1:4:2])
    assert pieces == LAYERS  # one piece per layer: on one chip (pipeline: its own, layer-aligned)
    assert templates < pieces, status  # equal layers share a template (pipeline: at a chip offset)
    result = lpuc.run(program, inputs)  # the interpreter checks every hazard
    assert not result.hazards
    ref = evaluate(module, inputs)
    for name, want in ref.items():
        assert max_rel_error(result.outputs[name], want) <= 1e-4, name


@pytest.mark.parametrize("mode, chips, partition", [("decode", 1, "auto"), ("prefill", 4, "pipeline"),
                                                    ("decode", 7, "auto")])
def test_a_stamps_facts_taken_from_its_template_are_its_own(tiny_dir, mode, chips, partition):
    """ir.schedule_facts takes a stamp's cost and words from its template op's when it reads the same words:
    the facts are those found op by op, with no pieces to go by."""
    program = lpuc.compile(_tiny(tiny_dir, mode), chips=chips, partition=partition, scheduler="list",
                           precision="fp32")
    module = program.module
    assert module.pieces
    stamped = schedule_facts._describe(module, program.target)
    alone = schedule_facts._describe(module.replace(pieces=()), program.target)

    def fields(facts):
        return (facts.words, [(b.name, b.chip, b.extents, b.producer, b.state, b.alias) for b in facts.bases],
                [(i.index, i.unit_class, i.chip, i.reads, i.writes, i.write_bases, i.cost, i.fixed_unit, i.links)
                 for i in facts.instructions])
    assert fields(stamped) == fields(alone)


@pytest.mark.parametrize("chips", [7, 8, 16])
def test_pipeline_gives_each_layer_the_chips_of_the_one_before_shifted(tiny_dir, chips):
    """The layer-aligned pipeline: layer r's ops run on layer r-1's chips plus the same offset (the ops before
    and after the layers on chips of their own), so its pieces are translations of each other."""
    module, _ = load_model(_tiny(tiny_dir, "decode"))
    machine, _ = read_machine("tsp-v1")
    layers = find_layers(module)
    assert layers.count == LAYERS
    placed = partition(module, Target(machine, chips), "pipeline")
    home = [op.attrs.get("chip", 0) for op in placed.ops]
    offsets = {home[b] - home[a] for a_block, b_block in zip(layers.blocks[1:], layers.blocks[2:])
               for a, b in zip(a_block, b_block)}
    assert len(offsets) == 1 and offsets.pop() > 0
    used = {home[i] for block in layers.blocks for i in block}
    outside = {home[i] for i, op in enumerate(placed.ops) if op.name != "graph.constant"
               and not any(i in block for block in layers.blocks) and "chip" in op.attrs}
    assert not used & outside


def test_cpsat_budget_is_the_programs_spent_on_the_heaviest_templates_first(tiny_dir, monkeypatch):
    """CP-SAT's cost does not grow with the layers nor the templates: `max_windows` models for the whole
    program, on the templates that weigh most (instances x instructions) first, none on a template whose list
    schedule meets its own lower bound, none on a layer stamped from a template."""
    from lpuc.compiler import templates
    from lpuc.compiler.schedule_list import lower_bounds

    solved = []

    def counting(sub, machine, cycles, floor, options, progress=None, sequential=False):
        critical, resource, _, _ = lower_bounds(sub, machine)
        solved.append((len(sub.instructions), templates._length(sub, cycles), max(critical, resource),
                       options.max_windows, sequential))
        return solve_cycles(sub, machine, cycles, floor, options, progress, sequential)

    solve_cycles = templates.solve_cycles
    monkeypatch.setattr(templates, "solve_cycles", counting)
    machine, _ = read_machine("tsp-v1")
    module, _ = load_model(_tiny(tiny_dir, "decode"))
    _, summary = compile_module(module, machine, CompileOptions(chips=2, partition="tensor", max_windows=2,
                                                                precision="fp32"))
    status = summary.solver_status
    n_templates, pieces = (int(w) for w in status.split()[1:4:2])
    models = int(status.split("CP-SAT: ")[1].split()[0])
    assert solved and len(solved) <= n_templates < pieces, status
    assert all(length > bound and sequential for _, length, bound, _, sequential in solved), solved
    assert 1 <= models <= 2, status                           # the budget is the program's
    assert [budget for *_, budget, _ in solved] == sorted((budget for *_, budget, _ in solved), reverse=True)
    assert solved[0][3] == 2                                   # the first solve had the whole budget


def test_fewer_layers_keep_the_plain_schedule():
    """The samples have two layers: below MIN_REPEATS, so their schedules (the golden records) stay."""
    assert MIN_REPEATS > 2
    machine, _ = read_machine("tsp-v1")
    module, _ = load_model(ROOT / "samples" / "llama_decode.onnx")
    _, summary = compile_module(module, machine, CompileOptions(scheduler="list"))
    assert not summary.solver_status.startswith("templates")


# --- the lower bound is honest --------------------------------------------------------------------

SMALL = [("layernorm_mlp", 1), ("layernorm_mlp", 2), ("attention", 1), ("attention", 2), ("data_movement", 1)]


@pytest.mark.parametrize("name, chips", SMALL)
def test_bound_never_exceeds_an_optimal_schedule(name, chips):
    machine, _ = read_machine("tsp-v1")
    module = read_ir(ROOT / "tests" / "golden" / "ir" / f"{name}.ir")
    _, summary = compile_module(module, machine, CompileOptions(chips=chips, effort=5.0, window=2000,
                                                                partition="pipeline" if chips > 1 else "auto"))
    assert summary.solver_status == "optimal", summary.solver_status   # cycles is the optimum
    assert summary.critical_path <= summary.cycles
    assert summary.resource_bound <= summary.cycles, (summary.bound_resource, summary.resource_bound,
                                                      summary.cycles)


def _two_stages() -> Module:
    """A token's two matmuls, x [1, 960] @ [960, 1280] then @ [1280, 960]: on two chips, two stages of 12
    weight tiles each, installs (640 cycles at fp16) far longer than their one-row matmuls (4 cycles)."""
    rng = np.random.default_rng(0)
    b = Builder()
    x = b.input("x", TensorType((1, 960), DType.f32))
    h = b.op("graph.sigmoid", b.op("graph.matmul", x, b.constant(rng.standard_normal((960, 1280)).astype(np.float32),
                                                                   name="w1")))
    b.output("y", b.op("graph.matmul", h, b.constant(rng.standard_normal((1280, 960)).astype(np.float32), name="w2")))
    return b.build("two_stages")


def test_chain_of_stages_never_exceeds_an_optimal_schedule():
    """The bound adds a pipeline's stages (each transfer out waits for its chip's resource bound, an MXM plane's
    installs and matmuls counted as pairs): still at most the optimum."""
    machine, _ = read_machine("tsp-v1")
    _, summary = compile_module(_two_stages(), machine, CompileOptions(chips=2, partition="pipeline", effort=5.0,
                                                                       window=2000))
    assert summary.solver_status == "optimal", summary.solver_status   # cycles is the optimum
    assert summary.bound_resource.startswith("chain: chip1 host"), summary.bound_resource  # after both stages
    assert max(summary.critical_path, summary.resource_bound) <= summary.cycles, (summary.bound_resource,
                                                                                  summary.resource_bound)


@pytest.mark.parametrize("k", [1, 2, 8])
def test_largest_prefix_sums_are_each_prefix_s_k_largest(k):
    """The chain bound leaves out the 2 x planes largest installs of each set of MXM plane holds."""
    from lpuc.compiler.schedule_list import _largest_prefix_sums
    values = np.random.default_rng(k).integers(0, 5, 60) * np.random.default_rng(k + 1).integers(0, 2, 60)
    expected = [sum(sorted(values[:n + 1].tolist())[-k:]) for n in range(len(values))]
    assert _largest_prefix_sums(values, k).tolist() == expected


def test_progress_names_the_stages_and_the_time_left(tiny_dir):
    """What `lpuc compile` prints on stderr after two seconds (with --json too): each pass, each template
    scheduled (of about how many) and the stamps, with an estimate of the time left, and the final check."""
    machine, _ = read_machine("tsp-v1")
    module, _ = load_model(_tiny(tiny_dir, "decode"))
    lines: list[str] = []
    compile_module(module, machine, CompileOptions(chips=1, scheduler="list"), lines.append)
    assert any(line.startswith("lower") for line in lines) and any(line.startswith("allocate") for line in lines)
    templated = [line for line in lines if line.startswith("templates: ")]
    assert any("scheduling template 1 of about " in line for line in templated), templated
    assert any(line.startswith("verifier: the scheduled program") for line in lines), lines
    assert any(f"stamped {LAYERS} of {LAYERS} pieces, about 0 s left" in line for line in templated), templated


def test_templated_program_is_written_once_per_template_and_reads_back_the_same(tiny_dir):
    """The .lpu holds each template's ops once and a stamp statement per piece (ir.pieces, format 4): it reads
    back as the same program, and runs the same."""
    path = _tiny(tiny_dir, "decode")
    program = lpuc.compile(path, precision="fp32")
    pieces = program.module.pieces
    # every layer whose schedule is another's stamped (one is scheduled on its own: its neighbours differ)
    assert len(pieces) == LAYERS - 1 and len({p.template for p in pieces}) == 1
    data = program_bytes(program)
    parts = _unpack(data, "tiny.lpu")
    assert json.loads(parts["manifest.json"])["format_version"] == FORMAT_VERSION
    text = parts["program.ir"].decode()
    assert text.count("\n  stamp ") == len(pieces) and text.count("\n  template ") == 1
    written = text.count("\n  %") + text.count("\n    %")
    assert written == len(program.module.ops) - sum(len(p.ops) for p in pieces[1:])  # (stamped ops are not)
    back = load_lpu(data, "tiny.lpu")
    assert back.module == program.module and back.module.pieces == pieces
    inputs = _inputs(load_model(path)[0])
    ours, theirs = lpuc.run(program, inputs), lpuc.run(back, inputs)
    assert ours.stats == theirs.stats and ours.trace == theirs.trace and not theirs.hazards
    for name, want in ours.outputs.items():
        assert np.array_equal(theirs.outputs[name], want), name


def test_a_damaged_stamp_in_a_lpu_is_one_error_line(tiny_dir, tmp_path, capsys):
    """A stamp naming one value too few, in a file whose hashes are intact: `lpuc run` says so in one line."""
    program = lpuc.compile(_tiny(tiny_dir, "decode"), precision="fp32", weights=False)
    parts = _unpack(program_bytes(program), "tiny.lpu")
    text = parts["program.ir"].decode()
    line = next(line for line in text.splitlines() if line.startswith("  stamp ") and "values = " in line)
    names = re.search(r'values = "([^"]*)"', line).group(1).split()
    parts["program.ir"] = text.replace(line, line.replace(" ".join(names), " ".join(names[:-1]))).encode()
    manifest = json.loads(parts["manifest.json"])
    manifest["parts"]["program.ir"] = sha256(parts["program.ir"])
    parts["manifest.json"] = (json.dumps(manifest, sort_keys=True, indent=1) + "\n").encode()
    bad = tmp_path / "bad.lpu"
    bad.write_bytes(_pack(parts))
    code, out, err = run_cli(capsys, "run", bad, "--timing-only")
    assert out == ""
    assert_one_line_error(code, err, "bad.lpu:program.ir:", "stamp of template 0", f"must name its {len(names)} values")


@pytest.mark.parametrize("move, kinds", [
    ("earlier", {"overwritten", "stream", "unit"}),  # before its inputs land, on units the last piece still holds
    ("with the last", {"overwritten", "read_port", "write_port"}),  # over the piece before it, word for word
])
def test_a_stamp_moved_in_time_is_checked_like_any_op(tiny_dir, move, kinds):
    """A stamp says where its piece runs: one at the wrong cycle breaks the program where it meets the rest
    (what a check of pieces must find at their boundaries), and the interpreter finds it."""
    program = lpuc.compile(_tiny(tiny_dir, "decode"), precision="fp32", weights=False)
    text = print_module(program.module)
    stamps = [line for line in text.splitlines() if line.startswith("  stamp ") and "values = " in line]
    cycles = [int(re.search(r"cycle = (-?\d+),", line).group(1)) for line in stamps]
    new = cycles[1] - 3000 if move == "earlier" else cycles[0]
    module = parse(text.replace(stamps[1], stamps[1].replace(f"cycle = {cycles[1]},", f"cycle = {new},")))
    assert len(module.pieces) == len(program.module.pieces)  # (still a stamp)
    found = find_hazards(build_program(module, program.machine_text, weights=False))
    assert kinds <= {h.kind for h in found}, sorted({h.kind for h in found})


@pytest.mark.parametrize("mode, chips, partition", [("decode", 1, "auto"), ("decode", 7, "auto"),
                                                     ("prefill", 4, "pipeline")])
def test_a_stamped_op_is_planned_as_it_would_be_alone(tiny_dir, mode, chips, partition):
    """The interpreter plans a stamped op from its template's plan (its reads and costs) where its words are
    the template's: that gives exactly what planning it op by op gives, and the run the same stats."""
    program = lpuc.compile(_tiny(tiny_dir, mode), chips=chips, partition=partition, precision="fp32", weights=False)
    module = program.module
    assert module.pieces
    stamped, alone = _Plan(module, program.target), _Plan(module.replace(pieces=()), program.target)
    assert stamped._templates and not alone._templates
    facts = ("idx", "unit", "cycle", "chip", "occ", "lat", "reads", "writes", "streams", "port_reads", "port_writes",
             "hops", "ok")
    assert [[getattr(i, f) for f in facts] for i in stamped.instrs] == [[getattr(i, f) for f in facts]
                                                                       for i in alone.instrs]
    assert {k: v.segs for k, v in stamped.values.items()} == {k: v.segs for k, v in alone.values.items()}
    assert not stamped.hazards and not alone.hazards
