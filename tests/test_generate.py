"""Generation with the KV cache resident in SRAM (issue 15): `lpuc generate`, the state in the IR, the
interpreter keeping it from step to step, the host traffic of a step, determinism, and the errors.

The references: each decode sample's `.generate.npz` (a prompt and Hugging Face's greedy tokens), and for
other prompts ONNX Runtime run step by step on the decode graph with the whole past fed back (the cache
left-padded with masked zeros to the graph's fixed past length): greedy tokens equal to it are the model's."""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

import lpuc
from lpuc.backends import interpreter
from lpuc.backends.interpreter import HazardError
from lpuc.backends.lpu import program_bytes
from lpuc.backends.state import State, step_positions
from lpuc.compiler.driver import load_model
from lpuc.compiler.frontend.state import StateError, make_stateful
from lpuc.compiler.generate import compile_generation, generate
from lpuc.ir.errors import VerifyError
from lpuc.ir.layout import words
from lpuc.ir.parser import parse
from lpuc.ir.printer import print_module
from lpuc.ir.verifier import verify

from helpers import SAMPLES, assert_one_line_error, run_cli, save, tiny_model

DECODERS = ("gpt2_decode", "llama_decode", "gemma_decode", "mixtral_decode", "llama_decode_op23",
            "mixtral_decode_op23")
PROMPT = np.asarray([[3, 17, 42]], np.int64)


@lru_cache(maxsize=None)
def programs(sample: str, chips: int = 1, prefill: bool = False):
    """The sample's decode step with its cache resident, and its prefill partner when asked (the list
    scheduler: the schedule does not change the tokens, and it is quick)."""
    partner = SAMPLES / f"{sample.replace('_decode', '_prefill')}.onnx" if prefill else None
    return compile_generation(SAMPLES / f"{sample}.onnx", partner, chips=chips, scheduler="list")


def hugging_face(sample: str) -> tuple[np.ndarray, np.ndarray]:
    """The sample's prompt and Hugging Face's greedy tokens after it."""
    with np.load(SAMPLES / f"{sample}.generate.npz") as f:
        return f["prompt"], f["tokens"]


def context(sample: str) -> int:
    model = onnx.load(str(SAMPLES / f"{sample}.onnx"), load_external_data=False)
    mask = next(i for i in model.graph.input if i.name == "attention_mask")
    return mask.type.tensor_type.shape.dim[1].dim_value


@lru_cache(maxsize=None)
def reference(sample: str, prompt: tuple, tokens: int) -> tuple[int, ...]:
    """Greedy tokens from ONNX Runtime, step by step, the whole past fed back each step."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    sess = ort.InferenceSession(str(SAMPLES / f"{sample}.onnx"), opts, providers=["CPUExecutionProvider"])
    feeds = {i.name: i for i in sess.get_inputs()}
    slots = feeds["attention_mask"].shape[1]
    past = {n: np.zeros(i.shape, np.float32) for n, i in feeds.items() if n.startswith("past_key_values")}
    names = [o.name for o in sess.get_outputs()]
    seq, new = list(prompt), []
    for pos in range(len(prompt) + tokens - 1):
        mask = np.zeros((1, slots), np.int64)
        mask[0, slots - 1 - pos:] = 1  # the past's last `pos` rows and the new token
        out = dict(zip(names, sess.run(None, {"input_ids": np.asarray([[seq[pos]]]), "attention_mask": mask,
                                              "position_ids": np.asarray([[pos]]), **past})))
        past = {n: out[n.replace("past_key_values", "present")][:, :, 1:] for n in past}
        if pos >= len(prompt) - 1:
            new.append(int(out["logits"].reshape(-1)[-out["logits"].shape[-1]:].argmax()))
            seq.append(new[-1])
    return tuple(new)


# every decoder at 1 chip with and without its prefill; at 4 chips with it (without it, two of them)
ACCEPTANCE = [(s, 1, p) for s in DECODERS for p in (False, True)] + [(s, 4, True) for s in DECODERS] \
    + [("gpt2_decode", 4, False), ("mixtral_decode_op23", 4, False)]


@pytest.mark.parametrize("sample,chips,prefill", ACCEPTANCE)
def test_generate_gives_hugging_face_greedy_tokens(sample, chips, prefill):
    step, first = programs(sample, chips, prefill)
    prompt, tokens = hugging_face(sample)
    result = generate(step, prompt, tokens.shape[1], first)
    assert result.tokens.dtype == np.int64 and result.tokens.tolist() == tokens.tolist()
    rows = step_positions(first.module) if prefill else 0
    assert result.ttft_cycles == (first.cycles if prefill else 0) + (prompt.shape[1] - rows) * step.cycles


@pytest.mark.parametrize("length", (3, 7))
def test_a_prompt_shorter_than_the_prefill_is_padded(length):
    """Through the prefill padded at its end with mask 0 (3 tokens), or filling it exactly (7)."""
    step, first = programs("llama_decode_op23", 1, True)
    prompt = hugging_face("llama_decode_op23")[0][:, :length]
    result = generate(step, prompt, 4, first)
    assert tuple(result.tokens[0]) == reference("llama_decode_op23", tuple(prompt[0]), 4)
    assert result.ttft_cycles == first.cycles


def test_a_step_moves_only_ids_position_mask_and_logits_across_the_host():
    step, _ = programs("llama_decode")
    result = generate(step, PROMPT, 2)
    lanes, word_bytes = step.machine.lanes, step.machine.sram.word_bytes
    interface = [v.type for v in step.module.inputs] + [v.type for _, v in step.module.outputs]
    assert sorted(v.name for v in step.module.inputs) == ["attention_mask", "input_ids", "position_ids"]
    assert [name for name, _ in step.module.outputs] == ["logits"]
    # the words of those tensors (whole vectors) and nothing else: at most their bytes plus one vector of
    # padding per row and byte-plane
    assert result.host_bytes_per_token == sum(words(t, lanes) for t in interface) * word_bytes
    padding = sum((t.numel // t.shape[-1]) * lanes * t.dtype.itemsize for t in interface)
    assert result.host_bytes_per_token <= sum(t.numel * t.dtype.itemsize for t in interface) + padding
    # the same step compiled with its cache as inputs and outputs moves the cache twice
    stateless = lpuc.compile(SAMPLES / "llama_decode.onnx", scheduler="list")
    cache = sum(v.type.numel * v.type.dtype.itemsize for v in stateless.module.inputs if "past" in v.name)
    moved = interpreter.run(stateless, timing_only=True).stats.host_bytes
    assert moved >= result.host_bytes_per_token + 2 * cache


def test_the_state_persists_across_calls_on_one_loaded_program():
    step, _ = programs("gpt2_decode")
    step.state.reset()
    seq, ref = list(PROMPT[0]), reference("gpt2_decode", tuple(PROMPT[0]), 1)
    for pos, token in enumerate(seq):
        mask = np.zeros((1, context("gpt2_decode")), np.int64)
        mask[0, :pos + 1] = 1
        logits = lpuc.run(step, {"input_ids": np.asarray([[token]]), "attention_mask": mask,
                                 "position_ids": np.asarray([[pos]])}).outputs["logits"]
    assert int(logits.argmax()) == ref[0]
    step.state.reset()  # a new generation: slots 0..2 were never written in it
    with pytest.raises(HazardError, match="never written"):
        lpuc.run(step, {"input_ids": np.asarray([[5]]), "attention_mask": mask, "position_ids": np.asarray([[2]])})
    step.state.reset()


def test_two_generations_are_bitwise_identical():
    first = compile_generation(SAMPLES / "mixtral_decode.onnx", scheduler="list")[0]
    second = compile_generation(SAMPLES / "mixtral_decode.onnx", scheduler="list")[0]
    assert program_bytes(first) == program_bytes(second)
    a, b = generate(first, PROMPT, 3), generate(second, PROMPT, 3)
    assert a.tokens.tobytes() == b.tokens.tobytes() and a.report() == b.report()
    assert a.tokens_per_s > 0 and a.ttft_us == pytest.approx(3 * a.per_token_us)


def test_timing_only_simulates_each_program_once(monkeypatch):
    step, _ = programs("llama_decode")
    calls = []
    real = interpreter.run
    monkeypatch.setattr(interpreter, "run", lambda *a, **k: calls.append(k) or real(*a, **k))
    timed = generate(step, PROMPT, 3, timing_only=True)
    assert len(calls) == 1 and calls[0]["timing_only"]
    numeric = generate(step, PROMPT, 3)
    assert (timed.ttft_us, timed.per_token_us, timed.host_bytes_per_token) == \
        (numeric.ttft_us, numeric.per_token_us, numeric.host_bytes_per_token)


# --- the state in the IR ----------------------------------------------------------

def test_stateful_modules_print_parse_and_verify():
    graph = make_stateful(load_model(SAMPLES / "llama_decode_op23.onnx")[0])
    assert [op.attrs["name"] for op in graph.ops if op.name == "graph.state"] == \
        ["past_key_values.0.key", "past_key_values.0.value", "past_key_values.1.key", "past_key_values.1.value"]
    step, _ = programs("llama_decode_op23")
    for module in (graph, step.module):
        text = print_module(module)
        assert print_module(parse(text)) == text and parse(text) == module


def _rewired(module, reader_name: str, operand: int, to):
    ops = []
    for op in module.ops:
        if op.results and op.results[0].name == reader_name:
            operands = list(op.operands)
            operands[operand] = to
            op = type(op)(op.name, tuple(operands), op.results, op.attrs)
        ops.append(op)
    return module.replace(ops=tuple(ops))


def test_the_verifier_checks_the_state_rules():
    graph = make_stateful(load_model(SAMPLES / "gpt2_decode.onnx")[0])
    state = next(op.result for op in graph.ops if op.name == "graph.state")
    reader = next(op for op in graph.ops if op.name == "graph.reshape" and op.operands[0].name == "present.0.key")
    with pytest.raises(VerifyError, match="reads the state"):
        verify(_rewired(graph, reader.result.name, 0, state))  # the state before this step's write
    key, value = [op for op in graph.ops if op.name == "graph.state_write"][:2]
    with pytest.raises(VerifyError, match="no state"):
        verify(_rewired(graph, value.result.name, 0, key.result))  # into the keys after their write
    with pytest.raises(VerifyError, match="position"):
        verify(graph.replace(attrs={}))


def _concat_model(position: bool):
    """A one-layer 'decoder' whose cache is a concat of past and new rows."""
    past = helper.make_tensor_value_info("past_key_values.0.key", TensorProto.FLOAT, [1, 1, 3, 4])
    new = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 1, 4])
    inputs = [past, new] + ([helper.make_tensor_value_info("position_ids", TensorProto.INT64, [1, 1])]
                            if position else [])
    out = helper.make_tensor_value_info("present.0.key", TensorProto.FLOAT, [1, 1, 4, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 1, 1, 4])
    nodes = [helper.make_node("Concat", ["past_key_values.0.key", "x"], ["present.0.key"], axis=2),
             helper.make_node("Relu", ["x"], ["y"])]
    return tiny_model(nodes, inputs, [out, y], opset=17)


def test_a_position_that_is_no_input_is_one_clear_error(tmp_path, capsys):
    model = save(_concat_model(position=False), tmp_path / "m.onnx")
    code, _, err = run_cli(capsys, "compile", model, "--state", "auto", "-o", tmp_path / "m.lpu")
    assert_one_line_error(code, err, "position is not a run-time input", "position_ids")
    assert not (tmp_path / "m.lpu").exists()


# --- generate's errors -------------------------------------------------------------

@pytest.mark.parametrize("case,words", [
    ("overflow", ("need {} slots".format(context("gpt2_decode") + 1), "holds {}".format(context("gpt2_decode")))),
    ("bad prompt", ("token ids", "[1, L]")),
    ("vocabulary", ("outside the vocabulary",)),
    ("no pairs", ("no past/present pairs",)),
    ("bad state", ("expected auto or PAST=PRESENT",)),
])
def test_generate_errors_are_one_line(case, words, tmp_path, capsys):
    prompt = {"bad prompt": np.zeros((2, 2, 2), np.int64), "vocabulary": np.asarray([[400]])}.get(case, PROMPT)
    np.save(tmp_path / "p.npy", prompt)
    model = SAMPLES / ("bert_prefill.onnx" if case == "no pairs" else "gpt2_decode.onnx")
    argv = ["generate", model, "--prompt", tmp_path / "p.npy",
            "--tokens", context("gpt2_decode") - 2 if case == "overflow" else 1,
            "--scheduler", "list", "-o", tmp_path / "t.npy"]
    if case == "bad state":
        argv = ["compile", model, "--state", "past", "-o", tmp_path / "t.lpu"]
    code, _, err = run_cli(capsys, *argv)
    assert_one_line_error(code, err, *words)
    assert not list(tmp_path.glob("t.*"))


def test_generate_cli_writes_tokens_and_json(tmp_path, capsys):
    import json

    np.save(tmp_path / "p.npy", PROMPT)
    code, out, err = run_cli(capsys, "generate", SAMPLES / "gemma_decode.onnx", "--prompt", tmp_path / "p.npy",
                             "--tokens", 3, "--scheduler", "list", "-o", tmp_path / "t.npy", "--json")
    assert code == 0, err
    report = json.loads(out)
    assert {"tokens", "ttft_us", "per_token_us", "tokens_per_s", "host_bytes_per_token"} <= set(report)
    assert np.load(tmp_path / "t.npy").tolist() == report["tokens"]
    assert tuple(report["tokens"][0]) == reference("gemma_decode", tuple(PROMPT[0]), 3)


def test_explicit_pairs_are_the_hugging_face_ones_by_name():
    from lpuc.compiler.frontend.state import hf_pairs, parse_pairs

    graph = load_model(SAMPLES / "mixtral_decode.onnx")[0]
    text = ",".join(f"{past}={present}" for past, present in hf_pairs(graph))
    assert make_stateful(graph, parse_pairs(text)) == make_stateful(graph)
    partial = make_stateful(graph, parse_pairs("past_key_values.1.value=present.1.value"))
    assert [op.attrs["name"] for op in partial.ops if op.name == "graph.state"] == ["past_key_values.1.value"]
    assert "present.1.value" not in dict(partial.outputs) and "present.0.key" in dict(partial.outputs)
    with pytest.raises(StateError, match="no output 'present.9.key'"):
        make_stateful(graph, parse_pairs("past_key_values.9.key=present.9.key"))


def test_verify_covers_stateful_programs():
    """Two compiles in fresh processes, each program run twice as the first steps of a new generation."""
    verdict = lpuc.verify(SAMPLES / "gemma_decode.onnx", repeat=2, workers=(1, 2), scheduler="list", state="auto")
    assert verdict.deterministic, verdict.lines()
    assert len({c.sha256 for c in verdict.compiles}) == 1 and len({r.outputs_sha256 for r in verdict.runs}) == 1


def test_compile_run_and_the_report_give_a_decode_steps_tokens_per_second(tmp_path, capsys):
    import json

    from lpuc.backends.report import report_data

    lpu = tmp_path / "step.lpu"
    code, out, err = run_cli(capsys, "compile", SAMPLES / "gpt2_decode.onnx", "--state", "auto", "--scheduler", "list",
                             "-o", lpu, "--json")
    assert code == 0, err
    compiled = json.loads(out)
    assert compiled["tokens_per_s"] == pytest.approx(1e6 / compiled["per_token_us"], rel=1e-3)
    code, out, err = run_cli(capsys, "run", lpu, "--json")
    ran = json.loads(out)
    assert (ran["per_token_us"], ran["tokens_per_s"]) == (compiled["per_token_us"], compiled["tokens_per_s"])
    code, out, err = run_cli(capsys, "run", lpu)
    assert "tokens/s" in out + err and "resident" in out + err
    summary = report_data(lpuc.read_lpu(lpu))["summary"]
    assert summary["decode"] and summary["tokens_per_s"] == pytest.approx(compiled["tokens_per_s"], rel=1e-3)


def test_generate_runs_a_compiled_lpu_and_programs_must_share_the_cache(tmp_path, capsys):
    np.save(tmp_path / "p.npy", PROMPT)
    code, _, err = run_cli(capsys, "compile", SAMPLES / "llama_decode.onnx", "--state", "auto", "--scheduler",
                           "list", "-o", tmp_path / "d.lpu")
    assert code == 0, err
    code, out, err = run_cli(capsys, "generate", tmp_path / "d.lpu", "--prompt", tmp_path / "p.npy", "--tokens", 3)
    assert code == 0, err
    assert tuple(int(t) for t in out.split()[:3]) == reference("llama_decode", tuple(PROMPT[0]), 3)
    # a program keeping the cache elsewhere cannot continue the generation
    step, _ = programs("llama_decode")
    other = lpuc.compile(SAMPLES / "llama_decode.onnx", scheduler="list", state="auto", stripes=1)
    state = State()
    mask = np.zeros((1, context("llama_decode")), np.int64)
    mask[0, 0] = 1
    inputs = {"input_ids": np.asarray([[3]]), "attention_mask": mask, "position_ids": np.asarray([[0]])}
    interpreter.run(step, inputs, state=state)
    with pytest.raises(lpuc.LpucError, match="compile prefill and decode together"):
        interpreter.run(other, inputs, state=state)
