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
from lpuc.compiler.precision import at_precision
from lpuc.ir import DType, LpucError
from lpuc.ir.evaluator import evaluate
from lpuc.ir.machine import parse_machine, read_machine
from lpuc.ir.printer import print_module
from lpuc.ir.verifier import verify

from helpers import SAMPLES, max_rel_error, run_ort

BOUND = {"fp16": 1e-2, "int8": 5e-2}
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
    """(sample, precision, chips) -> the compiled program (list scheduler: these tests are about numbers)."""
    cache = {}

    def get(path: Path, precision: str, chips: int):
        key = (path, precision, chips)
        if key not in cache:
            cache[key] = lpuc.compile(path, chips=chips, precision=precision, scheduler="list")
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
    fp32 = summary["fp16"]["weight_bytes_fp32"]
    assert fp32 == summary["int8"]["weight_bytes_fp32"] > 0
    assert summary["fp16"]["weight_bytes"] <= 0.51 * fp32
    assert summary["int8"]["weight_bytes"] <= 0.27 * fp32
