"""The precision pass: the numbers the chip computes with, written into the graph IR.

tsp-v1's MXM multiplies int8 (int32 accumulation) and fp16 (fp32 accumulation, at `mxm.fp16_rate` of the int8
rate); it has no fp32 matrix path. A model arrives in fp32; this pass, the first of a compile, rewrites it to
the precision asked for, so that what lowering, allocation, the costs and the interpreter see is what the chip
stores and computes:

- `fp32`: nothing changes. The exact reference path (numpy's float32 matmul), timed at the fp16 rate.
- `fp16` (the default): weights — float constants of rank >= 2 that a matmul multiplies by or a gather
  reads, directly or through gathers and transposes (the experts a MoE router selects) — are stored as f16;
  every float matmul takes f16 operands (activations cast on the VXM) and accumulates in f32
  (`graph.matmul accumulate=f32`), its result cast back to the model's type.
- `int8`: weights are quantized symmetrically per output channel (ir.evaluator.quantize_symmetric: int8
  values, f32 scales kept beside them: one per output channel, over the axis that reaches the matmul as its
  contraction axis K). A matmul by such a weight quantizes its activation per token on the VXM, in two int8
  parts (x ~ s1 * (q1 + q2 / 254), computed at run time, the chip's static alternative to calibration:
  with t = x * 127 / max|x| per row, q1 = round(t), s1 = max|x| / 127, and the rounding residual quantized
  again, q2 = round((t - q1) * 254): about 15 significant bits where one part has 7). Both parts stream
  through the installed weight as one int8 x int8 pass of twice the rows, with int32 accumulation; the VXM
  dequantizes: f32(sum1) x s1 x column scale + f32(sum2) x s1 / 254 x column scale.
  docs/design.md, "Precision", says why (measured: one part's rounding cost as much as the weights' own).
  Matmuls of two activations (attention's scores and context) run at fp16, as deployed int8 models keep
  them. A table only gathered (an embedding) has a scale per group of ROW_GROUP values of each row instead
  (stored [groups, rows], the rows along the lanes): a gathered row is its int8 values times its groups'
  scales.
- `fp8`: weights in f8e4m3fn with per-output-channel scales (max|w| / 448), activations fp16, fp32
  accumulation, the scales applied on the VXM; only on a machine whose MXM has an fp8 path
  (`mxm.fp8_rate` > 0; tsp-v1 has none).

Quantized constants stay lazy (their data is computed from the original's on first use), so a model compiled
without weights is never read. Matmuls that accumulate already (an imported MatMulInteger) and integer
matmuls are left as they are. The ops inserted for an op take its chip (on a partitioned module) and its
group (compiler/paired_matmuls.py: a branch quantizes its own activation, on its own chip). The plan
counts the weights' SRAM bytes before and after (`Stored`), which the compile summary reports.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from ..ir import DType, LpucError, Module, Tensor, Value
from ..ir.builder import Builder
from ..ir.core import Op
from ..ir.evaluator import cast, quantize_symmetric
from ..ir.graph_ops import PLACEMENT_ATTRS
from ..ir.layout import words
from ..ir.types import TensorType

from .passes import Pass

PRECISIONS = ("fp32", "fp16", "int8", "fp8")
DEFAULT_PRECISION = "fp16"  # the chip's float path
# The max relative error against the fp32 outputs each precision is held to (tested on every sample); fp8
# (e4m3: 3 significant bits) has no bound.
TOLERANCE = {"fp32": 1e-4, "fp16": 1e-2, "int8": 5e-2}
ROW_GROUP = 32  # a table only gathered (an embedding) has a scale per group of this many values of each row
WEIGHT_TYPE = {"fp16": DType.f16, "int8": DType.i8, "fp8": DType.f8e4m3fn}
MODEL_FLOATS = (DType.f32, DType.f16, DType.bf16)  # the float types of models the pass rewrites


def check_precision(precision: str, machine) -> None:
    if precision not in PRECISIONS:
        raise LpucError(f"unknown precision {precision!r} (choose from {', '.join(PRECISIONS)})")
    if precision == "fp8" and not machine.mxm.fp8_rate:
        raise LpucError(f"{machine.name}'s MXM has no fp8 path (its machine file has mxm.fp8_rate = 0): "
                        "choose fp16 or int8")


@dataclass(frozen=True)
class Stored:
    """What the precision pass did to the weights: their SRAM bytes as the model had them (fp32 for the
    samples) and as stored (values and scales), one copy of each (a chip holding all of them)."""

    weights: int = 0
    model_bytes: int = 0
    bytes: int = 0


@dataclass(frozen=True)
class Precision(Pass):
    """Rewrite a graph module to compute at `precision` (fp32, fp16, int8, fp8)."""

    name = "precision"
    precision: str = DEFAULT_PRECISION

    def plan(self, module: Module, target, progress=None) -> tuple[Module, Stored]:
        check_precision(self.precision, target.machine)
        rewriter = _Rewriter(module, self.precision)
        model = sum(words(rewriter.types[n], target.lanes) for n in rewriter.axis)
        if self.precision == "fp32":
            rewritten, stored = module, model
        else:
            rewritten = rewriter.run()
            stored = sum(words(op.result.type, target.lanes) for op in rewritten.ops
                         if op.name == "graph.constant" and op.result.name in rewriter.stored)
        word = target.machine.sram.word_bytes
        return rewritten, Stored(len(rewriter.axis), model * word, stored * word)

    def apply(self, module: Module, target, plan) -> Module:
        return plan[0]


@dataclass(frozen=True)
class _Weight:
    """A weight as stored (or gathered, transposed ... from one): its values `q` and, for int8 / fp8, the f32
    scales `scale` (q's rank, 1 along the contraction axis `axis`)."""

    q: Value
    scale: Value | None
    axis: int | None  # None: the axis was gathered away (the scales broadcast)
    rows: bool = False  # a table's scales, per ROW_GROUP values of a row: [groups, rows...] (only gathers keep them)


def _row_groups(width: int) -> int:
    """How many scales a table row of `width` values gets: one per ROW_GROUP values, or one per row where
    ROW_GROUP does not divide it."""
    return width // ROW_GROUP if width % ROW_GROUP == 0 else 1


def _lazy(t: Tensor, dtype: DType, axis: int, part: int, rows: bool = False) -> Tensor:
    """Part `part` of `_quantized(t)` (0: the values, 1: the scales; f16: the values cast), lazily. A
    table's scales (`rows`; axis: the last) are [groups, rows...]: the rows along the lanes, compact in SRAM."""
    if dtype is DType.f16:
        shape, load = t.type.shape, (lambda: cast(t.array, DType.f16))
    elif part == 0:
        shape, load = t.type.shape, (lambda: _quantized(t, dtype, axis, rows)[0])
    else:
        shape = (_row_groups(t.type.shape[-1]),) + t.type.shape[:-1] if rows else \
            tuple(1 if i == axis else d for i, d in enumerate(t.type.shape))
        load = lambda: _quantized(t, dtype, axis, rows)[1]  # noqa: E731
    scheme = "" if dtype is DType.f16 else f"-rows{ROW_GROUP}" if rows else f"-axis{axis}"
    key = f"{t.key}:{dtype.value}{scheme}" + ("-scale" if part else "")
    return Tensor(TensorType(shape, dtype if part == 0 else DType.f32), key, loader=None if t.loader is None else load)


@lru_cache(maxsize=4)  # a weight's values and scales are asked for one after the other
def _quantized(t: Tensor, dtype: DType, axis: int, rows: bool) -> tuple[np.ndarray, np.ndarray]:
    """quantize_symmetric(t) over `axis`; a table's (`rows`) over each group of its rows' values, the scales
    [groups, rows...]."""
    if not rows:
        return quantize_symmetric(t.array, dtype, axis)
    shape = t.type.shape
    groups = _row_groups(shape[-1])
    q, scale = quantize_symmetric(t.array.reshape(shape[:-1] + (groups, shape[-1] // groups)), dtype, -1)
    return q.reshape(shape), np.ascontiguousarray(np.moveaxis(scale[..., 0], -1, 0))


def at_precision(module: Module, precision: str) -> Module:
    if precision == "fp32":
        return module
    return _Rewriter(module, precision).run()


# Ops a weight passes through on its way to a matmul, and how each moves its axes: (op, the operand's rank)
# -> for each result axis, the operand axis it is (None: a new axis, from the indices). None: not followed.
def _gather_axes(op: Op, rank: int):
    a, idx = op.attrs.get("axis", 0) % rank, op.operands[1].type.rank
    return list(range(a)) + [None] * idx + list(range(a + 1, rank))


def _gather_nd_axes(op: Op, rank: int):
    idx = op.operands[1].type
    if op.attrs.get("batch_dims", 0):
        return None
    return [None] * (idx.rank - 1) + list(range(idx.shape[-1], rank))


LAYOUT = {
    "graph.gather": _gather_axes,
    "graph.gather_nd": _gather_nd_axes,
    "graph.transpose": lambda op, rank: list(op.attrs["perm"]),
}


class _Rewriter:
    def __init__(self, module: Module, precision: str):
        self.module, self.precision = module, precision
        self.b = Builder()
        self.env: dict[str, Value] = {}        # old value -> new (materialized, f32 as before)
        self.weights: dict[str, _Weight] = {}  # old value -> its stored form, not yet materialized
        self.consts: dict[tuple, Value] = {}   # (shape, bytes, dtype) -> a constant the inserted ops share
        self.chip: dict = {}                   # placement of the op being rewritten (inserted ops take it)
        self.stored: set[str] = set()          # new constants holding weights (values and scales)
        self.types = {op.result.name: op.result.type for op in module.ops if op.name == "graph.constant"}
        self.uses: dict[str, list[tuple[Op, int]]] = {}
        for op in module.ops:
            for k, v in enumerate(op.operands):
                self.uses.setdefault(v.name, []).append((op, k))
        # weights (constant name -> the axis to take scales over), and the tables among them (row scales)
        self.axis, self.rows = {}, set()
        for op in module.ops:
            t = op.result.type if op.name == "graph.constant" else None
            if t is not None and t.dtype in MODEL_FLOATS and t.rank >= 2:
                found = self._contraction_axis(op.result.name, list(range(t.rank)))
                if found is not None:
                    self.axis[op.result.name] = found[0]
                    if found[1]:
                        self.rows.add(op.result.name)

    def _contraction_axis(self, name: str, axes: list) -> tuple[int, bool] | None:
        """(the constant's axis that a matmul reading it (through LAYOUT ops) contracts, False); a table only
        gathered (an embedding): (its last axis, True), a scale per row (each token's own range); only picked
        from by gather_nd: (its second-to-last axis, False). None: not a weight."""
        found = None
        for op, k in self.uses.get(name, ()):
            if op.name == "graph.matmul" and k == 1 and len(axes) >= 2 and axes[-2] is not None:
                return axes[-2], False
            move = LAYOUT.get(op.name)
            if move and k == 0 and (moved := move(op, len(axes))) is not None:
                deeper = self._contraction_axis(op.result.name, [None if a is None else axes[a] for a in moved])
                if deeper is not None:
                    return deeper
                if op.name == "graph.gather" and axes[-1] is not None:  # an embedding: its rows
                    found = found or (axes[-1], True)
                elif op.name == "graph.gather_nd" and len(axes) >= 2 and axes[-2] is not None:
                    found = found or (axes[-2], False)
        return found

    def run(self) -> Module:
        for v in self.module.inputs:
            self.b._taken.add(v.name)
            self.b.inputs.append(v)
            self.env[v.name] = v
        for op in self.module.ops:
            self.chip = {k: op.attrs[k] for k in ("chip", "group") if k in op.attrs}
            if op.name == "graph.constant" and op.result.name in self.axis:
                self.weights[op.result.name] = self._store(op)
            elif op.name in LAYOUT and op.operands[0].name in self.weights and self._layout(op):
                pass
            elif op.name == "graph.matmul" and self._float_matmul(op):
                self.env[op.result.name] = self._matmul(op)
            else:
                self._copy(op)
        for name, v in self.module.outputs:
            self.b.outputs.append((name, self.value(v)))
        return self.b.build(self.module.name, **dict(self.module.attrs))

    # --- building ---------------------------------------------------------------------------------------

    def op(self, name: str, *operands: Value, hint: str, **attrs) -> Value:
        return self.b.op(name, *operands, names=(hint,), **self.chip, **attrs)

    def const(self, value, dtype: DType, hint: str) -> Value:
        array = np.asarray(value, dtype.numpy)
        key = (array.shape, array.tobytes(), dtype)
        if key not in self.consts:
            self.consts[key] = self.b.constant(array, dtype, name=hint)
        return self.consts[key]

    def _copy(self, op: Op) -> None:
        operands = tuple(self.value(v) for v in op.operands)
        results = tuple(Value(self.b.fresh(r.name), r.type) for r in op.results)
        self.b.ops.append(Op(op.name, operands, results, op.attrs))
        for old, new in zip(op.results, results):
            self.env[old.name] = new

    def value(self, v: Value) -> Value:
        """`v` as the model had it (a weight dequantized where something other than a matmul reads it)."""
        if v.name not in self.env:
            w, h = self.weights[v.name], v.name
            x = w.q
            if w.rows:  # a table's rows: each group of values times its scale
                shape, groups, rank = x.type.shape, w.scale.type.shape[0], w.scale.type.rank
                grouped = self.op("graph.reshape", self.op("graph.cast", x, hint=f"{h}.f32", to=DType.f32),
                                  hint=f"{h}.groups", shape=shape[:-1] + (groups, shape[-1] // groups))
                scale = self.op("graph.transpose", w.scale, hint=f"{h}.row_scale", perm=tuple(range(1, rank)) + (0,))
                scale = self.op("graph.reshape", scale, hint=f"{h}.group_scale", shape=shape[:-1] + (groups, 1))
                x = self.op("graph.reshape", self.op("graph.mul", grouped, scale, hint=f"{h}.groups_dequantized"),
                            hint=f"{h}.dequantized", shape=shape)
            elif w.scale is not None:
                x = self.op("graph.mul", self.op("graph.cast", x, hint=f"{h}.f32", to=DType.f32), w.scale,
                            hint=f"{h}.dequantized")
            self.env[v.name] = self.as_type(x, v.type.dtype, h)
        return self.env[v.name]

    def as_type(self, x: Value, dtype: DType, h: str) -> Value:
        return x if x.type.dtype is dtype else self.op("graph.cast", x, hint=f"{h}.{dtype.value}", to=dtype)

    # --- weights ------------------------------------------------------------------------------------------

    def _store(self, op: Op) -> _Weight:
        t, h, axis = op.attrs["value"], op.result.name, self.axis[op.result.name]
        dtype = WEIGHT_TYPE[self.precision]
        if t.type.dtype is dtype:  # stored so already (an fp16 model at fp16)
            self._copy(op)
            self.stored.add(self.env[h].name)
            return _Weight(self.env.pop(h), None, axis)
        rows = h in self.rows
        q = self.b.op("graph.constant", names=(f"{h}.{dtype.value}",), value=_lazy(t, dtype, axis, 0, rows))
        self.stored.add(q.name)
        if dtype is DType.f16:
            return _Weight(q, None, axis)
        scale = self.b.op("graph.constant", names=(f"{h}.scale",), value=_lazy(t, dtype, axis, 1, rows))
        self.stored.add(scale.name)
        return _Weight(q, scale, axis, rows)

    def _layout(self, op: Op) -> bool:
        """A gather, gather_nd or transpose of a stored weight: the same op on its values, and on its scales
        (or, where the op picks along the scales' axis of 1, the scales reshaped). False: not followed."""
        w, h = self.weights[op.operands[0].name], op.result.name
        moved = LAYOUT[op.name](op, w.q.type.rank)
        if moved is None or (op.name == "graph.gather_nd" and w.axis is not None and w.axis not in moved) \
                or (w.rows and (op.name != "graph.gather" or moved[-1] != w.axis)):
            return False
        attrs = {k: v for k, v in op.attrs.items() if k not in PLACEMENT_ATTRS}
        rest = [self.value(v) for v in op.operands[1:]]
        q = self.b.op(op.name, w.q, *rest, names=(f"{h}.{w.q.type.dtype.value}",), **{**attrs, **self.chip})
        axis = moved.index(w.axis) if w.axis in moved else None
        if w.scale is None:
            scale = None
        elif op.name == "graph.gather" and moved.count(None) and w.axis not in moved:  # gathered along the axis
            shape = tuple(1 if a is None or a == w.axis else w.scale.type.shape[a] for a in moved)
            scale = w.scale if shape == w.scale.type.shape else \
                self.op("graph.reshape", w.scale, hint=f"{h}.scale", shape=shape)
        elif w.rows:  # a table's scales [groups, rows...]: its rows one axis on
            scale = self.op(op.name, w.scale, *rest, hint=f"{h}.scale",
                            **{**attrs, "axis": attrs.get("axis", 0) % w.q.type.rank + 1})
        else:
            scale = self.op(op.name, w.scale, *rest, hint=f"{h}.scale", **attrs)
        self.weights[op.result.name] = _Weight(q, scale, axis, w.rows)
        return True

    # --- matmuls ------------------------------------------------------------------------------------------

    def _float_matmul(self, op: Op) -> bool:
        return op.attrs.get("accumulate") is None and all(v.type.dtype in MODEL_FLOATS for v in op.operands)

    def _matmul(self, op: Op) -> Value:
        a, h = self.value(op.operands[0]), op.result.name
        attrs = {k: v for k, v in op.attrs.items() if k != "accumulate"}  # the placement (chip, split) stays
        w = self.weights.get(op.operands[1].name)
        if w is not None and w.scale is not None and w.axis != w.q.type.rank - 2:
            w = None  # scales not per output column (cannot move past the sum): the weight dequantized
        if w is not None and self.precision == "int8":
            return self.as_type(self._int8_matmul(a, w, h, attrs), op.result.type.dtype, h)
        # fp16, fp8, and int8's activation x activation matmuls
        b = w.q if w is not None else self.as_type(self.value(op.operands[1]), DType.f16, f"{h}.b")
        y = self.b.op("graph.matmul", self.as_type(a, DType.f16, f"{h}.a"), b,
                      names=(h if w is None or w.scale is None else f"{h}.acc",), accumulate=DType.f32, **attrs)
        if w is not None and w.scale is not None:
            scale = w.scale
            if a.type.rank == 1:  # a vector times the weight: no row axis
                s = scale.type.shape
                scale = self.op("graph.reshape", scale, hint=f"{h}.w_scale", shape=s[:-2] + s[-1:])
            y = self.op("graph.mul", y, scale, hint=h)
        return self.as_type(y, op.result.type.dtype, h)

    def _int8_matmul(self, a: Value, w: _Weight, h: str, attrs: dict) -> Value:
        """x @ w on the int8 MXM, x in two int8 parts (`_two_parts`) stacked as rows, so the installed weight
        streams both in one pass ([q1; q2] @ w_q, int32 sums). The sums, viewed as [2, rows, N] (no data moves),
        are dequantized by one multiply, by [1, 1/254] (the parts' steps) x row scale x column scale (computed
        while the MXM works), and added over the parts."""
        x = self.as_type(a, DType.f32, f"{h}.x")  # the scales in f32
        if a.type.rank == 1:
            x = self.op("graph.reshape", x, hint=f"{h}.x_row", shape=(1,) + a.type.shape)
        q1, q2, s1 = self._two_parts(x, f"{h}.x")
        stacked = self.op("graph.concat", q1, q2, hint=f"{h}.x_parts", axis=x.type.rank - 2)
        y = self.b.op("graph.matmul", stacked, w.q, names=(f"{h}.i32",), accumulate=DType.i32, **attrs)
        y = self.op("graph.cast", y, hint=f"{h}.f32", to=DType.f32)
        m, col = x.type.shape[-2], w.scale.type.shape
        y = self.op("graph.reshape", y, hint=f"{h}.parts", shape=y.type.shape[:-2] + (2, m, y.type.shape[-1]))
        steps = self.const(np.array([1, 1 / 254]).reshape(2, 1, 1), DType.f32, "int8_part_steps")
        rows = self.op("graph.mul", steps, self.op("graph.reshape", s1, hint=f"{h}.x_scale_parts",
                                                   shape=s1.type.shape[:-2] + (1, m, 1)), hint=f"{h}.row_scales")
        scales = self.op("graph.mul", rows, self.op("graph.reshape", w.scale, hint=f"{h}.w_scale_parts",
                                                    shape=col[:-2] + (1,) + col[-2:]), hint=f"{h}.scales")
        y = self.op("graph.reduce_sum", self.op("graph.mul", y, scales, hint=f"{h}.parts_dequantized"), hint=h,
                    axes=(-3,), keepdims=False)
        if a.type.rank == 1:
            y = self.op("graph.reshape", y, hint=f"{h}.vector", shape=y.type.shape[:-2] + y.type.shape[-1:])
        return y

    def _two_parts(self, x: Value, h: str) -> tuple[Value, Value, Value]:
        """Per-token dynamic symmetric int8 on the VXM, in two parts: x ~ s1 * (q1 + q2 / 254). With m the row's
        max |x| (at least 127 x the least normal f32: a row of zeros stays zeros, and 127 / m is finite) and
        t = x * 127 / m: q1 = round(t), s1 = m / 127, and the residual |t - q1| <= 1/2 quantized again,
        q2 = round((t - q1) * 254) (both parts in -127..127: about 15 significant bits of x where q1 alone has
        7). One division per row for the scale, a few multiplies per element, no second reduce."""
        q127, q254 = self.const(127.0, DType.f32, "int8_max"), self.const(254.0, DType.f32, "int8_residual")
        amax = self.op("graph.reduce_max", self.op("graph.abs", x, hint=f"{h}_abs"), hint=f"{h}_max0",
                       axes=(-1,), keepdims=True)
        amax = self.op("graph.max", amax, self.const(127 * np.finfo(np.float32).tiny, DType.f32, "int8_least_max"),
                       hint=f"{h}_max")
        inverse = self.op("graph.div", q127, amax, hint=f"{h}_inverse_scale")
        t = self.op("graph.mul", x, inverse, hint=f"{h}_scaled_in")
        r1 = self.op("graph.round", t, hint=f"{h}_rounded")
        residual = self.op("graph.mul", self.op("graph.sub", t, r1, hint=f"{h}_residual"), q254,
                           hint=f"{h}_residual_scaled")
        r2 = self.op("graph.round", residual, hint=f"{h}_residual_rounded")
        return self.op("graph.cast", r1, hint=f"{h}_i8", to=DType.i8), \
            self.op("graph.cast", r2, hint=f"{h}_residual_i8", to=DType.i8), \
            self.op("graph.div", amax, q127, hint=f"{h}_scale")


__all__ = ["DEFAULT_PRECISION", "PRECISIONS", "TOLERANCE", "Precision", "Stored", "at_precision", "check_precision"]
