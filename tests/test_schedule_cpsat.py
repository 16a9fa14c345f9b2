"""The CP-SAT scheduler: never worse than the list schedule it starts from, every schedule valid for the
interpreter and matching onnxruntime, a lower bound that holds, and the same bytes whatever the worker
count or hash seed."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

from lpuc.backends import interpreter
from lpuc.backends.lpu import build_program, lpu_bytes, read_lpu
from lpuc.compiler.driver import load_model, lpu_options, max_relative_error
from lpuc.compiler.pipeline import CompileOptions, compile_module
from lpuc.ir.machine import read_machine

from helpers import ROOT, SAMPLES, assert_one_line_error, run_cli

MACHINE, MACHINE_TEXT = read_machine("tsp-v1")


def _npz(name: str, kind: str) -> dict:
    with np.load(SAMPLES / f"{name}.{kind}.npz") as f:
        return {k: f[k] for k in f.files}


def _compile(name: str, **options):
    opts = CompileOptions(**{"precision": "fp32", **options})  # exact against ONNX Runtime's outputs
    module, summary = compile_module(load_model(SAMPLES / f"{name}.onnx")[0], MACHINE, opts)
    return module, summary, lpu_bytes(module, MACHINE_TEXT, lpu_options(opts), summary.facts())


@pytest.mark.parametrize("name,chips", [("llama_prefill", 1), ("gpt2_decode", 1), ("llama_decode", 2)])
def test_never_worse_than_the_list_schedule_and_valid(name, chips):
    _, listed, _ = _compile(name, chips=chips, partition="pipeline", scheduler="list")
    module, summary, _ = _compile(name, chips=chips, partition="pipeline", scheduler="cpsat")
    assert summary.list_cycles == listed.cycles and summary.cycles <= listed.cycles
    assert summary.solver_status in ("optimal", "feasible")
    assert summary.critical_path <= summary.lower_bound <= summary.cycles
    result = interpreter.run(build_program(module, MACHINE_TEXT), _npz(name, "inputs"))
    ref = _npz(name, "outputs")
    assert max(max_relative_error(result.outputs[k], ref[k]) for k in ref) <= 1e-4
    assert result.stats.cycles == summary.cycles


def test_it_improves_on_the_list_schedule_somewhere():
    _, summary, _ = _compile("bert_prefill", scheduler="cpsat")
    assert summary.cycles < summary.list_cycles


def test_same_bytes_whatever_the_worker_count():
    outs = {w: _compile("llama_prefill", scheduler="cpsat", workers=w)[2] for w in (1, 2, 8)}
    assert outs[1] == outs[2] == outs[8]
    assert _compile("llama_prefill", scheduler="cpsat", workers=8)[2] == outs[8]


def test_same_bytes_across_processes_and_hash_seeds(tmp_path):
    model = SAMPLES / "gpt2_prefill.onnx"
    here = _compile("gpt2_prefill", scheduler="cpsat")[2]
    for seed in ("0", "12345"):
        out = tmp_path / f"{seed}.lpu"
        subprocess.run([sys.executable, "-m", "lpuc.compiler", "compile", str(model), "-o", str(out), "--scheduler", "cpsat",
                        "--precision", "fp32", "--json"], cwd=ROOT, env={**os.environ, "PYTHONHASHSEED": seed},
                       check=True, capture_output=True)
        assert out.read_bytes() == here


def test_options_are_recorded_and_checked(tmp_path, capsys):
    out = tmp_path / "m.lpu"
    code, _, err = run_cli(capsys, "compile", SAMPLES / "gpt2_decode.onnx", "-o", out, "--scheduler", "cpsat",
                           "--effort", "0.05", "--workers", "2")
    assert code == 0, err
    options = read_lpu(out).options
    assert (options["scheduler"], options["effort"]) == ("cpsat", 0.05) and "workers" not in options
    for bad in (["--effort", "0"], ["--workers", "0"], ["--window", "0"], ["--max-windows", "0"]):
        code, stdout, err = run_cli(capsys, "compile", SAMPLES / "gpt2_decode.onnx", "-o", tmp_path / "x.lpu",
                                    "--scheduler", "cpsat", *bad)
        assert_one_line_error(code, err, bad[0]) and not stdout
        assert not (tmp_path / "x.lpu").exists()


def test_the_default_is_cpsat():
    _, summary, _ = _compile("gpt2_prefill")
    assert summary.solver_status in ("optimal", "feasible") and summary.list_cycles


def _windowed(name: str, chips: int, **options):
    _, listed, _ = _compile(name, chips=chips, partition="pipeline", scheduler="list")
    module, summary, data = _compile(name, chips=chips, partition="pipeline", **options)
    assert summary.solver_status.startswith("windowed: ")
    assert summary.list_cycles == listed.cycles and summary.cycles <= listed.cycles
    result = interpreter.run(build_program(module, MACHINE_TEXT), _npz(name, "inputs"))  # every hazard checked
    ref = _npz(name, "outputs")
    assert max(max_relative_error(result.outputs[k], ref[k]) for k in ref) <= 1e-4
    assert result.stats.cycles == summary.cycles
    return summary, data


@pytest.mark.parametrize("name,chips", [("llama_prefill", 1), ("mixtral_decode_op23", 4)])
def test_window_by_window_is_valid_and_never_worse(name, chips):
    summary, _ = _windowed(name, chips, window=40)
    assert "windows solved" in summary.solver_status


def test_windows_improve_somewhere():
    # (llama_prefill's list schedule, its KV heads grouped, leaves windows of 40 and 60 nothing to improve)
    summary, _ = _windowed("gemma_prefill", 1, window=60)
    assert summary.cycles < summary.list_cycles


def test_at_most_max_windows_are_solved():
    summary, _ = _windowed("llama_prefill", 2, window=30, max_windows=2)
    assert summary.solver_status.startswith("windowed: 2 of ") and "(at most 2 are solved)" in summary.solver_status


def test_windows_give_the_same_bytes_whatever_the_worker_count():
    outs = {w: _compile("llama_decode", window=50, workers=w)[2] for w in (1, 2, 8)}
    assert outs[1] == outs[2] == outs[8]


def test_old_solver_environment_variables_change_nothing(tmp_path):
    """CPLOG, CPIGN, CPSUB, CPFULL and CPBATCH once reached the solver from the environment (unrecorded, able to
    move the schedule): compiling with any of them set gives the bytes of a compile without."""
    model = SAMPLES / "gpt2_prefill.onnx"
    here = _compile("gpt2_prefill")[2]
    clean = {k: v for k, v in os.environ.items() if not k.startswith("CP")}
    for name, value in (("CPLOG", "1"), ("CPIGN", "core,no_lp"), ("CPSUB", "quick_restart"), ("CPFULL", "1"),
                        ("CPBATCH", "1")):
        out = tmp_path / f"{name}.lpu"
        done = subprocess.run([sys.executable, "-m", "lpuc.compiler", "compile", str(model), "-o", str(out), "--chips",
                               "1", "--precision", "fp32", "--json"], cwd=ROOT, env={**clean, name: value}, capture_output=True, text=True)
        assert done.returncode == 0, f"{name}={value}: {done.stderr}"
        assert out.read_bytes() == here, f"{name}={value} changed the .lpu bytes"
