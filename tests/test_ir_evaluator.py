"""The reference evaluator against hand-written numpy, op by op.

`CASES` has an entry for every graph op of the registry (a test fails when an op
is added without one). Each case runs one op in a module built with the Builder
(so the verifier's types are the ones evaluated) and compares with a reference
written here, independently of ir/evaluator.py where numpy allows: loops for
index ops, float64 formulas for float ops, ONNX's rules (integer division
truncates, TopK keeps the lower index first on ties, negative indices count from
the end, exclusive/reverse CumSum, bf16 rounds to nearest even). Shapes are odd,
and some are wider than a 320-lane vector without being a multiple of it.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pytest

from lpuc.ir import OPS, DType, EvalError, Module, Tensor, TensorType
from lpuc.ir.builder import Builder
from lpuc.ir.evaluator import EVAL, evaluate
from lpuc.ir.verifier import verify

RNG = np.random.default_rng(20240601)
WIDE = 333  # > 320 lanes, not a multiple of 320


def f32(*shape, scale=1.0):
    return (RNG.standard_normal(shape) * scale).astype(np.float32)


def ints(*shape, lo=-9, hi=9, dtype=np.int32):
    return RNG.integers(lo, hi, shape, endpoint=True).astype(dtype)


def bools(*shape):
    return RNG.integers(0, 2, shape).astype(bool)


def positive(*shape):
    return (RNG.random(shape) * 4 + 0.05).astype(np.float32)


@dataclass
class Case:
    operands: list
    attrs: dict
    expected: Callable  # operands -> array, or tuple of arrays (one per result)
    tol: float = 1e-6  # relative and absolute tolerance for float results
    dtypes: tuple = ()  # operand dtypes where numpy's own would be wrong (bf16)
    label: str = ""


def c(operands, expected, tol=1e-6, dtypes=(), label="", **attrs):
    return Case(list(operands), attrs, expected, tol, dtypes, label)


def f64(fn):
    """A reference computed in float64 from the operands."""
    return lambda *a: fn(*(np.asarray(x, np.float64) for x in a))


# --- references that need more than one numpy call -------------------------------------

def bf16_round(x: np.ndarray) -> np.ndarray:
    """Nearest bf16 of each f32, ties to the even mantissa, as float32 (by comparing
    the two bf16 neighbours, not by bit tricks). Past the largest bf16 the next
    neighbour is 2**128, as if the exponent went on: nearer to it means inf."""
    out = []
    for v in np.asarray(x, np.float32).reshape(-1):
        if math.isnan(v) or math.isinf(v):
            out.append(v)
            continue
        bits = int(np.float32(v).view(np.uint32))
        lo = bits & 0xFFFF0000
        hi = lo + 0x10000

        def value(b):
            if b & 0x7FFFFFFF == 0x7F800000:
                return math.copysign(2.0 ** 128, v)
            return float(np.uint32(b).view(np.float32))

        lo_v, hi_v = value(lo), value(hi)
        d_lo, d_hi = abs(float(v) - lo_v), abs(hi_v - float(v))
        pick = lo if d_lo < d_hi else hi if d_hi < d_lo else (lo if (lo >> 16) % 2 == 0 else hi)
        out.append(np.uint32(pick).view(np.float32))
    return np.array(out, np.float32).reshape(np.shape(x))


def trunc_div(a, b):
    return np.array([int(x / y) if abs(x) < 2**52 else x // y for x, y in np.broadcast(a, b)],
                    a.dtype).reshape(np.broadcast_shapes(a.shape, b.shape))


def py_mod(a, b):
    """ONNX Mod on integers (fmod=0): the sign of the divisor, as Python's %."""
    return np.array([int(x) % int(y) for x, y in np.broadcast(a, b)], a.dtype).reshape(
        np.broadcast_shapes(a.shape, b.shape))


def c_fmod(a, b):
    """ONNX Mod on floats (fmod=1): the sign of the dividend."""
    return np.array([math.fmod(x, y) for x, y in np.broadcast(a, b)], a.dtype).reshape(
        np.broadcast_shapes(a.shape, b.shape))


def softmax_ref(x, axis):
    x = np.asarray(x, np.float64)
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def norm_ref(x, scale, bias=None, axis=-1, epsilon=1e-5, rms=False):
    x = np.asarray(x, np.float64)
    axes = tuple(range(axis % x.ndim, x.ndim))
    if rms:
        y = x / np.sqrt((x ** 2).mean(axis=axes, keepdims=True) + epsilon)
    else:
        y = (x - x.mean(axis=axes, keepdims=True)) / np.sqrt(x.var(axis=axes, keepdims=True) + epsilon)
    y = y * scale
    return y if bias is None else y + bias


def cumsum_ref(x, axis, exclusive=False, reverse=False):
    x = np.moveaxis(np.asarray(x), axis, -1)
    out = np.zeros_like(x)
    n = x.shape[-1]
    for idx in itertools.product(*map(range, x.shape[:-1])):
        for i in range(n):
            js = range(i + 1, n) if reverse and exclusive else range(i, n) if reverse else \
                range(0, i) if exclusive else range(0, i + 1)
            out[idx + (i,)] = sum((x[idx + (j,)] for j in js), x.dtype.type(0))
    return np.moveaxis(out, -1, axis)


def topk_ref(x, k, axis=-1, largest=True):
    """ONNX TopK: ties keep the lower index first."""
    x = np.moveaxis(np.asarray(x), axis, -1)
    vals = np.zeros(x.shape[:-1] + (k,), x.dtype)
    idx = np.zeros(x.shape[:-1] + (k,), np.int64)
    for pos in itertools.product(*map(range, x.shape[:-1])):
        row = x[pos]
        order = sorted(range(len(row)), key=lambda i: (-float(row[i]) if largest else float(row[i]), i))
        idx[pos] = order[:k]
        vals[pos] = row[order[:k]]
    return np.moveaxis(vals, -1, axis), np.moveaxis(idx, -1, axis)


def trilu_ref(x, upper=True, k=0):
    out = np.array(x)
    rows, cols = x.shape[-2:]
    for i, j in itertools.product(range(rows), range(cols)):
        keep = (j - i >= k) if upper else (j - i <= k)
        if not keep:
            out[..., i, j] = 0
    return out


def gather_ref(data, idx, axis=0):
    axis %= data.ndim
    n = data.shape[axis]
    flat = [int(i) + n if i < 0 else int(i) for i in np.asarray(idx).reshape(-1)]
    picked = [np.take(data, i, axis=axis) for i in flat]
    stacked = np.stack(picked, axis=axis) if picked else np.zeros(
        data.shape[:axis] + (0,) + data.shape[axis + 1:], data.dtype)
    return stacked.reshape(data.shape[:axis] + np.shape(idx) + data.shape[axis + 1:])


def gather_elements_ref(data, idx, axis=0):
    axis %= data.ndim
    out = np.zeros(idx.shape, data.dtype)
    for pos in itertools.product(*map(range, idx.shape)):
        i = int(idx[pos])
        src = list(pos)
        src[axis] = i + data.shape[axis] if i < 0 else i
        out[pos] = data[tuple(src)]
    return out


def gather_nd_ref(data, idx, batch_dims=0):
    b = batch_dims
    depth = idx.shape[-1]
    out = np.zeros(idx.shape[:-1] + data.shape[b + depth:], data.dtype)
    for pos in itertools.product(*map(range, idx.shape[:-1])):
        where = [int(v) + data.shape[b + n] if v < 0 else int(v) for n, v in enumerate(idx[pos])]
        out[pos] = data[tuple(pos[:b]) + tuple(where)]
    return out


def slice_ref(x, starts, ends, axes, steps):
    for s, e, a, st in zip(starts, ends, axes, steps):
        x = np.moveaxis(np.moveaxis(x, a, 0)[s:e:st], 0, a)
    return x


def matmul_ref(a, b):
    a64, b64 = np.asarray(a, np.float64), np.asarray(b, np.float64)
    out = np.einsum("...ij,...jk->...ik", a64 if a.ndim > 1 else a64[None], b64 if b.ndim > 1 else b64[:, None])
    if a.ndim == 1:
        out = out[..., 0, :]
    if b.ndim == 1:
        out = out[..., 0]
    return out


def state_write_ref(state, new, position):
    out = state.copy()
    p = int(position.flat[0])
    out[..., p:p + new.shape[-2], :] = new
    return out


def to_f16(x):
    with np.errstate(over="ignore"):
        return np.asarray(x).astype(np.float16)


def gelu_ref(x, approximate="none"):
    x = np.asarray(x, np.float64)
    if approximate == "tanh":
        return 0.5 * x * (1 + np.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x ** 3)))
    return 0.5 * x * (1 + np.vectorize(math.erf)(x / math.sqrt(2)))


# --- the table: op name -> cases ----------------------------------------------------------

X35, Y35 = f32(3, 5), f32(3, 5)
XW = f32(2, WIDE)
TIES = np.array([[3, 1, 3, 2, 3, 1, 0], [5, 5, 5, 5, 5, 5, 5]], np.float32)
HALFWAY = np.array([1 + 2**-8, 1 + 3 * 2**-8, 1 + 2**-8 + 2**-20, -(1 + 2**-8), 3.4e38, 1e-40, np.nan, -np.inf,
                    0.1, 65504.0, -2.5], np.float32)  # ties to even, just above a tie, overflow, subnormal ...

CASES: dict[str, list[Case]] = {
    "graph.add": [c([X35, f32(5)], lambda a, b: a + b), c([XW, f32(1, WIDE)], lambda a, b: a + b),
                  c([ints(2, 3, dtype=np.int8), ints(3, dtype=np.int8)], lambda a, b: (a + b).astype(np.int8))],
    "graph.sub": [c([f32(2, 1, 7), f32(3, 1)], lambda a, b: a - b), c([ints(4), ints(4)], lambda a, b: a - b)],
    "graph.mul": [c([X35, f32()], lambda a, b: a * b), c([ints(3, 2, dtype=np.int64), ints(2, dtype=np.int64)],
                                                         lambda a, b: a * b)],
    "graph.div": [c([X35, positive(3, 5)], lambda a, b: a / b),
                  c([np.array([-7, 7, -7, 7, -6, 6, 0, -1, 9], np.int32), np.array([2, -2, -2, 2, 3, -3, 5, 4, -10],
                                                                                    np.int32)],
                    trunc_div, label="integer division truncates toward zero"),
                  c([ints(3, 4, lo=-100, hi=100, dtype=np.int64), ints(4, lo=1, hi=7, dtype=np.int64)], trunc_div),
                  c([np.array([200, 7, 255], np.uint8), np.array([3, 2, 16], np.uint8)], trunc_div)],
    "graph.pow": [c([positive(3, 5), f32(5)], f64(np.power), tol=1e-5),
                  c([ints(2, 3, lo=-3, hi=3), ints(3, lo=0, hi=4)], lambda a, b: a ** b)],
    "graph.max": [c([X35, Y35], np.maximum), c([ints(3, 1), ints(4)], np.maximum)],
    "graph.min": [c([X35, Y35], np.minimum), c([ints(3, 1, dtype=np.uint16, lo=0), ints(4, dtype=np.uint16, lo=0)],
                                               np.minimum)],
    "graph.mod": [c([np.array([-7, 7, -7, 7, 0], np.int32), np.array([3, -3, -3, 3, 2], np.int32)], py_mod,
                    label="integer Mod takes the divisor's sign"),
                  c([np.array([-7.5, 7.5, -7.5, 7.5], np.float32), np.array([2, -2, -2, 2], np.float32)], c_fmod,
                    label="float Mod takes the dividend's sign")],
    "graph.equal": [c([ints(3, 5), ints(5)], np.equal), c([X35, X35[:1]], np.equal)],
    "graph.less": [c([X35, Y35], np.less)],
    "graph.less_equal": [c([ints(2, 7), ints(7)], np.less_equal)],
    "graph.greater": [c([X35, f32(3, 1)], np.greater)],
    "graph.greater_equal": [c([ints(6), ints(6)], np.greater_equal)],
    "graph.and": [c([bools(3, 5), bools(5)], np.logical_and)],
    "graph.or": [c([bools(3, 5), bools(3, 1)], np.logical_or)],
    "graph.xor": [c([bools(2, 3, 4), bools(4)], np.logical_xor)],
    "graph.not": [c([bools(3, 5)], np.logical_not)],
    "graph.exp": [c([X35], f64(np.exp), tol=1e-6), c([XW], f64(np.exp), dtypes=(DType.bf16,), tol=1e-2)],
    "graph.log": [c([positive(3, 5)], f64(np.log), tol=1e-6)],
    "graph.sqrt": [c([positive(2, WIDE)], f64(np.sqrt))],
    "graph.reciprocal": [c([positive(3, 5)], f64(lambda x: 1 / x))],
    "graph.tanh": [c([X35], f64(np.tanh))],
    "graph.sigmoid": [c([f32(3, 5, scale=30)], f64(lambda x: 1 / (1 + np.exp(-x))), label="large |x| stays finite")],
    "graph.erf": [c([X35], f64(np.vectorize(math.erf)))],
    "graph.cos": [c([X35], f64(np.cos))],
    "graph.sin": [c([X35], f64(np.sin))],
    "graph.neg": [c([X35], np.negative), c([ints(7, dtype=np.int16)], np.negative)],
    "graph.abs": [c([X35], np.abs), c([ints(7, dtype=np.int64)], np.abs)],
    "graph.relu": [c([X35], lambda x: np.where(x > 0, x, 0).astype(np.float32)),
                   c([ints(9)], lambda x: np.where(x > 0, x, 0).astype(np.int32))],
    "graph.round": [c([np.array([0.5, 1.5, 2.5, -0.5, -1.5, 2.4, -2.6, 1e9], np.float32)],
                      lambda x: np.array([0, 2, 2, -0.0, -2, 2, -3, 1e9], np.float32), label="ties to even")],
    "graph.isnan": [c([np.array([[0.0, np.nan, np.inf], [-np.nan, 1.0, -np.inf]], np.float32)], np.isnan)],
    "graph.gelu": [c([X35], gelu_ref, tol=1e-6), c([X35], lambda x: gelu_ref(x, "tanh"), approximate="tanh"),
                   c([XW], gelu_ref, approximate="none")],
    "graph.where": [c([bools(3, 1), X35, f32(5)], np.where), c([bools(4), ints(2, 4), ints(1)], np.where)],
    "graph.cast": [c([HALFWAY], bf16_round, to=DType.bf16, label="bf16 rounds to nearest even"),
                   c([np.array([-2.7, -0.5, 0.5, 2.7, 100.9], np.float32)], lambda x: np.trunc(x).astype(np.int32),
                     to=DType.i32, label="float to int truncates"),
                   c([np.array([0.0, -0.0, 2.0, np.nan], np.float32)], lambda x: x != 0, to=DType.bool),
                   c([bools(5)], lambda x: x.astype(np.float16), to=DType.f16),
                   c([ints(5, lo=-300, hi=300)], lambda x: x.astype(np.int8), to=DType.i8, label="int narrowing wraps"),
                   c([HALFWAY], lambda x: to_f16(bf16_round(x)), dtypes=(DType.bf16,), to=DType.f16,
                     label="bf16 inputs are bf16 values")],
    "graph.constant": [c([], lambda: np.arange(15, dtype=np.int16).reshape(3, 5),
                         value=Tensor.from_array(np.arange(15, dtype=np.int16).reshape(3, 5))),
                       c([], lambda: np.float32(2.5), value=Tensor.from_array(np.float32(2.5))),
                       c([], lambda: bf16_round(HALFWAY), value=Tensor.from_array(HALFWAY, DType.bf16),
                         label="bf16 constants hold bf16 values"),
                       c([], lambda: XW, value=Tensor.from_array(XW))],
    "graph.matmul": [c([f32(5, WIDE), f32(WIDE, 7)], matmul_ref, tol=1e-5),
                     c([f32(2, 1, 3, 4), f32(3, 4, 5)], matmul_ref, tol=1e-5),
                     c([f32(4), f32(2, 4, 3)], matmul_ref, tol=1e-5), c([f32(3, 4), f32(4)], matmul_ref, tol=1e-5),
                     c([ints(3, 4), ints(4, 2)], lambda a, b: a @ b),
                     # the MXM's paths: int8 x int8 summed exactly in int32, fp16 x fp16 summed in f32
                     c([RNG.integers(-127, 128, (5, WIDE), dtype=np.int8), RNG.integers(-128, 128, (WIDE, 7)).astype(np.uint8)],
                       lambda a, b: (a.astype(np.int64) @ b.astype(np.int64)).astype(np.int32), accumulate=DType.i32,
                       label="int8"),
                     c([f32(5, WIDE).astype(np.float16), f32(WIDE, 7).astype(np.float16)], f64(lambda a, b: a @ b),
                       tol=1e-5, accumulate=DType.f32, label="fp16")],
    "graph.reduce_sum": [c([f32(3, 5, 7)], f64(lambda x: x.sum(axis=(0, 2), keepdims=True)), tol=1e-5, axes=(0, -1)),
                         c([ints(3, WIDE)], lambda x: x.sum(axis=1), axes=(1,), keepdims=False),
                         c([X35], lambda x: x, axes=())],
    "graph.reduce_mean": [c([f32(3, 5, 7)], f64(lambda x: x.mean(axis=1)), tol=1e-6, axes=(1,), keepdims=False),
                          c([XW], f64(lambda x: x.mean(axis=-1, keepdims=True)), axes=(-1,))],
    "graph.reduce_max": [c([f32(3, 5, 7)], lambda x: x.max(axis=(0, 1)), axes=(1, 0), keepdims=False)],
    "graph.reduce_min": [c([ints(4, 3, dtype=np.int8)], lambda x: x.min(axis=0, keepdims=True), axes=(0,))],
    "graph.softmax": [c([f32(3, WIDE, scale=5)], lambda x: softmax_ref(x, -1)),
                      c([f32(2, 3, 5)], lambda x: softmax_ref(x, 1), axis=1),
                      c([np.array([[1000.0, 0.0, -1000.0]], np.float32)], lambda x: softmax_ref(x, -1),
                        label="no overflow")],
    "graph.layer_norm": [c([f32(2, 3, WIDE), f32(WIDE), f32(WIDE)], norm_ref, tol=1e-5),
                         c([f32(2, 3, 5), f32(3, 5)], lambda x, s: norm_ref(x, s, axis=1, epsilon=1e-3), tol=1e-5,
                           axis=1, epsilon=1e-3)],
    "graph.rms_norm": [c([f32(3, WIDE), f32(WIDE)], lambda x, s: norm_ref(x, s, rms=True, epsilon=1e-6), tol=1e-5,
                         epsilon=1e-6)],
    "graph.cumsum": [c([ints(3, 5)], lambda x: cumsum_ref(x, 1), axis=1),
                     c([ints(3, 5)], lambda x: cumsum_ref(x, 0, exclusive=True), axis=0, exclusive=True),
                     c([ints(3, 5)], lambda x: cumsum_ref(x, -1, reverse=True), axis=-1, reverse=True),
                     c([ints(2, 7, dtype=np.int64)], lambda x: cumsum_ref(x, 1, exclusive=True, reverse=True),
                       axis=1, exclusive=True, reverse=True),
                     c([np.array([1.0, 1e8, 3.0, np.inf, 2.0], np.float32)],
                       lambda x: cumsum_ref(x, 0, exclusive=True), axis=0, exclusive=True,
                       label="exclusive sums exclude, they do not subtract"),
                     c([f32(4, WIDE)], lambda x: cumsum_ref(x.astype(np.float64), 1), tol=1e-4, axis=1),
                     c([f32(2, 0)], lambda x: x, axis=1, exclusive=True, reverse=True)],
    "graph.topk": [c([TIES], lambda x: topk_ref(x, 3), k=3, label="ties: lower index first"),
                   c([TIES], lambda x: topk_ref(x, 4, largest=False), k=4, largest=False),
                   c([f32(3, WIDE)], lambda x: topk_ref(x, 5, axis=1), k=5, axis=1),
                   c([ints(6, 3)], lambda x: topk_ref(x, 2, axis=0), k=2, axis=0),
                   c([X35], lambda x: topk_ref(x, 0), k=0)],
    "graph.trilu": [c([f32(2, 4, 5)], trilu_ref),
                    c([f32(4, 5)], lambda x: trilu_ref(x, False, -1), upper=False, k=-1),
                    c([ints(5, 3)], lambda x: trilu_ref(x, True, 1), k=1),
                    c([bools(3, 3)], lambda x: trilu_ref(x, False), upper=False)],
    "graph.reshape": [c([f32(3, 5, 7)], lambda x: x.reshape(15, 7), shape=(15, 7)),
                      c([ints(6)], lambda x: x.reshape(1, 2, 3, 1), shape=(1, 2, 3, 1)),
                      c([f32(1)], lambda x: x.reshape(()), shape=())],
    "graph.transpose": [c([f32(2, 3, 5)], lambda x: np.einsum("abc->cab", x), perm=(2, 0, 1)),
                        c([XW], lambda x: x.T, perm=(1, 0))],
    "graph.expand": [c([f32(3, 1)], lambda x: x * np.ones((2, 3, 5), np.float32), shape=(2, 3, 5)),
                     c([ints(1)], lambda x: np.full((4,), x[0]), shape=(4,))],
    "graph.tile": [c([ints(2, 3)], lambda x: np.concatenate([np.concatenate([x] * 3, 1)] * 2, 0), repeats=(2, 3)),
                   c([f32(2, 2)], lambda x: np.zeros((0, 2), np.float32), repeats=(0, 1))],
    "graph.concat": [c([f32(2, 3), f32(2, 1), f32(2, 4)], lambda *xs: np.hstack(xs), axis=1),
                     c([ints(1, 3), ints(2, 3)], lambda *xs: np.vstack(xs), axis=-2), c([X35], lambda x: x, axis=0)],
    "graph.split": [c([f32(3, WIDE)], lambda x: (x[:, :320], x[:, 320:]), axis=1, sizes=(320, WIDE - 320)),
                    c([ints(7, 2)], lambda x: (x[:2], x[2:2], x[2:]), axis=-2, sizes=(2, 0, 5))],
    "graph.slice": [c([f32(5, 7)], lambda x: x[1:4, ::2], starts=(1, 0), ends=(4, 7), axes=(0, 1), steps=(1, 2)),
                    c([f32(5, 7)], lambda x: x[:, 6:1:-2], starts=(-1,), ends=(1,), axes=(-1,), steps=(-2,)),
                    c([ints(6)], lambda x: x[::-1], starts=(-1,), ends=(-100,), axes=(0,), steps=(-1,)),
                    c([ints(6)], lambda x: x[2:], starts=(2,), ends=(10**18,), axes=(0,), steps=(1,),
                      label="ends past the end clamp")],
    "graph.gather": [c([f32(5, 4), np.array([[0, -1], [4, -5]], np.int64)], gather_ref, label="negative indices"),
                     c([f32(2, WIDE), np.array([332, -1, 0], np.int32)], lambda d, i: gather_ref(d, i, 1), axis=1),
                     c([ints(3, 4), np.array(-2, np.int64)], lambda d, i: gather_ref(d, i, 0))],
    "graph.gather_elements": [c([f32(3, 4), np.array([[0, -1, 2], [-3, 1, 0]], np.int64)],
                                lambda d, i: gather_elements_ref(d, i, 1), axis=1),
                              c([ints(3, 2), np.array([[2, 0], [-1, 1]], np.int32)], gather_elements_ref)],
    "graph.gather_nd": [c([f32(3, 4, 5), np.array([[0, 1], [2, -1]], np.int64)], gather_nd_ref),
                        c([f32(2, 3, 4), np.array([[1], [-1]], np.int64)], lambda d, i: gather_nd_ref(d, i, 1),
                          batch_dims=1),
                        c([ints(2, 3), np.array([[[1, 2]], [[0, -1]]], np.int32)], gather_nd_ref)],
    # a state as a new generation finds it (zeros); a write into one (run_op makes operand 0 a state)
    "graph.state": [c([], lambda: np.zeros((2, 3, 4), np.float32), name="s", shape=(2, 3, 4), dtype=DType.f32)],
    "graph.state_write": [c([np.zeros((2, 6, 5), np.float32), f32(2, 2, 5), np.array([[3]])], state_write_ref),
                          c([np.zeros((1, 4, WIDE), np.float16), f32(1, 1, WIDE).astype(np.float16),
                             np.array([[0, 1]], np.int32)], state_write_ref, label="the first of two positions")],
}


def case_ids():
    return [pytest.param(name, case, id=f"{name}-{i}" + (f"-{case.label}" if case.label else ""))
            for name, cases in CASES.items() for i, case in enumerate(cases)]


def run_op(name: str, case: Case) -> tuple[Module, list[np.ndarray]]:
    b = Builder()
    dtypes = case.dtypes + (None,) * (len(case.operands) - len(case.dtypes))
    arrays = [np.asarray(a) for a in case.operands]
    state = OPS[name].in_place  # operand 0 is a state (zeros: a new generation's), operand 2 the position
    types = [TensorType(a.shape, d or DType.from_numpy(a.dtype)) for a, d in zip(arrays, dtypes)]
    operands = [b.op("graph.state", name="s", shape=t.shape, dtype=t.dtype) if state and i == 0 else
                b.input(f"in{i}", t) for i, t in enumerate(types)]
    out = b.op(name, *operands, **case.attrs)
    results = out if isinstance(out, tuple) else (out,)
    for i, r in enumerate(results):
        b.output(f"out{i}", r)
    module = verify(b.build("case", **({"position": "in2"} if state else {})))
    got = evaluate(module, {f"in{i}": a for i, a in enumerate(arrays) if not (state and i == 0)})
    return module, [got[f"out{i}"] for i in range(len(results))]


def test_every_graph_op_has_cases():
    graph_ops = sorted(n for n in OPS if n.startswith("graph."))
    assert [n for n in graph_ops if n not in CASES] == []
    assert [n for n in CASES if n not in OPS] == []


def test_some_case_is_wider_than_a_vector_row():
    widths = [np.shape(a)[-1] for cases in CASES.values() for case in cases for a in case.operands if np.ndim(a)]
    assert any(w > 320 and w % 320 for w in widths)


@pytest.mark.parametrize(("name", "case"), case_ids())
def test_op_matches_numpy(name, case):
    module, got = run_op(name, case)
    inputs = [bf16_round(a) if d is DType.bf16 else a
              for a, d in zip(case.operands, case.dtypes + (None,) * len(case.operands))]
    want = case.expected(*inputs)
    want = want if isinstance(want, tuple) else (want,)
    assert len(got) == len(want) == len(module.ops[0].results)
    for g, w, r in zip(got, want, module.ops[0].results):
        assert g.dtype == r.type.dtype.numpy, f"{r}: {g.dtype} for {r.type}"
        assert g.shape == r.type.shape
        w = np.asarray(w)
        if r.type.dtype is DType.bf16:
            w = bf16_round(w.astype(np.float32))
        if r.type.dtype.is_float:
            np.testing.assert_allclose(g, w.astype(np.float64), rtol=case.tol, atol=case.tol, equal_nan=True)
        else:
            np.testing.assert_array_equal(g, w.astype(g.dtype))


def test_bf16_results_are_bf16_values():
    _, (got,) = run_op("graph.add", c([XW, XW], None, dtypes=(DType.bf16, DType.bf16)))
    assert np.array_equal(got, bf16_round(got)) and got.dtype == np.float32
    assert not np.array_equal(got, XW + XW)


# --- errors ----------------------------------------------------------------------------

def two_input_module() -> Module:
    b = Builder()
    x = b.input("x", TensorType((2, 3), DType.f32))
    i = b.input("i", TensorType((2,), DType.i64))
    b.output("y", b.op("graph.gather", x, i, axis=1, names=("y",)))
    return verify(b.build("m"))


GOOD_INPUTS = {"x": np.zeros((2, 3), np.float32), "i": np.array([0, 2])}


@pytest.mark.parametrize(("inputs", "message"), [
    ({"x": GOOD_INPUTS["x"]}, "missing input(s): i (the model takes x, i)"),
    ({**GOOD_INPUTS, "z": 1}, "unknown input(s): z (the model takes x, i)"),
    ({**GOOD_INPUTS, "x": np.zeros((3, 2), np.float32)}, "input x: shape [3, 2], expected [2, 3]"),
    ({**GOOD_INPUTS, "x": np.zeros((2, 3))}, "input x: dtype float64, expected float32 (f32[2,3])"),
    ({**GOOD_INPUTS, "i": np.array([0, 2], np.int32)}, "input i: dtype int32, expected int64 (i64[2])"),
])
def test_bad_inputs(inputs, message):
    with pytest.raises(EvalError) as e:
        evaluate(two_input_module(), inputs)
    assert str(e.value) == message


def test_an_error_inside_an_op_names_the_op():
    with pytest.raises(EvalError, match=r"^%y = graph.gather: IndexError: .*out of bounds"):
        evaluate(two_input_module(), {**GOOD_INPUTS, "i": np.array([0, 3])})


def test_a_constant_without_data_names_the_op():
    b = Builder()
    w = b.op("graph.constant", value=Tensor(TensorType((400,), DType.f32), "sha256:feed"), names=("w",))
    b.output("w", w)
    with pytest.raises(EvalError, match=r"^%w = graph.constant: constant sha256:feed has no data"):
        evaluate(verify(b.build("m")), {})


def test_an_op_without_a_rule_names_the_op():
    m = two_input_module()
    op = m.ops[0]
    m = m.replace(ops=(type(op)("graph.unheard_of", op.operands, op.results, op.attrs),))
    with pytest.raises(EvalError, match=r"^%y = graph.unheard_of: the reference evaluator has no rule"):
        evaluate(m, GOOD_INPUTS)


def test_outputs_are_keyed_by_output_name():
    b = Builder()
    x = b.input("x", TensorType((2,), DType.i32))
    b.output("first", x)
    b.output("again", b.op("graph.neg", x))
    out = evaluate(b.build("m"), {"x": np.array([1, -2], np.int32)})
    assert list(out) == ["first", "again"] and out["again"].tolist() == [-1, 2]


def test_every_graph_op_has_an_evaluator_rule():
    assert sorted(n for n in OPS if n.startswith("graph.") and n not in EVAL) == []

