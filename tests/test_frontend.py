"""The ONNX frontend on small hand-built models: symbolic dims made static, widths
that do not fit one vector, the op-support report, data-dependent shapes, external
weights, IR files, determinism."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from lpuc.compiler.cli import main
from lpuc.compiler.frontend import import_onnx, support_report
from lpuc.ir import LpucError, parse, print_module
from lpuc.ir.evaluator import evaluate
from lpuc.ir.files import blob_path
from lpuc.ir.verifier import verify

from helpers import (LANES, ROOT, SAMPLES, assert_close, legacy_transformer, run_ort, save, tiny_model,
                     token_ids)

TOL = 1e-5
# What a folded legacy graph may still contain: compute, and data movement of run-time values.
COMPUTE_OPS = {"graph.add", "graph.mul", "graph.div", "graph.erf", "graph.matmul", "graph.layer_norm",
               "graph.softmax", "graph.reshape", "graph.transpose", "graph.gather", "graph.constant"}


def _npz(path):
    with np.load(path, allow_pickle=False) as f:
        return {k: f[k] for k in f.files}


# --- legacy exporter: symbolic dims become static ------------------------------

@pytest.mark.parametrize("width, heads, layers, seq", [
    pytest.param(64, 4, 2, 7, id="w64-s7"),
    pytest.param(333, 9, 3, 13, id="w333-s13-3layers"),  # > one 320-lane vector, not a multiple of it
    pytest.param(700, 7, 2, 5, id="w700-s5"),
    pytest.param(2 * LANES, 5, 1, 1, id="w640-s1"),
])
def test_legacy_symbolic_dims_become_static(tmp_path, width, heads, layers, seq):
    model = legacy_transformer(width=width, heads=heads, layers=layers, mlp=width + 17)
    assert model.graph.input[0].type.tensor_type.shape.dim[1].dim_param == "sequence"
    path = save(model, tmp_path / "legacy.onnx")
    module, report = import_onnx(path, {"input_ids": (1, seq)})
    verify(module)
    assert report.supported == report.total
    # The Shape/Gather/Unsqueeze/Concat/Range/ConstantOfShape/Trilu/Expand chains are all folded away.
    assert {op.name for op in module.ops} <= COMPUTE_OPS
    assert sum(op.name == "graph.layer_norm" for op in module.ops) == 2 * layers + 1
    assert sum(op.name == "graph.matmul" for op in module.ops) == 8 * layers + 1  # q k v qk av o fc1 fc2
    (_, logits), = module.outputs
    assert logits.type.shape == (1, seq, 50)
    inputs = token_ids(seq)
    assert_close(evaluate(module, inputs), run_ort(path, inputs), TOL)


def test_legacy_model_through_the_cli(tmp_path, capsys):
    path = save(legacy_transformer(width=333, heads=9, layers=2), tmp_path / "legacy.onnx")
    inputs = token_ids(11)
    np.savez(tmp_path / "in.npz", **inputs)
    ref = run_ort(path, inputs)
    # --inputs fixes the symbolic dims by itself ...
    assert main(["eval", str(path), "--inputs", str(tmp_path / "in.npz"), "-o", str(tmp_path / "a.npz")]) == 0
    assert_close(_npz(tmp_path / "a.npz"), ref, TOL)
    # ... and --shape does it for random inputs, which stay inside the vocabulary.
    assert main(["eval", str(path), "--shape", "input_ids=1,11", "-o", str(tmp_path / "b.npz")]) == 0
    rand = _npz(tmp_path / "b.inputs.npz")
    assert rand["input_ids"].shape == (1, 11) and 0 <= rand["input_ids"].min() and rand["input_ids"].max() < 50
    assert_close(_npz(tmp_path / "b.npz"), run_ort(path, rand), TOL)
    capsys.readouterr()


def test_symbolic_dim_without_shape_is_an_error_with_advice(tmp_path):
    path = save(legacy_transformer(), tmp_path / "legacy.onnx")
    with pytest.raises(LpucError) as e:
        import_onnx(path)
    msg = str(e.value)
    assert "input_ids" in msg and "'sequence'" in msg and "--shape" in msg and "static" in msg
    assert "\n" not in msg


@pytest.mark.parametrize("shapes, words", [
    ({"input_ids": (2, 7)}, ["shape [2, 7]", "fixes"]),  # batch is fixed at 1
    ({"input_ids": (7,)}, ["rank 1"]),
    ({"ids": (1, 7)}, ["no graph input named 'ids'", "input_ids"]),
])
def test_bad_input_shapes(tmp_path, shapes, words):
    path = save(legacy_transformer(), tmp_path / "legacy.onnx")
    with pytest.raises(LpucError) as e:
        import_onnx(path, shapes)
    for w in words:
        assert w in str(e.value)


def test_static_model_equals_fixed_symbolic_one(tmp_path):
    """Fixing `sequence` by --shape gives the same IR as exporting with a fixed length."""
    (tmp_path / "static").mkdir()
    a = save(legacy_transformer(seq="sequence"), tmp_path / "m.onnx")
    b = save(legacy_transformer(seq=9), tmp_path / "static" / "m.onnx")
    ma, _ = import_onnx(a, {"input_ids": (1, 9)})
    mb, _ = import_onnx(b)
    assert print_module(ma) == print_module(mb)


# --- op support -----------------------------------------------------------------

def _unsupported_model():
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["c1"], name="conv_a"),
        helper.make_node("Relu", ["c1"], ["r1"], name="relu_a"),
        helper.make_node("Conv", ["r1", "w"], ["c2"], name="conv_b"),
        helper.make_node("MaxPool", ["c2"], ["p"], name="pool", kernel_shape=[2, 2]),
        helper.make_node("FusedMatMul", ["p", "p"], ["f"], name="fused", domain="com.microsoft"),
        helper.make_node("Conv", ["f", "w"], ["c3"]),  # unnamed: reported by index
        helper.make_node("Sigmoid", ["c3"], ["y"], name="sig"),
    ]
    w = onnx.numpy_helper.from_array(np.zeros((3, 3, 1, 1), np.float32), "w")
    return tiny_model(nodes, [x], [y], [w], domains=["com.microsoft"])


def test_support_report_lists_every_unsupported_op_at_once(tmp_path):
    model = _unsupported_model()
    report = support_report(model)
    assert (report.total, report.supported) == (7, 2)
    assert report.unsupported == {"Conv": ["conv_a", "conv_b", "#5"], "MaxPool": ["pool"],
                                  "com.microsoft.FusedMatMul": ["fused"]}
    with pytest.raises(LpucError) as e:
        import_onnx(save(model, tmp_path / "cnn.onnx"))
    msg = str(e.value)
    assert msg.startswith("2/7 nodes supported")
    for part in ["Conv x3 (conv_a, conv_b, #5)", "MaxPool x1 (pool)", "com.microsoft.FusedMatMul x1 (fused)"]:
        assert part in msg
    assert "\n" not in msg


def test_support_report_shortens_long_name_lists():
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [4])
    nodes = [helper.make_node("Hardmax", [f"h{i}" if i else "x"], [f"h{i + 1}"], name=f"hm{i}") for i in range(8)]
    report = support_report(tiny_model(nodes, [x], [helper.make_tensor_value_info("h8", TensorProto.FLOAT, [4])]))
    assert report.summary() == "0/8 nodes supported; unsupported: Hardmax x8 (hm0, hm1, hm2, hm3, hm4, ...)"


@pytest.mark.parametrize("op", ["NonZero", "Unique"])
def test_data_dependent_shapes_are_rejected_with_advice(tmp_path, op):
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3])
    nodes = [helper.make_node("Relu", ["x"], ["r"]), helper.make_node(op, ["r"], ["y"], name="dyn")]
    model = tiny_model(nodes, [x], [helper.make_tensor_value_info("y", TensorProto.INT64, None)])
    assert support_report(model).unsupported == {op: ["dyn"]}
    with pytest.raises(LpucError) as e:
        import_onnx(save(model, tmp_path / "dyn.onnx"))
    msg = str(e.value)
    assert op in msg and "data-dependent shapes" in msg and "static shapes" in msg and "fixed" in msg


# --- external data --------------------------------------------------------------

@pytest.fixture
def external_model(tmp_path):
    """The legacy model saved with every initializer in one external file."""
    path = tmp_path / "ext.onnx"
    onnx.save_model(legacy_transformer(width=333, heads=9, layers=2), str(path), save_as_external_data=True,
                    all_tensors_to_one_file=True, location="ext.onnx.data", size_threshold=0)
    data = tmp_path / "ext.onnx.data"
    assert data.stat().st_size > 333 * 333 * 4
    proto = onnx.load(str(path), load_external_data=False)
    assert all(t.data_location == TensorProto.EXTERNAL for t in proto.graph.initializer)
    return path, data


def _weight_keys(module, path):
    """The constant keys of the model's initializers (constants keep their ONNX names)."""
    names = {t.name for t in onnx.load(str(path), load_external_data=False).graph.initializer}
    return [op.attrs["value"].key for op in module.ops if op.name == "graph.constant" and op.result.name in names]


def test_external_weights_are_never_read_at_import(external_model):
    path, data = external_model
    module, _ = import_onnx(path, {"input_ids": (1, 7)})
    keys = _weight_keys(module, path)
    assert len(keys) >= 20 and all(k.startswith("ext:ext.onnx.data:") for k in keys), keys
    text = print_module(module)
    assert '"ext:ext.onnx.data:' in text
    size = data.stat().st_size
    # garbage of the right size: same IR
    data.write_bytes(np.random.default_rng(1).bytes(size))
    assert print_module(import_onnx(path, {"input_ids": (1, 7)})[0]) == text
    # no data file at all: same IR; running it is then a clear error
    data.unlink()
    module, _ = import_onnx(path, {"input_ids": (1, 7)})
    assert print_module(module) == text
    with pytest.raises(LpucError, match="weights of .*ext.onnx.data: no such file"):
        evaluate(module, token_ids(7))


def test_external_weights_evaluate_like_onnxruntime(external_model):
    path, _ = external_model
    module, _ = import_onnx(path, {"input_ids": (1, 7)})
    inputs = token_ids(7)
    assert_close(evaluate(module, inputs), run_ort(path, inputs), TOL)


def test_exported_sample_with_external_data(tmp_path):
    """A real export re-saved with external weights (onnx's default 1 KiB threshold) imports and matches."""
    path = tmp_path / "llama.onnx"
    onnx.save_model(onnx.load(str(SAMPLES / "llama_prefill.onnx")), str(path), save_as_external_data=True,
                    all_tensors_to_one_file=True, location="llama.data", size_threshold=1024)
    module, _ = import_onnx(path)
    assert any(k.startswith("ext:llama.data:") for k in _weight_keys(module, path))
    inputs = _npz(SAMPLES / "llama_prefill.inputs.npz")
    assert_close(evaluate(module, inputs), run_ort(path, inputs), TOL)


def test_import_keeps_the_weights_of_a_model_passed_in():
    """The checker and shape inference see large initializers without their bytes; the model is untouched."""
    path = SAMPLES / "gemma_prefill.onnx"
    model = onnx.load(str(path))
    before = [t.SerializeToString() for t in model.graph.initializer]
    assert max(len(t.raw_data) for t in model.graph.initializer) > 1 << 16
    module, _ = import_onnx(path, model=model)
    assert [t.SerializeToString() for t in model.graph.initializer] == before
    assert print_module(module) == print_module(import_onnx(path)[0])


def _relu_graph_named(name: str) -> onnx.ModelProto:
    model = tiny_model([helper.make_node("Relu", ["x"], ["y"])], [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])],
                       [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])])
    model.graph.name = name
    return model


@pytest.mark.parametrize("graph_name, module_name", [("main_graph", "main_graph"), ("my model/v2", "my_model_v2"),
                                                     ("ÜberNet", "_berNet")])
def test_module_is_named_after_the_graph(tmp_path, graph_name, module_name):
    module, _ = import_onnx(save(_relu_graph_named(graph_name), tmp_path / "file_name.onnx"))
    assert module.name == module_name
    assert print_module(module).startswith(f"module @{module_name} ")


def test_graph_without_a_name_is_invalid(tmp_path):
    with pytest.raises(LpucError, match="not a valid ONNX model: Field 'name' of 'graph' is required to be non-empty"):
        import_onnx(save(_relu_graph_named(""), tmp_path / "m.onnx"))


# --- external data stays inside the model's directory ----------------------------

def _matmul_with_external_weight(model_dir, location: str, **external):
    """y = x @ w with w [4, 3] as external data at `location` (the file is not written here), and
    the other `external` keys (offset, length) given."""
    w = TensorProto(name="w", data_type=TensorProto.FLOAT, dims=[4, 3], data_location=TensorProto.EXTERNAL)
    for key, value in {"location": location, **external}.items():
        w.external_data.add(key=key, value=value)
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "ext",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 3])], [w])
    model_dir.mkdir(parents=True, exist_ok=True)
    return save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20)]), model_dir / "m.onnx")


WEIGHT = np.arange(12, dtype=np.float32).reshape(4, 3)


@contextlib.contextmanager
def files_opened():
    """The paths opened (by open, os.open, io.open, numpy, ...) inside the block: Python's audit
    hook `open` sees them all, whatever the code that opens them."""
    opened = []
    _RECORDERS.append(opened)
    try:
        yield opened
    finally:
        _RECORDERS.remove(opened)


_RECORDERS: list[list[str]] = []
sys.addaudithook(lambda event, args: [r.append(os.fsdecode(args[0])) for r in _RECORDERS]
                 if event == "open" and isinstance(args[0], (str, bytes, os.PathLike)) else None)


def _escaping_location(kind: str, tmp_path) -> tuple[str, str]:
    """(location, path of the file it leads to), a file outside the model's directory."""
    outside = tmp_path / "outside" / "secret.bin"
    outside.parent.mkdir()
    outside.write_bytes(WEIGHT.tobytes())
    if kind == "absolute":
        return str(outside), outside
    if kind == "dotdot":
        return "../outside/secret.bin", outside
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "w.bin").symlink_to(outside)  # a name inside, the file outside
    return "w.bin", outside


@pytest.mark.parametrize("command", [["import"], ["eval"], ["compile", "--scheduler", "list"],
                                     ["compile", "--scheduler", "list", "--no-weights"]])
@pytest.mark.parametrize("kind", ["absolute", "dotdot", "symlink"])
def test_external_data_outside_the_model_directory_is_refused_unopened(tmp_path, capsys, kind, command):
    location, outside = _escaping_location(kind, tmp_path)
    model = _matmul_with_external_weight(tmp_path / "model", location)
    out = tmp_path / "out.lpu"
    with files_opened() as opened:
        code = main([command[0], str(model), "-o", str(out), *command[1:]])
    err = capsys.readouterr().err
    assert code == 2 and len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert "initializer w: external data location" in err and repr(location) in err, err
    assert ("outside the model's directory" if kind == "symlink" else "inside the model's directory") in err
    assert str(model) in opened and str(outside) not in opened and not out.exists()


def test_external_data_inside_the_model_directory(tmp_path, capsys):
    """In a subdirectory, or through a symlink that stays inside: read. --no-weights never reads it."""
    model_dir = tmp_path / "model"
    (model_dir / "weights").mkdir(parents=True)
    (model_dir / "weights" / "w.bin").write_bytes(WEIGHT.tobytes())
    (model_dir / "link.bin").symlink_to("weights/w.bin")
    x = np.random.default_rng(0).standard_normal((2, 4)).astype(np.float32)
    for location in ("weights/w.bin", "./weights/w.bin", "link.bin"):
        module, _ = import_onnx(_matmul_with_external_weight(model_dir, location))
        np.testing.assert_allclose(evaluate(module, {"x": x})["y"], x @ WEIGHT, rtol=1e-6)
    model = _matmul_with_external_weight(model_dir, "nowhere.bin")
    assert main(["compile", str(model), "-o", str(tmp_path / "m.lpu"), "--scheduler", "list", "--no-weights"]) == 0
    capsys.readouterr()


@pytest.mark.parametrize("location, external, words", [
    ("", {}, "initializer w: external data has no location"),
    ("w.bin", {"offset": "-8"}, "initializer w: external data offset '-8' is not a byte offset"),
    ("w.bin", {"offset": str(10**30)}, "is not a byte offset"),
    ("w.bin", {"length": "47"}, "initializer w: external data length '47' is not the tensor's 48 bytes"),
    ("w.bin", {"offset": str(2**62)}, "weights of w: "),  # found when read: a file that short
])
def test_malformed_external_data(tmp_path, capsys, location, external, words):
    (tmp_path / "w.bin").write_bytes(WEIGHT.tobytes())
    model = _matmul_with_external_weight(tmp_path, location, **external)
    np.savez(tmp_path / "in.npz", x=np.ones((2, 4), np.float32))
    code = main(["eval", str(model), "--inputs", str(tmp_path / "in.npz")])
    err = capsys.readouterr().err
    assert code == 2 and len(err.splitlines()) == 1 and words in err, err


@pytest.mark.parametrize("special", ["fifo", "directory"])
def test_external_data_that_is_not_a_regular_file_is_refused(tmp_path, capsys, special):
    """A FIFO named as external data would block the read forever: refused unread, the error one
    line of its own (not wrapped in the evaluator's report of a failed op)."""
    (os.mkfifo if special == "fifo" else os.mkdir)(tmp_path / "w.bin")
    model = _matmul_with_external_weight(tmp_path, "w.bin")
    np.savez(tmp_path / "in.npz", x=np.ones((2, 4), np.float32))
    code = main(["eval", str(model), "--inputs", str(tmp_path / "in.npz")])
    err = capsys.readouterr().err
    assert code == 2 and len(err.splitlines()) == 1 and "LpucError" not in err, err
    assert "weights of w: " in err and "not a regular file" in err, err


def test_a_negative_initializer_dimension_is_one_line(tmp_path, capsys):
    """onnx.checker and shape inference let an external initializer's dims pass."""
    w = TensorProto(name="w", data_type=TensorProto.FLOAT, dims=[-4, 3], data_location=TensorProto.EXTERNAL)
    w.external_data.add(key="location", value="w.bin")
    graph = helper.make_graph([helper.make_node("Identity", ["w"], ["y"])], "neg", [],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [-4, 3])], [w])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20)])
    code = main(["import", str(save(model, tmp_path / "neg.onnx"))])
    err = capsys.readouterr().err
    assert code == 2 and len(err.splitlines()) == 1, err
    assert "initializer w: negative dimension in its shape [-4, 3]" in err, err


# --- IR files -------------------------------------------------------------------

@pytest.mark.parametrize("source", ["sample", "external"])
def test_import_to_ir_file_then_eval(tmp_path, capsys, source, request):
    if source == "sample":
        model, shape, inputs = SAMPLES / "mixtral_prefill.onnx", [], _npz(SAMPLES / "mixtral_prefill.inputs.npz")
    else:
        model, _ = request.getfixturevalue("external_model")
        shape, inputs = ["--shape", "input_ids=1,7"], token_ids(7)
    np.savez(tmp_path / "in.npz", **inputs)
    ir = tmp_path / "X.ir"
    assert main(["import", str(model), "-o", str(ir), *shape]) == 0
    err = capsys.readouterr().err
    assert "nodes supported" in err and f"wrote {ir}" in err
    assert ir.exists() and blob_path(ir) == tmp_path / "X.blobs.npz" and blob_path(ir).exists()
    with np.load(blob_path(ir)) as blobs:
        assert set(blobs.files) == {op.attrs["value"].key for op in parse(ir.read_text()).ops
                                    if op.name == "graph.constant" and not op.attrs["value"].inline}
    assert main(["eval", str(model), "--inputs", str(tmp_path / "in.npz"), "-o", str(tmp_path / "onnx.npz")]) == 0
    ref = run_ort(model, inputs)
    if source == "external":  # the IR file carries its weights: the ONNX data is no longer needed
        (model.parent / "ext.onnx.data").unlink()
    assert main(["eval", str(ir), "--inputs", str(tmp_path / "in.npz"), "-o", str(tmp_path / "ir.npz")]) == 0
    a, b = _npz(tmp_path / "onnx.npz"), _npz(tmp_path / "ir.npz")
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_array_equal(a[k], b[k])
    assert_close(b, ref, TOL)
    capsys.readouterr()


def test_check_reprints_an_imported_ir_file_unchanged(tmp_path, capsys):
    ir = tmp_path / "g.ir"
    assert main(["import", str(SAMPLES / "gpt2_decode.onnx"), "-o", str(ir)]) == 0
    assert main(["check", str(ir), "-o", str(tmp_path / "again.ir")]) == 0
    assert (tmp_path / "again.ir").read_bytes() == ir.read_bytes()
    capsys.readouterr()


# --- determinism ----------------------------------------------------------------

def test_import_is_deterministic_in_process(tmp_path):
    path = save(legacy_transformer(width=333, heads=9, layers=2), tmp_path / "m.onnx")
    texts = {print_module(import_onnx(path, {"input_ids": (1, 7)})[0]) for _ in range(2)}
    assert len(texts) == 1
    texts = {print_module(import_onnx(SAMPLES / "mixtral_decode.onnx")[0]) for _ in range(2)}
    assert len(texts) == 1


def test_import_is_deterministic_across_hash_seeds(tmp_path):
    model = SAMPLES / "mixtral_prefill.onnx"
    main(["import", str(model), "-o", str(tmp_path / "here.ir")])
    env = dict(os.environ)
    for seed in ("1", "4242"):
        out = tmp_path / f"seed{seed}.ir"
        env["PYTHONHASHSEED"] = seed
        r = subprocess.run([sys.executable, "-m", "lpuc.compiler", "import", str(model), "-o", str(out)],
                           cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, r.stderr
        assert out.read_bytes() == (tmp_path / "here.ir").read_bytes()
        assert blob_path(out).read_bytes() == blob_path(tmp_path / "here.ir").read_bytes()
