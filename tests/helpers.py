"""Shared test helpers: numeric comparison, ONNX Runtime, small hand-built ONNX models."""

from __future__ import annotations

import math
import re
import tracemalloc
from functools import lru_cache
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from lpuc.compiler.driver import compile_model, max_relative_error

ROOT = Path(__file__).resolve().parents[1]
SAMPLES = ROOT / "samples"
LANES = 320  # one tsp-v1 vector


@lru_cache(maxsize=None)
def compiled_sample(name: str, precision: str | None = None):
    """(module, summary, machine text) of a bundled sample compiled with the default options for one
    tsp-v1 chip (at `precision`, when given: fp32 for exact agreement with ONNX Runtime): compiled once
    per test session (the results are immutable) and shared by the tests that check it from different sides."""
    from lpuc.compiler.pipeline import CompileOptions

    return compile_model(SAMPLES / f"{name}.onnx",
                         options=CompileOptions(precision=precision) if precision else None)


def by_the_rules(text: str) -> str:
    """IR `text` with every op statement broken after its `=`: the parser's one-line form (grammar.lark's
    OP_LINE) cannot take it, its rules do (tests compare the two readings)."""
    return re.sub(r"(?m)^( *%[^\n=]*=) ", r"\1\n    ", text)


def max_rel_error(ours, ref) -> float:
    """lpuc's comparison metric (compiler.driver.max_relative_error), with clear failures."""
    ours, ref = np.asarray(ours), np.asarray(ref)
    assert ours.shape == ref.shape, f"shape {ours.shape} != reference shape {ref.shape}"
    if ref.dtype.kind not in "fc":
        assert np.array_equal(ours, ref), "integer/bool outputs differ"
    return max_relative_error(ours, ref)


def assert_close(ours: dict, ref: dict, tol: float = 1e-5) -> None:
    """Every output of `ref` is in `ours` and within `tol` max relative error."""
    assert set(ref) <= set(ours), f"missing outputs {sorted(set(ref) - set(ours))}"
    errors = {k: max_rel_error(ours[k], ref[k]) for k in ref}
    bad = {k: e for k, e in errors.items() if not e <= tol}
    assert not bad, f"max relative error above {tol}: {bad}"


def run_ort(model: str | Path | onnx.ModelProto, inputs: dict) -> dict[str, np.ndarray]:
    """Run a model on ONNX Runtime's CPU provider; outputs by name."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    src = str(model) if isinstance(model, (str, Path)) else model.SerializeToString()
    sess = ort.InferenceSession(src, opts, providers=["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs()]
    wanted = {i.name for i in sess.get_inputs()}
    return dict(zip(names, sess.run(None, {k: v for k, v in inputs.items() if k in wanted})))



@lru_cache(maxsize=None)
def ort_int8_is_exact() -> bool:
    """Whether ONNX Runtime's uint8 x int8 matmuls give the exact int32 sums on this CPU. On x86 without VNNI
    (AVX2 only, e.g. the AMD EPYC CI runs on) its kernels add pairs of products in int16 with saturation
    (OpenVINO's docs: "Saturation (overflow) issue"): 255 * 127 * 2 comes out as 32767. There, a quantized
    model's ONNX Runtime outputs are no reference for lpuc, which sums exactly."""
    a, b = np.full((4, 2), 255, np.uint8), np.full((2, 4), 127, np.int8)
    graph = helper.make_graph([helper.make_node("MatMulInteger", ["a", "b"], ["y"])], "probe",
                              [helper.make_tensor_value_info("a", TensorProto.UINT8, [4, 2]),
                               helper.make_tensor_value_info("b", TensorProto.INT8, [2, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.INT32, [4, 4])])
    got = run_ort(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), {"a": a, "b": b})["y"]
    return bool((got == a.astype(np.int32) @ b.astype(np.int32)).all())

# --- hand-built ONNX models ----------------------------------------------------

def _i64(*v) -> np.ndarray:
    return np.asarray(v, np.int64)


def _const(nodes: list, name: str, array) -> str:
    """A Constant node (the legacy exporter's way of spelling shape constants)."""
    nodes.append(helper.make_node("Constant", [], [name], name=f"{name}_node",
                                  value=numpy_helper.from_array(np.asarray(array), name)))
    return name


def legacy_transformer(width: int = 64, heads: int = 4, layers: int = 2, vocab: int = 50, max_pos: int = 64,
                       opset: int = 17, seed: int = 0, mlp: int | None = None,
                       seq: int | str = "sequence") -> onnx.ModelProto:
    """A GPT-style decoder as the legacy (TorchScript) exporter writes it.

    `input_ids` is [1, seq] with a symbolic `seq` (unless seq is an int); every
    shape is computed in the graph: Shape -> Gather -> Unsqueeze -> Concat ->
    Reshape for the head split/merge, Range for position ids, ConstantOfShape +
    Trilu for the causal mask, Expand of the mask. value_info carries symbolic dims.
    """
    assert width % heads == 0
    hd, mlp = width // heads, mlp or 2 * width
    rng = np.random.default_rng(seed)
    inits, nodes, value_info = [], [], []

    def weight(name, *shape, scale=None):
        scale = scale if scale is not None else 1 / math.sqrt(shape[0])
        inits.append(numpy_helper.from_array((rng.standard_normal(shape) * scale).astype(np.float32), name))
        return name

    def node(op, ins, outs, **attrs):
        nodes.append(helper.make_node(op, ins, outs, name=f"/{outs[0]}/{op}", **attrs))
        return outs[0] if len(outs) == 1 else outs

    sym = seq if isinstance(seq, str) else None
    ids = helper.make_tensor_value_info("input_ids", TensorProto.INT64, [1, seq])
    weight("wte", vocab, width, scale=1.0)
    weight("wpe", max_pos, width, scale=0.1)

    # sequence length as a graph computation
    node("Shape", ["input_ids"], ["ids_shape"])
    _const(nodes, "c1", np.asarray(1, np.int64))
    _const(nodes, "c0", np.asarray(0, np.int64))
    node("Gather", ["ids_shape", "c1"], ["seq_len"], axis=0)
    node("Gather", ["ids_shape", "c0"], ["batch"], axis=0)
    node("Range", ["c0", "seq_len", "c1"], ["positions"])
    node("Gather", ["wte", "input_ids"], ["tok_emb"], axis=0)
    node("Gather", ["wpe", "positions"], ["pos_emb"], axis=0)
    h = node("Add", ["tok_emb", "pos_emb"], ["h0"])
    value_info.append(helper.make_tensor_value_info("h0", TensorProto.FLOAT, [1, sym or seq, width]))

    # causal mask [seq, seq]: ConstantOfShape(Concat(seq, seq)) -> Trilu(upper, k=1) -> Expand
    node("Unsqueeze", ["seq_len", _const(nodes, "ax0", _i64(0))], ["seq_1d"])
    node("Concat", ["seq_1d", "seq_1d"], ["mask_shape"], axis=0)
    node("ConstantOfShape", ["mask_shape"], ["neg_full"],
         value=numpy_helper.from_array(np.asarray([-1e9], np.float32), "fill"))
    node("Trilu", ["neg_full", _const(nodes, "one_k", np.asarray(1, np.int64))], ["causal"], upper=1)
    node("Unsqueeze", ["batch", "ax0"], ["batch_1d"])
    node("Concat", ["batch_1d", _const(nodes, "one_1d", _i64(1)), "seq_1d", "seq_1d"], ["mask_4d_shape"], axis=0)
    node("Expand", ["causal", "mask_4d_shape"], ["mask"])
    scale = _const(nodes, "attn_scale", np.asarray(1 / math.sqrt(hd), np.float32))
    hh = _const(nodes, "heads_hd", _i64(heads, hd))
    wd = _const(nodes, "width_1d", _i64(width))

    for i in range(layers):
        p = f"l{i}"
        ln = node("LayerNormalization", [h, weight(f"{p}.ln1.g", width, scale=1.0), weight(f"{p}.ln1.b", width)],
                  [f"{p}.ln1"], axis=-1, epsilon=1e-5)
        # head split: Shape(x) -> Gather(0), Gather(1) -> Unsqueeze -> Concat(b, s, heads, hd) -> Reshape
        node("Shape", [ln], [f"{p}.shp"])
        node("Gather", [f"{p}.shp", "c0"], [f"{p}.b"], axis=0)
        node("Gather", [f"{p}.shp", "c1"], [f"{p}.s"], axis=0)
        node("Unsqueeze", [f"{p}.b", "ax0"], [f"{p}.bat1"])
        node("Unsqueeze", [f"{p}.s", "ax0"], [f"{p}.s1"])
        split = node("Concat", [f"{p}.bat1", f"{p}.s1", hh], [f"{p}.split_shape"], axis=0)
        merge = node("Concat", [f"{p}.bat1", f"{p}.s1", wd], [f"{p}.merge_shape"], axis=0)
        qkv = []
        for t in "qkv":
            y = node("MatMul", [ln, weight(f"{p}.w{t}", width, width)], [f"{p}.{t}_mm"])
            y = node("Add", [y, weight(f"{p}.b{t}", width, scale=0.1)], [f"{p}.{t}_lin"])
            y = node("Reshape", [y, split], [f"{p}.{t}_heads"])
            perm = [0, 2, 3, 1] if t == "k" else [0, 2, 1, 3]
            qkv.append(node("Transpose", [y], [f"{p}.{t}_t"], perm=perm))
        q, k, v = qkv
        s = node("MatMul", [q, k], [f"{p}.scores"])
        s = node("Mul", [s, scale], [f"{p}.scaled"])
        s = node("Add", [s, "mask"], [f"{p}.masked"])
        a = node("Softmax", [s], [f"{p}.probs"], axis=-1)
        o = node("MatMul", [a, v], [f"{p}.ctx"])
        o = node("Transpose", [o], [f"{p}.ctx_t"], perm=[0, 2, 1, 3])
        o = node("Reshape", [o, merge], [f"{p}.ctx_m"])
        o = node("MatMul", [o, weight(f"{p}.wo", width, width)], [f"{p}.attn_out"])
        h = node("Add", [h, o], [f"{p}.res1"])
        ln = node("LayerNormalization", [h, weight(f"{p}.ln2.g", width, scale=1.0), weight(f"{p}.ln2.b", width)],
                  [f"{p}.ln2"], axis=-1, epsilon=1e-5)
        m = node("MatMul", [ln, weight(f"{p}.w1", width, mlp)], [f"{p}.fc1"])
        m = node("Add", [m, weight(f"{p}.b1", mlp, scale=0.1)], [f"{p}.fc1b"])
        # erf GELU, as exported before opset 20
        e = node("Div", [m, _const(nodes, f"{p}.sqrt2", np.asarray(math.sqrt(2), np.float32))], [f"{p}.g_div"])
        e = node("Erf", [e], [f"{p}.g_erf"])
        e = node("Add", [e, _const(nodes, f"{p}.one", np.asarray(1, np.float32))], [f"{p}.g_add"])
        e = node("Mul", [m, e], [f"{p}.g_mul"])
        m = node("Mul", [e, _const(nodes, f"{p}.half", np.asarray(0.5, np.float32))], [f"{p}.gelu"])
        m = node("MatMul", [m, weight(f"{p}.w2", mlp, width)], [f"{p}.fc2"])
        h = node("Add", [h, m], [f"{p}.res2"])
        value_info.append(helper.make_tensor_value_info(h, TensorProto.FLOAT, [1, sym or seq, width]))

    ln = node("LayerNormalization", [h, weight("lnf.g", width, scale=1.0), weight("lnf.b", width)], ["lnf"],
              axis=-1, epsilon=1e-5)
    node("MatMul", [ln, weight("lm_head", width, vocab)], ["logits"])
    out = helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, sym or seq, vocab])
    graph = helper.make_graph(nodes, "legacy_transformer", [ids], [out], inits, value_info=value_info)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], producer_name="pytorch",
                              producer_version="1.13")
    onnx.checker.check_model(model)
    return model


def token_ids(seq: int, vocab: int = 50, seed: int = 0) -> dict[str, np.ndarray]:
    return {"input_ids": np.random.default_rng(seed).integers(0, vocab, (1, seq)).astype(np.int64)}


def tiny_model(nodes, inputs, outputs, initializers=(), opset: int = 20, domains=()) -> onnx.ModelProto:
    """A model from helper-made parts, without running the checker (so unknown ops are allowed)."""
    graph = helper.make_graph(list(nodes), "tiny", list(inputs), list(outputs), list(initializers))
    opsets = [helper.make_opsetid("", opset)] + [helper.make_opsetid(d, 1) for d in domains]
    return helper.make_model(graph, opset_imports=opsets)


def save(model: onnx.ModelProto, path: Path) -> Path:
    onnx.save_model(model, str(path))
    return path


def run_cli(capsys, *argv) -> tuple[int, str, str]:
    """`lpuc ARGV` in-process: (exit code, stdout, stderr); argparse's exits count too."""
    from lpuc.compiler.cli import main

    capsys.readouterr()
    try:
        code = main([str(a) for a in argv])
    except SystemExit as e:
        code = e.code
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_line_error(code, err, *words) -> str:
    """A user error: exit 2 and exactly one `lpuc: error:` line naming `words`, no traceback."""
    assert code == 2, (code, err)
    assert "Traceback" not in err
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("lpuc: error: "), err
    for w in words:
        assert w in lines[0], f"{w!r} not in {lines[0]!r}"
    return lines[0]



class PeakAllocated:
    """`with PeakAllocated() as peak: ...` then `peak.bytes`: the most Python allocated in the block."""
    bytes = 0

    def __enter__(self):
        tracemalloc.start()
        return self

    def __exit__(self, *exc):
        self.bytes = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
