"""Precision modes (compiler/precision.py): every sample at fp16 and int8 on 1 and 4 chips within the error
bounds against ONNX Runtime's fp32 outputs, the interpreter bitwise equal to the reference evaluator at the
same precision, the weights' SRAM bytes, fp8 only where the machine has it, quantized ONNX models."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

import lpuc
from lpuc.compiler.cli import main
from lpuc.compiler.driver import load_model, precision_error
from lpuc.compiler.pipeline import CompileOptions, default_chips
from lpuc.compiler.precision import TOLERANCE, at_precision
from lpuc.ir import DType, LpucError
from lpuc.ir.costs import compute_cycles
from lpuc.ir.evaluator import evaluate
from lpuc.ir.machine import parse_machine, read_machine
from lpuc.ir.printer import print_module
from lpuc.ir.verifier import verify

from helpers import SAMPLES, max_rel_error, ort_int8_is_exact, run_ort

BOUND = TOLERANCE
SAMPLE_PATHS = sorted(p for p in SAMPLES.glob("*.onnx") if not p.stem.endswith("_qdq"))
TSP = read_machine("tsp-v1")[0]


def _npz(path: Path) -> dict:
    with np.load(path, allow_pickle=False) as f:
        return {k: f[k] for k in f.files}


@pytest.fixture(scope="module")
def graphs():
    cache = {}

    def get(path: Path):
        if path not in cache:
            cache[path] = load_model(path)[0]
        return cache[path]
    return get


@pytest.fixture(scope="module")
def programs():
    """(sample, precision, chips) -> the compiled program (list scheduler: these tests are about numbers; on many
    chips one partition, not auto's two: tensor splits at fp16, a pipeline at int8)."""
    cache = {}

    def get(path: Path, precision: str, chips: int):
        key = (path, precision, chips)
        if key not in cache:
            partition = "auto" if chips == 1 else "tensor" if precision == "fp16" else "pipeline"
            cache[key] = lpuc.compile(path, chips=chips, precision=precision, scheduler="list", partition=partition)
        return cache[key]
    return get


@pytest.mark.parametrize("chips", [1, 4])
@pytest.mark.parametrize("precision", ["fp16", "int8"])
@pytest.mark.parametrize("path", [pytest.param(p, id=p.stem) for p in SAMPLE_PATHS])
def test_every_sample_within_its_bound_and_bitwise_the_evaluator(path, precision, chips, graphs, programs):
    inputs, ref = _npz(path.with_suffix(".inputs.npz")), _npz(path.with_suffix(".outputs.npz"))
    program = programs(path, precision, chips)
    assert program.options["precision"] == precision and program.target.chips == chips
    outputs = lpuc.run(program, inputs).outputs
    for name, r in ref.items():
        assert max_rel_error(outputs[name], r) <= BOUND[precision], name
    expected = evaluate(at_precision(graphs(path), precision), inputs)
    for name, e in expected.items():
        assert outputs[name].dtype == e.dtype and np.array_equal(outputs[name], e, equal_nan=True), name


@pytest.mark.parametrize("path", [pytest.param(p, id=p.stem) for p in SAMPLE_PATHS])
def test_weights_take_a_half_at_fp16_and_a_quarter_at_int8(path, programs):
    """The weights' SRAM bytes, scales included, against fp32 (the compile summary's weight_bytes)."""
    summary = {p: programs(path, p, 1).manifest["summary"] for p in ("fp16", "int8")}
    fp32 = summary["fp16"]["model_weight_bytes"]
    assert fp32 == summary["int8"]["model_weight_bytes"] > 0
    assert summary["fp16"]["weight_bytes"] <= 0.51 * fp32
    assert summary["int8"]["weight_bytes"] <= 0.27 * fp32


def test_fp8_where_the_machine_has_it(graphs):
    path = SAMPLES / "llama_prefill.onnx"
    machine = Path(__file__).parent / "machines" / "fp8.toml"
    inputs, ref = _npz(path.with_suffix(".inputs.npz")), _npz(path.with_suffix(".outputs.npz"))
    program = lpuc.compile(path, machine, chips=1, precision="fp8", scheduler="list")
    weights = {op.result.type.dtype for op in program.module.ops if op.name == "mem.constant"}
    assert DType.f8e4m3fn in weights and DType.f16 not in weights
    outputs = lpuc.run(program, inputs).outputs
    expected = evaluate(at_precision(graphs(path), "fp8"), inputs)
    assert all(np.array_equal(outputs[k], expected[k]) for k in expected)
    assert max(max_rel_error(outputs[k], ref[k]) for k in ref) <= 0.1  # e4m3: 3 significant bits
    with pytest.raises(LpucError, match="tsp-v1's MXM has no fp8 path"):
        lpuc.compile(path, chips=1, precision="fp8", scheduler="list")


def test_costs_follow_the_precision(programs):
    """One layer's weights at fp32, fp16 and int8: installs take a byte per row and plane, matmuls stream at
    the machine's rate for their types (int8 4x fp16; fp32 has no faster path than fp16)."""
    path = SAMPLES / "gpt2_prefill.onnx"
    matmuls = {}
    for precision in ("fp32", "fp16", "int8"):
        ops = programs(path, precision, 1).module.ops
        installs = [op for op in ops if op.name == "mxm.install"]
        matmuls[precision] = {op.operands[1].type.dtype for op in ops if op.name == "mxm.matmul"}
        sizes = {"fp32": {4}, "fp16": {2}, "int8": {1, 2}}[precision]
        assert {op.operands[0].type.dtype.itemsize for op in installs} <= sizes
        for op in ops:  # the unit's own cycles: a row of the tile per byte-plane; x's rows at the type's rate
            if op.name in ("mxm.install", "mxm.matmul"):
                x, w = (op.result.type, op.result.type) if op.name == "mxm.install" else \
                    (op.operands[0].type, op.operands[1].type)
                rows = x.numel // x.shape[-1]
                expected = x.shape[-2] * x.dtype.itemsize * (rows // x.shape[-2]) if op.name == "mxm.install" \
                    else rows * {1: 1, 2: 4, 4: 4}[w.dtype.itemsize]
                assert compute_cycles(op, TSP) == expected, op.label()
    assert matmuls["int8"] == {DType.i8, DType.f16}  # attention's activation x activation matmuls at fp16
    assert TSP.mxm.rate(DType.i8, DType.i8) == 1.0 and TSP.mxm.rate(DType.f16, DType.f16) == 0.25
    assert TSP.mxm.rate(DType.f32, DType.f32) == 0.25 and TSP.mxm.rate(DType.f16, DType.f8e4m3fn) == 0.25


def test_default_chip_count_follows_the_smaller_weights():
    """A machine with 1/256 of tsp-v1's SRAM: llama_prefill's fp32 weights need more chips than its fp16
    ones, which need more than its int8 ones."""
    text = read_machine("tsp-v1")[1].replace("words_per_slice = 8192", "words_per_slice = 32")
    machine = parse_machine(text)
    graph = load_model(SAMPLES / "llama_prefill.onnx")[0]
    from lpuc.compiler.pipeline import run_passes
    from lpuc.compiler.precision import Precision
    from lpuc.ir.target import Target

    chips = {p: default_chips(run_passes(graph, Target(machine), (Precision(p),))[0], machine)
             for p in ("fp32", "fp16", "int8")}
    assert chips["fp32"] > chips["fp16"] > chips["int8"] >= 1, chips


def test_the_precision_pass_prints_in_the_ir_and_the_manifest(graphs, programs):
    text = print_module(verify(at_precision(graphs(SAMPLES / "gpt2_prefill.onnx"), "int8")))
    assert "accumulate = i32" in text and "graph.round" in text and "i8[" in text
    program = programs(SAMPLES / "gpt2_prefill.onnx", "int8", 1)
    assert program.options["precision"] == "int8" and program.manifest["summary"]["precision"] == "int8"
    assert "accumulate = i32" in print_module(program.module)


def test_compile_reports_the_error_against_fp32(tmp_path, capsys):
    model = SAMPLES / "gpt2_prefill.onnx"
    assert main(["compile", str(model), "-o", str(tmp_path / "a.lpu"), "--precision", "int8", "--scheduler", "list",
                 "--json", "--inputs", str(model.with_suffix(".inputs.npz"))]) == 0
    report = json.loads(capsys.readouterr().out)
    graph = load_model(model)[0]
    inputs = _npz(model.with_suffix(".inputs.npz"))
    expected = precision_error(graph, evaluate(at_precision(graph, "int8"), inputs), inputs)
    assert report["precision"] == "int8"
    assert report["precision_error"]["max_relative_error"] == expected["max_relative_error"] > 0
    assert report["precision_error"]["top1_agreement"] == expected["top1_agreement"] >= 0.5
    # run: the same error, from the interpreter's outputs, given the model
    assert main(["run", str(tmp_path / "a.lpu"), "--json", "--inputs", str(model.with_suffix(".inputs.npz")),
                 "--reference", str(model)]) == 0
    run = json.loads(capsys.readouterr().out)
    assert run["precision_error"]["max_relative_error"] == expected["max_relative_error"]


def test_help_states_the_default(capsys):
    with pytest.raises(SystemExit):
        main(["compile", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "default fp16" in text and "tsp-v1 has no fp32 matrix unit" in text


def test_fp8_on_tsp_v1_is_one_line(tmp_path, capsys):
    assert main(["compile", str(SAMPLES / "gpt2_prefill.onnx"), "-o", str(tmp_path / "a.lpu"),
                 "--precision", "fp8"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "tsp-v1's MXM has no fp8 path" in err[0]
    assert not (tmp_path / "a.lpu").exists()


# --- quantized ONNX models ---------------------------------------------------------------------------------

QDQ = SAMPLES / "quantized" / "bert_prefill_qdq.onnx"


def test_the_qdq_sample_compiles_as_int8_matmuls_and_matches_onnxruntime():
    """onnxruntime's quantize_static (QDQ) model: every matmul imports as int8 with int32 sums, and the
    program at fp32 (nothing changed: the model's own precision) gives onnxruntime's outputs within 1e-4: those
    recorded with the sample, and onnxruntime's on this machine where its int8 sums are exact."""
    graph = load_model(QDQ)[0]
    matmuls = [op for op in graph.ops if op.name == "graph.matmul"]
    assert matmuls and all(op.attrs.get("accumulate") is DType.i32 for op in matmuls)
    program = lpuc.compile(QDQ, chips=1, scheduler="list", precision="fp32")
    assert all(op.attrs.get("accumulate") is DType.i32 for op in program.module.ops if op.name == "mxm.matmul")
    inputs = _npz(QDQ.with_name("bert_prefill_qdq.inputs.npz"))
    outputs = lpuc.run(program, inputs).outputs
    live = run_ort(QDQ, inputs) if ort_int8_is_exact() else {}
    for name, ref in _npz(QDQ.with_name("bert_prefill_qdq.outputs.npz")).items():
        assert max_rel_error(outputs[name], ref) <= 1e-4
        if live:
            assert max_rel_error(outputs[name], live[name]) <= 1e-4


def test_a_dynamically_quantized_model_imports_as_int8_matmuls(tmp_path):
    """quantize_dynamic: DynamicQuantizeLinear (uint8 activations) and MatMulInteger (int8 weights). The program
    gives the reference evaluator's outputs of the imported graph (exact integer sums) and, where its int8 sums
    are exact, onnxruntime's."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    model = tmp_path / "dynamic.onnx"
    quantize_dynamic(str(SAMPLES / "gpt2_prefill.onnx"), str(model), weight_type=QuantType.QInt8, per_channel=True)
    graph = load_model(model)[0]
    assert any(op.attrs.get("accumulate") is DType.i32 for op in graph.ops if op.name == "graph.matmul")
    inputs = _npz(SAMPLES / "gpt2_prefill.inputs.npz")
    ours = lpuc.run(lpuc.compile(model, chips=1, precision="fp32", scheduler="list"), inputs).outputs
    refs = [evaluate(graph, inputs)] + ([run_ort(model, inputs)] if ort_int8_is_exact() else [])
    for ref in refs:
        assert max(max_rel_error(ours[k], ref[k]) for k in ref) <= 1e-4


def test_bert_base_at_int8_fits_one_chip(tmp_path):
    """Shape-only BERT-base, seq 128 (samples/shape_only_bert.py): its fp32 weights need 3 tsp-v1 chips, fp16
    2, int8 1 — and at int8 the whole program (weights and activations) is allocated on that one chip."""
    import importlib.util
    import sys

    from lpuc.compiler.allocate import Allocate
    from lpuc.compiler.lower import Lower
    from lpuc.compiler.pipeline import run_passes
    from lpuc.compiler.precision import Precision
    from lpuc.ir.target import Target

    spec = importlib.util.spec_from_file_location("samples_shape_only_bert", SAMPLES / "shape_only_bert.py")
    bert = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = bert
    spec.loader.exec_module(bert)
    bert.write(tmp_path / "bert_base.onnx", seq=128)
    graph = load_model(tmp_path / "bert_base.onnx")[0]
    chips = {p: default_chips(run_passes(graph, Target(TSP), (Precision(p),))[0], TSP)
             for p in ("fp32", "fp16", "int8")}
    assert chips == {"fp32": 3, "fp16": 2, "int8": 1}
    _, plans = run_passes(graph, Target(TSP), (Precision("int8"), Lower(), Allocate()))
    assert plans["allocate"].peak_bytes <= TSP.sram.chip_bytes


@pytest.mark.parametrize("precision", ["fp16", "int8"])
@pytest.mark.parametrize("kw", [dict(width=333, heads=9, layers=3, seq=7), dict(width=96, heads=3, layers=2, seq=33,
                                                                                  mlp=500)], ids=["w333", "w96-s33"])
def test_models_not_in_the_repository_within_the_bounds(kw, precision, tmp_path):
    """Hand-built GPT-style models (the legacy exporter's form, other widths and lengths): the same bounds
    against onnxruntime, on 4 chips."""
    from helpers import legacy_transformer, save, token_ids

    path = save(legacy_transformer(**kw), tmp_path / "model.onnx")
    inputs = token_ids(kw["seq"])
    outputs = lpuc.run(lpuc.compile(path, chips=4, precision=precision, scheduler="list"), inputs).outputs
    assert max_rel_error(outputs["logits"], run_ort(path, inputs)["logits"]) <= BOUND[precision]


@pytest.mark.parametrize("precision", ["fp16", "int8"])
def test_wide_matmuls_bitwise_the_evaluator(precision):
    """test_lower's matmuls of every shape (three k-tiles chained through acc, vector operands, batches, a
    batch-1 weight) on 2 chips: the interpreter gives the evaluator's bits at the precision."""
    from lpuc.backends.interpreter import run
    from lpuc.backends.lpu import build_program
    from lpuc.compiler.pipeline import compile_module
    from test_lower import wide_matmuls

    graph, inputs = wide_matmuls()
    machine, text = read_machine("tsp-v1")
    scheduled, _ = compile_module(graph, machine, CompileOptions(precision=precision, scheduler="list", chips=2))
    outputs = run(build_program(scheduled, text), inputs).outputs
    expected = evaluate(at_precision(graph, precision), inputs)
    reference = evaluate(graph, inputs)
    for name, e in expected.items():
        assert np.array_equal(outputs[name], e), name
        assert max_rel_error(e, reference[name]) <= BOUND[precision], name


def test_a_partition_written_by_hand_at_int8_and_fp16(tmp_path):
    """test_many_chips' hand-partitioned IR (a weight split by rows): at int8 (exact int32 sums) it runs as
    written, bitwise the evaluator; at fp16 a row split is refused, saying why."""
    from lpuc.backends.interpreter import run
    from lpuc.backends.lpu import build_program
    from lpuc.compiler.driver import compile_model
    from test_many_chips import write_by_hand

    path, rng = write_by_hand(tmp_path)
    inputs = {name: rng.standard_normal(shape).astype(np.float32)
              for name, shape in (("x", (3, 640)), ("q", (4, 5, 8)), ("k", (4, 8, 5)))}
    module, summary, text = compile_model(path, options=CompileOptions(scheduler="list", precision="int8"))
    assert (summary.chips, summary.partition) == (2, "given")
    outputs = run(build_program(module, text), inputs).outputs
    graph = load_model(path)[0]
    expected, reference = evaluate(at_precision(graph, "int8"), inputs), evaluate(graph, inputs)
    for name, e in expected.items():
        assert np.array_equal(outputs[name], e) and max_rel_error(e, reference[name]) <= BOUND["int8"], name
    with pytest.raises(LpucError, match="split = 'rows'.*its sums are f32"):
        compile_model(path, options=CompileOptions(scheduler="list", precision="fp16"))


def test_int8_activations_in_two_parts_and_table_rows_in_groups():
    """The int8 scheme's refinements on a small graph. A matmul by a weight that int8 holds exactly (so the
    activations' rounding is the only error), by a matrix and by a vector: two int8 parts of the activations
    keep it within 1e-4 of fp32 (one part, 7 significant bits, gives ~1e-2). An embedding table: each row
    dequantizes per group of ROW_GROUP values (its own scale each), the scales stored [groups, rows]."""
    from lpuc.compiler.precision import ROW_GROUP
    from lpuc.ir.builder import Builder
    from lpuc.ir.types import TensorType

    rng = np.random.default_rng(0)
    b = Builder()
    x, v = b.input("x", TensorType((7, 96), DType.f32)), b.input("v", TensorType((96,), DType.f32))
    ids = b.input("ids", TensorType((1, 5), DType.i64))
    q = rng.integers(-127, 128, (96, 40))
    q[0] = 127  # each column's largest |value|: its scale is recovered exactly
    w = b.constant((q * rng.uniform(0.5, 2.0, (1, 40)) / 127).astype(np.float32), name="w")
    b.output("matrix", b.op("graph.matmul", x, w))
    b.output("vector", b.op("graph.matmul", v, w))
    table = (rng.standard_normal((50, 96)) * rng.uniform(0.1, 10, (50, 96))).astype(np.float32)
    b.output("rows", b.op("graph.gather", b.constant(table, name="table"), ids, axis=0))
    graph = b.build("two_parts")
    inputs = {"x": rng.standard_normal((7, 96)).astype(np.float32) * rng.uniform(0.01, 10, 96).astype(np.float32),
              "v": rng.standard_normal(96).astype(np.float32), "ids": np.array([[0, 7, 7, 49, 3]])}
    int8 = at_precision(graph, "int8")
    ours, ref = evaluate(int8, inputs), evaluate(graph, inputs)
    assert max_rel_error(ours["matrix"], ref["matrix"]) <= 1e-4 and max_rel_error(ours["vector"], ref["vector"]) <= 1e-4
    tables = {op.result.type for op in int8.ops if op.name == "graph.constant" and op.result.name.startswith("table")}
    assert tables == {TensorType((50, 96), DType.i8), TensorType((96 // ROW_GROUP, 50), DType.f32)}
    groups = table[inputs["ids"]].reshape(1, 5, 96 // ROW_GROUP, ROW_GROUP)
    scale = np.abs(groups).max(-1, keepdims=True) / np.float32(127)
    assert np.array_equal(ours["rows"], (np.rint(groups / scale) * scale).reshape(1, 5, 96))
