"""The vector width is the machine's: with tests/machines/narrow-160.toml (160 lanes, 160-byte SRAM
words, 160 x 160 MXM tiles) every sample compiles on 1 and 4 chips, runs on the interpreter (which
checks every hazard) and matches onnxruntime (the stored outputs) within 1e-4. The samples' widths
(hidden 64 and 96, MLP 344, fused gate/up 336, vocab 400) are below one 160-lane vector, or beyond it
and not a multiple of it, so matmuls cut into several k- and n-tiles that the 320-lane tsp-v1 does not."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from lpuc.backends import interpreter
from lpuc.backends.lpu import build_program, load_lpu, lpu_bytes
from lpuc.compiler.driver import compile_model, lpu_options, max_relative_error
from lpuc.compiler.pipeline import CompileOptions

from helpers import SAMPLES

NARROW = Path(__file__).parent / "machines" / "narrow-160.toml"
MODELS = sorted(p.stem for p in SAMPLES.glob("*.onnx"))


def _npz(name: str, kind: str) -> dict:
    with np.load(SAMPLES / f"{name}.{kind}.npz") as f:
        return {k: f[k] for k in f.files}


@pytest.mark.parametrize("chips", [1, 4])
@pytest.mark.parametrize("name", MODELS)
def test_sample_on_160_lanes(name, chips):
    options = CompileOptions(scheduler="list", chips=chips, precision="fp32")
    module, summary, machine_text = compile_model(SAMPLES / f"{name}.onnx", NARROW, options)
    program = build_program(module, machine_text, lpu_options(options), summary.facts())
    assert program.target.lanes == 160 and program.target.chips == chips == summary.chips
    installs = [op.result.type.shape[-2:] for op in module.ops if op.name == "mxm.install"]  # the tiles
    assert max(max(shape) for shape in installs) == 160  # full 160-wide tiles: wider matmuls were cut
    result = interpreter.run(program, _npz(name, "inputs"))
    ref = _npz(name, "outputs")
    assert max(max_relative_error(result.outputs[k], ref[k]) for k in ref) <= 1e-4
    assert result.stats.cycles == summary.cycles
    if chips == 4:  # the .lpu round trip keeps the machine's width: words of 160 bytes in the image
        loaded = load_lpu(lpu_bytes(module, machine_text, lpu_options(options), summary.facts()))
        assert loaded.target == program.target
        assert all(words.shape[1] == 160 for words in loaded.image.values())


def test_tsp_v1_and_narrow_lay_out_differently():
    """The same model on both machines: different tiles, the same numbers."""
    name = "gpt2_decode"
    wide = compile_model(SAMPLES / f"{name}.onnx", options=CompileOptions(scheduler="list", precision="fp32"))[0]
    narrow = compile_model(SAMPLES / f"{name}.onnx", NARROW, CompileOptions(scheduler="list", precision="fp32"))[0]
    count = {m.attrs["machine"]: sum(op.name == "mxm.install" for op in m.ops) for m in (wide, narrow)}
    assert count["narrow-160"] > count["tsp-v1"]
