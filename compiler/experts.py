"""A mixture of experts computed densely: every expert on every token, the unchosen ones weighted by zero.

Mixtral as transformers exports it (`batched_mm` experts, static shapes) gathers the chosen experts' weights
from one table stacking all of them (GatherND of [E, R, K] by the router's choices) and multiplies each
token by its gathered matrices. That is the least work, but the table is one constant (Mixtral 8x7B: 940 MB
per layer at int8), which no chip holds and no tiling cuts. At a layout of several chips a stage, or for a
table larger than a chip, this pass (`compiler.pipeline` runs it first) rewrites each gathered matmul

    G = gather_nd(C [E, R, K], I [N, 1]);  Y = matmul(G, X [N, K, 1])           -> [N, R, 1]

as one matmul over every expert's weights, stacked, each row's input placed in its expert's block:

    X' = reshape(reshape(X, [N, 1, K]) * cast(I == [0 .. E-1])[..., None], [N, E*K])
    Y  = reshape(matmul(X', [C[0]^T; C[1]^T; ...]), [N, R, 1])        (the weight: one [E*K, R] constant)

so the experts' weights are one ordinary 2-D constant, split over a stage's chips like any other, in one
round trip. The numbers are the same: a row's products with the other experts' blocks are exact zeros, and
its quantization (per row: the row's largest value) sees only its own expert's block. The work is E/k times
the gathered form's (Mixtral: 4x), spread over the chips. What stays deterministic is what the schedule
needs: the routing is data, the instructions are not.
"""

from __future__ import annotations

import numpy as np

from ..ir import Module, Op, Value
from ..ir.attributes import AttrDict, Tensor
from ..ir.core import Block
from ..ir.types import DType, TensorType
from ..ir.verifier import verify

from .passes import add_up, cut_constant, dead_code_elimination, fresh_name


def dense_experts(module: Module, larger_than: int | None = None, groups: int = 1) -> Module:
    """`module` with each gathered expert matmul computed densely (module docstring), or only those whose
    stacked table has more than `larger_than` bytes; itself when it has none. `groups` > 1: expert
    parallelism (`--layout ...,ep=E`): the experts in that many contiguous groups (as even as they come), each
    group's matmul by its experts' weights alone (`group = j`, so on chip j of its stage), the partial
    products added (passes.add_up)."""
    producer = {r.name: op for op in module.ops for r in op.results}
    readers: dict[str, int] = {}
    for op in module.ops:
        for v in op.operands:
            readers[v.name] = readers.get(v.name, 0) + 1
    found = {id(op): producer[op.operands[0].name] for op in module.ops if _gathered_matmul(op, producer, readers)
             and (larger_than is None or producer[op.operands[0].name].operands[0].type.nbytes > larger_than)}
    if not found:
        return module
    taken = {r.name for op in module.ops for r in op.results} | {v.name for v in module.inputs}

    def fresh(hint: str) -> str:
        return fresh_name(hint, taken)

    gathers = {id(g) for g in found.values()}
    direct: dict[str, Value] = {}  # a rewritten matmul's result [N, R, 1] -> the same as [N, R]
    ops: list[Op] = []
    for op in module.ops:
        if id(op) in gathers:
            continue  # (read only by its matmul, rewritten below)
        if id(op) not in found:
            if op.name == "graph.reshape" and op.operands[0].name in direct:  # [N, R] as the model wants it
                op = Op(op.name, (direct[op.operands[0].name],), op.results, op.attrs)
            ops.append(op)
            continue
        gather = found[id(op)]
        table, chosen = gather.operands
        x, y = op.operands[1], op.result
        stacked = producer[table.name].attrs["value"]
        experts, rows, cols = stacked.type.shape
        n, dtype = x.type.shape[0], y.type.dtype
        # each row's input in its expert's block of columns, zeros elsewhere: X [N, 1, K] x one-hot [N, E, 1]
        # (X [N, K, 1] is a reshape of [N, K] as exported: read that, not a vector per element)
        source = producer[x.name].operands[0] if x.name in producer and producer[x.name].name == "graph.reshape" \
            else x
        row = Value(fresh(f"{x.name}.row"), TensorType((n, 1, cols), x.type.dtype))
        ops.append(Op("graph.reshape", (source,), (row,), AttrDict({"shape": (n, 1, cols)})))
        out = Value(fresh(f"{y.name}.dense"), TensorType((n, rows), dtype))
        every = _stacked(stacked)
        count = min(groups, experts)
        partials = []
        for j in range(count):
            first, last = j * experts // count, (j + 1) * experts // count  # (experts first .. last - 1)
            place = {"group": j} if count > 1 else {}
            tag = f".experts{first}-{last - 1}" if count > 1 else ""
            ids = Value(fresh(f"{chosen.name}.experts{tag}"), TensorType((last - first,), chosen.type.dtype))
            ops.append(Op("graph.constant", (), (ids,), AttrDict(
                {"value": Tensor.from_array(np.arange(first, last, dtype=chosen.type.dtype.numpy))})))
            hit = Value(fresh(f"{chosen.name}.hit{tag}"), TensorType((n, last - first), DType.bool))
            ops.append(Op("graph.equal", (chosen, ids), (hit,), AttrDict(place)))
            weight = Value(fresh(f"{chosen.name}.one_hot{tag}"), TensorType((n, last - first), x.type.dtype))
            ops.append(Op("graph.cast", (hit,), (weight,), AttrDict({"to": x.type.dtype, **place})))
            column = Value(fresh(f"{chosen.name}.one_hot_col{tag}"), TensorType((n, last - first, 1), x.type.dtype))
            ops.append(Op("graph.reshape", (weight,), (column,), AttrDict({"shape": (n, last - first, 1), **place})))
            placed = Value(fresh(f"{x.name}.placed{tag}"), TensorType((n, last - first, cols), x.type.dtype))
            ops.append(Op("graph.mul", (row, column), (placed,), AttrDict(place)))
            width = (last - first) * cols
            wide = Value(fresh(f"{x.name}.wide{tag}"), TensorType((n, width), x.type.dtype))
            ops.append(Op("graph.reshape", (placed,), (wide,), AttrDict({"shape": (n, width), **place})))
            part = every if count == 1 else cut_constant(every, rows=range(first * cols, last * cols))
            w = Value(fresh(f"{table.name}.stacked{tag}"), part.type)
            ops.append(Op("graph.constant", (), (w,), AttrDict({"value": part})))
            partials.append(out if count == 1 else Value(fresh(f"{out.name}{tag}"), out.type))
            ops.append(Op("graph.matmul", (wide, w), (partials[-1],), AttrDict({**op.attrs, **place})))
        if count > 1:
            ops.extend(add_up(partials, out, fresh, count))
        ops.append(Op("graph.reshape", (out,), (y,), AttrDict({"shape": y.type.shape})))
        direct[y.name] = out
    # (the stacked tables and the [N, K, 1] / [N, R, 1] reshapes nothing reads any more go)
    return verify(dead_code_elimination(Module(module.name, Block(module.inputs, tuple(ops), module.outputs),
                                               module.attrs)))


def _gathered_matmul(op: Op, producer: dict[str, Op], readers: dict[str, int]) -> bool:
    """`op` is matmul(gather_nd(constant [E, R, K], I [N, 1]), X [N, K, 1]), the gather read by it alone."""
    if op.name != "graph.matmul" or op.operands[0].name not in producer:
        return False
    gather, x = producer[op.operands[0].name], op.operands[1].type
    if gather.name != "graph.gather_nd" or gather.attrs.get("batch_dims", 0) or readers[gather.result.name] != 1:
        return False
    table, chosen = gather.operands
    source = producer.get(table.name)
    if source is None or source.name != "graph.constant" or table.type.rank != 3:
        return False
    n = chosen.type.shape[0]
    return chosen.type.shape == (n, 1) and x.shape == (n, table.type.shape[2], 1)


def _stacked(table: Tensor) -> Tensor:
    """The experts' weights [E, R, K] as one [E*K, R]: expert e's transpose in rows e*K .. e*K + K - 1, read from
    the table when its data is (lazily)."""
    experts, rows, cols = table.type.shape
    loader = (lambda: np.ascontiguousarray(table.array.transpose(0, 2, 1).reshape(experts * cols, rows))) \
        if table.has_data else None
    return Tensor(TensorType((experts * cols, rows), table.type.dtype), f"{table.key}#experts.T", loader)


__all__ = ["dense_experts"]
