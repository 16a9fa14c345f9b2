"""The precision pass: the numbers the chip computes with, written into the graph IR.

tsp-v1's MXM multiplies int8 (int32 accumulation) and fp16 (fp32 accumulation, at `mxm.fp16_rate` of the int8
rate); it has no fp32 matrix path. A model arrives in fp32; this pass, the first of a compile, rewrites it to
the precision asked for, so that what lowering, allocation, the costs and the interpreter see is what the chip
stores and computes:

- `fp32`: nothing changes. The exact reference path (numpy's float32 matmul), timed at the fp16 rate.
- `fp16` (the default): weights — f32 constants of rank >= 2 that a matmul multiplies by or a gather reads —
  are stored as f16; every float matmul takes f16 operands (activations cast on the VXM) and accumulates in
  f32 (`graph.matmul accumulate=f32`).
- `int8`: weights are quantized symmetrically per output channel (ir.evaluator.quantize_symmetric: int8
  values, f32 scales [..., 1, N] kept beside them). A matmul by such a weight quantizes its activation per
  token on the VXM (each row: scale = max|x| / 127, x_q = round(x / scale), computed at run time, the
  chip's static alternative to calibration), multiplies int8 x int8 with int32 accumulation, and
  dequantizes on the VXM (f32(sum) x row scale x column scale). Matmuls of two activations (attention's
  scores and context) run at fp16, as deployed int8 models keep them. A gathered row (an embedding) is its
  int8 row times the column scales.
- `fp8`: weights in f8e4m3fn with per-output-channel scales (max|w| / 448), activations fp16, fp32
  accumulation, the scales applied on the VXM; only on a machine whose MXM has an fp8 path
  (`mxm.fp8_rate` > 0; tsp-v1 has none).

Quantized constants stay lazy (their data is computed from the original's on first use), so a model compiled
without weights is never read. Matmuls that accumulate already (an imported MatMulInteger) and integer
matmuls are left as they are. On a partitioned module, the ops inserted for an op take its chip.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from ..ir import DType, LpucError, Module, Tensor, Value
from ..ir.attributes import AttrDict
from ..ir.builder import Builder
from ..ir.core import Op
from ..ir.evaluator import cast, quantize_symmetric
from ..ir.graph_ops import PLACEMENT_ATTRS
from ..ir.types import TensorType

from .passes import Pass

PRECISIONS = ("fp32", "fp16", "int8", "fp8")
DEFAULT_PRECISION = "fp16"  # the chip's float path
WEIGHT_TYPE = {"fp16": DType.f16, "int8": DType.i8, "fp8": DType.f8e4m3fn}


def check_precision(precision: str, machine) -> None:
    if precision not in PRECISIONS:
        raise LpucError(f"unknown precision {precision!r} (choose from {', '.join(PRECISIONS)})")
    if precision == "fp8" and not machine.mxm.fp8_rate:
        raise LpucError(f"{machine.name}'s MXM has no fp8 path (its machine file has mxm.fp8_rate = 0): "
                        "choose fp16 or int8")


@dataclass(frozen=True)
class Precision(Pass):
    """Rewrite a graph module to compute at `precision` (fp32, fp16, int8, fp8)."""

    name = "precision"
    precision: str = DEFAULT_PRECISION

    def apply(self, module: Module, target, plan) -> Module:
        check_precision(self.precision, target.machine)
        return at_precision(module, self.precision)


@dataclass(frozen=True)
class _Weight:
    """A weight as stored: its values `q` and, for int8 / fp8, the f32 scales `scale` [..., 1, N]."""

    q: Value
    scale: Value | None


def _lazy(t: Tensor, dtype: DType, part: int) -> Tensor:
    """Part `part` of quantize_symmetric(t) (0: the values, 1: the scales; f16: the values cast), lazily."""
    if dtype is DType.f16:
        shape, load = t.type.shape, (lambda: cast(t.array, DType.f16))
    else:
        shape = t.type.shape if part == 0 else t.type.shape[:-2] + (1, t.type.shape[-1])
        load = (lambda: _quantized(t, dtype)[part])
    return Tensor(TensorType(shape, dtype if part == 0 else DType.f32),
                  f"{t.key}:{dtype.value}{'-scale' if part else ''}", loader=None if t.loader is None else load)


@lru_cache(maxsize=4)  # a weight's values and scales are asked for one after the other
def _quantized(t: Tensor, dtype: DType) -> tuple[np.ndarray, np.ndarray]:
    return quantize_symmetric(t.array, dtype)


def at_precision(module: Module, precision: str) -> Module:
    if precision == "fp32":
        return module
    return _Rewriter(module, precision).run()


class _Rewriter:
    def __init__(self, module: Module, precision: str):
        self.module, self.precision = module, precision
        self.b = Builder()
        self.env: dict[str, Value] = {}       # old value -> new (materialized, f32 as before)
        self.weights: dict[str, _Weight] = {}  # old value -> its stored form, not yet materialized
        self.chip: dict = {}                   # placement of the op being rewritten (inserted ops take it)
        uses = {}
        for op in module.ops:
            for k, v in enumerate(op.operands):
                uses.setdefault(v.name, set()).add((op.name, k))
        # weights: f32 constants of rank >= 2 that a matmul multiplies by or a gather reads
        self.weight_names = {
            op.result.name for op in module.ops
            if op.name == "graph.constant" and op.result.type.dtype is DType.f32 and op.result.type.rank >= 2
            and uses.get(op.result.name, set()) & {("graph.matmul", 1), ("graph.gather", 0)}}

    def run(self) -> Module:
        for v in self.module.inputs:
            self.b._taken.add(v.name)
            self.b.inputs.append(v)
            self.env[v.name] = v
        for op in self.module.ops:
            self.chip = {"chip": op.attrs["chip"]} if "chip" in op.attrs else {}
            if op.name == "graph.constant" and op.result.name in self.weight_names:
                self.weights[op.result.name] = self._store(op)
            elif op.name == "graph.gather" and op.operands[0].name in self.weights:
                self.weights[op.result.name] = self._gather(op)
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

    def const(self, value: float, dtype: DType, hint: str) -> Value:
        return self.b.constant(np.asarray(value, dtype.numpy), dtype, name=hint)

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
            x = self.op("graph.cast", w.q, hint=f"{h}.f32", to=DType.f32)
            self.env[v.name] = x if w.scale is None else self.op("graph.mul", x, w.scale, hint=f"{h}.dequantized")
        return self.env[v.name]

    # --- weights ------------------------------------------------------------------------------------------

    def _store(self, op: Op) -> _Weight:
        t, h = op.attrs["value"], op.result.name
        dtype = WEIGHT_TYPE[self.precision]
        q = self.b.op("graph.constant", names=(f"{h}.{dtype.value}",), value=_lazy(t, dtype, 0))
        if dtype is DType.f16:
            return _Weight(q, None)
        return _Weight(q, self.b.op("graph.constant", names=(f"{h}.scale",), value=_lazy(t, dtype, 1)))

    def _gather(self, op: Op) -> _Weight:
        """Rows (or any slices) of a stored weight: the stored values gathered, and the scales that go with them."""
        w, idx, h = self.weights[op.operands[0].name], self.value(op.operands[1]), op.result.name
        rank, axis = op.operands[0].type.rank, op.attrs.get("axis", 0) % op.operands[0].type.rank
        attrs = {k: v for k, v in op.attrs.items() if k not in PLACEMENT_ATTRS}
        q = self.b.op("graph.gather", w.q, idx, names=(f"{h}.{w.q.type.dtype.value}",), **{**attrs, **self.chip})
        if w.scale is None:
            return _Weight(q, None)
        if axis == rank - 2:  # along the contraction axis: every row has the same column scales
            s = w.scale.type.shape
            scale = self.op("graph.reshape", w.scale, hint=f"{h}.scale",
                            shape=s[:-2] + (1,) * idx.type.rank + s[-1:])
        else:
            scale = self.op("graph.gather", w.scale, idx, hint=f"{h}.scale", **attrs)
        return _Weight(q, scale)

    # --- matmuls ------------------------------------------------------------------------------------------

    def _float_matmul(self, op: Op) -> bool:
        return op.attrs.get("accumulate") is None and all(
            v.type.dtype is DType.f32 for v in op.operands)

    def _matmul(self, op: Op) -> Value:
        a, h = self.value(op.operands[0]), op.result.name
        attrs = {k: v for k, v in op.attrs.items() if k != "accumulate"}  # the placement (chip, split) stays
        w = self.weights.get(op.operands[1].name)
        if w is not None and self.precision == "int8":
            xq, sx = self._quantize_rows(a, h)
            y = self.b.op("graph.matmul", xq, w.q, names=(f"{h}.i32",), accumulate=DType.i32, **attrs)
            y = self.op("graph.cast", y, hint=f"{h}.f32", to=DType.f32)
            if op.operands[0].type.rank == 1:  # the row scale of a vector is a scalar
                sx = self.op("graph.reshape", sx, hint=f"{h}.x_scale1", shape=())
            y = self.op("graph.mul", y, sx, hint=f"{h}.x_scaled")
        else:  # fp16, fp8, and int8's activation x activation matmuls
            b = w.q if w is not None else self.op("graph.cast", self.value(op.operands[1]), hint=f"{h}.b16",
                                                  to=DType.f16)
            a16 = self.op("graph.cast", a, hint=f"{h}.a16", to=DType.f16)
            y = self.b.op("graph.matmul", a16, b, names=(h if w is None or w.scale is None else f"{h}.acc",),
                          accumulate=DType.f32, **attrs)
        if w is not None and w.scale is not None:
            scale = w.scale
            if op.operands[0].type.rank == 1:  # a vector times the weight: no row axis
                s = scale.type.shape
                scale = self.op("graph.reshape", scale, hint=f"{h}.w_scale", shape=s[:-2] + s[-1:])
            y = self.op("graph.mul", y, scale, hint=h)
        return y

    def _quantize_rows(self, x: Value, h: str) -> tuple[Value, Value]:
        """Per-token dynamic symmetric int8 on the VXM: (round(x / s) as int8, s = max|x| / 127 per row)."""
        amax = self.op("graph.reduce_max", self.op("graph.abs", x, hint=f"{h}.x_abs"), hint=f"{h}.x_max",
                       axes=(-1,), keepdims=True)
        s = self.op("graph.div", amax, self.const(127.0, DType.f32, f"{h}.q127"), hint=f"{h}.x_scale0")
        # a row of zeros: any positive scale gives zeros
        s = self.op("graph.max", s, self.const(np.finfo(np.float32).tiny, DType.f32, f"{h}.tiny"), hint=f"{h}.x_scale")
        r = self.op("graph.round", self.op("graph.div", x, s, hint=f"{h}.x_scaled_in"), hint=f"{h}.x_rounded")
        return self.op("graph.cast", r, hint=f"{h}.x_i8", to=DType.i8), s


__all__ = ["DEFAULT_PRECISION", "PRECISIONS", "Precision", "at_precision", "check_precision"]
