"""The reference evaluator: runs a graph-level module with numpy.

An environment (value name -> array), a loop over the block, and a dispatch
table keyed by op name. Errors name the failing op. This is the executable
definition of each op's semantics: the graph ops', which later levels are
checked against, and the machine ops' (ir.machine_ops: a mirror of a graph op
shares its entry; the others are listed here).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from .core import Module, Op
from .errors import EvalError, LpucError
from .graph_ops import PLACEMENT_ATTRS
from .registry import OPS
from .types import DType, TensorType

Impl = Callable[[list[np.ndarray], dict[str, Any]], "np.ndarray | tuple[np.ndarray, ...]"]

_erf = np.frompyfunc(math.erf, 1, 1)


def erf(x: np.ndarray) -> np.ndarray:
    return _erf(x.astype(np.float64)).astype(x.dtype)


def sigmoid(x: np.ndarray) -> np.ndarray:
    e = np.exp(-np.abs(x))  # never overflows
    return np.where(x >= 0, 1 / (1 + e), e / (1 + e)).astype(x.dtype)


def gelu(x: np.ndarray, approximate: str) -> np.ndarray:
    if approximate == "tanh":
        c = np.asarray(math.sqrt(2 / math.pi), x.dtype)
        return (0.5 * x * (1 + np.tanh(c * (x + np.asarray(0.044715, x.dtype) * x ** 3)))).astype(x.dtype)
    return (0.5 * x * (1 + erf(x / np.asarray(math.sqrt(2), x.dtype)))).astype(x.dtype)


def int_div(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Integer division truncating toward zero (C, ONNX Runtime), not numpy's floor."""
    q = a // b
    return q + ((a % b != 0) & ((a < 0) != (b < 0)))


def is_floating(a: np.ndarray) -> bool:
    """Whether an array holds floats: numpy's, or ml_dtypes' float8 / float4."""
    return a.dtype.kind == "f" or a.dtype in _narrow_dtypes(True)


@functools.cache
def _narrow_dtypes(floats: bool) -> frozenset[np.dtype]:
    """The narrow float (or int) types' numpy types (ml_dtypes' module loaded only once one is asked for)."""
    return frozenset(d.numpy for d in DType if d.is_narrow and d.is_float == floats)


def _finfo(dtype: DType):
    """The range of a narrow float type (ml_dtypes')."""
    import ml_dtypes

    return ml_dtypes.finfo(dtype.numpy)


_EXACT_IN_F32 = frozenset(np.dtype(t) for t in (np.float32, np.float16, np.bool_, np.int8, np.uint8, np.int16,
                                                np.uint16))
SATURATING = frozenset({DType.f8e4m3fn, DType.f8e4m3fnuz, DType.f8e5m2, DType.f8e5m2fnuz})  # ONNX's `saturate`
ROUND_MODES = ("up", "down", "nearest")


def _standard(x: np.ndarray) -> np.ndarray:
    """The values of `x` in a numpy type of their own (narrow floats in f32, narrow ints in i8/u8): exact."""
    if x.dtype in _narrow_dtypes(True):
        return x.astype(np.float32)
    if x.dtype in _narrow_dtypes(False):
        return x.astype(np.int8 if DType.from_numpy(x.dtype).iinfo.min < 0 else np.uint8)
    return x


def f64_round_to_odd(x: np.ndarray) -> np.ndarray:
    """Values to f64: floats and bools exactly, 64-bit integers beyond 2^53 truncated and the
    last bit set (rounded to odd). Each integer is hi * 2^32 + lo, both parts exact in f64;
    Fast2Sum gives the error of their rounded sum exactly."""
    if x.dtype.kind not in "iu":
        return np.asarray(x, np.float64)
    x = x.astype(np.int64 if x.dtype.kind == "i" else np.uint64)
    hi = (x >> 32).astype(np.float64) * 2.0**32  # an arithmetic shift floors: lo >= 0, and |hi| > lo or hi = 0
    lo = (x & 0xFFFFFFFF).astype(np.float64)
    y = hi + lo
    return _truncate_to_odd(y, lo - (y - hi))


def f32_round_to_odd(x: np.ndarray) -> np.ndarray:
    """Values to f32, truncated and the last bit set when inexact (rounded to odd).

    Rounding that to a type of at most 22 significant bits (f16, bf16, float8, float4)
    rounds as if from the original value: one rounding, not two."""
    x = f64_round_to_odd(x)  # odd roundings compose: to 53 bits, then to 24, is to 24
    with np.errstate(over="ignore", invalid="ignore"):  # beyond f32: inf, then back to its largest finite value
        y = x.astype(np.float32)
        error = np.where(np.isinf(y) & np.isfinite(x), -np.sign(y), x - y.astype(np.float64))  # exact in f64
    return _truncate_to_odd(y, error)


def _truncate_to_odd(y: np.ndarray, error: np.ndarray) -> np.ndarray:
    """`y`, a value rounded to nearest whose exact value is y + error, rounded to odd instead:
    toward zero, the last significand bit set when inexact (error NaN: x was inf or NaN, exact)."""
    inexact = (error != 0) & ~np.isnan(error)
    away = inexact & (y != 0) & (np.signbit(error) != np.signbit(y))  # |y| > |exact|
    y = np.where(away, np.nextafter(y, y.dtype.type(0)), y)
    bits = np.dtype(f"u{y.dtype.itemsize}")
    return (np.asarray(y).view(bits) | inexact.astype(bits)).view(y.dtype)


def to_f8e8m0(x: np.ndarray, saturate: bool, round_mode: str) -> np.ndarray:
    """ONNX Cast to FLOAT8E8M0 (a power of two, 2^-127..2^127, or NaN), per the spec's table:
    `round_mode` up / down / nearest (ties up) picks a neighbouring power of two; when that is out
    of range (zero and infinity are) it saturates to the smallest / largest one, else is NaN.
    The sign is ignored (the spec leaves negative inputs undefined)."""
    a = np.abs(f64_round_to_odd(np.asarray(x)))  # comparisons with powers of two (times 1.5) stay exact
    m, e = np.frexp(a)  # a = m * 2**e with 0.5 <= m < 1 (finite, nonzero a)
    k = e.astype(np.int64) - 1  # 2**k <= a < 2**(k+1)
    if round_mode == "up":
        k += m > 0.5
    elif round_mode == "nearest":
        k += m >= 0.75
    elif round_mode != "down":
        raise EvalError(f"round_mode {round_mode!r} is not one of {', '.join(ROUND_MODES)}")
    biased = k + 127
    low, high = (a == 0) | (biased < 0), np.isinf(a) | (biased > 254)  # rounded out of range, as for float8
    out = np.where(low, 0, np.where(high, 254, biased)) if saturate else np.where(low | high, 255, biased)
    out = np.where(np.isnan(a), 255, out)
    return out.astype(np.uint8).view(DType.f8e8m0.numpy)


def cast(x: np.ndarray, to: DType, saturate: bool = True, round_mode: str = "up") -> np.ndarray:
    """ONNX Cast, every case decided here rather than by numpy or ml_dtypes (whose out-of-range
    conversions are undefined, or differ between versions).

    - To bool: zero is False, anything else (NaN too) True.
    - To an integer type: the value modulo 2^bits, two's complement for signed types: integers
      wrap (ONNX: "discard higher bits"). Floats first become integers, toward zero (as C, numpy
      and ONNX Runtime do) or, for the 4- and 2-bit types, to nearest even (ONNX's int4 / int2
      notes), then wrap likewise (ONNX leaves floats out of range undefined; ONNX Runtime wraps
      too). NaN and infinities become 0.
    - To a float type: round to nearest even, once (wide sources go through f32 rounded to
      odd). To the float8 types with `saturate`, out-of-range values and infinities become the
      largest finite value (+-), else what the type does: NaN (e4m3fn, the fnuz types) or
      infinity (e5m2). float4 has no NaN or infinity: beyond +-6 is +-6, NaN is 6 (ONNX's
      float4 note). f8e8m0: `round_mode` and `saturate` as in to_f8e8m0."""
    x = _standard(np.asarray(x))
    if to is DType.bool:
        return x != 0
    if to.is_int:
        return _wrap(_float_to_u64(x, nearest=to.is_narrow) if x.dtype.kind == "f" else x.astype(np.uint64), to)
    if to is DType.f8e8m0:
        return to_f8e8m0(x, saturate, round_mode)
    if to.is_narrow or to in (DType.bf16, DType.f16):
        x = x.astype(np.float32) if x.dtype in _EXACT_IN_F32 else f32_round_to_odd(x)
        if to is DType.f4e2m1:
            x = np.where(np.isnan(x), np.float32(6), np.clip(x, np.float32(-6), np.float32(6)))
        elif saturate and to in SATURATING:
            big = np.float32(_finfo(to).max)
            x = np.clip(x, -big, big)
    with np.errstate(over="ignore"):  # beyond the type's range: infinity (ONNX: "+/- infinity if OOR")
        return x.astype(to.numpy)


def _float_to_u64(x: np.ndarray, nearest: bool) -> np.ndarray:
    """Float values to integers (to nearest even, or toward zero), modulo 2^64 as uint64; NaN
    and infinities 0. Exact: fmod is, and so is the split into 32-bit halves of a value below 2^64."""
    t = np.asarray(x, np.float64)
    t = np.rint(t) if nearest else np.trunc(t)
    t = np.fmod(np.where(np.isfinite(t), t, 0.0), 2.0**64)  # |t| < 2^64, an integer
    hi = np.floor(t / 2.0**32)  # -2^32 <= hi < 2^32
    lo = t - hi * 2.0**32  # 0 <= lo < 2^32
    return (hi.astype(np.int64).astype(np.uint64) << np.uint64(32)) | lo.astype(np.uint64)


def _wrap(u: np.ndarray, to: DType) -> np.ndarray:
    """uint64 values (integers modulo 2^64) to the integer type `to`: its low bits, two's complement."""
    info = to.iinfo
    if not to.is_narrow:  # numpy narrows unsigned integers by their low bits; view reinterprets them
        return np.asarray(u).astype(np.dtype(f"u{to.itemsize}")).view(to.numpy)
    low = (u & np.uint64(2**info.bits - 1)).astype(np.int16)
    return np.where(low > info.max, low - 2**info.bits, low).astype(to.numpy)


def round_bf16(x: np.ndarray) -> np.ndarray:
    """Round f32 values to the nearest bf16 (ties to even), kept in f32."""
    bits = np.ascontiguousarray(x, np.float32).view(np.uint32)
    rounded = (bits + 0x7FFF + ((bits >> 16) & 1)) & 0xFFFF0000
    rounded = np.where(np.isnan(x), bits | 0x00400000, rounded).astype(np.uint32)
    return rounded.view(np.float32).reshape(x.shape)


def matmul(a: np.ndarray, b: np.ndarray, accumulate: DType | None = None, acc: np.ndarray | None = None
           ) -> np.ndarray:
    """graph.matmul and mxm.matmul (a [..., M, K] @ b [..., K, N], plus the partial sum `acc` when given).

    - accumulate None: numpy's matmul in the operands' type (the fp32 reference path).
    - accumulate i32 (the MXM's integer path; 8-bit operands): exact products and sums, modulo 2^32 as
      int32 sums wrap. Exact, so a sum cut into k-tiles, or over chips, is the same sum.
    - accumulate f32 (the MXM's float path; fp16 / fp8 operands): each product is exact in f32 (at most
      2 x 11 significant bits), and the products are added in k order to an f32 sum, each addition
      rounded to nearest even: the sum starts at `acc` (or zero), so a sum cut into k-tiles chained
      through `acc` is the same sum, bit for bit."""
    if accumulate is None:
        y = np.matmul(a, b)
        return y if acc is None else y + acc
    a2, b2 = (a[None, :] if a.ndim == 1 else a), (b[:, None] if b.ndim == 1 else b)
    if accumulate is DType.i32:
        y = np.matmul(a2.astype(np.int64), b2.astype(np.int64))  # exact: |sum| < 2^16 * K
        y = cast(y if acc is None else y + acc.astype(np.int64), DType.i32)
    elif accumulate is DType.f32:
        x, w = a2.astype(np.float32), b2.astype(np.float32)
        shape = np.broadcast_shapes(x.shape[:-2], w.shape[:-2]) + (x.shape[-2], w.shape[-1])
        y = np.zeros(shape, np.float32) if acc is None else np.array(np.broadcast_to(acc, shape), np.float32)
        for k in range(x.shape[-1]):
            y += x[..., :, k:k + 1] * w[..., k:k + 1, :]
    else:
        raise EvalError(f"matmul accumulates in i32 or f32, not {accumulate}")
    if a.ndim == 1:
        y = y[..., 0, :]
    return y[..., 0] if b.ndim == 1 else y


def quantize_symmetric(w: np.ndarray, to: DType, axis: int = -2) -> tuple[np.ndarray, np.ndarray]:
    """Weights -> (q of type `to`, f32 scales of w's shape but 1 along `axis`): symmetric, per output channel
    (the scale of each channel is taken over the contraction axis `axis`: K of a [..., K, N] weight), w ~ q *
    scale. int8: q = round(w / scale) (ties to even) in -127..127, scale = max|w| / 127; a float8 type:
    q = w / scale rounded to it, scale = max|w| / its largest finite value. A channel of zeros has scale 1."""
    w = np.asarray(w, np.float32)
    top = 127.0 if to is DType.i8 else float(_finfo(to).max)
    amax = np.max(np.abs(w), axis=axis, keepdims=True, initial=0.0)
    scale = np.where(amax > 0, amax / np.float32(top), np.float32(1)).astype(np.float32)
    with np.errstate(all="ignore"):
        scaled = w / scale
    if to is DType.i8:
        return np.clip(np.rint(scaled), -127, 127).astype(np.int8), scale
    return cast(scaled, to), scale


def softmax(x, axis):
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def layer_norm(args, axis, epsilon):
    x, scale, bias = (args + [None])[:3]
    axes = tuple(range(axis % x.ndim, x.ndim))
    mean = x.mean(axis=axes, keepdims=True)
    d = x - mean
    y = d / np.sqrt((d * d).mean(axis=axes, keepdims=True) + np.asarray(epsilon, x.dtype)) * scale
    return y if bias is None else y + bias


def rms_norm(x, scale, axis, epsilon):
    axes = tuple(range(axis % x.ndim, x.ndim))
    return x / np.sqrt((x * x).mean(axis=axes, keepdims=True) + np.asarray(epsilon, x.dtype)) * scale


def split(x, axis, sizes):
    return tuple(np.split(x, np.cumsum(sizes)[:-1], axis=axis))


def slice_(x, starts, ends, axes, steps):
    index = [slice(None)] * x.ndim
    for s, e, a, st in zip(starts, ends, axes, steps):
        index[a] = slice(s, e, st)
    return x[tuple(index)]


def gather_elements(data, indices, axis):
    """ONNX GatherElements: indices may be smaller than data outside `axis`."""
    axis %= data.ndim
    data = data[tuple(slice(None) if d == axis else slice(0, n) for d, n in enumerate(indices.shape))]
    return np.take_along_axis(data, indices, axis=axis)


def gather_nd(data, indices, batch_dims):
    b = batch_dims
    batch = data.shape[:b]
    data_b = data.reshape((-1,) + data.shape[b:])
    idx_b = indices.reshape((-1,) + indices.shape[b:])
    out = []
    for d, i in zip(data_b, idx_b):
        flat = i.reshape(-1, i.shape[-1])
        out.append(np.stack([d[tuple(row)] for row in flat]).reshape(i.shape[:-1] + d.shape[i.shape[-1]:]))
    return np.stack(out).reshape(batch + indices.shape[b:-1] + data.shape[b + indices.shape[-1]:])


def topk(x, k, axis, largest, sorted):
    """ONNX TopK: ties keep the lower index first."""
    if largest:  # a stable ascending sort of the reversed axis, read backwards
        order = x.shape[axis] - 1 - np.flip(np.argsort(np.flip(x, axis), axis=axis, kind="stable"), axis)
    else:
        order = np.argsort(x, axis=axis, kind="stable")
    idx = np.take(order, np.arange(k), axis=axis)
    return np.take_along_axis(x, idx, axis=axis), idx.astype(np.int64)


def cumsum(x, axis, exclusive, reverse):
    if reverse:
        x = np.flip(x, axis)
    if exclusive and x.shape[axis]:  # sums of the elements before: shift, do not subtract (inf - inf, rounding)
        head = np.zeros_like(np.take(x, [0], axis=axis))
        x = np.concatenate([head, np.take(x, np.arange(x.shape[axis] - 1), axis=axis)], axis=axis)
    y = np.cumsum(x, axis=axis, dtype=x.dtype)
    return np.flip(y, axis) if reverse else y


def _binary(fn):
    return lambda a, attrs: fn(a[0], a[1])


def _unary(fn):
    return lambda a, attrs: fn(a[0])


EVAL: dict[str, Impl] = {
    "graph.add": _binary(np.add),
    "graph.sub": _binary(np.subtract),
    "graph.mul": _binary(np.multiply),
    "graph.div": lambda a, attrs: np.divide(*a) if is_floating(a[0]) else int_div(*a),
    "graph.pow": _binary(np.power),
    "graph.max": _binary(np.maximum),
    "graph.min": _binary(np.minimum),
    "graph.mod": lambda a, attrs: np.fmod(*a) if is_floating(a[0]) else np.mod(*a),
    "graph.equal": _binary(np.equal),
    "graph.less": _binary(np.less),
    "graph.less_equal": _binary(np.less_equal),
    "graph.greater": _binary(np.greater),
    "graph.greater_equal": _binary(np.greater_equal),
    "graph.and": _binary(np.logical_and),
    "graph.or": _binary(np.logical_or),
    "graph.xor": _binary(np.logical_xor),
    "graph.not": _unary(np.logical_not),
    "graph.exp": _unary(np.exp),
    "graph.log": _unary(np.log),
    "graph.sqrt": _unary(np.sqrt),
    "graph.reciprocal": _unary(np.reciprocal),
    "graph.tanh": _unary(np.tanh),
    "graph.sigmoid": _unary(sigmoid),
    "graph.erf": _unary(erf),
    "graph.cos": _unary(np.cos),
    "graph.sin": _unary(np.sin),
    "graph.neg": _unary(np.negative),
    "graph.abs": _unary(np.abs),
    "graph.relu": _unary(lambda x: np.maximum(x, np.zeros((), x.dtype))),
    "graph.isnan": _unary(np.isnan),
    "graph.round": _unary(np.rint),
    "graph.gelu": lambda a, attrs: gelu(a[0], attrs["approximate"]),
    "graph.where": lambda a, attrs: np.where(*a),
    "graph.cast": lambda a, attrs: cast(a[0], attrs["to"], attrs["saturate"], attrs["round_mode"]),
    "graph.constant": lambda a, attrs: attrs["value"].array,
    "graph.matmul": lambda a, attrs: matmul(*a, attrs.get("accumulate")),
    "graph.reduce_sum": lambda a, attrs: np.sum(a[0], axis=attrs["axes"], keepdims=attrs["keepdims"]),
    "graph.reduce_mean": lambda a, attrs: np.mean(a[0], axis=attrs["axes"], keepdims=attrs["keepdims"]),
    "graph.reduce_max": lambda a, attrs: np.max(a[0], axis=attrs["axes"], keepdims=attrs["keepdims"]),
    "graph.reduce_min": lambda a, attrs: np.min(a[0], axis=attrs["axes"], keepdims=attrs["keepdims"]),
    "graph.softmax": lambda a, attrs: softmax(a[0], attrs["axis"]),
    "graph.layer_norm": lambda a, attrs: layer_norm(a, attrs["axis"], attrs["epsilon"]),
    "graph.rms_norm": lambda a, attrs: rms_norm(*a, attrs["axis"], attrs["epsilon"]),
    "graph.cumsum": lambda a, attrs: cumsum(a[0], **attrs),
    "graph.topk": lambda a, attrs: topk(a[0], **attrs),
    "graph.trilu": lambda a, attrs: (np.triu if attrs["upper"] else np.tril)(a[0], attrs["k"]),
    "graph.reshape": lambda a, attrs: a[0].reshape(attrs["shape"]),
    "graph.transpose": lambda a, attrs: np.transpose(a[0], attrs["perm"]),
    "graph.expand": lambda a, attrs: np.broadcast_to(a[0], attrs["shape"]),
    "graph.tile": lambda a, attrs: np.tile(a[0], attrs["repeats"]),
    "graph.concat": lambda a, attrs: np.concatenate(a, axis=attrs["axis"]),
    "graph.split": lambda a, attrs: split(a[0], **attrs),
    "graph.slice": lambda a, attrs: slice_(a[0], **attrs),
    "graph.gather": lambda a, attrs: np.take(a[0], a[1], axis=attrs["axis"]),
    "graph.gather_elements": lambda a, attrs: gather_elements(*a, attrs["axis"]),
    "graph.gather_nd": lambda a, attrs: gather_nd(*a, attrs["batch_dims"]),
    # a state as a fresh generation finds it (a run keeps it across steps: backends.state)
    "graph.state": lambda a, attrs: np.zeros(attrs["shape"], attrs["dtype"].numpy),
    "graph.state_write": lambda a, attrs: state_write(*a),
}


def state_write(state: np.ndarray, new: np.ndarray, position: np.ndarray) -> np.ndarray:
    """`state` with rows [p, p + n) of its second-to-last axis replaced by `new` (p = position.flat[0])."""
    p, n, slots = int(np.asarray(position).flat[0]), new.shape[-2], state.shape[-2]
    if not 0 <= p <= slots - n:
        raise EvalError(f"position {p} puts {n} row(s) outside the state's {slots} slots")
    out = np.array(state, copy=True)
    out[..., p:p + n, :] = new
    return out


def _same(a, attrs):
    return a[0]


def _window(a, attrs):
    """An install's tile: rows [k0, k0+ks) x columns [n0, n0+ns) of w's last two axes (all of w without a window)."""
    if attrs.get("start") is None:
        return a[0]
    (k0, n0), (ks, ns) = attrs["start"], attrs["size"]
    return a[0][..., k0:k0 + ks, n0:n0 + ns]


# The machine ops mirroring no graph op. Moves keep the value: an install puts it (its window) on a plane, host I/O and
# transfers copy it (the interpreter passes a transfer's raw words through unchanged).
EVAL.update({
    "mem.constant": EVAL["graph.constant"],
    "mem.state": EVAL["graph.state"],
    "mem.state_write": EVAL["graph.state_write"],
    "mem.reshape_view": EVAL["graph.reshape"],
    "mem.transpose_view": EVAL["graph.transpose"],
    "mem.join": lambda a, attrs: np.concatenate(a, axis=-1),
    "mem.row_join": lambda a, attrs: np.concatenate(a, axis=0),
    "mem.column_slice": lambda a, attrs: a[0][..., attrs["start"]:attrs["start"] + attrs["size"]],
    "mem.row_slice": lambda a, attrs: a[0][..., attrs["start"]:attrs["start"] + attrs["size"], :],
    "mxm.install": _window,
    "mxm.matmul": lambda a, attrs: matmul(a[0], a[1], attrs.get("accumulate"), a[2] if len(a) == 3 else None),
    "host.input": _same,
    "host.output": _same,
    "c2c.send": _same,
    "c2c.recv": _same,
})


def check_inputs(module: Module, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Match user inputs to the module's inputs by name, shape and dtype."""
    names = [v.name for v in module.inputs]
    missing = [n for n in names if n not in inputs]
    if missing:
        raise EvalError(f"missing input(s): {', '.join(missing)} (the model takes {', '.join(names)})")
    extra = sorted(set(inputs) - set(names))
    if extra:
        raise EvalError(f"unknown input(s): {', '.join(extra)} (the model takes {', '.join(names)})")
    env = {}
    for v in module.inputs:
        a = np.asarray(inputs[v.name])
        if tuple(a.shape) != v.type.shape:
            raise EvalError(f"input {v.name}: shape {list(a.shape)}, expected {list(v.type.shape)}")
        if a.dtype != v.type.dtype.numpy:
            raise EvalError(f"input {v.name}: dtype {a.dtype}, expected {v.type.dtype.numpy} ({v.type})")
        env[v.name] = round_bf16(a) if v.type.dtype is DType.bf16 else a  # as results are
    return env


def conform(op: Op, value, ttype: TensorType) -> np.ndarray:
    """An op's raw numpy result checked against, and cast to, its result type."""
    a = np.asarray(value)
    if tuple(a.shape) != ttype.shape:
        raise EvalError(f"{op.label()}: produced shape {list(a.shape)}, expected {ttype}")
    a = a.astype(ttype.dtype.numpy, copy=False)
    return round_bf16(a) if ttype.dtype is DType.bf16 else a


def evaluate(module: Module, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Run `module` on `inputs` (name -> array); return its outputs by name."""
    env = check_inputs(module, inputs)
    for op in module.ops:
        impl = EVAL.get(op.name)
        if impl is None:
            raise EvalError(f"{op.label()}: the reference evaluator has no rule for {op.name}")
        attrs = {k: v for k, v in OPS[op.name].attrs_with_defaults(op.attrs).items() if k not in PLACEMENT_ATTRS}
        try:
            with np.errstate(all="ignore"):
                out = impl([env[v.name] for v in op.operands], attrs)
        except LpucError as e:  # e.g. a constant whose data is missing, or whose weights file is unreadable
            raise EvalError(f"{op.label()}: {e}") from None
        except Exception as e:  # numpy's own complaint, e.g. an index out of range
            raise EvalError(f"{op.label()}: {type(e).__name__}: {e}") from e
        outs = out if isinstance(out, tuple) else (out,)
        for r, value in zip(op.results, outs, strict=True):
            env[r.name] = conform(op, value, r.type)
    return {name: env[v.name] for name, v in module.outputs}
