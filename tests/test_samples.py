"""Every bundled sample imports, verifies, round-trips through IR text, and evaluates
like ONNX Runtime (run live here) and like its stored outputs."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest

from lpuc.compiler.cli import main
from lpuc.compiler.driver import load_model
from lpuc.compiler.inputs import index_bounds
from lpuc.ir import parse, print_module
from lpuc.ir.evaluator import evaluate
from lpuc.ir.verifier import verify

from helpers import SAMPLES, assert_close, max_rel_error, run_ort

spec = importlib.util.spec_from_file_location("samples_ort_generate", SAMPLES / "ort_generate.py")
ort_generate = importlib.util.module_from_spec(spec)
spec.loader.exec_module(ort_generate)

TOL = 1e-5
SAMPLE_PATHS = sorted(SAMPLES.glob("*.onnx"))
ALL = [pytest.param(p, id=p.stem) for p in SAMPLE_PATHS]
DECODERS = [pytest.param(p, id=p.stem) for p in SAMPLE_PATHS if "_decode" in p.stem]


def test_samples_are_bundled():
    assert len(SAMPLE_PATHS) >= 10
    for p in SAMPLE_PATHS:
        assert p.with_suffix(".inputs.npz").exists() and p.with_suffix(".outputs.npz").exists(), p.name


def test_decoders_have_prefill_partners_and_the_hf_layout():
    """Decode: one token at context 24 over a 23-slot past; prefill: 7 tokens; both return present K/V."""
    assert len(DECODERS) == 6
    for param in DECODERS:
        decode, = param.values
        prefill = SAMPLES / f"{decode.stem.replace('_decode', '_prefill')}.onnx"
        step, first = (load_model(p)[0] for p in (decode, prefill))
        inputs = {v.name: v.type.shape for v in step.inputs}
        assert {k: inputs.pop(k) for k in ("input_ids", "attention_mask", "position_ids")} == {
            "input_ids": (1, 1), "attention_mask": (1, 24), "position_ids": (1, 1)}, decode.name
        outputs = dict(step.outputs)
        assert outputs.pop("logits").type.shape == (1, 1, 400)
        assert sorted(outputs) == sorted(n.replace("past_key_values", "present") for n in inputs) and inputs
        for name, past in inputs.items():
            b, h, slots, d = past
            assert slots == 23 and outputs[name.replace("past_key_values", "present")].type.shape == (b, h, 24, d)
            assert dict(first.outputs)[name.replace("past_key_values", "present")].type.shape == (b, h, 7, d)
        assert {v.name: v.type.shape for v in first.inputs} == {
            "input_ids": (1, 7), "attention_mask": (1, 7), "position_ids": (1, 7)}, prefill.name
        # the stored step is over a partly filled cache: mask 0 on the unused slots
        mask = _npz(decode.with_suffix(".inputs.npz"))["attention_mask"]
        assert 0 < mask[0, :-1].sum() < 23 and mask[0, -1] == 1


@pytest.mark.parametrize("decode", DECODERS)
def test_generate_npz_is_what_onnxruntime_generates(decode):
    """<decode>.generate.npz holds an 8-token prompt and the 16 greedy tokens (Hugging Face's, checked by
    export_samples.py); onnxruntime stepping the decode graph over a resident-style cache reproduces them, with
    the prompt fed token by token and with its first 7 tokens through the prefill graph."""
    stored = _npz(SAMPLES / f"{decode.stem}.generate.npz")
    prompt, tokens = stored["prompt"], stored["tokens"]
    assert set(stored) == {"prompt", "tokens"}
    assert prompt.dtype == tokens.dtype == np.int64 and prompt.shape == (1, 8) and tokens.shape == (1, 16)
    assert 0 <= min(prompt.min(), tokens.min()) and max(prompt.max(), tokens.max()) < 400
    assert len(set(tokens[0].tolist())) > 3, "degenerate generation (one token repeated)"
    prefill = SAMPLES / f"{decode.stem.replace('_decode', '_prefill')}.onnx"
    for through in (None, prefill):
        assert np.array_equal(ort_generate.ort_generate(decode, prompt, 16, through), tokens), through


@pytest.fixture(scope="module")
def imported():
    """Import each sample once per module."""
    cache = {}

    def get(path):
        if path not in cache:
            cache[path] = load_model(path)
        return cache[path]

    return get


def _npz(path):
    with np.load(path, allow_pickle=False) as f:
        return {k: f[k] for k in f.files}


@pytest.mark.parametrize("path", ALL)
def test_imports_fully_and_verifies(path, imported):
    module, report = imported(path)
    assert report.supported == report.total > 0, report.summary()
    assert report.summary().startswith(f"{report.total}/{report.total} nodes supported")
    verify(module)
    assert module.outputs and module.inputs


@pytest.mark.parametrize("path", ALL)
def test_ir_text_round_trip(path, imported):
    module, _ = imported(path)
    text = print_module(module)
    again = parse(text)
    assert again == module
    assert print_module(again) == text


@pytest.mark.parametrize("path", ALL)
def test_matches_onnxruntime_and_stored_outputs(path, imported):
    module, _ = imported(path)
    inputs = _npz(path.with_suffix(".inputs.npz"))
    stored = _npz(path.with_suffix(".outputs.npz"))
    ours = evaluate(module, inputs)
    assert set(ours) == set(stored)
    assert_close(ours, run_ort(path, inputs), TOL)
    assert_close(ours, stored, TOL)


@pytest.mark.parametrize("path", ALL)
def test_eval_random_inputs_are_valid_and_match_onnxruntime(path, imported, tmp_path, capsys):
    module, _ = imported(path)
    out = tmp_path / "out.npz"
    assert main(["eval", str(path), "-o", str(out)]) == 0
    printed = capsys.readouterr().out
    inputs, ours = _npz(tmp_path / "out.inputs.npz"), _npz(out)
    assert set(inputs) == {v.name for v in module.inputs}
    assert set(ours) == {name for name, _ in module.outputs}
    for name in ours:
        assert f"{name}: " in printed
    bounds = index_bounds(module)
    assert "input_ids" in bounds
    for name, bound in bounds.items():
        assert 0 <= inputs[name].min() and inputs[name].max() < bound, name
    for v in module.inputs:
        assert inputs[v.name].shape == v.type.shape and inputs[v.name].dtype == v.type.dtype.numpy
        if "mask" in v.name:
            assert (inputs[v.name] == 1).all()
        if v.type.dtype.is_float:
            assert np.isfinite(inputs[v.name]).all()
    ref = run_ort(path, inputs)
    assert_close(ours, ref, TOL)
    for name, a in ours.items():
        assert np.isfinite(a).all(), name


def test_random_inputs_are_deterministic(tmp_path):
    path = SAMPLES / "gpt2_decode.onnx"
    for run in "ab":
        assert main(["eval", str(path), "-o", str(tmp_path / f"{run}.npz"), "--seed", "3"]) == 0
    assert (tmp_path / "a.npz").read_bytes() == (tmp_path / "b.npz").read_bytes()
    assert (tmp_path / "a.inputs.npz").read_bytes() == (tmp_path / "b.inputs.npz").read_bytes()


def test_max_rel_error():
    ref = np.array([1.0, -4.0, 2.0], np.float32)
    assert max_rel_error(ref, ref) == 0.0
    assert max_rel_error(ref + np.float32(0.004), ref) == pytest.approx(1e-3, rel=1e-4)
    assert max_rel_error(np.zeros(2), np.zeros(2)) == 0.0
