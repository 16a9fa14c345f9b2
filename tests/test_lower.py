"""Lowering: graph IR -> machine IR keeps the semantics exactly (machine-level
reference evaluator == graph evaluator), on every sample and on hand-built
modules wider than one vector (320 lanes on tsp-v1, 160 on tests/machines/narrow-160.toml)."""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

import lpuc.ir.machine_ops as mo
from lpuc.compiler.driver import load_model
from lpuc.compiler.lower import RULES, evaluate_machine, lower
from lpuc.ir import OPS, DType, Module, TensorType
from lpuc.ir.builder import Builder
from lpuc.ir.evaluator import evaluate
from lpuc.ir.machine import load_machine
from lpuc.ir.target import Target
from lpuc.ir.verifier import verify

ROOT = Path(__file__).resolve().parents[1]
SAMPLES = sorted((ROOT / "samples").glob("*.onnx"))
TSP_V1 = Target(load_machine("tsp-v1"))
NARROW = Target(load_machine(ROOT / "tests" / "machines" / "narrow-160.toml"))
LANES = TSP_V1.lanes
F32 = DType.f32


def rel_error(ours: dict, ref: dict) -> float:
    worst = 0.0
    for k, r in ref.items():
        o = ours[k]
        assert o.shape == r.shape and o.dtype == r.dtype, k
        if r.dtype.kind != "f":
            assert np.array_equal(o, r), f"{k}: integer/bool outputs differ"
            continue
        scale = max(float(np.max(np.abs(r), initial=0.0)), 1e-30)
        worst = max(worst, float(np.max(np.abs(o.astype(np.float64) - r), initial=0.0)) / scale)
    return worst


# --- hand-built modules -----------------------------------------------------------

def wide_matmuls() -> tuple[Module, dict]:
    """Widths 333 and 700 (beyond one vector, not multiples), K > 320, odd rows,
    batched and broadcast matmuls, 1-D operands."""
    rng = np.random.default_rng(1)
    b = Builder()
    x = b.input("x", TensorType((7, 333), F32))
    y = b.input("y", TensorType((5, 700), F32))
    a3 = b.input("a3", TensorType((3, 5, 333), F32))
    b3 = b.input("b3", TensorType((3, 333, 700), F32))
    a4 = b.input("a4", TensorType((2, 1, 5, 40), F32))
    b4 = b.input("b4", TensorType((4, 40, 7), F32))
    v = b.input("v", TensorType((333,), F32))
    x3 = b.input("x3", TensorType((2, 7, 333), F32))
    q = b.input("q", TensorType((1, 5, 9, 64), F32))
    kt = b.input("kt", TensorType((1, 5, 64, 9), F32))
    w1 = b.constant(rng.standard_normal((333, 700)).astype(np.float32), name="w1")
    w2 = b.constant(rng.standard_normal((700, 333)).astype(np.float32), name="w2")
    w3 = b.constant(rng.standard_normal((1, 333, 700)).astype(np.float32), name="w3")
    h = b.op("graph.matmul", x, w1, names=("h",))                      # K 333, N 700
    b.output("h", h)
    b.output("h2", b.op("graph.matmul", h, w2))                         # K 700 (3 k-tiles), N 333
    b.output("batched", b.op("graph.matmul", a3, b3))                   # [3,5,333] @ [3,333,700]
    b.output("broadcast", b.op("graph.matmul", a4, b4))                 # [2,1,...] @ [4,...] -> [2,4,5,7]
    b.output("vec_left", b.op("graph.matmul", v, w1))                   # [333] @ [333,700]
    b.output("vec_right", b.op("graph.matmul", x, v))                   # [7,333] @ [333]
    b.output("weight_batch1", b.op("graph.matmul", x3, w3))             # [2,7,333] @ [1,333,700]
    b.output("heads", b.op("graph.matmul", q, kt, names=("scores",)))   # 5 heads over 4 planes: 1, 1, 1, 2
    b.output("yt", b.op("graph.matmul", y, b.op("graph.transpose", h, perm=(1, 0))))  # [5,700] @ [700,7]
    inputs = {name: rng.standard_normal(t.shape).astype(np.float32)
              for name, t in [(i.name, i.type) for i in b.inputs]}
    return b.build("wide_matmuls"), inputs


def every_op() -> tuple[Module, dict]:
    """Every graph op at least once, on odd shapes wider than a vector."""
    rng = np.random.default_rng(2)
    b = Builder()
    x = b.input("x", TensorType((5, 333), F32))
    z = b.input("z", TensorType((5, 333), F32))
    ids = b.input("ids", TensorType((3, 2), DType.i64))
    k = b.input("k", TensorType((5, 4), DType.i64))
    pos = b.op("graph.add", b.op("graph.abs", z), b.constant(np.float32(1.0)))
    out = []

    def o(v):
        out.append(v)
        return v

    for name in ("add", "sub", "mul", "max", "min", "mod"):
        o(b.op(f"graph.{name}", x, pos))
    o(b.op("graph.div", x, pos))
    o(b.op("graph.pow", pos, b.constant(np.float32(1.5))))
    for name in ("exp", "tanh", "sigmoid", "erf", "cos", "sin", "neg", "abs", "relu", "round"):
        o(b.op(f"graph.{name}", x))
    for name in ("log", "sqrt", "reciprocal"):
        o(b.op(f"graph.{name}", pos))
    cmp = [o(b.op(f"graph.{name}", x, z)) for name in ("equal", "less", "less_equal", "greater", "greater_equal")]
    for name in ("and", "or", "xor"):
        o(b.op(f"graph.{name}", cmp[1], cmp[3]))
    o(b.op("graph.not", cmp[1]))
    o(b.op("graph.isnan", x))
    o(b.op("graph.gelu", x, approximate="tanh"))
    o(b.op("graph.gelu", x))
    o(b.op("graph.where", cmp[1], x, z))
    o(b.op("graph.cast", x, to=DType.i32))
    for name in ("reduce_sum", "reduce_mean", "reduce_max", "reduce_min"):
        o(b.op(f"graph.{name}", x, axes=(1,), keepdims=False))
    o(b.op("graph.reduce_sum", x, axes=(0, 1), keepdims=True))
    o(b.op("graph.softmax", x, axis=-1))
    o(b.op("graph.softmax", x, axis=0))
    scale = b.constant(rng.standard_normal(333).astype(np.float32))
    o(b.op("graph.layer_norm", x, scale, b.constant(rng.standard_normal(333).astype(np.float32)), epsilon=1e-5))
    o(b.op("graph.layer_norm", x, scale))
    o(b.op("graph.rms_norm", x, scale, epsilon=1e-6))
    o(b.op("graph.cumsum", x, axis=1, exclusive=True))
    o(b.op("graph.cumsum", x, axis=0, reverse=True))
    o(b.op("graph.topk", x, k=4)[0])
    o(b.op("graph.topk", x, k=3, largest=False)[1])
    o(b.op("graph.trilu", x, upper=False, k=2))
    o(b.op("graph.transpose", x, perm=(1, 0)))
    o(b.op("graph.expand", b.op("graph.reshape", x, shape=(1, 5, 333)), shape=(2, 5, 333)))
    o(b.op("graph.tile", x, repeats=(2, 3)))
    o(b.op("graph.concat", x, z, axis=1))
    for part in b.op("graph.split", x, axis=1, sizes=(13, 320)):
        o(part)
    o(b.op("graph.slice", x, starts=(1, 330), ends=(5, 3), axes=(0, 1), steps=(2, -7)))
    o(b.op("graph.reshape", x, shape=(5, 9, 37)))                       # moves data: sxm.reshape
    o(b.op("graph.reshape", x, shape=(5, 1, 333)))                      # keeps rows and cols: a view
    o(b.op("graph.gather", x, ids, axis=0))
    o(b.op("graph.gather_elements", x, k, axis=1))
    o(b.op("graph.gather_nd", x, b.op("graph.reshape", ids, shape=(3, 2, 1)), batch_dims=0))
    o(b.constant(rng.standard_normal((3, 700)).astype(np.float32)))
    for i, v in enumerate(out):
        b.output(f"out{i}", v)
    b.output("x_again", x)  # an input straight to an output
    inputs = {"x": rng.standard_normal((5, 333)).astype(np.float32),
              "z": rng.standard_normal((5, 333)).astype(np.float32),
              "ids": rng.integers(0, 5, (3, 2)).astype(np.int64),
              "k": rng.integers(0, 333, (5, 4)).astype(np.int64)}
    inputs["z"][0, :7] = inputs["x"][0, :7]  # some equal elements
    return b.build("every_op"), inputs


def stateful() -> tuple[Module, dict]:
    """A state of 8 rows wider than a vector (a fresh one: zeros), 5 rows written at the run-time position p
    and read after the write."""
    b = Builder()
    x = b.input("x", TensorType((1, 5, 333), F32))
    p = b.input("p", TensorType((1, 1), DType.i64))
    cache = b.op("graph.state", name="cache", shape=(1, 8, 333), dtype=F32)
    written = b.op("graph.state_write", cache, x, p)
    b.output("sum", b.op("graph.reduce_sum", written, axes=(1,), keepdims=False))
    inputs = {"x": np.random.default_rng(3).standard_normal((1, 5, 333)).astype(np.float32),
              "p": np.asarray([[2]])}
    return b.build("stateful", position="p"), inputs


HAND = {"wide_matmuls": wide_matmuls, "every_op": every_op, "stateful": stateful}


def sample(path: Path):
    module, _ = load_model(path)
    inputs = dict(np.load(path.with_name(path.stem + ".inputs.npz")))
    return module, inputs


# --- tests ----------------------------------------------------------------------------

def test_every_graph_op_has_a_rule():
    assert sorted(n for n in OPS if n.startswith("graph.") and n not in RULES) == []


@pytest.mark.parametrize("path", SAMPLES, ids=lambda p: p.stem)
def test_samples_lower_exactly(path):
    module, inputs = sample(path)
    lowered = verify(lower(module, TSP_V1), TSP_V1.machine)
    assert rel_error(evaluate_machine(lowered, inputs), evaluate(module, inputs)) <= 1e-5


@pytest.mark.parametrize("target", [TSP_V1, NARROW], ids=lambda t: t.machine.name)
@pytest.mark.parametrize("name", sorted(HAND))
def test_hand_built_modules_lower_exactly(name, target):
    module, inputs = HAND[name]()
    verify(module)
    lowered = verify(lower(module, target), target.machine)
    assert [n for n, _ in lowered.outputs] == [n for n, _ in module.outputs]
    assert rel_error(evaluate_machine(lowered, inputs), evaluate(module, inputs)) <= 1e-5


def test_lowered_form():
    module, _ = wide_matmuls()
    lowered = lower(module, TSP_V1)
    ops = lowered.ops
    assert lowered.attrs["machine"] == "tsp-v1"
    assert all(op.name.split(".")[0] in ("vxm", "sxm", "mem", "mxm", "host") for op in ops)
    # each input is copied in once, just before its first reader (lazily, on the reader's chip)
    copied = [op for op in ops if op.name == "host.input"]
    assert sorted(op.attrs["name"] for op in copied) == sorted(v.name for v in module.inputs)
    assert all(op.name == "host.output" and op.attrs["name"] == name and op.result == v
               for (name, v), op in zip(lowered.outputs, ops[-len(lowered.outputs):]))
    users = Counter(v.name for op in ops for v in op.operands)
    installs = [op for op in ops if op.name == "mxm.install"]
    for inst in installs:
        w, tile = inst.operands[0].type, inst.result.type
        assert tile.shape[-2] <= LANES and tile.shape[-1] <= LANES
        assert (inst.attrs.get("start") is not None) == (tile != w)  # a window of B exactly when B is tiled
        assert users[inst.result.name] == 1  # one matmul per installed tile
    # [7,333] @ [333,700]: 2 k-tiles x 3 n-tiles; [7,700] @ [700,333]: 3 x 2; ...
    first = [op for op in ops if op.name == "mxm.matmul" and op.result.name.startswith("h.")]
    assert len(first) == 6 and sum(len(op.operands) == 3 for op in first) == 3
    names = Counter(op.name for op in ops)
    # A's k-tiles are column views; B's tiles are the windows their installs read, no views
    assert names["mem.column_slice"] > 0 and names["mem.join"] > 0
    # rows are sliced only to run a batched matmul's batches (heads) on every plane: a run of them each
    assert all(re.search(r"\.[ab]\d+$", op.result.name) for op in ops if op.name == "mem.row_slice")
    heads = [op for op in ops if op.name == "mxm.matmul" and op.result.name.startswith("scores.")]
    assert [op.operands[0].type.shape[0] for op in heads] == [1, 1, 1, 2]


def test_softmax_and_norms_are_vxm_sequences():
    module, _ = every_op()
    names = {op.name for op in lower(module, TSP_V1).ops}
    assert not any(n.endswith(("softmax", "layer_norm", "rms_norm", ".matmul")) and not n.startswith("mxm")
                   for n in names)
    assert {"vxm.reduce_max", "vxm.exp", "vxm.reduce_sum", "vxm.div", "vxm.sqrt", "vxm.reduce_mean"} <= names


def test_reshape_views_and_copies():
    module, _ = every_op()
    lowered = lower(module, TSP_V1)
    kinds = {op.result.type.shape: op.name for op in lowered.ops
             if op.name in ("mem.reshape_view", "sxm.reshape")}
    assert kinds[(5, 9, 37)] == "sxm.reshape" and kinds[(5, 1, 333)] == "mem.reshape_view"


def test_a_transpose_keeping_the_last_axis_is_a_view():
    """Attention's heads split out of the hidden axis and merged back: whole rows reordered, no SXM work; the
    interpreter reads them in the new order (the evaluators agree on the lowered module)."""
    b = Builder()
    x = b.input("x", TensorType((1, 7, 3, 333), F32))
    b.output("out", b.op("graph.transpose", b.op("graph.transpose", x, perm=[0, 2, 1, 3]), perm=[0, 2, 1, 3]))
    module = b.build("heads")
    lowered = lower(module, TSP_V1)
    assert [op.name for op in lowered.ops if op.name.endswith("transpose_view") or op.name.startswith("sxm")] \
        == ["mem.transpose_view"] * 2
    x_value = np.random.default_rng(1).standard_normal((1, 7, 3, 333)).astype(np.float32)
    np.testing.assert_array_equal(evaluate_machine(lowered, {"x": x_value})["out"], x_value)


def test_row_slice_extents():
    from lpuc.ir.layout import view_extents, words
    t = TensorType((2, 5, 333), F32)  # 2 batches x 5 rows, 2 vector columns, 4 planes
    base = ((0, 0, words(t, LANES)),)
    ext = view_extents("mem.row_slice", {"start": 1, "size": 3}, [t], [base], LANES)
    # per (vector column, batch): rows 1..3 of 5, 4 words each
    assert ext == tuple((0, ((j * 2 + bt) * 5 + 1) * 4, 12) for j in range(2) for bt in range(2))
    assert sum(n for _, _, n in ext) == words(TensorType((2, 3, 333), F32), LANES)
    assert mo.is_view("mem.row_slice")


@pytest.mark.parametrize("op, attrs, shape, fn", [
    ("mem.row_slice", {"start": 2, "size": 3}, (2, 5, 700), lambda a: a[..., 2:5, :]),
    ("mem.row_slice", {"start": 0, "size": 1}, (7, 333), lambda a: a[0:1, :]),
    ("mem.column_slice", {"start": 320, "size": 320}, (2, 5, 700), lambda a: a[..., 320:640]),
    ("mem.column_slice", {"start": 640, "size": 60}, (3, 700), lambda a: a[..., 640:]),
    ("mem.reshape_view", {"shape": (10, 700)}, (2, 5, 700), lambda a: a.reshape(10, 700)),
    # heads out of and back into the hidden axis: rows reordered, over several vector columns too
    ("mem.transpose_view", {"perm": (1, 0, 2)}, (3, 5, 64), lambda a: a.transpose(1, 0, 2)),
    ("mem.transpose_view", {"perm": (0, 2, 1, 3)}, (1, 3, 4, 700), lambda a: a.transpose(0, 2, 1, 3)),
    ("mem.transpose_view", {"perm": (2, 0, 1, 3)}, (2, 3, 5, 333), lambda a: a.transpose(2, 0, 1, 3)),
])
def test_view_extents_name_the_right_words(op, attrs, shape, fn):
    """A view's extents, read from the operand's words, are the view's value."""
    from lpuc.ir.layout import from_words, to_words, view_extents, words
    from lpuc.ir.registry import OPS as REG
    t = TensorType(shape, F32)
    a = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    data = to_words(a, t, LANES)
    (rt,) = REG[op].result_types([t], attrs)
    ext = view_extents(op, attrs, [t], [((0, 0, words(t, LANES)),)], LANES)
    picked = np.concatenate([data[w:w + n] for _, w, n in ext]) if ext else data[:0]
    assert len(picked) == words(rt, LANES)
    np.testing.assert_array_equal(from_words(picked, rt, LANES), fn(a))


@pytest.mark.parametrize("shape, start, size", [
    ((700, 333), (320, 320), (320, 13)),
    ((2, 5, 700), (1, 640), (3, 60)),
    ((7, 333), (0, 0), (7, 333)),
])
def test_window_extents_name_the_right_words(shape, start, size):
    """An install's window, read from the weight's words, is its tile: the words of a row slice of a
    column slice, as the views named them before."""
    from lpuc.ir.layout import from_words, to_words, view_extents, window_extents, words
    t = TensorType(shape, F32)
    a = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    data, whole = to_words(a, t, LANES), ((0, 0, words(t, LANES)),)
    ext = window_extents(t, whole, start, size, LANES)
    (k0, n0), (ks, ns) = start, size
    tile = TensorType(shape[:-2] + size, F32)
    picked = np.concatenate([data[w:w + n] for _, w, n in ext])
    np.testing.assert_array_equal(from_words(picked, tile, LANES), a[..., k0:k0 + ks, n0:n0 + ns])
    rows = view_extents("mem.row_slice", {"start": k0, "size": ks}, [t], [whole], LANES)
    rows_type = t.with_shape(shape[:-2] + (ks, shape[-1]))
    assert ext == view_extents("mem.column_slice", {"start": n0, "size": ns}, [rows_type], [rows], LANES)


@pytest.mark.parametrize("op, shapes, join", [
    ("mem.join", [(3, 5, 320), (3, 5, 640), (3, 5, 61)], lambda parts: np.concatenate(parts, axis=-1)),
    # parts of several vector columns joined by rows: per vector column, each part's rows in turn
    ("mem.row_join", [(5, 700), (1, 700), (9, 700)], np.concatenate),
])
def test_join_extents_name_the_right_words(op, shapes, join):
    from lpuc.ir.layout import from_words, to_words, view_extents, words
    from lpuc.ir.registry import OPS as REG
    parts = [np.random.default_rng(i).standard_normal(shape).astype(np.float32) for i, shape in enumerate(shapes)]
    types = [TensorType(p.shape, F32) for p in parts]
    data = np.concatenate([to_words(p, t, LANES) for p, t in zip(parts, types)])
    exts, pos = [], 0
    for t in types:
        exts.append(((0, pos, words(t, LANES)),))
        pos += words(t, LANES)
    ext = view_extents(op, {}, types, exts, LANES)
    (joined,) = REG[op].result_types(types, {})
    picked = np.concatenate([data[w:w + n] for _, w, n in ext])
    np.testing.assert_array_equal(from_words(picked, joined, LANES), join(parts))


def test_norms_and_reductions_along_wide_rows_run_in_row_pieces():
    """A layer norm, an RMS norm and a reduction along the last axis of many rows wider than a vector (a
    prefill's tokens) run as one chain per run of rows, joined by rows; the evaluator agrees bit for bit."""
    rng = np.random.default_rng(6)
    b = Builder()
    x = b.input("x", TensorType((1, 61, 700), F32))  # 61 rows of 12 words: 22 rows a piece
    scale = b.constant(rng.standard_normal(700).astype(np.float32), name="scale")
    bias = b.constant(rng.standard_normal(700).astype(np.float32), name="bias")
    b.output("ln", b.op("graph.layer_norm", x, scale, bias, axis=-1))
    b.output("rms", b.op("graph.rms_norm", x, scale, axis=-1))
    b.output("max", b.op("graph.reduce_max", x, axes=[-1], keepdims=True))
    module = verify(b.build("wide_rows"))
    lowered = verify(lower(module, TSP_V1), TSP_V1.machine)
    counts = Counter(op.name for op in lowered.ops)
    assert counts["vxm.reduce_mean"] == 3 * 3 and counts["vxm.reduce_max"] == 3 and counts["mem.row_join"] == 3
    feeds = {"x": rng.standard_normal((1, 61, 700)).astype(np.float32)}
    assert rel_error(evaluate_machine(lowered, feeds), evaluate(module, feeds)) == 0


def test_a_sum_of_two_runs_of_rows_is_an_add_of_the_two():
    """int8's two parts of a matmul's sums, [2, rows, N], added by an elementwise add of row slices (in column
    pieces): no reduction instruction, the same numbers; a sum over three, or over a middle axis, stays one."""
    rng = np.random.default_rng(8)
    b = Builder()
    two = b.input("two", TensorType((2, 9, 700), F32))
    three = b.input("three", TensorType((3, 9, 700), F32))
    middle = b.input("middle", TensorType((4, 2, 5), F32))
    b.output("a", b.op("graph.reduce_sum", two, axes=[0], keepdims=False))
    b.output("b", b.op("graph.reduce_sum", b.op("graph.reshape", two, shape=[1, 2, 9, 700]), axes=[-3],
                       keepdims=True))
    b.output("c", b.op("graph.reduce_sum", three, axes=[0], keepdims=False))
    b.output("d", b.op("graph.reduce_sum", middle, axes=[1], keepdims=False))
    module = verify(b.build("sums"))
    lowered = verify(lower(module, TSP_V1), TSP_V1.machine)
    counts = Counter(op.name for op in lowered.ops)
    assert counts["vxm.reduce_sum"] == 2 and counts["vxm.add"] >= 2
    feeds = {name: rng.standard_normal(t.shape).astype(np.float32)
             for name, t in [(v.name, v.type) for v in module.inputs]}
    assert rel_error(evaluate_machine(lowered, feeds), evaluate(module, feeds)) == 0


def test_a_concat_along_rows_is_a_view():
    """int8's two parts of an activation stacked by rows for one pass through the MXM: a row join (no data
    moves) when nothing but ones stands before the rows; with heads before them, an SXM copy."""
    rng = np.random.default_rng(9)
    b = Builder()
    q1, q2 = (b.input(n, TensorType((1, 7, 700), F32)) for n in ("q1", "q2"))
    h1, h2 = (b.input(n, TensorType((3, 7, 40), F32)) for n in ("h1", "h2"))
    b.output("parts", b.op("graph.concat", q1, q2, axis=1))
    b.output("heads", b.op("graph.concat", h1, h2, axis=-2))
    module = verify(b.build("concats"))
    lowered = verify(lower(module, TSP_V1), TSP_V1.machine)
    counts = Counter(op.name for op in lowered.ops)
    assert counts["mem.row_join"] == 1 and counts["sxm.concat"] == 1
    feeds = {v.name: rng.standard_normal(v.type.shape).astype(np.float32) for v in module.inputs}
    assert rel_error(evaluate_machine(lowered, feeds), evaluate(module, feeds)) == 0


def test_a_large_reshape_of_tokens_runs_on_every_sxm_unit():
    """Heads split out of 61 tokens of 700 and merged back: one SXM reshape per unit, each on a run of the
    tokens (row slices in, parts joined by rows); a small one stays one instruction."""
    rng = np.random.default_rng(10)
    b = Builder()
    x = b.input("x", TensorType((1, 61, 700), F32))
    small = b.input("small", TensorType((1, 3, 700), F32))
    heads = b.op("graph.reshape", x, shape=[1, 61, 7, 100])
    b.output("heads", heads)
    b.output("merged", b.op("graph.reshape", b.op("graph.mul", heads, b.constant(np.float32(2.0))),
                            shape=[1, 61, 700]))
    b.output("small", b.op("graph.reshape", small, shape=[1, 3, 7, 100]))
    module = verify(b.build("token_reshapes"))
    lowered = verify(lower(module, TSP_V1), TSP_V1.machine)
    reshapes = [op.result.type.shape for op in lowered.ops if op.name == "sxm.reshape"]
    assert reshapes == [(210, 100), (217, 100), (30, 700), (31, 700), (1, 3, 7, 100)]
    feeds = {v.name: rng.standard_normal(v.type.shape).astype(np.float32) for v in module.inputs}
    assert rel_error(evaluate_machine(lowered, feeds), evaluate(module, feeds)) == 0


def test_ops_on_many_rows_of_one_vector_column_run_in_row_pieces():
    """Elementwise ops and a softmax over the last axis on many rows of one vector column (attention's scores:
    heads x queries) become one VXM instruction (softmax: one chain) per run of rows: operands of the result's
    rows read by their rows, per-row ones too, ones the same for every row whole; the pieces joined by rows.
    The evaluator computes them as the graph does; a few rows stay one instruction."""
    rng = np.random.default_rng(4)
    b = Builder()
    x = b.input("x", TensorType((3, 161, 161), F32))       # 483 rows of 161 f32: 1,932 words
    per_row = b.input("per_row", TensorType((3, 161, 1), F32))
    few = b.input("few", TensorType((2, 7, 161), F32))      # 14 rows: below two pieces
    scale = b.constant(rng.standard_normal(161).astype(np.float32), name="scale")
    y = b.op("graph.add", b.op("graph.mul", x, scale), per_row)
    b.output("p", b.op("graph.softmax", b.op("graph.mul", y, b.constant(np.float32(0.125), name="c")), axis=-1))
    b.output("f", b.op("graph.exp", few))
    module = verify(b.build("rows"))
    lowered = verify(lower(module, TSP_V1), TSP_V1.machine)
    counts = Counter(op.name for op in lowered.ops)
    pieces = -(-483 // 64)  # (256 words of 4-word rows a piece)
    assert counts["vxm.add"] == counts["vxm.reduce_max"] == counts["vxm.div"] == pieces
    assert counts["vxm.exp"] == pieces + 1  # (and the few rows' one)
    assert counts["mem.row_join"] == 4 and counts["vxm.mul"] == 2 * pieces
    feeds = {"x": rng.standard_normal((3, 161, 161)).astype(np.float32),
             "per_row": rng.standard_normal((3, 161, 1)).astype(np.float32),
             "few": rng.standard_normal((2, 7, 161)).astype(np.float32)}
    assert rel_error(evaluate_machine(lowered, feeds), evaluate(module, feeds)) == 0


def test_a_wide_elementwise_chain_runs_in_column_pieces():
    """Elementwise ops on a result of several vector columns and many words become one VXM instruction per run
    of columns (operands spanning the columns read by theirs, broadcast ones whole; the pieces joined), which the
    evaluator computes as the graph does; a narrow op stays one instruction."""
    rng = np.random.default_rng(3)
    b = Builder()
    x = b.input("x", TensorType((97, 1000), F32))        # 97 rows x 4 columns of f32: 1,552 words
    row = b.input("row", TensorType((97, 1), F32))       # broadcast along the columns
    small = b.input("small", TensorType((1, 1000), F32))  # one row: 16 words, below a piece
    scale = b.constant(rng.standard_normal(1000).astype(np.float32), name="scale")
    y = b.op("graph.mul", b.op("graph.relu", x), scale)
    z = b.op("graph.add", y, row)
    b.output("z", z)
    b.output("s", b.op("graph.exp", small))
    module = verify(b.build("wide"))
    lowered = verify(lower(module, TSP_V1), TSP_V1.machine)
    counts = Counter(op.name for op in lowered.ops)
    assert counts["vxm.relu"] == counts["vxm.mul"] == counts["vxm.add"] == 4 and counts["vxm.exp"] == 1
    feeds = {"x": rng.standard_normal((97, 1000)).astype(np.float32),
             "row": rng.standard_normal((97, 1)).astype(np.float32),
             "small": rng.standard_normal((1, 1000)).astype(np.float32)}
    assert rel_error(evaluate_machine(lowered, feeds), evaluate(module, feeds)) == 0
