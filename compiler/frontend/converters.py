"""The converter table: ONNX op type -> function emitting graph ops.

A converter receives a `Node` (the ONNX node, its inputs as IR values or
compile-time constants, its attributes) and returns one IR value per ONNX
output (None for an absent optional output). Whatever ONNX passes as a shape
tensor must be a compile-time constant here: static scheduling needs static
shapes. Add an op with `@converts("OpType")`.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import onnx
from onnx import helper, numpy_helper

from ir import DType, LpucError, Value

Converter = Callable[["Node"], "Value | list[Value | None]"]
CONVERTERS: dict[str, Converter] = {}

# Ops whose output shapes depend on data: rejected with advice, never converted.
DATA_DEPENDENT = frozenset({"NonZero", "Unique", "NonMaxSuppression", "Compress", "StringSplit"})


def converts(*op_types: str):
    def register(fn: Converter) -> Converter:
        for t in op_types:
            CONVERTERS[t] = fn
        return fn

    return register


class Node:
    """What a converter sees of one ONNX node."""

    def __init__(self, proto: onnx.NodeProto, builder, importer, opset: int):
        self.proto, self.b, self.importer, self.opset = proto, builder, importer, opset
        self.attrs = {a.name: helper.get_attribute_value(a) for a in proto.attribute}

    def has(self, i: int) -> bool:
        return i < len(self.proto.input) and self.proto.input[i] != ""

    def x(self, i: int) -> Value:
        """Input i as an IR value."""
        if not self.has(i):
            raise LpucError(f"input {i} is missing")
        return self.importer.value(self.proto.input[i])

    def const(self, i: int) -> np.ndarray | None:
        """Input i's value when known at compile time (else None)."""
        return self.importer.const(self.proto.input[i]) if self.has(i) else None

    def ints(self, i: int, what: str) -> tuple[int, ...] | None:
        """A shape-like input (None when absent), which must be a compile-time constant."""
        if not self.has(i):
            return None
        a = self.const(i)
        if a is None:
            raise LpucError(f"{what} (input {i}, {self.proto.input[i]}) is computed at run time; "
                            "static scheduling needs it constant: export with fixed shapes")
        return tuple(int(v) for v in np.asarray(a).reshape(-1))

    def attr(self, name: str, default=None):
        v = self.attrs.get(name, default)
        return v.decode() if isinstance(v, bytes) else v

    def op(self, name: str, *operands: Value, **attrs):
        hints = tuple(n or None for n in self.proto.output)
        return self.b.op(name, *operands, names=hints, **attrs)

    def constant(self, array, dtype: DType | None = None) -> Value:
        return self.b.constant(np.asarray(array), dtype, name=self.proto.output[0] or None)


def _dtype_of(elem_type: int) -> DType:
    from .onnx_import import onnx_dtype

    return onnx_dtype(elem_type, "cast target")


# --- elementwise -------------------------------------------------------------

for _onnx, _ours in {"Add": "add", "Sub": "sub", "Mul": "mul", "Div": "div", "Equal": "equal", "Less": "less",
                     "LessOrEqual": "less_equal", "Greater": "greater", "GreaterOrEqual": "greater_equal",
                     "And": "and", "Or": "or", "Xor": "xor"}.items():
    converts(_onnx)(lambda n, ours=_ours: n.op(f"graph.{ours}", n.x(0), n.x(1)))

for _onnx, _ours in {"Sqrt": "sqrt", "Reciprocal": "reciprocal", "Neg": "neg", "Exp": "exp", "Log": "log",
                     "Tanh": "tanh", "Sigmoid": "sigmoid", "Erf": "erf", "Cos": "cos", "Sin": "sin", "Abs": "abs",
                     "Relu": "relu", "Not": "not", "IsNaN": "isnan"}.items():
    converts(_onnx)(lambda n, ours=_ours: n.op(f"graph.{ours}", n.x(0)))


@converts("Max", "Min")
def _max_min(n: Node):
    op = "graph.max" if n.proto.op_type == "Max" else "graph.min"
    acc = n.x(0)
    for i in range(1, len(n.proto.input)):
        acc = n.op(op, acc, n.x(i))
    return acc


@converts("Pow")
def _pow(n: Node):
    base, exp = n.x(0), n.x(1)
    if exp.type.dtype != base.type.dtype:
        exp = n.op("graph.cast", exp, to=base.type.dtype)
    return n.op("graph.pow", base, exp)


@converts("Gelu")
def _gelu(n: Node):
    return n.op("graph.gelu", n.x(0), approximate=n.attr("approximate", "none"))


@converts("Identity")
def _identity(n: Node):
    return n.x(0)


@converts("Where")
def _where(n: Node):
    return n.op("graph.where", n.x(0), n.x(1), n.x(2))


@converts("Cast")
def _cast(n: Node):
    return n.op("graph.cast", n.x(0), to=_dtype_of(n.attr("to")))


@converts("CastLike")
def _cast_like(n: Node):
    return n.op("graph.cast", n.x(0), to=n.x(1).type.dtype)


# --- constants and shapes ----------------------------------------------------

@converts("Constant")
def _constant(n: Node):
    for key, value in n.attrs.items():
        if key == "value":
            return n.constant(numpy_helper.to_array(value).astype(_dtype_of(value.data_type).numpy),
                              _dtype_of(value.data_type))
        if key in ("value_float", "value_floats"):
            return n.constant(np.asarray(value, np.float32))
        if key in ("value_int", "value_ints"):
            return n.constant(np.asarray(value, np.int64))
    raise LpucError(f"Constant with attribute(s) {', '.join(n.attrs)} is not supported")


@converts("ConstantOfShape")
def _constant_of_shape(n: Node):
    value = n.attrs.get("value")
    fill = numpy_helper.to_array(value).reshape(-1)[0] if value is not None else np.float32(0)
    dtype = _dtype_of(value.data_type) if value is not None else DType.f32
    return n.constant(np.full(n.ints(0, "shape"), fill, dtype.numpy), dtype)


@converts("Shape")
def _shape(n: Node):
    shape = n.x(0).type.shape
    start, end = n.attr("start", 0), n.attr("end", None)
    return n.constant(np.asarray(shape[slice(start, end)], np.int64))


@converts("Size")
def _size(n: Node):
    return n.constant(np.asarray(n.x(0).type.numel, np.int64))


@converts("Range")
def _range(n: Node):
    start, limit, delta = (n.const(i) for i in range(3))
    if start is None or limit is None or delta is None:
        raise LpucError("Range bounds are computed at run time; static scheduling needs constant shapes")
    return n.constant(np.arange(start, limit, delta, dtype=np.asarray(start).dtype))


# --- linear algebra, reductions, normalizations ------------------------------

@converts("MatMul")
def _matmul(n: Node):
    return n.op("graph.matmul", n.x(0), n.x(1))


@converts("Gemm")
def _gemm(n: Node):
    a, b = n.x(0), n.x(1)
    if n.attr("transA", 0):
        a = n.op("graph.transpose", a, perm=(1, 0))
    if n.attr("transB", 0):
        b = n.op("graph.transpose", b, perm=(1, 0))
    y = n.op("graph.matmul", a, b)
    alpha, beta = n.attr("alpha", 1.0), n.attr("beta", 1.0)
    if alpha != 1.0:
        y = n.op("graph.mul", y, n.b.constant(np.asarray(alpha, y.type.dtype.numpy), y.type.dtype))
    if n.has(2):
        c = n.x(2)
        if beta != 1.0:
            c = n.op("graph.mul", c, n.b.constant(np.asarray(beta, c.type.dtype.numpy), c.type.dtype))
        y = n.op("graph.add", y, c)
    return y


def _reduce_axes(n: Node, rank: int) -> tuple[int, ...] | None:
    """The axes to reduce, from the attribute (older opsets) or input 1; None: no reduction."""
    axes = n.attr("axes")
    if axes is None:
        axes = n.ints(1, "axes")
    if not axes:
        return None if n.attr("noop_with_empty_axes", 0) else tuple(range(rank))
    return tuple(int(a) % rank if rank else 0 for a in axes)


@converts("ReduceMean", "ReduceSum", "ReduceMax", "ReduceMin")
def _reduce(n: Node):
    x = n.x(0)
    axes = _reduce_axes(n, x.type.rank)
    if axes is None:
        return x
    op = {"ReduceMean": "reduce_mean", "ReduceSum": "reduce_sum", "ReduceMax": "reduce_max",
          "ReduceMin": "reduce_min"}[n.proto.op_type]
    return n.op(f"graph.{op}", x, axes=axes, keepdims=bool(n.attr("keepdims", 1)))


@converts("Softmax")
def _softmax(n: Node):
    return n.op("graph.softmax", n.x(0), axis=n.attr("axis", -1))


@converts("LayerNormalization")
def _layer_norm(n: Node):
    x = n.x(0)
    axis, eps = n.attr("axis", -1), float(n.attr("epsilon", 1e-5))
    operands = [x, n.x(1)] + ([n.x(2)] if n.has(2) else [])
    y = n.op("graph.layer_norm", *operands, axis=axis, epsilon=eps)
    wanted = [i < len(n.proto.output) and n.proto.output[i] != "" for i in range(3)]
    if not (wanted[1] or wanted[2]):
        return y
    axes = tuple(range(axis % x.type.rank, x.type.rank))
    mean = n.op("graph.reduce_mean", x, axes=axes, keepdims=True)
    d = n.op("graph.sub", x, mean)
    var = n.op("graph.reduce_mean", n.op("graph.mul", d, d), axes=axes, keepdims=True)
    eps_c = n.b.constant(np.asarray(eps, x.type.dtype.numpy), x.type.dtype)
    inv = n.op("graph.reciprocal", n.op("graph.sqrt", n.op("graph.add", var, eps_c)))
    return [y, mean, inv]


@converts("RMSNormalization")
def _rms_norm(n: Node):
    return n.op("graph.rms_norm", n.x(0), n.x(1), axis=n.attr("axis", -1), epsilon=float(n.attr("epsilon", 1e-5)))


@converts("CumSum")
def _cumsum(n: Node):
    (axis,) = n.ints(1, "axis")
    return n.op("graph.cumsum", n.x(0), axis=axis, exclusive=bool(n.attr("exclusive", 0)),
                reverse=bool(n.attr("reverse", 0)))


@converts("TopK")
def _topk(n: Node):
    (k,) = n.ints(1, "k")
    return list(n.op("graph.topk", n.x(0), k=k, axis=n.attr("axis", -1), largest=bool(n.attr("largest", 1)),
                     sorted=bool(n.attr("sorted", 1))))


@converts("Trilu")
def _trilu(n: Node):
    k = n.ints(1, "k")
    return n.op("graph.trilu", n.x(0), upper=bool(n.attr("upper", 1)), k=k[0] if k else 0)


# --- shapes and data movement ------------------------------------------------

def _reshape_target(shape_in: tuple[int, ...], shape: tuple[int, ...], allowzero: bool) -> tuple[int, ...]:
    out = [shape_in[i] if (d == 0 and not allowzero) else d for i, d in enumerate(shape)]
    if out.count(-1) > 1:
        raise LpucError(f"Reshape target {list(shape)} has more than one -1")
    if -1 in out:
        known = int(np.prod([d for d in out if d != -1]))
        total = int(np.prod(shape_in))
        if known == 0 or total % known:
            raise LpucError(f"cannot reshape {list(shape_in)} to {list(shape)}")
        out[out.index(-1)] = total // known
    return tuple(out)


@converts("Reshape")
def _reshape(n: Node):
    x = n.x(0)
    shape = _reshape_target(x.type.shape, n.ints(1, "shape"), bool(n.attr("allowzero", 0)))
    return x if shape == x.type.shape else n.op("graph.reshape", x, shape=shape)


@converts("Flatten")
def _flatten(n: Node):
    x = n.x(0)
    axis = n.attr("axis", 1) % (x.type.rank + 1) if x.type.rank else 0
    shape = (int(np.prod(x.type.shape[:axis])), int(np.prod(x.type.shape[axis:])))
    return n.op("graph.reshape", x, shape=shape)


@converts("Squeeze")
def _squeeze(n: Node):
    x = n.x(0)
    axes = n.attr("axes") or n.ints(1, "axes")
    rank = x.type.rank
    drop = {a % rank for a in axes} if axes else {i for i, d in enumerate(x.type.shape) if d == 1}
    if any(x.type.shape[a] != 1 for a in drop):
        raise LpucError(f"cannot squeeze axes {sorted(drop)} of {x.type}")
    return n.op("graph.reshape", x, shape=tuple(d for i, d in enumerate(x.type.shape) if i not in drop))


@converts("Unsqueeze")
def _unsqueeze(n: Node):
    x = n.x(0)
    axes = n.attr("axes") or n.ints(1, "axes")
    rank = x.type.rank + len(axes)
    axes = {a % rank for a in axes}
    dims = iter(x.type.shape)
    return n.op("graph.reshape", x, shape=tuple(1 if i in axes else next(dims) for i in range(rank)))


@converts("Transpose")
def _transpose(n: Node):
    x = n.x(0)
    perm = n.attr("perm") or tuple(reversed(range(x.type.rank)))
    return n.op("graph.transpose", x, perm=tuple(perm))


@converts("Expand")
def _expand(n: Node):
    from ir.graph_ops import broadcast_shapes
    from ir.registry import TypeRuleError

    x = n.x(0)
    try:
        shape = broadcast_shapes(x.type.shape, n.ints(1, "shape"))
    except TypeRuleError as e:
        raise LpucError(str(e)) from None
    return x if shape == x.type.shape else n.op("graph.expand", x, shape=shape)


@converts("Tile")
def _tile(n: Node):
    return n.op("graph.tile", n.x(0), repeats=n.ints(1, "repeats"))


@converts("Concat")
def _concat(n: Node):
    return n.op("graph.concat", *[n.x(i) for i in range(len(n.proto.input)) if n.has(i)], axis=n.attr("axis"))


@converts("Split")
def _split(n: Node):
    x = n.x(0)
    axis = n.attr("axis", 0) % x.type.rank
    dim = x.type.shape[axis]
    sizes = n.attr("split") or n.ints(1, "split")
    if not sizes:
        parts = n.attr("num_outputs") or len(n.proto.output)
        chunk = -(-dim // parts)
        sizes = [min(chunk, dim - i * chunk) for i in range(parts)]
    results = n.op("graph.split", x, axis=axis, sizes=tuple(sizes))
    return list(results) if isinstance(results, tuple) else [results]


@converts("Slice")
def _slice(n: Node):
    x = n.x(0)
    starts, ends = n.ints(1, "starts"), n.ints(2, "ends")
    axes = n.ints(3, "axes") or tuple(range(len(starts)))
    steps = n.ints(4, "steps") or (1,) * len(starts)
    return n.op("graph.slice", x, starts=starts, ends=ends, axes=tuple(a % x.type.rank for a in axes), steps=steps)


@converts("Gather")
def _gather(n: Node):
    return n.op("graph.gather", n.x(0), n.x(1), axis=n.attr("axis", 0))


@converts("GatherElements")
def _gather_elements(n: Node):
    return n.op("graph.gather_elements", n.x(0), n.x(1), axis=n.attr("axis", 0))


@converts("GatherND")
def _gather_nd(n: Node):
    return n.op("graph.gather_nd", n.x(0), n.x(1), batch_dims=n.attr("batch_dims", 0))
