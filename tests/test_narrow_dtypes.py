"""The narrow element types (float8, float4, int4, int2): ONNX Cast semantics with
hand-written expectations (the spec's tables, not ml_dtypes' astype), the text
form, SRAM layout, blob files and the ONNX frontend (sub-byte packing)."""

from __future__ import annotations

import math

import ml_dtypes
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from lpuc.compiler.frontend import import_onnx
from lpuc.ir import DType, TensorType, parse, print_module
from lpuc.ir.builder import Builder
from lpuc.ir.evaluator import cast, evaluate
from lpuc.ir.files import read_module, write_module
from lpuc.ir.layout import from_words, to_words, words
from lpuc.ir.verifier import verify

NARROW = [d for d in DType if d.is_narrow]
F8 = {DType.f8e4m3fn: 448.0, DType.f8e4m3fnuz: 240.0, DType.f8e5m2: 57344.0, DType.f8e5m2fnuz: 57344.0}
INF, NAN = math.inf, math.nan


def cast_values(values, to: DType, src=np.float32, **attrs) -> list[float]:
    with np.errstate(over="ignore"):
        x = np.array(values).astype(src)
    return np.asarray(cast(x, to, **attrs)).astype(np.float64).tolist()


def same(got: list[float], want: list[float]) -> bool:
    return all((math.isnan(g) and math.isnan(w)) or (g == w and math.copysign(1, g) == math.copysign(1, w))
               for g, w in zip(got, want, strict=True))


def test_the_types():
    assert [d.value for d in NARROW] == ["f8e4m3fn", "f8e4m3fnuz", "f8e5m2", "f8e5m2fnuz", "f8e8m0", "f4e2m1",
                                         "i4", "u4", "i2", "u2"]
    for d in NARROW:
        assert d.itemsize == 1 and TensorType((3, 5), d).nbytes == 15 and d.is_float != d.is_int
    assert [(d.iinfo.min, d.iinfo.max) for d in (DType.i4, DType.u4, DType.i2, DType.u2)] == \
        [(-8, 7), (0, 15), (-2, 1), (0, 3)]
    assert DType.from_numpy(ml_dtypes.float8_e4m3fn) is DType.f8e4m3fn
    assert DType.from_numpy(ml_dtypes.bfloat16) is DType.bf16  # computed in f32, as ever


@pytest.mark.parametrize("to", list(F8))
def test_float8_saturate(to):
    big = F8[to]
    x = [INF, -INF, 1e6, -1e6, NAN, 0.0, -0.0, 0.5, 1e-9]
    zero = -0.0 if to in (DType.f8e4m3fn, DType.f8e5m2) else 0.0  # the fnuz types have no -0
    tiny = 0.0
    assert same(cast_values(x, to), [big, -big, big, -big, NAN, 0.0, zero, 0.5, tiny])
    assert same(cast_values(x, to, src=np.float16), [big, -big, big, -big, NAN, 0.0, zero, 0.5, tiny])
    # saturate=0: the spec's second table
    over = {DType.f8e5m2: (INF, -INF)}.get(to, (NAN, NAN))
    assert same(cast_values(x, to, saturate=False), [*over, *over, NAN, 0.0, zero, 0.5, tiny])


def test_float8_rounds_to_nearest_even_once():
    # 1 + 2^-4 is halfway between 1 and 1.125 in e4m3: ties to even (1); a hair above: up, even
    # from f64, where going through f32 first would round twice and land on 1
    assert cast_values([1 + 2**-4, 1 + 3 * 2**-4], DType.f8e4m3fn) == [1.0, 1.25]
    assert cast_values([1 + 2**-4 + 2**-40], DType.f8e4m3fn, src=np.float64) == [1.125]
    assert cast_values([2**40 + 1], DType.f8e5m2, src=np.int64) == [57344.0]  # saturates
    # and so does bf16 from f64: 1 + 2^-8 + 2^-40 is above the bf16 halfway point
    b = Builder()
    x = b.input("x", TensorType((1,), DType.f64))
    b.output("y", b.op("graph.cast", x, to=DType.bf16))
    got = evaluate(verify(b.build("m")), {"x": np.array([1 + 2**-8 + 2**-40])})["y"]
    assert got.tolist() == [1 + 2**-7]


def test_float4_has_no_nan_or_inf():
    x = [0.25, 0.26, 0.75, 2.5, 5.0, 100.0, -INF, INF, -0.0]
    assert same(cast_values(x, DType.f4e2m1), [0.0, 0.5, 1.0, 2.0, 4.0, 6.0, -6.0, 6.0, -0.0])


E8M0_X = [1.0, 1.1, 1.5, 1.6, 0.124, 2.0**127, 1.5 * 2.0**127, 2.0**-127, 2.0**-130, 0.0, INF, NAN, -4.0]


@pytest.mark.parametrize(("mode", "saturate", "want"), [
    ("up", True, [0, 1, 1, 1, -3, 127, 127, -127, -127, -127, 127, None, 2]),
    ("down", True, [0, 0, 0, 0, -4, 127, 127, -127, -127, -127, 127, None, 2]),
    ("nearest", True, [0, 0, 1, 1, -3, 127, 127, -127, -127, -127, 127, None, 2]),
    ("up", False, [0, 1, 1, 1, -3, 127, None, -127, None, None, None, None, 2]),
    ("down", False, [0, 0, 0, 0, -4, 127, 127, -127, None, None, None, None, 2]),
    ("nearest", False, [0, 0, 1, 1, -3, 127, None, -127, None, None, None, None, 2]),
])
def test_e8m0(mode, saturate, want):
    """Powers of two: round_mode picks the neighbour; rounded out of 2^-127..2^127 (zero and
    infinity are) saturates, or is NaN (as the spec's table has it for non-saturate + nearest)."""
    got = cast_values(E8M0_X, DType.f8e8m0, src=np.float64, saturate=saturate, round_mode=mode)
    assert same(got, [NAN if e is None else 2.0**e for e in want])


def test_sub_byte_integers_wrap():
    x = np.arange(-9, 17)
    for to in (DType.i4, DType.u4, DType.i2, DType.u2):
        bits = 4 if to in (DType.i4, DType.u4) else 2
        lo = to.iinfo.min
        want = [(v - lo) % 2**bits + lo for v in x.tolist()]
        assert np.asarray(cast(x, to)).astype(np.int64).tolist() == want
        assert np.asarray(cast(x.astype(np.float32), to)).astype(np.int64).tolist() == want


def test_casts_between_narrow_types():
    """ml_dtypes has no int4 -> uint2 or e8m0 -> int2 conversion: they go through numpy types."""
    assert np.asarray(cast(np.array([3, -2, 7], ml_dtypes.int4), DType.u2)).astype(int).tolist() == [3, 2, 3]
    assert np.asarray(cast(np.array([1, 2, 4], ml_dtypes.float8_e8m0fnu), DType.i2)).astype(int).tolist() == \
        [1, -2, 0]
    assert cast_values(np.array([0.5, 6], ml_dtypes.float4_e2m1fn), DType.f8e8m0) == [0.5, 8.0]
    assert cast_values(np.array([3, 4], ml_dtypes.float8_e5m2), DType.bool) == [1.0, 1.0]


def test_cast_attributes_are_checked_and_default():
    b = Builder()
    x = b.input("x", TensorType((2,), DType.f32))
    with pytest.raises(Exception, match="round_mode must be"):
        b.op("graph.cast", x, to=DType.f8e8m0, round_mode="sideways")
    y = b.op("graph.cast", x, to=DType.f8e4m3fn, saturate=False)
    b.output("y", y)
    m = verify(b.build("m"))
    assert "graph.cast %x {saturate = false, to = f8e4m3fn} : f8e4m3fn[2]" in print_module(m)
    assert np.isnan(evaluate(m, {"x": np.array([1e4, 1], np.float32)})["y"].astype(np.float32)[0])


def _special_values(dtype: DType) -> np.ndarray:
    if dtype.is_int:
        return np.array([dtype.iinfo.min, 0, 1, dtype.iinfo.max], dtype.numpy)
    return np.array([0.0, -0.0, 0.5, 1.5, 6.0, -6.0, 2.0**-9, 2.0**100, NAN, INF], np.float64).astype(dtype.numpy)


@pytest.mark.parametrize("dtype", NARROW, ids=lambda d: d.value)
def test_text_blobs_and_layout_round_trip(dtype, tmp_path):
    """Inline constants, constants by reference in the blob file, SRAM words: bit-exact."""
    small = _special_values(dtype)
    large = np.resize(small, (3, 400))
    b = Builder()
    x = b.input("x", TensorType(small.shape, dtype))
    row = b.op("graph.slice", b.constant(large, dtype), starts=(0,), ends=(1,), axes=(0,), steps=(1,))
    parts = [b.op("graph.reshape", v, shape=(1, small.size)) for v in (x, b.constant(small, dtype))]
    b.output("y", b.op("graph.concat", *parts, row, axis=1))
    m = verify(b.build("m"))
    text = print_module(m)
    assert f"tensor<{dtype.value}[{small.size}], [" in text
    assert parse(text) == m and print_module(parse(text)) == text
    write_module(m, tmp_path / "m.ir")
    again = read_module(tmp_path / "m.ir")
    assert again == m
    got = evaluate(again, {"x": small})["y"]
    assert got.dtype == dtype.numpy and np.array_equal(got.view(np.uint8),
                                                       evaluate(m, {"x": small})["y"].view(np.uint8))
    t = TensorType(large.shape, dtype)
    w = to_words(large, t)
    assert w.shape == (words(t), 320) == (3 * 2, 320)
    assert np.array_equal(from_words(w, t).view(np.uint8), large.view(np.uint8))


def _cast_model(elem_in, elem_out, values: bytes, shape, *, external=None) -> onnx.ModelProto:
    init = helper.make_tensor("w", elem_in, shape, vals=values, raw=True)
    if external is not None:
        from onnx.external_data_helper import set_external_data

        (external / "w.bin").write_bytes(values)
        set_external_data(init, "w.bin", length=len(values))
        init.ClearField("raw_data")
        init.data_location = TensorProto.EXTERNAL
    node = helper.make_node("Cast", ["x"], ["y"], to=elem_out)
    add = helper.make_node("Add", ["y", "w2"], ["z"])
    cw = helper.make_node("Cast", ["w"], ["w2"], to=elem_out)
    graph = helper.make_graph([node, cw, add], "g", [helper.make_tensor_value_info("x", elem_in, shape)],
                              [helper.make_tensor_value_info("z", elem_out, shape)], [init])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 25)])


@pytest.mark.parametrize("external", [False, True])
@pytest.mark.parametrize(("elem", "dtype"), [(TensorProto.INT4, DType.i4), (TensorProto.UINT2, DType.u2),
                                             (TensorProto.FLOAT4E2M1, DType.f4e2m1)])
def test_frontend_unpacks_sub_byte_weights(elem, dtype, external, tmp_path):
    values = np.array([1, 0, 1, 1, 0, 1, 1], dtype.numpy)  # odd count: the last byte is half used
    bits = 2 if dtype is DType.u2 else 4
    packed = (numpy_helper._pack_2bitx4(values) if bits == 2 else numpy_helper._pack_4bitx2(values)).tobytes()
    assert len(packed) == -(-7 * bits // 8)
    model = _cast_model(elem, TensorProto.FLOAT, packed, [7], external=tmp_path if external else None)
    path = tmp_path / "m.onnx"
    onnx.save(model, path)
    module, _ = import_onnx(path)
    assert str(module.inputs[0].type) == f"{dtype.value}[7]"
    x = np.array([1, 1, 0, 0, 1, 1, 0], dtype.numpy)
    z = evaluate(module, {"x": x})["z"]
    assert z.tolist() == (x.astype(np.float32) + values.astype(np.float32)).tolist()


def test_frontend_passes_saturate_and_round_mode(tmp_path):
    nodes = [helper.make_node("Cast", ["x"], ["a"], to=TensorProto.FLOAT8E4M3FN, saturate=0),
             helper.make_node("Cast", ["x"], ["b"], to=TensorProto.FLOAT8E5M2),
             helper.make_node("Cast", ["x"], ["c"], to=TensorProto.FLOAT8E8M0, round_mode="nearest"),
             helper.make_node("Cast", ["x"], ["d"], to=TensorProto.FLOAT, saturate=0)]
    outs = [helper.make_tensor_value_info(n, t, [2]) for n, t in
            (("a", TensorProto.FLOAT8E4M3FN), ("b", TensorProto.FLOAT8E5M2), ("c", TensorProto.FLOAT8E8M0),
             ("d", TensorProto.FLOAT))]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])], outs)
    path = tmp_path / "m.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 24)]), path)
    module, _ = import_onnx(path)
    attrs = [dict(op.attrs) for op in module.ops]
    assert attrs == [{"to": DType.f8e4m3fn, "saturate": False}, {"to": DType.f8e5m2},
                     {"to": DType.f8e8m0, "round_mode": "nearest"}, {"to": DType.f32}]
    out = evaluate(module, {"x": np.array([1e6, 1.6], np.float32)})
    assert np.isnan(out["a"].astype(np.float32)[0]) and out["b"].astype(np.float32).tolist() == [57344, 1.5]
    assert out["c"].astype(np.float32).tolist() == [2.0**20, 2.0]
