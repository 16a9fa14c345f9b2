"""Grouped-query attention without copies of the KV cache.

A model whose query heads share key/value heads (Llama-2-70B: 64 query heads, 8 KV heads) repeats each KV
head for its queries before attention: exporters write `repeat_kv` as reshape (a new axis of 1) -> expand
(r copies) -> reshape (the KV and copy axes merged). Computed as written, every layer copies its whole cache
r times, and transposes and scales the copies; at Llama-2-70B's context 4096 that is 160 MiB per layer, more
than a chip holds besides its weights. A matmul by repeated keys or values needs no copy: the queries (or
attention probabilities) of the r heads sharing a KV head are consecutive rows, so

    A[..., kv*r, M, K] @ repeat(B)[..., kv*r, K, N]  ==  reshape(A[..., kv, r*M, K] @ B[..., kv, K, N])

with both reshapes views (no data moves). This pass finds the repeats, follows them through the ops that
commute with a repeat (reshapes and transposes that keep the head axis whole, elementwise ops whose other
operand is the same for every head), and rewrites each matmul by one into the grouped form above; the
copies, now unread, are dropped. Results are those of the model as written (each output element is the same
dot product). A module already partitioned (an IR file with its placement) is left as it is.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from ..ir import Module
from ..ir.builder import Builder
from ..ir.core import AttrDict, Op, Value
from ..ir.graph_ops import ARITHMETIC, FLOAT_UNARY, NUMERIC_UNARY
from ..ir.types import TensorType

from .passes import Pass, dead_code_elimination

ELEMENTWISE = {f"graph.{n}" for n in (*ARITHMETIC, *FLOAT_UNARY, *NUMERIC_UNARY)} | {"graph.cast"}


@dataclass(frozen=True)
class _Repeat:
    """A value that is `source` with its axis `axis` repeated `times` times (each slice r times in a row)."""

    source: Value
    axis: int
    times: int


def repeat_factor(x: tuple[int, ...], ones: tuple[int, ...], wide: tuple[int, ...], axis: int) -> int | None:
    """r when a value of shape `x`, reshaped to `ones` (a new axis of 1 after `axis`) and expanded to `wide`,
    repeats its `axis` r times (the first two ops of repeat_kv); else None."""
    if ones == x[:axis + 1] + (1,) + x[axis + 1:] and wide[:axis + 1] == x[:axis + 1] and wide[axis + 2:] == x[axis + 1:]:
        return wide[axis + 1]
    return None


class _Rewriter:
    def __init__(self, module: Module):
        self.module = module
        self.b = Builder()  # the rewritten ops; new values named unlike any of the module's
        self.b._taken.update([v.name for v in module.inputs] + [r.name for op in module.ops for r in op.results])
        self.producer = {r.name: op for op in module.ops for r in op.results}
        self.repeats: dict[str, _Repeat] = {}
        self.grouped = 0

    def emit(self, name: str, operands: tuple[Value, ...], hint: str, **attrs) -> Value:
        return self.b.op(name, *operands, names=(hint,), **attrs)

    def run(self) -> Module:
        for op in self.module.ops:
            if op.name == "graph.matmul" and op.operands[1].name in self.repeats and self._grouped_matmul(op):
                continue
            self.b.ops.append(op)
            if len(op.results) == 1 and op.operands:
                found = self._repeat_of(op)
                if found is not None:
                    self.repeats[op.result.name] = found
        if not self.grouped:
            return self.module
        return dead_code_elimination(self.module.replace(ops=tuple(self.b.ops)))

    # --- which values are repeats -------------------------------------------------------------------------

    def _repeat_of(self, op: Op) -> _Repeat | None:
        """The repeat `op`'s result is, emitting its unrepeated counterpart; None when it is none."""
        x = op.operands[0]
        shape = op.result.type.shape
        if op.name == "graph.reshape" and x.name not in self.repeats:
            return self._repeat_kv(op)
        rep = self.repeats.get(x.name)
        if rep is None:
            return None
        hint = f"{op.result.name}.grouped"
        if op.name == "graph.reshape":
            return self._reshaped(rep, x.type.shape, op)
        if op.name == "graph.transpose":
            axis = list(op.attrs["perm"]).index(rep.axis)
            return _Repeat(self.emit(op.name, (rep.source,), hint, **op.attrs), axis, rep.times)
        # (an operand adding axes would move the repeated one: left as written)
        if op.name in ELEMENTWISE and op.result.type.rank == x.type.rank \
                and all(self._same_per_head(v, op.result.type, rep.axis) for v in op.operands[1:]):
            return _Repeat(self.emit(op.name, (rep.source, *op.operands[1:]), hint, **op.attrs), rep.axis, rep.times)
        return None

    def _repeat_kv(self, op: Op) -> _Repeat | None:
        """reshape(expand(reshape(X))): X's axis a, given a new axis of 1 after it, expanded r times along that
        axis and merged back into it (Hugging Face's repeat_kv)."""
        expand = self.producer.get(op.operands[0].name)
        if expand is None or expand.name != "graph.expand":
            return None
        unsqueeze = self.producer.get(expand.operands[0].name)
        if unsqueeze is None or unsqueeze.name != "graph.reshape":
            return None
        x = unsqueeze.operands[0].type.shape
        for a in range(len(x)):
            r = repeat_factor(x, unsqueeze.result.type.shape, expand.result.type.shape, a)
            if r is not None and r > 1:
                return self._reshaped(_Repeat(unsqueeze.operands[0], a, r), x[:a] + (x[a] * r,) + x[a + 1:], op)
        return None

    def _reshaped(self, rep: _Repeat, shape: tuple[int, ...], op: Op) -> _Repeat | None:
        """A reshape of a value of `shape` that repeats `rep`: a repeat too when it keeps the repeated axis whole
        (an axis of its size after as many elements), its counterpart the same reshape of the source."""
        out = op.result.type.shape
        before = math.prod(shape[:rep.axis])
        for j, size in enumerate(out):
            if size == shape[rep.axis] and math.prod(out[:j]) == before:
                smaller = out[:j] + (size // rep.times,) + out[j + 1:]
                if smaller != rep.source.type.shape:
                    source = self.emit(op.name, (rep.source,), f"{op.result.name}.grouped", **{**op.attrs, "shape": smaller})
                    return _Repeat(source, j, rep.times)
                return _Repeat(rep.source, j, rep.times)
        return None

    @staticmethod
    def _same_per_head(v: Value, out: TensorType, axis: int) -> bool:
        """Whether `v`, broadcast to `out`, is the same along `axis` (its size there is 1, or it has no such axis)."""
        k = axis - (out.rank - v.type.rank)
        return k < 0 or v.type.shape[k] == 1

    # --- the rewrite ----------------------------------------------------------------------------------------

    def _grouped_matmul(self, op: Op) -> bool:
        """A @ repeat(B) as reshape(A grouped @ B), when the repeated axis is the head axis just before A's rows."""
        a, b = op.operands
        rep = self.repeats[b.name]
        rank = b.type.rank
        if a.type.rank != rank or rep.axis != rank - 3 or a.type.shape[:rank - 2] != b.type.shape[:rank - 2]:
            return False
        lead, (heads, m, k) = a.type.shape[:rank - 3], a.type.shape[rank - 3:]
        kv, r = heads // rep.times, rep.times
        h = op.result.name
        grouped_a = self.emit("graph.reshape", (a,), f"{h}.rows", shape=lead + (kv, r * m, k))
        product = self.emit("graph.matmul", (grouped_a, rep.source), f"{h}.grouped", **op.attrs)
        # the model's value, under its own name
        self.b.ops.append(Op("graph.reshape", (product,), op.results, AttrDict({"shape": op.result.type.shape})))
        self.grouped += 1
        return True


def group_heads(module: Module) -> Module:
    """`module` with each matmul by repeated KV heads computed on the shared heads (see the module docstring)."""
    if "chips" in module.attrs:
        return module
    return _Rewriter(module).run()


@dataclass(frozen=True)
class GroupHeads(Pass):
    """Matmuls by repeated key/value heads (grouped-query attention) on the shared heads, without copies."""

    name = "group-heads"

    def apply(self, module: Module, target, plan) -> Module:
        return group_heads(module)


__all__ = ["GroupHeads", "group_heads", "repeat_factor"]
