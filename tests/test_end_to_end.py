"""One chip, end to end: every bundled sample (prefill and decode) and a few
hand-built models go through the whole pipeline (ONNX -> graph IR -> machine IR
-> SRAM allocation -> CP-SAT schedule -> .lpu -> cycle-accurate interpreter) and
must reproduce ONNX Runtime (max relative error <= 1e-4), with the interpreter's
cycle count equal to the compiler's and the lower bound below it.

Each model is compiled once per module (a module-scoped cache)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from lpuc.backends import interpreter
from lpuc.backends.lpu import build_program, read_lpu, write_lpu
from lpuc.compiler.cli import main
from lpuc.compiler.driver import compile_model
from lpuc.compiler.pipeline import CompileOptions

from helpers import SAMPLES, compiled_sample, legacy_transformer, max_rel_error, run_ort, save, token_ids

TOL = 1e-4
SAMPLE_PATHS = sorted(SAMPLES.glob("*.onnx"))


def _npz(path: Path) -> dict[str, np.ndarray]:
    with np.load(path) as f:
        return {k: f[k] for k in f.files}


class Compiled:
    """A model compiled for one tsp-v1 chip, written to a .lpu, read back and run once."""

    def __init__(self, model: Path, inputs: dict, lpu: Path):
        self.model, self.inputs = model, inputs
        self.module, self.summary, self.machine_text = (
            compiled_sample(model.stem, "fp32") if model.parent == SAMPLES
            else compile_model(model, options=CompileOptions(precision="fp32")))
        self.sha = write_lpu(lpu, self.module, self.machine_text, {"chips": 1})
        self.program = read_lpu(lpu)
        self.result = interpreter.run(self.program, inputs)


@pytest.fixture(scope="module")
def compiled(tmp_path_factory):
    cache: dict[str, Compiled] = {}
    out = tmp_path_factory.mktemp("lpu")

    def get(model: Path, inputs: dict) -> Compiled:
        if model.stem not in cache:
            cache[model.stem] = Compiled(model, inputs, out / f"{model.stem}.lpu")
        return cache[model.stem]
    return get


def test_all_thirteen_samples_are_here():
    names = [p.stem for p in SAMPLE_PATHS]
    assert len(names) == 13, names
    assert {n.split("_")[1] for n in names} == {"prefill", "decode"}


# --- the bundled samples ---------------------------------------------------------

@pytest.mark.parametrize("path", SAMPLE_PATHS, ids=lambda p: p.stem)
def test_sample_matches_onnxruntime(path, compiled):
    inputs = _npz(path.with_suffix(".inputs.npz"))
    c = compiled(path, inputs)
    live, stored = run_ort(path, inputs), _npz(path.with_suffix(".outputs.npz"))
    assert set(c.result.outputs) == set(live) == set(stored)
    for name in stored:
        assert max_rel_error(c.result.outputs[name], live[name]) <= TOL, f"{name} vs ONNX Runtime"
        assert max_rel_error(c.result.outputs[name], stored[name]) <= TOL, f"{name} vs the stored outputs"


@pytest.mark.parametrize("path", SAMPLE_PATHS, ids=lambda p: p.stem)
def test_sample_cycles_agree(path, compiled):
    c = compiled(path, _npz(path.with_suffix(".inputs.npz")))
    s, stats = c.summary, c.result.stats
    assert c.result.hazards == ()
    assert stats.cycles == s.cycles == c.program.cycles          # interpreter == compiler == manifest
    assert 0 < s.lower_bound <= s.cycles
    assert s.lower_bound == max(s.critical_path, s.resource_bound, s.proven_bound)
    assert stats.instructions == s.instructions
    assert stats.latency_us == pytest.approx(s.microseconds)
    # the in-memory program is the one written to the file
    assert build_program(c.module, c.machine_text, {"chips": 1}).cycles == s.cycles


# --- hand-built models: odd widths and lengths, several layers, K > 320 -------------

HAND_BUILT = {
    # width 333: K = 333 and 666 (row-tiled), N = 999 (column-tiled), 9 heads of 37
    "w333-l3-s7": dict(width=333, heads=9, layers=3, seq=7),
    # width 700: K = 700 and 1400, N = 1400; sequence 13
    "w700-l2-s13": dict(width=700, heads=7, layers=2, seq=13),
    # a single token through four layers
    "w64-l4-s1": dict(width=64, heads=4, layers=4, seq=1),
    # a long odd sequence, an MLP of 500 (K = 500 on the way down)
    "w96-l2-s33-mlp500": dict(width=96, heads=3, layers=2, seq=33, mlp=500),
    # a sequence of 161: the scores (3 x 161 rows of one vector column) and their softmax run in row pieces
    "w96-l2-s161": dict(width=96, heads=3, layers=2, seq=161, max_pos=192),
    # width 700 over 61 tokens: the norms and the reductions along rows of three vector columns run in row
    # pieces; 7 heads over the 4 MXM planes
    "w700-l2-s61": dict(width=700, heads=7, layers=2, seq=61),
}


@pytest.mark.parametrize("name", HAND_BUILT)
def test_hand_built_model(name, compiled, tmp_path_factory):
    kw = HAND_BUILT[name]
    path = save(legacy_transformer(**kw), tmp_path_factory.mktemp("onnx") / f"{name}.onnx")
    inputs = token_ids(kw["seq"])
    c = compiled(path, inputs)
    ref = run_ort(path, inputs)
    assert max_rel_error(c.result.outputs["logits"], ref["logits"]) <= TOL
    assert c.result.stats.cycles == c.summary.cycles
    assert c.summary.lower_bound <= c.summary.cycles
    if kw["seq"] > 128:  # the scores and their softmax really run in row pieces
        assert any(op.name == "mem.row_join" for op in c.module.ops)
    if kw["width"] > 320 and kw["seq"] > 44:  # ... and rows wider than a vector (22 rows of 12 words a piece)
        assert any(op.name == "mem.row_join" and op.operands[0].type.shape[-1] > 320 for op in c.module.ops)
    if kw["width"] > 320 or kw.get("mlp", 0) > 320:  # row-tiled weights really occur (a window's k0 > 0)
        assert any(op.name == "mxm.install" and op.attrs.get("start", (0,))[0] > 0 for op in c.module.ops)


# --- the demo --------------------------------------------------------------------

def test_demo_exits_0(tmp_path, capsys):
    assert main(["demo", "--out-dir", str(tmp_path)]) == 0
    out, _ = capsys.readouterr()
    assert "OK" in out and "max relative error" in out
    assert (tmp_path / "llama_prefill.lpu").is_file()


def test_a_run_reports_its_stages_and_the_time_left(tmp_path):
    """`lpuc run` of a large program takes minutes: loading, checking, planning and running each say so (on
    stderr, after two seconds), the run with the cycle reached and an estimate of the time left."""
    module, _, machine_text = compiled_sample("gpt2_prefill")
    write_lpu(tmp_path / "p.lpu", module, machine_text, {"chips": 1})
    lines: list[str] = []
    interpreter.run(tmp_path / "p.lpu", timing_only=True, progress=lines.append)
    assert lines[0].startswith("parsing the program (") and lines[1].startswith("verifying the program ("), lines
    assert lines[2].startswith("planning "), lines
    running = [line for line in lines if line.startswith("running: cycle ")]
    assert 7 <= len(running) <= 8 and all(line.endswith(" s left") for line in running), lines
