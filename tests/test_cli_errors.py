"""Bad input to `lpuc`: one line on stderr, `lpuc: error: ...`, exit code 2, no
traceback, nothing written at the -o path. And the help texts."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
import onnx
from onnx import TensorProto, helper

from lpuc.compiler.cli import COMMANDS, main

from helpers import assert_one_line_error, run_cli, ROOT, SAMPLES, legacy_transformer, save, tiny_model

SAMPLE = SAMPLES / "gpt2_prefill.onnx"


def _inputs():
    with np.load(SAMPLES / "gpt2_prefill.inputs.npz") as f:
        return {k: f[k] for k in f.files}


run = run_cli


def _xy_model(nodes, opset=20, out_type=TensorProto.FLOAT, domains=()):
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3])
    y = helper.make_tensor_value_info("y", out_type, None)
    return tiny_model(nodes, [x], [y], opset=opset, domains=domains)


# --- bad models -----------------------------------------------------------------

def _truncated(tmp):
    data = SAMPLE.read_bytes()
    return _write(tmp / "trunc.onnx", data[: len(data) // 2])


def _write(path, data: bytes):
    path.write_bytes(data)
    return path


def _corrupted(edit):
    """The sample, edited at the protobuf level (a corruption a byte-level sweep found)."""
    def make(tmp):
        model = onnx.load(str(SAMPLE))
        edit(model.graph)
        return save(model, tmp / "bad.onnx")
    return make


def _node(graph, name):
    return next(n for n in graph.node if n.name == name)


def _set_nodes(graph, nodes):
    nodes = list(nodes)
    del graph.node[:]
    graph.node.extend(nodes)


def _attribute_of_wrong_type(graph):
    (to,) = _node(graph, "node__to_copy").attribute
    to.type = onnx.AttributeProto.STRING


MODELS = {
    "truncated": (_truncated, ["trunc.onnx", "not a valid ONNX model"]),
    "text": (lambda t: _write(t / "notes.onnx", b"this is not a model\n" * 20), ["notes.onnx", "not a valid ONNX"]),
    "random-bytes": (lambda t: _write(t / "noise.onnx", np.random.default_rng(0).bytes(4096)),
                     ["noise.onnx", "not a valid ONNX"]),
    "empty": (lambda t: _write(t / "empty.onnx", b""), ["empty.onnx", "not a valid ONNX"]),
    "missing": (lambda t: t / "nowhere.onnx", ["nowhere.onnx", "no such file"]),
    "unsupported": (lambda t: save(_xy_model([
        helper.make_node("Hardmax", ["x"], ["h"], name="hm"), helper.make_node("Relu", ["h"], ["r"], name="relu"),
        helper.make_node("Hardmax", ["r"], ["h2"], name="hm2"),
        helper.make_node("Custom", ["h2"], ["y"], name="cu", domain="org.example")], domains=["org.example"]),
        t / "unsup.onnx"), ["1/4 nodes supported", "Hardmax x2 (hm, hm2)", "org.example.Custom x1 (cu)"]),
    "nonzero": (lambda t: save(_xy_model([helper.make_node("NonZero", ["x"], ["y"], name="nz")],
                                         out_type=TensorProto.INT64), t / "nz.onnx"),
                ["NonZero", "data-dependent shapes", "static shapes"]),
    "opset-12": (lambda t: save(_xy_model([helper.make_node("Relu", ["x"], ["y"])], opset=12), t / "old.onnx"),
                 ["opset 12", "17-25"]),
    "symbolic-dims": (lambda t: save(legacy_transformer(), t / "sym.onnx"), ["'sequence'", "--shape"]),
    # a name with one flipped letter: the node's input is defined nowhere
    "renamed-initializer": (_corrupted(lambda g: setattr(g.initializer[0], "name", "model.transformer.wpf.weight")),
                            ["bad.onnx", "not a valid ONNX model", "'model.transformer.wpe.weight'",
                             "node_embedding_1"]),
    "dropped-initializer": (_corrupted(lambda g: g.initializer.remove(g.initializer[0])),
                            ["'model.transformer.wpe.weight'", "node_embedding_1", "is not output of any"]),
    "renamed-graph-input": (_corrupted(lambda g: setattr(g.input[0], "name", "input_idz")),
                            ["'input_ids'", "node_view", "is not output of any"]),
    "dropped-node": (_corrupted(lambda g: g.node.remove(_node(g, "node_add"))), ["'add'", "is not output of any"]),
    "unsorted-nodes": (_corrupted(lambda g: _set_nodes(g, reversed(g.node))), ["topologically sorted"]),
    "cycle": (_corrupted(lambda g: _node(g, "node_view").input.__setitem__(0, "logits")),
              ["topologically sorted", "'logits'", "node_view"]),
    "output-computed-twice": (_corrupted(lambda g: _node(g, "node_add").output.__setitem__(0, "embedding")),
                              ["single static assignment", "'embedding'"]),
    "no-outputs": (_corrupted(lambda g: g.ClearField("output")), ["bad.onnx", "no outputs"]),
    "unknown-output": (_corrupted(lambda g: setattr(g.output[0], "name", "logitz")),
                       ["Graph output 'logitz'"]),
    "missing-attribute": (_corrupted(lambda g: _node(g, "node__to_copy").ClearField("attribute")),
                          ["Required attribute 'to'", "node__to_copy"]),
    "attribute-of-wrong-type": (_corrupted(_attribute_of_wrong_type), ["attribute to", "node__to_copy"]),
    "too-few-inputs": (_corrupted(lambda g: _node(g, "node_add").input.pop()), ["node_add", "input size 1"]),
    "input-type-undefined": (_corrupted(lambda g: setattr(g.input[0].type.tensor_type, "elem_type", 0)),
                             ["node_view", "Element type of input 0 unknown"]),
    "initializer-too-short": (_corrupted(lambda g: g.initializer[1].dims.append(3)),  # small: the checker sees it
                              ["model.transformer.h.0.ln_1.weight", "does not match its shape"]),
    "name-not-utf8": (lambda t: _write(t / "bad.onnx", SAMPLE.read_bytes().replace(b"node_add", b"\xffode_add", 1)),
                      ["bad.onnx", "not a valid ONNX model", "b'\\xffode_add' is not UTF-8"]),
    "large-initializer-too-short": (_corrupted(lambda g: g.initializer[0].dims.__setitem__(0, 65)),
                                    ["model.transformer.wpe.weight", "does not match its shape [65, 96]"]),
}


@pytest.mark.parametrize("command", ["import", "eval"])
@pytest.mark.parametrize("case", MODELS)
def test_bad_model(tmp_path, capsys, case, command):
    make, words = MODELS[case]
    model = make(tmp_path)
    out = tmp_path / ("out.ir" if command == "import" else "out.npz")
    code, stdout, err = run(capsys, command, model, "-o", out)
    assert_one_line_error(code, err, *words)
    assert stdout == ""
    assert not out.exists() and not (tmp_path / "out.blobs.npz").exists() and not (tmp_path / "out.inputs.npz").exists()


# --- bad inputs -----------------------------------------------------------------

def _save_npz(path, arrays):
    np.savez(path, **arrays)
    return path


def _changed(**changes):
    def make(tmp):
        d = {k: v for k, v in {**_inputs(), **changes}.items() if v is not None}
        return _save_npz(tmp / "in.npz", d)
    return make


INPUTS = {
    "missing-input": (_changed(attention_mask=None), ["missing input(s): attention_mask"]),
    "extra-input": (_changed(bogus=np.zeros(3, np.float32)), ["unknown input(s): bogus"]),
    "wrong-shape": (_changed(input_ids=np.zeros((1, 5), np.int64)), ["input_ids", "[1, 5]", "[1, 7]"]),
    "wrong-rank": (_changed(input_ids=np.zeros(7, np.int64)), ["input input_ids:"]),
    "wrong-dtype": (_changed(input_ids=np.zeros((1, 7), np.int32)), ["input_ids", "int32", "int64"]),
    "text-file": (lambda t: _write(t / "in.npz", b"input_ids = 1 2 3\n"), ["in.npz", "not an .npz file"]),
    "npy-file": (lambda t: (np.save(t / "in.npy", np.zeros(3)), t / "in.npy")[1], ["in.npy", "not an .npz file"]),
    "empty-file": (lambda t: _write(t / "in.npz", b""), ["in.npz", "not an .npz file"]),
    "object-array": (lambda t: _save_npz(t / "in.npz", {"input_ids": np.array([None], dtype=object)}),
                     ["in.npz", "not a valid .npz"]),
    "no-such-file": (lambda t: t / "nowhere.npz", ["nowhere.npz", "no such file"]),
}


@pytest.fixture(scope="module")
def sample_ir(tmp_path_factory):
    ir = tmp_path_factory.mktemp("ir") / "gpt2.ir"
    assert main(["import", str(SAMPLE), "-o", str(ir)]) == 0
    return ir


@pytest.mark.parametrize("model", ["onnx", "ir"])
@pytest.mark.parametrize("case", INPUTS)
def test_bad_inputs(tmp_path, capsys, sample_ir, case, model):
    make, words = INPUTS[case]
    inputs = make(tmp_path)
    capsys.readouterr()
    out = tmp_path / "out.npz"
    code, stdout, err = run(capsys, "eval", SAMPLE if model == "onnx" else sample_ir, "--inputs", inputs, "-o", out)
    assert_one_line_error(code, err, *words)
    assert not out.exists()


def test_token_id_outside_the_vocabulary(tmp_path, capsys):
    inputs = _save_npz(tmp_path / "in.npz", {**_inputs(), "input_ids": np.full((1, 7), 10**6, np.int64)})
    code, _, err = run(capsys, "eval", SAMPLE, "--inputs", inputs, "-o", tmp_path / "out.npz")
    assert_one_line_error(code, err, "graph.gather", "out of bounds")
    assert not (tmp_path / "out.npz").exists()


def test_shape_option_on_an_ir_file(tmp_path, capsys, sample_ir):
    code, _, err = run(capsys, "eval", sample_ir, "--shape", "input_ids=1,7")
    assert_one_line_error(code, err, "--shape", "IR file")


def assert_error_after_progress(code, err, *words):
    """An error found after progress lines (e.g. the support report): still one error line, the last."""
    lines = err.splitlines()
    assert_one_line_error(code, lines[-1] + "\n", *words)
    assert not any(line.startswith("lpuc: error") for line in lines[:-1]) and "Traceback" not in err


def test_ir_file_without_its_blobs(tmp_path, capsys, sample_ir):
    ir = tmp_path / "lonely.ir"
    ir.write_text(sample_ir.read_text())
    code, _, err = run(capsys, "eval", ir, "--inputs", SAMPLES / "gpt2_prefill.inputs.npz", "-o", tmp_path / "o.npz")
    assert_one_line_error(code, err, "no data")
    code, _, err = run(capsys, "eval", ir, "-o", tmp_path / "o.npz")  # random inputs: a progress line first
    assert_error_after_progress(code, err, "no data")
    assert not (tmp_path / "o.npz").exists()


def test_unwritable_output(tmp_path, capsys):
    code, _, err = run(capsys, "import", SAMPLE, "-o", tmp_path / "no" / "such" / "dir" / "x.ir")
    assert_error_after_progress(code, err, "cannot write")


# --- bad arguments and IR text ----------------------------------------------------

@pytest.mark.parametrize("shape", ["input_ids", "input_ids=1,x", "=1,7", "input_ids=1;7"])
def test_malformed_shape_argument(tmp_path, capsys, shape):
    code, _, err = run(capsys, "eval", SAMPLE, "--shape", shape, "-o", tmp_path / "out.npz")
    assert code == 2
    assert "Traceback" not in err and "--shape" in err and "NAME=D0,D1" in err
    assert not (tmp_path / "out.npz").exists()


def test_unknown_command_and_missing_argument(capsys):
    assert run(capsys, "compile-everything")[0] == 2
    code, _, err = run(capsys, "import")
    assert code == 2 and "MODEL.onnx" in err and "Traceback" not in err


IR_ERRORS = {
    "bad-type": ('module @m {\n  input %x : f32[2]\n  %y = graph.relu %x : f32[2\n  output "y" = %y\n}\n', ":3:"),
    "bad-token": ('module @m {\n  input %x : f32[2]\n  %y = graph.relu %x : f32[2] ;\n  output "y" = %y\n}\n',
                  ":3:"),
    "undefined-value": ('module @m {\n  input %x : f32[2]\n  %y = graph.relu %z : f32[2]\n  output "y" = %y\n}\n',
                        ":3:"),
    "garbage": ("\x00\x01 binary junk", ":1:"),
}


@pytest.mark.parametrize("case", IR_ERRORS)
@pytest.mark.parametrize("command", ["check", "eval"])
def test_ir_parse_error_has_file_line_column(tmp_path, capsys, case, command):
    text, where = IR_ERRORS[case]
    ir = tmp_path / "bad.ir"
    ir.write_text(text)
    out = tmp_path / ("out.ir" if command == "check" else "out.npz")
    code, stdout, err = run(capsys, command, ir, "-o", out)
    line = assert_one_line_error(code, err, f"bad.ir{where}")
    assert line.split(where, 1)[1].split(":", 1)[0].isdigit(), "expected file:line:column"
    assert not out.exists() and stdout == ""


@pytest.mark.parametrize("command", ["check", "eval"])
def test_ir_verifier_error_names_the_file_and_the_op(tmp_path, capsys, command):
    ir = tmp_path / "bad.ir"
    ir.write_text('module @m {\n  input %x : f32[2]\n  %y = graph.frobnicate %x : f32[2]\n  output "y" = %y\n}\n')
    code, _, err = run(capsys, command, ir)
    assert_one_line_error(code, err, "bad.ir", "%y = graph.frobnicate", "unknown op")


def test_debug_shows_the_traceback(tmp_path, capsys):
    model = save(_xy_model([helper.make_node("NonZero", ["x"], ["y"])], out_type=TensorProto.INT64), tmp_path / "nz.onnx")
    for argv in (["--debug", "import", model], ["import", model, "--debug"]):
        code, _, err = run(capsys, *argv)
        assert code == 2
        assert "Traceback (most recent call last)" in err and "LpucError" in err
        assert err.rstrip().splitlines()[-1].startswith("lpuc: error: NonZero")


def test_real_process_exit_code_and_streams(tmp_path):
    ir = tmp_path / "out.ir"
    r = subprocess.run([sys.executable, "-m", "lpuc.compiler", "import", str(tmp_path / "nowhere.onnx"), "-o", str(ir)],
                       cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 2
    assert r.stdout == ""
    assert r.stderr.splitlines() == [f"lpuc: error: {tmp_path / 'nowhere.onnx'}: no such file"]
    assert not ir.exists()


def test_the_collector_stays_off_to_the_exit(tmp_path):
    """`lpuc` leaves Python's cyclic collector off until it exits: turned on again, its first collection would walk
    every object the command made (4.4 s of the 70B's `lpuc viz --html`), for no cycle worth freeing."""
    probe = ("import gc, os, sys; from lpuc.compiler import cli; exit = os._exit; "
             "os._exit = lambda code: (print('collector', gc.isenabled()), sys.stdout.flush(), exit(code)); "
             "sys.argv = ['lpuc'] + sys.argv[1:]; cli.run_and_exit()")
    r = subprocess.run([sys.executable, "-c", probe, "import", str(SAMPLES / "llama_decode.onnx"),
                        "-o", str(tmp_path / "m.ir")], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines()[-1] == "collector False"


def test_reading_a_program_imports_no_onnx_or_solver(tmp_path):
    """onnx, ml_dtypes (which onnx imports) and OR-Tools (with pandas) take most of a second to import: `lpuc` imports
    them only for the work that needs them, not to draw or run a program of no narrow type."""
    lpu = tmp_path / "m.lpu"
    assert main(["compile", str(SAMPLES / "bert_prefill.onnx"), "-o", str(lpu), "--no-cache", "--scheduler", "list"]) == 0
    probe = ("import sys\nfrom lpuc.compiler.cli import main\ntry:\n    main(sys.argv[1:])\nfinally:\n"
             "    print(sorted({m.split('.')[0] for m in sys.modules} & {'onnx', 'ml_dtypes', 'ortools', 'pandas'}))")
    for args in (["--help"], ["viz", str(lpu), "--html", str(tmp_path / "r.html")], ["run", str(lpu), "--timing-only"]):
        r = subprocess.run([sys.executable, "-c", probe, *args], cwd=tmp_path, capture_output=True, text=True,
                           timeout=300)
        assert r.returncode == 0, r.stderr
        assert r.stdout.splitlines()[-1] == "[]", args


@pytest.mark.parametrize("variable, asks", [(None, False), ("1", True), ("0", False)])
def test_the_lpuc_command_asks_numpy_for_huge_pages_only_when_told(variable, asks):
    """Huge pages asked for as numpy allocates stall a large program's arrays where the kernel compacts memory to find
    them (cli.no_huge_pages); NUMPY_MADVISE_HUGEPAGE, numpy's own switch, still decides when set."""
    probe = ("import numpy, lpuc.compiler.cli as cli\n"
             "cli.main = lambda: print(numpy._core.multiarray._set_madvise_hugepage(True)) or 0\n"
             "cli.run_and_exit()")
    env = {k: v for k, v in os.environ.items() if k != "NUMPY_MADVISE_HUGEPAGE"}
    if variable is not None:
        env["NUMPY_MADVISE_HUGEPAGE"] = variable
    r = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=300, env=env)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == [str(asks)]


# --- help -------------------------------------------------------------------------

def test_main_help(capsys):
    code, out, _ = run(capsys, "--help")
    assert code == 0
    for name in COMMANDS:
        assert name in out
    assert "--debug" in out


@pytest.mark.parametrize("command, args", [
    ("check", ["FILE.ir", "--output"]),
    ("import", ["MODEL.onnx", "--output", "--shape"]),
    ("eval", ["MODEL.onnx|MODEL.ir", "--inputs", "--output", "--seed", "--shape"]),
])
def test_command_help(capsys, command, args):
    assert {"check", "import", "eval"} <= set(COMMANDS)
    code, out, _ = run(capsys, command, "--help")
    assert code == 0
    assert out.startswith(f"usage: lpuc {command}")
    for a in args:
        assert a in out, f"{a} not in `lpuc {command} --help`"


@pytest.mark.parametrize("argv, words", [
    (["compile", "m.onnx", "-o", "m.lpu", "--partition", "bogus"], ["--partition", "invalid choice", "--help"]),
    (["compile", "m.onnx"], ["-o/--output", "required"]),
    (["run", "x.lpu", "--seed", "one"], ["--seed", "invalid int"]),
    (["frobnicate"], ["invalid choice"]),
])
def test_usage_errors_are_one_line(capsys, argv, words):
    code, out, err = run(capsys, *argv)
    assert code == 2 and not out and len(err.splitlines()) == 1, err
    assert err.startswith("lpuc") and "error:" in err and all(w in err for w in words), err


@pytest.mark.parametrize("args, words", [
    (["--layout", "tp=x"], ["tp=x", "expected tp=T,pp=P"]),
    (["--layout", "tp=2,tp=2"], ["expected tp=T,pp=P"]),
    (["--layout", "pp=0"], ["positive integers"]),
    (["--layout", "tp=2,ep=4"], ["ep=4", "tp=2", "choose ep <= tp"]),
    (["--layout", "tp=2,ep=0"], ["positive integers"]),
    (["--layout", "tp=2,pp=2", "--chips", "8"], ["takes 4 chips", "--chips 8"]),
    (["--layout", "tp=2", "--partition", "tensor"], ["--layout", "--partition", "give one"]),
])
def test_bad_layout(tmp_path, capsys, args, words):
    out = tmp_path / "x.lpu"
    code, _, err = run(capsys, "compile", SAMPLES / "llama_decode.onnx", "-o", out, *args)
    assert_one_line_error(code, err, *words)
    assert not out.exists()
