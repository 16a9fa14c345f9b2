"""Determinism: the same model and options give byte-identical .lpu files — in
one process and in separate processes with different hash seeds; running a
program twice gives the same cycles and bitwise the same outputs; and
`lpuc compile --json` / `lpuc run --json` print exactly one JSON object."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from lpuc.backends import interpreter
from lpuc.backends.lpu import build_program, lpu_bytes, read_lpu, sha256
from lpuc.compiler.cli import main
from lpuc.compiler.driver import compile_model, lpu_options
from lpuc.compiler.pipeline import CompileOptions

from helpers import ROOT, SAMPLES, compiled_sample

SAMPLE_PATHS = sorted(SAMPLES.glob("*.onnx"))
OPTIONS = lpu_options(CompileOptions())   # what `lpuc compile` records
HASH_SEEDS = ("0", "1", "12345")
PROCESS_SAMPLES = ("llama_prefill", "gpt2_decode")
COMPILE_KEYS = {"cycles", "lower_bound_cycles", "latency_us", "instructions", "sram_peak_bytes", "schedule_sha256"}
RUN_KEYS = {"cycles", "latency_us", "instructions", "sram_peak_bytes", "schedule_sha256"}


def _npz(path: Path) -> dict[str, np.ndarray]:
    with np.load(path) as f:
        return {k: f[k] for k in f.files}


def _lpu(path: Path, fresh: bool = False) -> bytes:
    """The .lpu bytes of a sample: a fresh compile, or the session's shared one."""
    module, summary, machine_text = compile_model(path) if fresh else compiled_sample(path.stem)
    return lpu_bytes(module, machine_text, OPTIONS, summary.facts())


@pytest.mark.parametrize("path", SAMPLE_PATHS, ids=lambda p: p.stem)
def test_compile_twice_in_one_process(path):
    assert _lpu(path, fresh=True) == _lpu(path)


def test_bytes_do_not_depend_on_the_file_name(tmp_path, capsys):
    """The same model copied under another name and directory, or reached through a symlink, gives the
    same .lpu bytes: the module is named after the ONNX graph, not after the file."""
    original = SAMPLES / "gpt2_prefill.onnx"
    (tmp_path / "elsewhere").mkdir()
    copy = tmp_path / "elsewhere" / "renamed model.onnx"
    copy.write_bytes(original.read_bytes())
    link = tmp_path / "link.onnx"
    link.symlink_to(original)
    lpus = []
    for i, model in enumerate((original, copy, link)):
        out = tmp_path / f"{i}.lpu"
        assert main(["compile", str(model), "-o", str(out), "--scheduler", "list"]) == 0, capsys.readouterr().err
        lpus.append(out.read_bytes())
    assert lpus[0] == lpus[1] == lpus[2]
    assert read_lpu(tmp_path / "1.lpu").module.name == "main_graph"  # the exporter's graph name


def test_separate_processes_and_hash_seeds(tmp_path):
    """`python -m compiler compile` under PYTHONHASHSEED 0, 1, 12345 (in parallel) == in-process bytes."""
    procs = {}
    for name in PROCESS_SAMPLES:
        for seed in HASH_SEEDS:
            out = tmp_path / f"{name}.{seed}.lpu"
            env = {**os.environ, "PYTHONHASHSEED": seed}
            procs[name, seed] = (out, subprocess.Popen(
                [sys.executable, "-m", "lpuc.compiler", "compile", str(SAMPLES / f"{name}.onnx"), "-o", str(out), "--json"],
                cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    results = {}
    for key, (out, p) in procs.items():
        stdout, stderr = p.communicate(timeout=300)
        assert p.returncode == 0, stderr
        results[key] = (out.read_bytes(), json.loads(stdout))
    for name in PROCESS_SAMPLES:
        here = _lpu(SAMPLES / f"{name}.onnx")
        for seed in HASH_SEEDS:
            data, report = results[name, seed]
            assert data == here, f"{name}: PYTHONHASHSEED={seed} gives other bytes"
            assert report["schedule_sha256"] == sha256(here)


@pytest.mark.parametrize("name", ["llama_prefill", "mixtral_prefill", "bert_prefill"])
def test_run_twice_is_identical(name):
    path = SAMPLES / f"{name}.onnx"
    module, summary, machine_text = compiled_sample(name)
    inputs = _npz(path.with_suffix(".inputs.npz"))
    a = interpreter.run(build_program(module, machine_text), inputs)
    b = interpreter.run(build_program(module, machine_text), inputs)
    assert a.stats == b.stats and a.stats.cycles == summary.cycles
    assert a.trace == b.trace
    assert list(a.outputs) == list(b.outputs)
    for k in a.outputs:
        assert a.outputs[k].dtype == b.outputs[k].dtype
        assert a.outputs[k].tobytes() == b.outputs[k].tobytes()  # bitwise


def _one_json(out: str) -> dict:
    """stdout holds exactly one JSON object, on one line, and nothing else."""
    lines = out.splitlines()
    assert len(lines) == 1, out
    report = json.loads(lines[0])
    assert isinstance(report, dict)
    return report


def test_compile_and_run_json(tmp_path, capsys):
    lpu, outs = tmp_path / "m.lpu", tmp_path / "out.npz"
    sample = SAMPLES / "gemma_decode.onnx"
    assert main(["compile", str(sample), "-o", str(lpu), "--json"]) == 0
    compiled = _one_json(capsys.readouterr().out)
    assert COMPILE_KEYS <= set(compiled)
    assert compiled["schedule_sha256"] == sha256(lpu.read_bytes())
    assert 0 < compiled["lower_bound_cycles"] <= compiled["cycles"]
    assert compiled["latency_us"] == pytest.approx(compiled["cycles"] / 900, abs=1e-3)
    assert compiled["instructions"] > 0 and compiled["sram_peak_bytes"] > 0

    assert main(["run", str(lpu), "--inputs", str(sample.with_suffix(".inputs.npz")), "-o", str(outs),
                 "--json"]) == 0
    ran = _one_json(capsys.readouterr().out)
    assert RUN_KEYS <= set(ran)
    assert ran["schedule_sha256"] == compiled["schedule_sha256"]
    # compile predicts what run measures
    for key in ("cycles", "latency_us", "instructions", "sram_peak_bytes"):
        assert ran[key] == compiled[key], key
    assert set(ran["outputs"]) == set(_npz(outs))

    # random inputs: still one JSON object on stdout (no progress line there)
    assert main(["run", str(lpu), "--json"]) == 0
    again = _one_json(capsys.readouterr().out)
    assert again["cycles"] == ran["cycles"] and again["schedule_sha256"] == ran["schedule_sha256"]


@pytest.mark.parametrize("chips, partition", [(2, "tensor"), (7, "pipeline")])
def test_templated_compiles_across_processes_hash_seeds_and_workers(tmp_path, chips, partition):
    """A model of repeated layers (scheduled from templates, CP-SAT on each; pipeline: layer-aligned, a piece
    per layer): the same bytes under other hash seeds and solver worker counts, in separate processes."""
    model = tmp_path / "tiny.onnx"
    subprocess.run([sys.executable, str(ROOT / "samples" / "shape_only.py"), "tiny", "--mode", "decode", "--layers",
                    "5", "-o", str(model)], check=True, capture_output=True)
    procs = []
    for seed, workers in (("0", 8), ("1", 1), ("12345", 2)):
        out = tmp_path / f"{seed}.lpu"
        procs.append((out, subprocess.Popen(
            [sys.executable, "-m", "lpuc.compiler", "compile", str(model), "-o", str(out), "--json", "--no-weights",
             "--chips", str(chips), "--partition", partition, "--workers", str(workers)],
            cwd=ROOT, env={**os.environ, "PYTHONHASHSEED": seed}, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            text=True)))
    reports = []
    for out, p in procs:
        stdout, stderr = p.communicate(timeout=600)
        assert p.returncode == 0, stderr
        reports.append(json.loads(stdout))
    assert reports[0]["solver_status"].startswith("templates: "), reports[0]["solver_status"]
    assert len({r["schedule_sha256"] for r in reports}) == 1, [r["schedule_sha256"] for r in reports]
