"""Matmuls of one activation by constant weights, fused into one: a split matmul's round trip paid once.

At a layout, a matmul with a constant weight is split over its stage's chips: its activation goes out to
them and its parts come back (docs/partition.md, "Layouts"), about 4k cycles of hops and transfers beside
its MXM work. A transformer layer reads each normed activation several times: q, k and v, and the MLP's
gate and up. This pass (run at layouts of several chips a stage, before precision) makes each such set one
matmul by the weights side by side, `x @ [W1 W2 ...]`, whose result a `graph.split` cuts back into the
values the model had: one round trip where there were several. Each column of a product is the same dot
product as before (and precision quantizes a weight per output column), so the numbers do not change beyond
the order a host BLAS happens to add in.
"""

from __future__ import annotations

import numpy as np

from ..ir import Module, Op, Value
from ..ir.attributes import AttrDict, Tensor
from ..ir.core import Block
from ..ir.types import TensorType
from ..ir.verifier import verify

from .passes import dead_code_elimination, fresh_name


def fuse_matmuls(module: Module, chips: int | None = None) -> Module:
    """`module` with the matmuls of one activation by 2-D constant weights fused (module docstring); itself
    when no two share an activation. Matmuls of groups (`group`, compiler/split_heads.py) fuse when they run on
    one chip, group g on chip g mod `chips` (None: only those of one group): two head groups on a chip make
    one matmul whose last weight tile is fuller."""
    constants = {op.result.name: op for op in module.ops if op.name == "graph.constant"}
    sets: dict[tuple, list[int]] = {}
    for i, op in enumerate(module.ops):
        if op.name == "graph.matmul" and op.operands[1].name in constants and op.operands[1].type.rank == 2:
            w = op.operands[1].type
            attrs = {k: v for k, v in op.attrs.items() if k != "group"}
            group = op.attrs.get("group")
            where = group if group is None or chips is None else group % chips
            sets.setdefault((op.operands[0].name, w.shape[0], w.dtype, tuple(sorted(attrs.items())), where),
                            []).append(i)
    fused = {members[0]: members for members in sets.values() if len(members) > 1}
    if not fused:
        return module
    skip = {i for members in fused.values() for i in members[1:]}
    taken = {r.name for op in module.ops for r in op.results} | {v.name for v in module.inputs}
    ops: list[Op] = []
    for i, op in enumerate(module.ops):
        if i in skip:
            continue
        if i not in fused:
            ops.append(op)
            continue
        members = [module.ops[j] for j in fused[i]]
        weights = [constants[m.operands[1].name].attrs["value"] for m in members]
        widths = tuple(w.type.shape[1] for w in weights)
        name = fresh_name(f"{members[0].operands[1].name}.fused", taken)
        w = Value(name, TensorType((weights[0].type.shape[0], sum(widths)), weights[0].type.dtype))
        ops.append(Op("graph.constant", (), (w,), AttrDict({"value": _side_by_side(weights)})))
        y = Value(fresh_name(f"{op.result.name}.fused", taken),
                  op.result.type.with_shape(op.result.type.shape[:-1] + (sum(widths),)))
        ops.append(Op("graph.matmul", (op.operands[0], w), (y,), op.attrs))
        placement = {k: op.attrs[k] for k in ("chip", "group") if k in op.attrs}  # (where the matmul's result is)
        ops.append(Op("graph.split", (y,), tuple(m.result for m in members),
                      AttrDict({"axis": y.type.rank - 1, "sizes": widths, **placement})))
    # (the weights fused away go)
    return verify(dead_code_elimination(Module(module.name, Block(module.inputs, tuple(ops), module.outputs),
                                               module.attrs)))


def _side_by_side(weights: list[Tensor]) -> Tensor:
    """The weights [K, N1], [K, N2], ... as one [K, N1 + N2 + ...], read from them when their data is."""
    shape = (weights[0].type.shape[0], sum(w.type.shape[1] for w in weights))
    loader = (lambda: np.concatenate([w.array for w in weights], axis=1)) if all(w.has_data for w in weights) \
        else None
    return Tensor(TensorType(shape, weights[0].type.dtype), "concat(" + ",".join(w.key for w in weights) + ")",
                  loader)


__all__ = ["fuse_matmuls"]
