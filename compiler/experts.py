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

At a layout of several chips a stage, `expert_chains` does better for an expert MLP (a gathered matmul, ops
on each row alone, a gathered matmul by the same choices: gate-and-up, SwiGLU, down): it becomes one
ordinary MLP per expert, on the rows masked by whether they chose it,

    Y = sum over e of  f((X * [I == e]) @ C1[e]^T) @ C2[e]^T

an unchosen row's input all zeros, so its products exact zeros, as above. Each is then split like any MLP
(compiler/paired_matmuls.py) over its share of the stage's chips: a chip takes the activation of its expert
alone ([N, K]), not every expert's ([N, E*K]), and gives back a partial sum.
"""

from __future__ import annotations

import numpy as np

from ..ir import Module, Op, Value
from ..ir.attributes import AttrDict, Tensor
from ..ir.core import Block
from ..ir.graph_ops import ELEMENTWISE
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
        source = _unreshaped(x, producer)
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


def expert_chains(module: Module, parts: int) -> tuple[Module, dict[str, range]]:
    """`module` with each expert MLP (module docstring) one MLP per expert, and for each expert's last matmul
    (by its result's name) the groups its branches take: expert e of E the e-th share of `parts` chips (at
    least one); (module, {}) when it has none."""
    producer = {r.name: op for op in module.ops for r in op.results}
    readers: dict[str, list[Op]] = {}
    for op in module.ops:
        for v in op.operands:
            readers.setdefault(v.name, []).append(op)
    counts = {name: len(ops) for name, ops in readers.items()}
    order = {id(op): i for i, op in enumerate(module.ops)}
    chains = {}  # id(the last matmul) -> (its ops before it, in program order; the first matmuls)
    for op in module.ops:
        if _gathered_matmul(op, producer, counts):
            chain = _chain(op, producer, readers, counts, {v.name for _, v in module.outputs}, order)
            if chain is not None:
                chains[id(op)] = chain
    if not chains:
        return module, {}
    taken = {r.name for op in module.ops for r in op.results} | {v.name for v in module.inputs}

    def fresh(hint: str) -> str:
        return fresh_name(hint, taken)

    # (rewritten at the last matmul: the ops between, the first matmuls and their gathers, the last's gather)
    dropped = {id(o) for between, _ in chains.values() for o in between}
    dropped |= {id(o) for _, firsts in chains.values() for m in firsts for o in (m, producer[m.operands[0].name])}
    dropped |= {id(producer[op.operands[0].name]) for op in module.ops if id(op) in chains}
    direct: dict[str, Value] = {}
    spans: dict[str, range] = {}
    ops: list[Op] = []

    def emit(name: str, result: Value, *operands: Value, **attrs) -> Value:
        ops.append(Op(name, operands, (result,), AttrDict(attrs)))
        return result

    def constant(hint: str, t: Tensor) -> Value:
        return emit("graph.constant", Value(fresh(hint), t.type), value=t)

    for op in module.ops:
        if id(op) in dropped:
            continue
        if id(op) not in chains:
            if op.name == "graph.reshape" and op.operands[0].name in direct:
                op = Op(op.name, (direct[op.operands[0].name],), op.results, op.attrs)
            ops.append(op)
            continue
        between, firsts = chains[id(op)]
        table, chosen = producer[op.operands[0].name].operands
        experts = table.type.shape[0]
        n, y = chosen.type.shape[0], op.result
        rows = {}  # a first matmul's input X [N, K, 1] as [N, K]
        for first in firsts:
            x = _unreshaped(first.operands[1], producer)
            shape = first.operands[1].type.shape[:2]
            rows[first.result.name] = x if x.type.shape == shape else emit(
                "graph.reshape", Value(fresh(f"{x.name}.rows"), TensorType(shape, x.type.dtype)), x, shape=shape)
        # every expert's masked inputs first, so that each can leave for its expert's chips at once
        masked: dict[tuple[int, str], Value] = {}  # (expert, input) -> the input's rows that chose the expert
        for e in range(experts):
            index = constant(f"{chosen.name}.expert{e}", Tensor.from_array(np.array(e, chosen.type.dtype.numpy)))
            hit = emit("graph.equal", Value(fresh(f"{chosen.name}.hit{e}"), TensorType((n, 1), DType.bool)),
                       chosen, index)
            masks: dict[object, Value] = {}
            for x in rows.values():
                if x.type.dtype not in masks:
                    masks[x.type.dtype] = emit("graph.cast", Value(fresh(f"{chosen.name}.mask{e}"),
                                                                   TensorType((n, 1), x.type.dtype)), hit,
                                               to=x.type.dtype)
                if (e, x.name) not in masked:
                    masked[e, x.name] = emit("graph.mul", Value(fresh(f"{x.name}.expert{e}"), x.type), x,
                                             masks[x.type.dtype])
        partials = []
        for e in range(experts):
            renamed: dict[str, Value] = {}    # a value of the chain -> expert e's
            flat: dict[str, Value] = {}       # ... as [N, width] when it is [N, width, 1]
            by_weight: dict[str, tuple[Value, Tensor]] = {}  # an expert matmul's result -> (input, weight)
            for first in firsts:
                x = masked[e, rows[first.result.name].name]
                name, w = _expert(first, producer, e)
                a = emit("graph.matmul", Value(fresh(f"{first.result.name}.expert{e}"),
                                               TensorType((n, w.type.shape[1]), first.result.type.dtype)),
                         x, constant(name, w), **first.attrs.as_dict())
                flat[first.result.name] = a
                by_weight[a.name] = (x, w)

            def read(v: Value) -> Value:
                if v.name in renamed:
                    return renamed[v.name]
                if v.name in flat:  # read as the model has it: [N, width, 1]
                    renamed[v.name] = emit("graph.reshape", Value(fresh(f"{v.name}.expert{e}"), v.type), flat[v.name],
                                           shape=v.type.shape)
                    return renamed[v.name]
                return v

            for b in between:
                source = b.operands[0]
                if b.name == "graph.reshape" and (source.name in flat or source.name in renamed):
                    same = flat.get(source.name, renamed.get(source.name))
                    if same.type.shape == b.result.type.shape:
                        renamed[b.result.name] = same
                        continue
                    if b.result.type.shape == same.type.shape + (1,):
                        flat[b.result.name] = same
                        continue
                if b.name == "graph.split" and _last_axis(b) and read(source).name in by_weight:
                    x, w = by_weight[read(source).name]
                    name, start = read(source).name, 0
                    for r in b.results:  # a matmul by each piece's columns, not the split of one
                        width = r.type.shape[-1]
                        part = cut_constant(w, columns=range(start, start + width))
                        start += width
                        renamed[r.name] = emit("graph.matmul", Value(fresh(f"{r.name}.expert{e}"), r.type), x,
                                               constant(f"{name}.weight", part))
                    continue
                results = tuple(Value(fresh(f"{r.name}.expert{e}"), r.type) for r in b.results)
                ops.append(Op(b.name, tuple(read(v) for v in b.operands), results, b.attrs))
                renamed.update({r.name: new for r, new in zip(b.results, results)})
            h = op.operands[1]
            h = flat[h.name] if h.name in flat else emit(
                "graph.reshape", Value(fresh(f"{h.name}.rows{e}"), TensorType((n, h.type.shape[1]), h.type.dtype)),
                read(h), shape=(n, h.type.shape[1]))
            name, w = _expert(op, producer, e)
            partials.append(emit("graph.matmul", Value(fresh(f"{y.name}.expert{e}"), TensorType(
                (n, w.type.shape[1]), y.type.dtype)), h, constant(name, w), **op.attrs.as_dict()))
            first_chip = e * parts // experts
            spans[partials[-1].name] = range(first_chip, max(first_chip + 1, (e + 1) * parts // experts))
        total = partials[0]
        for k, part in enumerate(partials[1:], 1):
            total = emit("graph.add", Value(fresh(f"{y.name}.experts0-{k}"), part.type), total, part)
        emit("graph.reshape", y, total, shape=y.type.shape)
        direct[y.name] = total
    return verify(dead_code_elimination(Module(module.name, Block(module.inputs, tuple(ops), module.outputs),
                                               module.attrs))), spans


def _chain(last: Op, producer: dict[str, Op], readers: dict[str, list[Op]], counts: dict[str, int],
           outputs: set[str], order: dict[int, int]) -> tuple[list[Op], list[Op]] | None:
    """(the ops between, the first gathered matmuls) of the expert MLP ending at the gathered matmul `last`:
    from its input back to gathered matmuls by the same choices, through ops on each row alone (elementwise,
    a split but not of the rows, a reshape keeping the rows), everything they make read only by them and
    `last`; None when its input is not made so."""
    chosen = producer[last.operands[0].name].operands[1].name
    n = last.result.type.shape[0]
    between, firsts, seen, stack = [], [], set(), [last.operands[1].name]
    while stack:
        name = stack.pop()
        if name in seen:
            continue
        seen.add(name)
        op = producer.get(name)
        if op is None or name in outputs:
            return None
        if op.name == "graph.matmul" and _gathered_matmul(op, producer, counts):
            if producer[op.operands[0].name].operands[1].name != chosen:
                return None
            firsts.append(op)
            continue
        rows_kept = all(r.type.rank >= 1 and r.type.shape[0] == n for r in op.results)
        if not rows_kept or not (op.name in ELEMENTWISE or (op.name == "graph.split" and _axis(op) != 0)
                                 or (op.name == "graph.reshape" and op.operands[0].type.shape[:1] == (n,))):
            return None
        between.append(op)
        for v in op.operands:
            made = producer.get(v.name)
            if made is None or made.name != "graph.constant":
                stack.append(v.name)
    if not firsts:
        return None
    inside = {id(op) for op in between + firsts} | {id(last)}
    if any(id(r) not in inside for op in between + firsts for res in op.results for r in readers.get(res.name, ())):
        return None
    return sorted(between, key=lambda op: order[id(op)]), sorted(firsts, key=lambda op: order[id(op)])


def _axis(split: Op) -> int:
    return split.attrs["axis"] % split.operands[0].type.rank


def _last_axis(split: Op) -> bool:
    return _axis(split) == split.operands[0].type.rank - 1


def _unreshaped(x: Value, producer: dict[str, Op]) -> Value:
    """The value `x` is a reshape of, or `x`: a gathered matmul's input X [N, K, 1] is best read from it (a
    trailing axis of 1 puts each element in a vector of its own, which the SXM takes long to make)."""
    made = producer.get(x.name)
    return made.operands[0] if made is not None and made.name == "graph.reshape" else x


def _expert(matmul: Op, producer: dict[str, Op], e: int) -> tuple[str, Tensor]:
    """(a name for it, expert e's weight) of the stacked table [E, R, K] a gathered matmul gathers from, as a
    matmul's [K, R] (read lazily, like _stacked)."""
    table = producer[matmul.operands[0].name].operands[0]
    stacked = producer[table.name].attrs["value"]
    _, rows, cols = stacked.type.shape
    loader = (lambda: np.ascontiguousarray(stacked.array[e].T)) if stacked.has_data else None
    return f"{table.name}.expert{e}", Tensor(TensorType((cols, rows), stacked.type.dtype),
                                             f"{stacked.key}#expert{e}.T", loader)


__all__ = ["dense_experts", "expert_chains"]
