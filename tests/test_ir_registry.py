"""The op registry and the tables keyed by op name, and the frozen, hashable,
checked-on-construction values of the IR (types, values, attributes, ops)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

import lpuc.ir.machine_ops  # noqa: F401  (registers the machine dialects: every registered op is checked)
from lpuc.ir import OPS, AttrDict, Block, DType, Module, Op, Tensor, TensorType, Value
from lpuc.ir.evaluator import EVAL
from lpuc.ir.registry import ATTR_KINDS, REQUIRED, AttrSpec, defop
from strategies import GENERATORS

GRAPH_OPS = sorted(n for n in OPS if n.startswith("graph."))


# --- the registry --------------------------------------------------------------------

def test_the_graph_dialect_is_registered():
    assert len(GRAPH_OPS) >= 55
    assert {"graph.add", "graph.matmul", "graph.split", "graph.topk", "graph.gather_nd"} <= set(GRAPH_OPS)


@pytest.mark.parametrize("name", sorted(OPS))
def test_op_definition(name):
    opdef = OPS[name]
    assert opdef.name == name
    assert "." in name and name == name.lower()
    assert opdef.doc.strip(), f"{name} has no doc"
    assert 0 <= opdef.min_operands and (opdef.max_operands is None or opdef.min_operands <= opdef.max_operands)
    if opdef.operand_names and opdef.max_operands is not None:
        assert len(opdef.operand_names) == opdef.max_operands
    for key, spec in opdef.attrs.items():
        assert isinstance(spec, AttrSpec) and spec.kind in ATTR_KINDS, f"{name}.{key}: kind {spec.kind!r}"
        assert key.isidentifier() and key == key.lower()
        if spec.default is not REQUIRED and spec.default is not None:  # None: absent until a pass sets it
            assert ATTR_KINDS[spec.kind](spec.default), f"{name}.{key}: default {spec.default!r} is not {spec.kind}"


def test_every_graph_op_has_an_evaluator_rule():
    assert [n for n in GRAPH_OPS if n not in EVAL] == []
    assert [n for n in EVAL if n not in OPS] == []


def test_every_graph_op_has_a_generator_for_the_property_tests():
    assert [n for n in GRAPH_OPS if n not in GENERATORS] == []


def test_an_op_is_registered_once():
    with pytest.raises(ValueError, match="registered twice"):
        defop("graph.add", 2)(lambda types, attrs: types[0])


def test_attr_kinds():
    ok = {"bool": True, "int": -3, "float": 0.5, "str": "s", "ints": (1, 2), "floats": (0.5,), "dtype": DType.f16,
          "tensor": Tensor.from_array(np.zeros(2, np.float32)), "extents": ((0, 1, 2),)}
    bad = {"bool": 1, "int": True, "float": 1, "str": b"s", "ints": (1, 2.0), "floats": (1,), "dtype": "f16",
           "tensor": np.zeros(2), "extents": ((0, -1, 2),)}
    for kind, check in ATTR_KINDS.items():
        if kind in ok:
            assert check(ok[kind]) and not check(bad[kind]), kind


def test_result_types_fill_in_defaults():
    x = TensorType((2, 3), DType.f32)
    assert OPS["graph.reduce_sum"].result_types([x], {"axes": (1,)}) == (TensorType((2, 1), DType.f32),)
    assert OPS["graph.topk"].result_types([x], {"k": 2}) == (TensorType((2, 2), DType.f32),
                                                             TensorType((2, 2), DType.i64))


# --- types -----------------------------------------------------------------------------

def test_tensor_type():
    t = TensorType([1, np.int64(7), 96], DType.bf16)
    assert t.shape == (1, 7, 96) and all(type(d) is int for d in t.shape)
    assert str(t) == "bf16[1,7,96]" and str(TensorType((), DType.bool)) == "bool[]"
    assert (t.rank, t.numel, t.nbytes) == (3, 672, 1344)
    assert t == TensorType((1, 7, 96), DType.bf16) and hash(t) == hash(TensorType((1, 7, 96), DType.bf16))
    assert t != TensorType((1, 7, 96), DType.f16) and t != TensorType((1, 96, 7), DType.bf16)
    assert t.with_shape((672,)).shape == (672,) and t.with_dtype(DType.f32).dtype is DType.f32
    with pytest.raises(dataclasses.FrozenInstanceError):
        t.shape = (1,)


@pytest.mark.parametrize("shape", [(-1,), (2, -3), (1.0,), (True,), ("2",), (None,)])
def test_tensor_type_rejects_bad_dims(shape):
    with pytest.raises(TypeError, match="non-negative ints"):
        TensorType(shape, DType.f32)


@pytest.mark.parametrize("dtype", ["f32", np.float32, None, 4])
def test_tensor_type_rejects_a_dtype_that_is_not_a_dtype(dtype):
    with pytest.raises(TypeError, match="must be a DType"):
        TensorType((2,), dtype)


def test_dtypes():
    assert [d.value for d in DType] == [d.name for d in DType]
    assert DType.bf16.numpy == np.float32 and DType.bf16.itemsize == 2 and DType.bf16.is_float
    assert DType.u8.is_int and not DType.bool.is_int and not DType.bool.is_float
    assert DType.from_numpy(np.int16) is DType.i16 and DType.from_numpy(np.float32) is DType.f32
    with pytest.raises(ValueError):
        DType.from_numpy(np.complex64)
    import ml_dtypes

    assert DType.from_numpy(ml_dtypes.bfloat16) is DType.bf16
    for d in DType:  # (the narrow types' numpy types are ml_dtypes', loaded when first asked for)
        assert d.is_narrow == (d.numpy.type.__module__.split(".")[0] == "ml_dtypes")
        assert d is DType.bf16 or DType.from_numpy(d.numpy) is d
        if d.is_int:  # numpy's range, or ml_dtypes' for a narrow type
            bits, signed = int(d.value[1:]), d.value[0] == "i"
            assert (d.iinfo.min, d.iinfo.max) == ((-2 ** (bits - 1), 2 ** (bits - 1) - 1) if signed else (0, 2 ** bits - 1))


# --- values, ops, blocks, modules --------------------------------------------------------

F2 = TensorType((2,), DType.f32)


def test_value():
    v = Value("layer.0/attn:q-proj", F2)
    assert str(v) == "%layer.0/attn:q-proj"
    assert v == Value("layer.0/attn:q-proj", F2) and hash(v) == hash(Value("layer.0/attn:q-proj", F2))
    assert v != Value("layer.0/attn:q-proj", TensorType((3,), DType.f32))
    with pytest.raises(dataclasses.FrozenInstanceError):
        v.name = "w"


@pytest.mark.parametrize("name", ["", "a b", "%x", "x,y", "é", "x#", 'x"', 7, None])
def test_value_rejects_bad_names(name):
    with pytest.raises(ValueError, match="invalid value name"):
        Value(name, F2)


def test_value_rejects_a_type_that_is_not_a_tensor_type():
    with pytest.raises(TypeError, match="must be a TensorType"):
        Value("x", "f32[2]")


def test_op_block_module_are_frozen_and_hashable():
    x, y = Value("x", F2), Value("y", F2)
    op = Op("graph.exp", [x], [y], {"k": (1, 2)})
    assert isinstance(op.attrs, AttrDict) and op.operands == (x,) and op.results == (y,)
    assert op == Op("graph.exp", (x,), (y,), AttrDict({"k": (1, 2)}))
    assert hash(op) == hash(Op("graph.exp", (x,), (y,), AttrDict({"k": (1, 2)})))
    assert op.result is y and op.label() == "%y = graph.exp"
    m = Module("m", Block([x], [op], [("y", y)]), {"machine": "tsp-v1"})
    assert m == Module("m", Block((x,), (op,), (("y", y),)), AttrDict({"machine": "tsp-v1"}))
    assert hash(m) == hash(Module("m", Block((x,), (op,), (("y", y),)), AttrDict({"machine": "tsp-v1"})))
    assert len({m, m.replace(name="m2"), m.replace(name="m")}) == 2
    for obj, field in ((op, "name"), (m.block, "ops"), (m, "name")):
        with pytest.raises(dataclasses.FrozenInstanceError):
            setattr(obj, field, None)


def test_op_attrs_are_checked():
    with pytest.raises(TypeError, match="not an attribute value"):
        Op("graph.exp", (), (), {"k": [1, 2]})


@pytest.mark.parametrize("name", ["", "a b", "a/b", "@m"])
def test_module_rejects_bad_names(name):
    with pytest.raises(ValueError, match="invalid module name"):
        Module(name, Block((), (), ()))


def test_module_replace():
    x = Value("x", F2)
    m = Module("m", Block((x,), (), (("x", x),)))
    assert m.replace(outputs=()).outputs == () and m.replace(outputs=()).inputs == (x,)
    assert m.replace(attrs={"a": 1}).attrs == AttrDict({"a": 1})


# --- attributes ----------------------------------------------------------------------------

@pytest.mark.parametrize("value", [[1, 2], {"a": 1}, {1, 2}, np.zeros(2), np.int64(3), np.float32(1.0), None,
                                   (1, [2]), b"bytes", TensorType((2,), DType.f32)])
def test_attr_dict_rejects_values_that_are_not_attributes(value):
    with pytest.raises(TypeError, match="not an attribute value"):
        AttrDict({"k": value})


def test_attr_dict_rejects_names_that_are_not_str():
    with pytest.raises(TypeError, match="not a str"):
        AttrDict({1: 2})


def test_attr_dict():
    a = AttrDict({"b": 2, "a": (1, (2, 3)), "c": DType.f32})
    assert list(a) == ["a", "b", "c"] and len(a) == 3 and a["a"] == (1, (2, 3)) and dict(a)["c"] is DType.f32
    assert a == AttrDict({"c": DType.f32, "a": (1, (2, 3)), "b": 2})
    assert hash(a) == hash(AttrDict({"c": DType.f32, "a": (1, (2, 3)), "b": 2}))
    assert a != {"a": (1, (2, 3)), "b": 2, "c": DType.f32}  # only AttrDicts are AttrDicts
    with pytest.raises(TypeError):
        a["d"] = 1  # type: ignore[index]
    assert AttrDict() == AttrDict({}) and not AttrDict()


@pytest.mark.parametrize(("a", "b"), [(1, 1.0), (1, True), (0, False), (0.0, -0.0), ((1,), (1.0,)), ((1, 2), (1, True)),
                                      ("1", 1), (DType.f32, "f32")])
def test_attr_dicts_differ_when_they_print_differently(a, b):
    """Python has 1 == 1.0 == True; attributes print (and type-check) differently."""
    x, y = AttrDict({"k": a}), AttrDict({"k": b})
    assert x != y
    assert len({x, y}) == 2


def test_a_nan_attribute_equals_itself():
    nan = float("nan")
    assert AttrDict({"k": nan}) == AttrDict({"k": float("nan")})
    assert AttrDict({"k": (nan, 1.0)}) == AttrDict({"k": (float("nan"), 1.0)})
    assert AttrDict({"k": nan}) != AttrDict({"k": (nan,)})


def test_tensor_attributes():
    t = Tensor.from_array(np.arange(6, dtype=np.int32).reshape(2, 3))
    assert t.type == TensorType((2, 3), DType.i32) and t.key.startswith("sha256:") and t.inline
    assert t == Tensor.from_array(np.arange(6, dtype=np.int32).reshape(2, 3))  # equal content, equal key
    assert hash(t) == hash(Tensor(t.type, t.key))  # the data loader is not part of equality
    assert t == Tensor(t.type, t.key) and not Tensor(t.type, t.key).has_data
    assert t != Tensor.from_array(np.arange(6, dtype=np.int64).reshape(2, 3))
    assert t != Tensor.from_array(np.arange(6, dtype=np.int32).reshape(3, 2))
    assert not t.array.flags.writeable
    assert not Tensor.from_array(np.zeros(17, np.float32)).inline  # large constants print by reference
    scalar = Tensor.from_array(np.float32(2.5))
    assert scalar.type == TensorType((), DType.f32) and scalar.array.shape == ()
