"""The converter table: ONNX op type -> function emitting graph ops.

A converter receives a `Node` (the ONNX node, its inputs as IR values or
compile-time constants, its attributes) and returns one IR value per ONNX
output (None for an absent optional output). Whatever ONNX passes as a shape
tensor must be a compile-time constant here: static scheduling needs static
shapes. Add an op with `@converts("OpType")`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import helper, numpy_helper

from ...ir import DType, LpucError, Value

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
                     "Relu": "relu", "Not": "not", "IsNaN": "isnan", "Round": "round"}.items():
    converts(_onnx)(lambda n, ours=_ours: n.op(f"graph.{ours}", n.x(0)))


@converts("Sum")
def _sum(n: Node):
    acc = n.x(0)
    for i in range(1, len(n.proto.input)):
        acc = n.op("graph.add", acc, n.x(i))
    return acc


@converts("Mod")
def _mod(n: Node):
    a, b = n.x(0), n.x(1)
    fmod = n.attr("fmod", 0)
    if a.type.dtype.is_float:
        if not fmod:
            raise LpucError("Mod of floats needs fmod=1")
        return n.op("graph.mod", a, b)  # C fmod
    if not fmod:
        return n.op("graph.mod", a, b)  # the sign of the divisor
    # integers with fmod=1: the sign of the dividend, a - b * trunc(a / b)
    return n.op("graph.sub", a, n.b.op("graph.mul", b, n.b.op("graph.div", a, b)))


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


def _cast_to(n: Node, to: DType):
    """graph.cast with ONNX's `saturate` (float8 targets) and `round_mode` (f8e8m0), each only
    where it applies and differs from the default."""
    attrs = {}
    if to.is_narrow and to.is_float and to is not DType.f4e2m1 and not n.attr("saturate", 1):
        attrs["saturate"] = False
    if to is DType.f8e8m0 and n.attr("round_mode", "up") != "up":
        attrs["round_mode"] = n.attr("round_mode")
    return n.op("graph.cast", n.x(0), to=to, **attrs)


@converts("Cast")
def _cast(n: Node):
    return _cast_to(n, _dtype_of(n.attr("to")))


@converts("CastLike")
def _cast_like(n: Node):
    return _cast_to(n, n.x(1).type.dtype)


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
    dtype = n.importer.consts[n.proto.input[0]].type.dtype
    return n.constant(np.arange(start, limit, delta, dtype=dtype.numpy), dtype)


# --- linear algebra, reductions, normalizations ------------------------------

@converts("MatMul")
def _matmul(n: Node):
    dq = n.importer.dequantized
    return _dequantized_matmul(n, n.x(0), n.x(1), dq.get(n.proto.input[0]), dq.get(n.proto.input[1]))


@converts("Gemm")
def _gemm(n: Node):
    a, b = n.x(0), n.x(1)
    da, db = (n.importer.dequantized.get(n.proto.input[i]) for i in (0, 1))
    if n.attr("transA", 0):
        a, da = n.op("graph.transpose", a, perm=(1, 0)), None
    if n.attr("transB", 0):
        b = n.op("graph.transpose", b, perm=(1, 0))
        db = db and db.transposed(n)
    y = _dequantized_matmul(n, a, b, da, db)
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
    keepdims = bool(n.attr("keepdims", 1))
    if any(x.type.shape[a] == 0 for a in axes):  # an empty reduction: the op's identity, known statically
        shape = tuple(1 if i in axes else d for i, d in enumerate(x.type.shape) if keepdims or i not in axes)
        return n.constant(np.full(shape, _reduce_identity(op, x.type.dtype), x.type.dtype.numpy), x.type.dtype)
    return n.op(f"graph.{op}", x, axes=axes, keepdims=keepdims)


def _reduce_identity(op: str, dtype: DType):
    """ONNX's value for a reduction over an empty set."""
    if op == "reduce_sum":
        return 0
    if op == "reduce_mean":
        return np.nan
    lowest = op == "reduce_max"
    if dtype is DType.bool:
        return not lowest
    if dtype.is_float:
        return -np.inf if lowest else np.inf
    info = dtype.iinfo
    return info.min if lowest else info.max


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
    axis = n.attr("axis", 1)
    axis = axis + x.type.rank if axis < 0 else axis  # in [-rank, rank]
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
    from ...ir.graph_ops import broadcast_shapes
    from ...ir.registry import TypeRuleError

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


@converts("Pad")
def _pad(n: Node):
    """Constant-mode Pad: concat with filled blocks (negative pads slice)."""
    x = n.x(0)
    rank = x.type.rank
    mode = n.attr("mode", "constant")
    if mode != "constant":
        raise LpucError(f"Pad mode {mode!r} is not supported (only 'constant')")
    pads = n.attr("pads") or n.ints(1, "pads")  # an attribute before opset 11
    axes = n.ints(3, "axes")
    axes = tuple(a % rank for a in axes) if axes else tuple(range(rank))
    if len(pads) != 2 * len(axes):
        raise LpucError(f"pads {list(pads)} do not give a begin and end for each of {len(axes)} axes")
    dtype = x.type.dtype
    if n.has(2):  # the fill value: a constant, or a run-time scalar expanded below
        value = n.const(2)
        fill_value = None if value is None else np.asarray(value).reshape(-1)[0]
    else:
        fill_value = n.attr("value", 0)
    for axis, begin, end in zip(axes, pads[: len(axes)], pads[len(axes):]):
        dim = x.type.shape[axis]
        if begin < 0 or end < 0:
            x = n.b.op("graph.slice", x, starts=(max(-begin, 0),), ends=(dim - max(-end, 0),), axes=(axis,),
                       steps=(1,))
        parts = []
        for size in (max(begin, 0), None, max(end, 0)):
            if size is None:
                parts.append(x)
            elif size:
                shape = x.type.shape[:axis] + (size,) + x.type.shape[axis + 1:]
                if fill_value is not None:
                    parts.append(n.b.constant(np.full(shape, fill_value, dtype.numpy), dtype))
                else:
                    parts.append(n.b.op("graph.expand", n.x(2), shape=shape))
        if len(parts) > 1:
            x = n.b.op("graph.concat", *parts, axis=axis)
    return x


@converts("Gather")
def _gather(n: Node):
    return n.op("graph.gather", n.x(0), n.x(1), axis=n.attr("axis", 0))


@converts("GatherElements")
def _gather_elements(n: Node):
    return n.op("graph.gather_elements", n.x(0), n.x(1), axis=n.attr("axis", 0))


@converts("GatherND")
def _gather_nd(n: Node):
    return n.op("graph.gather_nd", n.x(0), n.x(1), batch_dims=n.attr("batch_dims", 0))


# --- fused transformer ops (opset 23+) ---------------------------------------

def _scalar(n: Node, value, dtype: DType) -> Value:
    return n.b.constant(np.asarray(value, dtype.numpy), dtype)


def _rank4_heads(n: Node, x: Value, heads: int, what: str) -> Value:
    """[B, S, H*D] -> [B, H, S, D]."""
    b, s, hidden = x.type.shape
    if not heads or hidden % heads:
        raise LpucError(f"{what} hidden size {hidden} is not a multiple of {heads} heads")
    x = n.b.op("graph.reshape", x, shape=(b, s, heads, hidden // heads))
    return n.b.op("graph.transpose", x, perm=(0, 2, 1, 3))


def _pad_last(n: Node, x: Value, size: int, fill) -> Value:
    """Pad the last dim of x up to `size` with the constant `fill`."""
    missing = size - x.type.shape[-1]
    if missing < 0:
        raise LpucError(f"attn_mask {x.type} is longer than the {size} keys")
    if missing == 0:
        return x
    pad = n.b.constant(np.full(x.type.shape[:-1] + (missing,), fill, x.type.dtype.numpy), x.type.dtype)
    return n.b.op("graph.concat", x, pad, axis=-1)


@converts("Attention")
def _attention(n: Node):
    """ONNX Attention (opsets 23-24, and 25's window attributes): decomposed into
    matmul / softmax with an additive bias. GQA never copies K/V: the q heads of
    one kv head are folded into the row dim of the score matmul."""
    b_ = n.b
    q, k, v = n.x(0), n.x(1), n.x(2)
    rank = q.type.rank
    if rank not in (3, 4) or k.type.rank != rank or v.type.rank != rank:
        raise LpucError(f"Q, K, V must all be 3-D or all 4-D, got {q.type}, {k.type}, {v.type}")
    dtype = q.type.dtype
    if not dtype.is_float:
        raise LpucError(f"Q must be a float tensor, got {q.type}")
    if rank == 3:
        qh, kvh = n.attr("q_num_heads"), n.attr("kv_num_heads")
        if not qh or not kvh:
            raise LpucError("3-D Q/K/V need the q_num_heads and kv_num_heads attributes")
        q, k, v = _rank4_heads(n, q, qh, "Q"), _rank4_heads(n, k, kvh, "K"), _rank4_heads(n, v, kvh, "V")
    batch, qh, sq, d = q.type.shape
    kvh = k.type.shape[1]
    if v.type.shape[1] != kvh or qh % kvh:
        raise LpucError(f"{qh} query heads cannot share {kvh} key / {v.type.shape[1]} value heads")

    # KV cache
    past = 0
    if n.has(4) != n.has(5):
        raise LpucError("past_key and past_value must be given together")
    if n.has(4):
        past = n.x(4).type.shape[2]
        k = b_.op("graph.concat", n.x(4), k, axis=2)
        v = b_.op("graph.concat", n.x(5), v, axis=2)
    present_k, present_v = k, v
    skv = k.type.shape[2]

    # scores = (Q * scale) @ K^T   [B, Hq, Sq, Skv]
    scale = n.attr("scale")
    scale = float(1 / np.sqrt(d)) if scale is None else float(scale)
    kt = b_.op("graph.transpose", k, perm=(0, 1, 3, 2))
    if dtype.itemsize >= 4:  # scale the (smaller) Q side only
        qs = b_.op("graph.mul", q, _scalar(n, scale, dtype)) if scale != 1.0 else q
    else:  # 16-bit floats: the spec's Q*sqrt(scale) @ (K*sqrt(scale))^T, rounding as it does
        root = _scalar(n, np.sqrt(scale), dtype)
        qs, kt = b_.op("graph.mul", q, root), b_.op("graph.mul", kt, root)
    group = qh // kvh
    if group > 1:  # [B, Hkv, group*Sq, D]: q heads h*group .. h*group+group-1 use kv head h
        qs = b_.op("graph.reshape", qs, shape=(batch, kvh, group * sq, d))
    scores = b_.op("graph.matmul", qs, kt)
    if group > 1:
        scores = b_.op("graph.reshape", scores, shape=(batch, qh, sq, skv))
    raw = scores
    softcap = float(n.attr("softcap", 0.0) or 0.0)
    if softcap > 0:
        c = _scalar(n, softcap, dtype)
        scores = b_.op("graph.mul", b_.op("graph.tanh", b_.op("graph.div", scores, c)), c)
    capped = scores

    # the additive bias: attn_mask, causal frontier, sliding window, key padding
    zero, ninf = _scalar(n, 0, dtype), _scalar(n, -np.inf, dtype)
    bias = None
    maybe_empty = False  # could a row of the bias be all -inf?

    def add_bias(term):
        nonlocal bias
        bias = term if bias is None else b_.op("graph.add", bias, term)

    if n.has(3):
        mask = n.x(3)
        if mask.type.dtype is DType.bool:
            mask = b_.op("graph.where", _pad_last(n, mask, skv, False), zero, ninf)
        else:
            if mask.type.dtype != dtype:
                mask = b_.op("graph.cast", mask, to=dtype)
            mask = _pad_last(n, mask, skv, -np.inf)
        add_bias(mask)
        maybe_empty = True
    nonpad = n.x(6) if n.has(6) else None
    if nonpad is not None and n.has(4):
        raise LpucError("nonpad_kv_seqlen cannot be combined with past_key / past_value")
    left, right = n.attr("left_window_size", -1), n.attr("right_window_size", -1)
    causal = bool(n.attr("is_causal", 0))
    # allowed(i, j) rules on diff = offset + i - j: causal: diff >= 0; window: -right <= diff <= left
    rules = ([(0, None)] if causal else []) + ([(None, left)] if left >= 0 else []) \
        + ([(-right, None)] if right >= 0 else [])
    if rules:
        base = np.arange(sq)[:, None] - np.arange(skv)[None, :]  # i - j
        if nonpad is None:  # a static frontier: offset = past length
            diff = base + past
            allowed = np.ones(diff.shape, bool)
            for lo, hi in rules:
                allowed &= (diff >= lo) if lo is not None else (diff <= hi)
            maybe_empty |= not allowed.any(axis=-1).all()
            add_bias(b_.constant(np.where(allowed, 0, -np.inf).astype(dtype.numpy), dtype))
        else:  # offset[b] = nonpad[b] - Sq, known at run time: [B, 1, Sq, Skv]
            off = b_.op("graph.reshape", nonpad, shape=(batch, 1, 1, 1))
            itype = nonpad.type.dtype
            diff = b_.op("graph.add", off, b_.constant((base - sq).astype(itype.numpy), itype))
            allowed = None
            for lo, hi in rules:
                cond = b_.op("graph.greater_equal", diff, _scalar(n, lo, itype)) if lo is not None \
                    else b_.op("graph.less_equal", diff, _scalar(n, hi, itype))
                allowed = cond if allowed is None else b_.op("graph.and", allowed, cond)
            add_bias(b_.op("graph.where", allowed, zero, ninf))
            maybe_empty = True
    if nonpad is not None:  # keys j >= nonpad[b] are padding
        itype = nonpad.type.dtype
        keys = b_.constant(np.arange(skv, dtype=itype.numpy).reshape(1, 1, 1, skv), itype)
        valid = b_.op("graph.less", keys, b_.op("graph.reshape", nonpad, shape=(batch, 1, 1, 1)))
        add_bias(b_.op("graph.where", valid, zero, ninf))
        maybe_empty = True
    if bias is not None:
        scores = b_.op("graph.add", scores, bias)
    biased = scores

    # softmax, in softmax_precision when given
    sp = n.attr("softmax_precision")
    sp = _dtype_of(sp) if sp else dtype
    if sp != dtype:
        scores = b_.op("graph.cast", scores, to=sp)
    probs = b_.op("graph.softmax", scores, axis=-1)
    if maybe_empty:  # a row without any attended key gives zeros, not NaN
        row_max = b_.op("graph.reduce_max", bias, axes=(bias.type.rank - 1,), keepdims=True)
        empty = b_.op("graph.equal", row_max, ninf)
        probs = b_.op("graph.where", empty, _scalar(n, 0, sp), probs)
    if sp != dtype:
        probs = b_.op("graph.cast", probs, to=dtype)

    # Y = probs @ V
    dv = v.type.shape[3]
    p = b_.op("graph.reshape", probs, shape=(batch, kvh, group * sq, skv)) if group > 1 else probs
    y = b_.op("graph.matmul", p, v)
    if group > 1:
        y = b_.op("graph.reshape", y, shape=(batch, qh, sq, dv))
    if rank == 3:
        y = b_.op("graph.reshape", b_.op("graph.transpose", y, perm=(0, 2, 1, 3)), shape=(batch, sq, qh * dv))

    outputs = list(n.proto.output) + [""] * 4
    mode = n.attr("qk_matmul_output_mode", 0)
    if mode not in (0, 1, 2, 3):
        raise LpucError(f"qk_matmul_output_mode {mode} is not one of 0-3")
    qk_out = None
    if outputs[3]:
        qk_out = (raw, capped, biased, probs)[mode]  # all [B, Hq, Sq, Skv]
    return [y, present_k if outputs[1] else None, present_v if outputs[2] else None, qk_out]


@converts("RotaryEmbedding")
def _rotary_embedding(n: Node):
    """ONNX RotaryEmbedding (opset 23): rotate the first rotary_embedding_dim
    features of each head, split in halves or interleaved pairs."""
    b_ = n.b
    x = n.x(0)
    shape_in = x.type.shape
    if x.type.rank == 4:  # [B, H, S, D]: cos/sin broadcast as [B, 1, S, r/2]
        batch, heads, seq, d = shape_in
        xs, cs_shape = x, (batch, 1, seq)
    elif x.type.rank == 3:
        batch, seq, hidden = shape_in
        heads = n.attr("num_heads", 0)
        if not heads or hidden % heads:
            raise LpucError(f"3-D input {x.type} needs a num_heads attribute dividing its hidden size")
        d = hidden // heads
        xs, cs_shape = b_.op("graph.reshape", x, shape=(batch, seq, heads, d)), (batch, seq, 1)
    else:
        raise LpucError(f"input must be 3-D or 4-D, got {x.type}")
    rd = n.attr("rotary_embedding_dim", 0) or d
    if rd % 2 or rd > d:
        raise LpucError(f"rotary_embedding_dim {rd} must be even and at most the head size {d}")
    half = rd // 2
    cos, sin = n.x(1), n.x(2)
    if n.has(3):
        pos = n.x(3)
        cos, sin = b_.op("graph.gather", cos, pos, axis=0), b_.op("graph.gather", sin, pos, axis=0)
    for c in (cos, sin):
        if c.type.shape[-1] != half or c.type.numel not in (batch * seq * half, seq * half):
            raise LpucError(f"cos/sin cache {c.type} does not fit [{batch}, {seq}, {half}]")
    if cos.type.dtype != x.type.dtype or sin.type.dtype != x.type.dtype:
        raise LpucError(f"cos/sin caches must have the input's dtype {x.type.dtype}")
    rows = batch if cos.type.numel == batch * seq * half else 1
    interleaved = bool(n.attr("interleaved", 0))
    tail = (half, 1) if interleaved else (half,)
    cos = b_.op("graph.reshape", cos, shape=(rows,) + cs_shape[1:] + tail)
    sin = b_.op("graph.reshape", sin, shape=(rows,) + cs_shape[1:] + tail)

    lead = xs.type.shape[:-1]
    last = xs.type.rank - 1
    rot = xs if rd == d else b_.op("graph.slice", xs, starts=(0,), ends=(rd,), axes=(last,), steps=(1,))
    if interleaved:  # pairs (x[2i], x[2i+1])
        rot = b_.op("graph.reshape", rot, shape=lead + (half, 2))
        x1, x2 = b_.op("graph.split", rot, axis=last + 1, sizes=(1, 1))
    else:
        x1, x2 = b_.op("graph.split", rot, axis=last, sizes=(half, half))
    real = b_.op("graph.sub", b_.op("graph.mul", cos, x1), b_.op("graph.mul", sin, x2))
    imag = b_.op("graph.add", b_.op("graph.mul", sin, x1), b_.op("graph.mul", cos, x2))
    if interleaved:
        out = b_.op("graph.reshape", b_.op("graph.concat", real, imag, axis=last + 1), shape=lead + (rd,))
    else:
        out = b_.op("graph.concat", real, imag, axis=last)
    if rd < d:
        keep = b_.op("graph.slice", xs, starts=(rd,), ends=(d,), axes=(last,), steps=(1,))
        out = b_.op("graph.concat", out, keep, axis=last)
    return n.op("graph.reshape", out, shape=shape_in) if x.type.rank == 3 else out


# --- quantized models (onnxruntime.quantization: QDQ pairs, dynamic MatMulInteger) -----------------------------

@dataclass(frozen=True)
class Dequantized:
    """A DequantizeLinear's output, kept apart: (q - zero) * scale, `scale` shaped to broadcast against q
    (`q_name`: q's ONNX name). A matmul of two of them with zero zero points, the left one's scale one
    number and the right one's one per column, is an int8 matmul (int32 sums) scaled afterwards."""

    q: Value
    q_name: str
    scale: Value
    zero: bool  # the zero point is a constant 0

    def transposed(self, n: Node) -> "Dequantized":
        c = n.importer.const(self.q_name)  # stored weights: transposed once, here
        q = n.b.op("graph.transpose", self.q, perm=(1, 0)) if c is None else n.b.constant(np.ascontiguousarray(c.T))
        scale = self.scale if self.scale.type.rank < 2 else n.b.op("graph.transpose", self.scale, perm=(1, 0))
        return Dequantized(q, "", scale, self.zero)


def _per_axis(n: Node, v: Value, x: Value, axis: int) -> Value:
    """A scale or zero point of QuantizeLinear / DequantizeLinear shaped to broadcast against x: a scalar as
    it is, a 1-D one along `axis`."""
    if v.type.rank == 0 or v.type.numel == 1 and x.type.rank == 0:
        return v
    axis %= x.type.rank
    return n.b.op("graph.reshape", v, shape=tuple(d if i == axis else 1 for i, d in enumerate(x.type.shape)))


def _zero_point(n: Node, i: int):
    """(input i as a value or None, whether it is a constant 0)."""
    if not n.has(i):
        return None, True
    c = n.const(i)
    return n.x(i), c is not None and not np.any(c)


@converts("DequantizeLinear")
def _dequantize_linear(n: Node):
    x, axis = n.x(0), n.attr("axis", 1)
    if n.attr("block_size", 0):
        raise LpucError("blocked quantization (block_size) is not supported")
    scale = _per_axis(n, n.x(1), x, axis)
    zp, zero = _zero_point(n, 2)
    y = n.b.op("graph.cast", x, to=scale.type.dtype)
    if not zero:
        y = n.b.op("graph.sub", y, n.b.op("graph.cast", _per_axis(n, zp, x, axis), to=scale.type.dtype))
    y = n.op("graph.mul", y, scale)
    n.importer.dequantized[n.proto.output[0]] = Dequantized(x, n.proto.input[0], scale, zero)
    return y


def _saturate_cast(n: Node, v: Value, to: DType) -> Value:
    info = to.iinfo
    lo, hi = (n.b.constant(np.asarray(b, v.type.dtype.numpy), v.type.dtype) for b in (info.min, info.max))
    return n.op("graph.cast", n.b.op("graph.min", n.b.op("graph.max", v, lo), hi), to=to)


@converts("QuantizeLinear")
def _quantize_linear(n: Node):
    """saturate(round(x / scale) + zero point), ties to even, in the zero point's type (default uint8)."""
    x, axis = n.x(0), n.attr("axis", 1)
    if n.attr("block_size", 0):
        raise LpucError("blocked quantization (block_size) is not supported")
    zp, zero = _zero_point(n, 2)
    to = zp.type.dtype if zp is not None else _dtype_of(n.attr("output_dtype")) if n.attr("output_dtype") else DType.u8
    if to not in (DType.i8, DType.u8):
        raise LpucError(f"QuantizeLinear to {to.value}: lpuc quantizes to int8 and uint8")
    scale = _per_axis(n, n.x(1), x, axis)
    y = n.b.op("graph.round", n.b.op("graph.div", x, n.b.op("graph.cast", scale, to=x.type.dtype)))
    if not zero:
        y = n.b.op("graph.add", y, n.b.op("graph.cast", _per_axis(n, zp, x, axis), to=x.type.dtype))
    return _saturate_cast(n, y, to)


@converts("DynamicQuantizeLinear")
def _dynamic_quantize_linear(n: Node):
    """ONNX's uint8 dynamic quantization of a whole tensor: scale = (max(0, max x) - min(0, min x)) / 255,
    zero point = saturate(round(-min / scale)), y = saturate(round(x / scale) + zero point)."""
    x = n.x(0)
    f = x.type.dtype
    zero, q255 = (n.b.constant(np.asarray(v, f.numpy), f) for v in (0, 255))
    axes = tuple(range(x.type.rank))
    lo = n.b.op("graph.min", n.b.op("graph.reduce_min", x, axes=axes, keepdims=False), zero)
    hi = n.b.op("graph.max", n.b.op("graph.reduce_max", x, axes=axes, keepdims=False), zero)
    scale = n.b.op("graph.div", n.b.op("graph.sub", hi, lo), q255)
    zp = n.b.op("graph.round", n.b.op("graph.sub", zero, n.b.op("graph.div", lo, scale)))
    zp = n.b.op("graph.cast", n.b.op("graph.min", n.b.op("graph.max", zp, zero), q255), to=DType.u8)
    y = n.b.op("graph.add", n.b.op("graph.round", n.b.op("graph.div", x, scale)), n.b.op("graph.cast", zp, to=f))
    y = n.b.op("graph.cast", n.b.op("graph.min", n.b.op("graph.max", y, zero), q255), to=DType.u8)
    return [y, scale, zp]


@converts("MatMulInteger")
def _matmul_integer(n: Node):
    """(A - a_zero) @ (B - b_zero) in int32: the MXM's int8 matmul of A and B, then the zero points' terms on
    the VXM (A @ B - a_zero * column sums of B - row sums of A * b_zero + K * a_zero * b_zero)."""
    a, b = n.x(0), n.x(1)
    y = n.b.op("graph.matmul", a, b, accumulate=DType.i32)
    (za, a_zero), (zb, b_zero) = _zero_point(n, 2), _zero_point(n, 3)
    i32 = DType.i32
    if not a_zero:
        col = n.b.op("graph.reduce_sum", n.b.op("graph.cast", b, to=i32), axes=(-2,), keepdims=True)
        za = n.b.op("graph.cast", za if za.type.rank == 0 else n.b.op("graph.reshape", za, shape=za.type.shape + (1,)),
                    to=i32)
        y = n.b.op("graph.sub", y, n.b.op("graph.mul", za, col))
    if not b_zero:
        zb = n.b.op("graph.cast", zb, to=i32)
        row = n.b.op("graph.reduce_sum", n.b.op("graph.cast", a, to=i32), axes=(-1,), keepdims=True)
        y = n.b.op("graph.sub", y, n.b.op("graph.mul", row, zb))
        if not a_zero:
            k = n.b.constant(np.asarray(a.type.shape[-1], np.int32), i32)
            y = n.b.op("graph.add", y, n.b.op("graph.mul", n.b.op("graph.mul", za, zb), k))
    return y


def _dequantized_matmul(n: Node, a: Value, b: Value, da: Dequantized | None, db: Dequantized | None) -> Value:
    """a @ b; of two DequantizeLinear outputs (zero zero points, a per-tensor scale on the left, per-tensor
    or per-column on the right), the int8 matmul with int32 sums, scaled after: what the QDQ pairs mean."""
    if da is None or db is None or not (da.zero and db.zero) or da.scale.type.numel != 1 or db.q.type.rank < 2:
        return n.op("graph.matmul", a, b)
    sb = db.scale
    if sb.type.numel != 1 and not (sb.type.numel == sb.type.shape[-1] == db.q.type.shape[-1]):
        return n.op("graph.matmul", a, b)  # scales along another axis than the columns
    y = n.b.op("graph.matmul", da.q, db.q, accumulate=DType.i32)
    y = n.b.op("graph.mul", n.b.op("graph.cast", y, to=da.scale.type.dtype), da.scale)
    return n.op("graph.mul", y, sb if sb.type.rank < 2 else n.b.op("graph.reshape", sb, shape=sb.type.shape[-1:]))
